//! The end-to-end encryption parts of `/sync`: `to_device` (messages wait
//! until the device syncs with a token past them), `device_lists`
//! (`changed`, `left`), `device_one_time_keys_count` and
//! `device_unused_fallback_key_types`; and `/keys/changes`, which asks the
//! device list question between two sync tokens.
//!
//! The e2e position is the sync token's fourth part (`super::sync_token`);
//! tokens without it (given out before it existed) still work: they show no
//! device list changes by key upload, and acknowledge no message.

use std::collections::BTreeSet;

use ruma::{
    OneTimeKeyAlgorithm, OwnedRoomId, OwnedUserId, UInt, UserId,
    api::client::sync::sync_events::{DeviceLists, v3::Response},
    serde::Raw,
};
use serde_json::{Value, json};

use super::sync_token::SyncToken;
use crate::{
    devices,
    error::MatrixError,
    services::Services,
    storage::{StreamOrdering, TokenOwner},
};

/// Most to-device messages one sync response carries.
const MAX_TO_DEVICE: usize = 100;

/// A token's `(event stream, e2e stream)` positions, the latter if it has
/// one (`super::sync_token`).
pub fn parse_token(token: &str) -> Option<(StreamOrdering, Option<i64>)> {
    SyncToken::parse(token).map(|t| (t.stream, t.e2e))
}

/// `device_lists` of a sync, or the answer of `/keys/changes`.
#[derive(Default)]
pub struct Lists {
    pub changed: Vec<OwnedUserId>,
    pub left: Vec<OwnedUserId>,
}

/// Users whose devices `user_id` should look at again, between two
/// positions: those sharing a room with them whose device lists changed,
/// those who came to share a room (joined or were invited to one of the
/// user's rooms, or whose room the user joined); and those who no longer
/// share any room with them (`left`).
pub async fn device_list_changes(
    svc: &Services,
    user_id: &UserId,
    (from_stream, from_e2e): (StreamOrdering, Option<i64>),
    (to_stream, to_e2e): (StreamOrdering, Option<i64>),
) -> Result<Lists, MatrixError> {
    let changed_devices = match (from_e2e, to_e2e) {
        (Some(from), Some(to)) if to > from => svc.storage.device_list_changes(user_id, from, to).await?,
        _ => Vec::new(),
    };
    let member_events = if to_stream > from_stream {
        let rooms: Vec<OwnedRoomId> = svc
            .storage
            .user_memberships(user_id)
            .await?
            .into_iter()
            .map(|m| m.room_id)
            .collect();
        svc.storage
            .member_events_between(&rooms, from_stream, to_stream)
            .await?
    } else {
        Vec::new()
    };
    if changed_devices.is_empty() && member_events.is_empty() {
        return Ok(Lists::default());
    }
    let sharing = devices::users_sharing_rooms(svc, user_id).await?;
    let mut changed = BTreeSet::new();
    let mut left = BTreeSet::new();
    for (room_id, who, membership) in member_events {
        let affected: Vec<OwnedUserId> = if who == user_id {
            // The user's own membership: everyone in the room.
            svc.storage
                .room_members(&room_id, Some("join"))
                .await?
                .into_iter()
                .map(|m| m.user_id)
                .filter(|u| u != user_id)
                .collect()
        } else {
            vec![who]
        };
        for other in affected {
            match membership.as_str() {
                "join" | "invite" if sharing.contains(&other) || membership == "invite" => {
                    left.remove(&other);
                    changed.insert(other);
                }
                "leave" | "ban" if !sharing.contains(&other) => {
                    changed.remove(&other);
                    left.insert(other);
                }
                _ => {}
            }
        }
    }
    for (other, private) in changed_devices {
        if private || sharing.contains(&other) {
            changed.insert(other);
        }
    }
    left.retain(|u| !changed.contains(u));
    Ok(Lists {
        changed: changed.into_iter().collect(),
        left: left.into_iter().collect(),
    })
}

/// The e2e part of one sync response.
pub struct Section {
    lists: Lists,
    to_device: Vec<Value>,
    one_time_key_counts: Vec<(String, u64)>,
    unused_fallback_key_types: Vec<String>,
    /// The e2e position the response covers (its token's fourth part).
    pub position: i64,
}

impl Section {
    /// Nothing the client would wait for.
    pub fn is_empty(&self) -> bool {
        self.lists.changed.is_empty() && self.lists.left.is_empty() && self.to_device.is_empty()
    }

    pub fn apply(self, response: &mut Response) {
        let mut lists = DeviceLists::new();
        lists.changed = self.lists.changed;
        lists.left = self.lists.left;
        response.device_lists = lists;
        response.to_device.events = self
            .to_device
            .iter()
            .filter_map(|e| serde_json::value::to_raw_value(e).ok())
            .map(Raw::from_json)
            .collect();
        response.device_one_time_keys_count = self
            .one_time_key_counts
            .into_iter()
            .map(|(algorithm, count)| (OneTimeKeyAlgorithm::from(algorithm), UInt::new_saturating(count)))
            .collect();
        response.device_unused_fallback_key_types = Some(
            self.unused_fallback_key_types
                .into_iter()
                .map(OneTimeKeyAlgorithm::from)
                .collect(),
        );
    }
}

/// A device's to-device messages (`/sync`, sliding sync's extension):
/// those up to `acknowledged` were received and are dropped; then up to
/// `limit` of those at positions up to `head`, as events, and the position
/// the client has them up to.
pub async fn to_device(
    svc: &Services,
    owner: &TokenOwner,
    acknowledged: Option<i64>,
    head: i64,
    limit: usize,
) -> Result<(Vec<Value>, i64), MatrixError> {
    let (user_id, device_id) = (&owner.user_id, &owner.device_id);
    // (A read first: most syncs have nothing to drop, and a write would
    // take the database's one writer.)
    if let Some(acknowledged) = acknowledged
        && !svc
            .storage
            .to_device_messages(user_id, device_id, acknowledged, 1)
            .await?
            .is_empty()
    {
        svc.storage
            .delete_to_device_messages(user_id, device_id, acknowledged)
            .await?;
    }
    let messages = svc.storage.to_device_messages(user_id, device_id, head, limit).await?;
    let position = match messages.last() {
        Some(last) if messages.len() == limit => last.position,
        _ => head,
    };
    let events = messages
        .into_iter()
        .map(|m| {
            let content: Value = serde_json::from_str(&m.content).unwrap_or_else(|_| json!({}));
            json!({ "sender": m.sender, "type": m.event_type, "content": content })
        })
        .collect();
    Ok((events, position))
}

/// The e2e section of a sync of `owner`'s device from `since` (event and
/// e2e positions; `None` for a full sync) to the heads. Messages up to the
/// e2e position of `since` were received: they are dropped.
pub async fn section(
    svc: &Services,
    owner: &TokenOwner,
    since: Option<(StreamOrdering, Option<i64>)>,
    head: StreamOrdering,
    e2e_head: i64,
) -> Result<Section, MatrixError> {
    let user_id = &owner.user_id;
    let acknowledged = since.and_then(|(_, e2e)| e2e);
    let (to_device, position) = to_device(svc, owner, acknowledged, e2e_head, MAX_TO_DEVICE).await?;
    let lists = match since {
        Some(since) => device_list_changes(svc, user_id, since, (head, Some(position))).await?,
        None => Lists::default(),
    };
    Ok(Section {
        lists,
        to_device,
        one_time_key_counts: svc.storage.one_time_key_counts(user_id, &owner.device_id).await?,
        unused_fallback_key_types: svc.storage.unused_fallback_key_types(user_id, &owner.device_id).await?,
        position,
    })
}
