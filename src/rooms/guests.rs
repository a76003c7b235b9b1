//! Guests in rooms (client-server "Guest access", server behaviour): a
//! guest account joins only a room whose `m.room.guest_access` is
//! `can_join`, and when the room stops being open to guests, this
//! server's guests in it leave.
//!
//! Guests are a local notion (no server tells another which of its users
//! are guests), so each server enforces this for its own guests — here
//! on joins, and by [`run_revocations`] after a change of
//! `m.room.guest_access`, from this server or another.

use std::sync::{Arc, Mutex};

use ruma::{OwnedRoomId, OwnedServerName, RoomId, UserId, events::StateEventType};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RoomError, membership, remote_join, send::Sent};
use crate::{services::Services, storage::StoredEvent};

/// Whether an `m.room.guest_access` content lets guests join.
pub fn content_allows_guests(content: &Value) -> bool {
    content.get("guest_access").and_then(Value::as_str) == Some("can_join")
}

fn event_allows_guests(event: Option<&StoredEvent>) -> bool {
    event.is_some_and(|e| {
        serde_json::from_str::<Value>(e.pdu.content.get()).is_ok_and(|content| content_allows_guests(&content))
    })
}

/// Whether the room's current state lets guests join (`false` for a room
/// this server does not hold).
pub async fn room_allows_guests(svc: &Services, room_id: &RoomId) -> Result<bool, RoomError> {
    let Some((_, state)) = svc.state.current(room_id).await? else {
        return Ok(false);
    };
    let event = svc.state.event_for(&state, StateEventType::RoomGuestAccess, "").await?;
    Ok(event_allows_guests(event.as_ref()))
}

fn refused() -> RoomError {
    RoomError::Forbidden("Guest access not allowed in this room".to_owned())
}

/// A local guest joins a room. In a room this server is in, the current
/// state decides. Otherwise the invite's stripped state decides first
/// when it has `m.room.guest_access`, and the room's state as the join
/// brought it decides last: a guest who was let in by no rule leaves at
/// once and the join is refused.
pub async fn join(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    via: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<Sent, RoomError> {
    let here = svc.storage.room(room_id).await?.is_some()
        && crate::acl::server_in_room(svc, room_id, svc.server_name()).await?;
    if here {
        if !room_allows_guests(svc, room_id).await? {
            return Err(refused());
        }
        return membership::join(svc, room_id, user, reason).await;
    }
    if invite_refuses_guests(svc, room_id, user).await? {
        return Err(refused());
    }
    let sent = remote_join::join(svc, room_id, user, via, reason).await?;
    if !room_allows_guests(svc, room_id).await? {
        tracing::info!(%room_id, %user, "guest joined a room closed to guests: leaving");
        membership::leave(svc, room_id, user, None).await?;
        return Err(refused());
    }
    Ok(sent)
}

/// Whether the stripped state of the user's pending invite to the room
/// says the room is closed to guests (`false` when it does not say).
async fn invite_refuses_guests(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<bool, RoomError> {
    let invites = svc.storage.remote_invites(user).await?;
    let Some(invite) = invites.iter().find(|i| i.room_id == room_id) else {
        return Ok(false);
    };
    let state: Vec<Value> = serde_json::from_str(&invite.invite_state).unwrap_or_default();
    let guest_access = state
        .iter()
        .find(|e| e.get("type").and_then(Value::as_str) == Some("m.room.guest_access"));
    Ok(match guest_access {
        Some(event) => !event.get("content").is_some_and(content_allows_guests),
        None => false,
    })
}

/// Rooms whose `m.room.guest_access` changed, for [`run_revocations`].
pub struct GuestRevocations {
    tx: mpsc::UnboundedSender<OwnedRoomId>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<OwnedRoomId>>>,
}

impl Default for GuestRevocations {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        GuestRevocations {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl GuestRevocations {
    /// An `m.room.guest_access` event that closes the room to guests
    /// became part of its current state.
    pub fn closed(&self, room_id: &RoomId) {
        // Sending fails only once the worker stopped (shutdown).
        let _ = self.tx.send(room_id.to_owned());
    }
}

/// Makes the local guests leave the rooms [`GuestRevocations::closed`]
/// names, as the spec asks ("the server MUST set those users'
/// `m.room.member` state to `leave`"). Each guest leaves by its own
/// event, as Synapse does: no power level is needed for that.
pub async fn run_revocations(svc: Arc<Services>, cancel: CancellationToken) {
    let Some(mut rx) = svc.guest_revocations.rx.lock().expect("revocations receiver").take() else {
        return;
    };
    loop {
        let room_id = tokio::select! {
            _ = cancel.cancelled() => break,
            room = rx.recv() => match room {
                Some(room) => room,
                None => break,
            },
        };
        if let Err(error) = remove_guests(&svc, &room_id).await {
            tracing::warn!(%room_id, %error, "guests not removed from a room closed to them");
        }
    }
}

async fn remove_guests(svc: &Services, room_id: &RoomId) -> Result<(), RoomError> {
    // The state may have changed again since: it decides, not the event.
    if room_allows_guests(svc, room_id).await? {
        return Ok(());
    }
    let mut members = svc.storage.room_members(room_id, Some("join")).await?;
    members.extend(svc.storage.room_members(room_id, Some("invite")).await?);
    for member in members {
        if member.user_id.server_name() != svc.server_name() {
            continue;
        }
        let is_guest = svc.storage.user(&member.user_id).await?.is_some_and(|u| u.is_guest);
        if is_guest {
            tracing::info!(%room_id, user = %member.user_id, "guest leaves a room closed to guests");
            membership::leave(svc, room_id, &member.user_id, None).await?;
        }
    }
    Ok(())
}
