//! Who is joined to a room now, as every event stored asks: the local
//! users its push rules are evaluated for, the servers it is sent to, how
//! many members there are (`room_member_count`). Read from the room's
//! current state once and cached per room, so an event costs no read of
//! the room's members (which grows with the room).
//!
//! The cache is process-local and follows every change of a room's
//! current membership: this process's own (`rooms::persist` calls
//! [`JoinedCache::changed`] for an event that changed a member key of the
//! current state) and other processes' (`crate::cluster`, from their
//! notifications, which name membership events; a lost notification
//! connection clears it). A read that ran across a change caches nothing.

use std::{
    collections::BTreeSet,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use lru::LruCache;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId};

use crate::storage::{Result, Storage};

/// How many rooms the cache holds.
const ROOMS: usize = 10_000;

/// A room's joined members, as the write path needs them.
#[derive(Debug, Default)]
pub struct Joined {
    /// Local users, in user ID order.
    pub local: Vec<OwnedUserId>,
    /// Every server with a joined user (this one included).
    pub servers: BTreeSet<OwnedServerName>,
    pub count: usize,
}

pub struct JoinedCache {
    storage: Arc<dyn Storage>,
    server_name: OwnedServerName,
    inner: Mutex<Inner>,
}

struct Inner {
    rooms: LruCache<OwnedRoomId, Arc<Joined>>,
    /// Moves at every change: a read that saw it move caches nothing.
    changes: u64,
}

impl JoinedCache {
    pub fn new(storage: Arc<dyn Storage>, server_name: OwnedServerName) -> JoinedCache {
        JoinedCache {
            storage,
            server_name,
            inner: Mutex::new(Inner {
                rooms: LruCache::new(NonZeroUsize::new(ROOMS).expect("nonzero")),
                changes: 0,
            }),
        }
    }

    /// The room's joined members now (none for a room not held).
    pub async fn get(&self, room_id: &RoomId) -> Result<Arc<Joined>> {
        let changes = {
            let mut inner = self.inner.lock().expect("joined cache");
            if let Some(joined) = inner.rooms.get(room_id) {
                return Ok(joined.clone());
            }
            inner.changes
        };
        let mut joined = Joined::default();
        for member in self.storage.room_members(room_id, Some("join")).await? {
            joined.count += 1;
            if member.user_id.server_name() == self.server_name {
                joined.local.push(member.user_id.clone());
            }
            joined.servers.insert(member.user_id.server_name().to_owned());
        }
        // A room joined with partial state: the servers the resident
        // server named are in it, though their members are not known yet.
        if let Some(partial) = self.storage.partial_state(room_id).await? {
            joined.servers.extend(partial.servers);
        }
        joined.local.sort();
        let joined = Arc::new(joined);
        let mut inner = self.inner.lock().expect("joined cache");
        if inner.changes == changes {
            inner.rooms.put(room_id.to_owned(), joined.clone());
        }
        Ok(joined)
    }

    /// The room's current membership changed (stored here, or by another
    /// process).
    pub fn changed(&self, room_id: &RoomId) {
        let mut inner = self.inner.lock().expect("joined cache");
        inner.changes += 1;
        inner.rooms.pop(room_id);
    }

    /// Anything may have changed (another process's changes were missed).
    pub fn clear(&self) {
        let mut inner = self.inner.lock().expect("joined cache");
        inner.changes += 1;
        inner.rooms.clear();
    }
}
