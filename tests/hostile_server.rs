//! weft against a hostile remote server (`common::hostile`, written here,
//! not weft): the checks performed on receipt of a PDU, in the spec's
//! order, for events that come over `/send` and through gap filling.
//!
//! Each test: a weft server, Alice's public room on it, and the hostile
//! server's Mallory joined to it the normal way (make_join, send_join).

mod common;

use common::{
    TestServer, User, enc,
    hostile::{Built, Hostile, auth_events_of, set_auth_events},
};
use std::time::Duration;

use reqwest::Method;
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId,
    signatures::{PublicKeyMap, PublicKeySet, Verified},
};
use serde_json::{Value, json};

struct Rig {
    weft: TestServer,
    hostile: Hostile,
    room: OwnedRoomId,
    alice_id: String,
    alice_token: String,
    mallory: OwnedUserId,
}

impl Rig {
    fn alice(&self) -> User<'_> {
        User {
            server: &self.weft,
            user_id: self.alice_id.clone(),
            token: self.alice_token.clone(),
        }
    }

    /// Sends `pdus` in one transaction; returns the per-PDU results.
    async fn send(&self, txn: &str, pdus: &[&Built]) -> Value {
        let pdus: Vec<Value> = pdus.iter().map(|b| b.pdu.clone()).collect();
        let (status, body) = self
            .hostile
            .send_transaction(&self.weft.server_name(), txn, &pdus)
            .await;
        assert_eq!(status, 200, "transaction {txn}: {body}");
        body["pdus"].clone()
    }

    /// The room's timeline as Alice pages it, oldest first: event IDs.
    async fn timeline(&self) -> Vec<String> {
        let page = self.alice().messages(self.room.as_str(), "dir=b&limit=1000").await;
        let mut ids: Vec<String> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.reverse();
        ids
    }

    /// The event as Alice gets it, if she may.
    async fn event_for_alice(&self, id: &OwnedEventId) -> Option<Value> {
        let (status, body) = self
            .alice()
            .call(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(self.room.as_str()),
                    enc(id.as_str())
                ),
                None,
            )
            .await;
        match status.as_u16() {
            200 => Some(body),
            404 => None,
            other => panic!("GET event {id}: {other} {body}"),
        }
    }

    /// Whether Alice's sync (initial, full state) mentions the event.
    async fn in_sync(&self, id: &OwnedEventId) -> bool {
        let sync = self.alice().sync("full_state=true").await;
        sync.to_string().contains(id.as_str())
    }

    /// The room's current state event of (type, key) as Alice gets it.
    async fn state(&self, kind: &str, key: &str) -> (u16, Value) {
        let (status, body) = self
            .alice()
            .call(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                    enc(self.room.as_str()),
                    enc(key)
                ),
                None,
            )
            .await;
        (status.as_u16(), body)
    }

    /// The IDs of the room's current state events (Alice's view).
    async fn state_ids(&self) -> Vec<String> {
        let body = self
            .alice()
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/state", enc(self.room.as_str())),
                None,
            )
            .await;
        body.as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The state at `id` as weft tells other servers (`/state_ids`).
    async fn state_ids_at(&self, id: &OwnedEventId) -> Vec<String> {
        let (status, body) = self
            .hostile
            .request(
                &self.weft.server_name(),
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/state_ids/{}?event_id={}",
                    enc(self.room.as_str()),
                    enc(id.as_str())
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["pdu_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect()
    }

    /// The room's gaps: its backward extremities.
    async fn backward_extremities(&self) -> Vec<OwnedEventId> {
        self.weft
            .services()
            .storage
            .backward_extremities(&self.room)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    async fn stored(&self, id: &OwnedEventId) -> Option<weft::storage::StoredEvent> {
        self.weft.services().storage.event(id).await.unwrap()
    }

    /// Asserts that weft's users never see `id` and that it is not state.
    async fn assert_invisible(&self, id: &OwnedEventId) {
        let mut leaks = Vec::new();
        if self.event_for_alice(id).await.is_some() {
            leaks.push("GET /rooms/{room}/event/{id} returns it");
        }
        let (status, _) = self
            .alice()
            .call(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/context/{}?limit=0",
                    enc(self.room.as_str()),
                    enc(id.as_str())
                ),
                None,
            )
            .await;
        if status.as_u16() != 404 {
            leaks.push("GET /rooms/{room}/context/{id} returns it");
        }
        if self.timeline().await.contains(&id.to_string()) {
            leaks.push("/messages lists it");
        }
        if self.state_ids().await.contains(&id.to_string()) {
            leaks.push("it is in the room state");
        }
        if self.in_sync(id).await {
            leaks.push("/sync mentions it");
        }
        assert!(leaks.is_empty(), "{id} is visible to Alice: {leaks:?}");
    }

    async fn assert_visible(&self, id: &OwnedEventId) -> Value {
        let event = self
            .event_for_alice(id)
            .await
            .unwrap_or_else(|| panic!("{id} is not readable"));
        assert!(
            self.timeline().await.contains(&id.to_string()),
            "{id} is not in the timeline"
        );
        event
    }
}

/// The result a transaction answer gives `id`: `Some(Ok)` for `{}`,
/// `Some(Err(message))` for `{"error": ...}`, `None` if not mentioned.
fn result_of(answer: &Value, id: &OwnedEventId) -> Option<Result<(), String>> {
    let entry = answer.get(id.as_str())?;
    Some(match entry.get("error") {
        Some(error) => Err(error.as_str().unwrap_or_default().to_owned()),
        None => Ok(()),
    })
}

fn assert_accepted(answer: &Value, id: &OwnedEventId) {
    assert_eq!(result_of(answer, id), Some(Ok(())), "{id} accepted: {answer}");
}

fn assert_refused(answer: &Value, id: &OwnedEventId) -> String {
    match result_of(answer, id) {
        Some(Err(error)) => error,
        other => panic!("{id} should be refused, got {other:?}: {answer}"),
    }
}

/// Rejected by the auth rules: handled (no error in the transaction's
/// answer, as Synapse answers), held as rejected, never shown.
async fn assert_rejected(rig: &Rig, answer: &Value, id: &OwnedEventId) {
    assert_eq!(result_of(answer, id), Some(Ok(())), "{id} handled: {answer}");
    let stored = rig.stored(id).await.expect("a rejected event is kept");
    assert!(stored.meta.rejected.is_some(), "{id} is held as rejected");
    rig.assert_invisible(id).await;
}

async fn rig() -> Rig {
    rig_in(None).await
}

/// [`rig`], the room of `room_version` if given.
async fn rig_in(room_version: Option<&str>) -> Rig {
    let weft = TestServer::start_federating().await;
    let hostile = Hostile::start().await;
    let alice = weft.register("alice").await;
    let mut create = json!({ "preset": "public_chat", "name": "Original name" });
    if let Some(version) = room_version {
        create["room_version"] = json!(version);
    }
    let room: OwnedRoomId = alice.create_room(create).await.parse().unwrap();
    let (status, _) = alice.send_text(room.as_str(), "t0", "before mallory").await;
    assert_eq!(status, 200);
    let (alice_id, alice_token) = (alice.user_id.clone(), alice.token.clone());
    hostile.join(&weft.server_name(), &room, "mallory").await;
    let mallory = hostile.user("mallory");
    Rig {
        weft,
        hostile,
        room,
        alice_id,
        alice_token,
        mallory,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_server_joins_and_talks() {
    let rig = rig().await;
    // Mallory is joined on weft's side.
    let (status, member) = rig.state("m.room.member", rig.mallory.as_str()).await;
    assert_eq!((status, member["membership"].as_str()), (200, Some("join")), "{member}");
    // A well-formed message is accepted and shown.
    let hello = rig.hostile.message(&rig.room, &rig.mallory, "hello from mallory");
    rig.hostile.commit(&rig.room, &hello);
    let answer = rig.send("hello", &[&hello]).await;
    assert_accepted(&answer, &hello.id);
    let event = rig.assert_visible(&hello.id).await;
    assert_eq!(event["content"]["body"], "hello from mallory");
    // Alice's reply reaches the hostile server.
    let (status, sent) = rig.alice().send_text(rig.room.as_str(), "r", "hi mallory").await;
    assert_eq!(status, 200);
    let reply: OwnedEventId = sent["event_id"].as_str().unwrap().try_into().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rig.hostile.event(&reply).is_none() {
        assert!(std::time::Instant::now() < deadline, "weft never sent Alice's reply");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A transaction answered 200 with a body that is not the spec's (`{}`,
/// no `pdus`) was taken: it is not sent again, and what follows goes
/// without a back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_acknowledged_without_results_is_delivered() {
    let rig = rig().await;
    rig.hostile.set_behaviour(|b| b.bare_transaction_answer = true);
    let mut sent = Vec::new();
    for i in 0..3 {
        let (status, body) = rig
            .alice()
            .send_text(rig.room.as_str(), &format!("bare{i}"), &format!("bare answer {i}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let id: OwnedEventId = body["event_id"].as_str().unwrap().try_into().unwrap();
        // Each arrives well before the first retry (2 s) would have gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        while rig.hostile.event(&id).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "message {i} was not delivered in time"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        sent.push(id);
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let txns = rig.hostile.transactions();
    for id in &sent {
        let carrying = txns.iter().filter(|t| t.event_ids.contains(id)).count();
        assert_eq!(carrying, 1, "{id} was sent in {carrying} transactions: {txns:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_content_hash_is_kept_redacted() {
    let rig = rig().await;
    let honest = rig.hostile.message(&rig.room, &rig.mallory, "honest words");
    let forged = rig.hostile.tamper_content(
        &rig.room,
        &honest,
        json!({ "msgtype": "m.text", "body": "forged words" }),
    );
    assert_eq!(honest.id, forged.id, "the content is not part of the reference hash");
    rig.hostile.commit(&rig.room, &forged);
    let answer = rig.send("hash", &[&forged]).await;
    assert_accepted(&answer, &forged.id);

    // Alice sees the event, its content gone.
    let event = rig.assert_visible(&forged.id).await;
    assert_eq!(event["content"], json!({}), "the content is redacted: {event}");
    assert!(!rig.timeline().await.is_empty());
    let page = rig.alice().messages(rig.room.as_str(), "dir=b&limit=100").await;
    assert!(
        !page.to_string().contains("forged words") && !page.to_string().contains("honest words"),
        "{page}"
    );

    // What weft holds (and serves to other servers) still carries a valid
    // signature of the hostile server, and the original hash.
    let stored = rig.stored(&forged.id).await.expect("held");
    assert!(stored.meta.rejected.is_none() && !stored.meta.outlier);
    let (status, served) = rig
        .hostile
        .request(
            &rig.weft.server_name(),
            Method::GET,
            &format!("/_matrix/federation/v1/event/{}", enc(forged.id.as_str())),
            None,
        )
        .await;
    assert_eq!(status, 200, "{served}");
    let pdu = &served["pdus"][0];
    assert_eq!(pdu["content"], json!({}));
    assert_eq!(pdu["hashes"], forged.pdu["hashes"]);
    let object: ruma::CanonicalJsonObject = serde_json::from_value(pdu.clone()).unwrap();
    let mut keys = PublicKeyMap::new();
    let mut set = PublicKeySet::new();
    set.insert(
        rig.hostile.keys.key_id(),
        ruma::serde::Base64::parse(rig.hostile.keys.public_key_base64()).unwrap(),
    );
    keys.insert(rig.hostile.name.to_string(), set);
    let rules = rig.hostile.version(&rig.room).rules().unwrap();
    assert_eq!(
        ruma::signatures::verify_event(&keys, &object, &rules).expect("the signature still verifies"),
        Verified::Signatures,
        "signatures fine, content hash (of the original) not"
    );

    // The room goes on, on top of the redacted event.
    let next = rig.hostile.message(&rig.room, &rig.mallory, "after the forgery");
    rig.hostile.commit(&rig.room, &next);
    let answer = rig.send("hash-next", &[&next]).await;
    assert_accepted(&answer, &next.id);
    rig.assert_visible(&next.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_is_dropped() {
    let rig = rig().await;
    let message = rig.hostile.message(&rig.room, &rig.mallory, "badly signed");
    let bad_message = rig.hostile.corrupt_signature(&rig.room, &message);
    // A state event with a bad signature: Mallory's new display name.
    let profile = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.member",
        Some(rig.mallory.as_str()),
        json!({ "membership": "join", "displayname": "Forged name" }),
    );
    let bad_profile = rig.hostile.corrupt_signature(&rig.room, &profile);
    let answer = rig.send("sig", &[&bad_message, &bad_profile]).await;
    for bad in [&bad_message, &bad_profile] {
        let error = assert_refused(&answer, &bad.id);
        assert!(error.to_lowercase().contains("signature"), "{error}");
        assert!(rig.stored(&bad.id).await.is_none(), "a dropped event is not kept");
        rig.assert_invisible(&bad.id).await;
    }
    let (_, member) = rig.state("m.room.member", rig.mallory.as_str()).await;
    assert_ne!(member["displayname"], "Forged name", "{member}");

    // Dropped, not rejected: the same event properly signed is accepted.
    rig.hostile.commit(&rig.room, &message);
    let answer = rig.send("sig-good", &[&message]).await;
    assert_accepted(&answer, &message.id);
    rig.assert_visible(&message.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_failing_the_auth_rules_are_rejected() {
    let rig = rig().await;
    // Mallory (power 0) renames the room (state_default 50).
    let rename = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.name",
        Some(""),
        json!({ "name": "Mallory's room" }),
    );
    // Mallory makes herself admin.
    let (_, power) = rig.state("m.room.power_levels", "").await;
    let mut grab = power.clone();
    grab["users"][rig.mallory.as_str()] = json!(100);
    let promote = rig
        .hostile
        .build(&rig.room, &rig.mallory, "m.room.power_levels", Some(""), grab);
    // Eve, of the same server, never joined.
    let eve = rig.hostile.user("eve");
    let intruder = rig.hostile.message(&rig.room, &eve, "I am not here");
    let answer = rig.send("auth", &[&rename, &promote, &intruder]).await;
    for bad in [&rename, &promote, &intruder] {
        assert_rejected(&rig, &answer, &bad.id).await;
    }
    let (_, name) = rig.state("m.room.name", "").await;
    assert_eq!(name["name"], "Original name");
    let (_, after) = rig.state("m.room.power_levels", "").await;
    assert_eq!(after, power, "the power levels did not move");

    // The room goes on.
    let next = rig.hostile.message(&rig.room, &rig.mallory, "still here");
    rig.hostile.commit(&rig.room, &next);
    let answer = rig.send("auth-next", &[&next]).await;
    assert_accepted(&answer, &next.id);
    rig.assert_visible(&next.id).await;
    let (status, _) = rig.alice().send_text(rig.room.as_str(), "a1", "alice goes on").await;
    assert_eq!(status, 200);
}

/// A rejected state event is not in the state after it: an event built on
/// it sees the state before it (`/state_ids` at that event, the room's
/// current state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_state_event_is_not_in_the_state_after_it() {
    let rig = rig().await;
    let rename = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.name",
        Some(""),
        json!({ "name": "Mallory's room" }),
    );
    let answer = rig.send("rejected-rename", &[&rename]).await;
    assert_rejected(&rig, &answer, &rename.id).await;
    // Mallory's next message names the rejected rename as its parent.
    rig.hostile.commit(&rig.room, &rename);
    let next = rig
        .hostile
        .message(&rig.room, &rig.mallory, "on top of a rejected event");
    assert_eq!(next.pdu["prev_events"], json!([rename.id]), "{}", next.pdu);
    rig.hostile.commit(&rig.room, &next);
    let answer = rig.send("after-rejected-rename", &[&next]).await;
    assert_accepted(&answer, &next.id);
    let pdu_ids = rig.state_ids_at(&next.id).await;
    assert!(!pdu_ids.contains(&rename.id.to_string()), "{pdu_ids:?}");
    assert!(!rig.state_ids().await.contains(&rename.id.to_string()));
    let (_, name) = rig.state("m.room.name", "").await;
    assert_eq!(name["name"], "Original name");
}

/// Step 4 is the whole of the auth rules against the event's own auth
/// events, not only their shape: a message whose auth events do not show
/// its sender joined is rejected, whatever the state before it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_events_that_do_not_authorise_the_event_reject_it() {
    let rig = rig().await;
    let mut draft = rig.hostile.draft(
        &rig.room,
        &rig.mallory,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "no membership shown" }),
    );
    let view = rig.hostile.room(&rig.room);
    let mallory_join = view.state[&("m.room.member".to_owned(), rig.mallory.to_string())].clone();
    let without_join: Vec<OwnedEventId> = auth_events_of(&draft)
        .into_iter()
        .filter(|id| *id != mallory_join)
        .collect();
    assert_eq!(without_join.len(), 2, "the create event and the power levels");
    set_auth_events(&mut draft, &without_join);
    let event = rig.hostile.sign(&rig.room, draft);
    let answer = rig.send("auth-events", &[&event]).await;
    assert_rejected(&rig, &answer, &event.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_citing_a_rejected_auth_event_is_rejected() {
    let rig = rig().await;
    let (_, power) = rig.state("m.room.power_levels", "").await;
    let mut grab = power.clone();
    grab["users"][rig.mallory.as_str()] = json!(100);
    let promote = rig
        .hostile
        .build(&rig.room, &rig.mallory, "m.room.power_levels", Some(""), grab);
    let answer = rig.send("rejected-pl", &[&promote]).await;
    assert_rejected(&rig, &answer, &promote.id).await;

    // A message, otherwise fine (Mallory may talk), citing the rejected
    // power levels instead of the room's.
    rig.hostile.commit(&rig.room, &promote);
    let message = rig
        .hostile
        .message(&rig.room, &rig.mallory, "on the authority of a rejected event");
    let auth = message.pdu["auth_events"].as_array().unwrap().clone();
    assert!(auth.contains(&json!(promote.id)), "{auth:?}");
    let answer = rig.send("cites-rejected", &[&message]).await;
    assert_rejected(&rig, &answer, &message.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_in_the_content_is_refused() {
    const PLACEHOLDER: i64 = 918_273_645_546_372;
    // Over /send, in a room of version 5 (where floats are legal, and
    // Synapse takes them) and of the default version (where they are
    // not): the transaction, signed as Synapse signs it (the float written
    // as Python writes it), is verified and answered 200; the float event
    // gets an error under the ID its sender computed, and the good event
    // beside it is taken.
    for version in [Some("5"), None] {
        let rig = rig_in(version).await;
        let float = rig
            .hostile
            .message_with_float(&rig.room, &rig.mallory, PLACEHOLDER, "1.5");
        assert!(float.pdu.to_string().contains("1.5"));
        let good = rig.hostile.message(&rig.room, &rig.mallory, "beside a float");
        rig.hostile.commit(&rig.room, &good);
        let (status, body) = rig
            .hostile
            .send_transaction_with_float(
                &rig.weft.server_name(),
                "float",
                &[float.pdu.clone(), good.pdu.clone()],
                PLACEHOLDER,
                "1.5",
            )
            .await;
        assert_eq!(status, 200, "/send with a float, room version {version:?}: {body}");
        let error = assert_refused(&body["pdus"], &float.id);
        assert!(error.contains("canonical JSON"), "{error}");
        assert_accepted(&body["pdus"], &good.id);
        rig.assert_visible(&good.id).await;
        assert!(rig.stored(&float.id).await.is_none(), "the float event is not held");
        rig.assert_invisible(&float.id).await;
    }

    let rig = rig().await;
    let float = rig
        .hostile
        .message_with_float(&rig.room, &rig.mallory, PLACEHOLDER, "1.5");

    // Through gap filling: the float event is the parent of a good event;
    // weft fetches it with /get_missing_events and drops it, and the child,
    // whose parent can never be had, is refused with it.
    rig.hostile.commit(&rig.room, &float);
    let child = rig.hostile.message(&rig.room, &rig.mallory, "child of a float");
    rig.hostile.commit(&rig.room, &child);
    let answer = rig.send("float-child", &[&child]).await;
    assert!(
        !rig.hostile
            .seen_at("/_matrix/federation/v1/get_missing_events/")
            .is_empty(),
        "weft asked for the missing parent"
    );
    assert!(rig.stored(&float.id).await.is_none(), "the float event is not held");
    rig.assert_invisible(&float.id).await;
    assert_refused(&answer, &child.id);
    assert!(rig.stored(&child.id).await.is_none(), "the child is not held");
    // A permalink to the child fetches it as history (a signed event,
    // authorised by the state its origin gives at it, as a /backfill page
    // would bring it): its float parent stays out, a gap.
    assert!(rig.event_for_alice(&child.id).await.is_some());
    assert!(
        rig.stored(&float.id).await.is_none(),
        "the float event is still not held"
    );
    rig.assert_invisible(&float.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_event_does_not_block_the_good_ones() {
    let rig = rig().await;
    let first = rig.hostile.message(&rig.room, &rig.mallory, "good one");
    rig.hostile.commit(&rig.room, &first);
    let forged_sig = rig
        .hostile
        .corrupt_signature(&rig.room, &rig.hostile.message(&rig.room, &rig.mallory, "bad sig"));
    let eve = rig.hostile.user("eve");
    let intruder = rig.hostile.message(&rig.room, &eve, "not a member");
    let second = rig.hostile.message(&rig.room, &rig.mallory, "good two");
    rig.hostile.commit(&rig.room, &second);
    let honest = rig.hostile.message(&rig.room, &rig.mallory, "hash ok");
    let bad_hash = rig
        .hostile
        .tamper_content(&rig.room, &honest, json!({ "msgtype": "m.text", "body": "hash bad" }));
    rig.hostile.commit(&rig.room, &bad_hash);
    let third = rig.hostile.message(&rig.room, &rig.mallory, "good three");
    rig.hostile.commit(&rig.room, &third);

    let answer = rig
        .send("mixed", &[&first, &forged_sig, &intruder, &second, &bad_hash, &third])
        .await;
    assert_accepted(&answer, &first.id);
    assert_accepted(&answer, &second.id);
    assert_accepted(&answer, &third.id);
    assert_accepted(&answer, &bad_hash.id);
    assert_refused(&answer, &forged_sig.id);
    assert_rejected(&rig, &answer, &intruder.id).await;
    rig.assert_invisible(&forged_sig.id).await;
    rig.assert_invisible(&intruder.id).await;
    let timeline = rig.timeline().await;
    let position = |id: &OwnedEventId| timeline.iter().position(|t| t == id.as_str());
    let order: Vec<Option<usize>> = [&first.id, &second.id, &bad_hash.id, &third.id]
        .into_iter()
        .map(position)
        .collect();
    assert!(order.iter().all(Option::is_some), "all good events shown: {order:?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");
    let redacted = rig.event_for_alice(&bad_hash.id).await.unwrap();
    assert_eq!(redacted["content"], json!({}));
}

/// A transaction's messages are written together while each builds on the
/// one before; a state event, a join, an event sent twice or one rejected
/// among them keeps its own effect, and the order is the order given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_messages_state_and_a_join_keeps_each_events_effect() {
    let rig = rig().await;
    let say = |text: &str| {
        let event = rig.hostile.message(&rig.room, &rig.mallory, text);
        rig.hostile.commit(&rig.room, &event);
        event
    };
    let m1 = say("one");
    let eve = rig.hostile.user("eve");
    let eve_joins = rig.hostile.build(
        &rig.room,
        &eve,
        "m.room.member",
        Some(eve.as_str()),
        json!({ "membership": "join" }),
    );
    rig.hostile.commit(&rig.room, &eve_joins);
    let m2 = say("two");
    let renamed = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.member",
        Some(rig.mallory.as_str()),
        json!({ "membership": "join", "displayname": "Mallory the second" }),
    );
    rig.hostile.commit(&rig.room, &renamed);
    // (Eve's message does not cite Mallory's member event.)
    let eve_says = rig.hostile.message(&rig.room, &eve, "eve here");
    rig.hostile.commit(&rig.room, &eve_says);
    // Trent never joined: rejected, and nothing builds on it.
    let intruder = rig
        .hostile
        .message(&rig.room, &rig.hostile.user("trent"), "not a member");
    let m3 = say("three");

    let answer = rig
        .send(
            "mixed-run",
            &[&m1, &m1, &eve_joins, &m2, &m1, &renamed, &eve_says, &intruder, &m3],
        )
        .await;
    let accepted = [&m1, &eve_joins, &m2, &renamed, &eve_says, &m3];
    for event in accepted {
        assert_accepted(&answer, &event.id);
    }
    assert_rejected(&rig, &answer, &intruder.id).await;
    let timeline = rig.timeline().await;
    let shown: Vec<&String> = timeline
        .iter()
        .filter(|id| accepted.iter().any(|e| e.id.as_str() == id.as_str()))
        .collect();
    let expected: Vec<String> = accepted.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(
        shown,
        expected.iter().collect::<Vec<_>>(),
        "each once, in the order sent"
    );
    let (_, member) = rig.state("m.room.member", rig.mallory.as_str()).await;
    assert_eq!(member["displayname"], "Mallory the second");
    let (status, member) = rig.state("m.room.member", eve.as_str()).await;
    assert_eq!((status, member["membership"].as_str()), (200, Some("join")));
    // The state at each event, as other servers are told it.
    let at_m2 = rig.state_ids_at(&m2.id).await;
    assert!(at_m2.contains(&eve_joins.id.to_string()), "{at_m2:?}");
    let at_m3 = rig.state_ids_at(&m3.id).await;
    for state in [&renamed, &eve_joins] {
        assert!(at_m3.contains(&state.id.to_string()), "{} at m3: {at_m3:?}", state.id);
    }
    let extremities = rig
        .weft
        .services()
        .storage
        .forward_extremities(&rig.room)
        .await
        .unwrap();
    assert_eq!(
        extremities.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![m3.id.clone()],
        "the last message is the room's one forward extremity"
    );
    // Alice's next message builds on it.
    let (status, sent) = rig.alice().send_text(rig.room.as_str(), "after", "after the run").await;
    assert_eq!(status, 200);
    let next: OwnedEventId = sent["event_id"].as_str().unwrap().try_into().unwrap();
    assert_eq!(rig.stored(&next).await.unwrap().pdu.prev_events, vec![m3.id.clone()]);
}

/// A server whose keys never come (it takes the connection and never
/// answers): its request is refused once the key request times out, well
/// before the requester would give up, and its next requests are refused at
/// once, without asking it again, while it backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_is_refused_then_remembered() {
    let weft = TestServer::start_federating().await;
    weft.register("alice").await;
    let hostile = Hostile::start().await;
    hostile.set_behaviour(|b| b.key_delay = Duration::from_secs(600));
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&format!("@alice:{}", weft.server_name()))
    );
    for attempt in 0..2 {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(30),
            hostile.request(&weft.server_name(), Method::GET, &path, None),
        )
        .await
        .expect("an answer before the origin's keys come");
        assert_eq!(status, 401, "attempt {attempt}: {body}");
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
        assert_eq!(
            hostile.seen_at("/_matrix/key/v2/server").len(),
            1,
            "its keys are asked for once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_parents_are_fetched_with_get_missing_events() {
    let rig = rig().await;
    let mut chain = Vec::new();
    for i in 0..3 {
        let event = rig.hostile.message(&rig.room, &rig.mallory, &format!("missing {i}"));
        rig.hostile.commit(&rig.room, &event);
        chain.push(event);
    }
    let last = rig.hostile.message(&rig.room, &rig.mallory, "the one sent");
    rig.hostile.commit(&rig.room, &last);
    let answer = rig.send("gap", &[&last]).await;
    assert_accepted(&answer, &last.id);

    let asked = rig.hostile.seen_at("/_matrix/federation/v1/get_missing_events/");
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].origin.as_deref(), Some(rig.weft.server_name().as_str()));
    assert_eq!(asked[0].body["latest_events"], json!([last.id]), "{:?}", asked[0]);

    let timeline = rig.timeline().await;
    let positions: Vec<Option<usize>> = chain
        .iter()
        .chain([&last])
        .map(|e| timeline.iter().position(|t| t == e.id.as_str()))
        .collect();
    assert!(positions.iter().all(Option::is_some), "{positions:?} in {timeline:?}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order: {positions:?}");
    for event in &chain {
        let stored = rig.stored(&event.id).await.unwrap();
        assert!(!stored.meta.outlier && stored.meta.rejected.is_none());
    }
    assert!(rig.backward_extremities().await.is_empty(), "no gap is left");
}

/// An event pushed with parents its sender will not give (an empty
/// `/get_missing_events` answer) is refused, not built upon, and weft does
/// not go on to ask for the state at the missing parent (as Synapse, and
/// SyTest's "prev_events cannot be found" test). The sender's next event
/// asks for the parents again, and is taken once they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_parents_are_not_given_is_refused() {
    let rig = rig().await;
    rig.hostile.set_behaviour(|b| {
        b.serve_missing_events = false;
        b.serve_backfill = false;
    });
    let hidden = rig.hostile.message(&rig.room, &rig.mallory, "never given");
    rig.hostile.commit(&rig.room, &hidden);
    let sent = rig.hostile.message(&rig.room, &rig.mallory, "child of the hidden one");
    rig.hostile.commit(&rig.room, &sent);
    let answer = rig.send("orphan", &[&sent]).await;
    let error = assert_refused(&answer, &sent.id);
    assert!(error.contains(hidden.id.as_str()), "{error}");
    assert!(rig.stored(&sent.id).await.is_none(), "the orphan is not held");
    assert!(
        rig.hostile.seen_at("/_matrix/federation/v1/state_ids/").is_empty(),
        "weft asked for state it would build an orphan on: {:?}",
        rig.hostile.seen()
    );
    // (A permalink to it would fetch it as history, with the state its
    // origin gives: not asked for here.)

    // The sender gives the parents now: its next event brings them all.
    rig.hostile.set_behaviour(|b| b.serve_missing_events = true);
    let next = rig.hostile.message(&rig.room, &rig.mallory, "next");
    rig.hostile.commit(&rig.room, &next);
    let answer = rig.send("orphan-next", &[&next]).await;
    assert_accepted(&answer, &next.id);
    for id in [&hidden.id, &sent.id, &next.id] {
        rig.assert_visible(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_that_cannot_be_filled_stays_a_backward_extremity() {
    let rig = rig().await;
    // `/get_missing_events` gives only the newest missing event.
    rig.hostile.set_behaviour(|b| {
        b.missing_events_limit = Some(1);
        b.serve_backfill = false;
    });
    // In the gap: Eve (of the hostile server) joins, then Mallory talks.
    // Eve's join is a state event weft learns only from the state the
    // sender gives at it.
    let eve = rig.hostile.user("eve");
    let eve_join = rig.hostile.build(
        &rig.room,
        &eve,
        "m.room.member",
        Some(eve.as_str()),
        json!({ "membership": "join" }),
    );
    rig.hostile.commit(&rig.room, &eve_join);
    let in_gap = rig.hostile.message(&rig.room, &rig.mallory, "in the gap");
    rig.hostile.commit(&rig.room, &in_gap);
    let after_gap = rig.hostile.message(&rig.room, &rig.mallory, "after the gap");
    rig.hostile.commit(&rig.room, &after_gap);
    // The peer gives the state only at the missing parent of what it gave
    // (as SyTest's does): weft asks there, and adds the parent itself.
    let only = vec![eve_join.id.clone()];
    rig.hostile.set_behaviour(move |b| b.state_only_at = Some(only.clone()));
    let answer = rig.send("hole", &[&after_gap]).await;
    assert_accepted(&answer, &after_gap.id);
    rig.assert_visible(&in_gap.id).await;

    assert!(
        !rig.hostile
            .seen_at("/_matrix/federation/v1/get_missing_events/")
            .is_empty()
    );
    assert!(
        !rig.hostile.seen_at("/_matrix/federation/v1/state_ids/").is_empty(),
        "weft asked for the state at the missing parent: {:?}",
        rig.hostile.seen()
    );
    let fetched = rig
        .hostile
        .seen_at(&format!("/_matrix/federation/v1/event/{}", eve_join.id));
    assert!(!fetched.is_empty(), "weft fetched Eve's join: {:?}", rig.hostile.seen());

    let backward = rig.backward_extremities().await;
    assert!(backward.contains(&eve_join.id), "{backward:?}");
    rig.assert_visible(&after_gap.id).await;
    // Eve's join is not in the timeline (weft never got it as one), but
    // the state at the event (and so the room's) has her joined.
    let stored = rig.stored(&eve_join.id).await.expect("held as an outlier");
    assert!(stored.meta.outlier);
    let (status, member) = rig.state("m.room.member", eve.as_str()).await;
    assert_eq!((status, member["membership"].as_str()), (200, Some("join")), "{member}");

    // The room goes on, on both sides.
    let (status, _) = rig.alice().send_text(rig.room.as_str(), "a1", "alice goes on").await;
    assert_eq!(status, 200);
    let next = rig.hostile.message(&rig.room, &rig.mallory, "mallory goes on");
    rig.hostile.commit(&rig.room, &next);
    let answer = rig.send("hole-next", &[&next]).await;
    assert_accepted(&answer, &next.id);
    rig.assert_visible(&next.id).await;
    let from_eve = rig.hostile.message(&rig.room, &eve, "eve talks");
    rig.hostile.commit(&rig.room, &from_eve);
    let answer = rig.send("hole-eve", &[&from_eve]).await;
    assert_accepted(&answer, &from_eve.id);
    rig.assert_visible(&from_eve.id).await;
    // Paging back across the gap (the hostile server gives nothing) keeps it.
    rig.timeline().await;
    let backward = rig.backward_extremities().await;
    assert!(backward.contains(&eve_join.id), "{backward:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transaction_gets_the_same_answer_and_stores_nothing_twice() {
    let rig = rig().await;
    let good = rig.hostile.message(&rig.room, &rig.mallory, "said once");
    rig.hostile.commit(&rig.room, &good);
    let bad = rig
        .hostile
        .corrupt_signature(&rig.room, &rig.hostile.message(&rig.room, &rig.mallory, "bad"));
    let eve = rig.hostile.user("eve");
    let rejected = rig.hostile.message(&rig.room, &eve, "rejected once");
    let pdus = [&good, &bad, &rejected];
    let first = rig.send("retry", &pdus).await;
    assert_accepted(&first, &good.id);
    assert_refused(&first, &bad.id);
    assert_rejected(&rig, &first, &rejected.id).await;
    let ordering = rig.stored(&good.id).await.unwrap().meta.stream_ordering;
    let timeline = rig.timeline().await;

    for _ in 0..2 {
        let again = rig.send("retry", &pdus).await;
        assert_eq!(again, first, "the same answer");
    }
    // The same transaction ID with other content is the same transaction.
    let other = rig.hostile.message(&rig.room, &rig.mallory, "smuggled in a retry");
    let again = rig.send("retry", &[&other]).await;
    assert_eq!(again, first, "the same answer");
    assert!(rig.stored(&other.id).await.is_none(), "nothing of the retry is taken");

    assert_eq!(rig.stored(&good.id).await.unwrap().meta.stream_ordering, ordering);
    assert_eq!(rig.timeline().await, timeline, "nothing new in the timeline");
    let count = rig.timeline().await.iter().filter(|id| *id == good.id.as_str()).count();
    assert_eq!(count, 1);

    // The same events in a new transaction: already held, still once.
    let fresh = rig.send("retry-new-id", &[&good, &rejected]).await;
    assert_accepted(&fresh, &good.id);
    assert_eq!(rig.stored(&good.id).await.unwrap().meta.stream_ordering, ordering);
    assert_eq!(rig.timeline().await, timeline);
}

/// The auth events fetched from the sender (`/event_auth`) go through the
/// same step 4: one that its own auth events do not allow is rejected, and
/// so is the event that cites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_auth_event_that_fails_its_own_auth_events_is_rejected() {
    let rig = rig().await;
    let (_, power) = rig.state("m.room.power_levels", "").await;
    let mut grab = power.clone();
    grab["users"][rig.mallory.as_str()] = json!(100);
    // Mallory's power levels, never sent: weft only learns of it as an auth
    // event of the message below.
    let promote = rig
        .hostile
        .build(&rig.room, &rig.mallory, "m.room.power_levels", Some(""), grab);
    rig.hostile.hold(&promote);
    let view = rig.hostile.room(&rig.room);
    let real_power = view.state[&("m.room.power_levels".to_owned(), String::new())].clone();
    let mut draft = rig.hostile.draft(
        &rig.room,
        &rig.mallory,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "on my own authority" }),
    );
    let auth: Vec<OwnedEventId> = auth_events_of(&draft)
        .into_iter()
        .map(|id| if id == real_power { promote.id.clone() } else { id })
        .collect();
    set_auth_events(&mut draft, &auth);
    let message = rig.hostile.sign(&rig.room, draft);
    rig.hostile.hold(&message);

    let answer = rig.send("fetched-auth", &[&message]).await;
    assert!(
        !rig.hostile.seen_at("/_matrix/federation/v1/event_auth/").is_empty(),
        "weft fetched the auth chain: {:?}",
        rig.hostile.seen()
    );
    let promote_meta = rig.stored(&promote.id).await.map(|e| e.meta);
    let message_result = result_of(&answer, &message.id);
    assert!(
        promote_meta.as_ref().is_none_or(|m| m.rejected.is_some())
            && message_result == Some(Ok(()))
            && rig.stored(&message.id).await.is_some_and(|e| e.meta.rejected.is_some()),
        "Mallory's power levels should be rejected (held as {promote_meta:?}), \
         and the message citing them too (result {message_result:?})"
    );
    rig.assert_invisible(&message.id).await;
    rig.assert_invisible(&promote.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_forged_in_the_name_of_a_local_user_is_dropped() {
    let rig = rig().await;
    let alice: OwnedUserId = rig.alice_id.as_str().try_into().unwrap();
    let forged = rig.hostile.message(&rig.room, &alice, "I, Alice, hand the room over");
    let forged_name = rig
        .hostile
        .build(&rig.room, &alice, "m.room.name", Some(""), json!({ "name": "Forged" }));
    let answer = rig.send("forged-sender", &[&forged, &forged_name]).await;
    for event in [&forged, &forged_name] {
        let error = assert_refused(&answer, &event.id);
        assert!(error.contains("signature") || error.contains("signed"), "{error}");
        assert!(rig.stored(&event.id).await.is_none());
        rig.assert_invisible(&event.id).await;
    }
    let (_, name) = rig.state("m.room.name", "").await;
    assert_eq!(name["name"], "Original name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_dropped_and_the_rest_goes_on() {
    let rig = rig().await;
    // Too large (over 65536 bytes): the body is swollen after signing
    // (so the signature, over the redacted event, holds; only the size
    // and the content hash are wrong).
    let small = rig.hostile.message(&rig.room, &rig.mallory, "small");
    let huge = rig.hostile.tamper_content(
        &rig.room,
        &small,
        json!({ "msgtype": "m.text", "body": "x".repeat(70_000) }),
    );
    assert!(huge.pdu.to_string().len() > 65_536);
    // No depth.
    let mut draft = rig.hostile.draft(
        &rig.room,
        &rig.mallory,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "no depth" }),
    );
    draft.remove("depth");
    let no_depth = rig.hostile.sign(&rig.room, draft);
    // prev_events not a list.
    let mut draft = rig.hostile.draft(
        &rig.room,
        &rig.mallory,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "bad prevs" }),
    );
    draft.insert(
        "prev_events".to_owned(),
        ruma::CanonicalJsonValue::String("$nope".to_owned()),
    );
    let bad_prevs = rig.hostile.sign(&rig.room, draft);
    // A room weft is not in.
    let mut elsewhere = rig.hostile.message(&rig.room, &rig.mallory, "elsewhere");
    elsewhere.pdu["room_id"] = json!("!nowhere:elsewhere.example");
    let good = rig.hostile.message(&rig.room, &rig.mallory, "well formed");
    rig.hostile.commit(&rig.room, &good);

    let (status, body) = rig
        .hostile
        .send_transaction(
            &rig.weft.server_name(),
            "malformed",
            &[
                huge.pdu.clone(),
                no_depth.pdu.clone(),
                bad_prevs.pdu.clone(),
                elsewhere.pdu.clone(),
                good.pdu.clone(),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer = &body["pdus"];
    assert_accepted(answer, &good.id);
    rig.assert_visible(&good.id).await;
    let error = assert_refused(answer, &huge.id);
    assert!(
        error.contains("large") || error.contains("size") || error.contains("bytes"),
        "{error}"
    );
    for bad in [&huge, &no_depth, &bad_prevs] {
        if let Some(result) = result_of(answer, &bad.id) {
            assert!(result.is_err(), "{}: {answer}", bad.id);
        }
        assert!(rig.stored(&bad.id).await.is_none(), "{} is not held", bad.id);
    }
    let page = rig
        .alice()
        .messages(rig.room.as_str(), "dir=b&limit=100")
        .await
        .to_string();
    assert!(!page.contains("xxxxxxxxxx") && !page.contains("no depth") && !page.contains("bad prevs"));
    assert!(!page.contains("elsewhere"));
}

/// Soft failure: a banned user's server sends a message built on the room
/// before the ban. It passes the auth rules against its own auth events
/// and the state before it, but not against the current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_evading_a_ban_is_soft_failed() {
    let rig = rig().await;
    let before_ban = rig.hostile.draft(
        &rig.room,
        &rig.mallory,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "evading the ban" }),
    );
    rig.alice()
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(rig.room.as_str())),
            Some(&json!({ "user_id": rig.mallory })),
        )
        .await;
    let evading = rig.hostile.sign(&rig.room, before_ban);
    let answer = rig.send("evade", &[&evading]).await;
    // Soft failure is not an error to the sending server.
    assert_accepted(&answer, &evading.id);
    let stored = rig.stored(&evading.id).await.expect("held");
    assert!(
        stored.meta.soft_failed && stored.meta.rejected.is_none(),
        "{:?}",
        stored.meta
    );
    rig.assert_invisible(&evading.id).await;
    let extremities = rig
        .weft
        .services()
        .storage
        .forward_extremities(&rig.room)
        .await
        .unwrap();
    assert!(!extremities.iter().any(|(id, _)| *id == evading.id), "{extremities:?}");
    // Alice's next event does not build on it.
    let (status, sent) = rig.alice().send_text(rig.room.as_str(), "after", "after the ban").await;
    assert_eq!(status, 200);
    let next: OwnedEventId = sent["event_id"].as_str().unwrap().try_into().unwrap();
    let next = rig.stored(&next).await.unwrap();
    assert!(
        !next.pdu.prev_events.contains(&evading.id),
        "{:?}",
        next.pdu.prev_events
    );
    let (_, member) = rig.state("m.room.member", rig.mallory.as_str()).await;
    assert_eq!(member["membership"], "ban");
}

/// v11 leaves it to the server to check a redaction's sender: Mallory's
/// redaction of Alice's message is held but does not take her content;
/// of her own message, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_of_someone_elses_event_without_power_is_not_applied() {
    let rig = rig().await;
    let (status, sent) = rig.alice().send_text(rig.room.as_str(), "a", "alice's words").await;
    assert_eq!(status, 200);
    let alices: OwnedEventId = sent["event_id"].as_str().unwrap().try_into().unwrap();
    let own = rig.hostile.message(&rig.room, &rig.mallory, "mallory's words");
    rig.hostile.commit(&rig.room, &own);
    let redact_alice = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.redaction",
        None,
        json!({ "redacts": alices, "reason": "mine now" }),
    );
    rig.hostile.commit(&rig.room, &redact_alice);
    let redact_own = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.redaction",
        None,
        json!({ "redacts": own.id }),
    );
    rig.hostile.commit(&rig.room, &redact_own);
    let answer = rig.send("redactions", &[&own, &redact_alice, &redact_own]).await;
    assert_accepted(&answer, &own.id);
    assert!(result_of(&answer, &redact_alice.id).is_some(), "{answer}");
    assert_accepted(&answer, &redact_own.id);

    let alice_event = rig.event_for_alice(&alices).await.unwrap();
    assert_eq!(
        alice_event["content"]["body"], "alice's words",
        "Mallory may not redact Alice: {alice_event}"
    );
    let stored = rig.stored(&alices).await.unwrap();
    assert!(stored.meta.redacted_by.is_none(), "{:?}", stored.meta);
    let own_event = rig.event_for_alice(&own.id).await.unwrap();
    assert_eq!(
        own_event["content"],
        json!({}),
        "her own message is redacted: {own_event}"
    );
}

