//! A real Synapse (the reference homeserver, `matrix-synapse` from PyPI, in
//! the test virtualenv) on loopback ports: a federation peer for interop
//! tests, and [`Client`], a client-API user of any homeserver (Synapse or
//! weft) by base URL and access token.
//!
//! `Synapse::start()` writes a configuration into a temporary directory
//! (server name `127.0.0.1:<federation port>`, TLS federation listener with a
//! self-signed certificate, peers' certificates not verified, loopback
//! allowed, keys fetched from servers directly, fast federation retries, rate
//! limits off, SQLite; [`Synapse::start_on_postgres`]: a PostgreSQL
//! database instead; an application service with no URL, which registers
//! users `@m<digits>` without a password: [`Synapse::register_as_appservice`]),
//! generates a signing key, starts Synapse in its own
//! process group and waits until it answers. Dropping the value kills that
//! group; a test process that dies without dropping it (killed by a timeout)
//! closes Synapse's stdin, on which a watchdog thread in Synapse's process
//! kills the group too. When a test panics, the tail of Synapse's log goes
//! to stderr (nextest shows it with the failure).
//!
//! Environment: `WEFT_TEST_PYTHON` (else `~/.cache/weft-venv/bin/python`,
//! which `tools/test` sets up), `WEFT_SYNAPSE_LOG_LEVEL` (default `INFO`),
//! `WEFT_SYNAPSE_KEEP=1` keeps the directory (config, database, logs).
#![allow(dead_code)]

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha1::Sha1;
use tempfile::TempDir;

use super::{TestServer, User, enc, free_port};

/// How long Synapse may take to answer `/_matrix/client/versions`.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs Synapse's homeserver module with a watchdog: when stdin reaches
/// end of file (the test process closed it, or died), the whole process
/// group is killed.
const LAUNCHER: &str = r#"
import os, runpy, signal, sys, threading

def watchdog(fd):
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass
    os.killpg(0, signal.SIGKILL)

threading.Thread(target=watchdog, args=(os.dup(0),), daemon=True).start()
sys.argv = ["synapse.app.homeserver"] + sys.argv[1:]
runpy.run_module("synapse.app.homeserver", run_name="__main__", alter_sys=True)
"#;

pub struct Synapse {
    child: Option<Child>,
    /// Held open: Synapse's watchdog kills it when this closes.
    stdin: Option<ChildStdin>,
    dir: Option<TempDir>,
    path: PathBuf,
    server_name: String,
    client_port: u16,
    federation_port: u16,
    shared_secret: String,
    /// The token of its application service (see [`appservice_registration`]).
    appservice_token: String,
    pub http: reqwest::Client,
}

/// The registration (YAML) of the application service every test Synapse
/// has, and the benchmarks' weft servers: no URL (the server sends it
/// nothing), token `token`, users `@m<digits>` (the benchmarks' big rooms:
/// registered with no password, so no password hash). See
/// [`register_as_appservice`].
pub fn appservice_registration(token: &str) -> String {
    format!(
        "id: bench\nurl: null\nas_token: {token}\nhs_token: hs-{token}\nsender_localpart: bench-appservice\n\
         namespaces:\n  users:\n    - exclusive: true\n      regex: '@m[0-9]+:.*'\n  aliases: []\n  rooms: []\n"
    )
}

/// The test virtualenv's Python, which must be able to import synapse.
pub fn python() -> PathBuf {
    let python = std::env::var_os("WEFT_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/weft-venv/bin/python")))
        .expect("neither WEFT_TEST_PYTHON nor HOME is set");
    let probe = Command::new(&python)
        .args(["-c", "import synapse"])
        // Importing synapse from inside its own source tree goes wrong.
        .current_dir(std::env::temp_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import synapse: {}\nRun tools/test, which installs matrix-synapse into \
             ~/.cache/weft-venv (from tests/interop/requirements.txt), or set WEFT_TEST_PYTHON to a \
             python that has it",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run {}: {e}\nRun tools/test, which creates ~/.cache/weft-venv with matrix-synapse \
             (from tests/interop/requirements.txt), or set WEFT_TEST_PYTHON to a python that has it",
            python.display()
        ),
    }
}

