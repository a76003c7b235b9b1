//! Sending and reading the timeline: send, redact, event, messages,
//! context, jump to date (`timestamp_to_event`).

use std::sync::Arc;

use ruma::{
    EventId, RoomId, UInt,
    api::{
        Direction as ApiDirection,
        client::{
            context::get_context,
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::{get_event_by_timestamp, get_room_event},
        },
    },
    events::TimelineEventType,
};
use serde_json::{Value, json};

use super::{extract::Ruma, format};
use crate::{
    account_data, backfill,
    error::MatrixError,
    events::EventTemplate,
    rooms::send::send_event,
    services::Services,
    storage::{Direction, StoredEvent, TokenOwner, TxnKey},
    timeline::{self, PageRequest, Reader, Token},
    timestamp_lookup, visibility,
};

/// Most events one `/messages` or `/context` call returns.
const MAX_PAGE: u64 = 1000;

pub async fn send_message(
    svc: Arc<Services>,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response, MatrixError> {
    req.content_given()?;
    req.send_rate(&svc)?;
    let owner = req.user();
    let b = &req.body;
    let content: Value =
        serde_json::from_str(b.body.json().get()).map_err(|e| MatrixError::bad_json(format!("content: {e}")))?;
    if !content.is_object() {
        return Err(MatrixError::bad_json("content must be an object"));
    }
    let template = EventTemplate::message(b.event_type.to_string(), content);
    let txn = TxnKey {
        user_id: owner.user_id.clone(),
        device_id: owner.device_id.clone(),
        scope: format!("send/{}/{}", b.room_id, b.event_type),
        txn_id: b.txn_id.to_string(),
    };
    let sent = send_event(&svc, &b.room_id, &owner.user_id, template, Some(txn)).await?;
    // Sending is activity; the message is sent whatever becomes of that.
    if let Err(e) = crate::presence::bump_active(&svc, &owner.user_id).await {
        tracing::info!(user = %owner.user_id, error = %e, "presence not bumped");
    }
    Ok(send_message_event::v3::Response::new(sent.pdu.event_id.clone()))
}

/// `POST /rooms/{roomId}/send/{eventType}`: the form of send without a
/// transaction ID, which Synapse still serves and older clients and tools
/// use. Not idempotent (there is no transaction to repeat); otherwise
/// checked and stored as `PUT …/send/{eventType}/{txnId}` is.
pub async fn send_without_txn(
    axum::extract::State(svc): axum::extract::State<Arc<Services>>,
    axum::extract::Path((room_id, event_type)): axum::extract::Path<(String, String)>,
    req: axum::extract::Request,
) -> Result<axum::Json<Value>, MatrixError> {
    let (parts, body) = req.into_parts();
    let (owner, appservice) = super::extract::token_owner_and_appservice(&svc, &parts).await?;
    super::extract::send_rate(&svc, &owner.user_id, appservice.as_deref())?;
    let room_id =
        ruma::OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("room ID: {e}")))?;
    // Past the event size limit: an event too large is refused by the
    // event checks (M_TOO_LARGE, 413) like any other.
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|e| MatrixError::new(crate::error::ErrCode::TooLarge, format!("Request body too large: {e}")))?;
    let content: Value =
        serde_json::from_slice(&body).map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))?;
    if !content.is_object() {
        return Err(MatrixError::bad_json("content must be an object"));
    }
    let template = EventTemplate::message(event_type, content);
    let sent = send_event(&svc, &room_id, &owner.user_id, template, None).await?;
    // Sending is activity; the message is sent whatever becomes of that.
    if let Err(e) = crate::presence::bump_active(&svc, &owner.user_id).await {
        tracing::info!(user = %owner.user_id, error = %e, "presence not bumped");
    }
    Ok(axum::Json(json!({ "event_id": sent.pdu.event_id })))
}

/// The longest identifier the spec allows (event IDs included), in bytes.
const MAX_ID_BYTES: usize = 255;

