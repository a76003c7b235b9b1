//! `Pdu`: one room event, as signed and as stored, with its fields parsed.
//!
//! The canonical JSON is kept byte for byte as it was signed (for
//! federation and re-verification); the fields that the server reasons
//! about are parsed out once.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt,
    UserId, events::TimelineEventType,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A parsed PDU. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// The room, also for a v12 `m.room.create` (whose JSON has none).
    pub room_id: OwnedRoomId,
    room_id_in_json: bool,
    pub sender: OwnedUserId,
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Box<RawValue>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The redacted event: top-level `redacts` (up to v10) or
    /// `content.redacts` (v11 on).
    pub redacts: Option<OwnedEventId>,
    /// The canonical JSON of the PDU as signed: without `event_id`, except
    /// in rooms of versions 1 and 2, where it is part of the event.
    pub json: Arc<str>,
    pub rejected: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed PDU: {0}")]
pub struct PduParseError(pub String);

#[derive(Deserialize)]
struct Fields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    #[serde(rename = "type")]
    kind: String,
    state_key: Option<String>,
    content: Box<RawValue>,
    #[serde(default)]
    prev_events: Vec<EventRef>,
    #[serde(default)]
    auth_events: Vec<EventRef>,
    depth: UInt,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    redacts: Option<OwnedEventId>,
}

/// An entry of `prev_events` or `auth_events`: an event ID (rooms v3 on)
/// or an `[event ID, hashes]` pair (v1, v2; the hashes are not used).
/// Which form a room version requires is checked on receipt
/// (`events::ids::check_reference_format`).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    Pair(OwnedEventId, serde::de::IgnoredAny),
}

impl EventRef {
    fn into_id(self) -> OwnedEventId {
        match self {
            EventRef::Id(id) | EventRef::Pair(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct ContentRedacts {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a PDU from its canonical JSON. `room_id` is required when
    /// the JSON carries none (a v12 create event).
    pub fn from_json(event_id: OwnedEventId, room_id: Option<&RoomId>, json: Arc<str>) -> Result<Pdu, PduParseError> {
        let fields: Fields = serde_json::from_str(&json).map_err(|e| PduParseError(e.to_string()))?;
        let room_id_in_json = fields.room_id.is_some();
        let room_id = match (fields.room_id, room_id) {
            (Some(id), _) => id,
            (None, Some(id)) => id.to_owned(),
            (None, None) => return Err(PduParseError("missing room_id".to_owned())),
        };
        let kind = TimelineEventType::from(fields.kind);
        let redacts = match fields.redacts {
            Some(id) => Some(id),
            None if kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<ContentRedacts>(fields.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Pdu {
            event_id,
            room_id,
            room_id_in_json,
            sender: fields.sender,
            kind,
            state_key: fields.state_key,
            content: fields.content,
            prev_events: fields.prev_events.into_iter().map(EventRef::into_id).collect(),
            auth_events: fields.auth_events.into_iter().map(EventRef::into_id).collect(),
            depth: fields.depth.into(),
            origin_server_ts: fields.origin_server_ts,
            redacts,
            json,
            rejected: false,
        })
    }

    /// Parses a PDU held as a canonical JSON object.
    pub fn from_canonical(
        event_id: OwnedEventId,
        room_id: Option<&RoomId>,
        object: &CanonicalJsonObject,
    ) -> Result<Pdu, PduParseError> {
        let json = serde_json::to_string(object).map_err(|e| PduParseError(e.to_string()))?;
        Pdu::from_json(event_id, room_id, json.into())
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The signed JSON as an object (for re-signing or redaction).
    pub fn canonical_object(&self) -> CanonicalJsonObject {
        serde_json::from_str(&self.json).expect("stored PDU JSON is canonical")
    }

    /// The content, parsed as a JSON value.
    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or_default()
    }

    /// The `membership` of an `m.room.member` event.
    pub fn membership(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct M {
            membership: String,
        }
        if self.kind != TimelineEventType::RoomMember {
            return None;
        }
        serde_json::from_str::<M>(self.content.get()).ok().map(|m| m.membership)
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_in_json.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

impl Pdu {
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }
}