fn random_secret() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// The last `lines` lines of a file, or a note that it cannot be read.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

impl Synapse {
    /// A Synapse on SQLite (a file in its directory).
    pub async fn start() -> Synapse {
        Self::start_with_database(None).await
    }

    /// A Synapse on PostgreSQL, through psycopg2 (which the virtualenv must
    /// have: `psycopg2-binary` in tests/interop/requirements.txt).
    /// `conninfo`: the `key=value` connection string (`host`, `port`,
    /// `user`, `dbname`) of an empty database made with the encoding and
    /// collation Synapse requires: `CREATE DATABASE … TEMPLATE template0
    /// LC_COLLATE 'C' LC_CTYPE 'C' ENCODING 'UTF8'`.
    pub async fn start_on_postgres(conninfo: &str) -> Synapse {
        Self::start_with_database(Some(conninfo)).await
    }

    async fn start_with_database(postgres: Option<&str>) -> Synapse {
        weft::tls::install_crypto_provider();
        let python = python();
        let database = match postgres {
            None => None,
            Some(conninfo) => {
                require_psycopg2(&python);
                Some(postgres_database_yaml(conninfo))
            }
        };
        // The ports are picked free but bound only by Synapse: another
        // process may take one in between. Then try others.
        let mut attempt = 1;
        loop {
            match Self::start_on_free_ports(&python, database.as_deref()).await {
                Ok(synapse) => return synapse,
                Err(logs) if attempt < 3 => {
                    eprintln!("synapse could not bind its ports, trying others:\n{logs}");
                    attempt += 1;
                }
                Err(logs) => panic!("synapse could not bind its ports, {attempt} times:\n{logs}"),
            }
        }
    }

    /// Starts Synapse (on the `database:` section given, else SQLite);
    /// `Err` (with its logs) if it could not bind a port.
    async fn start_on_free_ports(python: &Path, database: Option<&str>) -> Result<Synapse, String> {
        let dir = tempfile::Builder::new()
            .prefix("weft-synapse-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_owned();
        let client_port = free_port();
        let federation_port = free_port();
        let server_name = format!("127.0.0.1:{federation_port}");
        let shared_secret = random_secret();
        let appservice_token = random_secret();
        std::fs::write(path.join("appservice.yaml"), appservice_registration(&appservice_token)).unwrap();

        // Synapse never checks its peers' certificates here, and weft's
        // test servers do not check Synapse's: any self-signed one will do.
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
        std::fs::write(path.join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(path.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
        std::fs::create_dir_all(path.join("media_store")).unwrap();
        std::fs::write(path.join("launcher.py"), LAUNCHER).unwrap();
        let level = std::env::var("WEFT_SYNAPSE_LOG_LEVEL").unwrap_or_else(|_| "INFO".to_owned());
        std::fs::write(path.join("log.config"), log_config(&path, &level)).unwrap();
        std::fs::write(
            path.join("homeserver.yaml"),
            homeserver_yaml(
                &path,
                &server_name,
                (client_port, federation_port),
                &shared_secret,
                database,
            ),
        )
        .unwrap();
        let config = path.join("homeserver.yaml");
        let console = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.join(name))
                .expect("console log")
        };

        // The signing key (ed25519).
        let keys = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&config)
            .arg("--generate-keys")
            .current_dir(&path)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(console("console.log"))
            .stderr(console("console.log"))
            .status()
            .expect("run synapse --generate-keys");
        assert!(
            keys.success() && path.join("signing.key").exists(),
            "synapse --generate-keys failed ({keys}):\n{}",
            tail(&path.join("console.log"), 40)
        );

        let mut child = Command::new(python)
            .arg(path.join("launcher.py"))
            .arg("-c")
            .arg(&config)
            .current_dir(&path)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(console("console.log"))
            .stderr(console("console.log"))
            .spawn()
            .expect("start synapse");
        let stdin = child.stdin.take();
        let mut synapse = Synapse {
            child: Some(child),
            stdin,
            dir: Some(dir),
            path,
            server_name,
            client_port,
            federation_port,
            shared_secret,
            appservice_token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
        };
        synapse.wait_until_up().await?;
        Ok(synapse)
    }

