//! `weft copy-to-postgres`: a SQLite deployment moved to PostgreSQL carries
//! on as if nothing happened (same events and positions, tokens, keys,
//! media, federation), a non-empty target is refused, and an interrupted
//! copy leaves nothing behind and can be run again.
//!
//! The copies need `WEFT_TEST_POSTGRES` (see tests/common/database.rs) and
//! pass without it; the refusals that need no PostgreSQL always run.

mod common;

use std::{collections::BTreeMap, path::Path, sync::Mutex, time::Duration};

use common::{TestServer, User, enc, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn postgres() -> bool {
    std::env::var("WEFT_TEST_POSTGRES").is_ok_and(|s| !s.trim().is_empty())
}

/// A federating server on SQLite, and the new PostgreSQL database made
/// for it (to copy it into).
async fn start_on_sqlite() -> (TestServer, String) {
    let target = Mutex::new(None);
    let server = TestServer::start_federating_with(|c| {
        if let Some(url) = c.database_url.take() {
            *target.lock().unwrap() = Some(url);
        }
    })
    .await;
    let target = target
        .into_inner()
        .unwrap()
        .expect("WEFT_TEST_POSTGRES makes a database");
    (server, target)
}

/// Stops `server` (its data stays).
async fn stop(server: &mut TestServer) {
    if let Some(running) = server.server.take() {
        running.shutdown().await;
    }
}

/// Stops `server` and starts it again on `database_url`, same data_dir.
async fn move_to(server: &mut TestServer, database_url: &str) {
    server.config.database_url = Some(database_url.to_owned());
    server.restart().await;
}

/// Runs `weft copy-to-postgres url` on `data_dir`.
async fn copy(data_dir: &Path, url: &str) -> std::process::Output {
    copy_command(data_dir, url).output().await.unwrap()
}

fn copy_command(data_dir: &Path, url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(WEFT);
    command
        .args(["copy-to-postgres", url])
        .env("WEFT_DATA_DIR", data_dir)
        .env_remove("WEFT_DATABASE_URL")
        .env_remove("WEFT_CONFIG")
        .kill_on_drop(true);
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A client of `server` with `token` (users are kept as tokens: the
/// server is restarted under them).
fn user<'a>(server: &'a TestServer, token: &str) -> User<'a> {
    User {
        server,
        user_id: String::new(),
        token: token.to_owned(),
    }
}

/// `value` without what changes by itself (`unsigned.age`).
fn without_age(mut value: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(unsigned)) = map.get_mut("unsigned") {
                    unsigned.remove("age");
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

/// The parts of a sync token the database keeps: the event stream, the
/// account data and the e2e stream (typing, receipts and presence count
/// from clocks).
fn stored_positions(token: &str) -> Vec<i64> {
    let parts: Vec<&str> = token.trim_start_matches('s').split('_').collect();
    [0, 2, 3].iter().map(|&i| parts[i].parse().unwrap()).collect()
}

/// What a /sync answer tells a client, but presence and the clock-based
/// token parts.
fn sync_view(sync: &Value) -> Value {
    let rooms: serde_json::Map<String, Value> = sync["rooms"]["join"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, room)| {
            let seen = json!({
                "state": room["state"],
                "timeline": room["timeline"],
                "account_data": room["account_data"],
                "ephemeral": room["ephemeral"],
                "unread_notifications": room["unread_notifications"],
                "summary": room["summary"],
            });
            (id.clone(), seen)
        })
        .collect();
    without_age(json!({
        "join": rooms,
        "invite": sync["rooms"]["invite"],
        "leave": sync["rooms"]["leave"],
        "account_data": sync["account_data"],
        "to_device": sync["to_device"],
        "device_lists": sync["device_lists"],
        "one_time_keys": sync["device_one_time_keys_count"],
        "fallback_keys": sync["device_unused_fallback_key_types"],
        "positions": stored_positions(sync["next_batch"].as_str().unwrap()),
    }))
}

/// Every message body of a room as `user` pages back through it, oldest
/// first (fetching history from other servers as it goes).
async fn page_back_bodies(user: &User<'_>, room: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut query = "dir=b&limit=30".to_owned();
    for _ in 0..50 {
        let page = user.messages(room, &query).await;
        for event in page["chunk"].as_array().unwrap() {
            if let Some(body) = event["content"]["body"].as_str() {
                bodies.push(body.to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => query = format!("dir=b&limit=30&from={}", enc(end)),
            None => {
                bodies.reverse();
                return bodies;
            }
        }
    }
    panic!("pagination did not end");
}

/// What was made on the SQLite deployment, to look at again.
struct World {
    alice: String,
    alice_token: String,
    /// Alice's second device (it has to-device messages waiting).
    alice_token_2: String,
    carol_token: String,
    /// Carol's sync token from before most of what happened.
    carol_early: String,
    room: String,
    /// A room of the other server whose history alice paged through.
    remote_room: String,
    media: String,
    filter_id: String,
}

/// Everything a client sees, by what it asked.
async fn client_view(server: &TestServer, w: &World) -> BTreeMap<&'static str, Value> {
    let alice = user(server, &w.alice_token);
    let alice_2 = user(server, &w.alice_token_2);
    let carol = user(server, &w.carol_token);
    let mut seen = BTreeMap::new();
    seen.insert("alice: full sync", sync_view(&alice.sync("").await));
    seen.insert("alice's second device: full sync", sync_view(&alice_2.sync("").await));
    let since = format!("since={}&timeout=0", enc(&w.carol_early));
    seen.insert("carol: incremental sync", sync_view(&carol.sync(&since).await));
    for (what, room) in [
        ("alice: /messages", &w.room),
        ("alice: remote /messages", &w.remote_room),
    ] {
        seen.insert(what, without_age(alice.messages(room, "dir=b&limit=100").await));
    }
    let keys = carol
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(&json!({ "device_keys": { &w.alice: [] } })),
        )
        .await;
    seen.insert("carol: alice's keys", keys["device_keys"].clone());
    let user_path = format!("/_matrix/client/v3/user/{}", enc(&w.alice));
    for (what, path) in [
        (
            "alice: account data",
            format!("{user_path}/account_data/org.example.settings"),
        ),
        (
            "alice: room account data",
            format!("{user_path}/rooms/{}/account_data/org.example.room", enc(&w.room)),
        ),
        ("alice: tags", format!("{user_path}/rooms/{}/tags", enc(&w.room))),
        ("alice: filter", format!("{user_path}/filter/{}", w.filter_id)),
        ("alice: joined rooms", "/_matrix/client/v3/joined_rooms".to_owned()),
        ("alice: whoami", "/_matrix/client/v3/account/whoami".to_owned()),
        (
            "alice: profile",
            format!("/_matrix/client/v3/profile/{}", enc(&w.alice)),
        ),
    ] {
        seen.insert(what, alice.ok(Method::GET, &path, None).await);
    }
    seen.insert(
        "alice's second device: whoami",
        alice_2.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await,
    );
    let devices = alice.ok(Method::GET, "/_matrix/client/v3/devices", None).await;
    let mut ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    ids.sort();
    seen.insert("alice: devices", json!(ids));
    let res = server
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{}",
            server.base(),
            w.media
        ))
        .bearer_auth(&w.alice_token)
        .send()
        .await
        .unwrap();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    let bytes = res.bytes().await.unwrap();
    seen.insert("alice: media", json!([content_type, text(&bytes)]));
    seen
}

