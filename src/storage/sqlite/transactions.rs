//! Transactions between servers: those received (for idempotency) and the
//! queue of events to send.

use ruma::{EventId, OwnedEventId, OwnedServerName, RoomVersionId, ServerName, UserId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{accounts::parse, exec, now_ms, query_one};
use crate::storage::{RemoteInvite, Result, StorageError};

pub fn received(c: &Connection, origin: &ServerName, txn_id: &str) -> Result<Option<String>> {
    Ok(query_one(
        c,
        "SELECT response FROM received_transactions WHERE origin = ?1 AND txn_id = ?2",
        params![origin.as_str(), txn_id],
        |r| r.get(0),
    )
    .optional()?)
}

pub fn store_received(tx: &Transaction<'_>, origin: &ServerName, txn_id: &str, response: &str) -> Result<()> {
    exec(
        tx,
        "INSERT OR IGNORE INTO received_transactions (origin, txn_id, response, received_ts) VALUES (?1, ?2, ?3, ?4)",
        params![origin.as_str(), txn_id, response, now_ms()],
    )?;
    Ok(())
}

pub fn queue(tx: &Transaction<'_>, destinations: &[OwnedServerName], event_id: &EventId) -> Result<()> {
    for destination in destinations {
        exec(
            tx,
            "INSERT INTO outbound_pdus (destination, position, event_id, queued_ts)
             VALUES (?1, (SELECT COALESCE(MAX(position), 0) + 1 FROM outbound_pdus WHERE destination = ?1), ?2, ?3)",
            params![destination.as_str(), event_id.as_str(), now_ms()],
        )?;
    }
    Ok(())
}

pub fn queued(c: &Connection, destination: &ServerName, limit: usize) -> Result<Vec<(i64, OwnedEventId)>> {
    let mut stmt = c.prepare_cached(
        "SELECT position, event_id FROM outbound_pdus WHERE destination = ?1 ORDER BY position LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![destination.as_str(), limit as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    rows.map(|r| {
        let (position, id) = r?;
        Ok((position, parse(id)?))
    })
    .collect()
}

pub fn dequeue(tx: &Transaction<'_>, destination: &ServerName, up_to: i64) -> Result<()> {
    exec(
        tx,
        "DELETE FROM outbound_pdus WHERE destination = ?1 AND position <= ?2",
        params![destination.as_str(), up_to],
    )?;
    Ok(())
}

pub fn destinations(c: &Connection) -> Result<Vec<OwnedServerName>> {
    let mut stmt = c.prepare_cached("SELECT DISTINCT destination FROM outbound_pdus ORDER BY destination")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|r| parse(r?)).collect()
}

pub fn store_remote_invite(tx: &Transaction<'_>, invite: &RemoteInvite) -> Result<()> {
    let stream: i64 = query_one(
        tx,
        "SELECT stream_ordering FROM events WHERE event_id = ?1",
        params![invite.event_id.as_str()],
        |r| r.get(0),
    )
    .optional()?
    .ok_or(StorageError::NotFound)?;
    exec(
        tx,
        "INSERT OR REPLACE INTO remote_invites
             (user_id, room_id, event_id, stream_ordering, room_version, invite_state, via, membership)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            invite.user_id.as_str(),
            invite.room_id.as_str(),
            invite.event_id.as_str(),
            stream,
            invite.room_version.as_str(),
            invite.invite_state,
            invite.via.as_str(),
            invite.membership
        ],
    )?;
    Ok(())
}

pub fn remote_invites(c: &Connection, user_id: &UserId) -> Result<Vec<RemoteInvite>> {
    let mut stmt = c.prepare_cached(
        "SELECT room_id, event_id, stream_ordering, room_version, invite_state, via, membership FROM remote_invites
         WHERE user_id = ?1 ORDER BY stream_ordering",
    )?;
    let rows = stmt.query_map([user_id.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    rows.map(|r| {
        let (room, event, stream, version, state, via, membership) = r?;
        Ok(RemoteInvite {
            user_id: user_id.to_owned(),
            room_id: parse(room)?,
            event_id: parse(event)?,
            stream_ordering: stream,
            room_version: RoomVersionId::try_from(version.as_str())
                .map_err(|_| StorageError::Corrupt(format!("room version {version:?}")))?,
            invite_state: state,
            via: parse(via)?,
            membership,
        })
    })
    .collect()
}
