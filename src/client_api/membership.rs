//! Joining, leaving, inviting, kicking, banning; the member lists.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedRoomId, OwnedServerName, RoomOrAliasId,
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
        joined_members, kick_user, leave_room, unban_user,
    },
    api::federation::query::get_room_information,
    events::StateEventType,
};

use super::{extract::Ruma, format, state::state_for_user};
use crate::{
    error::MatrixError,
    rooms::{guests, invites, membership, remote_join, third_party},
    services::Services,
    storage::TokenOwner,
    visibility,
};

/// The room an ID or alias names, and servers to join it through.
async fn resolve_room(
    svc: &Services,
    target: &RoomOrAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>), MatrixError> {
    match <&ruma::RoomId>::try_from(target) {
        Ok(room_id) => Ok((room_id.to_owned(), Vec::new())),
        Err(alias) if alias.server_name() == svc.server_name() => crate::appservice::resolve_local_alias(svc, alias)
            .await?
            .map(|(room_id, _)| (room_id, Vec::new()))
            .ok_or_else(|| MatrixError::not_found(format!("Room alias {alias} not found"))),
        Err(alias) => resolve_remote_alias(svc, alias).await,
    }
}

/// An alias of another server, asked of that server (`/query/directory`).
pub(super) async fn resolve_remote_alias(
    svc: &Services,
    alias: &ruma::RoomAliasId,
) -> Result<(OwnedRoomId, Vec<OwnedServerName>), MatrixError> {
    let request = get_room_information::v1::Request::new(alias.to_owned());
    match svc.federation.send(alias.server_name(), request).await {
        Ok(answer) => Ok((answer.room_id, answer.servers)),
        Err(e) => {
            tracing::info!(%alias, error = %e, "remote alias not resolved");
            Err(MatrixError::not_found(format!("Room alias {alias} not found")))
        }
    }
}

async fn known_room(svc: &Services, room_id: &ruma::RoomId) -> Result<(), MatrixError> {
    match svc.storage.room(room_id).await? {
        Some(_) => Ok(()),
        None => Err(MatrixError::not_found("Unknown room")),
    }
}

