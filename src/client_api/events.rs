//! `GET /events`: the event stream from before `/sync`, deprecated but
//! still used by older clients (and SyTest's fixtures). Events of the
//! user's joined rooms (or of one room, `room_id`, as the peeking form has
//! it) that arrived after `from`, oldest first; with none, it waits up to
//! `timeout` for one. Tokens are `/sync`'s (`sync_token.rs`), with the
//! event, ephemeral and presence positions: `s<stream>_<ephemeral>___<presence>`;
//! a token without one of those parts (`s<stream>`, or `/sync`'s older
//! ones) starts that stream now.
//!
//! After the room events come the rooms' typing changes and new read
//! receipts (`m.typing`, `m.receipt`, with `room_id`), and the presence
//! changes of the users the user can see (with `room_id`: of the room's
//! members) as `m.presence` events with `content.user_id`, as this API had
//! them.

use std::{collections::HashSet, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Request, State},
};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, UserId};
use serde_json::{Value, json};

use super::{extract::token_owner, format, sync_token::SyncToken};
use crate::{
    error::MatrixError,
    presence,
    services::Services,
    storage::{StoredEvent, StreamOrdering, TokenOwner},
    visibility,
    wakeups::Topic,
};

const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Events in one answer; the rest come with the next request.
const MAX_EVENTS: usize = 100;
/// Storage pages read per room and request.
const MAX_PAGES: usize = 10;

/// The query of ruma's `listen_to_new_events`, with `room_id` optional as
/// the original (all joined rooms) form of the endpoint had it.
#[derive(Default)]
struct Query {
    from: Option<String>,
    room_id: Option<OwnedRoomId>,
    timeout: Option<u64>,
    limit: Option<usize>,
}

