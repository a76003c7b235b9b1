//! Server discovery: resolves a server name to the addresses to connect
//! to, the name the TLS certificate must be valid for and the `Host`
//! header to send, following the server-server API's "Resolving server
//! names" algorithm step by step. Step numbers below are the spec's.
//!
//! `/.well-known/matrix/server` results are cached as the spec recommends
//! (Cache-Control max-age, else 24 h, at most 48 h; failures with an
//! exponential back-off up to 1 h), and resolved destinations briefly.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use lru::LruCache;
use ruma::{OwnedServerName, ServerName};
use tokio::time::Instant;

pub use super::dns::{Dns, DnsError, SrvTarget, SystemDns};

/// The port used when neither the server name nor an SRV record gives one.
pub const DEFAULT_PORT: u16 = 8448;

/// How long a well-known delegation is cached without a Cache-Control
/// max-age, and the bounds put on one.
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
const WELL_KNOWN_MIN_TTL: Duration = Duration::from_secs(5 * 60);
/// A failed well-known fetch is cached for this, doubling with each
/// further consecutive failure, up to `WELL_KNOWN_ERROR_MAX_TTL`.
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(5 * 60);
const WELL_KNOWN_ERROR_MAX_TTL: Duration = Duration::from_secs(3600);
/// While a well-known host is unreachable, its last valid delegation is
/// kept for this many consecutive failures.
const WELL_KNOWN_STALE_FAILURES: u32 = 4;
/// How long a resolved destination is reused.
const DESTINATION_TTL: Duration = Duration::from_secs(5 * 60);
const CACHE_CAPACITY: usize = 10_000;

/// The well-known request's limits.
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
const WELL_KNOWN_MAX_REDIRECTS: usize = 10;
const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;

/// Which step of the algorithm found a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// 1: the hostname is an IP literal.
    IpLiteral,
    /// 2: a hostname with an explicit port.
    HostWithPort,
    /// 3.1: delegated by well-known to an IP literal.
    DelegatedIpLiteral,
    /// 3.2: delegated to a hostname with an explicit port.
    DelegatedHostWithPort,
    /// 3.3: delegated to a hostname with a `_matrix-fed._tcp` SRV record.
    DelegatedSrvMatrixFed,
    /// 3.4 (deprecated): delegated to a hostname with a `_matrix._tcp` SRV record.
    DelegatedSrvMatrix,
    /// 3.5: delegated to a hostname without SRV record: its address, port 8448.
    DelegatedDefaultPort,
    /// 4: no delegation, a `_matrix-fed._tcp` SRV record.
    SrvMatrixFed,
    /// 5 (deprecated): no delegation, a `_matrix._tcp` SRV record.
    SrvMatrix,
    /// 6: no delegation nor SRV record: the hostname's address, port 8448.
    DefaultPort,
}

/// Where and how to reach a homeserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The server name that was resolved.
    pub server_name: OwnedServerName,
    /// The name the server's certificate must be valid for, and the TLS SNI
    /// unless it is an IP address (see [`Destination::tls_ip`]): the IP
    /// literal, without brackets, in steps 1 and 3.1; the hostname in steps
    /// 2, 4, 5 and 6; the delegated hostname in steps 3.2 to 3.5.
    pub tls_name: String,
    /// The port of the preferred address: the explicit port (1, 2, 3.1,
    /// 3.2), the first SRV target's (3.3, 3.4, 4, 5), else 8448.
    pub port: u16,
    /// The addresses to connect to, in order of preference, each with its
    /// port: the IP literal's (1, 3.1), the hostname's AAAA/A records (2,
    /// 3.2, 3.5, 6), or those of each SRV target in turn (3.3, 3.4, 4, 5).
    pub addrs: Vec<SocketAddr>,
    /// The `Host` header: the server name as given (1, 2), the delegated
    /// server name as given (3.1, 3.2), the delegated hostname (3.3 to 3.5)
    /// or the hostname (4 to 6), without port in the last two cases.
    pub host_header: String,
    /// The step that found this destination.
    pub step: Step,
}

impl Destination {
    /// The IP address the certificate must be valid for, when `tls_name`
    /// is an IP literal; no SNI is sent then.
    pub fn tls_ip(&self) -> Option<IpAddr> {
        self.tls_name.parse().ok()
    }

    /// `tls_name:port`, with an IPv6 address in brackets: the authority for
    /// a URL whose host is checked against the certificate.
    pub fn authority(&self) -> String {
        match self.tls_ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.tls_name, self.port),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{server_name}: no address found for {host}: {reason}")]
    NoAddress {
        server_name: OwnedServerName,
        host: String,
        reason: String,
    },
}

/// Why there is no valid well-known delegation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WellKnownError {
    /// No response: connection, TLS, timeout or redirect failure.
    #[error("well-known request failed: {0}")]
    Unreachable(String),
    /// A response that is not a valid delegation: not 200, too large, not
    /// JSON, without `m.server` string or with an invalid one.
    #[error("invalid well-known response: {0}")]
    Invalid(String),
}

/// A response to `GET https://<hostname>/.well-known/matrix/server`.
#[derive(Clone, Debug, Default)]
pub struct WellKnownResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// The Cache-Control header, if any.
    pub cache_control: Option<String>,
}

