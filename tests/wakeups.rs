//! A send wakes the long-polling `/sync`s it concerns, and only those:
//! 300 idle users parked on `/sync` who share no room with the sender are
//! never woken by its messages, while a member of the room is, at once.
//! (Before, every send woke every parked `/sync`, which rebuilt its answer:
//! a few hundred idle clients took sends from 1,460/s to 3/s.) The test
//! counts wake-ups; the benchmark measures the time.

mod common;

use std::time::Duration;

use common::TestServer;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use weft::wakeups::Topic;

const IDLE: usize = 300;

/// Alice and Bob, both in a public room of Alice's.
async fn alice_and_bob_in_a_room(server: &TestServer) -> (common::User<'_>, common::User<'_>, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let (status, body) = bob.join(&room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (alice, bob, room)
}

/// `user`'s `/sync` long-polling from now (60 s), once it is parked.
async fn park_sync(server: &TestServer, user: &common::User<'_>) -> tokio::task::JoinHandle<serde_json::Value> {
    let since = user.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let url = format!("{}/_matrix/client/v3/sync?since={since}&timeout=60000", server.base());
    let request = server.http.get(url).bearer_auth(&user.token);
    let poll = tokio::spawn(async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() });
    let topic = Topic::User(user.user_id.as_str().try_into().unwrap());
    common::eventually(Duration::from_secs(10), "the sync parked", || async {
        match server.services().notifier.wakeups.waiting(&topic) {
            1 => Ok(()),
            parked => Err(format!("{parked}")),
        }
    })
    .await;
    poll
}

