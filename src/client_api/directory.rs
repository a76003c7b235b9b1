//! Room aliases and the public room directory.

use std::sync::Arc;

use ruma::{
    OwnedRoomId, RoomId, UInt,
    api::client::{
        alias::{create_alias as create, delete_alias as delete, get_alias as get},
        appservice::set_room_visibility as set_appservice_room_visibility,
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::{Visibility, aliases},
    },
    directory::{PublicRoomsChunk, PublicRoomsChunkInit, RoomNetwork},
    events::StateEventType,
    room::JoinRuleKind,
};
use serde_json::Value;

use super::extract::Ruma;
use crate::{
    error::{ErrCode, MatrixError},
    rooms::power::power_levels,
    services::Services,
    storage::{StorageError, appservice::AppserviceRoom},
    visibility,
};

pub async fn get_alias(svc: Arc<Services>, req: Ruma<get::v3::Request>) -> Result<get::v3::Response, MatrixError> {
    let alias = &req.body.room_alias;
    if alias.server_name() != svc.server_name() {
        let (room_id, servers) = super::membership::resolve_remote_alias(&svc, alias).await?;
        return Ok(get::v3::Response::new(room_id, servers));
    }
    let (room_id, _) = crate::appservice::resolve_local_alias(&svc, alias)
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Room alias {alias} not found")))?;
    Ok(get::v3::Response::new(room_id, vec![svc.server_name().to_owned()]))
}

pub async fn create_alias(
    svc: Arc<Services>,
    req: Ruma<create::v3::Request>,
) -> Result<create::v3::Response, MatrixError> {
    let alias = &req.body.room_alias;
    if alias.server_name() != svc.server_name() {
        return Err(MatrixError::invalid_param("Room alias must be on this server"));
    }
    if svc.storage.room(&req.body.room_id).await?.is_none() {
        return Err(MatrixError::not_found("Unknown room"));
    }
    // An alias in an application service's exclusive namespace is that
    // service's alone.
    if let Some(owner) = svc.appservices.exclusive_alias_owner(alias)
        && req.appservice.as_ref().is_none_or(|a| a.id != owner.id)
    {
        return Err(MatrixError::new(
            ErrCode::Exclusive,
            "This room alias is reserved by an application service",
        ));
    }
    match svc
        .storage
        .create_alias(alias, &req.body.room_id, &req.user().user_id)
        .await
    {
        Ok(()) => Ok(create::v3::Response::new()),
        Err(StorageError::AlreadyExists) => Err(MatrixError::new(
            ErrCode::Unknown,
            format!("Room alias {alias} already exists"),
        )
        .with_status(http::StatusCode::CONFLICT)),
        Err(e) => Err(e.into()),
    }
}

pub async fn delete_alias(
    svc: Arc<Services>,
    req: Ruma<delete::v3::Request>,
) -> Result<delete::v3::Response, MatrixError> {
    let alias = &req.body.room_alias;
    let user = &req.user().user_id;
    let (room_id, creator) = svc
        .storage
        .resolve_alias(alias)
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Room alias {alias} not found")))?;
    let is_admin = svc.storage.user(user).await?.is_some_and(|u| u.admin);
    if creator != *user && !is_admin && !can_change_canonical_alias(&svc, &room_id, user).await? {
        return Err(MatrixError::forbidden("You may not delete this alias"));
    }
    svc.storage.delete_alias(alias).await?;
    drop_from_canonical_alias(&svc, &room_id, user, alias).await;
    Ok(delete::v3::Response::new())
}

