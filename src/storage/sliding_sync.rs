//! What storage keeps for simplified sliding sync (MSC4186): each
//! connection's positions (the answers given, with the stream heads each was
//! computed up to) and what each answer sent of each room, so that the next
//! answer sends only what changed; and the rooms' activity that orders a
//! room list. A supertrait of [`super::Storage`].
//!
//! Everything is in the database, nothing is kept by a process: a client's
//! requests may reach different processes. The positions of one connection
//! form a chain: when the client asks from a position, the answers it did not
//! take (those after it, or made beside it by a concurrent request) are
//! forgotten, so that what is "sent as of a position" is what the client
//! received.

use std::collections::HashMap;

use async_trait::async_trait;
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};

use super::{Result, StreamOrdering};

/// A sliding sync connection: one device's series of answers, named by the
/// client's `conn_id` ("" when it gives none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlidingConnection {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub conn_id: String,
}

/// What an answer of a connection told its client about a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRoom {
    pub room_id: OwnedRoomId,
    /// The events stream position the room's timeline and state were sent up to.
    pub upto: StreamOrdering,
    /// The configuration it was sent with (required_state, timeline_limit): JSON, opaque here.
    pub config: String,
}

/// A room's activity, for ordering a room list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomActivity {
    /// The stream position of its newest live event (any type).
    pub latest: StreamOrdering,
    /// The stream position of its newest live event of one of the bump types; None when it has none.
    pub bump: Option<StreamOrdering>,
}

#[async_trait]
pub trait SlidingSyncStorage: Send + Sync + 'static {
    /// The stream heads (opaque text) of position `pos` of `conn`, or None when the connection has no
    /// such position (never made, made by another connection, or forgotten). Positions of `conn` after
    /// `pos` are forgotten, with their room records: answers the client never acknowledged, since it asks
    /// again from `pos`. So are the positions before `pos` (the client has moved past them; the room
    /// records in force at `pos` stay) and the records of answers made beside `pos`, after the position it
    /// followed (a concurrent request's, which the client did not take). Marks the connection used now.
    ///
    /// Call it before [`Self::sliding_sent_rooms`] and [`Self::new_sliding_position`] with `pos`: it is
    /// what keeps the records of a connection those of the answers its client took.
    async fn sliding_position(&self, conn: &SlidingConnection, pos: i64) -> Result<Option<String>>;

    /// What `conn` had sent of each of `rooms` as of position `pos`: per room, the newest record made
    /// at or before `pos`. Rooms never sent are absent. One query, not one per room.
    async fn sliding_sent_rooms(
        &self,
        conn: &SlidingConnection,
        pos: i64,
        rooms: &[OwnedRoomId],
    ) -> Result<HashMap<OwnedRoomId, SentRoom>>;

    /// A new position of `conn` following `after`, with its heads and the rooms sent in its answer;
    /// returns its number: unique across all connections and increasing (a sequence / AUTOINCREMENT,
    /// never reused). `after` None: the connection starts afresh — all its earlier positions and room
    /// records are forgotten first. With `after`, for each room in `sent`, its records older than the
    /// one in force at `after` are dropped, so a room keeps at most a few records whatever the number of
    /// answers. One transaction.
    ///
    /// [`super::StorageError::NotFound`] when `after` is not (or no longer) a position of `conn`: the
    /// answer was computed from a position forgotten meanwhile (the client asked from another one, or
    /// started afresh), and is stale. A room listed twice in `sent` counts once (the last).
    async fn new_sliding_position(
        &self,
        conn: &SlidingConnection,
        after: Option<i64>,
        heads: &str,
        sent: &[SentRoom],
    ) -> Result<i64>;

    /// Forgets connections not used since `unused_since_ms` (milliseconds since the epoch), with their
    /// positions and records; returns how many.
    async fn forget_sliding_connections(&self, unused_since_ms: u64) -> Result<u64>;

    /// Per room of `rooms`: its activity among its live events (stream ordering > 0, backfilled history
    /// has negative positions) at or before `upto`. Rooms with no such event are absent. Live events are
    /// those of the timeline, as [`super::Storage::stream_page`] has them: outliers, rejected and
    /// soft-failed events do not count; `bump` is the newest of one of [`BUMP_TYPES`].
    ///
    /// Each room's newest live event and newest bump event are kept with the room as events are written
    /// (in the same transaction): one lookup per room, whatever its history. A room written to after
    /// `upto` (a write racing the caller's read of the stream head) is walked back from `upto` on the
    /// index of events by (room, stream ordering) instead, through at most [`BUMP_WINDOW`] events for
    /// its bump event.
    async fn room_activity(
        &self,
        rooms: &[OwnedRoomId],
        upto: StreamOrdering,
    ) -> Result<HashMap<OwnedRoomId, RoomActivity>>;
}

/// Event types whose arrival moves a room up a room list (`bump_stamp`), as
/// Synapse and MSC4186 name them.
pub const BUMP_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// How far back [`SlidingSyncStorage::room_activity`]'s walk looks for a bump event, when it walks.
pub const BUMP_WINDOW: i64 = 1000;

/// The bump types as one SQL list literal (`'m.room.create', …`): constants, so written into
/// statements rather than bound.
pub(crate) fn bump_types_sql() -> String {
    BUMP_TYPES
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sent` without repeated rooms (the last of each kept), in order.
pub(crate) fn distinct_rooms(sent: &[SentRoom]) -> Vec<&SentRoom> {
    let mut last: HashMap<&OwnedRoomId, usize> = HashMap::with_capacity(sent.len());
    for (i, room) in sent.iter().enumerate() {
        last.insert(&room.room_id, i);
    }
    sent.iter()
        .enumerate()
        .filter(|(i, room)| last.get(&room.room_id) == Some(i))
        .map(|(_, room)| room)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The migrations that first filled the rooms' bump stamps used the
    /// same types as the writes that keep them.
    #[test]
    fn migrations_name_the_bump_types() {
        for schema in [
            include_str!("sqlite/schema_v23.sql"),
            include_str!("postgres/schema_v6.sql"),
        ] {
            let listed = schema.split("e.type IN (").nth(1).unwrap().split(')').next().unwrap();
            let listed: Vec<&str> = listed.split(',').map(|t| t.trim().trim_matches('\'')).collect();
            assert_eq!(listed, BUMP_TYPES);
        }
    }
}
