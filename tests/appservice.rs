//! Application services through the real interfaces: weft started with a
//! registration file pointing at a fake application service (an axum server
//! on loopback in this test), spoken to over HTTP on both sides.

mod common;

use std::sync::{Arc, Mutex};

use axum::{Json, Router, extract::Request, http::StatusCode as AxumStatus, response::IntoResponse};
use common::{TestServer, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const AS_TOKEN: &str = "as-secret-token";
const HS_TOKEN: &str = "hs-secret-token";

/// A request the fake application service received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Value,
}

#[derive(Clone)]
struct FakeState {
    received: mpsc::UnboundedSender<Received>,
    /// weft's client API base URL, known once weft has started.
    weft: Arc<Mutex<Option<String>>>,
    /// Transactions to refuse (500) before accepting them.
    refuse_transactions: Arc<Mutex<usize>>,
}

/// The fake application service: records every request; answers
/// transactions and pings with `{}` (refusing the first few transactions,
/// if asked), a user
/// query for `@bridged-*` by registering the user first (as a bridge
/// would) and anything else with 404.
async fn fake_appservice(req: Request, state: FakeState) -> axum::response::Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let _ = state.received.send(Received {
        method: method.clone(),
        path: path.clone(),
        authorization,
        body,
    });
    if path.starts_with("/_matrix/app/v1/transactions/") {
        let mut refuse = state.refuse_transactions.lock().unwrap();
        if *refuse > 0 {
            *refuse -= 1;
            return (AxumStatus::INTERNAL_SERVER_ERROR, Json(json!({}))).into_response();
        }
        return Json(json!({})).into_response();
    }
    if path == "/_matrix/app/v1/ping" {
        return Json(json!({})).into_response();
    }
    let decoded = path.replace("%40", "@").replace("%3A", ":");
    if let Some(user_id) = decoded.strip_prefix("/_matrix/app/v1/users/")
        && user_id.starts_with("@bridged-")
    {
        let base = state.weft.lock().unwrap().clone().unwrap();
        let localpart = user_id.trim_start_matches('@').split(':').next().unwrap();
        let answer = reqwest::Client::new()
            .post(format!("{base}/_matrix/client/v3/register"))
            .bearer_auth(AS_TOKEN)
            .json(&json!({ "type": "m.login.application_service", "username": localpart }))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "the fake bridge registers {user_id}");
        return Json(json!({})).into_response();
    }
    (AxumStatus::NOT_FOUND, Json(json!({ "errcode": "M_NOT_FOUND" }))).into_response()
}

struct Rig {
    server: TestServer,
    refuse_transactions: Arc<Mutex<usize>>,
    _registration_dir: tempfile::TempDir,
}

/// weft with one application service: users `@bridged-*` (exclusive) and
/// `@_shared-*` (not exclusive), aliases `#bridged-*` (exclusive), sender
/// `@bridge-bot`. With it, what the fake application service receives.
async fn rig() -> (Rig, Inbox) {
    let (tx, received) = mpsc::unbounded_channel();
    let weft = Arc::new(Mutex::new(None));
    let refuse_transactions = Arc::new(Mutex::new(0));
    let state = FakeState {
        received: tx,
        weft: weft.clone(),
        refuse_transactions: refuse_transactions.clone(),
    };
    let app = Router::new().fallback(move |req: Request| fake_appservice(req, state.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.yaml");
    std::fs::write(
        &path,
        format!(
            "id: bridge\nurl: http://{addr}/\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\n\
             sender_localpart: bridge-bot\nrate_limited: false\nprotocols: [irc]\n\
             namespaces:\n  users:\n    - regex: '@bridged-.*'\n      exclusive: true\n\
             \x20   - regex: '@_shared-.*'\n      exclusive: false\n\
             \x20 aliases:\n    - regex: '#bridged-.*'\n      exclusive: true\n  rooms: []\n"
        ),
    )
    .unwrap();
    let server = TestServer::start_with(|c| c.app_service_config_files = vec![path.clone()]).await;
    *weft.lock().unwrap() = Some(server.base());
    let rig = Rig {
        server,
        refuse_transactions,
        _registration_dir: dir,
    };
    (rig, Inbox { received })
}

/// The requests the fake application service received.
struct Inbox {
    received: mpsc::UnboundedReceiver<Received>,
}

impl Inbox {
    /// The next request to the fake application service matching `want`
    /// (others are skipped), within 10 seconds.
    async fn next_request(&mut self, what: &str, want: impl Fn(&Received) -> bool) -> Received {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(r)) if want(&r) => return r,
                Ok(Some(_)) => continue,
                _ => panic!("the application service was not sent {what}"),
            }
        }
    }

    /// The next transaction carrying an event matching `want`; returns the
    /// transaction and that event.
    async fn next_event(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> (Received, Value) {
        loop {
            let txn = self
                .next_request(what, |r| {
                    r.method == "PUT" && r.path.starts_with("/_matrix/app/v1/transactions/")
                })
                .await;
            let found = txn.body["events"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| want(e))
                .cloned();
            if let Some(event) = found {
                return (txn, event);
            }
        }
    }
}

