//! Room upgrades (`POST /rooms/{roomId}/upgrade`) through the client API:
//! the replacement room and its predecessor, the tombstone, the state, bans,
//! power levels and aliases that move, who may upgrade, and what moves with
//! a user — push rules, tags, `m.direct` — on this server and, for a user of
//! another server, on theirs when they join the new room.

mod common;

use std::time::Duration;

use common::{TestServer, User, enc, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn upgrade(user: &User<'_>, room_id: &str, version: &str) -> (StatusCode, Value) {
    user.call(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(room_id)),
        Some(&json!({ "new_version": version })),
    )
    .await
}

async fn state(user: &User<'_>, room_id: &str, kind: &str, key: &str) -> (StatusCode, Value) {
    user.call(
        Method::GET,
        &format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room_id), enc(key)),
        None,
    )
    .await
}

async fn put_state(user: &User<'_>, room_id: &str, kind: &str, key: &str, content: Value) -> Value {
    user.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room_id), enc(key)),
        Some(&content),
    )
    .await
}

/// The state event of `kind` (state key `""`) with its ID, from the full
/// state of the room.
async fn state_event(user: &User<'_>, room_id: &str, kind: &str) -> Value {
    let all = user
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room_id)),
            None,
        )
        .await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == "")
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} in {room_id}: {all}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_replaces_the_room_and_moves_what_it_should() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "10", "room_alias_name": "upgraded" }))
        .await;
    let alias = format!("#upgraded:{}", server.config.server_name);
    let alt = format!("#upgraded-alt:{}", server.config.server_name);
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alt)),
            Some(&json!({ "room_id": old })),
        )
        .await;
    put_state(
        &alice,
        &old,
        "m.room.canonical_alias",
        "",
        json!({ "alias": alias, "alt_aliases": [alt] }),
    )
    .await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(&old)),
            Some(&json!({ "visibility": "public" })),
        )
        .await;
    assert_eq!(bob.join(&old).await.0, StatusCode::OK);
    let copied = [
        ("m.room.name", json!({ "name": "the room" })),
        ("m.room.topic", json!({ "topic": "what it is about" })),
        ("m.room.avatar", json!({ "url": "mxc://example.org/avatar" })),
        ("m.room.history_visibility", json!({ "history_visibility": "joined" })),
        ("m.room.encryption", json!({ "algorithm": "m.megolm.v1.aes-sha2" })),
        (
            "m.room.server_acl",
            json!({ "allow": ["*"], "deny": ["evil.example.org"], "allow_ip_literals": false }),
        ),
    ];
    for (kind, content) in &copied {
        put_state(&alice, &old, kind, "", content.clone()).await;
    }
    // Bob has 40, users_default is 10; a ban carries over.
    let mut power = state(&alice, &old, "m.room.power_levels", "").await.1;
    power["users"][&bob.user_id] = json!(40);
    power["users_default"] = json!(10);
    put_state(&alice, &old, "m.room.power_levels", "", power.clone()).await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&old)),
            Some(&json!({ "user_id": "@mallory:example.org", "reason": "spam" })),
        )
        .await;

    let (status, body) = upgrade(&alice, &old, "11").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    // The old room's tombstone names the new room; the new room's create
    // event names the old room and the tombstone.
    let tombstone = state_event(&alice, &old, "m.room.tombstone").await;
    assert_eq!(tombstone["content"]["replacement_room"], new.as_str(), "{tombstone}");
    let create = state_event(&alice, &new, "m.room.create").await;
    assert_eq!(create["content"]["room_version"], "11", "{create}");
    assert_eq!(create["content"]["predecessor"]["room_id"], old.as_str(), "{create}");
    assert_eq!(
        create["content"]["predecessor"]["event_id"], tombstone["event_id"],
        "{create}"
    );
    assert_eq!(create["sender"], alice.user_id.as_str());

    // The tombstone is the first thing the old room got after the request.
    let page = alice.messages(&old, "dir=b&limit=10").await;
    let kinds: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    let at = kinds
        .iter()
        .position(|k| *k == "m.room.tombstone")
        .expect("tombstone in the timeline");
    assert_eq!(kinds[at + 1], "m.room.member", "the ban came just before: {kinds:?}");

    // State copied; power levels as they were (the upgrader's raise undone).
    for (kind, content) in &copied {
        assert_eq!(&state(&alice, &new, kind, "").await.1, content, "{kind}");
    }
    assert_eq!(
        state(&alice, &new, "m.room.join_rules", "").await.1["join_rule"],
        "public"
    );
    // public_chat leaves guest access out, which means forbidden: the new
    // room says so.
    assert_eq!(
        state(&alice, &old, "m.room.guest_access", "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        state(&alice, &new, "m.room.guest_access", "").await.1,
        json!({ "guest_access": "forbidden" })
    );
    assert_eq!(state(&alice, &new, "m.room.power_levels", "").await.1, power);
    assert_eq!(
        state(&alice, &new, "m.room.member", "@mallory:example.org").await.1,
        json!({ "membership": "ban", "reason": "spam" })
    );

    // The old room: sending and inviting take more than the default level.
    let restricted = state(&alice, &old, "m.room.power_levels", "").await.1;
    assert_eq!(restricted["events_default"], 50, "{restricted}");
    assert_eq!(restricted["invite"], 50, "{restricted}");
    let mut expected = power.clone();
    expected["events_default"] = json!(50);
    expected["invite"] = json!(50);
    assert_eq!(restricted, expected);

    // Aliases point at the new room, the canonical alias moved with them.
    for a in [&alias, &alt] {
        let resolved = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/directory/room/{}", enc(a)),
                None,
            )
            .await;
        assert_eq!(resolved["room_id"], new.as_str(), "{a}");
    }
    assert_eq!(
        state(&alice, &new, "m.room.canonical_alias", "").await.1,
        json!({ "alias": alias, "alt_aliases": [alt] })
    );
    assert_eq!(state(&alice, &old, "m.room.canonical_alias", "").await.1, json!({}));

    // The directory lists the new room in place of the old.
    let public = alice.ok(Method::GET, "/_matrix/client/v3/publicRooms", None).await;
    let listed: Vec<&str> = public["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&new.as_str()) && !listed.contains(&old.as_str()),
        "{public}"
    );

    // Bob may join the new room (public, like the old one); in the old one
    // he can no longer send (40 < 50 since the restriction).
    assert_eq!(bob.join(&new).await.0, StatusCode::OK);
    assert_eq!(bob.send_text(&old, "t1", "still here?").await.0, StatusCode::FORBIDDEN);
    assert_eq!(bob.send_text(&new, "t2", "moved").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_upgrade_and_to_what() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);

    // A member without the tombstone's level; a non-member.
    let (status, body) = upgrade(&bob, &room, "11").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{body}"
    );
    let (status, body) = upgrade(&carol, &room, "11").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{body}"
    );
    // Nothing happened to the room.
    assert_eq!(
        state(&alice, &room, "m.room.tombstone", "").await.0,
        StatusCode::NOT_FOUND
    );

    // Versions this server does not have, whatever their spelling.
    for version in ["my_bad_version", "999", ""] {
        let (status, body) = upgrade(&alice, &room, version).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_UNSUPPORTED_ROOM_VERSION")),
            "{version}: {body}"
        );
    }
    // A room this server does not know.
    let (status, body) = upgrade(&alice, "!nowhere:example.org", "11").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
        "{body}"
    );
    // A body without new_version.
    let (status, body) = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")),
        "{body}"
    );

    // A moderator allowed the tombstone may upgrade: raised for the copy to
    // the level the state needs, back at 50 afterwards in the new room; the
    // old room's power levels stay as they were (a moderator cannot change
    // them).
    let mut power = state(&alice, &room, "m.room.power_levels", "").await.1;
    power["users"][&bob.user_id] = json!(50);
    power["events"]["m.room.tombstone"] = json!(50);
    put_state(&alice, &room, "m.room.power_levels", "", power.clone()).await;
    let (status, body) = upgrade(&bob, &room, "11").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    assert_eq!(state(&bob, new, "m.room.power_levels", "").await.1, power);
    assert_eq!(state(&bob, &room, "m.room.power_levels", "").await.1, power);

    // A tombstone cannot name its own room, nor be a message.
    let (status, _) = bob
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.tombstone/", enc(new)),
            Some(&json!({ "replacement_room": new })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = bob
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.tombstone/t1", enc(new)),
            Some(&json!({ "replacement_room": "!elsewhere:example.org" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_to_a_version_that_names_rooms_by_their_create_event() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    assert_eq!(bob.join(&old).await.0, StatusCode::OK);
    let mut power = state(&alice, &old, "m.room.power_levels", "").await.1;
    power["users"][&bob.user_id] = json!(50);
    put_state(&alice, &old, "m.room.power_levels", "", power.clone()).await;

    let (status, body) = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&old)),
            Some(&json!({ "new_version": "12", "additional_creators": [bob.user_id] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    let create = state_event(&alice, new, "m.room.create").await;
    // The room's ID is its create event's.
    assert_eq!(
        new.trim_start_matches('!'),
        create["event_id"].as_str().unwrap().trim_start_matches('$')
    );
    assert_eq!(create["content"]["predecessor"]["room_id"], old.as_str(), "{create}");
    assert_eq!(
        create["content"]["additional_creators"],
        json!([bob.user_id]),
        "{create}"
    );
    let tombstone = state_event(&alice, &old, "m.room.tombstone").await;
    assert_eq!(tombstone["content"]["replacement_room"], new, "{tombstone}");
    // Creators are above power levels in room version 12: not in `users`.
    let new_power = state(&alice, new, "m.room.power_levels", "").await.1;
    assert!(new_power["users"].get(&alice.user_id).is_none(), "{new_power}");
    assert!(new_power["users"].get(&bob.user_id).is_none(), "{new_power}");
    assert_eq!(new_power["events_default"], power["events_default"]);
}

async fn room_rule_ids(user: &User<'_>) -> Vec<String> {
    let rules = user.ok(Method::GET, "/_matrix/client/v3/pushrules/", None).await;
    rules["global"]["room"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_users_keep_their_push_rules_tags_and_direct_chats() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
        Some(&json!({ "actions": ["dont_notify"] })),
    )
    .await;
    bob.ok(
        Method::PUT,
        &format!(
            "/_matrix/client/v3/user/{}/rooms/{}/tags/u.work",
            enc(&bob.user_id),
            enc(&room)
        ),
        Some(&json!({ "order": 0.5 })),
    )
    .await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&bob.user_id)),
        Some(&json!({ alice.user_id.clone(): [room] })),
    )
    .await;

    let (status, body) = upgrade(&alice, &room, "11").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();

    let rules = room_rule_ids(&bob).await;
    assert!(rules.contains(&new.to_owned()) && rules.contains(&room), "{rules:?}");
    let copied = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/pushrules/global/room/{}/actions", enc(new)),
            None,
        )
        .await;
    assert_eq!(copied["actions"], json!(["dont_notify"]));
    let tags = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(&bob.user_id), enc(new)),
            None,
        )
        .await;
    assert_eq!(tags["tags"], json!({ "u.work": { "order": 0.5 } }));
    let direct = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&bob.user_id)),
            None,
        )
        .await;
    assert_eq!(direct, json!({ alice.user_id.clone(): [room, new] }));
    // Alice set nothing for the room: nothing was made up for her.
    assert!(!room_rule_ids(&alice).await.contains(&new.to_owned()));
}

