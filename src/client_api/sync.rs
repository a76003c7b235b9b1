//! `/sync`: initial and incremental, with long-polling.
//!
//! `next_batch` is `s<stream>`, the newest arrival order the response
//! covers. An incremental sync returns what arrived in `(since, head]`;
//! with nothing new it waits (up to `timeout`) for the notifier.

use std::{collections::HashSet, sync::Arc, time::Duration};

use ruma::{
    OwnedRoomId, RoomId, UInt,
    api::client::{
        filter::FilterDefinition,
        sync::sync_events::v3::{
            Filter, InviteState, InvitedRoom, JoinedRoom, LeftRoom, Response, Rooms, State, StateEvents, Timeline,
        },
    },
    events::StateEventType,
};

use super::{extract::Ruma, format};
use crate::{
    error::MatrixError,
    services::Services,
    state::StateMap,
    storage::{Membership, StoredEvent, StreamOrdering, TokenOwner},
    timeline::{self, Token},
    visibility,
};

const DEFAULT_TIMELINE_LIMIT: usize = 10;
const MAX_TIMELINE_LIMIT: usize = 1000;
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// State shown with an invite.
const INVITE_STATE_TYPES: [StateEventType; 7] = [
    StateEventType::RoomCreate,
    StateEventType::RoomJoinRules,
    StateEventType::RoomName,
    StateEventType::RoomAvatar,
    StateEventType::RoomCanonicalAlias,
    StateEventType::RoomEncryption,
    StateEventType::RoomTopic,
];

pub async fn sync(
    svc: Arc<Services>,
    req: Ruma<ruma::api::client::sync::sync_events::v3::Request>,
) -> Result<Response, MatrixError> {
    let owner = req.user().clone();
    let since = match req.body.since.as_deref() {
        Some(token) => match Token::parse(token) {
            Some(Token::Stream(s)) => Some(s),
            _ => return Err(MatrixError::invalid_param(format!("Invalid since token {token:?}"))),
        },
        None => None,
    };
    let limit = timeline_limit(&svc, &owner, req.body.filter.as_ref()).await?;
    let full_state = req.body.full_state;
    let deadline = tokio::time::Instant::now() + req.body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let mut head_rx = svc.notifier.subscribe();
    loop {
        let head = *head_rx.borrow_and_update();
        let rooms = build_rooms(&svc, &owner, since, head, full_state, limit).await?;
        let empty = rooms.join.is_empty() && rooms.invite.is_empty() && rooms.leave.is_empty();
        if since.is_none() || full_state || !empty || tokio::time::Instant::now() >= deadline {
            let mut response = Response::new(Token::Stream(head).to_string());
            response.rooms = rooms;
            return Ok(response);
        }
        if tokio::time::timeout_at(deadline, head_rx.changed()).await.is_err() {
            // Timed out: answer with the (empty) response at the new head.
            let head = *head_rx.borrow();
            return Ok(Response::new(
                Token::Stream(head.max(since.unwrap_or(head))).to_string(),
            ));
        }
    }
}

async fn timeline_limit(svc: &Services, owner: &TokenOwner, filter: Option<&Filter>) -> Result<usize, MatrixError> {
    let definition = match filter {
        Some(Filter::FilterDefinition(def)) => Some(def.clone()),
        Some(Filter::FilterId(id)) => match svc.storage.filter(&owner.user_id, id).await? {
            Some(json) => serde_json::from_str::<FilterDefinition>(&json).ok(),
            None => return Err(MatrixError::not_found(format!("Unknown filter {id}"))),
        },
        _ => None,
    };
    Ok(definition
        .and_then(|d| d.room.timeline.limit)
        .map_or(DEFAULT_TIMELINE_LIMIT, |l| {
            (u64::from(l) as usize).min(MAX_TIMELINE_LIMIT)
        }))
}

async fn build_rooms(
    svc: &Services,
    owner: &TokenOwner,
    since: Option<StreamOrdering>,
    head: StreamOrdering,
    full_state: bool,
    limit: usize,
) -> Result<Rooms, MatrixError> {
    let changed: HashSet<OwnedRoomId> = match since {
        Some(since) => svc
            .storage
            .membership_changes(&owner.user_id, since, head)
            .await?
            .into_iter()
            .collect(),
        None => HashSet::new(),
    };
    let mut rooms = Rooms::new();
    for m in svc.storage.user_memberships(&owner.user_id).await? {
        if m.stream_ordering > head {
            continue;
        }
        let newly = since.is_none() || full_state || changed.contains(&m.room_id);
        match m.membership.as_str() {
            "join" => {
                if let Some(room) = joined_room(svc, owner, &m.room_id, since.filter(|_| !newly), head, limit).await? {
                    rooms.join.insert(m.room_id.clone(), room);
                }
            }
            "invite" if newly => {
                rooms.invite.insert(m.room_id.clone(), invited_room(svc, &m).await?);
            }
            "leave" | "ban" if since.is_some() && changed.contains(&m.room_id) => {
                rooms
                    .leave
                    .insert(m.room_id.clone(), left_room(svc, owner, &m, since, limit).await?);
            }
            _ => {}
        }
    }
    Ok(rooms)
}

