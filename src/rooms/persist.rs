//! Storing a checked event in a room's timeline — local or from another
//! server — with its state, and keeping the caches and `/sync` in step.

use std::sync::Arc;

use ruma::{events::StateEventType, room_version_rules::RoomVersionRules};

use super::{RoomError, send::Sent};
use crate::{
    events::Pdu,
    services::Services,
    state::{StateMap, key},
    storage::{
        CurrentStateChange, CurrentStateUpdate, NewCurrentState, NewTimelineEvent, StateGroupId, StateWrite, TxnKey,
    },
};

/// What the room's current state becomes.
pub enum NewCurrent {
    /// The state after the event: it extends the room's only forward
    /// extremity.
    AfterEvent,
    /// `base` (the current state) with the event applied: the event
    /// joined the DAG on a fork, and passed the auth rules against the
    /// current state too.
    Apply { base: (StateGroupId, Arc<StateMap>) },
    /// Unchanged (the event was soft-failed).
    Unchanged,
}

/// Stores `pdu` (checked: it passed the auth rules against `before`),
/// with `before` the state before it (`None` for a room's create event).
pub async fn persist_pdu(
    svc: &Services,
    pdu: Pdu,
    before: Option<(StateGroupId, Arc<StateMap>)>,
    current: NewCurrent,
    txn: Option<TxnKey>,
    rules: &RoomVersionRules,
) -> Result<Sent, RoomError> {
    let pdu = Arc::new(pdu);
    let state_key = pdu
        .state_key
        .as_ref()
        .map(|k| key(StateEventType::from(pdu.kind.to_string()), k));
    let replaces_state = state_key
        .as_ref()
        .and_then(|k| before.as_ref().and_then(|(_, map)| map.get(k).cloned()));
    let state_before = match &before {
        Some((group, _)) => StateWrite::Existing(*group),
        None => StateWrite::Delta {
            base: None,
            changes: Vec::new(),
        },
    };
    let own_change: Vec<_> = state_key
        .iter()
        .map(|k| CurrentStateChange {
            key: k.clone(),
            event_id: Some(pdu.event_id.clone()),
        })
        .collect();
    let current_state = match &current {
        NewCurrent::AfterEvent => Some(CurrentStateUpdate {
            state: NewCurrentState::AfterEvent,
            changes: own_change,
        }),
        NewCurrent::Apply { base } => Some(CurrentStateUpdate {
            state: NewCurrentState::Write(StateWrite::Delta {
                base: Some(base.0),
                changes: own_change
                    .iter()
                    .filter_map(|c| Some((c.key.clone(), c.event_id.clone()?)))
                    .collect(),
            }),
            changes: own_change,
        }),
        NewCurrent::Unchanged => None,
    };
    let persisted = svc
        .storage
        .persist_timeline_event(NewTimelineEvent {
            pdu: pdu.clone(),
            state_before,
            replaces_state,
            current_state,
            txn,
        })
        .await?;

    let before_map = before.map(|(_, map)| map).unwrap_or_default();
    svc.state.remember(persisted.state_group_before, before_map.clone());
    let with_event = |base: &StateMap| {
        let mut map = base.clone();
        if let Some(k) = &state_key {
            map.insert(k.clone(), pdu.event_id.clone());
        }
        Arc::new(map)
    };
    if state_key.is_some() {
        svc.state.remember(persisted.state_group_after, with_event(&before_map));
    }
    if let (Some(group), NewCurrent::Apply { base }) = (persisted.current_state_group, &current) {
        svc.state.remember(group, with_event(&base.1));
    }
    if let Some(target) = &pdu.redacts {
        super::send::apply_redaction(svc, &pdu, target, rules).await?;
    }
    svc.notifier.notify(persisted.stream_ordering);
    Ok(Sent {
        pdu,
        stream_ordering: persisted.stream_ordering,
    })
}
