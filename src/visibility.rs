//! Who may see which events: `m.room.history_visibility` applied as the
//! client-server spec's "History visibility" section orders it.
//!
//! For each event, with the state before it:
//! 1. `world_readable`: visible to all;
//! 2. the user's membership was `join`: visible;
//! 3. `shared`, and the user is joined now: visible (a user who joined
//!    later sees the history before their join);
//! 4. `invited`, and the user's membership was `invite`: visible;
//! 5. otherwise hidden.
//!
//! A user's own membership event is judged with the membership it sets
//! or the one it ends, whichever shows more (you see your own join, and
//! your own leave or kick), and an `m.room.history_visibility` event with
//! the more permissive of the old and new setting.

use std::collections::HashMap;

use ruma::{
    RoomId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde::Deserialize;

use crate::{
    services::Services,
    state::key,
    storage::{Result, StateGroupId, StoredEvent},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Visibility {
    // Ordered from most to least restrictive.
    Joined,
    Invited,
    Shared,
    WorldReadable,
}

impl Visibility {
    fn parse(content: &str) -> Visibility {
        #[derive(Deserialize)]
        struct Content {
            history_visibility: String,
        }
        match serde_json::from_str::<Content>(content)
            .map(|c| c.history_visibility)
            .as_deref()
        {
            Ok("world_readable") => Visibility::WorldReadable,
            Ok("invited") => Visibility::Invited,
            Ok("joined") => Visibility::Joined,
            // "shared", and anything unknown, per the spec's default.
            _ => Visibility::Shared,
        }
    }
}

/// The user's membership in the room's current state (`None`: unknown
/// room, or never a member).
pub async fn current_membership(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<Option<String>> {
    Ok(match svc.state.current(room_id).await? {
        Some((_, map)) => svc.state.membership(&map, user).await?,
        None => None,
    })
}

/// Whether the room's current history visibility is `world_readable`.
pub async fn world_readable(svc: &Services, room_id: &RoomId) -> Result<bool> {
    let Some((_, map)) = svc.state.current(room_id).await? else {
        return Ok(false);
    };
    Ok(svc
        .state
        .event_for(&map, StateEventType::RoomHistoryVisibility, "")
        .await?
        .is_some_and(|e| Visibility::parse(e.pdu.content.get()) == Visibility::WorldReadable))
}

/// Keeps the events `user` may see. `joined_now`: whether the user is a
/// member of the room at present.
pub async fn filter_for_user(
    svc: &Services,
    user: &UserId,
    joined_now: bool,
    events: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    let mut at_group: HashMap<StateGroupId, (Visibility, String)> = HashMap::new();
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let Some(group) = event.meta.state_group_before else {
            continue;
        };
        let (mut visibility, mut membership) = match at_group.get(&group) {
            Some(v) => v.clone(),
            None => {
                let map = svc.state.group(group).await?;
                let visibility = svc
                    .state
                    .event_for(&map, StateEventType::RoomHistoryVisibility, "")
                    .await?
                    .map_or(Visibility::Shared, |e| Visibility::parse(e.pdu.content.get()));
                let membership = svc
                    .state
                    .membership(&map, user)
                    .await?
                    .unwrap_or_else(|| "leave".to_owned());
                at_group.insert(group, (visibility, membership.clone()));
                (visibility, membership)
            }
        };
        let pdu = &event.pdu;
        if pdu.kind == TimelineEventType::RoomMember
            && pdu.state_key.as_deref() == Some(user.as_str())
            && membership != "join"
        {
            membership = pdu.membership().unwrap_or(membership);
        }
        if pdu.kind == TimelineEventType::RoomHistoryVisibility && pdu.state_key.as_deref() == Some("") {
            visibility = visibility.max(Visibility::parse(pdu.content.get()));
        }
        let visible = visibility == Visibility::WorldReadable
            || membership == "join"
            || (visibility == Visibility::Shared && joined_now)
            || (visibility == Visibility::Invited && membership == "invite");
        if visible {
            out.push(event);
        }
    }
    Ok(out)
}

/// The state key of a membership event, for callers building keys.
pub fn member_key(user: &UserId) -> crate::storage::StateKey {
    key(StateEventType::RoomMember, user.as_str())
}
