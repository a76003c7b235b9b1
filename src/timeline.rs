//! The room timeline as clients page through it, and the tokens that
//! mark places in it.
//!
//! Two kinds of token:
//! - `t<depth>_<stream>`: a topological place, the gap just after the
//!   event with that key. `/messages` and `/context` use these; they keep
//!   their meaning when older history is inserted later, because inserted
//!   history has lower depths (and negative stream orderings).
//! - `s<stream>`: a place in arrival order, as `/sync` hands out
//!   (`next_batch`). Accepted as a `/messages` `from` too: it stands for
//!   the place just after the newest event that had arrived by then.

use std::fmt;

use ruma::{RoomId, UserId, api::client::filter::RoomEventFilter};

use crate::{
    services::Services,
    storage::{Direction, Result, StoredEvent, StreamOrdering, TopoKey},
    visibility,
};

/// How many storage pages one request may scan to fill a page of
/// visible events.
const MAX_SCAN_ROUNDS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Topo(TopoKey),
    Stream(StreamOrdering),
}

impl Token {
    pub fn parse(s: &str) -> Option<Token> {
        if let Some(rest) = s.strip_prefix('t') {
            let (depth, stream) = rest.split_once('_')?;
            return Some(Token::Topo(TopoKey {
                depth: depth.parse().ok()?,
                stream: stream.parse().ok()?,
            }));
        }
        // `s<stream>` or, from /sync, `s<stream>_<ephemeral position>`.
        let rest = s.strip_prefix('s')?;
        rest.split('_').next()?.parse().ok().map(Token::Stream)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Topo(k) => write!(f, "t{}_{}", k.depth, k.stream),
            Token::Stream(s) => write!(f, "s{s}"),
        }
    }
}

/// The gap just after `event`.
pub fn after(event: &StoredEvent) -> TopoKey {
    TopoKey {
        depth: event.pdu.depth as i64,
        stream: event.meta.stream_ordering,
    }
}

/// The gap just before `event`.
pub fn before(event: &StoredEvent) -> TopoKey {
    TopoKey {
        depth: event.pdu.depth as i64,
        stream: event.meta.stream_ordering - 1,
    }
}

pub const START: TopoKey = TopoKey {
    depth: i64::MIN,
    stream: i64::MIN,
};
pub const END: TopoKey = TopoKey {
    depth: i64::MAX,
    stream: i64::MAX,
};

/// Resolves a token to a topological gap in `room_id`.
pub async fn gap(svc: &Services, room_id: &RoomId, token: Token) -> Result<TopoKey> {
    match token {
        Token::Topo(key) => Ok(key),
        Token::Stream(stream) => Ok(svc.storage.topo_key_at_stream(room_id, stream).await?.unwrap_or(START)),
    }
}

/// A page of visible events and where to continue (None: the end).
pub struct Page {
    pub events: Vec<StoredEvent>,
    pub next: Option<TopoKey>,
}

/// Who is reading: visibility depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    pub user: &'a UserId,
    /// Whether the user is a member of the room at present.
    pub joined_now: bool,
    /// The events the reader asked for (a `RoomEventFilter`'s types,
    /// senders, URL condition); `None`: all.
    pub filter: Option<&'a RoomEventFilter>,
}

/// Where a page starts, which way it goes, where it must stop.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub from: TopoKey,
    pub to: Option<TopoKey>,
    pub dir: Direction,
    pub limit: usize,
}

/// Pages through a room's timeline, keeping what the reader may see.
pub async fn paginate(svc: &Services, room_id: &RoomId, reader: Reader<'_>, req: PageRequest) -> Result<Page> {
    let PageRequest { from, to, dir, limit } = req;
    let mut events = Vec::new();
    let mut gap = from;
    let mut exhausted = false;
    for _ in 0..MAX_SCAN_ROUNDS {
        let want = limit - events.len();
        let batch = svc.storage.timeline_page(room_id, gap, dir, want).await?;
        let full = batch.len() == want;
        let mut candidates = Vec::with_capacity(batch.len());
        for event in batch {
            let key = after(&event);
            let beyond = match (dir, to) {
                (Direction::Backward, Some(to)) => key <= to,
                (Direction::Forward, Some(to)) => key > to,
                (_, None) => false,
            };
            if beyond {
                exhausted = true;
                break;
            }
            gap = match dir {
                Direction::Backward => before(&event),
                Direction::Forward => key,
            };
            if reader
                .filter
                .is_none_or(|f| crate::filter::event_matches(f, &event.pdu))
            {
                candidates.push(event);
            }
        }
        events.extend(visibility::filter_for_user(svc, reader.user, reader.joined_now, candidates).await?);
        if !full {
            exhausted = true;
        }
        if exhausted || events.len() >= limit {
            break;
        }
    }
    Ok(Page {
        events,
        next: (!exhausted).then_some(gap),
    })
}

