//! Third-party invites (inviting by email through an identity server)
//! against a small fake identity server: HTTPS on a loopback port with a
//! self-signed certificate (weft reaches identity servers over HTTPS only,
//! checking certificates as `federation_verify_tls` says; these servers
//! run with it off), answering the v2 `hash_details`, `lookup` (sha256
//! only, so a lookup hashed wrongly finds nobody), `store-invite` and
//! `pubkey/isvalid`, and signing what it sends `/3pid/onbind` with its own
//! ed25519 key.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use base64::Engine as _;
use common::{TestServer, enc};
use reqwest::Method;
use ruma::{CanonicalJsonObject, signatures::Ed25519KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOKEN: &str = "swordfish";
const PEPPER: &str = "matrixrocks";

struct Is {
    /// Its `127.0.0.1:<port>`, known once it listens.
    name: std::sync::OnceLock<String>,
    key: Ed25519KeyPair,
    bindings: Mutex<HashMap<String, String>>,
    stored: Mutex<Vec<Value>>,
    /// Whether `pubkey/isvalid` disowns the key.
    revoked: std::sync::atomic::AtomicBool,
}

struct FakeIdentityServer {
    name: String,
    state: Arc<Is>,
    _dir: tempfile::TempDir,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

fn key_pair() -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "0".to_owned()).unwrap()
}

fn authorised(headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}")) {
        return Ok(());
    }
    Err((
        StatusCode::UNAUTHORIZED,
        Json(json!({"errcode": "M_UNAUTHORIZED", "error": "bad token"})),
    ))
}

async fn hash_details(headers: HeaderMap) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorised(&headers)?;
    Ok(Json(json!({"algorithms": ["sha256"], "lookup_pepper": PEPPER})))
}

async fn lookup(
    State(is): State<Arc<Is>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorised(&headers)?;
    assert_eq!(body["algorithm"], "sha256");
    assert_eq!(body["pepper"], PEPPER);
    let bindings = is.bindings.lock().unwrap();
    let mut mappings = serde_json::Map::new();
    for hash in body["addresses"].as_array().unwrap() {
        if let Some(mxid) = bindings.get(hash.as_str().unwrap()) {
            mappings.insert(hash.as_str().unwrap().to_owned(), json!(mxid));
        }
    }
    Ok(Json(json!({ "mappings": mappings })))
}

async fn store_invite(
    State(is): State<Arc<Is>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorised(&headers)?;
    let mut stored = is.stored.lock().unwrap();
    stored.push(body);
    Ok(Json(json!({
        "token": format!("tok{}", stored.len()),
        "display_name": "B***",
        "public_keys": [{"public_key": b64(&is.key.public_key()), "key_validity_url": format!("https://{}/_matrix/identity/v2/pubkey/isvalid", is.name.get().unwrap())}],
    })))
}

async fn is_valid(State(is): State<Arc<Is>>, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    let revoked = is.revoked.load(std::sync::atomic::Ordering::SeqCst);
    Json(json!({"valid": !revoked && q.get("public_key") == Some(&b64(&is.key.public_key()))}))
}

impl FakeIdentityServer {
    async fn start() -> FakeIdentityServer {
        let state = Arc::new(Is {
            name: std::sync::OnceLock::new(),
            key: key_pair(),
            bindings: Mutex::default(),
            stored: Mutex::default(),
            revoked: Default::default(),
        });
        let app = Router::new()
            .route("/_matrix/identity/v2/hash_details", get(hash_details))
            .route("/_matrix/identity/v2/lookup", post(lookup))
            .route("/_matrix/identity/v2/store-invite", post(store_invite))
            .route("/_matrix/identity/v2/pubkey/isvalid", get(is_valid))
            .with_state(state.clone());
        let (name, dir) = common::serve_tls(app);
        state.name.set(name.clone()).unwrap();
        FakeIdentityServer { name, state, _dir: dir }
    }

    fn bind(&self, address: &str, mxid: &str) {
        let digest = Sha256::digest(format!("{address} email {PEPPER}").as_bytes());
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        self.state.bindings.lock().unwrap().insert(hash, mxid.to_owned());
    }

    /// The `signed` block of an invite, signed with `key`.
    fn signed(&self, key: &Ed25519KeyPair, mxid: &str, token: &str) -> Value {
        let mut object: CanonicalJsonObject =
            ruma::canonical_json::try_from_json_map(json!({"mxid": mxid, "token": token}).as_object().unwrap().clone())
                .unwrap();
        ruma::signatures::sign_json(&self.name, key, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    }

    fn invite_body(&self, address: &str) -> Value {
        json!({"id_server": self.name, "id_access_token": TOKEN, "medium": "email", "address": address})
    }
}

async fn start() -> (TestServer, FakeIdentityServer) {
    let hs = TestServer::start_with(|c| c.federation_verify_tls = false).await;
    (hs, FakeIdentityServer::start().await)
}

#[tokio::test]
async fn a_bound_address_becomes_an_ordinary_invite() {
    let (hs, is) = start().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    is.bind("bob@example.org", &bob.user_id);
    let room = alice.create_room(json!({"preset": "private_chat"})).await;

    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&is.invite_body("bob@example.org")),
        )
        .await;

    let member = alice.state_event(&room, "m.room.member", &bob.user_id).await;
    assert_eq!(member["membership"], "invite");
    assert!(member.get("third_party_invite").is_none(), "{member}");
    assert!(
        is.state.stored.lock().unwrap().is_empty(),
        "nothing stored for a bound address"
    );
}

