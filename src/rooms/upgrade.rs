//! Room upgrades (`POST /rooms/{roomId}/upgrade`): a replacement room of
//! another room version, in the order of the client-server spec's "Room
//! Upgrades":
//!
//! 1. the upgrading user must be allowed to send `m.room.tombstone` in the
//!    old room: the tombstone is built and checked first, under the old
//!    room's lock, which is held until it is stored — so it is the old
//!    room's next event, and the new room's `predecessor` can name it;
//! 2. the new room's `m.room.create` has `predecessor` (and the old room's
//!    `type` and `m.federate`);
//! 3. the transferable state is copied: power levels (the upgrading user
//!    raised, for the copy, to the level the state needs), join rules,
//!    history visibility, guest access, name, topic, avatar, encryption,
//!    server ACLs, a space's children; then the bans;
//! 4. the tombstone is stored; local aliases move, and the canonical alias
//!    with them; what the old room's local users set for it (push rules,
//!    tags, `m.direct`) is copied, and its place in the directory moves;
//! 5. the old room's power levels are restricted (`events_default` and
//!    `invite` to the greater of 50 and `users_default + 1`), the new
//!    room's power levels become the old ones.
//!
//! A server that learns of an upgrade by a local user joining the new room
//! elsewhere does step 4's transfer then ([`joined_remote_room`]), once the
//! old room's tombstone confirms that the new room replaces it.

use std::collections::HashSet;

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    push::{AnyPushRuleRef, NewConditionalPushRule, NewPushRule, NewSimplePushRule, PushCondition, RuleKind, Ruleset},
    room_version_rules::RoomVersionRules,
};
use serde_json::{Map, Value, json};

use super::{
    RoomError, create,
    send::{self, Prepared, send_event},
};
use crate::{
    account_data,
    config::SUPPORTED_ROOM_VERSIONS,
    error::MatrixError,
    events::{EventTemplate, Pdu},
    services::Services,
    state::StateMap,
};

const TOMBSTONE: &str = "m.room.tombstone";
const DIRECT: &str = "m.direct";

/// The state copied to the new room, by type (state key `""`).
const TRANSFERRED: [&str; 8] = [
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
];

/// What a room without these events has (no join rules: invite only; no
/// history visibility: shared; no guest access: forbidden), stated in the
/// new room when the old one left them out.
const UNSET_MEANS: [(&str, &str, &str); 3] = [
    ("m.room.join_rules", "join_rule", "invite"),
    ("m.room.history_visibility", "history_visibility", "shared"),
    ("m.room.guest_access", "guest_access", "forbidden"),
];

/// Checks a local `m.room.tombstone` before it is built: a state event
/// whose `replacement_room` is a room ID other than its own room's.
pub fn check_tombstone(room_id: &RoomId, template: &EventTemplate) -> Result<(), RoomError> {
    if template.state_key.is_none() {
        return Err(RoomError::Invalid("m.room.tombstone must be a state event".to_owned()));
    }
    match template.content.get("replacement_room").and_then(Value::as_str) {
        None => Err(RoomError::Invalid(
            "m.room.tombstone needs a replacement_room string".to_owned(),
        )),
        Some(replacement) if replacement == room_id.as_str() => Err(RoomError::Invalid(
            "a tombstone cannot name the room it is sent in".to_owned(),
        )),
        Some(_) => Ok(()),
    }
}

