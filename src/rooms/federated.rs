//! Users of other servers joining and leaving rooms this server holds:
//! the templates (`make_join`, `make_leave`) and the signed events
//! (`send_join`, `send_leave`).

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{json, value::RawValue};

use super::{
    RoomError, heroes,
    persist::{NewCurrent, ToPersist, persist_pdu},
    send::{Sent, place},
};
use crate::{
    event_checks::{self, CheckError},
    events::{EventTemplate, Pdu, Placement, auth, build::unsigned_object},
    services::Services,
    state::StateMap,
    storage::{Membership, StateGroupId, StoredEvent, TimelineStatus},
};

impl From<CheckError> for RoomError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Invalid(m) => RoomError::Invalid(m),
            CheckError::NotCanonical(m) => RoomError::BadEvent(crate::events::build::BuildError::NotCanonical(m)),
            CheckError::Rejected(m) | CheckError::BadSignature(m) => RoomError::Forbidden(m),
            CheckError::Storage(e) => RoomError::Storage(e),
        }
    }
}

/// `make_join` / `make_leave`: an unsigned membership event of `user`
/// ("join" or "leave") that the auth rules would allow now, for their
/// server to sign.
pub async fn membership_template(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
) -> Result<(RoomVersionId, CanonicalJsonObject), RoomError> {
    let room = svc.storage.room(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let rules = room
        .version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(room.version.to_string()))?;
    let (_, state) = svc.state.current(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let template = EventTemplate::state("m.room.member", user.as_str(), json!({ "membership": membership }));
    let placed = place(svc, room_id, user, &template, &state, &rules).await?;
    let placement = Placement {
        room_id: Some(room_id),
        prev_events: placed.prev_events,
        auth_events: placed.auth_events,
        depth: placed.depth,
        ref_hashes: placed.ref_hashes,
    };
    let object = unsigned_object(&rules, user, &template, &placement, MilliSecondsSinceUnixEpoch::now())?;
    // Would it be allowed? (A placeholder ID stands for the one the
    // signed event will have.)
    let placeholder = OwnedEventId::try_from("$placeholder").expect("valid event ID");
    let probe =
        Pdu::from_canonical(placeholder, Some(room_id), &object).map_err(|e| RoomError::Invalid(e.to_string()))?;
    let ctx = auth::AuthContext::from_state(placed.auth_state.iter().map(|e| &*e.pdu));
    auth::check(&rules.authorization, &probe, &ctx).map_err(RoomError::Forbidden)?;
    Ok((room.version, object))
}

/// What accepting a join gives back: the join as stored, the room state
/// before it and the auth chain of that state.
pub struct AcceptedJoin {
    pub event: Sent,
    pub state: Vec<StoredEvent>,
    pub auth_chain: Vec<StoredEvent>,
    /// Whether the state leaves out the member events the joiner can do
    /// without (a partial-state join, MSC3706).
    pub members_omitted: bool,
    /// The servers with users joined before the join, sorted.
    pub servers_in_room: Vec<String>,
}

/// `send_join`: checks a join signed by `origin` and adds it to the room.
/// With `omit_members`, the answer is a partial state (see [`answer`]).
pub async fn accept_join(
    svc: &Services,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    origin: &ServerName,
    raw: &RawValue,
    omit_members: bool,
) -> Result<AcceptedJoin, RoomError> {
    let event = accept_membership(svc, room_id, event_id, origin, raw, "join").await?;
    answer(svc, event, omit_members).await
}

/// `send_leave`: checks a leave signed by `origin` and adds it to the room.
pub async fn accept_leave(
    svc: &Services,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    origin: &ServerName,
    raw: &RawValue,
) -> Result<(), RoomError> {
    accept_membership(svc, room_id, event_id, origin, raw, "leave")
        .await
        .map(|_| ())
}

async fn accept_membership(
    svc: &Services,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    origin: &ServerName,
    raw: &RawValue,
    membership: &str,
) -> Result<StoredEvent, RoomError> {
    let room = svc.storage.room(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let rules = room
        .version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(room.version.to_string()))?;
    let pdu = event_checks::check_signed(svc, &room.version, raw).await?;
    if pdu.event_id != event_id {
        return Err(RoomError::Invalid(format!(
            "the event's ID is {}, not {event_id}",
            pdu.event_id
        )));
    }
    if pdu.room_id != room_id {
        return Err(RoomError::Invalid("the event is for another room".to_owned()));
    }
    let is_own_membership = pdu.kind == TimelineEventType::RoomMember
        && pdu.membership().as_deref() == Some(membership)
        && pdu.state_key.as_deref() == Some(pdu.sender.as_str());
    if !is_own_membership {
        return Err(RoomError::Invalid(format!("not a {membership} event of its sender")));
    }
    if pdu.sender.server_name() != origin {
        return Err(RoomError::Forbidden(format!(
            "{origin} cannot send a {membership} for {}",
            pdu.sender
        )));
    }
    if let Some(existing) = svc.storage.event(&pdu.event_id).await?
        && !existing.meta.outlier
    {
        // A retried send_join/send_leave: answer as the first time.
        return Ok(existing);
    }

    let _guard = svc.rooms.lock(room_id).await?;
    let (current_group, current) = svc.state.current(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let before = state_before(svc, room_id, &pdu, (current_group, current.clone())).await?;
    event_checks::check_auth(svc, &rules, &pdu, &before.1).await?;
    let extends_current = before.0 == current_group;
    let new_current = if extends_current {
        NewCurrent::AfterEvent
    } else {
        // On a fork: the join counts now only if the current state allows
        // it too (else it is soft-failed and refused here).
        event_checks::check_against(svc, &rules, &pdu, &current).await?;
        NewCurrent::Apply {
            base: (current_group, current),
        }
    };
    let event = ToPersist {
        pdu,
        before: Some(before),
        current: new_current,
        status: TimelineStatus::Accepted,
        txn: None,
        backfilled: false,
    };
    let sent = persist_pdu(svc, event, &rules).await?;
    tracing::info!(%room_id, user = %sent.pdu.sender, %origin, %membership, "remote membership accepted");
    // Its server knows the event; the room's other servers learn it from us.
    svc.sender.send_pdu(room_id, &sent.pdu, &[origin]).await?;
    svc.storage
        .event(&sent.pdu.event_id)
        .await?
        .ok_or(RoomError::UnknownRoom)
}

/// The state before a remote event: the current state when its parents
/// are the room's forward extremities, else the state after its single
/// held parent.
async fn state_before(
    svc: &Services,
    room_id: &RoomId,
    pdu: &Pdu,
    current: (StateGroupId, Arc<StateMap>),
) -> Result<(StateGroupId, Arc<StateMap>), RoomError> {
    let mut extremities: Vec<OwnedEventId> = svc
        .storage
        .forward_extremities(room_id)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut prevs = pdu.prev_events.clone();
    extremities.sort();
    prevs.sort();
    if prevs == extremities {
        return Ok(current);
    }
    match prevs.as_slice() {
        [prev] => {
            let parent = svc
                .storage
                .event(prev)
                .await?
                .filter(|e| e.pdu.room_id == room_id)
                .ok_or_else(|| RoomError::Invalid(format!("unknown prev_event {prev}")))?;
            let group = parent
                .meta
                .state_group_after
                .ok_or_else(|| RoomError::Invalid(format!("no state known after {prev}")))?;
            Ok((group, svc.state.group(group).await?))
        }
        _ => Err(RoomError::Invalid(
            "a join on several parents that are not the room's forward extremities needs state resolution, \
             which weft does not do yet; ask make_join again"
                .to_owned(),
        )),
    }
}

/// The `send_join` answer: the state before the join and its auth chain,
/// and the servers joined before it.
///
/// With `omit_members` (a partial-state join, as the server-server spec's
/// "Joining Rooms" has it), the state keeps every event but the member
/// events, the joiner's own earlier membership, and — when the room has
/// neither a name nor a canonical alias — its heroes' (for the joiner to
/// name the room); the auth chain is the join's and the kept state's,
/// less what the state holds. The joiner fetches the rest later. A room
/// with nobody joined before (no server to fetch it from) gets the full
/// state.
async fn answer(svc: &Services, event: StoredEvent, omit_members: bool) -> Result<AcceptedJoin, RoomError> {
    let group = event
        .meta
        .state_group_before
        .ok_or_else(|| RoomError::Invalid("join without state".to_owned()))?;
    let before = svc.state.group(group).await?;
    let member_ids: Vec<OwnedEventId> = before
        .iter()
        .filter(|((kind, _), _)| *kind == StateEventType::RoomMember)
        .map(|(_, id)| id.clone())
        .collect();
    let members: Vec<Membership> = svc
        .storage
        .events(&member_ids)
        .await?
        .into_iter()
        .filter_map(|e| {
            Some(Membership {
                room_id: e.pdu.room_id.clone(),
                user_id: ruma::OwnedUserId::try_from(e.pdu.state_key.as_deref()?).ok()?,
                membership: e.pdu.membership()?,
                event_id: e.pdu.event_id.clone(),
                stream_ordering: e.meta.stream_ordering,
            })
        })
        .collect();
    let mut servers_in_room: Vec<String> = members
        .iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.user_id.server_name().to_string())
        .collect();
    servers_in_room.sort();
    servers_in_room.dedup();
    let members_omitted = omit_members && !servers_in_room.is_empty();

    let (state_ids, chain) = if members_omitted {
        let joiner = event.pdu.state_key.clone().unwrap_or_default();
        let mut kept: Vec<OwnedEventId> = before
            .iter()
            .filter(|((kind, key), _)| *kind != StateEventType::RoomMember || *key == joiner)
            .map(|(_, id)| id.clone())
            .collect();
        let named = [StateEventType::RoomName, StateEventType::RoomCanonicalAlias]
            .into_iter()
            .any(|kind| before.contains_key(&(kind, String::new())));
        if !named && let Ok(joiner) = ruma::UserId::parse(joiner.as_str()) {
            kept.extend(
                heroes::heroes(&members, &joiner)
                    .into_iter()
                    .map(|m| m.event_id.clone()),
            );
        }
        kept.sort();
        kept.dedup();
        let mut seeds = kept.clone();
        seeds.push(event.pdu.event_id.clone());
        let chain: Vec<OwnedEventId> = svc
            .storage
            .auth_chain(&seeds)
            .await?
            .into_iter()
            .filter(|id| kept.binary_search(id).is_err() && *id != event.pdu.event_id)
            .collect();
        (kept, chain)
    } else {
        let state_ids: Vec<OwnedEventId> = before.values().cloned().collect();
        let chain = svc.storage.auth_chain(&state_ids).await?;
        (state_ids, chain)
    };
    let state = svc.storage.events(&state_ids).await?;
    let auth_chain = svc.storage.events(&chain).await?;
    let sent = Sent {
        stream_ordering: event.meta.stream_ordering,
        pdu: event.pdu,
        forward_extremity: false,
    };
    Ok(AcceptedJoin {
        event: sent,
        state,
        auth_chain,
        members_omitted,
        servers_in_room,
    })
}
