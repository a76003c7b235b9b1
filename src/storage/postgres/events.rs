//! Rooms, events, their edges and the two orders (as `sqlite/events.rs`).
//!
//! An event's stream ordering is taken last in the transaction that stores
//! it (see `schema_v1.sql`): everything else about the event is written
//! first, by as many writers at once as there are rooms being written,
//! and only the taking of the position and the event row itself wait for
//! one another.

use std::sync::Arc;

use ruma::{EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId};
use tokio_postgres::{Row, types::ToSql};

use super::{GenericClient, big, col, exec, now_ms, parse, query, query_one, query_opt, state};
use crate::{
    events::Pdu,
    storage::{
        Direction, EventKey, EventMeta, NewCurrentState, NewTimelineEvent, Persisted, Result, RoomInfo, StorageError,
        StoredEvent, StreamOrdering, TimelineStatus, TopoKey, TxnKey,
    },
};

/// Columns read by [`event_from_row`], from `events e` joined with the
/// client transaction IDs.
const EVENT_SELECT: &str = "SELECT e.event_id, e.room_id, e.json, e.stream_ordering, e.outlier,
        e.rejected, e.soft_failed, e.redacted_by, e.state_group_before, e.state_group_after,
        e.replaces_state, t.device_id, t.txn_id
    FROM events e LEFT JOIN LATERAL (
        SELECT device_id, txn_id FROM txn_ids WHERE txn_ids.event_id = e.event_id LIMIT 1 OFFSET 0) t ON TRUE";

/// Timeline events: in the DAG with known state, neither rejected nor
/// soft-failed.
const IN_TIMELINE: &str = "NOT e.outlier AND e.rejected IS NULL AND NOT e.soft_failed";

fn event_from_row(row: &Row) -> Result<StoredEvent> {
    let event_id: OwnedEventId = parse(col::<String>(row, 0)?)?;
    let room_id: OwnedRoomId = parse(col::<String>(row, 1)?)?;
    let json: String = col(row, 2)?;
    let rejected: Option<String> = col(row, 5)?;
    let redacted_by: Option<String> = col(row, 7)?;
    let replaces_state: Option<String> = col(row, 10)?;
    let device: Option<String> = col(row, 11)?;
    let txn_id: Option<String> = col(row, 12)?;
    let mut pdu =
        Pdu::from_json(event_id, Some(&room_id), Arc::from(json)).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    pdu.rejected = rejected.is_some();
    Ok(StoredEvent {
        pdu: Arc::new(pdu),
        meta: EventMeta {
            stream_ordering: col(row, 3)?,
            outlier: col(row, 4)?,
            rejected,
            soft_failed: col(row, 6)?,
            redacted_by: redacted_by.map(parse).transpose()?,
            state_group_before: col(row, 8)?,
            state_group_after: col(row, 9)?,
            replaces_state: replaces_state.map(parse).transpose()?,
            txn: device.zip(txn_id).map(|(d, t)| (OwnedDeviceId::from(d), t)),
        },
    })
}

fn events_from_rows(rows: Vec<Row>) -> Result<Vec<StoredEvent>> {
    rows.iter().map(event_from_row).collect()
}

/// The held events among `ids`, in no particular order (one statement).
/// One index probe per ID (`LATERAL … OFFSET 0`): with `event_id =
/// ANY($1)` the planner scanned the whole table whenever it thought it
/// small — a backfilling joiner's table before its next `ANALYZE`, or any
/// room of a few thousand events for a page of 100 — which made a page's
/// lookup cost grow with the room.
pub async fn events(c: &impl GenericClient, ids: &[OwnedEventId]) -> Result<Vec<StoredEvent>> {
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    events_from_rows(query(c, EVENTS_BY_ID, &[&ids]).await?)
}

/// [`crate::storage::Storage::event_keys`] (one statement, one index probe
/// per ID as in [`events`]).
pub async fn event_keys(c: &impl GenericClient, ids: &[OwnedEventId]) -> Result<Vec<EventKey>> {
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let rows = query(
        c,
        "SELECT e.event_id, e.room_id, e.type, e.state_key, e.rejected IS NOT NULL
         FROM unnest($1::text[]) AS wanted (id),
            LATERAL (SELECT * FROM events WHERE events.event_id = wanted.id OFFSET 0) e",
        &[&ids],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(EventKey {
                event_id: parse(col::<String>(row, 0)?)?,
                room_id: parse(col::<String>(row, 1)?)?,
                kind: col(row, 2)?,
                state_key: col(row, 3)?,
                rejected: col(row, 4)?,
            })
        })
        .collect()
}

