//! Typing notifications and read receipts, shared with the room's other
//! servers as EDUs (`m.typing`, `m.receipt`).

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
    },
};
use serde_json::json;

use super::extract::Ruma;
use crate::{account_data, error::MatrixError, services::Services, storage::Receipt, visibility};

async fn must_be_joined(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<(), MatrixError> {
    match visibility::current_membership(svc, room_id, user).await?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(MatrixError::forbidden(format!("User {user} is not in room {room_id}"))),
    }
}

/// The body of `PUT /rooms/{roomId}/typing/{userId}`. `timeout` is only
/// meaningful with `typing: true`; the spec's schema requires only
/// `typing`, so a missing timeout means [`DEFAULT_TYPING_TIMEOUT`] (as
/// Synapse does) rather than an error.
#[derive(serde::Deserialize)]
struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

/// How long a user shows as typing when the client gives no timeout.
const DEFAULT_TYPING_TIMEOUT: Duration = Duration::from_secs(30);

/// `PUT /rooms/{roomId}/typing/{userId}` (not `.ruma`: ruma's request
/// requires the timeout that the spec's schema leaves optional).
pub async fn typing(
    State(svc): State<Arc<Services>>,
    Path((room_id, user_id)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Result<Json<serde_json::Value>, MatrixError> {
    let (parts, body) = req.into_parts();
    let owner = super::extract::token_owner(&svc, &parts).await?;
    let user = &owner.user_id;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("room ID: {e}")))?;
    let target = OwnedUserId::try_from(user_id).map_err(|e| MatrixError::invalid_param(format!("user ID: {e}")))?;
    let body = axum::body::to_bytes(body, 65536)
        .await
        .map_err(|e| MatrixError::not_json(format!("cannot read the body: {e}")))?;
    let body: TypingBody = serde_json::from_slice(&body).map_err(|e| {
        if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
            MatrixError::bad_json(format!("typing: {e}"))
        } else {
            MatrixError::not_json(format!("Content not JSON: {e}"))
        }
    })?;
    if target != *user {
        return Err(MatrixError::forbidden("Cannot set another user's typing state"));
    }
    must_be_joined(&svc, &room_id, user).await?;
    // (`set_typing` caps it.)
    let timeout = body
        .typing
        .then(|| body.timeout.map_or(DEFAULT_TYPING_TIMEOUT, Duration::from_millis));
    if svc.ephemeral.set_typing(&room_id, user, timeout).await? {
        let edu = json!({
            "edu_type": "m.typing",
            "content": { "room_id": room_id, "user_id": user, "typing": timeout.is_some() }
        });
        svc.sender.send_edu(&room_id, edu).await?;
    }
    Ok(Json(json!({})))
}

/// The event must be one of the room's.
async fn must_be_in_room(svc: &Services, room_id: &RoomId, event_id: &OwnedEventId) -> Result<(), MatrixError> {
    match svc.storage.event(event_id).await? {
        Some(event) if event.pdu.room_id == room_id => Ok(()),
        _ => Err(MatrixError::not_found(format!(
            "Event {event_id} not found in {room_id}"
        ))),
    }
}

/// Moves the user's fully-read marker (the room's `m.fully_read` account
/// data, which only this API sets).
async fn fully_read(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    event_id: &OwnedEventId,
) -> Result<(), MatrixError> {
    must_be_in_room(svc, room_id, event_id).await?;
    let content = json!({ "event_id": event_id });
    account_data::put(svc, user, Some(room_id), account_data::FULLY_READ, &content).await?;
    Ok(())
}

/// Records a receipt of `user` (and shares a public one).
async fn receipt(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    receipt_type: &str,
    event_id: &OwnedEventId,
) -> Result<(), MatrixError> {
    must_be_in_room(svc, room_id, event_id).await?;
    let ts: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
    let receipt = Receipt {
        room_id: room_id.to_owned(),
        user_id: user.to_owned(),
        receipt_type: receipt_type.to_owned(),
        event_id: event_id.clone(),
        ts,
        position: 0,
    };
    if !svc.ephemeral.put_receipt(&receipt).await? {
        // An older event than the one already read: nothing moves.
        return Ok(());
    }
    crate::push::evaluate::receipt_moved(svc, user);
    if receipt_type == "m.read" {
        let edu = json!({
            "edu_type": "m.receipt",
            "content": { room_id.as_str(): { "m.read": { user.as_str(): {
                "event_ids": [event_id], "data": { "ts": ts }
            } } } }
        });
        svc.sender.send_edu(room_id, edu).await?;
    }
    Ok(())
}

pub async fn create_receipt(
    svc: Arc<Services>,
    req: Ruma<create_receipt::v3::Request>,
) -> Result<create_receipt::v3::Response, MatrixError> {
    let user = &req.user().user_id;
    let b = &req.body;
    must_be_joined(&svc, &b.room_id, user).await?;
    match &b.receipt_type {
        ReceiptType::Read => receipt(&svc, &b.room_id, user, "m.read", &b.event_id).await?,
        ReceiptType::ReadPrivate => receipt(&svc, &b.room_id, user, "m.read.private", &b.event_id).await?,
        ReceiptType::FullyRead => fully_read(&svc, &b.room_id, user, &b.event_id).await?,
        other => {
            return Err(MatrixError::invalid_param(format!(
                "Unknown receipt type {}",
                other.as_str()
            )));
        }
    }
    Ok(create_receipt::v3::Response::new())
}

pub async fn read_markers(
    svc: Arc<Services>,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response, MatrixError> {
    let user = &req.user().user_id;
    let b = &req.body;
    must_be_joined(&svc, &b.room_id, user).await?;
    if let Some(event_id) = &b.fully_read {
        fully_read(&svc, &b.room_id, user, event_id).await?;
    }
    if let Some(event_id) = &b.read_receipt {
        receipt(&svc, &b.room_id, user, "m.read", event_id).await?;
    }
    if let Some(event_id) = &b.private_read_receipt {
        receipt(&svc, &b.room_id, user, "m.read.private", event_id).await?;
    }
    Ok(set_read_marker::v3::Response::new())
}
