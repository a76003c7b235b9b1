//! Events taken in bulk from another server's answer (the state and auth
//! chain of a join, of a `/state` answer, an event's auth chain), checked
//! and kept as outliers: held, without a place in the timeline.
//!
//! The cost is meant to be the crypto's: the signatures and hashes of the
//! whole answer are checked on every core ([`event_checks::check_signed_all`]),
//! each event's auth events are found in the answer itself or in one read
//! of storage, and the answer is written in one transaction ([`keep`]).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{OwnedEventId, RoomId, RoomVersionId, events::StateEventType, room_version_rules::RoomVersionRules};
use serde_json::value::RawValue;

use super::RoomError;
use crate::{
    event_checks::{self, CheckError},
    events::Pdu,
    services::Services,
    state::{StateMap, key},
};

/// The events of `raws` that pass steps 1–3 (format, signatures, hashes)
/// and are of `room_id`, in the order given; the others are dropped.
pub async fn check_signed(
    svc: &Services,
    version: &RoomVersionId,
    room_id: &RoomId,
    raws: Vec<Box<RawValue>>,
) -> Vec<Pdu> {
    let checked = event_checks::check_signed_all(svc, version, raws).await;
    checked.into_iter().filter_map(|c| of_room(room_id, c)).collect()
}

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

/// Checks `events` against their own auth events (step 4), oldest first
/// by depth, and keeps those not held yet as outliers, rejected where they
/// fail, in one write. An auth event is looked for in `events` (those
/// before it) and in storage. Gives each event (as held, when it was
/// already) with whether it is rejected.
pub async fn keep(svc: &Services, rules: &RoomVersionRules, mut events: Vec<Pdu>) -> Result<Vec<Outlier>, RoomError> {
    events.sort_by_key(|e| e.depth);
    let mut seen = HashSet::with_capacity(events.len());
    events.retain(|e| seen.insert(e.event_id.clone()));
    let ids: Vec<OwnedEventId> = events.iter().map(|e| e.event_id.clone()).collect();
    let mut kept: Vec<Outlier> = svc
        .storage
        .events(&ids)
        .await?
        .into_iter()
        .map(|e| Outlier {
            rejected: e.meta.rejected.is_some(),
            pdu: e.pdu,
        })
        .collect();
    let held: HashSet<&OwnedEventId> = kept.iter().map(|o| &o.pdu.event_id).collect();
    events.retain(|e| !held.contains(&e.event_id));
    if events.is_empty() {
        return Ok(kept);
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
    known.extend(
        kept.iter()
            .map(|o| (o.pdu.event_id.clone(), (o.pdu.clone(), o.rejected))),
    );

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
    kept.extend(outliers.iter().map(|(pdu, rejected)| Outlier {
        pdu: pdu.clone(),
        rejected: rejected.is_some(),
    }));
    svc.storage.persist_outliers(outliers).await?;
    Ok(kept)
}

/// An event of [`keep`], as held.
pub struct Outlier {
    pub pdu: Arc<Pdu>,
    pub rejected: bool,
}

/// An answer holding a room's state at some event and its auth chain:
/// every event checked and kept ([`check_signed`], [`keep`]); the state of
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
    let mut state_ids = Vec::with_capacity(raws.len() - auth_len);
    let mut events = Vec::with_capacity(raws.len());
    let started = std::time::Instant::now();
    for (i, checked) in event_checks::check_signed_all(svc, version, raws)
        .await
        .into_iter()
        .enumerate()
    {
        match checked {
            // A server that gives another room's events for this one's
            // state lies about it: its whole answer is refused.
            Ok(event) if event.room_id != room_id => {
                return Err(RoomError::Invalid(format!(
                    "the answer holds {}, an event of another room",
                    event.event_id
                )));
            }
            Ok(event) => {
                if i >= auth_len {
                    state_ids.push(event.event_id.clone());
                }
                events.push(event);
            }
            Err(e) => tracing::info!(%room_id, error = %e, "dropping an event that fails its checks"),
        }
    }
    let state_ids: HashSet<OwnedEventId> = state_ids.into_iter().collect();
    let checked = started.elapsed();
    let count = events.len();
    let kept = keep(svc, &rules, events).await?;
    tracing::debug!(%room_id, count, ?checked, kept = ?started.elapsed() - checked, "a state answer checked and kept");
    let mut state = StateMap::new();
    for outlier in kept {
        if !outlier.rejected
            && outlier.pdu.room_id == room_id
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
