//! One room of an answer: all of it the first time the connection sends
//! it (`initial`); afterwards what changed since it was last sent — the
//! timeline's new events, the state entries asked for that changed — or,
//! when its configuration grew, the longer timeline and the state newly
//! asked for. A room left out of the answers for a while (out of every
//! range) catches up from where it was last sent.
//!
//! State is what the room holds at the answer's position (the client
//! reads room state from `required_state` only). For a room the user left
//! or was banned from, the state and timeline end at that membership event.

use std::collections::HashSet;

use ruma::{
    JsOption, OwnedEventId, OwnedMxcUri, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::RoomEventFilter,
        sync::sync_events::v5::response::{Hero, Room},
    },
    events::{StateEventType, TimelineEventType},
};
use serde_json::Value;

use super::{
    lists::Candidate,
    required_state::{Growth, RoomConfig},
};
use crate::{
    client_api::{format, sync},
    error::MatrixError,
    services::Services,
    state::StateMap,
    storage::{StoredEvent, StreamOrdering, TokenOwner, sliding_sync},
    timeline::{self, Token},
};

/// What the whole answer shares.
pub struct Context<'a> {
    pub owner: &'a TokenOwner,
    pub ignored: &'a HashSet<OwnedUserId>,
    pub direct: &'a HashSet<ruma::OwnedRoomId>,
    /// The answer's position on the event stream.
    pub head: StreamOrdering,
    /// The event stream position of the request's `pos` (for `num_live`).
    pub since: Option<StreamOrdering>,
}

/// What the connection sent of a room before.
pub struct Previous {
    pub upto: StreamOrdering,
    /// How the room's configuration grew since (more state, a longer
    /// timeline): what must be sent again.
    pub growth: Growth,
}

/// The room's entry in the answer, or `None` when it has nothing new.
pub async fn room(
    svc: &Services,
    cx: &Context<'_>,
    room: &Candidate,
    config: &RoomConfig,
    previous: Option<&Previous>,
) -> Result<Option<Room>, MatrixError> {
    let growth = previous.map(|p| p.growth).unwrap_or_default();
    let membership_changed = previous.is_none_or(|p| room.membership_stream > p.upto);
    match room.membership.as_str() {
        "join" => {
            if let Some(previous) = previous
                && room.latest <= previous.upto
                && growth == Growth::default()
            {
                return Ok(None);
            }
            joined(svc, cx, room, config, previous, growth).await
        }
        "invite" | "knock" if membership_changed => invited(svc, cx, room).await,
        "leave" | "ban" if membership_changed => left(svc, cx, room, config, previous).await,
        _ => Ok(None),
    }
}

