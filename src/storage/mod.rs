//! Storage: the one interface the rest of weft uses to keep things.
//!
//! [`Storage`] speaks the protocol's concepts (events, their edges, the
//! two orders, extremities, state groups, accounts) rather than tables, so
//! that a PostgreSQL implementation can stand beside the embedded SQLite
//! one ([`sqlite::SqliteStorage`]). Writes that belong together — an event,
//! its edges, its state group, the new extremities and current state, the
//! client's transaction ID — are one call and one database transaction.

pub mod appservice;
pub mod copy;
pub mod e2e;
mod event_cache;
pub mod media;
pub mod partial_state;
pub mod postgres;
pub mod push;
pub mod sliding_sync;
pub mod sqlite;
pub mod threepid;
pub mod user_directory;

use std::sync::Arc;

use async_trait::async_trait;
use ruma::{
    OwnedDeviceId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, RoomId,
    RoomVersionId, ServerName, UserId, events::StateEventType,
};

use crate::events::Pdu;

/// Arrival order. Live events count up from 1; backfilled history will
/// count down from -1, so it sorts before everything that was live.
pub type StreamOrdering = i64;
/// The ID of a stored room state (a snapshot, or a delta on another).
pub type StateGroupId = i64;
/// `(event type, state key)`.
pub type StateKey = (StateEventType, String);

/// One stored state group as written: a snapshot (the first group of a
/// chain) or its changes on the group before it in the chain. `None`
/// removes a key.
#[derive(Debug, Clone)]
pub struct StoredGroup {
    pub id: StateGroupId,
    pub entries: Vec<(StateKey, Option<OwnedEventId>)>,
}

/// The state a chain of groups ([`Storage::state_group_chain`]) ends in,
/// given their entries in the chain's order.
pub fn fold_chain(chain: Vec<StoredGroup>) -> Vec<(StateKey, OwnedEventId)> {
    let mut state: std::collections::HashMap<StateKey, OwnedEventId> = std::collections::HashMap::new();
    for group in chain {
        for (key, event_id) in group.entries {
            match event_id {
                Some(event_id) => state.insert(key, event_id),
                None => state.remove(&key),
            };
        }
    }
    state.into_iter().collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    /// The database server cannot be reached (down, restarting, every
    /// connection busy): the operation did not happen, and may be tried
    /// again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The write lost a race with another writer (a serialization failure
    /// or a deadlock) and was rolled back: run it again.
    #[error("write conflict: {0}")]
    Conflict(String),
    /// The disk holding the database is full: the write did not happen
    /// (reads still work).
    #[error("the database's disk is full: {0}")]
    DiskFull(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A stored identifier, parsed (an invalid one is corruption).
pub(crate) fn parse<T: TryFrom<String>>(value: String) -> Result<T> {
    T::try_from(value.clone()).map_err(|_| StorageError::Corrupt(format!("stored identifier {value:?} is invalid")))
}

/// Now, in milliseconds since the epoch, for the `*_ts` columns.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// For a room's `m.room.create` event, the room version it names (`1`
/// when it names none): storing it creates the room.
pub(crate) fn created_room_version(pdu: &Pdu) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Create {
        room_version: Option<String>,
    }
    (pdu.kind == ruma::events::TimelineEventType::RoomCreate).then(|| {
        serde_json::from_str::<Create>(pdu.content.get())
            .ok()
            .and_then(|c| c.room_version)
            .unwrap_or_else(|| "1".to_owned())
    })
}

/// Opens the storage the configuration names: the PostgreSQL database of
/// `database_url`, or else the SQLite file in `data_dir`.
pub async fn open(config: &crate::config::Config) -> Result<Arc<dyn Storage>> {
    Ok(open_with_cluster(config).await?.0)
}

/// [`open`], with how the process coordinates with the others over that
/// storage: the PostgreSQL storage itself, or, on SQLite (one process
/// owns the file), [`crate::cluster::InProcess`].
pub async fn open_with_cluster(
    config: &crate::config::Config,
) -> Result<(Arc<dyn Storage>, Arc<dyn crate::cluster::Cluster>)> {
    Ok(match &config.database_url {
        Some(url) => {
            let pg = Arc::new(postgres::PgStorage::connect_as(url, config.instance_name.as_deref()).await?);
            (pg.clone(), pg)
        }
        None => (
            Arc::new(sqlite::SqliteStorage::open(&config.data_dir)?),
            Arc::new(crate::cluster::InProcess),
        ),
    })
}

/// What the server knows about a held event beyond its JSON.
#[derive(Debug, Clone)]
pub struct EventMeta {
    pub stream_ordering: StreamOrdering,
    /// Held without the state before it (no place in the timeline).
    pub outlier: bool,
    pub rejected: Option<String>,
    pub soft_failed: bool,
    /// The redaction event that was applied to this event.
    pub redacted_by: Option<OwnedEventId>,
    pub state_group_before: Option<StateGroupId>,
    pub state_group_after: Option<StateGroupId>,
    /// For a state event: the event it replaced in the room state.
    pub replaces_state: Option<OwnedEventId>,
    /// The sender's device and transaction ID, for a local event sent
    /// with one.
    pub txn: Option<(OwnedDeviceId, String)>,
}

/// A held event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub pdu: Arc<Pdu>,
    pub meta: EventMeta,
}

