//! Several identical weft processes over one database (the design is
//! `docs/cluster.md`): what a process shares with the others besides the
//! data itself, behind one interface, [`Cluster`].
//!
//! What is cluster state and what is process-local:
//! - **Cluster state** is in storage: the data, and the stream positions,
//!   which each write takes inside its own transaction (that is what makes
//!   them commit in order, so they belong to `Storage`, not here).
//! - **The cluster** ([`Cluster`]) is how processes coordinate around it:
//!   hearing what the others commit ([`Cluster::other_writers`], which the
//!   follower turns into wake-ups and cache drops: [`follow`]), a room's
//!   lock across processes ([`Cluster::lock_room`]), and background duties
//!   held by one process at a time ([`Cluster::hold_duty`], `crate::duty`).
//!   [`InProcess`] is the single-process implementation (SQLite: one
//!   process owns the file, so there is no one to hear, nothing to lock
//!   beyond the process's own mutexes, and every duty is its own); the
//!   PostgreSQL storage is the other (`storage/postgres`: `LISTEN`/`NOTIFY`,
//!   advisory locks, the `duties` table).
//! - **Process-local** is everything in `Services` that is not storage or
//!   the cluster: wake-up hubs, stream heads, caches, back-off maps, the
//!   room mutexes. Each follows the others' writes through the follower.

pub mod follow;

use std::time::Duration;

use async_trait::async_trait;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, ServerName};

use crate::storage::{Result, StreamOrdering};

/// How a process coordinates with the others over the shared database.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// What other processes commit, as they commit it (for this process's
    /// wake-ups and caches: see [`follow`]); `None` where no other process
    /// can write. Called once, by the process's follower.
    fn other_writers(&self) -> Option<tokio::sync::mpsc::Receiver<OtherWrite>>;
    /// Locks the room against every other process writing to it, until the
    /// value given is dropped (`crate::rooms::RoomLocks` takes it inside
    /// its own, so one task per process at most waits here); `None` where
    /// no other process can write: the process's lock is enough.
    async fn lock_room(&self, room_id: &RoomId) -> Result<Option<ClusterLock>>;
    /// Takes or renews the background duty `duty` (e.g.
    /// [`federation_duty`]) for this process for `ttl`; false while another
    /// live process holds it.
    async fn hold_duty(&self, duty: &str, ttl: Duration) -> Result<bool>;
    /// Gives up `duty` if this process holds it (its work is done, and
    /// another process waits for it: [`hold_while`]).
    async fn release_duty(&self, duty: &str) -> Result<()>;
    /// Gives up every duty this process holds (it stops).
    async fn release_duties(&self) -> Result<()>;
}

/// The cluster of one process (SQLite): no other writer, no lock beyond
/// the process's own, every duty its own.
pub struct InProcess;

#[async_trait]
impl Cluster for InProcess {
    fn other_writers(&self) -> Option<tokio::sync::mpsc::Receiver<OtherWrite>> {
        None
    }

    async fn lock_room(&self, _room_id: &RoomId) -> Result<Option<ClusterLock>> {
        Ok(None)
    }

    async fn hold_duty(&self, _duty: &str, _ttl: Duration) -> Result<bool> {
        Ok(true)
    }

    async fn release_duty(&self, _duty: &str) -> Result<()> {
        Ok(())
    }

    async fn release_duties(&self) -> Result<()> {
        Ok(())
    }
}

/// A lock held in the database for this process, released when dropped.
pub type ClusterLock = Box<dyn std::any::Any + Send + Sync>;

/// What another process wrote (see [`Cluster::other_writers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherWrite {
    /// An event committed at `position` of the events stream, in `room_id`;
    /// `member`: the state key of a membership event.
    Event {
        position: StreamOrdering,
        room_id: OwnedRoomId,
        member: Option<String>,
    },
    /// A position of the account data stream, the e2e stream (device
    /// list changes, to-device messages) or the ephemeral stream
    /// (receipts, typing) committed.
    Stream { stream: OtherStream, position: i64 },
    /// A room's receipts or typing changed at `position`.
    Ephemeral { position: i64, room_id: OwnedRoomId },
    /// A user's account data changed at `position` (their push rules,
    /// cached, among them).
    AccountData { position: i64, user_id: OwnedUserId },
    /// A user's presence changed at `position`.
    Presence { position: i64, user_id: OwnedUserId },
    /// The e2e stream moved to `position` with a change that concerns
    /// these users (`OtherWrite::Stream` when it names nobody).
    E2e {
        position: i64,
        change: crate::devices::E2eChange,
    },
    /// A room's current membership changed without an event (a room
    /// joined with partial state got its full state).
    Members { room_id: OwnedRoomId },
    /// Another process queued work for a duty this process holds (events
    /// for a destination, [`federation_duty`]; for an application service,
    /// [`appservice_duty`]; pushes, [`PUSH_DUTY`]).
    Queued { duty: String },
    /// What other processes wrote may have been missed (the connection
    /// that hears them was opened anew): read the head again.
    Resync,
}

