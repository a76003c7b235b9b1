//! The path of every event this server creates: under the room's lock,
//! take the forward extremities as `prev_events`, select `auth_events`
//! from the current state, build and sign, check the auth rules against
//! the current state, then store event, edges, state and extremities in
//! one transaction and wake `/sync`.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
};

use super::{RoomError, power::power_levels};
use crate::{
    events::{EventTemplate, Pdu, Placement, auth, build::raw_content, build_event},
    services::Services,
    state::{StateMap, key},
    storage::{StateGroupId, StoredEvent, StreamOrdering, TxnKey},
};

/// At most this many forward extremities become one event's parents.
const MAX_PREV_EVENTS: usize = 10;

/// An event this server stored.
#[derive(Debug, Clone)]
pub struct Sent {
    pub pdu: Arc<Pdu>,
    pub stream_ordering: StreamOrdering,
    /// Storing it now made it a forward extremity of its room (false for
    /// an event held before).
    pub forward_extremity: bool,
}

/// Creates, checks and stores a local event in an existing room. A client
/// transaction ID seen before returns the event it produced then.
pub async fn send_event(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    template: EventTemplate,
    txn: Option<TxnKey>,
) -> Result<Sent, RoomError> {
    let _guard = svc.rooms.lock(room_id).await?;
    if let Some(txn) = &txn
        && let Some(event_id) = svc.storage.txn_event(txn).await?
    {
        let event = svc.storage.event(&event_id).await?.ok_or(RoomError::UnknownRoom)?;
        return Ok(Sent {
            pdu: event.pdu,
            stream_ordering: event.meta.stream_ordering,
            forward_extremity: false,
        });
    }
    match prepare(svc, room_id, sender, &template).await? {
        Prepared::Unchanged(sent) => Ok(sent),
        Prepared::New(event) => commit(svc, event, txn).await,
    }
}

/// What [`prepare`] made of a template.
pub(crate) enum Prepared {
    /// The same state event (sender and content) is already in force.
    Unchanged(Sent),
    /// A new event, checked, to be stored with [`commit`].
    New(Box<Built>),
}

/// A local event built, signed and checked against the room's current
/// state, not yet stored. The room's lock must be held from [`prepare`]
/// to [`commit`], so that the state and extremities it was built on are
/// still the room's when it is stored.
pub(crate) struct Built {
    pub pdu: Pdu,
    group: StateGroupId,
    state: Arc<StateMap>,
    rules: RoomVersionRules,
}

/// Builds and checks an event for `room_id`; the caller holds the room's
/// lock.
pub(crate) async fn prepare(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    template: &EventTemplate,
) -> Result<Prepared, RoomError> {
    let room = svc.storage.room(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let rules = room
        .version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(room.version.to_string()))?;
    let group = room.current_state_group.ok_or(RoomError::UnknownRoom)?;
    let state = svc.state.group(group).await?;

    if let Some(existing) = unchanged_state(svc, sender, template, &state).await? {
        return Ok(Prepared::Unchanged(existing));
    }
    if template.kind == TimelineEventType::RoomRedaction {
        check_redaction(svc, room_id, sender, template, &state, &rules).await?;
    }
    if template.kind == TimelineEventType::RoomTombstone {
        super::upgrade::check_tombstone(room_id, template)?;
    }

    let placed = place(svc, room_id, sender, template, &state, &rules).await?;
    let pdu = build_event(
        &svc.keys,
        &room.version,
        sender,
        template,
        Placement {
            room_id: Some(room_id),
            prev_events: placed.prev_events,
            auth_events: placed.auth_events,
            depth: placed.depth,
            ref_hashes: placed.ref_hashes,
        },
        MilliSecondsSinceUnixEpoch::now(),
    )?;
    let auth_state = placed.auth_state;
    let ctx = auth::AuthContext::from_state(auth_state.iter().map(|e| &*e.pdu));
    auth::check(&rules.authorization, &pdu, &ctx).map_err(RoomError::Forbidden)?;
    Ok(Prepared::New(Box::new(Built {
        pdu,
        group,
        state,
        rules,
    })))
}

/// Stores an event [`prepare`] built (the room's lock still held since)
/// and queues it for the room's other servers.
pub(crate) async fn commit(svc: &Services, event: Box<Built>, txn: Option<TxnKey>) -> Result<Sent, RoomError> {
    let Built {
        pdu,
        group,
        state,
        rules,
    } = *event;
    let room_id = pdu.room_id.clone();
    let sent = persist_local(svc, pdu, Some((group, state)), txn, &rules).await?;
    if let Err(e) = svc.sender.send_pdu(&room_id, &sent.pdu, &[]).await {
        tracing::error!(event_id = %sent.pdu.event_id, error = %e, "the event could not be queued for other servers");
    }
    Ok(sent)
}

/// Where a new event goes in the DAG: its parents (the forward
/// extremities), depth, and auth events (from `state`, which the caller
/// loaded as the current state).
pub(crate) struct Placed {
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    /// The state events the auth rules consult, the create event included.
    pub auth_state: Vec<StoredEvent>,
    /// Rooms v1 and v2: the reference hashes of the parents and auth
    /// events, which their events carry next to the IDs.
    pub ref_hashes: HashMap<OwnedEventId, String>,
}

