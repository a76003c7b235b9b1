//! Binding and unbinding third-party identifiers (3PIDs) through the
//! homeserver, against a small fake identity server: HTTPS on a loopback
//! port with a self-signed certificate (the homeserver runs with
//! `federation_verify_tls` off), answering `3pid/bind` only with the
//! right token and validation session, and `3pid/unbind` only when it is
//! signed by the homeserver (`X-Matrix`, checked against the homeserver's
//! public key) and names the user the 3PID is bound to (404 otherwise, as
//! SyTest's identity server does).

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use base64::Engine as _;
use common::TestServer;
use reqwest::Method;
use ruma::{
    CanonicalJsonObject,
    api::federation::authentication::XMatrix,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
};
use serde_json::{Value, json};

const TOKEN: &str = "swordfish";
const SECRET: &str = "0123456789Az.=_-";

#[derive(Default)]
struct Is {
    /// Its `127.0.0.1:<port>`, known once it listens.
    name: std::sync::OnceLock<String>,
    /// The homeserver whose signature unbinds: (name, key ID, public key).
    homeserver: Mutex<Option<(String, String, String)>>,
    /// Validation sessions: sid → address.
    sessions: Mutex<HashMap<String, String>>,
    /// address → mxid.
    bindings: Mutex<HashMap<String, String>>,
    /// The `mxid` the bind answer names instead of the one asked for.
    answer_mxid: Mutex<Option<String>>,
    /// Each unbind request: (origin it was signed by, body).
    unbinds: Mutex<Vec<(String, Value)>>,
}

fn error(status: StatusCode, errcode: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({"errcode": errcode, "error": errcode})))
}

async fn bind(
    State(is): State<Arc<Is>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return Err(error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"));
    }
    let sid = body["sid"].as_str().unwrap_or_default();
    let address = is.sessions.lock().unwrap().get(sid).cloned();
    let (Some(address), true) = (address, body["client_secret"] == SECRET) else {
        return Err(error(StatusCode::BAD_REQUEST, "M_NO_VALID_SESSION"));
    };
    let mxid = body["mxid"].as_str().unwrap().to_owned();
    is.bindings.lock().unwrap().insert(address.clone(), mxid.clone());
    let named = is.answer_mxid.lock().unwrap().clone().unwrap_or(mxid);
    Ok(Json(json!({
        "medium": "email", "address": address, "mxid": named,
        "not_before": 0, "not_after": 4582425849161u64, "ts": 0,
    })))
}

/// The origin of a request signed by the homeserver the fake knows.
fn signed_by_homeserver(is: &Is, headers: &HeaderMap, body: &Value) -> Option<String> {
    let (hs_name, key_id, public_key) = is.homeserver.lock().unwrap().clone()?;
    let header = headers.get("authorization")?.to_str().ok()?;
    let x_matrix = XMatrix::parse(header).ok()?;
    if x_matrix.origin.as_str() != hs_name || x_matrix.destination.as_ref()?.as_str() != is.name.get()? {
        return None;
    }
    let request = json!({
        "method": "POST",
        "uri": "/_matrix/identity/v2/3pid/unbind",
        "origin": hs_name,
        "destination": is.name.get()?,
        "content": body,
        "signatures": { hs_name.clone(): { x_matrix.key.as_str(): x_matrix.sig.encode() } },
    });
    let object: CanonicalJsonObject =
        ruma::canonical_json::try_from_json_map(request.as_object().unwrap().clone()).ok()?;
    let mut set = PublicKeySet::new();
    set.insert(key_id, Base64::parse(&public_key).unwrap());
    let mut keys = PublicKeyMap::new();
    keys.insert(hs_name.clone(), set);
    ruma::signatures::verify_json(&keys, &object).ok()?;
    Some(hs_name)
}

