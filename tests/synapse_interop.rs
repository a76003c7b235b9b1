//! Interop with Synapse, the reference homeserver (`matrix-synapse` from
//! PyPI, started by `tests/common/synapse.rs`): weft's users join rooms held
//! by Synapse (by alias, by room ID with `server_name` or `via`) and page
//! back through their history, Synapse's users join rooms held by weft, and
//! messages, state, redactions, concurrent sends, invites (accepted and
//! rejected), leaves, kicks and bans cross in both directions.
//!
//! Each test starts its own Synapse (2-4 s). When a test fails, the tail of
//! Synapse's `homeserver.log` follows the failure; `WEFT_TEST_LOG=debug`
//! shows weft's side, `WEFT_SYNAPSE_KEEP=1` keeps Synapse's directory.

mod common;

use std::time::{Duration, Instant};

use common::{
    TestServer, enc, eventually,
    synapse::{Client, Synapse},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long anything that crosses servers may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `client` sees the event `event_id` in the room's `/messages`
/// (newest 100); returns it.
async fn sees_event(client: &Client, room: &str, event_id: &str) -> Value {
    eventually(
        DEADLINE,
        &format!(
            "{} ({}) sees {event_id} in /messages of {room}",
            client.user_id, client.base
        ),
        || async {
            let page = client.messages(room, "dir=b&limit=100").await;
            page["chunk"]
                .as_array()
                .and_then(|chunk| chunk.iter().find(|e| e["event_id"] == event_id))
                .cloned()
                .ok_or_else(|| page.to_string())
        },
    )
    .await
}

/// A `since` token for `client`'s `/sync` (Synapse may answer a repeated
/// initial sync from its cache: the token is then older, which is fine).
async fn sync_token(client: &Client) -> String {
    client.sync("timeout=0").await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned()
}

/// Follows `client`'s `/sync` from `since` until `found` picks something
/// out of a response. (Incremental: Synapse caches initial syncs.)
async fn sync_until<T>(client: &Client, since: &str, what: &str, mut found: impl FnMut(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    let mut since = since.to_owned();
    let mut seen = Vec::new();
    loop {
        let sync = client.sync(&format!("since={}&timeout=2000", enc(&since))).await;
        if let Some(next) = sync["next_batch"].as_str() {
            since = next.to_owned();
        }
        if let Some(value) = found(&sync) {
            return value;
        }
        seen.push(sync.to_string());
        assert!(
            Instant::now() < deadline,
            "{} ({}): {what}: not within {DEADLINE:?}; syncs: {seen:#?}",
            client.user_id,
            client.base
        );
    }
}

/// Waits until `client`'s `/sync` (from `since`) brings the event
/// `event_id` in the room's timeline.
async fn syncs_event(client: &Client, room: &str, since: &str, event_id: &str) -> Value {
    sync_until(client, since, &format!("{event_id} through /sync"), |sync| {
        sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .and_then(|events| events.iter().find(|e| e["event_id"] == event_id))
            .cloned()
    })
    .await
}

/// Waits until `client` holds `user` as a joined member of the room.
async fn sees_member(client: &Client, room: &str, user: &str) {
    eventually(
        DEADLINE,
        &format!("{} ({}) sees {user} joined in {room}", client.user_id, client.base),
        || async {
            let (status, members) = client
                .call(
                    reqwest::Method::GET,
                    &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room)),
                    None,
                )
                .await;
            if status == StatusCode::OK && members["joined"][user].is_object() {
                Ok(())
            } else {
                Err(format!("{status} {members}"))
            }
        },
    )
    .await
}

/// Waits until a state event's content on `client`'s server has `field`
/// equal to `want`.
async fn sees_state(client: &Client, room: &str, event_type: &str, field: &str, want: &str) {
    eventually(
        DEADLINE,
        &format!(
            "{} ({}) sees {event_type}.{field} = {want:?} in {room}",
            client.user_id, client.base
        ),
        || async {
            let (status, content) = client.state(room, event_type, "").await;
            if status == StatusCode::OK && content[field] == want {
                Ok(())
            } else {
                Err(format!("{status} {content}"))
            }
        },
    )
    .await
}