/// [`EVENT_SELECT`]'s columns for the events of the IDs in `$1`.
const EVENTS_BY_ID: &str = "SELECT e.event_id, e.room_id, e.json, e.stream_ordering, e.outlier,
        e.rejected, e.soft_failed, e.redacted_by, e.state_group_before, e.state_group_after,
        e.replaces_state, t.device_id, t.txn_id
    FROM unnest($1::text[]) AS wanted (id),
        LATERAL (SELECT * FROM events WHERE events.event_id = wanted.id OFFSET 0) e
        LEFT JOIN LATERAL (
            SELECT device_id, txn_id FROM txn_ids WHERE txn_ids.event_id = e.event_id LIMIT 1 OFFSET 0) t ON TRUE";

pub async fn room(c: &impl GenericClient, room_id: &RoomId) -> Result<Option<RoomInfo>> {
    let Some(row) = query_opt(
        c,
        "SELECT room_version, current_state_group, published FROM rooms WHERE room_id = $1",
        &[&room_id.as_str()],
    )
    .await?
    else {
        return Ok(None);
    };
    let version: String = col(&row, 0)?;
    Ok(Some(RoomInfo {
        room_id: room_id.to_owned(),
        version: RoomVersionId::try_from(version.as_str())
            .map_err(|_| StorageError::Corrupt(format!("room version {version:?}")))?,
        current_state_group: col(&row, 1)?,
        published: col(&row, 2)?,
    }))
}

pub async fn add_room(tx: &impl GenericClient, room_id: &str, version: &str) -> Result<()> {
    exec(
        tx,
        "INSERT INTO rooms (room_id, room_version, created_ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&room_id, &version, &now_ms()],
    )
    .await?;
    Ok(())
}

pub async fn set_room_published(tx: &impl GenericClient, room_id: &RoomId, published: bool) -> Result<()> {
    exec(
        tx,
        "UPDATE rooms SET published = $2 WHERE room_id = $1",
        &[&room_id.as_str(), &published],
    )
    .await?;
    Ok(())
}

pub async fn published_rooms(c: &impl GenericClient) -> Result<Vec<OwnedRoomId>> {
    query(c, "SELECT room_id FROM rooms WHERE published ORDER BY room_id", &[])
        .await?
        .iter()
        .map(|r| parse(col::<String>(r, 0)?))
        .collect()
}

async fn id_depth_pairs(c: &impl GenericClient, sql: &str, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
    query(c, sql, &[&room_id.as_str()])
        .await?
        .iter()
        .map(|r| Ok((parse(col::<String>(r, 0)?)?, col(r, 1)?)))
        .collect()
}

pub async fn forward_extremities(c: &impl GenericClient, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
    id_depth_pairs(
        c,
        "SELECT f.event_id, e.depth FROM forward_extremities f,
             LATERAL (SELECT depth, stream_ordering FROM events WHERE event_id = f.event_id OFFSET 0) e
         WHERE f.room_id = $1 ORDER BY e.depth DESC, e.stream_ordering DESC",
        room_id,
    )
    .await
}

pub async fn backward_extremities(c: &impl GenericClient, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
    id_depth_pairs(
        c,
        "SELECT event_id, depth FROM backward_extremities WHERE room_id = $1
         ORDER BY depth DESC, event_id",
        room_id,
    )
    .await
}

pub async fn children(c: &impl GenericClient, event_id: &EventId) -> Result<Vec<OwnedEventId>> {
    query(
        c,
        "SELECT g.event_id FROM event_edges g
         WHERE g.prev_event_id = $1 AND (SELECT NOT e.outlier FROM events e WHERE e.event_id = g.event_id)",
        &[&event_id.as_str()],
    )
    .await?
    .iter()
    .map(|r| parse(col::<String>(r, 0)?))
    .collect()
}

/// The newest live position whose writer has committed.
pub async fn max_stream_ordering(c: &impl GenericClient) -> Result<StreamOrdering> {
    super::stream_head(c, "events").await
}

