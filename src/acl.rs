//! Server access control lists (`m.room.server_acl`): which servers a
//! room lets in. Checked on every federation request about a room.

use ruma::{
    RoomId, ServerName,
    events::{StateEventType, room::server_acl::RoomServerAclEventContent},
};

use crate::{services::Services, storage::Result};

/// Whether the room's current ACL lets `server` in. A room without an ACL
/// lets everyone in; an ACL weft cannot read lets nobody in (the auth
/// rules do not check its content, and failing open would be worse).
pub async fn allows(svc: &Services, room_id: &RoomId, server: &ServerName) -> Result<bool> {
    let Some((_, state)) = svc.state.current(room_id).await? else {
        return Ok(true);
    };
    let Some(event) = svc.state.event_for(&state, StateEventType::RoomServerAcl, "").await? else {
        return Ok(true);
    };
    match serde_json::from_str::<RoomServerAclEventContent>(event.pdu.content.get()) {
        Ok(acl) => Ok(acl.is_allowed(server)),
        Err(e) => {
            tracing::warn!(%room_id, error = %e, "unreadable m.room.server_acl: denying every server");
            Ok(false)
        }
    }
}

/// Whether any user of `server` is joined to the room now.
pub async fn server_in_room(svc: &Services, room_id: &RoomId, server: &ServerName) -> Result<bool> {
    Ok(svc.joined.get(room_id).await?.has_server(server))
}
