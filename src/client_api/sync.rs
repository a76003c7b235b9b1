//! `/sync`: initial and incremental, with long-polling and filters.
//!
//! `next_batch` (`sync_token.rs`) is the newest arrival order the response
//! covers, and the positions of the ephemeral, account data, e2e and
//! presence streams (older tokens lack the last parts). Presence is
//! [`crate::presence::for_sync`]'s. An
//! incremental sync returns what arrived in `(since, head]`; with nothing
//! new it waits (up to `timeout`) for the notifiers.
//!
//! The filter (uploaded, or inline JSON) chooses the rooms (`rooms`,
//! `not_rooms`, `include_leave`), the timeline events (types, senders,
//! `limit`) and the state events, and turns on lazy loading of members.
//! `state` is the room state at the start of the timeline: all of it in a
//! full sync, what changed since `since` in an incremental one.
//!
//! Account data (global, and per joined or left room) is all of it in a
//! full sync, what changed since the token's position in an incremental
//! one (all of a room's when the room is sent in full), through the
//! filter's `account_data` sections. Events of users the user ignores
//! (`m.ignored_user_list`), state events apart, are left out of the
//! timelines, and so are invites from them.
//!
//! A sync that loads every member (no lazy loading) leaves out the rooms
//! joined with partial state (`rooms::partial_state`) until their full
//! state is in, then sends each once as if newly joined, as Synapse does.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use axum::response::IntoResponse;
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::{self as ruma_filter, FilterDefinition, RoomEventFilter, RoomFilter},
        sync::sync_events::v3::{
            Filter, InviteState, InvitedRoom, JoinedRoom, LeftRoom, Response, Rooms, State, StateEvents, Timeline,
        },
    },
    events::{StateEventType, TimelineEventType},
};
use serde_json::Value;

use super::{e2e_sync, extract::Ruma, format, sync_token::SyncToken};
use crate::{
    account_data,
    error::MatrixError,
    filter, presence,
    services::Services,
    state::StateMap,
    storage::{AccountData, Membership, StoredEvent, StreamOrdering, TokenOwner},
    timeline::{self, Token},
    visibility,
    wakeups::Topic,
};

const DEFAULT_TIMELINE_LIMIT: usize = 10;
const MAX_TIMELINE_LIMIT: usize = 1000;
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Storage pages scanned for one timeline: with a filter that matches
/// little, older matches beyond this are reported as `limited`.
const MAX_SCAN_ROUNDS: usize = 8;
const MIN_SCAN_BATCH: usize = 50;
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

/// What the request's filter and flags ask for.
struct Options {
    room: RoomFilter,
    /// The filter's (global) `account_data` section.
    account_data: ruma_filter::Filter,
    limit: usize,
    full_state: bool,
    /// Lazy loading of members: `Some(include_redundant_members)`.
    lazy: Option<bool>,
    /// The users the user ignores, as of this response.
    ignored: HashSet<OwnedUserId>,
    /// `event_format: "federation"`: room events as servers exchange them.
    federation_format: bool,
}