/// Upgrades `old_room_id` to a new room of `new_version`; returns the new
/// room's ID. `additional_creators` are the new room's other creators, for
/// room versions that have them (ignored by the others).
pub async fn upgrade_room(
    svc: &Services,
    user: &UserId,
    old_room_id: &RoomId,
    new_version: &RoomVersionId,
    additional_creators: &[OwnedUserId],
) -> Result<OwnedRoomId, RoomError> {
    if !SUPPORTED_ROOM_VERSIONS.contains(new_version) {
        return Err(RoomError::UnsupportedVersion(new_version.to_string()));
    }
    let new_rules = new_version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(new_version.to_string()))?;
    let additional_creators: Vec<OwnedUserId> = if new_rules.authorization.additional_room_creators {
        additional_creators.iter().filter(|c| *c != user).cloned().collect()
    } else {
        Vec::new()
    };

    let old_lock = svc.rooms.lock(old_room_id).await?;
    let old_room = svc.storage.room(old_room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let old_rules = old_room
        .version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(old_room.version.to_string()))?;
    let (_, old_state) = svc.state.current(old_room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let old_create = svc
        .state
        .event_for(&old_state, StateEventType::RoomCreate, "")
        .await?
        .ok_or(RoomError::UnknownRoom)?;

    // The new room's create event; for room versions named by it, built
    // now, as the tombstone names the new room.
    let mut creation = creation_content(&old_create.pdu, old_room_id, &additional_creators);
    let mut early_create = None;
    let new_room_id = if new_rules.authorization.room_create_event_id_as_room_id {
        let create = create::build_create(svc, user, new_version, creation.clone(), None)?;
        let room_id = create.room_id.clone();
        early_create = Some(create);
        room_id
    } else {
        create::new_room_id(svc)?
    };

    // 1. May the user send the tombstone? (It is stored once the new room
    // stands; the old room's lock keeps its place meanwhile.)
    let tombstone = EventTemplate::state(
        TOMBSTONE,
        "",
        json!({ "body": "This room has been replaced", "replacement_room": new_room_id }),
    );
    let tombstone = match send::prepare(svc, old_room_id, user, &tombstone).await? {
        Prepared::New(built) => built,
        Prepared::Unchanged(_) => return Err(RoomError::Invalid("the room is already replaced".to_owned())),
    };

    // 2. The new room.
    let create = match early_create {
        Some(create) => create,
        None => {
            if let Some(Value::Object(predecessor)) = creation.get_mut("predecessor") {
                predecessor.insert("event_id".to_owned(), json!(tombstone.pdu.event_id));
            }
            create::build_create(svc, user, new_version, creation, Some(&new_room_id))?
        }
    };
    let new_room_id = create::found(svc, user, create, &new_rules).await?;

    // 3. The state that carries over.
    let old_power = power_levels_content(svc, &old_state).await?;
    let old_creators = privileged_creators(&old_create.pdu, &old_rules);
    let settled = new_room_power_levels(
        old_power.as_ref(),
        user,
        &old_creators,
        &additional_creators,
        &new_rules,
    );
    let for_copy = raised_for_copy(settled.clone(), user, &new_rules);
    let mut templates = vec![EventTemplate::state("m.room.power_levels", "", for_copy)];
    templates.extend(transferred_state(svc, &old_state, &old_create.pdu).await?);
    for template in templates {
        send_event(svc, &new_room_id, user, template, None).await?;
    }
    for ban in svc.storage.room_members(old_room_id, Some("ban")).await? {
        let Some(event) = svc.storage.event(&ban.event_id).await? else {
            continue;
        };
        let template = EventTemplate::state("m.room.member", ban.user_id.as_str(), event.pdu.content_value());
        if let Err(e) = send_event(svc, &new_room_id, user, template, None).await {
            tracing::warn!(%new_room_id, banned = %ban.user_id, error = %e, "a ban was not copied to the new room");
        }
    }

    // 4. The tombstone, then aliases, user state and the directory.
    send::commit(svc, tombstone, None).await?;
    drop(old_lock);
    tracing::info!(%old_room_id, %new_room_id, %user, version = %new_version, "room upgraded");

    transfer(svc, old_room_id, &new_room_id).await?;
    move_canonical_alias(svc, user, old_room_id, &new_room_id, &old_state).await;

    // 5. Power levels: the old room restricted, the new one as the old was.
    if let Some(old_power) = &old_power {
        let restricted = restricted_power_levels(old_power);
        if restricted != *old_power
            && let Err(e) = send_event(
                svc,
                old_room_id,
                user,
                EventTemplate::state("m.room.power_levels", "", restricted),
                None,
            )
            .await
        {
            tracing::info!(%old_room_id, error = %e, "the old room's power levels could not be restricted");
        }
    }
    send_event(
        svc,
        &new_room_id,
        user,
        EventTemplate::state("m.room.power_levels", "", settled),
        None,
    )
    .await?;
    Ok(new_room_id)
}