/// A deleted alias is taken out of the room's `m.room.canonical_alias`
/// (`alias` and `alt_aliases`), by a new event of the user who deleted it,
/// as the spec allows and Synapse does: the room no longer advertises an
/// alias that leads nowhere. Best effort: if the user may not change that
/// event, it stays as it is.
async fn drop_from_canonical_alias(svc: &Services, room_id: &RoomId, user: &ruma::UserId, alias: &ruma::RoomAliasId) {
    let current = async {
        let Some((_, state)) = svc.state.current(room_id).await? else {
            return Ok(None);
        };
        let key = crate::state::key(StateEventType::RoomCanonicalAlias, "");
        match state.get(&key) {
            Some(id) => Ok(svc.storage.event(id).await?.map(|e| e.pdu.content_value())),
            None => Ok::<_, StorageError>(None),
        }
    };
    let Ok(Some(mut content)) = current.await else {
        return;
    };
    let mut changed = false;
    if let Some(fields) = content.as_object_mut() {
        if fields.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
            fields.remove("alias");
            changed = true;
        }
        if let Some(Value::Array(alt)) = fields.get_mut("alt_aliases") {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
        }
    }
    if !changed {
        return;
    }
    let template = crate::events::EventTemplate::state("m.room.canonical_alias", "", content);
    if let Err(e) = crate::rooms::send::send_event(svc, room_id, user, template, None).await {
        tracing::info!(%room_id, %alias, error = %e, "canonical alias not updated after the alias was deleted");
    }
}

async fn can_change_canonical_alias(
    svc: &Services,
    room_id: &RoomId,
    user: &ruma::UserId,
) -> Result<bool, MatrixError> {
    let (Some(room), Some((_, state))) = (svc.storage.room(room_id).await?, svc.state.current(room_id).await?) else {
        return Ok(false);
    };
    let Some(rules) = room.version.rules() else {
        return Ok(false);
    };
    let power = power_levels(svc, &state, &rules.authorization).await?;
    Ok(power.user_can_send_state(user, StateEventType::RoomCanonicalAlias))
}

