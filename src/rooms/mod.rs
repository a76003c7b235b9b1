//! Rooms as this server's users act in them: creating rooms, sending
//! events, membership changes, redactions. Every local event goes through
//! [`send::send_event`], which places it in the DAG, checks it against
//! the auth rules and stores it atomically.

pub mod backfilled;
pub mod create;
pub mod expiry;
pub mod federated;
pub mod guests;
pub mod heroes;
pub mod inbound;
pub mod invites;
pub mod membership;
pub mod outliers;
pub mod partial_state;
pub mod persist;
pub mod power;
pub mod remote_join;
pub mod send;
pub mod third_party;
pub mod upgrade;

use std::sync::Arc;

use ruma::{OwnedRoomId, RoomId};

use crate::{
    cluster::{Cluster, ClusterLock},
    error::MatrixError,
    events::build::BuildError,
    keyed_locks::KeyedLocks,
    storage::StorageError,
};

/// One lock per room: events of a room are placed one at a time, so each
/// sees the extremities and state the previous one left. Within a process
/// a mutex per room; across processes (PostgreSQL) the database's lock of
/// the room too (`Cluster::lock_room`), taken inside the mutex, so that at
/// most one task per process waits for it.
pub struct RoomLocks {
    cluster: Arc<dyn Cluster>,
    locks: KeyedLocks<OwnedRoomId>,
}

/// A room locked, until dropped.
pub struct RoomGuard {
    // Dropped in this order: the database's lock first.
    _cluster: Option<ClusterLock>,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl RoomLocks {
    pub fn new(cluster: Arc<dyn Cluster>) -> RoomLocks {
        RoomLocks {
            cluster,
            locks: KeyedLocks::default(),
        }
    }

    pub async fn lock(&self, room_id: &RoomId) -> Result<RoomGuard, StorageError> {
        let local = self.locks.lock(room_id).await;
        Ok(RoomGuard {
            _cluster: self.cluster.lock_room(room_id).await?,
            _local: local,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("unknown room")]
    UnknownRoom,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadEvent(#[from] BuildError),
    #[error("{0}")]
    Invalid(String),
    #[error("room version {0} is not supported")]
    UnsupportedVersion(String),
    #[error("room alias already taken")]
    AliasInUse,
    #[error("{0} is not a user of this server")]
    UnknownUser(String),
    /// Another server refused, with this Matrix error (passed on to the
    /// client as it is).
    #[error("{0}")]
    Remote(MatrixError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<RoomError> for MatrixError {
    fn from(e: RoomError) -> Self {
        use crate::error::ErrCode;
        match e {
            RoomError::UnknownRoom => MatrixError::not_found("Unknown room"),
            RoomError::Forbidden(m) => MatrixError::forbidden(m),
            RoomError::BadEvent(BuildError::TooLarge(m)) => MatrixError::new(ErrCode::TooLarge, m),
            RoomError::BadEvent(BuildError::NotCanonical(m)) => MatrixError::bad_json(m),
            RoomError::BadEvent(e) => MatrixError::bad_json(e.to_string()),
            RoomError::Invalid(m) => MatrixError::invalid_param(m),
            RoomError::UnsupportedVersion(v) => MatrixError::new(
                ErrCode::UnsupportedRoomVersion,
                format!("room version {v} is not supported"),
            ),
            RoomError::AliasInUse => MatrixError::new(ErrCode::RoomInUse, "Room alias already taken"),
            RoomError::Remote(e) => e,
            RoomError::UnknownUser(u) => MatrixError::not_found(format!("{u} is not a user of this server")),
            RoomError::Storage(e) => e.into(),
        }
    }
}
