//! Invites across servers: local users invited to rooms held elsewhere
//! (`/invite` v2 in, shown in `/sync` until joined or rejected), users of
//! other servers invited to rooms here (`/invite` v2 out), and rejecting a
//! remote invite (`make_leave`/`send_leave` out).

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, RoomId, RoomVersionId, ServerName, UserId,
    api::federation::membership::{RawStrippedState, create_invite, create_leave_event, prepare_leave_event},
    events::TimelineEventType,
};
use serde_json::value::RawValue;

use super::{
    RoomError,
    send::{Sent, persist_local, place},
};
use crate::{
    config::SUPPORTED_ROOM_VERSIONS,
    event_checks,
    events::{EventTemplate, Placement, auth, build_event},
    services::Services,
    storage::RemoteInvite,
};

/// `/invite` from `origin`: checks the invite of a local user, countersigns
/// it, and (for a room this server is not in) keeps it for the user.
pub async fn receive_invite(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    version: &RoomVersionId,
    raw: &RawValue,
    invite_state: &[RawStrippedState],
) -> Result<Box<RawValue>, RoomError> {
    if !SUPPORTED_ROOM_VERSIONS.contains(version) {
        return Err(RoomError::UnsupportedVersion(version.to_string()));
    }
    let rules = version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
    let pdu = event_checks::check_signed(svc, version, raw).await?;
    if pdu.event_id != event_id || pdu.room_id != room_id {
        return Err(RoomError::Invalid(
            "the invite is not the event the request names".to_owned(),
        ));
    }
    let room_here = svc.storage.room(room_id).await?.is_some();
    if room_here && !crate::acl::allows(svc, room_id, origin).await? {
        return Err(RoomError::Forbidden(
            "the room's server ACL denies the inviting server".to_owned(),
        ));
    }
    let invitee = pdu
        .state_key
        .as_deref()
        .and_then(|k| UserId::parse(k).ok())
        .filter(|_| pdu.kind == TimelineEventType::RoomMember && pdu.membership().as_deref() == Some("invite"))
        .ok_or_else(|| RoomError::Invalid("not an invite".to_owned()))?;
    if invitee.server_name() != svc.server_name() {
        return Err(RoomError::Invalid(format!("{invitee} is not a user of this server")));
    }
    if pdu.sender.server_name() != origin {
        return Err(RoomError::Forbidden(format!(
            "{origin} cannot send invites for {}",
            pdu.sender
        )));
    }
    let in_room = room_here
        && crate::acl::server_in_room(svc, room_id, svc.server_name())
            .await
            .unwrap_or(false);
    // In a room this server is in, the invite is a room event like any
    // other (as /send would take it), whoever it names; kept for a user
    // to see, it must name one.
    if !in_room && svc.storage.user(&invitee).await?.is_none() {
        return Err(RoomError::UnknownUser(invitee.to_string()));
    }

    let mut object: CanonicalJsonObject =
        serde_json::from_str(raw.get()).map_err(|e| RoomError::Invalid(e.to_string()))?;
    object.remove("unsigned");
    ruma::signatures::sign_event(
        svc.server_name().as_str(),
        svc.keys.key_pair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| RoomError::Invalid(format!("cannot countersign: {e}")))?;
    let signed = crate::events::Pdu::from_canonical(pdu.event_id.clone(), Some(room_id), &object)
        .map_err(|e| RoomError::Invalid(e.to_string()))?;
    let signed = Arc::new(signed);
    svc.storage.persist_outliers(vec![(signed.clone(), None)]).await?;
    if !in_room {
        let invite = RemoteInvite {
            user_id: invitee.clone(),
            room_id: room_id.to_owned(),
            event_id: pdu.event_id.clone(),
            stream_ordering: 0,
            room_version: version.clone(),
            invite_state: serde_json::to_string(&stripped_from(invite_state))
                .map_err(|e| RoomError::Invalid(e.to_string()))?,
            via: origin.to_owned(),
            membership: "invite".to_owned(),
        };
        svc.storage.store_remote_invite(&invite).await?;
        if let Some(event) = svc.storage.event(&pdu.event_id).await? {
            let state = stripped_from(invite_state);
            if let Err(e) =
                crate::push::evaluate::remote_invite(svc, &signed, event.meta.stream_ordering, &invitee, &state).await
            {
                tracing::warn!(%room_id, %invitee, error = %e, "push rules not applied to an invite");
            }
            svc.notifier.notify(
                event.meta.stream_ordering,
                &[crate::wakeups::Topic::User(invitee.clone())],
            );
        }
        tracing::info!(%room_id, %invitee, %origin, "invited to a room held elsewhere");
    }
    RawValue::from_string(serde_json::to_string(&object).map_err(|e| RoomError::Invalid(e.to_string()))?)
        .map_err(|e| RoomError::Invalid(e.to_string()))
}

