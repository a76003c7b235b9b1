//! Account data through HTTP: the account data API and its errors, room
//! tags, the fully-read marker, `/sync` (initial, incremental,
//! long-polling, filters) and ignored users.

mod common;

use std::time::Duration;

use common::{TestServer, User, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn global_path(user: &str, kind: &str) -> String {
    format!("/_matrix/client/v3/user/{}/account_data/{}", enc(user), enc(kind))
}

fn room_path(user: &str, room: &str, kind: &str) -> String {
    format!(
        "/_matrix/client/v3/user/{}/rooms/{}/account_data/{}",
        enc(user),
        enc(room),
        enc(kind)
    )
}

fn tags_path(user: &str, room: &str) -> String {
    format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(user), enc(room))
}

async fn put(user: &User<'_>, path: &str, content: Value) {
    user.ok(Method::PUT, path, Some(&content)).await;
}

/// The events of a sync section, but the push rules (`m.push_rules`),
/// which every full sync carries (tests/push.rs looks at them).
fn events(section: &Value) -> Vec<Value> {
    let mut events = section["events"].as_array().cloned().unwrap_or_default();
    events.retain(|e| e["type"] != "m.push_rules");
    events
}

/// The account data events of a sync section, by type.
fn of_type(section: &Value, kind: &str) -> Vec<Value> {
    events(section).into_iter().filter(|e| e["type"] == kind).collect()
}

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().unwrap().to_owned()
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, errcode: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["errcode"], errcode, "{body}");
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_and_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({})).await;
    let me = alice.user_id.clone();

    // Unset: 404.
    let (status, body) = alice.call(Method::GET, &global_path(&me, "my.type"), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, body) = alice.call(Method::GET, &room_path(&me, &room, "my.type"), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Set, read back, replace; global and room data are apart.
    put(&alice, &global_path(&me, "my.type"), json!({ "a": 1 })).await;
    put(&alice, &room_path(&me, &room, "my.type"), json!({ "b": [2] })).await;
    put(
        &alice,
        &global_path(&me, "my.type"),
        json!({ "a": 3, "nested": { "x": null } }),
    )
    .await;
    let body = alice.ok(Method::GET, &global_path(&me, "my.type"), None).await;
    assert_eq!(body, json!({ "a": 3, "nested": { "x": null } }));
    let body = alice.ok(Method::GET, &room_path(&me, &room, "my.type"), None).await;
    assert_eq!(body, json!({ "b": [2] }));
    // No fallback from room to global data.
    put(&alice, &global_path(&me, "only.global"), json!({})).await;
    let (status, _) = alice
        .call(Method::GET, &room_path(&me, &room, "only.global"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The r0 paths work too.
    let body = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/r0/user/{}/account_data/my.type", enc(&me)),
            None,
        )
        .await;
    assert_eq!(body["a"], 3);

    // Another user's data: 403, reading or writing.
    for path in [global_path(&me, "my.type"), room_path(&me, &room, "my.type")] {
        let (status, body) = bob.call(Method::GET, &path, None).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        let (status, body) = bob.call(Method::PUT, &path, Some(&json!({}))).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        let (status, body) = bob.call(Method::GET, &tags_path(&me, &room), None).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }

    // Server-managed types: 405 M_BAD_JSON, global or room.
    for kind in ["m.fully_read", "m.push_rules"] {
        for path in [global_path(&me, kind), room_path(&me, &room, kind)] {
            let (status, body) = alice.call(Method::PUT, &path, Some(&json!({ "event_id": "$x" }))).await;
            assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED, "M_BAD_JSON");
        }
    }

    // Bad bodies: not JSON, not an object, a bad ignore list.
    let (status, body) = server
        .request_raw(
            Method::PUT,
            &global_path(&me, "my.type"),
            Some(&alice.token),
            "{not json",
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_NOT_JSON");
    for bad in [json!([1, 2]), json!("text"), json!(3)] {
        let (status, body) = alice.call(Method::PUT, &global_path(&me, "my.type"), Some(&bad)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "M_BAD_JSON");
        let (status, body) = alice
            .call(Method::PUT, &room_path(&me, &room, "my.type"), Some(&bad))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
    for bad in [json!({}), json!({ "ignored_users": ["@bob:localhost"] })] {
        let (status, body) = alice
            .call(Method::PUT, &global_path(&me, "m.ignored_user_list"), Some(&bad))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
    // A bad room ID or user ID in the path.
    let (status, body) = alice
        .call(Method::GET, &room_path(&me, "not-a-room", "my.type"), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (status, body) = alice
        .call(Method::PUT, &global_path("not-a-user", "my.type"), Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // No token.
    let (status, body) = server
        .request(Method::GET, &global_path(&me, "my.type"), None, None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    // The value is unchanged by all the refused writes.
    let body = alice.ok(Method::GET, &global_path(&me, "my.type"), None).await;
    assert_eq!(body["a"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let me = alice.user_id.clone();
    let tag_path = |tag: &str| format!("{}/{}", tags_path(&me, &room), enc(tag));

    let body = alice.ok(Method::GET, &tags_path(&me, &room), None).await;
    assert_eq!(body, json!({ "tags": {} }));
    // Removing a tag that is not there is fine.
    alice.ok(Method::DELETE, &tag_path("u.none"), None).await;

    alice
        .ok(Method::PUT, &tag_path("m.favourite"), Some(&json!({ "order": 0.25 })))
        .await;
    alice.ok(Method::PUT, &tag_path("u.work"), Some(&json!({}))).await;
    let body = alice.ok(Method::GET, &tags_path(&me, &room), None).await;
    assert_eq!(
        body,
        json!({ "tags": { "m.favourite": { "order": 0.25 }, "u.work": {} } })
    );
    // The tags are the room's m.tag account data.
    let body = alice.ok(Method::GET, &room_path(&me, &room, "m.tag"), None).await;
    assert_eq!(body["tags"]["m.favourite"]["order"], 0.25);

    alice.ok(Method::DELETE, &tag_path("m.favourite"), None).await;
    let body = alice.ok(Method::GET, &tags_path(&me, &room), None).await;
    assert_eq!(body, json!({ "tags": { "u.work": {} } }));

    // Errors: a tag name too long, a bad order, someone else's tags.
    let long = "u.".to_owned() + &"x".repeat(260);
    let (status, body) = alice.call(Method::PUT, &tag_path(&long), Some(&json!({}))).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (status, body) = alice
        .call(Method::PUT, &tag_path("u.bad"), Some(&json!({ "order": "first" })))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let bob = server.register("bob").await;
    let (status, body) = bob.call(Method::PUT, &tag_path("u.mine"), Some(&json!({}))).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let (status, body) = bob.call(Method::DELETE, &tag_path("u.work"), None).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let body = alice.ok(Method::GET, &tags_path(&me, &room), None).await;
    assert_eq!(body, json!({ "tags": { "u.work": {} } }));

    // Concurrent additions are all kept (read-modify-write is atomic).
    let adds = (0..8).map(|i| {
        let path = tag_path(&format!("u.t{i}"));
        let alice = &alice;
        async move { alice.ok(Method::PUT, &path, Some(&json!({ "order": 0.5 }))).await }
    });
    futures_util::future::join_all(adds).await;
    let body = alice.ok(Method::GET, &tags_path(&me, &room), None).await;
    assert_eq!(body["tags"].as_object().unwrap().len(), 9, "{body}");

    // Tags set as account data with junk in them still list.
    put(
        &alice,
        &room_path(&me, &room, "m.tag"),
        json!({ "tags": { "u.a": { "order": "x" }, "u.b": 3 } }),
    )
    .await;
    let body = alice.ok(Method::GET, &tags_path(&me, &room), None).await;
    assert_eq!(body, json!({ "tags": { "u.a": {}, "u.b": {} } }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_initial_and_incremental() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let other = alice.create_room(json!({})).await;
    let me = alice.user_id.clone();

    put(&alice, &global_path(&me, "my.unchanging"), json!({ "v": "lions" })).await;
    put(&alice, &global_path(&me, "my.changing"), json!({ "v": "dogs" })).await;
    put(&alice, &room_path(&me, &room, "my.changing"), json!({ "v": "frogs" })).await;
    put(&alice, &global_path(&me, "my.changing"), json!({ "v": "cats" })).await;

    // Initial: everything, latest content, once per type.
    let body = alice.sync("").await;
    let global = &body["account_data"];
    assert_eq!(events(global).len(), 2, "{global}");
    assert_eq!(of_type(global, "my.changing")[0]["content"], json!({ "v": "cats" }));
    assert_eq!(of_type(global, "my.unchanging")[0]["content"], json!({ "v": "lions" }));
    let joined = &body["rooms"]["join"][&room]["account_data"];
    assert_eq!(
        events(joined),
        vec![json!({ "type": "my.changing", "content": { "v": "frogs" } })]
    );
    assert!(events(&body["rooms"]["join"][&other]["account_data"]).is_empty());
    let since = next_batch(&body);
    // s<timeline>_<ephemeral>_<account data>_<e2e>_<presence> (client_api/sync_token.rs).
    assert_eq!(since.split('_').count(), 5, "{since}");

    // Nothing new: an empty incremental sync.
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    assert!(events(&body["account_data"]).is_empty(), "{body}");
    assert!(body["rooms"]["join"].as_object().unwrap().is_empty(), "{body}");

    // Changes: only they come, and a room with only account data changes
    // is in the response.
    put(&alice, &global_path(&me, "my.changing"), json!({ "v": "rats" })).await;
    put(&alice, &room_path(&me, &other, "my.other"), json!({ "v": 1 })).await;
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    assert_eq!(
        events(&body["account_data"]),
        vec![json!({ "type": "my.changing", "content": { "v": "rats" } })]
    );
    let rooms = body["rooms"]["join"].as_object().unwrap();
    assert_eq!(rooms.keys().collect::<Vec<_>>(), vec![&other], "{body}");
    assert_eq!(events(&rooms[&other]["account_data"]).len(), 1);
    assert_eq!(events(&rooms[&other]["timeline"]).len(), 0);
    let since = next_batch(&body);

    // A long-polling sync is woken by a change.
    let waiter = {
        let since = since.clone();
        let alice = &alice;
        async move {
            let started = std::time::Instant::now();
            let body = alice.sync(&format!("since={since}&timeout=20000")).await;
            (body, started.elapsed())
        }
    };
    let writer = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        put(&alice, &room_path(&me, &room, "my.woken"), json!({ "w": true })).await;
    };
    let ((body, waited), ()) = tokio::join!(waiter, writer);
    assert!(waited < Duration::from_secs(10), "woken, not timed out: {waited:?}");
    assert_eq!(
        of_type(&body["rooms"]["join"][&room]["account_data"], "my.woken").len(),
        1,
        "{body}"
    );

    // Tokens from before account data (two parts, one part) still work:
    // the account data then comes in full.
    let old = since.split('_').take(2).collect::<Vec<_>>().join("_");
    let body = alice.sync(&format!("since={old}&timeout=0")).await;
    assert_eq!(events(&body["account_data"]).len(), 2, "{body}");
    let body = alice.sync("since=s1&timeout=0").await;
    assert_eq!(events(&body["account_data"]).len(), 2, "{body}");
    for bad in ["s1_2_3_x", "s1_x_3", "s1_2_", "x"] {
        let (status, body) = alice
            .call(Method::GET, &format!("/_matrix/client/v3/sync?since={bad}"), None)
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    }

    // full_state: everything again.
    let body = alice.sync(&format!("since={since}&timeout=0&full_state=true")).await;
    assert_eq!(events(&body["account_data"]).len(), 2, "{body}");

    // Account data survives a restart, and positions keep increasing.
    let token = alice.token.clone();
    drop(alice);
    let mut server = server;
    server.restart().await;
    let alice = User {
        server: &server,
        user_id: me.clone(),
        token,
    };
    let body = alice.sync("").await;
    assert_eq!(events(&body["account_data"]).len(), 2, "{body}");
    let since = next_batch(&body);
    put(&alice, &global_path(&me, "after.restart"), json!({})).await;
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    assert_eq!(of_type(&body["account_data"], "after.restart").len(), 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_filters_and_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let left = alice.create_room(json!({ "preset": "public_chat" })).await;
    let me = alice.user_id.clone();
    for kind in ["a.one", "a.two", "b.three"] {
        put(&alice, &global_path(&me, kind), json!({})).await;
        put(&alice, &room_path(&me, &room, kind), json!({})).await;
        put(&alice, &room_path(&me, &left, kind), json!({})).await;
    }
    // Bob stays in the room alice leaves, so that she can come back.
    bob.join(&left).await;
    // A room the user is not in: its account data is kept, not synced.
    let bobs = bob.create_room(json!({})).await;
    put(&alice, &room_path(&me, &bobs, "a.one"), json!({})).await;
    alice.leave(&left).await;

    let types = |section: &Value| -> Vec<String> {
        let mut t: Vec<String> = events(section)
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        t.sort();
        t
    };
    let filter = json!({
        "account_data": { "types": ["a.*"], "not_types": ["a.two"] },
        "room": { "account_data": { "not_types": ["a.one"] }, "include_leave": true },
    });
    let body = alice.sync(&format!("filter={}", enc(&filter.to_string()))).await;
    assert_eq!(types(&body["account_data"]), vec!["a.one"]);
    assert_eq!(
        types(&body["rooms"]["join"][&room]["account_data"]),
        vec!["a.two", "b.three"]
    );
    // Rooms left (with include_leave) carry theirs too.
    assert_eq!(
        types(&body["rooms"]["leave"][&left]["account_data"]),
        vec!["a.two", "b.three"]
    );
    assert!(body["rooms"]["join"].get(&bobs).is_none(), "{body}");

    // A limit keeps the newest.
    let filter = json!({ "account_data": { "limit": 1 }, "room": { "account_data": { "types": [] } } });
    let body = alice.sync(&format!("filter={}", enc(&filter.to_string()))).await;
    assert_eq!(types(&body["account_data"]), vec!["b.three"]);
    assert!(events(&body["rooms"]["join"][&room]["account_data"]).is_empty());

    // Rooms filtered out get no account data.
    let filter = json!({ "room": { "not_rooms": [room] } });
    let since = next_batch(&body);
    put(&alice, &room_path(&me, &room, "late"), json!({})).await;
    let body = alice
        .sync(&format!("filter={}&since={since}&timeout=0", enc(&filter.to_string())))
        .await;
    assert!(body["rooms"]["join"].get(&room).is_none(), "{body}");

    // Rejoining a room sends all its account data with it.
    let body = alice.sync("").await;
    let since = next_batch(&body);
    let (status, joined) = alice.join(&left).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    assert_eq!(
        types(&body["rooms"]["join"][&left]["account_data"]),
        vec!["a.one", "a.two", "b.three"],
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_read_markers_in_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let me = alice.user_id.clone();
    let body = alice.sync("").await;
    let since = next_batch(&body);

    alice
        .ok(
            Method::PUT,
            &format!("{}/u.test", tags_path(&me, &room)),
            Some(&json!({ "order": 1 })),
        )
        .await;
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    let tags = of_type(&body["rooms"]["join"][&room]["account_data"], "m.tag");
    assert_eq!(
        tags,
        vec![json!({ "type": "m.tag", "content": { "tags": { "u.test": { "order": 1.0 } } } })]
    );
    let since = next_batch(&body);
    alice
        .ok(Method::DELETE, &format!("{}/u.test", tags_path(&me, &room)), None)
        .await;
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    let tags = of_type(&body["rooms"]["join"][&room]["account_data"], "m.tag");
    assert_eq!(tags[0]["content"], json!({ "tags": {} }));
    let since = next_batch(&body);

    // The fully-read marker: through /read_markers (and the m.fully_read
    // receipt), never the account data API.
    let (_, sent) = alice.send_text(&room, "t1", "hello").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
            Some(&json!({ "m.fully_read": event_id })),
        )
        .await;
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    let marker = of_type(&body["rooms"]["join"][&room]["account_data"], "m.fully_read");
    assert_eq!(
        marker,
        vec![json!({ "type": "m.fully_read", "content": { "event_id": event_id } })]
    );
    let body = alice
        .ok(Method::GET, &room_path(&me, &room, "m.fully_read"), None)
        .await;
    assert_eq!(body["event_id"], event_id.as_str());

    let (_, sent) = alice.send_text(&room, "t2", "again").await;
    let second = sent["event_id"].as_str().unwrap().to_owned();
    alice
        .ok(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.fully_read/{}",
                enc(&room),
                enc(&second)
            ),
            Some(&json!({})),
        )
        .await;
    let body = alice
        .ok(Method::GET, &room_path(&me, &room, "m.fully_read"), None)
        .await;
    assert_eq!(body["event_id"], second.as_str());

    // An event of another room (or none) is refused.
    let other = alice.create_room(json!({})).await;
    let (status, body) = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&other)),
            Some(&json!({ "m.fully_read": second })),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let body = alice
        .ok(Method::GET, &room_path(&me, &room, "m.fully_read"), None)
        .await;
    assert_eq!(body["event_id"], second.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_users() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "power_level_content_override": { "events": { "m.room.topic": 0 } },
        }))
        .await;
    bob.join(&room).await;
    carol.join(&room).await;
    let me = alice.user_id.clone();
    let filter =
        json!({ "room": { "timeline": { "types": ["m.room.message"] }, "state": { "types": ["m.room.member"] } } });
    let filter = enc(&filter.to_string());
    for (user, txn) in [(&alice, "a1"), (&bob, "b1"), (&carol, "c1")] {
        user.send_text(&room, txn, txn).await;
    }
    let body = alice.sync(&format!("filter={filter}")).await;
    assert_eq!(events(&body["rooms"]["join"][&room]["timeline"]).len(), 3);

    put(
        &alice,
        &global_path(&me, "m.ignored_user_list"),
        json!({ "ignored_users": { bob.user_id.clone(): {} } }),
    )
    .await;
    // Full sync: bob's messages are gone, his member event (state) stays.
    let body = alice.sync(&format!("filter={filter}")).await;
    let joined = &body["rooms"]["join"][&room];
    let timeline = events(&joined["timeline"]);
    assert!(timeline.iter().all(|e| e["sender"] != bob.user_id.as_str()), "{joined}");
    assert_eq!(events(&joined["timeline"]).len(), 2, "{joined}");
    assert_eq!(events(&joined["state"]).len(), 3, "{joined}");
    assert_eq!(of_type(&body["account_data"], "m.ignored_user_list").len(), 1);
    let since = next_batch(&body);

    // Incremental: only bob spoke: the room is not in the response.
    bob.send_text(&room, "b2", "b2").await;
    let body = alice.sync(&format!("filter={filter}&since={since}&timeout=0")).await;
    assert!(body["rooms"]["join"].get(&room).is_none(), "{body}");
    let since = next_batch(&body);
    // State events of ignored users still come.
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
        Some(&json!({ "topic": "bob's" })),
    )
    .await;
    carol.send_text(&room, "c2", "c2").await;
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    let timeline = events(&body["rooms"]["join"][&room]["timeline"]);
    let kinds: Vec<&str> = timeline.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["m.room.topic", "m.room.message"], "{body}");
    assert_eq!(timeline[1]["sender"], carol.user_id.as_str());

    // /messages and /context leave bob's messages out too, not his state.
    let page = alice.messages(&room, "dir=b&limit=50").await;
    let chunk = page["chunk"].as_array().unwrap();
    assert!(chunk.iter().any(|e| e["type"] == "m.room.topic"), "{page}");
    assert!(
        !chunk
            .iter()
            .any(|e| e["sender"] == bob.user_id.as_str() && e["type"] == "m.room.message"),
        "{page}"
    );
    let carols = timeline[1]["event_id"].as_str().unwrap();
    let context = alice
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=20",
                enc(&room),
                enc(carols)
            ),
            None,
        )
        .await;
    let before = context["events_before"].as_array().unwrap();
    assert!(before.iter().any(|e| e["type"] == "m.room.topic"), "{context}");
    assert!(
        !before
            .iter()
            .any(|e| e["sender"] == bob.user_id.as_str() && e["type"] == "m.room.message"),
        "{context}"
    );

    // Invites from ignored users are not shown, in full or incremental syncs.
    let body = alice.sync("").await;
    let since = next_batch(&body);
    let bobs = bob.create_room(json!({})).await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&bobs)),
        Some(&json!({ "user_id": me })),
    )
    .await;
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    assert!(body["rooms"]["invite"].get(&bobs).is_none(), "{body}");
    let body = alice.sync("").await;
    assert!(body["rooms"]["invite"].get(&bobs).is_none(), "{body}");

    // Un-ignoring: bob's invite and new messages come again.
    put(
        &alice,
        &global_path(&me, "m.ignored_user_list"),
        json!({ "ignored_users": {} }),
    )
    .await;
    let body = alice.sync("").await;
    assert!(body["rooms"]["invite"].get(&bobs).is_some(), "{body}");
    let since = next_batch(&body);
    bob.send_text(&room, "b3", "b3").await;
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    let timeline = events(&body["rooms"]["join"][&room]["timeline"]);
    assert_eq!(timeline.len(), 1, "{body}");
    assert_eq!(timeline[0]["sender"], bob.user_id.as_str());
}
