//! The user directory (`/user_directory/search`) and OpenID tokens
//! (`/user/{userId}/openid/request_token`, the federation API's
//! `/openid/userinfo`), through HTTP on real servers.

mod common;

use common::{TestServer, User, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The user IDs `searcher` finds for `term` (with `limit` if given), and
/// `limited`.
async fn search_with(searcher: &User<'_>, term: &str, limit: Option<u64>) -> (Vec<String>, bool) {
    let mut body = json!({ "search_term": term });
    if let Some(limit) = limit {
        body["limit"] = json!(limit);
    }
    let answer = searcher
        .ok(Method::POST, "/_matrix/client/v3/user_directory/search", Some(&body))
        .await;
    let ids = answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results: {answer}"))
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, answer["limited"].as_bool().expect("limited"))
}

async fn search(searcher: &User<'_>, term: &str) -> Vec<String> {
    search_with(searcher, term, None).await.0
}

async fn set_name(user: &User<'_>, name: &str) {
    user.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&user.user_id)),
        Some(&json!({ "displayname": name })),
    )
    .await;
}

async fn put_state(user: &User<'_>, room: &str, kind: &str, content: Value) {
    user.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
        Some(&content),
    )
    .await;
}

async fn leave(user: &User<'_>, room: &str) {
    user.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(room)),
        Some(&json!({})),
    )
    .await;
}

/// Stops `server`, takes its database back to before the directory's
/// migration (schema version 13; the later ones' tables go too, as they
/// run again) and starts it again: the migration then builds the
/// directory from the users, rooms and memberships held. On PostgreSQL,
/// whose schema had the directory from the start (no migration to redo),
/// it only restarts the server.
async fn redo_directory_migration(server: &mut TestServer) {
    if server.config.database_url.is_some() {
        return server.restart().await;
    }
    if let Some(running) = server.server.take() {
        running.shutdown().await;
    }
    let db = rusqlite::Connection::open(server.data_dir().join("weft.db")).unwrap();
    db.execute_batch(
        "DROP TABLE user_directory_search; DROP TABLE user_directory;
         DROP TABLE user_directory_rooms; DROP TABLE openid_tokens;
         DROP TABLE media; DROP TABLE event_expiry; DROP TABLE redactions;
         DROP TABLE threepid_bindings; DROP TABLE stream_positions;
         DROP TABLE typing; DROP TABLE typing_rooms; DROP TABLE push_queue;
         DROP TABLE sliding_connections; DROP TABLE sliding_positions; DROP TABLE sliding_rooms;
         DROP INDEX presence_position; DROP INDEX presence_awake;
         ALTER TABLE rooms DROP COLUMN latest_stream; ALTER TABLE rooms DROP COLUMN bump_stream;
         DROP INDEX events_room_ts; DROP TABLE partial_state_rooms;
         CREATE TABLE event_auth (event_id TEXT NOT NULL, auth_event_id TEXT NOT NULL,
             PRIMARY KEY (event_id, auth_event_id)) WITHOUT ROWID;
         PRAGMA user_version = 12;",
    )
    .unwrap();
    drop(db);
    server.server = Some(
        weft::server::start(server.config.clone())
            .await
            .expect("server restarts"),
    );
}

#[tokio::test]
async fn members_of_public_rooms_are_found_until_they_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    set_name(&alice, "Alice Liddell").await;
    set_name(&carol, "Carol Liddell").await;

    // Nobody is in a room yet: nobody is found.
    assert!(search(&bob, "liddell").await.is_empty());

    let public = alice.create_room(json!({ "preset": "public_chat" })).await;
    carol.create_room(json!({ "preset": "private_chat" })).await;
    // Bob shares no room with Alice: her public room is enough. Carol,
    // alone in a private room, is not found.
    assert_eq!(search(&bob, "liddell").await, [alice.user_id.as_str()]);
    // By any word of the display name or the user ID, by prefix, in any case.
    assert_eq!(search(&bob, "ALI").await, [alice.user_id.as_str()]);
    assert_eq!(search(&bob, "lidd ali").await, [alice.user_id.as_str()]);
    assert_eq!(search(&bob, "@alice").await, [alice.user_id.as_str()]);
    assert!(search(&bob, "alice carol").await.is_empty(), "every word must match");
    assert!(search(&bob, "iddell").await.is_empty(), "prefixes of words only");
    assert!(search(&bob, ":@").await.is_empty());

    leave(&alice, &public).await;
    assert!(search(&bob, "liddell").await.is_empty(), "gone with her last room");
}

