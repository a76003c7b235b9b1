//! TLS for the federation listener: the configured certificate, or a
//! self-signed one generated in the data directory on first start.
//!
//! One certificate serves every connection, with or without SNI: peers
//! that dial an IP-literal server name send no SNI at all.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Installs ring as the process-wide rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Returns (certificate, key) paths: the configured ones, or the
/// self-signed pair in `data_dir`, generated if absent.
pub fn certificate_files(
    data_dir: &Path,
    server_name: &str,
    configured: Option<(&Path, &Path)>,
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let Some((cert, key)) = configured {
        return Ok((cert.to_owned(), key.to_owned()));
    }
    let cert = data_dir.join("tls.crt");
    let key = data_dir.join("tls.key");
    if !cert.exists() || !key.exists() {
        let host = server_name
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(server_name, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let generated =
            rcgen::generate_simple_self_signed(vec![host.to_owned()]).map_err(|e| TlsError::Generate(e.to_string()))?;
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| TlsError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })
        };
        write(&cert, generated.cert.pem())?;
        write(&key, generated.signing_key.serialize_pem())?;
        tracing::info!(cert = %cert.display(), "generated a self-signed federation certificate");
    }
    Ok((cert, key))
}

/// Builds the rustls server configuration (HTTP/1.1 and HTTP/2).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let file_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, &e))?;
    if certs.is_empty() {
        return Err(file_err(cert, &"no certificate in file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
    install_crypto_provider();
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
