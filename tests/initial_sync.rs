//! The deprecated snapshots: `GET /initialSync` and
//! `GET /rooms/{roomId}/initialSync`.

mod common;

use common::{TestServer, User, enc};
use reqwest::Method;
use serde_json::{Value, json};

async fn initial_sync(user: &User<'_>, query: &str) -> Value {
    user.ok(Method::GET, &format!("/_matrix/client/v3/initialSync?{query}"), None)
        .await
}

async fn room_initial_sync(user: &User<'_>, room: &str, query: &str) -> (u16, Value) {
    let (status, body) = user
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/initialSync?{query}", enc(room)),
            None,
        )
        .await;
    (status.as_u16(), body)
}

fn room_of<'a>(snapshot: &'a Value, room: &str) -> &'a Value {
    snapshot["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room)
        .unwrap_or_else(|| panic!("{room} not in {snapshot}"))
}

fn bodies(chunk: &Value) -> Vec<&str> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect()
}

fn state_of<'a>(state: &'a Value, kind: &str) -> Option<&'a Value> {
    state.as_array().unwrap().iter().find(|e| e["type"] == kind)
}

async fn put_state(user: &User<'_>, room: &str, kind: &str, content: Value) {
    user.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
        Some(&content),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_snapshot() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "topic": "snapshots" }))
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    for i in 0..3 {
        alice.send_text(&room, &format!("t{i}"), &format!("m{i}")).await;
    }
    let (_, sent) = bob.send_text(&room, "b", "from bob").await;
    let event_id = sent["event_id"].as_str().unwrap();
    alice
        .ok(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(event_id)
            ),
            Some(&json!({})),
        )
        .await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/user/{}/account_data/my.global", enc(&alice.user_id)),
            Some(&json!({ "cats": true })),
        )
        .await;
    alice
        .ok(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/my.room",
                enc(&alice.user_id),
                enc(&room)
            ),
            Some(&json!({ "rats": true })),
        )
        .await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id)),
        Some(&json!({ "presence": "online", "status_msg": "hi" })),
    )
    .await;

    let snapshot = initial_sync(&alice, "limit=2").await;
    let info = room_of(&snapshot, &room);
    assert_eq!(info["membership"], "join");
    assert_eq!(info["visibility"], "public");
    assert_eq!(bodies(&info["messages"]["chunk"]), ["m2", "from bob"], "{info}");
    let start = info["messages"]["start"].as_str().unwrap();
    assert!(info["messages"]["end"].is_string());
    assert_eq!(
        state_of(&info["state"], "m.room.topic").unwrap()["content"]["topic"],
        "snapshots"
    );
    // Events carry `user_id`, as they always did here.
    let member = info["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id)
        .unwrap();
    assert_eq!(member["user_id"], bob.user_id);
    assert_eq!(info["account_data"][0]["type"], "my.room", "{info}");
    assert!(
        snapshot["account_data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["type"] == "my.global" && d["content"]["cats"] == true),
        "{snapshot}"
    );
    let receipt = snapshot["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room)
        .unwrap();
    assert!(
        receipt["content"][event_id]["m.read"][&alice.user_id]["ts"].is_u64(),
        "{receipt}"
    );
    // Presence: one's own (the snapshot marks one online) and the room's.
    let presence = snapshot["presence"].as_array().unwrap();
    let of = |user: &str| presence.iter().find(|p| p["content"]["user_id"] == user).cloned();
    assert_eq!(
        of(&alice.user_id).unwrap()["content"]["presence"],
        "online",
        "{presence:?}"
    );
    assert_eq!(of(&bob.user_id).unwrap()["content"]["status_msg"], "hi");
    assert!(of(&bob.user_id).unwrap()["content"]["last_active_ago"].is_u64());

    // The start token pages on back with /messages.
    let older = alice
        .messages(&room, &format!("from={}&dir=b&limit=1", enc(start)))
        .await;
    assert_eq!(bodies(&older["chunk"]), ["m1"], "{older}");
    // The end token works with /events.
    let end = snapshot["end"].as_str().unwrap();
    alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/events?from={}&timeout=0", enc(end)),
            None,
        )
        .await;

    let snapshot = initial_sync(&alice, "limit=0").await;
    assert!(
        room_of(&snapshot, &room)["messages"]["chunk"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    for bad in ["limit=hello", "limit=-1", "archived=maybe"] {
        let (status, body) = alice
            .call(Method::GET, &format!("/_matrix/client/v3/initialSync?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM");
    }
    let (status, _) = server
        .request(Method::GET, "/_matrix/client/v3/initialSync", None, None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_rooms_stop_at_the_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = bob.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(alice.join(&room).await.0, 200);
    put_state(&bob, &room, "m.room.name", json!({ "name": "before" })).await;
    bob.send_text(&room, "1", "before 1").await;
    bob.send_text(&room, "2", "before 2").await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&json!({})),
        )
        .await;
    bob.send_text(&room, "3", "after").await;
    put_state(&bob, &room, "m.room.name", json!({ "name": "after" })).await;

    // Left rooms only with archived=true.
    let snapshot = initial_sync(&alice, "limit=2").await;
    assert!(!snapshot.to_string().contains(&room), "{snapshot}");
    let snapshot = initial_sync(&alice, "limit=2&archived=true").await;
    let info = room_of(&snapshot, &room);
    assert_eq!(info["membership"], "leave");
    let chunk = info["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk[0]["content"]["body"], "before 2", "{info}");
    assert_eq!(chunk[1]["type"], "m.room.member", "the leave closes it");
    assert_eq!(
        state_of(&info["state"], "m.room.name").unwrap()["content"]["name"],
        "before"
    );

    let (status, info) = room_initial_sync(&alice, &room, "limit=2").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["membership"], "leave");
    assert_eq!(bodies(&info["messages"]["chunk"]), ["before 2"]);
    assert_eq!(
        state_of(&info["state"], "m.room.name").unwrap()["content"]["name"],
        "before"
    );
    assert!(!info.to_string().contains("after"), "{info}");
    assert_eq!(info["presence"], json!([]));
    assert_eq!(info["receipts"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_snapshot_for_members_and_previews() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.send_text(&room, "1", "private").await;

    let (status, info) = room_initial_sync(&alice, &room, "").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["room_id"], room);
    assert_eq!(info["membership"], "join");
    assert_eq!(info["visibility"], "private");
    assert!(state_of(&info["state"], "m.room.create").is_some());
    assert_eq!(bodies(&info["messages"]["chunk"]), ["private"]);
    let presence = info["presence"].as_array().unwrap();
    assert_eq!(presence.len(), 1, "{info}");
    assert_eq!(presence[0]["content"]["user_id"], alice.user_id);
    let (_, info) = room_initial_sync(&alice, &room, "limit=0").await;
    assert_eq!(info["messages"]["chunk"], json!([]));

    // Not a member of a room that is not world-readable: 403, as for a
    // room that does not exist.
    let (status, body) = room_initial_sync(&bob, &room, "").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, _) = room_initial_sync(&bob, "!nowhere:localhost", "").await;
    assert_eq!(status, 403);
    let (status, body) = room_initial_sync(&bob, "not-a-room", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["errcode"].is_string());
    let (status, _) = room_initial_sync(&alice, &room, "limit=x").await;
    assert_eq!(status, 400);

    // World-readable: a preview, of what anyone may see.
    put_state(
        &alice,
        &room,
        "m.room.history_visibility",
        json!({ "history_visibility": "world_readable" }),
    )
    .await;
    alice.send_text(&room, "2", "public").await;
    let (status, info) = room_initial_sync(&bob, &room, "").await;
    assert_eq!(status, 200, "{info}");
    let chunk = info["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2, "{info}");
    assert_eq!(chunk[0]["type"], "m.room.history_visibility");
    assert_eq!(chunk[1]["content"]["body"], "public");
    assert!(info.get("membership").is_none(), "{info}");
    assert_eq!(info["account_data"], json!([]));
}