/// After `joiner` joined `host`'s room: each sees the other as a member, a
/// message of the host reaches the joiner (`/sync` and `/messages`) and one
/// of the joiner (with rich content) reaches the host unchanged.
async fn messages_flow_both_ways(host: &Client, joiner: &Client, room: &str, tag: &str) {
    sees_member(host, room, &joiner.user_id).await;
    sees_member(joiner, room, &host.user_id).await;

    // host → joiner.
    let since = sync_token(joiner).await;
    let text = format!("{tag}: from the host after the join");
    let id = host.send_text(room, &format!("{tag}-h1"), &text).await;
    let synced = syncs_event(joiner, room, &since, &id).await;
    assert_eq!(synced["content"]["body"], text.as_str(), "{synced}");
    assert_eq!(synced["sender"], host.user_id.as_str(), "{synced}");
    let event = sees_event(joiner, room, &id).await;
    assert_eq!(event["content"]["body"], text.as_str(), "{event}");
    assert_eq!(event["type"], "m.room.message", "{event}");

    // joiner → host, content as sent.
    let content = json!({
        "msgtype": "m.text",
        "body": format!("{tag}: hello from the joiner ✓"),
        "format": "org.matrix.custom.html",
        "formatted_body": format!("<b>{tag}</b>: hello from the joiner ✓"),
        "org.example.extra": { "list": [1, 2, 3], "nested": { "null": null, "big": 9007199254740991i64, "negative": -5, "escaped": "a\"b\\c\u{1}" } },
    });
    let (status, body) = joiner
        .send(room, "m.room.message", &format!("{tag}-j1"), &content)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["event_id"].as_str().expect("event_id").to_owned();
    let event = sees_event(host, room, &id).await;
    assert_eq!(event["content"], content, "the host's copy of {id}");
    assert_eq!(event["sender"], joiner.user_id.as_str(), "{event}");
    assert_eq!(event["type"], "m.room.message", "{event}");

    // And once more from the host, after the joiner's message (the host's
    // next event cites the joiner's as its parent).
    let text = format!("{tag}: the host answers");
    let id = host.send_text(room, &format!("{tag}-h2"), &text).await;
    let event = sees_event(joiner, room, &id).await;
    assert_eq!(event["content"]["body"], text.as_str(), "{event}");
}

