//! The timeline through the client API: 1,000 messages paged back and
//! forward with no gap and no duplicate, /sync (initial, incremental,
//! long-poll), the deprecated /events stream, /context, and tokens.

mod common;

use std::time::Duration;

use common::{TestServer, enc};
use reqwest::Method;
use serde_json::{Value, json};

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_page_back_and_forward_without_gap_or_duplicate() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "big" })).await;
    const N: usize = 1000;
    for i in 0..N {
        let (status, body) = alice.send_text(&room, &format!("txn{i}"), &format!("msg {i}")).await;
        assert_eq!(status, 200, "{body}");
    }

    // Backward from the end, 50 at a time.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &from {
            Some(token) => format!("dir=b&limit=50&from={}", enc(token)),
            None => "dir=b&limit=50".to_owned(),
        };
        let page = alice.messages(&room, &query).await;
        let chunk = page["chunk"].as_array().unwrap();
        assert!(chunk.len() <= 50);
        seen.extend(bodies(&page["chunk"]));
        pages += 1;
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
        assert!(pages < 100, "pagination does not end");
    }
    let expected: Vec<String> = (0..N).rev().map(|i| format!("msg {i}")).collect();
    assert_eq!(
        seen, expected,
        "backward pagination must return every message once, newest first"
    );

    // Forward from the start.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let query = match &from {
            Some(token) => format!("dir=f&limit=73&from={}", enc(token)),
            None => "dir=f&limit=73".to_owned(),
        };
        let page = alice.messages(&room, &query).await;
        seen.extend(bodies(&page["chunk"]));
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..N).map(|i| format!("msg {i}")).collect();
    assert_eq!(
        seen, expected,
        "forward pagination must return every message once, oldest first"
    );

    // The room's own events come first going forward.
    let first = alice.messages(&room, "dir=f&limit=2").await;
    assert_eq!(first["chunk"][0]["type"], "m.room.create");
    assert_eq!(first["chunk"][1]["type"], "m.room.member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_prev_batch_and_to_tokens_meet() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for i in 0..30 {
        alice.send_text(&room, &format!("t{i}"), &format!("m{i}")).await;
    }
    let sync = alice.sync("").await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    let in_sync = bodies(&timeline["events"]);
    assert_eq!(in_sync.len(), 10, "default timeline limit is 10: {in_sync:?}");
    assert_eq!(in_sync.last().unwrap(), "m29");
    // Paging back from prev_batch continues exactly where the sync stopped.
    let prev = timeline["prev_batch"].as_str().unwrap();
    let page = alice
        .messages(&room, &format!("dir=b&limit=5&from={}", enc(prev)))
        .await;
    assert_eq!(bodies(&page["chunk"]), ["m19", "m18", "m17", "m16", "m15"]);
    // `to` stops a page.
    let end = page["end"].as_str().unwrap();
    let forward = alice
        .messages(&room, &format!("dir=f&limit=100&from={}&to={}", enc(end), enc(prev)))
        .await;
    assert_eq!(bodies(&forward["chunk"]), ["m15", "m16", "m17", "m18", "m19"]);
    // A sync token works as a /messages token.
    let next_batch = sync["next_batch"].as_str().unwrap();
    let page = alice
        .messages(&room, &format!("dir=b&limit=1&from={}", enc(next_batch)))
        .await;
    assert_eq!(bodies(&page["chunk"]), ["m29"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_long_poll_wakes_on_new_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let (status, _) = bob.join(&room).await;
    assert_eq!(status, 200);
    let first = bob.sync("").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    assert!(first["rooms"]["join"][&room].is_object());

    // Nothing new: a short long-poll returns empty after its timeout.
    let started = std::time::Instant::now();
    let empty = bob.sync(&format!("since={}&timeout=300", enc(&since))).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "returned before the timeout"
    );
    assert!(
        empty["rooms"]["join"].as_object().is_none_or(|m| m.is_empty()),
        "{empty}"
    );

    // A long-poll is woken by a message sent while it waits.
    let poll = {
        let url = format!(
            "{}/_matrix/client/v3/sync?since={}&timeout=20000",
            server.base(),
            enc(&since)
        );
        let token = bob.token.clone();
        let http = server.http.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let res = http.get(url).bearer_auth(token).send().await.unwrap();
            (started.elapsed(), res.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = alice.send_text(&room, "wake", "wake up").await;
    assert_eq!(status, 200);
    let (elapsed, body) = poll.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(10),
        "long-poll was not woken: {elapsed:?}"
    );
    let events = &body["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(bodies(events), ["wake up"]);
    assert_ne!(
        body["rooms"]["join"][&room]["timeline"]["limited"], true,
        "all new events fit"
    );
    // The sender sees its transaction ID, others do not.
    assert!(events[0]["unsigned"].get("transaction_id").is_none());
    let mine = alice.sync("").await;
    let mine = mine["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(mine.last().unwrap()["unsigned"]["transaction_id"], "wake");
}

/// The deprecated `GET /events`: a position now, then what arrived in the
/// user's rooms after it, oldest first (long-polling when nothing has);
/// `room_id` limits it to one room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_from_a_position() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let start = bob.ok(Method::GET, "/_matrix/client/r0/events?timeout=0", None).await;
    let from = start["end"].as_str().unwrap().to_owned();
    assert_eq!(start["chunk"].as_array().map_or(0, Vec::len), 0, "{start}");

    for (i, text) in ["one", "two"].iter().enumerate() {
        assert_eq!(alice.send_text(&room, &format!("e{i}"), text).await.0, 200);
    }
    // Bob is not in the other room: nothing of it reaches him.
    assert_eq!(alice.send_text(&other, "x", "elsewhere").await.0, 200);
    let page = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/events?from={}&timeout=0", enc(&from)),
            None,
        )
        .await;
    assert_eq!(bodies(&page["chunk"]), ["one", "two"], "{page}");
    assert_eq!(page["start"], from.as_str());
    // (Presence events, of Alice who came online sending, carry no room.)
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] != "m.presence")
            .all(|e| e["room_id"] == room.as_str())
    );
    let end = page["end"].as_str().unwrap().to_owned();

    // Nothing newer: a long-poll woken by the next message.
    let poll = {
        let url = format!(
            "{}/_matrix/client/v3/events?from={}&timeout=20000",
            server.base(),
            enc(&end)
        );
        let (http, token) = (server.http.clone(), bob.token.clone());
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alice.send_text(&room, "e3", "three").await.0, 200);
    let woken = poll.await.unwrap().unwrap();
    assert_eq!(bodies(&woken["chunk"]), ["three"], "{woken}");

    // One room only, and not one Bob cannot see.
    let only = bob
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/events?from={}&timeout=0&room_id={}",
                enc(&from),
                enc(&room)
            ),
            None,
        )
        .await;
    assert_eq!(bodies(&only["chunk"]), ["one", "two", "three"], "{only}");
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    let (status, body) = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/events?timeout=0&room_id={}", enc(&private)),
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    // `limit`: the oldest first, and the next request goes on from there.
    let one = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/events?from={}&timeout=0&limit=1", enc(&from)),
            None,
        )
        .await;
    assert_eq!(bodies(&one["chunk"]), ["one"], "{one}");
    let rest = bob
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/events?from={}&timeout=0",
                enc(one["end"].as_str().unwrap())
            ),
            None,
        )
        .await;
    assert_eq!(bodies(&rest["chunk"]), ["two", "three"], "{rest}");
    for bad in ["limit=-2", "limit=hello", "timeout=hello"] {
        let (status, body) = bob
            .call(Method::GET, &format!("/_matrix/client/v3/events?{bad}"), None)
            .await;
        assert_eq!(
            (status.as_u16(), body["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{bad}: {body}"
        );
    }
    let (status, body) = bob
        .call(Method::GET, "/_matrix/client/v3/events?from=nonsense", None)
        .await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_shows_invites_joins_and_leaves() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let room = alice
        .create_room(json!({ "name": "secret", "invite": [bob.user_id] }))
        .await;

    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    let invite = &sync["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(invite.is_array(), "{sync}");
    let types: Vec<&str> = invite
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"m.room.name"), "{types:?}");
    assert!(types.contains(&"m.room.member"), "{types:?}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    assert_eq!(bob.join(&room).await.0, 200);
    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    let joined = &sync["rooms"]["join"][&room];
    // A newly joined room comes whole: its state before the timeline plus
    // the timeline itself hold every state event.
    let mut types: Vec<&str> = Vec::new();
    for section in [&joined["state"]["events"], &joined["timeline"]["events"]] {
        types.extend(
            section
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["type"].as_str().unwrap()),
        );
    }
    for wanted in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.name",
    ] {
        assert!(types.contains(&wanted), "{wanted} missing from {types:?}");
    }
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            Some(&json!({ "user_id": bob.user_id, "reason": "bye" })),
        )
        .await;
    let sync = bob.sync(&format!("since={}", enc(&since))).await;
    let left = &sync["rooms"]["leave"][&room]["timeline"]["events"];
    let last = left.as_array().unwrap().last().unwrap();
    assert_eq!(last["content"]["membership"], "leave");
    assert_eq!(last["state_key"], bob.user_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_returns_events_around_an_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let mut ids = Vec::new();
    for i in 0..20 {
        let (_, body) = alice.send_text(&room, &format!("c{i}"), &format!("c{i}")).await;
        ids.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let ctx = alice
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=6",
                enc(&room),
                enc(&ids[10])
            ),
            None,
        )
        .await;
    assert_eq!(ctx["event"]["content"]["body"], "c10");
    assert_eq!(bodies(&ctx["events_before"]), ["c9", "c8", "c7"]);
    assert_eq!(bodies(&ctx["events_after"]), ["c11", "c12", "c13"]);
    let state_types: Vec<&str> = ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(state_types.contains(&"m.room.create"));
    // Its tokens continue the timeline on both sides.
    let start = ctx["start"].as_str().unwrap();
    let before = alice
        .messages(&room, &format!("dir=b&limit=2&from={}", enc(start)))
        .await;
    assert_eq!(bodies(&before["chunk"]), ["c6", "c5"]);
    let end = ctx["end"].as_str().unwrap();
    let after = alice.messages(&room, &format!("dir=f&limit=2&from={}", enc(end))).await;
    assert_eq!(bodies(&after["chunk"]), ["c14", "c15"]);

    // Lazy-loading members: only the senders' member events (Alice's, not
    // Bob's), the rest of the state in full.
    let members = |ctx: &Value| -> Vec<String> {
        ctx["state"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(members(&ctx).len(), 2, "{ctx}");
    let lazy = alice
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=6&filter={}",
                enc(&room),
                enc(&ids[10]),
                enc(r#"{"lazy_load_members":true}"#)
            ),
            None,
        )
        .await;
    assert_eq!(members(&lazy), std::slice::from_ref(&alice.user_id), "{lazy}");
    assert!(
        lazy["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_idempotent_per_transaction_id() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let (_, first) = alice.send_text(&room, "same", "once").await;
    let (_, again) = alice.send_text(&room, "same", "once").await;
    assert_eq!(first["event_id"], again["event_id"]);
    let page = alice.messages(&room, "dir=b&limit=10").await;
    assert_eq!(bodies(&page["chunk"]), ["once"]);
    // Another device of the same user is another transaction scope.
    let (status, login) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "secret" })),
        )
        .await;
    assert_eq!(status, 200);
    let other = common::User {
        server: &server,
        user_id: alice.user_id.clone(),
        token: login["access_token"].as_str().unwrap().to_owned(),
    };
    let (_, third) = other.send_text(&room, "same", "once").await;
    assert_ne!(third["event_id"], first["event_id"]);
}
