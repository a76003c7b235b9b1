//! Recently read events by ID, for both backends (state and auth events
//! are looked up over and over; pages of timeline are read in bulk and not
//! cached).
//!
//! Process-local: an event changes after it is stored only when an outlier
//! takes its place in the timeline, a redaction or an expiry rewrites it;
//! the process that writes drops it here ([`EventCache::forget`]), and
//! (PostgreSQL) every other process on its notification (`listen.rs`).

use std::{num::NonZeroUsize, sync::Mutex};

use lru::LruCache;
use ruma::{EventId, OwnedEventId};

use super::{EventMeta, NewTimelineEvent, Persisted, StoredEvent};

pub(crate) struct EventCache {
    inner: Mutex<Inner>,
}

struct Inner {
    events: LruCache<OwnedEventId, StoredEvent>,
    /// Counts writes to events (see [`EventCache::remember`]).
    writes: u64,
}

impl EventCache {
    pub(crate) fn new(capacity: usize) -> Self {
        EventCache {
            inner: Mutex::new(Inner {
                events: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("non-zero")),
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
            cache.events.put(event.pdu.event_id.clone(), event.clone());
        }
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
        cache.events.pop(&new.pdu.event_id);
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
        cache.events.put(new.pdu.event_id.clone(), event);
    }

    /// Drops an event just written.
    pub(crate) fn forget(&self, event_id: &EventId) {
        let mut cache = self.inner.lock().expect("event cache lock");
        cache.writes += 1;
        cache.events.pop(event_id);
    }

    /// Drops every event (what others rewrote may have gone unheard).
    pub(crate) fn forget_all(&self) {
        let mut cache = self.inner.lock().expect("event cache lock");
        cache.writes += 1;
        cache.events.clear();
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
            for slot in found.iter_mut().zip(ids).filter(|(f, _)| f.is_none()) {
                *slot.0 = loaded.iter().find(|e| e.pdu.event_id == *slot.1).cloned();
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}
