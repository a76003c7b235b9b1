//! Creating a room: the create event, the creator's join, power levels,
//! alias, the preset's rules, the initial state, name, topic, invites —
//! in the order the client-server spec gives for `/createRoom`.

use std::collections::HashSet;

use rand::RngExt;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId, UserId,
    events::TimelineEventType,
};
use serde_json::{Map, Value, json};

use super::{
    RoomError, membership,
    send::{self, send_event},
};
use crate::{
    config::SUPPORTED_ROOM_VERSIONS,
    events::{EventTemplate, Pdu, Placement, auth, build_event},
    services::Services,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// What a `/createRoom` asks for, already validated for types.
#[derive(Debug, Clone)]
pub struct CreateRoom {
    pub version: RoomVersionId,
    pub preset: Preset,
    pub creation_content: Map<String, Value>,
    /// `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, Value)>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub alias_localpart: Option<String>,
    pub power_level_override: Option<Map<String, Value>>,
    pub publish: bool,
}

pub async fn create_room(svc: &Services, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId, RoomError> {
    if !SUPPORTED_ROOM_VERSIONS.contains(&req.version) {
        return Err(RoomError::UnsupportedVersion(req.version.to_string()));
    }
    let rules = req
        .version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(req.version.to_string()))?;
    let alias = match &req.alias_localpart {
        Some(localpart) => {
            let alias = OwnedRoomAliasId::try_from(format!("#{localpart}:{}", svc.server_name()))
                .map_err(|e| RoomError::Invalid(format!("invalid room alias: {e}")))?;
            if localpart.contains([':', ' ', '\t', '\n']) {
                return Err(RoomError::Invalid("invalid characters in room alias".to_owned()));
            }
            if svc.storage.resolve_alias(&alias).await?.is_some() {
                return Err(RoomError::AliasInUse);
            }
            Some(alias)
        }
        None => None,
    };
    // 1. m.room.create, 2. the creator joins
    let room_id = if rules.authorization.room_create_event_id_as_room_id {
        None
    } else {
        Some(new_room_id(svc)?)
    };
    let create = build_create(
        svc,
        creator,
        &req.version,
        req.creation_content.clone(),
        room_id.as_deref(),
    )?;
    let room_id = found(svc, creator, create, &rules).await?;

    // 3. power levels
    let explicit_creators = rules.authorization.explicitly_privilege_room_creators;
    let mut users = Map::new();
    if !explicit_creators {
        users.insert(creator.to_string(), json!(100));
    }
    if req.preset == Preset::TrustedPrivateChat {
        for invitee in &req.invite {
            users.insert(invitee.to_string(), json!(100));
        }
    }
    let mut power = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": if req.preset == Preset::PublicChat { 50 } else { 0 },
        "notifications": { "room": 50 }
    });
    if let Some(overrides) = &req.power_level_override
        && let Value::Object(map) = &mut power
    {
        for (k, v) in overrides {
            map.insert(k.clone(), v.clone());
        }
    }
    let overridden: HashSet<(&str, &str)> = req
        .initial_state
        .iter()
        .map(|(t, k, _)| (t.as_str(), k.as_str()))
        .collect();
    let mut templates = vec![EventTemplate::state("m.room.power_levels", "", power)];

    // 4. canonical alias
    if let Some(alias) = &alias {
        templates.push(EventTemplate::state(
            "m.room.canonical_alias",
            "",
            json!({ "alias": alias }),
        ));
    }

    // 5. the preset's rules, unless initial_state sets them. guest_access
    // "forbidden" (public_chat) is what an absent m.room.guest_access
    // means (spec: m.room.guest_access), so that event is left out, as
    // Synapse leaves it out: clients see the state they would elsewhere.
    let (join_rule, guest_access) = match req.preset {
        Preset::PublicChat => ("public", None),
        Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", Some("can_join")),
    };
    let rules = [
        Some(("m.room.join_rules", json!({ "join_rule": join_rule }))),
        Some(("m.room.history_visibility", json!({ "history_visibility": "shared" }))),
        guest_access.map(|g| ("m.room.guest_access", json!({ "guest_access": g }))),
    ];
    for (kind, content) in rules.into_iter().flatten() {
        if !overridden.contains(&(kind, "")) {
            templates.push(EventTemplate::state(kind, "", content));
        }
    }

    // 6. initial state
    for (kind, state_key, content) in &req.initial_state {
        templates.push(EventTemplate::state(kind.clone(), state_key.clone(), content.clone()));
    }

    // 7. name and topic
    if let Some(name) = &req.name {
        templates.push(EventTemplate::state("m.room.name", "", json!({ "name": name })));
    }
    if let Some(topic) = &req.topic {
        templates.push(EventTemplate::state(
            "m.room.topic",
            "",
            json!({
                "topic": topic,
                "m.topic": [{ "body": topic, "mimetype": "text/plain" }]
            }),
        ));
    }
    for template in templates {
        send_event(svc, &room_id, creator, template, None).await?;
    }

    // 8. invites
    for invitee in &req.invite {
        membership::invite(svc, &room_id, creator, invitee, None, req.is_direct).await?;
    }

    if let Some(alias) = &alias {
        svc.storage
            .create_alias(alias, &room_id, creator)
            .await
            .map_err(|e| match e {
                crate::storage::StorageError::AlreadyExists => RoomError::AliasInUse,
                e => e.into(),
            })?;
    }
    if req.publish {
        svc.storage.set_room_published(&room_id, true).await?;
    }
    tracing::info!(%room_id, %creator, version = %req.version, "room created");
    Ok(room_id)
}

