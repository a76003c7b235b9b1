//! A page of a room's past from `/backfill` entering the timeline, as a
//! batch.
//!
//! History comes a page at a time (up to a hundred events, oldest
//! first), and nearly always as a line of events whose parents and auth
//! events are the page's own or already held. Such an event needs no
//! storage round trip of its own: one read fetches everything the page
//! refers to, the state before each event is the state after its parent
//! (kept in memory across the page), the checks run against events in
//! memory, and one write stores the page. An event that is not that
//! simple — a parent or auth event neither held nor in the page (fetched
//! from the sender), parents whose states differ (a fork to resolve) —
//! goes, after what the batch holds is written, through the same path as
//! a live event ([`super::inbound::receive_backfilled_one`]).
//!
//! The checks are the same either way: the spec's checks on receipt,
//! but no soft failure (it is the past) and no effect on the room's
//! current state.

use std::{collections::HashMap, sync::Arc};

use ruma::{OwnedEventId, ServerName, events::StateEventType, room_version_rules::RoomVersionRules};

use super::{
    RoomError,
    inbound::{Outcome, receive_backfilled_one},
    persist::{Backfilled, persist_backfilled},
};
use crate::{
    event_checks::{self, CheckError},
    events::Pdu,
    services::Services,
    state::StateMap,
    storage::{RoomInfo, StateGroupId, StateWrite, StoredEvent, TimelineStatus},
};

/// Stores history fetched from `origin`, oldest first (depth; among equal
/// depths, descending event ID: each stored event takes the next lower
/// stream ordering, so `/messages`, which orders by (depth, stream
/// ordering), shows them in the `/backfill` walk's order; see
/// docs/history.md). Returns how many events were added to the timeline.
pub async fn receive_backfilled(
    svc: &Services,
    origin: &ServerName,
    room: &RoomInfo,
    mut events: Vec<Pdu>,
) -> Result<usize, RoomError> {
    events.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| b.event_id.cmp(&a.event_id)));
    let rules = room
        .version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(room.version.to_string()))?;
    let mut page = Page::start(svc, room, rules, &events).await?;
    let mut added = 0;
    for event in events {
        if page.holds(&event.event_id) {
            continue;
        }
        if let Some((before, before_map)) = page.simple_state_before(&event).await? {
            match page.check(&event, &before_map).await {
                Ok(status) => {
                    page.take(event, before, before_map, status);
                    added += 1;
                    if page.pending_states >= KEPT_STATES {
                        page.flush().await?;
                    }
                }
                Err(CheckError::Storage(e)) => return Err(RoomError::Storage(e)),
                Err(e) => {
                    tracing::info!(event_id = %event.event_id, error = %e, "a backfilled event could not be stored")
                }
            }
            continue;
        }
        page.flush().await?;
        let id = event.event_id.clone();
        match receive_backfilled_one(svc, origin, room, event).await {
            Ok(Outcome::AlreadyHeld) => {}
            Ok(_) => {
                added += 1;
                page.reload(&id).await?;
            }
            Err(RoomError::Storage(e)) => return Err(RoomError::Storage(e)),
            Err(e) => tracing::info!(event_id = %id, error = %e, "a backfilled event could not be stored"),
        }
    }
    page.flush().await?;
    Ok(added)
}

/// A state the batch knows: a stored group, or the state after an event
/// (of the page) whose group storage assigns when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StateRef {
    Group(StateGroupId),
    After(OwnedEventId),
}

/// An event of the page the batch took (stored or waiting to be).
struct Taken {
    pdu: Arc<Pdu>,
    after: StateRef,
    /// The state after it, kept for the last few events taken only (see
    /// [`KEPT_STATES`]).
    after_map: Option<Arc<StateMap>>,
}

/// How many of the last events taken keep the state after them in
/// memory. A page is nearly always a line, each event the child of the
/// one before; keeping every state a page's state events make would cost
/// a copy of the room's state each (thousands of entries in a big room).
/// A parent whose state was let go sends its child down the slow path.
/// The batch is also written once it holds this many events that change
/// the state (each waits with the states before and after it).
const KEPT_STATES: usize = 4;

