//! `GET /initialSync` and `GET /rooms/{roomId}/initialSync`: the snapshot
//! that clients took before `/sync` existed (deprecated, but specified and
//! still used), and room previews.
//!
//! Each room: the user's membership, the room state (the current state, or
//! for a room the user left, the state when they left), the newest
//! `limit` messages they may see (up to their leaving) with `start` and
//! `end` tokens for `/messages`, the directory visibility and the room's
//! account data; `/rooms/{roomId}/initialSync` adds the presence of the
//! room's members and its read receipts. A user who is not in a room may
//! preview it if it is world-readable (403 otherwise).
//!
//! Not `.ruma` routes: ruma's room request has no `limit`, and neither of
//! its responses carries `presence` and `receipts`, which clients (and
//! SyTest) read. Events carry `user_id` (= `sender`) as this API always had
//! them. Like `/sync`, the global snapshot marks the user online.

use std::{collections::HashSet, sync::Arc};

use axum::{
    Json,
    extract::{Path, Request, State},
};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, RoomId, UserId, presence::PresenceState};
use serde_json::{Value, json};

use super::{extract::token_owner, format, sync_token::SyncToken};
use crate::{
    account_data,
    error::MatrixError,
    presence,
    services::Services,
    storage::{Direction, StoredEvent, TokenOwner},
    timeline::{self, PageRequest, Reader, Token},
    visibility,
};

/// Messages per room when the request names no `limit`.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;

struct Query {
    limit: usize,
    archived: bool,
}

