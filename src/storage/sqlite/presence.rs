//! Presence, local users' and other servers' (`schema_v10.sql`,
//! `schema_v20.sql`): a change a client sees takes its position from the
//! `'presence'` row of `stream_positions` inside the write.

use ruma::{OwnedUserId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{exec, next_position, stream_head};
use crate::storage::{PresenceChange, PresenceRecord, PresenceWrite, Result, StorageError, now_ms, parse};

const COLUMNS: &str = "user_id, state, status_msg, last_active_ts, currently_active, updated_ts, position";

/// The user's row at a new position, unchanged otherwise.
pub fn restamp(tx: &Transaction<'_>, user_id: &UserId) -> Result<Option<PresenceRecord>> {
    let held = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM presence WHERE user_id = ?1"))?
        .query_row([user_id.as_str()], columns)
        .optional()?;
    let Some(row) = held else {
        return Ok(None);
    };
    let mut r = record(row)?;
    r.position = next_position(tx, "presence")?;
    exec(
        tx,
        "UPDATE presence SET position = ?2 WHERE user_id = ?1",
        params![user_id.as_str(), r.position],
    )?;
    Ok(Some(r))
}

/// The change applied to the user's row (the writer is alone: nothing else
/// changes it meanwhile), then the position when a client would see it.
pub fn change(tx: &Transaction<'_>, user_id: &UserId, change: &PresenceChange) -> Result<PresenceWrite> {
    let held = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM presence WHERE user_id = ?1"))?
        .query_row([user_id.as_str()], columns)
        .optional()?;
    let old = match held {
        Some(row) => record(row)?,
        None => PresenceRecord::unknown(user_id, now_ms()),
    };
    let mut new = old.clone();
    let touched = change(&mut new);
    let visible = new.visible() != old.visible();
    if !visible && !touched {
        return Ok(PresenceWrite::Unchanged(old));
    }
    new.position = match visible {
        true => next_position(tx, "presence")?,
        false => old.position,
    };
    exec(
        tx,
        &format!(
            "INSERT INTO presence ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (user_id) DO UPDATE SET
                 state = excluded.state, status_msg = excluded.status_msg,
                 last_active_ts = excluded.last_active_ts,
                 currently_active = excluded.currently_active,
                 updated_ts = excluded.updated_ts, position = excluded.position"
        ),
        params![
            new.user_id.as_str(),
            new.state,
            new.status_msg,
            new.last_active_ts,
            new.currently_active,
            new.updated_ts,
            new.position,
        ],
    )?;
    Ok(match visible {
        true => PresenceWrite::Changed(new),
        false => PresenceWrite::Touched(new),
    })
}

pub fn changes(c: &Connection, after: Option<i64>, up_to: i64) -> Result<Vec<PresenceRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM presence WHERE position > ?1 AND position <= ?2 ORDER BY position"
    ))?;
    let rows = stmt.query_map(params![after.unwrap_or(i64::MIN), up_to], columns)?;
    rows.map(|row| record(row?)).collect()
}

pub fn of(c: &Connection, users: &[OwnedUserId]) -> Result<Vec<PresenceRecord>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {COLUMNS} FROM presence WHERE user_id = ?1"))?;
    let mut records = Vec::new();
    for user in users {
        if let Some(row) = stmt.query_row([user.as_str()], columns).optional()? {
            records.push(record(row)?);
        }
    }
    Ok(records)
}

pub fn quiet(c: &Connection, idle_before: i64, offline_before: i64) -> Result<Vec<OwnedUserId>> {
    let mut stmt = c.prepare_cached(
        "SELECT user_id FROM presence WHERE state <> 'offline'
             AND updated_ts < ?2 AND (state = 'online' OR updated_ts < ?1)",
    )?;
    let rows = stmt.query_map([offline_before, idle_before], |r| r.get::<_, String>(0))?;
    rows.map(|user| parse(user?)).collect()
}

pub fn head(c: &Connection) -> Result<i64> {
    stream_head(c, "presence")
}

type Columns = (String, String, Option<String>, i64, bool, i64, i64);

fn columns(r: &Row<'_>) -> rusqlite::Result<Columns> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn record(
    (user_id, state, status_msg, last_active_ts, currently_active, updated_ts, position): Columns,
) -> Result<PresenceRecord> {
    Ok(PresenceRecord {
        user_id: OwnedUserId::try_from(user_id).map_err(|e| StorageError::Corrupt(format!("presence user ID: {e}")))?,
        state,
        status_msg,
        last_active_ts,
        currently_active,
        updated_ts,
        position,
    })
}