/// Alice (of `a`) and carol in a room with messages, a topic, a
/// redaction, a receipt, account data, tags, a filter, device keys,
/// one-time keys, a to-device message, media; alice joined two rooms of
/// `b` and paged back through one (history fetched from `b`).
async fn make_world(a: &TestServer, b: &TestServer) -> (World, String) {
    let alice = a.register("alice").await;
    let carol = a.register("carol").await;
    let bob = b.register("bob").await;
    let login = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "alice" },
        "password": "secret",
        "device_id": "SECOND",
    });
    let second = a
        .request(Method::POST, "/_matrix/client/v3/login", None, Some(&login))
        .await;
    assert_eq!(second.0, StatusCode::OK, "{}", second.1);
    let alice_token_2 = second.1["access_token"].as_str().unwrap().to_owned();
    let device = alice.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await["device_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Moving" }))
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&json!({ "user_id": carol.user_id })),
        )
        .await;
    assert_eq!(carol.join(&room).await.0, StatusCode::OK);
    let carol_early = carol.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    for i in 0..12 {
        let sender = if i % 3 == 2 { &carol } else { &alice };
        let (status, body) = sender.send_text(&room, &format!("t{i}"), &format!("message {i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if i == 4 {
            alice
                .ok(
                    Method::PUT,
                    &format!(
                        "/_matrix/client/v3/rooms/{}/redact/{}/r1",
                        enc(&room),
                        enc(body["event_id"].as_str().unwrap())
                    ),
                    Some(&json!({ "reason": "oops" })),
                )
                .await;
            alice
                .ok(
                    Method::PUT,
                    &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
                    Some(&json!({ "topic": "before the move" })),
                )
                .await;
        }
        last = body;
    }
    carol
        .ok(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(last["event_id"].as_str().unwrap())
            ),
            Some(&json!({})),
        )
        .await;

    let user_path = format!("/_matrix/client/v3/user/{}", enc(&alice.user_id));
    for (path, body) in [
        (
            format!("{user_path}/account_data/org.example.settings"),
            json!({ "theme": "dark" }),
        ),
        (
            format!("{user_path}/rooms/{}/account_data/org.example.room", enc(&room)),
            json!({ "pinned": true }),
        ),
        (
            format!("{user_path}/rooms/{}/tags/u.work", enc(&room)),
            json!({ "order": 0.5 }),
        ),
        (
            "/_matrix/client/v3/profile/".to_owned() + &enc(&alice.user_id) + "/displayname",
            json!({ "displayname": "Alice" }),
        ),
    ] {
        alice.ok(Method::PUT, &path, Some(&body)).await;
    }
    let filter = alice
        .ok(
            Method::POST,
            &format!("{user_path}/filter"),
            Some(&json!({ "room": { "timeline": { "limit": 5 } } })),
        )
        .await;
    let filter_id = filter["filter_id"].as_str().unwrap().to_owned();

    let keys = json!({
        "device_keys": {
            "user_id": alice.user_id, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("curve25519:{device}"): "c1", format!("ed25519:{device}"): "e1" },
            "signatures": {},
        },
        "one_time_keys": {
            "signed_curve25519:AAA": { "key": "otk1", "signatures": {} },
            "signed_curve25519:AAB": { "key": "otk2", "signatures": {} },
        },
        "fallback_keys": { "signed_curve25519:FFF": { "key": "fb", "fallback": true, "signatures": {} } },
    });
    alice
        .ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(&keys))
        .await;
    let to_device = json!({ "messages": { &alice.user_id: { "SECOND": { "hello": "before the move" } } } });
    carol
        .ok(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/org.example.ping/d1",
            Some(&to_device),
        )
        .await;
    let uploaded = a
        .http
        .post(format!("{}/_matrix/media/v3/upload?filename=notes.txt", a.base()))
        .bearer_auth(&alice.token)
        .header("content-type", "text/plain")
        .body("the bytes of the file")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let media = uploaded["content_uri"]
        .as_str()
        .unwrap()
        .trim_start_matches("mxc://")
        .to_owned();

    // Two rooms of b's: alice pages back through one now (its history is
    // fetched from b, at negative stream positions), the other after the
    // move (returned as the second value).
    let mut remote = Vec::new();
    for name in ["remote", "remote later"] {
        let room = bob.create_room(json!({ "preset": "public_chat", "name": name })).await;
        for i in 0..15 {
            assert_eq!(
                bob.send_text(&room, &format!("{name}{i}"), &format!("{name} {i}"))
                    .await
                    .0,
                StatusCode::OK
            );
        }
        let path = format!(
            "/_matrix/client/v3/join/{}?server_name={}",
            enc(&room),
            enc(b.server_name().as_str())
        );
        alice.ok(Method::POST, &path, Some(&json!({}))).await;
        remote.push(room);
    }
    let bodies = page_back_bodies(&alice, &remote[0]).await;
    assert_eq!(bodies, (0..15).map(|i| format!("remote {i}")).collect::<Vec<_>>());

    let world = World {
        alice: alice.user_id.clone(),
        alice_token: alice.token.clone(),
        alice_token_2,
        carol_token: carol.token.clone(),
        carol_early,
        room,
        remote_room: remote[0].clone(),
        media,
        filter_id,
    };
    (world, remote[1].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_deployment_carries_on_on_postgres() {
    if !postgres() {
        eprintln!("WEFT_TEST_POSTGRES is not set: skipped");
        return;
    }
    let (mut a, target) = start_on_sqlite().await;
    let b = TestServer::start_federating().await;
    let (w, remote_later) = make_world(&a, &b).await;
    let before = client_view(&a, &w).await;
    let alice_next = user(&a, &w.alice_token).sync("").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let data_dir = a.data_dir();
    stop(&mut a).await;

    let out = copy(&data_dir, &target).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("events") && stdout.contains("copied"), "{stdout}");
    // SQLite reads an event's auth events and parents from its JSON;
    // PostgreSQL's tables of them are filled from it.
    let sqlite = rusqlite::Connection::open(data_dir.join("weft.db")).unwrap();
    let held: (i64, i64) = sqlite
        .query_row(
            "SELECT (SELECT count(*) FROM (SELECT DISTINCT e.event_id, l.value
                         FROM events e, json_each(e.json, '$.auth_events') l)),
                    (SELECT count(*) FROM event_edges)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let (pg, connection) = tokio_postgres::connect(&target, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = pg
        .query_one(
            "SELECT (SELECT count(*) FROM event_auth),
                    (SELECT count(*) FROM event_edges g JOIN events e ON e.event_id = g.event_id
                         AND e.room_id = g.room_id)",
            &[],
        )
        .await
        .unwrap();
    assert!(held.0 > 100 && held.1 > 20, "{held:?}");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), held);
    drop(pg);

    move_to(&mut a, &target).await;
    let after = client_view(&a, &w).await;
    for (what, seen) in &before {
        assert_eq!(&after[what], seen, "{what}: after the move, as before");
    }

    // The old sync token: nothing new, nothing again.
    let alice = user(&a, &w.alice_token);
    let since = format!("since={}&timeout=0", enc(&alice_next));
    let sync = alice.sync(&since).await;
    for (room, joined) in sync["rooms"]["join"].as_object().into_iter().flatten() {
        let events = joined["timeline"]["events"].as_array().map_or(0, Vec::len);
        assert_eq!(events, 0, "{room}: nothing happened since: {sync}");
    }
    // Something new comes after everything old.
    let (status, sent) = alice.send_text(&w.room, "after", "after the move").await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    alice
        .ok(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.after",
                enc(&w.alice)
            ),
            Some(&json!({ "moved": true })),
        )
        .await;
    let sync = alice.sync(&since).await;
    let timeline: Vec<&Value> = sync["rooms"]["join"][&w.room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(timeline.len(), 1, "{sync}");
    assert_eq!(timeline[0]["event_id"], sent["event_id"]);
    let types: Vec<&str> = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["org.example.after"], "{sync}");
    let (old, new) = (
        stored_positions(&alice_next),
        stored_positions(sync["next_batch"].as_str().unwrap()),
    );
    assert!(
        new[0] > old[0] && new[1] > old[1],
        "positions go on from where they were: {old:?} → {new:?}"
    );
    let carol = user(&a, &w.carol_token);
    let page = carol.messages(&w.room, "dir=b&limit=1").await;
    assert_eq!(page["chunk"][0]["event_id"], sent["event_id"]);

    // A password login, a new filter, a one-time key claimed.
    let login = json!({
        "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "secret",
    });
    let (status, body) = a
        .request(Method::POST, "/_matrix/client/v3/login", None, Some(&login))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fresh = user(&a, body["access_token"].as_str().unwrap());
    let whoami = fresh.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(whoami["user_id"], w.alice.as_str());
    let filter = alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/user/{}/filter", enc(&w.alice)),
            Some(&json!({ "room": { "timeline": { "limit": 7 } } })),
        )
        .await;
    assert_ne!(filter["filter_id"].as_str().unwrap(), w.filter_id);
    let device = whoami_device(&alice).await;
    let claim = json!({ "one_time_keys": { &w.alice: { &device: "signed_curve25519" } } });
    let claimed = carol
        .ok(Method::POST, "/_matrix/client/v3/keys/claim", Some(&claim))
        .await;
    let key = claimed["one_time_keys"][&w.alice][&device].as_object().unwrap();
    assert!(key.keys().all(|k| k.starts_with("signed_curve25519:AA")), "{claimed}");

    // Federation: history still to fetch from b goes below what was
    // fetched before; what alice sends reaches b.
    let bodies = page_back_bodies(&alice, &remote_later).await;
    assert_eq!(bodies, (0..15).map(|i| format!("remote later {i}")).collect::<Vec<_>>());
    let bodies = page_back_bodies(&alice, &w.remote_room).await;
    assert_eq!(bodies.len(), 15, "{bodies:?}");
    assert_eq!(
        alice.send_text(&w.remote_room, "fed", "from postgres").await.0,
        StatusCode::OK
    );
    let bob = b.register("bob2").await;
    assert_eq!(bob.join(&w.remote_room).await.0, StatusCode::OK);
    eventually(Duration::from_secs(20), "b receives alice's message", || async {
        let page = bob.messages(&w.remote_room, "dir=b&limit=5").await;
        let found = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "from postgres");
        if found { Ok(()) } else { Err(page.to_string()) }
    })
    .await;

    // A second copy into the now used database is refused.
    let out = copy(&data_dir, &target).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