    /// Waits for `/_matrix/client/versions`; `Err` if Synapse exited because
    /// a port was taken, a panic for any other failure.
    async fn wait_until_up(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let url = format!("{}/_matrix/client/versions", self.client_base());
        loop {
            let answer = self.http.get(&url).timeout(Duration::from_secs(2)).send().await;
            if matches!(&answer, Ok(res) if res.status().is_success()) {
                eprintln!(
                    "synapse {} up in {:.1} s (client {}, logs in {})",
                    self.server_name,
                    started.elapsed().as_secs_f64(),
                    self.client_base(),
                    self.path.display()
                );
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let logs = self.logs(60);
                if logs.contains("Address already in use") {
                    return Err(logs);
                }
                panic!("synapse exited during start-up ({status}):\n{logs}");
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "synapse did not answer {url} within {START_TIMEOUT:?}:\n{}",
                self.logs(60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its server name, `127.0.0.1:<federation port>`.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The plain-HTTP client-server (and admin) API.
    pub fn client_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The TLS federation API.
    pub fn federation_base(&self) -> String {
        format!("https://127.0.0.1:{}", self.federation_port)
    }

    /// The directory holding the configuration, database and logs.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("homeserver.log")
    }

    /// The tail of the console output and of `homeserver.log`.
    pub fn logs(&self, lines: usize) -> String {
        format!(
            "--- synapse {} console.log (tail) ---\n{}\n--- synapse {} homeserver.log (last {lines} lines) ---\n{}\n--- end of synapse log ---",
            self.server_name,
            tail(&self.path.join("console.log"), 20),
            self.server_name,
            tail(&self.log_path(), lines)
        )
    }

    /// The lines of `homeserver.log` that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        std::fs::read(self.log_path())
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Registers a user with the shared secret (`/_synapse/admin/v1/register`):
    /// returns the user ID and an access token.
    pub async fn register(&self, localpart: &str) -> (String, String) {
        let url = format!("{}/_synapse/admin/v1/register", self.client_base());
        let nonce: Value = self
            .http
            .get(&url)
            .send()
            .await
            .expect("GET register nonce")
            .json()
            .await
            .expect("nonce JSON");
        let nonce = nonce["nonce"].as_str().expect("a nonce").to_owned();
        let password = "secret-password";
        let mut mac = Hmac::<Sha1>::new_from_slice(self.shared_secret.as_bytes()).unwrap();
        for (i, part) in [nonce.as_str(), localpart, password, "notadmin"].iter().enumerate() {
            if i > 0 {
                mac.update(b"\0");
            }
            mac.update(part.as_bytes());
        }
        let mac: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let res = self
            .http
            .post(&url)
            .json(&json!({
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": false,
                "mac": mac,
            }))
            .send()
            .await
            .expect("POST register");
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "register {localpart} on synapse: {body}");
        (
            body["user_id"].as_str().expect("user_id").to_owned(),
            body["access_token"].as_str().expect("access_token").to_owned(),
        )
    }

    /// The token of its application service (users `@m<digits>`).
    pub fn appservice_token(&self) -> &str {
        &self.appservice_token
    }

    /// Registers `@m<n>` as the application service (no password): a
    /// client for it.
    pub async fn register_as_appservice(&self, n: usize) -> Client {
        register_as_appservice(&self.http, &self.client_base(), &self.appservice_token, n).await
    }

    /// Registers a user and returns a client for it.
    pub async fn user(&self, localpart: &str) -> Client {
        let (user_id, token) = self.register(localpart).await;
        Client {
            http: self.http.clone(),
            base: self.client_base(),
            user_id,
            token,
        }
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(150));
        }
        if let Some(mut child) = self.child.take() {
            // Its own process group (pgid = pid): kill all of it.
            let group = format!("-{}", child.id());
            let killed = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !killed {
                let _ = child.kill();
            }
            drop(self.stdin.take());
            let _ = child.wait();
        }
        if std::env::var_os("WEFT_SYNAPSE_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("synapse directory kept: {}", kept.display());
        }
    }
}

