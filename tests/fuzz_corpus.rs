//! The fuzz targets' corpus (`fuzz/corpus/<target>/`) and every crash the
//! fuzzer found (`fuzz/regressions/<target>/`, each named after what it
//! found), replayed through `weft::fuzzing` on stable Rust: none may
//! panic. Then what the auth rules must answer for the event_auth room,
//! and the seed writer (`cargo test --test fuzz_corpus -- --ignored
//! write_seeds`). See docs/fuzzing.md.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

use ruma::{CanonicalJsonObject, RoomVersionId};
use serde_json::{Value, json};

/// A target's name and its function.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 7] = [
    ("pdu", weft::fuzzing::pdu),
    ("canonical_json", weft::fuzzing::canonical_json),
    ("x_matrix", weft::fuzzing::x_matrix),
    ("sync_token", weft::fuzzing::sync_token),
    ("pagination_token", weft::fuzzing::pagination_token),
    ("filter", weft::fuzzing::filter),
    ("event_auth", weft::fuzzing::event_auth),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of `target` (corpus and regressions): each that
/// panics is named.
fn replay(target: &str) {
    let (_, run) = TARGETS.iter().find(|(name, _)| *name == target).expect("a target");
    let corpus = inputs("corpus", target);
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ has seeds");
    let mut panicked = Vec::new();
    for path in corpus.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(path).expect("readable input");
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(panicked.is_empty(), "{target} panicked on: {panicked:#?}");
}

#[test]
fn replay_pdu() {
    replay("pdu");
}

#[test]
fn replay_canonical_json() {
    replay("canonical_json");
}

#[test]
fn replay_x_matrix() {
    replay("x_matrix");
}

#[test]
fn replay_sync_token() {
    replay("sync_token");
}

#[test]
fn replay_pagination_token() {
    replay("pagination_token");
}

#[test]
fn replay_filter() {
    replay("filter");
}

#[test]
fn replay_event_auth() {
    replay("event_auth");
}

/// No input sits where nothing replays it.
#[test]
fn every_input_directory_is_a_target() {
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                path.is_dir() && TARGETS.iter().any(|(target, _)| *target == name),
                "fuzz/{kind}/{name} is no target's"
            );
        }
    }
}

// --- The event_auth room -----------------------------------------------------

const CREATOR: &str = weft::fuzzing::CREATOR;
const INVITED: &str = weft::fuzzing::INVITED;
const BANNED: &str = weft::fuzzing::BANNED;
const STRANGER: &str = "@dave:c.test";

const AUTH_VERSIONS: [RoomVersionId; 5] = weft::fuzzing::AUTH_VERSIONS;

/// The ID of the event_auth room's state event of `(kind, key)`.
fn state_id(kind: &str, key: &str) -> Option<&'static str> {
    Some(match (kind, key) {
        ("m.room.create", "") => "$create",
        ("m.room.member", CREATOR) => "$alice",
        ("m.room.power_levels", "") => "$power",
        ("m.room.join_rules", "") => "$join_rules",
        ("m.room.member", INVITED) => "$bob",
        ("m.room.member", BANNED) => "$carol",
        _ => return None,
    })
}

/// An event of the event_auth room (`<version>\n<PDU>`), its auth events
/// chosen as a server would (ruma's selection, of the state held).
fn auth_input(version: &RoomVersionId, sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> Vec<u8> {
    let rules = version.rules().unwrap();
    let v1_refs = rules.event_format.require_event_id;
    let room_id = if rules.authorization.room_create_event_id_as_room_id {
        "!create"
    } else {
        "!room:a.test"
    };
    let content_raw = serde_json::value::to_raw_value(&content).unwrap();
    let sender_id = <&ruma::UserId>::try_from(sender).unwrap();
    let mut auth: Vec<&str> =
        ruma::state_res::auth_types_for_event(&kind.into(), sender_id, state_key, &content_raw, &rules.authorization)
            .unwrap()
            .iter()
            .filter_map(|(kind, key)| state_id(&kind.to_string(), key))
            .collect();
    auth.sort();
    let reference = |id: &str| if v1_refs { json!([id, {}]) } else { json!(id) };
    let mut pdu = json!({
        "type": kind,
        "sender": sender,
        "room_id": room_id,
        "content": content,
        "depth": 7,
        "origin_server_ts": 1_700_000_000_000u64,
        "prev_events": [reference("$carol")],
        "auth_events": auth.iter().map(|id| reference(id)).collect::<Vec<_>>(),
    });
    if let Some(key) = state_key {
        pdu["state_key"] = key.into();
    }
    if v1_refs {
        pdu["event_id"] = "$fuzzed:a.test".into();
    }
    if kind == "m.room.redaction" && !rules.redaction.content_field_redacts {
        pdu["redacts"] = "$alice".into();
    }
    format!("{version}\n{pdu}").into_bytes()
}

/// An event of the event_auth room's seeds: (name, sender, type, state
/// key, content, accepted).
type AuthCase = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Value,
    bool,
);