/// What the auth and state work needs of a held event but its JSON: its
/// room, its state key and whether it was rejected ([`Storage::event_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    /// The event's `type`.
    pub kind: String,
    pub state_key: Option<String>,
    pub rejected: bool,
}

impl EventKey {
    /// The entry the event makes in a state: none if it is rejected or
    /// not a state event.
    pub fn state_entry(self) -> Option<(StateKey, OwnedEventId)> {
        match self.state_key {
            Some(state_key) if !self.rejected => Some(((StateEventType::from(self.kind), state_key), self.event_id)),
            _ => None,
        }
    }
}

/// The topological position of an event: `(depth, stream_ordering)`.
/// Pagination follows this order; it keeps its meaning when older history
/// is inserted later (that history has lower depths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopoKey {
    pub depth: i64,
    pub stream: StreamOrdering,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Backward,
    Forward,
}

/// A state to store: an existing group, or a delta on top of one.
#[derive(Debug, Clone)]
pub enum StateWrite {
    Existing(StateGroupId),
    /// The state after an event in the room's timeline (stored before, or
    /// earlier in the same batch: its group is not known to the caller).
    AfterEvent(OwnedEventId),
    Delta {
        base: Option<StateGroupId>,
        changes: Vec<(StateKey, OwnedEventId)>,
    },
}

/// A change to the current state of a room (for its current-state table).
#[derive(Debug, Clone)]
pub struct CurrentStateChange {
    pub key: StateKey,
    /// `None`: the key left the state (possible after state resolution).
    pub event_id: Option<OwnedEventId>,
}

/// The client transaction an event was sent under.
#[derive(Debug, Clone)]
pub struct TxnKey {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// The endpoint, e.g. `send/{room}/{type}`: the same ID on another
    /// path is another transaction.
    pub scope: String,
    pub txn_id: String,
}

/// An event to add to a room's timeline (not an outlier).
#[derive(Debug, Clone)]
pub struct NewTimelineEvent {
    pub pdu: Arc<Pdu>,
    /// History fetched from another server, older than what was live: it
    /// gets a negative stream ordering (so `/sync` never shows it as new)
    /// and is never a forward extremity.
    pub backfilled: bool,
    /// Accepted, or kept without taking part (see [`TimelineStatus`]).
    pub status: TimelineStatus,
    pub state_before: StateWrite,
    pub replaces_state: Option<OwnedEventId>,
    /// When set, the room's current state changes with this event.
    pub current_state: Option<CurrentStateUpdate>,
    pub txn: Option<TxnKey>,
    /// When the event self-destructs (MSC2228), in milliseconds since the
    /// epoch: its content is pruned then.
    pub expires_at: Option<u64>,
    /// The local users the event notifies (their push rules applied before
    /// it is stored): written with it, a push queued for each of their HTTP
    /// pushers (as [`push::PushStorage::add_notifications`]).
    pub notifications: Vec<push::NewNotification>,
}

