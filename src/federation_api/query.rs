//! Questions other servers ask about this server's users, aliases and
//! rooms: `/query/directory`, `/query/profile`, `/publicRooms`.

use std::sync::Arc;

use ruma::{
    UInt,
    api::federation::{
        directory::{get_public_rooms, get_public_rooms_filtered},
        query::{get_profile_information, get_room_information},
    },
};
use serde_json::json;

use super::extract::Fed;
use crate::{client_api::directory::directory_page, error::MatrixError, services::Services};

pub async fn directory(
    svc: Arc<Services>,
    req: Fed<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response, MatrixError> {
    let alias = &req.body.room_alias;
    if alias.server_name() != svc.server_name() {
        return Err(MatrixError::not_found(format!(
            "{alias} is not an alias of this server"
        )));
    }
    let (room_id, _) = crate::appservice::resolve_local_alias(&svc, alias)
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Room alias {alias} not found")))?;
    // Servers to join through: this one first, then the others in the room.
    let mut servers = vec![svc.server_name().to_owned()];
    for member in svc.storage.room_members(&room_id, Some("join")).await? {
        let server = member.user_id.server_name().to_owned();
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

pub async fn profile(
    svc: Arc<Services>,
    req: Fed<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response, MatrixError> {
    let user_id = &req.body.user_id;
    let user = match user_id.server_name() == svc.server_name() {
        true => svc.storage.user(user_id).await?,
        false => None,
    }
    .ok_or_else(|| MatrixError::not_found("Profile not found"))?;
    let mut response = get_profile_information::v1::Response::new();
    let wanted = req.body.field.as_ref().map(|f| f.as_str().to_owned());
    for (field, value) in [("displayname", user.displayname), ("avatar_url", user.avatar_url)] {
        if let Some(value) = value
            && wanted.as_deref().is_none_or(|w| w == field)
        {
            response.set(field.to_owned(), json!(value));
        }
    }
    Ok(response)
}

/// The public room directory, as clients of this server see it.
pub async fn public_rooms(
    svc: Arc<Services>,
    req: Fed<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response, MatrixError> {
    let (chunk, next, prev, total) = directory_page(
        &svc,
        &ruma::directory::RoomNetwork::Matrix,
        req.body.limit,
        req.body.since.as_deref(),
        None,
    )
    .await?;
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = UInt::try_from(total as u64).ok();
    Ok(response)
}

pub async fn public_rooms_filtered(
    svc: Arc<Services>,
    req: Fed<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response, MatrixError> {
    let search = req.body.filter.generic_search_term.as_deref();
    let (chunk, next, prev, total) = directory_page(
        &svc,
        &req.body.room_network,
        req.body.limit,
        req.body.since.as_deref(),
        search,
    )
    .await?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = UInt::try_from(total as u64).ok();
    Ok(response)
}