#[tokio::test]
async fn members_of_private_rooms_find_each_other_until_they_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dave = server.register("dave").await;
    set_name(&alice, "Alice").await;
    set_name(&bob, "Bob").await;

    let first = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob.user_id] }))
        .await;
    let second = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob.user_id] }))
        .await;
    // Invited is not joined.
    assert!(search(&bob, "alice").await.is_empty());
    assert!(search(&alice, "bob").await.is_empty());
    assert_eq!(bob.join(&first).await.0, StatusCode::OK);
    assert_eq!(bob.join(&second).await.0, StatusCode::OK);

    assert_eq!(search(&bob, "alice").await, [alice.user_id.as_str()]);
    assert_eq!(search(&alice, "bob").await, [bob.user_id.as_str()]);
    assert!(search(&dave, "alice").await.is_empty(), "Dave shares no room");
    assert!(
        search(&alice, "alice").await.is_empty(),
        "a private room does not list oneself"
    );

    // One shared room left is enough; none is not.
    leave(&bob, &first).await;
    assert_eq!(search(&bob, "alice").await, [alice.user_id.as_str()]);
    leave(&bob, &second).await;
    assert!(search(&bob, "alice").await.is_empty());
    assert!(search(&alice, "bob").await.is_empty());
}

#[tokio::test]
async fn join_rules_and_history_visibility_make_a_room_public_for_the_directory() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let searcher = server.register("searcher").await;
    set_name(&bob, "Robert").await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob.user_id] }))
        .await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    assert!(search(&searcher, "robert").await.is_empty());

    put_state(&alice, &room, "m.room.join_rules", json!({ "join_rule": "public" })).await;
    assert_eq!(search(&searcher, "robert").await, [bob.user_id.as_str()]);
    put_state(&alice, &room, "m.room.join_rules", json!({ "join_rule": "invite" })).await;
    assert!(search(&searcher, "robert").await.is_empty());

    put_state(
        &alice,
        &room,
        "m.room.history_visibility",
        json!({ "history_visibility": "world_readable" }),
    )
    .await;
    assert_eq!(search(&searcher, "robert").await, [bob.user_id.as_str()]);
    // Either one is enough.
    put_state(&alice, &room, "m.room.join_rules", json!({ "join_rule": "public" })).await;
    put_state(&alice, &room, "m.room.join_rules", json!({ "join_rule": "invite" })).await;
    assert_eq!(search(&searcher, "robert").await, [bob.user_id.as_str()]);
    put_state(
        &alice,
        &room,
        "m.room.history_visibility",
        json!({ "history_visibility": "shared" }),
    )
    .await;
    assert!(search(&searcher, "robert").await.is_empty());
}

#[tokio::test]
async fn display_name_changes_are_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    set_name(&alice, "Firstname").await;
    alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(search(&bob, "firstname").await, [alice.user_id.as_str()]);
    set_name(&alice, "Secondname").await;
    assert_eq!(search(&bob, "secondname").await, [alice.user_id.as_str()]);
    assert!(search(&bob, "firstname").await.is_empty(), "the old name is forgotten");
}

/// A logged-in user again, after `server` restarted (tokens are kept).
fn again<'a>(server: &'a TestServer, (user_id, token): &(String, String)) -> User<'a> {
    User {
        server,
        user_id: user_id.clone(),
        token: token.clone(),
    }
}

#[tokio::test]
async fn the_directory_survives_a_restart_and_its_migration_builds_it_from_what_is_held() {
    let mut server = TestServer::start().await;
    let (alice, bob, carol, searcher) = {
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let searcher = server.register("searcher").await;
        set_name(&alice, "Alice Public").await;
        set_name(&bob, "Bob Private").await;
        alice.create_room(json!({ "preset": "public_chat" })).await;
        let private = bob
            .create_room(json!({ "preset": "private_chat", "invite": [carol.user_id] }))
            .await;
        assert_eq!(carol.join(&private).await.0, StatusCode::OK);
        let keep = |u: &User<'_>| (u.user_id.clone(), u.token.clone());
        (keep(&alice), keep(&bob), keep(&carol), keep(&searcher))
    };
    async fn check(server: &TestServer, [alice, bob, carol, searcher]: [&(String, String); 4]) {
        let (alice, bob, carol, searcher) = (
            again(server, alice),
            again(server, bob),
            again(server, carol),
            again(server, searcher),
        );
        assert_eq!(search(&searcher, "public").await, [alice.user_id.as_str()]);
        assert!(search(&searcher, "private").await.is_empty());
        assert_eq!(search(&carol, "bob private").await, [bob.user_id.as_str()]);
        assert_eq!(search(&carol, "alice").await, [alice.user_id.as_str()]);
    }
    let users = [&alice, &bob, &carol, &searcher];
    check(&server, users).await;
    server.restart().await;
    check(&server, users).await;
    redo_directory_migration(&mut server).await;
    check(&server, users).await;
}