/// Bob is on server B: when he joins the replacement room (held by A), B
/// copies his push rule for the old room, and moves B's alias of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_user_keeps_their_push_rules_on_their_server() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = |room: &str| {
        format!(
            "/_matrix/client/v3/join/{}?server_name={}",
            enc(room),
            enc(a.server_name().as_str())
        )
    };
    bob.ok(Method::POST, &join(&room), Some(&json!({}))).await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
        Some(&json!({ "actions": ["notify"] })),
    )
    .await;
    let b_alias = format!("#bobs-name:{}", b.server_name());
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/directory/room/{}", enc(&b_alias)),
        Some(&json!({ "room_id": room })),
    )
    .await;

    let (status, body) = upgrade(&alice, &room, "11").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    // B knows of the upgrade once the tombstone reaches it.
    eventually(Duration::from_secs(20), "the tombstone reaches B", || async {
        match state(&bob, &room, "m.room.tombstone", "").await {
            (StatusCode::OK, body) if body["replacement_room"] == new.as_str() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(!room_rule_ids(&bob).await.contains(&new), "not before Bob joins");

    bob.ok(Method::POST, &join(&new), Some(&json!({}))).await;
    let rules = room_rule_ids(&bob).await;
    assert!(rules.contains(&new), "{rules:?}");
    let resolved = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/directory/room/{}", enc(&b_alias)),
            None,
        )
        .await;
    assert_eq!(resolved["room_id"], new.as_str());
}

/// The other order: Bob's server is down when the room is upgraded, so the
/// tombstone reaches it only after Bob joined the new room (A retries after
/// its back-off). The transfer then happens when the tombstone arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_arriving_after_the_join_confirms_the_upgrade() {
    let a = TestServer::start_federating().await;
    let mut b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (bob_id, bob_token) = (bob.user_id.clone(), bob.token.clone());
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let join = |room: &str| {
        format!(
            "/_matrix/client/v3/join/{}?server_name={}",
            enc(room),
            enc(a.server_name().as_str())
        )
    };
    bob.ok(Method::POST, &join(&room), Some(&json!({}))).await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
        Some(&json!({ "actions": ["notify"] })),
    )
    .await;

    // B goes down; the upgrade's tombstone cannot reach it.
    b.server.take().expect("B runs").shutdown().await;
    let (status, body) = upgrade(&alice, &room, "11").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.server = Some(weft::server::start(b.config.clone()).await.expect("B restarts"));
    let bob = User {
        server: &b,
        user_id: bob_id,
        token: bob_token,
    };

    bob.ok(Method::POST, &join(&new), Some(&json!({}))).await;
    let (status, _) = state(&bob, &room, "m.room.tombstone", "").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the tombstone was to arrive after the join (A backs off for 5 s)"
    );
    assert!(
        !room_rule_ids(&bob).await.contains(&new),
        "nothing confirmed the upgrade yet"
    );

    eventually(
        Duration::from_secs(30),
        "Bob's rule copied once the tombstone arrives",
        || async {
            let rules = room_rule_ids(&bob).await;
            if rules.contains(&new) {
                Ok(())
            } else {
                Err(format!("{rules:?}"))
            }
        },
    )
    .await;
    let (status, tombstone) = state(&bob, &room, "m.room.tombstone", "").await;
    assert_eq!(
        (status, tombstone["replacement_room"].as_str()),
        (StatusCode::OK, Some(new.as_str()))
    );
}

/// Room versions before 10 allow power levels as strings; version 10 on
/// refuses them. An upgrade across carries the levels as integers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_power_levels_become_integers() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let old = alice.create_room(json!({ "room_version": "6" })).await;
    let mut power = state(&alice, &old, "m.room.power_levels", "").await.1;
    power["users"][&alice.user_id] = json!("100");
    power["events_default"] = json!("5");
    power["events"]["m.room.topic"] = json!(" 20");
    put_state(&alice, &old, "m.room.power_levels", "", power.clone()).await;

    let (status, body) = upgrade(&alice, &old, "11").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["replacement_room"].as_str().unwrap();
    let copied = state(&alice, new, "m.room.power_levels", "").await.1;
    assert_eq!(copied["users"][&alice.user_id], 100, "{copied}");
    assert_eq!(copied["events_default"], 5, "{copied}");
    assert_eq!(copied["events"]["m.room.topic"], 20, "{copied}");
    // The old room's restriction read the string levels as numbers too.
    let restricted = state(&alice, &old, "m.room.power_levels", "").await.1;
    assert_eq!(restricted["events_default"], 50, "{restricted}");
}