/// A redaction naming an event of another room does nothing, and users
/// never see it (as Synapse withholds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_of_an_event_of_another_room_is_withheld() {
    let rig = rig().await;
    let other: OwnedRoomId = rig
        .alice()
        .create_room(json!({ "preset": "public_chat" }))
        .await
        .parse()
        .unwrap();
    rig.hostile.join(&rig.weft.server_name(), &other, "mallory").await;
    let own = rig.hostile.message(&rig.room, &rig.mallory, "said in the first room");
    rig.hostile.commit(&rig.room, &own);
    assert_accepted(&rig.send("first-room", &[&own]).await, &own.id);
    // Her own message (the same server may redact it), from the other room.
    let redaction = rig.hostile.build(
        &other,
        &rig.mallory,
        "m.room.redaction",
        None,
        json!({ "redacts": own.id }),
    );
    rig.hostile.commit(&other, &redaction);
    let after = rig.hostile.message(&other, &rig.mallory, "sentinel");
    rig.hostile.commit(&other, &after);
    let answer = rig.send("cross-room-redaction", &[&redaction, &after]).await;
    assert_accepted(&answer, &after.id);

    let event = rig.event_for_alice(&own.id).await.unwrap();
    assert_eq!(event["content"]["body"], "said in the first room", "{event}");
    assert!(rig.stored(&own.id).await.unwrap().meta.redacted_by.is_none());
    let page = rig.alice().messages(other.as_str(), "dir=b&limit=100").await;
    let ids: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(ids.contains(&after.id.as_str()), "{page}");
    assert!(!ids.contains(&redaction.id.as_str()), "the redaction is shown: {page}");
    let sync = rig.alice().sync("").await;
    assert!(!sync.to_string().contains(redaction.id.as_str()), "{sync}");
}