/// How an event from the timeline's point of view fared in the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineStatus {
    Accepted,
    /// Allowed by the state before it but not by the current state: kept,
    /// not shown to clients, not a forward extremity.
    SoftFailed,
    /// Failed the auth rules: kept (so it is not fetched again), never
    /// state, never shown, never a parent of local events.
    Rejected(String),
}

impl TimelineStatus {
    /// The event row's `rejected` reason and `soft_failed` flag.
    pub fn row_flags(&self) -> (Option<&str>, bool) {
        match self {
            TimelineStatus::Accepted => (None, false),
            TimelineStatus::SoftFailed => (None, true),
            TimelineStatus::Rejected(reason) => (Some(reason.as_str()), false),
        }
    }
}

/// A new current state for a room.
#[derive(Debug, Clone)]
pub struct CurrentStateUpdate {
    pub state: NewCurrentState,
    /// The differences from the previous current state.
    pub changes: Vec<CurrentStateChange>,
}

#[derive(Debug, Clone)]
pub enum NewCurrentState {
    /// The state after the event being persisted (it is the room's only
    /// forward extremity, or its state resolves the others away).
    AfterEvent,
    /// Another state (e.g. the previous current state plus an event that
    /// joined the DAG on a fork).
    Write(StateWrite),
}

/// What persisting a timeline event produced.
#[derive(Debug, Clone)]
pub struct Persisted {
    pub stream_ordering: StreamOrdering,
    pub state_group_before: StateGroupId,
    pub state_group_after: StateGroupId,
    /// The room's new current state, when it changed.
    pub current_state_group: Option<StateGroupId>,
    /// Accepted redactions of this event that were held before it (it
    /// came after them: history arrives newest first).
    pub earlier_redactions: Vec<OwnedEventId>,
    /// The event became one of the room's forward extremities (its
    /// parents, then, stopped being ones).
    pub forward_extremity: bool,
    /// Its notifications queued pushes (the push sender has work).
    pub pushes_queued: bool,
}

#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    pub current_state_group: Option<StateGroupId>,
    pub published: bool,
}

/// A user's membership in a room, from the current state.
#[derive(Debug, Clone)]
pub struct Membership {
    pub room_id: OwnedRoomId,
    pub user_id: OwnedUserId,
    pub membership: String,
    pub event_id: OwnedEventId,
    pub stream_ordering: StreamOrdering,
}

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub user_id: OwnedUserId,
    pub password_hash: Option<String>,
    pub admin: bool,
    pub deactivated: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    /// A guest account (client-server "Guest access").
    pub is_guest: bool,
}

/// The user and device an access token stands for.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// The account is a guest's: the client API it may use is limited.
    pub is_guest: bool,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<u64>,
    pub last_seen_ip: Option<String>,
    pub last_seen_user_agent: Option<String>,
}

/// A signing key of another server, from a key document whose signatures
/// checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    /// Until when (ms) the key may be used.
    pub valid_until_ts: u64,
    /// For an old verify key: when it expired.
    pub expired_ts: Option<u64>,
}

/// An invite of a local user to a room held elsewhere.
#[derive(Debug, Clone)]
pub struct RemoteInvite {
    pub user_id: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    /// Set by storage: the invite event's place in the stream.
    pub stream_ordering: StreamOrdering,
    pub room_version: RoomVersionId,
    /// The stripped state events the inviting server sent, as JSON.
    pub invite_state: String,
    /// The inviting server: the one to join or reject through.
    pub via: OwnedServerName,
    /// "invite", or "leave" once rejected (`event_id` is then the leave).
    pub membership: String,
}

/// A read receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub room_id: OwnedRoomId,
    pub user_id: OwnedUserId,
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
    pub event_id: OwnedEventId,
    pub ts: u64,
    /// Its position on the ephemeral stream; ignored by
    /// [`Storage::put_receipt`], which takes one.
    pub position: i64,
}

