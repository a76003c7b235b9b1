//! Typing notifications and read receipts: in /sync, and across servers
//! as EDUs.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use reqwest::Method;
use serde_json::{Value, json};

/// Syncs from `since` until `check` finds what it wants in the room's
/// ephemeral events; returns them.
async fn wait_ephemeral(user: &User<'_>, room: &str, since: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since = since.to_owned();
    loop {
        let sync = user.sync(&format!("since={}&timeout=1000", enc(&since))).await;
        let events = sync["rooms"]["join"][room]["ephemeral"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if check(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} never saw the ephemeral event; last: {events:?}",
            user.user_id
        );
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
}

fn typing_users(events: &[Value]) -> Option<Vec<String>> {
    events.iter().find(|e| e["type"] == "m.typing").map(|e| {
        e["content"]["user_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_on_one_server() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    assert!(since.contains('_'), "the token carries the ephemeral position: {since}");

    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            Some(&json!({ "typing": true, "timeout": 10000 })),
        )
        .await;
    let events = wait_ephemeral(&bob, &room, &since, |e| typing_users(e).is_some_and(|u| !u.is_empty())).await;
    assert_eq!(typing_users(&events).unwrap(), std::slice::from_ref(&alice.user_id));
    // The spec's schema requires only `typing`: without a timeout, a
    // default one; bad bodies are told apart.
    let typing_path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id));
    bob.ok(Method::PUT, &typing_path, Some(&json!({ "typing": true })))
        .await;
    let events = wait_ephemeral(&alice, &room, &since, |e| {
        typing_users(e).is_some_and(|u| u.contains(&bob.user_id))
    })
    .await;
    assert!(typing_users(&events).unwrap().contains(&bob.user_id));
    let (status, body) = bob
        .call(Method::PUT, &typing_path, Some(&json!({ "typing": "yes" })))
        .await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{body}"
    );
    bob.ok(Method::PUT, &typing_path, Some(&json!({ "typing": false })))
        .await;
    // Someone else's typing state cannot be set.
    let (status, _) = bob
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            Some(&json!({ "typing": false })),
        )
        .await;
    assert_eq!(status, 403);

    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let (_, sent) = alice.send_text(&room, "t", "read me").await;
    let event_id = sent["event_id"].as_str().unwrap();
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            Some(&json!({ "typing": false })),
        )
        .await;
    bob.ok(
        Method::POST,
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(event_id)
        ),
        Some(&json!({})),
    )
    .await;
    let events = wait_ephemeral(&alice, &room, &since, |e| e.iter().any(|e| e["type"] == "m.receipt")).await;
    let receipt = events.iter().find(|e| e["type"] == "m.receipt").unwrap();
    assert!(
        receipt["content"][event_id]["m.read"][&bob.user_id]["ts"].is_u64(),
        "{receipt}"
    );
    // A new client's first sync learns that nobody types any more.
    let full = bob.sync("").await;
    let events = full["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap();
    assert_eq!(typing_users(events), Some(Vec::new()), "{full}");

    // A private receipt is for its owner only.
    let since_alice = alice.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let since_bob = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    bob.ok(
        Method::POST,
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read.private/{}",
            enc(&room),
            enc(event_id)
        ),
        Some(&json!({})),
    )
    .await;
    wait_ephemeral(&bob, &room, &since_bob, |e| {
        e.iter()
            .any(|e| e["type"] == "m.receipt" && e["content"][event_id]["m.read.private"].is_object())
    })
    .await;
    let sync = alice.sync(&format!("since={}&timeout=500", enc(&since_alice))).await;
    assert!(
        !sync.to_string().contains("m.read.private"),
        "another user's private receipt does not show: {sync}"
    );
    // A receipt for an unknown event is refused.
    let (status, _) = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc("$nope")
            ),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_cross_servers() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let (status, body) = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(a.server_name().as_str())
            ),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let since_bob = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let since_alice = alice.sync("").await["next_batch"].as_str().unwrap().to_owned();

    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            Some(&json!({ "typing": true, "timeout": 10000 })),
        )
        .await;
    let events = wait_ephemeral(&bob, &room, &since_bob, |e| {
        typing_users(e).is_some_and(|u| !u.is_empty())
    })
    .await;
    assert_eq!(typing_users(&events).unwrap(), std::slice::from_ref(&alice.user_id));

    let (_, sent) = alice.send_text(&room, "t", "read me over there").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    // Bob's server holds the event once it arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = bob
            .call(
                Method::POST,
                &format!(
                    "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                    enc(&room),
                    enc(&event_id)
                ),
                Some(&json!({})),
            )
            .await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = wait_ephemeral(&alice, &room, &since_alice, |e| {
        e.iter()
            .any(|e| e["type"] == "m.receipt" && e["content"][&event_id]["m.read"][&bob.user_id].is_object())
    })
    .await;
    assert!(!events.is_empty());
}