/// The columns of an event row, shared by timeline events and outliers.
struct EventRow<'a> {
    pdu: &'a Pdu,
    outlier: bool,
    rejected: Option<&'a str>,
    soft_failed: bool,
    before: Option<i64>,
    after: Option<i64>,
    replaces_state: Option<&'a str>,
}

/// The columns every insert of an event row writes, in this order.
pub(super) const EVENT_COLUMNS: &str = "stream_ordering, event_id, room_id, type, state_key, sender, depth,
    origin_server_ts, received_ts, json, outlier, rejected, soft_failed,
    state_group_before, state_group_after, replaces_state";

/// What a live event's statement returns for the other processes
/// (`listen.rs`), from the columns of its row: `<process> events
/// <position> <room> <event> [<member>]`, delivered at the commit.
pub(super) const EVENT_NOTIFY: &str = "pg_notify('weft', concat_ws(' ', current_setting('weft.process', TRUE),
    'events', stream_ordering, room_id, event_id, CASE WHEN type = 'm.room.member' THEN state_key END))::text";

/// The columns of an event row that come from the PDU alone (`event_id`
/// to `json` of [`EVENT_COLUMNS`]), as statement parameters.
pub(super) struct PduColumns<'a> {
    event_id: &'a str,
    room_id: &'a str,
    kind: String,
    state_key: &'a Option<String>,
    sender: &'a str,
    depth: i64,
    origin_server_ts: i64,
    received_ts: i64,
    json: &'a str,
}

impl<'a> PduColumns<'a> {
    pub(super) fn of(pdu: &'a Pdu) -> Self {
        PduColumns {
            event_id: pdu.event_id.as_str(),
            room_id: pdu.room_id.as_str(),
            kind: pdu.kind.to_string(),
            state_key: &pdu.state_key,
            sender: pdu.sender.as_str(),
            depth: big(pdu.depth),
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            received_ts: now_ms(),
            json: &pdu.json,
        }
    }

    /// `event_id`, `room_id`, `type`, `state_key`, `sender`, `depth`,
    /// `origin_server_ts`, `received_ts`, `json`: `$1` to `$9`.
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.event_id,
            &self.room_id,
            &self.kind,
            self.state_key,
            &self.sender,
            &self.depth,
            &self.origin_server_ts,
            &self.received_ts,
            &self.json,
        ]
    }
}

/// [`PduColumns`] of many PDUs, a column each, for an insert that reads
/// them with `unnest`.
#[derive(Default)]
pub(super) struct PduArrays<'a> {
    pub ids: Vec<&'a str>,
    pub rooms: Vec<&'a str>,
    pub types: Vec<String>,
    pub keys: Vec<Option<&'a str>>,
    pub senders: Vec<&'a str>,
    pub depths: Vec<i64>,
    pub ts: Vec<i64>,
    pub jsons: Vec<&'a str>,
}

impl<'a> PduArrays<'a> {
    pub(super) fn of(pdus: impl IntoIterator<Item = &'a Pdu>) -> Self {
        let mut columns = PduArrays::default();
        for pdu in pdus {
            columns.ids.push(pdu.event_id.as_str());
            columns.rooms.push(pdu.room_id.as_str());
            columns.types.push(pdu.kind.to_string());
            columns.keys.push(pdu.state_key.as_deref());
            columns.senders.push(pdu.sender.as_str());
            columns.depths.push(big(pdu.depth));
            columns.ts.push(i64::from(pdu.origin_server_ts.get()));
            columns.jsons.push(&*pdu.json);
        }
        columns
    }
}