fn log_config(dir: &Path, level: &str) -> String {
    format!(
        r#"version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {log}
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: INFO
  # ~60 lines about a fresh database's background updates: noise.
  synapse.storage.background_updates:
    level: WARNING
root:
  level: {level}
  handlers: [file]
disable_existing_loggers: false
"#,
        log = dir.join("homeserver.log").display()
    )
}

/// Panics, saying what to install, unless `python` can import psycopg2.
fn require_psycopg2(python: &Path) {
    let probe = Command::new(python)
        .args(["-c", "import psycopg2"])
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    assert!(
        probe.status.success(),
        "{} cannot import psycopg2, which Synapse needs for PostgreSQL: {}\nInstall it with \
         `{} -m pip install -r tests/interop/requirements.txt`",
        python.display(),
        String::from_utf8_lossy(&probe.stderr).trim(),
        python.display()
    );
}

/// The `database:` section of Synapse on the PostgreSQL database of
/// `conninfo` (`key=value` pairs; psycopg2 calls the database `database`).
fn postgres_database_yaml(conninfo: &str) -> String {
    let mut args = String::new();
    for pair in conninfo.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value connection string: {conninfo}"));
        let key = if key == "dbname" { "database" } else { key };
        args.push_str(&format!("    {key}: \"{value}\"\n"));
    }
    format!("database:\n  name: psycopg2\n  args:\n{args}    cp_min: 5\n    cp_max: 10\n")
}

