//! Backfill behind `/messages` between two weft servers: a user of B pages
//! back through history B never saw (before B joined, and a gap left by
//! a leave and re-join) and gets every event once, in order.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use reqwest::Method;
use serde_json::{Value, json};

/// Every event of a room as a user pages back through it, 50 at a time
/// (oldest first): (type, body or state key).
async fn page_back_all(user: &User<'_>, room: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..200 {
        let query = match &from {
            Some(token) => format!("dir=b&limit=50&from={}", enc(token)),
            None => "dir=b&limit=50".to_owned(),
        };
        let page = user.messages(room, &query).await;
        for event in page["chunk"].as_array().unwrap() {
            let what = match event["type"].as_str().unwrap() {
                "m.room.message" => event["content"]["body"].as_str().unwrap_or_default().to_owned(),
                _ => event["state_key"].as_str().unwrap_or_default().to_owned(),
            };
            events.push((event["type"].as_str().unwrap().to_owned(), what));
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => {
                events.reverse();
                return events;
            }
        }
    }
    panic!("pagination did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_back_fills_history_from_before_the_join_and_a_rejoin_gap() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let carol = a.register("carol").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "History" }))
        .await;

    // 500 messages, with state changes along the way.
    for i in 0..500 {
        if i == 100 || i == 200 || i == 450 {
            alice
                .ok(
                    Method::PUT,
                    &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
                    Some(&json!({ "topic": format!("topic at {i}") })),
                )
                .await;
        }
        if i == 150 {
            assert_eq!(carol.join(&room).await.0, 200);
        }
        if i == 300 {
            carol.leave(&room).await;
        }
        if i == 400 {
            alice
                .ok(
                    Method::PUT,
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility",
                        enc(&room)
                    ),
                    Some(&json!({ "history_visibility": "world_readable" })),
                )
                .await;
        }
        let (status, _) = alice.send_text(&room, &format!("m{i}"), &format!("message {i}")).await;
        assert_eq!(status, 200);
    }

    // Bob joins through A; B holds only what came after.
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
    bob.wait_for_full_state(&room).await;
    let before_backfill = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();

    // Paging back on B gives what paging back on A gives.
    let on_a = page_back_all(&alice, &room).await;
    let on_b = page_back_all(&bob, &room).await;
    assert_eq!(on_b, on_a, "every event once, in A's order");
    assert_eq!(on_b.last().unwrap(), &("m.room.member".to_owned(), bob.user_id.clone()));
    assert!(on_b.len() > 500);
    assert_eq!(on_b[0].0, "m.room.create", "all the way back to the room's creation");

    // Backfilled history never shows up as new in /sync.
    let sync = bob.sync(&format!("since={}&timeout=0", enc(&before_backfill))).await;
    assert!(
        sync["rooms"]["join"].get(&room).is_none(),
        "backfill is not news: {sync}"
    );
    // A full sync shows the timeline as it arrived live (Bob's join), not
    // backfilled history in the order it was fetched; it is limited, and
    // the client pages back into that history.
    let full = bob.sync("").await;
    let timeline = &full["rooms"]["join"][&room]["timeline"];
    let live: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(live, ["m.room.member"], "{timeline}");
    assert_eq!(timeline["limited"], true, "{timeline}");
    // A second page-back asks nobody anything and gives the same.
    assert_eq!(page_back_all(&bob, &room).await, on_b);
    // The state of backfilled events is known: the topic at message 150.
    let event_150 = {
        let page = bob.messages(&room, "dir=b&limit=1000").await;
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["content"]["body"] == "message 150")
            .unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ctx = bob
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=0",
                enc(&room),
                enc(&event_150)
            ),
            None,
        )
        .await;
    let topic = ctx["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.topic")
        .unwrap();
    assert_eq!(topic["content"]["topic"], "topic at 100");

    // A gap in the middle: Bob leaves, 50 more happen, Bob comes back.
    bob.leave(&room).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = alice
            .call(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    enc(&room),
                    enc(&bob.user_id)
                ),
                None,
            )
            .await;
        if m["membership"] == "leave" {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 500..550 {
        alice.send_text(&room, &format!("m{i}"), &format!("message {i}")).await;
    }
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
    alice.wait_for_membership(&room, &bob.user_id, "join").await;
    let on_a = page_back_all(&alice, &room).await;
    let on_b = page_back_all(&bob, &room).await;
    assert_eq!(on_b, on_a, "the gap is filled in place, nothing twice");
    let messages: Vec<&String> = on_b
        .iter()
        .filter(|(t, _)| t == "m.room.message")
        .map(|(_, b)| b)
        .collect();
    let expected: Vec<String> = (0..550).map(|i| format!("message {i}")).collect();
    assert_eq!(messages, expected.iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_backfill() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating_with(|c| {
        c.metrics_listen = Some(format!("127.0.0.1:{}", common::free_port()).parse().unwrap())
    })
    .await;
    let metrics_port = b.config.metrics_listen.unwrap().port();
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    for i in 0..30 {
        alice.send_text(&room, &format!("m{i}"), &format!("message {i}")).await;
    }
    let (status, _) = bob
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
    assert_eq!(status, 200);
    let page: Value = bob.messages(&room, "dir=b&limit=100").await;
    assert!(page["chunk"].as_array().unwrap().len() > 30);
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("weft_backfill_requests_total{outcome=\"events\"} 1"),
        "{text}"
    );
    assert!(text.contains("weft_backfill_events_total"), "{text}");
    // Off by default: A serves no metrics anywhere.
    assert!(a.config.metrics_listen.is_none());
}