/// The state at an event after a gap comes from the sender (`/state_ids`);
/// a sender that names another room's events there (Mallory's power levels
/// in a room where Alice made her admin) must not get them into this room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_from_the_sender_naming_another_rooms_events_is_not_used() {
    let rig = rig().await;
    // Another room, where Alice makes Mallory an admin.
    let other: OwnedRoomId = rig
        .alice()
        .create_room(json!({ "preset": "public_chat" }))
        .await
        .parse()
        .unwrap();
    rig.hostile.join(&rig.weft.server_name(), &other, "mallory").await;
    let mut power = rig
        .alice()
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(other.as_str())
            ),
            None,
        )
        .await;
    power["users"][rig.mallory.as_str()] = json!(100);
    let sent = rig
        .alice()
        .ok(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                enc(other.as_str())
            ),
            Some(&power),
        )
        .await;
    let other_power: OwnedEventId = sent["event_id"].as_str().unwrap().try_into().unwrap();

    // In Alice's first room: a gap, then Mallory renames the room, and the
    // hostile server says the state in the gap has the other room's power
    // levels.
    rig.hostile.set_behaviour(|b| {
        b.serve_missing_events = false;
        b.serve_backfill = false;
    });
    let in_gap = rig.hostile.message(&rig.room, &rig.mallory, "in the gap");
    rig.hostile.commit(&rig.room, &in_gap);
    let rename = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.name",
        Some(""),
        json!({ "name": "Taken over" }),
    );
    rig.hostile.commit(&rig.room, &rename);
    // weft asks for the state before the missing parent (`in_gap`), and if
    // that fails, before the rename itself: the lie is told at both.
    for at in [&in_gap.id, &rename.id] {
        let mut lie = rig.hostile.room(&rig.room).state_before[at].clone();
        lie.insert(("m.room.power_levels".to_owned(), String::new()), other_power.clone());
        rig.hostile.set_state_before(&rig.room, at, lie);
    }
    let after = rig.hostile.message(&rig.room, &rig.mallory, "after the takeover");
    rig.hostile.commit(&rig.room, &after);

    let answer = rig.send("cross-room", &[&rename]).await;
    let rename_result = result_of(&answer, &rename.id);
    let rename_meta = rig.stored(&rename.id).await.map(|e| e.meta);
    let answer = rig.send("cross-room-after", &[&after]).await;
    let after_result = result_of(&answer, &after.id);
    let (_, name) = rig.state("m.room.name", "").await;
    let (_, room_power) = rig.state("m.room.power_levels", "").await;
    let current = rig.state_ids().await;
    eprintln!("rename: {rename_result:?} {rename_meta:?}; after: {after_result:?}; name {name}; power {room_power}");
    assert!(
        !current.contains(&other_power.to_string()),
        "the other room's power levels became this room's state: {room_power}"
    );
    assert_eq!(name["name"], "Original name", "the room was renamed by Mallory");
    assert!(
        rename_result.as_ref().is_some_and(|r| r.is_err()),
        "the rename should be refused (it was allowed only by another room's event): {rename_result:?} {rename_meta:?}"
    );
    rig.assert_invisible(&rename.id).await;
}