async fn joined(
    svc: &Services,
    cx: &Context<'_>,
    room: &Candidate,
    config: &RoomConfig,
    previous: Option<&Previous>,
    growth: Growth,
) -> Result<Option<Room>, MatrixError> {
    let room_id = &room.room_id;
    let initial = previous.is_none();
    // A longer timeline than was sent: the newest events again, as many as
    // now asked for.
    let from = previous.map(|p| p.upto).filter(|_| !growth.timeline);
    let (events, limited) = timeline(svc, cx, room_id, (from, cx.head), true, config).await?;
    let now = sync::state_at_stream(svc, room_id, cx.head).await?;
    let lazy = timeline_members(&events);
    let mut ids: Vec<OwnedEventId> = match previous {
        Some(previous) if !growth.state => {
            let old = sync::state_at_stream(svc, room_id, previous.upto).await?;
            let lazy_all = config.lazy_members();
            now.iter()
                .filter(|(key, id)| old.get(*key) != Some(*id))
                .filter(|((kind, key), _)| {
                    config.wants(&kind.to_string(), key, &lazy) || (lazy_all && *kind == StateEventType::RoomMember)
                })
                .map(|(_, id)| id.clone())
                .collect()
        }
        _ => config.select(&now, &lazy).into_iter().cloned().collect(),
    };
    if config.lazy_members() {
        // The timeline's members, each time: the client may have dropped
        // what it was sent before.
        for member in &lazy {
            if let Some(id) = now.get(&(StateEventType::RoomMember, (*member).to_owned()))
                && !ids.contains(id)
            {
                ids.push(id.clone());
            }
        }
    }
    let mut state = svc.storage.events(&ids).await?;
    state.sort_by_key(|e| e.meta.stream_ordering);
    if !initial && events.is_empty() && state.is_empty() && growth == Growth::default() {
        return Ok(None);
    }

    let mut out = Room::new();
    if initial {
        out.initial = Some(true);
    }
    let changed = |kind: StateEventType| initial || state.iter().any(|e| e.pdu.kind == kind.to_string().into());
    let members_changed =
        changed(StateEventType::RoomMember) || events.iter().any(|e| e.pdu.kind == TimelineEventType::RoomMember);
    if changed(StateEventType::RoomName) {
        out.name = content_string(svc, &now, StateEventType::RoomName, "name").await?;
    }
    if changed(StateEventType::RoomAvatar) {
        out.avatar = match content_string(svc, &now, StateEventType::RoomAvatar, "url").await? {
            Some(url) => JsOption::Some(OwnedMxcUri::from(url)),
            None if initial => JsOption::Undefined,
            None => JsOption::Null,
        };
    }
    if members_changed {
        let members = svc.storage.room_members(room_id, None).await?;
        let count = |kind: &str| UInt::try_from(members.iter().filter(|m| m.membership == kind).count() as u64).ok();
        out.joined_count = count("join");
        out.invited_count = count("invite");
        if !now.contains_key(&(StateEventType::RoomName, String::new())) {
            out.heroes = Some(heroes(svc, &cx.owner.user_id, members).await?);
        }
    }
    let bumped = events
        .iter()
        .any(|e| sliding_sync::BUMP_TYPES.contains(&e.pdu.kind.to_string().as_str()));
    if initial || limited || events.is_empty() || bumped {
        out.bump_stamp = UInt::try_from(room.bump_stamp.max(0) as u64).ok();
    }
    out.num_live = UInt::try_from(match cx.since.filter(|_| !initial) {
        Some(since) => events.iter().filter(|e| e.meta.stream_ordering > since).count() as u64,
        None => 0,
    })
    .ok();
    if cx.direct.contains(room_id) {
        out.is_dm = Some(true);
    }
    let counts = svc.storage.unread_counts(&cx.owner.user_id, room_id).await?;
    out.unread_notifications.notification_count = UInt::try_from(counts.notifications).ok();
    out.unread_notifications.highlight_count = UInt::try_from(counts.highlights).ok();
    fill_timeline(svc, cx, &mut out, (&events, limited), &state).await?;
    if config.timeline_limit > 0 {
        out.prev_batch = Some(
            events
                .first()
                .map_or(Token::Stream(cx.head), |first| Token::Topo(timeline::before(first)))
                .to_string(),
        );
    }
    Ok(Some(out))
}

/// An invite or a knock: its stripped state, with the membership event.
async fn invited(svc: &Services, cx: &Context<'_>, room: &Candidate) -> Result<Option<Room>, MatrixError> {
    let events = match &room.remote_invite_state {
        Some(stripped) => {
            let mut events: Vec<Value> = serde_json::from_str(stripped).unwrap_or_default();
            match svc.storage.event(&room.event_id).await? {
                Some(invite) if cx.ignored.contains(&invite.pdu.sender) => return Ok(None),
                Some(invite) => events.push(format::stripped(&invite)),
                None => {}
            }
            events
        }
        None => match sync::invite_state(svc, &room.room_id, &room.event_id, cx.ignored).await? {
            Some(events) => events,
            None => return Ok(None),
        },
    };
    let mut out = Room::new();
    out.initial = Some(true);
    out.invite_state = Some(events.iter().map(format::raw).collect());
    out.bump_stamp = UInt::try_from(room.membership_stream.max(0) as u64).ok();
    if cx.direct.contains(&room.room_id) {
        out.is_dm = Some(true);
    }
    Ok(Some(out))
}

