//! A hostile remote homeserver, written here and not in weft: its own
//! HTTPS federation listener on a loopback port (self-signed certificate),
//! its own ed25519 key, its own view of the rooms it joined or created. It
//! builds, hashes and signs its events itself, and can corrupt them on
//! purpose; it answers weft's federation requests (`/get_missing_events`,
//! `/event`, `/state_ids`, `/state`, `/event_auth`, `/backfill`, `/send`,
//! and for the rooms it holds `/make_join` and `/send_join`, partial state
//! included) from the events it holds, the way a [`Behaviour`] says, and
//! records every request.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, ServerName, UserId,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    events::TimelineEventType,
    room_version_rules::RoomVersionRules,
    serde::Base64,
    signatures::KeyPair,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weft::keys::ServerKeys;

/// `(type, state_key)` → event ID.
pub type StateMap = BTreeMap<(String, String), OwnedEventId>;

/// How the hostile server answers weft.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// `/get_missing_events` gets the events asked for; else none at all.
    pub serve_missing_events: bool,
    /// `/backfill` gets history; else none at all.
    pub serve_backfill: bool,
    /// How long a `/backfill` answer takes (a slow server).
    pub backfill_delay: std::time::Duration,
    /// How long a `/get_missing_events` answer takes (a slow server).
    pub missing_events_delay: std::time::Duration,
    /// How long the answer for its keys (`/_matrix/key/v2/server`) takes:
    /// an origin that never answers.
    pub key_delay: std::time::Duration,
    /// `/send` is acknowledged (200); else refused with 503, as a server
    /// that is down behind its proxy.
    pub accept_transactions: bool,
    /// Added to every `/get_missing_events` answer (junk, forgeries; all
    /// of it when the missing events are not served).
    pub extra_missing_events: Vec<Value>,
    /// `/send` is acknowledged with `{}`, without the `pdus` the spec
    /// has (as SyTest's server answers).
    pub bare_transaction_answer: bool,
    /// `/state_ids` and `/state` answer only at these events (404 at the
    /// others), as SyTest's server answers only where it planned to.
    pub state_only_at: Option<Vec<OwnedEventId>>,
    /// `/get_missing_events` gives at most this many events (the most
    /// recent), whatever limit weft asks for.
    pub missing_events_limit: Option<usize>,
    /// `/send_join` with `omit_members=true` gets a partial state (MSC3706):
    /// no member events but the joiner's own. Else the full state, always.
    pub serve_partial_state: bool,
    /// `/state` and `/state_ids` are answered; else refused with 503, as a
    /// server that is down behind its proxy.
    pub serve_state: bool,
    /// Added to the state of every `/send_join` answer (forgeries).
    pub extra_join_state: Vec<Value>,
    /// `/event` refuses these (404), held or not.
    pub withheld_events: Vec<OwnedEventId>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            serve_missing_events: true,
            serve_backfill: true,
            backfill_delay: std::time::Duration::ZERO,
            missing_events_delay: std::time::Duration::ZERO,
            key_delay: std::time::Duration::ZERO,
            accept_transactions: true,
            extra_missing_events: Vec::new(),
            bare_transaction_answer: false,
            state_only_at: None,
            missing_events_limit: None,
            serve_partial_state: true,
            serve_state: true,
            extra_join_state: Vec::new(),
            withheld_events: Vec::new(),
        }
    }
}

/// A request weft made to the hostile server.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, percent-decoded.
    pub path: String,
    /// Path and query, as sent.
    pub raw_path: String,
    pub body: Value,
    /// The `X-Matrix` origin, if the request had one.
    pub origin: Option<String>,
}

/// A `/send` transaction weft made to the hostile server.
#[derive(Debug, Clone)]
pub struct ReceivedTxn {
    pub origin: String,
    pub txn_id: String,
    pub event_ids: Vec<OwnedEventId>,
    /// Whether it was answered 200 (else 503).
    pub acknowledged: bool,
}

/// A signed event: its ID and the PDU as it goes over the wire.
#[derive(Debug, Clone)]
pub struct Built {
    pub id: OwnedEventId,
    pub pdu: Value,
}

/// The hostile server's view of a room.
#[derive(Debug, Clone)]
pub struct RoomView {
    pub version: RoomVersionId,
    /// The current state as this server sees it.
    pub state: StateMap,
    pub extremities: Vec<OwnedEventId>,
    /// The state before each event it knows that.
    pub state_before: HashMap<OwnedEventId, StateMap>,
}

#[derive(Default)]
struct Inner {
    events: HashMap<OwnedEventId, Value>,
    rooms: HashMap<OwnedRoomId, RoomView>,
    seen: Vec<Seen>,
    transactions: Vec<ReceivedTxn>,
    behaviour: Behaviour,
}