impl Query {
    fn parse(query: &str) -> Result<Query, MatrixError> {
        let mut parsed = Query::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "from" => parsed.from = Some(value.into_owned()),
                "room_id" => {
                    parsed.room_id = Some(
                        OwnedRoomId::try_from(&*value)
                            .map_err(|e| MatrixError::invalid_param(format!("room_id: {e}")))?,
                    )
                }
                "limit" => {
                    parsed.limit = Some(
                        value
                            .parse()
                            .map_err(|_| MatrixError::invalid_param("limit must be a non-negative integer"))?,
                    )
                }
                "timeout" => {
                    parsed.timeout = Some(
                        value
                            .parse()
                            .map_err(|_| MatrixError::invalid_param("timeout must be a number of milliseconds"))?,
                    )
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

pub async fn events(State(svc): State<Arc<Services>>, req: Request) -> Result<Json<Value>, MatrixError> {
    let (parts, _) = req.into_parts();
    let owner = token_owner(&svc, &parts).await?;
    let query = Query::parse(parts.uri.query().unwrap_or_default())?;
    // Guests use the event stream only to preview a room.
    if owner.is_guest && query.room_id.is_none() {
        return Err(MatrixError::new(
            crate::error::ErrCode::GuestAccessForbidden,
            "Guests must give a room_id to the event stream",
        ));
    }
    // Polling the event stream is activity, as a `/sync` is.
    presence::sync_activity(&svc, &owner.user_id, &ruma::presence::PresenceState::Online).await?;
    // Woken by what concerns the user, registered before any head is read
    // (its rooms' topics before the first round: see crate::wakeups).
    let mut waiter = svc.notifier.wakeups.register([Topic::User(owner.user_id.clone())]);
    // An empty `from` is no token (now), as Synapse takes it.
    let (from, from_ephemeral, from_presence, from_account_data) = match query.from.as_deref().filter(|t| !t.is_empty())
    {
        Some(token) => {
            let parsed = SyncToken::parse(token)
                .ok_or_else(|| MatrixError::invalid_param(format!("Invalid from token {token:?}")))?;
            (parsed.stream, parsed.ephemeral, parsed.presence, parsed.account_data)
        }
        // No position yet: the stream starts now.
        None => (svc.notifier.head(), None, None, None),
    };
    // Streams without a position start now.
    let from_presence = from_presence.unwrap_or_else(|| svc.presence.head());
    let from_ephemeral = from_ephemeral.unwrap_or_else(|| svc.ephemeral.head());
    let from_account_data = from_account_data.unwrap_or_else(|| svc.account_data.head());
    let rooms = match &query.room_id {
        Some(room_id) => {
            let joined = visibility::current_membership(&svc, room_id, &owner.user_id)
                .await?
                .as_deref()
                == Some("join");
            if !joined && !visibility::world_readable(&svc, room_id).await? {
                return Err(MatrixError::forbidden("You are not in this room"));
            }
            vec![room_id.clone()]
        }
        None => svc.storage.joined_rooms(&owner.user_id).await?,
    };
    waiter.add(rooms.iter().cloned().map(Topic::Room));
    let timeout = Duration::from_millis(query.timeout.unwrap_or_default()).min(MAX_TIMEOUT);
    let limit = query.limit.unwrap_or(MAX_EVENTS).clamp(1, MAX_EVENTS);
    let deadline = tokio::time::Instant::now() + timeout;
    let token = |stream: StreamOrdering, ephemeral: i64, presence: i64, account_data: i64| {
        SyncToken {
            stream,
            ephemeral: Some(ephemeral),
            account_data: Some(account_data),
            e2e: None,
            presence: Some(presence),
        }
        .to_string()
    };
    let start = token(from, from_ephemeral, from_presence, from_account_data);
    // A room's preview (`room_id`) shows the room's events only.
    let own_stream = query.room_id.is_none();
    loop {
        let head = svc.notifier.head().max(from);
        let presence_head = svc.presence.head().max(from_presence);
        let ephemeral_head = svc.ephemeral.head().max(from_ephemeral);
        let account_data_head = svc.account_data.head().max(from_account_data);
        let (events, end) = new_events(&svc, &owner, &rooms, (from, head), limit).await?;
        let peeked = query.room_id.as_ref().map(|_| rooms.as_slice());
        let presence_events = presence_events(&svc, &owner.user_id, peeked, (from_presence, presence_head)).await?;
        let ephemeral_events = ephemeral_events(&svc, &owner.user_id, &rooms, (from_ephemeral, ephemeral_head)).await?;
        let account_data_events = if own_stream {
            account_data_events(&svc, &owner.user_id, (from_account_data, account_data_head)).await?
        } else {
            Vec::new()
        };
        let timed_out = tokio::time::Instant::now() >= deadline;
        if !events.is_empty()
            || !presence_events.is_empty()
            || !ephemeral_events.is_empty()
            || !account_data_events.is_empty()
            || timed_out
        {
            let mut chunk = format::client_events(&svc, &events, Some(&owner)).await?;
            chunk.extend(ephemeral_events);
            chunk.extend(presence_events);
            chunk.extend(account_data_events);
            return Ok(Json(json!({
                "start": start,
                "end": token(end, ephemeral_head, presence_head, account_data_head),
                "chunk": chunk,
            })));
        }
        let woken = tokio::time::timeout_at(deadline, waiter.notified()).await;
        if woken.is_err() {
            // Timed out: nothing new up to the heads as last looked at.
            return Ok(Json(json!({
                "start": start,
                "end": token(head, ephemeral_head, presence_head, account_data_head),
                "chunk": [],
            })));
        }
    }
}

/// The user's account data changed in `(from, head]`, as events: global
/// ones as `{type, content}`, a room's with its `room_id` (tags are the
/// room's `m.tag`), as Synapse's event stream has them.
async fn account_data_events(
    svc: &Services,
    user: &UserId,
    (from, head): (i64, i64),
) -> Result<Vec<Value>, MatrixError> {
    if head <= from {
        return Ok(Vec::new());
    }
    let changes = svc.storage.account_data_changes(user, Some(from), head).await?;
    Ok(changes
        .into_iter()
        .map(|data| {
            let content: Value = serde_json::from_str(&data.content).unwrap_or_else(|_| json!({}));
            let mut event = json!({ "type": data.data_type, "content": content });
            if let Some(room_id) = data.room_id {
                event["room_id"] = json!(room_id);
            }
            event
        })
        .collect())
}

/// Typing changes and new read receipts of `rooms` in `(from, head]`
/// (private receipts for their owner only).
async fn ephemeral_events(
    svc: &Services,
    user: &UserId,
    rooms: &[OwnedRoomId],
    (from, head): (i64, i64),
) -> Result<Vec<Value>, MatrixError> {
    let mut events = Vec::new();
    if head <= from {
        return Ok(events);
    }
    let typing = svc.ephemeral.typing(Some(from), head).await?;
    for room_id in rooms {
        if let Some(typing) = typing.get(room_id) {
            events.push(json!({ "type": "m.typing", "room_id": room_id, "content": { "user_ids": typing } }));
        }
        let mut content = serde_json::Map::new();
        for r in svc.storage.receipts(room_id, Some(from)).await? {
            if r.position > head || (r.receipt_type == "m.read.private" && r.user_id != user) {
                continue;
            }
            let by_type = content.entry(r.event_id.to_string()).or_insert_with(|| json!({}));
            by_type[&r.receipt_type][r.user_id.as_str()] = json!({ "ts": r.ts });
        }
        if !content.is_empty() {
            events.push(json!({ "type": "m.receipt", "room_id": room_id, "content": content }));
        }
    }
    Ok(events)
}

/// Presence changes in `(from, head]` of the users `user` can see, or with
/// `rooms` (the peeking form), of those rooms' members.
async fn presence_events(
    svc: &Services,
    user: &UserId,
    rooms: Option<&[OwnedRoomId]>,
    (from, head): (i64, i64),
) -> Result<Vec<Value>, MatrixError> {
    if !svc.presence.enabled() || head <= from {
        return Ok(Vec::new());
    }
    let changes = svc.presence.changes(Some(from), head, |_| true).await?;
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let visible: HashSet<OwnedUserId> = match rooms {
        Some(rooms) => {
            let mut members = HashSet::new();
            for room_id in rooms {
                members.extend(
                    svc.storage
                        .room_members(room_id, Some("join"))
                        .await?
                        .into_iter()
                        .map(|m| m.user_id),
                );
            }
            members
        }
        None => presence::visible_users(svc, user).await?,
    };
    let now: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
    Ok(changes
        .iter()
        .filter(|(u, _)| visible.contains(u))
        .map(|(u, status)| status.event(u, now, true))
        .collect())
}

/// The visible events of `rooms` in `(from, head]`, oldest first, at most
/// `limit`; and the position the answer reaches. (A room with more
/// than `MAX_PAGES` pages of new events has its oldest ones left out.)
async fn new_events(
    svc: &Services,
    owner: &TokenOwner,
    rooms: &[OwnedRoomId],
    (from, head): (StreamOrdering, StreamOrdering),
    limit: usize,
) -> Result<(Vec<StoredEvent>, StreamOrdering), MatrixError> {
    let mut all = Vec::new();
    for room_id in rooms {
        let mut upto = head;
        let mut room_events = Vec::new();
        for _ in 0..MAX_PAGES {
            // Newest first.
            let page = svc.storage.stream_page(room_id, from, upto, MAX_EVENTS).await?;
            let exhausted = page.len() < MAX_EVENTS;
            if let Some(oldest) = page.last() {
                upto = oldest.meta.stream_ordering - 1;
            }
            room_events.extend(page);
            if exhausted {
                break;
            }
        }
        let joined = visibility::current_membership(svc, room_id, &owner.user_id)
            .await?
            .as_deref()
            == Some("join");
        all.extend(visibility::filter_for_user(svc, &owner.user_id, joined, room_events).await?);
    }
    all.sort_by_key(|e| e.meta.stream_ordering);
    if all.len() > limit {
        all.truncate(limit);
        let end = all.last().map_or(head, |e| e.meta.stream_ordering);
        return Ok((all, end));
    }
    Ok((all, head))
}