async fn unbind(
    State(is): State<Arc<Is>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let Some(origin) = signed_by_homeserver(&is, &headers, &body) else {
        return Err(error(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"));
    };
    is.unbinds.lock().unwrap().push((origin, body.clone()));
    let address = body["threepid"]["address"].as_str().unwrap_or_default();
    let mut bindings = is.bindings.lock().unwrap();
    if body["threepid"]["medium"] != "email"
        || bindings.get(address) != body["mxid"].as_str().map(str::to_owned).as_ref()
    {
        return Err(error(StatusCode::NOT_FOUND, "M_NOT_FOUND"));
    }
    bindings.remove(address);
    Ok(Json(json!({})))
}

struct FakeIdentityServer {
    name: String,
    state: Arc<Is>,
    _dir: tempfile::TempDir,
}

impl FakeIdentityServer {
    /// An identity server that accepts unbinds signed by `hs`.
    async fn start(hs: &TestServer) -> FakeIdentityServer {
        let keys = &hs.services().keys;
        let state = Arc::new(Is {
            homeserver: Mutex::new(Some((
                keys.server_name().to_string(),
                keys.key_id(),
                keys.public_key_base64().to_owned(),
            ))),
            ..Is::default()
        });
        let app = Router::new()
            .route("/_matrix/identity/v2/3pid/bind", post(bind))
            .route("/_matrix/identity/v2/3pid/unbind", post(unbind))
            .with_state(state.clone());
        let (name, dir) = common::serve_tls(app);
        state.name.set(name.clone()).unwrap();
        FakeIdentityServer { name, state, _dir: dir }
    }

    /// A validation session for `address`; its sid.
    fn validated(&self, address: &str) -> String {
        let mut sessions = self.state.sessions.lock().unwrap();
        let sid = format!("sid{}", sessions.len());
        sessions.insert(sid.clone(), address.to_owned());
        sid
    }

    fn bound_to(&self, address: &str) -> Option<String> {
        self.state.bindings.lock().unwrap().get(address).cloned()
    }

    fn unbinds(&self) -> Vec<(String, Value)> {
        self.state.unbinds.lock().unwrap().clone()
    }

    /// `user` binds `address` through their homeserver.
    async fn bind_for(&self, user: &common::User<'_>, address: &str) {
        user.ok(
            Method::POST,
            "/_matrix/client/v3/account/3pid/bind",
            Some(&self.bind_body(address)),
        )
        .await;
    }

    fn bind_body(&self, address: &str) -> Value {
        json!({
            "id_server": self.name, "id_access_token": TOKEN,
            "sid": self.validated(address), "client_secret": SECRET,
        })
    }
}

async fn start() -> TestServer {
    TestServer::start_federating().await
}

async fn recorded(hs: &TestServer, user_id: &str) -> Vec<(String, String, String)> {
    let user_id = ruma::UserId::parse(user_id).unwrap();
    hs.services()
        .storage
        .threepid_bindings(&user_id, None)
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.medium, b.address, b.id_server))
        .collect()
}

#[tokio::test]
async fn bind_reaches_the_identity_server_with_the_users_id_and_token_and_is_recorded() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;

    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/3pid/bind",
            Some(&is.bind_body("alice@example.org")),
        )
        .await;
    assert_eq!(body, json!({}));
    assert_eq!(
        is.bound_to("alice@example.org").as_deref(),
        Some(alice.user_id.as_str())
    );
    assert_eq!(
        recorded(&hs, &alice.user_id).await,
        vec![("email".to_owned(), "alice@example.org".to_owned(), is.name.clone())]
    );

    // The unstable path SyTest calls, with a wrong identity server token:
    // the identity server's refusal is passed on, nothing is recorded.
    let mut body = is.bind_body("alice2@example.org");
    body["id_access_token"] = json!("wrong");
    let (status, answer) = alice
        .call(Method::POST, "/_matrix/client/unstable/account/3pid/bind", Some(&body))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(recorded(&hs, &alice.user_id).await.len(), 1);
}

#[tokio::test]
async fn a_bind_the_identity_server_makes_for_someone_else_is_refused() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;
    *is.state.answer_mxid.lock().unwrap() = Some("@mallory:example.org".to_owned());

    let (status, body) = alice
        .call(
            Method::POST,
            "/_matrix/client/unstable/account/3pid/bind",
            Some(&is.bind_body("alice@example.org")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(recorded(&hs, &alice.user_id).await.is_empty());
}

#[tokio::test]
async fn unbind_without_an_identity_server_asks_the_recorded_one_signed_by_this_server() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;
    is.bind_for(&alice, "alice@example.org").await;

    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/unstable/account/3pid/unbind",
            Some(&json!({"medium": "email", "address": "alice@example.org"})),
        )
        .await;
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(is.bound_to("alice@example.org"), None);
    let unbinds = is.unbinds();
    assert_eq!(unbinds.len(), 1);
    assert_eq!(unbinds[0].0, hs.server_name().as_str(), "signed by this server");
    assert_eq!(
        unbinds[0].1,
        json!({"mxid": alice.user_id, "threepid": {"medium": "email", "address": "alice@example.org"}})
    );
    assert!(recorded(&hs, &alice.user_id).await.is_empty());

    // Nothing recorded any more, no identity server named: nobody to ask.
    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&json!({"medium": "email", "address": "alice@example.org"})),
        )
        .await;
    assert_eq!(body["id_server_unbind_result"], "no-support");
    assert_eq!(is.unbinds().len(), 1);
}

