//! Federation helpers for tests: what a remote server does, done with
//! that server's own key and federation client.
#![allow(dead_code)]

use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId,
    api::federation::membership::{create_join_event, prepare_join_event},
    signatures::Verified,
};
use serde_json::value::RawValue;

use super::TestServer;

/// B's user joins A's room the way B's server will (make_join, sign,
/// send_join), with B's federation client and B's key.
pub async fn remote_join(
    a: &TestServer,
    b: &TestServer,
    room: &OwnedRoomId,
    user: &OwnedUserId,
) -> create_join_event::v2::RoomState {
    remote_join_with(a, b, room, user, false).await
}

/// [`remote_join`], asking for a partial state (`omit_members`) or not.
pub async fn remote_join_with(
    a: &TestServer,
    b: &TestServer,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    omit_members: bool,
) -> create_join_event::v2::RoomState {
    let fed = &b.services().federation;
    let mut make = prepare_join_event::v1::Request::new(room.clone(), user.clone());
    make.ver = vec![RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];
    let template = fed.send(&a.server_name(), make).await.expect("make_join");
    let version = template.room_version.expect("room version");
    let rules = version.rules().unwrap();
    let mut event: CanonicalJsonObject = serde_json::from_str(template.event.get()).unwrap();
    let keys = &b.services().keys;
    ruma::signatures::hash_and_sign_event(b.server_name().as_str(), keys.key_pair(), &mut event, &rules.redaction)
        .unwrap();
    let event_id: OwnedEventId = format!("${}", ruma::signatures::reference_hash(&event, &rules).unwrap())
        .try_into()
        .unwrap();
    let pdu = serde_json::value::to_raw_value(&event).unwrap();
    let mut send = create_join_event::v2::Request::new(room.clone(), event_id, pdu);
    send.omit_members = omit_members;
    fed.send(&a.server_name(), send).await.expect("send_join").room_state
}

/// Checks a PDU as B's server checks what it receives (format, A's
/// signature, content hash, event ID) and independently with ruma.
pub async fn verify_pdu(b: &TestServer, version: &RoomVersionId, raw: &RawValue) -> OwnedEventId {
    let pdu = weft::event_checks::check_signed(b.services(), version, raw)
        .await
        .expect("PDU passes B's checks");
    let object: CanonicalJsonObject = serde_json::from_str(raw.get()).unwrap();
    let sender_server = pdu.sender.server_name().to_owned();
    let key_ids: Vec<String> = match &object["signatures"] {
        ruma::CanonicalJsonValue::Object(s) => match &s[sender_server.as_str()] {
            ruma::CanonicalJsonValue::Object(k) => k.keys().cloned().collect(),
            _ => panic!("no signature of {sender_server}"),
        },
        _ => panic!("no signatures"),
    };
    let ids: Vec<&str> = key_ids.iter().map(String::as_str).collect();
    let keys = b.services().keyring.key_map(&sender_server, &ids, 0).await.unwrap();
    let rules = version.rules().unwrap();
    let verified = ruma::signatures::verify_event(&keys, &object, &rules).expect("signature verifies");
    assert_eq!(verified, Verified::All, "content hash of {}", pdu.event_id);
    pdu.event_id
}

/// The `Authorization: X-Matrix …` of a request to `destination` signed as
/// `b` (method, path with query, JSON body).
pub fn x_matrix(
    b: &TestServer,
    method: &http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    destination: &str,
) -> ruma::api::federation::authentication::XMatrix {
    let body = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
    let req = http::Request::builder().method(method).uri(path).body(body).unwrap();
    let input = ruma::api::federation::authentication::XMatrixSigningInput::new(
        b.server_name(),
        ruma::OwnedServerName::try_from(destination).unwrap(),
        b.services().keys.key_pair(),
    );
    ruma::api::federation::authentication::XMatrix::sign_http_request(&req, input).unwrap()
}

/// A federation request to `a`, built by hand and signed as `b`: its
/// status and JSON body.
pub async fn signed_request(
    a: &TestServer,
    b: &TestServer,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    weft::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let auth = x_matrix(b, &method, path, body, a.server_name().as_str()).to_string();
    let mut req = client
        .request(method, format!("{}{path}", a.federation_base()))
        .header("Authorization", auth);
    if let Some(body) = body {
        req = req.json(body);
    }
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(serde_json::Value::Null),
    )
}