pub async fn sync(
    svc: Arc<Services>,
    req: Ruma<ruma::api::client::sync::sync_events::v3::Request>,
) -> Result<Response, MatrixError> {
    let owner = req.user().clone();
    let token = match req.body.since.as_deref() {
        Some(token) => match SyncToken::parse(token) {
            Some(parsed) => Some(parsed),
            None => return Err(MatrixError::invalid_param(format!("Invalid since token {token:?}"))),
        },
        None => None,
    };
    let since = token.map(|t| t.stream);
    let since_ephemeral = token.and_then(|t| t.ephemeral);
    let since_account_data = token.and_then(|t| t.account_data);
    let since_e2e = token.and_then(|t| t.e2e);
    let since_presence = token.and_then(|t| t.presence);
    let definition = load_filter(&svc, &owner, req.body.filter.as_ref()).await?;
    presence::sync_activity(&svc, &owner.user_id, &req.body.set_presence).await?;
    let mut opts = Options {
        account_data: definition.account_data,
        ignored: HashSet::new(),
        limit: definition.room.timeline.limit.map_or(DEFAULT_TIMELINE_LIMIT, |l| {
            (u64::from(l) as usize).min(MAX_TIMELINE_LIMIT)
        }),
        lazy: filter::lazy_load_members(&definition.room.state),
        federation_format: definition.event_format == ruma::api::client::filter::EventFormat::Federation,
        room: definition.room,
        full_state: req.body.full_state,
    };
    let deadline = tokio::time::Instant::now() + req.body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    // Woken by new events that concern this user: their own membership
    // changes (registered before the heads are read) and their rooms'
    // (registered before it waits; see crate::wakeups).
    let mut waiter = svc.notifier.wakeups.register([Topic::User(owner.user_id.clone())]);
    // Whether the waiter watches the user's rooms: from the second round
    // on, it does so before the heads are read.
    let mut watching_rooms = false;
    loop {
        if watching_rooms {
            // A round after a wake-up: the user may be in new rooms.
            waiter.add(rooms_to_watch(&svc, &owner.user_id).await?);
        }
        svc.metrics.sync_rounds.inc();
        let head = svc.notifier.head();
        let ephemeral_head = svc.ephemeral.head();
        let account_data_head = svc.account_data.head();
        let e2e_head = svc.e2e.head();
        let presence_head = svc.presence.head();
        let since_ephemeral = since_ephemeral.filter(|_| since.is_some() && !opts.full_state);
        let since_account_data = since_account_data.filter(|_| since.is_some() && !opts.full_state);
        let since_presence = since_presence.filter(|_| since.is_some() && !opts.full_state);
        opts.ignored = account_data::ignored_users(&svc, &owner.user_id).await?;
        let Built {
            mut rooms,
            in_full,
            left_out,
        } = build_rooms(&svc, &owner, since, head, &opts).await?;
        add_ephemeral(&svc, &owner, &mut rooms, &left_out, (since_ephemeral, ephemeral_head)).await?;
        let mut global = add_account_data(
            &svc,
            &owner,
            (&mut rooms, &in_full, &left_out),
            (since_account_data, account_data_head),
            &opts,
        )
        .await?;
        if since_account_data.is_none() {
            add_default_push_rules(&svc, &owner, &mut global, &opts).await?;
        }
        add_unread_counts(&svc, &owner, &mut rooms).await?;
        let e2e = e2e_sync::section(&svc, &owner, since.map(|s| (s, since_e2e)), head, e2e_head).await?;
        let presence = presence::for_sync(
            &svc,
            &owner.user_id,
            (&rooms, &in_full),
            (since_presence, presence_head),
            &definition.presence,
        )
        .await?;
        let empty = rooms.join.is_empty()
            && rooms.invite.is_empty()
            && rooms.leave.is_empty()
            && global.is_empty()
            && e2e.is_empty()
            && presence.is_empty();
        // (Never behind the token given: another process may have been
        // further on.)
        let next = SyncToken {
            stream: head.max(since.unwrap_or_default()),
            ephemeral: Some(ephemeral_head.max(since_ephemeral.unwrap_or_default())),
            account_data: Some(account_data_head.max(since_account_data.unwrap_or_default())),
            e2e: Some(e2e.position),
            presence: Some(presence_head.max(since_presence.unwrap_or_default())),
        };
        if since.is_none() || opts.full_state || !empty || tokio::time::Instant::now() >= deadline {
            let mut response = Response::new(next.to_string());
            response.rooms = rooms;
            response.account_data.events = global.iter().map(format::raw).collect();
            response.presence.events = presence.iter().map(format::raw).collect();
            e2e.apply(&mut response);
            return Ok(response);
        }
        // Only a request that parks asks for its rooms. A change of one of
        // them (an event, a receipt, typing, presence, keys) stored after
        // the heads were read and before the waiter watched the room moved
        // a head: look again instead of waiting. That second round watches its rooms before it reads the
        // heads, so a head moved by somebody else's room does not send it
        // round again: under a steady load of sends, every parked request
        // would otherwise go round for as long as the load lasts.
        if !watching_rooms {
            waiter.add(rooms_to_watch(&svc, &owner.user_id).await?);
            watching_rooms = true;
            if svc.notifier.head() != head
                || svc.ephemeral.head() != ephemeral_head
                || svc.presence.head() != presence_head
                || svc.e2e.head() != e2e_head
            {
                continue;
            }
        }
        // Receipts and typing wake their room's waiters; account data and
        // to-device messages their user's; presence and key changes their
        // user's and their rooms' (the heads move first). Timed out, the
        // next round answers (the deadline passed) with what it finds up to
        // the heads it reads: a change that came as the time ran out is in
        // it, not skipped by a token past it.
        if tokio::time::timeout_at(deadline, waiter.notified()).await.is_ok() {
            svc.metrics.sync_wakeups.inc();
        }
    }
}

/// The rooms whose new events a parked `/sync` of `user` waits for: those
/// it is joined to or invited to (a change of its own membership wakes it
/// through its user topic, and the next round watches the new rooms).
pub(crate) async fn rooms_to_watch(svc: &Services, user: &ruma::UserId) -> Result<Vec<Topic>, MatrixError> {
    Ok(svc
        .storage
        .user_memberships(user)
        .await?
        .into_iter()
        .filter(|m| matches!(m.membership.as_str(), "join" | "invite" | "knock"))
        .map(|m| Topic::Room(m.room_id))
        .collect())
}

/// The notification counts of every joined room in the response (also
/// those there only for a receipt, which may have changed them).
async fn add_unread_counts(svc: &Services, owner: &TokenOwner, rooms: &mut Rooms) -> Result<(), MatrixError> {
    for (room_id, room) in rooms.join.iter_mut() {
        let counts = svc.storage.unread_counts(&owner.user_id, room_id).await?;
        room.unread_notifications.notification_count = UInt::try_from(counts.notifications).ok();
        room.unread_notifications.highlight_count = UInt::try_from(counts.highlights).ok();
    }
    Ok(())
}

