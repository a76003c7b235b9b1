//! Rooms, events, their edges and the two orders.

use std::sync::Arc;

use ruma::{EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{accounts::parse, exec, now_ms, query_one, state};
use crate::{
    events::Pdu,
    storage::{
        Direction, EventKey, EventMeta, NewCurrentState, NewTimelineEvent, Persisted, Result, RoomInfo, StorageError,
        StoredEvent, StreamOrdering, TimelineStatus, TopoKey, TxnKey, sliding_sync,
    },
};

/// Columns read by [`event_from_row`], from `events e` joined with the
/// client transaction IDs.
/// (The transaction columns are correlated subqueries rather than a LEFT
/// JOIN: with the join, SQLite re-prepares the cached statement on every
/// use, which was half the cost of reading an event.)
const EVENT_SELECT: &str = "SELECT e.event_id, e.room_id, e.json, e.stream_ordering, e.outlier,
        e.rejected, e.soft_failed, e.redacted_by, e.state_group_before, e.state_group_after,
        e.replaces_state,
        (SELECT t.device_id FROM txn_ids t WHERE t.event_id = e.event_id),
        (SELECT t.txn_id FROM txn_ids t WHERE t.event_id = e.event_id)
    FROM events e";

/// Timeline events: in the DAG with known state, neither rejected nor
/// soft-failed.
const IN_TIMELINE: &str = "e.outlier = 0 AND e.rejected IS NULL AND e.soft_failed = 0";

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<StoredEvent>> {
    let event_id: String = row.get(0)?;
    let room_id: String = row.get(1)?;
    let json: String = row.get(2)?;
    let rejected: Option<String> = row.get(5)?;
    let redacted_by: Option<String> = row.get(7)?;
    let replaces_state: Option<String> = row.get(10)?;
    let device: Option<String> = row.get(11)?;
    let txn_id: Option<String> = row.get(12)?;
    let meta = (
        row.get::<_, i64>(3)?,
        row.get::<_, bool>(4)?,
        row.get::<_, bool>(6)?,
        row.get::<_, Option<i64>>(8)?,
        row.get::<_, Option<i64>>(9)?,
    );
    Ok((|| {
        let event_id: OwnedEventId = parse(event_id)?;
        let room_id: OwnedRoomId = parse(room_id)?;
        let mut pdu = Pdu::from_json(event_id, Some(&room_id), Arc::from(json))
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        pdu.rejected = rejected.is_some();
        Ok(StoredEvent {
            pdu: Arc::new(pdu),
            meta: EventMeta {
                stream_ordering: meta.0,
                outlier: meta.1,
                rejected,
                soft_failed: meta.2,
                redacted_by: redacted_by.map(parse).transpose()?,
                state_group_before: meta.3,
                state_group_after: meta.4,
                replaces_state: replaces_state.map(parse).transpose()?,
                txn: device.zip(txn_id).map(|(d, t)| (OwnedDeviceId::from(d), t)),
            },
        })
    })())
}

fn collect_events(stmt: &mut rusqlite::Statement<'_>, params: impl rusqlite::Params) -> Result<Vec<StoredEvent>> {
    let rows = stmt.query_map(params, event_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

pub fn event(c: &Connection, event_id: &EventId) -> Result<Option<StoredEvent>> {
    let mut stmt = c.prepare_cached(&format!("{EVENT_SELECT} WHERE e.event_id = ?1"))?;
    Ok(collect_events(&mut stmt, [event_id.as_str()])?.pop())
}

/// [`crate::storage::Storage::event_keys`]: one index probe per ID.
pub fn event_keys(c: &Connection, ids: &[OwnedEventId]) -> Result<Vec<EventKey>> {
    let mut stmt =
        c.prepare_cached("SELECT room_id, type, state_key, rejected IS NOT NULL FROM events WHERE event_id = ?1")?;
    let mut keys = Vec::with_capacity(ids.len());
    for id in ids {
        let row = stmt
            .query_row([id.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .optional()?;
        if let Some((room_id, kind, state_key, rejected)) = row {
            keys.push(EventKey {
                event_id: id.clone(),
                room_id: parse(room_id)?,
                kind,
                state_key,
                rejected,
            });
        }
    }
    Ok(keys)
}

pub fn room(c: &Connection, room_id: &RoomId) -> Result<Option<RoomInfo>> {
    let row: Option<(String, Option<i64>, bool)> = c
        .prepare_cached("SELECT room_version, current_state_group, published FROM rooms WHERE room_id = ?1")?
        .query_row([room_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    row.map(|(version, current_state_group, published)| {
        Ok(RoomInfo {
            room_id: room_id.to_owned(),
            version: RoomVersionId::try_from(version.as_str())
                .map_err(|_| StorageError::Corrupt(format!("room version {version:?}")))?,
            current_state_group,
            published,
        })
    })
    .transpose()
}

pub fn set_room_published(tx: &Transaction<'_>, room_id: &RoomId, published: bool) -> Result<()> {
    exec(
        tx,
        "UPDATE rooms SET published = ?2 WHERE room_id = ?1",
        params![room_id.as_str(), published],
    )?;
    Ok(())
}

pub fn published_rooms(c: &Connection) -> Result<Vec<OwnedRoomId>> {
    let mut stmt = c.prepare("SELECT room_id FROM rooms WHERE published = 1 ORDER BY room_id")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|r| parse(r?)).collect()
}

fn id_depth_pairs(c: &Connection, sql: &str, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map([room_id.as_str()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    rows.map(|r| {
        let (id, depth) = r?;
        Ok((parse(id)?, depth))
    })
    .collect()
}

pub fn forward_extremities(c: &Connection, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
    id_depth_pairs(
        c,
        "SELECT f.event_id, e.depth FROM forward_extremities f
         JOIN events e ON e.event_id = f.event_id
         WHERE f.room_id = ?1 ORDER BY e.depth DESC, e.stream_ordering DESC",
        room_id,
    )
}

pub fn backward_extremities(c: &Connection, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
    id_depth_pairs(
        c,
        "SELECT event_id, depth FROM backward_extremities WHERE room_id = ?1
         ORDER BY depth DESC, event_id",
        room_id,
    )
}

/// The events stream's head: the newest live position handed out.
pub fn max_stream_ordering(c: &Connection) -> Result<StreamOrdering> {
    super::stream_head(c, "events")
}

/// The next live position (inside the write transaction). Never the
/// maximum of the events held + 1: that maximum goes back when an
/// outlier becomes backfilled history (schema_v18.sql).
fn next_stream_ordering(tx: &Transaction<'_>) -> Result<StreamOrdering> {
    super::next_position(tx, "events")
}

fn min_stream_ordering(c: &Connection) -> Result<StreamOrdering> {
    Ok(query_one(
        c,
        "SELECT COALESCE(MIN(stream_ordering), 0) FROM events",
        [],
        |r| r.get(0),
    )?)
}

pub fn persist_timeline_event(tx: &Transaction<'_>, new: &NewTimelineEvent) -> Result<Persisted> {
    let pdu = &new.pdu;
    let room_id = pdu.room_id.as_str();
    let stream = if new.backfilled {
        min_stream_ordering(tx)?.min(0) - 1
    } else {
        next_stream_ordering(tx)?
    };

    let before = state::write_state(tx, &pdu.room_id, &new.state_before)?;
    let after = match &pdu.state_key {
        Some(key) if !pdu.rejected => state::insert_group(
            tx,
            &pdu.room_id,
            Some(before),
            &[((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone())],
        )?,
        _ => before,
    };

    if let Some(version) = crate::storage::created_room_version(pdu) {
        exec(
            tx,
            "INSERT OR IGNORE INTO rooms (room_id, room_version, created_ts) VALUES (?1, ?2, ?3)",
            params![room_id, version, now_ms()],
        )?;
    }

    // An outlier that now takes its place in the timeline (at a new
    // position).
    let replaced: Option<i64> = tx
        .prepare_cached("DELETE FROM events WHERE event_id = ?1 AND outlier = 1 RETURNING stream_ordering")?
        .query_row(params![pdu.event_id.as_str()], |r| r.get(0))
        .optional()?;
    let (rejected, soft_failed) = new.status.row_flags();
    exec(
        tx,
        "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth,
             origin_server_ts, received_ts, json, outlier, rejected, soft_failed,
             state_group_before, state_group_after, replaces_state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?14, ?15, ?11, ?12, ?13)",
        params![
            stream,
            pdu.event_id.as_str(),
            room_id,
            pdu.kind.to_string(),
            pdu.state_key,
            pdu.sender.as_str(),
            i64::try_from(pdu.depth).unwrap_or(i64::MAX),
            u64::from(pdu.origin_server_ts.get()) as i64,
            now_ms(),
            &*pdu.json,
            before,
            after,
            new.replaces_state.as_ref().map(|e| e.as_str()),
            rejected,
            soft_failed,
        ],
    )?;
    let forward_extremity = insert_edges(tx, pdu, new.status == TimelineStatus::Accepted && !new.backfilled)?;
    if new.status == TimelineStatus::Accepted && !new.backfilled {
        // The room's newest live event (and bump event), for room lists.
        let bump = sliding_sync::BUMP_TYPES.contains(&pdu.kind.to_string().as_str());
        exec(
            tx,
            "UPDATE rooms SET latest_stream = ?2, bump_stream = CASE WHEN ?3 THEN ?2 ELSE bump_stream END
             WHERE room_id = ?1",
            params![room_id, stream, bump],
        )?;
    }

    let mut current_state_group = None;
    if let Some(update) = &new.current_state {
        let current = match &update.state {
            NewCurrentState::AfterEvent => after,
            NewCurrentState::Write(write) => state::write_state(tx, &pdu.room_id, write)?,
        };
        exec(
            tx,
            "UPDATE rooms SET current_state_group = ?2 WHERE room_id = ?1",
            params![room_id, current],
        )?;
        state::apply_current_state_changes(tx, &pdu.room_id, &update.changes)?;
        current_state_group = Some(current);
    }
    if let Some(txn) = &new.txn {
        exec(
            tx,
            "INSERT INTO txn_ids (user_id, device_id, scope, txn_id, event_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                txn.user_id.as_str(),
                txn.device_id.as_str(),
                txn.scope,
                txn.txn_id,
                pdu.event_id.as_str()
            ],
        )?;
    }
    if let Some(expiry) = new.expires_at {
        exec(
            tx,
            "INSERT OR REPLACE INTO event_expiry (event_id, expiry_ts) VALUES (?1, ?2)",
            params![pdu.event_id.as_str(), i64::try_from(expiry).unwrap_or(i64::MAX)],
        )?;
    }
    if new.status == TimelineStatus::Accepted
        && let Some(target) = &pdu.redacts
    {
        exec(
            tx,
            "INSERT OR IGNORE INTO redactions (redacts, event_id) VALUES (?1, ?2)",
            params![target.as_str(), pdu.event_id.as_str()],
        )?;
    }
    let earlier_redactions = tx
        .prepare_cached("SELECT event_id FROM redactions WHERE redacts = ?1 AND event_id != ?1")?
        .query_map([pdu.event_id.as_str()], |r| r.get::<_, String>(0))?
        .map(|id| parse(id?))
        .collect::<Result<Vec<OwnedEventId>>>()?;
    if let Some(outlier_at) = replaced {
        // Its notifications (an invite's) move with it: the event's own
        // below replace them, as one per user and event.
        exec(
            tx,
            "UPDATE OR REPLACE notifications SET stream_ordering = ?2 WHERE stream_ordering = ?1",
            params![outlier_at, stream],
        )?;
    }
    let pushes_queued = !new.notifications.is_empty()
        && super::push::insert_notifications(
            tx,
            crate::storage::push::place_of(pdu, stream),
            &new.notifications,
            None,
        )?;
    Ok(Persisted {
        stream_ordering: stream,
        state_group_before: before,
        state_group_after: after,
        current_state_group,
        earlier_redactions,
        forward_extremity,
        pushes_queued,
    })
}

/// Records the event's edges and moves the room's extremities: its
/// parents stop being forward extremities, it becomes one unless a held
/// event already names it as a parent, and parents not held (in the
/// timeline) become backward extremities. Whether it became a forward
/// extremity. A soft-failed, rejected or
/// backfilled event (`forward` false) moves no forward extremity.
fn insert_edges(tx: &Transaction<'_>, pdu: &Pdu, forward: bool) -> Result<bool> {
    let room_id = pdu.room_id.as_str();
    let event_id = pdu.event_id.as_str();
    {
        let mut edge =
            tx.prepare_cached("INSERT OR IGNORE INTO event_edges (prev_event_id, event_id) VALUES (?1, ?2)")?;
        let mut unfwd = tx.prepare_cached("DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2")?;
        let mut held = tx.prepare_cached("SELECT 1 FROM events WHERE event_id = ?1 AND outlier = 0")?;
        let mut backward = tx.prepare_cached(
            "INSERT OR IGNORE INTO backward_extremities (room_id, event_id, depth)
             VALUES (?1, ?2, ?3)",
        )?;
        let parent_depth = i64::try_from(pdu.depth).unwrap_or(i64::MAX) - 1;
        for prev in &pdu.prev_events {
            edge.execute(params![prev.as_str(), event_id])?;
            if forward {
                unfwd.execute(params![room_id, prev.as_str()])?;
            }
            if !held.exists([prev.as_str()])? {
                backward.execute(params![room_id, prev.as_str(), parent_depth])?;
            }
        }
    }
    exec(
        tx,
        "DELETE FROM backward_extremities WHERE room_id = ?1 AND event_id = ?2",
        params![room_id, event_id],
    )?;
    if forward
        && !tx
            .prepare_cached(
                "SELECT 1 FROM event_edges g JOIN events e ON e.event_id = g.event_id
                 WHERE g.prev_event_id = ?1 AND e.rejected IS NULL AND e.soft_failed = 0",
            )?
            .exists([event_id])?
    {
        exec(
            tx,
            "INSERT OR IGNORE INTO forward_extremities (room_id, event_id) VALUES (?1, ?2)",
            params![room_id, event_id],
        )?;
        return Ok(true);
    }
    Ok(false)
}

/// Keeps `outliers` (each with why it was rejected, if it was) but those
/// held already (kept as they were): one range of positions for them all,
/// one statement per event.
pub fn persist_outliers(tx: &Transaction<'_>, outliers: &[(Arc<Pdu>, Option<String>)]) -> Result<()> {
    let Ok(count) = i64::try_from(outliers.len()) else {
        return Err(StorageError::Database("too many outliers at once".to_owned()));
    };
    if count == 0 {
        return Ok(());
    }
    let last: i64 = query_one(
        tx,
        "UPDATE stream_positions SET position = position + ?2 WHERE stream = ?1 RETURNING position",
        params!["events", count],
        |r| r.get(0),
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth,
             origin_server_ts, received_ts, json, outlier, rejected, soft_failed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1, ?11, 0)
         ON CONFLICT (event_id) DO NOTHING",
    )?;
    let received = now_ms();
    for ((pdu, rejected), stream) in outliers.iter().zip(last - count + 1..) {
        insert.execute(params![
            stream,
            pdu.event_id.as_str(),
            pdu.room_id.as_str(),
            pdu.kind.to_string(),
            pdu.state_key,
            pdu.sender.as_str(),
            i64::try_from(pdu.depth).unwrap_or(i64::MAX),
            u64::from(pdu.origin_server_ts.get()) as i64,
            received,
            &*pdu.json,
            rejected,
        ])?;
    }
    Ok(())
}

pub fn txn_event(c: &Connection, txn: &TxnKey) -> Result<Option<OwnedEventId>> {
    let id: Option<String> = c
        .query_row(
            "SELECT event_id FROM txn_ids
             WHERE user_id = ?1 AND device_id = ?2 AND scope = ?3 AND txn_id = ?4",
            params![txn.user_id.as_str(), txn.device_id.as_str(), txn.scope, txn.txn_id],
            |r| r.get(0),
        )
        .optional()?;
    id.map(parse).transpose()
}

pub fn apply_redaction(
    tx: &Transaction<'_>,
    event_id: &EventId,
    redacted_json: &str,
    redacted_by: &EventId,
) -> Result<()> {
    exec(
        tx,
        "UPDATE events SET json = ?2, redacted_by = ?3 WHERE event_id = ?1",
        params![event_id.as_str(), redacted_json, redacted_by.as_str()],
    )?;
    Ok(())
}

pub fn next_expiry(c: &Connection) -> Result<Option<(OwnedEventId, u64)>> {
    let row: Option<(String, i64)> = c
        .query_row(
            "SELECT event_id, expiry_ts FROM event_expiry ORDER BY expiry_ts LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(id, ts)| Ok((parse(id)?, u64::try_from(ts).unwrap_or(0))))
        .transpose()
}

pub fn expire_event(tx: &Transaction<'_>, event_id: &EventId, pruned_json: Option<&str>) -> Result<bool> {
    let forgotten = exec(
        tx,
        "DELETE FROM event_expiry WHERE event_id = ?1",
        params![event_id.as_str()],
    )?;
    if forgotten == 0 {
        return Ok(false);
    }
    if let Some(json) = pruned_json {
        exec(
            tx,
            "UPDATE events SET json = ?2 WHERE event_id = ?1",
            params![event_id.as_str(), json],
        )?;
    }
    Ok(true)
}

pub fn timeline_page(
    c: &Connection,
    room_id: &RoomId,
    from: TopoKey,
    dir: Direction,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let sql = match dir {
        Direction::Backward => format!(
            "{EVENT_SELECT} WHERE e.room_id = ?1 AND {IN_TIMELINE}
                AND (e.depth, e.stream_ordering) <= (?2, ?3)
             ORDER BY e.depth DESC, e.stream_ordering DESC LIMIT ?4"
        ),
        Direction::Forward => format!(
            "{EVENT_SELECT} WHERE e.room_id = ?1 AND {IN_TIMELINE}
                AND (e.depth, e.stream_ordering) > (?2, ?3)
             ORDER BY e.depth ASC, e.stream_ordering ASC LIMIT ?4"
        ),
    };
    let mut stmt = c.prepare_cached(&sql)?;
    collect_events(
        &mut stmt,
        params![room_id.as_str(), from.depth, from.stream, limit as i64],
    )
}

pub fn event_near_timestamp(c: &Connection, room_id: &RoomId, ts: u64, dir: Direction) -> Result<Option<StoredEvent>> {
    let sql = match dir {
        Direction::Backward => format!(
            "{EVENT_SELECT} WHERE e.room_id = ?1 AND {IN_TIMELINE} AND e.origin_server_ts <= ?2
             ORDER BY e.origin_server_ts DESC, e.depth DESC, e.stream_ordering DESC LIMIT 1"
        ),
        Direction::Forward => format!(
            "{EVENT_SELECT} WHERE e.room_id = ?1 AND {IN_TIMELINE} AND e.origin_server_ts >= ?2
             ORDER BY e.origin_server_ts ASC, e.depth ASC, e.stream_ordering ASC LIMIT 1"
        ),
    };
    let ts = i64::try_from(ts).unwrap_or(i64::MAX);
    let mut stmt = c.prepare_cached(&sql)?;
    Ok(collect_events(&mut stmt, params![room_id.as_str(), ts])?.pop())
}

pub fn stream_page(
    c: &Connection,
    room_id: &RoomId,
    after: StreamOrdering,
    upto: StreamOrdering,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let mut stmt = c.prepare_cached(&format!(
        "{EVENT_SELECT} WHERE e.room_id = ?1 AND {IN_TIMELINE}
            AND e.stream_ordering > ?2 AND e.stream_ordering <= ?3
         ORDER BY e.stream_ordering DESC LIMIT ?4"
    ))?;
    collect_events(&mut stmt, params![room_id.as_str(), after, upto, limit as i64])
}

pub fn topo_key_at_stream(c: &Connection, room_id: &RoomId, stream: StreamOrdering) -> Result<Option<TopoKey>> {
    Ok(c.prepare_cached(&format!(
        "SELECT e.depth, e.stream_ordering FROM events e
         WHERE e.room_id = ?1 AND {IN_TIMELINE} AND e.stream_ordering <= ?2
         ORDER BY e.stream_ordering DESC LIMIT 1"
    ))?
    .query_row(params![room_id.as_str(), stream], |r| {
        Ok(TopoKey {
            depth: r.get(0)?,
            stream: r.get(1)?,
        })
    })
    .optional()?)
}
