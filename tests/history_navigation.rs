//! History navigation across servers (weft ↔ weft): jump to date
//! (`timestamp_to_event`, client and federation) and permalinks
//! (`/event`, `/context`) into history this server never held — from
//! before it joined the room.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A room on `a` with `n` messages "m0".."m{n-1}" (at distinct
/// milliseconds); their event IDs and timestamps, oldest first.
async fn room_with_history(alice: &User<'_>, n: usize) -> (String, Vec<(String, u64)>) {
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Old times" }))
        .await;
    let mut sent = Vec::new();
    for i in 0..n {
        let (status, body) = alice.send_text(&room, &format!("t{i}"), &format!("m{i}")).await;
        assert_eq!(status, 200, "{body}");
        let id = body["event_id"].as_str().unwrap().to_owned();
        let event = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&id)),
                None,
            )
            .await;
        sent.push((id, event["origin_server_ts"].as_u64().unwrap()));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    (room, sent)
}

async fn jump(user: &User<'_>, room: &str, query: &str) -> (StatusCode, Value) {
    user.call(
        Method::GET,
        &format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?{query}", enc(room)),
        None,
    )
    .await
}

fn body(event: &Value) -> &str {
    event["content"]["body"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_to_date_and_permalinks_reach_history_from_before_the_join() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (room, sent) = room_with_history(&alice, 60).await;
    let other_room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let (_, other) = alice.send_text(&other_room, "o1", "elsewhere").await;
    let other_event = other["event_id"].as_str().unwrap().to_owned();
    assert_eq!(bob.join(&room).await.0, 200);
    // (The member list waits for the full state: the resync after the
    // partial-state join, which asks A too, is over before the jumps.)
    bob.ok(
        Method::GET,
        &format!("/_matrix/client/v3/rooms/{}/members", enc(&room)),
        None,
    )
    .await;

    // Jump to a date in the middle, never held here: asked of a, fetched.
    let (id20, ts20) = &sent[20];
    let (status, found) = jump(&bob, &room, &format!("ts={ts20}&dir=f")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["event_id"], id20.as_str());
    assert_eq!(found["origin_server_ts"], *ts20);
    let (status, found) = jump(&bob, &room, &format!("ts={}&dir=b", ts20 + 1)).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["event_id"], id20.as_str());
    // Backward from between two messages never held: the earlier one.
    let (id30, ts30) = &sent[30];
    let (status, found) = jump(&bob, &room, &format!("ts={}&dir=b", sent[31].1 - 1)).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["event_id"], id30.as_str(), "{ts30}");
    // Before the room existed: nothing backward; forward, its creation.
    let (status, found) = jump(&bob, &room, "ts=1&dir=b").await;
    assert_eq!(status, 404, "{found}");
    assert_eq!(found["errcode"], "M_NOT_FOUND");
    let (status, found) = jump(&bob, &room, "ts=1&dir=f").await;
    assert_eq!(status, 200, "{found}");
    let create = bob
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(found["event_id"].as_str().unwrap())
            ),
            None,
        )
        .await;
    assert_eq!(create["type"], "m.room.create");
    // After everything: nothing forward.
    let far = 4_000_000_000_000u64;
    let (status, _) = jump(&bob, &room, &format!("ts={far}&dir=f")).await;
    assert_eq!(status, 404);

    // A permalink to an event never held: /event fetches it.
    let (id40, _) = &sent[40];
    let event = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id40)),
            None,
        )
        .await;
    assert_eq!(body(&event), "m40");

    // /context of m20: the event, and the history before it filled.
    let context = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/context/{}?limit=10", enc(&room), enc(id20)),
            None,
        )
        .await;
    assert_eq!(body(&context["event"]), "m20");
    let before: Vec<&str> = context["events_before"].as_array().unwrap().iter().map(body).collect();
    assert_eq!(before, ["m19", "m18", "m17", "m16", "m15"], "{context}");
    let after: Vec<&str> = context["events_after"].as_array().unwrap().iter().map(body).collect();
    assert_eq!(after, ["m21", "m22", "m23", "m24", "m25"], "{context}");
    // Paging forward from its end goes on through the history never held,
    // each message once and in order, to bob's join and on.
    let mut newer = Vec::new();
    let mut from = context["end"].as_str().unwrap().to_owned();
    let mut joined = false;
    for _ in 0..50 {
        let page = bob.messages(&room, &format!("dir=f&limit=8&from={}", enc(&from))).await;
        for event in page["chunk"].as_array().unwrap() {
            if event["type"] == "m.room.message" {
                newer.push(body(event).to_owned());
            }
            joined |= event["type"] == "m.room.member" && event["state_key"] == bob.user_id.as_str();
        }
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().unwrap().is_empty() => from = end.to_owned(),
            _ => break,
        }
    }
    let expected: Vec<String> = (26..60).map(|i| format!("m{i}")).collect();
    assert_eq!(newer, expected);
    assert!(joined, "bob's join is reached");
    // Paging back from its start reaches the room's creation, each message
    // once and in order.
    let mut older = Vec::new();
    let mut from = context["start"].as_str().unwrap().to_owned();
    let mut types = Vec::new();
    for _ in 0..50 {
        let page = bob.messages(&room, &format!("dir=b&limit=7&from={}", enc(&from))).await;
        for event in page["chunk"].as_array().unwrap() {
            types.push(event["type"].as_str().unwrap().to_owned());
            if event["type"] == "m.room.message" {
                older.push(body(event).to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    older.reverse();
    let expected: Vec<String> = (0..15).map(|i| format!("m{i}")).collect();
    assert_eq!(older, expected);
    assert_eq!(types.last().map(String::as_str), Some("m.room.create"), "{types:?}");

    // Unknown events, and events of another room, are 404s.
    let started = Instant::now();
    let (status, error) = bob
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc("$nosuchevent0000000000000000000000000000000")
            ),
            None,
        )
        .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["errcode"], "M_NOT_FOUND");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (status, _) = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&other_event)),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/context/{}", enc(&room), enc(&other_event)),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jump_to_date_bad_input_and_outsiders() {
    let a = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let eve = a.register("eve").await;
    let (room, sent) = room_with_history(&alice, 3).await;
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;

    // Held here: the closest on each side, bounds included.
    let (status, found) = jump(&alice, &room, &format!("ts={}&dir=f", sent[1].1)).await;
    assert_eq!(
        (status, found["event_id"].as_str()),
        (StatusCode::OK, Some(sent[1].0.as_str()))
    );
    let (status, found) = jump(&alice, &room, &format!("ts={}&dir=b", sent[1].1)).await;
    assert_eq!(
        (status, found["event_id"].as_str()),
        (StatusCode::OK, Some(sent[1].0.as_str()))
    );
    let (status, found) = jump(&alice, &room, &format!("ts={}&dir=f", sent[1].1 + 1)).await;
    assert_eq!(
        (status, found["event_id"].as_str()),
        (StatusCode::OK, Some(sent[2].0.as_str()))
    );

    for (query, errcode) in [
        ("ts=abc&dir=f", "M_INVALID_PARAM"),
        ("ts=-5&dir=f", "M_INVALID_PARAM"),
        ("ts=5&dir=x", "M_INVALID_PARAM"),
        ("dir=f", "M_MISSING_PARAM"),
        ("ts=5", "M_MISSING_PARAM"),
    ] {
        let (status, error) = jump(&alice, &room, query).await;
        assert_eq!(status, 400, "{query}: {error}");
        assert_eq!(error["errcode"], errcode, "{query}: {error}");
    }
    // Not in a room that is not world-readable.
    let (status, error) = jump(&eve, &private, "ts=5&dir=f").await;
    assert_eq!(status, 403, "{error}");
    let (status, _) = jump(&eve, "!unknown:nowhere", "ts=5&dir=f").await;
    assert_eq!(status, 403);
}