struct Shared {
    name: OwnedServerName,
    keys: Arc<ServerKeys>,
    inner: Mutex<Inner>,
}

pub struct Hostile {
    pub name: OwnedServerName,
    pub addr: SocketAddr,
    pub keys: Arc<ServerKeys>,
    shared: Arc<Shared>,
    handle: axum_server::Handle<SocketAddr>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}

pub fn rules(version: &RoomVersionId) -> RoomVersionRules {
    version.rules().expect("a known room version")
}

fn to_object(value: &Value) -> CanonicalJsonObject {
    serde_json::from_value(value.clone()).expect("canonical JSON")
}

/// The event ID of a PDU in a room of `version`.
pub fn event_id_of(version: &RoomVersionId, pdu: &Value) -> OwnedEventId {
    let hash = ruma::signatures::reference_hash(&to_object(pdu), &rules(version)).expect("reference hash");
    OwnedEventId::try_from(format!("${hash}")).expect("event ID")
}

fn ids(value: &Value) -> Vec<OwnedEventId> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()?.try_into().ok()).collect())
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn enc(s: &str) -> String {
    // Path segments: everything but unreserved characters.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Hostile {
    /// Starts the hostile server on a free loopback port; its name is
    /// `127.0.0.1:<port>`.
    pub async fn start() -> Hostile {
        weft::tls::install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let name = OwnedServerName::try_from(format!("127.0.0.1:{}", addr.port())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(ServerKeys::load_or_generate(dir.path(), name.clone()).expect("hostile key"));
        let (cert, key) = weft::tls::certificate_files(dir.path(), name.as_str(), None).expect("certificate");
        let tls = weft::tls::server_config(&cert, &key).expect("TLS config");
        let shared = Arc::new(Shared {
            name: name.clone(),
            keys: keys.clone(),
            inner: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let handle = axum_server::Handle::new();
        let server =
            axum_server::tls_rustls::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(tls))
                .expect("hostile listener")
                .handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Hostile {
            name,
            addr,
            keys,
            shared,
            handle,
            http,
            _dir: dir,
        }
    }

    /// Stops listening (connections are refused from then on).
    pub fn stop(&self) {
        self.handle.shutdown();
    }

    pub fn user(&self, localpart: &str) -> OwnedUserId {
        format!("@{localpart}:{}", self.name).try_into().unwrap()
    }

    pub fn set_behaviour(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.inner.lock().unwrap().behaviour);
    }

    /// Every request weft made so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.inner.lock().unwrap().seen.clone()
    }

    /// The requests whose (percent-decoded) path starts with `prefix`.
    pub fn seen_at(&self, prefix: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path.starts_with(prefix)).collect()
    }

    pub fn transactions(&self) -> Vec<ReceivedTxn> {
        self.shared.inner.lock().unwrap().transactions.clone()
    }

    pub fn room(&self, room: &RoomId) -> RoomView {
        self.shared.inner.lock().unwrap().rooms[room].clone()
    }

    pub fn version(&self, room: &RoomId) -> RoomVersionId {
        self.room(room).version
    }

    pub fn event(&self, id: &OwnedEventId) -> Option<Value> {
        self.shared.inner.lock().unwrap().events.get(id).cloned()
    }

    // ----- Requests to weft -----

    /// A request to `destination`, signed with `X-Matrix` as this server.
    pub async fn request(
        &self,
        destination: &ServerName,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .body(bytes.clone())
            .unwrap();
        let input = XMatrixSigningInput::new(self.name.clone(), destination.to_owned(), self.keys.key_pair());
        let auth = XMatrix::sign_http_request(&req, input).expect("sign request");
        self.request_with_auth(destination, method, path, bytes, auth.to_string())
            .await
    }

    async fn request_with_auth(
        &self,
        destination: &ServerName,
        method: Method,
        path: &str,
        body: Vec<u8>,
        auth: String,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("https://{destination}{path}"))
            .header("Authorization", auth);
        if !body.is_empty() {
            req = req.header("Content-Type", "application/json").body(body);
        }
        let res = req.send().await.expect("request to weft");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `PUT /_matrix/federation/v1/send/{txn_id}` with `pdus`.
    pub async fn send_transaction(&self, destination: &ServerName, txn_id: &str, pdus: &[Value]) -> (u16, Value) {
        let body = json!({
            "origin": self.name,
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": [],
        });
        self.request(
            destination,
            Method::PUT,
            &format!("/_matrix/federation/v1/send/{}", enc(txn_id)),
            Some(&body),
        )
        .await
    }

    /// As [`Hostile::send_transaction`], for a body that is not canonical
    /// JSON (floats): the request is signed over the body's own compact
    /// serialisation, `placeholder` standing for `float` (the only way a
    /// float can be signed at all).
    pub async fn send_transaction_with_float(
        &self,
        destination: &ServerName,
        txn_id: &str,
        pdus: &[Value],
        placeholder: i64,
        float: &str,
    ) -> (u16, Value) {
        let path = format!("/_matrix/federation/v1/send/{}", enc(txn_id));
        let body = json!({
            "origin": self.name,
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": [],
        });
        let bytes = serde_json::to_string(&body).unwrap();
        let with_placeholder: Value =
            serde_json::from_str(&bytes.replace(&format!(":{float}"), &format!(":{placeholder}"))).unwrap();
        let request_object = json!({
            "content": with_placeholder,
            "destination": destination,
            "method": "PUT",
            "origin": self.name,
            "uri": path,
        });
        let canonical = serde_json::to_string(&to_object(&request_object))
            .unwrap()
            .replace(&format!(":{placeholder}"), &format!(":{float}"));
        let signature = self.keys.key_pair().sign(canonical.as_bytes());
        let auth = XMatrix::new(
            self.name.clone(),
            destination.to_owned(),
            self.keys.key_id().try_into().unwrap(),
            Base64::new(signature.as_bytes().to_vec()),
        );
        let bytes = bytes.into_bytes();
        self.request_with_auth(destination, Method::PUT, &path, bytes, auth.to_string())
            .await
    }

    /// Joins `localpart` to `room` on `destination` the normal way:
    /// `make_join`, sign, `send_join`; the answer's state and auth chain
    /// become this server's view of the room. Returns the join's ID.
    pub async fn join(&self, destination: &ServerName, room: &RoomId, localpart: &str) -> OwnedEventId {
        let user = self.user(localpart);
        let (status, template) = self
            .request(
                destination,
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/make_join/{}/{}?ver=1&ver=2&ver=3&ver=4&ver=5&ver=6&ver=7&ver=8&ver=9&ver=10&ver=11&ver=12",
                    enc(room.as_str()),
                    enc(user.as_str())
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "make_join: {template}");
        let version = RoomVersionId::try_from(template["room_version"].as_str().unwrap()).unwrap();
        let rules = rules(&version);
        let mut event = to_object(&template["event"]);
        event.insert(
            "origin_server_ts".to_owned(),
            ruma::CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).unwrap()),
        );
        ruma::signatures::hash_and_sign_event(self.name.as_str(), self.keys.key_pair(), &mut event, &rules.redaction)
            .unwrap();
        let pdu = serde_json::to_value(&event).unwrap();
        let id = event_id_of(&version, &pdu);
        let (status, answer) = self
            .request(
                destination,
                Method::PUT,
                &format!(
                    "/_matrix/federation/v2/send_join/{}/{}",
                    enc(room.as_str()),
                    enc(id.as_str())
                ),
                Some(&pdu),
            )
            .await;
        assert_eq!(status, 200, "send_join: {answer}");

        let mut inner = self.shared.inner.lock().unwrap();
        let mut state = StateMap::new();
        for list in ["auth_chain", "state"] {
            for event in answer[list].as_array().unwrap() {
                let event_id = event_id_of(&version, event);
                inner.events.insert(event_id.clone(), event.clone());
                if list == "state" {
                    let key = (
                        event["type"].as_str().unwrap().to_owned(),
                        event["state_key"].as_str().unwrap().to_owned(),
                    );
                    state.insert(key, event_id);
                }
            }
        }
        inner.rooms.insert(
            room.to_owned(),
            RoomView {
                version,
                state,
                extremities: Vec::new(),
                state_before: HashMap::new(),
            },
        );
        // The join goes on the state weft answered with.
        commit_locked(&mut inner, room, &id, &pdu);
        id
    }

    // ----- Rooms held here -----

    /// Creates a public room of `version` held by this server, for weft to
    /// join over federation (`make_join`, `send_join`): the create event,
    /// the join of `creator` (a localpart of this server), power levels
    /// (`creator` at 100; from v12 the creator's power is the create
    /// event's, not listed), public join rules, `shared` history, an
    /// `m.room.name` if `name` is given, then the join of each of
    /// `extra_members` (localparts of this server). Each is signed and
    /// committed in turn (its auth events chosen by the auth rules, its
    /// parents the forward extremities). The room ID is
    /// `!random:<this server>`, from v12 the create event's reference hash.
    /// Room versions 3 and later (event IDs are reference hashes).
    pub fn create_room(
        &self,
        version: RoomVersionId,
        creator: &str,
        extra_members: &[&str],
        name: Option<&str>,
    ) -> OwnedRoomId {
        let rules = rules(&version);
        assert!(
            !rules.event_format.require_event_id,
            "room version {version}: only versions whose event IDs are reference hashes"
        );
        let creator = self.user(creator);
        let mut create_content = json!({ "room_version": version });
        if !rules.authorization.use_room_create_sender {
            create_content["creator"] = json!(creator);
        }
        let mut create = json!({
            "auth_events": [],
            "content": create_content,
            "depth": 1,
            "origin_server_ts": now_ms(),
            "prev_events": [],
            "sender": creator,
            "state_key": "",
            "type": "m.room.create",
        });
        let named = (!rules.authorization.room_create_event_id_as_room_id).then(|| RoomId::new_v1(&self.name));
        if let Some(room) = &named {
            create["room_id"] = json!(room);
        }
        let pdu = self.sign_in(&version, to_object(&create));
        let create_id = event_id_of(&version, &pdu);
        let room = named.unwrap_or_else(|| RoomId::new_v2(&create_id.as_str()[1..]).expect("room ID"));
        {
            let mut inner = self.shared.inner.lock().unwrap();
            inner.rooms.insert(
                room.clone(),
                RoomView {
                    version,
                    state: StateMap::new(),
                    extremities: Vec::new(),
                    state_before: HashMap::new(),
                },
            );
            commit_locked(&mut inner, &room, &create_id, &pdu);
        }
        let step = |sender: &UserId, kind: &str, state_key: Option<&str>, content: Value| {
            let event = self.build(&room, sender, kind, state_key, content);
            self.commit(&room, &event);
        };
        let join = |user: &UserId| json!({ "membership": "join", "displayname": user.localpart() });
        step(&creator, "m.room.member", Some(creator.as_str()), join(&creator));
        let users = if rules.authorization.explicitly_privilege_room_creators {
            json!({})
        } else {
            json!({ creator.as_str(): 100 })
        };
        step(
            &creator,
            "m.room.power_levels",
            Some(""),
            json!({
                "users": users,
                "users_default": 0,
                "events": {
                    "m.room.name": 50,
                    "m.room.power_levels": 100,
                    "m.room.history_visibility": 100,
                    "m.room.canonical_alias": 50,
                    "m.room.avatar": 50,
                    "m.room.tombstone": 100,
                    "m.room.server_acl": 100,
                    "m.room.encryption": 100,
                },
                "events_default": 0,
                "state_default": 50,
                "ban": 50,
                "kick": 50,
                "redact": 50,
                "invite": 0,
            }),
        );
        step(
            &creator,
            "m.room.join_rules",
            Some(""),
            json!({ "join_rule": "public" }),
        );
        step(
            &creator,
            "m.room.history_visibility",
            Some(""),
            json!({ "history_visibility": "shared" }),
        );
        if let Some(name) = name {
            step(&creator, "m.room.name", Some(""), json!({ "name": name }));
        }
        for member in extra_members {
            let user = self.user(member);
            step(&user, "m.room.member", Some(user.as_str()), join(&user));
        }
        room
    }

    // ----- Events -----

    /// An unsigned event of `sender` placed on this server's view of the
    /// room: `prev_events` its forward extremities, `auth_events` chosen
    /// by the auth rules from its current state, `depth` one more.
    pub fn draft(
        &self,
        room: &RoomId,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> CanonicalJsonObject {
        draft_locked(
            &self.shared.inner.lock().unwrap(),
            room,
            sender,
            kind,
            state_key,
            content,
        )
    }

    /// Hashes and signs an event as this server.
    pub fn sign(&self, room: &RoomId, event: CanonicalJsonObject) -> Built {
        let pdu = self.sign_value(room, event);
        Built {
            id: event_id_of(&self.version(room), &pdu),
            pdu,
        }
    }

    /// Hashes and signs an event as this server, without computing its ID
    /// (which may not exist: an event too large, say).
    pub fn sign_value(&self, room: &RoomId, event: CanonicalJsonObject) -> Value {
        self.sign_in(&self.version(room), event)
    }

    /// Hashes and signs an event of a room of `version` as this server.
    fn sign_in(&self, version: &RoomVersionId, mut event: CanonicalJsonObject) -> Value {
        ruma::signatures::hash_and_sign_event(
            self.name.as_str(),
            self.keys.key_pair(),
            &mut event,
            &rules(version).redaction,
        )
        .unwrap();
        serde_json::to_value(&event).unwrap()
    }

    /// [`Hostile::draft`] and [`Hostile::sign`].
    pub fn build(&self, room: &RoomId, sender: &UserId, kind: &str, state_key: Option<&str>, content: Value) -> Built {
        let draft = self.draft(room, sender, kind, state_key, content);
        self.sign(room, draft)
    }

    /// A message of `sender`.
    pub fn message(&self, room: &RoomId, sender: &UserId, text: &str) -> Built {
        self.build(
            room,
            sender,
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": text }),
        )
    }

    /// Takes `event` into this server's view of the room: it is held (and
    /// served), its parents stop being forward extremities and it becomes
    /// one, and a state event moves the state.
    pub fn commit(&self, room: &RoomId, event: &Built) {
        let mut inner = self.shared.inner.lock().unwrap();
        commit_locked(&mut inner, room, &event.id, &event.pdu);
    }

    /// Makes this server say (in `/state_ids`, `/state`) that the state
    /// before `event` is `state`: a lie, if the test wants one.
    pub fn set_state_before(&self, room: &RoomId, event: &OwnedEventId, state: StateMap) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner
            .rooms
            .get_mut(room)
            .unwrap()
            .state_before
            .insert(event.clone(), state);
    }

    /// Holds `event` (served when asked for) without making it part of
    /// this server's view of the room.
    pub fn hold(&self, event: &Built) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.events.insert(event.id.clone(), event.pdu.clone());
    }

    /// The event with its content changed after signing: its content hash
    /// no longer matches; its signature (over the redacted event) and its
    /// ID still do.
    pub fn tamper_content(&self, room: &RoomId, event: &Built, content: Value) -> Built {
        let mut pdu = event.pdu.clone();
        pdu["content"] = content;
        Built {
            id: event_id_of(&self.version(room), &pdu),
            pdu,
        }
    }

    /// The event with a signature that does not verify (a signature by the
    /// right key, of something else). Its ID does not change: signatures
    /// are not part of the reference hash.
    pub fn corrupt_signature(&self, room: &RoomId, event: &Built) -> Built {
        let mut pdu = event.pdu.clone();
        let forged = self.keys.key_pair().sign(b"something else entirely");
        pdu["signatures"][self.name.as_str()][self.keys.key_id()] = json!(STANDARD_NO_PAD.encode(forged.as_bytes()));
        Built {
            id: event_id_of(&self.version(room), &pdu),
            pdu,
        }
    }

    /// A message of `sender` whose content holds the number `float` (e.g.
    /// `"1.5"`), hashed and signed as if that were allowed: the content
    /// hash is the SHA-256 of the event's compact sorted JSON with the
    /// float in it. `placeholder` is an integer that stands for the float
    /// while the event is built. The ID is that of the (content-free)
    /// redacted event, so it is well defined.
    pub fn message_with_float(&self, room: &RoomId, sender: &UserId, placeholder: i64, float: &str) -> Built {
        let version = self.version(room);
        let mut event = self.draft(
            room,
            sender,
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "a float", "weight": placeholder }),
        );
        let hashed = serde_json::to_string(&event)
            .unwrap()
            .replace(&placeholder.to_string(), float);
        let hash = STANDARD_NO_PAD.encode(Sha256::digest(hashed.as_bytes()));
        event.insert("hashes".to_owned(), to_object(&json!({ "sha256": hash })).into());
        ruma::signatures::sign_event(
            self.name.as_str(),
            self.keys.key_pair(),
            &mut event,
            &rules(&version).redaction,
        )
        .unwrap();
        let id = event_id_of(&version, &serde_json::to_value(&event).unwrap());
        let text = serde_json::to_string(&event)
            .unwrap()
            .replace(&placeholder.to_string(), float);
        Built {
            id,
            pdu: serde_json::from_str(&text).unwrap(),
        }
    }

    /// The auth chain of `ids` (their auth events, recursively; not `ids`
    /// themselves unless reached again), as held here.
    pub fn auth_chain(&self, ids: &[OwnedEventId]) -> Vec<OwnedEventId> {
        let inner = self.shared.inner.lock().unwrap();
        auth_chain_locked(&inner, ids)
    }
}

