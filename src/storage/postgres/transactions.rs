//! Transactions between servers: those received (for idempotency) and the
//! queue of events to send.

use ruma::{EventId, OwnedEventId, OwnedServerName, RoomVersionId, ServerName, UserId};

use super::{GenericClient, col, duties::NOW_MS, exec, now_ms, parse, query, query_opt};
use crate::{
    cluster::{FEDERATION_DUTY, federation_duty},
    storage::{RemoteInvite, Result, StorageError},
};

/// Advisory lock class of a destination's queue (the key is the hash of
/// its name); "wf" 2.
const QUEUE_LOCK: i32 = 0x7766_0002;

pub async fn received(c: &impl GenericClient, origin: &ServerName, txn_id: &str) -> Result<Option<String>> {
    query_opt(
        c,
        "SELECT response FROM received_transactions WHERE origin = $1 AND txn_id = $2",
        &[&origin.as_str(), &txn_id],
    )
    .await?
    .map(|r| col(&r, 0))
    .transpose()
}

pub async fn store_received(tx: &impl GenericClient, origin: &ServerName, txn_id: &str, response: &str) -> Result<()> {
    exec(
        tx,
        "INSERT INTO received_transactions (origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
        &[&origin.as_str(), &txn_id, &response, &now_ms()],
    )
    .await?;
    Ok(())
}

/// Queues `event_id` for each destination. Positions come from the
/// `outbound_pdu_positions` sequence. The sender reads a destination's
/// queue and then deletes up to the last position it sent, so a lower
/// position must never commit after a higher one is visible: writers to a
/// destination hold its advisory lock (taken before the positions, in one
/// order) until they commit.
pub async fn queue(tx: &impl GenericClient, destinations: &[OwnedServerName], event_id: &EventId) -> Result<()> {
    if destinations.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = destinations.iter().map(|d| d.as_str()).collect();
    exec(
        tx,
        "SELECT pg_advisory_xact_lock($1, k)
         FROM (SELECT DISTINCT hashtext(d) AS k FROM unnest($2::text[]) AS d) AS keys ORDER BY k",
        &[&QUEUE_LOCK, &names],
    )
    .await?;
    exec(
        tx,
        "INSERT INTO outbound_pdus (destination, position, event_id, queued_ts)
         SELECT d, nextval('outbound_pdu_positions'), $2, $3 FROM unnest($1::text[]) AS d",
        &[&names, &event_id.as_str(), &now_ms()],
    )
    .await?;
    // The process sending to a destination, if another, hears of it at the
    // commit.
    let duties: Vec<String> = destinations.iter().map(|d| federation_duty(d)).collect();
    super::duties::notify_holders(tx, &duties).await?;
    Ok(())
}

pub async fn queued(
    c: &impl GenericClient,
    destination: &ServerName,
    limit: usize,
) -> Result<Vec<(i64, OwnedEventId)>> {
    let rows = query(
        c,
        "SELECT position, event_id FROM outbound_pdus WHERE destination = $1 ORDER BY position LIMIT $2",
        &[&destination.as_str(), &(limit as i64)],
    )
    .await?;
    rows.iter().map(|r| Ok((col(r, 0)?, parse(col(r, 1)?)?))).collect()
}

pub async fn dequeue(tx: &impl GenericClient, destination: &ServerName, up_to: i64) -> Result<()> {
    exec(
        tx,
        "DELETE FROM outbound_pdus WHERE destination = $1 AND position <= $2",
        &[&destination.as_str(), &up_to],
    )
    .await?;
    Ok(())
}

/// Destinations with events queued that no live process sends to.
pub async fn destinations(c: &impl GenericClient) -> Result<Vec<OwnedServerName>> {
    let sql = format!(
        "SELECT DISTINCT destination FROM outbound_pdus o
         WHERE NOT EXISTS (SELECT 1 FROM duties WHERE duty = $1 || o.destination AND expires_ms >= {NOW_MS})
         ORDER BY destination"
    );
    let rows = query(c, &sql, &[&FEDERATION_DUTY]).await?;
    rows.iter().map(|r| parse(col(r, 0)?)).collect()
}

/// Stores (or replaces) a user's invite to a room held elsewhere, at the
/// stream ordering of the invite event, which must be stored already.
pub async fn store_remote_invite(tx: &impl GenericClient, invite: &RemoteInvite) -> Result<()> {
    let row = query_opt(
        tx,
        "SELECT stream_ordering FROM events WHERE event_id = $1",
        &[&invite.event_id.as_str()],
    )
    .await?
    .ok_or(StorageError::NotFound)?;
    let stream: i64 = col(&row, 0)?;
    exec(
        tx,
        "INSERT INTO remote_invites
             (user_id, room_id, event_id, stream_ordering, room_version, invite_state, via, membership)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (user_id, room_id) DO UPDATE SET
             event_id = excluded.event_id, stream_ordering = excluded.stream_ordering,
             room_version = excluded.room_version, invite_state = excluded.invite_state,
             via = excluded.via, membership = excluded.membership",
        &[
            &invite.user_id.as_str(),
            &invite.room_id.as_str(),
            &invite.event_id.as_str(),
            &stream,
            &invite.room_version.as_str(),
            &invite.invite_state,
            &invite.via.as_str(),
            &invite.membership,
        ],
    )
    .await?;
    Ok(())
}

pub async fn remote_invites(c: &impl GenericClient, user_id: &UserId) -> Result<Vec<RemoteInvite>> {
    let rows = query(
        c,
        "SELECT room_id, event_id, stream_ordering, room_version, invite_state, via, membership FROM remote_invites
         WHERE user_id = $1 ORDER BY stream_ordering",
        &[&user_id.as_str()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let version: String = col(r, 3)?;
            Ok(RemoteInvite {
                user_id: user_id.to_owned(),
                room_id: parse(col(r, 0)?)?,
                event_id: parse(col(r, 1)?)?,
                stream_ordering: col(r, 2)?,
                room_version: RoomVersionId::try_from(version.as_str())
                    .map_err(|_| StorageError::Corrupt(format!("room version {version:?}")))?,
                invite_state: col(r, 4)?,
                via: parse(col(r, 5)?)?,
                membership: col(r, 6)?,
            })
        })
        .collect()
}
