//! Room state: reading it (`/state`, `/state/{type}/{key}`) and setting it.

use std::sync::Arc;

use ruma::{
    RoomAliasId, RoomId, UserId,
    api::client::state::{get_state_event_for_key, get_state_events, send_state_event},
    events::StateEventType,
};
use serde_json::Value;

use super::{extract::Ruma, format};
use crate::{
    error::{ErrCode, MatrixError},
    events::EventTemplate,
    rooms::send::send_event,
    services::Services,
    state::StateMap,
    visibility,
};

/// The room state a user may read: the current state while joined (or
/// when the room is world-readable), the state when they left after
/// leaving. Others get 403, whether or not the room exists here.
pub async fn state_for_user(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<Arc<StateMap>, MatrixError> {
    let not_member = || MatrixError::forbidden(format!("User {user} is not in room {room_id}"));
    let Some((_, current)) = svc.state.current(room_id).await? else {
        return Err(not_member());
    };
    let own = svc
        .state
        .event_for(&current, StateEventType::RoomMember, user.as_str())
        .await?;
    match own.as_ref().and_then(|e| e.pdu.membership()).as_deref() {
        Some("join") => Ok(current),
        Some("leave") | Some("ban") if own.as_ref().is_some_and(|e| e.meta.state_group_after.is_some()) => {
            let group = own.and_then(|e| e.meta.state_group_after).expect("checked above");
            Ok(svc.state.group(group).await?)
        }
        _ if visibility::world_readable(svc, room_id).await? => Ok(current),
        _ => Err(not_member()),
    }
}

pub async fn get_state(
    svc: Arc<Services>,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response, MatrixError> {
    let state = state_for_user(&svc, &req.body.room_id, &req.user().user_id).await?;
    let ids: Vec<_> = state.values().cloned().collect();
    let mut events = svc.storage.events(&ids).await?;
    events.sort_by(|a, b| (a.pdu.kind.to_string(), &a.pdu.state_key).cmp(&(b.pdu.kind.to_string(), &b.pdu.state_key)));
    let json = format::client_events(&svc, &events, Some(req.user())).await?;
    Ok(get_state_events::v3::Response::new(
        json.iter().map(format::raw).collect(),
    ))
}

pub async fn get_state_event(
    svc: Arc<Services>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response, MatrixError> {
    let b = &req.body;
    let state = state_for_user(&svc, &b.room_id, &req.user().user_id).await?;
    let event = svc
        .state
        .event_for(&state, b.event_type.clone(), &b.state_key)
        .await?
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    let body = match b.format {
        get_state_event_for_key::v3::StateEventFormat::Event => {
            let json = format::client_events(&svc, std::slice::from_ref(&event), Some(req.user())).await?;
            serde_json::value::to_raw_value(&json[0]).map_err(|e| MatrixError::internal("event JSON", e))?
        }
        _ => event.pdu.content.clone(),
    };
    Ok(get_state_event_for_key::v3::Response::new(body))
}

pub async fn send_state_event(
    svc: Arc<Services>,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response, MatrixError> {
    req.content_given()?;
    req.send_rate(&svc)?;
    let b = &req.body;
    let user = &req.user().user_id;
    let content: Value =
        serde_json::from_str(b.body.json().get()).map_err(|e| MatrixError::bad_json(format!("content: {e}")))?;
    if !content.is_object() {
        return Err(MatrixError::bad_json("content must be an object"));
    }
    if svc.storage.room(&b.room_id).await?.is_none() {
        return Err(MatrixError::forbidden(format!(
            "User {user} is not in room {}",
            b.room_id
        )));
    }
    if b.event_type == StateEventType::RoomCanonicalAlias {
        check_canonical_alias(&svc, &b.room_id, &content).await?;
    }
    let template = EventTemplate::state(b.event_type.to_string(), b.state_key.clone(), content);
    let sent = send_event(&svc, &b.room_id, user, template, None).await?;
    Ok(send_state_event::v3::Response::new(sent.pdu.event_id.clone()))
}

/// Aliases named by `m.room.canonical_alias` must be valid
/// (`M_INVALID_PARAM`), and local ones must exist and point here
/// (`M_BAD_ALIAS`).
async fn check_canonical_alias(svc: &Services, room_id: &RoomId, content: &Value) -> Result<(), MatrixError> {
    let mut aliases: Vec<&Value> = content.get("alias").filter(|v| !v.is_null()).into_iter().collect();
    if let Some(alt) = content.get("alt_aliases") {
        aliases.extend(
            alt.as_array()
                .ok_or_else(|| MatrixError::bad_json("alt_aliases must be a list"))?,
        );
    }
    for value in aliases {
        let bad = |why: &str| MatrixError::new(ErrCode::BadAlias, format!("{value}: {why}"));
        let alias = value
            .as_str()
            .and_then(|s| <&RoomAliasId>::try_from(s).ok())
            .ok_or_else(|| MatrixError::invalid_param(format!("{value}: not a valid room alias")))?;
        if alias.server_name() != svc.server_name() {
            continue;
        }
        match svc.storage.resolve_alias(alias).await? {
            Some((target, _)) if target == room_id => {}
            _ => return Err(bad("alias does not point to this room")),
        }
    }
    Ok(())
}