/// Writes an event's row at a position below everything live (from
/// `backfill_stream`: backfilled history's own, or a live event's
/// placeholder until [`take_position`]); the position, or `None` if the
/// event is held already. An outlier that takes its place in the timeline
/// has its row replaced, as if deleted and written anew: its position as
/// an outlier comes second (the statement's subqueries see the rows as
/// they were before it).
async fn insert_event_row(tx: &impl GenericClient, row: EventRow<'_>) -> Result<Option<(i64, Option<i64>)>> {
    let columns = PduColumns::of(row.pdu);
    let mut params = columns.params().to_vec();
    params.extend_from_slice(&[
        &row.outlier,
        &row.rejected,
        &row.soft_failed,
        &row.before,
        &row.after,
        &row.replaces_state,
    ]);
    query_opt(
        tx,
        &format!(
            "INSERT INTO events ({EVENT_COLUMNS})
             VALUES (nextval('backfill_stream'), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             {REPLACE_OUTLIER}
             RETURNING stream_ordering, {OUTLIER_REPLACED},
                 (SELECT o.stream_ordering FROM events o WHERE o.event_id = $1 AND o.outlier)"
        ),
        &params,
    )
    .await?
    .map(|r| Ok((col(&r, 0)?, col(&r, 2)?)))
    .transpose()
}

/// The state group after an event with state group `before`: a new one
/// for a state event (not rejected), else `before`.
pub(super) async fn state_after(tx: &impl GenericClient, pdu: &Pdu, before: i64) -> Result<i64> {
    match &pdu.state_key {
        Some(key) if !pdu.rejected => {
            state::insert_group(
                tx,
                &pdu.room_id,
                Some(before),
                &[((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone())],
            )
            .await
        }
        _ => Ok(before),
    }
}

/// What an event row's insert does over a row of the same event held as
/// an outlier: replaces it, as if deleted and written anew (a timeline
/// event over a timeline event, or an outlier over one, changes nothing).
pub(super) const REPLACE_OUTLIER: &str = "ON CONFLICT (event_id) DO UPDATE SET
             stream_ordering = excluded.stream_ordering, room_id = excluded.room_id, type = excluded.type,
             state_key = excluded.state_key, sender = excluded.sender, depth = excluded.depth,
             origin_server_ts = excluded.origin_server_ts, received_ts = excluded.received_ts,
             json = excluded.json, outlier = excluded.outlier, rejected = excluded.rejected,
             soft_failed = excluded.soft_failed, redacted_by = NULL,
             state_group_before = excluded.state_group_before, state_group_after = excluded.state_group_after,
             replaces_state = excluded.replaces_state
         WHERE events.outlier AND NOT excluded.outlier";

pub async fn persist_timeline_event(tx: &impl GenericClient, new: &NewTimelineEvent) -> Result<Persisted> {
    let pdu = &new.pdu;
    let room_id = pdu.room_id.as_str();

    let before = state::write_state(tx, &pdu.room_id, &new.state_before).await?;
    let after = state_after(tx, pdu, before).await?;

    if let Some(version) = crate::storage::created_room_version(pdu) {
        add_room(tx, room_id, &version).await?;
    }

    let (rejected, soft_failed) = new.status.row_flags();
    // Backfilled history has its (negative) position now; a live event
    // holds a placeholder until its position is taken, last.
    let Some((placeholder, outlier_at)) = insert_event_row(
        tx,
        EventRow {
            pdu,
            outlier: false,
            rejected,
            soft_failed,
            before: Some(before),
            after: Some(after),
            replaces_state: new.replaces_state.as_ref().map(|e| e.as_str()),
        },
    )
    .await?
    else {
        // In the timeline already (as SQLite's unique event ID says).
        return Err(StorageError::AlreadyExists);
    };
    let (earlier_redactions, forward_extremity) =
        insert_edges(tx, pdu, new.status == TimelineStatus::Accepted && !new.backfilled).await?;

    let mut current_state_group = None;
    if let Some(update) = &new.current_state {
        let current = match &update.state {
            NewCurrentState::AfterEvent => after,
            NewCurrentState::Write(write) => state::write_state(tx, &pdu.room_id, write).await?,
        };
        // A live event moves the room's current state group as it takes
        // its position (one statement less).
        if new.backfilled {
            exec(
                tx,
                "UPDATE rooms SET current_state_group = $2 WHERE room_id = $1",
                &[&room_id, &current],
            )
            .await?;
        }
        state::apply_current_state_changes(tx, &pdu.room_id, &update.changes).await?;
        current_state_group = Some(current);
    }
    if let Some(txn) = &new.txn {
        exec(
            tx,
            "INSERT INTO txn_ids (user_id, device_id, scope, txn_id, event_id) VALUES ($1, $2, $3, $4, $5)",
            &[
                &txn.user_id.as_str(),
                &txn.device_id.as_str(),
                &txn.scope,
                &txn.txn_id,
                &pdu.event_id.as_str(),
            ],
        )
        .await?;
    }
    if let Some(expiry) = new.expires_at {
        exec(
            tx,
            "INSERT INTO event_expiry (event_id, expiry_ts) VALUES ($1, $2)
             ON CONFLICT (event_id) DO UPDATE SET expiry_ts = excluded.expiry_ts",
            &[&pdu.event_id.as_str(), &big(expiry)],
        )
        .await?;
    }
    if new.status == TimelineStatus::Accepted
        && let Some(target) = &pdu.redacts
    {
        exec(
            tx,
            "INSERT INTO redactions (redacts, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&target.as_str(), &pdu.event_id.as_str()],
        )
        .await?;
    }
    let stream = if new.backfilled {
        placeholder
    } else {
        take_position(tx, placeholder, current_state_group).await?
    };
    if let Some(outlier_at) = outlier_at {
        // Its notifications (an invite's) move with it: the event's own
        // below replace them, as one per user and event.
        exec(
            tx,
            "UPDATE notifications SET stream_ordering = $2 WHERE stream_ordering = $1",
            &[&outlier_at, &stream],
        )
        .await?;
    }
    let pushes_queued = super::push::insert_notifications(
        tx,
        crate::storage::push::place_of(pdu, stream),
        &new.notifications,
        None,
    )
    .await?;
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

/// The statement parameters [`edge_ctes`] reads: the room, the event, its
/// `prev_events` (`text[]`), their depth, its `auth_events` (`text[]`),
/// and whether it moves the forward extremities (accepted, live).
pub(super) struct EdgeParams {
    pub room: &'static str,
    pub event: &'static str,
    pub prevs: &'static str,
    pub parent_depth: &'static str,
    pub auth: &'static str,
    pub forward: &'static str,
}

/// The parts of a statement that record an event's edges and move the
/// room's extremities (as `sqlite/events.rs` `insert_edges`), each done
/// only if `only_if` holds: the event's parents stop being forward
/// extremities, those not held become backward ones, the event stops
/// being one, and becomes a forward extremity (the part `forward` returns
/// a row then) unless a held event names it as a parent. The parts touch
/// different rows, and each reads what was there before the statement,
/// as the steps in turn would: "held" questions are about other events.
pub(super) fn edge_ctes(p: EdgeParams, only_if: &str) -> String {
    let EdgeParams {
        room,
        event,
        prevs,
        parent_depth,
        auth,
        forward,
    } = p;
    format!(
        "edges AS (
             INSERT INTO event_edges (event_id, prev_event_id, room_id)
             SELECT {event}, p, {room} FROM unnest({prevs}::text[]) AS p WHERE {only_if}
             ON CONFLICT DO NOTHING
         ), parents_not_forward AS (
             DELETE FROM forward_extremities
             WHERE {forward} AND room_id = {room} AND event_id = ANY({prevs}) AND {only_if}
         ), parents_missing AS (
             INSERT INTO backward_extremities (room_id, event_id, depth)
             SELECT {room}, p, {parent_depth} FROM unnest({prevs}::text[]) AS p
             WHERE {only_if} AND (SELECT NOT e.outlier FROM events e WHERE e.event_id = p) IS NOT TRUE
             ON CONFLICT DO NOTHING
         ), auth AS (
             INSERT INTO event_auth (event_id, auth_event_id)
             SELECT {event}, a FROM unnest({auth}::text[]) AS a WHERE {only_if}
             ON CONFLICT DO NOTHING
         ), held_now AS (
             DELETE FROM backward_extremities WHERE room_id = {room} AND event_id = {event} AND {only_if}
         ), forward AS (
             INSERT INTO forward_extremities (room_id, event_id)
             SELECT {room}, {event} WHERE {forward} AND {only_if} AND NOT EXISTS (
                 SELECT 1 FROM event_edges g WHERE g.prev_event_id = {event}
                     AND (SELECT e.rejected IS NULL AND NOT e.soft_failed FROM events e WHERE e.event_id = g.event_id))
             ON CONFLICT DO NOTHING
             RETURNING 1
         )"
    )
}

/// Records the event's edges and moves the room's extremities (as
/// `sqlite/events.rs` `insert_edges`): "held" questions are about other
/// events. Returns the redactions of the event that arrived before it,
/// and whether it became a forward extremity.
async fn insert_edges(tx: &impl GenericClient, pdu: &Pdu, forward: bool) -> Result<(Vec<OwnedEventId>, bool)> {
    let prevs: Vec<&str> = pdu.prev_events.iter().map(|p| p.as_str()).collect();
    let auth: Vec<&str> = pdu.auth_events.iter().map(|a| a.as_str()).collect();
    // One statement (one round trip).
    let ctes = edge_ctes(
        EdgeParams {
            room: "$1",
            event: "$2",
            prevs: "$3",
            parent_depth: "$4",
            auth: "$5",
            forward: "$6",
        },
        "TRUE",
    );
    let row = query_one(
        tx,
        &format!(
            "WITH {ctes}
             SELECT ARRAY(SELECT event_id FROM redactions WHERE redacts = $2 AND event_id != $2),
                 EXISTS (SELECT 1 FROM forward)"
        ),
        &[
            &pdu.room_id.as_str(),
            &pdu.event_id.as_str(),
            &prevs,
            &(big(pdu.depth) - 1),
            &auth,
            &forward,
        ],
    )
    .await?;
    let earlier = col::<Vec<String>>(&row, 0)?
        .into_iter()
        .map(parse)
        .collect::<Result<_>>()?;
    Ok((earlier, col(&row, 1)?))
}

/// Outliers, in three statements whatever their number: the rows (those
/// held already are left as they are), their auth edges, and their
/// positions in the events stream, in the order given (last: see
/// [`take_position`]). (Not in one statement that takes the positions and
/// inserts at them: the insert waits on a row of the same event another
/// transaction inserted and has not committed, and waiting while it holds
/// the counter deadlocks with a timeline write, which inserts first and
/// takes the counter last. The placeholder insert settles that before.)
pub async fn persist_outliers(tx: &impl GenericClient, outliers: &[(Arc<Pdu>, Option<String>)]) -> Result<()> {
    if outliers.is_empty() {
        return Ok(());
    }
    let columns = PduArrays::of(outliers.iter().map(|(pdu, _)| &**pdu));
    let rejected: Vec<Option<&str>> = outliers.iter().map(|(_, reason)| reason.as_deref()).collect();
    let (mut authed, mut auths) = (Vec::new(), Vec::new());
    for (pdu, _) in outliers {
        for auth in &pdu.auth_events {
            authed.push(pdu.event_id.as_str());
            auths.push(auth.as_str());
        }
    }
    // Placeholder positions (as `insert_event_row` takes them); an event
    // held already, or twice in `outliers`, is written once.
    let written = query(
        tx,
        &format!(
            "INSERT INTO events ({EVENT_COLUMNS})
             SELECT nextval('backfill_stream'), x.id, x.room, x.type, x.key, x.sender, x.depth, x.ts, $10, x.json,
                    TRUE, x.rejected, FALSE, NULL, NULL, NULL
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                         $8::text[], $9::text[]) WITH ORDINALITY
                 AS x(id, room, type, key, sender, depth, ts, json, rejected, n)
             ORDER BY x.n
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id, stream_ordering"
        ),
        &[
            &columns.ids,
            &columns.rooms,
            &columns.types,
            &columns.keys,
            &columns.senders,
            &columns.depths,
            &columns.ts,
            &columns.jsons,
            &rejected,
            &now_ms(),
        ],
    )
    .await?;
    if written.is_empty() {
        return Ok(());
    }
    let mut placeholders = std::collections::HashMap::with_capacity(written.len());
    for row in &written {
        placeholders.insert(col::<String>(row, 0)?, col::<i64>(row, 1)?);
    }
    exec(
        tx,
        "INSERT INTO event_auth (event_id, auth_event_id)
         SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
        &[&authed, &auths],
    )
    .await?;
    // The positions, in the order given, in one step of the counter.
    let mut seen = std::collections::HashSet::with_capacity(placeholders.len());
    let ordered: Vec<i64> = columns
        .ids
        .iter()
        .filter_map(|id| placeholders.get(*id).copied())
        .filter(|p| seen.insert(*p))
        .collect();
    exec(
        tx,
        &format!(
            "WITH next AS (
                 UPDATE stream_positions SET position = position + cardinality($1::bigint[]) WHERE stream = 'events'
                 RETURNING position
             ), ev AS (
                 UPDATE events SET stream_ordering = (SELECT position FROM next) - cardinality($1::bigint[]) + p.n
                 FROM unnest($1::bigint[]) WITH ORDINALITY AS p(placeholder, n)
                 WHERE stream_ordering = p.placeholder
                 RETURNING {EVENT_NOTIFY} AS notify
             )
             SELECT count(*) FROM ev"
        ),
        &[&ordered],
    )
    .await?;
    Ok(())
}