/// A Synapse user creates a public room of `version` with an alias, name
/// and topic, talks and changes the topic; a weft user joins by the alias,
/// sees the room's state, and messages and state changes flow both ways.
async fn weft_joins_synapse_room_by_alias(version: &str) {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;

    let alias_local = format!("interop-v{version}");
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_version": version,
            "name": "Interop room",
            "topic": "first topic",
            "room_alias_name": alias_local,
        }))
        .await;
    alice.send_text(&room, "s0", "before the join 1").await;
    alice
        .put_state(&room, "m.room.topic", "", &json!({ "topic": "second topic" }))
        .await;
    alice.send_text(&room, "s1", "before the join 2").await;

    let alias = format!("#{alias_local}:{}", synapse.server_name());
    let (status, body) = bob.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "weft joins {alias}: {body}");
    assert_eq!(body["room_id"], room.as_str(), "{body}");

    // weft holds the room's state as of the join.
    let (status, create) = bob.state(&room, "m.room.create", "").await;
    assert_eq!(status, StatusCode::OK, "{create}");
    assert_eq!(create["room_version"], version, "{create}");
    let (status, name) = bob.state(&room, "m.room.name", "").await;
    assert_eq!(
        (status, &name["name"]),
        (StatusCode::OK, &json!("Interop room")),
        "{name}"
    );
    let (status, topic) = bob.state(&room, "m.room.topic", "").await;
    assert_eq!(
        (status, &topic["topic"]),
        (StatusCode::OK, &json!("second topic")),
        "{topic}"
    );
    // A sync that loads members lazily has the room at once; one that
    // loads every member once weft has the full state (`/joined_members`
    // waits for it).
    let lazy = enc(r#"{"room":{"state":{"lazy_load_members":true}}}"#);
    let sync = bob.sync(&format!("timeout=0&filter={lazy}")).await;
    assert!(
        sync["rooms"]["join"][&room].is_object(),
        "the room is in bob's lazy /sync: {sync}"
    );
    bob.joined_members(&room).await;
    let sync = bob.sync("timeout=0").await;
    assert!(
        sync["rooms"]["join"][&room].is_object(),
        "the room is in bob's /sync: {sync}"
    );

    messages_flow_both_ways(&alice, &bob, &room, &format!("v{version}")).await;

    // A state change on Synapse after the join reaches weft.
    alice
        .put_state(&room, "m.room.topic", "", &json!({ "topic": "third topic" }))
        .await;
    sees_state(&bob, &room, "m.room.topic", "topic", "third topic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_joins_a_synapse_room_v12_by_alias() {
    weft_joins_synapse_room_by_alias("12").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_joins_a_synapse_room_v11_by_alias() {
    weft_joins_synapse_room_by_alias("11").await;
}

/// A weft user joins Synapse rooms by room ID: version 12 (no server in the
/// ID) with `server_name=`, version 10 with `via=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_joins_synapse_rooms_by_id() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;

    for (version, param) in [("12", "server_name"), ("10", "via")] {
        let room = alice
            .create_room(json!({
                "preset": "public_chat",
                "room_version": version,
                "name": format!("By ID v{version}"),
            }))
            .await;
        alice.send_text(&room, "s0", "before the join").await;
        let query = format!("{param}={}", enc(synapse.server_name()));
        let (status, body) = bob.join(&room, &query).await;
        assert_eq!(status, StatusCode::OK, "weft joins {room}?{query}: {body}");
        assert_eq!(body["room_id"], room.as_str(), "{body}");
        let (status, name) = bob.state(&room, "m.room.name", "").await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(name["name"], format!("By ID v{version}"), "{name}");
        messages_flow_both_ways(&alice, &bob, &room, &format!("id-v{version}")).await;
    }
}

/// A Synapse user joins weft's rooms: version 12 by alias, weft's default
/// version by room ID with `server_name=`; sees their state and history
/// (Synapse backfills from weft), and messages and state flow both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_joins_weft_rooms() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;

    // By alias, version 12.
    let room = bob
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "name": "Held by weft",
            "topic": "weft's topic",
            "room_alias_name": "weftroom",
        }))
        .await;
    let before = bob.send_text(&room, "w0", "weft: before the join").await;
    let alias = format!("#weftroom:{}", weft.server_name());
    let (status, body) = alice.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "synapse joins {alias}: {body}");
    assert_eq!(body["room_id"], room.as_str(), "{body}");
    sees_state(&alice, &room, "m.room.name", "name", "Held by weft").await;
    sees_state(&alice, &room, "m.room.topic", "topic", "weft's topic").await;
    let (status, create) = alice.state(&room, "m.room.create", "").await;
    assert_eq!(
        (status, &create["room_version"]),
        (StatusCode::OK, &json!("12")),
        "{create}"
    );
    messages_flow_both_ways(&bob, &alice, &room, "weft-v12").await;
    // Synapse fills in what was said before its user joined (backfill from weft).
    let event = sees_event(&alice, &room, &before).await;
    assert_eq!(event["content"]["body"], "weft: before the join", "{event}");
    // State set on weft reaches Synapse.
    bob.put_state(&room, "m.room.topic", "", &json!({ "topic": "changed on weft" }))
        .await;
    sees_state(&alice, &room, "m.room.topic", "topic", "changed on weft").await;

    // By room ID with server_name, weft's default room version.
    let room = bob
        .create_room(json!({ "preset": "public_chat", "name": "By ID on weft" }))
        .await;
    bob.send_text(&room, "w1", "weft: before the second join").await;
    let query = format!("server_name={}", enc(weft.server_name().as_str()));
    let (status, body) = alice.join(&room, &query).await;
    assert_eq!(status, StatusCode::OK, "synapse joins {room}?{query}: {body}");
    assert_eq!(body["room_id"], room.as_str(), "{body}");
    sees_state(&alice, &room, "m.room.name", "name", "By ID on weft").await;
    messages_flow_both_ways(&bob, &alice, &room, "weft-id").await;
}

