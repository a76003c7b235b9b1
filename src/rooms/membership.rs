//! Membership changes of local users in rooms this server holds: join,
//! leave, invite, kick, ban, unban. The auth rules decide who may do
//! what; this module writes the `m.room.member` events.

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use super::{
    RoomError,
    send::{Sent, send_event},
};
use crate::{events::EventTemplate, services::Services};

fn member_event(target: &UserId, membership: &str, extra: Map<String, Value>) -> EventTemplate {
    let mut content = extra;
    content.insert("membership".to_owned(), json!(membership));
    EventTemplate::state("m.room.member", target.as_str(), Value::Object(content))
}

async fn profile_fields(svc: &Services, user: &UserId) -> Result<Map<String, Value>, RoomError> {
    let mut fields = Map::new();
    if let Some(record) = svc.storage.user(user).await? {
        if let Some(name) = record.displayname {
            fields.insert("displayname".to_owned(), json!(name));
        }
        if let Some(url) = record.avatar_url {
            fields.insert("avatar_url".to_owned(), json!(url));
        }
    }
    Ok(fields)
}

fn with_reason(mut fields: Map<String, Value>, reason: Option<&str>) -> Map<String, Value> {
    if let Some(reason) = reason {
        fields.insert("reason".to_owned(), json!(reason));
    }
    fields
}

/// A local user joins a room this server holds.
pub async fn join_local(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<Sent, RoomError> {
    join(svc, room_id, user, None).await
}

pub async fn join(svc: &Services, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<Sent, RoomError> {
    let fields = with_reason(profile_fields(svc, user).await?, reason);
    send_event(svc, room_id, user, member_event(user, "join", fields), None).await
}

pub async fn leave(svc: &Services, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<Sent, RoomError> {
    send_event(
        svc,
        room_id,
        user,
        member_event(user, "leave", with_reason(Map::new(), reason)),
        None,
    )
    .await
}

pub async fn invite(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<Sent, RoomError> {
    // The target's membership (a ban, say) may be among the members a
    // partial state leaves out.
    super::partial_state::wait_until_full(svc, room_id).await?;
    if target.server_name() != svc.server_name() {
        let mut fields = with_reason(Map::new(), reason);
        fields.insert("membership".to_owned(), json!("invite"));
        if is_direct {
            fields.insert("is_direct".to_owned(), json!(true));
        }
        return super::invites::invite_remote(svc, room_id, sender, target, Value::Object(fields)).await;
    }
    if !crate::appservice::local_user_exists(svc, target).await? {
        return Err(RoomError::Invalid(format!("unknown user {target}")));
    }
    let mut fields = with_reason(profile_fields(svc, target).await?, reason);
    if is_direct {
        fields.insert("is_direct".to_owned(), json!(true));
    }
    send_event(svc, room_id, sender, member_event(target, "invite", fields), None).await
}

/// Kicks `target`: only a user who is in the room (joined, invited or
/// knocking) can be kicked; the auth rules check the power levels.
pub async fn kick(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    reason: Option<&str>,
) -> Result<Sent, RoomError> {
    super::partial_state::wait_until_full(svc, room_id).await?;
    let current = crate::visibility::current_membership(svc, room_id, target).await?;
    if !matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
        return Err(RoomError::Forbidden(format!("{target} is not in the room")));
    }
    set_other_membership(svc, room_id, sender, target, "leave", reason).await
}

/// Kick (`leave`), ban (`ban`) or unban (`leave` of a banned user).
pub async fn set_other_membership(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    membership: &str,
    reason: Option<&str>,
) -> Result<Sent, RoomError> {
    // The target's membership may be among those a partial state lacks.
    super::partial_state::wait_until_full(svc, room_id).await?;
    send_event(
        svc,
        room_id,
        sender,
        member_event(target, membership, with_reason(Map::new(), reason)),
        None,
    )
    .await
}