#[tokio::test]
async fn unbind_at_a_named_identity_server_reaches_it_and_a_404_is_no_support() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;
    is.bind_for(&alice, "alice@example.org").await;

    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/r0/account/3pid/unbind",
            Some(&json!({"medium": "email", "address": "alice@example.org", "id_server": is.name})),
        )
        .await;
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(is.bound_to("alice@example.org"), None);
    assert!(recorded(&hs, &alice.user_id).await.is_empty());

    // Asked again, the identity server has nothing bound: 404.
    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&json!({"medium": "email", "address": "alice@example.org", "id_server": is.name})),
        )
        .await;
    assert_eq!(body["id_server_unbind_result"], "no-support");
    assert_eq!(is.unbinds().len(), 2);
}

#[tokio::test]
async fn delete_unbinds_a_3pid_bound_out_of_band_at_the_named_identity_server() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;
    // Bound without the homeserver: nothing recorded.
    is.state
        .bindings
        .lock()
        .unwrap()
        .insert("alice@example.org".to_owned(), alice.user_id.clone());

    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/3pid/delete",
            Some(&json!({"medium": "email", "address": "alice@example.org", "id_server": is.name})),
        )
        .await;
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(is.bound_to("alice@example.org"), None);
    assert_eq!(is.unbinds()[0].0, hs.server_name().as_str());

    // The account itself lists no 3PIDs, and says so (clients read the
    // field without looking).
    let threepids = alice.ok(Method::GET, "/_matrix/client/v3/account/3pid", None).await;
    assert_eq!(threepids, json!({ "threepids": [] }));
    let (status, _) = hs
        .request(Method::GET, "/_matrix/client/v3/account/3pid", None, None)
        .await;
    assert_eq!(status, 401, "it needs an access token");
}

#[tokio::test]
async fn delete_without_an_identity_server_unbinds_where_it_was_bound() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;
    is.bind_for(&alice, "alice@example.org").await;

    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/3pid/delete",
            Some(&json!({"medium": "email", "address": "alice@example.org"})),
        )
        .await;
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(is.bound_to("alice@example.org"), None);
    assert!(recorded(&hs, &alice.user_id).await.is_empty());
}

#[tokio::test]
async fn an_unbind_not_signed_by_the_homeserver_the_identity_server_knows_fails() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;
    is.bind_for(&alice, "alice@example.org").await;
    // The identity server now expects another key: this server's
    // signature no longer verifies, so the fake's check is a real one.
    let other =
        ruma::signatures::Ed25519KeyPair::from_der(&ruma::signatures::Ed25519KeyPair::generate(), "0".into()).unwrap();
    if let Some(hs_key) = is.state.homeserver.lock().unwrap().as_mut() {
        hs_key.2 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(other.public_key());
    }

    let (status, body) = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&json!({"medium": "email", "address": "alice@example.org"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        is.bound_to("alice@example.org").as_deref(),
        Some(alice.user_id.as_str())
    );
    assert_eq!(recorded(&hs, &alice.user_id).await.len(), 1, "kept for a later try");
}

#[tokio::test]
async fn deactivation_unbinds_every_recorded_3pid() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;
    for address in ["alice@example.org", "alice@example.com"] {
        alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/account/3pid/bind",
                Some(&is.bind_body(address)),
            )
            .await;
    }

    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            Some(&json!({"auth": {"type": "m.login.password", "password": "secret",
                "identifier": {"type": "m.id.user", "user": alice.user_id}}})),
        )
        .await;
    assert_eq!(body["id_server_unbind_result"], "success");
    assert_eq!(is.bound_to("alice@example.org"), None);
    assert_eq!(is.bound_to("alice@example.com"), None);
    assert_eq!(is.unbinds().len(), 2);
    assert!(recorded(&hs, &alice.user_id).await.is_empty());
}

#[tokio::test]
async fn deactivation_with_an_identity_server_unbinds_there() {
    let hs = start().await;
    let is = FakeIdentityServer::start(&hs).await;
    let elsewhere = FakeIdentityServer::start(&hs).await;
    let alice = hs.register("alice").await;
    is.bind_for(&alice, "alice@example.org").await;

    let body = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            Some(
                &json!({"id_server": elsewhere.name, "auth": {"type": "m.login.password", "password": "secret",
                "identifier": {"type": "m.id.user", "user": alice.user_id}}}),
            ),
        )
        .await;
    // Asked where the request said, which has nothing bound.
    assert_eq!(body["id_server_unbind_result"], "no-support");
    assert_eq!(elsewhere.unbinds().len(), 1);
    assert!(is.unbinds().is_empty());
    assert!(recorded(&hs, &alice.user_id).await.is_empty());
}
