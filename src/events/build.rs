//! Building this server's own events: the PDU format of the room version,
//! content hash, signature, and the event ID (the reference hash; in rooms
//! of versions 1 and 2 a random ID of this server, part of the event).

use std::{collections::HashMap, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId,
    RoomVersionId, UserId, events::TimelineEventType, room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue;

use super::Pdu;
use crate::keys::ServerKeys;

/// What a local event says, before the server places it in the DAG.
#[derive(Debug, Clone)]
pub struct EventTemplate {
    pub kind: TimelineEventType,
    pub content: serde_json::Value,
    pub state_key: Option<String>,
    /// For `m.room.redaction`: the event redacted.
    pub redacts: Option<OwnedEventId>,
}

impl EventTemplate {
    pub fn state(kind: impl Into<String>, state_key: impl Into<String>, content: serde_json::Value) -> Self {
        EventTemplate {
            kind: TimelineEventType::from(kind.into()),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
        }
    }

    pub fn message(kind: impl Into<String>, content: serde_json::Value) -> Self {
        EventTemplate {
            kind: TimelineEventType::from(kind.into()),
            content,
            state_key: None,
            redacts: None,
        }
    }
}

/// Where the event goes in the DAG.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    /// `None` only for the `m.room.create` of a v12 room, whose ID is
    /// derived from the event.
    pub room_id: Option<&'a RoomId>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    /// Rooms v1 and v2: the reference hashes of the events in
    /// `prev_events` and `auth_events`, written next to their IDs (empty
    /// for other versions).
    pub ref_hashes: HashMap<OwnedEventId, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("content is not valid canonical JSON: {0}")]
    NotCanonical(String),
    #[error("event is too large: {0}")]
    TooLarge(String),
    #[error("cannot build event: {0}")]
    Other(String),
}

/// Room versions weft knows the rules of.
pub fn rules(version: &RoomVersionId) -> Option<RoomVersionRules> {
    version.rules()
}

/// The event as JSON before hashes and signatures: what `build_event`
/// signs, and what `make_join` hands another server to sign.
pub fn unsigned_object(
    rules: &RoomVersionRules,
    sender: &UserId,
    template: &EventTemplate,
    placement: &Placement<'_>,
    now: MilliSecondsSinceUnixEpoch,
) -> Result<CanonicalJsonObject, BuildError> {
    let id_list = |ids: &[OwnedEventId]| super::ids::reference_list(ids, &placement.ref_hashes, rules);
    let mut content = ruma::canonical_json::to_canonical_value(&template.content)
        .map_err(|e| BuildError::NotCanonical(e.to_string()))?;
    let mut object = CanonicalJsonObject::new();
    if let Some(redacts) = &template.redacts {
        if rules.redaction.content_field_redacts {
            if let CanonicalJsonValue::Object(map) = &mut content {
                map.insert("redacts".to_owned(), CanonicalJsonValue::String(redacts.to_string()));
            }
        } else {
            object.insert("redacts".to_owned(), CanonicalJsonValue::String(redacts.to_string()));
        }
    }
    if !matches!(content, CanonicalJsonValue::Object(_)) {
        return Err(BuildError::NotCanonical("content must be an object".to_owned()));
    }
    object.insert("auth_events".to_owned(), id_list(&placement.auth_events));
    object.insert("content".to_owned(), content);
    object.insert(
        "depth".to_owned(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(placement.depth).map_err(|_| BuildError::Other("depth out of range".to_owned()))?,
        ),
    );
    object.insert(
        "origin_server_ts".to_owned(),
        CanonicalJsonValue::Integer(now.get().into()),
    );
    object.insert("prev_events".to_owned(), id_list(&placement.prev_events));
    if let Some(room_id) = placement.room_id {
        object.insert("room_id".to_owned(), CanonicalJsonValue::String(room_id.to_string()));
    }
    object.insert("sender".to_owned(), CanonicalJsonValue::String(sender.to_string()));
    if let Some(state_key) = &template.state_key {
        object.insert("state_key".to_owned(), CanonicalJsonValue::String(state_key.clone()));
    }
    object.insert("type".to_owned(), CanonicalJsonValue::String(template.kind.to_string()));
    Ok(object)
}

/// Builds, hashes and signs an event. The result passes the room
/// version's format checks (including the 65536-byte size limit).
pub fn build_event(
    keys: &ServerKeys,
    version: &RoomVersionId,
    sender: &UserId,
    template: &EventTemplate,
    placement: Placement<'_>,
    now: MilliSecondsSinceUnixEpoch,
) -> Result<Pdu, BuildError> {
    let rules = rules(version).ok_or_else(|| BuildError::Other(format!("unknown room version {version}")))?;
    let mut object = unsigned_object(&rules, sender, template, &placement, now)?;
    super::ids::assign_event_id(&mut object, &rules, keys.server_name());
    ruma::signatures::hash_and_sign_event(
        keys.server_name().as_str(),
        keys.key_pair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => BuildError::TooLarge(e.to_string()),
        e => BuildError::Other(e.to_string()),
    })?;
    let event_id = super::ids::event_id_of(&object, &rules).map_err(BuildError::TooLarge)?;
    ruma::state_res::check_pdu_format(&object, &rules.event_format).map_err(BuildError::TooLarge)?;

    let room_id: OwnedRoomId = match placement.room_id {
        Some(room_id) => room_id.to_owned(),
        // v12: the room ID is the create event's reference hash.
        None => OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..]))
            .map_err(|e| BuildError::Other(e.to_string()))?,
    };
    let json: Arc<str> = serde_json::to_string(&object)
        .map_err(|e| BuildError::Other(e.to_string()))?
        .into();
    Pdu::from_json(event_id, Some(&room_id), json).map_err(|e| BuildError::Other(e.to_string()))
}

/// The raw content of a template, for the auth-event selection before the
/// event exists.
pub fn raw_content(content: &serde_json::Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(content).expect("a JSON value serialises")
}
