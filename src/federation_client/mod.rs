//! The federation client: requests to other homeservers, signed with this
//! server's key (`X-Matrix`), sent over HTTPS to where server-name
//! resolution says ([`resolve`]), with timeouts and a per-destination
//! back-off ([`backoff`]).

pub mod backoff;
mod dns;
pub mod resolve;
pub mod sender;
mod v1_api;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};
use ruma::{
    CanonicalJsonObject, OwnedServerName, OwnedServerSigningKeyId, ServerName,
    api::{
        IncomingResponse, IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
        auth_scheme::NoAuthentication,
        federation::{
            authentication::{ServerSignatures, XMatrixSigningInput},
            discovery::{get_remote_server_keys_batch, get_server_keys},
        },
        path_builder::SinglePath,
    },
};

use crate::{keyring::KeyFetcher, keys::ServerKeys};

/// Past this, a server that does not take the connection is unreachable
/// (and backs off): a live server answers a SYN in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The key endpoints answer a few hundred bytes at once. A request from a
/// server whose keys are not known yet waits on them: an origin that never
/// answers costs that request this long, then backs off (fails at once).
const KEY_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response read (a big room's `/state` is tens of MiB).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0}")]
    Resolve(#[from] resolve::ResolveError),
    #[error("{server} is backing off after failures; next try in {seconds}s")]
    BackingOff { server: OwnedServerName, seconds: u64 },
    #[error("{server} is unreachable: {reason}")]
    Unreachable { server: OwnedServerName, reason: String },
    #[error("{server} answered {status}: {body}")]
    Status {
        server: OwnedServerName,
        status: StatusCode,
        body: String,
    },
    #[error("{server} sent an invalid response: {reason}")]
    InvalidResponse { server: OwnedServerName, reason: String },
    #[error("cannot build the request: {0}")]
    Request(String),
}

impl FederationError {
    /// The remote answered with an HTTP error (as opposed to not answering).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            FederationError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Addresses for hostnames, as resolution found them: reqwest connects
/// through this, so the URL keeps the name the certificate is checked
/// against (and sent as SNI) while the connection goes where the spec's
/// resolution (SRV, well-known) says.
#[derive(Clone, Default)]
struct ResolvedAddrs(Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>);

impl reqwest::dns::Resolve for ResolvedAddrs {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addrs = self.0.lock().expect("resolved addrs").get(name.as_str()).cloned();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = match addrs {
                Some(addrs) if !addrs.is_empty() => addrs,
                // Not resolved by us (should not happen): the system's answer.
                _ => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub struct FederationClient {
    keys: Arc<ServerKeys>,
    http: reqwest::Client,
    addrs: ResolvedAddrs,
    resolver: resolve::Resolver,
    backoff: backoff::Backoff,
}

impl FederationClient {
    /// `verify_tls`: check peers' certificates (only test rigs turn it off).
    pub fn new(keys: Arc<ServerKeys>, verify_tls: bool) -> Result<Self, FederationError> {
        crate::tls::install_crypto_provider();
        let addrs = ResolvedAddrs::default();
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(addrs.clone()))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(!verify_tls)
            .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let resolver = resolve::Resolver::new(verify_tls).map_err(|e| FederationError::Request(e.to_string()))?;
        Ok(FederationClient {
            keys,
            http,
            addrs,
            resolver,
            backoff: backoff::Backoff::default(),
        })
    }

    pub fn server_name(&self) -> &ServerName {
        self.keys.server_name()
    }

    /// Whether `server` failed lately and is not tried until its back-off
    /// has passed.
    pub fn backing_off(&self, server: &ServerName) -> bool {
        self.backoff.retry_at(server).is_some()
    }

    /// Sends a signed request and parses the answer.
    pub async fn send<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        let base = self.base_url(destination).await?;
        let input = XMatrixSigningInput::new(
            self.keys.server_name().to_owned(),
            destination.to_owned(),
            self.keys.key_pair(),
        );
        let http_req = request
            .try_into_http_request::<Vec<u8>>(&base.url, input, ())
            .map_err(|e| FederationError::Request(e.to_string()))?;
        self.parse::<R::IncomingResponse>(
            destination,
            self.execute(destination, &base, http_req, REQUEST_TIMEOUT).await?,
        )
    }

    /// Sends an unauthenticated request (the key endpoints).
    pub async fn send_unsigned<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = NoAuthentication, PathBuilder = SinglePath>,
    {
        let base = self.base_url(destination).await?;
        let http_req = request
            .try_into_http_request::<Vec<u8>>(&base.url, (), ())
            .map_err(|e| FederationError::Request(e.to_string()))?;
        self.parse::<R::IncomingResponse>(
            destination,
            self.execute(destination, &base, http_req, KEY_REQUEST_TIMEOUT).await?,
        )
    }

    /// A signed request with any method, path and JSON body; the raw
    /// answer. For admin tooling (`weft federation get`).
    pub async fn raw(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), FederationError> {
        let base = self.base_url(destination).await?;
        let body = body
            .map(|b| serde_json::to_vec(b).expect("JSON values serialise"))
            .unwrap_or_default();
        let mut http_req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", base.url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let input = XMatrixSigningInput::new(
            self.keys.server_name().to_owned(),
            destination.to_owned(),
            self.keys.key_pair(),
        );
        <ServerSignatures as ruma::api::auth_scheme::AuthScheme>::add_authentication(&mut http_req, input)
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let response = self.execute(destination, &base, http_req, REQUEST_TIMEOUT).await?;
        Ok((response.status(), response.into_body()))
    }

    async fn base_url(&self, destination: &ServerName) -> Result<Base, FederationError> {
        if let Some(at) = self.backoff.retry_at(destination) {
            return Err(FederationError::BackingOff {
                server: destination.to_owned(),
                seconds: at.saturating_duration_since(std::time::Instant::now()).as_secs(),
            });
        }
        let dest = match self.resolver.resolve(destination).await {
            Ok(dest) => dest,
            Err(e) => {
                self.backoff.failed(destination);
                return Err(e.into());
            }
        };
        if dest.tls_ip().is_none() {
            let addrs = dest.addrs.iter().filter(|a| a.port() == dest.port).copied().collect();
            self.addrs
                .0
                .lock()
                .expect("resolved addrs")
                .insert(dest.tls_name.clone(), addrs);
        }
        Ok(Base {
            url: format!("https://{}", dest.authority()),
            host_header: dest.host_header,
        })
    }

    async fn execute(
        &self,
        destination: &ServerName,
        base: &Base,
        http_req: http::Request<Vec<u8>>,
        timeout: Duration,
    ) -> Result<http::Response<Bytes>, FederationError> {
        let mut req = reqwest::Request::try_from(http_req).map_err(|e| FederationError::Request(e.to_string()))?;
        *req.timeout_mut() = Some(timeout);
        if let Ok(host) = http::HeaderValue::from_str(&base.host_header) {
            req.headers_mut().insert(http::header::HOST, host);
        }
        let method = req.method().clone();
        let path = req.url().path().to_owned();
        let unreachable = |reason: String| {
            self.backoff.failed(destination);
            FederationError::Unreachable {
                server: destination.to_owned(),
                reason,
            }
        };
        let mut res = self.http.execute(req).await.map_err(|e| unreachable(error_chain(&e)))?;
        let status = res.status();
        // Kept for the answers whose headers matter (the multipart
        // `Content-Type` of `/media/download`).
        let headers = std::mem::take(res.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| unreachable(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(FederationError::InvalidResponse {
                    server: destination.to_owned(),
                    reason: format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        self.backoff.succeeded(destination);
        tracing::debug!(%destination, %method, %path, %status, bytes = body.len(), "federation request");
        let mut response = http::Response::new(Bytes::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    fn parse<T: IncomingResponse>(
        &self,
        destination: &ServerName,
        response: http::Response<Bytes>,
    ) -> Result<T, FederationError> {
        let status = response.status();
        if !status.is_success() {
            let body = String::from_utf8_lossy(response.body()).chars().take(500).collect();
            return Err(FederationError::Status {
                server: destination.to_owned(),
                status,
                body,
            });
        }
        let (parts, body) = response.into_parts();
        T::try_from_http_response(http::Response::from_parts(parts, &body[..])).map_err(|e| {
            FederationError::InvalidResponse {
                server: destination.to_owned(),
                reason: e.to_string(),
            }
        })
    }
}

struct Base {
    url: String,
    host_header: String,
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[async_trait]
impl KeyFetcher for FederationClient {
    async fn server_keys(&self, server: &ServerName) -> Result<CanonicalJsonObject, String> {
        let response = self
            .send_unsigned(server, get_server_keys::v2::Request::new())
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_str(response.server_key.json().get()).map_err(|e| e.to_string())
    }

    async fn notary_query(&self, notary: &ServerName, server: &ServerName) -> Result<Vec<CanonicalJsonObject>, String> {
        // No key IDs: all of the server's keys, valid from now on.
        let query =
            std::collections::BTreeMap::from([
                (
                    server.to_owned(),
                    std::collections::BTreeMap::<
                        OwnedServerSigningKeyId,
                        get_remote_server_keys_batch::v2::QueryCriteria,
                    >::new(),
                ),
            ]);
        let response = self
            .send_unsigned(notary, get_remote_server_keys_batch::v2::Request::new(query))
            .await
            .map_err(|e| e.to_string())?;
        Ok(response
            .server_keys
            .iter()
            .filter_map(|raw| serde_json::from_str::<CanonicalJsonObject>(raw.json().get()).ok())
            .filter(|doc| doc.get("server_name").and_then(|v| v.as_str()) == Some(server.as_str()))
            .collect())
    }
}