/// A local user invites a user of another server: the invitee's server
/// countersigns the invite (`/invite` v2), then it is stored and sent.
pub async fn invite_remote(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    content: serde_json::Value,
) -> Result<Sent, RoomError> {
    let _guard = svc.rooms.lock(room_id).await?;
    let room = svc.storage.room(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let rules = room
        .version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(room.version.to_string()))?;
    let (group, state) = svc.state.current(room_id).await?.ok_or(RoomError::UnknownRoom)?;
    let template = EventTemplate::state("m.room.member", target.as_str(), content);
    let placed = place(svc, room_id, sender, &template, &state, &rules).await?;
    let pdu = build_event(
        &svc.keys,
        &room.version,
        sender,
        &template,
        Placement {
            room_id: Some(room_id),
            prev_events: placed.prev_events,
            auth_events: placed.auth_events,
            depth: placed.depth,
            ref_hashes: placed.ref_hashes,
        },
        MilliSecondsSinceUnixEpoch::now(),
    )?;
    let ctx = auth::AuthContext::from_state(placed.auth_state.iter().map(|e| &*e.pdu));
    auth::check(&rules.authorization, &pdu, &ctx).map_err(RoomError::Forbidden)?;

    let stripped = invite_room_state(svc, &state, sender).await?;
    let stripped_v1 = serde_json::to_value(&stripped).map_err(|e| RoomError::Invalid(e.to_string()))?;
    let event = RawValue::from_string(pdu.json.to_string()).map_err(|e| RoomError::Invalid(e.to_string()))?;
    let request = create_invite::v2::Request::new(
        room_id.to_owned(),
        pdu.event_id.clone(),
        room.version.clone(),
        event,
        stripped,
    );
    let refused = |e: crate::federation_client::FederationError| match e.status() {
        Some(status) if status.is_client_error() => RoomError::Forbidden(format!("the invite was refused: {e}")),
        _ => RoomError::Invalid(format!("the invite could not be delivered: {e}")),
    };
    let answer = match svc.federation.send(target.server_name(), request).await {
        Ok(answer) => answer.event,
        // A server without the v2 API, for the rooms the v1 API can name
        // (versions 1 and 2: it carries no room version).
        Err(e) if e.lacks_endpoint() && rules.event_format.require_event_id => {
            // The stripped state rides in the event's `unsigned`.
            let mut event: serde_json::Value =
                serde_json::from_str(&pdu.json).map_err(|e| RoomError::Invalid(e.to_string()))?;
            event["unsigned"] = serde_json::json!({ "invite_room_state": stripped_v1 });
            let event = serde_json::value::to_raw_value(&event).map_err(|e| RoomError::Invalid(e.to_string()))?;
            svc.federation
                .invite_v1(target.server_name(), room_id, &pdu.event_id, &event)
                .await
                .map_err(refused)?
                .event
        }
        Err(e) => return Err(refused(e)),
    };
    let countersigned = event_checks::check_signed(svc, &room.version, &answer).await?;
    if countersigned.event_id != pdu.event_id {
        return Err(RoomError::Invalid("the invitee's server changed the invite".to_owned()));
    }
    let sent = persist_local(svc, countersigned, Some((group, state)), None, &rules).await?;
    svc.sender.send_pdu(room_id, &sent.pdu, &[]).await?;
    Ok(sent)
}

/// The state an invitee is shown, as full PDUs (Matrix 1.16 on).
async fn invite_room_state(
    svc: &Services,
    state: &crate::state::StateMap,
    sender: &UserId,
) -> Result<Vec<RawStrippedState>, RoomError> {
    use ruma::events::StateEventType as T;
    let keys: Vec<_> = [
        T::RoomCreate,
        T::RoomJoinRules,
        T::RoomName,
        T::RoomAvatar,
        T::RoomCanonicalAlias,
        T::RoomEncryption,
        T::RoomTopic,
        // lets the invitee's server refuse a guest's join before making it
        T::RoomGuestAccess,
    ]
    .into_iter()
    .map(|t| (t, String::new()))
    // and the inviter's membership (as Synapse sends it)
    .chain([(T::RoomMember, sender.to_string())])
    .collect();
    let events = svc.state.events_for(state, &keys).await?;
    Ok(events
        .iter()
        .filter_map(|e| RawValue::from_string(e.pdu.json.to_string()).ok())
        .map(RawStrippedState::Pdu)
        .collect())
}

/// Stripped state events (`content`, `sender`, `state_key`, `type`) from
/// what an inviting server sent (stripped events or full PDUs).
pub fn stripped_from(entries: &[RawStrippedState]) -> Vec<serde_json::Value> {
    entries
        .iter()
        .filter_map(|entry| {
            #[allow(deprecated)]
            let json = match entry {
                RawStrippedState::Stripped(raw) => raw.json().get(),
                RawStrippedState::Pdu(raw) => raw.get(),
                _ => return None,
            };
            let value: serde_json::Value = serde_json::from_str(json).ok()?;
            Some(serde_json::json!({
                "content": value.get("content")?,
                "sender": value.get("sender")?,
                "state_key": value.get("state_key")?,
                "type": value.get("type")?,
            }))
        })
        .collect()
}