fn homeserver_yaml(
    dir: &Path,
    server_name: &str,
    (client_port, federation_port): (u16, u16),
    secret: &str,
    database: Option<&str>,
) -> String {
    let sqlite = format!(
        "database:\n  name: sqlite3\n  args:\n    database: {}/homeserver.db\n",
        dir.display()
    );
    let database = database.unwrap_or(&sqlite);
    let dir = dir.display();
    // Big numbers: effectively no rate limit.
    let rl = "{per_second: 100000, burst_count: 1000000}";
    let macaroon = random_secret();
    let form = random_secret();
    format!(
        r#"server_name: "{server_name}"
pid_file: {dir}/homeserver.pid
public_baseurl: "http://127.0.0.1:{client_port}/"
report_stats: false

listeners:
  # client-server API and admin API, plain HTTP
  - port: {client_port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
  # federation API and /_matrix/key/v2: TLS (Synapse's outbound federation
  # is always https)
  - port: {federation_port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    resources:
      - names: [federation]
        compress: false

tls_certificate_path: {dir}/tls.crt
tls_private_key_path: {dir}/tls.key
# Peers' certificates are self-signed.
federation_verify_certificates: false

# The default blacklist holds 127.0.0.0/8; for IP-literal server names an
# empty blacklist is needed (the whitelist alone is not consulted).
ip_range_blacklist: []
ip_range_whitelist: ['127.0.0.0/8', '::1/128']

{database}log_config: {dir}/log.config
media_store_path: {dir}/media_store
signing_key_path: {dir}/signing.key

registration_shared_secret: "{secret}"
app_service_config_files: ["{dir}/appservice.yaml"]
macaroon_secret_key: "{macaroon}"
form_secret: "{form}"
enable_registration: false

# Keys straight from each server, never from matrix.org.
trusted_key_servers: []
suppress_key_server_warning: true

presence:
  enabled: false
url_preview_enabled: false

# Run the ~60 background updates of a fresh database back to back.
background_updates:
  sleep_enabled: false

# Fail fast and retry fast when a peer is down (the defaults back off for
# ten minutes after one failed request).
federation:
  client_timeout: 30s
  max_short_retry_delay: 1s
  max_long_retry_delay: 5s
  max_short_retries: 2
  max_long_retries: 3
  destination_min_retry_interval: 2s
  destination_retry_multiplier: 2
  destination_max_retry_interval: 30s

# Rate limits off.
rc_message: {rl}
rc_registration: {rl}
rc_login:
  address: {rl}
  account: {rl}
  failed_attempts: {rl}
rc_joins:
  local: {rl}
  remote: {rl}
rc_joins_per_room: {rl}
rc_invites:
  per_room: {rl}
  per_user: {rl}
  per_issuer: {rl}
rc_third_party_invite: {rl}
rc_room_creation: {rl}
rc_admin_redaction: {rl}
rc_3pid_validation: {rl}
rc_key_requests: {rl}
rc_media_create: {rl}
rc_presence:
  per_user: {rl}
rc_delayed_event_mgmt: {rl}
rc_reports: {rl}
rc_user_directory: {rl}
rc_profile: {rl}
rc_federation:
  window_size: 1000
  sleep_limit: 100000
  sleep_delay: 0
  reject_limit: 1000000
  concurrent: 1000
"#
    )
}

/// Registers `@m<n>` on the homeserver at `base` as the application service
/// of token `as_token` (`m.login.application_service`: no password): a
/// client for it. Retries a failed request a few times (Synapse on SQLite
/// answers an occasional 500 under load).
pub async fn register_as_appservice(http: &reqwest::Client, base: &str, as_token: &str, n: usize) -> Client {
    for attempt in 1.. {
        let res = http
            .post(format!("{base}/_matrix/client/v3/register"))
            .bearer_auth(as_token)
            .json(&json!({ "type": "m.login.application_service", "username": format!("m{n}") }))
            .send()
            .await
            .expect("POST /register");
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if status == StatusCode::OK {
            return Client {
                http: http.clone(),
                base: base.to_owned(),
                user_id: body["user_id"].as_str().expect("user_id").to_owned(),
                token: body["access_token"].as_str().expect("access_token").to_owned(),
            };
        }
        assert!(attempt < 5, "register m{n} as the application service: {status} {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    unreachable!()
}

/// A logged-in user of any homeserver, by base URL and access token.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub user_id: String,
    pub token: String,
}

/// A Synapse with its user `alice`, and a federating weft with its user
/// `bob`: the two sides of most interop tests.
pub async fn synapse_and_weft() -> (Synapse, TestServer, Client, Client) {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    (synapse, weft, alice, bob)
}

impl Client {
    /// The same user as a weft test server's `User`.
    pub fn weft(user: &User<'_>) -> Client {
        Client {
            http: user.server.http.clone(),
            base: user.server.base(),
            user_id: user.user_id.clone(),
            token: user.token.clone(),
        }
    }

    /// Registers a user on a weft test server.
    pub async fn register_on_weft(server: &TestServer, localpart: &str) -> Client {
        Client::weft(&server.register(localpart).await)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {}{path}: {e}", self.base));
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// A call that must succeed; returns the body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{} ({}): {method} {path}: {value}",
            self.user_id,
            self.base
        );
        value
    }

    pub async fn create_room(&self, body: Value) -> String {
        let value = self
            .ok(Method::POST, "/_matrix/client/v3/createRoom", Some(&body))
            .await;
        value["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Sends an event; returns the status and body (`event_id`).
    pub async fn send(&self, room_id: &str, event_type: &str, txn: &str, content: &Value) -> (StatusCode, Value) {
        self.call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/{}/{}",
                enc(room_id),
                enc(event_type),
                enc(txn)
            ),
            Some(content),
        )
        .await
    }

    /// Sends an `m.text` message that must be accepted; returns its event ID.
    pub async fn send_text(&self, room_id: &str, txn: &str, text: &str) -> String {
        let (status, body) = self
            .send(
                room_id,
                "m.room.message",
                txn,
                &json!({ "msgtype": "m.text", "body": text }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{} sends {text:?} in {room_id}: {body}",
            self.user_id
        );
        body["event_id"].as_str().expect("event_id").to_owned()
    }

    /// Sets a state event that must be accepted; returns its event ID.
    pub async fn put_state(&self, room_id: &str, event_type: &str, state_key: &str, content: &Value) -> String {
        let body = self
            .ok(
                Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/{}/{}",
                    enc(room_id),
                    enc(event_type),
                    enc(state_key)
                ),
                Some(content),
            )
            .await;
        body["event_id"].as_str().expect("event_id").to_owned()
    }

    /// A state event's content (status and body).
    pub async fn state(&self, room_id: &str, event_type: &str, state_key: &str) -> (StatusCode, Value) {
        self.call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{}/{}",
                enc(room_id),
                enc(event_type),
                enc(state_key)
            ),
            None,
        )
        .await
    }

    /// `POST /join/{room ID or alias}?{query}` (`query` may hold
    /// `server_name=…` or `via=…`, URL-encoded, or be empty).
    pub async fn join(&self, room: &str, query: &str) -> (StatusCode, Value) {
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        self.call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}{query}", enc(room)),
            Some(&json!({})),
        )
        .await
    }

    pub async fn messages(&self, room_id: &str, query: &str) -> Value {
        self.ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/messages?{query}", enc(room_id)),
            None,
        )
        .await
    }

    /// `GET /sync?{query}`. Synapse answers a repeated request (an initial
    /// sync, say) from a cache for a while: poll with `since`.
    pub async fn sync(&self, query: &str) -> Value {
        self.ok(Method::GET, &format!("/_matrix/client/v3/sync?{query}"), None)
            .await
    }

    pub async fn joined_members(&self, room_id: &str) -> Value {
        self.ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room_id)),
            None,
        )
        .await
    }
}