impl Query {
    fn parse(query: &str) -> Result<Query, MatrixError> {
        let mut parsed = Query {
            limit: DEFAULT_LIMIT,
            archived: false,
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "limit" => {
                    parsed.limit = value
                        .parse::<usize>()
                        .map_err(|_| MatrixError::invalid_param("limit must be a non-negative integer"))?
                        .min(MAX_LIMIT)
                }
                "archived" => {
                    parsed.archived = match &*value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(MatrixError::invalid_param("archived must be true or false")),
                    }
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// How the user comes to see a room.
enum Access<'a> {
    /// A member now: the current state, the newest messages.
    Joined,
    /// Left (or was kicked or banned) with this event: the room as it was
    /// then.
    Left(&'a StoredEvent),
    /// Not a member of a world-readable room.
    Peeking,
}

/// A `/sync`-style position (`sync_token.rs`) that `/events` and `/sync`
/// take up from: the event, ephemeral, account data and presence streams.
/// The e2e part is left empty: a sync from here must not take unseen
/// to-device messages as received.
fn stream_token(svc: &Services) -> String {
    SyncToken {
        stream: svc.notifier.head(),
        ephemeral: Some(svc.ephemeral.head()),
        account_data: Some(svc.account_data.head()),
        e2e: None,
        presence: Some(svc.presence.head()),
    }
    .to_string()
}

/// Client events as this API renders them: with `user_id`.
async fn events_json(svc: &Services, owner: &TokenOwner, events: &[StoredEvent]) -> Result<Vec<Value>, MatrixError> {
    let mut out = format::client_events(svc, events, Some(owner)).await?;
    for event in &mut out {
        if let Some(sender) = event.get("sender").cloned() {
            event["user_id"] = sender;
        }
    }
    Ok(out)
}

fn account_data_json(data: &[crate::storage::AccountData]) -> Vec<Value> {
    data.iter()
        .map(|d| {
            let content: Value = serde_json::from_str(&d.content).unwrap_or_default();
            json!({ "type": d.data_type, "content": content })
        })
        .collect()
}

/// One room of the snapshot: membership, state, messages, visibility,
/// account data.
async fn room_info(
    svc: &Services,
    owner: &TokenOwner,
    room_id: &RoomId,
    membership: Option<&str>,
    access: &Access<'_>,
    limit: usize,
) -> Result<serde_json::Map<String, Value>, MatrixError> {
    let user = &owner.user_id;
    let state_map = match access {
        Access::Left(leave) => match leave.meta.state_group_after.or(leave.meta.state_group_before) {
            Some(group) => svc.state.group(group).await?,
            None => Arc::default(),
        },
        _ => svc
            .state
            .current(room_id)
            .await?
            .map(|(_, map)| map)
            .unwrap_or_default(),
    };
    let ids: Vec<_> = state_map.values().cloned().collect();
    let mut state = svc.storage.events(&ids).await?;
    state.sort_by_key(|e| e.meta.stream_ordering);

    let (from, end) = match access {
        Access::Left(leave) => {
            let after = timeline::after(leave);
            (after, Token::Topo(after).to_string())
        }
        _ => (timeline::END, Token::Stream(svc.notifier.head()).to_string()),
    };
    let reader = Reader {
        user,
        joined_now: matches!(access, Access::Joined),
        filter: None,
    };
    let mut events = if limit == 0 {
        Vec::new()
    } else {
        let request = PageRequest {
            from,
            to: None,
            dir: Direction::Backward,
            limit,
        };
        timeline::paginate(svc, room_id, reader, request).await?.events
    };
    events.reverse();
    let start = events
        .first()
        .map_or_else(|| end.clone(), |first| Token::Topo(timeline::before(first)).to_string());
    let ignored = account_data::ignored_users(svc, user).await?;
    events.retain(|e| !account_data::hidden_by_ignore(&ignored, &e.pdu));

    let published = svc.storage.room(room_id).await?.is_some_and(|r| r.published);
    let room_account_data = match access {
        Access::Peeking => Vec::new(),
        _ => {
            svc.storage
                .room_account_data(user, room_id, svc.account_data.head())
                .await?
        }
    };
    let mut info = serde_json::Map::new();
    info.insert("room_id".into(), json!(room_id));
    if let Some(membership) = membership {
        info.insert("membership".into(), json!(membership));
    }
    info.insert("visibility".into(), json!(if published { "public" } else { "private" }));
    info.insert(
        "messages".into(),
        json!({ "chunk": events_json(svc, owner, &events).await?, "start": start, "end": end }),
    );
    info.insert("state".into(), json!(events_json(svc, owner, &state).await?));
    info.insert("account_data".into(), json!(account_data_json(&room_account_data)));
    Ok(info)
}

/// The room's read receipts as one `m.receipt` event (private ones only
/// for their owner); `None` without any.
async fn receipts(svc: &Services, user: &UserId, room_id: &RoomId) -> Result<Option<Value>, MatrixError> {
    let mut content = serde_json::Map::new();
    for r in svc.storage.receipts(room_id, None).await? {
        if r.receipt_type == "m.read.private" && r.user_id != user {
            continue;
        }
        let by_type = content.entry(r.event_id.to_string()).or_insert_with(|| json!({}));
        by_type[&r.receipt_type][r.user_id.as_str()] = json!({ "ts": r.ts });
    }
    Ok((!content.is_empty()).then(|| json!({ "type": "m.receipt", "room_id": room_id, "content": content })))
}

fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}

pub async fn initial_sync(State(svc): State<Arc<Services>>, req: Request) -> Result<Json<Value>, MatrixError> {
    let (parts, _) = req.into_parts();
    let owner = token_owner(&svc, &parts).await?;
    let query = Query::parse(parts.uri.query().unwrap_or_default())?;
    let user = &owner.user_id;
    presence::sync_activity(&svc, user, &PresenceState::Online).await?;
    let end = stream_token(&svc);

    let mut rooms = Vec::new();
    let mut receipt_events = Vec::new();
    let mut seen: HashSet<OwnedRoomId> = HashSet::new();
    for m in svc.storage.user_memberships(user).await? {
        seen.insert(m.room_id.clone());
        match m.membership.as_str() {
            "join" => {
                rooms.push(room_info(&svc, &owner, &m.room_id, Some("join"), &Access::Joined, query.limit).await?);
                receipt_events.extend(receipts(&svc, user, &m.room_id).await?);
            }
            "invite" => {
                let invite = svc.storage.events(std::slice::from_ref(&m.event_id)).await?;
                let mut info = serde_json::Map::new();
                info.insert("room_id".into(), json!(m.room_id));
                info.insert("membership".into(), json!("invite"));
                if let Some(event) = events_json(&svc, &owner, &invite).await?.pop() {
                    info.insert("invite".into(), event);
                }
                rooms.push(info);
            }
            "leave" | "ban" if query.archived => {
                let Some(leave) = svc.storage.event(&m.event_id).await? else {
                    continue;
                };
                let access = Access::Left(&leave);
                rooms.push(room_info(&svc, &owner, &m.room_id, Some(&m.membership), &access, query.limit).await?);
            }
            _ => {}
        }
    }
    // Invites to rooms held elsewhere.
    for invite in svc.storage.remote_invites(user).await? {
        if invite.membership != "invite" || seen.contains(&invite.room_id) {
            continue;
        }
        let events = svc.storage.events(std::slice::from_ref(&invite.event_id)).await?;
        let mut info = serde_json::Map::new();
        info.insert("room_id".into(), json!(invite.room_id));
        info.insert("membership".into(), json!("invite"));
        if let Some(event) = events_json(&svc, &owner, &events).await?.pop() {
            info.insert("invite".into(), event);
        }
        rooms.push(info);
    }

    let mut presence_events = Vec::new();
    if svc.presence.enabled() {
        let visible: Vec<_> = presence::visible_users(&svc, user).await?.into_iter().collect();
        let now = now_ms();
        let mut known: Vec<_> = svc.presence.of(&visible).await?.into_iter().collect();
        known.sort_by_key(|(_, s)| s.position);
        presence_events = known.iter().map(|(u, s)| s.event(u, now, true)).collect();
    }
    let global: Vec<_> = svc
        .storage
        .account_data_changes(user, None, svc.account_data.head())
        .await?
        .into_iter()
        .filter(|d| d.room_id.is_none())
        .collect();
    Ok(Json(json!({
        "end": end,
        "rooms": rooms,
        "presence": presence_events,
        "receipts": receipt_events,
        "account_data": account_data_json(&global),
    })))
}

pub async fn room_initial_sync(
    State(svc): State<Arc<Services>>,
    Path(room_id): Path<String>,
    req: Request,
) -> Result<Json<Value>, MatrixError> {
    let (parts, _) = req.into_parts();
    let owner = token_owner(&svc, &parts).await?;
    let room_id =
        OwnedRoomId::try_from(room_id).map_err(|e| MatrixError::invalid_param(format!("Invalid room ID: {e}")))?;
    let query = Query::parse(parts.uri.query().unwrap_or_default())?;
    let user = &owner.user_id;
    let membership = svc
        .storage
        .user_memberships(user)
        .await?
        .into_iter()
        .find(|m| m.room_id == room_id);
    let leave = match &membership {
        Some(m) if m.membership == "leave" || m.membership == "ban" => svc.storage.event(&m.event_id).await?,
        _ => None,
    };
    let kind = membership.as_ref().map(|m| m.membership.as_str());
    let access = match (kind, &leave) {
        (Some("join"), _) => Access::Joined,
        (_, Some(leave)) => Access::Left(leave),
        _ if visibility::world_readable(&svc, &room_id).await? => Access::Peeking,
        _ => {
            return Err(MatrixError::forbidden(format!(
                "User {user} is not in room {room_id}, and it is not world-readable"
            )));
        }
    };
    let mut info = room_info(&svc, &owner, &room_id, kind, &access, query.limit).await?;
    // Presence and receipts are of the room as it is now: none for a room
    // the user left.
    let (mut presence_events, mut receipt_events) = (Vec::new(), Vec::new());
    if !matches!(access, Access::Left(_)) {
        if svc.presence.enabled() {
            let now = now_ms();
            let members: Vec<_> = svc
                .storage
                .room_members(&room_id, Some("join"))
                .await?
                .into_iter()
                .map(|m| m.user_id)
                .collect();
            let known = svc.presence.of(&members).await?;
            for user_id in &members {
                presence_events.push(match known.get(user_id) {
                    Some(status) => status.event(user_id, now, true),
                    None => presence::unknown_event(user_id, true),
                });
            }
        }
        receipt_events.extend(receipts(&svc, user, &room_id).await?);
    }
    info.insert("presence".into(), json!(presence_events));
    info.insert("receipts".into(), json!(receipt_events));
    Ok(Json(Value::Object(info)))
}
