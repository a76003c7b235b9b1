//! Self-destructing messages (MSC2228, behind `ephemeral_messages`): a
//! message whose content names `org.matrix.self_destruct_after` is pruned
//! at that time on every server that holds it, and stays pruned across a
//! restart; state events are never pruned, and nothing is without the
//! setting.

mod common;

use std::time::Duration;

use common::{TestServer, User, enc, eventually};
use reqwest::Method;
use serde_json::{Value, json};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn send(user: &User<'_>, room: &str, txn: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    user.ok(Method::PUT, &path, Some(&content)).await["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The content of `event_id` as `user` reads it through `/event` (404
/// while the event has not reached the user's server).
async fn content(user: &User<'_>, room: &str, event_id: &str) -> Result<Value, String> {
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(event_id));
    let (status, body) = user.call(Method::GET, &path, None).await;
    if status != 200 {
        return Err(format!("{status} {body}"));
    }
    Ok(body["content"].clone())
}

async fn wait_pruned(user: &User<'_>, room: &str, event_id: &str) {
    eventually(Duration::from_secs(20), "the message is pruned", || async {
        let content = content(user, room, event_id).await?;
        if content == json!({}) {
            Ok(())
        } else {
            Err(content.to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_self_destructs_on_every_server_holding_it() {
    let a = TestServer::start_federating_with(|c| c.ephemeral_messages = true).await;
    let b = TestServer::start_federating_with(|c| c.ephemeral_messages = true).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200, "bob joins over federation");

    // A state event naming a past time first: never pruned (it would
    // change the room's state), and it would expire before the message.
    let topic_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room));
    let past = now_ms() - 1_000;
    let topic = alice
        .ok(
            Method::PUT,
            &topic_path,
            Some(&json!({ "topic": "stays", "org.matrix.self_destruct_after": past })),
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doomed = send(
        &alice,
        &room,
        "doomed",
        json!({ "msgtype": "m.text", "body": "gone soon", "org.matrix.self_destruct_after": now_ms() + 3_000 }),
    )
    .await;
    let kept = send(&alice, &room, "kept", json!({ "msgtype": "m.text", "body": "stays" })).await;

    // Bob's server receives it whole, before its time.
    let received = eventually(Duration::from_secs(20), "bob's server has the message", || {
        content(&bob, &room, &doomed)
    })
    .await;
    assert_eq!(received["body"], "gone soon", "whole before its time: {received}");

    wait_pruned(&alice, &room, &doomed).await;
    wait_pruned(&bob, &room, &doomed).await;

    for user in [&alice, &bob] {
        assert_eq!(content(user, &room, &kept).await.unwrap()["body"], "stays");
        assert_eq!(content(user, &room, &topic).await.unwrap()["topic"], "stays");
        // /messages serves the pruned event, still in its place.
        let page = user.messages(&room, "dir=b&limit=10").await;
        let chunk = page["chunk"].as_array().unwrap();
        let pruned = chunk
            .iter()
            .find(|e| e["event_id"] == doomed.as_str())
            .unwrap_or_else(|| panic!("the pruned event is still in the timeline: {page}"));
        assert_eq!(pruned["content"], json!({}), "{pruned}");
        assert_eq!(pruned["type"], "m.room.message");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_survives_a_restart() {
    let mut server = TestServer::start_with(|c| c.ephemeral_messages = true).await;
    let (room, doomed) = {
        let alice = server.register("alice").await;
        let room = alice.create_room(json!({})).await;
        let doomed = send(
            &alice,
            &room,
            "doomed",
            json!({ "msgtype": "m.text", "body": "gone", "org.matrix.self_destruct_after": now_ms() + 2_000 }),
        )
        .await;
        (room, doomed)
    };
    server.restart().await;
    let alice = common::User {
        server: &server,
        user_id: String::new(),
        token: login(&server).await,
    };
    assert_eq!(content(&alice, &room, &doomed).await.unwrap()["body"], "gone");
    wait_pruned(&alice, &room, &doomed).await;
}

async fn login(server: &TestServer) -> String {
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": "secret",
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_nothing_self_destructs() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let event = send(
        &alice,
        &room,
        "past",
        json!({ "msgtype": "m.text", "body": "kept", "org.matrix.self_destruct_after": now_ms() - 1_000 }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(content(&alice, &room, &event).await.unwrap()["body"], "kept");
}