// Helpers for the backfill tests (tests/synapse_backfill.rs,
// tests/backfill_forks.rs): paging a whole room back, and comparing two
// servers' timelines with a readable account of where they differ.

impl Client {
    /// `POST /rooms/{room}/leave`, which must succeed.
    pub async fn leave(&self, room_id: &str) {
        self.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(room_id)),
            Some(&json!({})),
        )
        .await;
    }

    /// Pages `/messages?dir=b` from the newest event, `limit` at a time,
    /// until `m.room.create` or until the server gives no `end` token;
    /// returns every event of every page, oldest first (duplicates kept:
    /// callers check there are none). Pages without events but with an
    /// `end` token (a server still fetching history) are followed.
    pub async fn page_back_all(&self, room_id: &str, limit: u32) -> Vec<Value> {
        let mut events: Vec<Value> = Vec::new();
        let mut from: Option<String> = None;
        let mut pages = Vec::new();
        for _ in 0..500 {
            let query = match &from {
                Some(token) => format!("dir=b&limit={limit}&from={}", enc(token)),
                None => format!("dir=b&limit={limit}"),
            };
            let page = self.messages(room_id, &query).await;
            let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
            pages.push(format!("from {:?}: {} events, end {}", from, chunk.len(), page["end"]));
            let done = chunk.iter().any(|e| e["type"] == "m.room.create");
            events.extend(chunk);
            match page["end"].as_str() {
                Some(end) if !done && from.as_deref() != Some(end) => from = Some(end.to_owned()),
                _ => {
                    events.reverse();
                    return events;
                }
            }
        }
        panic!(
            "{} ({}) paged {room_id} back 500 times without reaching its start: {pages:#?}",
            self.user_id, self.base
        );
    }
}

/// One line about an event, for failure messages.
pub fn describe_event(e: &Value) -> String {
    let what = match e["type"].as_str() {
        Some("m.room.message") => format!("{:?}", e["content"]["body"].as_str().unwrap_or("?")),
        _ => format!("[{}] {}", e["state_key"].as_str().unwrap_or("-"), e["content"]),
    };
    format!(
        "{} {} {} {what}",
        e["event_id"].as_str().unwrap_or("?"),
        e["type"].as_str().unwrap_or("?"),
        e["sender"].as_str().unwrap_or("?"),
    )
}

/// The event IDs of a timeline, in order.
pub fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Event IDs that occur more than once.
pub fn duplicate_ids(events: &[Value]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut twice: Vec<String> = event_ids(events)
        .into_iter()
        .filter(|id| !seen.insert(id.clone()))
        .collect();
    twice.sort();
    twice.dedup();
    twice
}