/// Gives a live event, written with a placeholder, its place in the
/// events stream (the counter row of `stream_positions`, as
/// [`super::next_position_of`] takes it, and the event's row in one
/// statement). Last in its transaction: the counter row stays locked until
/// the commit, so positions become visible in order. `group`: the room's
/// new current state group, set in the same statement, with the room's
/// newest live event and bump event (`room_activity`) when the event is in
/// the timeline. Other processes hear of the event at the commit (`NOTIFY
/// weft`, see `listen.rs`).
async fn take_position(tx: &impl GenericClient, placeholder: i64, group: Option<i64>) -> Result<i64> {
    col(
        &query_one(
            tx,
            &format!(
                "WITH next AS (
                     UPDATE stream_positions SET position = position + 1 WHERE stream = 'events'
                     RETURNING position
                 ), ev AS (
                     UPDATE events SET stream_ordering = (SELECT position FROM next)
                     WHERE stream_ordering = $1
                     RETURNING stream_ordering, room_id, type, {ROW_IN_TIMELINE} AS live, {EVENT_NOTIFY} AS notify
                 ), room AS (
                     {room_stamps}, current_state_group = COALESCE($2::bigint, r.current_state_group)
                     FROM ev WHERE r.room_id = ev.room_id AND ($2::bigint IS NOT NULL OR ev.live)
                 )
                 SELECT stream_ordering, notify FROM ev",
                room_stamps = room_stamps(),
            ),
            &[&placeholder, &group],
        )
        .await?,
        0,
    )
}