/// A fresh room ID of this server, for room versions that do not take
/// the create event's ID as the room's.
pub(super) fn new_room_id(svc: &Services) -> Result<OwnedRoomId, RoomError> {
    let local: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(18)
        .map(char::from)
        .collect();
    OwnedRoomId::try_from(format!("!{local}:{}", svc.server_name())).map_err(|e| RoomError::Invalid(e.to_string()))
}

/// A new room's `m.room.create` event, built, signed and checked but not
/// stored: `content` plus the room version (and `creator`, in versions
/// that have it). `room_id` is `None` for versions whose room ID is the
/// create event's (the event names the room then).
pub(super) fn build_create(
    svc: &Services,
    creator: &UserId,
    version: &RoomVersionId,
    mut content: Map<String, Value>,
    room_id: Option<&ruma::RoomId>,
) -> Result<Pdu, RoomError> {
    let rules = version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
    content.insert("room_version".to_owned(), json!(version.as_str()));
    if !rules.authorization.use_room_create_sender {
        content.insert("creator".to_owned(), json!(creator));
    }
    let create = build_event(
        &svc.keys,
        version,
        creator,
        &EventTemplate::state("m.room.create", "", Value::Object(content)),
        Placement {
            room_id,
            prev_events: vec![],
            auth_events: vec![],
            depth: 1,
            ref_hashes: Default::default(),
        },
        MilliSecondsSinceUnixEpoch::now(),
    )?;
    auth::check(&rules.authorization, &create, &auth::AuthContext::default()).map_err(RoomError::Forbidden)?;
    Ok(create)
}

/// Founds a room: stores its create event and joins its creator.
pub(super) async fn found(
    svc: &Services,
    creator: &UserId,
    create: Pdu,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<OwnedRoomId, RoomError> {
    let room_id = create.room_id.clone();
    {
        let _guard = svc.rooms.lock(&room_id).await?;
        send::persist_local(svc, create, None, None, rules).await?;
    }
    membership::join_local(svc, &room_id, creator).await?;
    Ok(room_id)
}

/// The event types `/createRoom`'s `initial_state` may not set: they are
/// the server's to create.
pub fn forbidden_initial_state(kind: &str) -> bool {
    kind == TimelineEventType::RoomCreate.to_string() || kind == TimelineEventType::RoomMember.to_string()
}