/// A full sync shows the user's push rules (`m.push_rules`) also when
/// they never changed them (the server defaults are not stored): as the
/// oldest account data, so left out when the filter's limit is reached.
async fn add_default_push_rules(
    svc: &Services,
    owner: &TokenOwner,
    global: &mut Vec<Value>,
    opts: &Options,
) -> Result<(), MatrixError> {
    let kind = crate::push::rules::PUSH_RULES;
    let full = opts
        .account_data
        .limit
        .is_some_and(|limit| global.len() >= u64::from(limit) as usize);
    if full || global.iter().any(|e| e["type"] == kind) || !filter::account_data_matches(&opts.account_data, kind) {
        return Ok(());
    }
    let rules = crate::push::rules::get(svc, &owner.user_id).await?;
    global.insert(
        0,
        serde_json::json!({ "type": kind, "content": crate::push::rules::content(&rules.all)? }),
    );
    Ok(())
}

/// An account data event as `/sync` shows it.
fn account_data_event(data: &AccountData) -> Result<Value, MatrixError> {
    let content: Value =
        serde_json::from_str(&data.content).map_err(|e| MatrixError::internal("stored account data", e))?;
    Ok(serde_json::json!({ "type": data.data_type, "content": content }))
}

/// The newest `limit` of `events` (all without a limit).
fn keep_newest(mut events: Vec<Value>, limit: Option<UInt>) -> Vec<Value> {
    if let Some(limit) = limit.map(|l| u64::from(l) as usize)
        && events.len() > limit
    {
        events.drain(..events.len() - limit);
    }
    events
}

/// Account data changed in `(since, head]` (all up to `head` without
/// `since`): the global events are returned; a room's go to its entry in
/// `rooms` (a joined room with only such changes is added, unless it is
/// `left_out`). Rooms sent in full (`in_full`) get all of theirs.
async fn add_account_data(
    svc: &Services,
    owner: &TokenOwner,
    (rooms, in_full, left_out): (&mut Rooms, &HashSet<OwnedRoomId>, &HashSet<OwnedRoomId>),
    (since, head): (Option<i64>, i64),
    opts: &Options,
) -> Result<Vec<Value>, MatrixError> {
    let user = &owner.user_id;
    let mut changes = svc.storage.account_data_changes(user, since, head).await?;
    if since.is_some() {
        for room_id in in_full {
            let all = svc.storage.room_account_data(user, room_id, head).await?;
            changes.extend(
                all.into_iter()
                    .filter(|d| since.is_some_and(|since| d.position <= since)),
            );
        }
        changes.sort_by_key(|d| d.position);
    }
    let mut global = Vec::new();
    let mut by_room: BTreeMap<OwnedRoomId, Vec<Value>> = BTreeMap::new();
    for data in &changes {
        match &data.room_id {
            None if filter::account_data_matches(&opts.account_data, &data.data_type) => {
                global.push(account_data_event(data)?);
            }
            Some(room_id)
                if filter::room_allowed(&opts.room, room_id)
                    && filter::room_account_data_matches(&opts.room.account_data, room_id, &data.data_type) =>
            {
                by_room
                    .entry(room_id.clone())
                    .or_default()
                    .push(account_data_event(data)?);
            }
            _ => {}
        }
    }
    if by_room.is_empty() {
        return Ok(keep_newest(global, opts.account_data.limit));
    }
    let joined: HashSet<OwnedRoomId> = svc.storage.joined_rooms(user).await?.into_iter().collect();
    for (room_id, events) in by_room {
        let events = keep_newest(events, opts.room.account_data.limit);
        let raw = || events.iter().map(format::raw).collect();
        if let Some(room) = rooms.leave.get_mut(&room_id) {
            room.account_data.events = raw();
        } else if rooms.join.contains_key(&room_id) || (joined.contains(&room_id) && !left_out.contains(&room_id)) {
            rooms.join.entry(room_id).or_default().account_data.events = raw();
        }
    }
    Ok(keep_newest(global, opts.account_data.limit))
}