impl Rig {
    /// A request with the application service's token, as `user_id` if
    /// given.
    async fn as_call(
        &self,
        method: Method,
        path: &str,
        user_id: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let path = match user_id {
            Some(user) => format!(
                "{path}{}user_id={}",
                if path.contains('?') { '&' } else { '?' },
                enc(user)
            ),
            None => path.to_owned(),
        };
        self.server.request(method, &path, Some(AS_TOKEN), body).await
    }

    async fn as_register(&self, localpart: &str) -> (StatusCode, Value) {
        let body = json!({ "type": "m.login.application_service", "username": localpart });
        self.as_call(Method::POST, "/_matrix/client/v3/register", None, Some(&body))
            .await
    }
}

#[tokio::test]
async fn an_appservice_registers_the_users_of_its_namespaces_and_no_one_else_may() {
    let (rig, _) = rig().await;
    let (status, body) = rig.as_register("bridged-alice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@bridged-alice:localhost");
    assert!(
        body["access_token"].is_string() && body["device_id"].is_string(),
        "{body}"
    );

    let inhibited = json!({ "type": "m.login.application_service", "username": "_shared-bob", "inhibit_login": true });
    let (status, body) = rig
        .as_call(Method::POST, "/_matrix/client/v3/register", None, Some(&inhibited))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@_shared-bob:localhost");
    assert!(
        body.get("access_token").is_none() && body.get("device_id").is_none(),
        "{body}"
    );

    // Outside its namespaces.
    let (status, body) = rig.as_register("carol").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_EXCLUSIVE")),
        "{body}"
    );
    // Without the application service's token.
    let (status, _) = rig
        .server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "type": "m.login.application_service", "username": "bridged-x" })),
        )
        .await;
    assert!(status.is_client_error(), "{status}");

    // A regular user may not take a name in the exclusive namespace, but
    // may in the shared one.
    let (status, body) = rig
        .server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(&json!({ "username": "bridged-eve", "password": "secret", "auth": { "type": "m.login.dummy" } })),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_EXCLUSIVE")),
        "{body}"
    );
    let user = rig.server.register("_shared-dave").await;

    // Nor an alias in the exclusive alias namespace; the service may.
    let room = user.create_room(json!({})).await;
    let alias = "#bridged-room:localhost";
    let (status, body) = user
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            Some(&json!({ "room_id": room })),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_EXCLUSIVE")),
        "{body}"
    );
    let (status, body) = rig
        .as_call(
            Method::PUT,
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            None,
            Some(&json!({ "room_id": room })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let found = user
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            None,
        )
        .await;
    assert_eq!(found["room_id"], room.as_str());
}

