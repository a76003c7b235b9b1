//! Entry points for fuzzing what parses untrusted bytes: one function per
//! cargo-fuzz target (`fuzz/fuzz_targets/<name>.rs`), each feeding its input
//! to the parsers the servers use on requests, and `tests/fuzz_corpus.rs`
//! replays the corpus and every crash found through them on stable Rust.
//! See `docs/fuzzing.md`.
//!
//! None of them may panic, whatever the input: a panic is what the fuzzer
//! reports. Beyond that, each asserts what must hold of what the parsers
//! accept (a token reads back as written, a filter that was stored reads
//! back, an event the auth rules accept comes from someone allowed to
//! send it), so that the fuzzer finds wrong answers as well as crashes.
//!
//! Inputs that carry a room version start with it, on a line of its own
//! (`11\n{"type": …}`); an input that does not picks one by its first byte.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId,
    api::{
        IncomingRequestExt,
        client::{
            filter::{FilterDefinition, RoomEventFilter, create_filter},
            message::get_message_events,
            sync::sync_events,
        },
        federation::authentication::XMatrix,
    },
    events::TimelineEventType,
    room_version_rules::RoomVersionRules,
    signatures::PublicKeyMap,
    user_id,
};
use serde_json::value::RawValue;

use crate::{
    client_api::{extract::request_error, sync::inline_filter, sync_token::SyncToken},
    config::SUPPORTED_ROOM_VERSIONS,
    error::MatrixError,
    event_checks,
    events::{Pdu, loose_json},
    filter as filters,
    keys::ServerKeys,
    timeline::Token,
};

/// The server the fuzzed requests are addressed to.
const OWN_NAME: &str = "weft.test";
/// The server whose key ([`SIGNING_KEY`]) the key ring has: PDUs and
/// requests of the corpus are signed by it.
pub const ORIGIN: &str = "origin.test";
/// `origin.test`'s signing key, in Synapse's format (a fixed seed: the
/// corpus stays valid).
pub const SIGNING_KEY: &str = "ed25519 fuzz d2VmdCBmdXp6aW5nIGtleSwgbm90IGEgc2VjcmV0ISE";

/// `origin.test`'s key pair.
pub fn signing_key() -> &'static ServerKeys {
    static KEYS: OnceLock<ServerKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        ServerKeys::from_synapse_format(SIGNING_KEY, ORIGIN.try_into().expect("a server name")).expect("a valid key")
    })
}

/// What the key ring would answer: `origin.test`'s key, and none of any
/// other server.
fn key_map() -> &'static PublicKeyMap {
    static MAP: OnceLock<PublicKeyMap> = OnceLock::new();
    MAP.get_or_init(|| {
        let keys = signing_key();
        let key = ruma::serde::Base64::new(keys.key_pair().public_key().to_vec());
        BTreeMap::from([(ORIGIN.to_owned(), BTreeMap::from([(keys.key_id(), key)]))])
    })
}

/// The room version an input names on its first line, and the rest; or,
/// without one, the version its first byte picks among `versions`, and
/// all of it.
fn versioned<'a>(data: &'a [u8], versions: &'a [RoomVersionId]) -> (&'a RoomVersionId, &'a [u8]) {
    if let Some(newline) = data.iter().take(4).position(|b| *b == b'\n')
        && let Some(version) = std::str::from_utf8(&data[..newline])
            .ok()
            .and_then(|v| versions.iter().find(|known| known.as_str() == v))
    {
        return (version, &data[newline + 1..]);
    }
    let pick = data.first().map_or(0, |b| usize::from(*b) % versions.len());
    (&versions[pick], data)
}

/// A parse failure must be the client's fault, never the server's.
fn assert_client_error(error: &MatrixError) {
    assert!(error.status.is_client_error(), "a parse failure answered {error}");
}

/// A GET of `path` with `params` in its query, each value as its bytes
/// percent-encoded.
fn query_request(path: &str, params: &[(&str, &[u8])]) -> http::Request<&'static [u8]> {
    let query: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{name}={}", form_urlencoded::byte_serialize(value).collect::<String>()))
        .collect();
    http::Request::get(format!("{path}?{}", query.join("&")))
        .body(&b""[..])
        .expect("an encoded query is a valid URI")
}