/// The new room's `m.room.create` content but its version: the
/// predecessor, the old room's `type` and `m.federate`, the additional
/// creators.
fn creation_content(old_create: &Pdu, old_room_id: &RoomId, additional_creators: &[OwnedUserId]) -> Map<String, Value> {
    let old = old_create.content_value();
    let mut content = Map::new();
    content.insert("predecessor".to_owned(), json!({ "room_id": old_room_id }));
    if let Some(kind) = old.get("type").filter(|t| t.is_string()) {
        content.insert("type".to_owned(), kind.clone());
    }
    if old.get("m.federate") == Some(&Value::Bool(false)) {
        content.insert("m.federate".to_owned(), json!(false));
    }
    if !additional_creators.is_empty() {
        content.insert("additional_creators".to_owned(), json!(additional_creators));
    }
    content
}

/// The old room's creators, when its version gives them a power above all
/// levels (none otherwise: their level is in the power levels then).
fn privileged_creators(create: &Pdu, rules: &RoomVersionRules) -> HashSet<OwnedUserId> {
    if !rules.authorization.explicitly_privilege_room_creators {
        return HashSet::new();
    }
    ruma::state_res::events::RoomCreateEvent::new(create)
        .creators(&rules.authorization)
        .unwrap_or_default()
}

async fn power_levels_content(svc: &Services, state: &StateMap) -> Result<Option<Value>, RoomError> {
    Ok(svc
        .state
        .event_for(state, StateEventType::RoomPowerLevels, "")
        .await?
        .map(|e| fixed_power_levels(&e.pdu.content_value())))
}

/// Power levels content with every level an integer: numbers that are
/// integers kept, strings of integers made numbers, anything else left out
/// (older room versions let levels be strings; newer ones refuse them).
fn fixed_power_levels(content: &Value) -> Value {
    fn level(v: &Value) -> Option<Value> {
        match v {
            Value::Number(n) => n.as_i64().map(Value::from),
            Value::String(s) => s.trim().parse::<i64>().ok().map(Value::from),
            _ => None,
        }
    }
    let mut fixed = Map::new();
    for (k, v) in content.as_object().into_iter().flatten() {
        match v {
            Value::Object(inner) => {
                let inner: Map<String, Value> = inner
                    .iter()
                    .filter_map(|(k1, v1)| level(v1).map(|l| (k1.clone(), l)))
                    .collect();
                fixed.insert(k.clone(), Value::Object(inner));
            }
            v => {
                if let Some(l) = level(v) {
                    fixed.insert(k.clone(), l);
                }
            }
        }
    }
    Value::Object(fixed)
}

fn int(content: &Value, field: &str, default: i64) -> i64 {
    content.get(field).and_then(Value::as_i64).unwrap_or(default)
}

/// The power levels the new room settles on: the old room's. Where the
/// new room version privileges its creators, they leave the `users` map
/// (they must not be in it); where the old one did and the new one does
/// not, the old room's creators get the top level, 100, in it.
fn new_room_power_levels(
    old: Option<&Value>,
    user: &UserId,
    old_creators: &HashSet<OwnedUserId>,
    additional_creators: &[OwnedUserId],
    new_rules: &RoomVersionRules,
) -> Value {
    let mut content = match old {
        Some(old) => old.clone(),
        // A room without power levels: its creator had 100.
        None => json!({ "users": { user.as_str(): 100 } }),
    };
    let Some(map) = content.as_object_mut() else {
        return content;
    };
    if !map.get("users").is_some_and(Value::is_object) {
        map.insert("users".to_owned(), Value::Object(Map::new()));
    }
    let Some(Value::Object(users)) = map.get_mut("users") else {
        return content;
    };
    if new_rules.authorization.explicitly_privilege_room_creators {
        users.remove(user.as_str());
        for creator in additional_creators {
            users.remove(creator.as_str());
        }
    } else {
        for creator in old_creators {
            users.entry(creator.to_string()).or_insert(json!(100));
        }
    }
    content
}

