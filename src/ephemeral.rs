//! Ephemeral room data: read receipts and who is typing, on their own
//! stream. `/sync`'s token carries its position
//! (`s<event stream>_<ephemeral position>`).
//!
//! Both are kept in storage, which gives each change its position inside
//! the write, committed in position order (`Storage::put_receipt`,
//! `Storage::set_typing`): a reader that reads up to the head never passes
//! over a change that lands later with a lower position, whichever process
//! of the cluster wrote it. This process's head follows its own writes and
//! the other processes' (`crate::cluster`).
//!
//! A typing timeout runs out on a timer of the process that heard of it.
//! Should that process die first, storage no longer counts the user as
//! typing once the time has passed, and every process looks every
//! [`SWEEP_EVERY`] for typing that ran out more than [`ORPHAN_AFTER`] ago
//! and ends it ([`Ephemeral::end_run_out_typing`]): storage ends each once,
//! whichever process comes first.

use std::{collections::HashMap, sync::Arc, time::Duration};

use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{
    storage::{Receipt, Storage, StorageError, Typing},
    wakeups::{StreamHead, Topic, Wakeups},
};

/// Longest a client may say it is typing for.
pub const MAX_TYPING_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a process looks for typing nobody ended.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long after its time typing counts as left by a dead process (its
/// own process's timer ends it at the time).
pub const ORPHAN_AFTER: Duration = Duration::from_secs(2);

/// The ephemeral stream's head in this process, and its writes.
pub struct Ephemeral {
    storage: Arc<dyn Storage>,
    /// Wakes the requests of a room whose receipts or typing changed.
    wakeups: Arc<Wakeups>,
    /// The position every reader may read up to: all positions at or below
    /// it are committed.
    head: StreamHead,
}

fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}

impl Ephemeral {
    /// Starts at the stream's head in storage.
    pub async fn new(storage: Arc<dyn Storage>, wakeups: Arc<Wakeups>) -> Result<Arc<Self>, StorageError> {
        let head = storage.max_ephemeral_position().await?;
        Ok(Arc::new(Ephemeral {
            storage,
            wakeups,
            head: StreamHead::new(head),
        }))
    }

    /// A change of `room_id`'s receipts or typing committed at `position`
    /// (here or by another process): the head moves, then the room's
    /// parked requests wake.
    pub fn changed_in(&self, position: i64, room_id: &RoomId) {
        self.advanced(position);
        self.wakeups.wake(&[Topic::Room(room_id.to_owned())]);
    }

    /// A position committed (here or by another process): readers may read
    /// up to it. Wakes nobody: see [`Self::changed_in`].
    pub fn advanced(&self, position: i64) {
        self.head.advance(position);
    }

    pub fn head(&self) -> i64 {
        self.head.get()
    }

    /// Who types in each room whose typing changed in `(after, up_to]`
    /// (every room anyone ever typed in if `after` is `None`).
    pub async fn typing(
        &self,
        after: Option<i64>,
        up_to: i64,
    ) -> Result<HashMap<OwnedRoomId, Vec<OwnedUserId>>, StorageError> {
        Ok(self
            .storage
            .typing(after, up_to)
            .await?
            .into_iter()
            .map(|t| (t.room_id, t.users))
            .collect())
    }

    /// Stores a receipt (its `position` is taken by the write); false when
    /// it was dropped, being for an older event than the user's last.
    pub async fn put_receipt(&self, receipt: &Receipt) -> Result<bool, StorageError> {
        let position = self.storage.put_receipt(receipt).await?;
        if let Some(position) = position {
            self.changed_in(position, &receipt.room_id);
        }
        Ok(position.is_some())
    }