/// The `auth_events` of a draft.
pub fn auth_events_of(event: &CanonicalJsonObject) -> Vec<OwnedEventId> {
    ids(&serde_json::to_value(event).unwrap()["auth_events"])
}

/// Replaces the `auth_events` of a draft.
pub fn set_auth_events(event: &mut CanonicalJsonObject, auth_events: &[OwnedEventId]) {
    event.insert(
        "auth_events".to_owned(),
        serde_json::from_value(json!(auth_events)).unwrap(),
    );
}

/// [`Hostile::draft`], the lock held.
fn draft_locked(
    inner: &Inner,
    room: &RoomId,
    sender: &UserId,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
) -> CanonicalJsonObject {
    let view = &inner.rooms[room];
    let rules = rules(&view.version);
    let content_raw = serde_json::value::to_raw_value(&content).unwrap();
    let kind_t = TimelineEventType::from(kind);
    let types = ruma::state_res::auth_types_for_event(&kind_t, sender, state_key, &content_raw, &rules.authorization)
        .expect("auth types");
    let mut auth_events: Vec<OwnedEventId> = types
        .iter()
        .filter_map(|(t, k)| view.state.get(&(t.to_string(), k.clone())).cloned())
        .collect();
    auth_events.sort();
    auth_events.dedup();
    let depth = view
        .extremities
        .iter()
        .filter_map(|id| inner.events.get(id)?["depth"].as_u64())
        .max()
        .unwrap_or(0)
        + 1;
    let mut event = json!({
        "auth_events": auth_events,
        "content": content,
        "depth": depth,
        "origin_server_ts": now_ms(),
        "prev_events": view.extremities,
        "room_id": room,
        "sender": sender,
        "type": kind,
    });
    if let Some(key) = state_key {
        event["state_key"] = json!(key);
    }
    to_object(&event)
}

