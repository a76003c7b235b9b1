//! Guest accounts (client-server "Guest access"): registering one, the
//! part of the API a guest may use, joining only rooms open to guests,
//! leaving when a room closes to them (also when another server closes
//! it), and upgrading to a full account.

mod common;

use std::time::Duration;

use common::{TestServer, User, enc, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn start() -> TestServer {
    TestServer::start_with(|c| c.allow_guest_access = true).await
}

async fn register_guest(server: &TestServer) -> User<'_> {
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register?kind=guest",
            None,
            Some(&json!({ "username": "ignored", "password": "ignored" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["device_id"].is_string(), "{body}");
    let user_id = body["user_id"].as_str().unwrap().to_owned();
    // the body's username is ignored for guests
    assert!(!user_id.starts_with("@ignored:"), "{user_id}");
    User {
        server,
        user_id,
        token: body["access_token"].as_str().unwrap().to_owned(),
    }
}

async fn set_guest_access(user: &User<'_>, room: &str, value: &str) {
    user.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(room)),
        Some(&json!({ "guest_access": value })),
    )
    .await;
}

#[tokio::test]
async fn guests_are_refused_when_the_server_has_guest_access_off() {
    let server = TestServer::start().await;
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register?kind=guest",
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_GUEST_ACCESS_FORBIDDEN");
}

