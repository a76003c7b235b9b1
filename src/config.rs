//! Configuration: a flat TOML file whose every key can be overridden by an
//! environment variable `WEFT_<KEY>` (upper case).
//!
//! The file is optional: with none, weft runs on the defaults below, which
//! need no database server and no certificate (a self-signed one is made).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ruma::{OwnedServerName, RoomVersionId};
use serde::Deserialize;

/// Everything weft can be told at start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name: the part after `:` in user IDs. Never change it
    /// once users and rooms exist.
    pub server_name: OwnedServerName,
    /// Where the database, signing key and generated certificate live.
    pub data_dir: PathBuf,
    /// A PostgreSQL database to keep everything in instead of the SQLite
    /// file in `data_dir` (`postgres://user@host:port/db`, or the
    /// `key=value` form, `host=/run/postgresql` for a Unix socket).
    pub database_url: Option<String>,
    /// This process's name among the processes sharing `database_url`
    /// (letters, digits, `.`, `_`, `-`): unique, and the same across
    /// restarts, so that a restarted process takes back its duties at once.
    /// Unset: a random name each start.
    pub instance_name: Option<String>,
    /// Client-server API listener (plain HTTP; put a TLS proxy in front).
    pub client_listen: SocketAddr,
    /// Federation (server-server) API listener (HTTPS).
    pub federation_listen: SocketAddr,
    /// Serve the federation listener over plain HTTP (for a TLS-terminating
    /// proxy in front of weft). Off by default.
    pub federation_plain_http: bool,
    /// PEM certificate chain for the federation listener. Empty: a
    /// self-signed certificate is generated in `data_dir` on first start.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Whether anyone may register an account through the client API.
    pub allow_registration: bool,
    /// Whether guest accounts (`POST /register?kind=guest`) may be made:
    /// guests reach a small part of the client API and join only rooms
    /// whose `m.room.guest_access` is `can_join`. Off by default.
    pub allow_guest_access: bool,
    /// weft runs behind a reverse proxy: a client's address is the first
    /// of `X-Forwarded-For`, not the connection's. Off by default.
    pub x_forwarded: bool,
    /// Shared secret for `/_synapse/admin/v1/register` (empty: disabled).
    pub registration_shared_secret: Option<String>,
    /// Room version of rooms created without one.
    pub default_room_version: RoomVersionId,
    /// Verify the TLS certificates of other homeservers (and of push
    /// gateways and identity servers). Only loopback test rigs turn this off.
    pub federation_verify_tls: bool,
    /// Notary servers asked for another server's keys when that server
    /// cannot be reached directly (comma-separated in the environment).
    pub trusted_key_servers: Vec<OwnedServerName>,
    /// Application service registration files (YAML, as Synapse reads
    /// them), loaded at start (comma-separated in the environment).
    pub app_service_config_files: Vec<PathBuf>,
    /// Where to serve Prometheus metrics at `/metrics` (plain HTTP); off
    /// when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Where users reach the server's administrator (a URI:
    /// `mailto:admin@example.org`, `https://example.org/support`): given
    /// with the errors of a server out of a resource (a full disk), as
    /// the spec's `admin_contact`. Unset: those errors go without it.
    pub admin_contact: Option<String>,
    /// The URL clients reach the client API at (`https://matrix.example.org/`),
    /// given in `/.well-known/matrix/client` (served by the client
    /// listener: route `https://<server_name>/.well-known/matrix/client` to
    /// it) so that clients that know only the server name — Element X
    /// among them — find weft. Unset: that document is not served.
    pub public_baseurl: Option<String>,
    /// Presence (online, idle, offline, status messages): kept, shown in
    /// `/sync` and shared with other servers. On by default.
    pub presence: bool,
    /// Self-destructing messages (MSC2228, not in the spec yet): a message
    /// whose content has `org.matrix.self_destruct_after` (milliseconds
    /// since the epoch) is pruned, as a redaction prunes it, at that time.
    /// Off by default.
    pub ephemeral_messages: bool,
    /// Joining rooms held by other servers with partial state (a "faster
    /// join"): the resident server leaves the member events out, the room
    /// is usable at once and the rest is fetched in the background (the
    /// events received meanwhile are checked again against it; see
    /// `docs/joins.md`). On by default.
    pub partial_state_joins: bool,
    /// The largest media upload accepted (bytes); larger ones are refused
    /// with `M_TOO_LARGE`. Also the largest remote media fetched.
    pub max_upload_size: u64,
    /// How long a connection (either listener) may take to send a
    /// request's headers before it is closed, in seconds: a client that
    /// never finishes them does not keep its connection.
    pub header_read_timeout_secs: u64,
    /// Rate limits on sends, logins and registrations ([`crate::limits`]);
    /// on by default. Each process of a cluster keeps its own.
    pub rate_limits: bool,
    /// Events (messages, state, redactions) one user may send: per second
    /// on average, and at once.
    pub rate_limit_sends_per_second: f64,
    pub rate_limit_sends_burst: u32,
    /// Logins tried from one address.
    pub rate_limit_logins_per_second: f64,
    pub rate_limit_logins_burst: u32,
    /// Logins tried to one account, from anywhere.
    pub rate_limit_account_logins_per_second: f64,
    pub rate_limit_account_logins_burst: u32,
    /// Accounts registered from one address.
    pub rate_limit_registrations_per_second: f64,
    pub rate_limit_registrations_burst: u32,
    /// Requests one client (access token, or server from an address, or
    /// address without either) may have in flight at once; more are `429`.
    pub max_requests_per_client: usize,
    /// Requests this process serves at once, both listeners together.
    pub max_requests: usize,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost".try_into().expect("valid server name"),
            data_dir: PathBuf::from("./weft-data"),
            database_url: None,
            instance_name: None,
            client_listen: "127.0.0.1:8008".parse().expect("valid address"),
            federation_listen: "0.0.0.0:8448".parse().expect("valid address"),
            federation_plain_http: false,
            tls_cert: None,
            tls_key: None,
            allow_registration: false,
            allow_guest_access: false,
            x_forwarded: false,
            registration_shared_secret: None,
            default_room_version: RoomVersionId::V11,
            federation_verify_tls: true,
            trusted_key_servers: Vec::new(),
            app_service_config_files: Vec::new(),
            metrics_listen: None,
            admin_contact: None,
            public_baseurl: None,
            presence: true,
            ephemeral_messages: false,
            partial_state_joins: true,
            max_upload_size: 50 * 1024 * 1024,
            header_read_timeout_secs: 30,
            rate_limits: true,
            rate_limit_sends_per_second: 2.0,
            rate_limit_sends_burst: 30,
            rate_limit_logins_per_second: 0.2,
            rate_limit_logins_burst: 10,
            rate_limit_account_logins_per_second: 0.1,
            rate_limit_account_logins_burst: 5,
            rate_limit_registrations_per_second: 0.2,
            rate_limit_registrations_burst: 5,
            max_requests_per_client: 64,
            max_requests: 8192,
            log: "info,ruma_state_res=warn".to_owned(),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The room versions weft can create and join: 1 to 12 (ruma holds each
/// one's rules; state resolution v1, for version 1, is weft's own).
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

impl Config {
    /// Loads `path` (if given), then applies `WEFT_*` overrides from the
    /// process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// As [`Config::load`], with the environment supplied by `env`.
    pub fn load_with_env(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                })?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the text of a config file. The error names the key and line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn set<T: std::str::FromStr>(
            env: &impl Fn(&str) -> Option<String>,
            key: &str,
            slot: &mut T,
        ) -> Result<(), ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            let var = format!("WEFT_{}", key.to_ascii_uppercase());
            if let Some(value) = env(&var) {
                *slot = value.parse().map_err(|e: T::Err| ConfigError::Env {
                    var,
                    message: e.to_string(),
                })?;
            }
            Ok(())
        }
        fn set_opt<T: std::str::FromStr>(
            env: &impl Fn(&str) -> Option<String>,
            key: &str,
            slot: &mut Option<T>,
        ) -> Result<(), ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            let var = format!("WEFT_{}", key.to_ascii_uppercase());
            if let Some(value) = env(&var) {
                *slot = if value.is_empty() {
                    None
                } else {
                    Some(value.parse().map_err(|e: T::Err| ConfigError::Env {
                        var,
                        message: e.to_string(),
                    })?)
                };
            }
            Ok(())
        }
        set(&env, "server_name", &mut self.server_name)?;
        set(&env, "data_dir", &mut self.data_dir)?;
        set_opt(&env, "database_url", &mut self.database_url)?;
        set_opt(&env, "instance_name", &mut self.instance_name)?;
        set(&env, "client_listen", &mut self.client_listen)?;
        set(&env, "federation_listen", &mut self.federation_listen)?;
        set(&env, "federation_plain_http", &mut self.federation_plain_http)?;
        set_opt(&env, "tls_cert", &mut self.tls_cert)?;
        set_opt(&env, "tls_key", &mut self.tls_key)?;
        set(&env, "allow_registration", &mut self.allow_registration)?;
        set(&env, "allow_guest_access", &mut self.allow_guest_access)?;
        set(&env, "x_forwarded", &mut self.x_forwarded)?;
        set_opt(&env, "registration_shared_secret", &mut self.registration_shared_secret)?;
        set(&env, "default_room_version", &mut self.default_room_version)?;
        set(&env, "federation_verify_tls", &mut self.federation_verify_tls)?;
        set(&env, "header_read_timeout_secs", &mut self.header_read_timeout_secs)?;
        if let Some(list) = env("WEFT_TRUSTED_KEY_SERVERS") {
            self.trusted_key_servers = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    OwnedServerName::try_from(s).map_err(|e| ConfigError::Env {
                        var: "WEFT_TRUSTED_KEY_SERVERS".to_owned(),
                        message: format!("{s}: {e}"),
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(list) = env("WEFT_APP_SERVICE_CONFIG_FILES") {
            self.app_service_config_files = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        set_opt(&env, "metrics_listen", &mut self.metrics_listen)?;
        set_opt(&env, "admin_contact", &mut self.admin_contact)?;
        set_opt(&env, "public_baseurl", &mut self.public_baseurl)?;
        set(&env, "presence", &mut self.presence)?;
        set(&env, "ephemeral_messages", &mut self.ephemeral_messages)?;
        set(&env, "partial_state_joins", &mut self.partial_state_joins)?;
        set(&env, "max_upload_size", &mut self.max_upload_size)?;
        set(&env, "rate_limits", &mut self.rate_limits)?;
        set(
            &env,
            "rate_limit_sends_per_second",
            &mut self.rate_limit_sends_per_second,
        )?;
        set(&env, "rate_limit_sends_burst", &mut self.rate_limit_sends_burst)?;
        set(
            &env,
            "rate_limit_logins_per_second",
            &mut self.rate_limit_logins_per_second,
        )?;
        set(&env, "rate_limit_logins_burst", &mut self.rate_limit_logins_burst)?;
        set(
            &env,
            "rate_limit_account_logins_per_second",
            &mut self.rate_limit_account_logins_per_second,
        )?;
        set(
            &env,
            "rate_limit_account_logins_burst",
            &mut self.rate_limit_account_logins_burst,
        )?;
        set(
            &env,
            "rate_limit_registrations_per_second",
            &mut self.rate_limit_registrations_per_second,
        )?;
        set(
            &env,
            "rate_limit_registrations_burst",
            &mut self.rate_limit_registrations_burst,
        )?;
        set(&env, "max_requests_per_client", &mut self.max_requests_per_client)?;
        set(&env, "max_requests", &mut self.max_requests)?;
        set(&env, "log", &mut self.log)?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !SUPPORTED_ROOM_VERSIONS.contains(&self.default_room_version) {
            return Err(ConfigError::Invalid {
                key: "default_room_version",
                message: format!(
                    "room version {} is not supported (supported: 1 to 12)",
                    self.default_room_version
                ),
            });
        }
        if let Some(name) = &self.instance_name
            && (name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err(ConfigError::Invalid {
                key: "instance_name",
                message: format!("{name:?}: 1 to 64 letters, digits, '.', '_' or '-'"),
            });
        }
        if self.header_read_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "header_read_timeout_secs",
                message: "must be at least 1".to_owned(),
            });
        }
        for (key, value) in [
            ("max_requests_per_client", self.max_requests_per_client),
            ("max_requests", self.max_requests),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        for (key, value) in [
            ("rate_limit_sends_per_second", self.rate_limit_sends_per_second),
            ("rate_limit_logins_per_second", self.rate_limit_logins_per_second),
            (
                "rate_limit_account_logins_per_second",
                self.rate_limit_account_logins_per_second,
            ),
            (
                "rate_limit_registrations_per_second",
                self.rate_limit_registrations_per_second,
            ),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{value}: must be a positive number (rate_limits = false turns them off)"),
                });
            }
        }
        if let Some(contact) = &self.admin_contact
            && !is_uri(contact)
        {
            return Err(ConfigError::Invalid {
                key: "admin_contact",
                message: format!("{contact:?}: a URI, e.g. \"mailto:admin@example.org\""),
            });
        }
        if let Some(url) = &self.public_baseurl
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::Invalid {
                key: "public_baseurl",
                message: format!("{url:?}: an http(s) URL, e.g. \"https://matrix.example.org/\""),
            });
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls_cert",
                message: "tls_cert and tls_key must be given together".to_owned(),
            });
        }
        Ok(())
    }
}

