//! Rate limits and requests in flight (`weft::limits`): past a limit the
//! answer is `429 M_LIMIT_EXCEEDED` with `retry_after_ms` and
//! `Retry-After`, nothing is stored, and other clients are not affected.

mod common;

use std::time::Duration;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn assert_limited(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
    let wait = body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(wait > 0, "{body}");
}

/// Rate limits on, slow enough that no bucket refills during a test.
fn slow_limits(config: &mut weft::config::Config) {
    config.rate_limits = true;
    config.rate_limit_sends_per_second = 0.01;
    config.rate_limit_sends_burst = 3;
    config.rate_limit_logins_per_second = 0.01;
    config.rate_limit_logins_burst = 100;
    config.rate_limit_account_logins_per_second = 0.01;
    config.rate_limit_account_logins_burst = 2;
    config.rate_limit_registrations_per_second = 0.01;
    config.rate_limit_registrations_burst = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_a_users_rate_are_refused_and_not_stored() {
    let server = TestServer::start_with(slow_limits).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, StatusCode::OK);

    for i in 0..3 {
        let (status, body) = alice.send_text(&room, &format!("t{i}"), &format!("m{i}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let response = server
        .http
        .put(format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/t3",
            server.base(),
            common::enc(&room)
        ))
        .bearer_auth(&alice.token)
        .json(&json!({ "msgtype": "m.text", "body": "one too many" }))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_limited(status, &body);
    // 0.01/s: a new send is due in up to 100 s.
    assert!((1..=100).contains(&retry_after), "Retry-After: {retry_after}");
    // A state event and a redaction count as sends too.
    let (status, body) = alice
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", common::enc(&room)),
            Some(&json!({ "topic": "t" })),
        )
        .await;
    assert_limited(status, &body);

    // Bob has his own bucket.
    let (status, body) = bob.send_text(&room, "b0", "from bob").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let page = bob.messages(&room, "dir=b&limit=50").await;
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["from bob", "m2", "m1", "m0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_to_one_account_are_limited_even_with_the_right_password() {
    let server = TestServer::start_with(slow_limits).await;
    server.register("carol").await;
    let login = |user: &'static str, password: &'static str| {
        let server = &server;
        async move {
            server
                .request(
                    Method::POST,
                    "/_matrix/client/v3/login",
                    None,
                    Some(&json!({
                        "type": "m.login.password",
                        "identifier": { "type": "m.id.user", "user": user },
                        "password": password,
                    })),
                )
                .await
        }
    };
    assert_eq!(login("carol", "guess-1").await.0, StatusCode::FORBIDDEN);
    assert_eq!(login("carol", "guess-2").await.0, StatusCode::FORBIDDEN);
    // The third try is refused before its password is looked at: a
    // guesser cannot tell a right guess from a wrong one.
    let (status, body) = login("carol", "secret").await;
    assert_limited(status, &body);
    // Another account is not affected.
    server.register("dave").await;
    let (status, body) = login("dave", "secret").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_from_one_address_are_limited() {
    let server = TestServer::start_with(slow_limits).await;
    for name in ["r1", "r2", "r3"] {
        server.register(name).await;
    }
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "username": "r4", "password": "secret", "auth": { "type": "m.login.dummy" } })),
        )
        .await;
    assert_limited(status, &body);
    let (status, _) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/register/available?username=r4",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "r4 was not made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_per_client() {
    let server = TestServer::start_with(|config| config.max_requests_per_client = 2).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    // Parked syncs that nothing wakes: no presence, Bob in no room of hers.
    let quiet = format!(
        "set_presence=offline&filter={}",
        common::enc(r#"{"presence":{"not_types":["*"]}}"#)
    );
    let since = alice.sync(&format!("timeout=0&{quiet}")).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let park = || {
        let request = server
            .http
            .get(format!(
                "{}/_matrix/client/v3/sync?timeout=3000&since={since}&{quiet}",
                server.base()
            ))
            .bearer_auth(&alice.token)
            .send();
        tokio::spawn(request)
    };
    let parked = [park(), park()];
    // Both are parked once the process counts them (nothing else is sent
    // meanwhile: a third request would take the place of the second).
    common::eventually(Duration::from_secs(5), "two syncs parked", || async {
        match server.services().limits.in_flight() {
            2 => Ok(()),
            n => Err(format!("{n} in flight")),
        }
    })
    .await;
    let (status, body) = alice.call(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_limited(status, &body);
    // Another client is not affected.
    let (status, body) = bob.call(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for sync in parked {
        assert_eq!(sync.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Their answers given, the client has its share back.
    let (status, body) = alice.call(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
