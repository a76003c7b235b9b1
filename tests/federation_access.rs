//! Who may ask the federation API what: request signatures, ACLs, history
//! visibility, bad parameters. Each refusal has its status and errcode,
//! and nothing leaks.

mod common;

use common::{TestServer, federation::remote_join};
use http::Method;
use ruma::{OwnedRoomId, OwnedUserId, api::federation::authentication::XMatrix, serde::Base64};
use serde_json::{Value, json};

/// A federation request to `a` built by hand, signed as `b` unless told
/// otherwise, then possibly tampered with.
struct Raw<'a> {
    a: &'a TestServer,
    b: &'a TestServer,
}

impl Raw<'_> {
    fn client() -> reqwest::Client {
        weft::tls::install_crypto_provider();
        reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .unwrap()
    }

    /// Signs (method, path, body) as B for `destination`.
    fn sign(&self, method: &Method, path: &str, body: Option<&Value>, destination: &str) -> XMatrix {
        common::federation::x_matrix(self.b, method, path, body, destination)
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>, auth: Option<String>) -> (u16, Value) {
        let mut req = Self::client().request(method, format!("{}{path}", self.a.federation_base()));
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
    }

    /// A correctly signed request.
    async fn signed(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = self
            .sign(&method, path, body, self.a.server_name().as_str())
            .to_string();
        self.send(method, path, body, Some(auth)).await
    }
}

fn errcode(body: &Value) -> &str {
    body["errcode"].as_str().unwrap_or_default()
}

struct Rig {
    a: TestServer,
    b: TestServer,
    room: OwnedRoomId,
    event: String,
}

async fn rig() -> Rig {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let room: OwnedRoomId = alice
        .create_room(json!({ "preset": "public_chat" }))
        .await
        .parse()
        .unwrap();
    let bob: OwnedUserId = format!("@bob:{}", b.server_name()).try_into().unwrap();
    remote_join(&a, &b, &room, &bob).await;
    let (_, sent) = alice.send_text(room.as_str(), "t", "hello").await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    Rig { a, b, room, event }
}