/// What `/get_missing_events` brings goes through the same checks: junk
/// slipped into the answer (a forgery, an intruder's message, an event of
/// another room) is dropped or rejected; the real missing event is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_in_a_get_missing_events_answer_is_not_taken() {
    let rig = rig().await;
    let forged = rig.hostile.corrupt_signature(
        &rig.room,
        &rig.hostile.message(&rig.room, &rig.mallory, "forged, in the answer"),
    );
    let eve = rig.hostile.user("eve");
    let intruder = rig.hostile.message(&rig.room, &eve, "intruder, in the answer");
    let mut elsewhere = rig
        .hostile
        .message(&rig.room, &rig.mallory, "another room, in the answer");
    elsewhere.pdu["room_id"] = json!("!elsewhere:elsewhere.example");
    rig.hostile.set_behaviour(|b| {
        b.extra_missing_events = vec![forged.pdu.clone(), intruder.pdu.clone(), elsewhere.pdu.clone()];
    });
    let missing = rig.hostile.message(&rig.room, &rig.mallory, "really missing");
    rig.hostile.commit(&rig.room, &missing);
    let sent = rig.hostile.message(&rig.room, &rig.mallory, "sent");
    rig.hostile.commit(&rig.room, &sent);
    let answer = rig.send("junk", &[&sent]).await;
    assert_accepted(&answer, &sent.id);
    assert_eq!(
        rig.hostile.seen_at("/_matrix/federation/v1/get_missing_events/").len(),
        1
    );
    rig.assert_visible(&missing.id).await;
    rig.assert_visible(&sent.id).await;
    assert!(rig.stored(&forged.id).await.is_none());
    rig.assert_invisible(&forged.id).await;
    rig.assert_invisible(&intruder.id).await;
    if let Some(stored) = rig.stored(&intruder.id).await {
        assert!(stored.meta.rejected.is_some(), "{:?}", stored.meta);
    }
    let page = rig
        .alice()
        .messages(rig.room.as_str(), "dir=b&limit=100")
        .await
        .to_string();
    assert!(!page.contains("in the answer"), "{page}");
}