/// Typing and receipts of joined rooms that changed after
/// `since` (all, in a full sync); a room with only such changes is added
/// (not one `left_out`).
async fn add_ephemeral(
    svc: &Services,
    owner: &TokenOwner,
    rooms: &mut Rooms,
    left_out: &HashSet<OwnedRoomId>,
    (since, head): (Option<i64>, i64),
) -> Result<(), MatrixError> {
    // A full sync mentions typing in rooms where anyone has ever typed (so
    // a new client learns that nobody is typing any more, as Synapse tells
    // it), not in the others.
    let typing = svc.ephemeral.typing(since, head).await?;
    for m in svc.storage.user_memberships(&owner.user_id).await? {
        if m.membership != "join" || left_out.contains(&m.room_id) {
            continue;
        }
        let mut events: Vec<Value> = Vec::new();
        if let Some(typing) = typing.get(&m.room_id) {
            events.push(serde_json::json!({ "type": "m.typing", "content": { "user_ids": typing } }));
        }
        // Nothing moved on the ephemeral stream: no new receipt anywhere
        // (not a query per room).
        let receipts = if since.is_some_and(|since| since >= head) {
            Vec::new()
        } else {
            svc.storage.receipts(&m.room_id, since).await?
        };
        let mut content = serde_json::Map::new();
        for r in receipts.iter().filter(|r| r.position <= head) {
            // Private receipts are for their owner only.
            if r.receipt_type == "m.read.private" && r.user_id != owner.user_id {
                continue;
            }
            let by_type = content
                .entry(r.event_id.to_string())
                .or_insert_with(|| serde_json::json!({}));
            by_type[&r.receipt_type][r.user_id.as_str()] = serde_json::json!({ "ts": r.ts });
        }
        if !content.is_empty() {
            events.push(serde_json::json!({ "type": "m.receipt", "content": content }));
        }
        if events.is_empty() {
            continue;
        }
        let room = rooms.join.entry(m.room_id.clone()).or_default();
        room.ephemeral.events = events.iter().map(format::raw).collect();
    }
    Ok(())
}

async fn load_filter(
    svc: &Services,
    owner: &TokenOwner,
    filter: Option<&Filter>,
) -> Result<FilterDefinition, MatrixError> {
    if let Some(definition) = inline_filter(filter)? {
        return Ok(definition);
    }
    Ok(match filter {
        Some(Filter::FilterId(id)) => match svc.storage.filter(&owner.user_id, id).await? {
            Some(json) => serde_json::from_str(&json).map_err(|e| MatrixError::internal("stored filter", e))?,
            None => return Err(MatrixError::not_found(format!("Unknown filter {id}"))),
        },
        _ => FilterDefinition::default(),
    })
}

/// The filter given inline in the `filter` parameter, if it is one (not
/// the ID of an uploaded filter, nor missing).
pub(crate) fn inline_filter(filter: Option<&Filter>) -> Result<Option<FilterDefinition>, MatrixError> {
    match filter {
        Some(Filter::FilterDefinition(def)) => Ok(Some(def.clone())),
        // An inline filter that ruma could not read as a filter (so took
        // for an ID): a 400, as Synapse answers, not an unknown filter.
        Some(Filter::FilterId(id)) if id.starts_with('{') => Err(match serde_json::from_str::<Value>(id) {
            Ok(_) => MatrixError::bad_json("The inline filter is not a valid filter"),
            Err(_) => MatrixError::not_json("Invalid filter JSON"),
        }),
        _ => Ok(None),
    }
}

/// The rooms of a response: those sent, those of them sent in full in an
/// incremental sync (joined since), and the joined rooms left out (joined
/// with partial state, see [`partial_rooms`]: nothing of theirs is sent).
struct Built {
    rooms: Rooms,
    in_full: HashSet<OwnedRoomId>,
    left_out: HashSet<OwnedRoomId>,
}

