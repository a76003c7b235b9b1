//! Devices, keys and to-device messages between two weft servers.

mod common;

use std::time::Duration;

use common::{TestServer, User, enc, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn device_id(user: &User<'_>) -> String {
    let whoami = user.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    whoami["device_id"].as_str().unwrap().to_owned()
}

fn device_keys(user: &str, device: &str, key: &str) -> Value {
    json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): key, format!("ed25519:{device}"): key },
        "signatures": {},
    })
}

/// Syncs from `since` until `check` accepts a response; returns it.
async fn sync_until(user: &User<'_>, since: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut since = since.to_owned();
    loop {
        let sync = user.sync(&format!("since={}&timeout=1000", enc(&since))).await;
        if check(&sync) {
            return sync;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not seen; last: {sync}");
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
}

fn to_device_bodies(sync: &Value) -> Vec<String> {
    sync["to_device"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn query(user: &User<'_>, of: &str) -> Value {
    user.ok(
        Method::POST,
        "/_matrix/client/v3/keys/query",
        Some(&json!({ "device_keys": { of: [] } })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_across_servers() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let bob_device = device_id(&bob).await;
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();

    // No shared room is needed; a retry is delivered once.
    for _ in 0..2 {
        alice
            .ok(
                Method::PUT,
                "/_matrix/client/v3/sendToDevice/my.type/txn1",
                Some(&json!({ "messages": { bob.user_id.clone(): { bob_device.clone(): { "body": "hello" } } } })),
            )
            .await;
    }
    let sync = sync_until(&bob, &since, "the message from the other server", |s| {
        !to_device_bodies(s).is_empty()
    })
    .await;
    assert_eq!(to_device_bodies(&sync), vec!["hello"]);
    assert_eq!(sync["to_device"]["events"][0]["sender"], alice.user_id);
    // Wildcard, the other way.
    let alice_since = alice.sync("").await["next_batch"].as_str().unwrap().to_owned();
    bob.ok(
        Method::PUT,
        "/_matrix/client/v3/sendToDevice/my.type/txn2",
        Some(&json!({ "messages": { alice.user_id.clone(): { "*": { "body": "to all" } } } })),
    )
    .await;
    sync_until(&alice, &alice_since, "a wildcard message", |s| {
        to_device_bodies(s) == vec!["to all"]
    })
    .await;
    // Acknowledged: not again.
    let next = sync["next_batch"].as_str().unwrap();
    let after = bob.sync(&format!("since={}&timeout=0", enc(next))).await;
    assert!(to_device_bodies(&after).is_empty(), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lists_and_keys_across_servers() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let alice_device = device_id(&alice).await;
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
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();

    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&json!({
                "device_keys": device_keys(&alice.user_id, &alice_device, "k1"),
                "one_time_keys": { "signed_curve25519:AAA": { "key": "otk", "signatures": {} } },
            })),
        )
        .await;
    sync_until(&bob, &since, "alice's new keys", |s| {
        s["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == &alice.user_id))
    })
    .await;
    eventually(Duration::from_secs(20), "alice's keys through bob's server", || async {
        let answer = query(&bob, &alice.user_id).await;
        match answer["device_keys"][&alice.user_id][&alice_device]["keys"][format!("ed25519:{alice_device}")].as_str() {
            Some("k1") => Ok(()),
            _ => Err(answer.to_string()),
        }
    })
    .await;
    // Bob's server keeps alice's device list, kept fresh by her server.
    let alice_id = ruma::UserId::parse(&alice.user_id).unwrap();
    let cached = b.services().storage.remote_device_list(&alice_id).await.unwrap();
    assert!(cached.is_some_and(|c| !c.stale), "cached on bob's server");

    // A one-time key, claimed over federation.
    let claimed = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(&json!({ "one_time_keys": { alice.user_id.clone(): { alice_device.clone(): "signed_curve25519" } } })),
        )
        .await;
    assert_eq!(
        claimed["one_time_keys"][&alice.user_id][&alice_device]["signed_curve25519:AAA"]["key"], "otk",
        "{claimed}"
    );

    // A rename and a new device reach bob's server (m.device_list_update).
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/devices/{}", enc(&alice_device)),
            Some(&json!({ "display_name": "laptop" })),
        )
        .await;
    let (status, body) = a
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": alice.user_id },
                "password": "secret",
                "device_id": "SECOND",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second_token = body["access_token"].as_str().unwrap().to_owned();
    let second = User {
        server: &a,
        user_id: alice.user_id.clone(),
        token: second_token,
    };
    second
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&json!({ "device_keys": device_keys(&alice.user_id, "SECOND", "k2") })),
        )
        .await;
    eventually(Duration::from_secs(20), "the rename and the new device", || async {
        let answer = query(&bob, &alice.user_id).await;
        let devices = &answer["device_keys"][&alice.user_id];
        if devices[&alice_device]["unsigned"]["device_display_name"] == "laptop" && devices["SECOND"].is_object() {
            Ok(())
        } else {
            Err(answer.to_string())
        }
    })
    .await;
    // The deletion too.
    second
        .ok(Method::POST, "/_matrix/client/v3/logout", Some(&json!({})))
        .await;
    eventually(Duration::from_secs(20), "the deleted device gone", || async {
        let answer = query(&bob, &alice.user_id).await;
        let devices = &answer["device_keys"][&alice.user_id];
        if devices["SECOND"].is_null() && devices[&alice_device].is_object() {
            Ok(())
        } else {
            Err(answer.to_string())
        }
    })
    .await;
}
