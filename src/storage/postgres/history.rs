//! Walks of the room DAG for other servers: auth chains, `/backfill` and
//! `/get_missing_events` (as `sqlite/history.rs`). Each walk runs in one
//! read-only snapshot and reads only the events it returns and their
//! edges: its cost follows `limit`, not the size of the room. A walk is two
//! statements, whatever its length: the ancestry it may cover (a recursive
//! query), then the events it chose; the order is decided here, between
//! them, as SQLite's walk decides it.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use ruma::{EventId, OwnedEventId, RoomId};

use super::{GenericClient, col, events, parse, query};
use crate::storage::{Result, StoredEvent};

/// What a walk of the DAG back from some events needs to know, read in
/// one statement: the events `levels` steps or fewer back from them (a
/// walk that returns `levels` events never goes further), each with its
/// depth when it is held, not rejected, in the room, and the parents of
/// those that are.
struct Ancestry {
    depths: HashMap<OwnedEventId, i64>,
    parents: HashMap<OwnedEventId, Vec<OwnedEventId>>,
}

impl Ancestry {
    async fn read(c: &impl GenericClient, room_id: &RoomId, from: &[OwnedEventId], levels: usize) -> Result<Self> {
        let from: Vec<&str> = from.iter().map(|e| e.as_str()).collect();
        let levels = i64::try_from(levels).unwrap_or(i64::MAX);
        // Every lookup is a scalar subquery or an `OFFSET 0` lateral one, so
        // that each step is an index probe whatever the planner believes of
        // the tables' sizes (a hash join would read the whole room); an
        // event's room and rejection are tested on the row found, not in
        // its lookup: with `room_id = $2` there, the planner scanned a small
        // room's events (by `events_stream`) for each event of the walk.
        let rows = query(
            c,
            "WITH RECURSIVE walk(child, id, depth, level) AS (
                 SELECT NULL::text, f, (SELECT CASE WHEN e.room_id = $2 AND e.rejected IS NULL THEN e.depth END
                                         FROM events e WHERE e.event_id = f), 0::bigint
                 FROM unnest($1::text[]) AS f
                 UNION
                 SELECT w.id, p.prev_event_id, p.depth, w.level + 1
                 FROM walk w, LATERAL (
                     SELECT g.prev_event_id,
                            (SELECT CASE WHEN e.room_id = $2 AND e.rejected IS NULL THEN e.depth END
                             FROM events e WHERE e.event_id = g.prev_event_id) AS depth
                     FROM event_edges g WHERE g.event_id = w.id OFFSET 0) p
                 WHERE w.depth IS NOT NULL AND w.level < $3
             )
             SELECT DISTINCT child, id, depth FROM walk",
            &[&from, &room_id.as_str(), &levels],
        )
        .await?;
        let mut ancestry = Ancestry {
            depths: HashMap::new(),
            parents: HashMap::new(),
        };
        for row in &rows {
            let child: Option<String> = col(row, 0)?;
            let id: OwnedEventId = parse(col::<String>(row, 1)?)?;
            if let Some(depth) = col::<Option<i64>>(row, 2)? {
                ancestry.depths.insert(id.clone(), depth);
            }
            if let Some(child) = child {
                ancestry.parents.entry(parse(child)?).or_default().push(id);
            }
        }
        for parents in ancestry.parents.values_mut() {
            parents.sort();
            parents.dedup();
        }
        Ok(ancestry)
    }

    /// Depth of a held, not rejected event of the room.
    fn depth(&self, id: &EventId) -> Option<i64> {
        self.depths.get(id).copied()
    }

    /// The parents of a held event, each with its depth when it is held.
    fn parents(&self, id: &EventId) -> impl Iterator<Item = (OwnedEventId, Option<i64>)> + '_ {
        self.parents
            .get(id)
            .into_iter()
            .flatten()
            .map(|p| (p.clone(), self.depth(p)))
    }
}

/// The held events of `ids`, in that order (one statement).
async fn events_in_order(c: &impl GenericClient, ids: &[OwnedEventId]) -> Result<Vec<StoredEvent>> {
    let mut by_id: HashMap<OwnedEventId, StoredEvent> = events::events(c, ids)
        .await?
        .into_iter()
        .map(|e| (e.pdu.event_id.clone(), e))
        .collect();
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

pub async fn auth_chain(c: &impl GenericClient, event_ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
    let ids: Vec<&str> = event_ids.iter().map(|e| e.as_str()).collect();
    let mut chain = query(
        c,
        "WITH RECURSIVE chain(id) AS (
             SELECT a.auth_event_id FROM unnest($1::text[]) AS seed (id),
                 LATERAL (SELECT auth_event_id FROM event_auth WHERE event_id = seed.id OFFSET 0) a
             UNION
             SELECT a.auth_event_id FROM chain,
                 LATERAL (SELECT auth_event_id FROM event_auth WHERE event_id = chain.id OFFSET 0) a
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
    let ancestry = Ancestry::read(c, room_id, from, limit).await?;
    let mut heap = BinaryHeap::new();
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    for id in from {
        if seen.insert(id.clone())
            && let Some(depth) = ancestry.depth(id)
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
        for (prev, depth) in ancestry.parents(&event_id) {
            if let Some(depth) = depth
                && seen.insert(prev.clone())
            {
                heap.push(Frontier { depth, event_id: prev });
            }
        }
        out.push(event_id);
    }
    events_in_order(c, &out).await
}

pub async fn missing_events(
    c: &impl GenericClient,
    room_id: &RoomId,
    earliest: &[OwnedEventId],
    latest: &[OwnedEventId],
    limit: usize,
    min_depth: u64,
) -> Result<Vec<StoredEvent>> {
    // `latest` themselves are not returned: one level more.
    let ancestry = Ancestry::read(c, room_id, latest, limit.saturating_add(1)).await?;
    let mut seen: HashSet<OwnedEventId> = earliest.iter().chain(latest).cloned().collect();
    let mut queue: VecDeque<(OwnedEventId, Option<i64>)> = VecDeque::new();
    for id in latest {
        if ancestry.depth(id).is_some() {
            queue.extend(ancestry.parents(id));
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
        queue.extend(ancestry.parents(&id));
        out.push(id);
    }
    let mut out = events_in_order(c, &out).await?;
    out.sort_by_key(|e| (e.pdu.depth, e.meta.stream_ordering));
    Ok(out)
}
