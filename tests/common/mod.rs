//! Test harness: real weft servers on loopback ports, spoken to over HTTP.
#![allow(dead_code)]

mod database;
pub mod federation;
pub mod hostile;
pub mod process;
pub mod push_gateway;
pub mod synapse;

#[allow(unused_imports)] // only some tests run SQL of their own
pub use database::run_as_admin;
pub use database::{drop_database, fresh_database_url};

use std::{path::PathBuf, sync::Once};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use weft::{config::Config, server::RunningServer};

static LOGGING: Once = Once::new();

fn init_logging() {
    LOGGING.call_once(|| {
        let filter = std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A server under test with its own data directory (and database: see
/// [`fresh_database_url`]).
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: TempDir,
    pub config: Config,
    pub http: reqwest::Client,
    /// The PostgreSQL database made for it, dropped with it.
    database: Option<String>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(url) = &self.database {
            drop_database(url);
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with `tweak` applied to its configuration. A port
    /// `tweak` picked that was taken meanwhile (by a test running beside)
    /// makes it try again, with `tweak` called anew.
    pub async fn start_with(tweak: impl Fn(&mut Config)) -> TestServer {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = fresh_database_url();
        let mut attempts = 0;
        let (server, config) = loop {
            let mut config = Config {
                data_dir: dir.path().join("data"),
                database_url: database_url.clone(),
                client_listen: "127.0.0.1:0".parse().unwrap(),
                federation_listen: "127.0.0.1:0".parse().unwrap(),
                allow_registration: true,
                // Tests register, log in and send faster than a person;
                // tests/limits.rs turns them back on.
                rate_limits: false,
                ..Config::default()
            };
            tweak(&mut config);
            match weft::server::start(config.clone()).await {
                Ok(server) => break (server, config),
                Err(weft::server::StartError::Listen { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse && attempts < 5 =>
                {
                    attempts += 1;
                }
                Err(e) => panic!("server starts: {e}"),
            }
        };
        TestServer {
            server: Some(server),
            dir,
            config,
            http: reqwest::Client::new(),
            database: database_url,
        }
    }

    /// Stops the server and starts it again on the same data directory
    /// and database.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.server = Some(weft::server::start(self.config.clone()).await.expect("server restarts"));
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("server is running")
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.running().client_addr)
    }

    pub fn federation_base(&self) -> String {
        format!("https://{}", self.running().federation_addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// A raw request: method, path (with query), optional token and body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base(), path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let text = res.text().await.expect("response body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// A request with a raw (possibly malformed) body.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base(), path))
            .body(body.to_owned());
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Registers a user through the client API and returns a client.
    pub async fn register(&self, name: &str) -> User<'_> {
        let (status, body) = self
            .request(
                Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(&json!({ "username": name, "password": "secret", "auth": { "type": "m.login.dummy" } })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "register {name}: {body}");
        User {
            server: self,
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
        }
    }
}

/// A logged-in user of a test server.
pub struct User<'a> {
    pub server: &'a TestServer,
    pub user_id: String,
    pub token: String,
}

pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl User<'_> {
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        self.server.request(method, path, Some(&self.token), body).await
    }

    /// A call that must succeed; returns the body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {value}");
        value
    }

    pub async fn create_room(&self, body: Value) -> String {
        let value = self
            .ok(Method::POST, "/_matrix/client/v3/createRoom", Some(&body))
            .await;
        value["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn send_text(&self, room_id: &str, txn: &str, text: &str) -> (StatusCode, Value) {
        self.call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room_id),
                enc(txn)
            ),
            Some(&json!({ "msgtype": "m.text", "body": text })),
        )
        .await
    }

    pub async fn join(&self, room_id: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", enc(room_id)),
            Some(&json!({})),
        )
        .await
    }

    /// Leaves the room (which must succeed).
    pub async fn leave(&self, room_id: &str) {
        synapse::Client::weft(self).leave(room_id).await;
    }

    /// Invites `user_id` to the room (which must succeed).
    pub async fn invite(&self, room_id: &str, user_id: &str) {
        self.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id)),
            Some(&json!({ "user_id": user_id })),
        )
        .await;
    }

    pub async fn messages(&self, room_id: &str, query: &str) -> Value {
        self.ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/messages?{query}", enc(room_id)),
            None,
        )
        .await
    }

    /// A state event's content in the room's current state (the call
    /// must succeed).
    pub async fn state_event(&self, room_id: &str, kind: &str, state_key: &str) -> Value {
        self.ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room_id),
                enc(state_key)
            ),
            None,
        )
        .await
    }

    /// `/joined_members` of `room_id` (which waits for the full state of
    /// a room joined with partial state).
    pub async fn joined_members(&self, room_id: &str) -> Value {
        self.ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room_id)),
            None,
        )
        .await
    }

    /// Waits until this user's server holds the full state of `room_id`
    /// ([`Self::joined_members`] waits for it): a room joined with partial
    /// state is left out of the `/sync`s that load every member until then.
    pub async fn wait_for_full_state(&self, room_id: &str) {
        self.joined_members(room_id).await;
    }

    pub async fn sync(&self, query: &str) -> Value {
        self.ok(Method::GET, &format!("/_matrix/client/v3/sync?{query}"), None)
            .await
    }

    /// Waits (30 s at most) until this user's view of `member`'s
    /// membership in `room_id` is `want`.
    pub async fn wait_for_membership(&self, room_id: &str, member: &str, want: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (status, body) = self
                .call(
                    Method::GET,
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                        enc(room_id),
                        enc(member)
                    ),
                    None,
                )
                .await;
            if status == 200 && body["membership"] == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{member} never became {want} in {}'s view: {status} {body}",
                self.user_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// A free loopback port (bound and released: fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestServer {
    /// A server that federates: its name is `127.0.0.1:<federation port>`
    /// and it accepts the self-signed certificates of other test servers.
    pub async fn start_federating() -> TestServer {
        Self::start_federating_with(|_| {}).await
    }

    pub async fn start_federating_with(tweak: impl Fn(&mut Config)) -> TestServer {
        Self::start_with(move |c| {
            let port = free_port();
            c.server_name = format!("127.0.0.1:{port}").try_into().unwrap();
            c.federation_listen = format!("127.0.0.1:{port}").parse().unwrap();
            c.federation_verify_tls = false;
            tweak(c);
        })
        .await
    }

    pub fn server_name(&self) -> ruma::OwnedServerName {
        self.config.server_name.clone()
    }

    pub fn services(&self) -> &std::sync::Arc<weft::services::Services> {
        &self.running().services
    }
}

/// Polls `probe` until it gives `Ok`; past `within`, fails with what it
/// last said.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {last}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Serves `app` over HTTPS on a loopback port with a self-signed
/// certificate (a stand-in for another service: an identity server, say).
/// Returns its `127.0.0.1:<port>` name and the directory holding the
/// certificate, to keep for as long as the service runs.
pub fn serve_tls(app: axum::Router) -> (String, TempDir) {
    weft::tls::install_crypto_provider();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let name = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = weft::tls::certificate_files(dir.path(), "127.0.0.1", None).unwrap();
    let tls = weft::tls::server_config(&cert, &key).unwrap();
    let server =
        axum_server::tls_rustls::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(tls))
            .unwrap();
    tokio::spawn(async move {
        let _ = server.serve(app.into_make_service()).await;
    });
    (name, dir)
}