/// Whether an event row (`RETURNING` it) is in the timeline: neither an
/// outlier, rejected nor soft-failed.
pub(super) const ROW_IN_TIMELINE: &str = "(NOT outlier AND rejected IS NULL AND NOT soft_failed)";

/// The start of an `UPDATE rooms r` that moves the room's newest live event
/// and bump event to `ev`'s (an event row with `stream_ordering`, `type`
/// and `live`) when `ev.live`; the caller adds `FROM ev WHERE …`.
pub(super) fn room_stamps() -> String {
    format!(
        "UPDATE rooms r SET
             latest_stream = CASE WHEN ev.live THEN ev.stream_ordering ELSE r.latest_stream END,
             bump_stream = CASE WHEN ev.live AND ev.type IN ({}) THEN ev.stream_ordering ELSE r.bump_stream END",
        crate::storage::sliding_sync::bump_types_sql()
    )
}

pub async fn txn_event(c: &impl GenericClient, txn: &TxnKey) -> Result<Option<OwnedEventId>> {
    query_opt(
        c,
        "SELECT event_id FROM txn_ids WHERE user_id = $1 AND device_id = $2 AND scope = $3 AND txn_id = $4",
        &[&txn.user_id.as_str(), &txn.device_id.as_str(), &txn.scope, &txn.txn_id],
    )
    .await?
    .map(|r| parse(col::<String>(&r, 0)?))
    .transpose()
}

