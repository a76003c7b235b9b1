//! Presence: whether users are online, idle (`unavailable`) or offline,
//! with a status message and when they were last active.
//!
//! Stored, local users' and other servers' alike, on its own stream: a
//! change a client would see (state, status message, `currently_active`)
//! takes a position inside its write ([`Storage::change_presence`]), which
//! also tells the other processes; they move their head and wake whom it
//! concerns, as this process does for its own. Storage applies each change
//! to what it holds under the user's lock, so changes made through several
//! processes at once all count. A sync that changes nothing a client sees
//! writes nothing: each process remembers what it last stored or read of
//! the users active through it ([`Presence`]'s `known`, process-local), and
//! stores their activity times at most every [`TOUCH_EVERY`].
//!
//! `last_active_ago` is counted from the user's last activity: a sync or
//! `/events` poll with `set_presence` `online` (the default), setting
//! `online`, or sending a message. `currently_active` is true from such
//! activity until the user goes idle, is set `unavailable` or `offline`:
//! while it is true, the newer activity times are not announced (the spec's
//! "currently active" mechanism).
//!
//! Who sees whose presence: a user sees their own and that of the users
//! they share a joined room with; the same goes for servers, which are sent
//! `m.presence` EDUs for the users of this server they share a room with,
//! and are believed only about their own users. A change wakes the parked
//! requests of its user and of the rooms they are joined to.
//!
//! Local users go idle (`unavailable`) after [`IDLE_AFTER`] without
//! activity (a sync, `PUT /presence`) and offline after [`OFFLINE_AFTER`];
//! other servers' users are taken to be offline when their server has said
//! nothing of them for [`REMOTE_EXPIRY`]. Every process applies the
//! timeouts; a timeout is one change like any other, so it happens once.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedUserId, ServerName, UInt, UserId,
    api::{
        client::{filter::Filter, sync::sync_events::v3::Rooms},
        federation::transactions::edu::{Edu, PresenceContent, PresenceUpdate},
    },
    events::{
        TimelineEventType,
        presence::{PresenceEvent, PresenceEventContent},
    },
    presence::PresenceState,
};
use serde_json::Value;

use crate::{
    error::MatrixError,
    events::Pdu,
    filter,
    services::Services,
    storage::{PresenceRecord, PresenceWrite, Storage, StorageError},
    wakeups::{StreamHead, Topic, Wakeups},
};

/// A local user without activity for this long is idle (`unavailable`).
pub const IDLE_AFTER: Duration = Duration::from_secs(5 * 60);
/// A local user without activity for this long is offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(30 * 60);
/// A remote user whose server said nothing of them for this long is
/// offline.
pub const REMOTE_EXPIRY: Duration = Duration::from_secs(30 * 60);
/// How often the timeouts above are applied.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Activity that changes nothing a client sees is stored when the stored
/// activity time is this old (the timeouts count from it).
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Longest status message kept.
const MAX_STATUS_MSG: usize = 1024;

/// A user's presence as this server knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: PresenceState,
    pub status_msg: Option<String>,
    /// When the user was last active (ms since the epoch).
    pub last_active_ts: u64,
    pub currently_active: bool,
    /// The position of the last change.
    pub position: i64,
}

impl Status {
    /// `m.presence` as clients see it; `with_user_id` adds `user_id` to
    /// the content, as the deprecated `/initialSync` and `/events` had it.
    pub fn event(&self, user: &UserId, now: u64, with_user_id: bool) -> Value {
        let mut content = PresenceEventContent::new(self.state.clone());
        content.status_msg = self.status_msg.clone();
        content.last_active_ago =
            UInt::new(now.saturating_sub(self.last_active_ts)).filter(|_| self.last_active_ts > 0);
        content.currently_active = Some(self.currently_active);
        let event = PresenceEvent {
            content,
            sender: user.to_owned(),
        };
        let mut value = serde_json::to_value(event).unwrap_or_default();
        if with_user_id {
            value["content"]["user_id"] = Value::String(user.to_string());
        }
        value
    }

    fn from_record(record: &PresenceRecord) -> Status {
        Status {
            state: PresenceState::from(record.state.as_str()),
            status_msg: record.status_msg.clone(),
            last_active_ts: record.last_active_ts.max(0) as u64,
            currently_active: record.currently_active,
            position: record.position,
        }
    }