// --- PDUs and canonical JSON -------------------------------------------------

/// A PDU as another server pushes it in a `/send` transaction: the
/// transaction's reading of it (its room, the ID its result is under, or
/// the ID of one with numbers canonical JSON has not), then the checks on
/// receipt (format for the room version, signatures with the key ring's
/// keys — `origin.test`'s — and the content hash, redaction on a mismatch)
/// and what is read of the PDU held.
pub fn pdu(data: &[u8]) {
    let (version, body) = versioned(data, &SUPPORTED_ROOM_VERSIONS);
    let Some(rules) = version.rules() else { return };
    let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(body) else {
        return;
    };
    let _ = crate::rooms::inbound::room_of(&raw);
    let transaction_id = crate::federation_api::transactions::event_id_of(version, &raw);
    if transaction_id.is_none()
        && let Ok(value) = serde_json::from_str(raw.get())
    {
        let _ = loose_json::event_id(value, &rules);
    }
    let Ok((object, event_id, room_id)) = event_checks::check_format(&rules, &raw) else {
        return;
    };
    // The transaction answers for the PDU under the ID it is held under.
    assert_eq!(
        transaction_id.as_ref(),
        Some(&event_id),
        "the transaction's ID of a well-formed PDU is its event ID"
    );
    let _ = crate::events::ids::reference_hash(&object, &rules);
    let _ = ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures);
    // What a later redaction of it does.
    let _ = ruma::canonical_json::redact(object.clone(), &rules.redaction, None);
    let Ok(pdu) = event_checks::check_signatures(&rules, object, event_id.clone(), &room_id, key_map()) else {
        return;
    };
    assert_eq!(pdu.event_id, event_id);
    read_held(&pdu);
}

/// What the server reads of a PDU it holds.
fn read_held(pdu: &Pdu) {
    let object = pdu.canonical_object();
    let _ = Pdu::from_canonical(pdu.event_id.clone(), Some(&pdu.room_id), &object).expect("a held PDU parses again");
    let _ = pdu.membership();
    let _ = pdu.content_value();
    let _ = pdu.is_state();
}

/// JSON as events and requests are checked for canonical JSON (ruma's),
/// and as Synapse writes the numbers canonical JSON has not
/// (`events::loose_json`, for `/send` transactions).
pub fn canonical_json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let loose = loose_json::is_loose(&value);
    if let Ok(canonical) = CanonicalJsonValue::try_from(value.clone()) {
        assert!(!loose, "a canonical value holds no loose number");
        let text = canonical.to_string();
        let again: CanonicalJsonValue = serde_json::from_str(&text).expect("canonical JSON reads back");
        assert_eq!(again.to_string(), text, "canonical JSON writes the same again");
    }
    if let Some(written) = loose_json::Loose::new(value.clone()) {
        assert_eq!(written.is_loose(), loose);
        let text = written.write(written.value());
        let back: serde_json::Value = serde_json::from_str(&text).expect("the loose writing is JSON");
        assert_eq!(back, value, "the loose writing of {text} reads back as the value");
    }
}

// --- X-Matrix ----------------------------------------------------------------

