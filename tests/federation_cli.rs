//! `weft federation get|post|put`: a signed request as this server, the
//! answer pretty-printed.

mod common;

use common::TestServer;
use serde_json::{Value, json};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

async fn run(b: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(WEFT)
        .args(args)
        .env("WEFT_DATA_DIR", b.data_dir())
        .env("WEFT_DATABASE_URL", b.config.database_url.as_deref().unwrap_or(""))
        .env("WEFT_SERVER_NAME", b.server_name().as_str())
        .env("WEFT_FEDERATION_VERIFY_TLS", "false")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_makes_signed_federation_requests() {
    let a = TestServer::start_federating().await;
    // B is running, so A can fetch the key the command signs with.
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "world_readable" } }]
        }))
        .await;
    let (_, sent) = alice.send_text(&room, "t", "seen from the command line").await;
    let event = sent["event_id"].as_str().unwrap();

    let (ok, stdout, stderr) = run(
        &b,
        &[
            "federation",
            "get",
            a.server_name().as_str(),
            "/_matrix/federation/v1/version",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let version: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(version["server"]["name"], "weft");
    assert!(stderr.starts_with("200"), "{stderr}");

    let path = format!("/_matrix/federation/v1/event/{}", common::enc(event));
    let (ok, stdout, stderr) = run(&b, &["federation", "get", a.server_name().as_str(), &path]).await;
    assert!(ok, "a signed request is accepted: {stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["pdus"][0]["content"]["body"], "seen from the command line");
    assert!(stdout.contains("\n  "), "pretty-printed");

    let path = format!("/_matrix/federation/v1/get_missing_events/{}", common::enc(&room));
    let body = json!({ "earliest_events": [], "latest_events": [event], "limit": 2 }).to_string();
    let (ok, stdout, stderr) = run(&b, &["federation", "post", a.server_name().as_str(), &path, &body]).await;
    assert!(ok, "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["events"].as_array().unwrap().len(), 2);

    // An error is shown, and the command fails.
    let (ok, stdout, stderr) = run(
        &b,
        &[
            "federation",
            "get",
            a.server_name().as_str(),
            "/_matrix/federation/v1/event/%24nope",
        ],
    )
    .await;
    assert!(!ok);
    assert!(stderr.starts_with("404"), "{stderr}");
    assert!(stdout.contains("M_NOT_FOUND"), "{stdout}");
    let (ok, _, stderr) = run(&b, &["federation", "get", "not a server", "/x"]).await;
    assert!(!ok && stderr.contains("invalid server name"), "{stderr}");
}
