//! The specification's own test vectors (appendices.md): canonical JSON,
//! JSON signing and event signing, through the code weft signs with.

use ruma::{CanonicalJsonObject, RoomVersionId, canonical_json::CanonicalJsonValue};
use serde_json::{Value, json};
use weft::keys::ServerKeys;

/// `SIGNING_KEY_SEED`, server `domain`, key `ed25519:1`.
fn vector_keys() -> ServerKeys {
    ServerKeys::from_synapse_format(
        "ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
        "domain".try_into().unwrap(),
    )
    .unwrap()
}

fn canonical(value: Value) -> String {
    let object: CanonicalJsonValue = value.try_into().expect("valid canonical JSON value");
    object.to_string()
}

#[test]
fn canonical_json_vectors() {
    let cases = [
        (json!({}), r#"{}"#),
        (json!({ "one": 1, "two": "Two" }), r#"{"one":1,"two":"Two"}"#),
        (json!({ "b": "2", "a": "1" }), r#"{"a":"1","b":"2"}"#),
        (
            json!({ "auth": { "success": true, "mxid": "@john.doe:example.com", "profile": {
                "display_name": "John Doe",
                "three_pids": [
                    { "medium": "email", "address": "john.doe@example.org" },
                    { "medium": "msisdn", "address": "123456789" }
                ] } } }),
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
        ),
        (json!({ "a": "日本語" }), r#"{"a":"日本語"}"#),
        (json!({ "本": 2, "日": 1 }), r#"{"日":1,"本":2}"#),
        (serde_json::from_str(r#"{"a": "\u65E5"}"#).unwrap(), r#"{"a":"日"}"#),
        (json!({ "a": null }), r#"{"a":null}"#),
    ];
    for (input, expected) in cases {
        assert_eq!(canonical(input), expected);
    }
    // `{"a": -0, "b": 1e10}`: JSON parsers read both as floats, and room
    // versions 6 and later forbid floats in events, so weft refuses them
    // (ruma's canonical JSON); the integers they denote canonicalise as
    // the spec says.
    let floats: Value = serde_json::from_str(r#"{"a": -0, "b": 1e10}"#).unwrap();
    assert!(CanonicalJsonValue::try_from(floats).is_err());
    assert_eq!(
        canonical(json!({ "a": 0, "b": 10_000_000_000_i64 })),
        r#"{"a":0,"b":10000000000}"#
    );
    assert!(CanonicalJsonValue::try_from(json!({ "a": 1.5 })).is_err());
}

#[test]
fn json_signing_vectors() {
    let keys = vector_keys();
    assert_eq!(keys.key_id(), "ed25519:1");

    let mut empty = CanonicalJsonObject::new();
    keys.sign_json(&mut empty);
    assert_eq!(
        serde_json::to_value(&empty).unwrap(),
        json!({ "signatures": { "domain": {
            "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        } } })
    );

    let mut data: CanonicalJsonObject = serde_json::from_value(json!({ "one": 1, "two": "Two" })).unwrap();
    keys.sign_json(&mut data);
    assert_eq!(
        serde_json::to_value(&data).unwrap(),
        json!({ "one": 1, "two": "Two", "signatures": { "domain": {
            "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        } } })
    );
}

#[test]
fn event_signing_vectors() {
    let keys = vector_keys();
    // The vectors use the original (v1) redaction algorithm.
    let rules = RoomVersionId::V1.rules().unwrap();

    let mut minimal: CanonicalJsonObject = serde_json::from_value(json!({
        "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain", "origin_server_ts": 1000000,
        "signatures": {}, "hashes": {}, "type": "X", "content": {}, "prev_events": [], "auth_events": [],
        "depth": 3, "unsigned": { "age_ts": 1000000 }
    }))
    .unwrap();
    ruma::signatures::hash_and_sign_event("domain", keys.key_pair(), &mut minimal, &rules.redaction).unwrap();
    assert_eq!(
        serde_json::to_value(&minimal).unwrap(),
        json!({
            "auth_events": [], "content": {}, "depth": 3,
            "hashes": { "sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos" },
            "origin": "domain", "origin_server_ts": 1000000, "prev_events": [], "room_id": "!x:domain",
            "sender": "@a:domain",
            "signatures": { "domain": {
                "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
            } },
            "type": "X", "unsigned": { "age_ts": 1000000 }
        })
    );

    let mut message: CanonicalJsonObject = serde_json::from_value(json!({
        "content": { "body": "Here is the message content" }, "event_id": "$0:domain", "origin": "domain",
        "origin_server_ts": 1000000, "type": "m.room.message", "room_id": "!r:domain", "sender": "@u:domain",
        "signatures": {}, "unsigned": { "age_ts": 1000000 }
    }))
    .unwrap();
    ruma::signatures::hash_and_sign_event("domain", keys.key_pair(), &mut message, &rules.redaction).unwrap();
    assert_eq!(
        serde_json::to_value(&message["hashes"]).unwrap(),
        json!({ "sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g" })
    );
    assert_eq!(
        serde_json::to_value(&message["signatures"]).unwrap(),
        json!({ "domain": {
            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
        } })
    );
}

/// Request authentication as server-server-api.md's example shows it:
/// step 1 signs `{method, uri, origin, destination, content}` with the JSON
/// signing algorithm; step 2 puts that signature in an `X-Matrix` header.
/// The key is the spec's test signing key, as `ed25519:key1`.
#[test]
fn request_signing_follows_the_spec_example() {
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};

    let keys = ServerKeys::from_synapse_format(
        "ed25519 key1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
        "origin.hs.example.com".try_into().unwrap(),
    )
    .unwrap();
    let content = json!({ "hello": "world", "n": 1 });
    for (method, uri, body) in [
        ("POST", "/target", Some(&content)),
        ("GET", "/_matrix/federation/v1/version?a=b", None),
    ] {
        // Step 1, by the book.
        let mut step1 = json!({
            "method": method,
            "uri": uri,
            "origin": "origin.hs.example.com",
            "destination": "destination.hs.example.com",
        });
        if let Some(body) = body {
            step1["content"] = body.clone();
        }
        let mut object: CanonicalJsonObject = serde_json::from_value(step1).unwrap();
        keys.sign_json(&mut object);
        let expected_sig = object["signatures"].as_object().unwrap()["origin.hs.example.com"]
            .as_object()
            .unwrap()["ed25519:key1"]
            .as_str()
            .unwrap()
            .to_owned();

        // Step 2, as weft's federation client does it.
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default())
            .unwrap();
        let input = XMatrixSigningInput::new(
            "origin.hs.example.com".try_into().unwrap(),
            "destination.hs.example.com".try_into().unwrap(),
            keys.key_pair(),
        );
        let header = XMatrix::sign_http_request(&request, input).unwrap();
        assert_eq!(header.sig.encode(), expected_sig);
        let text = header.to_string();
        assert!(text.starts_with("X-Matrix "), "{text}");
        let parsed = XMatrix::parse(&text).unwrap();
        assert_eq!(parsed.origin.as_str(), "origin.hs.example.com");
        assert_eq!(
            parsed.destination.as_deref().map(|d| d.as_str()),
            Some("destination.hs.example.com")
        );
        assert_eq!(parsed.key.as_str(), "ed25519:key1");

        // And it verifies as weft's federation API checks it.
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(
            "ed25519:key1".to_owned(),
            ruma::serde::Base64::parse(keys.public_key_base64()).unwrap(),
        );
        let map = ruma::signatures::PublicKeyMap::from([("origin.hs.example.com".to_owned(), set)]);
        parsed
            .verify_http_request(&request, "destination.hs.example.com".try_into().unwrap(), &map)
            .unwrap();
        assert!(
            parsed
                .verify_http_request(&request, "elsewhere.example.com".try_into().unwrap(), &map)
                .is_err()
        );
    }
    // The spec's header, parsed: quoted values, any order.
    let spec_header = r#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF""#;
    let parsed = XMatrix::parse(spec_header).unwrap();
    assert_eq!(parsed.key.as_str(), "ed25519:key1");
}