/// A federation request as `federation_api::extract` authenticates it:
/// the input is `METHOD URI`, then one `Authorization` header value a line,
/// an empty line, and the body. Each header is parsed as `X-Matrix`; the
/// body must be JSON, canonical but for a `/send` transaction's loose
/// numbers; each parsed header for this server is checked against the key
/// ring's keys (`origin.test`'s).
pub fn x_matrix(data: &[u8]) {
    let mut lines = data.splitn(2, |b| *b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    let rest = lines.next().unwrap_or_default();
    let (headers, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &b""[..]),
    };
    let mut parts = request_line.splitn(2, |b| *b == b' ');
    let (Some(method), Some(uri)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    // The router takes only paths of its own: the request's URI has one.
    let Ok(uri) = http::Uri::try_from(uri) else { return };
    if !uri.path().starts_with("/_matrix/") || uri.path_and_query().is_none() {
        return;
    }
    let mut builder = http::Request::builder().method(method).uri(uri);
    for header in headers.split(|b| *b == b'\n') {
        // hyper takes no header value that is not one.
        if let Ok(value) = http::HeaderValue::from_bytes(header) {
            builder = builder.header(http::header::AUTHORIZATION, value);
        }
    }
    let Ok(request) = builder.body(bytes::Bytes::copy_from_slice(body)) else {
        return;
    };
    authenticate(&request);
}

/// `federation_api::extract::authenticate` but for the key ring: the keys
/// are `origin.test`'s.
fn authenticate(request: &http::Request<bytes::Bytes>) {
    let own_name: &ruma::ServerName = OWN_NAME.try_into().expect("a server name");
    let mut headers = Vec::new();
    for value in request.headers().get_all(http::header::AUTHORIZATION) {
        match XMatrix::try_from(value) {
            Ok(xmatrix) => {
                // What is logged of it.
                let _ = format!("{xmatrix:?} {xmatrix}");
                headers.push(xmatrix);
            }
            // What is answered of it.
            Err(e) => drop(e.to_string()),
        }
    }
    let Ok(signed) = crate::federation_api::extract::signed_body(request.uri().path(), request.body()) else {
        return;
    };
    for xmatrix in headers {
        if xmatrix.destination.as_deref().is_some_and(|d| d != own_name) {
            continue;
        }
        if crate::federation_api::extract::verify_signed(&xmatrix, request, own_name, key_map(), &signed).is_ok() {
            assert_eq!(xmatrix.origin, ORIGIN, "only origin.test's key is known");
            break;
        }
    }
}

// --- Tokens ------------------------------------------------------------------

/// A `/sync` position (`since`; `/events`' `from`; `/keys/changes`'
/// `from` and `to`): parsed directly, and as `/sync`'s query gives it,
/// through ruma. A token that parses reads back as it writes.
pub fn sync_token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        sync_token_text(text);
    }
    let request = query_request("/_matrix/client/v3/sync", &[("since", data), ("timeout", b"0")]);
    match sync_events::v3::Request::try_from_http_request(request, &[] as &[&str]) {
        Ok(request) => {
            if let Some(since) = &request.since {
                sync_token_text(since);
            }
        }
        Err(e) => assert_client_error(&request_error(e)),
    }
}

fn sync_token_text(text: &str) {
    if let Some(token) = SyncToken::parse(text) {
        let written = token.to_string();
        assert_eq!(
            SyncToken::parse(&written),
            Some(token),
            "{text:?} written as {written:?}"
        );
    }
}

/// A `/messages` token (`from`, `to`; `/context`'s are written the same):
/// parsed directly, and as `/messages`' query gives it, through ruma. A
/// token that parses reads back as it writes.
pub fn pagination_token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        pagination_token_text(text);
    }
    let request = query_request(
        "/_matrix/client/v3/rooms/!room:a.test/messages",
        &[("from", data), ("to", data), ("dir", b"b")],
    );
    match get_message_events::v3::Request::try_from_http_request(request, &["!room:a.test"]) {
        Ok(request) => {
            for token in [&request.from, &request.to].into_iter().flatten() {
                pagination_token_text(token);
            }
        }
        Err(e) => assert_client_error(&request_error(e)),
    }
}

fn pagination_token_text(text: &str) {
    if let Some(token) = Token::parse(text) {
        let written = token.to_string();
        assert_eq!(Token::parse(&written), Some(token), "{text:?} written as {written:?}");
    }
}

// --- Filters -----------------------------------------------------------------

