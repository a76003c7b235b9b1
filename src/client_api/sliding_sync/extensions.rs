//! The extensions a request turns on, each answered beside the rooms:
//!
//! - `to_device`: the device's to-device messages, from its own `since`
//!   (the `next_batch` the client keeps across connections and restarts);
//!   messages up to `since` were received and are dropped;
//! - `e2ee`: one-time key counts, unused fallback key types, and — after a
//!   `pos` — the users whose devices changed or who share no room any more;
//! - `account_data`: global (all of it on a connection's first answer, with
//!   the default push rules; then what changed) and of the answer's rooms;
//! - `receipts` and `typing`: of the rooms in the lists' ranges and the
//!   subscriptions, what changed since `pos` (all on a first answer, and
//!   for a room sent for the first time).

use std::collections::{BTreeMap, HashSet};

use ruma::{
    OneTimeKeyAlgorithm, OwnedRoomId, UInt,
    api::client::sync::sync_events::v5::{
        request,
        response::{self, Extensions},
    },
};
use serde_json::{Value, json};

use crate::{
    client_api::{e2e_sync, format, sync_token::SyncToken},
    error::MatrixError,
    services::Services,
    storage::TokenOwner,
};

/// To-device messages in one answer, at most.
const MAX_TO_DEVICE: usize = 100;

/// What the extensions look at.
pub struct Scope<'a> {
    pub owner: &'a TokenOwner,
    /// The answer's heads, and the request's (`None`: no `pos`).
    pub heads: &'a SyncToken,
    pub since: Option<&'a SyncToken>,
    /// The rooms in the ranges and subscriptions, and those of them sent
    /// for the first time in this answer.
    pub rooms: &'a [OwnedRoomId],
    pub initial: &'a HashSet<OwnedRoomId>,
}

pub async fn answer(svc: &Services, asked: &request::Extensions, scope: &Scope<'_>) -> Result<Extensions, MatrixError> {
    let mut out = Extensions::default();
    if asked.to_device.enabled == Some(true) {
        out.to_device = Some(to_device(svc, &asked.to_device, scope).await?);
    }
    if asked.e2ee.enabled == Some(true) {
        out.e2ee = e2ee(svc, scope).await?;
    }
    if asked.account_data.enabled == Some(true) {
        out.account_data = account_data(svc, scope).await?;
    }
    if asked.receipts.enabled == Some(true) {
        out.receipts = receipts(svc, scope).await?;
    }
    if asked.typing.enabled == Some(true) {
        out.typing = typing(svc, scope).await?;
    }
    Ok(out)
}

/// Whether the extensions carry news (key counts are no news).
pub fn has_news(extensions: &Extensions) -> bool {
    extensions.to_device.as_ref().is_some_and(|t| !t.events.is_empty())
        || !extensions.e2ee.device_lists.is_empty()
        || !extensions.account_data.is_empty()
        || !extensions.receipts.is_empty()
        || !extensions.typing.is_empty()
}

async fn to_device(
    svc: &Services,
    asked: &request::ToDevice,
    scope: &Scope<'_>,
) -> Result<response::ToDevice, MatrixError> {
    let since = match asked.since.as_deref() {
        Some(since) => Some(
            since
                .parse::<i64>()
                .map_err(|_| MatrixError::invalid_param(format!("Invalid to_device since {since:?}")))?,
        ),
        None => None,
    };
    let head = scope.heads.e2e.unwrap_or_default();
    let limit = asked
        .limit
        .map_or(MAX_TO_DEVICE, |l| (u64::from(l) as usize).clamp(1, MAX_TO_DEVICE));
    let (events, next) = e2e_sync::to_device(svc, scope.owner, since, head, limit).await?;
    let mut out = response::ToDevice::default();
    out.next_batch = next.max(since.unwrap_or_default()).to_string();
    out.events = events.iter().map(format::raw).collect();
    Ok(out)
}

async fn e2ee(svc: &Services, scope: &Scope<'_>) -> Result<response::E2EE, MatrixError> {
    let (user, device) = (&scope.owner.user_id, &scope.owner.device_id);
    let mut out = response::E2EE::default();
    if let Some(since) = scope.since {
        let lists = e2e_sync::device_list_changes(
            svc,
            user,
            (since.stream, since.e2e),
            (scope.heads.stream, scope.heads.e2e),
        )
        .await?;
        out.device_lists.changed = lists.changed;
        out.device_lists.left = lists.left;
    }
    out.device_one_time_keys_count = svc
        .storage
        .one_time_key_counts(user, device)
        .await?
        .into_iter()
        .map(|(algorithm, count)| (OneTimeKeyAlgorithm::from(algorithm), UInt::new_saturating(count)))
        .collect();
    out.device_unused_fallback_key_types = Some(
        svc.storage
            .unused_fallback_key_types(user, device)
            .await?
            .into_iter()
            .map(OneTimeKeyAlgorithm::from)
            .collect(),
    );
    Ok(out)
}