/// A change of whether a user is typing in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typing {
    /// Typing until then (ms since the epoch); renews a running timeout.
    Until(u64),
    /// Stopped typing.
    Stopped,
    /// The timeout of [`Typing::Until`] with this time ran out (nothing
    /// changes if the user renewed it or stopped since).
    Expired(u64),
}

/// Who types in a room now, and the position of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomTyping {
    pub room_id: OwnedRoomId,
    pub position: i64,
    /// Sorted.
    pub users: Vec<OwnedUserId>,
}

impl RoomTyping {
    /// Rooms from rows of `(room, its position, a user typing there or
    /// none)`, a room's rows together (both backends' `typing` query).
    pub(crate) fn from_rows(
        rows: impl IntoIterator<Item = Result<(String, i64, Option<String>)>>,
    ) -> Result<Vec<Self>> {
        let mut rooms: Vec<RoomTyping> = Vec::new();
        for row in rows {
            let (room, position, user) = row?;
            let room_id: OwnedRoomId = parse(room)?;
            if rooms.last().is_none_or(|last| last.room_id != room_id) {
                rooms.push(RoomTyping {
                    room_id,
                    position,
                    users: Vec::new(),
                });
            }
            if let (Some(user), Some(room)) = (user, rooms.last_mut()) {
                room.users.push(parse(user)?);
            }
        }
        for room in &mut rooms {
            room.users.sort();
        }
        Ok(rooms)
    }
}

/// A piece of a user's account data, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountData {
    /// `None` for global account data.
    pub room_id: Option<OwnedRoomId>,
    /// The event type, e.g. `m.tag`.
    pub data_type: String,
    /// The content, a JSON object.
    pub content: String,
    /// The account data stream position of its last change.
    pub position: i64,
}

/// A user's presence (a local user's or another server's), as last
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRecord {
    pub user_id: OwnedUserId,
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    pub status_msg: Option<String>,
    /// When the user was last active (ms since the epoch; 0: never).
    pub last_active_ts: i64,
    pub currently_active: bool,
    /// The last activity or explicit change (ms since the epoch).
    pub updated_ts: i64,
    /// The presence stream position of the last change a client would
    /// see.
    pub position: i64,
}

impl PresenceRecord {
    /// What storage starts from for a user it holds nothing of: offline,
    /// never active.
    pub fn unknown(user_id: &UserId, now: i64) -> Self {
        PresenceRecord {
            user_id: user_id.to_owned(),
            state: "offline".to_owned(),
            status_msg: None,
            last_active_ts: 0,
            currently_active: false,
            updated_ts: now,
            position: 0,
        }
    }

    /// What a client sees of it (a change of this takes a new position).
    pub fn visible(&self) -> (&str, Option<&str>, bool) {
        (&self.state, self.status_msg.as_deref(), self.currently_active)
    }
}

/// A change of one user's presence, which storage applies to what it holds
/// (or to [`PresenceRecord::unknown`]) under that user's lock, so that
/// changes made through several processes at once all count; it may be
/// applied again when the write is retried. It returns whether the record
/// must be stored although nothing a client sees changed (its times moved
/// far enough to matter).
pub type PresenceChange = Arc<dyn Fn(&mut PresenceRecord) -> bool + Send + Sync>;

/// What [`Storage::change_presence`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceWrite {
    /// Nothing stored; what is held (the unknown record if nothing is).
    Unchanged(PresenceRecord),
    /// Only the record's times were stored (no new position).
    Touched(PresenceRecord),
    /// A change clients see, at a new position of the presence stream
    /// (other processes are told `<process> presence <position> <user>`).
    Changed(PresenceRecord),
}