/// What an insert of backfilled events ([`REPLACE_OUTLIER`]) returns: an
/// outlier it put in the timeline (an update: `xmax` is set) is dropped
/// from the other processes' event caches (`listen.rs`), as a rewrite is.
pub(super) const OUTLIER_REPLACED: &str = "CASE WHEN xmax <> 0 THEN
    pg_notify('weft', concat_ws(' ', current_setting('weft.process', TRUE), 'event', event_id)) END";

/// What a statement that rewrites a stored event ends with: the other
/// processes drop it from their event caches (`listen.rs`).
const CHANGED: &str =
    "RETURNING pg_notify('weft', concat_ws(' ', current_setting('weft.process', TRUE), 'event', event_id))::text";

pub async fn apply_redaction(
    tx: &impl GenericClient,
    event_id: &EventId,
    redacted_json: &str,
    redacted_by: &EventId,
) -> Result<()> {
    exec(
        tx,
        &format!("UPDATE events SET json = $2, redacted_by = $3 WHERE event_id = $1 {CHANGED}"),
        &[&event_id.as_str(), &redacted_json, &redacted_by.as_str()],
    )
    .await?;
    Ok(())
}

pub async fn next_expiry(c: &impl GenericClient) -> Result<Option<(OwnedEventId, u64)>> {
    query_opt(
        c,
        "SELECT event_id, expiry_ts FROM event_expiry ORDER BY expiry_ts LIMIT 1",
        &[],
    )
    .await?
    .map(|r| {
        Ok((
            parse(col::<String>(&r, 0)?)?,
            u64::try_from(col::<i64>(&r, 1)?).unwrap_or(0),
        ))
    })
    .transpose()
}