/// Fetches `/.well-known/matrix/server` (spec step 3).
#[async_trait]
pub trait WellKnownFetcher: Send + Sync {
    /// Requests `https://<hostname>/.well-known/matrix/server`, following
    /// redirects; errs when no final response is obtained.
    async fn fetch(&self, hostname: &str) -> Result<WellKnownResponse, WellKnownError>;
}

/// The real well-known fetcher, over HTTPS.
pub struct HttpsWellKnown {
    client: reqwest::Client,
}

impl HttpsWellKnown {
    /// `verify_tls: false` accepts any certificate (test federations only).
    pub fn new(verify_tls: bool) -> Result<Self, reqwest::Error> {
        crate::tls::install_crypto_provider();
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() > WELL_KNOWN_MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if attempt.previous().contains(attempt.url()) {
                attempt.error("redirect loop")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .https_only(true)
            .timeout(WELL_KNOWN_TIMEOUT)
            .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(!verify_tls)
            .build()?;
        Ok(Self { client })
    }
}

#[async_trait]
impl WellKnownFetcher for HttpsWellKnown {
    async fn fetch(&self, hostname: &str) -> Result<WellKnownResponse, WellKnownError> {
        let unreachable = |e: reqwest::Error| WellKnownError::Unreachable(error_chain(&e));
        let url = format!("https://{hostname}/.well-known/matrix/server");
        let mut response = self.client.get(url).send().await.map_err(unreachable)?;
        let too_large = || WellKnownError::Invalid(format!("larger than {WELL_KNOWN_MAX_BYTES} bytes"));
        if response
            .content_length()
            .is_some_and(|len| len > WELL_KNOWN_MAX_BYTES as u64)
        {
            return Err(too_large());
        }
        let status = response.status().as_u16();
        let cache_control = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > WELL_KNOWN_MAX_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(WellKnownResponse {
            status,
            body,
            cache_control,
        })
    }
}

/// Resolves server names, with caches. Cheap to call repeatedly; share it
/// (it is `Send + Sync`).
pub struct Resolver {
    dns: Arc<dyn Dns>,
    well_known: Arc<dyn WellKnownFetcher>,
    cache: Mutex<Cache>,
    /// One resolution at a time per server name, so that concurrent
    /// callers share the first one's result.
    in_flight: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
}

struct Cache {
    well_known: LruCache<String, WellKnownEntry>,
    destinations: LruCache<OwnedServerName, (Destination, Instant)>,
}

#[derive(Clone)]
struct WellKnownEntry {
    delegation: Option<OwnedServerName>,
    expires: Instant,
    /// Consecutive failed fetches.
    failures: u32,
}

impl Resolver {
    /// The system's DNS and well-known over HTTPS.
    pub fn new(verify_tls: bool) -> Result<Self, reqwest::Error> {
        Ok(Self::with(
            Arc::new(SystemDns::new()),
            Arc::new(HttpsWellKnown::new(verify_tls)?),
        ))
    }

    /// The given DNS and well-known fetcher (fakes, in tests).
    pub fn with(dns: Arc<dyn Dns>, well_known: Arc<dyn WellKnownFetcher>) -> Self {
        let capacity = NonZeroUsize::new(CACHE_CAPACITY).expect("non-zero capacity");
        Self {
            dns,
            well_known,
            cache: Mutex::new(Cache {
                well_known: LruCache::new(capacity),
                destinations: LruCache::new(capacity),
            }),
            in_flight: Mutex::default(),
        }
    }

    /// Resolves `server_name`, from the cache when fresh.
    pub async fn resolve(&self, server_name: &ServerName) -> Result<Destination, ResolveError> {
        if let Some(destination) = self.cached(server_name) {
            return Ok(destination);
        }
        let gate = self.in_flight().entry(server_name.to_owned()).or_default().clone();
        let result = {
            let _turn = gate.lock().await;
            match self.cached(server_name) {
                Some(destination) => Ok(destination),
                None => {
                    let result = self.resolve_uncached(server_name).await;
                    if let Ok(destination) = &result {
                        let expires = Instant::now() + DESTINATION_TTL;
                        self.cache()
                            .destinations
                            .put(server_name.to_owned(), (destination.clone(), expires));
                    }
                    result
                }
            }
        };
        let mut in_flight = self.in_flight();
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&gate) <= 2 {
            in_flight.remove(server_name);
        }
        result
    }

