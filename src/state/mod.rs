//! Room state: the state before and after every event, read through a
//! cache of state groups.
//!
//! Storage keeps each state once, as a snapshot or a delta on another
//! group ([`crate::storage::StateWrite`]); this module turns a group ID
//! into a map and answers questions about it (membership, visibility,
//! power) without replaying history. [`resolve`] decides between states
//! that disagree.

pub mod joined;
pub mod resolve;
pub mod resolve_v1;

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use lru::LruCache;
use ruma::{OwnedEventId, RoomId, UserId, events::StateEventType};

use crate::storage::{Result, StateGroupId, StateKey, Storage, StoredEvent};

pub type StateMap = HashMap<StateKey, OwnedEventId>;

/// How many state entries the cache holds in all (not groups: one big
/// room's state can be thousands of entries).
const CACHE_ENTRY_BUDGET: usize = 200_000;

/// State groups, loaded on demand and cached.
pub struct StateCache {
    storage: Arc<dyn Storage>,
    cache: Mutex<Cache>,
}

struct Cache {
    groups: LruCache<StateGroupId, Arc<StateMap>>,
    entries: usize,
}

impl StateCache {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        StateCache {
            storage,
            cache: Mutex::new(Cache {
                groups: LruCache::new(NonZeroUsize::new(4096).expect("non-zero")),
                entries: 0,
            }),
        }
    }

    /// The state map of a group.
    pub async fn group(&self, group: StateGroupId) -> Result<Arc<StateMap>> {
        if let Some(map) = self.cache.lock().expect("state cache lock").groups.get(&group) {
            return Ok(map.clone());
        }
        let map: Arc<StateMap> = Arc::new(self.storage.state_group(group).await?.into_iter().collect());
        self.remember(group, map.clone());
        Ok(map)
    }

    /// Caches a map just computed for a new group.
    pub fn remember(&self, group: StateGroupId, map: Arc<StateMap>) {
        let mut cache = self.cache.lock().expect("state cache lock");
        cache.entries += map.len();
        if let Some((_, old)) = cache.groups.push(group, map) {
            cache.entries -= old.len();
        }
        while cache.entries > CACHE_ENTRY_BUDGET && cache.groups.len() > 1 {
            if let Some((_, old)) = cache.groups.pop_lru() {
                cache.entries -= old.len();
            }
        }
    }

    /// Forgets every group (a stored state was completed: a room joined
    /// with partial state got its full state).
    pub fn clear(&self) {
        let mut cache = self.cache.lock().expect("state cache lock");
        cache.groups.clear();
        cache.entries = 0;
    }

    /// The current state of a room (`None` for an unknown room).
    pub async fn current(&self, room_id: &RoomId) -> Result<Option<(StateGroupId, Arc<StateMap>)>> {
        let Some(group) = self.storage.room(room_id).await?.and_then(|r| r.current_state_group) else {
            return Ok(None);
        };
        Ok(Some((group, self.group(group).await?)))
    }

    /// The events of a state map for the given keys (those present).
    pub async fn events_for(&self, map: &StateMap, keys: &[StateKey]) -> Result<Vec<StoredEvent>> {
        let ids: Vec<OwnedEventId> = keys.iter().filter_map(|k| map.get(k).cloned()).collect();
        self.storage.events(&ids).await
    }

    /// One state event of a map.
    pub async fn event_for(&self, map: &StateMap, kind: StateEventType, key: &str) -> Result<Option<StoredEvent>> {
        match map.get(&(kind, key.to_owned())) {
            Some(id) => self.storage.event(id).await,
            None => Ok(None),
        }
    }

    /// The membership of `user_id` in a state map (`None`: never a member).
    pub async fn membership(&self, map: &StateMap, user_id: &UserId) -> Result<Option<String>> {
        Ok(self
            .event_for(map, StateEventType::RoomMember, user_id.as_str())
            .await?
            .and_then(|e| e.pdu.membership()))
    }
}

pub fn key(kind: StateEventType, state_key: &str) -> StateKey {
    (kind, state_key.to_owned())
}