fn auth_cases() -> Vec<AuthCase> {
    let member = |m: &str| json!({ "membership": m });
    vec![
        (
            "creator-message",
            CREATOR,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "hi"}),
            true,
        ),
        (
            "creator-topic",
            CREATOR,
            "m.room.topic",
            Some(""),
            json!({"topic": "fuzzing"}),
            true,
        ),
        (
            "creator-power-levels",
            CREATOR,
            "m.room.power_levels",
            Some(""),
            json!({"users": {INVITED: 50}, "state_default": 50, "events_default": 0}),
            true,
        ),
        (
            "creator-invites-stranger",
            CREATOR,
            "m.room.member",
            Some(STRANGER),
            member("invite"),
            true,
        ),
        (
            "creator-kicks-invited",
            CREATOR,
            "m.room.member",
            Some(INVITED),
            member("leave"),
            true,
        ),
        (
            "creator-redacts",
            CREATOR,
            "m.room.redaction",
            None,
            json!({"redacts": "$alice"}),
            true,
        ),
        (
            "invited-joins",
            INVITED,
            "m.room.member",
            Some(INVITED),
            member("join"),
            true,
        ),
        (
            "invited-declines",
            INVITED,
            "m.room.member",
            Some(INVITED),
            member("leave"),
            true,
        ),
        (
            "invited-message",
            INVITED,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "hi"}),
            false,
        ),
        (
            "banned-joins",
            BANNED,
            "m.room.member",
            Some(BANNED),
            member("join"),
            false,
        ),
        (
            "banned-unbans-self",
            BANNED,
            "m.room.member",
            Some(BANNED),
            member("leave"),
            false,
        ),
        (
            "stranger-joins",
            STRANGER,
            "m.room.member",
            Some(STRANGER),
            member("join"),
            false,
        ),
        (
            "stranger-knocks",
            STRANGER,
            "m.room.member",
            Some(STRANGER),
            member("knock"),
            false,
        ),
        (
            "stranger-topic",
            STRANGER,
            "m.room.topic",
            Some(""),
            json!({"topic": "mine"}),
            false,
        ),
        (
            "invited-invites",
            INVITED,
            "m.room.member",
            Some(STRANGER),
            member("invite"),
            false,
        ),
        (
            "invited-power-levels",
            INVITED,
            "m.room.power_levels",
            Some(""),
            json!({"users": {INVITED: 100}}),
            false,
        ),
    ]
}

/// The auth rules answer as the room's state says, in every version the
/// target fuzzes; and what they accept is what the target's own check
/// (`assert_allowed_sender`) allows.
#[test]
fn event_auth_room_answers() {
    for version in &AUTH_VERSIONS {
        for (name, sender, kind, state_key, content, accepted) in auth_cases() {
            let input = auth_input(version, sender, kind, state_key, content);
            let outcome = weft::fuzzing::event_auth_outcome(&input)
                .unwrap_or_else(|| panic!("v{version} {name}: not a well-formed PDU of the room"));
            assert_eq!(outcome.is_ok(), accepted, "v{version} {name}: {outcome:?}");
        }
    }
}

// --- The seed writer ---------------------------------------------------------

/// A PDU of `origin.test`, signed.
fn signed_pdu(version: &RoomVersionId, pdu: Value) -> Vec<u8> {
    let object: CanonicalJsonObject = serde_json::from_value(pdu).unwrap();
    let signed = weft::fuzzing::sign_pdu(object, version);
    format!("{version}\n{}", serde_json::to_string(&signed).unwrap()).into_bytes()
}