async fn build_rooms(
    svc: &Services,
    owner: &TokenOwner,
    since: Option<StreamOrdering>,
    head: StreamOrdering,
    opts: &Options,
) -> Result<Built, MatrixError> {
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
    let mut in_full = HashSet::new();
    let memberships = svc.storage.user_memberships(&owner.user_id).await?;
    // An incremental sync looks into the joined rooms with new events only
    // (their newest event, one index step each): not a timeline scan per
    // room the user is in.
    let newest: Option<HashMap<OwnedRoomId, StreamOrdering>> = match since {
        Some(_) if !opts.full_state => {
            let joined: Vec<OwnedRoomId> = memberships
                .iter()
                .filter(|m| m.membership == "join")
                .map(|m| m.room_id.clone())
                .collect();
            Some(
                svc.storage
                    .room_activity(&joined, head)
                    .await?
                    .into_iter()
                    .map(|(room, activity)| (room, activity.latest))
                    .collect(),
            )
        }
        _ => None,
    };
    let (partial, completed) = partial_rooms(svc, &memberships, since, head, opts).await?;
    for m in memberships {
        if m.stream_ordering > head || !filter::room_allowed(&opts.room, &m.room_id) {
            continue;
        }
        let full = since.is_none() || opts.full_state;
        let changed = changed.contains(&m.room_id);
        // Joined (or re-joined) since the last sync: the room in full. A
        // change of one's own member event while joined (a new display
        // name) is no new join.
        let joined_at_since = match since {
            Some(since) if changed => {
                membership_at(svc, &m.room_id, &owner.user_id, since).await?.as_deref() == Some("join")
            }
            Some(_) => true,
            None => false,
        };
        match m.membership.as_str() {
            "join" if partial.contains(&m.room_id) => {}
            "join"
                if !changed
                    && !completed.contains(&m.room_id)
                    && let (Some(since), Some(newest)) = (since, &newest)
                    && newest.get(&m.room_id).is_none_or(|latest| *latest <= since) => {}
            "join" => {
                let room_since = since.filter(|_| !full && joined_at_since && !completed.contains(&m.room_id));
                if let Some(mut room) = joined_room(svc, owner, &m.room_id, room_since, head, opts).await? {
                    if since.is_some() && room_since.is_none() {
                        in_full.insert(m.room_id.clone());
                        // Newly joined: the client knows nothing of the
                        // room before this timeline, whatever it holds;
                        // `limited` tells it to page back for more, as
                        // Synapse marks such rooms.
                        if !opts.full_state {
                            room.timeline.limited = true;
                        }
                    }
                    rooms.join.insert(m.room_id.clone(), room);
                }
            }
            "invite" if full || changed => {
                if let Some(room) = invited_room(svc, &m, &opts.ignored).await? {
                    rooms.invite.insert(m.room_id.clone(), room);
                }
            }
            // Rooms left since the last sync; with `include_leave`, in a
            // full sync, all rooms left.
            "leave" | "ban" if changed || (full && opts.room.include_leave) => {
                let since = since.filter(|_| !full);
                rooms.leave.insert(
                    m.room_id.clone(),
                    left_room(svc, owner, &m, since, joined_at_since, opts).await?,
                );
            }
            _ => {}
        }
    }
    // Invites to rooms held elsewhere (this server is not in them).
    for invite in svc.storage.remote_invites(&owner.user_id).await? {
        let new = since.is_none_or(|since| invite.stream_ordering > since) || opts.full_state;
        if invite.stream_ordering > head
            || !new
            || rooms.join.contains_key(&invite.room_id)
            || !filter::room_allowed(&opts.room, &invite.room_id)
        {
            continue;
        }
        if invite.membership != "invite" {
            // A rejected invite: the room shows once among the rooms left.
            if since.is_some() && !rooms.leave.contains_key(&invite.room_id) {
                let mut room = LeftRoom::new();
                let leave = svc.storage.events(std::slice::from_ref(&invite.event_id)).await?;
                room.timeline.events = format::client_events(svc, &leave, Some(owner))
                    .await?
                    .iter()
                    .map(format::raw)
                    .collect();
                rooms.leave.insert(invite.room_id.clone(), room);
            }
            continue;
        }
        let mut events: Vec<Value> = serde_json::from_str(&invite.invite_state).unwrap_or_default();
        if let Some(event) = svc.storage.event(&invite.event_id).await? {
            // Invites from ignored users are not shown.
            if opts.ignored.contains(&event.pdu.sender) {
                continue;
            }
            events.push(format::stripped(&event));
        }
        let mut invite_state = InviteState::new();
        invite_state.events = events.iter().map(format::raw).collect();
        let mut room = InvitedRoom::new();
        room.invite_state = invite_state;
        rooms.invite.insert(invite.room_id.clone(), room);
    }
    Ok(Built {
        rooms,
        in_full,
        left_out: partial,
    })
}

/// Of the rooms the user is joined to, for a sync that loads every member
/// (no lazy loading): those it leaves out, joined with partial state (their
/// member lists are not whole: Synapse leaves them out too), and those it
/// sends in full as if newly joined, whose partial state was completed in
/// `(since, head]` (an earlier sync left them out). A room completed after
/// `head` is still left out: the next sync sends it. One read of the few
/// rooms partial or completed since.
async fn partial_rooms(
    svc: &Services,
    memberships: &[Membership],
    since: Option<StreamOrdering>,
    head: StreamOrdering,
    opts: &Options,
) -> Result<(HashSet<OwnedRoomId>, HashSet<OwnedRoomId>), MatrixError> {
    let (mut partial, mut completed) = (HashSet::new(), HashSet::new());
    if opts.lazy.is_some() {
        return Ok((partial, completed));
    }
    let marks = svc
        .storage
        .partial_states_since(since.unwrap_or(head).min(head))
        .await?;
    if marks.is_empty() {
        return Ok((partial, completed));
    }
    let joined: HashSet<&OwnedRoomId> = memberships
        .iter()
        .filter(|m| m.membership == "join")
        .map(|m| &m.room_id)
        .collect();
    for (room, completed_at) in marks {
        if !joined.contains(&room) {
            continue;
        }
        match completed_at {
            Some(at) if at <= head => completed.insert(room),
            _ => partial.insert(room),
        };
    }
    Ok((partial, completed))
}

/// The user's membership in the room as it was at `stream`.
async fn membership_at(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    stream: StreamOrdering,
) -> Result<Option<String>, MatrixError> {
    let state = state_at_stream(svc, room_id, stream).await?;
    Ok(svc.state.membership(&state, user).await?)
}

