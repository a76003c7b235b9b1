//! Rooms joined with partial state (a "faster join": the server-server
//! spec's "Joining Rooms", `omit_members`; MSC3706). The join asks the
//! resident server to leave out the member events; the room is usable as
//! soon as the state it did give is checked, and its full state is
//! fetched here, in the background, from the servers in the room.
//!
//! While a room is partial ([`crate::storage::partial_state`]):
//! - events are sent to the servers the resident server named as well as
//!   to those of the members known ([`crate::state::joined`]);
//! - an event received is checked against the state before it completed
//!   with its own auth events where that state has no entry (the members
//!   it lacks): the check the partial state can honestly make;
//! - a full member list (`/members`, `/joined_members`) waits for the full
//!   state ([`wait_until_full`]).
//!
//! The resync ([`resync`]) asks the state at the join of each server in
//! turn ([`super::outliers::state_from`]: its IDs, then the events not held,
//! the members left out), checks them as any received event, checks
//! the events received while partial again against the full state
//! ([`recheck`]: what it refuses is rejected), and adds what the partial
//! state lacked to the room's states, in one transaction with marking the
//! room complete (at a position of the events stream, from which `/sync`
//! sends it in full to the clients that were not sent it while partial).
//! It runs under the cluster duty
//! `partial-state <room>`: one process at a time; any process takes over
//! the rooms left partial ([`run`], at start and every minute), so a
//! restart resumes it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, events::StateEventType, room_version_rules::RoomVersionRules,
};
use tokio_util::sync::CancellationToken;

use super::RoomError;
use crate::{
    event_checks::{self, CheckError},
    services::Services,
    state::{StateMap, key},
    storage::{
        CurrentStateChange, StateGroupId, StateKey, StoredEvent, StreamOrdering,
        partial_state::{Completion, PartialState, Rejection},
    },
};

/// How often the rooms left partial are looked for (by any process).
const SWEEP: Duration = Duration::from_secs(60);
/// The first wait after every server failed; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How often a request waiting for the full state looks again without
/// being woken (a backstop: the completion wakes it, on any process).
const BACKSTOP: Duration = Duration::from_secs(5);

/// The cluster duty of resyncing `room_id`.
fn duty(room_id: &RoomId) -> String {
    format!("partial-state {room_id}")
}

/// The resyncs this process runs (process-local: the cluster duty keeps a
/// room's to one process).
#[derive(Default)]
pub struct Resyncs {
    running: Mutex<HashSet<OwnedRoomId>>,
    /// A room was joined with partial state here: look now.
    wake: Notify,
}

impl Resyncs {
    /// A room was joined with partial state: its resync starts now.
    pub fn joined(&self) {
        self.wake.notify_one();
    }
}

/// Resyncs every room left partial, at start, when a room is joined with
/// partial state and every [`SWEEP`], until `cancel`.
pub async fn run(svc: Arc<Services>, cancel: CancellationToken) {
    loop {
        match svc.storage.partial_state_rooms().await {
            Ok(rooms) => {
                for partial in rooms {
                    spawn_resync(&svc, partial.room_id, &cancel);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the rooms with partial state"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = svc.partial_resyncs.wake.notified() => {}
            _ = tokio::time::sleep(SWEEP) => {}
        }
    }
}

/// Starts the resync of `room_id` in the background, unless this process
/// runs it already.
fn spawn_resync(svc: &Arc<Services>, room_id: OwnedRoomId, cancel: &CancellationToken) {
    if !svc
        .partial_resyncs
        .running
        .lock()
        .expect("partial resyncs")
        .insert(room_id.clone())
    {
        return;
    }
    let (svc, cancel) = (svc.clone(), cancel.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            done = resync(&svc, &room_id) => if let Err(e) = done {
                tracing::warn!(%room_id, error = %e, "the resync of a room with partial state failed");
            },
        }
        svc.partial_resyncs
            .running
            .lock()
            .expect("partial resyncs")
            .remove(&room_id);
    });
}

