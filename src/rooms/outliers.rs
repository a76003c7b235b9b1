//! Events taken in bulk from another server's answer (the state and auth
//! chain of a join, of a `/state` answer, an event's auth chain), checked
//! and kept as outliers: held, without a place in the timeline.
//!
//! The cost is meant to be the crypto's: the signatures and hashes of the
//! answer's events not held yet are checked on every core
//! ([`event_checks::check_unheld_all`]),
//! each event's auth events are found in the answer itself or in one read
//! of storage, and the answer is written in one transaction ([`keep`]).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use futures_util::StreamExt;
use ruma::{
    EventId, OwnedEventId, RoomId, RoomVersionId, ServerName,
    api::federation::event::{get_event, get_room_state, get_room_state_ids},
    events::StateEventType,
    room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue;

use super::RoomError;
use crate::{
    event_checks::{self, CheckError, Signed},
    events::Pdu,
    services::Services,
    state::{StateMap, key},
    storage::EventKey,
};

fn of_room(room_id: &RoomId, checked: Result<Pdu, CheckError>) -> Option<Pdu> {
    match checked {
        Ok(event) if event.room_id == room_id => Some(event),
        Ok(event) => {
            tracing::info!(%room_id, event_id = %event.event_id, "dropping an event of another room");
            None
        }
        Err(e) => {
            tracing::info!(%room_id, error = %e, "dropping an event that fails its checks");
            None
        }
    }
}

/// The events of `raws` (an auth chain) that pass steps 1–3 (format,
/// signatures, hashes) and are of `room_id`, kept ([`keep`]); those held
/// already are neither checked nor kept again, the others are dropped.
pub async fn check_and_keep(
    svc: &Services,
    version: &RoomVersionId,
    room_id: &RoomId,
    raws: Vec<Box<RawValue>>,
) -> Result<(), RoomError> {
    let rules = version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
    let mut new = Vec::new();
    for checked in event_checks::check_unheld_all(svc, version, raws).await? {
        match checked {
            Ok(Signed::Held(_)) => {}
            Ok(Signed::New(pdu)) => new.extend(of_room(room_id, Ok(pdu))),
            Err(e) => {
                of_room(room_id, Err(e));
            }
        }
    }
    keep_unheld(svc, &rules, new, HashSet::new()).await.map(drop)
}

/// Checks `events` against their own auth events (step 4), oldest first
/// by depth, and keeps those not held yet as outliers, rejected where they
/// fail, in one write. An auth event is looked for in `events` (those
/// before it) and in storage.
pub async fn keep(svc: &Services, rules: &RoomVersionRules, events: Vec<Pdu>) -> Result<(), RoomError> {
    let ids: Vec<OwnedEventId> = events.iter().map(|e| e.event_id.clone()).collect();
    let held = svc.storage.event_keys(&ids).await?;
    keep_unheld(svc, rules, events, held.into_iter().map(|k| k.event_id).collect())
        .await
        .map(drop)
}

/// [`keep`] given the events found held already: those of `events` among
/// them are not kept again. Gives the events kept, with whether each was
/// rejected.
async fn keep_unheld(
    svc: &Services,
    rules: &RoomVersionRules,
    mut events: Vec<Pdu>,
    held: HashSet<OwnedEventId>,
) -> Result<Vec<Outlier>, RoomError> {
    events.sort_by_key(|e| e.depth);
    let mut seen = HashSet::with_capacity(events.len());
    events.retain(|e| !held.contains(&e.event_id) && seen.insert(e.event_id.clone()));
    if events.is_empty() {
        return Ok(Vec::new());
    }

    // The auth events from outside the batch, in one read.
    let in_batch: HashSet<&OwnedEventId> = events.iter().map(|e| &e.event_id).collect();
    let mut outside: HashSet<OwnedEventId> = HashSet::new();
    for event in &events {
        for id in event
            .auth_events
            .iter()
            .chain(&event_checks::implied_create(rules, event))
        {
            if !in_batch.contains(id) {
                outside.insert(id.clone());
            }
        }
    }
    let outside: Vec<OwnedEventId> = outside.into_iter().collect();
    let mut known: HashMap<OwnedEventId, (Arc<Pdu>, bool)> = svc
        .storage
        .events(&outside)
        .await?
        .into_iter()
        .map(|e| (e.pdu.event_id.clone(), (e.pdu, e.meta.rejected.is_some())))
        .collect();

    let mut outliers = Vec::with_capacity(events.len());
    for event in events {
        let auth: Vec<(Arc<Pdu>, bool)> = event
            .auth_events
            .iter()
            .chain(&event_checks::implied_create(rules, &event))
            .filter_map(|id| known.get(id).cloned())
            .collect();
        let rejected = match event_checks::auth_events_allow(rules, &event, auth.iter().map(|(e, r)| (&**e, *r))) {
            Ok(()) => None,
            Err(CheckError::Rejected(reason)) => Some(reason),
            Err(e) => return Err(e.into()),
        };
        let event = Arc::new(event);
        known.insert(event.event_id.clone(), (event.clone(), rejected.is_some()));
        outliers.push((event, rejected));
    }
    let kept = outliers
        .iter()
        .map(|(pdu, rejected)| Outlier {
            pdu: pdu.clone(),
            rejected: rejected.is_some(),
        })
        .collect();
    svc.storage.persist_outliers(outliers).await?;
    Ok(kept)
}

/// An event kept by [`keep_unheld`].
struct Outlier {
    pdu: Arc<Pdu>,
    rejected: bool,
}

/// Events fetched at once with `/event` by [`state_from`].
const FETCHES_AT_ONCE: usize = 8;

/// The state at `event_id` as `server` gives it, its events held (checked
/// and kept as outliers; rejected ones left out of it). The IDs first
/// (`/state_ids`): the events not held are fetched one by one (`/event`)
/// when they are few, with the whole state (`/state`, [`keep_state`]) when a
/// tenth or more of them is missing (Synapse's rule). A resync after a
/// partial join, which lacks only the members, checks and keeps only them.
/// None when the server does not answer, or its whole state is asked and
/// refused ([`whole_state`]). (An event held as another room's, possible in
/// rooms v1 and v2 only, is left out of the state.)
pub async fn state_from(
    svc: &Services,
    server: &ServerName,
    version: &RoomVersionId,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Option<StateMap>, RoomError> {
    let rules = version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
    let request = get_room_state_ids::v1::Request::new(event_id.to_owned(), room_id.to_owned());
    let ids = match svc.federation.send(server, request).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::info!(%room_id, %server, error = %e, "cannot fetch the state's IDs");
            return Ok(None);
        }
    };
    let wanted: Vec<OwnedEventId> = ids
        .pdu_ids
        .iter()
        .chain(&ids.auth_chain_ids)
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // What is held of them, read once: after the missing ones are kept,
    // only those are read again.
    let mut held: HashMap<OwnedEventId, EventKey> = svc
        .storage
        .event_keys(&wanted)
        .await?
        .into_iter()
        .map(|k| (k.event_id.clone(), k))
        .collect();
    let missing: HashSet<OwnedEventId> = wanted.into_iter().filter(|id| !held.contains_key(id)).collect();
    if missing.len() * 10 >= held.len() + missing.len() {
        return whole_state(svc, server, version, room_id, event_id).await;
    }
    if !missing.is_empty() {
        let Some(fetched) = fetch_each(svc, server, version, room_id, &missing).await else {
            // Keeping some would reject their children for want of an
            // auth event: the whole state instead.
            return whole_state(svc, server, version, room_id, event_id).await;
        };
        keep(svc, &rules, fetched).await?;
        let kept: Vec<OwnedEventId> = missing.into_iter().collect();
        held.extend(
            svc.storage
                .event_keys(&kept)
                .await?
                .into_iter()
                .map(|k| (k.event_id.clone(), k)),
        );
    }
    let mut state = StateMap::new();
    for event in ids.pdu_ids.iter().filter_map(|id| held.remove(id)) {
        // (Rooms v1 and v2 only, where the sender picks the event ID: an
        // event of another room held under the ID named is not this one's.)
        if event.room_id != room_id {
            tracing::info!(%room_id, %server, event_id = %event.event_id, "a state naming an event of another room");
            continue;
        }
        if let Some((k, id)) = event.state_entry() {
            state.insert(k, id);
        }
    }
    Ok(Some(state))
}