/// A transaction is the signing server's own: one claiming another origin
/// is refused whole, and none of its events is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_claiming_another_origin_is_refused() {
    let rig = rig().await;
    let message = rig.hostile.message(&rig.room, &rig.mallory, "in someone else's name");
    let body = json!({
        "origin": rig.weft.server_name(),
        "origin_server_ts": 1,
        "pdus": [message.pdu],
        "edus": [],
    });
    let (status, answer) = rig
        .hostile
        .request(
            &rig.weft.server_name(),
            Method::PUT,
            "/_matrix/federation/v1/send/not-mine",
            Some(&body),
        )
        .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{answer}"
    );
    assert!(rig.stored(&message.id).await.is_none());
}

/// A state event that arrives on a fork (its parent is older than the
/// room's latest event) moves the current state: the resolution of the
/// two branches must count the arriving event itself, not yet stored when
/// it runs (it once did not, and this server kept the old state while
/// the sender's server moved on: their views of the room parted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_change_arriving_on_a_fork_joins_the_current_state() {
    let rig = rig().await;
    let alice = rig.alice();
    // Mallory renames herself on the room as she sees it now...
    let draft = rig.hostile.draft(
        &rig.room,
        &rig.mallory,
        "m.room.member",
        Some(rig.mallory.as_str()),
        json!({ "membership": "join", "displayname": "Mallory on a fork" }),
    );
    // ...while Alice moves the room on.
    alice
        .ok(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                enc(rig.room.as_str())
            ),
            Some(&json!({ "topic": "on the main line" })),
        )
        .await;
    let rename = rig.hostile.sign(&rig.room, draft);
    rig.hostile.commit(&rig.room, &rename);
    assert_accepted(&rig.send("fork", &[&rename]).await, &rename.id);

    let state = |kind: &str, key: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
            enc(rig.room.as_str()),
            enc(key)
        )
    };
    let member = alice
        .ok(Method::GET, &state("m.room.member", rig.mallory.as_str()), None)
        .await;
    assert_eq!(member["displayname"], "Mallory on a fork", "{member}");
    let topic = alice.ok(Method::GET, &state("m.room.topic", ""), None).await;
    assert_eq!(topic["topic"], "on the main line", "{topic}");
}