/// The first server asked is down: the next one in the room answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permalink_when_the_first_server_asked_is_down() {
    let mut a = TestServer::start_federating().await;
    let c = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let carol = c.register("carol").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Two copies" }))
        .await;
    assert_eq!(carol.join(&room).await.0, 200);
    let mut sent = Vec::new();
    for i in 0..20 {
        let (status, body) = alice.send_text(&room, &format!("t{i}"), &format!("m{i}")).await;
        assert_eq!(status, 200, "{body}");
        sent.push(body["event_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // carol's server holds them all before bob's joins (through a).
    let last = sent.last().unwrap().clone();
    common::eventually(Duration::from_secs(30), "carol's server has the messages", || {
        let (carol, room, last) = (&carol, &room, &last);
        async move {
            let (status, _) = carol
                .call(
                    Method::GET,
                    &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(last)),
                    None,
                )
                .await;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{status}"))
            }
        }
    })
    .await;
    assert_eq!(bob.join(&room).await.0, 200);
    // Carol's server must know Bob's is in the room to answer it.
    carol.wait_for_membership(&room, bob.user_id.as_str(), "join").await;
    let ts10 = {
        let event = carol
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&sent[10])),
                None,
            )
            .await;
        event["origin_server_ts"].as_u64().unwrap()
    };

    // The room's creator, longest in the room (asked first), goes away.
    a.server.take().unwrap().shutdown().await;
    let event = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&sent[5])),
            None,
        )
        .await;
    assert_eq!(body(&event), "m5");
    let (status, found) = jump(&bob, &room, &format!("ts={ts10}&dir=f")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["event_id"], sent[10].as_str());
}

/// History the user may not see (`joined` visibility, from before they
/// joined) stays unseen through permalinks and jumps alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permalink_to_history_the_user_may_not_see_is_a_404() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": { "history_visibility": "joined" },
            }],
        }))
        .await;
    let (_, secret) = alice.send_text(&room, "s", "before bob").await;
    let secret = secret["event_id"].as_str().unwrap().to_owned();
    assert_eq!(bob.join(&room).await.0, 200);
    for path in [
        format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&secret)),
        format!("/_matrix/client/v3/rooms/{}/context/{}", enc(&room), enc(&secret)),
    ] {
        let (status, body) = bob.call(Method::GET, &path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
    }
    let page = bob.messages(&room, "dir=b&limit=50").await;
    assert!(
        !page["chunk"].to_string().contains("before bob"),
        "the message is not shown: {page}"
    );
}