#[tokio::test]
async fn limit_and_limited() {
    let server = TestServer::start().await;
    let owner = server.register("owner").await;
    let room = owner.create_room(json!({ "preset": "public_chat" })).await;
    let mut zebras = Vec::new();
    for i in 0..5 {
        let zebra = server.register(&format!("zebra{i}")).await;
        assert_eq!(zebra.join(&room).await.0, StatusCode::OK);
        zebras.push(zebra.user_id.clone());
    }
    let (found, limited) = search_with(&owner, "zebra", Some(3)).await;
    assert_eq!(found.len(), 3);
    assert!(limited, "two more were there");
    let (mut found, limited) = search_with(&owner, "zebra", Some(5)).await;
    assert!(!limited);
    found.sort();
    assert_eq!(found, zebras);
    assert_eq!(search_with(&owner, "zebra", Some(0)).await, (vec![], true));
    // The default limit (10) holds them all.
    let (found, limited) = search_with(&owner, "zeb", None).await;
    assert_eq!((found.len(), limited), (5, false));
    // A bad request is one.
    let (status, body) = owner
        .call(
            Method::POST,
            "/_matrix/client/v3/user_directory/search",
            Some(&json!({ "limit": 3 })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn other_servers_users_are_found_while_this_server_is_in_the_room() {
    let a = TestServer::start_federating().await;
    let mut b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    set_name(&alice, "Alice Remote").await;
    set_name(&bob, "Bob Faraway").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;

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
    assert_eq!(status, StatusCode::OK, "{body}");
    alice.wait_for_membership(&room, &bob.user_id, "join").await;

    // Each finds the other's user, by the name in their join event.
    assert_eq!(search(&bob, "alice remote").await, [alice.user_id.as_str()]);
    assert_eq!(search(&alice, "faraway").await, [bob.user_id.as_str()]);
    // B's migration finds Alice by her join event too.
    let kept = (bob.user_id.clone(), bob.token.clone());
    drop(bob);
    redo_directory_migration(&mut b).await;
    let bob = again(&b, &kept);
    assert_eq!(search(&bob, "alice remote").await, [alice.user_id.as_str()]);
    let stranger = b.register("stranger").await;
    assert_eq!(
        search(&stranger, "alice").await,
        [alice.user_id.as_str()],
        "a public room"
    );

    // B's last user leaves: B is out of the room, and what it last saw of
    // the room's members no longer counts there.
    leave(&bob, &room).await;
    assert!(search(&bob, "alice").await.is_empty());
    assert!(search(&stranger, "alice").await.is_empty());
    alice.wait_for_membership(&room, &bob.user_id, "leave").await;
    assert!(search(&alice, "faraway").await.is_empty());
}

/// `GET /openid/userinfo` on `base` (either listener) with `query`.
async fn userinfo(base: &str, query: &str) -> (StatusCode, Value) {
    weft::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let res = client
        .get(format!("{base}/_matrix/federation/v1/openid/userinfo{query}"))
        .send()
        .await
        .expect("userinfo answered");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn openid_tokens_tell_who_asked_for_them() {
    let server = TestServer::start_federating().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let token = alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/user/{}/openid/request_token", enc(&alice.user_id)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["matrix_server_name"], server.server_name().as_str());
    assert_eq!(token["expires_in"], 3600);
    let access_token = token["access_token"].as_str().unwrap();
    assert_ne!(access_token, alice.token, "not the access token");

    for base in [server.federation_base(), server.base()] {
        let (status, body) = userinfo(&base, &format!("?access_token={}", enc(access_token))).await;
        assert_eq!(status, StatusCode::OK, "{base}: {body}");
        assert_eq!(body, json!({ "sub": alice.user_id }));

        let (status, body) = userinfo(&base, "?access_token=an%2Finvalid%2Ftoken").await;
        assert_eq!(
            (status, &body["errcode"]),
            (StatusCode::UNAUTHORIZED, &json!("M_UNKNOWN_TOKEN"))
        );
        let (status, body) = userinfo(&base, "").await;
        assert_eq!(
            (status, &body["errcode"]),
            (StatusCode::UNAUTHORIZED, &json!("M_UNKNOWN_TOKEN"))
        );
        // An access token is not an OpenID token.
        let (status, _) = userinfo(&base, &format!("?access_token={}", enc(&alice.token))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // Nobody asks for another's token.
    let (status, body) = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/user/{}/openid/request_token", enc(&alice.user_id)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        (status, &body["errcode"]),
        (StatusCode::FORBIDDEN, &json!("M_FORBIDDEN"))
    );

    // A token past its time is refused.
    let storage = &server.services().storage;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let alice_id = ruma::UserId::parse(&alice.user_id).unwrap();
    storage
        .put_openid_token("expired-token", &alice_id, now - 1, now - 2)
        .await
        .unwrap();
    let (status, _) = userinfo(&server.base(), "?access_token=expired-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