#[tokio::test]
async fn a_send_wakes_only_the_syncs_it_concerns() {
    let server = TestServer::start().await;
    let svc = server.services().clone();
    let (alice, bob, room) = alice_and_bob_in_a_room(&server).await;

    // Idle users, each in a room of their own, long-polling.
    let names: Vec<String> = (0..IDLE).map(|i| format!("idle{i}")).collect();
    let mut idle = Vec::new();
    for chunk in names.chunks(16) {
        idle.extend(join_all(chunk.iter().map(|name| server.register(name))).await);
    }
    join_all(idle.iter().map(|u| u.create_room(json!({})))).await;
    let tokens = join_all(idle.iter().map(|u| u.sync("timeout=0"))).await;
    let polls: Vec<_> = idle
        .iter()
        .zip(&tokens)
        .map(|(user, body)| {
            let url = format!(
                "{}/_matrix/client/v3/sync?since={}&timeout=60000",
                server.base(),
                body["next_batch"].as_str().unwrap()
            );
            let request = server.http.get(url).bearer_auth(&user.token);
            tokio::spawn(async move { request.send().await.map(|r| r.status()) })
        })
        .collect();
    let user_topic = |user: &common::User<'_>| Topic::User(user.user_id.as_str().try_into().unwrap());
    common::eventually(Duration::from_secs(30), "every idle sync parked", || async {
        let parked = idle
            .iter()
            .filter(|u| svc.notifier.wakeups.waiting(&user_topic(u)) == 1)
            .count();
        if parked == IDLE {
            Ok(())
        } else {
            Err(format!("{parked} parked"))
        }
    })
    .await;

    // Bob long-polls too: he shares the room with alice.
    let bob_poll = park_sync(&server, &bob).await;

    let before = svc.notifier.wakeups.woken();
    for i in 0..20 {
        let (status, body) = alice.send_text(&room, &format!("t{i}"), &format!("message {i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Bob's sync answers with the first message; he was woken, and only
    // the room's own parked requests were.
    let answer = tokio::time::timeout(Duration::from_secs(10), bob_poll)
        .await
        .expect("bob's sync answered at once")
        .unwrap();
    let events = answer["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!events.is_empty(), "bob sees alice's message: {answer}");
    let woken = svc.notifier.wakeups.woken() - before;
    assert!(
        (1..=20).contains(&woken),
        "the sends woke {woken} parked requests: bob's only (once per send at most), none of the {IDLE} idle ones"
    );
    for user in &idle {
        assert_eq!(
            svc.notifier.wakeups.waiting(&user_topic(user)),
            1,
            "{} still parked",
            user.user_id
        );
    }

    // Typing, a read receipt, account data, presence, a to-device message
    // and a device list change wake whom they concern too (they woke every
    // parked request): Bob's sync answers with Alice's typing, and no idle
    // request builds its answer again.
    let bob_poll = park_sync(&server, &bob).await;
    let rebuilt_before = svc.metrics.sync_wakeups.get();
    let alice_path = common::enc(&alice.user_id);
    let last = events.last().unwrap()["event_id"].as_str().unwrap().to_owned();
    alice
        .ok(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/typing/{alice_path}"),
            Some(&json!({ "typing": true, "timeout": 30000 })),
        )
        .await;
    alice
        .ok(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}"),
            Some(&json!({})),
        )
        .await;
    alice
        .ok(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/user/{alice_path}/account_data/org.example.wake"),
            Some(&json!({ "n": 1 })),
        )
        .await;
    alice
        .ok(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/presence/{alice_path}/status"),
            Some(&json!({ "presence": "online", "status_msg": "wake" })),
        )
        .await;
    let mut messages = serde_json::Map::new();
    messages.insert(bob.user_id.clone(), json!({ "*": { "hello": "bob" } }));
    alice
        .ok(
            reqwest::Method::PUT,
            "/_matrix/client/v3/sendToDevice/org.example.wake/w1",
            Some(&json!({ "messages": messages })),
        )
        .await;
    let devices = alice.ok(reqwest::Method::GET, "/_matrix/client/v3/devices", None).await;
    let device = devices["devices"][0]["device_id"].as_str().unwrap().to_owned();
    alice
        .ok(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/devices/{device}"),
            Some(&json!({ "display_name": "renamed" })),
        )
        .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), bob_poll)
        .await
        .expect("bob's sync answered at once")
        .unwrap();
    let ephemeral = &answer["rooms"]["join"][&room]["ephemeral"]["events"];
    assert!(
        ephemeral
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "m.typing")),
        "bob sees alice typing: {answer}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rebuilt = svc.metrics.sync_wakeups.get() - rebuilt_before;
    // (Bob's own may answer without parking: the changes can land while
    // it builds its first answer.)
    assert!(
        rebuilt <= 6,
        "typing, a receipt, account data, presence, a to-device message and a device list change woke {rebuilt} parked requests: bob's only, none of the {IDLE} idle ones"
    );
    for poll in polls {
        poll.abort();
    }
}

