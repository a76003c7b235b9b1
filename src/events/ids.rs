//! Event IDs and the references between events, as the room version has
//! them.
//!
//! Rooms of versions 1 and 2 name events by an ID the sending server
//! chose (`$opaque:server`), carried in the event as `event_id` and
//! covered by its signatures; they reference other events as
//! `[event_id, {"sha256": reference hash}]` pairs. Later versions derive
//! the ID from the event's reference hash and reference events by ID
//! alone.

use std::collections::HashMap;

use rand::RngExt;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, ServerName,
    room_version_rules::{EventsReferenceFormatVersion, RoomVersionRules},
};

/// The ID of `object` (a signed PDU, `unsigned` removed): its `event_id`
/// field in rooms that carry one (v1, v2), else `$` and its reference hash.
pub fn event_id_of(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, String> {
    if rules.event_format.require_event_id {
        let Some(CanonicalJsonValue::String(id)) = object.get("event_id") else {
            return Err("missing or malformed event_id".to_owned());
        };
        let id = OwnedEventId::try_from(id.as_str()).map_err(|e| format!("event_id: {e}"))?;
        if id.server_name().is_none() {
            return Err("event_id names no server".to_owned());
        }
        return Ok(id);
    }
    let hash = ruma::signatures::reference_hash(object, rules).map_err(|e| format!("event ID: {e}"))?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| e.to_string())
}

/// A new event ID of `server` for a room that carries event IDs in its
/// events (v1, v2): random, as Synapse makes them. Other versions get
/// none (the reference hash is the ID).
pub fn new_event_id(rules: &RoomVersionRules, server: &ServerName) -> Option<OwnedEventId> {
    if !rules.event_format.require_event_id {
        return None;
    }
    let local: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(18)
        .map(char::from)
        .collect();
    Some(OwnedEventId::try_from(format!("${local}:{server}")).expect("a valid event ID"))
}

/// Sets a new event ID of `server` on an event of a v1/v2 room about to be
/// signed by `server` (replacing any the template had: the event ID's
/// server must sign the event). Does nothing for other versions.
pub fn assign_event_id(object: &mut CanonicalJsonObject, rules: &RoomVersionRules, server: &ServerName) {
    if let Some(id) = new_event_id(rules, server) {
        object.insert("event_id".to_owned(), CanonicalJsonValue::String(id.to_string()));
    }
}

/// `prev_events` / `auth_events` as the room version writes them: IDs, or
/// (v1, v2) `[id, {"sha256": hash}]` pairs with the referenced event's
/// reference hash when known (`{}` when not), as Synapse writes them.
pub fn reference_list(
    ids: &[OwnedEventId],
    hashes: &HashMap<OwnedEventId, String>,
    rules: &RoomVersionRules,
) -> CanonicalJsonValue {
    let entry = |id: &OwnedEventId| match rules.events_reference_format {
        EventsReferenceFormatVersion::V1 => {
            let mut hash = CanonicalJsonObject::new();
            if let Some(sha256) = hashes.get(id) {
                hash.insert("sha256".to_owned(), CanonicalJsonValue::String(sha256.clone()));
            }
            CanonicalJsonValue::Array(vec![
                CanonicalJsonValue::String(id.to_string()),
                CanonicalJsonValue::Object(hash),
            ])
        }
        _ => CanonicalJsonValue::String(id.to_string()),
    };
    CanonicalJsonValue::Array(ids.iter().map(entry).collect())
}

/// Whether `prev_events` and `auth_events` have the room version's form:
/// event IDs (v3 on), or `[event ID, object]` pairs (v1, v2). A PDU of the
/// other form is malformed.
pub fn check_reference_format(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<(), String> {
    for field in ["prev_events", "auth_events"] {
        let Some(CanonicalJsonValue::Array(entries)) = object.get(field) else {
            return Err(format!("{field} is not an array"));
        };
        for entry in entries {
            let ok = match (rules.events_reference_format, entry) {
                (EventsReferenceFormatVersion::V1, CanonicalJsonValue::Array(pair)) => matches!(
                    pair.as_slice(),
                    [CanonicalJsonValue::String(id), CanonicalJsonValue::Object(_)]
                        if OwnedEventId::try_from(id.as_str()).is_ok()
                ),
                (EventsReferenceFormatVersion::V1, _) => false,
                (_, CanonicalJsonValue::String(id)) => OwnedEventId::try_from(id.as_str()).is_ok(),
                _ => false,
            };
            if !ok {
                return Err(format!("malformed entry in {field} for the room version"));
            }
        }
    }
    Ok(())
}

/// The reference hash of a held event, for referencing it from an event
/// of a v1/v2 room.
pub fn reference_hash(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Option<String> {
    ruma::signatures::reference_hash(object, rules).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::server_name;

    #[test]
    fn v1_ids_are_random_and_name_the_server() {
        let a = new_event_id(&RoomVersionRules::V1, server_name!("example.org")).unwrap();
        let b = new_event_id(&RoomVersionRules::V1, server_name!("example.org")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.server_name().unwrap(), "example.org");
        assert!(new_event_id(&RoomVersionRules::V3, server_name!("example.org")).is_none());
    }

    #[test]
    fn v1_references_are_pairs_and_checked_by_version() {
        let id = OwnedEventId::try_from("$abc:example.org").unwrap();
        let hashes = HashMap::from([(id.clone(), "HASH".to_owned())]);
        let pairs = reference_list(std::slice::from_ref(&id), &hashes, &RoomVersionRules::V2);
        assert_eq!(
            serde_json::to_string(&pairs).unwrap(),
            r#"[["$abc:example.org",{"sha256":"HASH"}]]"#
        );
        let mut object = CanonicalJsonObject::new();
        object.insert("prev_events".to_owned(), pairs.clone());
        object.insert("auth_events".to_owned(), CanonicalJsonValue::Array(vec![]));
        check_reference_format(&object, &RoomVersionRules::V1).unwrap();
        check_reference_format(&object, &RoomVersionRules::V3).unwrap_err();
        let ids = reference_list(&[id], &hashes, &RoomVersionRules::V3);
        object.insert("prev_events".to_owned(), ids);
        check_reference_format(&object, &RoomVersionRules::V3).unwrap();
        check_reference_format(&object, &RoomVersionRules::V1).unwrap_err();
    }

    #[test]
    fn v1_event_id_is_the_field() {
        let mut object = CanonicalJsonObject::new();
        assert!(event_id_of(&object, &RoomVersionRules::V1).is_err());
        object.insert("event_id".to_owned(), CanonicalJsonValue::String("$x:a.org".to_owned()));
        assert_eq!(event_id_of(&object, &RoomVersionRules::V1).unwrap(), "$x:a.org");
        object.insert("event_id".to_owned(), CanonicalJsonValue::String("nope".to_owned()));
        assert!(event_id_of(&object, &RoomVersionRules::V1).is_err());
    }
}
