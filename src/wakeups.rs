//! Wake-ups of parked requests (`/sync` long-polls) by whom a change
//! concerns: a room's events wake the requests of that room's members, a
//! user's own membership changes wake that user's requests — and nobody
//! else's. The cost of a send is the number of requests it concerns, not
//! the number parked (see `docs/cluster.md`).
//!
//! A request registers a [`Waiter`] under its topics *before* it reads the
//! stream heads it answers up to: a change after that stores a permit in
//! the waiter (nothing is lost between reading and waiting); a change
//! before it is within the heads it read.
//!
//! Process-local: with several processes, each feeds its own hub from the
//! changes the others announce.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use tokio::sync::Notify;

use crate::storage::{Storage, StorageError};

/// A stream's head in this process: the newest position it knows to be
/// committed, here or by another process. It only moves forward; a change
/// moves it before waking whom the change concerns, so that a woken
/// request reads past the change.
#[derive(Debug)]
pub struct StreamHead(AtomicI64);

impl StreamHead {
    pub fn new(position: i64) -> Self {
        StreamHead(AtomicI64::new(position))
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Moves to `position`, if that is further.
    pub fn advance(&self, position: i64) {
        self.0.fetch_max(position, Ordering::SeqCst);
    }
}

/// Whom a change concerns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The members of a room (its events).
    Room(OwnedRoomId),
    /// One user (their own membership anywhere, invites included).
    User(OwnedUserId),
}

impl Topic {
    /// Whom a stored event concerns: its room's members and, for a
    /// membership event, its target (joined, invited, left).
    pub fn of_event(pdu: &crate::events::Pdu) -> Vec<Topic> {
        let mut topics = vec![Topic::Room(pdu.room_id.clone())];
        if pdu.kind == ruma::events::TimelineEventType::RoomMember
            && let Some(user) = pdu.state_key.as_deref().and_then(|k| OwnedUserId::try_from(k).ok())
        {
            topics.push(Topic::User(user));
        }
        topics
    }

    /// Whom a change of `user`'s (their presence, their keys) concerns:
    /// the user, and the members of the rooms they are joined to.
    pub async fn user_and_rooms(storage: &dyn Storage, user: &UserId) -> Result<Vec<Topic>, StorageError> {
        let mut topics = vec![Topic::User(user.to_owned())];
        topics.extend(storage.joined_rooms(user).await?.into_iter().map(Topic::Room));
        Ok(topics)
    }
}

#[derive(Default)]
pub struct Wakeups {
    topics: Mutex<HashMap<Topic, HashMap<u64, Arc<Notify>>>>,
    next_id: AtomicU64,
    woken: AtomicU64,
}

impl Wakeups {
    /// A waiter for the changes concerning `topics`.
    pub fn register(self: &Arc<Self>, topics: impl IntoIterator<Item = Topic>) -> Waiter {
        let mut waiter = Waiter {
            hub: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            topics: Vec::new(),
            notify: Arc::new(Notify::new()),
        };
        waiter.add(topics);
        waiter
    }

    /// Wakes the waiters of `topics` (each once, even if it waits on
    /// several of them).
    pub fn wake(&self, topics: &[Topic]) {
        let topics_map = self.topics.lock().expect("wakeups lock");
        for topic in topics {
            if let Some(waiters) = topics_map.get(topic) {
                for notify in waiters.values() {
                    notify.notify_one();
                }
                self.woken.fetch_add(waiters.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Wakes every waiter: when changes may have been missed (see
    /// `crate::cluster`), each reads the database again.
    pub fn wake_all(&self) {
        let topics_map = self.topics.lock().expect("wakeups lock");
        for waiters in topics_map.values() {
            for notify in waiters.values() {
                notify.notify_one();
            }
            self.woken.fetch_add(waiters.len() as u64, Ordering::Relaxed);
        }
    }

    /// How many wake-ups were delivered so far (metrics, tests).
    pub fn woken(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
    }

    /// How many requests are parked on `topic`.
    pub fn waiting(&self, topic: &Topic) -> usize {
        self.topics
            .lock()
            .expect("wakeups lock")
            .get(topic)
            .map_or(0, HashMap::len)
    }
}

/// A parked request's registration; unregistered when dropped.
pub struct Waiter {
    hub: Arc<Wakeups>,
    id: u64,
    topics: Vec<Topic>,
    notify: Arc<Notify>,
}

impl Waiter {
    /// Also waits for `topics` (those it waits for already are skipped).
    pub fn add(&mut self, topics: impl IntoIterator<Item = Topic>) {
        let mut map = self.hub.topics.lock().expect("wakeups lock");
        for topic in topics {
            if self.topics.contains(&topic) {
                continue;
            }
            map.entry(topic.clone())
                .or_default()
                .insert(self.id, self.notify.clone());
            self.topics.push(topic);
        }
    }

    /// Returns once a change concerning one of its topics happened since
    /// it registered (or since the last return).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.hub.topics.lock().expect("wakeups lock");
        for topic in &self.topics {
            if let Some(waiters) = map.get_mut(topic) {
                waiters.remove(&self.id);
                if waiters.is_empty() {
                    map.remove(topic);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str) -> Topic {
        Topic::Room(OwnedRoomId::try_from(id).unwrap())
    }

    #[tokio::test]
    async fn a_change_wakes_only_whom_it_concerns_and_is_not_lost_before_the_wait() {
        let hub = Arc::new(Wakeups::default());
        let a = hub.register([room("!a:x")]);
        let b = hub.register([room("!b:x")]);
        // Before either waits: the permit is kept.
        hub.wake(&[room("!a:x")]);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.notified())
            .await
            .expect("a was woken");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.notified())
                .await
                .is_err(),
            "b was not"
        );
        assert_eq!(hub.woken(), 1);
        drop(a);
        assert_eq!(hub.waiting(&room("!a:x")), 0, "dropped waiters leave no trace");
        assert_eq!(hub.waiting(&room("!b:x")), 1);
    }
}