/// Idle `/sync`s that arrive while somebody else keeps sending park after
/// at most two rounds each: a send into a room they are not in does not
/// send them round again. (Before, a request that saw any stream head move
/// while it built its first answer went round again, and again: under a
/// steady load every arriving request kept building answers for as long
/// as the load lasted — 300 of them took a sender from 1,101 to 56
/// sends/s.)
#[tokio::test]
async fn syncs_that_arrive_during_sends_park_without_going_round() {
    const ARRIVING: usize = 100;
    let server = TestServer::start().await;
    let svc = server.services().clone();
    let (alice, _bob, room) = alice_and_bob_in_a_room(&server).await;
    let names: Vec<String> = (0..ARRIVING).map(|i| format!("arriving{i}")).collect();
    let mut idle = Vec::new();
    for chunk in names.chunks(16) {
        idle.extend(join_all(chunk.iter().map(|name| server.register(name))).await);
    }
    join_all(idle.iter().map(|u| u.create_room(json!({})))).await;
    let tokens = join_all(idle.iter().map(|u| u.sync("timeout=0"))).await;

    // Alice sends, one message after the other, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let url = format!("{}/_matrix/client/v3/rooms/{room}/send/m.room.message", server.base());
        let (http, token) = (server.http.clone(), alice.token.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let response = http
                    .put(format!("{url}/load{i}"))
                    .bearer_auth(&token)
                    .json(&json!({ "msgtype": "m.text", "body": format!("load {i}") }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                i += 1;
            }
        })
    };
    common::eventually(Duration::from_secs(10), "alice is sending", || async {
        match sent.load(std::sync::atomic::Ordering::SeqCst) {
            n if n >= 5 => Ok(()),
            n => Err(format!("{n} sent")),
        }
    })
    .await;

    let rounds_before = svc.metrics.sync_rounds.get();
    let sent_before = sent.load(std::sync::atomic::Ordering::SeqCst);
    let polls: Vec<_> = idle
        .iter()
        .zip(&tokens)
        .map(|(user, body)| {
            let url = format!(
                "{}/_matrix/client/v3/sync?since={}&timeout=60000",
                server.base(),
                body["next_batch"].as_str().unwrap()
            );
            let request = server.http.get(url).bearer_auth(&user.token);
            tokio::spawn(async move { request.send().await.map(|r| r.status()) })
        })
        .collect();
    let user_topic = |user: &common::User<'_>| Topic::User(user.user_id.as_str().try_into().unwrap());
    common::eventually(Duration::from_secs(60), "every arriving sync parked", || async {
        let parked = idle
            .iter()
            .filter(|u| svc.notifier.wakeups.waiting(&user_topic(u)) == 1)
            .count();
        if parked == ARRIVING {
            Ok(())
        } else {
            Err(format!("{parked} parked"))
        }
    })
    .await;
    // The load goes on a little while they are parked.
    let parked_at = sent.load(std::sync::atomic::Ordering::SeqCst);
    common::eventually(Duration::from_secs(30), "more sends", || async {
        match sent.load(std::sync::atomic::Ordering::SeqCst) - parked_at {
            n if n >= 20 => Ok(()),
            n => Err(format!("{n} sent")),
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.await.unwrap();
    let sends = sent.load(std::sync::atomic::Ordering::SeqCst) - sent_before;
    let rounds = svc.metrics.sync_rounds.get() - rounds_before;
    assert!(
        rounds <= 2 * ARRIVING as u64,
        "{ARRIVING} syncs that arrived during {sends} sends into a room they are not in built {rounds} answers: two each at most"
    );
    for poll in polls {
        assert!(!poll.is_finished(), "an idle sync answered before its timeout");
        poll.abort();
    }
}

/// The deprecated `/events` long-poll waits on the same hub as `/sync`:
/// registered under its user and rooms, woken by a message in one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_long_poll_is_woken_by_what_concerns_it() {
    let server = TestServer::start().await;
    let svc = server.services().clone();
    let (alice, bob, room) = alice_and_bob_in_a_room(&server).await;
    let start = bob
        .ok(reqwest::Method::GET, "/_matrix/client/v3/events?timeout=0", None)
        .await;
    let from = start["end"].as_str().unwrap().to_owned();
    let poll = {
        let url = format!(
            "{}/_matrix/client/v3/events?from={}&timeout=20000",
            server.base(),
            common::enc(&from)
        );
        let request = server.http.get(url).bearer_auth(&bob.token);
        tokio::spawn(async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() })
    };
    let bob_topic = Topic::User(bob.user_id.as_str().try_into().unwrap());
    let room_topic = Topic::Room(room.as_str().try_into().unwrap());
    common::eventually(Duration::from_secs(10), "bob's /events parked", || async {
        match (
            svc.notifier.wakeups.waiting(&bob_topic),
            svc.notifier.wakeups.waiting(&room_topic),
        ) {
            (1, 1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (status, body) = alice.send_text(&room, "e1", "wake up").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("woken long before its 20 s")
        .unwrap();
    assert!(
        answer["chunk"]
            .as_array()
            .is_some_and(|c| c.iter().any(|e| e["content"]["body"] == "wake up")),
        "{answer}"
    );
}