/// `settled` with the upgrading user raised, if needed, to the level that
/// sending every copied state event and ban takes: the greatest of
/// `state_default`, `ban` and the levels of `events`. (A creator of a room
/// version that privileges creators needs nothing.)
fn raised_for_copy(mut settled: Value, user: &UserId, new_rules: &RoomVersionRules) -> Value {
    if new_rules.authorization.explicitly_privilege_room_creators {
        return settled;
    }
    let events_max = settled
        .get("events")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_i64())
        .max()
        .unwrap_or(0);
    let needed = int(&settled, "state_default", 50)
        .max(int(&settled, "ban", 50))
        .max(events_max);
    let users_default = int(&settled, "users_default", 0);
    if let Some(users) = settled.get_mut("users").and_then(Value::as_object_mut) {
        let current = users
            .get(user.as_str())
            .and_then(Value::as_i64)
            .unwrap_or(users_default);
        if current < needed {
            users.insert(user.to_string(), json!(needed));
        }
    }
    settled
}

/// The old room's power levels once replaced: sending events and inviting
/// take at least 50, and more than the users' default.
fn restricted_power_levels(old: &Value) -> Value {
    let mut restricted = old.clone();
    let level = (int(old, "users_default", 0) + 1).max(50);
    if let Some(map) = restricted.as_object_mut() {
        for field in ["events_default", "invite"] {
            if int(old, field, 0) < level {
                map.insert(field.to_owned(), json!(level));
            }
        }
    }
    restricted
}

/// The state events to copy, as templates for the new room: the
/// transferable state the old room has, what it meant by leaving out join
/// rules, history visibility or guest access, and a space's children.
async fn transferred_state(
    svc: &Services,
    old_state: &StateMap,
    old_create: &Pdu,
) -> Result<Vec<EventTemplate>, RoomError> {
    let mut templates = Vec::new();
    for kind in TRANSFERRED {
        match svc.state.event_for(old_state, StateEventType::from(kind), "").await? {
            Some(event) => templates.push(EventTemplate::state(kind, "", event.pdu.content_value())),
            None => {
                if let Some((_, field, value)) = UNSET_MEANS.iter().find(|(k, _, _)| *k == kind) {
                    templates.push(EventTemplate::state(kind, "", json!({ *field: value })));
                }
            }
        }
    }
    if old_create.content_value().get("type").and_then(Value::as_str) == Some("m.space") {
        let children: Vec<_> = old_state
            .keys()
            .filter(|(kind, _)| *kind == StateEventType::SpaceChild)
            .cloned()
            .collect();
        for event in svc.state.events_for(old_state, &children).await? {
            let content = event.pdu.content_value();
            // Empty content: the child was removed.
            if content.as_object().is_some_and(|c| !c.is_empty())
                && let Some(state_key) = &event.pdu.state_key
            {
                templates.push(EventTemplate::state("m.space.child", state_key.clone(), content));
            }
        }
    }
    Ok(templates)
}

/// The old room's canonical alias moves with its local aliases: the old
/// room keeps the other servers' aliases, the new room gets this server's
/// (already repointed by [`transfer`]). Failures are logged: the upgrade
/// has happened by then.
async fn move_canonical_alias(
    svc: &Services,
    user: &UserId,
    old_room_id: &RoomId,
    new_room_id: &RoomId,
    old_state: &StateMap,
) {
    let event = match svc
        .state
        .event_for(old_state, StateEventType::RoomCanonicalAlias, "")
        .await
    {
        Ok(Some(event)) => event,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(%old_room_id, error = %e, "the canonical alias could not be read");
            return;
        }
    };
    let local = |v: &Value| {
        v.as_str()
            .and_then(|s| <&ruma::RoomAliasId>::try_from(s).ok())
            .is_some_and(|a| a.server_name() == svc.server_name())
    };
    let old = event.pdu.content_value();
    let mut old_content = old.as_object().cloned().unwrap_or_default();
    let mut new_content = Map::new();
    if let Some(alias) = old.get("alias").filter(|a| local(a)) {
        new_content.insert("alias".to_owned(), alias.clone());
        old_content.remove("alias");
    }
    if let Some(alt) = old.get("alt_aliases").and_then(Value::as_array) {
        let (moved, kept): (Vec<Value>, Vec<Value>) = alt.iter().cloned().partition(|a| local(a));
        if !moved.is_empty() {
            new_content.insert("alt_aliases".to_owned(), Value::Array(moved));
        }
        if kept.is_empty() {
            old_content.remove("alt_aliases");
        } else {
            old_content.insert("alt_aliases".to_owned(), Value::Array(kept));
        }
    }
    if new_content.is_empty() {
        return;
    }
    for (room_id, content) in [(old_room_id, old_content), (new_room_id, new_content)] {
        let template = EventTemplate::state("m.room.canonical_alias", "", Value::Object(content));
        if let Err(e) = send_event(svc, room_id, user, template, None).await {
            tracing::warn!(%room_id, error = %e, "the canonical alias could not be moved");
        }
    }
}