async fn account_data(svc: &Services, scope: &Scope<'_>) -> Result<response::AccountData, MatrixError> {
    let user = &scope.owner.user_id;
    let head = scope.heads.account_data.unwrap_or_default();
    let since = scope.since.and_then(|s| s.account_data);
    let mut out = response::AccountData::default();
    let event = |data: &crate::storage::AccountData| -> Value {
        let content: Value = serde_json::from_str(&data.content).unwrap_or_else(|_| json!({}));
        json!({ "type": data.data_type, "content": content })
    };
    let watched: HashSet<&OwnedRoomId> = scope.rooms.iter().collect();
    let mut rooms: BTreeMap<OwnedRoomId, Vec<Value>> = BTreeMap::new();
    let mut global = Vec::new();
    for data in svc.storage.account_data_changes(user, since, head).await? {
        match &data.room_id {
            None => global.push(event(&data)),
            Some(room) if watched.contains(room) && !scope.initial.contains(room) => {
                rooms.entry(room.clone()).or_default().push(event(&data));
            }
            Some(_) => {}
        }
    }
    if since.is_some() {
        // A room sent for the first time: all of its account data.
        for room in scope.initial {
            let all = svc.storage.room_account_data(user, room, head).await?;
            if !all.is_empty() {
                rooms.insert(room.clone(), all.iter().map(event).collect());
            }
        }
    } else {
        for room in scope.initial {
            rooms.entry(room.clone()).or_default();
        }
        rooms.retain(|_, events| !events.is_empty());
        // The push rules, also when never changed (the defaults are not
        // stored).
        let kind = crate::push::rules::PUSH_RULES;
        if !global.iter().any(|e| e["type"] == kind) {
            let rules = crate::push::rules::get(svc, user).await?;
            global.insert(
                0,
                json!({ "type": kind, "content": crate::push::rules::content(&rules.all)? }),
            );
        }
    }
    out.global = global.iter().map(format::raw).collect();
    out.rooms = rooms
        .into_iter()
        .map(|(room, events)| (room, events.iter().map(format::raw).collect()))
        .collect();
    Ok(out)
}

async fn receipts(svc: &Services, scope: &Scope<'_>) -> Result<response::Receipts, MatrixError> {
    let mut out = response::Receipts::default();
    let head = scope.heads.ephemeral.unwrap_or_default();
    let since = scope.since.and_then(|s| s.ephemeral);
    for room in scope.rooms {
        let after = since.filter(|_| !scope.initial.contains(room));
        // Nothing moved on the ephemeral stream since: no new receipt
        // (not a query per room).
        if after.is_some_and(|after| after >= head) {
            continue;
        }
        let mut content = serde_json::Map::new();
        for r in svc.storage.receipts(room, after).await? {
            // Private receipts are for their owner only.
            if r.position > head || (r.receipt_type == "m.read.private" && r.user_id != scope.owner.user_id) {
                continue;
            }
            let by_type = content.entry(r.event_id.to_string()).or_insert_with(|| json!({}));
            by_type[&r.receipt_type][r.user_id.as_str()] = json!({ "ts": r.ts });
        }
        if !content.is_empty() {
            out.rooms.insert(
                room.clone(),
                format::raw(&json!({ "type": "m.receipt", "content": content })),
            );
        }
    }
    Ok(out)
}

async fn typing(svc: &Services, scope: &Scope<'_>) -> Result<response::Typing, MatrixError> {
    let mut out = response::Typing::default();
    let head = scope.heads.ephemeral.unwrap_or_default();
    let since = scope.since.and_then(|s| s.ephemeral);
    let changed = svc.ephemeral.typing(since, head).await?;
    let everyone_now = if scope.initial.is_empty() || since.is_none() {
        None
    } else {
        Some(svc.ephemeral.typing(None, head).await?)
    };
    for room in scope.rooms {
        let users = match (&everyone_now, scope.initial.contains(room)) {
            (Some(now), true) => now.get(room),
            _ => changed.get(room),
        };
        if let Some(users) = users {
            out.rooms.insert(
                room.clone(),
                format::raw(&json!({ "type": "m.typing", "content": { "user_ids": users } })),
            );
        }
    }
    Ok(out)
}