fn commit_locked(inner: &mut Inner, room: &RoomId, id: &OwnedEventId, pdu: &Value) {
    inner.events.insert(id.clone(), pdu.clone());
    let prevs = ids(&pdu["prev_events"]);
    // The state before: after its (first known) parent, else the current.
    let before = prevs
        .iter()
        .find_map(|p| state_after_locked(inner, room, p))
        .unwrap_or_else(|| inner.rooms[room].state.clone());
    let view = inner.rooms.get_mut(room).unwrap();
    view.state_before.insert(id.clone(), before);
    if let Some(key) = pdu["state_key"].as_str() {
        view.state
            .insert((pdu["type"].as_str().unwrap().to_owned(), key.to_owned()), id.clone());
    }
    view.extremities.retain(|e| !prevs.contains(e));
    if !view.extremities.contains(id) {
        view.extremities.push(id.clone());
    }
}

fn state_after_locked(inner: &Inner, room: &RoomId, id: &OwnedEventId) -> Option<StateMap> {
    let view = inner.rooms.get(room)?;
    let mut state = view.state_before.get(id)?.clone();
    let pdu = inner.events.get(id)?;
    if let Some(key) = pdu["state_key"].as_str() {
        state.insert((pdu["type"].as_str()?.to_owned(), key.to_owned()), id.clone());
    }
    Some(state)
}