/// Rejects an invite without the inviting server, when it cannot be asked
/// (unreachable, or no longer in the room: nobody is left to accept a
/// leave). The user must always be able to be rid of an invite. The leave
/// is made and signed here but sent nowhere (an "out-of-band" leave, as
/// Synapse makes them): it follows the invite in the DAG and is kept as an
/// outlier, and it takes the invite's place for `/sync`.
/// (Rooms v1, v2: the leave is made in their format.)
pub async fn reject_locally(svc: &Services, invite: &RemoteInvite, reason: Option<&str>) -> Result<(), RoomError> {
    let depth = svc
        .storage
        .event(&invite.event_id)
        .await?
        .map_or(1, |e| e.pdu.depth.saturating_add(1));
    let rules = invite
        .room_version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(invite.room_version.to_string()))?;
    let mut content = serde_json::json!({ "membership": "leave" });
    if let Some(reason) = reason {
        content["reason"] = serde_json::json!(reason);
    }
    let parents = vec![invite.event_id.clone()];
    let ref_hashes = super::send::reference_hashes(svc, &parents, &[], &rules).await?;
    let leave = build_event(
        &svc.keys,
        &invite.room_version,
        &invite.user_id,
        &EventTemplate::state("m.room.member", invite.user_id.as_str(), content),
        Placement {
            room_id: Some(&invite.room_id),
            prev_events: parents.clone(),
            auth_events: parents,
            depth,
            ref_hashes,
        },
        MilliSecondsSinceUnixEpoch::now(),
    )?;
    record_rejection(svc, invite, leave).await
}

/// The leave takes the invite's place, so /sync tells the client.
async fn record_rejection(svc: &Services, invite: &RemoteInvite, leave: crate::events::Pdu) -> Result<(), RoomError> {
    let event_id = leave.event_id.clone();
    svc.storage.persist_outliers(vec![(Arc::new(leave), None)]).await?;
    let rejected = RemoteInvite {
        event_id,
        membership: "leave".to_owned(),
        ..invite.clone()
    };
    svc.storage.store_remote_invite(&rejected).await?;
    svc.notifier.notify(
        svc.storage.max_stream_ordering().await?,
        &[crate::wakeups::Topic::User(invite.user_id.clone())],
    );
    Ok(())
}

/// Rejects (or withdraws from) an invite to a room held elsewhere, through
/// the inviting server: `make_leave`, sign, `send_leave`.
pub async fn reject_remote(svc: &Services, invite: &RemoteInvite, reason: Option<&str>) -> Result<(), RoomError> {
    let server = &invite.via;
    let template = svc
        .federation
        .send(
            server,
            prepare_leave_event::v1::Request::new(invite.room_id.clone(), invite.user_id.clone()),
        )
        .await
        .map_err(|e| RoomError::Invalid(format!("make_leave through {server}: {e}")))?;
    let version = template.room_version.unwrap_or_else(|| invite.room_version.clone());
    let rules = version
        .rules()
        .ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))?;
    let mut event: CanonicalJsonObject =
        serde_json::from_str(template.event.get()).map_err(|e| RoomError::Invalid(e.to_string()))?;
    let is_our_leave = event.get("state_key").and_then(|v| v.as_str()) == Some(invite.user_id.as_str())
        && event.get("sender").and_then(|v| v.as_str()) == Some(invite.user_id.as_str());
    if !is_our_leave {
        return Err(RoomError::Invalid(
            "the leave template is not a leave of this user".to_owned(),
        ));
    }
    let mut content = CanonicalJsonObject::new();
    content.insert("membership".to_owned(), CanonicalJsonValue::String("leave".to_owned()));
    if let Some(reason) = reason {
        content.insert("reason".to_owned(), CanonicalJsonValue::String(reason.to_owned()));
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
    .map_err(|e| RoomError::Invalid(e.to_string()))?;
    let event_id = crate::events::event_id_of(&event, &rules).map_err(RoomError::Invalid)?;
    let raw = serde_json::value::to_raw_value(&event).map_err(|e| RoomError::Invalid(e.to_string()))?;
    svc.federation
        .send(
            server,
            create_leave_event::v2::Request::new(invite.room_id.clone(), event_id.clone(), raw),
        )
        .await
        .map_err(|e| RoomError::Invalid(format!("send_leave through {server}: {e}")))?;
    let leave = crate::events::Pdu::from_canonical(event_id, Some(&invite.room_id), &event)
        .map_err(|e| RoomError::Invalid(e.to_string()))?;
    record_rejection(svc, invite, leave).await
}
