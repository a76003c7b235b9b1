//! Presence, local users' and other servers' (`schema_v3.sql`): a change a
//! client sees takes its position from the `'presence'` row of
//! `stream_positions` inside the write, which notifies the other processes
//! (`<process> presence <position> <user>`, `listen.rs`) and keeps the row
//! locked until the commit, as the other streams do.

use ruma::{OwnedUserId, UserId};
use tokio_postgres::{Row, types::ToSql};

use super::{GenericClient, col, next_position_of, now_ms, parse, query, query_opt, stream_head};
use crate::storage::{PresenceChange, PresenceRecord, PresenceWrite, Result};

const COLUMNS: &str = "user_id, state, status_msg, last_active_ts, currently_active, updated_ts, position";

/// In a transaction: the user's row, locked, then the change, then the
/// position (taken last) when a client would see it.
pub async fn change(tx: &impl GenericClient, user_id: &UserId, change: &PresenceChange) -> Result<PresenceWrite> {
    loop {
        let held = query_opt(
            tx,
            &format!("SELECT {COLUMNS} FROM presence WHERE user_id = $1 FOR UPDATE"),
            &[&user_id.as_str()],
        )
        .await?
        .map(|row| record(&row))
        .transpose()?;
        let old = held
            .clone()
            .unwrap_or_else(|| PresenceRecord::unknown(user_id, now_ms()));
        let mut new = old.clone();
        let touched = change(&mut new);
        let visible = new.visible() != old.visible();
        if !visible && !touched {
            return Ok(PresenceWrite::Unchanged(old));
        }
        new.position = old.position;
        // A first record: another process may be writing one too, which
        // this insert waits for; then the change applies to that one.
        if held.is_none() && !insert(tx, &new).await? {
            continue;
        }
        if visible {
            new.position = next_position_of(tx, "presence", Some(user_id.as_str())).await?;
        }
        if held.is_some() || visible {
            update(tx, &new).await?;
        }
        return Ok(match visible {
            true => PresenceWrite::Changed(new),
            false => PresenceWrite::Touched(new),
        });
    }
}

/// In a transaction: the user's row, locked, at a new position (taken
/// last), unchanged otherwise.
pub async fn restamp(tx: &impl GenericClient, user_id: &UserId) -> Result<Option<PresenceRecord>> {
    let held = query_opt(
        tx,
        &format!("SELECT {COLUMNS} FROM presence WHERE user_id = $1 FOR UPDATE"),
        &[&user_id.as_str()],
    )
    .await?;
    let Some(row) = held else {
        return Ok(None);
    };
    let mut r = record(&row)?;
    r.position = next_position_of(tx, "presence", Some(user_id.as_str())).await?;
    super::exec(
        tx,
        "UPDATE presence SET position = $2 WHERE user_id = $1",
        &[&user_id.as_str(), &r.position],
    )
    .await?;
    Ok(Some(r))
}

/// False when a record of the user is there already.
async fn insert(tx: &impl GenericClient, r: &PresenceRecord) -> Result<bool> {
    let inserted = super::exec(
        tx,
        &format!(
            "INSERT INTO presence ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id) DO NOTHING"
        ),
        &columns(&r.user_id.as_str(), r),
    )
    .await?;
    Ok(inserted == 1)
}

async fn update(tx: &impl GenericClient, r: &PresenceRecord) -> Result<()> {
    super::exec(
        tx,
        "UPDATE presence SET state = $2, status_msg = $3, last_active_ts = $4, currently_active = $5,
             updated_ts = $6, position = $7
         WHERE user_id = $1",
        &columns(&r.user_id.as_str(), r),
    )
    .await?;
    Ok(())
}

pub async fn changes(c: &impl GenericClient, after: Option<i64>, up_to: i64) -> Result<Vec<PresenceRecord>> {
    let rows = query(
        c,
        &format!("SELECT {COLUMNS} FROM presence WHERE position > $1 AND position <= $2 ORDER BY position"),
        &[&after.unwrap_or(i64::MIN), &up_to],
    )
    .await?;
    rows.iter().map(record).collect()
}

pub async fn of(c: &impl GenericClient, users: &[OwnedUserId]) -> Result<Vec<PresenceRecord>> {
    let users: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    let rows = query(
        c,
        &format!("SELECT {COLUMNS} FROM presence WHERE user_id = ANY($1)"),
        &[&users],
    )
    .await?;
    rows.iter().map(record).collect()
}

pub async fn quiet(c: &impl GenericClient, idle_before: i64, offline_before: i64) -> Result<Vec<OwnedUserId>> {
    let rows = query(
        c,
        "SELECT user_id FROM presence WHERE state <> 'offline'
             AND updated_ts < $2 AND (state = 'online' OR updated_ts < $1)",
        &[&offline_before, &idle_before],
    )
    .await?;
    rows.iter().map(|r| parse(col::<String>(r, 0)?)).collect()
}

pub async fn head(c: &impl GenericClient) -> Result<i64> {
    stream_head(c, "presence").await
}

/// A record's [`COLUMNS`], as statement parameters (`user_id`: the
/// record's, as text).
fn columns<'a>(user_id: &'a &'a str, r: &'a PresenceRecord) -> [&'a (dyn ToSql + Sync); 7] {
    [
        user_id,
        &r.state,
        &r.status_msg,
        &r.last_active_ts,
        &r.currently_active,
        &r.updated_ts,
        &r.position,
    ]
}

fn record(r: &Row) -> Result<PresenceRecord> {
    Ok(PresenceRecord {
        user_id: parse(col::<String>(r, 0)?)?,
        state: col(r, 1)?,
        status_msg: col(r, 2)?,
        last_active_ts: col(r, 3)?,
        currently_active: col(r, 4)?,
        updated_ts: col(r, 5)?,
        position: col(r, 6)?,
    })
}