/// The newest timeline events in `(after, upto]` that pass the filter
/// and that the user may see, oldest first; and whether older ones were
/// left out.
pub(crate) async fn timeline_events(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    (after, upto): (StreamOrdering, StreamOrdering),
    joined_now: bool,
    (filter, ignored): (&RoomEventFilter, &HashSet<OwnedUserId>),
    limit: usize,
) -> Result<(Vec<StoredEvent>, bool), MatrixError> {
    let batch = (limit + 1).max(MIN_SCAN_BATCH);
    let mut events = Vec::new();
    let mut cursor = upto;
    // Until the range is scanned to its start, older matches may exist.
    let mut limited = true;
    for _ in 0..MAX_SCAN_ROUNDS {
        let page = svc.storage.stream_page(room_id, after, cursor, batch).await?;
        let exhausted = page.len() < batch;
        if let Some(oldest) = page.last() {
            cursor = oldest.meta.stream_ordering - 1;
        }
        let matching = page
            .into_iter()
            .filter(|e| filter::event_matches(filter, &e.pdu) && !account_data::hidden_by_ignore(ignored, &e.pdu))
            .collect();
        events.extend(visibility::filter_for_user(svc, user, joined_now, matching).await?);
        if events.len() > limit {
            break;
        }
        if exhausted {
            limited = false;
            break;
        }
    }
    events.truncate(limit);
    events.reverse();
    Ok((events, limited))
}

/// The room state after the newest event that had arrived by `stream`.
pub(crate) async fn state_at_stream(
    svc: &Services,
    room_id: &RoomId,
    stream: StreamOrdering,
) -> Result<Arc<StateMap>, MatrixError> {
    let newest = svc.storage.stream_page(room_id, StreamOrdering::MIN, stream, 1).await?;
    Ok(match newest.first().and_then(|e| e.meta.state_group_after) {
        Some(group) => svc.state.group(group).await?,
        None => Arc::default(),
    })
}

/// A room's timeline and state for one sync response.
struct Section {
    events: Vec<StoredEvent>,
    limited: bool,
    prev_batch: String,
    state: Vec<StoredEvent>,
    /// State at the start of the timeline.
    start: Arc<StateMap>,
}

/// The timeline in `(since, upto]` and the state before it; `since` is
/// `None` for a full sync of the room.
async fn room_section(
    svc: &Services,
    owner: &TokenOwner,
    room_id: &RoomId,
    (since, upto): (Option<StreamOrdering>, StreamOrdering),
    joined_now: bool,
    opts: &Options,
) -> Result<Section, MatrixError> {
    let user = &owner.user_id;
    // Live events only: history backfilled later has negative positions
    // in the order it was fetched, not the room's order. A full sync
    // whose live events run out is limited when such history is held;
    // the client pages back into it (`prev_batch`, topological order).
    let range = (since.unwrap_or(0).max(0), upto);
    let (events, mut limited) = timeline_events(
        svc,
        user,
        room_id,
        range,
        joined_now,
        (&opts.room.timeline, &opts.ignored),
        opts.limit,
    )
    .await?;
    if since.is_none() && !limited {
        limited = !svc
            .storage
            .stream_page(room_id, StreamOrdering::MIN, 0, 1)
            .await?
            .is_empty();
    }
    let start = match events.first().and_then(|e| e.meta.state_group_before) {
        Some(group) => svc.state.group(group).await?,
        None => state_at_stream(svc, room_id, upto).await?,
    };
    let senders: HashSet<&UserId> = events.iter().map(|e| &*e.pdu.sender).collect();
    let is_member = |kind: &StateEventType| *kind == StateEventType::RoomMember;
    let mut ids: Vec<OwnedEventId> = match since {
        // Full: the state at the start; with lazy loading, of the members
        // only the senders of the timeline and the user.
        None => start
            .iter()
            .filter(|((kind, key), _)| {
                opts.lazy.is_none()
                    || !is_member(kind)
                    || key == user.as_str()
                    || senders.iter().any(|s| s.as_str() == key)
            })
            .map(|(_, id)| id.clone())
            .collect(),
        // Incremental: what changed between `since` and the start.
        Some(since) => {
            let old = state_at_stream(svc, room_id, since).await?;
            crate::state::changed(&old, &start)
                .into_iter()
                .map(|(_, id)| id.clone())
                .collect()
        }
    };
    if let (Some(redundant), Some(_)) = (opts.lazy, since) {
        // The timeline's senders, unless this device has them already.
        for sender in &senders {
            let Some(id) = start.get(&visibility::member_key(sender)) else {
                continue;
            };
            if !ids.contains(id)
                && (redundant || !svc.lazy_members.was_sent(user, &owner.device_id, room_id, sender, id))
            {
                ids.push(id.clone());
            }
        }
    }
    let mut state = svc.storage.events(&ids).await?;
    state.retain(|e| filter::event_matches(&opts.room.state, &e.pdu));
    state.sort_by_key(|e| e.meta.stream_ordering);

    if opts.lazy.is_some() {
        if since.is_none() {
            svc.lazy_members.reset(user, &owner.device_id, room_id);
        }
        let members = state.iter().chain(&events).filter_map(|e| {
            let member = e
                .pdu
                .state_key
                .as_deref()
                .filter(|_| e.pdu.kind == TimelineEventType::RoomMember)?;
            Some((<&UserId>::try_from(member).ok()?, &*e.pdu.event_id))
        });
        svc.lazy_members.record(user, &owner.device_id, room_id, members);
    }

    let prev_batch = events
        .first()
        .map_or(Token::Stream(upto), |first| Token::Topo(timeline::before(first)))
        .to_string();
    Ok(Section {
        events,
        limited,
        prev_batch,
        state,
        start,
    })
}