/// After `joiner` joined `host`'s room: the host gives the joiner power and
/// the joiner renames the room; both send at once (the DAG forks and
/// merges) and both servers end up with every message; the host redacts
/// one of the joiner's; the joiner leaves and comes back.
async fn busy_room(host: &Client, host_server: &str, joiner: &Client, room: &str) {
    sees_member(host, room, &joiner.user_id).await;

    // Power for the joiner, then a state event of the joiner's.
    let (status, mut levels) = host.state(room, "m.room.power_levels", "").await;
    assert_eq!(status, StatusCode::OK, "{levels}");
    levels["users"][&joiner.user_id] = json!(50);
    host.put_state(room, "m.room.power_levels", "", &levels).await;
    eventually(
        DEADLINE,
        &format!("{} holds its new power level", joiner.base),
        || async {
            let (status, levels) = joiner.state(room, "m.room.power_levels", "").await;
            if levels["users"][&joiner.user_id] == 50 {
                Ok(())
            } else {
                Err(format!("{status} {levels}"))
            }
        },
    )
    .await;
    let (status, body) = joiner
        .call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(room)),
            Some(&json!({ "name": "Renamed by the joiner" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the joiner renames the room: {body}");
    sees_state(host, room, "m.room.name", "name", "Renamed by the joiner").await;

    // Both at once.
    const N: usize = 8;
    let send_all = |client: &Client, who: &'static str| {
        let client = client.clone();
        let room = room.to_owned();
        async move {
            let mut ids = Vec::new();
            for i in 0..N {
                ids.push(
                    client
                        .send_text(&room, &format!("busy-{who}-{i}"), &format!("{who} {i}"))
                        .await,
                );
            }
            ids
        }
    };
    let (from_host, from_joiner) = tokio::join!(send_all(host, "host"), send_all(joiner, "joiner"));
    let all: Vec<&String> = from_host.iter().chain(&from_joiner).collect();
    for client in [host, joiner] {
        eventually(
            DEADLINE,
            &format!(
                "{} ({}) holds all {} concurrent messages",
                client.user_id,
                client.base,
                all.len()
            ),
            || async {
                let page = client.messages(room, "dir=b&limit=200").await;
                let held: Vec<&str> = page["chunk"]
                    .as_array()
                    .map(|c| c.iter().filter_map(|e| e["event_id"].as_str()).collect())
                    .unwrap_or_default();
                let missing: Vec<&&String> = all.iter().filter(|id| !held.contains(&id.as_str())).collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing {missing:?}; page: {page}"))
                }
            },
        )
        .await;
    }
    // The host's next message (whose prev_events merge the fork) arrives.
    let merge = host.send_text(room, "busy-merge", "after the burst").await;
    sees_event(joiner, room, &merge).await;

    // A redaction by the host of one of the joiner's messages.
    let target = &from_joiner[0];
    host.ok(
        reqwest::Method::PUT,
        &format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/busy-redact",
            enc(room),
            enc(target)
        ),
        Some(&json!({ "reason": "interop" })),
    )
    .await;
    for client in [host, joiner] {
        eventually(
            DEADLINE,
            &format!("{} ({}) shows {target} redacted", client.user_id, client.base),
            || async {
                let event = client
                    .ok(
                        reqwest::Method::GET,
                        &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(target)),
                        None,
                    )
                    .await;
                if event["content"] == json!({}) {
                    Ok(())
                } else {
                    Err(event.to_string())
                }
            },
        )
        .await;
    }

    // The joiner leaves.
    joiner
        .ok(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(room)),
            Some(&json!({})),
        )
        .await;
    eventually(
        DEADLINE,
        &format!("{} sees {} leave", host.base, joiner.user_id),
        || async {
            let (status, member) = host.state(room, "m.room.member", &joiner.user_id).await;
            if member["membership"] == "leave" {
                Ok(())
            } else {
                Err(format!("{status} {member}"))
            }
        },
    )
    .await;

    // It comes back (the joiner's server knows the room but has no member
    // in it any more) and talks.
    let (status, body) = joiner.join(room, &format!("via={}", enc(host_server))).await;
    assert_eq!(status, StatusCode::OK, "the joiner rejoins: {body}");
    sees_member(host, room, &joiner.user_id).await;
    let back = joiner.send_text(room, "busy-back", "back again").await;
    sees_event(host, room, &back).await;
}

