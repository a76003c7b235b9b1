//! Simplified sliding sync (MSC4186, the dialect Synapse serves and
//! Element X's SDK speaks):
//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`.
//!
//! A client keeps *connections* (one per `conn_id` of a device). Each
//! answer's `pos` names a *position* of its connection; what each answer
//! told of each room (up to which event, with which configuration) is
//! stored with it, in the database: any weft process can take the next
//! request. Asking from a position forgets the positions after it (answers
//! the client never acknowledged), so a request retried with the same `pos`
//! is answered again as if the first never was. A `pos` no longer held is
//! `400 M_UNKNOWN_POS`, and the client starts its connection again.
//!
//! `pos` is `<position>/<stream heads>`: the heads (as `/sync`'s
//! `next_batch`) are where the answer's events, receipts, account data, …
//! end. An answer that sends no room keeps the position (nothing is
//! written); the heads move on.
//!
//! A request with a `pos` whose answer would be empty waits (up to
//! `timeout`) for a change that concerns the user, as `/sync` does
//! (`crate::wakeups`); the first request of a connection never waits.

mod extensions;
mod lists;
pub mod required_state;
mod room;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ruma::{
    OwnedRoomId, UInt,
    api::client::sync::sync_events::v5::{Request, Response, response},
};

use self::{
    lists::{Candidate, FilterContext},
    required_state::{Growth, RoomConfig},
    room::{Context, Previous},
};
use super::{extract::Ruma, sync_token::SyncToken};
use crate::{
    account_data,
    error::{ErrCode, MatrixError},
    presence,
    services::Services,
    storage::{
        StorageError, TokenOwner,
        sliding_sync::{SentRoom, SlidingConnection},
    },
    wakeups::Topic,
};

/// Connections unused this long are forgotten (as Synapse does).
const CONNECTION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Forgets unused connections, hourly. Every process may run it: it is
/// one `DELETE` of what nobody uses.
pub async fn run_expiry(svc: Arc<Services>, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = ruma::MilliSecondsSinceUnixEpoch::now().get();
        let before = u64::from(now).saturating_sub(CONNECTION_EXPIRY.as_millis() as u64);
        match svc.storage.forget_sliding_connections(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(connections = n, "forgot unused sliding sync connections"),
            Err(error) => tracing::warn!(%error, "cannot forget unused sliding sync connections"),
        }
    }
}

/// The longest a request waits.
const MAX_TIMEOUT: Duration = Duration::from_secs(60 * 5);
/// The longest `conn_id` kept.
const MAX_CONN_ID: usize = 64;

/// An answer's `pos`: the connection's position (0: nothing stored) and
/// the stream heads.
#[derive(Debug, Clone)]
struct Pos {
    position: i64,
    heads: SyncToken,
}

impl Pos {
    fn parse(s: &str) -> Option<Pos> {
        let (position, heads) = s.split_once('/')?;
        Some(Pos {
            position: position.parse().ok().filter(|p| *p >= 0)?,
            heads: SyncToken::parse(heads)?,
        })
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.position, self.heads)
    }
}

fn unknown_pos() -> MatrixError {
    MatrixError::new(ErrCode::UnknownPos, "Unknown position: start the connection again")
}