pub async fn room_aliases(
    svc: Arc<Services>,
    req: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response, MatrixError> {
    let room_id = &req.body.room_id;
    let membership = visibility::current_membership(&svc, room_id, &req.user().user_id).await?;
    if membership.as_deref() != Some("join") && !visibility::world_readable(&svc, room_id).await? {
        return Err(MatrixError::forbidden("You are not in this room"));
    }
    Ok(aliases::v3::Response::new(svc.storage.room_aliases(room_id).await?))
}

pub async fn get_visibility(
    svc: Arc<Services>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response, MatrixError> {
    let room = svc
        .storage
        .room(&req.body.room_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    Ok(get_room_visibility::v3::Response::new(if room.published {
        Visibility::Public
    } else {
        Visibility::Private
    }))
}

pub async fn set_visibility(
    svc: Arc<Services>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response, MatrixError> {
    let room_id = &req.body.room_id;
    if svc.storage.room(room_id).await?.is_none() {
        return Err(MatrixError::not_found("Unknown room"));
    }
    let user = &req.user().user_id;
    let is_admin = svc.storage.user(user).await?.is_some_and(|u| u.admin);
    if !is_admin && !can_change_canonical_alias(&svc, room_id, user).await? {
        return Err(MatrixError::forbidden("You may not change this room's visibility"));
    }
    let published = match req.body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(MatrixError::invalid_param("Unknown visibility")),
    };
    svc.storage.set_room_published(room_id, published).await?;
    Ok(set_room_visibility::v3::Response::new())
}

/// One room's entry in the public directory, from its current state.
async fn public_chunk(svc: &Services, room_id: OwnedRoomId) -> Result<Option<PublicRoomsChunk>, MatrixError> {
    let Some((_, state)) = svc.state.current(&room_id).await? else {
        return Ok(None);
    };
    let text = |content: &Value, field: &str| content.get(field).and_then(Value::as_str).map(str::to_owned);
    let joined = svc.storage.room_members(&room_id, Some("join")).await?.len();
    let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::try_from(joined as u64).unwrap_or_default(),
        room_id: room_id.clone(),
        world_readable: false,
        guest_can_join: false,
    }
    .into();
    for (kind, key) in state.keys() {
        if !key.is_empty() {
            continue;
        }
        let Some(event) = svc.state.event_for(&state, kind.clone(), "").await? else {
            continue;
        };
        let content = event.pdu.content_value();
        match kind {
            StateEventType::RoomName => chunk.name = text(&content, "name"),
            StateEventType::RoomTopic => chunk.topic = text(&content, "topic"),
            StateEventType::RoomCanonicalAlias => {
                chunk.canonical_alias = text(&content, "alias").and_then(|a| a.try_into().ok())
            }
            StateEventType::RoomAvatar => chunk.avatar_url = text(&content, "url").map(Into::into),
            StateEventType::RoomHistoryVisibility => {
                chunk.world_readable = text(&content, "history_visibility").as_deref() == Some("world_readable")
            }
            StateEventType::RoomGuestAccess => {
                chunk.guest_can_join = text(&content, "guest_access").as_deref() == Some("can_join")
            }
            StateEventType::RoomJoinRules => {
                chunk.join_rule =
                    text(&content, "join_rule").map_or(JoinRuleKind::Public, |r| JoinRuleKind::from(r.as_str()))
            }
            StateEventType::RoomCreate => chunk.room_type = text(&content, "type").map(|t| t.as_str().into()),
            _ => {}
        }
    }
    Ok(Some(chunk))
}

/// The rooms of a network's list: the main one (Matrix), an application
/// service's list for one of its networks (its instance ID,
/// `{appservice}|{network}`), or all of them.
async fn listed_rooms(svc: &Services, network: &RoomNetwork) -> Result<Vec<OwnedRoomId>, MatrixError> {
    let mut rooms = match network {
        RoomNetwork::ThirdParty(_) => Vec::new(),
        _ => svc.storage.published_rooms().await?,
    };
    if !matches!(network, RoomNetwork::Matrix) {
        for listed in svc.storage.appservice_rooms().await? {
            let wanted = match network {
                RoomNetwork::ThirdParty(instance) => {
                    *instance == format!("{}|{}", listed.appservice, listed.network_id)
                }
                _ => true,
            };
            if wanted {
                rooms.push(listed.room_id);
            }
        }
    }
    rooms.sort();
    rooms.dedup();
    Ok(rooms)
}

/// `PUT /directory/list/appservice/{networkId}/{roomId}`: an application
/// service publishes a room in (or, `private`, takes it out of) its list
/// for one of its networks, apart from the main list.
pub async fn set_appservice_visibility(
    svc: Arc<Services>,
    req: Ruma<set_appservice_room_visibility::v3::Request>,
) -> Result<set_appservice_room_visibility::v3::Response, MatrixError> {
    let Some(appservice) = req.appservice.as_ref() else {
        return Err(MatrixError::forbidden(
            "Only application services may change their room lists",
        ));
    };
    let published = match req.body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(MatrixError::invalid_param("Unknown visibility")),
    };
    set_appservice_room(&svc, &appservice.id, req.body.network_id, req.body.room_id, published).await?;
    Ok(set_appservice_room_visibility::v3::Response::new())
}

async fn set_appservice_room(
    svc: &Services,
    appservice: &str,
    network_id: String,
    room_id: OwnedRoomId,
    published: bool,
) -> Result<(), MatrixError> {
    if svc.storage.room(&room_id).await?.is_none() {
        return Err(MatrixError::not_found("Unknown room"));
    }
    let room = AppserviceRoom {
        appservice: appservice.to_owned(),
        network_id,
        room_id,
    };
    svc.storage.set_appservice_room(&room, published).await?;
    Ok(())
}

/// `DELETE /directory/list/appservice/{networkId}/{roomId}` (as Synapse
/// has it; ruma has only the `PUT`): takes the room out of the list.
pub async fn delete_appservice_visibility(
    axum::extract::State(svc): axum::extract::State<Arc<Services>>,
    axum::extract::Path((network_id, room_id)): axum::extract::Path<(String, String)>,
    parts: http::request::Parts,
) -> Result<axum::Json<Value>, MatrixError> {
    let token = super::extract::access_token(&parts)
        .ok_or_else(|| MatrixError::new(ErrCode::MissingToken, "Missing access token"))?;
    let (_, appservice) = super::extract::authenticate(&svc, &parts, &token).await?;
    let Some(appservice) = appservice else {
        return Err(MatrixError::forbidden(
            "Only application services may change their room lists",
        ));
    };
    let room_id =
        OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("Invalid room ID: {e}")))?;
    set_appservice_room(&svc, &appservice.id, network_id, room_id, false).await?;
    Ok(axum::Json(serde_json::json!({})))
}

