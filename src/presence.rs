//! Presence: whether users are online, idle (`unavailable`) or offline,
//! with a status message and when they were last active.
//!
//! Kept in memory, on its own stream: every change takes a new position,
//! a millisecond clock kept increasing (as the ephemeral stream's), which
//! starts above every stored position. Reading presence (`/sync`, `GET
//! /presence`) touches no storage; a change of a local user's presence that
//! clients would see (state, status message, `currently_active`) is also
//! written to storage, and read back at start, so that a status message
//! outlives a restart. Other servers' users are kept in memory only: their
//! servers send their presence again as it changes.
//!
//! `last_active_ago` is counted from the user's last activity: a sync or
//! `/events` poll with `set_presence` `online` (the default), setting
//! `online`, or sending a message. `currently_active` is true from such
//! activity until the user goes idle, is set `unavailable` or `offline`:
//! while it is true, the newer activity times are not announced (the spec's
//! "currently active" mechanism), but every event given out carries an up
//! to date `last_active_ago`.
//!
//! Who sees whose presence: a user sees their own and that of the users
//! they share a joined room with; the same goes for servers, which are sent
//! `m.presence` EDUs for the users of this server they share a room with,
//! and are believed only about their own users.
//!
//! Local users go idle (`unavailable`) after [`IDLE_AFTER`] without
//! activity (a sync, `PUT /presence`) and offline after [`OFFLINE_AFTER`];
//! other servers' users are taken to be offline when their server has said
//! nothing of them for [`REMOTE_EXPIRY`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Bound,
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
use tokio::sync::watch;

