//! The server's ed25519 signing key: generated on first start, kept in
//! `data_dir/signing.key` in Synapse's format (`ed25519 <version> <seed>`,
//! unpadded base64), and published, self-signed, at
//! `/_matrix/key/v2/server`.

use std::{path::Path, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use rand::RngExt;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName, signatures::Ed25519KeyPair,
};

/// How long a published key document says the key stays valid. Others
/// cache it that long, so keep it short enough for a key rotation.
pub const KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// DER prefix of a PKCS#8 v1 document holding a raw ed25519 seed
/// (RFC 8410): the 32 seed bytes follow.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("signing key file {path} is malformed: {message}")]
    Malformed { path: String, message: String },
}

/// This server's identity towards other servers.
pub struct ServerKeys {
    server_name: OwnedServerName,
    key_pair: Ed25519KeyPair,
    public_key: String,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("server_name", &self.server_name)
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl ServerKeys {
    /// Loads the key from `data_dir/signing.key`, generating it first if
    /// the file does not exist.
    pub fn load_or_generate(data_dir: &Path, server_name: OwnedServerName) -> Result<ServerKeys, KeyError> {
        let path = data_dir.join("signing.key");
        let shown = path.display().to_string();
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        if !path.exists() {
            let mut seed = [0u8; 32];
            rand::rng().fill(&mut seed[..]);
            let version: String = rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(6)
                .map(char::from)
                .collect();
            let line = format!("ed25519 a_{version} {}\n", STANDARD_NO_PAD.encode(seed));
            write_private(&path, line.as_bytes()).map_err(io)?;
            tracing::info!(path = %shown, "generated a new signing key");
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        Self::from_synapse_format(&text, server_name).map_err(|message| KeyError::Malformed { path: shown, message })
    }

    /// Parses `ed25519 <version> <base64 seed>` (first line).
    pub fn from_synapse_format(text: &str, server_name: OwnedServerName) -> Result<ServerKeys, String> {
        let line = text.lines().next().unwrap_or_default();
        let mut parts = line.split_whitespace();
        let (Some(alg), Some(version), Some(seed), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected `ed25519 <version> <base64 seed>`".to_owned());
        };
        if alg != "ed25519" {
            return Err(format!("unsupported algorithm {alg}"));
        }
        // Lenient like Synapse's decoder: other servers' key files may
        // have non-zero trailing bits.
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let seed = lenient.decode(seed).map_err(|e| format!("bad base64 seed: {e}"))?;
        if seed.len() != 32 {
            return Err(format!("seed is {} bytes, expected 32", seed.len()));
        }
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let key_pair = Ed25519KeyPair::from_der(&der, version.to_owned()).map_err(|e| e.to_string())?;
        let public_key = STANDARD_NO_PAD.encode(key_pair.public_key());
        Ok(ServerKeys {
            server_name,
            key_pair,
            public_key,
        })
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.key_pair.version())
    }

    /// Unpadded standard base64 of the public key.
    pub fn public_key_base64(&self) -> &str {
        &self.public_key
    }

    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.key_pair
    }

    /// Signs `object` (an event or a request) as this server.
    pub fn sign_json(&self, object: &mut CanonicalJsonObject) {
        ruma::signatures::sign_json(self.server_name.as_str(), &self.key_pair, object)
            .expect("a canonical JSON object can always be signed");
    }

    /// The self-signed key document served at `/_matrix/key/v2/server`.
    pub fn server_key_document(&self, now: MilliSecondsSinceUnixEpoch) -> CanonicalJsonObject {
        let valid_until = u64::from(now.get()) + KEY_VALIDITY.as_millis() as u64;
        let mut key = CanonicalJsonObject::new();
        key.insert("key".to_owned(), CanonicalJsonValue::String(self.public_key.clone()));
        let mut verify_keys = CanonicalJsonObject::new();
        verify_keys.insert(self.key_id(), CanonicalJsonValue::Object(key));
        let mut doc = CanonicalJsonObject::new();
        doc.insert(
            "server_name".to_owned(),
            CanonicalJsonValue::String(self.server_name.to_string()),
        );
        doc.insert(
            "valid_until_ts".to_owned(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(valid_until).expect("timestamps fit in a JSON integer")),
        );
        doc.insert("verify_keys".to_owned(), CanonicalJsonValue::Object(verify_keys));
        doc.insert(
            "old_verify_keys".to_owned(),
            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
        );
        self.sign_json(&mut doc);
        doc
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_survives_reload_and_document_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let name: OwnedServerName = "example.org".try_into().unwrap();
        let a = ServerKeys::load_or_generate(dir.path(), name.clone()).unwrap();
        let b = ServerKeys::load_or_generate(dir.path(), name).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.public_key_base64(), b.public_key_base64());

        let doc = a.server_key_document(MilliSecondsSinceUnixEpoch::now());
        let mut keys = ruma::signatures::PublicKeyMap::new();
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(a.key_id(), ruma::serde::Base64::parse(a.public_key_base64()).unwrap());
        keys.insert("example.org".to_owned(), set);
        ruma::signatures::verify_json(&keys, &doc).unwrap();
    }
}
