//! State resolution: when the states after an event's parents (or after a
//! room's forward extremities) disagree, which state holds. ruma's
//! `state_res` implements v2 (rooms 2–11) and v2.1 (room 12); v1 (room 1)
//! is [`super::resolve_v1`]. This module loads what the algorithm needs to
//! look at and runs it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::{OwnedEventId, room_version_rules::RoomVersionRules, state_res::utils::event_id_set::EventIdSet};

use super::StateMap;
use crate::{events::Pdu, services::Services, storage::StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("state resolution failed: {0}")]
    Failed(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Resolves `states` into one. Identical states (and a single one) need
/// no work.
pub async fn resolve(
    svc: &Services,
    rules: &RoomVersionRules,
    states: &[Arc<StateMap>],
) -> Result<StateMap, ResolveError> {
    resolve_with(svc, rules, states, &[]).await
}

/// [`resolve`], where `pending` are events the states hold that are not
/// stored yet (the event being received, whose state after it is one of
/// the states): the algorithm must see them and their auth chains as it
/// sees stored ones, or it would leave them out of the result.
pub async fn resolve_with(
    svc: &Services,
    rules: &RoomVersionRules,
    states: &[Arc<StateMap>],
    pending: &[Arc<Pdu>],
) -> Result<StateMap, ResolveError> {
    match states {
        [] => return Ok(StateMap::new()),
        [only] => return Ok((**only).clone()),
        [first, rest @ ..] if rest.iter().all(|s| super::same(s, first)) => return Ok((**first).clone()),
        _ => {}
    }
    if rules.state_res == ruma::room_version_rules::StateResolutionVersion::V1 {
        return resolve_v1(svc, rules, states).await;
    }
    // Everything the algorithm may look at: the states' events and their
    // auth chains.
    let mut auth_chains = Vec::with_capacity(states.len());
    let mut wanted: HashSet<OwnedEventId> = HashSet::new();
    for state in states {
        let mut ids: Vec<OwnedEventId> = state.values().cloned().collect();
        // A pending event's chain: its auth events and theirs (storage
        // knows the latter only).
        let pending_auth: Vec<OwnedEventId> = pending
            .iter()
            .filter(|p| ids.contains(&p.event_id))
            .flat_map(|p| p.auth_events.iter().cloned())
            .collect();
        ids.extend(pending_auth.iter().cloned());
        let mut chain = svc.storage.auth_chain(&ids).await?;
        chain.extend(pending_auth);
        wanted.extend(ids);
        wanted.extend(chain.iter().cloned());
        auth_chains.push(chain.into_iter().collect::<EventIdSet<OwnedEventId>>());
    }
    let wanted: Vec<OwnedEventId> = wanted.into_iter().collect();
    let mut events: HashMap<OwnedEventId, Arc<Pdu>> = svc
        .storage
        .events(&wanted)
        .await?
        .into_iter()
        .map(|e| (e.pdu.event_id.clone(), e.pdu))
        .collect();
    for pdu in pending {
        events.insert(pdu.event_id.clone(), pdu.clone());
    }

    let state_res = rules
        .state_res
        .v2_rules()
        .ok_or_else(|| ResolveError::Failed("the room version has no v2 state resolution".to_owned()))?;
    let fetch = |id: &ruma::EventId| events.get(id).map(|pdu| &**pdu);
    // (ruma's resolution takes std maps.)
    let std_states: Vec<ruma::state_res::StateMap<OwnedEventId>> = states
        .iter()
        .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .collect();
    let subgraph = |conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>| {
        Some(conflicted_subgraph(&events, conflicted.values().flatten()))
    };
    let resolved = ruma::state_res::resolve(
        &rules.authorization,
        state_res,
        std_states.iter(),
        auth_chains,
        fetch,
        subgraph,
    )
    .map_err(|e| ResolveError::Failed(e.to_string()))?;
    // The result as a change of the first state, sharing its structure.
    let mut out = (*states[0]).clone();
    out.retain(|k, _| resolved.contains_key(k));
    for (k, id) in resolved {
        if out.get(&k) != Some(&id) {
            out.insert(k, id);
        }
    }
    let resolved = out;
    if tracing::enabled!(tracing::Level::DEBUG) {
        trace_conflicts(states, pending, &resolved, &events);
    }
    Ok(resolved)
}

/// At debug level: each conflicted key, the candidates the states held
/// (each with its timestamp and the power levels it was authorised by,
/// which decide its place in the mainline ordering) and the one the
/// resolution kept, to follow a divergence between servers from their
/// logs.
fn trace_conflicts(
    states: &[Arc<StateMap>],
    pending: &[Arc<Pdu>],
    resolved: &StateMap,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) {
    let keys: HashSet<&super::StateKey> = states.iter().flat_map(|s| s.keys()).collect();
    for key in keys {
        let candidates: HashSet<Option<&OwnedEventId>> = states.iter().map(|s| s.get(key)).collect();
        if candidates.len() > 1 {
            let described: Vec<String> = candidates
                .iter()
                .map(|c| match c {
                    None => "(absent)".to_owned(),
                    Some(id) => describe(id, events),
                })
                .collect();
            tracing::debug!(
                kind = %key.0,
                state_key = %key.1,
                candidates = ?described,
                kept = ?resolved.get(key),
                pending = ?pending.iter().map(|p| &p.event_id).collect::<Vec<_>>(),
                "conflicted state resolved"
            );
        }
    }
}

/// An event as the mainline ordering sees it: its timestamp, its chain of
/// power-levels auth events, and any auth event on that walk the
/// resolution could not load (which would make it drop the event).
fn describe(id: &OwnedEventId, events: &HashMap<OwnedEventId, Arc<Pdu>>) -> String {
    let Some(pdu) = events.get(id) else {
        return format!("{id} (not loaded)");
    };
    let mut walk = Vec::new();
    let mut missing = Vec::new();
    let mut current = Some(pdu.clone());
    while let Some(event) = current.take() {
        for auth in &event.auth_events {
            match events.get(auth) {
                None => missing.push(auth.to_string()),
                Some(a) if a.kind == ruma::events::TimelineEventType::RoomPowerLevels => {
                    walk.push(a.event_id.to_string());
                    current = Some(a.clone());
                    break;
                }
                Some(_) => {}
            }
        }
        if walk.len() > 64 {
            break;
        }
    }
    format!(
        "{id} ts={} rejected={} power_levels={walk:?} unloaded_auth={missing:?}",
        u64::from(pdu.origin_server_ts.get()),
        pdu.rejected
    )
}

/// State resolution v1 needs the states' events only (not their auth
/// chains).
async fn resolve_v1(
    svc: &Services,
    rules: &RoomVersionRules,
    states: &[Arc<StateMap>],
) -> Result<StateMap, ResolveError> {
    let wanted: HashSet<OwnedEventId> = states.iter().flat_map(|s| s.values().cloned()).collect();
    let wanted: Vec<OwnedEventId> = wanted.into_iter().collect();
    let events: HashMap<OwnedEventId, Arc<Pdu>> = svc
        .storage
        .events(&wanted)
        .await?
        .into_iter()
        .map(|e| (e.pdu.event_id.clone(), e.pdu))
        .collect();
    let states: Vec<&StateMap> = states.iter().map(|s| &**s).collect();
    Ok(super::resolve_v1::resolve(&rules.authorization, &states, |id| {
        events.get(id).map(|pdu| &**pdu)
    }))
}

/// The conflicted state subgraph (room v12): events on an auth-event path
/// from one conflicted event to another, the conflicted events included.
fn conflicted_subgraph<'a>(
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
    conflicted: impl Iterator<Item = &'a OwnedEventId>,
) -> EventIdSet<OwnedEventId> {
    let conflicted: HashSet<&OwnedEventId> = conflicted.collect();
    // Everything reachable from a conflicted event over auth events.
    let mut reachable: HashSet<&OwnedEventId> = HashSet::new();
    let mut stack: Vec<&OwnedEventId> = conflicted.iter().copied().collect();
    while let Some(id) = stack.pop() {
        if reachable.insert(id)
            && let Some(pdu) = events.get(id)
        {
            stack.extend(pdu.auth_events.iter());
        }
    }
    // Of those, the ones from which a conflicted event is reachable.
    let mut reaches: HashMap<&OwnedEventId, bool> = HashMap::new();
    fn reaches_conflicted<'a>(
        id: &'a OwnedEventId,
        events: &'a HashMap<OwnedEventId, Arc<Pdu>>,
        conflicted: &HashSet<&OwnedEventId>,
        memo: &mut HashMap<&'a OwnedEventId, bool>,
    ) -> bool {
        if let Some(known) = memo.get(id) {
            return *known;
        }
        memo.insert(id, false);
        let result = conflicted.contains(id)
            || events.get(id).is_some_and(|pdu| {
                pdu.auth_events
                    .iter()
                    .any(|a| conflicted.contains(a) || reaches_conflicted(a, events, conflicted, memo))
            });
        memo.insert(id, result);
        result
    }
    reachable
        .into_iter()
        .filter(|id| reaches_conflicted(id, events, &conflicted, &mut reaches))
        .cloned()
        .collect()
}