pub async fn redact(
    svc: Arc<Services>,
    req: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response, MatrixError> {
    req.send_rate(&svc)?;
    let owner = req.user();
    let b = &req.body;
    // The spec bounds identifiers to 255 bytes: a longer one names no
    // event, and would be carried in the redaction forever.
    if b.event_id.as_str().len() > MAX_ID_BYTES {
        return Err(MatrixError::invalid_param(format!(
            "An event ID is at most {MAX_ID_BYTES} bytes long"
        )));
    }
    let mut content = json!({});
    if let Some(reason) = &b.reason {
        content["reason"] = json!(reason);
    }
    let template = EventTemplate {
        kind: TimelineEventType::RoomRedaction,
        content,
        state_key: None,
        redacts: Some(b.event_id.clone()),
    };
    let txn = TxnKey {
        user_id: owner.user_id.clone(),
        device_id: owner.device_id.clone(),
        scope: format!("redact/{}/{}", b.room_id, b.event_id),
        txn_id: b.txn_id.to_string(),
    };
    let sent = send_event(&svc, &b.room_id, &owner.user_id, template, Some(txn)).await?;
    Ok(redact_event::v3::Response::new(sent.pdu.event_id.clone()))
}

/// `POST /rooms/{roomId}/redact/{eventId}`: the form of the redaction
/// endpoint from before transaction IDs (r0), still sent by older clients
/// and SyTest. Without a transaction ID each request is a new redaction.
pub async fn redact_without_txn(
    axum::extract::State(svc): axum::extract::State<Arc<Services>>,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    req: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    let (parts, body) = req.into_parts();
    let (owner, appservice) = super::extract::token_owner_and_appservice(&svc, &parts).await?;
    super::extract::send_rate(&svc, &owner.user_id, appservice.as_deref())?;
    let room_id =
        ruma::OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("room ID: {e}")))?;
    let event_id =
        ruma::OwnedEventId::try_from(event_id).map_err(|e| MatrixError::invalid_param(format!("event ID: {e}")))?;
    let body = axum::body::to_bytes(body, 65536)
        .await
        .map_err(|e| MatrixError::not_json(format!("cannot read the body: {e}")))?;
    let mut content = json!({});
    if !body.is_empty() {
        let given: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))?;
        if let Some(reason) = given.get("reason").and_then(|r| r.as_str()) {
            content["reason"] = json!(reason);
        }
    }
    let template = EventTemplate {
        kind: TimelineEventType::RoomRedaction,
        content,
        state_key: None,
        redacts: Some(event_id),
    };
    let sent = send_event(&svc, &room_id, &owner.user_id, template, None).await?;
    Ok(axum::Json(json!({ "event_id": sent.pdu.event_id })))
}

/// Whether the user may read the room's history at all; and whether they
/// are joined now.
async fn reader(svc: &Services, room_id: &RoomId, owner: &TokenOwner) -> Result<bool, MatrixError> {
    let membership = visibility::current_membership(svc, room_id, &owner.user_id).await?;
    match membership.as_deref() {
        Some("join") => Ok(true),
        Some("leave") | Some("ban") | Some("invite") => Ok(false),
        _ if visibility::world_readable(svc, room_id).await? => Ok(false),
        _ => Err(MatrixError::forbidden(format!(
            "User {} is not in room {room_id}",
            owner.user_id
        ))),
    }
}

/// A timeline event of the room that the user may see, or 404. An event
/// this server does not hold in the room's timeline (history from before
/// it joined, a permalink into a gap) is fetched from servers in the room
/// ([`backfill::fetch_event`]), after `fetch_rate` (the user's send rate:
/// a fetch costs other servers requests, as a send does).
async fn visible_event(
    svc: &Services,
    room_id: &RoomId,
    event_id: &EventId,
    owner: &TokenOwner,
    joined_now: bool,
    fetch_rate: &(dyn Fn() -> Result<(), MatrixError> + Sync),
) -> Result<StoredEvent, MatrixError> {
    let not_found = || MatrixError::not_found("Event not found");
    let event = match svc.storage.event(event_id).await? {
        // Only events in the room's timeline: not rejected and not
        // soft-failed (those are kept for the DAG, never shown to clients).
        Some(event) if event.pdu.room_id != room_id || event.meta.rejected.is_some() || event.meta.soft_failed => {
            return Err(not_found());
        }
        Some(event) if !event.meta.outlier => event,
        // Not held, or held only as an outlier (an auth or state event of
        // history this server never held).
        _ => {
            fetch_rate()?;
            backfill::fetch_event(svc, room_id, event_id, None)
                .await?
                .ok_or_else(not_found)?
        }
    };
    visibility::filter_for_user(svc, &owner.user_id, joined_now, vec![event])
        .await?
        .pop()
        .ok_or_else(not_found)
}

