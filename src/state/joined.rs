//! Who is joined to a room now, as every event stored asks: the local
//! users its push rules are evaluated for, the servers it is sent to, how
//! many members there are (`room_member_count`). Read from the room's
//! current state once and cached per room, so an event costs no read of
//! the room's members (which grows with the room).
//!
//! The cache is process-local and follows every change of a room's
//! current membership. This process's own writes (`rooms::persist`) of an
//! event that changes its own member key only are applied to the cached
//! set ([`JoinedCache::member_changed`]: a join or a leave costs no read
//! of the room's members); any other change drops the room's entry
//! ([`JoinedCache::changed`]): a state resolution that changed other
//! members, partial-state completion, and other processes' writes
//! (`crate::cluster`, from their notifications, which name membership
//! events; a lost notification connection clears it). A read that ran
//! across a change caches nothing.
//!
//! Applying a change is idempotent (the members are a set): a read that
//! already saw a write and was cached before the write's own change was
//! applied stays right. A room's writes are applied in their order (the
//! room's lock is held from the write to its change being applied).

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use imbl::{OrdMap, OrdSet};
use lru::LruCache;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};

use crate::storage::{Result, Storage};

/// How many rooms the cache holds.
const ROOMS: usize = 10_000;

/// A room's joined members, as the write path needs them. Persistent
/// collections: a change makes a new version sharing the rest.
#[derive(Debug, Default, Clone)]
pub struct Joined {
    /// Local users, in user ID order.
    pub local: OrdSet<OwnedUserId>,
    /// Every joined user.
    members: OrdSet<OwnedUserId>,
    /// Joined users per server.
    per_server: OrdMap<OwnedServerName, usize>,
    /// The servers a partial state names (in the room though their members
    /// are not known yet).
    partial: OrdSet<OwnedServerName>,
}

impl Joined {
    /// How many users are joined.
    pub fn count(&self) -> usize {
        self.members.len()
    }

    /// Every server with a joined user (this one included), and those a
    /// partial state names; each once.
    pub fn servers(&self) -> impl Iterator<Item = &OwnedServerName> {
        let partial_only = self.partial.iter().filter(|s| !self.per_server.contains_key(*s));
        self.per_server.keys().chain(partial_only)
    }

    /// Whether `server` is among [`Joined::servers`].
    pub fn has_server(&self, server: &ServerName) -> bool {
        self.per_server.contains_key(server) || self.partial.contains(server)
    }

    fn join(&mut self, user: &UserId, server_name: &ruma::ServerName) {
        if self.members.insert(user.to_owned()).is_some() {
            return;
        }
        if user.server_name() == server_name {
            self.local.insert(user.to_owned());
        }
        *self.per_server.entry(user.server_name().to_owned()).or_insert(0) += 1;
    }

    fn leave(&mut self, user: &UserId) {
        if self.members.remove(user).is_none() {
            return;
        }
        self.local.remove(user);
        let server = user.server_name();
        match self.per_server.get(server).copied() {
            Some(n) if n > 1 => {
                self.per_server.insert(server.to_owned(), n - 1);
            }
            _ => {
                self.per_server.remove(server);
            }
        }
    }
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
            joined.join(&member.user_id, &self.server_name);
        }
        // A room joined with partial state: the servers the resident
        // server named are in it, though their members are not known yet.
        if let Some(partial) = self.storage.partial_state(room_id).await? {
            joined.partial.extend(partial.servers);
        }
        let joined = Arc::new(joined);
        let mut inner = self.inner.lock().expect("joined cache");
        if inner.changes == changes {
            inner.rooms.put(room_id.to_owned(), joined.clone());
        }
        Ok(joined)
    }

    /// `user`'s membership of the room changed, and it was the only change
    /// of the room's members (an event of this process's, stored): now
    /// joined or not.
    pub fn member_changed(&self, room_id: &RoomId, user: &UserId, joined: bool) {
        let mut inner = self.inner.lock().expect("joined cache");
        inner.changes += 1;
        let Some(cached) = inner.rooms.get_mut(room_id) else {
            return;
        };
        let next = Arc::make_mut(cached);
        match joined {
            true => next.join(user, &self.server_name),
            false => next.leave(user),
        }
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
