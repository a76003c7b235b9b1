//! Backfill: filling the gaps of a room's timeline with history fetched
//! from other servers, when a local user pages back into one.
//!
//! A gap is a backward extremity: an event named as a parent but not held
//! (the point where this server joined, a leave and re-join, an outage).
//! [`fill`] asks servers that were in the room at the gap for `/backfill`
//! from there (several extremities at once), checks and stores what comes
//! back ([`crate::rooms::backfilled::receive_backfilled`]), and tells how many
//! events it added. One fill per room at a time, in the cluster too (the
//! duty [`crate::cluster::backfill_duty`], held while the fill runs): a
//! second request for the same gap, on any process, waits, then finds it
//! filled. A server that failed for a gap is
//! not asked about that gap again until its back-off has passed, so history
//! no server can give does not cost every `/messages` call. See
//! docs/history.md.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{
    EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, ServerName, UInt,
    api::federation::{backfill::get_backfill, event::get_event},
    events::StateEventType,
};
use tracing::Instrument;

use crate::{
    event_checks,
    rooms::{RoomError, backfilled},
    services::Services,
    storage::StoredEvent,
};

/// Most gaps asked about in one `/backfill` request.
const MAX_EXTREMITIES_PER_REQUEST: usize = 5;
/// Most servers tried for one fill.
const MAX_SERVERS_TRIED: usize = 5;
const BACKOFF_INITIAL: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(60 * 60);
/// Back-offs kept before those that ran out are dropped.
const BACKOFF_ENTRIES: usize = 4096;
/// How long a fill's hold on the room lasts unrenewed (it is renewed
/// while the fill runs): how soon another process fills the room after
/// this one died filling it.
const FILL_TTL: Duration = crate::duty::TTL;
/// How long a fill waits for another process's fill of the room before
/// it goes on by itself (what both store is the same: the second write
/// finds it held).
const FILL_WAIT: Duration = Duration::from_secs(30);

/// Per-room single flight and per-(gap, server) back-off.
#[derive(Default)]
pub struct Backfiller {
    rooms: crate::keyed_locks::KeyedLocks<OwnedRoomId>,
    backoff: Mutex<HashMap<(OwnedEventId, OwnedServerName), (Instant, Duration)>>,
}

impl Backfiller {
    fn backing_off(&self, gap: &OwnedEventId, server: &OwnedServerName) -> bool {
        let backoff = self.backoff.lock().expect("backfill back-off");
        backoff
            .get(&(gap.clone(), server.clone()))
            .is_some_and(|(until, _)| *until > Instant::now())
    }

    fn failed(&self, gaps: &[OwnedEventId], server: &OwnedServerName) {
        let mut backoff = self.backoff.lock().expect("backfill back-off");
        // Back-offs run out: the map keeps those running once it is large.
        if backoff.len() >= BACKOFF_ENTRIES {
            let now = Instant::now();
            backoff.retain(|_, (until, _)| *until > now);
        }
        for gap in gaps {
            let key = (gap.clone(), server.clone());
            let wait = backoff
                .get(&key)
                .map_or(BACKOFF_INITIAL, |(_, w)| (*w * 2).min(BACKOFF_MAX));
            backoff.insert(key, (Instant::now() + wait, wait));
        }
    }
}

/// What a fill did to the room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// This many events were added (0: nothing could be had).
    Added(usize),
    /// Another request, of this process or another, filled some of the
    /// gaps while this one waited for it: read again.
    ByAnother,
}

