//! Third-party invites between servers (see [`crate::rooms::third_party`]):
//! `POST /3pid/onbind`, by which an identity server tells this server that
//! an address with pending invites is now bound to one of its users (not
//! signed with `X-Matrix`; served on the client listener too, as Synapse
//! does), and `PUT /exchange_third_party_invite/{roomId}`, by which another
//! server asks this one (the inviter's) to make such an invite.

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::{OwnedRoomId, OwnedUserId, api::federation::thirdparty::exchange_invite};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Fed;
use crate::{error::MatrixError, rooms::third_party, services::Services};

#[derive(Deserialize)]
pub struct OnBind {
    #[serde(default)]
    invites: Vec<BoundInvite>,
}

#[derive(Deserialize)]
struct BoundInvite {
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    mxid: OwnedUserId,
    signed: Value,
}

/// Each pending invite becomes an invite of the user now bound. One that
/// cannot be made (a signature by no key of the invite, a revoked key, an
/// identity server that cannot vouch for its key) does not stop the others;
/// the answer is then the last such error (as Synapse answers).
pub async fn on_bind(State(svc): State<Arc<Services>>, Json(body): Json<OnBind>) -> Result<Json<Value>, MatrixError> {
    let mut failure = None;
    for invite in &body.invites {
        if let Err(e) = third_party::exchange(&svc, &invite.room_id, &invite.sender, &invite.mxid, &invite.signed).await
        {
            tracing::info!(
                room_id = %invite.room_id,
                mxid = %invite.mxid,
                error = %e.body(),
                "third-party invite not made"
            );
            failure = Some(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Json(json!({}))),
    }
}

pub async fn exchange_third_party_invite(
    svc: Arc<Services>,
    req: Fed<exchange_invite::v1::Request>,
) -> Result<exchange_invite::v1::Response, MatrixError> {
    let b = &req.body;
    if !crate::acl::allows(&svc, &b.room_id, &req.origin).await? {
        return Err(MatrixError::forbidden("the room's server ACL denies this server"));
    }
    if !crate::acl::server_in_room(&svc, &b.room_id, svc.server_name()).await? {
        return Err(MatrixError::not_found("this server is not in the room"));
    }
    let content: Value =
        serde_json::from_str(b.content.json().get()).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let signed = content
        .get("third_party_invite")
        .and_then(|t| t.get("signed"))
        .ok_or_else(|| MatrixError::bad_json("content has no third_party_invite.signed"))?;
    third_party::make_invite(&svc, &b.room_id, &b.sender, &b.state_key, signed).await?;
    Ok(exchange_invite::v1::Response::new())
}
