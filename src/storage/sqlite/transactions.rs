//! Transactions between servers: those received (for idempotency) and the
//! queue of events to send.

use ruma::{EventId, OwnedEventId, OwnedServerName, ServerName};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{accounts::parse, exec, now_ms, query_one};
use crate::storage::Result;

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