/// Two branches from one event: here a member joins; there (another
/// server) a moderator changes a rule set on the common ancestor. The
/// later change wins on both servers (state resolution orders them by
/// their power levels, then time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_changed_on_a_fork_against_a_local_join_wins() {
    let rig = rig().await;
    let alice = rig.alice();
    let state_path = |kind: &str| format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(rig.room.as_str()));
    let mut levels = alice.ok(Method::GET, &state_path("m.room.power_levels"), None).await;
    levels["users"][rig.mallory.as_str()] = json!(50);
    alice
        .ok(Method::PUT, &state_path("m.room.power_levels"), Some(&levels))
        .await;
    let open = alice
        .ok(
            Method::PUT,
            &state_path("m.room.guest_access"),
            Some(&json!({ "guest_access": "can_join" })),
        )
        .await;
    let open_id = open["event_id"].as_str().unwrap().to_owned();
    // the other server has seen the rule
    let key = ("m.room.guest_access".to_owned(), String::new());
    common::eventually(
        std::time::Duration::from_secs(10),
        "the hostile server sees the rule",
        || async {
            match rig.hostile.room(&rig.room).state.get(&key) {
                Some(id) if id.as_str() == open_id => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // Bob joins here, and Mallory's server does not hear of it...
    rig.hostile.set_behaviour(|b| b.accept_transactions = false);
    let bob = rig.weft.register("bob").await;
    assert_eq!(bob.join(rig.room.as_str()).await.0, 200);
    // ...when Mallory, later, closes the room on the rule.
    let draft = rig.hostile.draft(
        &rig.room,
        &rig.mallory,
        "m.room.guest_access",
        Some(""),
        json!({ "guest_access": "forbidden" }),
    );
    rig.hostile.set_behaviour(|b| b.accept_transactions = true);
    let close = rig.hostile.sign(&rig.room, draft);
    rig.hostile.commit(&rig.room, &close);
    assert_accepted(&rig.send("close-on-fork", &[&close]).await, &close.id);

    let rule = alice.ok(Method::GET, &state_path("m.room.guest_access"), None).await;
    assert_eq!(rule["guest_access"], "forbidden", "{rule}");
    let (status, member) = rig.state("m.room.member", &bob.user_id).await;
    assert_eq!((status, member["membership"].as_str()), (200, Some("join")), "{member}");
}

/// A page of history from `/backfill` (taken as one batch) gets the same
/// checks as a live event, each event against the state its own
/// predecessors in the page make: Eve, who joined in the gap, may talk
/// there; Mallory's name change in the gap (he has no power for it) is
/// rejected, and the state after it is the state before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_page_is_checked_event_by_event_against_its_own_state() {
    let rig = rig().await;
    // `/get_missing_events` gives only the newest missing event.
    rig.hostile.set_behaviour(|b| b.missing_events_limit = Some(1));
    let eve = rig.hostile.user("eve");
    let eve_join = rig.hostile.build(
        &rig.room,
        &eve,
        "m.room.member",
        Some(eve.as_str()),
        json!({ "membership": "join" }),
    );
    rig.hostile.commit(&rig.room, &eve_join);
    let eve_talks = rig.hostile.message(&rig.room, &eve, "eve in the gap");
    rig.hostile.commit(&rig.room, &eve_talks);
    let forged = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.name",
        Some(""),
        json!({ "name": "Forged" }),
    );
    rig.hostile.commit(&rig.room, &forged);
    let after_forged = rig.hostile.message(&rig.room, &rig.mallory, "after the forgery");
    rig.hostile.commit(&rig.room, &after_forged);
    let last = rig.hostile.message(&rig.room, &rig.mallory, "last");
    rig.hostile.commit(&rig.room, &last);

    // weft gets the last two live; the rest is a gap at the forgery.
    assert_accepted(&rig.send("gap", &[&last]).await, &last.id);
    let backward = rig.backward_extremities().await;
    assert!(backward.contains(&forged.id), "the gap is at the forgery: {backward:?}");

    // Alice pages back into the gap: weft backfills it.
    let timeline = rig.timeline().await;
    let position = |id: &OwnedEventId| timeline.iter().position(|t| t.as_str() == id.as_str());
    let order: Vec<Option<usize>> = [&eve_join.id, &eve_talks.id, &after_forged.id, &last.id]
        .into_iter()
        .map(position)
        .collect();
    assert!(
        order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
        "the gap's events in order: {order:?} in {timeline:?}"
    );
    assert!(
        !rig.hostile.seen_at("/_matrix/federation/v1/backfill/").is_empty(),
        "weft backfilled"
    );
    let stored = rig.stored(&forged.id).await.expect("the forgery is kept");
    assert!(
        stored.meta.rejected.is_some(),
        "the forgery is rejected: {:?}",
        stored.meta
    );
    assert!(!stored.meta.outlier, "and takes its place in the timeline");
    rig.assert_invisible(&forged.id).await;

    // The states the batch recorded: Eve joined before she talked; the
    // forgery is in no state.
    let services = rig.weft.services().clone();
    let state_of = |group: Option<i64>| {
        let services = services.clone();
        async move { services.state.group(group.expect("a state group")).await.unwrap() }
    };
    let eve_key = ("m.room.member".into(), eve.to_string());
    let name_key = ("m.room.name".into(), String::new());
    let before_talk = state_of(rig.stored(&eve_talks.id).await.unwrap().meta.state_group_before).await;
    assert_eq!(before_talk.get(&eve_key), Some(&eve_join.id));
    let after_forgery = state_of(stored.meta.state_group_after).await;
    assert_ne!(after_forgery.get(&name_key), Some(&forged.id));
    assert_eq!(after_forgery.get(&eve_key), Some(&eve_join.id));
    let (_, name) = rig.state("m.room.name", "").await;
    assert_eq!(name["name"], "Original name", "{name}");
}