/// A filter, as each endpoint takes one: uploaded (`POST
/// /user/{userId}/filter`, stored as JSON and read back by `GET
/// /filter/{id}` and `/sync?filter=<id>`), inline in `/sync`'s query, and
/// `/messages`' room event filter; each filter that parses is then applied
/// to sample events, rooms and account data.
pub fn filter(data: &[u8]) {
    let body = if data.is_empty() { &b"{}"[..] } else { data };
    let upload = http::Request::post("/_matrix/client/v3/user/@alice:a.test/filter")
        .body(body)
        .expect("a valid request");
    match create_filter::v3::Request::try_from_http_request(upload, &["@alice:a.test"]) {
        Ok(request) => {
            if let Ok(stored) = serde_json::to_string(&request.filter) {
                // What `GET /filter/{id}` and `/sync?filter=<id>` read: a
                // stored filter that did not parse would be a 500.
                let read: FilterDefinition =
                    serde_json::from_str(&stored).unwrap_or_else(|e| panic!("stored filter {stored} unreadable: {e}"));
                apply_filter(&read);
            }
        }
        Err(e) => assert_client_error(&request_error(e)),
    }

    let sync = query_request("/_matrix/client/v3/sync", &[("filter", data)]);
    match sync_events::v3::Request::try_from_http_request(sync, &[] as &[&str]) {
        Ok(request) => match inline_filter(request.filter.as_ref()) {
            Ok(Some(definition)) => apply_filter(&definition),
            Ok(None) => {}
            Err(e) => assert_client_error(&e),
        },
        Err(e) => assert_client_error(&request_error(e)),
    }

    let messages = query_request(
        "/_matrix/client/v3/rooms/!room:a.test/messages",
        &[("dir", b"b"), ("filter", data)],
    );
    match get_message_events::v3::Request::try_from_http_request(messages, &["!room:a.test"]) {
        Ok(request) => apply_room_event_filter(&request.filter),
        Err(e) => assert_client_error(&request_error(e)),
    }
}

/// Events a filter is tried on: a message with a URL, one without, a
/// state event, of two rooms and senders.
fn sample_events() -> &'static [Pdu] {
    static EVENTS: OnceLock<Vec<Pdu>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        [
            r#"{"type":"m.room.message","sender":"@alice:a.test","room_id":"!room:a.test","content":{"msgtype":"m.image","body":"cat.png","url":"mxc://a.test/cat"},"depth":5,"origin_server_ts":5,"prev_events":[],"auth_events":[]}"#,
            r#"{"type":"m.room.message","sender":"@bob:b.test","room_id":"!other:b.test","content":{"msgtype":"m.text","body":"hello"},"depth":6,"origin_server_ts":6,"prev_events":[],"auth_events":[]}"#,
            r#"{"type":"m.room.member","state_key":"@bob:b.test","sender":"@bob:b.test","room_id":"!room:a.test","content":{"membership":"join"},"depth":7,"origin_server_ts":7,"prev_events":[],"auth_events":[]}"#,
        ]
        .iter()
        .enumerate()
        .map(|(i, json)| {
            let id = OwnedEventId::try_from(format!("$sample{i}")).expect("an event ID");
            Pdu::from_json(id, None, Arc::from(*json)).expect("a sample event parses")
        })
        .collect()
    })
}

fn apply_filter(definition: &FilterDefinition) {
    let rooms: [&RoomId; 2] = [
        <&RoomId>::try_from("!room:a.test").expect("a room ID"),
        <&RoomId>::try_from("!other:b.test").expect("a room ID"),
    ];
    for room in rooms {
        let _ = filters::room_allowed(&definition.room, room);
        let _ = filters::room_account_data_matches(&definition.room.account_data, room, "m.tag");
    }
    for room_events in [
        &definition.room.timeline,
        &definition.room.state,
        &definition.room.ephemeral,
    ] {
        apply_room_event_filter(room_events);
    }
    let _ = filters::account_data_matches(&definition.account_data, "m.direct");
    let _ = filters::presence_type_allowed(&definition.presence);
    let _ = filters::presence_sender_allowed(&definition.presence, user_id!("@bob:b.test"));
    let _ = definition.room.timeline.limit.map(|l| u64::from(l) as usize);
}

fn apply_room_event_filter(filter: &RoomEventFilter) {
    for event in sample_events() {
        let _ = filters::event_matches(filter, event);
    }
    let _ = filters::lazy_load_members(filter);
}

// --- Event authorisation -----------------------------------------------------