/// What moves with an upgraded room on this server: the push rules, tags
/// and `m.direct` entries of the old room's joined local users, the old
/// room's place in the directory, and the local aliases.
pub async fn transfer(svc: &Services, old_room_id: &RoomId, new_room_id: &RoomId) -> Result<(), RoomError> {
    for member in svc.storage.room_members(old_room_id, Some("join")).await? {
        if member.user_id.server_name() != svc.server_name() {
            continue;
        }
        if let Err(e) = copy_user_state(svc, &member.user_id, old_room_id, new_room_id).await {
            tracing::warn!(user = %member.user_id, %old_room_id, %new_room_id, error = %e,
                "the user's push rules, tags or m.direct were not copied to the new room");
        }
    }
    if svc.storage.room(old_room_id).await?.is_some_and(|r| r.published) {
        svc.storage.set_room_published(old_room_id, false).await?;
        svc.storage.set_room_published(new_room_id, true).await?;
    }
    let moved = svc.storage.move_aliases(old_room_id, new_room_id).await?;
    if !moved.is_empty() {
        tracing::info!(%old_room_id, %new_room_id, aliases = moved.len(), "aliases moved to the new room");
    }
    Ok(())
}

/// Copies what `user` set for the old room to the new one: `m.direct`
/// (the new room joins the list that has the old one), tags, and push
/// rules that apply to the old room.
async fn copy_user_state(
    svc: &Services,
    user: &UserId,
    old_room_id: &RoomId,
    new_room_id: &RoomId,
) -> Result<(), MatrixError> {
    account_data::try_update(svc, user, None, DIRECT, |current| {
        let Some(Value::Object(mut direct)) = current else {
            return Ok(None);
        };
        let holder = direct.values_mut().filter_map(Value::as_array_mut).find(|rooms| {
            rooms.iter().any(|r| r == old_room_id.as_str()) && !rooms.iter().any(|r| r == new_room_id.as_str())
        });
        match holder {
            Some(rooms) => {
                rooms.push(json!(new_room_id));
                Ok(Some(Value::Object(direct)))
            }
            None => Ok(None),
        }
    })
    .await?;

    let old_tags = account_data::tags_of(account_data::get(svc, user, Some(old_room_id), account_data::TAG).await?);
    if !old_tags.is_empty() {
        account_data::update(svc, user, Some(new_room_id), account_data::TAG, |current| {
            let mut tags = account_data::tags_of(current);
            for (tag, content) in old_tags {
                tags.entry(tag).or_insert(content);
            }
            json!({ "tags": tags })
        })
        .await?;
    }

    let rules = crate::push::rules::get(svc, user).await?;
    if !copied_push_rules(&rules.all, old_room_id, new_room_id).is_empty() {
        crate::push::rules::update(svc, user, |rules| {
            for rule in copied_push_rules(rules, old_room_id, new_room_id) {
                rules
                    .insert(rule, None, None)
                    .map_err(|e| MatrixError::internal("push rule copy", e))?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// The enabled push rules of `rules` that apply to the old room — its
/// room rule, and override and underride rules with an `event_match` on
/// `room_id` — made for the new room (under the new room's ID, as the
/// spec names room rules), but those the user already has.
fn copied_push_rules(rules: &Ruleset, old_room_id: &RoomId, new_room_id: &RoomId) -> Vec<NewPushRule> {
    let mut copies = Vec::new();
    if let Some(rule) = rules.room.iter().find(|r| r.rule_id == old_room_id && r.enabled)
        && rules.get(RuleKind::Room, new_room_id.as_str()).is_none()
    {
        copies.push(NewPushRule::Room(NewSimplePushRule::new(
            new_room_id.to_owned(),
            rule.actions.clone(),
        )));
    }
    let names_old_room = |c: &PushCondition| matches!(c, PushCondition::EventMatch(m) if m.key == "room_id" && m.pattern == old_room_id.as_str());
    for (kind, set) in [
        (RuleKind::Override, &rules.override_),
        (RuleKind::Underride, &rules.underride),
    ] {
        for rule in set.iter().filter(|r| r.enabled && !r.default) {
            if !rule.conditions.iter().any(names_old_room) {
                continue;
            }
            let rule_id = if rule.rule_id.contains(old_room_id.as_str()) {
                rule.rule_id.replace(old_room_id.as_str(), new_room_id.as_str())
            } else {
                new_room_id.to_string()
            };
            if let Some(AnyPushRuleRef::Override(_) | AnyPushRuleRef::Underride(_)) = rules.get(kind.clone(), &rule_id)
            {
                continue;
            }
            let conditions = rule
                .conditions
                .iter()
                .map(|c| match c {
                    PushCondition::EventMatch(m) if names_old_room(c) => PushCondition::EventMatch(
                        ruma::push::EventMatchConditionData::new(m.key.clone(), new_room_id.to_string()),
                    ),
                    c => c.clone(),
                })
                .collect();
            let new = NewConditionalPushRule::new(rule_id, conditions, rule.actions.clone());
            copies.push(match kind {
                RuleKind::Override => NewPushRule::Override(new),
                _ => NewPushRule::Underride(new),
            });
        }
    }
    copies
}

/// After a local user joined `room_id` through another server: if its
/// create event names a predecessor held here whose tombstone names
/// `room_id`, the upgrade is confirmed and what moves with it moves here
/// too ([`transfer`]). A predecessor the old room does not confirm is
/// ignored (a room cannot claim another's aliases by naming it).
pub async fn joined_remote_room(svc: &Services, room_id: &RoomId) -> Result<(), RoomError> {
    let Some(old_room_id) = predecessor(svc, room_id).await? else {
        return Ok(());
    };
    if !replaced_by(svc, &old_room_id, room_id).await? {
        tracing::info!(%room_id, %old_room_id, "predecessor not confirmed by a tombstone held here; nothing moved");
        return Ok(());
    }
    transfer(svc, &old_room_id, room_id).await
}

/// The room a room's create event names as its predecessor.
async fn predecessor(svc: &Services, room_id: &RoomId) -> Result<Option<OwnedRoomId>, RoomError> {
    let Some((_, state)) = svc.state.current(room_id).await? else {
        return Ok(None);
    };
    let Some(create) = svc.state.event_for(&state, StateEventType::RoomCreate, "").await? else {
        return Ok(None);
    };
    Ok(create
        .pdu
        .content_value()
        .get("predecessor")
        .and_then(|p| p.get("room_id"))
        .and_then(Value::as_str)
        .and_then(|r| OwnedRoomId::try_from(r).ok()))
}

/// Whether `old_room_id`, held here, has a tombstone naming `new_room_id`.
async fn replaced_by(svc: &Services, old_room_id: &RoomId, new_room_id: &RoomId) -> Result<bool, RoomError> {
    let Some((_, state)) = svc.state.current(old_room_id).await? else {
        return Ok(false);
    };
    let tombstone = svc.state.event_for(&state, StateEventType::from(TOMBSTONE), "").await?;
    Ok(tombstone.is_some_and(|t| {
        t.pdu.content_value().get("replacement_room").and_then(Value::as_str) == Some(new_room_id.as_str())
    }))
}

/// For a tombstone received from another server: the room it names, if
/// local users already joined that room and it names this one as its
/// predecessor (the join came before the tombstone), gets what moves
/// with an upgrade.
pub async fn received_tombstone(svc: &Services, pdu: &Pdu) -> Result<(), RoomError> {
    if pdu.kind != TimelineEventType::RoomTombstone || pdu.state_key.as_deref() != Some("") {
        return Ok(());
    }
    let Some(new_room_id) = pdu
        .content_value()
        .get("replacement_room")
        .and_then(Value::as_str)
        .and_then(|r| OwnedRoomId::try_from(r).ok())
    else {
        return Ok(());
    };
    if predecessor(svc, &new_room_id).await?.as_deref() != Some(&*pdu.room_id)
        || !replaced_by(svc, &pdu.room_id, &new_room_id).await?
    {
        return Ok(());
    }
    transfer(svc, &pdu.room_id, &new_room_id).await
}