    fn update(&self, user: &UserId, now: u64) -> PresenceUpdate {
        let ago = UInt::new(now.saturating_sub(self.last_active_ts)).unwrap_or(UInt::MAX);
        let mut update = PresenceUpdate::new(user.to_owned(), self.state.clone(), ago);
        update.status_msg = self.status_msg.clone();
        update.currently_active = self.currently_active;
        update
    }
}

/// The presence event of a user this server knows nothing of: offline,
/// with no activity to report.
pub fn unknown_event(user: &UserId, with_user_id: bool) -> Value {
    let event = PresenceEvent {
        content: PresenceEventContent::new(PresenceState::Offline),
        sender: user.to_owned(),
    };
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if with_user_id {
        value["content"]["user_id"] = Value::String(user.to_string());
    }
    value
}

/// An `m.presence` EDU carrying `updates`.
fn edu(updates: Vec<PresenceUpdate>) -> Value {
    serde_json::to_value(Edu::Presence(PresenceContent::new(updates))).unwrap_or_default()
}

fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

pub struct Presence {
    enabled: bool,
    own_name: OwnedServerName,
    storage: Arc<dyn Storage>,
    wakeups: Arc<Wakeups>,
    /// The newest position committed that this process knows of.
    head: StreamHead,
    /// Process-local: what this process last stored or read of the users
    /// active through it, to skip writes that would change nothing.
    known: Mutex<HashMap<OwnedUserId, Known>>,
}

/// What [`Presence`] remembers of a user.
enum Known {
    Record(PresenceRecord),
    /// Another process changed the user at this position: what is stored
    /// is read again.
    ChangedElsewhere(i64),
}

impl Known {
    fn position(&self) -> i64 {
        match self {
            Known::Record(r) => r.position,
            Known::ChangedElsewhere(p) => *p,
        }
    }
}