/// The room versions the auth rules are fuzzed in.
pub const AUTH_VERSIONS: [RoomVersionId; 5] = [
    RoomVersionId::V1,
    RoomVersionId::V5,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// The room's creator, its only joined member.
pub const CREATOR: &str = "@alice:a.test";
/// Invited by the creator: may join or decline.
pub const INVITED: &str = "@bob:a.test";
/// Banned by the creator.
pub const BANNED: &str = "@carol:b.test";

/// A small room, as the auth rules see it: create, the creator's join,
/// power levels, invite-only join rules, [`INVITED`] invited and
/// [`BANNED`] banned. Its events' IDs are fixed (`$create`, `$alice`,
/// `$power`, `$join_rules`, `$bob`, `$carol`), its ID is `!room:a.test`,
/// or, in rooms v12, `!create`.
struct AuthRoom {
    version: RoomVersionId,
    rules: RoomVersionRules,
    room_id: OwnedRoomId,
    state: Vec<Pdu>,
}

fn auth_rooms() -> &'static [AuthRoom] {
    static ROOMS: OnceLock<Vec<AuthRoom>> = OnceLock::new();
    ROOMS.get_or_init(|| AUTH_VERSIONS.iter().map(auth_room).collect())
}

fn auth_room(version: &RoomVersionId) -> AuthRoom {
    let rules = version.rules().expect("a supported version");
    let v12 = rules.authorization.room_create_event_id_as_room_id;
    let room_id = OwnedRoomId::try_from(if v12 { "!create" } else { "!room:a.test" }).expect("a room ID");
    let mut create_content = serde_json::json!({ "room_version": version.as_str() });
    if !rules.authorization.use_room_create_sender {
        create_content["creator"] = CREATOR.into();
    }
    let mut power_users = serde_json::Map::new();
    if !rules.authorization.explicitly_privilege_room_creators {
        power_users.insert(CREATOR.to_owned(), 100.into());
    }
    let event = |id: &str, kind: &str, state_key: &str, content: serde_json::Value, depth: u64| {
        let mut json = serde_json::json!({
            "type": kind,
            "state_key": state_key,
            "sender": CREATOR,
            "content": content,
            "depth": depth,
            "origin_server_ts": depth,
            "prev_events": [],
            "auth_events": [],
        });
        if !(v12 && kind == "m.room.create") {
            json["room_id"] = room_id.as_str().into();
        }
        let id = OwnedEventId::try_from(id).expect("an event ID");
        Pdu::from_json(id, Some(&room_id), Arc::from(json.to_string())).expect("a state event parses")
    };
    let state = vec![
        event("$create", "m.room.create", "", create_content, 1),
        event(
            "$alice",
            "m.room.member",
            CREATOR,
            serde_json::json!({"membership": "join"}),
            2,
        ),
        event(
            "$power",
            "m.room.power_levels",
            "",
            serde_json::json!({
                "users": power_users,
                "users_default": 0,
                "events_default": 0,
                "state_default": 50,
                "ban": 50,
                "kick": 50,
                "redact": 50,
                "invite": 0,
            }),
            3,
        ),
        event(
            "$join_rules",
            "m.room.join_rules",
            "",
            serde_json::json!({"join_rule": "invite"}),
            4,
        ),
        event(
            "$bob",
            "m.room.member",
            INVITED,
            serde_json::json!({"membership": "invite"}),
            5,
        ),
        event(
            "$carol",
            "m.room.member",
            BANNED,
            serde_json::json!({"membership": "ban"}),
            6,
        ),
    ];
    AuthRoom {
        version: version.clone(),
        rules,
        room_id,
        state,
    }
}

/// A PDU of the room of [`AuthRoom`] (`<version>\n<PDU>`), through the
/// format checks on receipt and then the auth rules as `event_checks`
/// applies them: against its auth events (those of the room's state it
/// names, all that is held) and against the room's state. An event
/// accepted by both must come from someone the room lets send it.
pub fn event_auth(data: &[u8]) {
    let _ = event_auth_outcome(data);
}