/// Fills the gaps at `gaps` (backward extremities, highest first) with up
/// to about `want` events.
pub async fn fill(svc: &Services, room_id: &RoomId, gaps: &[OwnedEventId], want: usize) -> Result<Filled, RoomError> {
    let span = tracing::info_span!("backfill", %room_id, gaps = gaps.len());
    async {
        let (_guard, _held) = hold_room(svc, room_id).await;
        // Another request may have filled some while we waited.
        if any_closed(svc, room_id, gaps).await? {
            return Ok(Filled::ByAnother);
        }
        let gaps: Vec<OwnedEventId> = gaps.iter().take(MAX_EXTREMITIES_PER_REQUEST).cloned().collect();
        let room = svc.storage.room(room_id).await?.ok_or(RoomError::UnknownRoom)?;
        let started = Instant::now();
        let limit = (want * 2).clamp(20, crate::federation_api::MAX_HISTORY_PAGE);
        let mut added = 0;
        for server in candidates(svc, room_id, &gaps)
            .await?
            .into_iter()
            .take(MAX_SERVERS_TRIED)
        {
            if gaps.iter().all(|g| svc.backfiller.backing_off(g, &server)) {
                continue;
            }
            let request = get_backfill::v1::Request::new(room_id.to_owned(), gaps.clone(), UInt::from(limit as u32));
            let pdus = match svc.federation.send(&server, request).await {
                Ok(answer) => answer.pdus,
                Err(e) => {
                    tracing::info!(%server, error = %e, "backfill request failed");
                    svc.metrics.backfill_request("error");
                    svc.metrics.backfill_failure(&server);
                    svc.backfiller.failed(&gaps, &server);
                    continue;
                }
            };
            let mut events = Vec::new();
            for raw in &pdus {
                match event_checks::check_signed(svc, &room.version, raw).await {
                    Ok(event) if event.room_id == room_id => events.push(event),
                    Ok(_) => tracing::info!(%server, "dropping a backfilled event of another room"),
                    Err(e) => tracing::info!(%server, error = %e, "dropping a backfilled event"),
                }
            }
            added = backfilled::receive_backfilled(svc, &server, &room, events).await?;
            // Held already: another process filled the gaps meanwhile (it
            // went on without the duty, or took it over).
            if added == 0 && any_closed(svc, room_id, &gaps).await? {
                return Ok(Filled::ByAnother);
            }
            if added == 0 {
                svc.metrics.backfill_request("empty");
                svc.backfiller.failed(&gaps, &server);
                continue;
            }
            svc.metrics.backfill_request("events");
            svc.metrics.backfill_events.inc_by(added as u64);
            tracing::info!(%server, added, "backfilled");
            break;
        }
        svc.metrics.backfill_seconds.observe(started.elapsed().as_secs_f64());
        Ok(Filled::Added(added))
    }
    .instrument(span)
    .await
}

/// One event of the room's history that this server does not hold in its
/// timeline (a permalink, a jump to a date): fetched with `/event` from a
/// server in the room (`prefer` first: the one that named it), checked, and
/// stored as backfilled history, an island with its own backward
/// extremities that `/messages` fills as it meets them. The event as held
/// then, or None when no server gave it (or it was rejected). Two requests
/// at most to find it; its missing state is fetched as for any backfilled
/// event whose parents are not held. Under the room's fill (single flight
/// and duty); each (event, server) pair that failed backs off as a gap
/// does, so an event nobody has does not cost every request.
pub async fn fetch_event(
    svc: &Services,
    room_id: &RoomId,
    event_id: &EventId,
    prefer: Option<&ServerName>,
) -> Result<Option<StoredEvent>, RoomError> {
    let span = tracing::info_span!("fetch_event", %room_id, %event_id);
    async {
        let (_guard, _held) = hold_room(svc, room_id).await;
        if let Some(event) = in_timeline(svc, room_id, event_id).await? {
            return Ok(Some(event));
        }
        let room = svc.storage.room(room_id).await?.ok_or(RoomError::UnknownRoom)?;
        let mut servers = candidates(svc, room_id, &[]).await?;
        if let Some(prefer) = prefer.filter(|s| *s != svc.server_name()) {
            servers.retain(|s| s != prefer);
            servers.insert(0, prefer.to_owned());
        }
        let key = [event_id.to_owned()];
        let mut asked = 0;
        for server in servers {
            if asked == FETCH_SERVERS_TRIED {
                break;
            }
            if svc.backfiller.backing_off(&key[0], &server) {
                continue;
            }
            asked += 1;
            let pdu = match svc
                .federation
                .send(&server, get_event::v1::Request::new(event_id.to_owned()))
                .await
            {
                Ok(answer) => answer.pdu,
                Err(e) => {
                    tracing::info!(%server, error = %e, "event request failed");
                    svc.metrics.backfill_request("error");
                    svc.backfiller.failed(&key, &server);
                    continue;
                }
            };
            let event = match event_checks::check_signed(svc, &room.version, &pdu).await {
                Ok(event) if event.room_id == room_id && event.event_id == event_id => event,
                Ok(_) => {
                    tracing::info!(%server, "answered /event with another event");
                    svc.backfiller.failed(&key, &server);
                    continue;
                }
                Err(e) => {
                    tracing::info!(%server, error = %e, "dropping a fetched event");
                    svc.backfiller.failed(&key, &server);
                    continue;
                }
            };
            let added = backfilled::receive_backfilled(svc, &server, &room, vec![event]).await?;
            if let Some(event) = in_timeline(svc, room_id, event_id).await? {
                svc.metrics.backfill_request("events");
                svc.metrics.backfill_events.inc_by(added as u64);
                return Ok(Some(event));
            }
            // Rejected, or its state could not be had from this server.
            svc.metrics.backfill_request("empty");
            svc.backfiller.failed(&key, &server);
        }
        Ok(None)
    }
    .instrument(span)
    .await
}

