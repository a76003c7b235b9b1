//! The live event that changes no state — a message, a reaction, a
//! redaction, a soft-failed or rejected event — written by one statement,
//! outside any explicit transaction: the event row at its position, its
//! edges, the room's extremities, current state group and newest live
//! event (`room_activity`), the client's
//! transaction ID, its expiry and the redaction it makes. A statement is
//! atomic on its own, so this is `events::persist_timeline_event` less the
//! `BEGIN`, `COMMIT` and two round trips between them — most of what a
//! busy room writes (a statement costs this server more than its work).
//!
//! The position is taken by the statement's first part and kept (the
//! `stream_positions` row locked) only while the statement runs on the
//! server, with no round trip to the client in between: positions still
//! commit in order, as `schema_v1.sql` says. A run of such events (a
//! `/send` transaction's messages) is written by their statements in one
//! transaction, sent without waiting for each answer
//! (`rooms.rs`, `persist_timeline_events`): the row is locked for the two
//! round trips of the run.
//!
//! Everything the statement reads besides its own row is about other
//! events (parents, children, earlier redactions), as the steps of the
//! transaction read them.

use super::{GenericClient, big, col, events, parse, query_opt};
use crate::storage::{NewCurrentState, NewTimelineEvent, Persisted, Result, StateWrite, StorageError, TimelineStatus};

/// The state group before (and after) `new` when one statement can write
/// it, with the room's new current state group (if it moves).
pub fn fits(new: &NewTimelineEvent) -> Option<(i64, Option<i64>)> {
    let StateWrite::Existing(group) = new.state_before else {
        return None;
    };
    let changes_state = new.pdu.state_key.is_some() && !new.pdu.rejected;
    if new.backfilled || changes_state {
        return None;
    }
    let current = match &new.current_state {
        None => None,
        Some(update) if matches!(update.state, NewCurrentState::AfterEvent) && update.changes.is_empty() => Some(group),
        Some(_) => return None,
    };
    Some((group, current))
}

/// Writes `new` (which [`fits`]): `AlreadyExists` if it is in the
/// timeline already (or its client transaction ID is taken).
pub async fn persist(
    c: &impl GenericClient,
    new: &NewTimelineEvent,
    group: i64,
    current: Option<i64>,
) -> Result<Persisted> {
    let pdu = &new.pdu;
    let (rejected, soft_failed) = new.status.row_flags();
    let accepted = new.status == TimelineStatus::Accepted;
    let prevs: Vec<&str> = pdu.prev_events.iter().map(|p| p.as_str()).collect();
    let auth: Vec<&str> = pdu.auth_events.iter().map(|a| a.as_str()).collect();
    let txn = new.txn.as_ref();
    let redacts = pdu.redacts.as_ref().filter(|_| accepted).map(|r| r.as_str());
    let expiry = new.expires_at.map(big);
    let replaces_state = new.replaces_state.as_ref().map(|e| e.as_str());
    let parent_depth = big(pdu.depth) - 1;
    let forward = accepted && !new.backfilled;
    let txn_columns = [
        txn.map(|t| t.user_id.as_str()),
        txn.map(|t| t.device_id.as_str()),
        txn.map(|t| t.scope.as_str()),
        txn.map(|t| t.txn_id.as_str()),
    ];
    let columns = events::PduColumns::of(pdu);
    let mut params = columns.params().to_vec();
    params.extend_from_slice(&[
        &rejected,
        &soft_failed,
        &group,
        &replaces_state,
        &prevs,
        &parent_depth,
        &auth,
        &forward,
        &current,
        &txn_columns[0],
        &txn_columns[1],
        &txn_columns[2],
        &txn_columns[3],
        &expiry,
        &redacts,
    ]);
    let row = query_opt(
        c,
        &format!(
            "WITH next AS (
                 UPDATE stream_positions SET position = position + 1 WHERE stream = 'events'
                     AND NOT EXISTS (SELECT 1 FROM events WHERE event_id = $1 AND NOT outlier)
                 RETURNING position
             ), ev AS (
                 INSERT INTO events ({columns})
                 SELECT position, $1, $2, $3, $4, $5, $6, $7, $8, $9, FALSE, $10, $11, $12, $12, $13 FROM next
                 {replace}
                 RETURNING stream_ordering, event_id, room_id, type, state_key, {in_timeline} AS live
             ), room AS (
                 {room_stamps}, current_state_group = COALESCE($18::bigint, r.current_state_group)
                 FROM ev WHERE r.room_id = ev.room_id AND ($18::bigint IS NOT NULL OR ev.live)
             ), {edges}, txn AS (
                 INSERT INTO txn_ids (user_id, device_id, scope, txn_id, event_id)
                 SELECT $19::text, $20::text, $21::text, $22::text, $1 FROM ev WHERE $19::text IS NOT NULL
             ), expiry AS (
                 INSERT INTO event_expiry (event_id, expiry_ts) SELECT $1, $23::bigint FROM ev WHERE $23::bigint IS NOT NULL
                 ON CONFLICT (event_id) DO UPDATE SET expiry_ts = excluded.expiry_ts
             ), redaction AS (
                 INSERT INTO redactions (redacts, event_id) SELECT $24::text, $1 FROM ev WHERE $24::text IS NOT NULL
                 ON CONFLICT DO NOTHING
             ), moved AS (
                 -- An outlier's notifications (an invite's) move with it
                 -- (the subquery sees its row as it was).
                 UPDATE notifications SET stream_ordering = (SELECT stream_ordering FROM ev)
                 WHERE stream_ordering = (SELECT o.stream_ordering FROM events o WHERE o.event_id = $1 AND o.outlier)
             )
             SELECT ev.stream_ordering, {notify},
                 ARRAY(SELECT event_id FROM redactions WHERE redacts = $1 AND event_id <> $1),
                 EXISTS (SELECT 1 FROM forward)
             FROM ev",
            columns = events::EVENT_COLUMNS,
            in_timeline = events::ROW_IN_TIMELINE,
            room_stamps = events::room_stamps(),
            edges = events::edge_ctes(
                events::EdgeParams {
                    room: "$2",
                    event: "$1",
                    prevs: "$14",
                    parent_depth: "$15",
                    auth: "$16",
                    forward: "$17",
                },
                "EXISTS (SELECT 1 FROM ev)",
            ),
            replace = events::REPLACE_OUTLIER,
            notify = events::EVENT_NOTIFY,
        ),
        &params,
    )
    .await?;
    // Held in the timeline already (as SQLite's unique event ID says).
    let row = row.ok_or(StorageError::AlreadyExists)?;
    Ok(Persisted {
        stream_ordering: col(&row, 0)?,
        state_group_before: group,
        state_group_after: group,
        current_state_group: current,
        earlier_redactions: col::<Vec<String>>(&row, 2)?
            .into_iter()
            .map(parse)
            .collect::<Result<_>>()?,
        forward_extremity: col(&row, 3)?,
        // (Its notifications are the caller's next statement.)
        pushes_queued: false,
    })
}
