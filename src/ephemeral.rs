//! Ephemeral room data: who is typing (in memory, with timeouts) and read
//! receipts (stored), on their own stream. `/sync`'s token is
//! `s<event stream>_<ephemeral position>`; the position is a millisecond
//! clock kept increasing, so it stays ahead of any token handed out
//! before a restart without being stored.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::watch;

/// Longest a client may say it is typing for.
pub const MAX_TYPING_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    /// The position of the last change.
    position: i64,
    /// User → until when (ms).
    users: HashMap<OwnedUserId, u64>,
}

pub struct Ephemeral {
    head: watch::Sender<i64>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}

impl Ephemeral {
    /// `stored`: the newest position already stored (receipts).
    pub fn new(stored: i64) -> Arc<Self> {
        Arc::new(Ephemeral {
            head: watch::Sender::new(stored.max(now_ms() as i64)),
            typing: Mutex::default(),
        })
    }

    /// A new position, above every one given before; `/sync` is woken.
    pub fn advance(&self) -> i64 {
        let mut position = 0;
        self.head.send_modify(|head| {
            *head = (*head + 1).max(now_ms() as i64);
            position = *head;
        });
        position
    }

    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Sets `user` typing (for `timeout`) or not; false when nothing changed.
    pub fn set_typing(self: &Arc<Self>, room_id: &RoomId, user: &UserId, timeout: Option<Duration>) -> bool {
        let until = timeout.map(|t| now_ms() + t.min(MAX_TYPING_TIMEOUT).as_millis() as u64);
        let changed = {
            let mut rooms = self.typing.lock().expect("typing lock");
            let room = rooms.entry(room_id.to_owned()).or_default();
            let was_typing = room.users.contains_key(user);
            match until {
                Some(until) => {
                    room.users.insert(user.to_owned(), until);
                }
                None => {
                    room.users.remove(user);
                }
            }
            let changed = was_typing != until.is_some();
            if changed {
                room.position = self.advance();
            }
            changed
        };
        if let (Some(until), Some(timeout)) = (until, timeout) {
            // Stop typing when the timeout runs out, unless renewed.
            let this = self.clone();
            let (room_id, user) = (room_id.to_owned(), user.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(timeout.min(MAX_TYPING_TIMEOUT)).await;
                let mut rooms = this.typing.lock().expect("typing lock");
                if let Some(room) = rooms.get_mut(&room_id)
                    && room.users.get(&user) == Some(&until)
                {
                    room.users.remove(&user);
                    room.position = this.advance();
                }
            });
        }
        changed
    }

    /// The users typing in a room and the position of the last change.
    pub fn typing(&self, room_id: &RoomId) -> (i64, Vec<OwnedUserId>) {
        let rooms = self.typing.lock().expect("typing lock");
        match rooms.get(room_id) {
            Some(room) => {
                let mut users: Vec<OwnedUserId> = room.users.keys().cloned().collect();
                users.sort();
                (room.position, users)
            }
            None => (0, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn typing_starts_stops_and_times_out() {
        let eph = Ephemeral::new(0);
        let room: &RoomId = "!r:x".try_into().unwrap();
        let user: &UserId = "@u:x".try_into().unwrap();
        let start = eph.head();
        assert!(eph.set_typing(room, user, Some(Duration::from_millis(50))));
        let (position, users) = eph.typing(room);
        assert!(position > start);
        assert_eq!(users, vec![user.to_owned()]);
        assert!(
            !eph.set_typing(room, user, Some(Duration::from_millis(50))),
            "still typing: no change"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (later, users) = eph.typing(room);
        assert!(users.is_empty(), "timed out");
        assert!(later > position);
        assert!(!eph.set_typing(room, user, None));
    }
}