/// The published rooms, most joined first, paged by offset tokens; also
/// what other servers get (`/federation/v1/publicRooms`).
pub(crate) async fn directory_page(
    svc: &Services,
    network: &RoomNetwork,
    limit: Option<UInt>,
    since: Option<&str>,
    search: Option<&str>,
) -> Result<(Vec<PublicRoomsChunk>, Option<String>, Option<String>, usize), MatrixError> {
    let mut chunks = Vec::new();
    for room_id in listed_rooms(svc, network).await? {
        if let Some(chunk) = public_chunk(svc, room_id).await? {
            chunks.push(chunk);
        }
    }
    if let Some(term) = search.map(str::to_lowercase).filter(|t| !t.is_empty()) {
        chunks.retain(|c| {
            [
                c.name.as_deref(),
                c.topic.as_deref(),
                c.canonical_alias.as_ref().map(|a| a.as_str()),
            ]
            .into_iter()
            .flatten()
            .any(|s| s.to_lowercase().contains(&term))
        });
    }
    chunks.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then(a.room_id.cmp(&b.room_id))
    });
    let total = chunks.len();
    let offset: usize = since.and_then(|s| s.strip_prefix('o')?.parse().ok()).unwrap_or(0);
    let limit = limit.map_or(usize::MAX, |l| u64::from(l) as usize);
    let page: Vec<_> = chunks.into_iter().skip(offset).take(limit).collect();
    let next = (offset + page.len() < total).then(|| format!("o{}", offset + page.len()));
    let prev = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
    Ok((page, next, prev, total))
}

/// The public rooms of another server (`server` in the request), asked of
/// that server (`/federation/v1/publicRooms`).
async fn remote_directory(
    svc: &Services,
    server: &ruma::ServerName,
    limit: Option<UInt>,
    since: Option<&str>,
    search: Option<&str>,
) -> Result<get_public_rooms_filtered::v3::Response, MatrixError> {
    use ruma::api::federation::directory::get_public_rooms_filtered as remote;
    let mut request = remote::v1::Request::new();
    request.limit = limit;
    request.since = since.map(str::to_owned);
    request.filter.generic_search_term = search.map(str::to_owned);
    let answer = svc.federation.send(server, request).await.map_err(|e| {
        tracing::info!(%server, error = %e, "remote room directory not fetched");
        MatrixError::unknown(format!("The room directory of {server} cannot be fetched"))
            .with_status(http::StatusCode::BAD_GATEWAY)
    })?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = answer.chunk;
    response.next_batch = answer.next_batch;
    response.prev_batch = answer.prev_batch;
    response.total_room_count_estimate = answer.total_room_count_estimate;
    Ok(response)
}

fn is_remote<'a>(svc: &Services, server: Option<&'a ruma::ServerName>) -> Option<&'a ruma::ServerName> {
    server.filter(|s| *s != svc.server_name())
}

pub async fn public_rooms(
    svc: Arc<Services>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response, MatrixError> {
    if let Some(server) = is_remote(&svc, req.body.server.as_deref()) {
        let remote = remote_directory(&svc, server, req.body.limit, req.body.since.as_deref(), None).await?;
        let mut response = get_public_rooms::v3::Response::new(remote.chunk);
        response.next_batch = remote.next_batch;
        response.prev_batch = remote.prev_batch;
        response.total_room_count_estimate = remote.total_room_count_estimate;
        return Ok(response);
    }
    let (chunk, next, prev, total) = directory_page(
        &svc,
        &RoomNetwork::Matrix,
        req.body.limit,
        req.body.since.as_deref(),
        None,
    )
    .await?;
    let mut response = get_public_rooms::v3::Response::new(chunk);
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = UInt::try_from(total as u64).ok();
    Ok(response)
}

pub async fn public_rooms_filtered(
    svc: Arc<Services>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response, MatrixError> {
    let search = req.body.filter.generic_search_term.as_deref();
    if let Some(server) = is_remote(&svc, req.body.server.as_deref()) {
        return remote_directory(&svc, server, req.body.limit, req.body.since.as_deref(), search).await;
    }
    let (chunk, next, prev, total) = directory_page(
        &svc,
        &req.body.room_network,
        req.body.limit,
        req.body.since.as_deref(),
        search,
    )
    .await?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = UInt::try_from(total as u64).ok();
    Ok(response)
}
