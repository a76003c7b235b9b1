//! A local user joining a room held by other servers: `make_join` to get
//! a template, sign it, `send_join` to get the room's state and auth
//! chain, check every event of them, and store the join with that state
//! (its parents, not held here, become the room's backward extremities:
//! the place history will be backfilled from).

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName, RoomId, RoomVersionId,
    UserId,
    api::federation::membership::{create_join_event, prepare_join_event},
    events::StateEventType,
};
use serde_json::value::RawValue;

use super::{
    RoomError,
    persist::{NewCurrent, ToPersist, persist_pdu},
    send::Sent,
};
use crate::{
    config::SUPPORTED_ROOM_VERSIONS,
    event_checks,
    events::Pdu,
    services::Services,
    state::key,
    storage::{StateWrite, TimelineStatus, partial_state::PartialState},
};

/// Joins `user` to `room_id` through one of `servers` (tried in order).
pub async fn join_remote(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
) -> Result<Sent, RoomError> {
    let mut last_error = RoomError::Invalid(format!("no server to join {room_id} through"));
    for server in servers.iter().filter(|s| *s != svc.server_name()) {
        match join_through(svc, room_id, user, server).await {
            Ok(sent) => {
                // Other servers stopped telling this one of their users'
                // device changes while it was not in a room with them.
                if let Err(e) = crate::devices::joined_remote_room(svc, room_id).await {
                    tracing::warn!(%room_id, error = %e, "cannot mark remote device lists stale");
                }
                // A room that replaces one held here: what moves with an
                // upgrade moves now.
                if let Err(e) = super::upgrade::joined_remote_room(svc, room_id).await {
                    tracing::warn!(%room_id, error = %e, "the upgrade's transfer failed");
                }
                return Ok(sent);
            }
            Err(e) => {
                tracing::info!(%room_id, %server, error = %e, "joining through this server failed");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

async fn join_through(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    server: &OwnedServerName,
) -> Result<Sent, RoomError> {
    let federation_error = |e: crate::federation_client::FederationError| match &e {
        // The resident server's refusal, e.g. M_INCOMPATIBLE_ROOM_VERSION
        // with its `room_version`, reaches the client as it was given.
        crate::federation_client::FederationError::Status { status, body, .. }
            if status.is_client_error()
                && let Some(relayed) = crate::error::MatrixError::relayed(*status, body) =>
        {
            RoomError::Remote(relayed)
        }
        _ => match e.status() {
            Some(http::StatusCode::FORBIDDEN) => RoomError::Forbidden(e.to_string()),
            Some(http::StatusCode::NOT_FOUND) => RoomError::UnknownRoom,
            _ => RoomError::Invalid(e.to_string()),
        },
    };
    let mut make = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
    make.ver = SUPPORTED_ROOM_VERSIONS.to_vec();
    let template = svc.federation.send(server, make).await.map_err(federation_error)?;
    let version = template.room_version.unwrap_or(RoomVersionId::V1);
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(RoomError::UnsupportedVersion(version.to_string()));
    }
    let rules = version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;

    // The join, as the resident server proposed it, with our profile, signed.
    let mut event: CanonicalJsonObject =
        serde_json::from_str(template.event.get()).map_err(|e| RoomError::Invalid(format!("join template: {e}")))?;
    let is_our_join = event.get("type").and_then(|v| v.as_str()) == Some("m.room.member")
        && event.get("state_key").and_then(|v| v.as_str()) == Some(user.as_str())
        && event.get("sender").and_then(|v| v.as_str()) == Some(user.as_str());
    if !is_our_join {
        return Err(RoomError::Invalid(
            "the join template is not a join of this user".to_owned(),
        ));
    }
    let mut content = CanonicalJsonObject::new();
    content.insert("membership".to_owned(), CanonicalJsonValue::String("join".to_owned()));
    if let Some(profile) = svc.storage.user(user).await? {
        if let Some(name) = profile.displayname {
            content.insert("displayname".to_owned(), CanonicalJsonValue::String(name));
        }
        if let Some(url) = profile.avatar_url {
            content.insert("avatar_url".to_owned(), CanonicalJsonValue::String(url));
        }
    }
    if let Some(CanonicalJsonValue::Object(proposed)) = event.get("content")
        && let Some(authorised) = proposed.get("join_authorised_via_users_server")
    {
        content.insert("join_authorised_via_users_server".to_owned(), authorised.clone());
    }
    event.insert("content".to_owned(), CanonicalJsonValue::Object(content));
    event.insert(
        "origin_server_ts".to_owned(),
        CanonicalJsonValue::Integer(MilliSecondsSinceUnixEpoch::now().get().into()),
    );
    if event.contains_key("origin") {
        event.insert(
            "origin".to_owned(),
            CanonicalJsonValue::String(svc.server_name().to_string()),
        );
    }
    event.remove("signatures");
    event.remove("hashes");
    event.remove("unsigned");
    // Rooms v1, v2: the event is ours, so is its ID (whose server signs).
    crate::events::ids::assign_event_id(&mut event, &rules, svc.server_name());
    ruma::signatures::hash_and_sign_event(
        svc.server_name().as_str(),
        svc.keys.key_pair(),
        &mut event,
        &rules.redaction,
    )
    .map_err(|e| RoomError::Invalid(format!("cannot sign the join: {e}")))?;
    let event_id = crate::events::event_id_of(&event, &rules).map_err(RoomError::Invalid)?;
    let raw = serde_json::value::to_raw_value(&event).map_err(|e| RoomError::Invalid(e.to_string()))?;

    let mut send = create_join_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw.clone());
    // A partial state (without the members): the room is usable as soon as
    // it is checked; the rest is fetched in the background.
    send.omit_members = svc.config.partial_state_joins;
    let answer = match svc.federation.send(server, send).await {
        Ok(answer) => answer.room_state,
        // A server without the v2 API: the v1 one.
        Err(e) if e.lacks_endpoint() => svc
            .federation
            .send_join_v1(server, room_id, &event_id, &raw)
            .await
            .map_err(federation_error)?,
        Err(e) => return Err(federation_error(e)),
    };

    let answered = std::time::Instant::now();
    let _guard = svc.rooms.lock(room_id).await?;
    svc.storage.add_room(room_id, &version).await?;

    // Every event of the state and its auth chain is checked; they are kept
    // as outliers.
    let (room_state, auth_chain) = (answer.state, answer.auth_chain);
    let state = super::outliers::keep_state(svc, &version, room_id, room_state, auth_chain).await?;
    if !state.contains_key(&key(StateEventType::RoomCreate, "")) {
        return Err(RoomError::Invalid("the room's state has no create event".to_owned()));
    }

    // Our join, as the resident server may have countersigned it.
    let join_raw: Box<RawValue> = answer.event.unwrap_or(raw);
    let join: Pdu = event_checks::check_signed(svc, &version, &join_raw).await?;
    if join.event_id != event_id {
        return Err(RoomError::Invalid("the resident server changed the join".to_owned()));
    }
    if answer.members_omitted {
        // A partial state may lack members the join's auth rules read (the
        // authorising user of a restricted join): its auth events stand in.
        let auth = svc.storage.events(&join.auth_events).await?;
        let checked =
            super::partial_state::with_auth_events(&state, auth.iter().map(|e| (&*e.pdu, e.meta.rejected.is_some())));
        event_checks::check_auth(svc, &rules, &join, &checked).await?;
    } else {
        event_checks::check_auth(svc, &rules, &join, &state).await?;
    }
    let partial = answer.members_omitted.then(|| {
        // The servers to fetch the rest from: the one joined through first.
        let mut servers = vec![server.clone()];
        for name in answer.servers_in_room.iter().flatten() {
            if let Ok(name) = OwnedServerName::try_from(name.as_str())
                && !servers.contains(&name)
                && name != svc.server_name()
            {
                servers.push(name);
            }
        }
        PartialState {
            room_id: room_id.to_owned(),
            join_event_id: event_id.clone(),
            servers,
        }
    });
    if let Some(partial) = &partial {
        svc.storage.mark_partial_state(partial).await?;
        svc.joined.changed(room_id);
    }
    let state_kept = answered.elapsed();
    let group = svc
        .storage
        .store_state_group(
            room_id,
            StateWrite::Delta {
                base: None,
                changes: state.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
        )
        .await?;
    let state = Arc::new(state);
    svc.state.remember(group, state.clone());
    let persisted = ToPersist {
        pdu: join,
        before: Some((group, state)),
        current: NewCurrent::AfterEventFirst,
        status: TimelineStatus::Accepted,
        txn: None,
        backfilled: false,
    };
    let sent = persist_pdu(svc, persisted, &rules).await?;
    tracing::info!(
        %room_id, %user, %server, partial_state = partial.is_some(), ?state_kept, stored = ?answered.elapsed() - state_kept,
        "joined a room over federation"
    );
    if partial.is_some() {
        svc.partial_resyncs.joined();
    }
    Ok(sent)
}

/// A local user joins a room: locally when a user of this server is in
/// it, else over federation through `via`, the server of the room ID
/// (rooms before v12) and the servers known to be in the room.
pub async fn join(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    via: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<Sent, RoomError> {
    let known = svc.storage.room(room_id).await?.is_some();
    if known && crate::acl::server_in_room(svc, room_id, svc.server_name()).await? {
        return super::membership::join(svc, room_id, user, reason).await;
    }
    let mut servers: Vec<OwnedServerName> = via.to_vec();
    let invite = svc
        .storage
        .remote_invites(user)
        .await?
        .into_iter()
        .find(|i| i.room_id == room_id);
    if let Some(invite) = &invite {
        servers.insert(0, invite.via.clone());
    }
    if let Some(server) = room_id.server_name() {
        servers.push(server.to_owned());
    }
    if known {
        for member in svc.storage.room_members(room_id, Some("join")).await? {
            servers.push(member.user_id.server_name().to_owned());
        }
    }
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| s != svc.server_name() && seen.insert(s.clone()));
    if servers.is_empty() {
        return Err(if known {
            RoomError::Forbidden("No server is in this room to join it through".to_owned())
        } else {
            RoomError::UnknownRoom
        });
    }
    let sent = join_remote(svc, room_id, user, &servers).await?;
    if invite.is_some() {
        svc.storage.delete_remote_invite(user, room_id).await?;
    }
    Ok(sent)
}