#[tokio::test]
async fn the_identity_servers_refusal_of_the_token_is_a_403() {
    let (hs, is) = start().await;
    let alice = hs.register("alice").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let mut body = is.invite_body("bob@example.org");
    body["id_access_token"] = json!("wrong");

    let (status, answer) = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["errcode"], "M_UNAUTHORIZED");
}

#[tokio::test]
async fn an_invite_without_an_identity_server_token_is_a_400() {
    let (hs, is) = start().await;
    let alice = hs.register("alice").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    let mut body = is.invite_body("bob@example.org");
    body.as_object_mut().unwrap().remove("id_access_token");

    let (status, answer) = alice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(is.state.stored.lock().unwrap().is_empty());
}

/// Invites an unbound address; answers the room ID and the invite's token.
async fn invite_unbound(hs: &TestServer, is: &FakeIdentityServer, alice: &common::User<'_>) -> (String, String) {
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "The Lab"}))
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&is.invite_body("bob@example.org")),
        )
        .await;
    let state = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            None,
        )
        .await;
    let invite = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.third_party_invite")
        .unwrap_or_else(|| panic!("no m.room.third_party_invite in {state}"))
        .clone();
    assert_eq!(invite["sender"], json!(alice.user_id));
    assert_eq!(invite["content"]["display_name"], "B***");
    assert_eq!(invite["content"]["public_key"], json!(b64(&is.state.key.public_key())));
    let stored = is.state.stored.lock().unwrap().last().cloned().unwrap();
    assert_eq!(stored["room_id"], json!(room));
    assert_eq!(stored["sender"], json!(alice.user_id));
    assert_eq!(stored["address"], "bob@example.org");
    assert_eq!(stored["room_name"], "The Lab");
    let _ = hs;
    (room, invite["state_key"].as_str().unwrap().to_owned())
}

fn onbind(is: &FakeIdentityServer, key: &Ed25519KeyPair, room: &str, sender: &str, mxid: &str, token: &str) -> Value {
    json!({
        "medium": "email",
        "address": "bob@example.org",
        "mxid": mxid,
        "invites": [{
            "medium": "email",
            "address": "bob@example.org",
            "mxid": mxid,
            "room_id": room,
            "sender": sender,
            "signed": is.signed(key, mxid, token),
        }],
    })
}

async fn assert_not_invited(hs: &TestServer, alice: &common::User<'_>, bob: &common::User<'_>, room: &str) {
    let (status, _) = alice
        .call(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(room),
                enc(&bob.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "bob has no membership");
    let (status, _) = bob.join(room).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a private room without an invite");
    let _ = hs;
}

#[tokio::test]
async fn an_unbound_address_is_invited_when_bound_and_can_join() {
    let (hs, is) = start().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let (room, token) = invite_unbound(&hs, &is, &alice).await;

    // Bob binds the address: the identity server tells his server.
    let onbind = onbind(&is, &is.state.key, &room, &alice.user_id, &bob.user_id, &token);
    let (status, answer) = hs
        .request(Method::POST, "/_matrix/federation/v1/3pid/onbind", None, Some(&onbind))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let member = alice.state_event(&room, "m.room.member", &bob.user_id).await;
    assert_eq!(member["membership"], "invite");
    assert_eq!(member["third_party_invite"]["display_name"], "B***");

    let (status, answer) = bob.join(&room).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    bob.wait_for_membership(&room, &bob.user_id, "join").await;
}

#[tokio::test]
async fn a_key_its_identity_server_disowns_is_refused() {
    let (hs, is) = start().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let (room, token) = invite_unbound(&hs, &is, &alice).await;
    is.state.revoked.store(true, std::sync::atomic::Ordering::SeqCst);

    let body = onbind(&is, &is.state.key, &room, &alice.user_id, &bob.user_id, &token);
    let (status, answer) = hs
        .request(Method::POST, "/_matrix/federation/v1/3pid/onbind", None, Some(&body))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_not_invited(&hs, &alice, &bob, &room).await;
}

#[tokio::test]
async fn a_signature_by_another_key_is_refused() {
    let (hs, is) = start().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let (room, token) = invite_unbound(&hs, &is, &alice).await;

    let forger = key_pair();
    let body = onbind(&is, &forger, &room, &alice.user_id, &bob.user_id, &token);
    let (status, answer) = hs
        .request(Method::POST, "/_matrix/federation/v1/3pid/onbind", None, Some(&body))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_not_invited(&hs, &alice, &bob, &room).await;
}

#[tokio::test]
async fn a_join_with_third_party_signed_makes_the_invite_first() {
    let (hs, is) = start().await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let (room, token) = invite_unbound(&hs, &is, &alice).await;

    let mut signed = json!({"mxid": bob.user_id, "sender": alice.user_id, "token": token});
    let mut object: CanonicalJsonObject =
        ruma::canonical_json::try_from_json_map(signed.as_object().unwrap().clone()).unwrap();
    ruma::signatures::sign_json(&is.name, &is.state.key, &mut object).unwrap();
    signed = serde_json::to_value(object).unwrap();
    let (status, answer) = bob
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            Some(&json!({ "third_party_signed": signed })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let member = alice.state_event(&room, "m.room.member", &bob.user_id).await;
    assert_eq!(member["membership"], "join");
}
