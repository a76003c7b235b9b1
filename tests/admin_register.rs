//! Synapse-compatible shared-secret registration, `/_synapse/admin/v1/register`.

mod common;

use common::TestServer;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha1::Sha1;

const PATH: &str = "/_synapse/admin/v1/register";
const SECRET: &str = "reg_secret";

fn mac(secret: &str, nonce: &str, username: &str, password: &str, admin: bool) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    let admin = if admin { "admin" } else { "notadmin" };
    mac.update(format!("{nonce}\0{username}\0{password}\0{admin}").as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

async fn nonce(server: &TestServer) -> String {
    let (status, body) = server.request(Method::GET, PATH, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["nonce"].as_str().expect("nonce").to_owned()
}

async fn post(server: &TestServer, body: Value) -> (StatusCode, Value) {
    server.request(Method::POST, PATH, None, Some(&body)).await
}

async fn with_secret() -> TestServer {
    TestServer::start_with(|c| c.registration_shared_secret = Some(SECRET.to_owned())).await
}

#[tokio::test]
async fn good_mac_registers_and_logs_in() {
    // Works with open registration off: that is what it is for.
    let server = TestServer::start_with(|c| {
        c.registration_shared_secret = Some(SECRET.to_owned());
        c.allow_registration = false;
    })
    .await;
    let nonce = nonce(&server).await;
    let (status, body) = post(
        &server,
        json!({
            "nonce": nonce, "username": "Alice", "password": "pw", "admin": true,
            "mac": mac(SECRET, &nonce, "Alice", "pw", true),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Downcased, like Synapse.
    assert_eq!(body["user_id"], "@alice:localhost");
    assert_eq!(body["home_server"], "localhost");
    assert!(body["device_id"].is_string(), "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (status, whoami) = server
        .request(Method::GET, "/_matrix/client/v3/account/whoami", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{whoami}");
    assert_eq!(whoami["user_id"], "@alice:localhost");
    assert_eq!(whoami["device_id"], body["device_id"]);
    let user = server
        .running()
        .services
        .storage
        .user(ruma::user_id!("@alice:localhost"))
        .await
        .unwrap()
        .unwrap();
    assert!(user.admin);
    // The password works for a normal login.
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "pw" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn bad_mac_is_forbidden() {
    let server = with_secret().await;
    let nonce = nonce(&server).await;
    let (status, body) = post(
        &server,
        json!({
            "nonce": nonce, "username": "bob", "password": "pw", "admin": false,
            "mac": mac("wrong secret", &nonce, "bob", "pw", false),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // Signed as non-admin but asking for admin: also refused.
    let nonce2 = self::nonce(&server).await;
    let (status, body) = post(
        &server,
        json!({
            "nonce": nonce2, "username": "bob", "password": "pw", "admin": true,
            "mac": mac(SECRET, &nonce2, "bob", "pw", false),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Not hex at all.
    let nonce3 = self::nonce(&server).await;
    let (status, _) = post(
        &server,
        json!({ "nonce": nonce3, "username": "bob", "password": "pw", "mac": "zz" }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn nonce_is_single_use_and_must_be_issued() {
    let server = with_secret().await;
    let nonce = nonce(&server).await;
    let request = json!({
        "nonce": nonce, "username": "carol", "password": "pw", "admin": false,
        "mac": mac(SECRET, &nonce, "carol", "pw", false),
    });
    let (status, body) = post(&server, request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = post(&server, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");

    let (status, body) = post(
        &server,
        json!({
            "nonce": "made-up", "username": "dave", "password": "pw",
            "mac": mac(SECRET, "made-up", "dave", "pw", false),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn bad_username_and_taken_username() {
    let server = with_secret().await;
    let nonce = nonce(&server).await;
    let (status, body) = post(
        &server,
        json!({ "nonce": nonce, "username": "us,er", "password": "pw", "mac": mac(SECRET, &nonce, "us,er", "pw", false) }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_USERNAME");

    server.register("erin").await;
    let nonce = self::nonce(&server).await;
    let (status, body) = post(
        &server,
        json!({ "nonce": nonce, "username": "erin", "password": "pw", "mac": mac(SECRET, &nonce, "erin", "pw", false) }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_USER_IN_USE");
}

#[tokio::test]
async fn disabled_without_a_secret() {
    let server = TestServer::start().await;
    for method in [Method::GET, Method::POST] {
        let (status, body) = server.request(method.clone(), PATH, None, Some(&json!({}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}: {body}");
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert_eq!(body["error"], "Shared secret registration is not enabled");
    }
}
