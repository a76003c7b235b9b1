//! Room locks across processes: a PostgreSQL session advisory lock per
//! room, keyed by `hashtextextended(room ID)` (PostgreSQL's own stable
//! 64-bit hash: every process, whatever its build, takes the same key; two
//! rooms sharing one only wait for each other).
//!
//! A held lock keeps its connection, taken from a pool of its own
//! ([`LOCK_CONNECTIONS`]): a task holding a room lock still gets its
//! statements' connections from the main pool, and never waits for one it
//! holds.
//!
//! A lock given back is kept a moment ([`LINGER`]) before it is released,
//! so that a burst of writes to one room — a client's messages one after
//! the other — pays for locking once, not twice per write. Another
//! process that finds the room locked says so before it waits
//! (`<process> want <room>` on the `weft` channel, heard by `listen.rs`):
//! the holder then releases it as soon as it is given back. A lock is
//! released on its connection before the connection goes back to its
//! pool; a connection that cannot unlock is closed instead (the server
//! releases a closed session's locks, as it does a dead process's).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_postgres::{Object, Pool};
use ruma::RoomId;

use super::query_one;
use crate::{
    cluster::ClusterLock,
    storage::{Result, StorageError},
};

/// Rooms one process can hold locked at once; more wait for a connection
/// (a lingering lock is released to make room).
pub const LOCK_CONNECTIONS: usize = 8;
/// How long a lock given back stays held, for the next write to the room.
const LINGER: Duration = Duration::from_millis(25);
/// Rooms remembered as wanted by other processes, at most.
const WANTED: usize = 1024;

/// The room locks this process holds in the database.
pub struct HeldLocks {
    pool: Pool,
    /// This process's name in its notifications.
    process: String,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Given back, not yet released: room → its connection, and the
    /// number of the giving back (a later one supersedes the timer).
    lingering: HashMap<String, (Object, u64)>,
    /// Rooms another process waits for: released at once when given back.
    wanted: HashSet<String>,
    given_back: u64,
}

/// A room locked by this process, until dropped.
struct RoomLock {
    locks: Arc<HeldLocks>,
    connection: Option<Object>,
    room_id: String,
}

impl Drop for RoomLock {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.locks.given_back(std::mem::take(&mut self.room_id), connection);
        }
    }
}

impl HeldLocks {
    pub fn new(pool: Pool, process: String) -> Arc<HeldLocks> {
        Arc::new(HeldLocks {
            pool,
            process,
            held: Mutex::default(),
        })
    }

    /// Waits for the room's lock, and holds it until the value is dropped.
    /// The wait runs on a task of its own: a caller that gives up (a client
    /// gone) leaves it to finish and give the lock back, never a
    /// connection back in its pool with a lock still coming.
    pub async fn lock(self: &Arc<Self>, room_id: &RoomId) -> Result<ClusterLock> {
        let room_id = room_id.as_str().to_owned();
        let lingering = self.held.lock().expect("room locks").lingering.remove(&room_id);
        // (A connection that closed took its session's locks with it: the
        // database restarted, say. Locked anew below.)
        if let Some((connection, _)) = lingering.filter(|(c, _)| !c.is_closed()) {
            return Ok(Box::new(RoomLock {
                locks: self.clone(),
                connection: Some(connection),
                room_id,
            }));
        }
        self.make_room();
        let locks = self.clone();
        let lock = tokio::spawn(async move {
            let connection = locks.pool.get().await?;
            let want = format!("{} want {room_id}", locks.process);
            let mut lock = RoomLock {
                locks: locks.clone(),
                connection: None,
                room_id,
            };
            // Taken at once, or the holder is told before the wait.
            let taken: String = super::col(
                &query_one(
                    &connection,
                    "SELECT CASE WHEN pg_try_advisory_lock(hashtextextended($1, 0)) THEN 'taken'
                         ELSE pg_notify('weft', $2)::text END",
                    &[&lock.room_id, &want],
                )
                .await?,
                0,
            )?;
            if taken != "taken" {
                query_one(
                    &connection,
                    "SELECT pg_advisory_lock(hashtextextended($1, 0))",
                    &[&lock.room_id],
                )
                .await?;
            }
            lock.connection = Some(connection);
            Ok::<_, StorageError>(lock)
        })
        .await
        .map_err(|e| StorageError::Database(format!("room lock task: {e}")))??;
        Ok(Box::new(lock))
    }

    /// Another process waits for the room: released now if lingering,
    /// else as soon as it is given back.
    pub fn wanted(&self, room_id: &str) {
        let mut held = self.held.lock().expect("room locks");
        if let Some((connection, _)) = held.lingering.remove(room_id) {
            drop(held);
            release(room_id.to_owned(), connection);
            return;
        }
        if held.wanted.len() >= WANTED {
            held.wanted.clear();
        }
        held.wanted.insert(room_id.to_owned());
    }

    fn given_back(self: &Arc<Self>, room_id: String, connection: Object) {
        let mut held = self.held.lock().expect("room locks");
        // Released at once, not kept, when another process waits for the
        // room, or another room's lock waits for a connection (a burst of
        // rooms must not wait for lingering locks to run out).
        if held.wanted.remove(&room_id)
            || self.pool.status().waiting > 0
            || tokio::runtime::Handle::try_current().is_err()
        {
            drop(held);
            release(room_id, connection);
            return;
        }
        held.given_back += 1;
        let number = held.given_back;
        held.lingering.insert(room_id.clone(), (connection, number));
        let locks = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            let mut held = locks.held.lock().expect("room locks");
            if held.lingering.get(&room_id).is_some_and(|(_, n)| *n == number)
                && let Some((connection, _)) = held.lingering.remove(&room_id)
            {
                drop(held);
                release(room_id, connection);
            }
        });
    }

    /// Every lock connection in use and some only lingering: one of those
    /// is released for the lock about to be taken.
    fn make_room(&self) {
        let status = self.pool.status();
        if status.available > 0 || status.size < status.max_size {
            return;
        }
        let mut held = self.held.lock().expect("room locks");
        let Some(room_id) = held.lingering.keys().next().cloned() else {
            return;
        };
        if let Some((connection, _)) = held.lingering.remove(&room_id) {
            drop(held);
            release(room_id, connection);
        }
    }
}

/// Unlocks the room on its connection, which then goes back to its pool
/// (or is closed, which unlocks too).
fn release(room_id: String, connection: Object) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
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