struct Page<'a> {
    svc: &'a Services,
    room: &'a RoomInfo,
    rules: RoomVersionRules,
    /// What storage held, when the page came, of the events it refers to
    /// (itself, parents, auth events), and the events stored since by the
    /// slow path.
    held: HashMap<OwnedEventId, StoredEvent>,
    taken: HashMap<OwnedEventId, Taken>,
    /// The taken events whose `after_map` is kept, oldest first.
    kept: std::collections::VecDeque<OwnedEventId>,
    /// Taken and not yet written.
    pending: Vec<Backfilled>,
    /// How many of `pending` change the state.
    pending_states: usize,
}

impl<'a> Page<'a> {
    /// Reads in one go everything the page's events refer to.
    async fn start(
        svc: &'a Services,
        room: &'a RoomInfo,
        rules: RoomVersionRules,
        events: &[Pdu],
    ) -> Result<Page<'a>, RoomError> {
        let mut wanted: Vec<OwnedEventId> = Vec::with_capacity(events.len() * 6);
        for event in events {
            wanted.push(event.event_id.clone());
            wanted.extend(event.prev_events.iter().cloned());
            wanted.extend(event.auth_events.iter().cloned());
            wanted.extend(event_checks::implied_create(&rules, event));
        }
        wanted.sort_unstable();
        wanted.dedup();
        let held = svc
            .storage
            .events(&wanted)
            .await?
            .into_iter()
            .map(|e| (e.pdu.event_id.clone(), e))
            .collect();
        Ok(Page {
            svc,
            room,
            rules,
            held,
            taken: HashMap::new(),
            kept: std::collections::VecDeque::new(),
            pending: Vec::new(),
            pending_states: 0,
        })
    }

    /// Whether the event is in the room's timeline already (or taken).
    fn holds(&self, id: &OwnedEventId) -> bool {
        self.taken.contains_key(id) || self.timeline_event(id).is_some()
    }

    fn timeline_event(&self, id: &OwnedEventId) -> Option<&StoredEvent> {
        self.held
            .get(id)
            .filter(|e| !e.meta.outlier && e.pdu.room_id == self.room.room_id)
    }

    /// An event as the checks see it: the page's or held, with whether it
    /// was rejected.
    fn known(&self, id: &OwnedEventId) -> Option<(&Pdu, bool)> {
        match self.taken.get(id) {
            Some(taken) => Some((&*taken.pdu, taken.pdu.rejected)),
            None => self.held.get(id).map(|e| (&*e.pdu, e.meta.rejected.is_some())),
        }
    }

    /// The state before `pdu` when the batch can take it: every auth event
    /// known, every parent in the timeline or taken, and one state after
    /// all of them. `None` sends it down the slow path.
    async fn simple_state_before(&self, pdu: &Pdu) -> Result<Option<(StateRef, Arc<StateMap>)>, RoomError> {
        let auth_known = pdu
            .auth_events
            .iter()
            .chain(event_checks::implied_create(&self.rules, pdu).as_ref())
            .all(|id| self.known(id).is_some());
        if !auth_known || pdu.prev_events.is_empty() {
            return Ok(None);
        }
        let mut state: Option<StateRef> = None;
        let mut in_memory: Option<Arc<StateMap>> = None;
        for prev in &pdu.prev_events {
            let after = match (self.taken.get(prev), self.timeline_event(prev)) {
                (Some(taken), _) => {
                    if in_memory.is_none() {
                        in_memory = taken.after_map.clone();
                    }
                    taken.after.clone()
                }
                (None, Some(held)) => match held.meta.state_group_after {
                    Some(group) => StateRef::Group(group),
                    None => return Ok(None),
                },
                (None, None) => return Ok(None),
            };
            match &state {
                Some(seen) if *seen != after => return Ok(None),
                _ => state = Some(after),
            }
        }
        let Some(state) = state else {
            return Ok(None);
        };
        let map = match (&state, in_memory) {
            (_, Some(map)) => map,
            (StateRef::Group(group), None) => self.svc.state.group(*group).await?,
            (StateRef::After(_), None) => return Ok(None),
        };
        Ok(Some((state, map)))
    }

    /// Steps 4 and 5 of the checks on receipt, against the events in
    /// memory: accepted, or rejected with the reason.
    async fn check(&self, pdu: &Pdu, before: &StateMap) -> Result<TimelineStatus, CheckError> {
        let create = event_checks::implied_create(&self.rules, pdu);
        let auth = pdu
            .auth_events
            .iter()
            .chain(create.as_ref())
            .filter_map(|id| self.known(id));
        let verdict = match event_checks::auth_events_allow(&self.rules, pdu, auth) {
            // In a room joined with partial state, the members the state
            // lacks come from the event's auth events.
            Ok(())
                if super::partial_state::lacks_members(pdu, before)
                    && super::partial_state::is_partial(self.svc, &self.room.room_id)
                        .await
                        .map_err(|e| CheckError::Invalid(e.to_string()))? =>
            {
                let completed = super::partial_state::with_auth_events(
                    before,
                    pdu.auth_events.iter().filter_map(|id| self.known(id)),
                );
                self.check_against(pdu, &completed).await
            }
            Ok(()) => self.check_against(pdu, before).await,
            Err(e) => Err(e),
        };
        match verdict {
            Ok(()) => Ok(TimelineStatus::Accepted),
            Err(CheckError::Rejected(reason)) => {
                tracing::info!(event_id = %pdu.event_id, %reason, "rejected");
                Ok(TimelineStatus::Rejected(reason))
            }
            Err(e) => Err(e),
        }
    }

    /// Step 5: against the state before, whose events are nearly always
    /// the page's or its auth events (read with the page).
    async fn check_against(&self, pdu: &Pdu, before: &StateMap) -> Result<(), CheckError> {
        let keys = event_checks::auth_keys(&self.rules, pdu)?;
        let ids: Vec<&OwnedEventId> = keys.iter().filter_map(|k| before.get(k)).collect();
        let unknown: Vec<OwnedEventId> = ids
            .iter()
            .filter(|id| self.known(id).is_none())
            .map(|id| (*id).clone())
            .collect();
        let read = if unknown.is_empty() {
            Vec::new()
        } else {
            self.svc.storage.events(&unknown).await?
        };
        let events = ids
            .iter()
            .filter_map(|id| self.known(id).map(|(pdu, _)| pdu))
            .chain(read.iter().map(|e| &*e.pdu));
        event_checks::state_allows(&self.rules, pdu, events)
    }

    /// Takes a checked event into the batch.
    fn take(&mut self, mut pdu: Pdu, before: StateRef, before_map: Arc<StateMap>, status: TimelineStatus) {
        pdu.rejected = matches!(status, TimelineStatus::Rejected(_));
        let changes_state = status == TimelineStatus::Accepted && pdu.state_key.is_some();
        let (after, after_map) = match &pdu.state_key {
            Some(state_key) if changes_state => {
                let mut map = (*before_map).clone();
                map.insert(
                    (StateEventType::from(pdu.kind.to_string()), state_key.clone()),
                    pdu.event_id.clone(),
                );
                self.pending_states += 1;
                (StateRef::After(pdu.event_id.clone()), Arc::new(map))
            }
            _ => (before.clone(), before_map.clone()),
        };
        let pdu = Arc::new(pdu);
        self.taken.insert(
            pdu.event_id.clone(),
            Taken {
                pdu: pdu.clone(),
                after,
                after_map: Some(after_map.clone()),
            },
        );
        self.kept.push_back(pdu.event_id.clone());
        if self.kept.len() > KEPT_STATES
            && let Some(old) = self.kept.pop_front()
            && let Some(taken) = self.taken.get_mut(&old)
        {
            taken.after_map = None;
        }
        self.pending.push(Backfilled {
            pdu,
            before: match before {
                StateRef::Group(group) => StateWrite::Existing(group),
                StateRef::After(id) => StateWrite::AfterEvent(id),
            },
            before_map,
            after_map,
            status,
        });
    }

    /// Writes what the batch took so far.
    async fn flush(&mut self) -> Result<(), RoomError> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_states = 0;
        persist_backfilled(self.svc, pending, &self.rules).await
    }

    /// An event the slow path stored: its children may be taken.
    async fn reload(&mut self, id: &OwnedEventId) -> Result<(), RoomError> {
        if let Some(event) = self.svc.storage.event(id).await? {
            self.held.insert(id.clone(), event);
        }
        Ok(())
    }
}
