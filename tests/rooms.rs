//! Rooms through the client API: creation in each room version, the auth
//! rules enforced (membership, power levels), membership changes,
//! redaction, aliases and the directory.

mod common;

use common::{TestServer, enc};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_of_each_supported_version_work() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for version in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        let room = alice
            .create_room(json!({ "room_version": version, "name": format!("v{version}") }))
            .await;
        if version == "12" {
            assert!(!room.contains(':'), "v12 room IDs have no server part: {room}");
        } else {
            assert!(room.ends_with(":localhost"), "{room}");
        }
        let (status, body) = alice.send_text(&room, "t", "hello").await;
        assert_eq!(status, 200, "v{version}: {body}");
        // Versions 1 and 2: the ID is this server's choice, `$opaque:server`;
        // later ones: the reference hash, no server part.
        let event_id = body["event_id"].as_str().unwrap().to_owned();
        assert_eq!(
            event_id.ends_with(":localhost"),
            version == "1" || version == "2",
            "v{version}: {event_id}"
        );
        let event = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&event_id)),
                None,
            )
            .await;
        assert_eq!(event["event_id"], event_id.as_str());
        assert_eq!(event["content"]["body"], "hello");
        let page = alice.messages(&room, "dir=b&limit=1").await;
        assert_eq!(page["chunk"][0]["event_id"], event_id.as_str(), "v{version}: {page}");
        let create = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", enc(&room)),
                None,
            )
            .await;
        assert_eq!(create["room_version"], version);
        let name = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
                None,
            )
            .await;
        assert_eq!(name["name"], format!("v{version}"));
    }
    for version in ["13", "0", "foo"] {
        let (status, body) = alice
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&json!({ "room_version": version })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "v{version}");
        assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_cannot_send_and_private_room_cannot_be_joined() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mallory = server.register("mallory").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;

    let (status, body) = mallory.send_text(&room, "x", "let me in").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    let (status, body) = mallory.join(&room).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Nothing of theirs was stored.
    let page = alice.messages(&room, "dir=b&limit=100").await;
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["sender"] == alice.user_id.as_str()),
        "{page}"
    );

    // A non-member cannot read either.
    let (status, body) = mallory
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = mallory
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_power_cannot_change_state_or_kick() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Alice's" }))
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    assert_eq!(carol.join(&room).await.0, 200);

    let (status, body) = bob
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
            Some(&json!({ "name": "Bob's" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let name = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
            None,
        )
        .await;
    assert_eq!(name["name"], "Alice's");

    let (status, _) = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            Some(&json!({ "user_id": carol.user_id })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Raising bob to 50 lets him change the name.
    let mut power = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels", enc(&room)),
            None,
        )
        .await;
    power["users"][&bob.user_id] = json!(50);
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels", enc(&room)),
            Some(&power),
        )
        .await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
        Some(&json!({ "name": "Bob's" })),
    )
    .await;
    // But he cannot raise himself above his own level.
    power["users"][&bob.user_id] = json!(100);
    let (status, _) = bob
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels", enc(&room)),
            Some(&power),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_kick_ban_unban() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;

    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&json!({ "user_id": bob.user_id })),
        )
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    let joined = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
            None,
        )
        .await;
    assert!(joined["joined"][&bob.user_id].is_object(), "{joined}");

    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            Some(&json!({ "user_id": bob.user_id, "reason": "spam" })),
        )
        .await;
    let (status, _) = bob.join(&room).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "banned users cannot rejoin");
    let members = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/members?membership=ban", enc(&room)),
            None,
        )
        .await;
    assert_eq!(members["chunk"][0]["state_key"], bob.user_id.as_str());
    assert_eq!(members["chunk"][0]["content"]["reason"], "spam");

    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/unban", enc(&room)),
            Some(&json!({ "user_id": bob.user_id })),
        )
        .await;
    // Unbanned is not invited: the private room stays closed.
    let (status, _) = bob.join(&room).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // After leaving, a former member reads the state as it was when they left.
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&json!({ "user_id": bob.user_id })),
        )
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        Some(&json!({})),
    )
    .await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
            Some(&json!({ "topic": "after bob" })),
        )
        .await;
    let (status, _) = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "bob left before the topic was set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_by_sender_and_by_moderator_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let (_, a) = alice.send_text(&room, "a", "alice's secret").await;
    let (_, b) = bob.send_text(&room, "b", "bob's secret").await;
    let a_id = a["event_id"].as_str().unwrap();
    let b_id = b["event_id"].as_str().unwrap();

    // Bob may not redact Alice's message.
    let (status, body) = bob
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(a_id)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // He may redact his own, and the moderator may redact anyone's.
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{}/redact/{}/r2", enc(&room), enc(b_id)),
        Some(&json!({ "reason": "oops" })),
    )
    .await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r3", enc(&room), enc(a_id)),
            Some(&json!({})),
        )
        .await;

    for id in [a_id, b_id] {
        let event = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(id)),
                None,
            )
            .await;
        assert_eq!(event["content"], json!({}), "redacted content is gone: {event}");
        assert_eq!(event["unsigned"]["redacted_because"]["type"], "m.room.redaction");
    }
    let b_event = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(b_id)),
            None,
        )
        .await;
    assert_eq!(b_event["unsigned"]["redacted_because"]["content"]["reason"], "oops");
    assert_eq!(
        b_event["unsigned"]["redacted_by"],
        b_event["unsigned"]["redacted_because"]["event_id"]
    );

    // The older form without a transaction ID (POST, r0 and v3) still works,
    // and is checked the same way.
    let (_, c) = alice.send_text(&room, "c", "alice's other secret").await;
    let c_id = c["event_id"].as_str().unwrap();
    let (status, body) = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/r0/rooms/{}/redact/{}", enc(&room), enc(c_id)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let redaction = alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/redact/{}", enc(&room), enc(c_id)),
            Some(&json!({ "reason": "legacy" })),
        )
        .await;
    let c_event = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(c_id)),
            None,
        )
        .await;
    assert_eq!(c_event["unsigned"]["redacted_by"], redaction["event_id"], "{c_event}");
    assert_eq!(c_event["unsigned"]["redacted_because"]["content"]["reason"], "legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_and_public_directory() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(
            json!({ "room_alias_name": "lobby", "preset": "public_chat", "visibility": "public", "name": "Lobby" }),
        )
        .await;

    let resolved = bob
        .ok(
            Method::GET,
            "/_matrix/client/v3/directory/room/%23lobby:localhost",
            None,
        )
        .await;
    assert_eq!(resolved["room_id"], room.as_str());
    // Joining by alias.
    let (status, joined) = bob.join("#lobby:localhost").await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["room_id"], room.as_str());

    // The alias is taken.
    let (status, body) = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&json!({ "room_alias_name": "lobby" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_ROOM_IN_USE");

    // Canonical alias must point at the room.
    let (status, body) = alice
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias", enc(&room)),
            Some(&json!({ "alias": "#nowhere:localhost" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_BAD_ALIAS");

    let public = bob.ok(Method::GET, "/_matrix/client/v3/publicRooms", None).await;
    let entry = &public["chunk"][0];
    assert_eq!(entry["room_id"], room.as_str());
    assert_eq!(entry["name"], "Lobby");
    assert_eq!(entry["num_joined_members"], 2);
    assert_eq!(entry["canonical_alias"], "#lobby:localhost");

    // Only the creator (or an admin/moderator) deletes an alias.
    let (status, _) = bob
        .call(
            Method::DELETE,
            "/_matrix/client/v3/directory/room/%23lobby:localhost",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    alice
        .ok(
            Method::DELETE,
            "/_matrix/client/v3/directory/room/%23lobby:localhost",
            None,
        )
        .await;
    let (status, body) = bob
        .call(
            Method::GET,
            "/_matrix/client/v3/directory/room/%23lobby:localhost",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    // The deleted alias left the room's canonical alias event.
    let (status, body) = bob
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias", enc(&room)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("alias").is_none(), "{body}");
}

/// A room of `user`'s made with `preset` and the history visibility given.
async fn room_with_visibility(user: &common::User<'_>, preset: &str, visibility: &str) -> String {
    user.create_room(json!({
        "preset": preset,
        "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": visibility } }]
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_visibility_hides_events_before_join() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_visibility(&alice, "public_chat", "joined").await;
    alice.send_text(&room, "1", "before bob").await;
    assert_eq!(bob.join(&room).await.0, 200);
    alice.send_text(&room, "2", "after bob").await;
    let page = bob.messages(&room, "dir=b&limit=100").await;
    let texts: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["after bob"]);
    // Alice sees both.
    let page = alice.messages(&room, "dir=b&limit=100").await;
    let count = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .count();
    assert_eq!(count, 2);
}

/// A history visibility event is visible when the visibility before it
/// or the one after it lets the user see it (the spec's "before *or*
/// after"): an invited user sees the change from `invited` to `shared`
/// (before: invited, and they are), not the change from `joined` to
/// `shared` (neither lets an invited user who has not joined see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_visibility_events_are_seen_by_the_state_before_or_after() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_visibility(&alice, "private_chat", "invited").await;
    alice.invite(&room, &bob.user_id).await;
    let set = |visibility: &'static str| {
        let (alice, room) = (&alice, &room);
        async move {
            alice
                .ok(
                    Method::PUT,
                    &format!(
                        "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                        enc(room)
                    ),
                    Some(&json!({ "history_visibility": visibility })),
                )
                .await["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let to_shared = set("shared").await;
    let to_joined = set("joined").await;
    let from_joined = set("shared").await;
    let get = |event_id: String| {
        let (bob, room) = (&bob, &room);
        async move {
            bob.call(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(&event_id)),
                None,
            )
            .await
        }
    };
    let (status, body) = get(to_shared).await;
    assert_eq!(status, StatusCode::OK, "invited -> shared, seen by the invitee: {body}");
    assert_eq!(body["content"]["history_visibility"], "shared", "{body}");
    // shared -> joined: the state before (shared) needs a user joined now.
    let (status, body) = get(to_joined).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "shared -> joined: {body}");
    let (status, body) = get(from_joined).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "joined -> shared: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_changes_reach_joined_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
            Some(&json!({ "displayname": "Alice A." })),
        )
        .await;
    let profile = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)),
            None,
        )
        .await;
    assert_eq!(profile["displayname"], "Alice A.");
    let member = alice.state_event(&room, "m.room.member", &alice.user_id).await;
    assert_eq!(member["displayname"], "Alice A.");
    let (status, body) = alice
        .call(Method::GET, "/_matrix/client/v3/profile/%40nobody%3Alocalhost", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_users_in_the_room_can_be_kicked() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let kick = |target: &str| json!({ "user_id": target, "reason": "testing" });
    let kick_path = format!("/_matrix/client/v3/rooms/{}/kick", enc(&room));
    // Never in the room (nor even a known user).
    let (status, body) = alice
        .call(Method::POST, &kick_path, Some(&kick("@nobody:example.com")))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Joined: kicked; kicked again: 403, they are no longer in the room.
    assert_eq!(bob.join(&room).await.0, 200);
    alice.ok(Method::POST, &kick_path, Some(&kick(&bob.user_id))).await;
    let (status, body) = alice.call(Method::POST, &kick_path, Some(&kick(&bob.user_id))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Banned: not in the room either; unban first.
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            Some(&kick(&bob.user_id)),
        )
        .await;
    let (status, _) = alice.call(Method::POST, &kick_path, Some(&kick(&bob.user_id))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Invited: kicking revokes the invite.
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&json!({ "user_id": carol.user_id })),
        )
        .await;
    alice.ok(Method::POST, &kick_path, Some(&kick(&carol.user_id))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_state_and_second_join_send_no_new_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/a.test.state", enc(&room));
    let first = alice.ok(Method::PUT, &path, Some(&json!({ "a_key": "a_value" }))).await;
    let second = alice.ok(Method::PUT, &path, Some(&json!({ "a_key": "a_value" }))).await;
    assert_eq!(first["event_id"], second["event_id"]);
    // Other content, or another sender with the same content: new events.
    let third = alice.ok(Method::PUT, &path, Some(&json!({ "a_key": "other" }))).await;
    assert_ne!(third["event_id"], first["event_id"]);

    assert_eq!(bob.join(&room).await.0, 200);
    let member_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&bob.user_id)
    );
    let before = bob.ok(Method::GET, &format!("{member_path}?format=event"), None).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let after = bob.ok(Method::GET, &format!("{member_path}?format=event"), None).await;
    assert_eq!(before["event_id"], after["event_id"]);
    // The timeline has one join of bob's.
    let messages = alice.messages(&room, "dir=b&limit=50").await;
    let joins = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .count();
    assert_eq!(joins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_alias_errors_distinguish_syntax_from_target() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": "here" }))
        .await;
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias", enc(&room));
    alice
        .ok(
            Method::PUT,
            &path,
            Some(&json!({ "alias": "#here:localhost", "alt_aliases": ["#here:localhost"] })),
        )
        .await;
    let (status, body) = alice
        .call(
            Method::PUT,
            &path,
            Some(&json!({ "alias": "#here:localhost", "alt_aliases": ["%here:localhost"] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");
    let (status, body) = alice
        .call(
            Method::PUT,
            &path,
            Some(&json!({ "alias": "#here:localhost", "alt_aliases": ["#elsewhere:localhost"] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_ALIAS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_of_a_room_one_cannot_read_is_not_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let (_, sent) = alice.send_text(&room, "t1", "secret").await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&room),
        enc(sent["event_id"].as_str().unwrap())
    );
    alice.ok(Method::GET, &path, None).await;
    let (status, body) = bob.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}
