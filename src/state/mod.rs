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
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use lru::LruCache;
use ruma::{OwnedEventId, RoomId, UserId, events::StateEventType};

use crate::storage::{Result, StateGroupId, StateKey, Storage, StoredEvent};

/// A state: persistent (`imbl`), so the state after an event is the state
/// before it plus one entry, sharing the rest, and a copy costs nothing.
/// States of a room differ by a few entries from one event to the next; a
/// room of 20,000 state events would otherwise copy 20,000 entries per
/// event.
pub type StateMap = imbl::HashMap<StateKey, OwnedEventId>;

/// How much the cache holds in all, in state entries (not groups: one big
/// room's state can be thousands of entries).
const CACHE_ENTRY_BUDGET: usize = 200_000;

/// What a cached map counts for in [`CACHE_ENTRY_BUDGET`]: a quarter of
/// its entries. A room's cached states share most of their structure (a
/// state after an event is the one before it plus one entry), so a map
/// counted whole would count the same entries many times over, and a
/// budget of 200,000 would keep ten states of a room of 20,000. The
/// memory held is at most four times the budget, reached by states that
/// share nothing (small rooms', whose states are one node each).
fn cost(map: &StateMap) -> usize {
    map.len() / 4 + 1
}

/// State groups, loaded on demand and cached.
pub struct StateCache {
    storage: Arc<dyn Storage>,
    cache: Mutex<Cache>,
}

struct Cache {
    groups: LruCache<StateGroupId, Arc<StateMap>>,
    entries: usize,
    /// Moves at each [`StateCache::clear`]: a group loaded across one is
    /// not kept (it may be from before the change).
    generation: u64,
    /// Stored states being changed ([`StateCache::changing`]): nothing
    /// loaded meanwhile is kept.
    changing: usize,
}

/// A change of stored states in progress ([`StateCache::changing`]); the
/// cache is cleared again when it is dropped.
pub struct Changing<'a>(&'a StateCache);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let mut cache = self.0.cache.lock().expect("state cache lock");
        cache.changing -= 1;
        clear(&mut cache);
    }
}

/// Keeps `map`, evicting the least recently used maps past the budget.
/// Gives the evicted maps, to be dropped once the cache's lock is let go:
/// freeing a big state's nodes takes milliseconds.
#[must_use = "the evicted maps are to be dropped after the lock"]
fn keep(cache: &mut Cache, group: StateGroupId, map: Arc<StateMap>) -> Vec<Arc<StateMap>> {
    let mut evicted = Vec::new();
    cache.entries += cost(&map);
    if let Some((_, old)) = cache.groups.push(group, map) {
        cache.entries -= cost(&old);
        evicted.push(old);
    }
    while cache.entries > CACHE_ENTRY_BUDGET && cache.groups.len() > 1 {
        if let Some((_, old)) = cache.groups.pop_lru() {
            cache.entries -= cost(&old);
            evicted.push(old);
        }
    }
    evicted
}

fn clear(cache: &mut Cache) {
    cache.groups.clear();
    cache.entries = 0;
    cache.generation += 1;
}

