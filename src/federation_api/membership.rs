//! Membership across servers: other servers' users joining and leaving
//! rooms held here (`make_join`, `send_join`, `make_leave`, `send_leave`),
//! and invites of this server's users (`invite`).

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::api::federation::membership::{
    create_invite, create_join_event, create_leave_event, prepare_join_event, prepare_leave_event,
};
use serde_json::{json, value::RawValue};

use super::{
    extract::{Fed, FedRaw},
    history::raw_pdu,
};
use crate::{
    acl,
    error::{ErrCode, MatrixError},
    rooms::{federated, invites},
    services::Services,
};

async fn check_acl(svc: &Services, room_id: &ruma::RoomId, origin: &ruma::ServerName) -> Result<(), MatrixError> {
    if svc.storage.room(room_id).await?.is_none() {
        return Err(MatrixError::not_found("Unknown room"));
    }
    if !acl::allows(svc, room_id, origin).await? {
        return Err(MatrixError::forbidden(
            "Server is banned from this room by its server ACL",
        ));
    }
    Ok(())
}

/// How long a request for the state of a room joined with partial state
/// waits for the resync before it is sent elsewhere.
const PARTIAL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// A room this server joined with partial state is not one whose state it
/// can give (a join, `/state`) until it has it all: after a few seconds'
/// wait for the resync (a small room's takes well under one), the asker
/// goes to another server, as Synapse's do.
pub(super) async fn not_while_partial(svc: &Services, room_id: &ruma::RoomId) -> Result<(), MatrixError> {
    if !crate::rooms::partial_state::full_within(svc, room_id, PARTIAL_PATIENCE).await? {
        return Err(MatrixError::not_found(
            "This server is not fully joined to the room yet: ask another",
        ));
    }
    Ok(())
}

/// `make_join`/`make_leave` need a user of this server in the room: a room
/// everyone here has left is not one this server can place events in.
async fn check_resident(svc: &Services, room_id: &ruma::RoomId) -> Result<(), MatrixError> {
    not_while_partial(svc, room_id).await?;
    if !acl::server_in_room(svc, room_id, svc.server_name()).await? {
        return Err(MatrixError::not_found("No user of this server is in the room"));
    }
    Ok(())
}

pub async fn make_join(
    svc: Arc<Services>,
    req: Fed<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response, MatrixError> {
    let b = &req.body;
    check_acl(&svc, &b.room_id, &req.origin).await?;
    check_resident(&svc, &b.room_id).await?;
    if b.user_id.server_name() != req.origin {
        return Err(MatrixError::forbidden(format!(
            "{} cannot make a join for {}",
            req.origin, b.user_id
        )));
    }
    let room = svc
        .storage
        .room(&b.room_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    // Without `ver`, the requester supports room version 1 only.
    if !b.ver.contains(&room.version) {
        return Err(MatrixError::new(
            ErrCode::IncompatibleRoomVersion,
            format!(
                "The room has version {}, which your server does not support",
                room.version
            ),
        )
        .with_field("room_version", serde_json::json!(room.version)));
    }
    let (version, template) = federated::membership_template(&svc, &b.room_id, &b.user_id, "join").await?;
    let event = serde_json::value::to_raw_value(&template).map_err(|e| MatrixError::internal("join template", e))?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response)
}

pub async fn send_join(
    svc: Arc<Services>,
    req: Fed<create_join_event::v2::Request>,
) -> Result<create_join_event::v2::Response, MatrixError> {
    let omit_members = req.body.omit_members;
    Ok(create_join_event::v2::Response::new(
        join(&svc, &req, omit_members).await?,
    ))
}

/// `PUT /v1/send_join`: as v2 (whose request it shares), the answer
/// wrapped in the `[200, {...}]` array the v1 API has; always the full
/// state (v1 has no partial-state joins).
pub async fn send_join_v1(
    State(svc): State<Arc<Services>>,
    req: Fed<create_join_event::v2::Request>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    let state = join(&svc, &req, false).await?;
    Ok(Json(json!([200, state])))
}

async fn join(
    svc: &Services,
    req: &Fed<create_join_event::v2::Request>,
    omit_members: bool,
) -> Result<create_join_event::v2::RoomState, MatrixError> {
    let b = &req.body;
    check_acl(svc, &b.room_id, &req.origin).await?;
    not_while_partial(svc, &b.room_id).await?;
    let accepted = federated::accept_join(svc, &b.room_id, &b.event_id, &req.origin, &b.pdu, omit_members).await?;
    let mut state = create_join_event::v2::RoomState::new();
    state.event =
        Some(RawValue::from_string(accepted.event.pdu.json.to_string()).map_err(|e| MatrixError::internal("join", e))?);
    state.members_omitted = accepted.members_omitted;
    state.state = accepted.state.iter().map(raw_pdu).collect();
    state.auth_chain = accepted.auth_chain.iter().map(raw_pdu).collect();
    state.servers_in_room = Some(accepted.servers_in_room);
    Ok(state)
}

pub async fn make_leave(
    svc: Arc<Services>,
    req: Fed<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response, MatrixError> {
    let b = &req.body;
    check_acl(&svc, &b.room_id, &req.origin).await?;
    check_resident(&svc, &b.room_id).await?;
    if b.user_id.server_name() != req.origin {
        return Err(MatrixError::forbidden(format!(
            "{} cannot make a leave for {}",
            req.origin, b.user_id
        )));
    }
    let (version, template) = federated::membership_template(&svc, &b.room_id, &b.user_id, "leave").await?;
    let event = serde_json::value::to_raw_value(&template).map_err(|e| MatrixError::internal("leave template", e))?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event))
}

