//! Events from other servers entering a room held here, whatever route
//! they came by (`/send`, `/get_missing_events`, ...): the checks on
//! receipt ([`crate::event_checks`]), the missing pieces fetched from the
//! sender (auth events, parents, the state at a gap), the state before the
//! event (resolved over its parents), then storage as accepted,
//! soft-failed or rejected, and the room's current state resolved over its
//! forward extremities.
//!
//! For a `/send` transaction, the missing pieces are fetched before the
//! room's lock is taken ([`Prefetched`]): a slow or silent sender holds up
//! its own events, never the room's other work (local sends, other
//! servers' events). A backfilled event that `super::backfilled` could
//! not take in its batch still fetches them under the lock of the backfill.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use ruma::{
    EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UInt,
    api::federation::{
        authorization::get_event_authorization,
        event::{get_event, get_missing_events, get_room_state_ids},
    },
    events::StateEventType,
    room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue;

use super::{
    RoomError,
    persist::{NewCurrent, ToPersist, persist_pdu},
};
use crate::{
    event_checks::{self, CheckError},
    events::Pdu,
    services::Services,
    state::{StateMap, key, resolve},
    storage::{EventKey, RoomInfo, StateGroupId, StateWrite, StorageError, StoredEvent, TimelineStatus},
};

fn snapshot(state: &StateMap) -> StateWrite {
    StateWrite::Delta {
        base: None,
        changes: state.iter().map(|(k, id)| (k.clone(), id.clone())).collect(),
    }
}

/// Most events one gap is filled with through `/get_missing_events`.
const MISSING_EVENTS_LIMIT: u32 = 20;

/// What became of a received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    SoftFailed,
    Rejected(String),
    AlreadyHeld,
}

/// Whether `event` is held in the timeline of `room_id` (not as an
/// outlier, not of another room).
fn in_room_timeline(event: &StoredEvent, room_id: &RoomId) -> bool {
    !event.meta.outlier && event.pdu.room_id == room_id
}

/// For [`Receiver::join_run`]: a storage error is passed on; any other
/// means the event does not fit the run (`None`), and is received on its
/// own, which reports it.
fn or_fall_back<T>(result: Result<T, RoomError>) -> Result<Option<T>, StorageError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(RoomError::Storage(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

impl From<resolve::ResolveError> for RoomError {
    fn from(e: resolve::ResolveError) -> Self {
        match e {
            resolve::ResolveError::Storage(e) => RoomError::Storage(e),
            e => RoomError::Invalid(e.to_string()),
        }
    }
}

/// The room a raw PDU names (before anything else is parsed).
pub fn room_of(raw: &RawValue) -> Option<ruma::OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct Room {
        room_id: ruma::OwnedRoomId,
    }
    serde_json::from_str::<Room>(raw.get()).ok().map(|r| r.room_id)
}

/// Receives events from `origin` for a room this server is in, in the
/// order given, under one hold of the room's lock (the database's too,
/// with several processes: taken once for a transaction's events of the
/// room, not once each). `version` is the room's. Each event's ID (once
/// its checks on receipt computed it) and outcome; a failure of storage
/// ends it all.
pub async fn receive_pdus(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    version: &RoomVersionId,
    raws: &[&RawValue],
) -> Result<Vec<(Option<OwnedEventId>, Result<Outcome, RoomError>)>, StorageError> {
    // Format, signatures and hashes first, on every core, before the lock.
    let owned: Vec<Box<RawValue>> = raws.iter().map(|raw| (*raw).to_owned()).collect();
    let checked: Vec<Result<Pdu, CheckError>> = event_checks::check_signed_all(svc, version, owned)
        .await
        .into_iter()
        .map(|pdu| match pdu {
            Ok(pdu) if pdu.room_id != room_id => Err(CheckError::Invalid("the event is for another room".to_owned())),
            other => other,
        })
        .collect();
    // What the sender must give (auth events, the events of a gap, the
    // state across it), fetched before the lock: the room's other work
    // never waits on a remote server.
    let unlocked = Mutex::new(None);
    let prefetched = Receiver::new(svc, origin, room_id, version, &unlocked, None)
        .prefetch(&checked)
        .await?;
    let _guard = svc.rooms.lock(room_id).await?;
    // The room's forward extremities, read once and kept up to date by
    // each event written, while the lock is held (no other writer moves
    // them meanwhile: not in this process, not in another).
    let head = Mutex::new(None);
    let mut receiver = Receiver::new(svc, origin, room_id, version, &head, Some(&prefetched));
    // Which of the transaction's events are new: one read under the lock.
    let ids: Vec<OwnedEventId> = checked
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|p| p.event_id.clone())
        .collect();
    let held: HashSet<OwnedEventId> = svc
        .storage
        .events(&ids)
        .await?
        .into_iter()
        .filter(|e| in_room_timeline(e, room_id))
        .map(|e| e.pdu.event_id.clone())
        .collect();
    receiver.fresh = Mutex::new(ids.into_iter().filter(|id| !held.contains(id)).collect());
    let mut run = Run::default();
    let mut outcomes = Vec::with_capacity(raws.len());
    for pdu in checked {
        let event_id = pdu.as_ref().ok().map(|p| p.event_id.clone());
        let outcome = match pdu {
            Ok(pdu) => match receiver.join_run(&mut run, &pdu).await? {
                Some(outcome) => Ok(outcome),
                None => {
                    receiver.flush(&mut run).await?;
                    receiver.receive_prefetched(pdu).await
                }
            },
            Err(e) => Err(e.into()),
        };
        match outcome {
            Err(RoomError::Storage(e)) => return Err(e),
            outcome => outcomes.push((event_id, outcome)),
        }
    }
    receiver.flush(&mut run).await?;
    Ok(outcomes)
}

