//! Serving partial-state joins (`send_join` with `omit_members`, MSC3706,
//! server-server spec "Joining Rooms"): the state without the member
//! events the joiner can do without, the matching auth chain, and the
//! servers in the room before the join.

mod common;

use std::collections::HashSet;

use common::{
    TestServer,
    federation::{remote_join, remote_join_with, verify_pdu},
};
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, api::federation::membership::create_join_event};
use serde_json::{Value, json};

fn parsed(pdus: &[Box<serde_json::value::RawValue>]) -> Vec<Value> {
    pdus.iter().map(|p| serde_json::from_str(p.get()).unwrap()).collect()
}

fn members(state: &[Value]) -> HashSet<String> {
    state
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect()
}

async fn answer_checks(b: &TestServer, answer: &create_join_event::v2::RoomState) {
    for pdu in answer.state.iter().chain(&answer.auth_chain) {
        verify_pdu(b, &RoomVersionId::V11, pdu).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_room_keeps_its_heroes_and_nothing_else_of_its_members() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room: OwnedRoomId = alice
        .create_room(json!({ "preset": "public_chat" }))
        .await
        .parse()
        .unwrap();
    assert_eq!(bob.join(room.as_str()).await.0, 200);
    let mut others = Vec::new();
    for name in ["carol", "dave", "erin", "frank", "gina"] {
        let user = a.register(name).await;
        assert_eq!(user.join(room.as_str()).await.0, 200);
        others.push(user.user_id.clone());
    }
    let joiner: OwnedUserId = format!("@zed:{}", b.server_name()).try_into().unwrap();

    let answer = remote_join_with(&a, &b, &room, &joiner, true).await;
    answer_checks(&b, &answer).await;
    assert!(answer.members_omitted);
    assert_eq!(answer.servers_in_room, Some(vec![a.server_name().to_string()]));
    let state = parsed(&answer.state);
    // The heroes: the five earliest members but the joiner (alice, bob,
    // carol, dave, erin); not frank and gina.
    let want: HashSet<String> = [alice.user_id.clone(), bob.user_id.clone()]
        .into_iter()
        .chain(others[..3].iter().cloned())
        .collect();
    assert_eq!(members(&state), want);
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
    ] {
        assert!(state.iter().any(|e| e["type"] == kind), "{kind} is in the state");
    }
    // What the state holds is not repeated in the auth chain, and the
    // chain holds what the join and the state need beyond it: nothing here.
    let ids: HashSet<&str> = state
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or_default())
        .collect();
    let chain = parsed(&answer.auth_chain);
    assert!(
        chain
            .iter()
            .all(|e| !ids.contains(e["event_id"].as_str().unwrap_or("-")))
    );
    assert!(chain.is_empty(), "{chain:?}");

    // The full answer, for comparison: every member.
    let full_joiner: OwnedUserId = format!("@yan:{}", b.server_name()).try_into().unwrap();
    let full = remote_join(&a, &b, &room, &full_joiner).await;
    assert!(!full.members_omitted);
    let all = members(&parsed(&full.state));
    assert_eq!(all.len(), 8, "{all:?}");
    // Servers before that join: a's, and b's (zed joined).
    let mut servers = vec![a.server_name().to_string(), b.server_name().to_string()];
    servers.sort();
    assert_eq!(full.servers_in_room, Some(servers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_room_keeps_no_member_but_the_auth_chain_has_what_the_state_needs() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room: OwnedRoomId = alice
        .create_room(json!({ "preset": "public_chat", "name": "Named" }))
        .await
        .parse()
        .unwrap();
    assert_eq!(bob.join(room.as_str()).await.0, 200);
    let joiner: OwnedUserId = format!("@zed:{}", b.server_name()).try_into().unwrap();
    let answer = remote_join_with(&a, &b, &room, &joiner, true).await;
    answer_checks(&b, &answer).await;
    assert!(answer.members_omitted);
    let state = parsed(&answer.state);
    assert!(members(&state).is_empty(), "{:?}", members(&state));
    assert!(state.iter().any(|e| e["type"] == "m.room.name"));
    // The state's events were authorised by alice's membership: it comes
    // in the auth chain.
    let chain = parsed(&answer.auth_chain);
    assert!(
        chain
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str()),
        "{chain:?}"
    );
    assert!(!chain.iter().any(|e| e["state_key"] == bob.user_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_send_join_is_always_full() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let room: OwnedRoomId = alice
        .create_room(json!({ "preset": "public_chat", "name": "Old API" }))
        .await
        .parse()
        .unwrap();
    let joiner: OwnedUserId = format!("@zed:{}", b.server_name()).try_into().unwrap();
    // A template from make_join, signed, sent to v1 with omit_members.
    let fed = &b.services().federation;
    let mut make =
        ruma::api::federation::membership::prepare_join_event::v1::Request::new(room.clone(), joiner.clone());
    make.ver = vec![RoomVersionId::V11];
    let template = fed.send(&a.server_name(), make).await.unwrap();
    let rules = RoomVersionId::V11.rules().unwrap();
    let mut event: ruma::CanonicalJsonObject = serde_json::from_str(template.event.get()).unwrap();
    ruma::signatures::hash_and_sign_event(
        b.server_name().as_str(),
        b.services().keys.key_pair(),
        &mut event,
        &rules.redaction,
    )
    .unwrap();
    let event_id = format!("${}", ruma::signatures::reference_hash(&event, &rules).unwrap());
    let path = format!(
        "/_matrix/federation/v1/send_join/{}/{}?omit_members=true",
        common::enc(room.as_str()),
        common::enc(&event_id)
    );
    let body = serde_json::to_value(&event).unwrap();
    let (status, answer) = common::federation::signed_request(&a, &b, http::Method::PUT, &path, Some(&body)).await;
    assert_eq!(status, 200, "{answer}");
    let state = answer[1]["state"].as_array().unwrap();
    assert!(answer[1].get("members_omitted").is_none_or(|m| m == false), "{answer}");
    assert!(members(state).contains(alice.user_id.as_str()));
}