pub async fn sync(svc: Arc<Services>, req: Ruma<Request>) -> Result<Response, MatrixError> {
    let owner = req.user().clone();
    let body = req.body;
    let conn_id = body.conn_id.clone().unwrap_or_default();
    if conn_id.len() > MAX_CONN_ID {
        return Err(MatrixError::invalid_param(format!(
            "conn_id is longer than {MAX_CONN_ID} bytes"
        )));
    }
    let conn = SlidingConnection {
        user_id: owner.user_id.clone(),
        device_id: owner.device_id.clone(),
        conn_id,
    };
    let since = match body.pos.as_deref() {
        Some(pos) => Some(Pos::parse(pos).ok_or_else(unknown_pos)?),
        None => None,
    };
    if let Some(since) = &since
        && since.position != 0
        && svc.storage.sliding_position(&conn, since.position).await?.is_none()
    {
        return Err(unknown_pos());
    }
    presence::sync_activity(&svc, &owner.user_id, &body.set_presence).await?;
    let timeout = body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    // As `/sync`: woken by what concerns the user (registered before the
    // heads are read); its rooms watched from the second round on, before
    // the heads are read (see `client_api::sync`).
    let mut waiter = svc.notifier.wakeups.register([Topic::User(owner.user_id.clone())]);
    let mut watching_rooms = false;
    loop {
        if watching_rooms {
            waiter.add(super::sync::rooms_to_watch(&svc, &owner.user_id).await?);
        }
        let heads = SyncToken {
            stream: svc.notifier.head(),
            ephemeral: Some(svc.ephemeral.head()),
            account_data: Some(svc.account_data.head()),
            e2e: Some(svc.e2e.head()),
            presence: Some(svc.presence.head()),
        };
        let answer = build(&svc, &owner, &conn, &body, since.as_ref(), &heads).await?;
        let news = !answer.response.rooms.is_empty() || extensions::has_news(&answer.response.extensions);
        if news || since.is_none() || tokio::time::Instant::now() >= deadline {
            return finish(&svc, &conn, since.as_ref(), heads, answer).await;
        }
        if !watching_rooms {
            waiter.add(super::sync::rooms_to_watch(&svc, &owner.user_id).await?);
            watching_rooms = true;
            if svc.notifier.head() != heads.stream
                || Some(svc.ephemeral.head()) != heads.ephemeral
                || Some(svc.account_data.head()) != heads.account_data
                || Some(svc.e2e.head()) != heads.e2e
            {
                continue;
            }
        }
        if tokio::time::timeout_at(deadline, waiter.notified()).await.is_ok() {
            svc.metrics.sync_wakeups.inc();
        }
    }
}

/// An answer, and what it sent of each room.
struct Answer {
    response: Response,
    sent: Vec<SentRoom>,
}

/// Stores what the answer sent (a new position when it sent rooms) and
/// gives it its `pos`.
async fn finish(
    svc: &Services,
    conn: &SlidingConnection,
    since: Option<&Pos>,
    heads: SyncToken,
    mut answer: Answer,
) -> Result<Response, MatrixError> {
    let after = since.map(|s| s.position).filter(|p| *p != 0);
    let position = if answer.sent.is_empty() {
        after.unwrap_or(0)
    } else {
        match svc
            .storage
            .new_sliding_position(conn, after, &heads.to_string(), &answer.sent)
            .await
        {
            Ok(position) => position,
            // A newer request of the connection took another position
            // meanwhile: this answer's `pos` would never be known.
            Err(StorageError::NotFound) => return Err(unknown_pos()),
            Err(e) => return Err(e.into()),
        }
    };
    answer.response.pos = Pos { position, heads }.to_string();
    Ok(answer.response)
}