/// A URI as RFC 3986 begins one: a scheme (a letter, then letters,
/// digits, `+`, `-`, `.`), `:`, and more, without spaces.
fn is_uri(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once(':') else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The commented default configuration file that `weft generate-config`
/// prints. Every key is shown with its default value.
pub const DEFAULT_CONFIG_TOML: &str = r#"# weft configuration.
# Every key may be overridden by an environment variable WEFT_<KEY>,
# e.g. WEFT_SERVER_NAME=example.org or WEFT_CLIENT_LISTEN=0.0.0.0:8008.

# The server name: the part after ':' in user IDs (@alice:localhost).
# Never change it once users and rooms exist.
server_name = "localhost"

# Where the SQLite database, the signing key and a generated TLS
# certificate are kept.
data_dir = "./weft-data"

# A PostgreSQL database to keep everything in, instead of the SQLite file
# in data_dir: a URL or a key=value string (host=/run/postgresql for a Unix
# socket). data_dir still holds the signing key, the certificate and media.
# database_url = "postgres://weft@localhost/weft"

# With several weft processes over one database_url: this process's name,
# unique among them and the same across its restarts (letters, digits,
# '.', '_', '-'). A second process started with a name in use waits for
# the first to stop, then refuses to start. Random each start when left out.
# instance_name = "weft-1"

# Client-server API: plain HTTP. Put a TLS reverse proxy in front of it
# for anything but local use.
client_listen = "127.0.0.1:8008"

# Federation (server-server) API: HTTPS.
federation_listen = "0.0.0.0:8448"

# Serve the federation listener over plain HTTP, for a TLS-terminating
# proxy in front of weft.
federation_plain_http = false

# PEM certificate chain and private key for the federation listener.
# Leave both out to have a self-signed certificate generated in data_dir.
# tls_cert = "/etc/weft/fullchain.pem"
# tls_key = "/etc/weft/privkey.pem"

# Whether anyone may create an account through the client API.
# Admins create accounts with `weft register-user NAME --password P`.
allow_registration = false

# Whether guest accounts may be made (POST /register?kind=guest). Guests
# use a small part of the client API and join only rooms whose
# m.room.guest_access is "can_join"; a guest can later upgrade to a full
# account by registering with its access token.
allow_guest_access = false

# Behind a reverse proxy: take a client's address (shown in its device
# list and /admin/whois) from X-Forwarded-For.
x_forwarded = false

# Shared secret for Synapse-compatible admin registration
# (/_synapse/admin/v1/register). Leave out to disable it.
# registration_shared_secret = "long random string"

# Room version of rooms created without one: "10", "11" or "12".
default_room_version = "11"

# Verify other homeservers' (and push gateways', identity servers') TLS
# certificates. Turn off only for loopback test rigs with self-signed
# certificates.
federation_verify_tls = true

# Notary servers to ask for another server's signing keys when that server
# cannot be reached itself, e.g. ["matrix.org"].
trusted_key_servers = []

# Application services (bridges, bots): their registration files, in the
# YAML format of the application service API (id, url, as_token, hs_token,
# sender_localpart, namespaces, rate_limited, protocols).
app_service_config_files = []

# Serve Prometheus metrics at http://<address>/metrics (backfill counts,
# failures and times, ...). Off when left out.
# metrics_listen = "127.0.0.1:9092"

# Where users reach you, the administrator (a URI): given to clients with
# the errors of a server out of a resource, e.g. a full disk
# (M_RESOURCE_LIMIT_EXCEEDED's admin_contact). Left out: not given.
# admin_contact = "mailto:admin@example.org"

# The URL clients reach the client API at, given to clients that know only
# the server name in /.well-known/matrix/client (served by the client
# listener; route https://<server_name>/.well-known/matrix/client to it).
# Element X finds servers this way. Left out: not served.
# public_baseurl = "https://matrix.example.org/"

# Presence: users' online/idle/offline state and status messages, shown to
# the users they share a room with and sent to those users' servers.
presence = true

# Self-destructing messages (MSC2228, not in the spec yet): a message whose
# content has "org.matrix.self_destruct_after" (a time in milliseconds since
# the epoch) is pruned at that time, as a redaction would prune it.
ephemeral_messages = false

# The largest media upload (avatars, images, files) accepted, in bytes;
# also the largest media fetched from another server. 50 MiB by default.
max_upload_size = 52428800

# Seconds a connection may take to send a request's headers before it is
# closed (a client that never finishes them does not keep its connection).
header_read_timeout_secs = 30

# Rate limits, per process (each process of a cluster keeps its own). A
# client past one gets 429 M_LIMIT_EXCEEDED with retry_after_ms.
# Off only for test rigs and benchmarks.
rate_limits = true
# Events (messages, state, redactions) one user may send: on average per
# second, and at once. Application services with rate_limited: false are
# exempt.
rate_limit_sends_per_second = 2.0
rate_limit_sends_burst = 30
# Logins tried from one address.
rate_limit_logins_per_second = 0.2
rate_limit_logins_burst = 10
# Logins tried to one account, from any address.
rate_limit_account_logins_per_second = 0.1
rate_limit_account_logins_burst = 5
# Accounts registered from one address.
rate_limit_registrations_per_second = 0.2
rate_limit_registrations_burst = 5

# Requests one client (an access token; a server from one address; an
# address without either) may have in flight at once, and requests this
# process serves at once in all. More are answered 429 M_LIMIT_EXCEEDED.
max_requests_per_client = 64
max_requests = 8192

# Log filter (tracing EnvFilter syntax), e.g. "info" or "weft=debug,info".
log = "info,ruma_state_res=warn"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_the_default() {
        assert_eq!(Config::parse(DEFAULT_CONFIG_TOML).unwrap(), Config::default());
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.toml");
        std::fs::write(&path, "server_name = \"file.example\"\nlog = \"debug\"\n").unwrap();
        let config = Config::load_with_env(Some(&path), |k| match k {
            "WEFT_SERVER_NAME" => Some("env.example:8448".to_owned()),
            "WEFT_CLIENT_LISTEN" => Some("127.0.0.1:1234".to_owned()),
            "WEFT_ALLOW_REGISTRATION" => Some("true".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.server_name.as_str(), "env.example:8448");
        assert_eq!(config.client_listen.port(), 1234);
        assert!(config.allow_registration);
        assert_eq!(config.log, "debug");
    }

    #[test]
    fn bad_file_names_key_and_line() {
        let err = Config::parse("server_name = \"ok\"\nclient_listen = 12\n").unwrap_err();
        assert!(err.contains("client_listen"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = Config::parse("\n\nsevrer_name = \"typo\"\n").unwrap_err();
        assert!(err.contains("sevrer_name"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_env_names_variable() {
        let err = Config::load_with_env(None, |k| (k == "WEFT_FEDERATION_LISTEN").then(|| "nonsense".to_owned()))
            .unwrap_err();
        assert!(err.to_string().contains("WEFT_FEDERATION_LISTEN"), "{err}");
    }

    #[test]
    fn unsupported_room_version_is_refused() {
        let err =
            Config::load_with_env(None, |k| (k == "WEFT_DEFAULT_ROOM_VERSION").then(|| "13".to_owned())).unwrap_err();
        assert!(err.to_string().contains("default_room_version"), "{err}");
    }

    #[test]
    fn admin_contact_is_a_uri() {
        let contact = |value: &str| {
            let value = value.to_owned();
            Config::load_with_env(None, move |k| (k == "WEFT_ADMIN_CONTACT").then(|| value.clone()))
        };
        for good in ["mailto:admin@example.org", "https://example.org/support", "tel:+441234"] {
            assert_eq!(contact(good).unwrap().admin_contact.as_deref(), Some(good));
        }
        for bad in ["admin@example.org", "mailto:", "1x:y", "mailto:a b@example.org"] {
            let err = contact(bad).unwrap_err();
            assert!(err.to_string().contains("admin_contact"), "{bad}: {err}");
        }
    }
}