/// Asserts that `got` (a timeline oldest first, as one server gave it)
/// holds exactly the events of `want` (another's), each once, in the same
/// order, with the same event ID, type, sender, state key, content, room
/// and timestamp. On failure: what is missing, extra or twice, and the
/// first place the orders part, with the events around it.
pub fn assert_same_timeline(what: &str, got: &[Value], want: &[Value]) {
    let got_ids = event_ids(got);
    let want_ids = event_ids(want);
    if got_ids != want_ids {
        let got_set: std::collections::HashSet<&String> = got_ids.iter().collect();
        let want_set: std::collections::HashSet<&String> = want_ids.iter().collect();
        let missing: Vec<String> = want
            .iter()
            .filter(|e| !got_set.contains(&e["event_id"].as_str().unwrap_or("?").to_owned()))
            .map(describe_event)
            .collect();
        let extra: Vec<String> = got
            .iter()
            .filter(|e| !want_set.contains(&e["event_id"].as_str().unwrap_or("?").to_owned()))
            .map(describe_event)
            .collect();
        let first = got_ids
            .iter()
            .zip(&want_ids)
            .position(|(g, w)| g != w)
            .unwrap_or(got_ids.len().min(want_ids.len()));
        let window = |events: &[Value]| -> Vec<String> {
            let lo = first.saturating_sub(3);
            let hi = (first + 6).min(events.len());
            (lo..hi)
                .map(|i| format!("{i:4}: {}", describe_event(&events[i])))
                .collect()
        };
        panic!(
            "{what}: the timelines differ: {} events against {} wanted\n\
             missing ({}): {missing:#?}\nextra ({}): {extra:#?}\ntwice: {:#?}\n\
             first difference at index {first}:\ngot:  {:#?}\nwant: {:#?}",
            got.len(),
            want.len(),
            missing.len(),
            extra.len(),
            duplicate_ids(got),
            window(got),
            window(want),
        );
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for field in ["type", "sender", "state_key", "content", "room_id", "origin_server_ts"] {
            assert_eq!(
                g[field], w[field],
                "{what}: event {i} ({}) differs in {field}:\ngot:  {g}\nwant: {w}",
                w["event_id"]
            );
        }
    }
}

/// The message bodies of a timeline, in order.
pub fn message_bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// How many requests Synapse's access log shows for paths containing
/// `path_part` (e.g. `/federation/v1/backfill/`).
pub fn synapse_requests(synapse: &Synapse, path_part: &str) -> usize {
    synapse
        .log_lines_with(path_part)
        .iter()
        .filter(|l| l.contains("synapse.access"))
        .count()
}

impl Synapse {
    /// Kills Synapse (its whole process group, as a crash would), keeping
    /// its directory, database and ports. What it held only in memory is
    /// lost: a peer it was retrying events for is, after [`Synapse::start_again`],
    /// only "caught up" (sent the newest event of each room).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let killed = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !killed {
                let _ = child.kill();
            }
            drop(self.stdin.take());
            let _ = child.wait();
        }
    }

    /// Starts a killed Synapse again on the same directory, name and ports;
    /// waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "synapse {} is still running", self.server_name);
        let path = self.path.clone();
        let spawn = || {
            let console = |name: &str| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path.join(name))
                    .expect("console log")
            };
            Command::new(python())
                .arg(path.join("launcher.py"))
                .arg("-c")
                .arg(path.join("homeserver.yaml"))
                .current_dir(&path)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(console("console.log"))
                .stderr(console("console.log"))
                .spawn()
                .expect("start synapse again")
        };
        // Its ports were its own a moment ago; give the kernel a few tries.
        let mut attempt = 1;
        loop {
            let mut child = spawn();
            self.stdin = child.stdin.take();
            self.child = Some(child);
            match self.wait_until_up().await {
                Ok(()) => return,
                Err(logs) => {
                    assert!(attempt < 5, "synapse could not bind its ports again:\n{logs}");
                    attempt += 1;
                    self.kill();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Waits until `client`'s server holds `user`'s membership as `membership`.
pub async fn membership_is(within: Duration, client: &Client, room: &str, user: &str, membership: &str) {
    super::eventually(
        within,
        &format!(
            "{} ({}) sees {user} as {membership} in {room}",
            client.user_id, client.base
        ),
        || async {
            let (status, member) = client.state(room, "m.room.member", user).await;
            if status == StatusCode::OK && member["membership"] == membership {
                Ok(())
            } else {
                Err(format!("{status} {member}"))
            }
        },
    )
    .await
}