/// Servers asked for one event, at most (each a round trip, and a client
/// may name any event).
const FETCH_SERVERS_TRIED: usize = 3;

/// The event, if held in the room's timeline (not an outlier, rejected
/// or soft-failed).
async fn in_timeline(svc: &Services, room_id: &RoomId, event_id: &EventId) -> Result<Option<StoredEvent>, RoomError> {
    Ok(svc.storage.event(event_id).await?.filter(|event| {
        let meta = &event.meta;
        event.pdu.room_id == room_id && !meta.outlier && meta.rejected.is_none() && !meta.soft_failed
    }))
}

/// The room's fill, held: this process's lock on it, and the cluster's
/// duty (`None` when another process kept it past [`FILL_WAIT`]: this one
/// goes on by itself). Both are let go when dropped.
async fn hold_room(
    svc: &Services,
    room_id: &RoomId,
) -> (tokio::sync::OwnedMutexGuard<()>, Option<crate::cluster::HeldDuty>) {
    let guard = svc.backfiller.rooms.lock(room_id).await;
    let held = crate::cluster::hold_while(
        &svc.cluster,
        crate::cluster::backfill_duty(room_id),
        FILL_TTL,
        FILL_WAIT,
    )
    .await;
    (guard, held)
}

/// Whether any of `gaps` is no longer one (filled).
async fn any_closed(svc: &Services, room_id: &RoomId, gaps: &[OwnedEventId]) -> Result<bool, RoomError> {
    let open: HashSet<OwnedEventId> = svc
        .storage
        .backward_extremities(room_id)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    Ok(gaps.iter().any(|g| !open.contains(g)))
}

/// Servers to ask for the history behind `gaps`: those with users joined
/// to the room just after the gaps (longest in the room first), then the
/// others in the room now; servers backing off last; never this one.
pub(crate) async fn candidates(
    svc: &Services,
    room_id: &RoomId,
    gaps: &[OwnedEventId],
) -> Result<Vec<OwnedServerName>, RoomError> {
    // (The partial-state mark first: if it is gone, the states read below
    // are the completed ones. Read after them, it could be gone while they
    // were the partial ones, and the servers in the room with it.)
    let partial = svc.storage.partial_state(room_id).await?;
    // server → depth of its earliest join seen (lower: in the room longer).
    let mut joined_since: HashMap<OwnedServerName, u64> = HashMap::new();
    let mut groups = Vec::new();
    for gap in gaps {
        for child in svc.storage.children(gap).await? {
            if let Some(group) = svc.storage.event(&child).await?.and_then(|e| e.meta.state_group_before) {
                groups.push(group);
            }
        }
    }
    if let Some((group, _)) = svc.state.current(room_id).await? {
        groups.push(group);
    }
    groups.dedup();
    for group in groups {
        let state = svc.state.group(group).await?;
        let members: Vec<OwnedEventId> = state
            .iter()
            .filter(|((kind, _), _)| *kind == StateEventType::RoomMember)
            .map(|(_, id)| id.clone())
            .collect();
        for event in svc.storage.events(&members).await? {
            if event.pdu.membership().as_deref() != Some("join") {
                continue;
            }
            let Some(user) = event.pdu.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok()) else {
                continue;
            };
            let depth = joined_since.entry(user.server_name().to_owned()).or_insert(u64::MAX);
            *depth = (*depth).min(event.pdu.depth);
        }
    }
    // A room joined with partial state: the servers its resident server
    // named are in it, though their members are not known yet.
    if let Some(partial) = partial {
        for server in partial.servers {
            joined_since.entry(server).or_insert(u64::MAX);
        }
    }
    joined_since.remove(svc.server_name());
    let mut servers: Vec<(bool, u64, OwnedServerName)> = joined_since
        .into_iter()
        .map(|(server, depth)| (svc.federation.backing_off(&server), depth, server))
        .collect();
    servers.sort();
    Ok(servers.into_iter().map(|(_, _, server)| server).collect())
}
