//! The federation read API between two weft servers on loopback: server
//! B's federation client fetches from A with signed requests; every PDU
//! B receives verifies against A's published key.

mod common;

use common::federation::{remote_join, verify_pdu};

use std::collections::HashSet;

use common::{TestServer, enc};
use reqwest::Method;
use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId, UInt,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
    },
};
use serde_json::{Value, json, value::RawValue};

fn event_ids(pdus: &[Box<RawValue>], version: &RoomVersionId) -> Vec<OwnedEventId> {
    let rules = version.rules().unwrap();
    pdus.iter()
        .map(|raw| {
            let object: CanonicalJsonObject = serde_json::from_str(raw.get()).unwrap();
            format!("${}", ruma::signatures::reference_hash(&object, &rules).unwrap())
                .try_into()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_b_reads_history_from_server_a() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let room: OwnedRoomId = alice
        .create_room(json!({ "preset": "public_chat", "name": "history" }))
        .await
        .parse()
        .unwrap();
    let version = RoomVersionId::V11;
    let bob: OwnedUserId = format!("@bob:{}", b.server_name()).try_into().unwrap();

    // B's user joins; the send_join answer verifies.
    let joined = remote_join(&a, &b, &room, &bob).await;
    assert!(!joined.state.is_empty() && !joined.auth_chain.is_empty());
    for pdu in joined.state.iter().chain(&joined.auth_chain) {
        verify_pdu(&b, &version, pdu).await;
    }
    let members = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room.as_str())),
            None,
        )
        .await;
    assert!(
        members["joined"][bob.as_str()].is_object(),
        "A sees B's user joined: {members}"
    );

    const N: usize = 1000;
    for i in 0..N {
        let (status, body) = alice
            .send_text(room.as_str(), &format!("m{i}"), &format!("message {i}"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let latest = alice.messages(room.as_str(), "dir=b&limit=1").await["chunk"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let latest: OwnedEventId = latest.try_into().unwrap();
    let fed = &b.services().federation;

    // /event
    let got = fed
        .send(&a.server_name(), get_event::v1::Request::new(latest.clone()))
        .await
        .unwrap();
    assert_eq!(got.origin, a.server_name());
    assert_eq!(verify_pdu(&b, &version, &got.pdu).await, latest);

    // /backfill pages back through everything, 100 at a time.
    let mut seen: Vec<OwnedEventId> = Vec::new();
    let mut bodies: Vec<String> = Vec::new();
    let mut v = vec![latest.clone()];
    loop {
        let mut req = get_backfill::v1::Request::new(room.clone(), v.clone(), UInt::new(100).unwrap());
        req.limit = UInt::new(100).unwrap();
        let page = fed.send(&a.server_name(), req).await.unwrap();
        assert!(page.pdus.len() <= 100);
        if page.pdus.is_empty() {
            break;
        }
        let mut oldest_prevs = Vec::new();
        for raw in &page.pdus {
            let id = verify_pdu(&b, &version, raw).await;
            let value: Value = serde_json::from_str(raw.get()).unwrap();
            if value["type"] == "m.room.message" {
                bodies.push(value["content"]["body"].as_str().unwrap().to_owned());
            }
            oldest_prevs = value["prev_events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().try_into().unwrap())
                .collect();
            seen.push(id);
        }
        if oldest_prevs.is_empty() {
            break;
        }
        v = oldest_prevs;
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    let expected: Vec<String> = (0..N).rev().map(|i| format!("message {i}")).collect();
    assert_eq!(bodies, expected, "every message once, most recent first");

    // /state and /state_ids at an event equal the state the client API shows there.
    let some_event: OwnedEventId =
        alice.messages(room.as_str(), "dir=b&limit=1&from=t500_0").await["chunk"][0]["event_id"]
            .as_str()
            .unwrap()
            .try_into()
            .unwrap();
    let context = alice
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=0",
                enc(room.as_str()),
                enc(some_event.as_str())
            ),
            None,
        )
        .await;
    let mut client_state: Vec<String> = context["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    client_state.sort();
    let ids = fed
        .send(
            &a.server_name(),
            get_room_state_ids::v1::Request::new(some_event.clone(), room.clone()),
        )
        .await
        .unwrap();
    let mut fed_state: Vec<String> = ids.pdu_ids.iter().map(|e| e.to_string()).collect();
    fed_state.sort();
    assert_eq!(fed_state, client_state);
    let full = fed
        .send(
            &a.server_name(),
            get_room_state::v1::Request::new(some_event.clone(), room.clone()),
        )
        .await
        .unwrap();
    let mut full_ids: Vec<String> = event_ids(&full.pdus, &version).iter().map(|e| e.to_string()).collect();
    full_ids.sort();
    assert_eq!(full_ids, client_state);
    for pdu in full.pdus.iter().chain(&full.auth_chain) {
        verify_pdu(&b, &version, pdu).await;
    }
    let chain: HashSet<_> = event_ids(&full.auth_chain, &version).into_iter().collect();
    let chain_ids: HashSet<_> = ids.auth_chain_ids.into_iter().collect();
    assert_eq!(chain, chain_ids);
    assert!(!chain.is_empty());

    // /event_auth: the auth chain of one event.
    let auth = fed
        .send(
            &a.server_name(),
            get_event_authorization::v1::Request::new(room.clone(), latest.clone()),
        )
        .await
        .unwrap();
    assert!(
        auth.auth_chain.len() >= 3,
        "create, power levels, sender's membership at least"
    );

    // /get_missing_events: what lies between two events.
    let earliest = seen[10].clone();
    let mut req = get_missing_events::v1::Request::new(room.clone(), vec![earliest], vec![latest.clone()]);
    req.limit = UInt::new(5).unwrap();
    let missing = fed.send(&a.server_name(), req).await.unwrap();
    let missing_ids = event_ids(&missing.events, &version);
    assert_eq!(
        missing_ids,
        seen[1..6].iter().rev().cloned().collect::<Vec<_>>(),
        "oldest first, latest excluded"
    );
}
