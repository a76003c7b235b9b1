//! The order in which `/backfill` walks a DAG with forks (docs/history.md):
//! back over `prev_events`, always the held event of greatest depth not
//! yet returned, ties broken by the greater event ID; the `v` events
//! first; no duplicates; at most `limit`.

mod common;

use std::collections::{HashMap, HashSet};

use common::{TestServer, federation::remote_join};
use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId, UInt,
    api::federation::backfill::get_backfill,
};
use serde_json::json;
use weft::{
    events::{EventTemplate, Placement, build_event},
    rooms::persist::{NewCurrent, ToPersist, persist_pdu},
    storage::TimelineStatus,
};

/// Adds a message by `sender` to `room` on `server` with the given
/// parents, as if it had arrived that way: a fork in the DAG.
async fn fork_event(
    server: &TestServer,
    room: &OwnedRoomId,
    sender: &OwnedUserId,
    prevs: &[OwnedEventId],
    text: &str,
) -> OwnedEventId {
    let svc = server.services();
    let mut depth = 0;
    let mut parent_state = None;
    for prev in prevs {
        let event = svc.storage.event(prev).await.unwrap().unwrap();
        depth = depth.max(event.pdu.depth);
        parent_state = event.meta.state_group_after;
    }
    let group = parent_state.unwrap();
    let state = svc.state.group(group).await.unwrap();
    let auth_events = [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", sender.as_str()),
    ]
    .iter()
    .filter_map(|(t, k)| state.get(&(t.to_string().into(), k.to_string())).cloned())
    .collect();
    let pdu = build_event(
        &svc.keys,
        &RoomVersionId::V11,
        sender,
        &EventTemplate::message("m.room.message", json!({ "msgtype": "m.text", "body": text })),
        Placement {
            room_id: Some(room),
            prev_events: prevs.to_vec(),
            auth_events,
            depth: depth + 1,
            ref_hashes: Default::default(),
        },
        MilliSecondsSinceUnixEpoch::now(),
    )
    .unwrap();
    let rules = RoomVersionId::V11.rules().unwrap();
    let event = ToPersist {
        pdu,
        before: Some((group, state)),
        current: NewCurrent::Unchanged,
        status: TimelineStatus::Accepted,
        txn: None,
        backfilled: false,
    };
    let sent = persist_pdu(svc, event, &rules).await.unwrap();
    sent.pdu.event_id.clone()
}

