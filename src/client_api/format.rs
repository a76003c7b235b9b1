//! PDUs as clients see them: the client event format, with `unsigned`
//! (`age`, `transaction_id` for the sending device, `redacted_because`,
//! `prev_content`).

use std::collections::HashMap;

use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, serde::Raw};
use serde_json::{Map, Value, json};

use crate::{
    error::MatrixError,
    services::Services,
    storage::{StoredEvent, TokenOwner},
};

/// Wraps JSON as one of ruma's raw event types.
pub fn raw<T>(value: &Value) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(value).expect("JSON values serialise"))
}

fn base_fields(event: &StoredEvent) -> Map<String, Value> {
    let pdu = &event.pdu;
    let mut source: Map<String, Value> = serde_json::from_str(&pdu.json).unwrap_or_default();
    let mut out = Map::new();
    for field in ["content", "origin_server_ts", "sender", "type", "state_key", "redacts"] {
        if let Some(value) = source.remove(field) {
            out.insert(field.to_owned(), value);
        }
    }
    if let Some(redacts) = &pdu.redacts {
        out.insert("redacts".to_owned(), json!(redacts));
    }
    out.insert("event_id".to_owned(), json!(pdu.event_id));
    out.insert("room_id".to_owned(), json!(pdu.room_id));
    out
}

fn age(event: &StoredEvent, now: u64) -> Value {
    json!(now.saturating_sub(u64::from(event.pdu.origin_server_ts.get())))
}

/// Client-format events, in the order given.
pub async fn client_events(
    svc: &Services,
    events: &[StoredEvent],
    viewer: Option<&TokenOwner>,
) -> Result<Vec<Value>, MatrixError> {
    let mut related: Vec<OwnedEventId> = Vec::new();
    for event in events {
        related.extend(event.meta.redacted_by.iter().cloned());
        related.extend(event.meta.replaces_state.iter().cloned());
    }
    let related: HashMap<OwnedEventId, StoredEvent> = if related.is_empty() {
        HashMap::new()
    } else {
        svc.storage
            .events(&related)
            .await?
            .into_iter()
            .map(|e| (e.pdu.event_id.clone(), e))
            .collect()
    };
    let now = u64::from(MilliSecondsSinceUnixEpoch::now().get());
    Ok(events
        .iter()
        .map(|event| client_event(event, viewer, &related, now))
        .collect())
}

/// Events in the format the filter's `event_format` asks for: the
/// client format, or with `federation` the events as servers exchange
/// them (every PDU field, hashes and signatures), with `event_id` and the
/// same `unsigned` data as the client format.
pub async fn events_as(
    svc: &Services,
    events: &[StoredEvent],
    viewer: Option<&TokenOwner>,
    federation: bool,
) -> Result<Vec<Value>, MatrixError> {
    let client = client_events(svc, events, viewer).await?;
    if !federation {
        return Ok(client);
    }
    Ok(events
        .iter()
        .zip(client)
        .map(|(event, mut client)| {
            let mut pdu: Map<String, Value> = serde_json::from_str(&event.pdu.json).unwrap_or_default();
            pdu.insert("event_id".to_owned(), json!(event.pdu.event_id));
            pdu.entry("room_id").or_insert_with(|| json!(event.pdu.room_id));
            if let Some(unsigned) = client.get_mut("unsigned").map(Value::take) {
                pdu.insert("unsigned".to_owned(), unsigned);
            }
            Value::Object(pdu)
        })
        .collect())
}

fn client_event(
    event: &StoredEvent,
    viewer: Option<&TokenOwner>,
    related: &HashMap<OwnedEventId, StoredEvent>,
    now: u64,
) -> Value {
    let mut out = base_fields(event);
    let mut unsigned = Map::new();
    unsigned.insert("age".to_owned(), age(event, now));
    if let (Some(viewer), Some((device, txn_id))) = (viewer, &event.meta.txn)
        && viewer.user_id == event.pdu.sender
        && viewer.device_id == *device
    {
        unsigned.insert("transaction_id".to_owned(), json!(txn_id));
    }
    if let Some(redaction) = event.meta.redacted_by.as_ref().and_then(|id| related.get(id)) {
        let mut because = base_fields(redaction);
        because.insert("unsigned".to_owned(), json!({ "age": age(redaction, now) }));
        unsigned.insert("redacted_because".to_owned(), Value::Object(because));
        // Not in the spec, but Synapse has always sent it and clients
        // (and SyTest) read it.
        unsigned.insert("redacted_by".to_owned(), json!(redaction.pdu.event_id));
    }
    if let Some(prev) = event.meta.replaces_state.as_ref() {
        unsigned.insert("replaces_state".to_owned(), json!(prev));
        if let Some(prev_event) = related.get(prev) {
            unsigned.insert(
                "prev_content".to_owned(),
                serde_json::from_str(prev_event.pdu.content.get()).unwrap_or_default(),
            );
            unsigned.insert("prev_sender".to_owned(), json!(prev_event.pdu.sender));
        }
    }
    out.insert("unsigned".to_owned(), Value::Object(unsigned));
    Value::Object(out)
}

/// A stripped state event (invites): `content`, `sender`, `state_key`,
/// `type`.
pub fn stripped(event: &StoredEvent) -> Value {
    let pdu = &event.pdu;
    json!({
        "content": pdu.content_value(),
        "sender": pdu.sender,
        "state_key": pdu.state_key,
        "type": pdu.kind.to_string(),
    })
}
