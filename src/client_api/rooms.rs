//! `/createRoom` and `/joined_rooms`.

use std::sync::Arc;

use ruma::api::client::{
    membership::joined_rooms,
    room::{Visibility, create_room},
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::extract::Ruma;
use crate::{
    error::MatrixError,
    rooms::create::{self, CreateRoom, Preset},
    services::Services,
};

fn json_object<T>(raw: &ruma::serde::Raw<T>, what: &str) -> Result<Map<String, Value>, MatrixError> {
    serde_json::from_str(raw.json().get()).map_err(|e| MatrixError::bad_json(format!("{what}: {e}")))
}

pub async fn create_room(
    svc: Arc<Services>,
    req: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response, MatrixError> {
    let creator = req.user().user_id.clone();
    let body = req.body;
    let preset = match &body.preset {
        Some(create_room::v3::RoomPreset::PublicChat) => Preset::PublicChat,
        Some(create_room::v3::RoomPreset::TrustedPrivateChat) => Preset::TrustedPrivateChat,
        Some(create_room::v3::RoomPreset::PrivateChat) => Preset::PrivateChat,
        Some(other) => return Err(MatrixError::bad_json(format!("unknown preset {}", other.as_str()))),
        None if body.visibility == Visibility::Public => Preset::PublicChat,
        None => Preset::PrivateChat,
    };
    let mut creation_content = match &body.creation_content {
        Some(raw) => json_object(raw, "creation_content")?,
        None => Map::new(),
    };
    // The server sets these; a client's values are not taken.
    creation_content.remove("room_version");
    creation_content.remove("creator");
    if let Some(kind) = creation_content.get("type")
        && !kind.is_string()
    {
        return Err(MatrixError::bad_json("creation_content.type must be a string"));
    }

    #[derive(Deserialize)]
    struct InitialState {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        state_key: String,
        content: Map<String, Value>,
    }
    let mut initial_state = Vec::new();
    for raw in &body.initial_state {
        let event: InitialState =
            serde_json::from_str(raw.json().get()).map_err(|e| MatrixError::bad_json(format!("initial_state: {e}")))?;
        if create::forbidden_initial_state(&event.kind) {
            return Err(MatrixError::bad_json(format!(
                "initial_state may not contain {}",
                event.kind
            )));
        }
        initial_state.push((event.kind, event.state_key, Value::Object(event.content)));
    }
    let power_level_override = match &body.power_level_content_override {
        Some(raw) => Some(json_object(raw, "power_level_content_override")?),
        None => None,
    };
    let request = CreateRoom {
        version: body
            .room_version
            .clone()
            .unwrap_or_else(|| svc.config.default_room_version.clone()),
        preset,
        creation_content,
        initial_state,
        invite: body.invite.clone(),
        is_direct: body.is_direct,
        name: body.name.clone(),
        topic: body.topic.clone(),
        alias_localpart: body.room_alias_name.clone(),
        power_level_override,
        publish: body.visibility == Visibility::Public,
    };
    let room_id = create::create_room(&svc, &creator, request).await?;
    // Third-party invites last, as the spec orders them (after `invite`).
    for third_party in &body.invite_3pid {
        crate::rooms::third_party::invite(
            &svc,
            &room_id,
            &creator,
            &third_party.id_server,
            &third_party.id_access_token,
            third_party.medium.as_str(),
            &third_party.address,
        )
        .await?;
    }
    Ok(create_room::v3::Response::new(room_id))
}

pub async fn joined_rooms(
    svc: Arc<Services>,
    req: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response, MatrixError> {
    let rooms = svc.storage.joined_rooms(&req.user().user_id).await?;
    Ok(joined_rooms::v3::Response::new(rooms))
}