/// How many times one page may fill gaps and read again.
const MAX_FILL_ROUNDS: usize = 3;
/// How many times a page going forward that would stop empty at a gap
/// (its whole reach missing) may fill it before it goes on past the gap.
const MAX_FORWARD_FILL_ROUNDS: usize = 10;

/// As [`paginate`], but a page that would cross a gap in the room's
/// history (a backward extremity within its reach) first fills the gap from
/// other servers ([`crate::backfill::fill`]) and reads again, so that the
/// page comes back complete. A page that crosses no gap asks no other
/// server anything. When history cannot be had, the page is what this
/// server holds.
///
/// Going back, a gap is filled from its top, where the page meets it.
/// Going forward from a place in history (a `/context` of an event fetched
/// alone, an island), the gap above is filled from its top too — down
/// towards the page — as the federation API walks history only backward:
/// after [`MAX_FILL_ROUNDS`] fills (more, up to [`MAX_FORWARD_FILL_ROUNDS`],
/// while the page would be empty) a gap still open ends the page below it,
/// and the next page fills on. A forward page from the room's start
/// ([`START`]) fills nothing: it begins where this server's history does.
pub async fn paginate_filling(svc: &Services, room_id: &RoomId, reader: Reader<'_>, req: PageRequest) -> Result<Page> {
    let mut round = 0;
    loop {
        let page = paginate(svc, room_id, reader, req).await?;
        round += 1;
        if req.dir == Direction::Forward && req.from == START {
            return Ok(page);
        }
        let gaps = crossed_gaps(svc, room_id, &req, &page).await?;
        if gaps.is_empty() {
            return Ok(page);
        }
        if round > MAX_FILL_ROUNDS {
            match req.dir {
                Direction::Backward => return Ok(page),
                Direction::Forward => {
                    let kept = below_gaps(&page, req.from, &gaps);
                    if !kept.events.is_empty() || round > MAX_FORWARD_FILL_ROUNDS {
                        return Ok(kept);
                    }
                }
            }
        }
        let ids: Vec<_> = gaps.into_iter().map(|(id, _)| id).collect();
        let want = match req.dir {
            Direction::Backward => req.limit,
            // The gap's top is not where the page is: fill as much as a
            // request brings.
            Direction::Forward => crate::federation_api::MAX_HISTORY_PAGE,
        };
        match crate::backfill::fill(svc, room_id, &ids, want).await {
            Ok(crate::backfill::Filled::Added(0)) => return Ok(page),
            Ok(_) => {}
            Err(e) => {
                tracing::info!(%room_id, error = %e, "backfill failed; serving what is held");
                return Ok(page);
            }
        }
    }
}

/// The gaps (backward extremities, with their approximate depths) within
/// the reach of `page`, read for `req`: going back, those at or below its
/// start down to where it reached (short: to the bottom); going forward,
/// those above its start up to where it reached (short: to the top),
/// highest first.
async fn crossed_gaps(
    svc: &Services,
    room_id: &RoomId,
    req: &PageRequest,
    page: &Page,
) -> Result<Vec<(ruma::OwnedEventId, i64)>> {
    let reach = page.next.map(|gap| gap.depth);
    let mut gaps: Vec<_> = svc
        .storage
        .backward_extremities(room_id)
        .await?
        .into_iter()
        .filter(|(_, depth)| match req.dir {
            Direction::Backward => *depth <= req.from.depth && reach.is_none_or(|low| *depth >= low),
            Direction::Forward => *depth > req.from.depth && reach.is_none_or(|high| *depth <= high),
        })
        .collect();
    gaps.sort_by_key(|(_, depth)| std::cmp::Reverse(*depth));
    Ok(gaps)
}

/// A forward page cut below the lowest of `gaps`: the events that are not
/// past a gap still open, and the place after the last of them to go on
/// from (`from` when none is kept).
fn below_gaps(page: &Page, from: TopoKey, gaps: &[(ruma::OwnedEventId, i64)]) -> Page {
    let lowest = gaps.iter().map(|(_, depth)| *depth).min().unwrap_or(i64::MAX);
    let events: Vec<StoredEvent> = page
        .events
        .iter()
        .take_while(|event| (event.pdu.depth as i64) <= lowest)
        .cloned()
        .collect();
    let next = events.last().map_or(from, after);
    Page {
        events,
        next: Some(next),
    }
}