/// Waits until `client`'s `/sync` (from `since`) shows the room in `leave`
/// with a membership event of `sender` that gives `client` `membership`.
async fn syncs_own_membership(client: &Client, room: &str, since: &str, sender: &str, membership: &str) {
    sync_until(client, since, &format!("{membership} by {sender} in {room}"), |sync| {
        sync["rooms"]["leave"][room]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == client.user_id.as_str()
                        && e["content"]["membership"] == membership
                        && e["sender"] == sender
                })
            })
            .then_some(())
    })
    .await
}

/// The host kicks the joiner, who rejoins and is then banned: each time
/// the joiner's server learns of it (its user's `/sync` shows the room
/// left) and refuses the joiner's messages.
async fn kick_and_ban(host: &Client, host_server: &str, joiner: &Client, room: &str) {
    sees_member(host, room, &joiner.user_id).await;
    for (action, membership) in [("kick", "leave"), ("ban", "ban")] {
        let since = sync_token(joiner).await;
        host.ok(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/{action}", enc(room)),
            Some(&json!({ "user_id": joiner.user_id, "reason": "interop" })),
        )
        .await;
        syncs_own_membership(joiner, room, &since, &host.user_id, membership).await;
        let (status, body) = joiner
            .send(
                room,
                "m.room.message",
                &format!("after-{action}"),
                &json!({ "msgtype": "m.text", "body": format!("after the {action}") }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the joiner cannot send after the {action}: {body}"
        );
        if action == "kick" {
            let (status, body) = joiner.join(room, &format!("via={}", enc(host_server))).await;
            assert_eq!(status, StatusCode::OK, "the joiner rejoins after the kick: {body}");
            sees_member(host, room, &joiner.user_id).await;
        }
    }
    // The banned joiner cannot come back.
    let (status, body) = joiner.join(room, &format!("via={}", enc(host_server))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a banned user cannot rejoin: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_synapse_room_with_a_weft_member() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    let (status, body) = bob.join(&room, &format!("via={}", enc(synapse.server_name()))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    busy_room(&alice, synapse.server_name(), &bob, &room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_weft_room_with_a_synapse_member() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let room = bob
        .create_room(json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    let (status, body) = alice
        .join(&room, &format!("server_name={}", enc(weft.server_name().as_str())))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    busy_room(&bob, weft.server_name().as_str(), &alice, &room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_kicks_and_bans_a_weft_user() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    let (status, body) = bob.join(&room, &format!("via={}", enc(synapse.server_name()))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    kick_and_ban(&alice, synapse.server_name(), &bob, &room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_kicks_and_bans_a_synapse_user() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let room = bob
        .create_room(json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    let (status, body) = alice
        .join(&room, &format!("server_name={}", enc(weft.server_name().as_str())))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    kick_and_ban(&bob, weft.server_name().as_str(), &alice, &room).await;
}

/// Pages `/messages` back from the end of the room, `limit` at a time,
/// until the room's creation; returns the events oldest first.
async fn page_back_to_creation(client: &Client, room: &str, limit: u32) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..200 {
        let query = match &from {
            Some(token) => format!("dir=b&limit={limit}&from={}", enc(token)),
            None => format!("dir=b&limit={limit}"),
        };
        let page = client.messages(room, &query).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        let done = chunk.iter().any(|e| e["type"] == "m.room.create");
        events.extend(chunk);
        match page["end"].as_str() {
            Some(end) if !done => from = Some(end.to_owned()),
            _ => {
                events.reverse();
                return events;
            }
        }
    }
    panic!(
        "{} ({}) paged 200 times without reaching the start of {room}",
        client.user_id, client.base
    );
}

/// A weft user joins a Synapse room with history and pages back through
/// all of it (weft backfills from Synapse), in the order Synapse holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_pages_back_through_a_synapse_room_history() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "12", "name": "History" }))
        .await;
    const N: usize = 150;
    for i in 0..N {
        alice.send_text(&room, &format!("h{i}"), &format!("history {i}")).await;
        if i == N / 2 {
            alice
                .put_state(&room, "m.room.topic", "", &json!({ "topic": "halfway" }))
                .await;
        }
    }
    let (status, body) = bob
        .join(&room, &format!("server_name={}", enc(synapse.server_name())))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
            .collect()
    };
    let on_synapse = page_back_to_creation(&alice, &room, 100).await;
    let on_weft = page_back_to_creation(&bob, &room, 30).await;
    let texts: Vec<&str> = on_weft
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("history {i}")).collect();
    assert_eq!(texts, want, "weft's history of the room, oldest first");
    let mut unique = ids(&on_weft);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), on_weft.len(), "no event twice in weft's pages");
    // The same events as Synapse's, in the same order.
    assert_eq!(ids(&on_weft), ids(&on_synapse), "weft's pages against Synapse's");
    // Backfilled events keep their content and sender.
    let topic = on_weft
        .iter()
        .find(|e| e["type"] == "m.room.topic")
        .expect("the topic change in weft's history");
    assert_eq!(topic["content"]["topic"], "halfway", "{topic}");
    assert_eq!(topic["sender"], alice.user_id.as_str(), "{topic}");
}

/// Waits until `client`'s `/sync` (from `since`) shows an invite to
/// `room`; returns it.
async fn syncs_invite(client: &Client, room: &str, since: &str) -> Value {
    sync_until(client, since, &format!("invited to {room}"), |sync| {
        Some(sync["rooms"]["invite"][room].clone()).filter(Value::is_object)
    })
    .await
}

/// The invited user's own invite is in the stripped state of the invite.
fn invite_state_has(invite: &Value, event_type: &str, key: &str) -> bool {
    invite["invite_state"]["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["type"] == event_type && e["state_key"] == key))
}

/// `host` invites `guest` to a private room: the guest's server shows the
/// invite (with the room's name in its stripped state); the guest accepts
/// (a join without any server named) and they talk.
async fn invite_accepted(host: &Client, guest: &Client, version: &str) {
    let room = host
        .create_room(json!({ "preset": "private_chat", "room_version": version, "name": "Private" }))
        .await;
    let since = sync_token(guest).await;
    host.ok(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
        Some(&json!({ "user_id": guest.user_id })),
    )
    .await;
    let invite = syncs_invite(guest, &room, &since).await;
    assert!(
        invite_state_has(&invite, "m.room.member", &guest.user_id),
        "the guest's invite event: {invite}"
    );
    assert!(
        invite_state_has(&invite, "m.room.name", ""),
        "the room's name: {invite}"
    );
    let (status, body) = guest.join(&room, "").await;
    assert_eq!(status, StatusCode::OK, "the guest accepts the invite: {body}");
    messages_flow_both_ways(host, guest, &room, &format!("invite-v{version}")).await;
}

/// `host` invites `guest`, who rejects the invite: the host's server holds
/// the guest's leave, and the guest's `/sync` moves the room from `invite`
/// to `leave`.
async fn invite_rejected(host: &Client, guest: &Client, version: &str) {
    let room = host
        .create_room(json!({ "preset": "private_chat", "room_version": version }))
        .await;
    let since = sync_token(guest).await;
    host.ok(
        reqwest::Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
        Some(&json!({ "user_id": guest.user_id })),
    )
    .await;
    syncs_invite(guest, &room, &since).await;
    let since = sync_token(guest).await;
    guest
        .ok(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&json!({})),
        )
        .await;
    eventually(DEADLINE, &format!("{} sees the invite rejected", host.base), || async {
        let (status, member) = host.state(&room, "m.room.member", &guest.user_id).await;
        if member["membership"] == "leave" && member["reason"].is_null() {
            Ok(())
        } else {
            Err(format!("{status} {member}"))
        }
    })
    .await;
    sync_until(
        guest,
        &since,
        &format!("the rejected invite to {room} in `leave`"),
        |sync| (sync["rooms"]["leave"][&room].is_object() && sync["rooms"]["invite"][&room].is_null()).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_invites_a_weft_user() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    invite_accepted(&alice, &bob, "12").await;
    invite_accepted(&alice, &bob, "10").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_invites_a_synapse_user() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    invite_accepted(&bob, &alice, "12").await;
    invite_accepted(&bob, &alice, "10").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weft_user_rejects_a_synapse_invite() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    invite_rejected(&alice, &bob, "12").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_user_rejects_a_weft_invite() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    invite_rejected(&bob, &alice, "12").await;
}

/// Synapse asks every join for a partial state (`omit_members`): weft
/// gives it one, and Synapse completes the room's state from weft in the
/// background (`/state_ids`, `/state`), ending with every member known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_joins_a_weft_room_with_partial_state_and_completes_it() {
    let (synapse, weft, alice, bob) = common::synapse::synapse_and_weft().await;
    let room = bob
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "name": "Many members",
            "room_alias_name": "manymembers",
        }))
        .await;
    let mut members = vec![bob.user_id.clone()];
    for i in 0..20 {
        let user = Client::register_on_weft(&weft, &format!("member{i}")).await;
        let (status, body) = user.join(&room, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        members.push(user.user_id.clone());
    }
    let alias = format!("#manymembers:{}", weft.server_name());
    let (status, body) = alice.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "synapse joins {alias}: {body}");
    eventually(DEADLINE, "Synapse leaves the partial state", || async {
        let lines = synapse.log_lines_with("Clearing partial-state flag");
        if lines.iter().any(|l| l.contains(room.as_str())) {
            Ok(())
        } else {
            Err(synapse.logs(5))
        }
    })
    .await;
    let joined = alice.joined_members(&room).await;
    for member in members.iter().chain([&alice.user_id]) {
        assert!(joined["joined"][member.as_str()].is_object(), "{member} in {joined}");
    }
    messages_flow_both_ways(&bob, &alice, &room, "partial").await;
}

