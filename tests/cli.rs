//! The `weft` binary itself: generate-config, register-user, serve, a bad
//! config file, and a kill -9 that loses nothing.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct Served {
    child: Child,
    client: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &std::path::Path, database_url: &str, log: &std::path::Path) -> Served {
    // Port 0: the system picks free ports, and the log says which (a port
    // picked here and released could be taken by a test running beside).
    let mut child = Command::new(WEFT)
        .arg("serve")
        .env("WEFT_DATA_DIR", data)
        .env("WEFT_DATABASE_URL", database_url)
        .env("WEFT_SERVER_NAME", "cli.test")
        .env("WEFT_CLIENT_LISTEN", "127.0.0.1:0")
        .env("WEFT_FEDERATION_LISTEN", "127.0.0.1:0")
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        let logged = std::fs::read_to_string(log).unwrap();
        if let Some(line) = logged.lines().find(|l| l.contains("weft is listening"))
            && let Some(at) = line.find("http://")
        {
            let url: String = line[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '\x1b')
                .collect();
            break url;
        }
        assert!(child.try_wait().unwrap().is_none(), "server exited: {logged}");
        assert!(Instant::now() < deadline, "server did not start: {logged}");
        std::thread::sleep(Duration::from_millis(50));
    };
    while reqwest::blocking_get(&format!("{client}/_matrix/client/versions")).is_none() {
        assert!(
            Instant::now() < deadline,
            "server did not answer: {}",
            std::fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Served { child, client }
}

/// Tiny blocking HTTP helpers over reqwest's async client.
mod reqwest {
    use serde_json::Value;

    fn runtime() -> tokio::runtime::Runtime {
        weft::tls::install_crypto_provider();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    pub fn blocking_get(url: &str) -> Option<Value> {
        runtime().block_on(async { ::reqwest::get(url).await.ok()?.json().await.ok() })
    }

    pub fn send(method: ::reqwest::Method, url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        runtime().block_on(async {
            let mut req = ::reqwest::Client::new().request(method, url).json(body);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
        })
    }
}

#[test]
fn generate_config_prints_the_defaults() {
    let out = Command::new(WEFT).arg("generate-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        weft::config::Config::parse(&text).unwrap(),
        weft::config::Config::default()
    );
    assert!(text.contains("# "), "the file is commented");
}

#[test]
fn bad_config_file_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.toml");
    std::fs::write(&path, "server_name = \"ok.example\"\nclient_listen = 12\n").unwrap();
    let out = Command::new(WEFT)
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("client_listen") && err.contains("line 2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(WEFT)
        .arg("serve")
        .env("WEFT_CLIENT_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("WEFT_CLIENT_LISTEN"));
}

#[test]
fn register_user_serve_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("weft.log");
    // Empty: SQLite, in the data directory.
    let database_url = common::fresh_database_url().unwrap_or_default();
    let out = Command::new(WEFT)
        .args(["register-user", "admin", "--password", "pw", "--admin"])
        .env("WEFT_DATA_DIR", &data)
        .env("WEFT_DATABASE_URL", &database_url)
        .env("WEFT_SERVER_NAME", "cli.test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout).unwrap().contains("@admin:cli.test"));
    let again = Command::new(WEFT)
        .args(["register-user", "admin", "--password", "pw"])
        .env("WEFT_DATA_DIR", &data)
        .env("WEFT_DATABASE_URL", &database_url)
        .env("WEFT_SERVER_NAME", "cli.test")
        .output()
        .unwrap();
    assert!(!again.status.success(), "the user exists already");

    let mut served = serve(&data, &database_url, &log);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("weft is listening") && logged.contains("cli.test"),
        "{logged}"
    );
    assert!(
        logged.contains(&served.client),
        "the log says where the client API listens: {logged}"
    );

    let login =
        json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "admin" }, "password": "pw" });
    let (status, body) = reqwest::send(
        ::reqwest::Method::POST,
        &format!("{}/_matrix/client/v3/login", served.client),
        None,
        &login,
    );
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, body) = reqwest::send(
        ::reqwest::Method::POST,
        &format!("{}/_matrix/client/v3/createRoom", served.client),
        Some(&token),
        &json!({}),
    );
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let room_path: String = form_urlencoded::byte_serialize(room.as_bytes()).collect();
    for i in 0..20 {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/k{i}",
            served.client
        );
        let (status, _) = reqwest::send(
            ::reqwest::Method::PUT,
            &url,
            Some(&token),
            &json!({ "msgtype": "m.text", "body": format!("k{i}") }),
        );
        assert_eq!(status, 200);
    }

    // kill -9: no chance to shut down cleanly.
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    drop(served);

    let served = serve(&data, &database_url, &log);
    let url = format!(
        "{}/_matrix/client/v3/rooms/{room_path}/messages?dir=b&limit=100",
        served.client
    );
    let page = runtime_get(&url, &token);
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..20).rev().map(|i| format!("k{i}")).collect();
    assert_eq!(bodies, expected);
}

fn runtime_get(url: &str, token: &str) -> Value {
    weft::tls::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            ::reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
}