/// The answer to `body` from `since` up to `heads`.
async fn build(
    svc: &Services,
    owner: &TokenOwner,
    conn: &SlidingConnection,
    body: &Request,
    since: Option<&Pos>,
    heads: &SyncToken,
) -> Result<Answer, MatrixError> {
    let user = &owner.user_id;
    let candidates = lists::candidates(svc, user, heads.stream, since.map(|s| s.heads.stream)).await?;
    let context = FilterContext::load(svc, user).await?;

    // Each list's rooms and count; the rooms in its ranges with its
    // configuration, merged with the subscriptions'.
    let mut response = Response::new(String::new());
    // Echoed: the client knows which of its requests this answers.
    response.txn_id = body.txn_id.clone();
    let mut wanted: HashMap<OwnedRoomId, Wanted> = HashMap::new();
    let by_id: HashMap<&OwnedRoomId, &Candidate> = candidates.iter().map(|c| (&c.room_id, c)).collect();
    // Rooms joined with partial state are left out of the lists and
    // subscriptions that need the full state (as Synapse does); they come
    // when it is in (never sent: in full). Read once, if one needs it.
    let mut partial: Option<HashSet<OwnedRoomId>> = None;
    for (name, list) in &body.lists {
        let config = Wanted::new(RoomConfig::new(
            &list.room_details.required_state,
            u64::from(list.room_details.timeline_limit),
            user,
        ));
        let left_out = match config.config.needs_full_state(svc.server_name()) {
            true => Some(partial_rooms(svc, &mut partial, &candidates, heads.stream).await?),
            false => None,
        };
        let mut matching = Vec::new();
        for room in &candidates {
            if left_out.is_some_and(|rooms| rooms.contains(&room.room_id)) {
                continue;
            }
            let passes = match &list.filters {
                Some(filters) => lists::passes(svc, filters, &context, room).await?,
                None => true,
            };
            if passes {
                matching.push(room);
            }
        }
        for index in lists::in_ranges(&list.ranges, matching.len()) {
            merge(&mut wanted, &matching[index].room_id, &config);
        }
        let mut count = response::List::default();
        count.count = UInt::try_from(matching.len() as u64).unwrap_or_default();
        response.lists.insert(name.clone(), count);
    }
    for (room_id, subscription) in &body.room_subscriptions {
        // Only the user's rooms: another is not shown (as Synapse does).
        if by_id.contains_key(room_id) {
            let config = Wanted::new(RoomConfig::new(
                &subscription.required_state,
                u64::from(subscription.timeline_limit),
                user,
            ));
            if config.config.needs_full_state(svc.server_name())
                && partial_rooms(svc, &mut partial, &candidates, heads.stream)
                    .await?
                    .contains(room_id)
            {
                continue;
            }
            merge(&mut wanted, room_id, &config);
        }
    }

    let room_ids: Vec<OwnedRoomId> = wanted.keys().cloned().collect();
    let previous: HashMap<OwnedRoomId, Previous> = match since.map(|s| s.position).filter(|p| *p != 0) {
        Some(position) if !room_ids.is_empty() => {
            // The rooms of a list share their configuration: each stored
            // one is read once.
            let mut configs: HashMap<String, RoomConfig> = HashMap::new();
            let mut previous = HashMap::new();
            for (room, sent) in svc.storage.sliding_sent_rooms(conn, position, &room_ids).await? {
                let now = &wanted[&room];
                let growth = if *now.json == sent.config {
                    Growth::default()
                } else {
                    now.config.grew_from(
                        configs
                            .entry(sent.config)
                            .or_insert_with_key(|json| RoomConfig::from_json(json)),
                    )
                };
                previous.insert(
                    room,
                    Previous {
                        upto: sent.upto,
                        growth,
                    },
                );
            }
            previous
        }
        _ => HashMap::new(),
    };
    let ignored = account_data::ignored_users(svc, user).await?;
    let cx = Context {
        owner,
        ignored: &ignored,
        direct: &context.direct,
        head: heads.stream,
        since: since.map(|s| s.heads.stream),
    };
    let mut sent = Vec::new();
    let mut initial = HashSet::new();
    let mut rooms = BTreeMap::new();
    for (room_id, config) in &wanted {
        let candidate = by_id[room_id];
        let previous = previous.get(room_id);
        if let Some(room) = room::room(svc, &cx, candidate, &config.config, previous).await? {
            if room.initial == Some(true) {
                initial.insert(room_id.clone());
            }
            sent.push(SentRoom {
                room_id: room_id.clone(),
                upto: heads.stream,
                config: config.json.to_string(),
            });
            rooms.insert(room_id.clone(), room);
        }
    }
    response.rooms = rooms;
    let scope = extensions::Scope {
        owner,
        heads,
        since: since.map(|s| &s.heads),
        rooms: &room_ids,
        initial: &initial,
    };
    response.extensions = extensions::answer(svc, &body.extensions, &scope).await?;
    Ok(Answer { response, sent })
}

/// Of `candidates`, the rooms joined with partial state as of `head` (read
/// into `partial` the first time).
async fn partial_rooms<'a>(
    svc: &Services,
    partial: &'a mut Option<HashSet<OwnedRoomId>>,
    candidates: &[Candidate],
    head: i64,
) -> Result<&'a HashSet<OwnedRoomId>, MatrixError> {
    if partial.is_none() {
        let marks = svc.storage.partial_states_since(head).await?;
        *partial = Some(
            marks
                .into_iter()
                .map(|(room, _)| room)
                .filter(|room| candidates.iter().any(|c| c.room_id == *room))
                .collect(),
        );
    }
    Ok(partial.get_or_insert_default())
}

/// A room configuration with its stored form, shared by the rooms of a
/// list (a room in several lists, or subscribed to, gets its own merge).
#[derive(Clone)]
struct Wanted {
    config: Arc<RoomConfig>,
    json: Arc<str>,
}

impl Wanted {
    fn new(config: RoomConfig) -> Wanted {
        Wanted {
            json: config.to_json().into(),
            config: Arc::new(config),
        }
    }
}

fn merge(wanted: &mut HashMap<OwnedRoomId, Wanted>, room_id: &OwnedRoomId, config: &Wanted) {
    match wanted.get_mut(room_id) {
        Some(existing) if existing.json != config.json => {
            let mut merged = (*existing.config).clone();
            merged.merge(&config.config);
            *existing = Wanted::new(merged);
        }
        Some(_) => {}
        None => {
            wanted.insert(room_id.clone(), config.clone());
        }
    }
}