/// A stream of [`OtherWrite::Stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherStream {
    AccountData,
    E2e,
    /// Receipts and typing.
    Ephemeral,
}

/// What a process holds ([`Cluster::hold_duty`]) while it sends to a
/// destination: the prefix, then the server name.
pub const FEDERATION_DUTY: &str = "federation ";

/// The duty of sending to `destination`.
pub fn federation_duty(destination: &ServerName) -> String {
    format!("{FEDERATION_DUTY}{destination}")
}

/// What a process holds while it sends the queued pushes to push gateways
/// (all of them: one sender keeps each pusher's pushes in order).
pub const PUSH_DUTY: &str = "push";

/// What a process holds while it fills a room's gaps with history from
/// other servers (`crate::backfill`): the prefix, then the room ID.
pub const BACKFILL_DUTY: &str = "backfill ";

/// The duty of filling `room_id`'s gaps.
pub fn backfill_duty(room_id: &RoomId) -> String {
    format!("{BACKFILL_DUTY}{room_id}")
}

/// What a process holds while it fetches a remote user's device list in
/// the background (`crate::devices`): the prefix, then the user ID.
pub const DEVICE_LIST_DUTY: &str = "device-list ";

/// The duty of fetching `user_id`'s device list.
pub fn device_list_duty(user_id: &ruma::UserId) -> String {
    format!("{DEVICE_LIST_DUTY}{user_id}")
}

/// A duty held for one piece of work (not a worker's standing duty): kept
/// renewed (every third of its time, by a task of its own) while it is
/// held, so that its time can be short: a process that dies holding it
/// leaves it to run out that soon. Given back when dropped.
pub struct HeldDuty {
    /// Stops the renewing task, which then gives the duty back.
    _renewing: tokio_util::sync::DropGuard,
}

impl HeldDuty {
    fn keep(cluster: std::sync::Arc<dyn Cluster>, duty: String, ttl: Duration) -> HeldDuty {
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await; // the first tick is now: it was just taken
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = tick.tick() => match cluster.hold_duty(&duty, ttl).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(%duty, "a duty held ran out and was taken by another process"),
                        Err(e) => tracing::warn!(%duty, error = %e, "cannot renew a duty"),
                    },
                }
            }
            if let Err(e) = cluster.release_duty(&duty).await {
                tracing::debug!(%duty, error = %e, "cannot give a duty back (it runs out)");
            }
        });
        HeldDuty {
            _renewing: stop.drop_guard(),
        }
    }
}

/// Takes `duty` for `ttl` (and keeps it while the [`HeldDuty`] lives),
/// waiting (polling every 100 ms) while another process holds it, at most
/// `wait`: `Some` once held; `None` when another process still holds it
/// after `wait` (or the database cannot say: the work goes on unheld, its
/// writes being idempotent).
pub async fn hold_while(
    cluster: &std::sync::Arc<dyn Cluster>,
    duty: String,
    ttl: Duration,
    wait: Duration,
) -> Option<HeldDuty> {
    let started = tokio::time::Instant::now();
    loop {
        match cluster.hold_duty(&duty, ttl).await {
            Ok(true) => return Some(HeldDuty::keep(cluster.clone(), duty, ttl)),
            Ok(false) if started.elapsed() < wait => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(%duty, error = %e, "cannot take a duty");
                return None;
            }
        }
    }
}

/// What a process holds while it sends to an application service: the
/// prefix, then the service's ID.
pub const APPSERVICE_DUTY: &str = "appservice ";

/// The duty of sending to application service `id`.
pub fn appservice_duty(id: &str) -> String {
    format!("{APPSERVICE_DUTY}{id}")
}