use crate::{
    error::MatrixError,
    events::Pdu,
    filter,
    services::Services,
    storage::{PresenceRecord, StorageError},
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
    /// Local users: the last activity or explicit change; remote users:
    /// the last update received. The timeouts count from here.
    touched_ts: u64,
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

    /// What storage keeps of a local user's status.
    fn record(&self, user: &UserId) -> PresenceRecord {
        PresenceRecord {
            user_id: user.to_owned(),
            state: self.state.as_str().to_owned(),
            status_msg: self.status_msg.clone(),
            last_active_ts: self.last_active_ts as i64,
            currently_active: self.currently_active,
            updated_ts: self.touched_ts as i64,
            position: self.position,
        }
    }

    fn from_record(record: &PresenceRecord) -> Status {
        Status {
            state: PresenceState::from(record.state.as_str()),
            status_msg: record.status_msg.clone(),
            last_active_ts: record.last_active_ts.max(0) as u64,
            currently_active: record.currently_active,
            touched_ts: record.updated_ts.max(0) as u64,
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

pub struct Presence {
    enabled: bool,
    own_name: OwnedServerName,
    head: watch::Sender<i64>,
    users: Mutex<Users>,
}

/// What is known, and who changed when: an incremental sync reads the
/// changes after its position without looking at every user.
#[derive(Default)]
struct Users {
    status: HashMap<OwnedUserId, Status>,
    by_position: BTreeMap<i64, OwnedUserId>,
}

impl Users {
    /// Moves `user` to `position` in the change order.
    fn reposition(&mut self, user: &UserId, old: i64, new: i64) {
        if self.by_position.get(&old).is_some_and(|u| u == user) {
            self.by_position.remove(&old);
        }
        self.by_position.insert(new, user.to_owned());
    }
}

impl Presence {
    /// Presence as `stored` (the local users' records) left it; the stream
    /// starts above every stored position.
    pub fn new(enabled: bool, own_name: OwnedServerName, stored: Vec<PresenceRecord>) -> Arc<Self> {
        let head = stored.iter().map(|r| r.position).fold(now_ms() as i64, i64::max);
        let mut users = Users::default();
        if enabled {
            for record in &stored {
                users.by_position.insert(record.position, record.user_id.clone());
                users.status.insert(record.user_id.clone(), Status::from_record(record));
            }
        }
        Arc::new(Presence {
            enabled,
            own_name,
            head: watch::Sender::new(head),
            users: Mutex::new(users),
        })
    }

    /// Whether presence is on (the `presence` setting).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// A new position, above every one given before; `/sync` is woken.
    fn advance(&self) -> i64 {
        let mut position = 0;
        self.head.send_modify(|head| {
            *head = (*head + 1).max(now_ms() as i64);
            position = *head;
        });
        position
    }

    /// What is known of `user`.
    pub fn get(&self, user: &UserId) -> Option<Status> {
        self.users.lock().expect("presence lock").status.get(user).cloned()
    }

    /// Writes `user`'s status with `change`; a new position (and true)
    /// when something a client would see changed.
    fn change(&self, user: &UserId, now: u64, change: impl FnOnce(&mut Status)) -> bool {
        let mut users = self.users.lock().expect("presence lock");
        let old = users.status.get(user).cloned();
        let status = users.status.entry(user.to_owned()).or_insert_with(|| Status {
            state: PresenceState::Offline,
            status_msg: None,
            last_active_ts: 0,
            currently_active: false,
            touched_ts: now,
            position: 0,
        });
        change(status);
        status.touched_ts = now;
        let visible = |s: &Status| (s.state.clone(), s.status_msg.clone(), s.currently_active);
        let changed = old.as_ref().map(visible) != Some(visible(status));
        if changed {
            let old_position = status.position;
            status.position = self.advance();
            let new_position = status.position;
            users.reposition(user, old_position, new_position);
        }
        changed
    }

    /// `PUT /presence/{userId}/status`: sets the state and status message.
    pub fn set(&self, user: &UserId, state: PresenceState, status_msg: Option<String>) -> bool {
        if !self.enabled {
            return false;
        }
        let now = now_ms();
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
        self.change(user, now, |s| {
            if state != PresenceState::Offline {
                s.last_active_ts = now;
            }
            s.currently_active = state == PresenceState::Online;
            s.state = state;
            s.status_msg = status_msg;
        })
    }

    /// A client syncing (`/sync`, `/events`, `/initialSync`) with
    /// `set_presence`: `online` and `unavailable` set the state, `offline`
    /// leaves it alone (the client does not count as active).
    pub fn activity(&self, user: &UserId, set_presence: &PresenceState) -> bool {
        if !self.enabled || !matches!(set_presence, PresenceState::Online | PresenceState::Unavailable) {
            return false;
        }
        let now = now_ms();
        self.change(user, now, |s| {
            if *set_presence == PresenceState::Online {
                s.last_active_ts = now;
            }
            s.currently_active = *set_presence == PresenceState::Online;
            s.state = set_presence.clone();
        })
    }

    /// An update from another server (whose users it is about were
    /// checked by the caller).
    pub fn apply_remote(&self, update: &PresenceUpdate) -> bool {
        if !self.enabled || matches!(update.presence, PresenceState::_Custom(_)) {
            return false;
        }
        let now = now_ms();
        let last_active_ts = now.saturating_sub(u64::from(update.last_active_ago));
        self.change(&update.user_id, now, |s| {
            s.state = update.presence.clone();
            s.status_msg = update.status_msg.clone();
            s.currently_active = update.currently_active;
            s.last_active_ts = last_active_ts;
        })
    }

    /// The users whose status changed in `(since, upto]` (all known
    /// ones without `since`), of those `wanted` admits.
    pub fn changes(
        &self,
        since: Option<i64>,
        upto: i64,
        wanted: impl Fn(&UserId) -> bool,
    ) -> Vec<(OwnedUserId, Status)> {
        let users = self.users.lock().expect("presence lock");
        let after = since.map_or(Bound::Unbounded, Bound::Excluded);
        users
            .by_position
            .range((after, Bound::Included(upto)))
            .filter(|(_, user)| wanted(user))
            .filter_map(|(_, user)| Some((user.clone(), users.status.get(user)?.clone())))
            .collect()
    }

    /// Applies the timeouts at `now`; the local users whose presence
    /// changed.
    pub fn sweep(&self, now: u64) -> Vec<OwnedUserId> {
        let idle = IDLE_AFTER.as_millis() as u64;
        let offline = OFFLINE_AFTER.as_millis() as u64;
        let expiry = REMOTE_EXPIRY.as_millis() as u64;
        let mut guard = self.users.lock().expect("presence lock");
        let users = &mut *guard;
        // Other servers' users gone quiet and offline are forgotten.
        users.status.retain(|user, s| {
            let keep = user.server_name() == self.own_name
                || s.state != PresenceState::Offline
                || now.saturating_sub(s.touched_ts) < expiry;
            if !keep {
                users.by_position.remove(&s.position);
            }
            keep
        });
        let mut changed = Vec::new();
        for (user, status) in users.status.iter_mut() {
            let quiet = now.saturating_sub(status.touched_ts);
            let local = user.server_name() == self.own_name;
            let new_state = match status.state {
                PresenceState::Offline => continue,
                _ if local && quiet >= offline => PresenceState::Offline,
                PresenceState::Online if local && quiet >= idle => PresenceState::Unavailable,
                _ if !local && quiet >= expiry => PresenceState::Offline,
                _ => continue,
            };
            status.state = new_state;
            status.currently_active = false;
            if users.by_position.get(&status.position) == Some(user) {
                users.by_position.remove(&status.position);
            }
            status.position = self.advance();
            users.by_position.insert(status.position, user.clone());
            if local {
                changed.push(user.clone());
            }
        }
        changed
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
    let theirs: HashSet<_> = svc
        .storage
        .user_memberships(user)
        .await?
        .into_iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id)
        .collect();
    Ok(svc
        .storage
        .user_memberships(observer)
        .await?
        .iter()
        .any(|m| m.membership == "join" && theirs.contains(&m.room_id)))
}

/// A local user's presence changed (visibly): it is stored, and sent to
/// the servers of the users they share a room with.
pub async fn local_changed(svc: &Services, user: &UserId) -> Result<(), StorageError> {
    let Some(status) = svc.presence.get(user) else {
        return Ok(());
    };
    svc.storage.put_presence(&status.record(user)).await?;
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
    if svc.presence.activity(user, set_presence) {
        local_changed(svc, user).await?;
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
        if let Some(status) = svc.presence.get(&user) {
            svc.sender
                .send_edu(&pdu.room_id, edu(vec![status.update(&user, now)]))
                .await?;
        }
        return Ok(());
    }
    let updates: Vec<PresenceUpdate> = svc
        .storage
        .room_members(&pdu.room_id, Some("join"))
        .await?
        .iter()
        .filter(|m| m.user_id.server_name() == svc.server_name())
        .filter_map(|m| Some(svc.presence.get(&m.user_id)?.update(&m.user_id, now)))
        .collect();
    if !updates.is_empty() {
        svc.sender.send_edu_to(&[user.server_name().to_owned()], edu(updates));
    }
    Ok(())
}

/// An `m.presence` EDU from `origin`: updates about its own users are
/// applied, others ignored. (Not only of users in a room here: a server
/// sends its users' presence as soon as one joins a room, which may be
/// before this server has stored the join; `/sync` shows presence only to
/// users who share a room anyway, and the sweep forgets what went stale.)
pub fn receive_edu(svc: &Services, origin: &ServerName, content: &Value) {
    if !svc.presence.enabled() {
        return;
    }
    let Ok(content) = serde_json::from_value::<PresenceContent>(content.clone()) else {
        tracing::debug!(%origin, "malformed m.presence EDU");
        return;
    };
    for update in &content.push {
        if update.user_id.server_name() != origin {
            tracing::info!(%origin, user = %update.user_id, "presence for another server's user ignored");
            continue;
        }
        svc.presence.apply_remote(update);
    }
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
    let changes = svc.presence.changes(since, head, admitted);
    let newly = match since {
        Some(_) => newly_shared(svc, rooms, in_full).await?,
        None => HashSet::new(),
    };
    if changes.is_empty() && newly.is_empty() {
        return Ok(Vec::new());
    }
    // The user's own presence needs no room; others' do.
    let visible = if changes.iter().all(|(u, _)| u == user) && newly.is_empty() {
        HashSet::from([user.to_owned()])
    } else {
        visible_users(svc, user).await?
    };
    let now = now_ms();
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
    for new in newly {
        events.push(match svc.presence.get(&new).filter(|s| s.position <= head) {
            Some(status) => status.event(&new, now, false),
            None => unknown_event(&new, false),
        });
    }
    if let Some(limit) = presence_filter.limit.map(|l| u64::from(l) as usize)
        && events.len() > limit
    {
        events.drain(..events.len() - limit);
    }
    Ok(events)
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
        for user in svc.presence.sweep(now_ms()) {
            if let Err(e) = local_changed(&svc, &user).await {
                tracing::info!(%user, error = %e, "presence not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> OwnedUserId {
        s.try_into().unwrap()
    }

    #[test]
    fn changes_take_positions() {
        let p = Presence::new(true, "here".try_into().unwrap(), Vec::new());
        let alice = user("@alice:here");
        let start = p.head();
        assert!(p.set(&alice, PresenceState::Online, Some("hi".into())));
        let first = p.get(&alice).unwrap();
        assert!(first.position > start);
        assert_eq!(first.status_msg.as_deref(), Some("hi"));
        assert!(!p.activity(&alice, &PresenceState::Online), "online already");
        assert!(!p.activity(&alice, &PresenceState::Offline), "offline leaves it alone");
        assert!(p.activity(&alice, &PresenceState::Unavailable));
        let changes = p.changes(Some(first.position), p.head(), |_| true);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1.state, PresenceState::Unavailable);
        assert_eq!(changes[0].1.status_msg.as_deref(), Some("hi"), "kept by syncing");
        assert!(p.changes(Some(p.head()), p.head(), |_| true).is_empty());
    }

    #[test]
    fn timeouts() {
        let p = Presence::new(true, "here".try_into().unwrap(), Vec::new());
        let (alice, bob) = (user("@alice:here"), user("@bob:there"));
        p.set(&alice, PresenceState::Online, None);
        p.apply_remote(&PresenceUpdate::new(bob.clone(), PresenceState::Online, UInt::MIN));
        let now = now_ms();
        assert!(p.sweep(now).is_empty());
        let idle = now + IDLE_AFTER.as_millis() as u64;
        assert_eq!(p.sweep(idle), vec![alice.clone()]);
        assert_eq!(p.get(&alice).unwrap().state, PresenceState::Unavailable);
        assert_eq!(p.get(&bob).unwrap().state, PresenceState::Online);
        let late = now + REMOTE_EXPIRY.max(OFFLINE_AFTER).as_millis() as u64;
        assert_eq!(p.sweep(late), vec![alice.clone()]);
        assert_eq!(p.get(&alice).unwrap().state, PresenceState::Offline);
        assert_eq!(p.get(&bob).unwrap().state, PresenceState::Offline);
    }

    #[test]
    fn disabled_keeps_nothing() {
        let p = Presence::new(false, "here".try_into().unwrap(), Vec::new());
        let alice = user("@alice:here");
        assert!(!p.set(&alice, PresenceState::Online, None));
        assert!(!p.activity(&alice, &PresenceState::Online));
        assert!(p.get(&alice).is_none());
    }
}
