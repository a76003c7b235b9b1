//! What storage keeps of rooms joined with partial state (a "faster
//! join", MSC3706): the join, and the servers the resident server said
//! were in the room, until the full state at the join is fetched and the
//! room's current state completed with it ([`crate::rooms::partial_state`]).
//! A supertrait of [`super::Storage`]. The marks are in the database: any
//! process of a cluster sees a room as partial, and any one resumes the
//! resync after a restart.

use async_trait::async_trait;
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, RoomId};

use super::{CurrentStateChange, Result, StateGroupId, StateKey, StreamOrdering};

/// A room joined with partial state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialState {
    pub room_id: OwnedRoomId,
    /// The local join the partial state was given with: the full state is
    /// fetched at it.
    pub join_event_id: OwnedEventId,
    /// The servers in the room at the join (`servers_in_room` of the
    /// `send_join` answer, the server joined through first): where the
    /// full state is fetched from, and where events go meanwhile.
    pub servers: Vec<OwnedServerName>,
}

#[async_trait]
pub trait PartialStateStorage: Send + Sync + 'static {
    /// Marks a room partial (before its join is stored: a crash between
    /// leaves a mark that the resync finds without a join, and drops).
    async fn mark_partial_state(&self, partial: &PartialState) -> Result<()>;
    /// The mark of a room, if it is partial.
    async fn partial_state(&self, room_id: &RoomId) -> Result<Option<PartialState>>;
    /// Every room still partial.
    async fn partial_state_rooms(&self) -> Result<Vec<PartialState>>;
    /// The rooms partial (`None`) and those whose partial state was
    /// completed after the events stream position `after` (`Some`: the
    /// completion's position): few, whatever the number of rooms. A
    /// `/sync` that leaves partial rooms out sends the others in full once
    /// its range covers the completion.
    async fn partial_states_since(&self, after: StreamOrdering) -> Result<Vec<(OwnedRoomId, Option<StreamOrdering>)>>;
    /// Drops the mark of a room (whose join never landed, say), partial or
    /// completed.
    async fn drop_partial_state(&self, room_id: &RoomId) -> Result<()>;
    /// Completes a partial room with what its partial state lacked, and
    /// marks it complete, in one transaction: the state at the join (group
    /// `completion.partial_group`) and every state after it gain the
    /// `additions` they have no entry for (the states derived from the
    /// partial one by deltas inherit them; the snapshots after the join are
    /// those whose entry for the joiner is the join or later); the events
    /// of `rejections` become rejected (their cached copies dropped, in
    /// every process): each leaves the forward extremities (its accepted
    /// parents left without an accepted child become ones again), and a
    /// state event's entry in the states from the join on becomes the one
    /// it replaced; the current-state table takes `current_changes`. The
    /// one place a stored state changes: it was always meant to be so.
    /// The completion takes a position of the events stream (returned; the
    /// other processes hear of it as of an event of the room), which the
    /// mark keeps ([`Self::partial_states_since`]).
    async fn complete_partial_state(&self, completion: &Completion) -> Result<StreamOrdering>;
}

/// What [`PartialStateStorage::complete_partial_state`] writes.
#[derive(Debug, Clone)]
pub struct Completion {
    pub room_id: OwnedRoomId,
    /// The join the mark is of (a mark of a later join stays).
    pub join_event_id: OwnedEventId,
    /// The state before the join (a snapshot).
    pub partial_group: StateGroupId,
    /// The joiner's membership key, and the join's depth.
    pub joiner: String,
    pub join_depth: i64,
    /// The entries of the full state at the join that the partial one lacks.
    pub additions: Vec<(StateKey, OwnedEventId)>,
    /// The events received while partial that the full state refuses, in
    /// the order they were received.
    pub rejections: Vec<Rejection>,
    /// What the room's current state gains (the additions it lacks) and
    /// loses (a rejected event's entry becomes the one it replaced).
    pub current_changes: Vec<CurrentStateChange>,
}

/// An event received while its room was partial, accepted then, that the
/// full state refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub event_id: OwnedEventId,
    pub reason: String,
    /// For a state event: its key, and the entry the states holding the
    /// event take instead (the one it replaced; none: the key leaves them).
    pub state: Option<(StateKey, Option<OwnedEventId>)>,
}