/// The state at `event_id` as `server` gives it whole (`/state`), checked
/// and kept ([`keep_state`]); None when the server fails or lies.
async fn whole_state(
    svc: &Services,
    server: &ServerName,
    version: &RoomVersionId,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Option<StateMap>, RoomError> {
    let request = get_room_state::v1::Request::new(event_id.to_owned(), room_id.to_owned());
    let answer = match svc.federation.send(server, request).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::info!(%room_id, %server, error = %e, "cannot fetch the state");
            return Ok(None);
        }
    };
    match keep_state(svc, version, room_id, answer.pdus, answer.auth_chain).await {
        Ok(state) => Ok(Some(state)),
        Err(RoomError::Invalid(e)) => {
            tracing::info!(%room_id, %server, error = %e, "a state answer refused");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Each of `ids` from `server` (`/event`, [`FETCHES_AT_ONCE`] at a time),
/// checked (steps 1–3), all of `room_id`; None unless every one came and
/// passed.
async fn fetch_each(
    svc: &Services,
    server: &ServerName,
    version: &RoomVersionId,
    room_id: &RoomId,
    ids: &HashSet<OwnedEventId>,
) -> Option<Vec<Pdu>> {
    let answers: Vec<_> = futures_util::stream::iter(ids.iter().cloned())
        .map(|id| async move { svc.federation.send(server, get_event::v1::Request::new(id)).await })
        .buffer_unordered(FETCHES_AT_ONCE)
        .collect()
        .await;
    let mut raws = Vec::with_capacity(answers.len());
    for answer in answers {
        match answer {
            Ok(answer) => raws.push(answer.pdu),
            Err(e) => {
                tracing::info!(%room_id, %server, error = %e, "cannot fetch an event");
                return None;
            }
        }
    }
    let mut fetched = Vec::with_capacity(raws.len());
    for checked in event_checks::check_signed_all(svc, version, raws).await {
        match of_room(room_id, checked) {
            Some(pdu) if ids.contains(&pdu.event_id) => fetched.push(pdu),
            Some(pdu) => {
                tracing::info!(%room_id, %server, event_id = %pdu.event_id, "an event not asked for");
                return None;
            }
            None => return None,
        }
    }
    let got: HashSet<&OwnedEventId> = fetched.iter().map(|pdu| &pdu.event_id).collect();
    (got.len() == ids.len()).then_some(fetched)
}

/// An answer holding a room's state at some event and its auth chain:
/// every event not held yet checked ([`event_checks::check_unheld_all`]) and
/// kept ([`keep`]); the state of
/// those of `state` that passed and were not rejected.
pub async fn keep_state(
    svc: &Services,
    version: &RoomVersionId,
    room_id: &RoomId,
    state: Vec<Box<RawValue>>,
    auth_chain: Vec<Box<RawValue>>,
) -> Result<StateMap, RoomError> {
    let rules = version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
    // The auth chain first: of events of equal depth, an auth event is
    // kept before the events it authorises.
    let auth_len = auth_chain.len();
    let mut raws = auth_chain;
    raws.extend(state);
    let mut state_ids = HashSet::with_capacity(raws.len() - auth_len);
    let mut events = Vec::with_capacity(raws.len());
    let mut held = HashSet::new();
    let mut state = StateMap::new();
    let started = std::time::Instant::now();
    // Events held already (the partial state's, at a resync) are not
    // checked again.
    for (i, checked) in event_checks::check_unheld_all(svc, version, raws)
        .await?
        .into_iter()
        .enumerate()
    {
        match &checked {
            // A server that gives another room's events for this one's
            // state lies about it: its whole answer is refused.
            Ok(Signed::New(event)) if event.room_id != room_id => {
                return Err(RoomError::Invalid(format!(
                    "the answer holds {}, an event of another room",
                    event.event_id
                )));
            }
            // (Rooms v1 and v2 only, where the sender picks the event ID:
            // an event of another room held under this one's ID. This one
            // is not taken, as one that fails its checks.)
            Ok(Signed::Held(event)) if event.room_id != room_id => {
                tracing::info!(%room_id, event_id = %event.event_id, "an event ID held as another room's");
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(%room_id, error = %e, "dropping an event that fails its checks");
                continue;
            }
        }
        let in_state = i >= auth_len;
        match checked {
            Ok(Signed::New(event)) => {
                if in_state {
                    state_ids.insert(event.event_id.clone());
                }
                events.push(event);
            }
            Ok(Signed::Held(event)) => {
                held.insert(event.event_id.clone());
                if in_state && let Some((k, id)) = event.state_entry() {
                    state.insert(k, id);
                }
            }
            Err(_) => {}
        }
    }
    let checked = started.elapsed();
    let count = events.len();
    let kept = keep_unheld(svc, &rules, events, held).await?;
    tracing::debug!(%room_id, count, ?checked, kept = ?started.elapsed() - checked, "a state answer checked and kept");
    for outlier in kept {
        if !outlier.rejected
            && state_ids.contains(&outlier.pdu.event_id)
            && let Some(state_key) = &outlier.pdu.state_key
        {
            state.insert(
                key(StateEventType::from(outlier.pdu.kind.to_string()), state_key),
                outlier.pdu.event_id.clone(),
            );
        }
    }
    Ok(state)
}