/// A transaction's events written together, in one write, when each
/// simply extends the one before: a live event that changes no state (and
/// redacts nothing), whose only parent is the room's only forward
/// extremity (the tip). The
/// state before each is then the state after the tip, and the current
/// state is that same state: the auth check is the soft-fail check, and
/// nothing needs the earlier events stored to check the later ones. An
/// event that does not fit is received on its own, once the run before it
/// is written ([`Receiver::flush`]).
#[derive(Default)]
struct Run {
    /// The event the next one must build on, once the run has one.
    tip: Option<OwnedEventId>,
    /// The state after the tip, before each event of the run.
    state: Option<(StateGroupId, Arc<StateMap>)>,
    /// The room version's rules, once the run has an event.
    rules: Option<RoomVersionRules>,
    queued: Vec<ToPersist>,
}

/// What the sender of a transaction gave before the room's lock was taken
/// ([`Receiver::prefetch`]); under the lock, nothing more is asked of it
/// (an event whose gap it could not fill is refused, as when it is asked).
#[derive(Default)]
struct Prefetched {
    /// The events of the gap before a transaction's event
    /// (`/get_missing_events`), oldest first, by the event.
    pulled: HashMap<OwnedEventId, Vec<Pdu>>,
    /// The state after a parent not held, at the edge of a gap, as the
    /// sender says (the state before it, and it).
    after_parent: HashMap<OwnedEventId, Arc<StateMap>>,
    /// The state before an event at the edge of a gap, as the sender says,
    /// where the states after its parents could not be had.
    before_event: HashMap<OwnedEventId, StateMap>,
}

/// One event of a `/backfill` page that [`super::backfilled`] could not
/// take in its batch (parents or auth events not held, a fork to
/// resolve): the same checks as live events, but no soft failure (it is
/// the past), no effect on the current state, a negative stream ordering.
/// The state before an event whose parents are not held comes from
/// `origin`'s `/state_ids`.
pub(super) async fn receive_backfilled_one(
    svc: &Services,
    origin: &ServerName,
    room: &RoomInfo,
    pdu: Pdu,
) -> Result<Outcome, RoomError> {
    Receiver {
        svc,
        origin,
        room_id: &room.room_id,
        version: &room.version,
        mode: Mode::Backfill,
        head: &Mutex::new(None),
        prefetched: None,
        fresh: Mutex::default(),
    }
    .receive(pdu, false)
    .await
}

/// Live events move the room on; backfilled ones fill in its past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    Backfill,
}

struct Receiver<'a> {
    svc: &'a Services,
    origin: &'a ServerName,
    room_id: &'a RoomId,
    version: &'a RoomVersionId,
    mode: Mode,
    /// The room's forward extremities, once read under the room's lock
    /// (live events only).
    head: &'a Mutex<Option<Vec<OwnedEventId>>>,
    /// What was fetched before the lock, for a transaction: with it, no
    /// remote request is made (`None`: they are made as needed).
    prefetched: Option<&'a Prefetched>,
    /// A transaction's events not in the timeline when the lock was taken,
    /// less those stored since: known not held without a read.
    fresh: Mutex<HashSet<OwnedEventId>>,
}

impl<'a> Receiver<'a> {
    /// A receiver of live events.
    fn new(
        svc: &'a Services,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        version: &'a RoomVersionId,
        head: &'a Mutex<Option<Vec<OwnedEventId>>>,
        prefetched: Option<&'a Prefetched>,
    ) -> Self {
        Receiver {
            svc,
            origin,
            room_id,
            version,
            mode: Mode::Live,
            head,
            prefetched,
            fresh: Mutex::default(),
        }
    }

