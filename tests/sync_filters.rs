//! `/sync` with filters: timeline and state filters, `include_leave`,
//! lazy loading of members, room summaries, and the response's shape.

mod common;

use common::{TestServer, User, enc};
use reqwest::Method;
use serde_json::{Value, json};

async fn filter(user: &User<'_>, definition: Value) -> String {
    let body = user
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/user/{}/filter", enc(&user.user_id)),
            Some(&definition),
        )
        .await;
    body["filter_id"].as_str().unwrap().to_owned()
}

async fn put_state(user: &User<'_>, room: &str, kind: &str, key: &str, content: Value) -> String {
    let body = user
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room), enc(key)),
            Some(&content),
        )
        .await;
    body["event_id"].as_str().unwrap().to_owned()
}

async fn send(user: &User<'_>, room: &str, kind: &str, txn: &str) -> String {
    let body = user
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/send/{kind}/{txn}", enc(room)),
            Some(&json!({ "body": txn })),
        )
        .await;
    body["event_id"].as_str().unwrap().to_owned()
}

fn events<'a>(room: &'a Value, section: &str) -> &'a Vec<Value> {
    room[section]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no {section}.events in {room}"))
}

fn members(room: &Value) -> Vec<String> {
    let mut members: Vec<String> = events(room, "state")
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_filter_limit_and_response_shape() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mine = send(&alice, &room, "m.room.message", "mine").await;
    for i in 0..12 {
        send(&alice, &room, "a.made.up.filler.type", &format!("f{i}")).await;
    }
    let id = filter(
        &alice,
        json!({ "room": { "timeline": { "limit": 1, "types": ["m.room.message"] }, "state": { "types": [] } } }),
    )
    .await;
    let body = alice.sync(&format!("filter={id}")).await;
    let joined = &body["rooms"]["join"][&room];
    let timeline = events(joined, "timeline");
    assert_eq!(timeline.len(), 1, "{joined}");
    assert_eq!(timeline[0]["event_id"], mine.as_str());
    // All the matching events fitted: not limited, and the key is there.
    assert_eq!(joined["timeline"]["limited"], false);
    assert!(events(joined, "state").is_empty());
    assert!(body["rooms"]["leave"].is_object() && body["rooms"]["invite"].is_object());

    // Inline JSON filters work as well, and `*` matches.
    let inline = enc(&json!({ "room": { "timeline": { "limit": 2, "types": ["a.made.*"] } } }).to_string());
    let body = alice.sync(&format!("filter={inline}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(events(joined, "timeline").len(), 2);
    assert_eq!(joined["timeline"]["limited"], true);

    // An incremental sync with news has the same keys.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    send(&alice, &room, "m.room.message", "later").await;
    let body = alice.sync(&format!("since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], false);
    assert!(events(joined, "state").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_filter_and_state_changes_outside_the_timeline() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    put_state(&alice, &room, "a.madeup.test.state", "changes", json!({ "v": 1 })).await;
    put_state(&alice, &room, "a.madeup.test.state", "stays", json!({ "v": 1 })).await;
    let id = filter(
        &alice,
        json!({ "room": {
            "timeline": { "types": ["a.made.up.filler.type"], "limit": 1 },
            "state": { "types": ["a.madeup.test.state"] },
        } }),
    )
    .await;
    let body = alice.sync(&format!("filter={id}")).await;
    assert_eq!(events(&body["rooms"]["join"][&room], "state").len(), 2);
    let since = body["next_batch"].as_str().unwrap().to_owned();

    let changed = put_state(&alice, &room, "a.madeup.test.state", "changes", json!({ "v": 2 })).await;
    for i in 0..5 {
        send(&alice, &room, "a.made.up.filler.type", &format!("f{i}")).await;
    }
    let body = alice.sync(&format!("filter={id}&since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    // The change was filtered out of the timeline: it is in `state`.
    let state = events(joined, "state");
    assert_eq!(state.len(), 1, "{joined}");
    assert_eq!(state[0]["event_id"], changed.as_str());
    assert_eq!(events(joined, "timeline").len(), 1);
    assert_eq!(joined["timeline"]["limited"], true);

    // A state event in the timeline is not in `state` as well.
    let id = filter(
        &alice,
        json!({ "room": {
            "timeline": { "types": ["a.madeup.test.state"] },
            "state": { "types": ["a.madeup.test.state"] },
        } }),
    )
    .await;
    let body = alice.sync(&format!("filter={id}")).await;
    let joined = &body["rooms"]["join"][&room];
    let in_timeline: Vec<&Value> = events(joined, "timeline").iter().map(|e| &e["event_id"]).collect();
    assert!(in_timeline.contains(&&json!(changed)));
    assert!(
        events(joined, "state")
            .iter()
            .all(|e| !in_timeline.contains(&&e["event_id"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_leave_and_display_name_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let left = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.leave(&left).await;
    let body = alice.sync("").await;
    assert!(body["rooms"]["leave"].get(&left).is_none(), "{body}");
    let id = filter(&alice, json!({ "room": { "include_leave": true } })).await;
    let body = alice.sync(&format!("filter={id}")).await;
    let room = &body["rooms"]["leave"][&left];
    assert!(
        room["timeline"]["events"].is_array() && room["state"]["events"].is_array(),
        "{body}"
    );

    // A new display name in a joined room is no re-join: the incremental
    // sync carries the change, not the whole room again.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let since = alice.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let renamed = put_state(
        &alice,
        &room,
        "m.room.member",
        &alice.user_id,
        json!({ "membership": "join", "displayname": "boris" }),
    )
    .await;
    let body = alice.sync(&format!("since={since}")).await;
    let timeline = events(&body["rooms"]["join"][&room], "timeline");
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert_eq!(timeline[0]["event_id"], renamed.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_loading_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    // Named: no heroes, whose memberships would come along.
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Named" }))
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    assert_eq!(carol.join(&room).await.0, 200);
    for i in 0..10 {
        send(&bob, &room, "a.made.up.filler.type", &format!("b{i}")).await;
    }
    let lazy = filter(
        &alice,
        json!({ "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": 10 } } }),
    )
    .await;
    let body = alice.sync(&format!("filter={lazy}")).await;
    let joined = &body["rooms"]["join"][&room];
    // Only the timeline's sender and alice herself.
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(members(joined), expected);
    assert!(joined["summary"].get("m.heroes").is_none());
    let since = body["next_batch"].as_str().unwrap().to_owned();

    // Carol speaks: her membership comes with it, once.
    send(&carol, &room, "m.room.message", "c1").await;
    let body = alice.sync(&format!("filter={lazy}&since={since}")).await;
    assert_eq!(members(&body["rooms"]["join"][&room]), vec![carol.user_id.clone()]);
    let since = body["next_batch"].as_str().unwrap().to_owned();
    send(&carol, &room, "m.room.message", "c2").await;
    let body = alice.sync(&format!("filter={lazy}&since={since}")).await;
    assert!(members(&body["rooms"]["join"][&room]).is_empty());
    // Unless redundant members are asked for.
    let redundant = filter(
        &alice,
        json!({ "room": { "state": { "lazy_load_members": true, "include_redundant_members": true } } }),
    )
    .await;
    let body = alice.sync(&format!("filter={redundant}&since={since}")).await;
    assert_eq!(members(&body["rooms"]["join"][&room]), vec![carol.user_id.clone()]);

    // Without lazy loading: every member.
    let body = alice.sync("").await;
    assert_eq!(members(&body["rooms"]["join"][&room]).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_room_summary_has_heroes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    assert_eq!(carol.join(&room).await.0, 200);
    let lazy = filter(
        &alice,
        json!({ "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": 1 } } }),
    )
    .await;
    let body = alice.sync(&format!("filter={lazy}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["summary"]["m.joined_member_count"], 3);
    assert_eq!(joined["summary"]["m.invited_member_count"], 0);
    assert_eq!(joined["summary"]["m.heroes"], json!([bob.user_id, carol.user_id]));
    // With lazy loading, the heroes' memberships come along (carol's join
    // is the timeline's one event).
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(members(joined), expected);

    put_state(&alice, &room, "m.room.name", "", json!({ "name": "Named" })).await;
    let body = alice.sync("").await;
    assert!(body["rooms"]["join"][&room]["summary"].get("m.heroes").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_event_format_gives_the_pdus() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let event_id = send(&alice, &room, "m.room.message", "fed1").await;
    let id = filter(
        &alice,
        json!({ "event_format": "federation", "room": { "timeline": { "limit": 1 } } }),
    )
    .await;
    let sync = alice.sync(&format!("filter={id}")).await;
    let event = &events(&sync["rooms"]["join"][&room], "timeline")[0];
    assert_eq!(event["event_id"], event_id.as_str(), "{event}");
    for field in [
        "auth_events",
        "prev_events",
        "depth",
        "hashes",
        "signatures",
        "room_id",
        "content",
    ] {
        assert!(event.get(field).is_some(), "{field} missing: {event}");
    }
    assert!(event["unsigned"]["age"].is_u64(), "{event}");
    // the client format has none of the PDU's fields
    let plain = alice.sync("").await;
    let timeline = events(&plain["rooms"]["join"][&room], "timeline");
    let client = timeline.iter().find(|e| e["event_id"] == event_id.as_str()).unwrap();
    assert!(
        client.get("signatures").is_none() && client.get("prev_events").is_none(),
        "{client}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_joined_room_is_limited_and_a_room_joined_and_left_brings_its_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    put_state(&alice, &room, "a.custom.state", "", json!({ "k": 1 })).await;
    for i in 0..3 {
        send(&alice, &room, "m.room.message", &format!("m{i}")).await;
    }
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = bob.join(&room).await;
    assert_eq!(status, 200);
    let sync = bob.sync(&format!("since={since}")).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");

    // joined and left between two syncs: the left room comes with its state
    let room2 = alice.create_room(json!({ "preset": "public_chat" })).await;
    put_state(&alice, &room2, "a.custom.state", "", json!({ "k": 2 })).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = bob.join(&room2).await;
    assert_eq!(status, 200);
    bob.leave(&room2).await;
    let id = filter(
        &bob,
        json!({ "room": { "timeline": { "types": [] }, "state": { "types": ["a.custom.state"] }, "include_leave": true } }),
    )
    .await;
    let sync = bob.sync(&format!("since={since}&filter={id}")).await;
    let left = &sync["rooms"]["leave"][&room2];
    let state = events(left, "state");
    assert_eq!(state.len(), 1, "{left}");
    assert_eq!(state[0]["content"]["k"], 2, "{left}");
}

/// `/messages` and `/context` take a `RoomEventFilter` too: only the
/// events it lets through, a page filled with them; with lazy loading,
/// `/messages` brings the membership of the chunk's senders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_context_apply_the_room_event_filter() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let from_alice = send(&alice, &room, "m.room.message", "a1").await;
    for i in 0..5 {
        send(&bob, &room, "org.example.noise", &format!("n{i}")).await;
    }
    let from_bob = send(&bob, &room, "m.room.message", "b1").await;
    send(&bob, &room, "org.example.noise", "n5").await;

    let only = |f: Value| enc(&f.to_string());
    let ids = |page: &Value, key: &str| -> Vec<String> {
        page[key]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Only messages, newest first; a page of 2 is filled past the noise.
    let page = alice
        .messages(
            &room,
            &format!("dir=b&limit=2&filter={}", only(json!({ "types": ["m.room.message"] }))),
        )
        .await;
    assert_eq!(
        ids(&page, "chunk"),
        vec![from_bob.clone(), from_alice.clone()],
        "{page}"
    );
    // Senders and not_types.
    let page = alice
        .messages(
            &room,
            &format!(
                "dir=b&limit=50&filter={}",
                only(json!({ "senders": [bob.user_id], "not_types": ["org.example.noise"] }))
            ),
        )
        .await;
    let chunk = ids(&page, "chunk");
    assert!(chunk.contains(&from_bob) && !chunk.contains(&from_alice), "{page}");
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["sender"] == bob.user_id.as_str() && e["type"] != "org.example.noise"),
        "{page}"
    );
    assert!(
        page.get("state")
            .is_none_or(|s| s.as_array().is_some_and(Vec::is_empty))
    );

    // Lazy loading: the members of the chunk's senders, no one else.
    let page = alice
        .messages(
            &room,
            &format!(
                "dir=b&limit=1&filter={}",
                only(json!({ "types": ["m.room.message"], "lazy_load_members": true }))
            ),
        )
        .await;
    assert_eq!(ids(&page, "chunk"), vec![from_bob.clone()]);
    let state = page["state"].as_array().expect("state");
    assert_eq!(state.len(), 1, "{page}");
    assert_eq!(state[0]["type"], "m.room.member");
    assert_eq!(state[0]["state_key"], bob.user_id.as_str());

    // /context: the filter applies around the event and to the state,
    // not to the event itself.
    let context = alice
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=10&filter={}",
                enc(&room),
                enc(&from_bob),
                only(json!({ "types": ["m.room.message", "m.room.member"] }))
            ),
            None,
        )
        .await;
    assert_eq!(context["event"]["event_id"], from_bob.as_str());
    let before = ids(&context, "events_before");
    assert_eq!(before.first(), Some(&from_alice), "{context}");
    for key in ["events_before", "events_after", "state"] {
        assert!(
            context[key]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .all(|e| e["type"] == "m.room.message" || e["type"] == "m.room.member"),
            "{key}: {context}"
        );
    }
    assert!(ids(&context, "events_after").is_empty(), "{context}");
    assert!(!context["state"].as_array().unwrap().is_empty());
}
