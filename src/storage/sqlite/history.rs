//! Walks of the room DAG for other servers: auth chains, `/backfill` and
//! `/get_missing_events`. Each walk runs inside one read transaction and
//! reads only the events it returns and their edges: its cost follows
//! `limit`, not the size of the room.

use std::collections::{BinaryHeap, HashSet, VecDeque};

use ruma::{EventId, OwnedEventId, RoomId};
use rusqlite::{Connection, OptionalExtension, params};

use super::{accounts::parse, events};
use crate::storage::{Result, StoredEvent};

/// Depth and room of a held, not rejected event.
fn depth_in_room(c: &Connection, event_id: &EventId, room_id: &RoomId) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT depth FROM events WHERE event_id = ?1 AND room_id = ?2 AND rejected IS NULL")?
            .query_row(params![event_id.as_str(), room_id.as_str()], |r| r.get(0))
            .optional()?,
    )
}

fn prev_events(c: &Connection, event_id: &EventId) -> Result<Vec<OwnedEventId>> {
    let mut stmt = c.prepare_cached("SELECT prev_event_id FROM event_edges WHERE event_id = ?1")?;
    let rows = stmt.query_map([event_id.as_str()], |r| r.get::<_, String>(0))?;
    rows.map(|r| parse(r?)).collect()
}

pub fn auth_chain(c: &Connection, event_ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
    // One read transaction: the walk sees one version of the DAG.
    let tx = c.unchecked_transaction()?;
    let c: &Connection = &tx;
    let mut stmt = c.prepare_cached("SELECT auth_event_id FROM event_auth WHERE event_id = ?1")?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: Vec<String> = event_ids.iter().map(|e| e.to_string()).collect();
    let mut chain = Vec::new();
    while let Some(id) = queue.pop() {
        let rows = stmt.query_map([id.as_str()], |r| r.get::<_, String>(0))?;
        for auth in rows {
            let auth = auth?;
            if seen.insert(auth.clone()) {
                chain.push(parse(auth.clone())?);
                queue.push(auth);
            }
        }
    }
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

pub fn backfill(c: &Connection, room_id: &RoomId, from: &[OwnedEventId], limit: usize) -> Result<Vec<StoredEvent>> {
    let tx = c.unchecked_transaction()?;
    let c: &Connection = &tx;
    let mut heap = BinaryHeap::new();
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    for id in from {
        if seen.insert(id.clone())
            && let Some(depth) = depth_in_room(c, id, room_id)?
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
        let Some(event) = events::event(c, &event_id)? else {
            continue;
        };
        for prev in prev_events(c, &event_id)? {
            if seen.insert(prev.clone())
                && let Some(depth) = depth_in_room(c, &prev, room_id)?
            {
                heap.push(Frontier { depth, event_id: prev });
            }
        }
        out.push(event);
    }
    Ok(out)
}

pub fn missing_events(
    c: &Connection,
    room_id: &RoomId,
    earliest: &[OwnedEventId],
    latest: &[OwnedEventId],
    limit: usize,
    min_depth: u64,
) -> Result<Vec<StoredEvent>> {
    let tx = c.unchecked_transaction()?;
    let c: &Connection = &tx;
    let mut seen: HashSet<OwnedEventId> = earliest.iter().chain(latest).cloned().collect();
    let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
    for id in latest {
        if depth_in_room(c, id, room_id)?.is_some() {
            queue.extend(prev_events(c, id)?);
        }
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(id) = queue.pop_front() else { break };
        if !seen.insert(id.clone()) {
            continue;
        }
        match depth_in_room(c, &id, room_id)? {
            Some(depth) if depth >= min_depth as i64 => {}
            _ => continue,
        }
        let Some(event) = events::event(c, &id)? else { continue };
        queue.extend(prev_events(c, &id)?);
        out.push(event);
    }
    out.sort_by_key(|e| (e.pdu.depth, e.meta.stream_ordering));
    Ok(out)
}
