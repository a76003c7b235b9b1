//! Local users' last presence (`schema_v10.sql`), read once at start.

use ruma::OwnedUserId;
use rusqlite::{Connection, Transaction, params};

use super::exec;
use crate::storage::{PresenceRecord, Result, StorageError};

pub fn put(tx: &Transaction<'_>, record: &PresenceRecord) -> Result<()> {
    exec(
        tx,
        "INSERT INTO presence
             (user_id, state, status_msg, last_active_ts, currently_active, updated_ts, position)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (user_id) DO UPDATE SET
             state = excluded.state, status_msg = excluded.status_msg,
             last_active_ts = excluded.last_active_ts,
             currently_active = excluded.currently_active,
             updated_ts = excluded.updated_ts, position = excluded.position
         WHERE excluded.position > presence.position",
        params![
            record.user_id.as_str(),
            record.state,
            record.status_msg,
            record.last_active_ts,
            record.currently_active,
            record.updated_ts,
            record.position,
        ],
    )?;
    Ok(())
}

pub fn all(c: &Connection) -> Result<Vec<PresenceRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT user_id, state, status_msg, last_active_ts, currently_active, updated_ts, position
         FROM presence",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    rows.map(|row| {
        let (user_id, state, status_msg, last_active_ts, currently_active, updated_ts, position) = row?;
        Ok(PresenceRecord {
            user_id: OwnedUserId::try_from(user_id)
                .map_err(|e| StorageError::Corrupt(format!("presence user ID: {e}")))?,
            state,
            status_msg,
            last_active_ts,
            currently_active,
            updated_ts,
            position,
        })
    })
    .collect()
}