pub async fn join_by_id(
    svc: Arc<Services>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response, MatrixError> {
    let room_id = req.body.room_id.clone();
    if let Some(signed) = &req.body.third_party_signed {
        exchange_signed(&svc, &room_id, &req.user().user_id, signed).await?;
    }
    join(&svc, &room_id, req.user(), &[], req.body.reason.as_deref()).await?;
    Ok(join_room_by_id::v3::Response::new(room_id))
}

pub async fn join_by_id_or_alias(
    svc: Arc<Services>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response, MatrixError> {
    let (room_id, mut servers) = resolve_room(&svc, &req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().cloned());
    if let Some(signed) = &req.body.third_party_signed {
        exchange_signed(&svc, &room_id, &req.user().user_id, signed).await?;
    }
    join(&svc, &room_id, req.user(), &servers, req.body.reason.as_deref()).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// A join with `third_party_signed` turns the third-party invite it
/// answers into an invite first.
async fn exchange_signed(
    svc: &Services,
    room_id: &ruma::RoomId,
    user: &ruma::UserId,
    signed: &ruma::api::client::membership::ThirdPartySigned,
) -> Result<(), MatrixError> {
    if signed.mxid != user {
        return Err(MatrixError::forbidden("third_party_signed names another user"));
    }
    let signed_value = serde_json::json!({
        "mxid": signed.mxid,
        "sender": signed.sender,
        "token": signed.token,
        "signatures": signed.signatures,
    });
    third_party::exchange(svc, room_id, &signed.sender, &signed.mxid, &signed_value).await
}

/// Joins, with the rules for guests when the account is a guest's.
async fn join(
    svc: &Services,
    room_id: &ruma::RoomId,
    owner: &TokenOwner,
    via: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<(), MatrixError> {
    if owner.is_guest {
        guests::join(svc, room_id, &owner.user_id, via, reason).await?;
    } else {
        remote_join::join(svc, room_id, &owner.user_id, via, reason).await?;
    }
    Ok(())
}

pub async fn leave(
    svc: Arc<Services>,
    req: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response, MatrixError> {
    let user = &req.user().user_id;
    let room_id = &req.body.room_id;
    let reason = req.body.reason.as_deref();
    // An invite to a room held elsewhere is rejected through the inviter.
    if !crate::acl::server_in_room(&svc, room_id, svc.server_name()).await?
        && let Some(invite) = svc
            .storage
            .remote_invites(user)
            .await?
            .into_iter()
            .find(|i| i.room_id == *room_id && i.membership == "invite")
    {
        if let Err(e) = invites::reject_remote(&svc, &invite, reason).await {
            // The inviting server cannot take the leave: rejected here.
            tracing::info!(%room_id, via = %invite.via, error = %e, "invite rejected locally");
            invites::reject_locally(&svc, &invite, reason).await?;
        }
        return Ok(leave_room::v3::Response::new());
    }
    known_room(&svc, room_id).await?;
    membership::leave(&svc, room_id, user, reason).await?;
    Ok(leave_room::v3::Response::new())
}

pub async fn forget(
    svc: Arc<Services>,
    req: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response, MatrixError> {
    let membership = visibility::current_membership(&svc, &req.body.room_id, &req.user().user_id).await?;
    match membership.as_deref() {
        None => Err(MatrixError::not_found("Unknown room")),
        Some("join") | Some("invite") | Some("knock") => Err(MatrixError::bad_json("You must leave the room first")),
        Some(_) => Ok(forget_room::v3::Response::new()),
    }
}

pub async fn invite(
    svc: Arc<Services>,
    req: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response, MatrixError> {
    known_room(&svc, &req.body.room_id).await?;
    let recipient = match &req.body.recipient {
        invite_user::v3::InvitationRecipient::UserId(recipient) => recipient,
        invite_user::v3::InvitationRecipient::ThirdPartyId(third_party) => {
            third_party::invite(
                &svc,
                &req.body.room_id,
                &req.user().user_id,
                &third_party.id_server,
                &third_party.id_access_token,
                third_party.medium.as_str(),
                &third_party.address,
            )
            .await?;
            return Ok(invite_user::v3::Response::new());
        }
        _ => return Err(MatrixError::bad_json("Unknown invitation recipient")),
    };
    membership::invite(
        &svc,
        &req.body.room_id,
        &req.user().user_id,
        &recipient.user_id,
        recipient.reason.as_deref(),
        false,
    )
    .await?;
    Ok(invite_user::v3::Response::new())
}

pub async fn kick(
    svc: Arc<Services>,
    req: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response, MatrixError> {
    known_room(&svc, &req.body.room_id).await?;
    let b = &req.body;
    membership::kick(&svc, &b.room_id, &req.user().user_id, &b.user_id, b.reason.as_deref()).await?;
    Ok(kick_user::v3::Response::new())
}

pub async fn ban(svc: Arc<Services>, req: Ruma<ban_user::v3::Request>) -> Result<ban_user::v3::Response, MatrixError> {
    known_room(&svc, &req.body.room_id).await?;
    let b = &req.body;
    membership::set_other_membership(
        &svc,
        &b.room_id,
        &req.user().user_id,
        &b.user_id,
        "ban",
        b.reason.as_deref(),
    )
    .await?;
    Ok(ban_user::v3::Response::new())
}

pub async fn unban(
    svc: Arc<Services>,
    req: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response, MatrixError> {
    known_room(&svc, &req.body.room_id).await?;
    let b = &req.body;
    let current = visibility::current_membership(&svc, &b.room_id, &b.user_id).await?;
    if current.as_deref() != Some("ban") {
        return Err(MatrixError::forbidden(format!("{} is not banned", b.user_id)));
    }
    membership::set_other_membership(
        &svc,
        &b.room_id,
        &req.user().user_id,
        &b.user_id,
        "leave",
        b.reason.as_deref(),
    )
    .await?;
    Ok(unban_user::v3::Response::new())
}

pub async fn members(
    svc: Arc<Services>,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response, MatrixError> {
    let owner = req.user();
    let state = state_for_user(&svc, &req.body.room_id, &owner.user_id).await?;
    // A room joined with partial state: the whole list once it is known
    // (access checked first: one who may not read it is not kept waiting).
    let state = if crate::rooms::partial_state::is_partial(&svc, &req.body.room_id).await? {
        crate::rooms::partial_state::wait_until_full(&svc, &req.body.room_id).await?;
        state_for_user(&svc, &req.body.room_id, &owner.user_id).await?
    } else {
        state
    };
    let ids: Vec<_> = state
        .iter()
        .filter(|((kind, _), _)| *kind == StateEventType::RoomMember)
        .map(|(_, id)| id.clone())
        .collect();
    let mut events = svc.storage.events(&ids).await?;
    events.sort_by(|a, b| a.pdu.state_key.cmp(&b.pdu.state_key));
    events.retain(|e| {
        let m = e.pdu.membership().unwrap_or_default();
        req.body.membership.as_ref().is_none_or(|want| want.as_str() == m)
            && req.body.not_membership.as_ref().is_none_or(|not| not.as_str() != m)
    });
    let chunk = format::client_events(&svc, &events, Some(owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    Ok(get_member_events::v3::Response::new(chunk))
}

pub async fn joined_members(
    svc: Arc<Services>,
    req: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response, MatrixError> {
    let room_id = &req.body.room_id;
    let membership = visibility::current_membership(&svc, room_id, &req.user().user_id).await?;
    if membership.as_deref() != Some("join") {
        return Err(MatrixError::forbidden("You are not in this room"));
    }
    // A room joined with partial state: the whole list once it is known
    // (access checked first: one who may not read it is not kept waiting).
    crate::rooms::partial_state::wait_until_full(&svc, room_id).await?;
    let members = svc.storage.room_members(room_id, Some("join")).await?;
    let ids: Vec<_> = members.iter().map(|m| m.event_id.clone()).collect();
    let mut joined = BTreeMap::new();
    for event in svc.storage.events(&ids).await? {
        let content = event.pdu.content_value();
        let Some(user_id) = event.pdu.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok()) else {
            continue;
        };
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = content.get("displayname").and_then(|v| v.as_str()).map(str::to_owned);
        member.avatar_url = content.get("avatar_url").and_then(|v| v.as_str()).map(Into::into);
        joined.insert(user_id, member);
    }
    Ok(joined_members::v3::Response::new(joined))
}