fn auth_chain_locked(inner: &Inner, start: &[OwnedEventId]) -> Vec<OwnedEventId> {
    let mut seen = HashSet::new();
    let mut queue: VecDeque<OwnedEventId> = start
        .iter()
        .filter_map(|id| inner.events.get(id))
        .flat_map(|e| ids(&e["auth_events"]))
        .collect();
    let mut chain = Vec::new();
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(event) = inner.events.get(&id) {
            queue.extend(ids(&event["auth_events"]));
            chain.push(id);
        }
    }
    chain
}

fn depth_of(event: &Value) -> u64 {
    event["depth"].as_u64().unwrap_or(0)
}

// ----- The listener -----

fn matrix_error(status: StatusCode, errcode: &str, error: &str) -> Response {
    (status, axum::Json(json!({ "errcode": errcode, "error": error }))).into_response()
}

fn ok(body: Value) -> Response {
    axum::Json(body).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_and_query = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let origin = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| XMatrix::try_from(v).ok())
        .map(|x| x.origin.to_string());
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Seen when it comes, answered after the delay the behaviour sets.
    let delay = {
        let mut inner = shared.inner.lock().unwrap();
        inner.seen.push(Seen {
            method: method.to_string(),
            path: percent_decode(&path_and_query),
            raw_path: path_and_query.clone(),
            body: body_json.clone(),
            origin: origin.clone(),
        });
        if uri.path().starts_with("/_matrix/federation/v1/backfill/") {
            inner.behaviour.backfill_delay
        } else if uri.path().starts_with("/_matrix/federation/v1/get_missing_events/") {
            inner.behaviour.missing_events_delay
        } else if uri.path().starts_with("/_matrix/key/v2/server") {
            inner.behaviour.key_delay
        } else {
            Duration::ZERO
        }
    };
    tokio::time::sleep(delay).await;
    let mut inner = shared.inner.lock().unwrap();
    let segments: Vec<String> = uri.path().split('/').skip(1).map(percent_decode).collect();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |name: &str| -> Vec<String> {
        query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let pdus_answer =
        |pdus: Vec<Value>| ok(json!({ "origin": shared.name, "origin_server_ts": now_ms(), "pdus": pdus }));
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["_matrix", "key", "v2", "server", ..]) => {
            let doc = shared.keys.server_key_document(MilliSecondsSinceUnixEpoch::now());
            ok(serde_json::to_value(&doc).unwrap())
        }
        ("GET", ["_matrix", "federation", "v1", "version"]) => {
            ok(json!({ "server": { "name": "hostile", "version": "0" } }))
        }
        ("GET", ["_matrix", "federation", "v1", "event", event_id]) => {
            match OwnedEventId::try_from(*event_id)
                .ok()
                .filter(|id| !inner.behaviour.withheld_events.contains(id))
                .and_then(|id| inner.events.get(&id))
            {
                Some(event) => pdus_answer(vec![event.clone()]),
                None => matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such event"),
            }
        }
        ("GET", ["_matrix", "federation", "v1", kind @ ("state_ids" | "state"), room_id]) => {
            let (Ok(room), Some(Ok(event))) = (
                OwnedRoomId::try_from(*room_id),
                param("event_id").into_iter().next().map(OwnedEventId::try_from),
            ) else {
                return matrix_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "bad request");
            };
            if !inner.behaviour.serve_state {
                return matrix_error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "down");
            }
            if inner
                .behaviour
                .state_only_at
                .as_ref()
                .is_some_and(|only| !only.contains(&event))
            {
                return matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no state given at that event");
            }
            let Some(state) = inner.rooms.get(&room).and_then(|v| v.state_before.get(&event)) else {
                return matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no state known at that event");
            };
            let state_ids: Vec<OwnedEventId> = state.values().cloned().collect();
            let chain = auth_chain_locked(&inner, &state_ids);
            if *kind == "state_ids" {
                ok(json!({ "pdu_ids": state_ids, "auth_chain_ids": chain }))
            } else {
                let get = |ids: &[OwnedEventId]| -> Vec<Value> {
                    ids.iter().filter_map(|id| inner.events.get(id).cloned()).collect()
                };
                ok(json!({ "pdus": get(&state_ids), "auth_chain": get(&chain) }))
            }
        }
        ("GET", ["_matrix", "federation", "v1", "make_join", room_id, user_id]) => {
            let (Ok(room), Ok(user)) = (OwnedRoomId::try_from(*room_id), OwnedUserId::try_from(*user_id)) else {
                return matrix_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "bad room or user ID");
            };
            let Some(version) = inner.rooms.get(&room).map(|v| v.version.clone()) else {
                return matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "unknown room");
            };
            // No `ver`: the joining server knows room version 1 only.
            if !param("ver").iter().any(|v| v == version.as_str()) {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({
                        "errcode": "M_INCOMPATIBLE_ROOM_VERSION",
                        "error": "the room's version is not one the joining server knows",
                        "room_version": version,
                    })),
                )
                    .into_response();
            }
            let event = draft_locked(
                &inner,
                &room,
                &user,
                "m.room.member",
                Some(user.as_str()),
                json!({ "membership": "join" }),
            );
            ok(json!({ "room_version": version, "event": event }))
        }
        (
            "PUT",
            [
                "_matrix",
                "federation",
                api @ ("v1" | "v2"),
                "send_join",
                room_id,
                _event_id,
            ],
        ) => {
            let Ok(room) = OwnedRoomId::try_from(*room_id) else {
                return matrix_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "bad room ID");
            };
            let Some(version) = inner.rooms.get(&room).map(|v| v.version.clone()) else {
                return matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "unknown room");
            };
            if serde_json::from_value::<CanonicalJsonObject>(body_json.clone()).is_err() {
                return matrix_error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "not an event");
            }
            let id = event_id_of(&version, &body_json);
            let joiner = body_json["state_key"].as_str().unwrap_or_default().to_owned();
            // The state before the join: the current state (as it was the
            // first time, for a retried send_join).
            let known = inner.rooms[&room]
                .state_before
                .get(&id)
                .filter(|_| inner.events.contains_key(&id))
                .cloned();
            let before = match known {
                Some(before) => before,
                None => {
                    let before = inner.rooms[&room].state.clone();
                    commit_locked(&mut inner, &room, &id, &body_json);
                    let view = inner.rooms.get_mut(&room).unwrap();
                    view.state_before.insert(id.clone(), before.clone());
                    before
                }
            };
            let partial = *api == "v2"
                && param("omit_members").iter().any(|v| v == "true")
                && inner.behaviour.serve_partial_state;
            let state_ids: Vec<OwnedEventId> = before
                .iter()
                .filter(|((kind, key), _)| !partial || kind != "m.room.member" || *key == joiner)
                .map(|(_, id)| id.clone())
                .collect();
            let chain: Vec<OwnedEventId> = if partial {
                let mut start = state_ids.clone();
                start.push(id.clone());
                auth_chain_locked(&inner, &start)
                    .into_iter()
                    .filter(|e| !state_ids.contains(e))
                    .collect()
            } else {
                auth_chain_locked(&inner, &state_ids)
            };
            let mut servers: Vec<String> = before
                .iter()
                .filter(|((kind, _), _)| kind == "m.room.member")
                .filter(|(_, id)| {
                    inner
                        .events
                        .get(*id)
                        .is_some_and(|e| e["content"]["membership"] == "join")
                })
                .filter_map(|((_, key), _)| Some(UserId::parse(key.as_str()).ok()?.server_name().to_string()))
                .collect();
            servers.sort();
            servers.dedup();
            let get = |ids: &[OwnedEventId]| -> Vec<Value> {
                ids.iter().filter_map(|id| inner.events.get(id).cloned()).collect()
            };
            let mut state = get(&state_ids);
            state.extend(inner.behaviour.extra_join_state.iter().cloned());
            if *api == "v1" {
                ok(json!([200, {
                    "origin": shared.name,
                    "event": body_json,
                    "state": state,
                    "auth_chain": get(&chain),
                }]))
            } else {
                ok(json!({
                    "origin": shared.name,
                    "event": body_json,
                    "state": state,
                    "auth_chain": get(&chain),
                    "members_omitted": partial,
                    "servers_in_room": servers,
                }))
            }
        }
        ("GET", ["_matrix", "federation", "v1", "event_auth", _room, event_id]) => {
            let Ok(event) = OwnedEventId::try_from(*event_id) else {
                return matrix_error(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", "bad event ID");
            };
            let chain: Vec<Value> = auth_chain_locked(&inner, &[event])
                .iter()
                .filter_map(|id| inner.events.get(id).cloned())
                .collect();
            ok(json!({ "auth_chain": chain }))
        }
        ("POST", ["_matrix", "federation", "v1", "get_missing_events", _room]) => {
            if !inner.behaviour.serve_missing_events {
                return ok(json!({ "events": inner.behaviour.extra_missing_events }));
            }
            let earliest: HashSet<OwnedEventId> = ids(&body_json["earliest_events"]).into_iter().collect();
            let latest = ids(&body_json["latest_events"]);
            let limit = (body_json["limit"].as_u64().unwrap_or(10) as usize)
                .min(inner.behaviour.missing_events_limit.unwrap_or(usize::MAX));
            let mut queue: VecDeque<OwnedEventId> = latest
                .iter()
                .filter_map(|id| inner.events.get(id))
                .flat_map(|e| ids(&e["prev_events"]))
                .collect();
            let mut seen = HashSet::new();
            let mut events = Vec::new();
            while let Some(id) = queue.pop_front() {
                if events.len() >= limit {
                    break;
                }
                if earliest.contains(&id) || latest.contains(&id) || !seen.insert(id.clone()) {
                    continue;
                }
                if let Some(event) = inner.events.get(&id) {
                    queue.extend(ids(&event["prev_events"]));
                    events.push(event.clone());
                }
            }
            events.sort_by_key(depth_of);
            events.extend(inner.behaviour.extra_missing_events.iter().cloned());
            ok(json!({ "events": events }))
        }
        ("GET", ["_matrix", "federation", "v1", "backfill", _room]) => {
            if !inner.behaviour.serve_backfill {
                return pdus_answer(Vec::new());
            }
            let limit: usize = param("limit")
                .into_iter()
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or(10);
            let mut queue: VecDeque<OwnedEventId> = param("v").into_iter().filter_map(|v| v.try_into().ok()).collect();
            let mut seen = HashSet::new();
            let mut events = Vec::new();
            while let Some(id) = queue.pop_front() {
                if events.len() >= limit {
                    break;
                }
                if !seen.insert(id.clone()) {
                    continue;
                }
                if let Some(event) = inner.events.get(&id) {
                    queue.extend(ids(&event["prev_events"]));
                    events.push(event.clone());
                }
            }
            events.sort_by_key(|e| std::cmp::Reverse(depth_of(e)));
            pdus_answer(events)
        }
        ("PUT", ["_matrix", "federation", "v1", "send", txn_id]) => {
            let accept = inner.behaviour.accept_transactions;
            let mut event_ids = Vec::new();
            let mut answer = serde_json::Map::new();
            for pdu in body_json["pdus"].as_array().cloned().unwrap_or_default() {
                let Some(room) = pdu["room_id"].as_str().and_then(|r| OwnedRoomId::try_from(r).ok()) else {
                    continue;
                };
                let Some(version) = inner.rooms.get(&room).map(|v| v.version.clone()) else {
                    continue;
                };
                let id = event_id_of(&version, &pdu);
                event_ids.push(id.clone());
                if accept {
                    if !inner.events.contains_key(&id) {
                        commit_locked(&mut inner, &room, &id, &pdu);
                    }
                    answer.insert(id.to_string(), json!({}));
                }
            }
            inner.transactions.push(ReceivedTxn {
                origin: origin.unwrap_or_default(),
                txn_id: (*txn_id).to_owned(),
                event_ids,
                acknowledged: accept,
            });
            if accept && inner.behaviour.bare_transaction_answer {
                ok(json!({}))
            } else if accept {
                ok(json!({ "pdus": answer }))
            } else {
                matrix_error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "down for maintenance")
            }
        }
        _ => matrix_error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "not here"),
    }
}
