//! Registration, login, logout, whoami, password change.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn login_body(user: &str, password: &str) -> serde_json::Value {
    json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": password })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_off_by_default() {
    let server = TestServer::start_with(|c| c.allow_registration = false).await;
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "username": "eve", "password": "pw", "auth": { "type": "m.login.dummy" } })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_dummy_auth_then_login_whoami_logout() {
    let server = TestServer::start().await;
    // Without auth: the user-interactive challenge.
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "username": "bob", "password": "pw1" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"][0]["stages"][0], "m.login.dummy");
    assert!(body["session"].is_string());

    let bob = server.register("bob").await;
    assert_eq!(bob.user_id, "@bob:localhost");
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "username": "bob", "password": "x", "auth": { "type": "m.login.dummy" } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_USER_IN_USE");
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "username": "Not Valid!", "password": "x", "auth": { "type": "m.login.dummy" } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_INVALID_USERNAME");

    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&login_body("bob", "wrong")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&login_body("@bob:localhost", "secret")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let device = body["device_id"].as_str().unwrap().to_owned();

    let (status, who) = server
        .request(Method::GET, "/_matrix/client/v3/account/whoami", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who["user_id"], "@bob:localhost");
    assert_eq!(who["device_id"], device.as_str());

    let (status, _) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/logout",
            Some(&token),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/account/whoami", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    // The other session is untouched.
    let (status, _) = server
        .request(Method::GET, "/_matrix/client/v3/account/whoami", Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_needs_the_old_password() {
    let server = TestServer::start().await;
    let carol = server.register("carol").await;
    let (status, body) = carol
        .call(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Some(&json!({ "new_password": "new" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    carol
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Some(&json!({
                "new_password": "new",
                "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "carol" }, "password": "secret" }
            })),
        )
        .await;
    let (status, _) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&login_body("carol", "secret")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&login_body("carol", "new")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_endpoints() {
    let server = TestServer::start().await;
    let (status, versions) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(versions["versions"].as_array().unwrap().iter().any(|v| v == "v1.12"));
    let (status, flows) = server
        .request(Method::GET, "/_matrix/client/v3/login", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flows["flows"][0]["type"], "m.login.password");
    let alice = server.register("alice").await;
    let caps = alice.ok(Method::GET, "/_matrix/client/v3/capabilities", None).await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "11");
    assert_eq!(caps["capabilities"]["m.room_versions"]["available"]["12"], "stable");
    // Listed although it has ruma's default value: clients look for it.
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], true);
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/capabilities", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

/// Starts a registration session (the 401 challenge) with `body`.
async fn start_session(server: &TestServer, body: serde_json::Value) -> String {
    let (status, challenge) = server
        .request(Method::POST, "/_matrix/client/v3/register", None, Some(&body))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    challenge["session"].as_str().expect("session").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_session_remembers_parameters_and_is_idempotent() {
    let server = TestServer::start().await;
    let session = start_session(
        &server,
        json!({ "username": "Dora", "password": "pw", "device_id": "DEV1", "initial_device_display_name": "phone" }),
    )
    .await;
    // The second request of the session names only the auth stage.
    let done = json!({ "auth": { "type": "m.login.dummy", "session": session } });
    let (status, first) = server
        .request(Method::POST, "/_matrix/client/v3/register", None, Some(&done))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["user_id"], "@dora:localhost");
    assert_eq!(first["device_id"], "DEV1");
    // Retrying the completed session gives the result again (spec, UIA),
    // not M_USER_IN_USE.
    let (status, again) = server
        .request(Method::POST, "/_matrix/client/v3/register", None, Some(&done))
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["user_id"], "@dora:localhost");
    assert!(again["access_token"].is_string());
    // The remembered password is the account's.
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&login_body("dora", "pw")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_session_keeps_inhibit_login() {
    let server = TestServer::start().await;
    let session = start_session(
        &server,
        json!({ "username": "eli", "password": "pw", "inhibit_login": true }),
    )
    .await;
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "auth": { "type": "m.login.dummy", "session": session } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@eli:localhost");
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(body.get("device_id").is_none(), "{body}");
}

#[tokio::test]
async fn devices_show_where_they_were_last_seen_and_whois_tells_admins() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (status, body) = server
        .http
        .get(format!("{}/_matrix/client/v3/account/whoami", server.base()))
        .bearer_auth(&alice.token)
        .header("User-Agent", "weft-test/1.0")
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{:?}", body.text().await);
    let devices = alice.ok(Method::GET, "/_matrix/client/v3/devices", None).await;
    let device = &devices["devices"][0];
    assert_eq!(device["last_seen_ip"], "127.0.0.1", "{devices}");
    assert!(device["last_seen_ts"].is_u64(), "{devices}");

    // alice about herself
    let path = format!("/_matrix/client/v3/admin/whois/{}", common::enc(&alice.user_id));
    let whois = alice.ok(Method::GET, &path, None).await;
    assert_eq!(whois["user_id"], alice.user_id.as_str());
    let connections: Vec<&serde_json::Value> = whois["devices"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|d| d["sessions"][0]["connections"].as_array().unwrap())
        .collect();
    assert_eq!(connections.len(), 1, "{whois}");
    assert_eq!(connections[0]["ip"], "127.0.0.1");
    assert!(connections[0]["last_seen"].is_u64(), "{whois}");
    // bob, no admin, about alice: refused
    let (status, body) = bob.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn an_erased_users_messages_are_redacted_for_those_who_joined_after_them() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);
    let (_, sent) = alice.send_text(&room, "e1", "to be erased").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    assert_eq!(carol.join(&room).await.0, StatusCode::OK);

    let content_for = |page: &serde_json::Value| {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .map(|e| e["content"].clone())
    };
    let page = carol.messages(&room, "dir=b&limit=20").await;
    assert_eq!(content_for(&page).unwrap()["body"], "to be erased", "before: {page}");

    let deactivate = json!({
        "erase": true,
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "secret" },
    });
    alice
        .ok(Method::POST, "/_matrix/client/v3/account/deactivate", Some(&deactivate))
        .await;
    // bob was in the room when alice spoke: he still reads her
    let page = bob.messages(&room, "dir=b&limit=20").await;
    assert_eq!(content_for(&page).unwrap()["body"], "to be erased", "bob: {page}");
    // carol joined after: she gets the redacted event
    let page = carol.messages(&room, "dir=b&limit=20").await;
    assert_eq!(content_for(&page).unwrap(), json!({}), "carol: {page}");
}