/// History comes newest first: a redaction can arrive pages before the
/// event it redacts. The event, when it comes, is stored redacted (if
/// the redaction may redact it), and Alice never reads its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_backfilled_after_its_redaction_is_redacted() {
    let rig = rig().await;
    rig.hostile.set_behaviour(|b| b.missing_events_limit = Some(1));
    let secret = rig.hostile.message(&rig.room, &rig.mallory, "a secret");
    rig.hostile.commit(&rig.room, &secret);
    let unrelated = rig.hostile.message(&rig.room, &rig.mallory, "kept");
    rig.hostile.commit(&rig.room, &unrelated);
    for i in 0..30 {
        let filler = rig.hostile.message(&rig.room, &rig.mallory, &format!("filler {i}"));
        rig.hostile.commit(&rig.room, &filler);
    }
    let redaction = rig.hostile.build(
        &rig.room,
        &rig.mallory,
        "m.room.redaction",
        None,
        json!({ "redacts": secret.id }),
    );
    rig.hostile.commit(&rig.room, &redaction);
    let after = rig.hostile.message(&rig.room, &rig.mallory, "after");
    rig.hostile.commit(&rig.room, &after);
    let last = rig.hostile.message(&rig.room, &rig.mallory, "last");
    rig.hostile.commit(&rig.room, &last);
    assert_accepted(&rig.send("late", &[&last]).await, &last.id);

    // Alice pages back 5 at a time: weft backfills 20 at a time, the
    // redaction long before the secret.
    let mut from: Option<String> = None;
    for _ in 0..40 {
        let query = match &from {
            Some(token) => format!("dir=b&limit=5&from={}", enc(token)),
            None => "dir=b&limit=5".to_owned(),
        };
        let page = rig.alice().messages(rig.room.as_str(), &query).await;
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let backfills = rig.hostile.seen_at("/_matrix/federation/v1/backfill/").len();
    assert!(backfills >= 2, "the gap took several /backfill requests: {backfills}");
    let stored = rig.stored(&secret.id).await.expect("the secret was backfilled");
    assert!(!stored.meta.outlier);
    assert_eq!(
        stored.meta.redacted_by.as_ref(),
        Some(&redaction.id),
        "{:?}",
        stored.meta
    );
    let event = rig.event_for_alice(&secret.id).await.expect("visible, redacted");
    assert_eq!(event["content"], json!({}), "{event}");
    let kept = rig.event_for_alice(&unrelated.id).await.expect("visible");
    assert_eq!(kept["content"]["body"], "kept");
}