async fn timeline_json(
    svc: &Services,
    owner: &TokenOwner,
    section: &Section,
    federation_format: bool,
) -> Result<Timeline, MatrixError> {
    let mut timeline = Timeline::new();
    timeline.limited = section.limited;
    timeline.prev_batch = Some(section.prev_batch.clone());
    timeline.events = format::events_as(svc, &section.events, Some(owner), federation_format)
        .await?
        .iter()
        .map(format::raw)
        .collect();
    Ok(timeline)
}

async fn state_json(
    svc: &Services,
    owner: &TokenOwner,
    section: &Section,
    federation_format: bool,
) -> Result<State, MatrixError> {
    let mut state = StateEvents::new();
    state.events = format::events_as(svc, &section.state, Some(owner), federation_format)
        .await?
        .iter()
        .map(format::raw)
        .collect();
    Ok(State::Before(state))
}

/// A joined room's section; `since` is `None` for a full sync of it.
async fn joined_room(
    svc: &Services,
    owner: &TokenOwner,
    room_id: &RoomId,
    since: Option<StreamOrdering>,
    head: StreamOrdering,
    opts: &Options,
) -> Result<Option<JoinedRoom>, MatrixError> {
    let mut section = room_section(svc, owner, room_id, (since, head), true, opts).await?;
    if since.is_some() && section.events.is_empty() && section.state.is_empty() {
        return Ok(None);
    }
    let mut room = JoinedRoom::new();
    let members_changed = section
        .events
        .iter()
        .chain(&section.state)
        .any(|e| e.pdu.kind == TimelineEventType::RoomMember);
    if since.is_none() || members_changed {
        summarise(svc, owner, room_id, &mut section, opts, &mut room).await?;
    }
    room.timeline = timeline_json(svc, owner, &section, opts.federation_format).await?;
    room.state = state_json(svc, owner, &section, opts.federation_format).await?;
    Ok(Some(room))
}

/// The room summary: member counts, and `m.heroes` for a room without a
/// name or canonical alias (the first five other members to join or be
/// invited; failing those, the ones who left). With lazy loading, the
/// heroes' membership events join the state.
async fn summarise(
    svc: &Services,
    owner: &TokenOwner,
    room_id: &RoomId,
    section: &mut Section,
    opts: &Options,
    room: &mut JoinedRoom,
) -> Result<(), MatrixError> {
    let mut members = svc.storage.room_members(room_id, None).await?;
    members.sort_by_key(|m| m.stream_ordering);
    let count = |kind: &str| UInt::try_from(members.iter().filter(|m| m.membership == kind).count() as u64).ok();
    room.summary.joined_member_count = count("join");
    room.summary.invited_member_count = count("invite");

    let current = svc
        .state
        .current(room_id)
        .await?
        .map(|(_, map)| map)
        .unwrap_or_default();
    let named = [StateEventType::RoomName, StateEventType::RoomCanonicalAlias]
        .into_iter()
        .any(|kind| current.contains_key(&(kind, String::new())));
    if named {
        return Ok(());
    }
    let heroes = crate::rooms::heroes::heroes(&members, &owner.user_id);
    room.summary.heroes = heroes.iter().map(|m| m.user_id.clone()).collect::<Vec<OwnedUserId>>();
    if opts.lazy.is_some() {
        let have: HashSet<OwnedEventId> = section.state.iter().map(|e| e.pdu.event_id.clone()).collect();
        let missing: Vec<OwnedEventId> = heroes
            .iter()
            .filter_map(|m| section.start.get(&visibility::member_key(&m.user_id)).cloned())
            .filter(|id| !have.contains(id) && section.events.iter().all(|e| e.pdu.event_id != *id))
            .collect();
        if !missing.is_empty() {
            section.state.extend(svc.storage.events(&missing).await?);
        }
    }
    Ok(())
}

/// An invite's section; `None` for an invite from an ignored user.
async fn invited_room(
    svc: &Services,
    m: &Membership,
    ignored: &HashSet<OwnedUserId>,
) -> Result<Option<InvitedRoom>, MatrixError> {
    let Some(events) = invite_state(svc, &m.room_id, &m.event_id, ignored).await? else {
        return Ok(None);
    };
    let mut invite_state = InviteState::new();
    invite_state.events = events.iter().map(format::raw).collect();
    let mut room = InvitedRoom::new();
    room.invite_state = invite_state;
    Ok(Some(room))
}

