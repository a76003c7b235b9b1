//! Interop: the Rust SDK Element X is built on (matrix-sdk and matrix-sdk-ui
//! 0.18, from crates.io) uses weft through simplified sliding sync.
//!
//! The client side is the binary `weft-sdk-interop` (tests/sdk, a crate with
//! a workspace of its own, built by `tools/test` with `cargo build
//! --manifest-path tests/sdk/Cargo.toml` into the same target directory).
//! This test starts two federating servers, registers the users, writes the
//! rooms and their history, runs the binary and checks what it left on the
//! servers. The binary logs in, runs `SyncService` (native sliding sync
//! discovered from `/versions`), checks the room list, the timeline (a live
//! message, back-pagination to the start, a room of the other server whose
//! history weft must backfill, sending) and end-to-end encryption between
//! two clients. `WEFT_SDK_LOG` is its `RUST_LOG` (e.g. `matrix_sdk=debug`).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::{TestServer, User, enc};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

/// The whole client flow must finish within this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// The binary: `WEFT_SDK_INTEROP_BIN`, else in the target directory this
/// test was built into (`<target>/debug`), where `tools/test` builds it.
fn sdk_binary() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(bin) = std::env::var_os("WEFT_SDK_INTEROP_BIN").filter(|b| !b.is_empty()) {
        candidates.push(PathBuf::from(bin));
    } else {
        if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
            candidates.push(Path::new(&dir).join("debug/weft-sdk-interop"));
        }
        // This test runs as <target>/debug/deps/sdk_interop-<hash>.
        if let Ok(exe) = std::env::current_exe()
            && let Some(debug) = exe.parent().and_then(Path::parent)
        {
            candidates.push(debug.join("weft-sdk-interop"));
        }
        // Built without CARGO_TARGET_DIR: the crate's own target directory.
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/target/debug/weft-sdk-interop"));
    }
    match candidates.iter().find(|c| c.is_file()) {
        Some(found) => found.clone(),
        None => panic!(
            "the SDK interop client is not built (looked for {}). Build it with `cargo build \
             --manifest-path tests/sdk/Cargo.toml`, best with the same CARGO_TARGET_DIR as the \
             tests (tools/test does), or set WEFT_SDK_INTEROP_BIN to it",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `count` messages `<prefix> NN`, sent in turn by `senders`; their texts.
async fn write_history(senders: &[&User<'_>], room: &str, prefix: &str, count: usize) -> Vec<String> {
    let mut texts = Vec::new();
    for i in 1..=count {
        let text = format!("{prefix} {i:02}");
        let sender = senders[i % senders.len()];
        let (status, body) = sender.send_text(room, &format!("{prefix}-{i}"), &text).await;
        assert_eq!(status, 200, "{}: sending {text:?}: {body}", sender.user_id);
        texts.push(text);
    }
    texts
}

/// Every event of a room, as `user` pages back through `/messages`.
async fn all_events(user: &User<'_>, room: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..100 {
        let query = match &from {
            Some(token) => format!("dir=b&limit=100&from={}", enc(token)),
            None => "dir=b&limit=100".to_owned(),
        };
        let page = user.messages(room, &query).await;
        events.extend(page["chunk"].as_array().cloned().unwrap_or_default());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return events,
        }
    }
    panic!("paging back through {room} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_x_sdk_flow() {
    let binary = sdk_binary();
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let carol = b.register("carol").await;

    // A named room of alice and bob, with history before the client starts.
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "SDK Interop Room", "invite": [bob.user_id] }))
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    let history = write_history(&[&alice, &bob], &room, "history", 45).await;

    // A room held on B, written there before alice joins it through A: A
    // holds none of that history until paging back backfills it.
    let remote_room = carol
        .create_room(json!({ "preset": "public_chat", "name": "Remote History" }))
        .await;
    let remote_history = write_history(&[&carol], &remote_room, "remote", 35).await;
    let (status, body) = alice
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&remote_room),
                enc(b.server_name().as_str())
            ),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "alice joins {remote_room} through B: {body}");

    // An encrypted room of alice and bob, unnamed (the SDK names it from
    // its heroes).
    let encrypted_room = alice
        .create_room(json!({
            "preset": "private_chat",
            "invite": [bob.user_id],
            "initial_state": [{
                "type": "m.room.encryption",
                "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" },
            }],
        }))
        .await;
    assert_eq!(bob.join(&encrypted_room).await.0, 200);

    let live = "live from bob";
    let sent = "sent from alice's timeline";
    let remote_live = "live from carol over federation";
    let alice_secret = "alice's secret for bob";
    let bob_secret = "bob's secret for alice";

    let mut cmd = Command::new(&binary);
    cmd.args(["--homeserver", &a.base()])
        .args(["--alice", "alice", "--alice-password", "secret"])
        .args(["--bob", &bob.user_id, "--bob-password", "secret"])
        .args(["--expect-room", &format!("{room}=SDK Interop Room")])
        .args(["--expect-room", &format!("{remote_room}=Remote History")])
        .args(["--expect-room", &format!("{encrypted_room}=bob")])
        .args(["--room", &room])
        .args(history.iter().flat_map(|t| ["--history", t.as_str()]))
        .args(["--live-text", live, "--send-text", sent])
        .args(["--remote-room", &remote_room])
        .args(remote_history.iter().flat_map(|t| ["--remote-history", t.as_str()]))
        .args(["--remote-homeserver", &b.base()])
        .args(["--remote-user", "carol", "--remote-password", "secret"])
        .args(["--remote-live-text", remote_live])
        .args(["--encrypted-room", &encrypted_room])
        .args(["--alice-secret", alice_secret, "--bob-secret", bob_secret])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(log) = std::env::var_os("WEFT_SDK_LOG") {
        cmd.env("RUST_LOG", log);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    let output = match tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output()).await {
        Ok(result) => result.expect("SDK client output"),
        Err(_) => panic!("the SDK client did not finish within {CLIENT_TIMEOUT:?}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK client failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("[sdk-interop] OK:"),
        "the SDK client exited 0 without its summary:\n{stdout}\n{stderr}"
    );
    println!("{stdout}\n--- stderr ---\n{stderr}");

    // What the clients sent is on the server: alice's message as bob reads
    // it, the encrypted ones as ciphertext only.
    let bodies: Vec<String> = all_events(&bob, &room)
        .await
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        bodies.iter().filter(|b| *b == sent).count(),
        1,
        "bob reads alice's {sent:?} once through the API: {bodies:?}"
    );
    let encrypted = all_events(&bob, &encrypted_room).await;
    let ciphertexts = encrypted.iter().filter(|e| e["type"] == "m.room.encrypted").count();
    assert!(ciphertexts >= 2, "two m.room.encrypted events: {encrypted:?}");
    let raw = serde_json::to_string(&encrypted).unwrap();
    assert!(
        !raw.contains(alice_secret) && !raw.contains(bob_secret),
        "plaintext on the server: {raw}"
    );
}
