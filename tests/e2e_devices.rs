//! Devices, end-to-end keys, device lists and to-device messages on one
//! server, over HTTP.

mod common;

use std::time::Duration;

use common::{TestServer, User, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn device_id(user: &User<'_>) -> String {
    let whoami = user.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    whoami["device_id"].as_str().unwrap().to_owned()
}

/// Logs `user` in again on another device.
async fn login<'a>(server: &'a TestServer, user: &User<'_>, device: &str, name: &str) -> User<'a> {
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user.user_id },
                "password": "secret",
                "device_id": device,
                "initial_device_display_name": name,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    User {
        server,
        user_id: user.user_id.clone(),
        token: body["access_token"].as_str().unwrap().to_owned(),
    }
}

fn password_auth(user: &str, password: &str) -> Value {
    json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": password })
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

async fn next_batch(user: &User<'_>) -> String {
    user.sync("").await["next_batch"].as_str().unwrap().to_owned()
}

/// Syncs from `since` until `check` accepts a response; returns it.
async fn sync_until(user: &User<'_>, since: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut since = since.to_owned();
    loop {
        let sync = user.sync(&format!("since={}&timeout=500", enc(&since))).await;
        if check(&sync) {
            return sync;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not seen; last: {sync}");
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
}

fn listed(sync: &Value, list: &str, user: &str) -> bool {
    sync["device_lists"][list]
        .as_array()
        .is_some_and(|l| l.iter().any(|u| u == user))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_management() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let other = login(&server, &alice, "PHONE", "my phone").await;

    let devices = alice.ok(Method::GET, "/_matrix/client/v3/devices", None).await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{devices}");
    assert!(ids.contains(&"PHONE"));
    let phone = alice.ok(Method::GET, "/_matrix/client/v3/devices/PHONE", None).await;
    assert_eq!(phone["display_name"], "my phone");

    alice
        .ok(
            Method::PUT,
            "/_matrix/client/v3/devices/PHONE",
            Some(&json!({ "display_name": "old phone" })),
        )
        .await;
    let phone = alice.ok(Method::GET, "/_matrix/client/v3/devices/PHONE", None).await;
    assert_eq!(phone["display_name"], "old phone");
    for method in [Method::GET, Method::PUT] {
        let (status, body) = alice
            .call(method, "/_matrix/client/v3/devices/NOPE", Some(&json!({})))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND");
    }
    // Another user's devices are not found through one's own token.
    let (status, _) = eve.call(Method::GET, "/_matrix/client/v3/devices/PHONE", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting takes the password, of the device's owner.
    let (status, body) = alice
        .call(Method::DELETE, "/_matrix/client/v3/devices/PHONE", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["flows"].is_array() && body["session"].is_string() && body["params"].is_object());
    // The session is for deleting PHONE: it does not approve deleting
    // another device, even with the right password.
    let mut auth = password_auth(&alice.user_id, "secret");
    auth["session"] = body["session"].clone();
    let (status, refused) = alice
        .call(
            Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}", device_of(&alice).await),
            Some(&json!({ "auth": auth })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["errcode"], "M_FORBIDDEN");
    let (status, _) = alice.call(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status, StatusCode::OK, "alice's own device was not deleted");
    let (status, body) = alice
        .call(
            Method::DELETE,
            "/_matrix/client/v3/devices/PHONE",
            Some(&json!({ "auth": password_auth(&alice.user_id, "wrong") })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert!(body["flows"].is_array());
    let (status, _) = alice
        .call(
            Method::DELETE,
            "/_matrix/client/v3/devices/PHONE",
            Some(&json!({ "auth": password_auth(&eve.user_id, "secret") })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The legacy form (`user` for `identifier`) is taken too.
    alice
        .ok(
            Method::DELETE,
            "/_matrix/client/v3/devices/PHONE",
            Some(&json!({ "auth": { "type": "m.login.password", "user": alice.user_id, "password": "secret" } })),
        )
        .await;
    let (status, _) = alice.call(Method::GET, "/_matrix/client/v3/devices/PHONE", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = other.call(Method::GET, "/_matrix/client/v3/sync", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the device's token is gone: {body}");

    // delete_devices, several at once.
    login(&server, &alice, "A", "a").await;
    login(&server, &alice, "B", "b").await;
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/delete_devices",
            Some(&json!({ "devices": ["A", "B"], "auth": password_auth(&alice.user_id, "secret") })),
        )
        .await;
    let devices = alice.ok(Method::GET, "/_matrix/client/v3/devices", None).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");

    // Deactivation: the password, then no more login.
    let (status, body) = eve
        .call(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            Some(&json!({ "auth": password_auth(&eve.user_id, "nope") })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert!(body["completed"].is_array());
    eve.ok(
        Method::POST,
        "/_matrix/client/v3/account/deactivate",
        Some(&json!({ "auth": password_auth(&eve.user_id, "secret") })),
    )
    .await;
    let (status, _) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(&json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": eve.user_id }, "password": "secret" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_upload_query_claim() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let device = device_id(&alice).await;

    let uploaded = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&json!({
                "device_keys": device_keys(&alice.user_id, &device, "k1"),
                "one_time_keys": {
                    "signed_curve25519:AAA": { "key": "otk1", "signatures": {} },
                    "signed_curve25519:AAB": { "key": "otk2", "signatures": {} },
                },
                "fallback_keys": { "signed_curve25519:FFF": { "key": "fb", "fallback": true, "signatures": {} } },
            })),
        )
        .await;
    assert_eq!(uploaded["one_time_key_counts"]["signed_curve25519"], 2, "{uploaded}");
    let sync = alice.sync("").await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 2, "{sync}");
    assert_eq!(sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    // Bad uploads.
    let (status, body) = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&json!({ "device_keys": { "user_id": alice.user_id, "device_id": device } })),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
    );
    let (status, _) = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&json!({ "device_keys": device_keys(&bob.user_id, &device, "k") })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&json!({ "one_time_keys": { "signed_curve25519:AAA": { "key": "other" } } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "same key ID, other key: {body}");

    let query = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(&json!({ "device_keys": { alice.user_id.clone(): [], bob.user_id.clone(): [] } })),
        )
        .await;
    let keys = &query["device_keys"][&alice.user_id][&device];
    assert_eq!(keys["keys"][format!("ed25519:{device}")], "k1", "{query}");
    assert!(keys["unsigned"].is_object());
    assert_eq!(query["device_keys"][&bob.user_id], json!({}), "no keys uploaded");
    assert_eq!(query["failures"], json!({}));

    let claim = |body: Value| {
        let bob = &bob;
        async move { bob.ok(Method::POST, "/_matrix/client/v3/keys/claim", Some(&body)).await }
    };
    let request = json!({ "one_time_keys": { alice.user_id.clone(): { device.clone(): "signed_curve25519" } } });
    let first = claim(request.clone()).await;
    let second = claim(request.clone()).await;
    let third = claim(request.clone()).await;
    let key_of = |v: &Value| v["one_time_keys"][&alice.user_id][&device].clone();
    assert_eq!(key_of(&first)["signed_curve25519:AAA"]["key"], "otk1", "{first}");
    assert_eq!(key_of(&second)["signed_curve25519:AAB"]["key"], "otk2", "{second}");
    assert_eq!(
        key_of(&third)["signed_curve25519:FFF"]["key"],
        "fb",
        "then the fallback: {third}"
    );
    let sync = alice.sync("").await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]), "{sync}");
    let none = claim(json!({ "one_time_keys": { alice.user_id.clone(): { device.clone(): "other_alg" } } })).await;
    assert_eq!(none["one_time_keys"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lists_in_sync_and_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let loner = server.register("loner").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let from = next_batch(&alice).await;
    assert_eq!(bob.join(&room).await.0, 200);
    // A new member shows as changed.
    let sync = sync_until(&alice, &from, "bob's join in device_lists", |s| {
        listed(s, "changed", &bob.user_id)
    })
    .await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    let bob_device = device_id(&bob).await;
    bob.ok(
        Method::POST,
        "/_matrix/client/v3/keys/upload",
        Some(&json!({ "device_keys": device_keys(&bob.user_id, &bob_device, "bk") })),
    )
    .await;
    let sync = sync_until(&alice, &since, "bob's keys in device_lists", |s| {
        listed(s, "changed", &bob.user_id)
    })
    .await;
    let to = sync["next_batch"].as_str().unwrap().to_owned();
    let changes = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/keys/changes?from={}&to={}", enc(&from), enc(&to)),
            None,
        )
        .await;
    assert!(
        changes["changed"].as_array().unwrap().iter().any(|u| u == &bob.user_id),
        "{changes}"
    );

    // Someone sharing no room is not told.
    let loner_since = next_batch(&loner).await;
    let sync = loner.sync(&format!("since={}&timeout=300", enc(&loner_since))).await;
    assert!(!listed(&sync, "changed", &bob.user_id), "{sync}");

    // A new device of one's own shows too.
    let since_bob = next_batch(&bob).await;
    login(&server, &bob, "NEW", "new").await;
    sync_until(&bob, &since_bob, "own new device", |s| {
        listed(s, "changed", &bob.user_id)
    })
    .await;

    // Bob leaves: alice sees him in `left`.
    let since = next_batch(&alice).await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        Some(&json!({})),
    )
    .await;
    sync_until(&alice, &since, "bob in left", |s| listed(s, "left", &bob.user_id)).await;

    let (status, _) = alice
        .call(Method::GET, "/_matrix/client/v3/keys/changes?from=junk&to=s1", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn to_device_events(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob_device = device_id(&bob).await;
    let bob_phone = login(&server, &bob, "PHONE", "phone").await;
    let since = next_batch(&bob).await;

    let send = |txn: &str, target: &str, body: &str| {
        let path = format!("/_matrix/client/v3/sendToDevice/my.type/{txn}");
        let request = json!({ "messages": { bob.user_id.clone(): { target: { "body": body } } } });
        let alice = &alice;
        async move { alice.call(Method::PUT, &path, Some(&request)).await }
    };
    assert_eq!(send("t1", &bob_device, "one").await.0, 200);
    // Retried: delivered once.
    assert_eq!(send("t1", &bob_device, "one").await.0, 200);
    let sync = bob.sync(&format!("since={}&timeout=5000", enc(&since))).await;
    let events = to_device_events(&sync);
    assert_eq!(
        events,
        vec![json!({ "sender": alice.user_id, "type": "my.type", "content": { "body": "one" } })],
        "{sync}"
    );
    // Not acknowledged: again.
    let again = bob.sync(&format!("since={}&timeout=0", enc(&since))).await;
    assert_eq!(to_device_events(&again).len(), 1);
    // Acknowledged by syncing past it: gone.
    let next = sync["next_batch"].as_str().unwrap();
    let after = bob.sync(&format!("since={}&timeout=0", enc(next))).await;
    assert!(to_device_events(&after).is_empty(), "{after}");

    // `*`: every device of the user.
    assert_eq!(send("t2", "*", "all").await.0, 200);
    let mut next = String::new();
    for user in [&bob_phone, &bob] {
        let sync = user.sync("").await;
        assert!(
            to_device_events(&sync).iter().any(|e| e["content"]["body"] == "all"),
            "{sync}"
        );
        next = sync["next_batch"].as_str().unwrap().to_owned();
    }

    // A waiting /sync is woken.
    let waiting = tokio::spawn({
        let http = bob.server.http.clone();
        let url = format!(
            "{}/_matrix/client/v3/sync?since={}&timeout=10000",
            bob.server.base(),
            enc(&next)
        );
        let token = bob.token.clone();
        async move {
            let started = std::time::Instant::now();
            let body: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (started.elapsed(), body)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(send("t3", &bob_device, "wake").await.0, 200);
    let (elapsed, body) = waiting.await.unwrap();
    assert!(elapsed < Duration::from_secs(8), "woken, not timed out");
    assert!(
        to_device_events(&body).iter().any(|e| e["content"]["body"] == "wake"),
        "{body}"
    );

    let (status, _) = alice
        .call(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/my.type/t4",
            Some(&json!({ "messages": { bob.user_id.clone(): { bob_device.clone(): "not an object" } } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// An ed25519 key whose key ID is `ed25519:<its public key>`, as
/// cross-signing keys are named.
fn cross_signing_pair() -> (ruma::signatures::Ed25519KeyPair, String) {
    use base64::Engine;
    use ruma::signatures::Ed25519KeyPair;
    let der = Ed25519KeyPair::generate();
    let public = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(Ed25519KeyPair::from_der(&der, "x".to_owned()).unwrap().public_key());
    (Ed25519KeyPair::from_der(&der, public.clone()).unwrap(), public)
}

fn signed(user: &str, object: Value, by: &ruma::signatures::Ed25519KeyPair) -> Value {
    let mut canonical: ruma::CanonicalJsonObject = serde_json::from_value(object).unwrap();
    ruma::signatures::sign_json(user, by, &mut canonical).unwrap();
    serde_json::to_value(canonical).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_signing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let device = device_id(&alice).await;
    let (master, master_public) = cross_signing_pair();
    let (ssk, ssk_public) = cross_signing_pair();
    let cross_key = |public: &str, usage: &str| json!({ "user_id": alice.user_id, "usage": [usage], "keys": { format!("ed25519:{public}"): public } });
    let upload = |body: Value| {
        let alice = &alice;
        async move {
            alice
                .call(
                    Method::POST,
                    "/_matrix/client/v3/keys/device_signing/upload",
                    Some(&body),
                )
                .await
        }
    };

    // A self-signing key needs a master key.
    let (status, _) = upload(json!({ "self_signing_key": cross_key(&ssk_public, "self_signing") })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Not signed by the master key: refused.
    let (status, _) = upload(json!({
        "master_key": cross_key(&master_public, "master"),
        "self_signing_key": cross_key(&ssk_public, "self_signing"),
    }))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let since = next_batch(&bob).await;
    let self_signing = signed(&alice.user_id, cross_key(&ssk_public, "self_signing"), &master);
    let (status, body) = upload(json!({
        "master_key": cross_key(&master_public, "master"),
        "self_signing_key": self_signing,
    }))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sync_until(&bob, &since, "alice's new keys", |s| {
        listed(s, "changed", &alice.user_id)
    })
    .await;
    let query = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(&json!({ "device_keys": { alice.user_id.clone(): [] } })),
        )
        .await;
    assert_eq!(
        query["master_keys"][&alice.user_id],
        cross_key(&master_public, "master"),
        "{query}"
    );
    assert_eq!(query["self_signing_keys"][&alice.user_id], self_signing);

    // Replacing them takes the password.
    let (other_master, other_public) = cross_signing_pair();
    let _ = other_master;
    let (status, body) = upload(json!({ "master_key": cross_key(&other_public, "master") })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A device signed with the self-signing key: the signature shows.
    let keys = device_keys(&alice.user_id, &device, "dk");
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(&json!({ "device_keys": keys })),
        )
        .await;
    let signed_device = signed(&alice.user_id, keys.clone(), &ssk);
    let answer = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&json!({ alice.user_id.clone(): { device.clone(): signed_device } })),
        )
        .await;
    assert!(answer["failures"].as_object().is_none_or(|f| f.is_empty()), "{answer}");
    let query = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(&json!({ "device_keys": { alice.user_id.clone(): [] } })),
        )
        .await;
    let signatures = &query["device_keys"][&alice.user_id][&device]["signatures"][&alice.user_id];
    assert!(signatures[format!("ed25519:{ssk_public}")].is_string(), "{query}");
    // A bad signature is reported as a failure.
    let mut forged = signed(&alice.user_id, keys, &master);
    forged["signatures"][&alice.user_id] = json!({ format!("ed25519:{ssk_public}"): "AAAA" });
    let answer = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&json!({ alice.user_id.clone(): { device.clone(): forged } })),
        )
        .await;
    assert_eq!(
        answer["failures"][&alice.user_id][&device]["errcode"], "M_INVALID_SIGNATURE",
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_key_backup() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let algorithm =
        json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "pk" } });
    let (status, _) = alice
        .call(Method::GET, "/_matrix/client/v3/room_keys/version", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no backup yet");
    let first = alice
        .ok(Method::POST, "/_matrix/client/v3/room_keys/version", Some(&algorithm))
        .await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = |index: u64, verified: bool, data: &str| json!({ "first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": { "d": data } });
    let put = |version: &str, body: Value| {
        let path = format!(
            "/_matrix/client/v3/room_keys/keys/{}/sess?version={version}",
            enc("!room:localhost")
        );
        let alice = &alice;
        async move { alice.call(Method::PUT, &path, Some(&body)).await }
    };
    let get = |version: &str| {
        let path = format!("/_matrix/client/v3/room_keys/keys?version={version}");
        let alice = &alice;
        async move { alice.ok(Method::GET, &path, None).await }
    };
    let (status, body) = put(&first, key(5, false, "a")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 1);
    // Worse (a higher index): kept as it was; better: replaced.
    put(&first, key(7, false, "worse")).await;
    assert_eq!(
        get(&first).await["rooms"]["!room:localhost"]["sessions"]["sess"]["session_data"]["d"],
        "a"
    );
    put(&first, key(9, true, "verified")).await;
    assert_eq!(
        get(&first).await["rooms"]["!room:localhost"]["sessions"]["sess"]["session_data"]["d"],
        "verified"
    );
    let info = alice
        .ok(Method::GET, "/_matrix/client/v3/room_keys/version", None)
        .await;
    assert_eq!(
        (info["version"].as_str(), info["count"].as_u64()),
        (Some(first.as_str()), Some(1))
    );
    assert_eq!(info["auth_data"]["public_key"], "pk");

    // A new version: the old one takes no more keys; a new one is empty.
    let second = alice
        .ok(Method::POST, "/_matrix/client/v3/room_keys/version", Some(&algorithm))
        .await["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = put(&first, key(1, true, "late")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["errcode"], "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(get(&second).await, json!({ "rooms": {} }));
    alice
        .ok(
            Method::DELETE,
            &format!("/_matrix/client/v3/room_keys/version/{second}"),
            None,
        )
        .await;
    let (status, _) = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/room_keys/keys?version={second}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let info = alice
        .ok(Method::GET, "/_matrix/client/v3/room_keys/version", None)
        .await;
    assert_eq!(
        info["version"].as_str(),
        Some(first.as_str()),
        "the previous version is current again"
    );
}

/// The device ID of `user`'s access token.
async fn device_of(user: &User<'_>) -> String {
    let whoami = user.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    whoami["device_id"].as_str().expect("a device ID").to_owned()
}
