//! Recently read events by ID, for both backends (state and auth events
//! are looked up over and over; pages of timeline are read in bulk and not
//! cached).
//!
//! Process-local: an event changes after it is stored only when an outlier
//! takes its place in the timeline, a redaction or an expiry rewrites it,
//! or the resync of a partial room rejects it;
//! the process that writes drops it here ([`EventCache::forget`]), and
//! (PostgreSQL) every other process on its notification (`listen.rs`).

use std::{collections::HashMap, sync::Mutex};

use lru::LruCache;
use ruma::{EventId, OwnedEventId};

use super::{EventMeta, NewTimelineEvent, Persisted, StoredEvent};

pub(crate) struct EventCache {
    inner: Mutex<Inner>,
}

struct Inner {
    events: LruCache<OwnedEventId, StoredEvent>,
    /// What the cached events weigh ([`weight`]), at most `budget`.
    bytes: usize,
    budget: usize,
    /// Counts writes to events (see [`EventCache::remember`]).
    writes: u64,
}

/// About what a cached event takes in memory: its JSON (kept whole, and
/// its content again) and the fields parsed out of it.
fn weight(event: &StoredEvent) -> usize {
    event.pdu.json.len() + event.pdu.content.get().len() + 512
}

impl Inner {
    fn put(&mut self, event: StoredEvent) {
        self.bytes += weight(&event);
        if let Some((_, old)) = self.events.push(event.pdu.event_id.clone(), event) {
            self.bytes -= weight(&old);
        }
        while self.bytes > self.budget {
            match self.events.pop_lru() {
                Some((_, old)) => self.bytes -= weight(&old),
                None => break,
            }
        }
    }

    fn pop(&mut self, event_id: &EventId) {
        if let Some(old) = self.events.pop(event_id) {
            self.bytes -= weight(&old);
        }
    }
}

impl EventCache {
    /// A cache holding events up to `budget` bytes ([`weight`]): an event
    /// can be 64 KiB, so a count alone would not bound its memory.
    pub(crate) fn new(budget: usize) -> Self {
        EventCache {
            inner: Mutex::new(Inner {
                events: LruCache::unbounded(),
                bytes: 0,
                budget,
                writes: 0,
            }),
        }
    }

    /// The cached events among `ids` (in order), the IDs to read, and the
    /// write count, to give back to [`Self::remember`].
    fn cached(&self, ids: &[OwnedEventId]) -> (Vec<Option<StoredEvent>>, Vec<OwnedEventId>, u64) {
        let mut cache = self.inner.lock().expect("event cache lock");
        let mut missing = Vec::new();
        let found = ids
            .iter()
            .map(|id| {
                let hit = cache.events.get(id).cloned();
                if hit.is_none() {
                    missing.push(id.clone());
                }
                hit
            })
            .collect();
        (found, missing, cache.writes)
    }

    /// Caches events read when the write count was `writes`. If an event
    /// was written since, what was read may be the version before that
    /// write (an outlier since made part of the timeline, an event since
    /// redacted): nothing is cached then, or the stale version would
    /// outlive the [`Self::forget`] meant to drop it.
    fn remember(&self, events: &[StoredEvent], writes: u64) {
        let mut cache = self.inner.lock().expect("event cache lock");
        if cache.writes != writes {
            return;
        }
        for event in events {
            cache.put(event.clone());
        }
    }

    /// The auth events of `event_id`, if cached (they never change: not
    /// when it is redacted, expired or rejected). Leaves the LRU order as
    /// it is: a walk of an auth chain is no use of each event.
    pub(crate) fn auth_events(&self, event_id: &EventId) -> Option<Vec<OwnedEventId>> {
        let cache = self.inner.lock().expect("event cache lock");
        cache.events.peek(event_id).map(|e| e.pdu.auth_events.clone())
    }

    /// The write count, to give to [`Self::written`] before a write.
    pub(crate) fn writes(&self) -> u64 {
        self.inner.lock().expect("event cache lock").writes
    }

    /// An event just written into the timeline (`new`, as `persisted`),
    /// with `writes` the count read before the write began: dropped as by
    /// [`Self::forget`], and cached as written (the next event's parent is
    /// read at once) unless another write came in between, which may have
    /// changed it since, or the event is rejected or about to be redacted.
    pub(crate) fn written(&self, new: &NewTimelineEvent, persisted: &Persisted, writes: u64) {
        let mut cache = self.inner.lock().expect("event cache lock");
        let unchanged = cache.writes == writes;
        cache.writes += 1;
        cache.pop(&new.pdu.event_id);
        let (rejected, soft_failed) = new.status.row_flags();
        if rejected.is_some() || !unchanged || !persisted.earlier_redactions.is_empty() {
            return;
        }
        let event = StoredEvent {
            pdu: new.pdu.clone(),
            meta: EventMeta {
                stream_ordering: persisted.stream_ordering,
                outlier: false,
                rejected: None,
                soft_failed,
                redacted_by: None,
                state_group_before: Some(persisted.state_group_before),
                state_group_after: Some(persisted.state_group_after),
                replaces_state: new.replaces_state.clone(),
                txn: new.txn.as_ref().map(|t| (t.device_id.clone(), t.txn_id.clone())),
            },
        };
        cache.put(event);
    }

    /// Drops an event just written.
    pub(crate) fn forget(&self, event_id: &EventId) {
        let mut cache = self.inner.lock().expect("event cache lock");
        cache.writes += 1;
        cache.pop(event_id);
    }

    /// Drops every event (what others rewrote may have gone unheard).
    pub(crate) fn forget_all(&self) {
        let mut cache = self.inner.lock().expect("event cache lock");
        cache.writes += 1;
        cache.events.clear();
        cache.bytes = 0;
    }

    /// `ids` in order (missing skipped): from the cache, the rest from
    /// `load`, which is given the IDs not cached.
    pub(crate) async fn get_or_load<F, Fut, E>(&self, ids: &[OwnedEventId], load: F) -> Result<Vec<StoredEvent>, E>
    where
        F: FnOnce(Vec<OwnedEventId>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<StoredEvent>, E>>,
    {
        let (mut found, missing, writes) = self.cached(ids);
        if !missing.is_empty() {
            let loaded = load(missing).await?;
            self.remember(&loaded, writes);
            let loaded: HashMap<&EventId, &StoredEvent> = loaded.iter().map(|e| (&*e.pdu.event_id, e)).collect();
            for (slot, id) in found.iter_mut().zip(ids).filter(|(f, _)| f.is_none()) {
                *slot = loaded.get(&**id).map(|e| (*e).clone());
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}
