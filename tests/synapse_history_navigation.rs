//! History navigation across servers against a real Synapse
//! (`tests/common/synapse.rs`), both ways:
//!
//! - weft joins a Synapse room of 200 messages late: a jump to a date in the
//!   middle (never held), a permalink (`/event`) and a `/context` of early
//!   events are fetched from Synapse; paging back from the context reaches
//!   `m.room.create` and paging forward reaches the present, every message
//!   once and in order, as Synapse holds them;
//! - Synapse joins a weft room late and jumps to a date in it: Synapse asks
//!   weft over federation (`/timestamp_to_event`) and fetches the event.
//!
//! Run one at a time (Synapse is CPU hungry):
//! `cargo nextest run --test synapse_history_navigation -j 1`.

mod common;

use common::{
    enc,
    synapse::{Client, assert_same_timeline, message_bodies, synapse_and_weft},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn jump(client: &Client, room: &str, ts: u64, dir: &str) -> (StatusCode, Value) {
    client
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
                enc(room)
            ),
            None,
        )
        .await
}

/// The room's messages as `client` pages from `from` in direction `dir`,
/// `limit` at a time, until the server has no more (oldest first).
async fn page_all(client: &Client, room: &str, from: &str, dir: &str, limit: u32) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = from.to_owned();
    for _ in 0..200 {
        let page = client
            .messages(room, &format!("dir={dir}&limit={limit}&from={}", enc(&from)))
            .await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        let empty = chunk.is_empty();
        events.extend(chunk);
        match page["end"].as_str() {
            Some(end) if !empty || end != from => from = end.to_owned(),
            _ => break,
        }
    }
    if dir == "b" {
        events.reverse();
    }
    events
}

fn messages_only(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_jumps_and_follows_permalinks_into_a_synapse_room_it_joined_late() {
    let (synapse, _weft, alice, bob) = synapse_and_weft().await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "name": "Long ago",
            "room_alias_name": "longago",
        }))
        .await;
    for i in 0..200 {
        alice.send_text(&room, &format!("m{i}"), &format!("message {i}")).await;
    }
    // Synapse's own view, as a member all along: the reference.
    let reference = messages_only(&alice.page_back_all(&room, 100).await);
    assert_eq!(reference.len(), 200);
    let ts = |i: usize| reference[i]["origin_server_ts"].as_u64().unwrap();
    let id = |i: usize| reference[i]["event_id"].as_str().unwrap().to_owned();
    assert!((1..200).all(|i| ts(i) > ts(i - 1)), "messages at distinct milliseconds");

    let alias = format!("#longago:{}", synapse.server_name());
    let (status, body) = bob.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "weft joins {alias}: {body}");

    // Jump to the date of message 100 and just after message 120.
    let (status, found) = jump(&bob, &room, ts(100), "f").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["event_id"], id(100).as_str());
    assert_eq!(found["origin_server_ts"], ts(100));
    let (status, found) = jump(&bob, &room, ts(121) - 1, "b").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["event_id"], id(120).as_str());
    // Synapse's answer for the same: the same events.
    let (_, on_synapse) = jump(&alice, &room, ts(100), "f").await;
    assert_eq!(on_synapse["event_id"], id(100).as_str());

    // A permalink to message 50.
    let event = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&id(50))),
            None,
        )
        .await;
    assert_eq!(event["content"]["body"], "message 50");

    // The context of message 100, and from there back to the room's
    // creation and forward to the present.
    let context = bob
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=10",
                enc(&room),
                enc(&id(100))
            ),
            None,
        )
        .await;
    assert_eq!(context["event"]["event_id"], id(100).as_str());
    let before: Vec<String> = message_bodies(context["events_before"].as_array().unwrap());
    assert_eq!(
        before,
        (95..100).rev().map(|i| format!("message {i}")).collect::<Vec<_>>()
    );
    let after: Vec<String> = message_bodies(context["events_after"].as_array().unwrap());
    assert_eq!(after, (101..106).map(|i| format!("message {i}")).collect::<Vec<_>>());

    let older = page_all(&bob, &room, context["start"].as_str().unwrap(), "b", 30).await;
    assert_eq!(
        older.first().map(|e| e["type"].clone()),
        Some(json!("m.room.create")),
        "paging back reaches the room's creation"
    );
    let newer = page_all(&bob, &room, context["end"].as_str().unwrap(), "f", 30).await;
    assert!(
        newer
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()),
        "paging forward reaches bob's join"
    );
    let mut all = messages_only(&older);
    all.extend(messages_only(
        &[
            context["events_before"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .cloned()
                .collect::<Vec<_>>(),
            vec![context["event"].clone()],
            context["events_after"].as_array().unwrap().clone(),
        ]
        .concat(),
    ));
    all.extend(messages_only(&newer));
    assert_same_timeline("weft's history around a jump", &all, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_jumps_to_a_date_in_a_weft_room_it_joined_late() {
    let (synapse, weft, alice, bob) = synapse_and_weft().await;
    let room = bob
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "name": "On weft",
            "room_alias_name": "onweft",
        }))
        .await;
    let mut sent = Vec::new();
    for i in 0..60 {
        let event_id = bob.send_text(&room, &format!("m{i}"), &format!("message {i}")).await;
        let event = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&event_id)),
                None,
            )
            .await;
        sent.push((event_id, event["origin_server_ts"].as_u64().unwrap()));
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let alias = format!("#onweft:{}", weft.server_name());
    let (status, body) = alice.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "Synapse joins {alias}: {body}");

    // Synapse holds nothing from before its join: it asks weft.
    let (id30, ts30) = &sent[30];
    let (status, found) = jump(&alice, &room, *ts30, "f").await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["event_id"], id30.as_str());
    let event = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id30)),
            None,
        )
        .await;
    assert_eq!(event["content"]["body"], "message 30");
    // Synapse logs its outgoing federation requests.
    assert!(
        !synapse
            .log_lines_with("/_matrix/federation/v1/timestamp_to_event/")
            .is_empty(),
        "Synapse asked weft over federation"
    );
}