/// The expiry row goes first: of several processes expiring the event at
/// once, the one whose delete found it prunes it.
pub async fn expire_event(tx: &impl GenericClient, event_id: &EventId, pruned_json: Option<&str>) -> Result<bool> {
    let forgotten = exec(
        tx,
        "DELETE FROM event_expiry WHERE event_id = $1",
        &[&event_id.as_str()],
    )
    .await?;
    if forgotten == 0 {
        return Ok(false);
    }
    if let Some(json) = pruned_json {
        exec(
            tx,
            &format!("UPDATE events SET json = $2 WHERE event_id = $1 {CHANGED}"),
            &[&event_id.as_str(), &json],
        )
        .await?;
    }
    Ok(true)
}

pub async fn timeline_page(
    c: &impl GenericClient,
    room_id: &RoomId,
    from: TopoKey,
    dir: Direction,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let sql = match dir {
        Direction::Backward => format!(
            "{EVENT_SELECT} WHERE e.room_id = $1 AND {IN_TIMELINE}
                AND (e.depth, e.stream_ordering) <= ($2, $3)
             ORDER BY e.depth DESC, e.stream_ordering DESC LIMIT $4"
        ),
        Direction::Forward => format!(
            "{EVENT_SELECT} WHERE e.room_id = $1 AND {IN_TIMELINE}
                AND (e.depth, e.stream_ordering) > ($2, $3)
             ORDER BY e.depth ASC, e.stream_ordering ASC LIMIT $4"
        ),
    };
    events_from_rows(
        query(
            c,
            &sql,
            &[&room_id.as_str(), &from.depth, &from.stream, &(limit as i64)],
        )
        .await?,
    )
}

pub async fn event_near_timestamp(
    c: &impl GenericClient,
    room_id: &RoomId,
    ts: u64,
    dir: Direction,
) -> Result<Option<StoredEvent>> {
    let sql = match dir {
        Direction::Backward => format!(
            "{EVENT_SELECT} WHERE e.room_id = $1 AND {IN_TIMELINE} AND e.origin_server_ts <= $2
             ORDER BY e.origin_server_ts DESC, e.depth DESC, e.stream_ordering DESC LIMIT 1"
        ),
        Direction::Forward => format!(
            "{EVENT_SELECT} WHERE e.room_id = $1 AND {IN_TIMELINE} AND e.origin_server_ts >= $2
             ORDER BY e.origin_server_ts ASC, e.depth ASC, e.stream_ordering ASC LIMIT 1"
        ),
    };
    let ts = i64::try_from(ts).unwrap_or(i64::MAX);
    Ok(events_from_rows(query(c, &sql, &[&room_id.as_str(), &ts]).await?)?.pop())
}

pub async fn stream_page(
    c: &impl GenericClient,
    room_id: &RoomId,
    after: StreamOrdering,
    upto: StreamOrdering,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let sql = format!(
        "{EVENT_SELECT} WHERE e.room_id = $1 AND {IN_TIMELINE}
            AND e.stream_ordering > $2 AND e.stream_ordering <= $3
         ORDER BY e.stream_ordering DESC LIMIT $4"
    );
    events_from_rows(query(c, &sql, &[&room_id.as_str(), &after, &upto, &(limit as i64)]).await?)
}

pub async fn topo_key_at_stream(
    c: &impl GenericClient,
    room_id: &RoomId,
    stream: StreamOrdering,
) -> Result<Option<TopoKey>> {
    let sql = format!(
        "SELECT e.depth, e.stream_ordering FROM events e
         WHERE e.room_id = $1 AND {IN_TIMELINE} AND e.stream_ordering <= $2
         ORDER BY e.stream_ordering DESC LIMIT 1"
    );
    query_opt(c, &sql, &[&room_id.as_str(), &stream])
        .await?
        .map(|r| {
            Ok(TopoKey {
                depth: col(&r, 0)?,
                stream: col(&r, 1)?,
            })
        })
        .transpose()
}