    /// Sets `user` typing (for `timeout`, capped) or not; false when
    /// whether they type did not change (a renewal).
    pub async fn set_typing(
        self: &Arc<Self>,
        room_id: &RoomId,
        user: &UserId,
        timeout: Option<Duration>,
    ) -> Result<bool, StorageError> {
        let timeout = timeout.map(|t| t.min(MAX_TYPING_TIMEOUT));
        let change = match timeout {
            Some(t) => Typing::Until(now_ms() + t.as_millis() as u64),
            None => Typing::Stopped,
        };
        let position = self.storage.set_typing(room_id, user, change).await?;
        if let Some(position) = position {
            self.changed_in(position, room_id);
        }
        if let (Typing::Until(until), Some(timeout)) = (change, timeout) {
            // Stop typing when the timeout runs out, unless renewed or
            // stopped since (storage compares `until`).
            let this = self.clone();
            let (room_id, user) = (room_id.to_owned(), user.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                match this.storage.set_typing(&room_id, &user, Typing::Expired(until)).await {
                    Ok(Some(position)) => this.changed_in(position, &room_id),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, %room_id, %user, "storing the end of a typing timeout"),
                }
            });
        }
        Ok(position.is_some())
    }

    /// Ends the typing that ran out before `before_ms` and that nobody
    /// ended (its process died); how many.
    pub async fn end_run_out_typing(&self, before_ms: u64) -> Result<usize, StorageError> {
        let mut ended = 0;
        for (room_id, user, until) in self.storage.typing_run_out(before_ms).await? {
            if let Some(position) = self.storage.set_typing(&room_id, &user, Typing::Expired(until)).await? {
                self.changed_in(position, &room_id);
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Every [`SWEEP_EVERY`] until `cancel`: [`Self::end_run_out_typing`].
    pub async fn run_sweeper(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            let before = now_ms().saturating_sub(ORPHAN_AFTER.as_millis() as u64);
            match self.end_run_out_typing(before).await {
                Ok(0) => {}
                Ok(ended) => tracing::info!(ended, "ended typing a stopped process left running"),
                Err(e) => tracing::info!(error = %e, "looking for typing nobody ended"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;

    #[tokio::test]
    async fn typing_starts_stops_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir.path()).unwrap());
        let eph = Ephemeral::new(storage.clone(), Arc::default()).await.unwrap();
        let room: &RoomId = "!r:x".try_into().unwrap();
        let user: &UserId = "@u:x".try_into().unwrap();
        let start = eph.head();
        assert!(
            eph.set_typing(room, user, Some(Duration::from_millis(50)))
                .await
                .unwrap()
        );
        let typing = storage.typing(Some(start), eph.head()).await.unwrap();
        assert_eq!(typing.len(), 1);
        assert_eq!(typing[0].users, vec![user.to_owned()]);
        let position = typing[0].position;
        assert!(position > start);
        assert!(
            !eph.set_typing(room, user, Some(Duration::from_millis(50)))
                .await
                .unwrap(),
            "still typing: no change"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let typing = storage.typing(Some(position), eph.head()).await.unwrap();
        assert_eq!(typing.len(), 1, "the timeout is a change");
        assert!(typing[0].users.is_empty(), "timed out");
        assert!(!eph.set_typing(room, user, None).await.unwrap());
    }

    #[tokio::test]
    async fn typing_a_dead_process_left_is_ended_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir.path()).unwrap());
        let eph = Ephemeral::new(storage.clone(), Arc::default()).await.unwrap();
        let room: &RoomId = "!r:x".try_into().unwrap();
        let user: &UserId = "@u:x".try_into().unwrap();
        // Typing whose process died before its timer ran (no timer here).
        let until = now_ms() - 10_000;
        storage.set_typing(room, user, Typing::Until(until)).await.unwrap();
        let start = eph.head();
        assert_eq!(
            eph.end_run_out_typing(until - 1).await.unwrap(),
            0,
            "not run out yet then"
        );
        assert_eq!(eph.end_run_out_typing(now_ms()).await.unwrap(), 1);
        let typing = storage.typing(Some(start), eph.head()).await.unwrap();
        assert_eq!(typing.len(), 1, "the end is a change readers see");
        assert!(typing[0].users.is_empty());
        assert_eq!(eph.end_run_out_typing(now_ms()).await.unwrap(), 0, "once");
    }
}