#[tokio::test]
async fn an_appservice_acts_as_its_registered_users_only() {
    let (rig, _) = rig().await;
    let whoami = "/_matrix/client/v3/account/whoami";
    let (status, body) = rig.as_call(Method::GET, whoami, None, None).await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (StatusCode::OK, Some("@bridge-bot:localhost")),
        "{body}"
    );

    // A user of its namespace it has not registered.
    let (status, body) = rig
        .as_call(Method::GET, whoami, Some("@bridged-ann:localhost"), None)
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{body}"
    );
    rig.as_register("bridged-ann").await;
    let (status, body) = rig
        .as_call(Method::GET, whoami, Some("@bridged-ann:localhost"), None)
        .await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (StatusCode::OK, Some("@bridged-ann:localhost")),
        "{body}"
    );

    // It logs in as its user; no one else can log in that way.
    let login = json!({
        "type": "m.login.application_service",
        "identifier": { "type": "m.id.user", "user": "bridged-ann" },
    });
    let (status, body) = rig
        .as_call(Method::POST, "/_matrix/client/v3/login", None, Some(&login))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@bridged-ann:localhost");
    let (status, me) = rig
        .server
        .request(Method::GET, whoami, body["access_token"].as_str(), None)
        .await;
    assert_eq!(
        (status, me["user_id"].as_str()),
        (StatusCode::OK, Some("@bridged-ann:localhost")),
        "{me}"
    );
    let (status, body) = rig
        .server
        .request(Method::POST, "/_matrix/client/v3/login", None, Some(&login))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A user outside its namespaces, registered or not.
    let outsider = rig.server.register("outsider").await;
    let (status, body) = rig.as_call(Method::GET, whoami, Some(&outsider.user_id), None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{body}"
    );
    let displayname = json!({ "displayname": "hijacked" });
    let (status, _) = rig
        .as_call(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&outsider.user_id)),
            Some(&outsider.user_id),
            Some(&displayname),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // It deactivates its user without a password.
    let (status, body) = rig
        .as_call(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            Some("@bridged-ann:localhost"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = rig
        .as_call(Method::GET, whoami, Some("@bridged-ann:localhost"), None)
        .await;
    assert_eq!(body["errcode"], "M_USER_DEACTIVATED", "{status} {body}");
}

#[tokio::test]
async fn events_concerning_an_appservice_are_pushed_with_its_hs_token_and_retried() {
    let (rig, mut inbox) = rig().await;
    rig.as_register("bridged-gus").await;
    let creator = rig.server.register("creator").await;
    let room = creator.create_room(json!({ "preset": "public_chat" })).await;
    // Nothing in the room concerns the service yet.
    creator.send_text(&room, "t0", "before").await;

    // The first try of the next transaction fails: it is sent again.
    *rig.refuse_transactions.lock().unwrap() = 1;
    let (status, body) = rig
        .as_call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            Some("@bridged-gus:localhost"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let is_join = |e: &Value| e["type"] == "m.room.member" && e["state_key"] == "@bridged-gus:localhost";
    let (first, event) = inbox.next_event("the ghost's join", is_join).await;
    assert_eq!(first.authorization.as_deref(), Some(&*format!("Bearer {HS_TOKEN}")));
    assert_eq!(event["room_id"], room.as_str());
    assert_eq!(event["content"]["membership"], "join");
    let (retry, _) = inbox.next_event("the ghost's join again", is_join).await;
    assert_eq!(retry.path, first.path, "a retry keeps its transaction ID");

    // Now that a user of its namespace is in the room, everything there
    // concerns it, under a new transaction ID.
    creator.send_text(&room, "t1", "hello bridge").await;
    let (txn, event) = inbox
        .next_event("the creator's message", |e| e["content"]["body"] == "hello bridge")
        .await;
    assert_ne!(txn.path, first.path);
    assert_eq!(event["sender"], creator.user_id.as_str());
    // The message from before the ghost came was never sent.
    assert!(!txn.body.to_string().contains("\"before\""));
}

#[tokio::test]
async fn inviting_an_unknown_user_of_its_namespace_asks_the_appservice() {
    let (rig, mut inbox) = rig().await;
    let creator = rig.server.register("host").await;
    let room = creator.create_room(json!({})).await;
    let invite = |user: &str| json!({ "user_id": user });

    // The fake bridge knows @bridged-*: it registers the user when asked.
    let (status, body) = creator
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&invite("@bridged-new:localhost")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let query = inbox
        .next_request("a user query", |r| {
            r.method == "GET" && r.path.contains("/_matrix/app/v1/users/")
        })
        .await;
    assert_eq!(query.path, "/_matrix/app/v1/users/@bridged-new:localhost");
    assert_eq!(query.authorization.as_deref(), Some(&*format!("Bearer {HS_TOKEN}")));

    // It does not know @_shared-*: the invite fails.
    let (status, _) = creator
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&invite("@_shared-nobody:localhost")),
        )
        .await;
    assert!(status.is_client_error(), "{status}");
    inbox
        .next_request("the second user query", |r| {
            r.path.ends_with("/users/@_shared-nobody:localhost")
        })
        .await;
}

