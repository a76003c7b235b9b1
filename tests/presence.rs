//! Presence: `PUT`/`GET /presence/{userId}/status`, `/sync`'s `presence`
//! section and `set_presence`, and `m.presence` EDUs between servers.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc, eventually};
use reqwest::Method;
use serde_json::{Value, json};

fn status_path(user: &str) -> String {
    format!("/_matrix/client/v3/presence/{}/status", enc(user))
}

async fn set_presence(user: &User<'_>, body: Value) {
    user.ok(Method::PUT, &status_path(&user.user_id), Some(&body)).await;
}

/// The presence events of `sync` about `user`.
fn presence_of<'a>(sync: &'a Value, user: &str) -> Vec<&'a Value> {
    sync["presence"]["events"]
        .as_array()
        .map(|events| events.iter().filter(|e| e["sender"] == user).collect())
        .unwrap_or_default()
}

fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().unwrap().to_owned()
}

/// Syncs (without touching the user's own presence) from `since` until a
/// presence event about `about` passes `check`; returns it.
async fn wait_presence(user: &User<'_>, since: &str, about: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since = since.to_owned();
    loop {
        let sync = user
            .sync(&format!("since={}&timeout=1000&set_presence=offline", enc(&since)))
            .await;
        if let Some(event) = presence_of(&sync, about).into_iter().find(|e| check(e)) {
            return event.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{} never saw the presence of {about}; last: {sync}",
            user.user_id
        );
        since = next_batch(&sync);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_set_read_and_guarded() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    // Nothing known yet: offline.
    let status = alice.ok(Method::GET, &status_path(&alice.user_id), None).await;
    assert_eq!(status["presence"], "offline", "{status}");

    set_presence(&alice, json!({ "presence": "online", "status_msg": "at lunch" })).await;
    let status = alice.ok(Method::GET, &status_path(&alice.user_id), None).await;
    assert_eq!(status["presence"], "online", "{status}");
    assert_eq!(status["status_msg"], "at lunch");
    assert_eq!(status["currently_active"], true);
    assert!(
        status["last_active_ago"].as_u64().is_some_and(|ago| ago < 10_000),
        "{status}"
    );

    // Only one's own presence can be set; bad states are refused.
    let (code, body) = bob
        .call(
            Method::PUT,
            &status_path(&alice.user_id),
            Some(&json!({ "presence": "online" })),
        )
        .await;
    assert_eq!(
        (code.as_u16(), body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    let (code, body) = alice
        .call(
            Method::PUT,
            &status_path(&alice.user_id),
            Some(&json!({ "presence": "asleep" })),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["errcode"].is_string(), "{body}");
    let (code, body) = alice
        .call(
            Method::PUT,
            &status_path(&alice.user_id),
            Some(&json!({ "status_msg": "no state" })),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = alice.call(Method::GET, &status_path("not-a-user-id"), None).await;
    assert_eq!(code, 400, "{body}");

    // Others see it only when they share a room.
    let (code, body) = bob.call(Method::GET, &status_path(&alice.user_id), None).await;
    assert_eq!(
        (code.as_u16(), body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let status = bob.ok(Method::GET, &status_path(&alice.user_id), None).await;
    assert_eq!(status["status_msg"], "at lunch", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_shows_and_sets_presence() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);

    // `set_presence=offline` leaves presence alone; a plain sync marks the
    // user online, and the user sees that.
    let sync = bob.sync("set_presence=offline").await;
    assert!(presence_of(&sync, &bob.user_id).is_empty(), "{sync}");
    let token = next_batch(&sync);
    assert_eq!(token.split('_').count(), 5, "one position per stream: {token}");
    let sync = bob.sync(&format!("since={}", enc(&token))).await;
    let own = presence_of(&sync, &bob.user_id);
    assert_eq!(own.len(), 1, "{sync}");
    assert_eq!(own[0]["type"], "m.presence");
    assert_eq!(own[0]["content"]["presence"], "online");
    assert!(own[0]["content"]["last_active_ago"].is_u64(), "{sync}");
    // Only on a change: the next incremental sync has nothing of Bob.
    let sync = bob
        .sync(&format!("since={}&set_presence=offline", enc(&next_batch(&sync))))
        .await;
    assert!(presence_of(&sync, &bob.user_id).is_empty(), "{sync}");
    // A full sync has it too; older tokens (without the presence part)
    // still work, and give the presence in full.
    let sync = bob.sync("set_presence=offline").await;
    assert_eq!(presence_of(&sync, &bob.user_id).len(), 1, "{sync}");
    let old_token = token.rsplit_once('_').unwrap().0.to_owned();
    let sync = bob
        .sync(&format!("since={}&set_presence=offline", enc(&old_token)))
        .await;
    assert_eq!(presence_of(&sync, &bob.user_id).len(), 1, "{sync}");
    let (code, body) = bob
        .call(Method::GET, "/_matrix/client/v3/sync?since=s1_2_3_x", None)
        .await;
    assert_eq!(code, 400, "{body}");

    // A change wakes a long-polling sync of a room-mate.
    let since = next_batch(&bob.sync("set_presence=offline").await);
    let started = Instant::now();
    let query = format!("since={}&timeout=10000&set_presence=offline", enc(&since));
    let (sync, _) = tokio::join!(bob.sync(&query), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        set_presence(&alice, json!({ "presence": "unavailable", "status_msg": "away" })).await;
    });
    assert!(started.elapsed() < Duration::from_secs(8), "woken by the change");
    let seen = presence_of(&sync, &alice.user_id);
    assert_eq!(seen.len(), 1, "{sync}");
    assert_eq!(seen[0]["content"]["presence"], "unavailable");
    assert_eq!(seen[0]["content"]["status_msg"], "away");

    // Carol shares no room with Alice: she never sees her presence.
    let sync = carol.sync("").await;
    assert!(presence_of(&sync, &alice.user_id).is_empty(), "{sync}");

    // set_presence=unavailable from a sync.
    let since = next_batch(&bob.sync("set_presence=offline").await);
    alice.sync("set_presence=unavailable&timeout=0").await;
    let status = bob.ok(Method::GET, &status_path(&alice.user_id), None).await;
    assert_eq!(status["presence"], "unavailable", "{status}");
    alice.sync("timeout=0").await;
    let event = wait_presence(&bob, &since, &alice.user_id, |e| e["content"]["presence"] == "online").await;
    assert_eq!(event["content"]["currently_active"], true, "{event}");

    // The filter's presence section applies.
    let filter = enc(&json!({ "presence": { "types": [] } }).to_string());
    let sync = bob.sync(&format!("filter={filter}&set_presence=offline")).await;
    assert!(sync["presence"]["events"].as_array().unwrap().is_empty(), "{sync}");
    let filter = enc(&json!({ "presence": { "not_senders": [alice.user_id] } }).to_string());
    let sync = bob.sync(&format!("filter={filter}&set_presence=offline")).await;
    assert!(presence_of(&sync, &alice.user_id).is_empty(), "{sync}");
    assert_eq!(presence_of(&sync, &bob.user_id).len(), 1, "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newly_shared_rooms_bring_presence() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    set_presence(&alice, json!({ "presence": "online", "status_msg": "here" })).await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let bob_since = next_batch(&bob.sync("set_presence=offline").await);
    let alice_since = next_batch(&alice.sync("set_presence=offline").await);
    assert_eq!(bob.join(&room).await.0, 200);

    // Bob, joining, gets Alice's presence although it did not change; Alice
    // gets Bob's (offline: he never was online).
    let sync = bob
        .sync(&format!("since={}&set_presence=offline", enc(&bob_since)))
        .await;
    let seen = presence_of(&sync, &alice.user_id);
    assert_eq!(seen.len(), 1, "{sync}");
    assert_eq!(seen[0]["content"]["status_msg"], "here");
    let sync = alice
        .sync(&format!("since={}&set_presence=offline", enc(&alice_since)))
        .await;
    let seen = presence_of(&sync, &bob.user_id);
    assert_eq!(seen.len(), 1, "{sync}");
    assert_eq!(seen[0]["content"]["presence"], "offline");
    // Once only.
    let sync = alice
        .sync(&format!("since={}&set_presence=offline", enc(&next_batch(&sync))))
        .await;
    assert!(presence_of(&sync, &bob.user_id).is_empty(), "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_can_be_turned_off() {
    let server = TestServer::start_with(|c| c.presence = false).await;
    let alice = server.register("alice").await;
    set_presence(&alice, json!({ "presence": "online" })).await;
    let status = alice.ok(Method::GET, &status_path(&alice.user_id), None).await;
    assert_eq!(status["presence"], "offline", "{status}");
    let sync = alice.sync("").await;
    assert!(sync["presence"]["events"].as_array().unwrap().is_empty(), "{sync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_travels_between_servers() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    set_presence(&bob, json!({ "presence": "online", "status_msg": "over here" })).await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let alice_since = next_batch(&alice.sync("set_presence=offline").await);
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

    // Bob's server tells Alice's of Bob's presence when he joins.
    let event = wait_presence(&alice, &alice_since, &bob.user_id, |e| {
        e["content"]["status_msg"] == "over here"
    })
    .await;
    assert_eq!(event["content"]["presence"], "online");

    // And Alice's changes reach Bob.
    let bob_since = next_batch(&bob.sync("set_presence=offline").await);
    set_presence(&alice, json!({ "presence": "unavailable", "status_msg": "brb" })).await;
    let event = wait_presence(&bob, &bob_since, &alice.user_id, |e| {
        e["content"]["status_msg"] == "brb"
    })
    .await;
    assert_eq!(event["content"]["presence"], "unavailable");
    assert!(event["content"]["last_active_ago"].is_u64(), "{event}");

    // A server is believed about its own users only: B claiming presence
    // for a user of A, or of a third server, changes nothing.
    let forged_local = format!("@carol:{}", a.server_name());
    let body = json!({
        "origin": b.server_name(),
        "origin_server_ts": 1,
        "pdus": [],
        "edus": [{
            "edu_type": "m.presence",
            "content": { "push": [
                { "user_id": alice.user_id, "presence": "offline", "last_active_ago": 5 },
                { "user_id": forged_local, "presence": "online", "last_active_ago": 5 },
                { "user_id": "@dave:elsewhere.example", "presence": "online", "last_active_ago": 5 },
                { "user_id": bob.user_id, "presence": "online", "status_msg": "genuine", "last_active_ago": 5 },
            ] }
        }],
    });
    let (status, answer) = b
        .services()
        .federation
        .raw(
            &a.server_name(),
            Method::PUT,
            "/_matrix/federation/v1/send/forged-presence",
            Some(&body),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let presence = &a.services().presence;
    eventually(Duration::from_secs(5), "B's own user's update applied", || async {
        match presence.get(&ruma::UserId::parse(&bob.user_id).unwrap()).await.unwrap() {
            Some(s) if s.status_msg.as_deref() == Some("genuine") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let alice_status = alice.ok(Method::GET, &status_path(&alice.user_id), None).await;
    assert_eq!(alice_status["presence"], "unavailable", "{alice_status}");
    assert!(
        presence
            .get(&ruma::UserId::parse(&forged_local).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        presence
            .get(&ruma::UserId::parse("@dave:elsewhere.example").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Malformed presence EDUs are dropped without failing the transaction.
    let body = json!({
        "origin": b.server_name(),
        "origin_server_ts": 1,
        "pdus": [],
        "edus": [{ "edu_type": "m.presence", "content": { "push": "nonsense" } }],
    });
    let (status, _) = b
        .services()
        .federation
        .raw(
            &a.server_name(),
            Method::PUT,
            "/_matrix/federation/v1/send/bad-presence",
            Some(&body),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_a_message_is_activity() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    set_presence(&alice, json!({ "presence": "unavailable" })).await;
    let since = next_batch(&bob.sync("set_presence=offline").await);
    assert_eq!(alice.send_text(&room, "t1", "hello").await.0, 200);
    let event = wait_presence(&bob, &since, &alice.user_id, |e| e["content"]["presence"] == "online").await;
    assert_eq!(event["content"]["currently_active"], true, "{event}");
    assert!(
        event["content"]["last_active_ago"]
            .as_u64()
            .is_some_and(|ago| ago < 10_000),
        "{event}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_survives_a_restart() {
    let mut server = TestServer::start().await;
    let (alice_id, alice_token, bob_id, bob_token) = {
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = alice.create_room(json!({ "preset": "public_chat" })).await;
        assert_eq!(bob.join(&room).await.0, 200);
        set_presence(&alice, json!({ "presence": "unavailable", "status_msg": "on holiday" })).await;
        (alice.user_id, alice.token, bob.user_id, bob.token)
    };
    let before = {
        let bob = User {
            server: &server,
            user_id: bob_id.clone(),
            token: bob_token.clone(),
        };
        next_batch(&bob.sync("set_presence=offline").await)
    };
    server.restart().await;
    let alice = User {
        server: &server,
        user_id: alice_id,
        token: alice_token,
    };
    let bob = User {
        server: &server,
        user_id: bob_id,
        token: bob_token,
    };
    let status = bob.ok(Method::GET, &status_path(&alice.user_id), None).await;
    assert_eq!(status["presence"], "unavailable", "{status}");
    assert_eq!(status["status_msg"], "on holiday", "{status}");
    let sync = bob.sync("set_presence=offline").await;
    let seen = presence_of(&sync, &alice.user_id);
    assert_eq!(seen.len(), 1, "{sync}");
    assert_eq!(seen[0]["content"]["status_msg"], "on holiday");

    // Positions after the restart stay above those before it: a token from
    // before sees what changed since.
    set_presence(&alice, json!({ "presence": "online", "status_msg": "back" })).await;
    let sync = bob.sync(&format!("since={}&set_presence=offline", enc(&before))).await;
    let seen = presence_of(&sync, &alice.user_id);
    assert_eq!(seen.len(), 1, "{sync}");
    assert_eq!(seen[0]["content"]["status_msg"], "back");
    let sync = bob
        .sync(&format!("since={}&set_presence=offline", enc(&next_batch(&sync))))
        .await;
    assert!(presence_of(&sync, &alice.user_id).is_empty(), "{sync}");
}

/// The deprecated `/events` stream carries presence changes of room-mates
/// (with `content.user_id`), not of strangers, and wakes for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_carries_presence() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let start = bob.ok(Method::GET, "/_matrix/client/v3/events?timeout=0", None).await;
    assert!(start["chunk"].as_array().is_some_and(Vec::is_empty), "{start}");
    let from = start["end"].as_str().unwrap().to_owned();

    set_presence(&carol, json!({ "presence": "online", "status_msg": "stranger" })).await;
    let query = format!("/_matrix/client/v3/events?from={}&timeout=10000", enc(&from));
    let started = Instant::now();
    let (page, _) = tokio::join!(bob.ok(Method::GET, &query, None), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        set_presence(&alice, json!({ "presence": "online", "status_msg": "streaming" })).await;
    });
    assert!(started.elapsed() < Duration::from_secs(8), "woken by the change");
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "Alice's only, not Carol's: {page}");
    assert_eq!(chunk[0]["type"], "m.presence");
    assert_eq!(chunk[0]["content"]["user_id"], alice.user_id.as_str());
    assert_eq!(chunk[0]["content"]["status_msg"], "streaming");

    // Shown once: from the answer's end there is nothing more.
    let next = format!(
        "/_matrix/client/v3/events?from={}&timeout=0",
        enc(page["end"].as_str().unwrap())
    );
    let page = bob.ok(Method::GET, &next, None).await;
    assert!(page["chunk"].as_array().is_some_and(Vec::is_empty), "{page}");
}