    /// Fetches from the sender, without the room's lock, what the
    /// transaction's events lack: their missing auth events (kept as
    /// outliers), the events of a gap before one (`/get_missing_events`)
    /// with their auth events, and the state across the gap's far edge.
    /// A failure of the sender only leaves the piece out.
    async fn prefetch(&self, checked: &[Result<Pdu, CheckError>]) -> Result<Prefetched, StorageError> {
        let mut prefetched = Prefetched::default();
        // One read for the transaction: its events, their parents and auth
        // events (in the usual case, all that is looked at).
        let pdus: Vec<&Pdu> = checked.iter().filter_map(|p| p.as_ref().ok()).collect();
        let ids: Vec<OwnedEventId> = pdus
            .iter()
            .flat_map(|p| std::iter::once(&p.event_id).chain(&p.prev_events).chain(&p.auth_events))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let held: HashMap<OwnedEventId, StoredEvent> = self
            .svc
            .storage
            .events(&ids)
            .await?
            .into_iter()
            .map(|e| (e.pdu.event_id.clone(), e))
            .collect();
        let in_timeline = |id: &OwnedEventId| held.get(id).is_some_and(|e| in_room_timeline(e, self.room_id));
        let mut earlier: HashSet<&OwnedEventId> = HashSet::new();
        for pdu in pdus {
            if in_timeline(&pdu.event_id) {
                continue;
            }
            let gap = pdu.prev_events.iter().any(|p| !earlier.contains(p) && !in_timeline(p));
            let auth_missing = pdu
                .auth_events
                .iter()
                .any(|a| !held.contains_key(a) && !earlier.contains(a));
            let outcome = match (gap, auth_missing) {
                (false, false) => Ok(()),
                (false, true) => self.fetch_auth_chain_but(pdu, &earlier).await,
                (true, _) => self.prefetch_one(pdu, &earlier, &mut prefetched).await,
            };
            earlier.insert(&pdu.event_id);
            match outcome {
                Err(RoomError::Storage(e)) => return Err(e),
                Err(e) => tracing::info!(event_id = %pdu.event_id, error = %e, "fetching what an event lacks"),
                Ok(()) => {}
            }
        }
        Ok(prefetched)
    }