    /// Forgets the destination of `server_name` (after a connection
    /// failure, say), not its well-known delegation.
    pub fn forget(&self, server_name: &ServerName) {
        self.cache().destinations.pop(server_name);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>> {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached(&self, server_name: &ServerName) -> Option<Destination> {
        let mut cache = self.cache();
        match cache.destinations.get(server_name) {
            Some((destination, expires)) if *expires > Instant::now() => Some(destination.clone()),
            _ => None,
        }
    }

    async fn resolve_uncached(&self, server_name: &ServerName) -> Result<Destination, ResolveError> {
        let found = |tls_name: &str, port, addrs, host_header: &str, step| Destination {
            server_name: server_name.to_owned(),
            tls_name: tls_name.to_owned(),
            port,
            addrs,
            host_header: host_header.to_owned(),
            step,
        };
        let hostname = server_name.host();
        // 1. An IP literal: its address, the given port or 8448.
        if let Some(ip) = ip_literal(hostname) {
            let port = server_name.port().unwrap_or(DEFAULT_PORT);
            let addrs = vec![SocketAddr::new(ip, port)];
            return Ok(found(
                &ip.to_string(),
                port,
                addrs,
                server_name.as_str(),
                Step::IpLiteral,
            ));
        }
        // 2. A hostname with a port: its address, that port.
        if let Some(port) = server_name.port() {
            let addrs = self.addresses(server_name, hostname, port).await?;
            return Ok(found(hostname, port, addrs, server_name.as_str(), Step::HostWithPort));
        }
        // 3. A delegation by /.well-known/matrix/server.
        if let Some(delegated) = self.delegation(hostname).await {
            let delegated_hostname = delegated.host();
            // 3.1. To an IP literal: its address, the given port or 8448.
            if let Some(ip) = ip_literal(delegated_hostname) {
                let port = delegated.port().unwrap_or(DEFAULT_PORT);
                let addrs = vec![SocketAddr::new(ip, port)];
                return Ok(found(
                    &ip.to_string(),
                    port,
                    addrs,
                    delegated.as_str(),
                    Step::DelegatedIpLiteral,
                ));
            }
            // 3.2. To a hostname with a port: its address, that port.
            if let Some(port) = delegated.port() {
                let addrs = self.addresses(server_name, delegated_hostname, port).await?;
                return Ok(found(
                    delegated_hostname,
                    port,
                    addrs,
                    delegated.as_str(),
                    Step::DelegatedHostWithPort,
                ));
            }
            // 3.3 to 3.5. SRV records of the delegated hostname, else its address and 8448.
            let steps = [
                Step::DelegatedSrvMatrixFed,
                Step::DelegatedSrvMatrix,
                Step::DelegatedDefaultPort,
            ];
            return self.srv_or_default(server_name, delegated_hostname, steps).await;
        }
        // 4 to 6. SRV records of the hostname, else its address and 8448.
        let steps = [Step::SrvMatrixFed, Step::SrvMatrix, Step::DefaultPort];
        self.srv_or_default(server_name, hostname, steps).await
    }

    /// Steps 3.3 to 3.5 and 4 to 6: `_matrix-fed._tcp.<hostname>` SRV
    /// records, then `_matrix._tcp.<hostname>`, then `<hostname>`'s address
    /// with port 8448; `<hostname>` is the certificate name and Host header.
    async fn srv_or_default(
        &self,
        server_name: &ServerName,
        hostname: &str,
        [fed_step, matrix_step, default_step]: [Step; 3],
    ) -> Result<Destination, ResolveError> {
        let found = |port, addrs, step| Destination {
            server_name: server_name.to_owned(),
            tls_name: hostname.to_owned(),
            port,
            addrs,
            host_header: hostname.to_owned(),
            step,
        };
        for (service, step) in [("_matrix-fed._tcp", fed_step), ("_matrix._tcp", matrix_step)] {
            let name = format!("{service}.{hostname}");
            let targets = self.dns.srv(&name).await.unwrap_or_else(|e| {
                tracing::debug!(%server_name, "SRV lookup failed, taken as no record: {e}");
                Vec::new()
            });
            let Some(first) = targets.first() else { continue };
            let port = first.port;
            let mut addrs = Vec::new();
            let mut errors = Vec::new();
            for target in &targets {
                match self.addresses(server_name, &target.host, target.port).await {
                    Ok(found) => addrs.extend(found),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if addrs.is_empty() {
                return Err(ResolveError::NoAddress {
                    server_name: server_name.to_owned(),
                    host: name,
                    reason: errors.join("; "),
                });
            }
            return Ok(found(port, addrs, step));
        }
        let addrs = self.addresses(server_name, hostname, DEFAULT_PORT).await?;
        Ok(found(DEFAULT_PORT, addrs, default_step))
    }

    /// `host`'s addresses (CNAME, AAAA, A) with `port`; at least one.
    async fn addresses(
        &self,
        server_name: &ServerName,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let no_address = |reason: String| ResolveError::NoAddress {
            server_name: server_name.to_owned(),
            host: host.to_owned(),
            reason,
        };
        let ips = self.dns.ip(host).await.map_err(|e| no_address(e.to_string()))?;
        if ips.is_empty() {
            return Err(no_address("no AAAA or A record".to_owned()));
        }
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }

    /// Step 3: the delegated server name from `hostname`'s well-known, if
    /// valid; cached.
    async fn delegation(&self, hostname: &str) -> Option<OwnedServerName> {
        let previous = self.cache().well_known.get(hostname).cloned();
        if let Some(entry) = &previous
            && entry.expires > Instant::now()
        {
            return entry.delegation.clone();
        }
        let entry = match self.fetch_delegation(hostname).await {
            Ok((delegation, ttl)) => WellKnownEntry {
                delegation: Some(delegation),
                expires: Instant::now() + ttl,
                failures: 0,
            },
            Err(e) => {
                tracing::debug!(hostname, "no well-known delegation: {e}");
                let failures = previous.as_ref().map_or(0, |p| p.failures) + 1;
                // A valid delegation outlives a few transient failures.
                let stale = previous
                    .and_then(|p| p.delegation)
                    .filter(|_| matches!(e, WellKnownError::Unreachable(_)) && failures <= WELL_KNOWN_STALE_FAILURES);
                let ttl = WELL_KNOWN_ERROR_TTL.saturating_mul(1u32 << (failures - 1).min(16));
                WellKnownEntry {
                    delegation: stale,
                    expires: Instant::now() + ttl.min(WELL_KNOWN_ERROR_MAX_TTL),
                    failures,
                }
            }
        };
        let delegation = entry.delegation.clone();
        self.cache().well_known.put(hostname.to_owned(), entry);
        delegation
    }

    /// Fetches and validates a well-known response: the delegated server
    /// name and how long to cache it.
    async fn fetch_delegation(&self, hostname: &str) -> Result<(OwnedServerName, Duration), WellKnownError> {
        let response = self.well_known.fetch(hostname).await?;
        if response.status != 200 {
            return Err(WellKnownError::Invalid(format!("status {}", response.status)));
        }
        let delegation = parse_well_known(&response.body)?;
        let ttl = response
            .cache_control
            .as_deref()
            .and_then(max_age)
            .unwrap_or(WELL_KNOWN_DEFAULT_TTL)
            .clamp(WELL_KNOWN_MIN_TTL, WELL_KNOWN_MAX_TTL);
        Ok((delegation, ttl))
    }
}

/// The `m.server` of a well-known body (whatever its Content-Type).
pub fn parse_well_known(body: &[u8]) -> Result<OwnedServerName, WellKnownError> {
    let invalid = |message: String| WellKnownError::Invalid(message);
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let server = json
        .get("m.server")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| invalid("no m.server string".to_owned()))?;
    OwnedServerName::try_from(server).map_err(|e| invalid(format!("m.server {server:?}: {e}")))
}

/// An error and its sources, `: `-separated (reqwest's own message omits
/// the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// The lifetime a Cache-Control header allows: its max-age, or zero for
/// no-store / no-cache.
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            age = seconds.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    age
}

/// The address of an IP-literal hostname (`1.2.3.4` or `[::1]`).
fn ip_literal(hostname: &str) -> Option<IpAddr> {
    if let Some(v6) = hostname.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    hostname.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// DNS from tables; a host without addresses is NXDOMAIN.
    #[derive(Default)]
    struct FakeDns {
        srv: HashMap<String, Vec<SrvTarget>>,
        ips: HashMap<String, Vec<IpAddr>>,
        ip_lookups: AtomicUsize,
    }

    #[async_trait]
    impl Dns for FakeDns {
        async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, DnsError> {
            Ok(self.srv.get(name).cloned().unwrap_or_default())
        }

        async fn ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
            self.ip_lookups.fetch_add(1, Ordering::SeqCst);
            self.ips
                .get(host)
                .cloned()
                .ok_or_else(|| DnsError::new(host, "NXDOMAIN"))
        }
    }

    /// Well-known responses from a table; an unknown host is unreachable.
    /// Each fetch takes a (virtual) second.
    #[derive(Default)]
    struct FakeWellKnown {
        responses: Mutex<HashMap<String, Result<WellKnownResponse, WellKnownError>>>,
        calls: AtomicUsize,
    }

    impl FakeWellKnown {
        fn set(&self, hostname: &str, response: Result<WellKnownResponse, WellKnownError>) {
            self.responses.lock().unwrap().insert(hostname.to_owned(), response);
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl WellKnownFetcher for FakeWellKnown {
        async fn fetch(&self, hostname: &str) -> Result<WellKnownResponse, WellKnownError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let response = self.responses.lock().unwrap().get(hostname).cloned();
            response.unwrap_or_else(|| Err(WellKnownError::Unreachable("connection refused".to_owned())))
        }
    }

    fn ok(body: &str, cache_control: Option<&str>) -> Result<WellKnownResponse, WellKnownError> {
        Ok(WellKnownResponse {
            status: 200,
            body: body.as_bytes().to_vec(),
            cache_control: cache_control.map(str::to_owned),
        })
    }

    fn delegate_to(server: &str) -> Result<WellKnownResponse, WellKnownError> {
        ok(&format!(r#"{{"m.server": "{server}"}}"#), None)
    }

    #[derive(Default)]
    struct World {
        dns: FakeDns,
        well_known: Arc<FakeWellKnown>,
    }

    impl World {
        fn ip(mut self, host: &str, ips: &[&str]) -> Self {
            let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
            self.dns.ips.insert(host.to_owned(), ips);
            self
        }

        fn srv(mut self, name: &str, targets: &[(&str, u16)]) -> Self {
            let targets = targets
                .iter()
                .map(|(host, port)| SrvTarget {
                    host: (*host).to_owned(),
                    port: *port,
                })
                .collect();
            self.dns.srv.insert(name.to_owned(), targets);
            self
        }

        fn well_known(self, hostname: &str, response: Result<WellKnownResponse, WellKnownError>) -> Self {
            self.well_known.set(hostname, response);
            self
        }

        fn build(self) -> Fakes {
            let dns = Arc::new(self.dns);
            let resolver = Resolver::with(dns.clone(), self.well_known.clone());
            Fakes {
                resolver,
                well_known: self.well_known,
                dns,
            }
        }

        async fn resolve(self, server_name: &str) -> Destination {
            resolve(&self.build().resolver, server_name).await
        }
    }

    struct Fakes {
        resolver: Resolver,
        well_known: Arc<FakeWellKnown>,
        dns: Arc<FakeDns>,
    }

    fn world() -> World {
        World::default()
    }

    async fn resolve(resolver: &Resolver, server_name: &str) -> Destination {
        let server_name = <&ServerName>::try_from(server_name).unwrap();
        resolver.resolve(server_name).await.unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// Checks (tls_name, port, addrs, host_header, step).
    fn check(d: &Destination, tls_name: &str, port: u16, expected_addrs: &[&str], host_header: &str, step: Step) {
        assert_eq!(
            (d.tls_name.as_str(), d.port, &d.addrs, d.host_header.as_str(), d.step),
            (tls_name, port, &addrs(expected_addrs), host_header, step)
        );
    }

    // Step 1.

    #[tokio::test(start_paused = true)]
    async fn step1_ipv4_literal() {
        let world = world().well_known("1.2.3.4", delegate_to("evil.example"));
        let Fakes {
            resolver, well_known, ..
        } = world.build();
        let d = resolve(&resolver, "1.2.3.4").await;
        check(&d, "1.2.3.4", 8448, &["1.2.3.4:8448"], "1.2.3.4", Step::IpLiteral);
        assert_eq!(d.tls_ip(), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(well_known.calls(), 0);
        let d = resolve(&resolver, "1.2.3.4:1234").await;
        check(&d, "1.2.3.4", 1234, &["1.2.3.4:1234"], "1.2.3.4:1234", Step::IpLiteral);
    }

    #[tokio::test(start_paused = true)]
    async fn step1_ipv6_literal() {
        let d = world().resolve("[::1]").await;
        check(&d, "::1", 8448, &["[::1]:8448"], "[::1]", Step::IpLiteral);
        assert_eq!(d.tls_ip(), Some("::1".parse().unwrap()));
        assert_eq!(d.authority(), "[::1]:8448");
        let d = world().resolve("[2001:db8::1]:1234").await;
        check(
            &d,
            "2001:db8::1",
            1234,
            &["[2001:db8::1]:1234"],
            "[2001:db8::1]:1234",
            Step::IpLiteral,
        );
    }

    // Step 2.

    #[tokio::test(start_paused = true)]
    async fn step2_hostname_with_port() {
        let world = world()
            .ip("example.org", &["192.0.2.1", "2001:db8::2"])
            .srv("_matrix-fed._tcp.example.org", &[("decoy.example.org", 1)])
            .well_known("example.org", delegate_to("decoy.example.org"));
        let Fakes {
            resolver, well_known, ..
        } = world.build();
        let d = resolve(&resolver, "example.org:1234").await;
        check(
            &d,
            "example.org",
            1234,
            &["192.0.2.1:1234", "[2001:db8::2]:1234"],
            "example.org:1234",
            Step::HostWithPort,
        );
        assert_eq!(d.tls_ip(), None);
        assert_eq!(d.authority(), "example.org:1234");
        assert_eq!(well_known.calls(), 0);
    }

    // Step 3.

    #[tokio::test(start_paused = true)]
    async fn step3_1_delegated_to_ip_literal() {
        let d = world()
            .well_known("example.org", delegate_to("192.0.2.7"))
            .resolve("example.org")
            .await;
        check(
            &d,
            "192.0.2.7",
            8448,
            &["192.0.2.7:8448"],
            "192.0.2.7",
            Step::DelegatedIpLiteral,
        );
        let d = world()
            .well_known("example.org", delegate_to("[2001:db8::7]:4321"))
            .resolve("example.org")
            .await;
        check(
            &d,
            "2001:db8::7",
            4321,
            &["[2001:db8::7]:4321"],
            "[2001:db8::7]:4321",
            Step::DelegatedIpLiteral,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn step3_2_delegated_to_hostname_with_port() {
        let d = world()
            .well_known("example.org", delegate_to("matrix.example.net:1234"))
            .ip("matrix.example.net", &["192.0.2.8"])
            .ip("example.org", &["192.0.2.1"])
            .srv("_matrix-fed._tcp.matrix.example.net", &[("decoy.example.net", 1)])
            .resolve("example.org")
            .await;
        check(
            &d,
            "matrix.example.net",
            1234,
            &["192.0.2.8:1234"],
            "matrix.example.net:1234",
            Step::DelegatedHostWithPort,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn step3_3_delegated_srv_matrix_fed() {
        let d = world()
            .well_known("example.org", delegate_to("matrix.example.net"))
            .srv("_matrix-fed._tcp.matrix.example.net", &[("fed.example.net", 8443)])
            .srv("_matrix._tcp.matrix.example.net", &[("old.example.net", 1)])
            .srv("_matrix-fed._tcp.example.org", &[("decoy.example.org", 1)])
            .ip("fed.example.net", &["192.0.2.9", "2001:db8::9"])
            .resolve("example.org")
            .await;
        check(
            &d,
            "matrix.example.net",
            8443,
            &["192.0.2.9:8443", "[2001:db8::9]:8443"],
            "matrix.example.net",
            Step::DelegatedSrvMatrixFed,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn step3_4_delegated_srv_matrix() {
        let d = world()
            .well_known("example.org", delegate_to("matrix.example.net"))
            .srv("_matrix._tcp.matrix.example.net", &[("old.example.net", 8449)])
            .ip("old.example.net", &["192.0.2.10"])
            .ip("matrix.example.net", &["192.0.2.11"])
            .resolve("example.org")
            .await;
        check(
            &d,
            "matrix.example.net",
            8449,
            &["192.0.2.10:8449"],
            "matrix.example.net",
            Step::DelegatedSrvMatrix,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn step3_5_delegated_default_port() {
        let d = world()
            .well_known("example.org", delegate_to("matrix.example.net"))
            .ip("matrix.example.net", &["192.0.2.11"])
            .ip("example.org", &["192.0.2.1"])
            .resolve("example.org")
            .await;
        check(
            &d,
            "matrix.example.net",
            8448,
            &["192.0.2.11:8448"],
            "matrix.example.net",
            Step::DelegatedDefaultPort,
        );
    }

    // Steps 4 to 6.

    #[tokio::test(start_paused = true)]
    async fn step4_srv_matrix_fed() {
        let d = world()
            .srv(
                "_matrix-fed._tcp.example.org",
                &[("a.example.org", 8443), ("b.example.org", 8444)],
            )
            .srv("_matrix._tcp.example.org", &[("old.example.org", 1)])
            .ip("a.example.org", &["192.0.2.20"])
            .ip("b.example.org", &["192.0.2.21"])
            .ip("example.org", &["192.0.2.1"])
            .resolve("example.org")
            .await;
        check(
            &d,
            "example.org",
            8443,
            &["192.0.2.20:8443", "192.0.2.21:8444"],
            "example.org",
            Step::SrvMatrixFed,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn step4_srv_target_without_address_is_skipped() {
        let d = world()
            .srv(
                "_matrix-fed._tcp.example.org",
                &[("gone.example.org", 8443), ("b.example.org", 8444)],
            )
            .ip("b.example.org", &["192.0.2.21"])
            .resolve("example.org")
            .await;
        check(
            &d,
            "example.org",
            8443,
            &["192.0.2.21:8444"],
            "example.org",
            Step::SrvMatrixFed,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn step5_srv_matrix() {
        let d = world()
            .srv("_matrix._tcp.example.org", &[("old.example.org", 8449)])
            .ip("old.example.org", &["192.0.2.22"])
            .ip("example.org", &["192.0.2.1"])
            .resolve("example.org")
            .await;
        check(
            &d,
            "example.org",
            8449,
            &["192.0.2.22:8449"],
            "example.org",
            Step::SrvMatrix,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn step6_default_port() {
        let d = world()
            .ip("example.org", &["2001:db8::1", "192.0.2.1"])
            .resolve("example.org")
            .await;
        check(
            &d,
            "example.org",
            8448,
            &["[2001:db8::1]:8448", "192.0.2.1:8448"],
            "example.org",
            Step::DefaultPort,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_well_known_responses_fall_back_to_step4() {
        let not_found = Ok(WellKnownResponse {
            status: 404,
            body: br#"{"m.server": "decoy.example.net"}"#.to_vec(),
            cache_control: None,
        });
        let responses = [
            ok("not json", None),
            ok("{}", None),
            ok(r#"{"m.server": 42}"#, None),
            ok(r#"["m.server"]"#, None),
            ok(r#"{"m.server": "not a server name!"}"#, None),
            not_found,
            Err(WellKnownError::Invalid("too large".to_owned())),
            Err(WellKnownError::Unreachable("timeout".to_owned())),
        ];
        for response in responses {
            let d = world()
                .well_known("example.org", response.clone())
                .ip("decoy.example.net", &["192.0.2.99"])
                .srv("_matrix-fed._tcp.example.org", &[("fed.example.org", 8443)])
                .ip("fed.example.org", &["192.0.2.20"])
                .resolve("example.org")
                .await;
            assert_eq!(d.step, Step::SrvMatrixFed, "{response:?}");
            assert_eq!(d.host_header, "example.org");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_address_is_an_error() {
        let Fakes { resolver, .. } = world()
            .srv("_matrix-fed._tcp.b.example", &[("gone.example", 1)])
            .build();
        for name in ["a.example", "a.example:1234", "b.example"] {
            let server_name = <&ServerName>::try_from(name).unwrap();
            let error = resolver.resolve(server_name).await.unwrap_err();
            assert!(matches!(error, ResolveError::NoAddress { .. }), "{error}");
        }
    }

    // Caching.

    #[tokio::test(start_paused = true)]
    async fn destinations_and_well_known_are_cached() {
        let world = world()
            .well_known("example.org", delegate_to("matrix.example.net"))
            .ip("matrix.example.net", &["192.0.2.11"]);
        let Fakes {
            resolver, well_known, ..
        } = world.build();
        let first = resolve(&resolver, "example.org").await;
        assert_eq!(resolve(&resolver, "example.org").await, first);
        assert_eq!(well_known.calls(), 1);
        // The destination expires before the delegation.
        tokio::time::advance(DESTINATION_TTL + Duration::from_secs(1)).await;
        assert_eq!(resolve(&resolver, "example.org").await, first);
        assert_eq!(well_known.calls(), 1);
        // The delegation lasts 24 hours without Cache-Control.
        tokio::time::advance(Duration::from_secs(24 * 3600)).await;
        assert_eq!(resolve(&resolver, "example.org").await, first);
        assert_eq!(well_known.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn forget_drops_the_destination_only() {
        let world = world()
            .well_known("example.org", delegate_to("matrix.example.net"))
            .ip("matrix.example.net", &["192.0.2.11"]);
        let Fakes {
            resolver,
            well_known,
            dns,
        } = world.build();
        resolve(&resolver, "example.org").await;
        resolve(&resolver, "example.org").await;
        assert_eq!(dns.ip_lookups.load(Ordering::SeqCst), 1);
        resolver.forget(<&ServerName>::try_from("example.org").unwrap());
        resolve(&resolver, "example.org").await;
        assert_eq!(dns.ip_lookups.load(Ordering::SeqCst), 2);
        assert_eq!(well_known.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cache_control_max_age_is_respected_within_bounds() {
        for (header, ttl_secs) in [
            ("public, max-age=3600", 3600),
            ("max-age=10", WELL_KNOWN_MIN_TTL.as_secs()),
            ("no-store", WELL_KNOWN_MIN_TTL.as_secs()),
            ("max-age=99999999", WELL_KNOWN_MAX_TTL.as_secs()),
        ] {
            let world = world()
                .well_known("example.org", ok(r#"{"m.server": "192.0.2.7"}"#, Some(header)))
                .ip("example.org", &["192.0.2.1"]);
            let Fakes {
                resolver, well_known, ..
            } = world.build();
            let name = <&ServerName>::try_from("example.org").unwrap();
            resolver.resolve(name).await.unwrap();
            // Expiry counts from the end of the fetch.
            tokio::time::advance(Duration::from_secs(ttl_secs - 1)).await;
            resolver.forget(name);
            resolver.resolve(name).await.unwrap();
            assert_eq!(well_known.calls(), 1, "{header}: still cached");
            tokio::time::advance(Duration::from_secs(2)).await;
            resolver.forget(name);
            resolver.resolve(name).await.unwrap();
            assert_eq!(well_known.calls(), 2, "{header}: expired");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn well_known_errors_are_cached_with_backoff() {
        let world = world().ip("example.org", &["192.0.2.1"]);
        let Fakes {
            resolver, well_known, ..
        } = world.build();
        let name = <&ServerName>::try_from("example.org").unwrap();
        let mut expected_calls = 0;
        for ttl_minutes in [5, 10, 20, 40, 60, 60] {
            resolver.forget(name);
            assert_eq!(resolver.resolve(name).await.unwrap().step, Step::DefaultPort);
            expected_calls += 1;
            assert_eq!(well_known.calls(), expected_calls);
            tokio::time::advance(Duration::from_secs(ttl_minutes * 60 - 1)).await;
            resolver.forget(name);
            resolver.resolve(name).await.unwrap();
            assert_eq!(well_known.calls(), expected_calls, "cached for {ttl_minutes} min");
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // A valid response ends the back-off.
        well_known.set("example.org", delegate_to("192.0.2.7"));
        resolver.forget(name);
        assert_eq!(resolver.resolve(name).await.unwrap().step, Step::DelegatedIpLiteral);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delegation_survives_transient_failures_only() {
        let world = world()
            .well_known("example.org", ok(r#"{"m.server": "192.0.2.7"}"#, Some("max-age=600")))
            .ip("example.org", &["192.0.2.1"]);
        let Fakes {
            resolver, well_known, ..
        } = world.build();
        let name = <&ServerName>::try_from("example.org").unwrap();
        assert_eq!(resolver.resolve(name).await.unwrap().step, Step::DelegatedIpLiteral);
        // Unreachable: the old delegation stays, for a few failures.
        well_known.set("example.org", Err(WellKnownError::Unreachable("timeout".to_owned())));
        let mut steps = Vec::new();
        for _ in 0..=WELL_KNOWN_STALE_FAILURES {
            tokio::time::advance(WELL_KNOWN_ERROR_MAX_TTL + Duration::from_secs(1)).await;
            resolver.forget(name);
            steps.push(resolver.resolve(name).await.unwrap().step);
        }
        let mut expected = vec![Step::DelegatedIpLiteral; WELL_KNOWN_STALE_FAILURES as usize];
        expected.push(Step::DefaultPort);
        assert_eq!(steps, expected);
        // A definite answer (404) ends a delegation at once.
        well_known.set("example.org", ok(r#"{"m.server": "192.0.2.7"}"#, None));
        tokio::time::advance(WELL_KNOWN_ERROR_MAX_TTL + Duration::from_secs(1)).await;
        resolver.forget(name);
        assert_eq!(resolver.resolve(name).await.unwrap().step, Step::DelegatedIpLiteral);
        well_known.set(
            "example.org",
            ok("", None).map(|r| WellKnownResponse { status: 404, ..r }),
        );
        tokio::time::advance(WELL_KNOWN_DEFAULT_TTL + Duration::from_secs(1)).await;
        resolver.forget(name);
        assert_eq!(resolver.resolve(name).await.unwrap().step, Step::DefaultPort);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_resolutions_share_one_fetch() {
        let world = world()
            .well_known("example.org", delegate_to("matrix.example.net"))
            .ip("matrix.example.net", &["192.0.2.11"]);
        let Fakes {
            resolver, well_known, ..
        } = world.build();
        let (a, b, c) = tokio::join!(
            resolve(&resolver, "example.org"),
            resolve(&resolver, "example.org"),
            resolve(&resolver, "example.org")
        );
        assert!(a == b && b == c);
        assert_eq!(well_known.calls(), 1);
        assert!(resolver.in_flight().is_empty());
    }

    // Helpers.

    #[test]
    fn parses_well_known_bodies() {
        let name = parse_well_known(br#"{"m.server": "delegated.example.com:1234", "other": 1}"#).unwrap();
        assert_eq!(name.as_str(), "delegated.example.com:1234");
        assert!(parse_well_known(b"").is_err());
        assert!(parse_well_known(br#"{"m.server": ""}"#).is_err());
    }

    #[test]
    fn parses_cache_control() {
        assert_eq!(max_age("max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(max_age("Public, Max-Age=\"120\""), Some(Duration::from_secs(120)));
        assert_eq!(max_age("no-cache, max-age=60"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn recognises_ip_literals() {
        assert_eq!(ip_literal("1.2.3.4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(ip_literal("[::ffff:1.2.3.4]"), Some("::ffff:1.2.3.4".parse().unwrap()));
        assert_eq!(ip_literal("1.2.3.4.example"), None);
        assert_eq!(ip_literal("::1"), None);
        assert_eq!(ip_literal("example.org"), None);
    }

    /// Serves `router` over TLS on the loopback interface with a
    /// self-signed certificate; returns its `127.0.0.1:port`.
    fn tls_server(router: axum::Router) -> String {
        crate::tls::install_crypto_provider();
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![generated.cert.der().clone()], key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
        let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
        tokio::spawn(server.serve(router.into_make_service()));
        addr.to_string()
    }

    async fn fetch(router: axum::Router) -> Result<WellKnownResponse, WellKnownError> {
        let host = tls_server(router);
        HttpsWellKnown::new(false).unwrap().fetch(&host).await
    }

    const PATH: &str = "/.well-known/matrix/server";

    fn redirect(to: String) -> axum::response::Redirect {
        axum::response::Redirect::temporary(&to)
    }

    #[tokio::test]
    async fn https_fetcher_gets_the_response() {
        use axum::{http::header, routing::get};
        let body = r#"{"m.server": "matrix.example.net:443"}"#;
        let router = axum::Router::new().route(
            PATH,
            get(move || async move { ([(header::CACHE_CONTROL, "max-age=60")], body) }),
        );
        let response = fetch(router).await.unwrap();
        assert_eq!((response.status, response.body.as_slice()), (200, body.as_bytes()));
        assert_eq!(response.cache_control.as_deref(), Some("max-age=60"));
        let response = fetch(axum::Router::new()).await.unwrap();
        assert_eq!(response.status, 404);
    }

    #[tokio::test]
    async fn https_fetcher_verifies_certificates_unless_told_not_to() {
        let host = tls_server(axum::Router::new());
        let error = HttpsWellKnown::new(true).unwrap().fetch(&host).await.unwrap_err();
        assert!(matches!(error, WellKnownError::Unreachable(_)), "{error}");
        assert!(HttpsWellKnown::new(false).unwrap().fetch(&host).await.is_ok());
        // Nothing listens on the discard port.
        let error = HttpsWellKnown::new(false)
            .unwrap()
            .fetch("127.0.0.1:9")
            .await
            .unwrap_err();
        assert!(matches!(error, WellKnownError::Unreachable(_)), "{error}");
        assert!(Resolver::new(true).is_ok());
    }

    #[tokio::test]
    async fn https_fetcher_follows_redirects_but_not_loops() {
        use axum::{extract::Path, routing::get};
        let followed = axum::Router::new()
            .route(PATH, get(|| async { redirect("/elsewhere".to_owned()) }))
            .route("/elsewhere", get(|| async { r#"{"m.server": "a.example"}"# }));
        assert_eq!(fetch(followed).await.unwrap().body, br#"{"m.server": "a.example"}"#);

        let looping = axum::Router::new()
            .route(PATH, get(|| async { redirect("/loop".to_owned()) }))
            .route("/loop", get(|| async { redirect(PATH.to_owned()) }));
        let error = fetch(looping).await.unwrap_err();
        assert!(error.to_string().contains("loop"), "{error}");

        let endless = axum::Router::new()
            .route(PATH, get(|| async { redirect("/r/1".to_owned()) }))
            .route(
                "/r/{n}",
                get(|Path(n): Path<u32>| async move { redirect(format!("/r/{}", n + 1)) }),
            );
        let error = fetch(endless).await.unwrap_err();
        assert!(error.to_string().contains("too many redirects"), "{error}");
    }

    #[tokio::test]
    async fn https_fetcher_limits_the_body() {
        use axum::{body::Body, routing::get};
        let large = axum::Router::new().route(PATH, get(|| async { " ".repeat(WELL_KNOWN_MAX_BYTES + 1) }));
        assert!(matches!(fetch(large).await, Err(WellKnownError::Invalid(_))));
        // Without Content-Length.
        let streamed = axum::Router::new().route(
            PATH,
            get(|| async {
                let chunk = || Ok::<_, std::io::Error>(vec![b' '; WELL_KNOWN_MAX_BYTES / 2 + 1]);
                Body::from_stream(futures_util::stream::iter([chunk(), chunk()]))
            }),
        );
        assert!(matches!(fetch(streamed).await, Err(WellKnownError::Invalid(_))));
        let fits = axum::Router::new().route(PATH, get(|| async { " ".repeat(WELL_KNOWN_MAX_BYTES) }));
        assert_eq!(fetch(fits).await.unwrap().body.len(), WELL_KNOWN_MAX_BYTES);
    }

    #[test]
    fn resolver_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Resolver>();
    }
}