/// The newest timeline events in `(after, upto]`, oldest first, and
/// whether more were left out.
async fn timeline_events(
    svc: &Services,
    room_id: &RoomId,
    after: StreamOrdering,
    upto: StreamOrdering,
    limit: usize,
) -> Result<(Vec<StoredEvent>, bool), MatrixError> {
    let mut events = svc.storage.stream_page(room_id, after, upto, limit + 1).await?;
    let limited = events.len() > limit;
    events.truncate(limit);
    events.reverse();
    Ok((events, limited))
}

/// A joined room's section; `since` is `None` for a full sync of it.
async fn joined_room(
    svc: &Services,
    owner: &TokenOwner,
    room_id: &RoomId,
    since: Option<StreamOrdering>,
    head: StreamOrdering,
    limit: usize,
) -> Result<Option<JoinedRoom>, MatrixError> {
    let (events, limited) = timeline_events(svc, room_id, since.unwrap_or(StreamOrdering::MIN), head, limit).await?;
    if since.is_some() && events.is_empty() {
        return Ok(None);
    }
    let state_at_start: Option<Arc<StateMap>> = match events.first().and_then(|e| e.meta.state_group_before) {
        Some(group) => Some(svc.state.group(group).await?),
        None => svc.state.current(room_id).await?.map(|(_, map)| map),
    };
    let state_events = match (since, state_at_start) {
        // Full: the whole state at the start of the timeline.
        (None, Some(start)) => svc.storage.events(&start.values().cloned().collect::<Vec<_>>()).await?,
        // Incremental with a gap: what changed between `since` and the start.
        (Some(since), Some(start)) if limited => {
            let before = svc.storage.stream_page(room_id, StreamOrdering::MIN, since, 1).await?;
            let old = match before.first().and_then(|e| e.meta.state_group_after) {
                Some(group) => svc.state.group(group).await?,
                None => Arc::default(),
            };
            let changed: Vec<_> = start
                .iter()
                .filter(|(k, id)| old.get(*k) != Some(*id))
                .map(|(_, id)| id.clone())
                .collect();
            svc.storage.events(&changed).await?
        }
        _ => Vec::new(),
    };

    let prev_batch = events
        .first()
        .map_or(Token::Stream(head), |first| Token::Topo(timeline::before(first)))
        .to_string();
    let visible = visibility::filter_for_user(svc, &owner.user_id, true, events).await?;

    let mut room = JoinedRoom::new();
    room.timeline = Timeline::new();
    room.timeline.limited = limited;
    room.timeline.prev_batch = Some(prev_batch);
    room.timeline.events = format::client_events(svc, &visible, Some(owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    let mut state = StateEvents::new();
    state.events = format::client_events(svc, &state_events, Some(owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    room.state = State::Before(state);
    if since.is_none() {
        let count = |n: usize| UInt::try_from(n as u64).ok();
        room.summary.joined_member_count = count(svc.storage.room_members(room_id, Some("join")).await?.len());
        room.summary.invited_member_count = count(svc.storage.room_members(room_id, Some("invite")).await?.len());
    }
    Ok(Some(room))
}

async fn invited_room(svc: &Services, m: &Membership) -> Result<InvitedRoom, MatrixError> {
    let mut events = Vec::new();
    if let Some((_, state)) = svc.state.current(&m.room_id).await? {
        let keys: Vec<_> = INVITE_STATE_TYPES.iter().map(|t| (t.clone(), String::new())).collect();
        events = svc.state.events_for(&state, &keys).await?;
    }
    events.extend(svc.storage.event(&m.event_id).await?);
    let mut invite_state = InviteState::new();
    invite_state.events = events.iter().map(|e| format::raw(&format::stripped(e))).collect();
    let mut room = InvitedRoom::new();
    room.invite_state = invite_state;
    Ok(room)
}

/// A room the user left or was removed from since the last sync: the
/// timeline up to their leaving.
async fn left_room(
    svc: &Services,
    owner: &TokenOwner,
    m: &Membership,
    since: Option<StreamOrdering>,
    limit: usize,
) -> Result<LeftRoom, MatrixError> {
    let after = since.unwrap_or(StreamOrdering::MIN);
    let (events, limited) = timeline_events(svc, &m.room_id, after, m.stream_ordering, limit).await?;
    let prev_batch = events
        .first()
        .map(|first| Token::Topo(timeline::before(first)).to_string());
    let visible = visibility::filter_for_user(svc, &owner.user_id, false, events).await?;
    let mut room = LeftRoom::new();
    room.timeline = Timeline::new();
    room.timeline.limited = limited;
    room.timeline.prev_batch = prev_batch;
    room.timeline.events = format::client_events(svc, &visible, Some(owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    Ok(room)
}