/// Everything weft keeps, behind one interface.
#[async_trait]
pub trait Storage:
    e2e::E2eStorage
    + push::PushStorage
    + appservice::AppserviceStorage
    + user_directory::UserDirectoryStorage
    + user_directory::OpenIdStorage
    + threepid::ThreepidStorage
    + media::MediaStorage
    + sliding_sync::SlidingSyncStorage
    + partial_state::PartialStateStorage
    + Send
    + Sync
    + 'static
{
    // ----- accounts -----
    async fn create_user(&self, user: UserRecord) -> Result<()>;
    async fn user(&self, user_id: &UserId) -> Result<Option<UserRecord>>;
    async fn set_password_hash(&self, user_id: &UserId, hash: &str) -> Result<()>;
    /// Marks a (deactivated) user erased, and drops their account data.
    async fn erase_user(&self, user_id: &UserId) -> Result<()>;
    /// Which of `users` are erased.
    async fn erased_users(&self, users: &[OwnedUserId]) -> Result<std::collections::HashSet<OwnedUserId>>;
    /// Makes a guest account a full one with this password
    /// (`NotFound` when `user_id` is not a guest).
    async fn upgrade_guest(&self, user_id: &UserId, hash: &str) -> Result<()>;
    async fn set_profile(
        &self,
        user_id: &UserId,
        displayname: Option<Option<&str>>,
        avatar_url: Option<Option<&str>>,
    ) -> Result<()>;
    /// Creates (or reuses) a device and gives it a new access token.
    async fn create_session(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
        display_name: Option<&str>,
        token: &str,
    ) -> Result<()>;
    async fn token_owner(&self, token: &str) -> Result<Option<TokenOwner>>;
    async fn delete_token(&self, token: &str) -> Result<()>;
    /// Logs out every device of the user.
    async fn delete_all_tokens(&self, user_id: &UserId) -> Result<()>;
    async fn devices(&self, user_id: &UserId) -> Result<Vec<Device>>;
    /// Records a device's latest request (address, user agent, time).
    async fn device_seen(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
        seen: &crate::connections::Seen,
    ) -> Result<()>;
    async fn save_filter(&self, user_id: &UserId, filter: &str) -> Result<String>;
    async fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<String>>;

    // ----- aliases and the directory -----
    async fn create_alias(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()>;
    async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>>;
    async fn delete_alias(&self, alias: &RoomAliasId) -> Result<bool>;
    async fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>>;
    /// Points every alias of `old` at `new` (a room upgrade), in one
    /// transaction; returns the aliases moved.
    async fn move_aliases(&self, old: &RoomId, new: &RoomId) -> Result<Vec<OwnedRoomAliasId>>;
    async fn set_room_published(&self, room_id: &RoomId, published: bool) -> Result<()>;
    async fn published_rooms(&self) -> Result<Vec<OwnedRoomId>>;

    // ----- rooms and events -----
    async fn room(&self, room_id: &RoomId) -> Result<Option<RoomInfo>>;
    /// A held room's version: what [`Storage::room`] says, but it never
    /// changes, so a backend may keep it (every process may).
    async fn room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersionId>> {
        Ok(self.room(room_id).await?.map(|r| r.version))
    }
    /// Records a room joined over federation (its create event arrives as
    /// an outlier). Nothing happens if the room is known.
    async fn add_room(&self, room_id: &RoomId, version: &RoomVersionId) -> Result<()>;
    async fn event(&self, event_id: &ruma::EventId) -> Result<Option<StoredEvent>>;
    /// The held events among `ids`, in the order asked (missing skipped).
    async fn events(&self, ids: &[OwnedEventId]) -> Result<Vec<StoredEvent>>;
    /// The [`EventKey`] of each held event among `ids`, in no particular
    /// order, no JSON read: which of many events (a room's whole state) are
    /// held, and the state they make.
    async fn event_keys(&self, ids: &[OwnedEventId]) -> Result<Vec<EventKey>>;
    /// Events with no held children: the next local event's parents.
    async fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>>;
    /// The timeline events that name `event_id` as a parent.
    async fn children(&self, event_id: &ruma::EventId) -> Result<Vec<OwnedEventId>>;
    /// Events referenced as parents but not held, with their approximate
    /// depth: where the room's history continues elsewhere.
    async fn backward_extremities(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>>;
    /// Appends an event to a room's timeline, atomically with its edges,
    /// state, extremities, current state and transaction ID. Creates the
    /// room when the event is its `m.room.create`.
    async fn persist_timeline_event(&self, event: NewTimelineEvent) -> Result<Persisted>;
    /// [`Self::persist_timeline_event`] for several events, in order, in
    /// one transaction: all are stored or none.
    async fn persist_timeline_events(&self, events: Vec<NewTimelineEvent>) -> Result<Vec<Persisted>>;
    /// Keeps events without the state before them (auth events fetched
    /// from another server, the state of a join), each rejected or not, in
    /// one transaction: no place in the timeline, no extremities. One held
    /// already is left as it is.
    async fn persist_outliers(&self, events: Vec<(Arc<Pdu>, Option<String>)>) -> Result<()>;
    /// The event sent under this client transaction, if any.
    async fn txn_event(&self, txn: &TxnKey) -> Result<Option<OwnedEventId>>;
    /// The event to expire first (self-destructing messages, MSC2228) and
    /// when, in milliseconds since the epoch.
    async fn next_expiry(&self) -> Result<Option<(OwnedEventId, u64)>>;
    /// Forgets `event_id`'s expiry and, given its pruned JSON, replaces the
    /// stored JSON with it (no redaction event names it); false when the
    /// expiry was forgotten already (another process expired it): nothing
    /// is written.
    async fn expire_event(&self, event_id: &ruma::EventId, pruned_json: Option<&str>) -> Result<bool>;
    /// Replaces the stored JSON of `event_id` by its redacted form.
    async fn apply_redaction(
        &self,
        event_id: &ruma::EventId,
        redacted_json: &str,
        redacted_by: &ruma::EventId,
    ) -> Result<()>;
    /// Timeline events in topological order from the gap `from` (the place
    /// just after the event whose key it is): going backward, the events
    /// at or before it, newest first; going forward, those after it.
    async fn timeline_page(
        &self,
        room_id: &RoomId,
        from: TopoKey,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>>;
    /// The room's timeline event closest to `ts` (milliseconds since the
    /// epoch, by `origin_server_ts`) in direction `dir`: going backward, the
    /// newest at or before `ts`; going forward, the oldest at or after it.
    /// Events of the same timestamp are told apart by depth, then stream
    /// ordering (backward: the last of them; forward: the first). One
    /// index step (events by room and timestamp).
    async fn event_near_timestamp(&self, room_id: &RoomId, ts: u64, dir: Direction) -> Result<Option<StoredEvent>>;
    /// Timeline events with `after < stream_ordering <= upto`, newest
    /// first, at most `limit`.
    async fn stream_page(
        &self,
        room_id: &RoomId,
        after: StreamOrdering,
        upto: StreamOrdering,
        limit: usize,
    ) -> Result<Vec<StoredEvent>>;
    /// The topological key of the newest timeline event of the room that
    /// had arrived by `stream`.
    async fn topo_key_at_stream(&self, room_id: &RoomId, stream: StreamOrdering) -> Result<Option<TopoKey>>;
    /// The newest live arrival order.
    async fn max_stream_ordering(&self) -> Result<StreamOrdering>;

    // ----- state -----
    /// Stores a state that belongs to no event yet (resolved, or as
    /// another server said it is at a gap).
    async fn store_state_group(&self, room_id: &RoomId, state: StateWrite) -> Result<StateGroupId>;
    /// The full state of a group, as `(key, event ID)` pairs.
    async fn state_group(&self, group: StateGroupId) -> Result<Vec<(StateKey, OwnedEventId)>>;
    /// The groups a group is built from: its chain's snapshot first, the
    /// group itself last (a snapshot alone if it is one). An error if the
    /// group is not held.
    async fn state_group_chain(&self, group: StateGroupId) -> Result<Vec<StateGroupId>>;
    /// The entries of `groups` as stored (a snapshot's whole state, a
    /// delta's changes), in the order given.
    async fn state_group_entries(&self, groups: &[StateGroupId]) -> Result<Vec<StoredGroup>>;
    /// One entry of a group's state: the event at `key`, if the state has
    /// one. Reads the key in the group's chain only, not the whole state.
    async fn state_group_entry(&self, group: StateGroupId, key: &StateKey) -> Result<Option<OwnedEventId>>;
    /// Current state entries of a room for `event_type` (all if `None`).
    async fn current_state(
        &self,
        room_id: &RoomId,
        event_type: Option<&StateEventType>,
    ) -> Result<Vec<(StateKey, OwnedEventId)>>;
    /// Current memberships of a room's members (all if `membership` is None).
    async fn room_members(&self, room_id: &RoomId, membership: Option<&str>) -> Result<Vec<Membership>>;
    /// The user's current membership in every room they have one in.
    async fn user_memberships(&self, user_id: &UserId) -> Result<Vec<Membership>>;
    /// The rooms the user is joined to now.
    async fn joined_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .user_memberships(user_id)
            .await?
            .into_iter()
            .filter(|m| m.membership == "join")
            .map(|m| m.room_id)
            .collect())
    }
    /// Rooms whose membership of `user_id` changed in `(after, upto]`.
    async fn membership_changes(
        &self,
        user_id: &UserId,
        after: StreamOrdering,
        upto: StreamOrdering,
    ) -> Result<Vec<OwnedRoomId>>;

    // ----- history for other servers -----
    /// The auth chain of `event_ids`: their auth events, recursively (the
    /// given events themselves only where one authorises another).
    async fn auth_chain(&self, event_ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>>;
    /// History before (and including) `from`, walked back over
    /// `prev_events` always taking the held event of greatest depth not yet
    /// returned, ties broken by the greater event ID; at most `limit`,
    /// most recent first. Rejected events are not returned. See
    /// docs/history.md.
    async fn backfill(&self, room_id: &RoomId, from: &[OwnedEventId], limit: usize) -> Result<Vec<StoredEvent>>;
    /// The events before `latest` (not including them) that a server
    /// holding `earliest` is missing: a breadth-first walk back over
    /// `prev_events` that does not enter `earliest` nor go below
    /// `min_depth`, at most `limit`, in topological order.
    async fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<StoredEvent>>;

    // ----- other servers' keys -----
    /// Records keys of `server` (their validity only ever grows), and the
    /// self-signed document they came in, when given.
    async fn store_server_keys(
        &self,
        server: &ServerName,
        keys: &[ServerKey],
        document: Option<(&str, u64)>,
    ) -> Result<()>;
    async fn server_keys(&self, server: &ServerName) -> Result<Vec<ServerKey>>;
    /// For each of `key_ids` (all if empty): `(key ID, the newest key
    /// document of `server` that listed it, its valid_until_ts)`.
    async fn server_key_documents(&self, server: &ServerName, key_ids: &[String])
    -> Result<Vec<(String, String, u64)>>;

    // ----- transactions between servers -----
    /// The answer given to transaction `txn_id` of `origin`, if seen.
    async fn received_transaction(&self, origin: &ServerName, txn_id: &str) -> Result<Option<String>>;
    async fn store_received_transaction(&self, origin: &ServerName, txn_id: &str, response: &str) -> Result<()>;
    /// Queues an event for each destination, after what is queued there.
    async fn queue_pdu(&self, destinations: &[OwnedServerName], event_id: &ruma::EventId) -> Result<()>;
    /// The oldest queued events of a destination: `(position, event ID)`.
    async fn queued_pdus(&self, destination: &ServerName, limit: usize) -> Result<Vec<(i64, OwnedEventId)>>;
    /// Drops the queued events of a destination up to `position`.
    async fn dequeue_pdus(&self, destination: &ServerName, up_to: i64) -> Result<()>;
    /// Destinations with events waiting that no live process sends to (its
    /// [`federation_duty`] held by none): all of them where one process runs.
    async fn queued_destinations(&self) -> Result<Vec<OwnedServerName>>;

    // ----- invites from other servers -----
    /// Records an invite whose event is already held (as an outlier); it
    /// takes that event's place in the stream.
    async fn store_remote_invite(&self, invite: &RemoteInvite) -> Result<()>;
    async fn remote_invites(&self, user_id: &UserId) -> Result<Vec<RemoteInvite>>;
    async fn delete_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<()>;

    // ----- receipts and typing: the ephemeral stream -----
    // Positions come from the stream's counter, taken inside the write
    // and committed in order, so a reader at the head never misses one.
    /// Records a receipt (replacing the user's previous one of that type)
    /// at a new position of the ephemeral stream, which it returns; `None`
    /// when it would move the user's receipt of that type back to an
    /// older event, and was dropped.
    async fn put_receipt(&self, receipt: &Receipt) -> Result<Option<i64>>;
    /// A room's receipts changed after `position` (all if `None`).
    async fn receipts(&self, room_id: &RoomId, after: Option<i64>) -> Result<Vec<Receipt>>;
    /// Records whether `user_id` types in `room_id`; the change's position
    /// on the ephemeral stream, or `None` when whether they type did not
    /// change (a renewed timeout, an expiry already overtaken). A timeout
    /// that ran out without its [`Typing::Expired`] (its process died) no
    /// longer counts as typing.
    async fn set_typing(&self, room_id: &RoomId, user_id: &UserId, change: Typing) -> Result<Option<i64>>;
    /// The rooms whose typing changed in `(after, up_to]` (all rooms anyone
    /// ever typed in if `after` is `None`), oldest change first, with who
    /// types in them now.
    async fn typing(&self, after: Option<i64>, up_to: i64) -> Result<Vec<RoomTyping>>;
    /// Who typed where until a time at or before `before_ms`, and until
    /// when: typing left to run out by a process that died (the process
    /// that hears of typing ends it itself when the time comes).
    async fn typing_run_out(&self, before_ms: u64) -> Result<Vec<(OwnedRoomId, OwnedUserId, u64)>>;
    /// The ephemeral stream's head: every position up to it is committed.
    async fn max_ephemeral_position(&self) -> Result<i64>;

    // ----- account data -----
    /// Sets the user's account data of `data_type` (global when `room_id`
    /// is `None`) to `content`, replacing what was there, at a new
    /// position in the account data stream, which is returned.
    async fn put_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &str,
    ) -> Result<i64>;
    /// The content of the user's account data of `data_type`, if set.
    async fn account_data(&self, user_id: &UserId, room_id: Option<&RoomId>, data_type: &str)
    -> Result<Option<String>>;
    /// The user's account data (global and of every room) changed in
    /// `(after, upto]` (all of it up to `upto` when `after` is `None`),
    /// in stream order.
    async fn account_data_changes(&self, user_id: &UserId, after: Option<i64>, upto: i64) -> Result<Vec<AccountData>>;
    /// All the user's account data for one room, up to `upto`.
    async fn room_account_data(&self, user_id: &UserId, room_id: &RoomId, upto: i64) -> Result<Vec<AccountData>>;
    /// The newest account data stream position (0 when there is none).
    async fn max_account_data_position(&self) -> Result<i64>;

    // ----- presence -----
    /// Applies `change` to `user_id`'s presence (see [`PresenceChange`]);
    /// a change clients see takes its position inside the write, so
    /// positions commit in order.
    async fn change_presence(&self, user_id: &UserId, change: PresenceChange) -> Result<PresenceWrite>;
    /// Gives `user_id`'s record (if any) a new position of the presence
    /// stream, unchanged otherwise: it became visible to users who could
    /// not see it (the members learned at a partial room's resync).
    async fn restamp_presence(&self, user_id: &UserId) -> Result<Option<PresenceRecord>>;
    /// The records changed in `(after, up_to]` (every one up to `up_to`
    /// without `after`), by position.
    async fn presence_changes(&self, after: Option<i64>, up_to: i64) -> Result<Vec<PresenceRecord>>;
    /// The records of `users` (none for a user nothing is held of).
    async fn presence_of(&self, users: &[OwnedUserId]) -> Result<Vec<PresenceRecord>>;
    /// Those the presence timeouts may concern: the users online whose
    /// record was last touched before `idle_before`, and those not offline
    /// last touched before `offline_before`.
    async fn presence_quiet(&self, idle_before: i64, offline_before: i64) -> Result<Vec<OwnedUserId>>;
    /// The newest committed position of the presence stream.
    async fn max_presence_position(&self) -> Result<i64>;
}