impl Presence {
    pub async fn new(
        enabled: bool,
        own_name: OwnedServerName,
        storage: Arc<dyn Storage>,
        wakeups: Arc<Wakeups>,
    ) -> Result<Arc<Self>, StorageError> {
        let head = storage.max_presence_position().await?;
        Ok(Arc::new(Presence {
            enabled,
            own_name,
            storage,
            wakeups,
            head: StreamHead::new(head),
            known: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether presence is on (the `presence` setting).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn head(&self) -> i64 {
        self.head.get()
    }

    /// A position committed (here or by another process): readers may
    /// read up to it. Wakes nobody: see [`Self::changed`].
    pub fn advanced(&self, position: i64) {
        self.head.advance(position);
    }

    /// `user`'s presence changed at `position` (here or, `elsewhere`, by
    /// another process): the head moves, then the parked requests of the
    /// user and of the rooms they are joined to wake.
    pub async fn changed(&self, position: i64, user: &UserId, elsewhere: bool) -> Result<(), StorageError> {
        if elsewhere {
            let mut known = self.known.lock().expect("presence lock");
            if known.get(user).is_none_or(|k| k.position() < position) {
                known.insert(user.to_owned(), Known::ChangedElsewhere(position));
            }
        }
        self.advanced(position);
        self.wakeups.wake(&Topic::user_and_rooms(&*self.storage, user).await?);
        Ok(())
    }

    /// Forgets what this process remembers (another process's changes may
    /// have been missed).
    pub fn forget_all(&self) {
        self.known.lock().expect("presence lock").clear();
    }

    /// Keeps `record`, just written or read, as what this process knows of
    /// `user`, unless it knows a newer one.
    fn remember(&self, user: &UserId, record: &PresenceRecord) {
        let mut known = self.known.lock().expect("presence lock");
        if known.get(user).is_none_or(|k| k.position() <= record.position) {
            known.insert(user.to_owned(), Known::Record(record.clone()));
        }
    }

    /// Applies `change` to `user`'s stored presence; the new status when a
    /// client would see the change.
    async fn write(
        &self,
        user: &UserId,
        change: impl Fn(&mut PresenceRecord) -> bool + Send + Sync + 'static,
    ) -> Result<Option<Status>, StorageError> {
        let written = self.storage.change_presence(user, Arc::new(change)).await?;
        let (PresenceWrite::Unchanged(record) | PresenceWrite::Touched(record) | PresenceWrite::Changed(record)) =
            &written;
        self.remember(user, record);
        if !matches!(written, PresenceWrite::Changed(_)) {
            return Ok(None);
        }
        self.changed(record.position, user, false).await?;
        Ok(Some(Status::from_record(record)))
    }

    /// Users of other servers whom local users could not see and now can
    /// (the members learned at a partial room's resync: their presence
    /// may have come while they were not known to share the room): what
    /// is known of them is stamped anew, for the next incremental `/sync`
    /// of those who share the room to carry it.
    pub async fn now_visible(&self, users: &[OwnedUserId]) -> Result<(), StorageError> {
        for user in self.of(users).await?.into_keys() {
            let Some(record) = self.storage.restamp_presence(&user).await? else {
                continue;
            };
            self.remember(&user, &record);
            self.changed(record.position, &user, false).await?;
        }
        Ok(())
    }

    /// What is known of `user`.
    pub async fn get(&self, user: &UserId) -> Result<Option<Status>, StorageError> {
        Ok(self.of(&[user.to_owned()]).await?.remove(user))
    }

    /// What is known of `users` (no entry for a user nothing is known of).
    pub async fn of(&self, users: &[OwnedUserId]) -> Result<HashMap<OwnedUserId, Status>, StorageError> {
        if !self.enabled || users.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .storage
            .presence_of(users)
            .await?
            .iter()
            .map(|r| (r.user_id.clone(), Status::from_record(r)))
            .collect())
    }

    /// `PUT /presence/{userId}/status`: sets the state and status message;
    /// the new status when that changed something a client sees.
    pub async fn set(
        &self,
        user: &UserId,
        state: PresenceState,
        status_msg: Option<String>,
    ) -> Result<Option<Status>, StorageError> {
        if !self.enabled {
            return Ok(None);
        }
        let now = now_ms() as i64;
        let status_msg = status_msg.map(|mut msg| {
            if msg.len() > MAX_STATUS_MSG {
                let mut end = MAX_STATUS_MSG;
                while !msg.is_char_boundary(end) {
                    end -= 1;
                }
                msg.truncate(end);
            }
            msg
        });
        self.write(user, move |r| {
            if state != PresenceState::Offline {
                r.last_active_ts = now;
            }
            r.currently_active = state == PresenceState::Online;
            r.state = state.as_str().to_owned();
            r.status_msg = status_msg.clone();
            r.updated_ts = now;
            true
        })
        .await
    }

    /// A client syncing (`/sync`, `/events`, `/initialSync`) with
    /// `set_presence`: `online` and `unavailable` set the state, `offline`
    /// leaves it alone (the client does not count as active). The new
    /// status when that changed something a client sees.
    pub async fn activity(&self, user: &UserId, set_presence: &PresenceState) -> Result<Option<Status>, StorageError> {
        if !self.enabled || !matches!(set_presence, PresenceState::Online | PresenceState::Unavailable) {
            return Ok(None);
        }
        let now = now_ms() as i64;
        let online = *set_presence == PresenceState::Online;
        let state = set_presence.as_str().to_owned();
        let change = move |r: &mut PresenceRecord| {
            let touch = now - r.updated_ts >= ms(TOUCH_EVERY);
            if online {
                r.last_active_ts = now;
            }
            r.currently_active = online;
            r.state = state.clone();
            r.updated_ts = now;
            touch
        };
        // What this process stored or read last says whether it would
        // change anything.
        if let Some(Known::Record(record)) = self.known.lock().expect("presence lock").get(user) {
            let mut changed = record.clone();
            if !change(&mut changed) && changed.visible() == record.visible() {
                return Ok(None);
            }
        }
        self.write(user, change).await
    }

    /// An update from another server (whose users it is about were
    /// checked by the caller).
    pub async fn apply_remote(&self, update: &PresenceUpdate) -> Result<Option<Status>, StorageError> {
        if !self.enabled || matches!(update.presence, PresenceState::_Custom(_)) {
            return Ok(None);
        }
        let now = now_ms() as i64;
        let last_active_ts = now.saturating_sub(i64::try_from(u64::from(update.last_active_ago)).unwrap_or(i64::MAX));
        let update = update.clone();
        self.write(&update.user_id.clone(), move |r| {
            let touch = now - r.updated_ts >= ms(TOUCH_EVERY);
            r.state = update.presence.as_str().to_owned();
            r.status_msg = update.status_msg.clone();
            r.currently_active = update.currently_active;
            r.last_active_ts = last_active_ts.max(0);
            r.updated_ts = now;
            touch
        })
        .await
    }

    /// The users whose status changed in `(since, upto]` (all known
    /// ones without `since`), of those `wanted` admits.
    pub async fn changes(
        &self,
        since: Option<i64>,
        upto: i64,
        wanted: impl Fn(&UserId) -> bool,
    ) -> Result<Vec<(OwnedUserId, Status)>, StorageError> {
        if !self.enabled || since.is_some_and(|since| since >= upto) {
            return Ok(Vec::new());
        }
        Ok(self
            .storage
            .presence_changes(since, upto)
            .await?
            .iter()
            .filter(|r| wanted(&r.user_id))
            .map(|r| (r.user_id.clone(), Status::from_record(r)))
            .collect())
    }

    /// Applies the timeouts at `now`; the local users whose presence
    /// changed (another process applying them at the same moment changes
    /// each user once).
    pub async fn sweep(&self, now: u64) -> Result<Vec<(OwnedUserId, Status)>, StorageError> {
        let now = now as i64;
        self.known
            .lock()
            .expect("presence lock")
            .retain(|_, k| matches!(k, Known::Record(r) if now - r.updated_ts < ms(OFFLINE_AFTER)));
        let offline = ms(OFFLINE_AFTER.min(REMOTE_EXPIRY));
        let quiet = self.storage.presence_quiet(now - ms(IDLE_AFTER), now - offline).await?;
        let mut changed = Vec::new();
        for user in quiet {
            let local = user.server_name() == self.own_name;
            let timeout = move |r: &mut PresenceRecord| {
                let quiet = now - r.updated_ts;
                let new_state = match r.state.as_str() {
                    "offline" => return false,
                    _ if local && quiet >= ms(OFFLINE_AFTER) => PresenceState::Offline,
                    "online" if local && quiet >= ms(IDLE_AFTER) => PresenceState::Unavailable,
                    _ if !local && quiet >= ms(REMOTE_EXPIRY) => PresenceState::Offline,
                    _ => return false,
                };
                r.state = new_state.as_str().to_owned();
                r.currently_active = false;
                false
            };
            if let Some(status) = self.write(&user, timeout).await?
                && local
            {
                changed.push((user, status));
            }
        }
        Ok(changed)
    }
}

/// The users `user` shares a joined room with, and `user`.
pub async fn visible_users(svc: &Services, user: &UserId) -> Result<HashSet<OwnedUserId>, StorageError> {
    let mut users = HashSet::from([user.to_owned()]);
    for m in svc.storage.user_memberships(user).await? {
        if m.membership == "join" {
            users.extend(
                svc.storage
                    .room_members(&m.room_id, Some("join"))
                    .await?
                    .into_iter()
                    .map(|m| m.user_id),
            );
        }
    }
    Ok(users)
}

/// Whether `observer` may see `user`'s presence.
pub async fn may_see(svc: &Services, observer: &UserId, user: &UserId) -> Result<bool, StorageError> {
    if observer == user {
        return Ok(true);
    }
    let theirs: HashSet<_> = svc.storage.joined_rooms(user).await?.into_iter().collect();
    Ok(svc
        .storage
        .user_memberships(observer)
        .await?
        .iter()
        .any(|m| m.membership == "join" && theirs.contains(&m.room_id)))
}

/// A local user's presence changed (visibly) to `status`: it is sent to
/// the servers of the users they share a room with.
pub async fn local_changed(svc: &Services, user: &UserId, status: &Status) -> Result<(), StorageError> {
    let mut servers: Vec<OwnedServerName> = visible_users(svc, user)
        .await?
        .into_iter()
        .map(|u| u.server_name().to_owned())
        .filter(|s| s != svc.server_name())
        .collect();
    servers.sort();
    servers.dedup();
    if !servers.is_empty() {
        svc.sender
            .send_edu_to(&servers, edu(vec![status.update(user, now_ms())]));
    }
    Ok(())
}

/// A client syncing: marks the user as `set_presence` asks, and tells the
/// other servers when that changed something.
pub async fn sync_activity(svc: &Services, user: &UserId, set_presence: &PresenceState) -> Result<(), MatrixError> {
    if let Some(status) = svc.presence.activity(user, set_presence).await? {
        local_changed(svc, user, &status).await?;
    }
    Ok(())
}

/// A local user did something pro-active (sent a message): they are online
/// and active now.
pub async fn bump_active(svc: &Services, user: &UserId) -> Result<(), MatrixError> {
    sync_activity(svc, user, &PresenceState::Online).await
}

/// A user joined a room (the event is stored, accepted): the servers that
/// now share a room with someone learn their presence. A local user's goes
/// to the room's other servers; a remote user's server is sent the
/// presence of this server's users in the room.
pub async fn member_joined(svc: &Services, pdu: &Pdu) -> Result<(), StorageError> {
    let Some(user) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else {
        return Ok(());
    };
    if !svc.presence.enabled() {
        return Ok(());
    }
    let now = now_ms();
    if user.server_name() == svc.server_name() {
        if let Some(status) = svc.presence.get(&user).await? {
            svc.sender
                .send_edu(&pdu.room_id, edu(vec![status.update(&user, now)]))
                .await?;
        }
        return Ok(());
    }
    let locals: Vec<OwnedUserId> = svc
        .storage
        .room_members(&pdu.room_id, Some("join"))
        .await?
        .into_iter()
        .map(|m| m.user_id)
        .filter(|u| u.server_name() == svc.server_name())
        .collect();
    let mut updates: Vec<PresenceUpdate> = svc
        .presence
        .of(&locals)
        .await?
        .iter()
        .map(|(u, status)| status.update(u, now))
        .collect();
    updates.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    if !updates.is_empty() {
        svc.sender.send_edu_to(&[user.server_name().to_owned()], edu(updates));
    }
    Ok(())
}

/// An `m.presence` EDU from `origin`: updates about its own users are
/// applied, others ignored. (Not only of users in a room here: a server
/// sends its users' presence as soon as one joins a room, which may be
/// before this server has stored the join; `/sync` shows presence only to
/// users who share a room anyway.)
pub async fn receive_edu(svc: &Services, origin: &ServerName, content: &Value) -> Result<(), StorageError> {
    if !svc.presence.enabled() {
        return Ok(());
    }
    let Ok(content) = serde_json::from_value::<PresenceContent>(content.clone()) else {
        tracing::debug!(%origin, "malformed m.presence EDU");
        return Ok(());
    };
    for update in &content.push {
        if update.user_id.server_name() != origin {
            tracing::info!(%origin, user = %update.user_id, "presence for another server's user ignored");
            continue;
        }
        svc.presence.apply_remote(update).await?;
    }
    Ok(())
}

/// Users who came to share a room with the syncing user in an incremental
/// sync: the members of rooms sent in full (`in_full`: joined since), and
/// those whose joins the response carries.
async fn newly_shared(
    svc: &Services,
    rooms: &Rooms,
    in_full: &HashSet<ruma::OwnedRoomId>,
) -> Result<HashSet<OwnedUserId>, StorageError> {
    let mut users = HashSet::new();
    for room_id in in_full {
        users.extend(
            svc.storage
                .room_members(room_id, Some("join"))
                .await?
                .into_iter()
                .map(|m| m.user_id),
        );
    }
    for room in rooms.join.values() {
        let timeline = room.timeline.events.iter().map(|e| e.json());
        let state = match &room.state {
            ruma::api::client::sync::sync_events::v3::State::Before(state) => state.events.as_slice(),
            _ => &[],
        };
        for json in timeline.chain(state.iter().map(|e| e.json())) {
            let Ok(event) = serde_json::from_str::<Value>(json.get()) else {
                continue;
            };
            if event["type"] == TimelineEventType::RoomMember.to_string()
                && event["content"]["membership"] == "join"
                && let Some(user) = event["state_key"].as_str().and_then(|k| UserId::parse(k).ok())
            {
                users.insert(user);
            }
        }
    }
    Ok(users)
}

/// `/sync`'s `presence` section: in a full sync (`since` `None`) what is
/// known of the users the user can see; in an incremental one, their
/// changes in `(since, head]` and the presence of users newly sharing a
/// room with the user. The filter's `presence` section applies.
///
/// An incremental sync with no change in the window and no room newly
/// shared reads no storage: who may see whom is only worked out when there
/// is something to show.
pub async fn for_sync(
    svc: &Services,
    user: &UserId,
    (rooms, in_full): (&Rooms, &HashSet<ruma::OwnedRoomId>),
    (since, head): (Option<i64>, i64),
    presence_filter: &Filter,
) -> Result<Vec<Value>, MatrixError> {
    if !svc.presence.enabled() || !filter::presence_type_allowed(presence_filter) {
        return Ok(Vec::new());
    }
    let admitted = |u: &UserId| filter::presence_sender_allowed(presence_filter, u);
    let now = now_ms();
    let Some(since) = since else {
        // A full sync: what is known of everyone visible.
        let visible: Vec<OwnedUserId> = visible_users(svc, user)
            .await?
            .into_iter()
            .filter(|u| admitted(u))
            .collect();
        let known = svc.presence.of(&visible).await?;
        let mut known: Vec<_> = known.iter().filter(|(_, s)| s.position <= head).collect();
        known.sort_by_key(|(_, s)| s.position);
        let events = known.into_iter().map(|(u, s)| s.event(u, now, false)).collect();
        return Ok(keep_newest(events, presence_filter));
    };
    let changes = svc.presence.changes(Some(since), head, admitted).await?;
    let newly = newly_shared(svc, rooms, in_full).await?;
    if changes.is_empty() && newly.is_empty() {
        return Ok(Vec::new());
    }
    // The user's own presence needs no room; others' do.
    let visible = if changes.iter().all(|(u, _)| u == user) && newly.is_empty() {
        HashSet::from([user.to_owned()])
    } else {
        visible_users(svc, user).await?
    };
    let mut seen = HashSet::new();
    let mut events = Vec::new();
    for (u, status) in &changes {
        if visible.contains(u) {
            events.push(status.event(u, now, false));
            seen.insert(u.clone());
        }
    }
    // Users newly met: what is known of them, offline if nothing.
    let mut newly: Vec<OwnedUserId> = newly
        .into_iter()
        .filter(|u| !seen.contains(u) && u != user && visible.contains(u) && admitted(u))
        .collect();
    newly.sort();
    let known = svc.presence.of(&newly).await?;
    for new in newly {
        events.push(match known.get(&new).filter(|s| s.position <= head) {
            Some(status) => status.event(&new, now, false),
            None => unknown_event(&new, false),
        });
    }
    Ok(keep_newest(events, presence_filter))
}

/// The newest events of `events` the filter's `limit` admits.
fn keep_newest(mut events: Vec<Value>, presence_filter: &Filter) -> Vec<Value> {
    if let Some(limit) = presence_filter.limit.map(|l| u64::from(l) as usize)
        && events.len() > limit
    {
        events.drain(..events.len() - limit);
    }
    events
}

/// Applies the timeouts every [`SWEEP_EVERY`] until `cancel`, telling
/// other servers of local users who went idle or offline.
pub async fn run_sweeper(svc: Arc<Services>, cancel: tokio_util::sync::CancellationToken) {
    if !svc.presence.enabled() {
        return;
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let changed = match svc.presence.sweep(now_ms()).await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::info!(error = %e, "presence timeouts not applied");
                continue;
            }
        };
        for (user, status) in changed {
            if let Err(e) = local_changed(&svc, &user, &status).await {
                tracing::info!(%user, error = %e, "presence not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;

    fn user(s: &str) -> OwnedUserId {
        s.try_into().unwrap()
    }

    async fn presence(enabled: bool) -> (tempfile::TempDir, Arc<Presence>) {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(dir.path()).unwrap());
        let wakeups = Arc::new(Wakeups::default());
        let p = Presence::new(enabled, "here".try_into().unwrap(), storage, wakeups)
            .await
            .unwrap();
        (dir, p)
    }

    #[tokio::test]
    async fn changes_take_positions() {
        let (_dir, p) = presence(true).await;
        let alice = user("@alice:here");
        let start = p.head();
        let first = p.set(&alice, PresenceState::Online, Some("hi".into())).await.unwrap();
        let first = first.expect("a change");
        assert_eq!(first.position, start + 1);
        assert_eq!(p.head(), first.position);
        assert_eq!(first.status_msg.as_deref(), Some("hi"));
        let now_online = p.activity(&alice, &PresenceState::Online).await.unwrap();
        assert!(now_online.is_none(), "online already");
        let offline = p.activity(&alice, &PresenceState::Offline).await.unwrap();
        assert!(offline.is_none(), "offline leaves it alone");
        assert!(p.activity(&alice, &PresenceState::Unavailable).await.unwrap().is_some());
        let changes = p.changes(Some(first.position), p.head(), |_| true).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1.state, PresenceState::Unavailable);
        assert_eq!(changes[0].1.status_msg.as_deref(), Some("hi"), "kept by syncing");
        assert!(p.changes(Some(p.head()), p.head(), |_| true).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn timeouts() {
        let (_dir, p) = presence(true).await;
        let (alice, bob) = (user("@alice:here"), user("@bob:there"));
        p.set(&alice, PresenceState::Online, None).await.unwrap();
        p.apply_remote(&PresenceUpdate::new(bob.clone(), PresenceState::Online, UInt::MIN))
            .await
            .unwrap();
        let state = async |u: &UserId| p.get(u).await.unwrap().unwrap().state;
        let now = now_ms();
        assert!(p.sweep(now).await.unwrap().is_empty());
        let idle = now + IDLE_AFTER.as_millis() as u64;
        let changed = p.sweep(idle).await.unwrap();
        assert_eq!(changed.iter().map(|(u, _)| u).collect::<Vec<_>>(), [&alice]);
        assert_eq!(changed[0].1.state, PresenceState::Unavailable);
        assert_eq!(state(&alice).await, PresenceState::Unavailable);
        assert_eq!(state(&bob).await, PresenceState::Online);
        assert!(p.sweep(idle).await.unwrap().is_empty(), "once");
        let late = now + REMOTE_EXPIRY.max(OFFLINE_AFTER).as_millis() as u64;
        let changed = p.sweep(late).await.unwrap();
        assert_eq!(
            changed.iter().map(|(u, _)| u).collect::<Vec<_>>(),
            [&alice],
            "local users only"
        );
        assert_eq!(state(&alice).await, PresenceState::Offline);
        assert_eq!(state(&bob).await, PresenceState::Offline);
    }

    #[tokio::test]
    async fn activity_is_stored_now_and_then() {
        let (_dir, p) = presence(true).await;
        let alice = user("@alice:here");
        p.activity(&alice, &PresenceState::Online)
            .await
            .unwrap()
            .expect("online");
        let stored = |p: &Arc<Presence>| {
            let p = p.clone();
            let alice = alice.clone();
            async move { p.storage.presence_of(&[alice]).await.unwrap()[0].updated_ts }
        };
        let first = stored(&p).await;
        // Another sync at once changes nothing and writes nothing.
        assert!(p.activity(&alice, &PresenceState::Online).await.unwrap().is_none());
        assert_eq!(stored(&p).await, first);
        // Once the stored time is TOUCH_EVERY old, it is stored again.
        if let Some(Known::Record(r)) = p.known.lock().unwrap().get_mut(&alice) {
            r.updated_ts -= ms(TOUCH_EVERY);
        }
        let old = first - ms(TOUCH_EVERY);
        p.storage
            .change_presence(
                &alice,
                Arc::new(move |r| {
                    r.updated_ts = old;
                    true
                }),
            )
            .await
            .unwrap();
        assert!(p.activity(&alice, &PresenceState::Online).await.unwrap().is_none());
        assert!(stored(&p).await >= first, "touched again");
    }

    #[tokio::test]
    async fn disabled_keeps_nothing() {
        let (_dir, p) = presence(false).await;
        let alice = user("@alice:here");
        assert!(p.set(&alice, PresenceState::Online, None).await.unwrap().is_none());
        assert!(p.activity(&alice, &PresenceState::Online).await.unwrap().is_none());
        assert!(p.get(&alice).await.unwrap().is_none());
    }
}
