//! Push rules applied to an event as it is stored in a room's timeline
//! (local or from another server): for each local member it may notify —
//! the joined local users other than the sender, and a local user it
//! invites — the user's rules give the actions (ruma evaluates them).
//! Events that notify are recorded (counts, `GET /notifications`) and
//! queued for the user's pushers. The cost is bounded by the room's local
//! members: no history is read.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    OwnedEventId, OwnedUserId, UInt,
    events::{AnySyncTimelineEvent, TimelineEventType},
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    room_version_rules::RoomVersionRules,
    serde::Raw,
};
use serde_json::value::RawValue;

use super::rules;
use crate::{
    error::MatrixError,
    events::Pdu,
    rooms::power,
    services::Services,
    state::StateMap,
    storage::{StreamOrdering, push::NewNotification},
};

/// What the rules are evaluated against besides the event.
struct RoomContext<'a> {
    member_count: usize,
    power_levels: Option<&'a PushConditionPowerLevelsCtx>,
    /// The state before the event (for display names), when held.
    state: Option<&'a StateMap>,
    /// The room's name for pushes, when its state is not held here.
    room_name: Option<String>,
}

/// The local users an event may notify.
async fn targets(svc: &Services, pdu: &Pdu) -> Result<(Vec<OwnedUserId>, usize), MatrixError> {
    let joined = svc.joined.get(&pdu.room_id).await?;
    let server = svc.server_name();
    let mut users: Vec<OwnedUserId> = joined.local.iter().filter(|u| **u != pdu.sender).cloned().collect();
    if pdu.kind == TimelineEventType::RoomMember
        && let Some(target) = pdu.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok())
        && target.server_name() == server
        && target != pdu.sender
        && !users.contains(&target)
        && pdu.membership().as_deref() == Some("invite")
    {
        users.push(target);
    }
    Ok((users, joined.count()))
}

/// What in an event's content decides which rules apply.
#[derive(Clone, Copy)]
struct ContentTraits {
    /// `m.mentions` is there: the legacy mention rules do not apply.
    mentions: bool,
    /// `body` is there: display names may matter.
    body: bool,
}

impl ContentTraits {
    fn of(pdu: &Pdu) -> ContentTraits {
        let content = serde_json::from_str::<serde_json::Value>(pdu.content.get()).unwrap_or_default();
        ContentTraits {
            mentions: content.get("m.mentions").is_some_and(serde_json::Value::is_object),
            body: content.get("body").is_some_and(serde_json::Value::is_string),
        }
    }
}

/// The display names of `users` in the room (for the legacy
/// `contains_display_name` condition), from their member events in
/// `state`, read together (through the event cache); a user without one
/// is not in the map.
async fn display_names(
    svc: &Services,
    state: Option<&StateMap>,
    users: &[OwnedUserId],
) -> HashMap<OwnedUserId, String> {
    let Some(state) = state else {
        return HashMap::new();
    };
    let ids: Vec<OwnedEventId> = users
        .iter()
        .filter_map(|user| state.get(&crate::visibility::member_key(user)).cloned())
        .collect();
    let events = match svc.storage.events(&ids).await {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(error = %e, "member events for display names not read");
            return HashMap::new();
        }
    };
    events
        .iter()
        .filter_map(|event| {
            let user = ruma::UserId::parse(event.pdu.state_key.as_deref()?).ok()?;
            let content = serde_json::from_str::<serde_json::Value>(event.pdu.content.get()).ok()?;
            Some((user, content["displayname"].as_str()?.to_owned()))
        })
        .collect()
}

/// The actions `user`'s rules give `pdu`.
async fn actions_for(
    svc: &Services,
    user: &ruma::UserId,
    event: &FlattenedJson,
    pdu: &Pdu,
    room: &RoomContext<'_>,
    traits: ContentTraits,
    names: &HashMap<OwnedUserId, String>,
) -> Result<Vec<Action>, MatrixError> {
    let rules = rules::for_evaluation(svc, user).await?;
    let (ruleset, display_name) = match traits {
        ContentTraits { mentions: true, .. } => (rules.ruleset(false), String::new()),
        ContentTraits { body: false, .. } => (rules.ruleset(true), String::new()),
        _ => (rules.ruleset(true), names.get(user).cloned().unwrap_or_default()),
    };
    let mut ctx = PushConditionRoomCtx::new(
        pdu.room_id.clone(),
        UInt::try_from(room.member_count as u64).unwrap_or_default(),
        user.to_owned(),
        display_name,
    );
    if let Some(levels) = room.power_levels {
        ctx = ctx.with_power_levels(levels.clone());
    }
    // (ruma's `Ruleset::get_actions`, given the event flattened once for
    // all the room's users, not once per user: flattening was half the
    // cost of an event in a room of thousands of local members. A rule
    // never applies to its user's own event.)
    for rule in ruleset {
        let rule = rules.personal(rule, user);
        if rule.as_ref().applies(event, &ctx).await {
            return Ok(rule.as_ref().actions().to_vec());
        }
    }
    Ok(Vec::new())
}