async fn whoami_device(user: &User<'_>) -> String {
    let whoami = user.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    whoami["device_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_leaves_nothing_and_runs_again() {
    if !postgres() {
        eprintln!("WEFT_TEST_POSTGRES is not set: skipped");
        return;
    }
    let (mut server, target) = start_on_sqlite().await;
    let alice = server.register("alice").await;
    let token = alice.token.clone();
    let room = alice.create_room(json!({ "name": "Interrupted" })).await;
    for i in 0..5 {
        assert_eq!(
            alice
                .send_text(&room, &format!("t{i}"), &format!("message {i}"))
                .await
                .0,
            StatusCode::OK
        );
    }
    let data_dir = server.data_dir();
    stop(&mut server).await;

    // The schema, with a trigger that holds the copy at its first user
    // (after events and others are copied), until the process is killed.
    drop(weft::storage::postgres::PgStorage::connect(&target).await.unwrap());
    let (pg, connection) = tokio_postgres::connect(&target, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    pg.batch_execute(
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(600); RETURN NEW; END $$;
         CREATE TRIGGER hold BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION hold();",
    )
    .await
    .unwrap();
    let mut child = copy_command(&data_dir, &target)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let held = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'";
    let pid: i32 = eventually(Duration::from_secs(30), "the copy reaches users", || async {
        match pg.query_opt(held, &[]).await.unwrap() {
            Some(row) => Ok(row.get(0)),
            None => Err("not yet".to_owned()),
        }
    })
    .await;
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(text(&out.stdout).contains("events"), "half-way: {}", text(&out.stdout));
    // PostgreSQL notices the lost client when the sleep ends; end it now.
    pg.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    pg.batch_execute("DROP TRIGGER hold ON users; DROP FUNCTION hold()")
        .await
        .unwrap();
    for table in ["events", "rooms", "access_tokens", "users"] {
        let rows: i64 = pg
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "{table}: nothing of the interrupted copy is left");
    }

    let out = copy(&data_dir, &target).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    move_to(&mut server, &target).await;
    let alice = user(&server, &token);
    let bodies = page_back_bodies(&alice, &room).await;
    assert_eq!(bodies, (0..5).map(|i| format!("message {i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn refuses_a_missing_or_outdated_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Checked before PostgreSQL is reached: no server needed.
    let url = "host=/nonexistent dbname=weft";
    let out = copy(&data_dir, url).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no SQLite database"), "{stderr}");

    std::fs::create_dir_all(&data_dir).unwrap();
    let db = rusqlite::Connection::open(data_dir.join("weft.db")).unwrap();
    db.execute_batch("CREATE TABLE users (user_id TEXT); PRAGMA user_version = 3;")
        .unwrap();
    drop(db);
    let out = copy(&data_dir, url).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("schema version 3") && stderr.contains("start weft once"),
        "{stderr}"
    );
}