/// A gap full of state changes (ten users join, then each talks): the
/// batch writes itself every few state changes, and every event is
/// checked against the state its predecessors made, across those writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_page_of_many_state_changes_keeps_each_state() {
    let rig = rig().await;
    rig.hostile.set_behaviour(|b| b.missing_events_limit = Some(1));
    let users: Vec<OwnedUserId> = (0..10).map(|i| rig.hostile.user(&format!("u{i}"))).collect();
    let mut joins = Vec::new();
    for user in &users {
        let join = rig.hostile.build(
            &rig.room,
            user,
            "m.room.member",
            Some(user.as_str()),
            json!({ "membership": "join" }),
        );
        rig.hostile.commit(&rig.room, &join);
        joins.push(join);
    }
    let mut talks = Vec::new();
    for user in &users {
        let talk = rig.hostile.message(&rig.room, user, "hello");
        rig.hostile.commit(&rig.room, &talk);
        talks.push(talk);
    }
    let last = rig.hostile.message(&rig.room, &rig.mallory, "last");
    rig.hostile.commit(&rig.room, &last);
    assert_accepted(&rig.send("crowd", &[&last]).await, &last.id);

    let timeline = rig.timeline().await;
    for event in joins.iter().chain(&talks) {
        assert!(
            timeline.contains(&event.id.to_string()),
            "{} is in the timeline: {timeline:?}",
            event.id
        );
        let stored = rig.stored(&event.id).await.unwrap();
        assert!(stored.meta.rejected.is_none(), "{}: {:?}", event.id, stored.meta);
    }
    // The state after the last join has all ten, as the room's has.
    let after = rig
        .weft
        .services()
        .state
        .group(rig.stored(&joins[9].id).await.unwrap().meta.state_group_after.unwrap())
        .await
        .unwrap();
    for (user, join) in users.iter().zip(&joins) {
        assert_eq!(after.get(&("m.room.member".into(), user.to_string())), Some(&join.id));
        let (status, member) = rig.state("m.room.member", user.as_str()).await;
        assert_eq!((status, member["membership"].as_str()), (200, Some("join")), "{member}");
    }
}
