//! `GET /events`: the event stream from before `/sync`, deprecated but
//! still used by older clients (and SyTest's fixtures). Events of the
//! user's joined rooms (or of one room, `room_id`, as the peeking form has
//! it) that arrived after `from`, oldest first; with none, it waits up to
//! `timeout` for one. Tokens are `/sync`'s `s<stream>` positions.

use std::{sync::Arc, time::Duration};

use axum::extract::{Request, State};
use ruma::{OwnedRoomId, api::client::peeking::listen_to_new_events};

use super::{
    extract::{RumaResponse, token_owner},
    format,
};
use crate::{
    error::MatrixError,
    services::Services,
    storage::{StoredEvent, StreamOrdering, TokenOwner},
    visibility,
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

pub async fn events(
    State(svc): State<Arc<Services>>,
    req: Request,
) -> Result<RumaResponse<listen_to_new_events::v3::Response>, MatrixError> {
    let (parts, _) = req.into_parts();
    let owner = token_owner(&svc, &parts).await?;
    let query = Query::parse(parts.uri.query().unwrap_or_default())?;
    // Polling the event stream is activity, as a `/sync` is.
    crate::presence::sync_activity(&svc, &owner.user_id, &ruma::presence::PresenceState::Online).await?;
    let mut head_rx = svc.notifier.subscribe();
    let from = match query.from.as_deref() {
        Some(token) => {
            parse_token(token).ok_or_else(|| MatrixError::invalid_param(format!("Invalid from token {token:?}")))?
        }
        // No position yet: the stream starts now.
        None => *head_rx.borrow_and_update(),
    };
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
        None => svc
            .storage
            .user_memberships(&owner.user_id)
            .await?
            .into_iter()
            .filter(|m| m.membership == "join")
            .map(|m| m.room_id)
            .collect(),
    };
    let timeout = Duration::from_millis(query.timeout.unwrap_or_default()).min(MAX_TIMEOUT);
    let limit = query.limit.unwrap_or(MAX_EVENTS).clamp(1, MAX_EVENTS);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let head = (*head_rx.borrow_and_update()).max(from);
        let (events, end) = new_events(&svc, &owner, &rooms, (from, head), limit).await?;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            let mut response = listen_to_new_events::v3::Response::new();
            response.start = Some(format!("s{from}"));
            response.end = Some(format!("s{end}"));
            response.chunk = format::client_events(&svc, &events, Some(&owner))
                .await?
                .iter()
                .map(format::raw)
                .collect();
            return Ok(RumaResponse(response));
        }
        if tokio::time::timeout_at(deadline, head_rx.changed()).await.is_err() {
            let mut response = listen_to_new_events::v3::Response::new();
            response.start = Some(format!("s{from}"));
            response.end = Some(format!("s{}", (*head_rx.borrow()).max(from)));
            return Ok(RumaResponse(response));
        }
    }
}

/// `s<stream>`, or a `/sync` token (its event stream part).
fn parse_token(token: &str) -> Option<StreamOrdering> {
    super::sync_token::SyncToken::parse(token).map(|t| t.stream)
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
