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
//!
//! Redactions that can never take effect — of themselves, of an event of
//! another room — are withheld from users altogether (as Synapse does).

use std::collections::{HashMap, HashSet};

use ruma::{
    RoomId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde::Deserialize;

use crate::{
    services::Services,
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
    let erased = erased_senders(svc, &events).await?;
    let mut redaction_rules = None;
    let mut at_group: HashMap<StateGroupId, (Visibility, String)> = HashMap::new();
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let Some(group) = event.meta.state_group_before else {
            continue;
        };
        if pointless_redaction(svc, &event).await? {
            continue;
        }
        let (visibility, membership) = match at_group.get(&group) {
            Some(v) => v.clone(),
            None => {
                // Two entries of the state, not the whole state: a big
                // room's history has a group per state event.
                let visibility = visibility_at(svc, group).await?;
                let membership = svc
                    .state
                    .membership_at(group, user)
                    .await?
                    .unwrap_or_else(|| "leave".to_owned());
                at_group.insert(group, (visibility, membership.clone()));
                (visibility, membership)
            }
        };
        let (own_membership, new_visibility) = changes_made(&event.pdu, |key| key == user.as_str());
        let visible = sees(
            visibility,
            &membership,
            joined_now,
            own_membership.as_deref(),
            new_visibility,
        );
        let membership = match own_membership {
            Some(own) if membership != "join" => own,
            _ => membership,
        };
        if !visible {
            continue;
        }
        // An erased user's event, for someone who was not in the room when
        // it was sent: redacted.
        if membership != "join" && event.meta.redacted_by.is_none() && erased.contains(&event.pdu.sender) {
            if redaction_rules.is_none() {
                redaction_rules = Some(room_redaction_rules(svc, &event.pdu.room_id).await?);
            }
            if let Some(rules) = &redaction_rules {
                out.push(redacted_copy(&event, rules)?);
                continue;
            }
        }
        out.push(event);
    }
    Ok(out)
}

/// The senders of `events` who are this server's users and were erased.
async fn erased_senders(svc: &Services, events: &[StoredEvent]) -> Result<HashSet<ruma::OwnedUserId>> {
    let mut local: Vec<ruma::OwnedUserId> = events
        .iter()
        .map(|e| e.pdu.sender.clone())
        .filter(|s| s.server_name() == svc.server_name())
        .collect();
    local.sort();
    local.dedup();
    if local.is_empty() {
        return Ok(HashSet::new());
    }
    svc.storage.erased_users(&local).await
}

async fn room_redaction_rules(svc: &Services, room_id: &RoomId) -> Result<ruma::room_version_rules::RedactionRules> {
    let version = svc
        .storage
        .room(room_id)
        .await?
        .map(|r| r.version)
        .ok_or_else(|| crate::storage::StorageError::Corrupt(format!("room {room_id} not held")))?;
    version
        .rules()
        .map(|r| r.redaction)
        .ok_or_else(|| crate::storage::StorageError::Corrupt(format!("room version {version} has no rules")))
}

/// A redaction of an event (held here) of another room: withheld. (A
/// redaction of itself is shown, as Synapse shows it; like this one, it
/// is never applied.)
async fn pointless_redaction(svc: &Services, event: &StoredEvent) -> Result<bool> {
    let Some(target) = event
        .pdu
        .redacts
        .as_ref()
        .filter(|_| event.pdu.kind == TimelineEventType::RoomRedaction)
    else {
        return Ok(false);
    };
    if *target == event.pdu.event_id {
        return Ok(false);
    }
    Ok(svc
        .storage
        .event(target)
        .await?
        .is_some_and(|t| t.pdu.room_id != event.pdu.room_id))
}

/// What a server may see of a room's history: the rules above, where the
/// server's membership at an event is the best of its users' (`join`
/// over `invite`). Servers only get history of rooms they are in now, or
/// of world-readable rooms (the federation API refuses others); rule 3
/// (`shared`) is applied as "the server is in the room now". An event a
/// server may not see is given to it redacted rather than withheld: its
/// signatures still verify, and the requester's copy of the DAG has no
/// holes.
pub async fn filter_for_server(
    svc: &Services,
    server: &ruma::ServerName,
    rules: &ruma::room_version_rules::RedactionRules,
    events: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    let in_room_now = match events.first() {
        Some(first) => crate::acl::server_in_room(svc, &first.pdu.room_id, server).await?,
        None => return Ok(events),
    };
    let erased = erased_senders(svc, &events).await?;
    let mut at_group: HashMap<StateGroupId, (Visibility, String)> = HashMap::new();
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        // An erased user's events go to other servers redacted (the
        // erasure is not shared over federation: this is all it can do).
        if erased.contains(&event.pdu.sender) {
            out.push(if event.meta.redacted_by.is_some() {
                event
            } else {
                redacted_copy(&event, rules)?
            });
            continue;
        }
        let visible = match event.meta.state_group_before {
            None => false,
            Some(group) => {
                let (visibility, membership) = match at_group.get(&group) {
                    Some(v) => v.clone(),
                    None => {
                        let v = server_view(svc, server, group, in_room_now).await?;
                        at_group.insert(group, v.clone());
                        v
                    }
                };
                let (own_membership, new_visibility) = changes_made(&event.pdu, |key| {
                    ruma::UserId::parse(key).is_ok_and(|u| u.server_name() == server)
                });
                sees(
                    visibility,
                    &membership,
                    in_room_now,
                    own_membership.as_deref(),
                    new_visibility,
                )
            }
        };
        if visible || event.meta.redacted_by.is_some() {
            out.push(event);
        } else {
            out.push(redacted_copy(&event, rules)?);
        }
    }
    Ok(out)
}

