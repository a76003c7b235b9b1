//! Walks of the room DAG for other servers: auth chains, `/backfill` and
//! `/get_missing_events` (as `sqlite/history.rs`). Each walk runs in one
//! read-only snapshot and reads only the events it returns and their
//! edges: its cost follows `limit`, not the size of the room.

use std::collections::{BinaryHeap, HashSet, VecDeque};

use ruma::{EventId, OwnedEventId, RoomId};

use super::{GenericClient, col, events, parse, query, query_opt};
use crate::storage::{Result, StoredEvent};

/// Depth of a held, not rejected event of the room.
async fn depth_in_room(c: &impl GenericClient, event_id: &EventId, room_id: &RoomId) -> Result<Option<i64>> {
    query_opt(
        c,
        "SELECT depth FROM events WHERE event_id = $1 AND room_id = $2 AND rejected IS NULL",
        &[&event_id.as_str(), &room_id.as_str()],
    )
    .await?
    .map(|r| col(&r, 0))
    .transpose()
}

/// The parents of an event, each with its depth when it is held (not
/// rejected) in the room: one statement per step of a walk.
async fn parents(
    c: &impl GenericClient,
    event_id: &EventId,
    room_id: &RoomId,
) -> Result<Vec<(OwnedEventId, Option<i64>)>> {
    query(
        c,
        "SELECT g.prev_event_id, e.depth FROM event_edges g
         LEFT JOIN events e ON e.event_id = g.prev_event_id AND e.room_id = $2 AND e.rejected IS NULL
         WHERE g.event_id = $1",
        &[&event_id.as_str(), &room_id.as_str()],
    )
    .await?
    .iter()
    .map(|r| Ok((parse(col::<String>(r, 0)?)?, col(r, 1)?)))
    .collect()
}

pub async fn auth_chain(c: &impl GenericClient, event_ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
    let ids: Vec<&str> = event_ids.iter().map(|e| e.as_str()).collect();
    let mut chain = query(
        c,
        "WITH RECURSIVE chain(id) AS (
             SELECT auth_event_id FROM event_auth WHERE event_id = ANY($1)
             UNION
             SELECT a.auth_event_id FROM event_auth a JOIN chain ON a.event_id = chain.id
         )
         SELECT id FROM chain",
        &[&ids],
    )
    .await?
    .iter()
    .map(|r| parse(col::<String>(r, 0)?))
    .collect::<Result<Vec<OwnedEventId>>>()?;
    chain.sort();
    Ok(chain)
}

/// Entry of the backfill frontier: greatest depth first, then greatest
/// event ID.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Frontier {
    depth: i64,
    event_id: OwnedEventId,
}

pub async fn backfill(
    c: &impl GenericClient,
    room_id: &RoomId,
    from: &[OwnedEventId],
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let mut heap = BinaryHeap::new();
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    for id in from {
        if seen.insert(id.clone())
            && let Some(depth) = depth_in_room(c, id, room_id).await?
        {
            heap.push(Frontier {
                depth,
                event_id: id.clone(),
            });
        }
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(Frontier { event_id, .. }) = heap.pop() else {
            break;
        };
        let Some(event) = events::event(c, &event_id).await? else {
            continue;
        };
        for (prev, depth) in parents(c, &event_id, room_id).await? {
            if let Some(depth) = depth
                && seen.insert(prev.clone())
            {
                heap.push(Frontier { depth, event_id: prev });
            }
        }
        out.push(event);
    }
    Ok(out)
}

pub async fn missing_events(
    c: &impl GenericClient,
    room_id: &RoomId,
    earliest: &[OwnedEventId],
    latest: &[OwnedEventId],
    limit: usize,
    min_depth: u64,
) -> Result<Vec<StoredEvent>> {
    let mut seen: HashSet<OwnedEventId> = earliest.iter().chain(latest).cloned().collect();
    let mut queue: VecDeque<(OwnedEventId, Option<i64>)> = VecDeque::new();
    for id in latest {
        if depth_in_room(c, id, room_id).await?.is_some() {
            queue.extend(parents(c, id, room_id).await?);
        }
    }
    let min_depth = i64::try_from(min_depth).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((id, depth)) = queue.pop_front() else { break };
        if !seen.insert(id.clone()) {
            continue;
        }
        match depth {
            Some(depth) if depth >= min_depth => {}
            _ => continue,
        }
        let Some(event) = events::event(c, &id).await? else {
            continue;
        };
        queue.extend(parents(c, &id, room_id).await?);
        out.push(event);
    }
    out.sort_by_key(|e| (e.pdu.depth, e.meta.stream_ordering));
    Ok(out)
}
