//! A lock per key — a room, a server — for work done one at a time per key
//! within this process (a room's writes, a room's backfill, fetching a
//! server's keys). Entries nobody holds or waits for are dropped as the map
//! grows, so it stays as large as the keys in use, not every key ever seen.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

use tokio::sync::OwnedMutexGuard;

/// The map is pruned when it reaches this size, or twice its size after
/// the last pruning (so a map of keys all in use is not walked at every
/// lock).
const PRUNE_AT: usize = 1024;

pub struct KeyedLocks<K> {
    inner: Mutex<Inner<K>>,
}

struct Inner<K> {
    locks: HashMap<K, Arc<tokio::sync::Mutex<()>>>,
    prune_at: usize,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            inner: Mutex::new(Inner {
                locks: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }
}

impl<K: Eq + Hash> KeyedLocks<K> {
    /// Waits for `key`'s lock; held until the guard is dropped.
    pub async fn lock<Q>(&self, key: &Q) -> OwnedMutexGuard<()>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let lock = {
            let mut inner = self.inner.lock().expect("keyed locks");
            if inner.locks.len() >= inner.prune_at {
                inner.locks.retain(|_, l| Arc::strong_count(l) > 1);
                inner.prune_at = PRUNE_AT.max(2 * inner.locks.len());
            }
            match inner.locks.get(key) {
                Some(lock) => lock.clone(),
                None => inner.locks.entry(key.to_owned()).or_default().clone(),
            }
        };
        lock.lock_owned().await
    }

    /// How many keys the map holds.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("keyed locks").locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_map_keeps_only_keys_in_use() {
        let locks: KeyedLocks<String> = KeyedLocks::default();
        let held = locks.lock("kept").await;
        for i in 0..5 * PRUNE_AT {
            drop(locks.lock(format!("k{i}").as_str()).await);
        }
        assert!(locks.len() <= PRUNE_AT, "{} keys kept", locks.len());
        // The held lock survived the pruning: another task waits for it.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("kept")).await;
        assert!(waiting.is_err(), "the held key's lock is still the one held");
        drop(held);
        drop(locks.lock("kept").await);
    }
}