/// The stripped state shown with an invite (or a knock) held here: the
/// room's name, avatar, … and the sender's membership, then the invite
/// itself; `None` for an invite from an ignored user.
pub(crate) async fn invite_state(
    svc: &Services,
    room_id: &RoomId,
    event_id: &ruma::EventId,
    ignored: &HashSet<OwnedUserId>,
) -> Result<Option<Vec<Value>>, MatrixError> {
    let invite = svc.storage.event(event_id).await?;
    if invite.as_ref().is_some_and(|e| ignored.contains(&e.pdu.sender)) {
        return Ok(None);
    }
    let mut events = Vec::new();
    if let Some((_, state)) = svc.state.current(room_id).await? {
        let mut keys: Vec<_> = INVITE_STATE_TYPES.iter().map(|t| (t.clone(), String::new())).collect();
        // The inviter's own membership, as Synapse shows it.
        if let Some(invite) = &invite {
            keys.push((ruma::events::StateEventType::RoomMember, invite.pdu.sender.to_string()));
        }
        events = svc.state.events_for(&state, &keys).await?;
        events.retain(|e| invite.as_ref().is_none_or(|i| i.pdu.event_id != e.pdu.event_id));
    }
    events.extend(invite);
    Ok(Some(events.iter().map(format::stripped).collect()))
}

/// A room the user left or was removed from: the timeline up to their
/// leaving (since the last sync, or all of it in a full sync).
/// `joined_at_since`: the user was a member at `since`.
async fn left_room(
    svc: &Services,
    owner: &TokenOwner,
    m: &Membership,
    since: Option<StreamOrdering>,
    joined_at_since: bool,
    opts: &Options,
) -> Result<LeftRoom, MatrixError> {
    // Whether the user was in the room when they left (not for a rejected
    // invite, say): room state only as far as they saw it as a member.
    let was_joined = match svc
        .storage
        .event(&m.event_id)
        .await?
        .and_then(|e| e.meta.state_group_before)
    {
        Some(group) => {
            svc.state
                .membership(&*svc.state.group(group).await?, &owner.user_id)
                .await?
        }
        None => None,
    }
    .as_deref()
        == Some("join");
    // Joined and left within one batch: the client never had the room's
    // state, so it gets it in full, as after a new join.
    let since = since.filter(|_| joined_at_since || !was_joined);
    let mut section = room_section(svc, owner, &m.room_id, (since, m.stream_ordering), false, opts).await?;
    if !was_joined {
        section.state.clear();
    }
    let mut room = LeftRoom::new();
    room.timeline = timeline_json(svc, owner, &section, opts.federation_format).await?;
    room.state = state_json(svc, owner, &section, opts.federation_format).await?;
    Ok(room)
}

/// Response middleware for `/sync`: see [`complete_body`].
pub async fn complete_response(response: axum::response::Response) -> axum::response::Response {
    if response.status() != http::StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return MatrixError::unknown("sync response unreadable").into_response();
    };
    let bytes = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) => {
            complete_body(&mut value);
            serde_json::to_vec(&value).map_or(bytes, Into::into)
        }
        Err(_) => bytes,
    };
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Fills in the sections of a sync response that ruma leaves out when
/// empty (`timeline.limited`, `state.events`, …), as clients (and
/// SyTest) expect every joined or left room to carry them.
fn complete_body(body: &mut Value) {
    fn ensure(object: &mut serde_json::Map<String, Value>, key: &str, default: Value) {
        let entry = object.entry(key.to_owned()).or_insert(default.clone());
        if let (Some(entry), Some(default)) = (entry.as_object_mut(), default.as_object()) {
            for (k, v) in default {
                entry.entry(k.clone()).or_insert(v.clone());
            }
        }
    }
    let Some(body) = body.as_object_mut() else {
        return;
    };
    let events = || serde_json::json!({ "events": [] });
    ensure(
        body,
        "rooms",
        serde_json::json!({ "join": {}, "invite": {}, "leave": {} }),
    );
    ensure(body, "account_data", events());
    ensure(body, "presence", events());
    let Some(rooms) = body.get_mut("rooms").and_then(Value::as_object_mut) else {
        return;
    };
    for (section, keys) in [
        ("join", &["timeline", "state", "ephemeral", "account_data"][..]),
        ("leave", &["timeline", "state", "account_data"][..]),
    ] {
        let Some(map) = rooms.get_mut(section).and_then(Value::as_object_mut) else {
            continue;
        };
        for room in map.values_mut().filter_map(Value::as_object_mut) {
            for key in keys {
                ensure(room, key, events());
            }
            if let Some(timeline) = room.get_mut("timeline").and_then(Value::as_object_mut) {
                timeline.entry("limited").or_insert(Value::Bool(false));
            }
        }
    }
}
