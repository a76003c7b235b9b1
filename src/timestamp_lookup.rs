//! Jump to date (`timestamp_to_event`, MSC3030, spec v1.6): the event of a
//! room closest to a time, in a direction.
//!
//! This server answers from its own timeline (one index step). When it
//! holds nothing on that side of the time, or its answer sits next to a gap
//! in its history (the closest event after the time has a parent it does
//! not hold; the closest before it has no child held and is not the room's
//! newest), a closer event may exist that it never held: it asks servers in
//! the room (those that were there at the gap first, as backfill does), at
//! most [`SERVERS_ASKED`], takes the first answer that is on the asked side
//! of the time and closer than its own, and fetches that event
//! ([`crate::backfill::fetch_event`]: checked and stored as backfilled
//! history, so `/context` and `/messages` go on from it). The answer's
//! timestamp is the fetched event's own, never the one another server
//! claimed. When nothing better can be had, the local answer stands.
//!
//! The federation side ([`crate::federation_api`]) answers from the local
//! timeline only: a server asked never asks further.

use ruma::{
    MilliSecondsSinceUnixEpoch, RoomId, api::federation::event::get_event_by_timestamp, events::TimelineEventType,
};

use crate::{
    backfill,
    error::MatrixError,
    rooms::RoomError,
    services::Services,
    storage::{Direction, StoredEvent},
};

/// Servers asked for their closest event, at most.
pub const SERVERS_ASKED: usize = 3;

/// The storage direction of an API one.
pub fn direction(dir: ruma::api::Direction) -> Direction {
    match dir {
        ruma::api::Direction::Backward => Direction::Backward,
        ruma::api::Direction::Forward => Direction::Forward,
    }
}

/// The answer when no event is found (as Synapse words it).
pub fn not_found(ts: u64, dir: Direction) -> MatrixError {
    let dir = match dir {
        Direction::Backward => "b",
        Direction::Forward => "f",
    };
    MatrixError::not_found(format!("Unable to find event from {ts} in direction {dir}"))
}

/// Whether `candidate` (a timestamp) is on the `dir` side of `ts`.
fn on_side(candidate: u64, ts: u64, dir: Direction) -> bool {
    match dir {
        Direction::Backward => candidate <= ts,
        Direction::Forward => candidate >= ts,
    }
}

/// Whether `candidate` is on the `dir` side of `ts` and closer to it than
/// `best` (None: anything on that side is).
fn better(candidate: u64, ts: u64, dir: Direction, best: Option<u64>) -> bool {
    on_side(candidate, ts, dir)
        && best.is_none_or(|best| match dir {
            Direction::Backward => candidate > best,
            Direction::Forward => candidate < best,
        })
}

fn ts_of(event: &StoredEvent) -> u64 {
    u64::from(event.pdu.origin_server_ts.get())
}

/// The event of `room_id` closest to `ts` in direction `dir`, asking other
/// servers when this one may not hold it (see the module's documentation).
pub async fn closest(
    svc: &Services,
    room_id: &RoomId,
    ts: u64,
    dir: Direction,
) -> Result<Option<StoredEvent>, RoomError> {
    let local = svc.storage.event_near_timestamp(room_id, ts, dir).await?;
    let gaps = match (&local, dir) {
        (Some(event), _) => match gaps_beside(svc, event, dir).await? {
            Some(gaps) => gaps,
            None => return Ok(local),
        },
        (None, Direction::Backward) => Vec::new(),
        // Nothing at or after `ts`: this server's timeline goes on to the
        // room's newest event, so no server has anything newer.
        (None, Direction::Forward) => return Ok(None),
    };
    let mut best = local;
    let servers = backfill::candidates(svc, room_id, &gaps).await?;
    for server in servers.into_iter().take(SERVERS_ASKED) {
        let request = get_event_by_timestamp::v1::Request::new(
            room_id.to_owned(),
            MilliSecondsSinceUnixEpoch(ts.try_into().unwrap_or_default()),
            match dir {
                Direction::Backward => ruma::api::Direction::Backward,
                Direction::Forward => ruma::api::Direction::Forward,
            },
        );
        let answer = match svc.federation.send(&server, request).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(%server, %room_id, error = %e, "timestamp_to_event request failed");
                continue;
            }
        };
        let claimed = u64::from(answer.origin_server_ts.get());
        if !better(claimed, ts, dir, best.as_ref().map(ts_of)) {
            if !on_side(claimed, ts, dir) {
                // Not what was asked: this server is of no help.
                tracing::info!(%server, %room_id, "timestamp_to_event answer on the wrong side of the time");
                continue;
            }
            // Ours is as close as what it holds.
            break;
        }
        let Some(event) = backfill::fetch_event(svc, room_id, &answer.event_id, Some(&server)).await? else {
            continue;
        };
        // What the event says, not what the server claimed.
        if better(ts_of(&event), ts, dir, best.as_ref().map(ts_of)) {
            best = Some(event);
            break;
        }
        tracing::info!(%server, %room_id, "timestamp_to_event answer's event is not closer than claimed");
    }
    Ok(best)
}

/// When `event` (the closest held on the `dir` side of a time) sits next to
/// a gap on the side of that time, the gaps there (backward extremities;
/// possibly none known); None when its neighbour on that side is held.
async fn gaps_beside(
    svc: &Services,
    event: &StoredEvent,
    dir: Direction,
) -> Result<Option<Vec<ruma::OwnedEventId>>, RoomError> {
    let room_id = &event.pdu.room_id;
    match dir {
        // The time is before the event: is its parent held?
        Direction::Forward => {
            if event.pdu.kind == TimelineEventType::RoomCreate {
                return Ok(None);
            }
            let extremities = svc.storage.backward_extremities(room_id).await?;
            let gaps: Vec<_> = event
                .pdu
                .prev_events
                .iter()
                .filter(|prev| extremities.iter().any(|(id, _)| id == *prev))
                .cloned()
                .collect();
            Ok((!gaps.is_empty()).then_some(gaps))
        }
        // The time is after the event: is a child held, or is it the newest?
        Direction::Backward => {
            if !svc.storage.children(&event.pdu.event_id).await?.is_empty() {
                return Ok(None);
            }
            let newest = svc.storage.forward_extremities(room_id).await?;
            Ok((!newest.iter().any(|(id, _)| *id == event.pdu.event_id)).then(Vec::new))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn better_is_on_the_side_and_closer() {
        assert!(better(90, 100, Direction::Backward, None));
        assert!(better(100, 100, Direction::Backward, Some(50)));
        assert!(!better(101, 100, Direction::Backward, None));
        assert!(!better(40, 100, Direction::Backward, Some(50)));
        assert!(!better(50, 100, Direction::Backward, Some(50)));
        assert!(better(110, 100, Direction::Forward, None));
        assert!(better(100, 100, Direction::Forward, Some(150)));
        assert!(!better(99, 100, Direction::Forward, None));
        assert!(!better(160, 100, Direction::Forward, Some(150)));
    }
}