pub async fn send_leave(
    svc: Arc<Services>,
    req: Fed<create_leave_event::v2::Request>,
) -> Result<create_leave_event::v2::Response, MatrixError> {
    leave(&svc, &req).await?;
    Ok(create_leave_event::v2::Response::new())
}

/// `PUT /v1/send_leave`: as v2, answered `[200, {}]`.
pub async fn send_leave_v1(
    State(svc): State<Arc<Services>>,
    req: Fed<create_leave_event::v2::Request>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    leave(&svc, &req).await?;
    Ok(Json(json!([200, {}])))
}

async fn leave(svc: &Services, req: &Fed<create_leave_event::v2::Request>) -> Result<(), MatrixError> {
    let b = &req.body;
    check_acl(svc, &b.room_id, &req.origin).await?;
    federated::accept_leave(svc, &b.room_id, &b.event_id, &req.origin, &b.pdu).await?;
    Ok(())
}

pub async fn invite(
    svc: Arc<Services>,
    req: Fed<create_invite::v2::Request>,
) -> Result<create_invite::v2::Response, MatrixError> {
    let b = &req.body;
    if !crate::config::SUPPORTED_ROOM_VERSIONS.contains(&b.room_version) {
        return Err(MatrixError::new(
            ErrCode::IncompatibleRoomVersion,
            format!("Room version {} is not supported here", b.room_version),
        )
        .with_field("room_version", serde_json::json!(b.room_version)));
    }
    let event = invites::receive_invite(
        &svc,
        &req.origin,
        &b.room_id,
        &b.event_id,
        &b.room_version,
        &b.event,
        &b.invite_room_state,
    )
    .await?;
    Ok(create_invite::v2::Response::new(event))
}

/// `PUT /v1/invite/{room_id}/{event_id}` (ruma has no type for it): the
/// body is the invite itself, its stripped room state in
/// `unsigned.invite_room_state`, and names no room version: the room's,
/// when held here, else version 1 (the v1 API predates the others; 1 and 2
/// share the event format). Answered `[200, {"event": ...}]`.
pub async fn invite_v1(State(svc): State<Arc<Services>>, req: FedRaw) -> Result<Json<serde_json::Value>, MatrixError> {
    #[derive(serde::Deserialize)]
    struct Unsigned {
        #[serde(default)]
        invite_room_state: Vec<ruma::api::federation::membership::RawStrippedState>,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        unsigned: Option<Unsigned>,
    }
    let [room_id, event_id] = req.path_args.as_slice() else {
        return Err(MatrixError::invalid_param("bad path"));
    };
    let room_id = ruma::OwnedRoomId::try_from(room_id.as_str())
        .map_err(|e| MatrixError::invalid_param(format!("room ID: {e}")))?;
    let event_id = ruma::OwnedEventId::try_from(event_id.as_str())
        .map_err(|e| MatrixError::invalid_param(format!("event ID: {e}")))?;
    let version = match svc.storage.room(&room_id).await? {
        Some(room) => room.version,
        None => ruma::RoomVersionId::V1,
    };
    let event: Box<RawValue> =
        serde_json::from_slice(&req.body).map_err(|e| MatrixError::bad_json(format!("invite: {e}")))?;
    let stripped = serde_json::from_slice::<Body>(&req.body)
        .ok()
        .and_then(|b| b.unsigned)
        .map(|u| u.invite_room_state)
        .unwrap_or_default();
    let event = invites::receive_invite(&svc, &req.origin, &room_id, &event_id, &version, &event, &stripped).await?;
    Ok(Json(json!([200, { "event": event }])))
}