/// Whether a state lets a user (or a server, for its users as a whole)
/// see an event: its history visibility and their membership in it, and
/// whether they are in the room now.
fn allows(visibility: Visibility, membership: &str, in_room_now: bool) -> bool {
    visibility == Visibility::WorldReadable
        || membership == "join"
        || (visibility == Visibility::Shared && in_room_now)
        || (visibility == Visibility::Invited && membership == "invite")
}

/// Whether an event is seen: the state before it lets it be ([`allows`]),
/// or the state after it does, for what the event changes of what the
/// rules look at ([`changes_made`]: the membership it gives the user or
/// one of the server's users, the history visibility it sets).
fn sees(
    visibility: Visibility,
    membership: &str,
    in_room_now: bool,
    own_membership: Option<&str>,
    new_visibility: Option<Visibility>,
) -> bool {
    allows(visibility, membership, in_room_now)
        || own_membership.is_some_and(|m| allows(visibility, m, in_room_now))
        || new_visibility.is_some_and(|v| allows(v, membership, in_room_now))
}

/// What `pdu` changes that the history visibility rules look at after
/// it: the membership it gives a user whose ID is its state key (`whose`
/// says which users), and the history visibility it sets.
fn changes_made(pdu: &crate::events::Pdu, whose: impl Fn(&str) -> bool) -> (Option<String>, Option<Visibility>) {
    let key = pdu.state_key.as_deref();
    let membership = match key {
        Some(key) if pdu.kind == TimelineEventType::RoomMember && whose(key) => pdu.membership(),
        _ => None,
    };
    let visibility = (pdu.kind == TimelineEventType::RoomHistoryVisibility && key == Some(""))
        .then(|| Visibility::parse(pdu.content.get()));
    (membership, visibility)
}

/// The history visibility in a group's state (its one entry read).
async fn visibility_at(svc: &Services, group: StateGroupId) -> Result<Visibility> {
    Ok(svc
        .state
        .event_at(group, StateEventType::RoomHistoryVisibility, "")
        .await?
        .map_or(Visibility::Shared, |e| Visibility::parse(e.pdu.content.get())))
}

/// The history visibility and the server's best membership in a state.
/// Where the visibility alone lets the server see the state's events
/// (world readable, or shared with a server in the room now), its
/// membership is not looked for ("leave"): only the one entry is read, not
/// the whole state, which for a big room's many groups (one per state
/// event) would cost the whole state per event served.
async fn server_view(
    svc: &Services,
    server: &ruma::ServerName,
    group: StateGroupId,
    in_room_now: bool,
) -> Result<(Visibility, String)> {
    let visibility = visibility_at(svc, group).await?;
    if allows(visibility, "leave", in_room_now) {
        return Ok((visibility, "leave".to_owned()));
    }
    let map = svc.state.group(group).await?;
    let suffix = format!(":{server}");
    let members: Vec<_> = map
        .iter()
        .filter(|((kind, key), _)| *kind == StateEventType::RoomMember && key.ends_with(&suffix))
        .map(|(_, id)| id.clone())
        .collect();
    let mut best = "leave".to_owned();
    for event in svc.storage.events(&members).await? {
        match event.pdu.membership().as_deref() {
            Some("join") => {
                best = "join".to_owned();
                break;
            }
            Some("invite") => best = "invite".to_owned(),
            _ => {}
        }
    }
    Ok((visibility, best))
}

fn redacted_copy(event: &StoredEvent, rules: &ruma::room_version_rules::RedactionRules) -> Result<StoredEvent> {
    let corrupt = |e: &dyn std::fmt::Display| crate::storage::StorageError::Corrupt(e.to_string());
    let redacted = ruma::canonical_json::redact(event.pdu.canonical_object(), rules, None).map_err(|e| corrupt(&e))?;
    let pdu = crate::events::Pdu::from_canonical(event.pdu.event_id.clone(), Some(&event.pdu.room_id), &redacted)
        .map_err(|e| corrupt(&e))?;
    Ok(StoredEvent {
        pdu: std::sync::Arc::new(pdu),
        meta: event.meta.clone(),
    })
}

/// The state key of a membership event, for callers building keys.
pub fn member_key(user: &UserId) -> crate::storage::StateKey {
    crate::state::key(StateEventType::RoomMember, user.as_str())
}