    /// [`Self::prefetch`] for an event after a gap.
    async fn prefetch_one(
        &self,
        pdu: &Pdu,
        earlier: &HashSet<&OwnedEventId>,
        into: &mut Prefetched,
    ) -> Result<(), RoomError> {
        self.fetch_auth_chain_but(pdu, earlier).await?;
        // (The transaction's earlier events count as held: they come first.)
        let pulled = self.pull_missing_parents(pdu, earlier).await?;
        let mut coming: HashSet<&OwnedEventId> = earlier.clone();
        for event in &pulled {
            self.fetch_auth_chain_but(event, &coming).await?;
            // The far edge of the gap: a parent neither held nor coming.
            let mut edge = false;
            for prev in &event.prev_events {
                if coming.contains(prev) || pulled.iter().any(|e| e.event_id == *prev) {
                    continue;
                }
                let held = self.svc.storage.event(prev).await?;
                if held.as_ref().is_some_and(|e| e.meta.state_group_after.is_some()) {
                    continue;
                }
                match self.state_after_parent_from_origin(prev, held).await {
                    Ok(state) => {
                        into.after_parent.insert(prev.clone(), state);
                    }
                    Err(RoomError::Storage(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::info!(event_id = %event.event_id, error = %e, "state after a missing parent not known");
                        edge = true;
                    }
                }
            }
            if edge {
                match self.state_before_from_origin(&event.event_id).await {
                    Ok(state) => {
                        into.before_event.insert(event.event_id.clone(), state);
                    }
                    Err(RoomError::Storage(e)) => return Err(e.into()),
                    Err(e) => tracing::info!(event_id = %event.event_id, error = %e, "state before an event not known"),
                }
            }
            coming.insert(&event.event_id);
        }
        into.pulled.insert(pdu.event_id.clone(), pulled);
        Ok(())
    }

    /// Receives a transaction's event under the room's lock, with what
    /// [`Self::prefetch`] fetched: the events of the gap before it first.
    async fn receive_prefetched(&self, pdu: Pdu) -> Result<Outcome, RoomError> {
        if let Some(pulled) = self.prefetched.and_then(|p| p.pulled.get(&pdu.event_id))
            && !self.in_timeline(&pdu.event_id).await?
        {
            self.receive_pulled(pulled.clone()).await;
        }
        self.receive(pdu, true).await
    }
    fn rules(&self) -> Result<RoomVersionRules, RoomError> {
        self.version
            .rules()
            .ok_or_else(|| RoomError::UnsupportedVersion(self.version.to_string()))
    }

    async fn in_timeline(&self, id: &ruma::EventId) -> Result<bool, RoomError> {
        if self.fresh.lock().expect("fresh events").contains(id) {
            return Ok(false);
        }
        Ok(self
            .svc
            .storage
            .event(id)
            .await?
            .is_some_and(|e| in_room_timeline(&e, self.room_id)))
    }

    /// `fill_gaps`: whether missing parents may be fetched (not when
    /// processing what such a fetch brought).
    async fn receive(&self, pdu: Pdu, fill_gaps: bool) -> Result<Outcome, RoomError> {
        if self.in_timeline(&pdu.event_id).await? {
            return Ok(Outcome::AlreadyHeld);
        }
        let rules = self.rules()?;
        self.fetch_auth_chain(&pdu).await?;

        let mut missing = Vec::new();
        for prev in &pdu.prev_events {
            if !self.in_timeline(prev).await? {
                missing.push(prev.clone());
            }
        }
        if !missing.is_empty() && fill_gaps && self.prefetched.is_none() {
            let pulled = self.pull_missing_parents(&pdu, &HashSet::new()).await?;
            self.receive_pulled(pulled).await;
            missing.clear();
            for prev in &pdu.prev_events {
                if !self.in_timeline(prev).await? {
                    missing.push(prev.clone());
                }
            }
        }
        if !missing.is_empty() && fill_gaps {
            // An event pushed to this server whose parents its sender will
            // not give: not taken (as Synapse refuses it). Its sender's next
            // event asks again; nothing is built on a history not seen.
            return Err(RoomError::Invalid(format!(
                "the parents of {} could not be found: {}",
                pdu.event_id,
                missing.iter().map(|id| id.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let before = if missing.is_empty() {
            self.state_after_parents(&pdu, &rules).await?
        } else {
            // A pulled event (from `/get_missing_events` or `/backfill`)
            // past the end of what was pulled: the gap stays (its edge is a
            // backward extremity, for later backfill); the state across it
            // comes from the sender.
            self.state_from_origin(&pdu).await?
        };

        // The states after the other forward extremities: read once, for
        // the soft-fail check and the new current state.
        let mut others = Vec::new();
        // In a room joined with partial state, what the state lacks (the
        // members left out) is taken from the event's auth events.
        let checked_against = super::partial_state::completed_with_auth_events(self.svc, &pdu, &before.1).await?;
        let status = match event_checks::check_auth(self.svc, &rules, &pdu, &checked_against).await {
            Ok(()) if self.mode == Mode::Backfill => TimelineStatus::Accepted,
            Ok(()) => {
                others = self.other_extremity_states(&pdu).await?;
                let current = self.current_with(&before.1, &others, &rules).await?;
                let current = super::partial_state::completed_with_auth_events(self.svc, &pdu, &current).await?;
                match event_checks::check_against(self.svc, &rules, &pdu, &current).await {
                    Ok(()) => TimelineStatus::Accepted,
                    Err(CheckError::Rejected(reason)) => {
                        tracing::info!(event_id = %pdu.event_id, %reason, "soft-failed");
                        TimelineStatus::SoftFailed
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(CheckError::Rejected(reason)) => {
                tracing::info!(event_id = %pdu.event_id, %reason, "rejected");
                TimelineStatus::Rejected(reason)
            }
            Err(e) => return Err(e.into()),
        };
        let current = match status {
            TimelineStatus::Accepted if self.mode == Mode::Live => {
                self.new_current(&pdu, &before.1, others, &rules).await?
            }
            _ => NewCurrent::Unchanged,
        };
        let outcome = match &status {
            TimelineStatus::Accepted => Outcome::Accepted,
            TimelineStatus::SoftFailed => Outcome::SoftFailed,
            TimelineStatus::Rejected(r) => Outcome::Rejected(r.clone()),
        };
        let moves_head = status == TimelineStatus::Accepted && self.mode == Mode::Live;
        let prevs = pdu.prev_events.clone();
        self.fresh.lock().expect("fresh events").remove(&pdu.event_id);
        let sent = persist_pdu(
            self.svc,
            ToPersist {
                pdu,
                before: Some(before),
                current,
                status,
                txn: None,
                backfilled: self.mode == Mode::Backfill,
            },
            &rules,
        )
        .await?;
        // As storage moved them: the parents of an accepted live event are
        // extremities no more; it is one unless it has children.
        if moves_head && let Some(head) = self.head.lock().expect("room head").as_mut() {
            head.retain(|id| !prevs.contains(id));
            if sent.forward_extremity {
                head.push(sent.pdu.event_id.clone());
            }
        }
        Ok(outcome)
    }

    /// Makes sure every event in `pdu`'s auth chain is held: what is
    /// missing comes from the sender's `/event_auth`, checked, and is kept
    /// as outliers (rejected where it fails its own auth events).
    async fn fetch_auth_chain(&self, pdu: &Pdu) -> Result<(), RoomError> {
        self.fetch_auth_chain_but(pdu, &HashSet::new()).await
    }

    /// [`Self::fetch_auth_chain`], the events of `coming` counted as held
    /// (they are stored before `pdu`).
    async fn fetch_auth_chain_but(&self, pdu: &Pdu, coming: &HashSet<&OwnedEventId>) -> Result<(), RoomError> {
        let mut missing = false;
        for id in pdu.auth_events.iter().filter(|id| !coming.contains(id)) {
            if self.svc.storage.event(id).await?.is_none() {
                missing = true;
            }
        }
        // (With a transaction's prefetch, what it could not get is not
        // asked again: the auth checks refuse the event.)
        if !missing || self.prefetched.is_some() {
            return Ok(());
        }
        let request = get_event_authorization::v1::Request::new(self.room_id.to_owned(), pdu.event_id.clone());
        let chain = match self.svc.federation.send(self.origin, request).await {
            Ok(response) => response.auth_chain,
            Err(e) => {
                tracing::info!(event_id = %pdu.event_id, error = %e, "cannot fetch the auth chain");
                return Ok(());
            }
        };
        super::outliers::check_and_keep(self.svc, self.version, self.room_id, chain).await
    }

    async fn keep_outliers(&self, events: Vec<Pdu>) -> Result<(), RoomError> {
        super::outliers::keep(self.svc, &self.rules()?, events).await.map(drop)
    }

    /// The events of the gap before `pdu` from its sender
    /// (`/get_missing_events`), checked, oldest first (none when it fails).
    async fn pull_missing_parents(&self, pdu: &Pdu, coming: &HashSet<&OwnedEventId>) -> Result<Vec<Pdu>, RoomError> {
        let mut earliest: Vec<OwnedEventId> = self
            .svc
            .storage
            .forward_extremities(self.room_id)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        earliest.extend(coming.iter().map(|id| (*id).clone()));
        let mut request =
            get_missing_events::v1::Request::new(self.room_id.to_owned(), earliest, vec![pdu.event_id.clone()]);
        request.limit = UInt::from(MISSING_EVENTS_LIMIT);
        let events = match self.svc.federation.send(self.origin, request).await {
            Ok(response) => response.events,
            Err(e) => {
                tracing::info!(event_id = %pdu.event_id, error = %e, "get_missing_events failed");
                return Ok(Vec::new());
            }
        };
        let mut checked = Vec::new();
        for raw in &events {
            match event_checks::check_signed(self.svc, self.version, raw).await {
                // (Some servers answer with the event asked about too.)
                Ok(event) if event.event_id == pdu.event_id => {}
                Ok(event) if event.room_id == self.room_id => checked.push(event),
                Ok(_) => {}
                Err(e) => tracing::info!(error = %e, "dropping a missing event"),
            }
        }
        checked.sort_by_key(|e| e.depth);
        Ok(checked)
    }

    /// Receives the events of a gap, oldest first (each as far as it goes).
    async fn receive_pulled(&self, pulled: Vec<Pdu>) {
        for event in pulled {
            let id = event.event_id.clone();
            if let Err(e) = Box::pin(self.receive(event, false)).await {
                tracing::info!(event_id = %id, error = %e, "a missing event could not be processed");
            }
        }
    }

    /// The state before `pdu` from the states after its parents, resolved.
    async fn state_after_parents(
        &self,
        pdu: &Pdu,
        rules: &RoomVersionRules,
    ) -> Result<(StateGroupId, Arc<StateMap>), RoomError> {
        let mut groups = Vec::new();
        for prev in &pdu.prev_events {
            let parent = self.svc.storage.event(prev).await?.ok_or(RoomError::UnknownRoom)?;
            let group = parent
                .meta
                .state_group_after
                .ok_or_else(|| RoomError::Invalid(format!("no state known after {prev}")))?;
            groups.push(group);
        }
        groups.sort_unstable();
        groups.dedup();
        if let [group] = groups.as_slice() {
            return Ok((*group, self.svc.state.group(*group).await?));
        }
        let mut states = Vec::new();
        for group in &groups {
            states.push(self.svc.state.group(*group).await?);
        }
        let resolved = resolve::resolve(self.svc, rules, &states).await?;
        let group = self
            .svc
            .storage
            .store_state_group(self.room_id, snapshot(&resolved))
            .await?;
        let resolved = Arc::new(resolved);
        self.svc.state.remember(group, resolved.clone());
        Ok((group, resolved))
    }

    /// The state before `pdu` when some of its parents are missing (a gap
    /// `/get_missing_events` did not fill): the state after each parent —
    /// from storage for the parents held with their state, else the state
    /// before that parent as the sender says (`/state_ids` at the parent)
    /// plus the parent itself (`/event`) — resolved together, as for any
    /// event with several parents. Asking at the missing parents, not at
    /// `pdu`, is what Synapse does, and what peers that keep the state only
    /// of events they sent can answer. Events not held are fetched and kept
    /// as outliers.
    async fn state_from_origin(&self, pdu: &Pdu) -> Result<(StateGroupId, Arc<StateMap>), RoomError> {
        let state = match self.state_after_each_parent(pdu).await {
            Ok(states) => match states.as_slice() {
                [one] => one.as_ref().clone(),
                _ => resolve::resolve(self.svc, &self.rules()?, &states).await?,
            },
            // A parent the sender cannot give (or gives broken): the state
            // before `pdu` itself, as the sender says.
            Err(e) => match self.prefetched {
                Some(prefetched) => prefetched
                    .before_event
                    .get(&pdu.event_id)
                    .cloned()
                    .ok_or_else(|| RoomError::Invalid(format!("the state before {} is not known", pdu.event_id)))?,
                None => {
                    tracing::info!(event_id = %pdu.event_id, error = %e, "state after the missing parents not known: asking for the state at the event");
                    self.state_before_from_origin(&pdu.event_id).await?
                }
            },
        };
        let group = self
            .svc
            .storage
            .store_state_group(self.room_id, snapshot(&state))
            .await?;
        let state = Arc::new(state);
        self.svc.state.remember(group, state.clone());
        Ok((group, state))
    }

    /// The state after each parent of `pdu` (see [`Self::state_from_origin`]).
    async fn state_after_each_parent(&self, pdu: &Pdu) -> Result<Vec<Arc<StateMap>>, RoomError> {
        let mut states: Vec<Arc<StateMap>> = Vec::new();
        for prev in &pdu.prev_events {
            let held = self.svc.storage.event(prev).await?;
            if let Some(group) = held.as_ref().and_then(|e| e.meta.state_group_after) {
                states.push(self.svc.state.group(group).await?);
                continue;
            }
            states.push(match self.prefetched {
                Some(prefetched) => prefetched
                    .after_parent
                    .get(prev)
                    .cloned()
                    .ok_or_else(|| RoomError::Invalid(format!("the state after {prev} is not known")))?,
                None => self.state_after_parent_from_origin(prev, held).await?,
            });
        }
        if states.is_empty() {
            return Err(RoomError::Invalid(format!("{} has no parents", pdu.event_id)));
        }
        Ok(states)
    }

    /// The state after `prev`, a parent held without a state (`held`) or
    /// not at all, as the sender says: the state before it (`/state_ids`)
    /// and it (fetched and kept as an outlier when not held).
    async fn state_after_parent_from_origin(
        &self,
        prev: &OwnedEventId,
        held: Option<StoredEvent>,
    ) -> Result<Arc<StateMap>, RoomError> {
        let mut state = self.state_before_from_origin(prev).await?;
        // The parent as held (with whether it was rejected): from the
        // lookup above, or once fetched and kept as an outlier.
        let (parent, rejected) = match held {
            Some(event) => (event.pdu.as_ref().clone(), event.meta.rejected.is_some()),
            None => {
                let parent = self.fetch_event(prev).await?;
                if parent.room_id != self.room_id {
                    return Err(RoomError::Invalid(format!("{prev} is an event of another room")));
                }
                self.keep_outliers(vec![parent.clone()]).await?;
                let rejected = self
                    .svc
                    .storage
                    .event(prev)
                    .await?
                    .is_some_and(|e| e.meta.rejected.is_some());
                (parent, rejected)
            }
        };
        if let (Some(state_key), false) = (&parent.state_key, rejected) {
            state.insert(
                key(StateEventType::from(parent.kind.to_string()), state_key),
                parent.event_id.clone(),
            );
        }
        Ok(Arc::new(state))
    }

    /// One event from the sender (`/event`), checked (signatures, hashes,
    /// its ID); which room it is of is the caller's to check.
    async fn fetch_event(&self, id: &EventId) -> Result<Pdu, RoomError> {
        let response = self
            .svc
            .federation
            .send(self.origin, get_event::v1::Request::new(id.to_owned()))
            .await
            .map_err(|e| RoomError::Invalid(format!("cannot fetch {id}: {e}")))?;
        let event = event_checks::check_signed(self.svc, self.version, &response.pdu).await?;
        if event.event_id != *id {
            return Err(RoomError::Invalid(format!("asked for {id}, got {}", event.event_id)));
        }
        Ok(event)
    }

    /// The state before `event_id` as the sender says (`/state_ids`); the
    /// events not held are fetched with `/event` and kept as outliers.
    async fn state_before_from_origin(&self, event_id: &EventId) -> Result<StateMap, RoomError> {
        let request = get_room_state_ids::v1::Request::new(event_id.to_owned(), self.room_id.to_owned());
        let ids = self
            .svc
            .federation
            .send(self.origin, request)
            .await
            .map_err(|e| RoomError::Invalid(format!("cannot get the state at {event_id}: {e}")))?;
        // A state naming an event of another room (held here, or fetched)
        // is a lie about this room's state: the whole answer is refused
        // (leaving the event out instead could drop, say, the power levels,
        // and so hand the room to anyone). An auth chain naming one is
        // only a bad auth chain: that event is not taken, and an event
        // whose auth events it is among fails its auth checks.
        let foreign = |id: &EventId| RoomError::Invalid(format!("the state at {event_id} names {id}, of another room"));
        let in_state: HashSet<&OwnedEventId> = ids.pdu_ids.iter().collect();
        let wanted: Vec<OwnedEventId> = ids.pdu_ids.iter().chain(&ids.auth_chain_ids).cloned().collect();
        let mut held = HashSet::new();
        for event in self.svc.storage.event_keys(&wanted).await? {
            if event.room_id != self.room_id && in_state.contains(&event.event_id) {
                return Err(foreign(&event.event_id));
            }
            held.insert(event.event_id);
        }
        let mut fetched = Vec::new();
        for id in wanted.iter().filter(|id| !held.contains(*id)) {
            let event = self.fetch_event(id).await?;
            if event.room_id != self.room_id {
                if in_state.contains(id) {
                    return Err(foreign(id));
                }
                tracing::info!(%id, "an auth chain names an event of another room: not taken");
                continue;
            }
            fetched.push(event);
        }
        fetched.sort_by_key(|e| e.depth);
        self.keep_outliers(fetched).await?;

        Ok(self
            .svc
            .storage
            .event_keys(&ids.pdu_ids)
            .await?
            .into_iter()
            .filter_map(EventKey::state_entry)
            .collect())
    }

    /// The states after the room's forward extremities that `pdu` does not
    /// name as parents (none when it names them all: the usual case).
    async fn other_extremity_states(&self, pdu: &Pdu) -> Result<Vec<Arc<StateMap>>, RoomError> {
        let mut states = Vec::new();
        for id in self.head().await? {
            if pdu.prev_events.contains(&id) {
                continue;
            }
            if let Some(group) = self
                .svc
                .storage
                .event(&id)
                .await?
                .and_then(|e| e.meta.state_group_after)
            {
                states.push(self.svc.state.group(group).await?);
            }
        }
        Ok(states)
    }

    /// The room's forward extremities (read once under the lock, then
    /// kept up to date by each event written).
    async fn head(&self) -> Result<Vec<OwnedEventId>, RoomError> {
        if let Some(head) = self.head.lock().expect("room head").clone() {
            return Ok(head);
        }
        let read: Vec<OwnedEventId> = (self.svc.storage.forward_extremities(self.room_id).await?)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        *self.head.lock().expect("room head") = Some(read.clone());
        Ok(read)
    }

    /// Takes `pdu` into `run` when it fits ([`Run`]): its outcome, known
    /// once checked (it is written with the run). `None`: it does not fit,
    /// and is to be received on its own. The checks are those of
    /// [`Self::receive`], which would give the same outcome.
    async fn join_run(&self, run: &mut Run, pdu: &Pdu) -> Result<Option<Outcome>, StorageError> {
        // (A redaction changes what the push rules of the events after it
        // see, once carried out after its write: it is taken on its own.)
        let fits = self.mode == Mode::Live
            && pdu.state_key.is_none()
            && pdu.redacts.is_none()
            && pdu.kind != ruma::events::TimelineEventType::RoomRedaction
            && self.fresh.lock().expect("fresh events").contains(&pdu.event_id)
            && !self.prefetched.is_some_and(|p| p.pulled.contains_key(&pdu.event_id));
        if !fits {
            return Ok(None);
        }
        if run.queued.iter().any(|e| e.pdu.event_id == pdu.event_id) {
            // (Twice in a transaction.)
            return Ok(Some(Outcome::AlreadyHeld));
        }
        // (No event of the run changes state: none can be an auth event.)
        if pdu
            .auth_events
            .iter()
            .any(|a| run.queued.iter().any(|e| e.pdu.event_id == *a))
        {
            return Ok(None);
        }
        let tip = match &run.tip {
            Some(tip) => tip.clone(),
            None => match or_fall_back(self.head().await)?.as_deref() {
                Some([only]) => only.clone(),
                _ => return Ok(None),
            },
        };
        if pdu.prev_events.as_slice() != std::slice::from_ref(&tip) {
            return Ok(None);
        }
        let Some(rules) = or_fall_back(self.rules())? else {
            return Ok(None);
        };
        let before = match &run.state {
            Some(state) => state.clone(),
            None => match or_fall_back(self.state_after_parents(pdu, &rules).await)? {
                Some(state) => state,
                None => return Ok(None),
            },
        };
        let Some(checked_against) =
            or_fall_back(super::partial_state::completed_with_auth_events(self.svc, pdu, &before.1).await)?
        else {
            return Ok(None);
        };
        // The state before the event is the current state, with no other
        // extremity to merge: the soft-fail check is this same check.
        let status = match event_checks::check_auth(self.svc, &rules, pdu, &checked_against).await {
            Ok(()) => TimelineStatus::Accepted,
            Err(CheckError::Rejected(reason)) => {
                tracing::info!(event_id = %pdu.event_id, %reason, "rejected");
                TimelineStatus::Rejected(reason)
            }
            Err(CheckError::Storage(e)) => return Err(e),
            Err(_) => return Ok(None),
        };
        let outcome = match &status {
            TimelineStatus::Accepted => {
                run.tip = Some(pdu.event_id.clone());
                Outcome::Accepted
            }
            TimelineStatus::Rejected(reason) => Outcome::Rejected(reason.clone()),
            TimelineStatus::SoftFailed => Outcome::SoftFailed,
        };
        run.state = Some(before.clone());
        run.rules = Some(rules);
        run.queued.push(ToPersist {
            pdu: pdu.clone(),
            before: Some(before),
            current: match status {
                TimelineStatus::Accepted => NewCurrent::AfterEvent,
                _ => NewCurrent::Unchanged,
            },
            status,
            txn: None,
            backfilled: false,
        });
        Ok(Some(outcome))
    }

    /// Writes the events of `run` (one write), and moves the room's head
    /// as storage moved it.
    async fn flush(&self, run: &mut Run) -> Result<(), StorageError> {
        let Run { queued, rules, .. } = std::mem::take(run);
        let Some(rules) = rules.filter(|_| !queued.is_empty()) else {
            return Ok(());
        };
        let prevs: Vec<(Vec<OwnedEventId>, bool)> = queued
            .iter()
            .map(|e| (e.pdu.prev_events.clone(), e.status == TimelineStatus::Accepted))
            .collect();
        let sent = super::persist::persist_run(self.svc, queued, &rules).await?;
        let mut fresh = self.fresh.lock().expect("fresh events");
        let mut head = self.head.lock().expect("room head");
        for (sent, (prevs, accepted)) in sent.iter().zip(prevs) {
            fresh.remove(&sent.pdu.event_id);
            if accepted && let Some(head) = head.as_mut() {
                head.retain(|id| !prevs.contains(id));
                if sent.forward_extremity {
                    head.push(sent.pdu.event_id.clone());
                }
            }
        }
        Ok(())
    }

    /// The state a live event is soft-fail checked against: the room's
    /// current state as it would be with the event's view of the room
    /// merged in, i.e. the resolution of the state before the event with
    /// `others`, the states after the forward extremities it does not build
    /// on (as
    /// Synapse does). Checking against the bare current state would
    /// soft-fail everyone who joined across a gap (an outage, a leave):
    /// their joins are in `before` but not yet in the current state.
    async fn current_with(
        &self,
        before: &Arc<StateMap>,
        others: &[Arc<StateMap>],
        rules: &RoomVersionRules,
    ) -> Result<Arc<StateMap>, RoomError> {
        if others.is_empty() {
            return Ok(before.clone());
        }
        let mut states = vec![before.clone()];
        states.extend(others.iter().cloned());
        Ok(Arc::new(resolve::resolve(self.svc, rules, &states).await?))
    }

    /// The room's state once `pdu` (accepted, with state `before` before
    /// it) is a forward extremity: the state after it when it is the only
    /// one, else the resolution of the states after each (`others`: those
    /// after the extremities it does not build on).
    async fn new_current(
        &self,
        pdu: &Pdu,
        before: &StateMap,
        others: Vec<Arc<StateMap>>,
        rules: &RoomVersionRules,
    ) -> Result<NewCurrent, RoomError> {
        if others.is_empty() {
            return Ok(NewCurrent::AfterEvent);
        }
        let mut after = before.clone();
        if let Some(state_key) = &pdu.state_key {
            after.insert(
                key(StateEventType::from(pdu.kind.to_string()), state_key),
                pdu.event_id.clone(),
            );
        }
        let mut states = vec![Arc::new(after)];
        states.extend(others);
        let previous = self
            .svc
            .state
            .current(self.room_id)
            .await?
            .ok_or(RoomError::UnknownRoom)?;
        // The event is not stored yet: the resolution is given it.
        let pending = [Arc::new(pdu.clone())];
        let resolved = Arc::new(resolve::resolve_with(self.svc, rules, &states, &pending).await?);
        Ok(NewCurrent::Resolved { previous, resolved })
    }
}