/// A room the user left or was banned from: up to that event, with the
/// user's own membership in its state (which is how the client learns it).
async fn left(
    svc: &Services,
    cx: &Context<'_>,
    room: &Candidate,
    config: &RoomConfig,
    previous: Option<&Previous>,
) -> Result<Option<Room>, MatrixError> {
    let Some(membership) = svc.storage.event(&room.event_id).await? else {
        return Ok(None);
    };
    let upto = room.membership_stream;
    let (events, limited) = timeline(svc, cx, &room.room_id, (previous.map(|p| p.upto), upto), false, config).await?;
    let at_leave: std::sync::Arc<StateMap> = match membership.meta.state_group_after {
        Some(group) => svc.state.group(group).await?,
        None => std::sync::Arc::default(),
    };
    let lazy = timeline_members(&events);
    let mut ids: Vec<OwnedEventId> = config.select(&at_leave, &lazy).into_iter().cloned().collect();
    if !ids.contains(&membership.pdu.event_id) {
        ids.push(membership.pdu.event_id.clone());
    }
    let mut state = svc.storage.events(&ids).await?;
    state.sort_by_key(|e| e.meta.stream_ordering);
    let mut out = Room::new();
    if previous.is_none() {
        out.initial = Some(true);
    }
    out.bump_stamp = UInt::try_from(upto.max(0) as u64).ok();
    fill_timeline(svc, cx, &mut out, (&events, limited), &state).await?;
    if config.timeline_limit > 0 {
        out.prev_batch = Some(
            events
                .first()
                .map_or(Token::Stream(upto), |first| Token::Topo(timeline::before(first)))
                .to_string(),
        );
    }
    Ok(Some(out))
}

/// The newest `timeline_limit` events the user may see in `(from, upto]`
/// (every live event without `from`), oldest first, and whether older
/// ones were left out.
async fn timeline(
    svc: &Services,
    cx: &Context<'_>,
    room_id: &RoomId,
    (from, upto): (Option<StreamOrdering>, StreamOrdering),
    joined_now: bool,
    config: &RoomConfig,
) -> Result<(Vec<StoredEvent>, bool), MatrixError> {
    let (events, mut limited) = sync::timeline_events(
        svc,
        &cx.owner.user_id,
        room_id,
        (from.unwrap_or(0).max(0), upto),
        joined_now,
        (&RoomEventFilter::default(), cx.ignored),
        config.timeline_limit as usize,
    )
    .await?;
    // All of the live events, but history fetched from other servers is
    // held before them: there is more to page back to.
    if from.is_none() && !limited {
        limited = !svc
            .storage
            .stream_page(room_id, StreamOrdering::MIN, 0, 1)
            .await?
            .is_empty();
    }
    Ok((events, limited))
}

async fn fill_timeline(
    svc: &Services,
    cx: &Context<'_>,
    out: &mut Room,
    (events, limited): (&[StoredEvent], bool),
    state: &[StoredEvent],
) -> Result<(), MatrixError> {
    out.limited = limited;
    out.timeline = format::client_events(svc, events, Some(cx.owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    out.required_state = format::client_events(svc, state, Some(cx.owner))
        .await?
        .iter()
        .map(format::raw)
        .collect();
    Ok(())
}

/// The members a timeline shows: its senders and its membership events'
/// targets (what `$LAZY` loads).
fn timeline_members(events: &[StoredEvent]) -> HashSet<&str> {
    let mut members: HashSet<&str> = events.iter().map(|e| e.pdu.sender.as_str()).collect();
    members.extend(
        events
            .iter()
            .filter(|e| e.pdu.kind == TimelineEventType::RoomMember)
            .filter_map(|e| e.pdu.state_key.as_deref()),
    );
    members
}

/// A string field of a state event's content (`name` of `m.room.name`);
/// `None` when the event or a string there is missing.
async fn content_string(
    svc: &Services,
    state: &StateMap,
    kind: StateEventType,
    field: &str,
) -> Result<Option<String>, MatrixError> {
    Ok(svc
        .state
        .event_for(state, kind, "")
        .await?
        .and_then(|e| e.pdu.content_value()[field].as_str().map(str::to_owned))
        .filter(|s| !s.is_empty()))
}

/// The first members (after the user) to join or be invited — failing
/// those, to leave — with their display names and avatars.
async fn heroes(
    svc: &Services,
    user: &UserId,
    members: Vec<crate::storage::Membership>,
) -> Result<Vec<Hero>, MatrixError> {
    let ids: Vec<OwnedEventId> = crate::rooms::heroes::heroes(&members, user)
        .into_iter()
        .map(|m| m.event_id.clone())
        .collect();
    let events = svc.storage.events(&ids).await?;
    Ok(ids
        .iter()
        .filter_map(|id| events.iter().find(|e| e.pdu.event_id == *id))
        .filter_map(|e| {
            let user_id = OwnedUserId::try_from(e.pdu.state_key.as_deref()?).ok()?;
            let content = e.pdu.content_value();
            let mut hero = Hero::new(user_id);
            hero.name = content["displayname"].as_str().map(str::to_owned);
            hero.avatar = content["avatar_url"].as_str().map(OwnedMxcUri::from);
            Some(hero)
        })
        .collect())
}