/// The order of docs/history.md, computed independently: all ancestors
/// of `from` (inclusive), by depth then event ID, both descending.
fn expected_order(
    parents: &HashMap<OwnedEventId, (u64, Vec<OwnedEventId>)>,
    from: &[OwnedEventId],
) -> Vec<OwnedEventId> {
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    let mut stack: Vec<OwnedEventId> = from.to_vec();
    while let Some(id) = stack.pop() {
        if let Some((_, prevs)) = parents.get(&id)
            && seen.insert(id.clone())
        {
            stack.extend(prevs.iter().cloned());
        }
    }
    let mut all: Vec<OwnedEventId> = seen.into_iter().collect();
    all.sort_by(|x, y| (parents[y].0, y).cmp(&(parents[x].0, x)));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_walks_forks_by_depth_then_event_id() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let sender: OwnedUserId = alice.user_id.as_str().try_into().unwrap();
    let room: OwnedRoomId = alice
        .create_room(json!({ "preset": "public_chat" }))
        .await
        .parse()
        .unwrap();
    let bob: OwnedUserId = format!("@bob:{}", b.server_name()).try_into().unwrap();
    remote_join(&a, &b, &room, &bob).await;
    let (_, x) = alice.send_text(room.as_str(), "x", "X").await;
    let x: OwnedEventId = x["event_id"].as_str().unwrap().try_into().unwrap();

    // X ── A1 ── A2 ── A3 ──┐
    //  └── B1 ── B2 ────────┴── M (sent through the client API: it merges)
    //       └── C1 (a third, short branch, left as an extremity until M2)
    let a1 = fork_event(&a, &room, &sender, std::slice::from_ref(&x), "A1").await;
    let a2 = fork_event(&a, &room, &sender, std::slice::from_ref(&a1), "A2").await;
    let a3 = fork_event(&a, &room, &sender, std::slice::from_ref(&a2), "A3").await;
    let b1 = fork_event(&a, &room, &sender, std::slice::from_ref(&x), "B1").await;
    let b2 = fork_event(&a, &room, &sender, std::slice::from_ref(&b1), "B2").await;
    let c1 = fork_event(&a, &room, &sender, std::slice::from_ref(&b1), "C1").await;
    let (_, m) = alice.send_text(room.as_str(), "m", "M").await;
    let m: OwnedEventId = m["event_id"].as_str().unwrap().try_into().unwrap();

    // The DAG as A holds it.
    let svc = a.services();
    let all = svc
        .storage
        .timeline_page(&room, weft::timeline::END, weft::storage::Direction::Backward, 1000)
        .await
        .unwrap();
    let parents: HashMap<OwnedEventId, (u64, Vec<OwnedEventId>)> = all
        .iter()
        .map(|e| (e.pdu.event_id.clone(), (e.pdu.depth, e.pdu.prev_events.clone())))
        .collect();
    let m_prevs: HashSet<_> = parents[&m].1.iter().cloned().collect();
    assert_eq!(
        m_prevs,
        HashSet::from([a3.clone(), b2.clone(), c1.clone()]),
        "M merges every branch"
    );

    let backfill = |v: Vec<OwnedEventId>, limit: u32| backfill_ids(&a, &b, &room, v, limit);

    // From M, everything, in the documented order.
    let whole = backfill(vec![m.clone()], 100).await;
    assert_eq!(whole, expected_order(&parents, std::slice::from_ref(&m)));
    assert_eq!(whole[0], m, "the v event comes first");
    assert_eq!(whole.len(), parents.len(), "the whole room");
    // The depths never increase along the answer.
    assert!(whole.windows(2).all(|w| parents[&w[0]].0 >= parents[&w[1]].0));

    // A limit cuts the same order short.
    let first5 = backfill(vec![m.clone()], 5).await;
    assert_eq!(first5, whole[..5]);

    // Several v: the union of their histories, still one order, no duplicates.
    let several = backfill(vec![a2.clone(), c1.clone(), b2.clone()], 100).await;
    assert_eq!(several, expected_order(&parents, &[a2.clone(), c1.clone(), b2.clone()]));
    let unique: HashSet<_> = several.iter().collect();
    assert_eq!(unique.len(), several.len());
    assert!(
        !several.contains(&a3) && !several.contains(&m),
        "nothing after the v events"
    );

    // Unknown v events are ignored; none known gives an empty page.
    let unknown: OwnedEventId = "$unknown".try_into().unwrap();
    assert_eq!(
        backfill(vec![unknown.clone(), b1.clone()], 100).await,
        expected_order(&parents, std::slice::from_ref(&b1))
    );
    assert!(backfill(vec![unknown], 100).await.is_empty());
}

async fn backfill_ids(
    a: &TestServer,
    b: &TestServer,
    room: &OwnedRoomId,
    v: Vec<OwnedEventId>,
    limit: u32,
) -> Vec<OwnedEventId> {
    let request = get_backfill::v1::Request::new(room.clone(), v, UInt::from(limit));
    let page = b.services().federation.send(&a.server_name(), request).await.unwrap();
    let rules = RoomVersionId::V11.rules().unwrap();
    page.pdus
        .iter()
        .map(|raw| {
            let object: CanonicalJsonObject = serde_json::from_str(raw.get()).unwrap();
            OwnedEventId::try_from(format!(
                "${}",
                ruma::signatures::reference_hash(&object, &rules).unwrap()
            ))
            .unwrap()
        })
        .collect()
}