#[tokio::test]
async fn a_bad_registration_file_stops_the_server_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "id: broken\nurl: null\nas_token: a\nhs_token: h\nsender_localpart: bot\nnamespaces:\n  users:\n    - regex: '@(unclosed'\n      exclusive: true\n").unwrap();
    let config = weft::config::Config {
        data_dir: dir.path().join("data"),
        database_url: common::fresh_database_url(),
        client_listen: "127.0.0.1:0".parse().unwrap(),
        federation_listen: "127.0.0.1:0".parse().unwrap(),
        app_service_config_files: vec![path],
        ..Default::default()
    };
    let error = match weft::server::start(config).await {
        Ok(_) => panic!("a bad registration must stop the server"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("broken.yaml") && error.contains("namespaces.users"),
        "{error}"
    );
}

#[tokio::test]
async fn an_appservice_pings_itself_through_the_server() {
    let (rig, mut inbox) = rig().await;
    let (status, body) = rig
        .as_call(
            Method::POST,
            "/_matrix/client/v1/appservice/bridge/ping",
            None,
            Some(&json!({ "transaction_id": "ping-1" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    let ping = inbox
        .next_request("the ping", |r| r.path == "/_matrix/app/v1/ping")
        .await;
    assert_eq!(ping.method, "POST");
    assert_eq!(ping.authorization.as_deref(), Some(&*format!("Bearer {HS_TOKEN}")));
    assert_eq!(ping.body["transaction_id"], "ping-1");

    // Another service's ID, or a user's token: refused.
    let (status, body) = rig
        .as_call(
            Method::POST,
            "/_matrix/client/v1/appservice/other/ping",
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{body}"
    );
    let user = rig.server.register("pinger").await;
    let (status, _) = user
        .call(
            Method::POST,
            "/_matrix/client/v1/appservice/bridge/ping",
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_appservice_room_list_is_apart_from_the_main_one() {
    let (rig, _) = rig().await;
    let user = rig.server.register("lister").await;
    let room = user.create_room(json!({ "preset": "public_chat" })).await;
    let list_path = format!("/_matrix/client/v3/directory/list/appservice/irc-net/{}", enc(&room));
    let listed = |body: &Value| {
        body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["room_id"] == room.as_str())
    };
    let rooms = |filter: Value| {
        let user = &user;
        async move {
            user.ok(Method::POST, "/_matrix/client/v3/publicRooms", Some(&filter))
                .await
        }
    };

    // Only the service may change its list.
    let (status, _) = user
        .call(Method::PUT, &list_path, Some(&json!({ "visibility": "public" })))
        .await;
    assert!(status.is_client_error(), "{status}");
    let (status, body) = rig
        .as_call(Method::PUT, &list_path, None, Some(&json!({ "visibility": "public" })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert!(!listed(&rooms(json!({})).await), "not in the main list");
    assert!(listed(
        &rooms(json!({ "third_party_instance_id": "bridge|irc-net" })).await
    ));
    assert!(!listed(
        &rooms(json!({ "third_party_instance_id": "bridge|other-net" })).await
    ));
    assert!(listed(&rooms(json!({ "include_all_networks": true })).await));

    let (status, body) = rig.as_call(Method::DELETE, &list_path, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!listed(
        &rooms(json!({ "third_party_instance_id": "bridge|irc-net" })).await
    ));
}

#[tokio::test]
async fn events_an_appservice_has_not_acknowledged_outlive_a_restart() {
    let (mut rig, mut inbox) = rig().await;
    rig.as_register("bridged-kim").await;
    let creator = rig.server.register("keeper").await;
    let (room, token) = (creator.create_room(json!({})).await, creator.token.clone());
    // The service refuses every transaction until the server restarts.
    *rig.refuse_transactions.lock().unwrap() = usize::MAX;
    let (status, body) = rig
        .as_call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            None,
            Some(&json!({ "user_id": "@bridged-kim:localhost" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the bridge bot is not in the room: {body}"
    );
    let (status, body) = rig
        .server
        .request(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&token),
            Some(&json!({ "user_id": "@bridged-kim:localhost" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let is_invite = |e: &Value| e["type"] == "m.room.member" && e["state_key"] == "@bridged-kim:localhost";
    let (refused, _) = inbox.next_event("the invite", is_invite).await;

    // What the stopped server sent is forgotten: what comes next comes
    // from the restarted one.
    rig.server.restart().await;
    while inbox.received.try_recv().is_ok() {}
    *rig.refuse_transactions.lock().unwrap() = 0;
    // Sent again after the restart, under the same transaction ID, until
    // the service takes it.
    let (again, _) = inbox.next_event("the invite after the restart", is_invite).await;
    assert_eq!(again.path, refused.path);
}