pub async fn get_event(
    svc: Arc<Services>,
    req: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response, MatrixError> {
    let owner = req.user();
    // The spec answers 404 both for a missing event and for one the user
    // may not see (here: a room they may not read).
    let joined_now = reader(&svc, &req.body.room_id, owner)
        .await
        .map_err(|_| MatrixError::not_found("Event not found"))?;
    let rate = || req.send_rate(&svc);
    let event = visible_event(&svc, &req.body.room_id, &req.body.event_id, owner, joined_now, &rate).await?;
    let json = format::client_events(&svc, &[event], Some(owner)).await?;
    Ok(get_room_event::v3::Response::new(format::raw(&json[0])))
}

/// `GET /rooms/{roomId}/timestamp_to_event`: the event closest to `ts`
/// in direction `dir`, from other servers when this one may not hold it
/// ([`crate::timestamp_lookup`]). For whoever may read the room's history
/// (as `/messages`).
pub async fn timestamp_to_event(
    svc: Arc<Services>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response, MatrixError> {
    let owner = req.user();
    let b = &req.body;
    reader(&svc, &b.room_id, owner).await?;
    // It may ask other servers, as a send makes this server write to them.
    req.send_rate(&svc)?;
    let ts = u64::from(b.ts.get());
    let dir = timestamp_lookup::direction(b.dir);
    let event = timestamp_lookup::closest(&svc, &b.room_id, ts, dir)
        .await?
        .ok_or_else(|| timestamp_lookup::not_found(ts, dir))?;
    Ok(get_event_by_timestamp::v1::Response::new(
        event.pdu.event_id.clone(),
        event.pdu.origin_server_ts,
    ))
}

fn parse_token(token: &str) -> Result<Token, MatrixError> {
    Token::parse(token).ok_or_else(|| MatrixError::invalid_param(format!("Invalid pagination token {token:?}")))
}

fn page_limit(limit: UInt) -> usize {
    u64::from(limit).clamp(0, MAX_PAGE) as usize
}

pub async fn messages(
    svc: Arc<Services>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response, MatrixError> {
    let owner = req.user();
    let b = &req.body;
    let joined_now = reader(&svc, &b.room_id, owner).await?;
    let dir = match b.dir {
        ApiDirection::Backward => Direction::Backward,
        ApiDirection::Forward => Direction::Forward,
    };
    let from_token = b.from.as_deref().map(parse_token).transpose()?;
    let to_token = b.to.as_deref().map(parse_token).transpose()?;
    let from = match from_token {
        Some(token) => timeline::gap(&svc, &b.room_id, token).await?,
        None if dir == Direction::Backward => timeline::END,
        None => timeline::START,
    };
    let to = match to_token {
        Some(token) => Some(timeline::gap(&svc, &b.room_id, token).await?),
        None => None,
    };
    let limit = page_limit(b.limit);
    let reader = Reader {
        user: &owner.user_id,
        joined_now,
        filter: Some(&b.filter),
    };
    let mut page = timeline::paginate_filling(&svc, &b.room_id, reader, PageRequest { from, to, dir, limit }).await?;
    // Events of ignored users are left out (the page may come out short,
    // which the `end` token allows for).
    let ignored = account_data::ignored_users(&svc, &owner.user_id).await?;
    page.events
        .retain(|e| !account_data::hidden_by_ignore(&ignored, &e.pdu));
    let start = match (&b.from, from_token) {
        (Some(given), _) => given.clone(),
        (None, _) if dir == Direction::Backward => Token::Stream(svc.notifier.head()).to_string(),
        (None, _) => Token::Topo(timeline::START).to_string(),
    };
    let chunk = format::client_events(&svc, &page.events, Some(owner)).await?;
    let mut response = get_message_events::v3::Response::new();
    response.start = start;
    response.end = page.next.map(|gap| Token::Topo(gap).to_string());
    response.chunk = chunk.iter().map(format::raw).collect();
    if !b.filter.lazy_load_options.is_disabled()
        && let Some(first) = page.events.first()
    {
        let members = senders_members(&svc, first, &page.events).await?;
        response.state = format::client_events(&svc, &members, Some(owner))
            .await?
            .iter()
            .map(format::raw)
            .collect();
    }
    Ok(response)
}

/// Lazy-loading room members in `/messages`: the membership events of
/// the chunk's senders, as the state after the chunk's first event has
/// them (spec: "Lazy-loading room members").
async fn senders_members(
    svc: &Services,
    first: &StoredEvent,
    chunk: &[StoredEvent],
) -> Result<Vec<StoredEvent>, MatrixError> {
    let Some(group) = first.meta.state_group_after else {
        return Ok(Vec::new());
    };
    let state = svc.state.group(group).await?;
    let mut keys: Vec<(ruma::events::StateEventType, String)> = chunk
        .iter()
        .map(|e| (ruma::events::StateEventType::RoomMember, e.pdu.sender.to_string()))
        .collect();
    keys.sort();
    keys.dedup();
    Ok(svc.state.events_for(&state, &keys).await?)
}

pub async fn context(
    svc: Arc<Services>,
    req: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response, MatrixError> {
    let owner = req.user();
    let b = &req.body;
    let joined_now = reader(&svc, &b.room_id, owner).await?;
    let rate = || req.send_rate(&svc);
    let event = visible_event(&svc, &b.room_id, &b.event_id, owner, joined_now, &rate).await?;
    let limit = page_limit(b.limit);
    let before_limit = limit / 2;
    let after_limit = limit - before_limit;
    let reader = Reader {
        user: &owner.user_id,
        joined_now,
        filter: Some(&b.filter),
    };
    let from = timeline::before(&event);
    let request = PageRequest {
        from,
        to: None,
        dir: Direction::Backward,
        limit: before_limit,
    };
    // A gap beside the event (either side) is filled as `/messages` fills it.
    let mut before = timeline::paginate_filling(&svc, &b.room_id, reader, request).await?;
    let from = timeline::after(&event);
    let request = PageRequest {
        from,
        to: None,
        dir: Direction::Forward,
        limit: after_limit,
    };
    let mut after = timeline::paginate_filling(&svc, &b.room_id, reader, request).await?;
    let ignored = account_data::ignored_users(&svc, &owner.user_id).await?;
    let start = before
        .events
        .last()
        .map_or_else(|| timeline::before(&event), timeline::before);
    let end = after
        .events
        .last()
        .map_or_else(|| timeline::after(&event), timeline::after);
    // Events of ignored users are left out, once the tokens are known.
    before
        .events
        .retain(|e| !account_data::hidden_by_ignore(&ignored, &e.pdu));
    after
        .events
        .retain(|e| !account_data::hidden_by_ignore(&ignored, &e.pdu));
    let mut state_events = match event.meta.state_group_before {
        Some(group) => {
            let map = svc.state.group(group).await?;
            let ids: Vec<_> = map.values().cloned().collect();
            svc.storage.events(&ids).await?
        }
        None => Vec::new(),
    };
    // The filter applies to the state too (not to the event itself).
    state_events.retain(|e| crate::filter::event_matches(&b.filter, &e.pdu));
    // Lazy-loading members: of the members, only the senders of the
    // events returned (spec: "Lazy-loading room members").
    if !b.filter.lazy_load_options.is_disabled() {
        let senders: std::collections::HashSet<&ruma::UserId> = before
            .events
            .iter()
            .chain(&after.events)
            .chain(std::iter::once(&event))
            .map(|e| e.pdu.sender.as_ref())
            .collect();
        state_events.retain(|e| {
            e.pdu.kind != TimelineEventType::RoomMember
                || e.pdu
                    .state_key
                    .as_deref()
                    .is_some_and(|k| senders.iter().any(|s| s.as_str() == k))
        });
    }

    let mut response = get_context::v3::Response::new();
    response.start = Some(Token::Topo(start).to_string());
    response.end = Some(Token::Topo(end).to_string());
    response.event = Some(format::raw(
        &format::client_events(&svc, std::slice::from_ref(&event), Some(owner)).await?[0],
    ));
    response.events_before = format::client_events(&svc, &before.events, Some(owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    response.events_after = format::client_events(&svc, &after.events, Some(owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    response.state = format::client_events(&svc, &state_events, Some(owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    Ok(response)
}