fn pdu_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let alice = "@alice:origin.test";
    let base = |room_id: &str, kind: &str, content: Value, refs: Value| {
        json!({
            "type": kind,
            "sender": alice,
            "room_id": room_id,
            "origin": "origin.test",
            "content": content,
            "depth": 3,
            "origin_server_ts": 1_700_000_000_000u64,
            "prev_events": refs.clone(),
            "auth_events": refs,
        })
    };
    let v1 = RoomVersionId::V1;
    let pairs = json!([["$create:origin.test", {"sha256": "aGFzaA"}]]);
    let mut create = base(
        "!room:origin.test",
        "m.room.create",
        json!({"creator": alice, "room_version": "1"}),
        json!([]),
    );
    create["state_key"] = "".into();
    create["depth"] = 1.into();
    create["event_id"] = "$create:origin.test".into();
    seeds.push(("v1-create".to_owned(), signed_pdu(&v1, create)));
    let mut message = base(
        "!room:origin.test",
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hello"}),
        pairs.clone(),
    );
    message["event_id"] = "$message:origin.test".into();
    seeds.push(("v1-message".to_owned(), signed_pdu(&v1, message)));
    let mut redaction = base("!room:origin.test", "m.room.redaction", json!({}), pairs);
    redaction["redacts"] = "$message:origin.test".into();
    redaction["event_id"] = "$redaction:origin.test".into();
    seeds.push(("v1-redaction".to_owned(), signed_pdu(&v1, redaction)));

    let refs = json!(["$Y2hpbGQ", "$cGFyZW50"]);
    for (version, name) in [
        (RoomVersionId::V3, "v3"),
        (RoomVersionId::V5, "v5"),
        (RoomVersionId::V10, "v10"),
        (RoomVersionId::V11, "v11"),
    ] {
        let room = "!room:origin.test";
        let message = base(
            room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "hello", "m.mentions": {}}),
            refs.clone(),
        );
        seeds.push((format!("{name}-message"), signed_pdu(&version, message)));
        let mut member = base(
            room,
            "m.room.member",
            json!({"membership": "join", "displayname": "Alice"}),
            refs.clone(),
        );
        member["state_key"] = alice.into();
        seeds.push((format!("{name}-join"), signed_pdu(&version, member)));
        let mut power = base(
            room,
            "m.room.power_levels",
            json!({"users": {alice: 100}, "events": {"m.room.name": 50}, "notifications": {"room": 50}}),
            refs.clone(),
        );
        power["state_key"] = "".into();
        seeds.push((format!("{name}-power-levels"), signed_pdu(&version, power)));
    }
    // A restricted join, signed by the authorising server too (here the
    // same one).
    let mut restricted = base(
        "!room:origin.test",
        "m.room.member",
        json!({"membership": "join", "join_authorised_via_users_server": alice}),
        refs.clone(),
    );
    restricted["state_key"] = "@bob:origin.test".into();
    restricted["sender"] = "@bob:origin.test".into();
    seeds.push((
        "v8-restricted-join".to_owned(),
        signed_pdu(&RoomVersionId::V8, restricted),
    ));
    // v11: `redacts` in the content.
    let redaction = base(
        "!room:origin.test",
        "m.room.redaction",
        json!({"redacts": "$bWVzc2FnZQ"}),
        refs.clone(),
    );
    seeds.push(("v11-redaction".to_owned(), signed_pdu(&RoomVersionId::V11, redaction)));
    // A content hash that does not match: kept redacted.
    let message = base(
        "!room:origin.test",
        "m.room.message",
        json!({"msgtype": "m.text", "body": "original"}),
        refs.clone(),
    );
    let signed = signed_pdu(&RoomVersionId::V10, message);
    let tampered = String::from_utf8(signed).unwrap().replace("original", "tampered");
    seeds.push(("v10-content-hash-mismatch".to_owned(), tampered.into_bytes()));
    // v12: the create event has no room ID; the room's ID is its hash.
    let mut create = base("", "m.room.create", json!({"room_version": "12"}), json!([]));
    create.as_object_mut().unwrap().remove("room_id");
    create["state_key"] = "".into();
    create["depth"] = 1.into();
    let v12 = RoomVersionId::V12;
    seeds.push(("v12-create".to_owned(), signed_pdu(&v12, create)));
    let message = base(
        "!Y3JlYXRl",
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hello"}),
        json!(["$cGFyZW50"]),
    );
    seeds.push(("v12-message".to_owned(), signed_pdu(&v12, message)));
    // `unsigned`, and an `event_id` a v3+ event does not carry, both
    // added after signing.
    let extra = base(
        "!room:origin.test",
        "m.room.message",
        json!({"body": "x"}),
        refs.clone(),
    );
    let v6 = RoomVersionId::V6;
    let mut extra = weft::fuzzing::sign_pdu(serde_json::from_value(extra).unwrap(), &v6);
    extra.insert("event_id".to_owned(), "$Zm9v".into());
    extra.insert(
        "unsigned".to_owned(),
        serde_json::from_value(json!({"age": 5})).unwrap(),
    );
    seeds.push((
        "v6-event-id-and-unsigned".to_owned(),
        format!("{v6}\n{}", serde_json::to_string(&extra).unwrap()).into_bytes(),
    ));
    // Numbers canonical JSON has not (legal in rooms v1–5, as Synapse
    // writes them): not signable here, so written by hand.
    seeds.push((
        "v5-float".to_owned(),
        br#"5
{"auth_events":["$Y2hpbGQ"],"content":{"body":"x","n":1.5,"big":12345678901234567890},"depth":3,"origin":"origin.test","origin_server_ts":1700000000000,"prev_events":["$cGFyZW50"],"room_id":"!room:origin.test","sender":"@alice:origin.test","type":"m.room.message"}"#
            .to_vec(),
    ));
    seeds.push((
        "v2-float".to_owned(),
        br#"2
{"auth_events":[],"content":{"n":-0.0},"depth":3,"event_id":"$x:origin.test","origin_server_ts":1,"prev_events":[],"room_id":"!room:origin.test","sender":"@alice:origin.test","type":"m.room.message"}"#
            .to_vec(),
    ));
    seeds.push(("no-version".to_owned(), b"{\"type\":\"m.room.message\"}".to_vec()));
    seeds
}