pub(crate) async fn place(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    template: &EventTemplate,
    state: &StateMap,
    rules: &RoomVersionRules,
) -> Result<Placed, RoomError> {
    let mut extremities = svc.storage.forward_extremities(room_id).await?;
    extremities.truncate(MAX_PREV_EVENTS);
    let depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0).max(0) as u64 + 1;
    let prev_events: Vec<OwnedEventId> = extremities.into_iter().map(|(id, _)| id).collect();
    let auth_types = ruma::state_res::auth_types_for_event(
        &template.kind,
        sender,
        template.state_key.as_deref(),
        &raw_content(&template.content),
        &rules.authorization,
    )
    .map_err(|e| RoomError::Invalid(format!("bad event content: {e}")))?;
    let mut wanted = auth_types.clone();
    wanted.push(key(StateEventType::RoomCreate, ""));
    let auth_state = svc.state.events_for(state, &wanted).await?;
    let auth_events: Vec<OwnedEventId> = auth_types.iter().filter_map(|k| state.get(k).cloned()).collect();
    let ref_hashes = reference_hashes(svc, &prev_events, &auth_events, rules).await?;
    Ok(Placed {
        prev_events,
        auth_events,
        depth,
        auth_state,
        ref_hashes,
    })
}

/// Rooms v1 and v2 reference events as `[id, {"sha256": reference hash}]`:
/// the reference hashes of the held events among `prev` and `auth`.
/// Nothing for other versions.
pub(crate) async fn reference_hashes(
    svc: &Services,
    prev: &[OwnedEventId],
    auth: &[OwnedEventId],
    rules: &RoomVersionRules,
) -> Result<HashMap<OwnedEventId, String>, RoomError> {
    if rules.events_reference_format != ruma::room_version_rules::EventsReferenceFormatVersion::V1 {
        return Ok(HashMap::new());
    }
    let ids: Vec<OwnedEventId> = prev.iter().chain(auth).cloned().collect();
    Ok(svc
        .storage
        .events(&ids)
        .await?
        .into_iter()
        .filter_map(|e| {
            let hash = crate::events::ids::reference_hash(&e.pdu.canonical_object(), rules)?;
            Some((e.pdu.event_id.clone(), hash))
        })
        .collect())
}

/// A state event identical to the current one (same sender, same
/// content) is not sent again: the current one stands for it. Setting
/// state, or joining, twice is then idempotent, as clients expect.
async fn unchanged_state(
    svc: &Services,
    sender: &UserId,
    template: &EventTemplate,
    state: &StateMap,
) -> Result<Option<Sent>, RoomError> {
    let Some(state_key) = &template.state_key else {
        return Ok(None);
    };
    let kind = StateEventType::from(template.kind.to_string());
    let Some(current) = svc.state.event_for(state, kind, state_key).await? else {
        return Ok(None);
    };
    if current.pdu.sender != sender
        || current.meta.redacted_by.is_some()
        || current.pdu.content_value() != template.content
    {
        return Ok(None);
    }
    Ok(Some(Sent {
        pdu: current.pdu,
        stream_ordering: current.meta.stream_ordering,
        forward_extremity: false,
    }))
}

/// Stores a local event that passed its checks, with `before` the state
/// before it (`None` for a room's create event). The room's current
/// state becomes the state after it.
pub(super) async fn persist_local(
    svc: &Services,
    pdu: Pdu,
    before: Option<(StateGroupId, Arc<StateMap>)>,
    txn: Option<TxnKey>,
    rules: &RoomVersionRules,
) -> Result<Sent, RoomError> {
    let event = super::persist::ToPersist {
        pdu,
        before,
        current: super::persist::NewCurrent::AfterEvent,
        status: crate::storage::TimelineStatus::Accepted,
        txn,
        backfilled: false,
    };
    super::persist::persist_pdu(svc, event, rules).await
}

/// Whether `sender` may redact the event named by the template: their
/// own events always; others' with the room's redact power level.
async fn check_redaction(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    template: &EventTemplate,
    state: &StateMap,
    rules: &RoomVersionRules,
) -> Result<(), RoomError> {
    let target = match &template.redacts {
        Some(id) => svc.storage.event(id).await?,
        None => return Err(RoomError::Invalid("redaction without an event to redact".to_owned())),
    };
    if let Some(target) = &target {
        if target.pdu.room_id != room_id {
            return Err(RoomError::Invalid("the event to redact is in another room".to_owned()));
        }
        if target.pdu.sender == sender {
            return Ok(());
        }
    }
    let power = power_levels(svc, state, &rules.authorization).await?;
    if power.user_can_redact_event_of_other(sender) {
        Ok(())
    } else {
        Err(RoomError::Forbidden(
            "You don't have permission to redact other users' events".to_owned(),
        ))
    }
}

/// Replaces the stored target by its redacted form.
pub(super) async fn apply_redaction(
    svc: &Services,
    redaction: &Pdu,
    target: &ruma::EventId,
    rules: &RoomVersionRules,
) -> Result<(), RoomError> {
    let Some(event) = svc.storage.event(target).await? else {
        return Ok(());
    };
    // Only an event of the same room, and not the redaction itself.
    if event.pdu.room_id != redaction.room_id
        || event.pdu.event_id == redaction.event_id
        || event.meta.redacted_by.is_some()
    {
        return Ok(());
    }
    let redacted = ruma::canonical_json::redact(event.pdu.canonical_object(), &rules.redaction, None)
        .map_err(|e| RoomError::Invalid(format!("cannot redact {target}: {e}")))?;
    let json = serde_json::to_string(&redacted).map_err(|e| RoomError::Invalid(e.to_string()))?;
    svc.storage.apply_redaction(target, &json, &redaction.event_id).await?;
    Ok(())
}
