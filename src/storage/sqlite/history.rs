//! Walks of the room DAG for other servers: auth chains, `/backfill` and
//! `/get_missing_events`. Each walk runs inside one read transaction and
//! reads only the events it returns and their edges: its cost follows
//! `limit`, not the size of the room.

use std::collections::{BinaryHeap, HashSet, VecDeque};

use ruma::{EventId, OwnedEventId, RoomId};
use rusqlite::{Connection, OptionalExtension, params};

use super::{LISTED_ID, accounts::parse, events};
use crate::storage::{Result, StoredEvent};

/// Depth and room of a held, not rejected event.
fn depth_in_room(c: &Connection, event_id: &EventId, room_id: &RoomId) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT depth FROM events WHERE event_id = ?1 AND room_id = ?2 AND rejected IS NULL")?
            .query_row(params![event_id.as_str(), room_id.as_str()], |r| r.get(0))
            .optional()?,
    )
}

/// The SQL of the event IDs (column `id`) that the JSON of the event
/// named by `?1` lists under `field` (`prev_events` or `auth_events`,
/// which redaction keeps): IDs, or `[ID, hashes]` pairs in room versions 1
/// and 2.
/// (No table of edges keyed by the event: see schema_v27.sql.)
pub(super) fn listed_ids(field: &str) -> String {
    format!("SELECT {LISTED_ID} AS id FROM events e, json_each(e.json, '$.{field}') l WHERE e.event_id = ?1")
}

/// The parents of a timeline event (an outlier has none here: its edges
/// are not the room's).
fn prev_events(event: &StoredEvent) -> Vec<OwnedEventId> {
    if event.meta.outlier {
        return Vec::new();
    }
    event.pdu.prev_events.clone()
}

/// The auth chain of `event_ids`, sorted; `cached` gives the auth events
/// of an event held in memory, which spares reading its JSON.
pub fn auth_chain(
    c: &Connection,
    event_ids: &[OwnedEventId],
    cached: impl Fn(&EventId) -> Option<Vec<OwnedEventId>>,
) -> Result<Vec<OwnedEventId>> {
    // One read transaction: the walk sees one version of the DAG.
    let tx = c.unchecked_transaction()?;
    let c: &Connection = &tx;
    let mut stmt = c.prepare_cached(&listed_ids("auth_events"))?;
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    let mut queue: Vec<OwnedEventId> = event_ids.to_vec();
    while let Some(id) = queue.pop() {
        let auth_events = match cached(&id) {
            Some(auth_events) => auth_events,
            None => stmt
                .query_map([id.as_str()], |r| r.get::<_, String>(0))?
                .map(|auth| parse(auth?))
                .collect::<Result<Vec<_>>>()?,
        };
        for auth in auth_events {
            if seen.insert(auth.clone()) {
                queue.push(auth);
            }
        }
    }
    let mut chain: Vec<OwnedEventId> = seen.into_iter().collect();
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
        for prev in prev_events(&event) {
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
        if depth_in_room(c, id, room_id)?.is_some()
            && let Some(event) = events::event(c, id)?
        {
            queue.extend(prev_events(&event));
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
        queue.extend(prev_events(&event));
        out.push(event);
    }
    out.sort_by_key(|e| (e.pdu.depth, e.meta.stream_ordering));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IDs an event lists: plain (room versions 3 and later), or the
    /// first of `[ID, hashes]` pairs (1 and 2).
    #[test]
    fn listed_ids_read_both_shapes_of_the_lists() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            r#"CREATE TABLE events (event_id TEXT, json TEXT);
               INSERT INTO events VALUES ('$new', '{"auth_events": ["$a", "$b"], "prev_events": ["$p"]}');
               INSERT INTO events VALUES ('$old:x', '{"auth_events": [["$a:x", {"sha256": "h"}]], "prev_events": []}');"#,
        )
        .unwrap();
        let listed = |field: &str, id: &str| -> Vec<String> {
            let mut stmt = c.prepare(&listed_ids(field)).unwrap();
            stmt.query_map([id], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(listed("auth_events", "$new"), ["$a", "$b"]);
        assert_eq!(listed("prev_events", "$new"), ["$p"]);
        assert_eq!(listed("auth_events", "$old:x"), ["$a:x"]);
        assert!(listed("prev_events", "$old:x").is_empty());
        assert!(listed("auth_events", "$unknown").is_empty());
    }
}