fn enc(s: &str) -> String {
    common::enc(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_signature_are_refused() {
    let rig = rig().await;
    let raw = Raw { a: &rig.a, b: &rig.b };
    let path = format!("/_matrix/federation/v1/event/{}", enc(&rig.event));

    // The control: correctly signed, it works.
    let (status, body) = raw.signed(Method::GET, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"].as_array().unwrap().len(), 1);

    // No header.
    let (status, body) = raw.send(Method::GET, &path, None, None).await;
    assert_eq!((status, errcode(&body)), (401, "M_UNAUTHORIZED"), "{body}");

    // An X-Matrix header naming no server (a port that is not a number):
    // a bad request.
    let malformed = r#"X-Matrix origin="localhost:http",key="ed25519:1",sig="c2lnbmF0dXJl""#;
    let (status, body) = raw.send(Method::GET, &path, None, Some(malformed.to_owned())).await;
    assert_eq!((status, errcode(&body)), (400, "M_UNAUTHORIZED"), "{body}");

    // A signature of another request.
    let other = raw.sign(
        &Method::GET,
        "/_matrix/federation/v1/event/%24other",
        None,
        rig.a.server_name().as_str(),
    );
    let (status, body) = raw.send(Method::GET, &path, None, Some(other.to_string())).await;
    assert_eq!((status, errcode(&body)), (401, "M_UNAUTHORIZED"), "{body}");

    // Signed for another destination.
    let elsewhere = raw.sign(&Method::GET, &path, None, "other.example");
    let (status, body) = raw.send(Method::GET, &path, None, Some(elsewhere.to_string())).await;
    assert_eq!((status, errcode(&body)), (401, "M_UNAUTHORIZED"), "{body}");

    // A key B does not have.
    let good = raw.sign(&Method::GET, &path, None, rig.a.server_name().as_str());
    let unknown_key = XMatrix::new(
        good.origin.clone(),
        rig.a.server_name(),
        "ed25519:nosuchkey".try_into().unwrap(),
        good.sig.clone(),
    );
    let (status, body) = raw.send(Method::GET, &path, None, Some(unknown_key.to_string())).await;
    assert_eq!((status, errcode(&body)), (401, "M_UNAUTHORIZED"), "{body}");

    // An origin whose keys cannot be had.
    let nobody = XMatrix::new(
        "127.0.0.1:1".try_into().unwrap(),
        rig.a.server_name(),
        good.key.clone(),
        good.sig.clone(),
    );
    let (status, body) = raw.send(Method::GET, &path, None, Some(nobody.to_string())).await;
    assert_eq!((status, errcode(&body)), (401, "M_UNAUTHORIZED"), "{body}");

    // A garbled signature.
    let garbled = XMatrix::new(
        good.origin.clone(),
        rig.a.server_name(),
        good.key.clone(),
        Base64::new(vec![7u8; 64]),
    );
    let (status, _) = raw.send(Method::GET, &path, None, Some(garbled.to_string())).await;
    assert_eq!(status, 401);

    // A tampered body.
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", enc(rig.room.as_str()));
    let signed_body = json!({ "earliest_events": [], "latest_events": [rig.event], "limit": 10 });
    let sent_body = json!({ "earliest_events": [], "latest_events": [rig.event], "limit": 11 });
    let auth = raw.sign(&Method::POST, &path, Some(&signed_body), rig.a.server_name().as_str());
    let (status, body) = raw
        .send(Method::POST, &path, Some(&sent_body), Some(auth.to_string()))
        .await;
    assert_eq!((status, errcode(&body)), (401, "M_UNAUTHORIZED"), "{body}");
    let (status, body) = raw.signed(Method::POST, &path, Some(&signed_body)).await;
    assert_eq!(status, 200, "the untampered request works: {body}");

    // The unauthenticated endpoints need no signature.
    let (status, body) = raw.send(Method::GET, "/_matrix/key/v2/server", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["server_name"], rig.a.server_name().as_str());
    let (status, _) = raw
        .send(Method::GET, "/_matrix/federation/v1/version", None, None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_unknown_things() {
    let rig = rig().await;
    let raw = Raw { a: &rig.a, b: &rig.b };
    let room = enc(rig.room.as_str());
    let event = enc(&rig.event);
    for (path, status, code) in [
        (
            format!("/_matrix/federation/v1/backfill/{room}?v={event}&limit=abc"),
            400,
            "M_INVALID_PARAM",
        ),
        (
            format!("/_matrix/federation/v1/backfill/{room}?limit=10"),
            400,
            "M_MISSING_PARAM",
        ),
        (
            format!("/_matrix/federation/v1/backfill/{room}?v=not-an-event-id&limit=10"),
            400,
            "M_INVALID_PARAM",
        ),
        (
            format!("/_matrix/federation/v1/event/{}", enc("$nosuchevent")),
            404,
            "M_NOT_FOUND",
        ),
        (
            format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={event}",
                enc("!nosuchroom:localhost")
            ),
            404,
            "M_NOT_FOUND",
        ),
        (
            format!(
                "/_matrix/federation/v1/state_ids/{room}?event_id={}",
                enc("$nosuchevent")
            ),
            404,
            "M_NOT_FOUND",
        ),
        (
            format!("/_matrix/federation/v1/state_ids/{room}"),
            400,
            "M_MISSING_PARAM",
        ),
        (
            "/_matrix/federation/v1/no_such_endpoint".to_owned(),
            404,
            "M_UNRECOGNIZED",
        ),
    ] {
        let (got, body) = raw.signed(Method::GET, &path, None).await;
        assert_eq!((got, errcode(&body)), (status, code), "{path}: {body}");
    }
    // A limit over the server's maximum is capped.
    let (status, body) = raw
        .signed(
            Method::GET,
            &format!("/_matrix/federation/v1/backfill/{room}?v={event}&limit=100000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["pdus"].as_array().unwrap().len() <= weft::federation_api::MAX_HISTORY_PAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_acl_denies_and_nothing_leaks() {
    let rig = rig().await;
    let raw = Raw { a: &rig.a, b: &rig.b };
    // before the ACL: a get_missing_events without its lists asks for
    // nothing, and gets nothing (as Synapse answers it)
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", enc(rig.room.as_str()));
    let (status, body) = raw.signed(Method::POST, &path, Some(&json!({}))).await;
    assert_eq!((status, body.clone()), (200, json!({ "events": [] })), "{path}");
    let alice_token = {
        let (status, body) = rig
            .a
            .request(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(&json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "secret" })),
            )
            .await;
        assert_eq!(status, 200);
        body["access_token"].as_str().unwrap().to_owned()
    };
    let (status, body) = rig
        .a
        .request(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.server_acl",
                enc(rig.room.as_str())
            ),
            Some(&alice_token),
            Some(&json!({ "allow": ["*"], "deny": [], "allow_ip_literals": false })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = enc(rig.room.as_str());
    let event = enc(&rig.event);
    for path in [
        format!("/_matrix/federation/v1/event/{event}"),
        format!("/_matrix/federation/v1/backfill/{room}?v={event}&limit=10"),
        format!("/_matrix/federation/v1/state/{room}?event_id={event}"),
        format!("/_matrix/federation/v1/state_ids/{room}?event_id={event}"),
        format!("/_matrix/federation/v1/event_auth/{room}/{event}"),
        format!("/_matrix/federation/v1/timestamp_to_event/{room}?ts=1&dir=f"),
    ] {
        let (status, body) = raw.signed(Method::GET, &path, None).await;
        assert_eq!((status, errcode(&body)), (403, "M_FORBIDDEN"), "{path}: {body}");
        assert!(
            body.get("pdus").is_none() && body.get("pdu_ids").is_none() && body.get("event_id").is_none(),
            "nothing leaks: {body}"
        );
    }
    // who asks is checked before what is asked: a bad body gets 403 too
    let path = format!("/_matrix/federation/v1/get_missing_events/{room}");
    let (status, body) = raw.signed(Method::POST, &path, Some(&json!({}))).await;
    assert_eq!((status, errcode(&body)), (403, "M_FORBIDDEN"), "{path}: {body}");
}

/// `/timestamp_to_event`: for servers in the room, from this server's own
/// timeline; bad parameters are 400s; outsiders get 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_to_event_for_servers() {
    let rig = rig().await;
    let raw = Raw { a: &rig.a, b: &rig.b };
    let room = enc(rig.room.as_str());
    let path = |query: &str| format!("/_matrix/federation/v1/timestamp_to_event/{room}?{query}");
    let far = 4_000_000_000_000u64;
    let (status, body) = raw.signed(Method::GET, &path(&format!("ts={far}&dir=b")), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event_id"], rig.event.as_str(), "the newest event");
    assert!(body["origin_server_ts"].as_u64().is_some_and(|ts| ts > 0));
    let (status, body) = raw.signed(Method::GET, &path("ts=1&dir=b"), None).await;
    assert_eq!((status, errcode(&body)), (404, "M_NOT_FOUND"), "{body}");
    let (status, body) = raw.signed(Method::GET, &path(&format!("ts={far}&dir=f")), None).await;
    assert_eq!((status, errcode(&body)), (404, "M_NOT_FOUND"), "{body}");
    for (query, code) in [
        ("dir=f", "M_MISSING_PARAM"),
        ("ts=1", "M_MISSING_PARAM"),
        ("ts=x&dir=f", "M_INVALID_PARAM"),
        ("ts=1&dir=up", "M_INVALID_PARAM"),
    ] {
        let (status, body) = raw.signed(Method::GET, &path(query), None).await;
        assert_eq!((status, errcode(&body)), (400, code), "{query}: {body}");
    }
    let unknown = format!(
        "/_matrix/federation/v1/timestamp_to_event/{}?ts=1&dir=f",
        enc("!unknown:nowhere")
    );
    let (status, body) = raw.signed(Method::GET, &unknown, None).await;
    assert_eq!((status, errcode(&body)), (404, "M_NOT_FOUND"), "{body}");
    // A server with nobody in the (not world-readable) room.
    let c = TestServer::start_federating().await;
    let outsider = Raw { a: &rig.a, b: &c };
    let (status, body) = outsider
        .signed(Method::GET, &path(&format!("ts={far}&dir=b")), None)
        .await;
    assert_eq!((status, errcode(&body)), (403, "M_FORBIDDEN"), "{body}");
    assert!(body.get("event_id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_visibility_for_servers() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let raw = Raw { a: &a, b: &b };

    // A room B has no user in, not world-readable: nothing at all.
    let closed: OwnedRoomId = alice
        .create_room(json!({ "preset": "public_chat" }))
        .await
        .parse()
        .unwrap();
    let (_, sent) = alice.send_text(closed.as_str(), "c", "closed").await;
    let closed_event = sent["event_id"].as_str().unwrap().to_owned();
    for path in [
        format!("/_matrix/federation/v1/event/{}", enc(&closed_event)),
        format!(
            "/_matrix/federation/v1/backfill/{}?v={}&limit=10",
            enc(closed.as_str()),
            enc(&closed_event)
        ),
    ] {
        let (status, body) = raw.signed(Method::GET, &path, None).await;
        assert_eq!((status, errcode(&body)), (403, "M_FORBIDDEN"), "{path}: {body}");
    }

    // A `joined` room: what was said before B's user joined comes redacted.
    let room: OwnedRoomId = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } }]
        }))
        .await
        .parse()
        .unwrap();
    alice.send_text(room.as_str(), "1", "before bob").await;
    let bob: OwnedUserId = format!("@bob:{}", b.server_name()).try_into().unwrap();
    remote_join(&a, &b, &room, &bob).await;
    let (_, sent) = alice.send_text(room.as_str(), "2", "after bob").await;
    let latest = sent["event_id"].as_str().unwrap().to_owned();
    let (status, body) = raw
        .signed(
            Method::GET,
            &format!(
                "/_matrix/federation/v1/backfill/{}?v={}&limit=100",
                enc(room.as_str()),
                enc(&latest)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let messages: Vec<&Value> = body["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect();
    assert_eq!(messages.len(), 2, "both messages are in the DAG B receives");
    assert_eq!(messages[0]["content"]["body"], "after bob");
    assert_eq!(
        messages[1]["content"],
        json!({}),
        "the earlier one is redacted: {}",
        messages[1]
    );
    // Redacted events still carry the signatures and hashes of the original.
    assert!(messages[1]["hashes"]["sha256"].is_string() && messages[1]["signatures"].is_object());

    // World-readable history is open to servers with nobody in the room.
    let open: OwnedRoomId = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "world_readable" } }]
        }))
        .await
        .parse()
        .unwrap();
    let (_, sent) = alice.send_text(open.as_str(), "o", "for everyone").await;
    let open_event = sent["event_id"].as_str().unwrap();
    let (status, body) = raw
        .signed(
            Method::GET,
            &format!("/_matrix/federation/v1/event/{}", enc(open_event)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pdus"][0]["content"]["body"], "for everyone");
}
