//! Moving history to other servers: `/event`, `/state`, `/state_ids`,
//! `/event_auth`, `/backfill`, `/get_missing_events`, and jump to date
//! (`/timestamp_to_event`).
//!
//! Every room-scoped request is refused (403) when the room's server ACL
//! denies the origin, or when the origin has no user joined to the room
//! and the room is not world-readable (its users could see nothing);
//! events the origin's users could not see are sent redacted
//! ([`visibility::filter_for_server`]).

use std::sync::Arc;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, ServerName,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_event_by_timestamp, get_room_state, get_room_state_ids},
    },
    room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue;

use axum::extract::State;

use super::extract::{Fed, FedRaw};
use crate::{
    acl,
    error::MatrixError,
    services::Services,
    storage::{RoomInfo, StoredEvent},
    visibility,
};

/// Most events one `/backfill` or `/get_missing_events` answer carries,
/// whatever `limit` asks.
pub const MAX_HISTORY_PAGE: usize = 100;

/// The checks of every room-scoped request: the room is known, the ACL
/// lets the origin in, the origin is in the room (or the room is
/// world-readable).
async fn admit(
    svc: &Services,
    room_id: &RoomId,
    origin: &ServerName,
) -> Result<(RoomInfo, RoomVersionRules), MatrixError> {
    let room = svc
        .storage
        .room(room_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    let rules = room
        .version
        .rules()
        .ok_or_else(|| MatrixError::internal("room version", format!("{} has no rules", room.version)))?;
    if !acl::allows(svc, room_id, origin).await? {
        return Err(MatrixError::forbidden(
            "Server is banned from this room by its server ACL",
        ));
    }
    if !acl::server_in_room(svc, room_id, origin).await? && !visibility::world_readable(svc, room_id).await? {
        return Err(MatrixError::forbidden("Server is not in the room"));
    }
    Ok((room, rules))
}

/// `GET /timestamp_to_event/{roomId}`: the event of the room closest to
/// `ts` in direction `dir` that this server holds in its timeline (it asks
/// no other server: the asking server does that). Who may ask is who may
/// ask for `/backfill`.
pub async fn timestamp_to_event(
    svc: Arc<Services>,
    req: Fed<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response, MatrixError> {
    let b = &req.body;
    admit(&svc, &b.room_id, &req.origin).await?;
    let ts = u64::from(b.ts.get());
    let dir = crate::timestamp_lookup::direction(b.dir);
    let event = svc
        .storage
        .event_near_timestamp(&b.room_id, ts, dir)
        .await?
        .ok_or_else(|| crate::timestamp_lookup::not_found(ts, dir))?;
    Ok(get_event_by_timestamp::v1::Response::new(
        event.pdu.event_id.clone(),
        event.pdu.origin_server_ts,
    ))
}

pub(super) fn raw_pdu(event: &StoredEvent) -> Box<RawValue> {
    RawValue::from_string(event.pdu.json.to_string()).expect("stored PDU JSON is JSON")
}

/// A held timeline or outlier event of `room_id` that was not rejected.
async fn room_event(svc: &Services, room_id: &RoomId, event_id: &ruma::EventId) -> Result<StoredEvent, MatrixError> {
    match svc.storage.event(event_id).await? {
        Some(event) if event.pdu.room_id == room_id && event.meta.rejected.is_none() => Ok(event),
        _ => Err(MatrixError::not_found(format!("Could not find event {event_id}"))),
    }
}

pub async fn event(
    svc: Arc<Services>,
    req: Fed<get_event::v1::Request>,
) -> Result<get_event::v1::Response, MatrixError> {
    let not_found = || MatrixError::not_found(format!("Could not find event {}", req.body.event_id));
    let event = svc.storage.event(&req.body.event_id).await?.ok_or_else(not_found)?;
    if event.meta.rejected.is_some() {
        return Err(not_found());
    }
    let room_id = event.pdu.room_id.clone();
    let (_, rules) = admit(&svc, &room_id, &req.origin).await?;
    let event = visibility::filter_for_server(&svc, &req.origin, &rules.redaction, vec![event])
        .await?
        .pop()
        .ok_or_else(not_found)?;
    Ok(get_event::v1::Response::new(
        svc.server_name().to_owned(),
        MilliSecondsSinceUnixEpoch::now(),
        raw_pdu(&event),
    ))
}

/// The state before `event_id` and its auth chain, as event IDs.
async fn state_ids_at(
    svc: &Services,
    room_id: &RoomId,
    event_id: &ruma::EventId,
) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>), MatrixError> {
    let event = room_event(svc, room_id, event_id).await?;
    let group = event
        .meta
        .state_group_before
        .ok_or_else(|| MatrixError::not_found(format!("No state known at {event_id}")))?;
    let mut state: Vec<OwnedEventId> = svc.state.group(group).await?.values().cloned().collect();
    state.sort();
    let auth_chain = svc.storage.auth_chain(&state).await?;
    Ok((state, auth_chain))
}

pub async fn state_ids(
    svc: Arc<Services>,
    req: Fed<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response, MatrixError> {
    admit(&svc, &req.body.room_id, &req.origin).await?;
    super::membership::not_while_partial(&svc, &req.body.room_id).await?;
    let (pdu_ids, auth_chain_ids) = state_ids_at(&svc, &req.body.room_id, &req.body.event_id).await?;
    Ok(get_room_state_ids::v1::Response::new(auth_chain_ids, pdu_ids))
}

pub async fn state(
    svc: Arc<Services>,
    req: Fed<get_room_state::v1::Request>,
) -> Result<get_room_state::v1::Response, MatrixError> {
    admit(&svc, &req.body.room_id, &req.origin).await?;
    super::membership::not_while_partial(&svc, &req.body.room_id).await?;
    let (pdu_ids, auth_chain_ids) = state_ids_at(&svc, &req.body.room_id, &req.body.event_id).await?;
    let pdus = svc.storage.events(&pdu_ids).await?.iter().map(raw_pdu).collect();
    let auth_chain = svc.storage.events(&auth_chain_ids).await?.iter().map(raw_pdu).collect();
    Ok(get_room_state::v1::Response::new(auth_chain, pdus))
}

pub async fn event_auth(
    svc: Arc<Services>,
    req: Fed<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response, MatrixError> {
    admit(&svc, &req.body.room_id, &req.origin).await?;
    let event = room_event(&svc, &req.body.room_id, &req.body.event_id).await?;
    let chain = svc
        .storage
        .auth_chain(std::slice::from_ref(&event.pdu.event_id))
        .await?;
    let auth_chain = svc.storage.events(&chain).await?.iter().map(raw_pdu).collect();
    Ok(get_event_authorization::v1::Response::new(auth_chain))
}

fn page_limit(limit: ruma::UInt) -> usize {
    (u64::from(limit) as usize).min(MAX_HISTORY_PAGE)
}

pub async fn backfill(
    svc: Arc<Services>,
    req: Fed<get_backfill::v1::Request>,
) -> Result<get_backfill::v1::Response, MatrixError> {
    let b = &req.body;
    if b.v.is_empty() {
        return Err(MatrixError::missing_param(
            "At least one `v` (an event ID to backfill from) is required",
        ));
    }
    let (_, rules) = admit(&svc, &b.room_id, &req.origin).await?;
    let events = svc.storage.backfill(&b.room_id, &b.v, page_limit(b.limit)).await?;
    let events = visibility::filter_for_server(&svc, &req.origin, &rules.redaction, events).await?;
    Ok(get_backfill::v1::Response::new(
        svc.server_name().to_owned(),
        MilliSecondsSinceUnixEpoch::now(),
        events.iter().map(raw_pdu).collect(),
    ))
}

/// The body of `POST /get_missing_events/{roomId}`. The spec requires
/// both lists; like Synapse, a request without them is taken as asking
/// for nothing (an empty answer) rather than refused: read here rather
/// than by ruma, whose request type requires them.
#[derive(serde::Deserialize)]
struct MissingEventsBody {
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    min_depth: Option<u64>,
    #[serde(default)]
    earliest_events: Vec<OwnedEventId>,
    #[serde(default)]
    latest_events: Vec<OwnedEventId>,
}

pub async fn missing_events(
    State(svc): State<Arc<Services>>,
    req: FedRaw,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    let room_id = req
        .path_args
        .first()
        .and_then(|id| ruma::OwnedRoomId::try_from(id.as_str()).ok())
        .ok_or_else(|| MatrixError::invalid_param("Bad room ID"))?;
    let (_, rules) = admit(&svc, &room_id, &req.origin).await?;
    let body: MissingEventsBody = serde_json::from_slice(if req.body.is_empty() { b"{}" } else { &req.body })
        .map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let events = svc
        .storage
        .missing_events(
            &room_id,
            &body.earliest_events,
            &body.latest_events,
            // ten by default, as the spec has it
            body.limit.unwrap_or(10).min(MAX_HISTORY_PAGE as u64) as usize,
            body.min_depth.unwrap_or(0),
        )
        .await?;
    let events = visibility::filter_for_server(&svc, &req.origin, &rules.redaction, events).await?;
    Ok(axum::Json(
        serde_json::json!({ "events": events.iter().map(raw_pdu).collect::<Vec<_>>() }),
    ))
}