/// weft asks a partial state of Synapse (`omit_members`): Synapse gives
/// one, the room is usable at once (messages both ways, from members whose
/// joins weft was not given too), and weft completes its state from
/// Synapse in the background (`/state`), ending with every member known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_joins_a_synapse_room_with_partial_state_and_completes_it() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating_with(|c| c.partial_state_joins = true).await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11", "name": "Synapse's many" }))
        .await;
    let mut members = vec![alice.user_id.clone()];
    let mut clients = Vec::new();
    for i in 0..10 {
        let user = synapse.user(&format!("member{i}")).await;
        let (status, body) = user.join(&room, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        members.push(user.user_id.clone());
        clients.push(user);
    }
    let (status, body) = bob
        .join(&room, &format!("server_name={}", enc(synapse.server_name())))
        .await;
    assert_eq!(status, StatusCode::OK, "weft joins: {body}");
    let asked = synapse.log_lines_with("send_join");
    assert!(
        asked.iter().any(|l| l.contains("omit_members=true")),
        "weft asked a partial state: {asked:?}"
    );
    // A member whose join weft was not given talks; weft's user answers.
    let said = clients[3].send_text(&room, "m3", "from member3").await;
    eventually(DEADLINE, "weft gets member3's message", || async {
        let page = bob.messages(&room, "dir=b&limit=20").await;
        let ids: Vec<&str> = page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        if ids.contains(&said.as_str()) {
            Ok(())
        } else {
            Err(page.to_string())
        }
    })
    .await;
    // The whole member list (weft waits for its full state to give it).
    let joined = bob.joined_members(&room).await;
    for member in members.iter().chain([&bob.user_id]) {
        assert!(joined["joined"][member.as_str()].is_object(), "{member} in {joined}");
    }
    assert!(
        synapse
            .log_lines_with("/_matrix/federation/v1/state_ids/")
            .iter()
            .any(|l| l.contains(room.as_str()) || l.contains(&enc(&room))),
        "weft asked Synapse for the full state"
    );
    messages_flow_both_ways(&alice, &bob, &room, "weft-partial").await;
}
