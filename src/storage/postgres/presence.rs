//! Local users' last presence, read once at start.

use ruma::OwnedUserId;

use super::{GenericClient, col, exec, query};
use crate::storage::{PresenceRecord, Result, StorageError};

/// Stores a user's presence, unless a newer change (a higher position) is
/// stored already.
pub async fn put(tx: &impl GenericClient, record: &PresenceRecord) -> Result<()> {
    exec(
        tx,
        "INSERT INTO presence
             (user_id, state, status_msg, last_active_ts, currently_active, updated_ts, position)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (user_id) DO UPDATE SET
             state = excluded.state, status_msg = excluded.status_msg,
             last_active_ts = excluded.last_active_ts,
             currently_active = excluded.currently_active,
             updated_ts = excluded.updated_ts, position = excluded.position
         WHERE excluded.position > presence.position",
        &[
            &record.user_id.as_str(),
            &record.state,
            &record.status_msg,
            &record.last_active_ts,
            &record.currently_active,
            &record.updated_ts,
            &record.position,
        ],
    )
    .await?;
    Ok(())
}

pub async fn all(c: &impl GenericClient) -> Result<Vec<PresenceRecord>> {
    let rows = query(
        c,
        "SELECT user_id, state, status_msg, last_active_ts, currently_active, updated_ts, position
         FROM presence",
        &[],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PresenceRecord {
                user_id: OwnedUserId::try_from(col::<String>(r, 0)?)
                    .map_err(|e| StorageError::Corrupt(format!("presence user ID: {e}")))?,
                state: col(r, 1)?,
                status_msg: col(r, 2)?,
                last_active_ts: col(r, 3)?,
                currently_active: col(r, 4)?,
                updated_ts: col(r, 5)?,
                position: col(r, 6)?,
            })
        })
        .collect()
}