/// [`event_auth`]'s answer: `None` when the input is no well-formed PDU
/// of the room, else whether the auth rules accept it.
pub fn event_auth_outcome(data: &[u8]) -> Option<Result<(), String>> {
    let (version, body) = versioned(data, &AUTH_VERSIONS);
    let room = auth_rooms().iter().find(|r| r.version == *version)?;
    let raw = serde_json::from_slice::<Box<RawValue>>(body).ok()?;
    let (object, event_id, room_id) = event_checks::check_format(&room.rules, &raw).ok()?;
    if room_id != room.room_id {
        // Another room's event meets another room's state.
        return None;
    }
    let pdu = Pdu::from_canonical(event_id, Some(&room_id), &object).ok()?;

    // Against its auth events: those it names that are held, with the
    // room's create event when the room's ID names it.
    let implied = event_checks::implied_create(&room.rules, &pdu);
    let held = room
        .state
        .iter()
        .filter(|e| pdu.auth_events.contains(&e.event_id) || implied.as_ref() == Some(&e.event_id))
        .map(|e| (e, false));
    let outcome = event_checks::auth_events_allow(&room.rules, &pdu, held).and_then(|()| {
        // Against the room's state: the events the rules look at.
        let keys = event_checks::auth_keys(&room.rules, &pdu)?;
        let state = room.state.iter().filter(|e| {
            e.state_key.as_ref().is_some_and(|k| {
                keys.iter()
                    .any(|(kind, key)| kind.to_string() == e.kind.to_string() && key == k)
            })
        });
        event_checks::state_allows(&room.rules, &pdu, state)
    });
    let outcome = outcome.map_err(|e| e.to_string());
    if outcome.is_ok() {
        assert_allowed_sender(&pdu);
    }
    Some(outcome)
}

/// Who may send what in [`AuthRoom`]: the creator anything; the invited
/// user to join or decline; nobody else anything (a create event, checked
/// on its own, apart).
fn assert_allowed_sender(pdu: &Pdu) {
    if pdu.kind == TimelineEventType::RoomCreate || pdu.sender == CREATOR {
        return;
    }
    let own_membership = pdu.kind == TimelineEventType::RoomMember
        && pdu.state_key.as_deref() == Some(pdu.sender.as_str())
        && matches!(pdu.membership().as_deref(), Some("join" | "leave"));
    assert!(
        pdu.sender == INVITED && own_membership,
        "the auth rules let {} send {} ({}) in the room",
        pdu.sender,
        pdu.kind,
        pdu.json
    );
}

/// A PDU of `origin.test` signed with [`SIGNING_KEY`] (hashes and
/// signature; in rooms v1 and v2 the `event_id` it has is signed too), for
/// writing the corpus.
pub fn sign_pdu(mut object: CanonicalJsonObject, version: &RoomVersionId) -> CanonicalJsonObject {
    let rules = version.rules().expect("a supported version");
    ruma::signatures::hash_and_sign_event(ORIGIN, signing_key().key_pair(), &mut object, &rules.redaction)
        .expect("a PDU can be signed");
    object
}

/// The `Authorization` header of a request of `origin.test` to this
/// server, for writing the corpus. A body with numbers canonical JSON has
/// not is signed as Synapse signs it (`events::loose_json`).
pub fn sign_request(method: &str, uri: &str, body: &[u8]) -> String {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("a valid request");
    let keys = signing_key();
    let origin: OwnedServerName = ORIGIN.try_into().expect("a server name");
    let destination: OwnedServerName = OWN_NAME.try_into().expect("a server name");
    let loose = serde_json::from_slice(body)
        .ok()
        .filter(loose_json::is_loose)
        .and_then(loose_json::Loose::new);
    let Some(loose) = loose else {
        let input =
            ruma::api::federation::authentication::XMatrixSigningInput::new(origin, destination, keys.key_pair());
        return XMatrix::sign_http_request(&request, input)
            .expect("a request can be signed")
            .to_string();
    };
    let bare = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(&b""[..])
        .expect("a valid request");
    let mut object = XMatrix::request_object(&bare, &origin, &destination).expect("a request object");
    object.insert("content".to_owned(), loose.value().clone());
    use ruma::signatures::KeyPair as _;
    let signature = keys.key_pair().sign(loose.write_object(&object).as_bytes());
    XMatrix::new(
        origin,
        destination,
        keys.key_id().as_str().try_into().expect("a key ID"),
        ruma::serde::Base64::new(signature.as_bytes().to_vec()),
    )
    .to_string()
}