impl StateCache {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        StateCache {
            storage,
            cache: Mutex::new(Cache {
                groups: LruCache::new(NonZeroUsize::new(4096).expect("non-zero")),
                entries: 0,
                generation: 0,
                changing: 0,
            }),
        }
    }

    /// The state map of a group. One not cached is built from its delta
    /// chain, from the newest group of the chain the cache holds: only the
    /// entries of the groups after it are read. The group is kept, and so
    /// is the chain's snapshot when the build started from it, as a base
    /// for the chain's other groups: history served newest first reads a
    /// chain's groups backwards, each a few deltas from the snapshot.
    ///
    /// (Several processes: another process's completion of a partial state
    /// changes stored groups, and this cache is cleared when it hears of
    /// it. Until then it serves the states it holds as they were, and a
    /// group built on one of them is as of then too.)
    pub async fn group(&self, group: StateGroupId) -> Result<Arc<StateMap>> {
        // A build on a cached state while the cache changed (a stored state
        // was completed meanwhile) is done again from storage alone: the
        // cached state may be from before the change, the entries read
        // after it from after.
        let mut use_cached = true;
        loop {
            let generation = {
                let mut cache = self.cache.lock().expect("state cache lock");
                if let Some(map) = cache.groups.get(&group) {
                    return Ok(map.clone());
                }
                cache.generation
            };
            let chain = self.storage.state_group_chain(group).await?;
            let base = {
                let cache = self.cache.lock().expect("state cache lock");
                if use_cached && cache.generation == generation && cache.changing == 0 {
                    chain
                        .iter()
                        .enumerate()
                        .rev()
                        .find_map(|(i, id)| cache.groups.peek(id).map(|map| (i, map.clone())))
                } else {
                    None
                }
            };
            let (read_from, mut map) = match &base {
                Some((i, map)) => (i + 1, map.clone()),
                None => (0, Arc::default()),
            };
            let stored = self.storage.state_group_entries(&chain[read_from..]).await?;
            let mut snapshot = None;
            for group in stored {
                let mut next = (*map).clone();
                for (key, event_id) in group.entries {
                    match event_id {
                        Some(event_id) => next.insert(key, event_id),
                        None => next.remove(&key),
                    };
                }
                map = Arc::new(next);
                if base.is_none() && snapshot.is_none() {
                    snapshot = Some((group.id, map.clone()));
                }
            }
            let mut cache = self.cache.lock().expect("state cache lock");
            let unchanged = cache.generation == generation && cache.changing == 0;
            if base.is_some() && !unchanged {
                use_cached = false;
                continue;
            }
            let mut evicted = Vec::new();
            if unchanged {
                if let Some((id, snapshot)) = snapshot.filter(|(id, _)| *id != group) {
                    evicted.extend(keep(&mut cache, id, snapshot));
                }
                evicted.extend(keep(&mut cache, group, map.clone()));
            }
            drop(cache);
            drop(evicted);
            return Ok(map);
        }
    }

    /// The event at `kind`/`state_key` in a group's state: from the group
    /// if it is cached, else read for that key alone (no state built or
    /// kept: a question about one entry of a big state not at hand).
    pub async fn entry(
        &self,
        group: StateGroupId,
        kind: StateEventType,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        let k = key(kind, state_key);
        let cached = self
            .cache
            .lock()
            .expect("state cache lock")
            .groups
            .peek(&group)
            .cloned();
        match cached {
            Some(map) => Ok(map.get(&k).cloned()),
            None => self.storage.state_group_entry(group, &k).await,
        }
    }

    /// Caches a map just computed for a new group (not while stored
    /// states are being changed: it may be from before the change, and
    /// other groups are built on cached ones).
    pub fn remember(&self, group: StateGroupId, map: Arc<StateMap>) {
        let mut cache = self.cache.lock().expect("state cache lock");
        if cache.changing == 0 {
            let evicted = keep(&mut cache, group, map);
            drop(cache);
            drop(evicted);
        }
    }

    /// Forgets every group (a stored state was completed: a room joined
    /// with partial state got its full state).
    pub fn clear(&self) {
        clear(&mut self.cache.lock().expect("state cache lock"));
    }

    /// Stored states are about to change (a room joined with partial state
    /// gets its full state): the cache is cleared now, keeps nothing loaded
    /// until the returned guard is dropped (after the change is committed),
    /// and is cleared again then. No reader is given a state from before the
    /// change once it can see the change's position.
    pub fn changing(&self) -> Changing<'_> {
        let mut cache = self.cache.lock().expect("state cache lock");
        cache.changing += 1;
        clear(&mut cache);
        Changing(self)
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

    /// [`Self::event_for`] in a group's state, reading that one entry
    /// ([`Self::entry`]).
    pub async fn event_at(&self, group: StateGroupId, kind: StateEventType, key: &str) -> Result<Option<StoredEvent>> {
        match self.entry(group, kind, key).await? {
            Some(id) => self.storage.event(&id).await,
            None => Ok(None),
        }
    }

    /// [`Self::membership`] in a group's state, reading that one entry.
    pub async fn membership_at(&self, group: StateGroupId, user_id: &UserId) -> Result<Option<String>> {
        Ok(self
            .event_at(group, StateEventType::RoomMember, user_id.as_str())
            .await?
            .and_then(|e| e.pdu.membership()))
    }
}

/// Whether two states are the same (at once when one is a copy of the
/// other).
pub fn same(a: &StateMap, b: &StateMap) -> bool {
    a.ptr_eq(b) || (a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v)))
}

/// The entries of `new` that `old` does not hold, changed or added (none
/// at once when one is a copy of the other).
pub fn changed<'a>(old: &StateMap, new: &'a StateMap) -> Vec<(&'a StateKey, &'a OwnedEventId)> {
    if old.ptr_eq(new) {
        return Vec::new();
    }
    new.iter().filter(|(k, id)| old.get(*k) != Some(*id)).collect()
}

pub fn key(kind: StateEventType, state_key: &str) -> StateKey {
    (kind, state_key.to_owned())
}