/// The deprecated `/events` stream carries typing changes and new receipts
/// of the user's rooms, with `room_id`, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_carries_typing_and_receipts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let elsewhere = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let (_, sent) = alice.send_text(&room, "m1", "hello").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let start = bob.ok(Method::GET, "/_matrix/client/v3/events?timeout=0", None).await;
    let from = start["end"].as_str().unwrap().to_owned();

    for r in [&room, &elsewhere] {
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(r), enc(&alice.user_id)),
                Some(&json!({ "typing": true, "timeout": 30000 })),
            )
            .await;
    }
    alice
        .ok(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&event_id)
            ),
            Some(&json!({})),
        )
        .await;
    let page = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/events?from={}&timeout=0", enc(&from)),
            None,
        )
        .await;
    let chunk = page["chunk"].as_array().unwrap();
    let of_type = |t: &str| chunk.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    let typing = of_type("m.typing");
    assert_eq!(typing.len(), 1, "Bob's room only: {page}");
    assert_eq!(typing[0]["room_id"], room.as_str());
    assert_eq!(typing[0]["content"]["user_ids"], json!([alice.user_id]));
    let receipts = of_type("m.receipt");
    assert_eq!(receipts.len(), 1, "{page}");
    assert_eq!(receipts[0]["room_id"], room.as_str());
    assert!(
        receipts[0]["content"][&event_id]["m.read"][&alice.user_id]["ts"].is_u64(),
        "{page}"
    );
    // Once each: nothing more from the answer's end.
    let page = bob
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/events?from={}&timeout=0",
                enc(page["end"].as_str().unwrap())
            ),
            None,
        )
        .await;
    let chunk = page["chunk"].as_array().unwrap();
    assert!(
        chunk
            .iter()
            .all(|e| e["type"] != "m.typing" && e["type"] != "m.receipt"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_receipt_only_moves_forward() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let (_, first) = alice.send_text(&room, "r1", "one").await;
    let (_, second) = alice.send_text(&room, "r2", "two").await;
    let read = |event: &Value| {
        format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(event["event_id"].as_str().unwrap())
        )
    };
    let receipt_of = |sync: &Value| {
        let events = sync["rooms"]["join"][&room]["ephemeral"]["events"].clone();
        events
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.receipt")
            .flat_map(|e| e["content"].as_object().unwrap().keys().cloned().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    alice.ok(Method::POST, &read(&second), Some(&json!({}))).await;
    // an older event: accepted (200) but the receipt stays where it was
    alice.ok(Method::POST, &read(&first), Some(&json!({}))).await;
    let sync = alice.sync("").await;
    assert_eq!(
        receipt_of(&sync),
        vec![second["event_id"].as_str().unwrap().to_owned()],
        "{sync}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_carries_account_data_and_tags() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let start = alice.ok(Method::GET, "/_matrix/client/v3/events?timeout=0", None).await;
    let from = start["end"].as_str().unwrap().to_owned();
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/user/{}/account_data/my.global", enc(&alice.user_id)),
            Some(&json!({ "a": 1 })),
        )
        .await;
    alice
        .ok(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/u.work",
                enc(&alice.user_id),
                enc(&room)
            ),
            Some(&json!({ "order": 0.5 })),
        )
        .await;
    let page = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/events?from={}&timeout=5000", enc(&from)),
            None,
        )
        .await;
    let chunk = page["chunk"].as_array().unwrap();
    assert!(
        chunk
            .iter()
            .any(|e| e["type"] == "my.global" && e["content"]["a"] == 1 && e.get("room_id").is_none()),
        "{page}"
    );
    // the first answer may come before the tag: read on from its end
    let mut all = chunk.clone();
    if !all.iter().any(|e| e["type"] == "m.tag") {
        let next = alice
            .ok(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/events?from={}&timeout=5000",
                    enc(page["end"].as_str().unwrap())
                ),
                None,
            )
            .await;
        all.extend(next["chunk"].as_array().unwrap().iter().cloned());
    }
    let tag = all.iter().find(|e| e["type"] == "m.tag").expect("m.tag in the stream");
    assert_eq!(tag["room_id"], room.as_str());
    assert!(tag["content"]["tags"]["u.work"].is_object(), "{tag}");
}