fn x_matrix_seeds() -> Vec<(String, Vec<u8>)> {
    let request = |method: &str, uri: &str, headers: &[String], body: &str| {
        format!("{method} {uri}\n{}\n\n{body}", headers.join("\n")).into_bytes()
    };
    let sign = |method: &str, uri: &str, body: &str| weft::fuzzing::sign_request(method, uri, body.as_bytes());
    let mut seeds = Vec::new();
    let profile = "/_matrix/federation/v1/query/profile?user_id=%40alice%3Aweft.test&field=displayname";
    seeds.push((
        "signed-get".to_owned(),
        request("GET", profile, &[sign("GET", profile, "")], ""),
    ));
    let send = "/_matrix/federation/v1/send/1700000000000";
    let txn = r#"{"edus":[],"origin":"origin.test","origin_server_ts":1700000000000,"pdus":[]}"#;
    seeds.push((
        "signed-send".to_owned(),
        request("PUT", send, &[sign("PUT", send, txn)], txn),
    ));
    let loose_txn = r#"{"edus":[],"origin":"origin.test","origin_server_ts":1700000000000,"pdus":[{"content":{"n":1.5,"m":1e20,"big":12345678901234567890},"type":"m.room.message"}]}"#;
    seeds.push((
        "signed-send-loose-numbers".to_owned(),
        request("PUT", send, &[sign("PUT", send, loose_txn)], loose_txn),
    ));
    let join = "/_matrix/federation/v2/send_join/!room:weft.test/$event";
    let float_body = r#"{"content":{"n":1.5}}"#;
    seeds.push((
        "send-join-float".to_owned(),
        request("PUT", join, &[sign("PUT", join, "{}")], float_body),
    ));
    let keys = "/_matrix/federation/v1/user/keys/query";
    let body = r#"{"device_keys":{"@alice:weft.test":[]}}"#;
    let signed = sign("POST", keys, body);
    // Without the destination (before spec v1.3), lower-case scheme,
    // spaces, an unknown parameter, several headers.
    let params = signed.trim_start_matches("X-Matrix ");
    let no_destination: Vec<&str> = params.split(',').filter(|p| !p.starts_with("destination=")).collect();
    seeds.push((
        "no-destination".to_owned(),
        request("POST", keys, &[format!("X-Matrix {}", no_destination.join(","))], body),
    ));
    seeds.push((
        "lower-case-spaced-extra".to_owned(),
        request(
            "POST",
            keys,
            &[signed.replace("X-Matrix", "x-matrix").replace(',', ", ") + ", extra=\"a\\\"b\""],
            body,
        ),
    ));
    seeds.push((
        "bad-then-good".to_owned(),
        request(
            "POST",
            keys,
            &[
                "Bearer abc".to_owned(),
                r#"X-Matrix origin="not a server",key="ed25519:fuzz",sig="AAAA""#.to_owned(),
                signed.clone(),
            ],
            body,
        ),
    ));
    seeds.push((
        "other-destination".to_owned(),
        request("POST", keys, &[signed.replace("weft.test", "elsewhere.test")], body),
    ));
    seeds.push((
        "duplicate-origin".to_owned(),
        request(
            "GET",
            "/_matrix/federation/v1/version",
            &[r#"X-Matrix origin=a.test,origin=b.test,key="ed25519:1",sig="YWJj""#.to_owned()],
            "",
        ),
    ));
    seeds.push((
        "unknown-origin".to_owned(),
        request(
            "GET",
            "/_matrix/federation/v1/version",
            &[r#"X-Matrix origin="c.test:8448",destination="weft.test",key="ed25519:a_b",sig="YWJjZA""#.to_owned()],
            "",
        ),
    ));
    seeds
}

fn lines(seeds: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    seeds
        .iter()
        .map(|(name, text)| (name.to_string(), text.as_bytes().to_vec()))
        .collect()
}

fn canonical_json_seeds() -> Vec<(String, Vec<u8>)> {
    lines(&[
        ("object", r#"{"b":1,"a":[true,false,null],"c":{"d":"e"}}"#),
        (
            "unicode",
            r#"{"\u00e9":"\u2603 \ud83d\ude00","esc":"\n\t\"\\\u0000\u001f"}"#,
        ),
        ("safe-integers", "[9007199254740991,-9007199254740991,0,-0]"),
        (
            "unsafe-integers",
            "[9007199254740992,-9007199254740992,18446744073709551615]",
        ),
        ("floats", "[1.5,1.0,1e20,1e-5,-0.0,0.1,1.7976931348623157e308,5e-324]"),
        ("big-integer", "123456789012345678901234567890"),
        ("nested", r#"[[[[{"a":[[{"b":[1.5]}]]}]]]]"#),
        (
            "number-like-strings",
            r#"{"s":"9007199254740991","n":2.5,"k":9007199254740990}"#,
        ),
        ("empty", "{}"),
        ("whitespace", " { \"a\" : [ 1 , 2 ] } "),
        ("duplicate-keys", r#"{"a":1,"a":2.5}"#),
        ("lowest-integer", "-9223372036854775808"),
        (
            "placeholder-in-string",
            r#"{"a":1.5,"s":",9007199254740991,","t":"[9007199254740990]"}"#,
        ),
        (
            "event",
            r#"{"auth_events":[],"content":{"body":"hi","n":2.5},"depth":1,"origin_server_ts":1,"prev_events":[],"room_id":"!r:a.test","sender":"@a:a.test","type":"m.room.message"}"#,
        ),
    ])
}

fn sync_token_seeds() -> Vec<(String, Vec<u8>)> {
    lines(&[
        ("full", "s12_3_4_5_6"),
        ("old", "s12"),
        ("two-parts", "s12_3"),
        ("four-parts", "s12_3_4_5"),
        ("empty-parts", "s12____7"),
        ("later-parts", "s12_3_4_5_6_7"),
        ("trailing-underscore", "s12_"),
        ("not-a-number", "s1_x"),
        ("topological", "t5_6"),
        ("negative", "s-1_-2"),
        ("plus", "s+5_+6"),
        (
            "max",
            "s9223372036854775807_9223372036854775807_9223372036854775807_9223372036854775807_9223372036854775807",
        ),
        ("overflow", "s9223372036854775808"),
        ("empty", ""),
        ("unicode", "s\u{661}\u{662}"),
    ])
}

fn pagination_token_seeds() -> Vec<(String, Vec<u8>)> {
    lines(&[
        ("topological", "t5_6"),
        ("negative", "t-3_-7"),
        ("stream", "s12"),
        ("sync", "s12_3_4_5_6"),
        ("max", "t9223372036854775807_9223372036854775807"),
        ("min", "t-9223372036854775808_-9223372036854775808"),
        ("no-stream", "t5"),
        ("empty-parts", "t_"),
        ("three-parts", "t1_2_3"),
        ("other", "x12"),
        ("empty", ""),
    ])
}

fn filter_seeds() -> Vec<(String, Vec<u8>)> {
    lines(&[
        (
            "spec-example",
            r#"{"event_fields":["type","content","sender"],"event_format":"client","presence":{"not_senders":["@alice:example.com"],"types":["m.presence"]},"room":{"ephemeral":{"not_rooms":["!726s6s6q:example.com"],"not_senders":["@spam:example.com"],"types":["m.receipt","m.typing"]},"rooms":["!726s6s6q:example.com"],"state":{"not_rooms":["!726s6s6q:example.com"],"types":["m.room.*"]},"timeline":{"limit":10,"not_rooms":["!726s6s6q:example.com"],"not_senders":["@spam:example.com"],"types":["m.room.message"]}}}"#,
        ),
        ("empty", "{}"),
        (
            "lazy-loading",
            r#"{"room":{"state":{"lazy_load_members":true,"include_redundant_members":true},"timeline":{"lazy_load_members":true}}}"#,
        ),
        (
            "wildcards",
            r#"{"room":{"timeline":{"types":["m.*.message","*member","*"],"not_types":["m.room.member*"]}}}"#,
        ),
        (
            "url",
            r#"{"room":{"timeline":{"contains_url":true},"state":{"contains_url":false}}}"#,
        ),
        (
            "rooms",
            r#"{"room":{"rooms":["!room:a.test"],"not_rooms":["!other:b.test"],"include_leave":true,"account_data":{"types":["m.tag"]}}}"#,
        ),
        (
            "federation-format",
            r#"{"event_format":"federation","event_fields":["content.body","unsigned.age"]}"#,
        ),
        (
            "account-data",
            r#"{"account_data":{"types":["m.*"],"not_types":["m.push_rules"],"limit":0},"presence":{"not_types":["*"]}}"#,
        ),
        (
            "senders",
            r#"{"room":{"timeline":{"senders":["@alice:a.test"],"not_senders":["@bob:b.test"],"limit":0}}}"#,
        ),
        (
            "unread-thread",
            r#"{"room":{"timeline":{"unread_thread_notifications":true,"limit":1000000}}}"#,
        ),
        ("filter-id", "5"),
        ("not-json", "{bad"),
        ("wrong-types", r#"{"room":5,"event_format":7}"#),
        ("not-an-object", "[]"),
        ("bad-room-id", r#"{"room":{"rooms":["not a room"]}}"#),
    ])
}

fn event_auth_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for version in &AUTH_VERSIONS {
        for (name, sender, kind, state_key, content, _) in auth_cases() {
            seeds.push((
                format!("v{version}-{name}"),
                auth_input(version, sender, kind, state_key, content),
            ));
        }
    }
    seeds
}

/// Writes the corpus: every seed above, into `fuzz/corpus/<target>/`.
/// Signatures are deterministic (ed25519, a fixed key): writing again
/// gives the same files.
#[test]
#[ignore = "writes fuzz/corpus/: run by hand"]
fn write_seeds() {
    for (target, seeds) in [
        ("pdu", pdu_seeds()),
        ("canonical_json", canonical_json_seeds()),
        ("x_matrix", x_matrix_seeds()),
        ("sync_token", sync_token_seeds()),
        ("pagination_token", pagination_token_seeds()),
        ("filter", filter_seeds()),
        ("event_auth", event_auth_seeds()),
    ] {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            assert!(data.len() < 4096, "{target}/{name} is small");
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}