/// Fetches the full state at the join of a partial room and completes its
/// current state with it; returns when the room is no longer partial (or
/// another process resyncs it).
pub async fn resync(svc: &Services, room_id: &RoomId) -> Result<(), RoomError> {
    let Some(_held) = crate::cluster::hold_while(&svc.cluster, duty(room_id), crate::duty::TTL, Duration::ZERO).await
    else {
        return Ok(());
    };
    // Under the room's lock: a join stores its mark and itself under it.
    let guard = svc.rooms.lock(room_id).await?;
    let Some(partial) = svc.storage.partial_state(room_id).await? else {
        return Ok(());
    };
    let Some(join) = svc
        .storage
        .event(&partial.join_event_id)
        .await?
        .filter(|e| !e.meta.outlier)
    else {
        // The join never landed (a crash between the mark and the join).
        tracing::info!(%room_id, "dropping the partial state of a join that was not stored");
        svc.storage.drop_partial_state(room_id).await?;
        svc.joined.changed(room_id);
        return Ok(());
    };
    drop(guard);
    let version = svc.storage.room_version(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let started = std::time::Instant::now();
    let mut wait = FIRST_RETRY;
    let full = loop {
        if let Some(full) = fetch_full_state(svc, &partial, &version).await? {
            break full;
        }
        tracing::info!(%room_id, retry_in = ?wait, "no server gave the full state of a room joined with partial state");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RETRY);
    };
    let partial_group = join
        .meta
        .state_group_before
        .ok_or_else(|| RoomError::Invalid("the join has no state".to_owned()))?;
    let at_join = svc.state.group(partial_group).await?;
    if full.get(&key(StateEventType::RoomCreate, "")) != at_join.get(&key(StateEventType::RoomCreate, "")) {
        return Err(RoomError::Invalid(
            "the full state is of another room's creation".to_owned(),
        ));
    }
    // What the partial state lacked: added to the state at the join and
    // to every state after it that has no entry for it (a later event is
    // newer than the state at the join).
    // Only the members it left out: the rest of the partial state was
    // checked as given, and the joiner's own entry is the join.
    let joiner = join.pdu.sender.as_str();
    for (k, id) in &full {
        if k.0 != StateEventType::RoomMember && at_join.get(k).is_some_and(|held| held != id) {
            tracing::warn!(%room_id, key = ?k, "the full state disagrees with the partial one; the partial one stands");
        }
    }
    let mut additions: Vec<_> = full
        .into_iter()
        .filter(|(k, _)| k.0 == StateEventType::RoomMember && k.1 != joiner && !at_join.contains_key(k))
        .collect();
    additions.sort();
    let guard = svc.rooms.lock(room_id).await?;
    let rules = version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
    let rejections = recheck(svc, &rules, &join, partial_group, &additions).await?;
    let (_, current) = svc.state.current(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let mut current_changes: Vec<_> = additions
        .iter()
        .filter(|(k, _)| !current.contains_key(k))
        .map(|(k, id)| CurrentStateChange {
            key: k.clone(),
            event_id: Some(id.clone()),
        })
        .collect();
    // A rejected event the current state holds gives way to the entry it
    // replaced.
    current_changes.extend(rejections.iter().filter_map(|r| {
        let (k, replacement) = r.state.as_ref()?;
        (current.get(k) == Some(&r.event_id)).then(|| CurrentStateChange {
            key: k.clone(),
            event_id: replacement.clone(),
        })
    }));
    let completion = Completion {
        room_id: room_id.to_owned(),
        join_event_id: partial.join_event_id.clone(),
        partial_group,
        joiner: join.pdu.sender.to_string(),
        join_depth: i64::try_from(join.pdu.depth).unwrap_or(i64::MAX),
        additions,
        rejections,
        current_changes,
    };
    // The states cached here hold the partial ones: none is served once
    // the completion's position can be seen (a `/sync` sends the room in
    // full from it).
    let changing = svc.state.changing();
    svc.joined.changed(room_id);
    let completed_at = svc.storage.complete_partial_state(&completion).await?;
    drop(changing);
    svc.joined.changed(room_id);
    // The room's members' `/sync`s that left the room out look again (at
    // the completion's position, they send it in full).
    svc.notifier
        .notify(completed_at, &[crate::wakeups::Topic::Room(room_id.to_owned())]);
    // (The caches were dropped under the lock: the next event checked here
    // reads the completed states.)
    drop(guard);
    // The presence of the members learned now (which may have come while
    // they were not known to be in the room) reaches the room's members.
    let learned: Vec<OwnedUserId> = completion
        .additions
        .iter()
        .filter(|((kind, _), _)| *kind == StateEventType::RoomMember)
        .filter_map(|((_, user), _)| OwnedUserId::try_from(user.as_str()).ok())
        .collect();
    if let Err(e) = svc.presence.now_visible(&learned).await {
        tracing::warn!(%room_id, error = %e, "cannot show the presence of the members learned");
    }
    // The device lists of the members learned now (those joined) are
    // fetched afresh, and the room's members' clients told to look.
    let joined: HashSet<OwnedUserId> = svc
        .storage
        .room_members(room_id, Some("join"))
        .await?
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    let learned_joined: Vec<OwnedUserId> = learned.iter().filter(|u| joined.contains(*u)).cloned().collect();
    if let Err(e) = crate::devices::members_learned(svc, &learned_joined).await {
        tracing::warn!(%room_id, error = %e, "cannot mark remote device lists stale");
    }
    tracing::info!(
        %room_id,
        added = completion.additions.len(),
        rejected = completion.rejections.len(),
        took = ?started.elapsed(),
        "a room joined with partial state has its full state"
    );
    Ok(())
}

/// The events received since the join (accepted then, against the
/// partial state completed with their own auth events), checked again in
/// the order received against the full state: the state before each,
/// completed with `additions` where it has no entry, less the events
/// refused before it (an entry that was one is the entry it replaced). An
/// event whose auth events include a refused one is refused too.
async fn recheck(
    svc: &Services,
    rules: &RoomVersionRules,
    join: &StoredEvent,
    join_group: StateGroupId,
    additions: &[(StateKey, OwnedEventId)],
) -> Result<Vec<Rejection>, RoomError> {
    let additions: HashMap<&StateKey, &OwnedEventId> = additions.iter().map(|(k, id)| (k, id)).collect();
    let room_id = &join.pdu.room_id;
    // What replaces each refused state event; every refused event.
    let mut replaced: HashMap<OwnedEventId, Option<OwnedEventId>> = HashMap::new();
    let mut refused: HashSet<OwnedEventId> = HashSet::new();
    let mut rejections = Vec::new();
    let joiner = key(StateEventType::RoomMember, join.pdu.sender.as_str());
    for event in received_since(svc, room_id, join.meta.stream_ordering).await? {
        let Some(group) = event.meta.state_group_before else {
            continue;
        };
        let stored = svc.state.group(group).await?;
        // Only the states storage completes are checked: the state at the
        // join and those after it (whose entry for the joiner is the join
        // or later). History pulled meanwhile, or a fork without the join,
        // keeps the state its sender gave.
        if group != join_group && !after_join(svc, &stored, &joiner, join).await? {
            continue;
        }
        let entry = |k: &StateKey| -> Option<OwnedEventId> {
            let id = stored.get(k).or_else(|| additions.get(k).copied())?;
            reverted(&replaced, id)
        };
        let pdu = &event.pdu;
        let verdict = match pdu.auth_events.iter().find(|a| refused.contains(*a)) {
            Some(bad) => Err(format!("its auth event {bad} is refused by the full state")),
            None => match event_checks::auth_keys(rules, pdu) {
                Err(CheckError::Rejected(reason)) => Err(reason),
                Err(e) => return Err(e.into()),
                Ok(keys) => {
                    let mut state = StateMap::new();
                    for k in keys {
                        let id = match (stored.get(&k), additions.get(&k)) {
                            (Some(id), _) => Some(id.clone()),
                            (None, Some(added)) => Some(newest_known(svc, pdu, &k, added).await?),
                            (None, None) => None,
                        };
                        if let Some(id) = id.and_then(|id| reverted(&replaced, &id)) {
                            state.insert(k, id);
                        }
                    }
                    match event_checks::check_against(svc, rules, pdu, &state).await {
                        Ok(()) => Ok(()),
                        Err(CheckError::Rejected(reason)) => Err(reason),
                        Err(e) => return Err(e.into()),
                    }
                }
            },
        };
        let Err(reason) = verdict else {
            continue;
        };
        tracing::warn!(%room_id, event_id = %pdu.event_id, %reason, "an event received while partial is refused by the full state");
        let state = pdu.state_key.as_ref().map(|state_key| {
            let k = key(StateEventType::from(pdu.kind.to_string()), state_key);
            let replacement = entry(&k);
            (k, replacement)
        });
        if let Some((_, replacement)) = &state {
            replaced.insert(pdu.event_id.clone(), replacement.clone());
        }
        refused.insert(pdu.event_id.clone());
        rejections.push(Rejection {
            event_id: pdu.event_id.clone(),
            reason: format!("refused by the full state: {reason}"),
            state,
        });
    }
    Ok(rejections)
}

/// `id`, or what replaces it if it was refused.
fn reverted(replaced: &HashMap<OwnedEventId, Option<OwnedEventId>>, id: &OwnedEventId) -> Option<OwnedEventId> {
    match replaced.get(id) {
        Some(replacement) => replacement.clone(),
        None => Some(id.clone()),
    }
}

/// Whether `state` is after the join: its entry for the joiner is the join
/// or a later membership (as storage tells the states it completes).
async fn after_join(
    svc: &Services,
    state: &StateMap,
    joiner: &StateKey,
    join: &StoredEvent,
) -> Result<bool, RoomError> {
    let Some(id) = state.get(joiner) else {
        return Ok(false);
    };
    if *id == join.pdu.event_id {
        return Ok(true);
    }
    Ok(svc
        .storage
        .event(id)
        .await?
        .is_some_and(|e| e.pdu.depth >= join.pdu.depth))
}

/// The entry for `k` that `pdu` is checked against where the stored state
/// has none: `added` (from the full state at the join), unless `pdu` cites
/// a later one for `k` among its auth events (one whose auth chain holds
/// `added`: the answer was stale, a ban since lifted, say).
async fn newest_known(
    svc: &Services,
    pdu: &crate::events::Pdu,
    k: &StateKey,
    added: &OwnedEventId,
) -> Result<OwnedEventId, RoomError> {
    let auth = svc.storage.events(&pdu.auth_events).await?;
    let cited = auth.iter().find(|e| {
        e.meta.rejected.is_none()
            && e.pdu.state_key.as_deref() == Some(k.1.as_str())
            && e.pdu.kind.to_string() == k.0.to_string()
    });
    match cited {
        Some(cited) if cited.pdu.event_id != *added => {
            let chain = svc
                .storage
                .auth_chain(std::slice::from_ref(&cited.pdu.event_id))
                .await?;
            Ok(if chain.contains(added) {
                cited.pdu.event_id.clone()
            } else {
                added.clone()
            })
        }
        _ => Ok(added.clone()),
    }
}

/// The room's timeline events that arrived after `after`, oldest first.
async fn received_since(
    svc: &Services,
    room_id: &RoomId,
    after: StreamOrdering,
) -> Result<Vec<StoredEvent>, RoomError> {
    const PAGE: usize = 500;
    let mut upto = svc.storage.max_stream_ordering().await?;
    let mut events = Vec::new();
    while upto > after {
        let page = svc.storage.stream_page(room_id, after, upto, PAGE).await?;
        let Some(oldest) = page.last() else {
            break;
        };
        upto = oldest.meta.stream_ordering - 1;
        let full = page.len() == PAGE;
        events.extend(page);
        if !full {
            break;
        }
    }
    events.reverse();
    Ok(events)
}

/// The full state at the join, from the first of the partial state's
/// servers that gives it: `/state`, every event checked (signatures,
/// hashes, its own auth events) and kept; `None` when none did.
async fn fetch_full_state(
    svc: &Services,
    partial: &PartialState,
    version: &ruma::RoomVersionId,
) -> Result<Option<StateMap>, RoomError> {
    let room_id = &partial.room_id;
    for server in partial.servers.iter().filter(|s| *s != svc.server_name()) {
        let Some(full) = super::outliers::state_from(svc, server, version, room_id, &partial.join_event_id).await?
        else {
            continue;
        };
        if full.contains_key(&key(StateEventType::RoomCreate, "")) {
            return Ok(Some(full));
        }
        tracing::info!(%room_id, %server, "a state answer without the room's creation");
    }
    Ok(None)
}

/// Whether `room_id` was joined with partial state and is not complete yet.
pub async fn is_partial(svc: &Services, room_id: &RoomId) -> Result<bool, RoomError> {
    Ok(svc.storage.partial_state(room_id).await?.is_some())
}

/// Waits until `room_id` has its full state (at once for any other room):
/// what needs every member (a full member list) asks this first. The
/// request is parked on the room's wake-ups, registered before each look:
/// the completion wakes it (its position is announced as the room's, to
/// every process), so many waiting requests cost nothing until then.
pub async fn wait_until_full(svc: &Services, room_id: &RoomId) -> Result<(), RoomError> {
    let waiter = svc
        .notifier
        .wakeups
        .register([crate::wakeups::Topic::Room(room_id.to_owned())]);
    while is_partial(svc, room_id).await? {
        // (Woken by any change of the room; the completion is one.)
        let _ = tokio::time::timeout(BACKSTOP, waiter.notified()).await;
    }
    Ok(())
}

/// Whether `room_id` has its full state within `patience` (at once for
/// any other room): what another server asks of a room joined moments ago
/// (the resync of a small room takes well under a second) is answered
/// rather than sent elsewhere.
pub async fn full_within(svc: &Services, room_id: &RoomId, patience: Duration) -> Result<bool, RoomError> {
    match tokio::time::timeout(patience, wait_until_full(svc, room_id)).await {
        Ok(done) => done.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// Whether `before` lacks an entry the auth rules would read for `pdu`:
/// its sender's membership, or the target's of a membership event (what a
/// partial state leaves out).
pub fn lacks_members(pdu: &crate::events::Pdu, before: &StateMap) -> bool {
    let target = (pdu.kind == ruma::events::TimelineEventType::RoomMember)
        .then_some(pdu.state_key.as_deref())
        .flatten();
    [Some(pdu.sender.as_str()), target]
        .into_iter()
        .flatten()
        .any(|user| !before.contains_key(&key(StateEventType::RoomMember, user)))
}

/// `before` with the state entries of `auth` (not rejected) for the keys
/// it has no entry for.
pub fn with_auth_events<'a>(
    before: &StateMap,
    auth: impl IntoIterator<Item = (&'a crate::events::Pdu, bool)>,
) -> StateMap {
    let mut state = before.clone();
    for (event, rejected) in auth {
        if !rejected && let Some(state_key) = &event.state_key {
            state
                .entry(key(StateEventType::from(event.kind.to_string()), state_key))
                .or_insert_with(|| event.event_id.clone());
        }
    }
    state
}

/// The state an event received in a partial room is checked against: the
/// state before it, completed with its auth events for the keys that state
/// lacks (the members left out of the partial state). Any other room's
/// state is returned as it is.
pub async fn completed_with_auth_events(
    svc: &Services,
    pdu: &crate::events::Pdu,
    before: &Arc<StateMap>,
) -> Result<Arc<StateMap>, RoomError> {
    if !lacks_members(pdu, before) || !is_partial(svc, &pdu.room_id).await? {
        return Ok(before.clone());
    }
    let auth = svc.storage.events(&pdu.auth_events).await?;
    Ok(Arc::new(with_auth_events(
        before,
        auth.iter().map(|e| (&*e.pdu, e.meta.rejected.is_some())),
    )))
}
