//! Room locks across processes: a PostgreSQL session advisory lock per
//! room, keyed by `hashtextextended(room ID)` (PostgreSQL's own stable
//! 64-bit hash: every process, whatever its build, takes the same key; two
//! rooms sharing one only wait for each other).
//!
//! A held lock keeps its connection, taken from a pool of its own
//! ([`LOCK_CONNECTIONS`]): a task holding a room lock still gets its
//! statements' connections from the main pool, and never waits for one it
//! holds. Dropping the lock unlocks it on its connection before the
//! connection goes back to its pool; a connection that cannot unlock is
//! closed instead (the server releases a closed session's locks), as a
//! lock whose process dies is released with its connections.

use deadpool_postgres::{Object, Pool};
use ruma::RoomId;

use super::query_one;
use crate::storage::{ClusterLock, Result, StorageError};

/// Rooms one process can hold locked at once; more wait for a connection
/// (up to the pool's wait, then fail as unavailable).
pub const LOCK_CONNECTIONS: usize = 8;

struct RoomLock {
    connection: Option<Object>,
    room_id: String,
}

impl Drop for RoomLock {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let room_id = std::mem::take(&mut self.room_id);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to unlock on (shutting down): closing the
            // connection releases the lock.
            drop(Object::take(connection));
            return;
        };
        runtime.spawn(async move {
            let unlocked = connection
                .query_one("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[&room_id])
                .await
                .is_ok_and(|row| row.get::<_, bool>(0));
            if !unlocked {
                tracing::warn!(%room_id, "a room lock could not be released: closing its connection");
                drop(Object::take(connection));
            }
        });
    }
}

/// Waits for the room's lock, and holds it until the value is dropped.
/// The wait runs on a task of its own: a caller that gives up (a client
/// gone) leaves it to finish and release the lock, never a connection
/// back in its pool with a lock still coming.
pub async fn lock_room(locks: &Pool, room_id: &RoomId) -> Result<ClusterLock> {
    let (locks, room_id) = (locks.clone(), room_id.as_str().to_owned());
    let lock = tokio::spawn(async move {
        let connection = locks.get().await?;
        let mut lock = RoomLock {
            connection: None,
            room_id,
        };
        query_one(
            &connection,
            "SELECT pg_advisory_lock(hashtextextended($1, 0))",
            &[&lock.room_id],
        )
        .await?;
        lock.connection = Some(connection);
        Ok::<_, StorageError>(lock)
    })
    .await
    .map_err(|e| StorageError::Database(format!("room lock task: {e}")))??;
    Ok(Box::new(lock))
}
