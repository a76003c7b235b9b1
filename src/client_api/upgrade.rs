//! `POST /rooms/{roomId}/upgrade` (the "Room Upgrades" module).
//!
//! Not `.ruma`: ruma's request refuses a `new_version` that is not a room
//! version ID's grammar as malformed JSON, where the spec answers any
//! version this server does not know with `M_UNSUPPORTED_ROOM_VERSION`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Request, State},
};
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    error::{ErrCode, MatrixError},
    rooms::upgrade,
    services::Services,
};

#[derive(Deserialize)]
struct Body {
    new_version: String,
    #[serde(default)]
    additional_creators: Vec<OwnedUserId>,
}

pub async fn upgrade_room(
    State(svc): State<Arc<Services>>,
    Path(room_id): Path<String>,
    req: Request,
) -> Result<Json<Value>, MatrixError> {
    let (parts, body) = req.into_parts();
    let owner = super::extract::token_owner(&svc, &parts).await?;
    let room_id = OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("room ID: {e}")))?;
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|e| MatrixError::new(ErrCode::TooLarge, format!("Request body too large: {e}")))?;
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))?;
    let body: Body = serde_json::from_value(value).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let unsupported = || {
        MatrixError::new(
            ErrCode::UnsupportedRoomVersion,
            format!("room version {} is not supported", body.new_version),
        )
    };
    let new_version = RoomVersionId::try_from(body.new_version.as_str()).map_err(|_| unsupported())?;
    let replacement =
        upgrade::upgrade_room(&svc, &owner.user_id, &room_id, &new_version, &body.additional_creators).await?;
    Ok(Json(json!({ "replacement_room": replacement })))
}