#[tokio::test]
async fn a_guest_uses_only_the_guest_part_of_the_api() {
    let server = start().await;
    let guest = register_guest(&server).await;
    let whoami = guest.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(whoami["user_id"], guest.user_id.as_str());
    guest.ok(Method::GET, "/_matrix/client/v3/sync?timeout=0", None).await;

    for (method, path, body) in [
        (Method::POST, "/_matrix/client/v3/createRoom".to_owned(), json!({})),
        (
            Method::PUT,
            format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&guest.user_id)),
            json!({ "avatar_url": "mxc://x/y" }),
        ),
        (
            Method::POST,
            format!("/_matrix/client/v3/user/{}/filter", enc(&guest.user_id)),
            json!({}),
        ),
        (Method::GET, "/_matrix/client/v3/pushrules/".to_owned(), json!({})),
    ] {
        let (status, answer) = guest.call(method.clone(), &path, Some(&body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_eq!(answer["errcode"], "M_GUEST_ACCESS_FORBIDDEN", "{method} {path}");
    }
    // the event stream only for a room's preview
    let (status, answer) = guest
        .call(Method::GET, "/_matrix/client/v3/events?timeout=0", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
}

#[tokio::test]
async fn a_guest_joins_only_rooms_open_to_guests_and_leaves_when_they_close() {
    let server = start().await;
    let alice = server.register("alice").await;
    let guest = register_guest(&server).await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;

    // public_chat rooms are closed to guests (guest_access "forbidden")
    let (status, body) = guest.join(&room).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, _) = guest.send_text(&room, "t0", "not joined").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    set_guest_access(&alice, &room, "can_join").await;
    let (status, body) = guest.join(&room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = guest.send_text(&room, "t1", "hello as a guest").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = alice.messages(&room, "dir=b&limit=5").await;
    assert!(
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["sender"] == guest.user_id.as_str() && e["content"]["body"] == "hello as a guest"),
        "{page}"
    );
    // a guest may change its display name, and the room sees it
    guest
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&guest.user_id)),
            Some(&json!({ "displayname": "visitor" })),
        )
        .await;
    let member = alice.state_event(&room, "m.room.member", &guest.user_id).await;
    assert_eq!(member["displayname"], "visitor", "{member}");

    // closing the room to guests makes the guest leave; alice stays
    set_guest_access(&alice, &room, "forbidden").await;
    alice.wait_for_membership(&room, &guest.user_id, "leave").await;
    alice.wait_for_membership(&room, &alice.user_id, "join").await;
    let (status, _) = guest.join(&room).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_guest_upgrades_to_a_full_account_and_only_its_own() {
    let server = start().await;
    let guest = register_guest(&server).await;
    let other = register_guest(&server).await;
    let localpart = guest
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();

    // another guest's token cannot take this guest's name
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({
                "username": localpart, "password": "a new password",
                "guest_access_token": other.token, "auth": { "type": "m.login.dummy" },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // nor can a registration without the token
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "username": localpart, "password": "pw", "auth": { "type": "m.login.dummy" } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_USER_IN_USE");

    // the guest's own token, through user-interactive auth
    let upgrade = json!({ "username": localpart, "password": "a new password", "guest_access_token": guest.token });
    let (status, challenge) = server
        .request(Method::POST, "/_matrix/client/v3/register", None, Some(&upgrade))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let mut with_auth = upgrade.clone();
    with_auth["auth"] = json!({ "type": "m.login.dummy", "session": challenge["session"] });
    let (status, body) = server
        .request(Method::POST, "/_matrix/client/v3/register", None, Some(&with_auth))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], guest.user_id.as_str());
    let full = User {
        server: &server,
        user_id: guest.user_id.clone(),
        token: body["access_token"].as_str().unwrap().to_owned(),
    };
    // a full account now: it makes rooms, and logs in with its password
    full.create_room(json!({})).await;
    let (status, login) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": localpart },
                "password": "a new password",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    // and it cannot be upgraded twice (a new request, not a retry of the
    // completed session, which would get its result again)
    let mut again = upgrade.clone();
    again["auth"] = json!({ "type": "m.login.dummy" });
    let (status, body) = server
        .request(Method::POST, "/_matrix/client/v3/register", None, Some(&again))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn a_remote_room_closed_to_guests_refuses_them_and_an_open_one_lets_them_leave_on_closing() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating_with(|c| c.allow_guest_access = true).await;
    let alice = a.register("alice").await;
    let guest = register_guest(&b).await;

    // closed: refused, from the invite's stripped state
    let closed = alice
        .create_room(json!({ "preset": "private_chat", "room_version": "11" }))
        .await;
    set_guest_access(&alice, &closed, "forbidden").await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&closed)),
            Some(&json!({ "user_id": guest.user_id })),
        )
        .await;
    let invited = eventually(Duration::from_secs(20), "invite reaches the guest", || async {
        let sync = guest.sync("timeout=0").await;
        if sync["rooms"]["invite"][&closed].is_object() {
            Ok(())
        } else {
            Err(sync.to_string())
        }
    });
    invited.await;
    let (status, body) = guest.join(&closed).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let member: Value = alice.state_event(&closed, "m.room.member", &guest.user_id).await;
    assert_eq!(member["membership"], "invite", "no join was made: {member}");

    // open (private_chat rooms are, by the preset): joined over federation,
    // then closed by the other server: the guest's own server makes it leave
    let open = alice
        .create_room(json!({ "preset": "private_chat", "room_version": "11" }))
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&open)),
            Some(&json!({ "user_id": guest.user_id })),
        )
        .await;
    eventually(Duration::from_secs(20), "invite reaches the guest", || async {
        let sync = guest.sync("timeout=0").await;
        if sync["rooms"]["invite"][&open].is_object() {
            Ok(())
        } else {
            Err(sync.to_string())
        }
    })
    .await;
    let (status, body) = guest.join(&open).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    alice.wait_for_membership(&open, &guest.user_id, "join").await;
    set_guest_access(&alice, &open, "forbidden").await;
    alice.wait_for_membership(&open, &guest.user_id, "leave").await;
}

#[tokio::test]
async fn a_guest_leaves_when_another_server_closes_its_servers_room_to_guests() {
    let a = TestServer::start_federating_with(|c| c.allow_guest_access = true).await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let guest = register_guest(&a).await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    set_guest_access(&alice, &room, "can_join").await;
    eventually(Duration::from_secs(20), "bob joins", || async {
        let (status, body) = bob.join(&room).await;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    // bob may change the room's rules
    let levels_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room));
    let mut levels = alice.ok(Method::GET, &levels_path, None).await;
    levels["users"][&bob.user_id] = json!(50);
    alice.ok(Method::PUT, &levels_path, Some(&levels)).await;
    let (status, body) = guest.join(&room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(Duration::from_secs(20), "bob closes the room to guests", || async {
        let (status, body) = bob
            .call(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(&room)),
                Some(&json!({ "guest_access": "forbidden" })),
            )
            .await;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    alice.wait_for_membership(&room, &guest.user_id, "leave").await;
}