/// Applies the local members' push rules to an event just stored (at
/// `stream_ordering`; `state` is the state before it).
pub async fn event_stored(
    svc: &Services,
    pdu: &Arc<Pdu>,
    stream_ordering: StreamOrdering,
    state: &StateMap,
    room_rules: &RoomVersionRules,
) -> Result<(), MatrixError> {
    let notifications = notifications(svc, pdu, state, room_rules).await?;
    record(svc, pdu, stream_ordering, &notifications, None).await
}

/// Writes the notifications of an event stored at `stream_ordering` (and
/// the pushes they queue, which wake the push sender).
async fn record(
    svc: &Services,
    pdu: &Pdu,
    stream_ordering: StreamOrdering,
    notifications: &[NewNotification],
    room_name: Option<&str>,
) -> Result<(), MatrixError> {
    let ts: u64 = pdu.origin_server_ts.get().into();
    let queued = svc
        .storage
        .add_notifications(
            &pdu.room_id,
            &pdu.event_id,
            stream_ordering,
            ts,
            notifications,
            room_name,
        )
        .await?;
    if queued {
        svc.push.sender.wake();
    }
    Ok(())
}

/// What the local members' push rules say of an event about to be stored
/// (`state` is the state before it): the users it notifies, for storage to
/// write with the event ([`crate::storage::NewTimelineEvent::notifications`]).
pub async fn notifications(
    svc: &Services,
    pdu: &Arc<Pdu>,
    state: &StateMap,
    room_rules: &RoomVersionRules,
) -> Result<Vec<NewNotification>, MatrixError> {
    let (users, member_count) = targets(svc, pdu).await?;
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let power_levels = power::power_levels(svc, state, &room_rules.authorization)
        .await
        .ok()
        .map(PushConditionPowerLevelsCtx::from);
    let room = RoomContext {
        member_count,
        power_levels: power_levels.as_ref(),
        state: Some(state),
        room_name: None,
    };
    evaluate_for(svc, pdu, users, room).await
}

/// Evaluates `pdu` for each of `users`: those it notifies.
async fn evaluate_for(
    svc: &Services,
    pdu: &Arc<Pdu>,
    users: Vec<OwnedUserId>,
    room: RoomContext<'_>,
) -> Result<Vec<NewNotification>, MatrixError> {
    let json = RawValue::from_string(pdu.json.to_string()).map_err(|e| MatrixError::internal("event JSON", e))?;
    let event = FlattenedJson::from_raw(&Raw::<AnySyncTimelineEvent>::from_json(json));
    let traits = ContentTraits::of(pdu);
    let names = match traits {
        ContentTraits {
            body: true,
            mentions: false,
        } => display_names(svc, room.state, &users).await,
        _ => HashMap::new(),
    };
    let mut notifications = Vec::new();
    for user in users {
        let actions = actions_for(svc, &user, &event, pdu, &room, traits, &names).await?;
        if !actions.iter().any(Action::should_notify) {
            continue;
        }
        notifications.push(NewNotification {
            user_id: user,
            highlight: actions.iter().any(Action::is_highlight),
            actions: serde_json::to_string(&actions).map_err(|e| MatrixError::internal("push actions", e))?,
        });
    }
    Ok(notifications)
}

/// An invite of a local user to a room held elsewhere (kept at
/// `stream_ordering`): the invitee's rules apply, with what the invite's
/// stripped state (`invite_state`, client format) tells of the room.
pub async fn remote_invite(
    svc: &Services,
    pdu: &Arc<Pdu>,
    stream_ordering: StreamOrdering,
    invitee: &ruma::UserId,
    invite_state: &[serde_json::Value],
) -> Result<(), MatrixError> {
    let of_type = |kind: &str| invite_state.iter().find(|e| e["type"] == kind && e["state_key"] == "");
    let text = |event: Option<&serde_json::Value>, field: &str| {
        event
            .and_then(|e| e["content"][field].as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let room_name = text(of_type("m.room.name"), "name").or(text(of_type("m.room.canonical_alias"), "alias"));
    let members = invite_state
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .count();
    let room = RoomContext {
        member_count: members.max(1),
        power_levels: None,
        state: None,
        room_name,
    };
    let room_name = room.room_name.clone();
    let notifications = evaluate_for(svc, pdu, vec![invitee.to_owned()], room).await?;
    record(svc, pdu, stream_ordering, &notifications, room_name.as_deref()).await
}

/// A local user's read receipt moved: their pushers get the new badge.
pub fn receipt_moved(svc: &Services, user: &ruma::UserId) {
    if user.server_name() == svc.server_name() {
        svc.push.gateway.badge(svc.storage.clone(), user.to_owned());
    }
}
