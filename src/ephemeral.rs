//! Ephemeral room data: who is typing (in memory, with timeouts) and read
//! receipts (stored), on their own stream. `/sync`'s token is
//! `s<event stream>_<ephemeral position>`; the position is a millisecond
//! clock kept increasing, so it stays ahead of any token handed out
//! before a restart without being stored.
//!
//! A receipt takes its position before it is stored ([`Ephemeral::reserve`]);
//! the head readers see stays below every position still being stored, so a
//! reader that reads up to the head never passes over a receipt that lands
//! later with a lower position.

use std::{
    collections::{BTreeSet, HashMap},
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
    /// The position every reader may read up to: all positions at or below
    /// it are complete.
    head: watch::Sender<i64>,
    positions: Mutex<Positions>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

/// Positions given out, and those whose write has not finished.
struct Positions {
    last: i64,
    in_flight: BTreeSet<i64>,
}

/// A position taken for a write (a receipt being stored); the head moves
/// past it when this is dropped, written or not.
pub struct Reserved<'a> {
    ephemeral: &'a Ephemeral,
    position: i64,
}

impl Reserved<'_> {
    pub fn position(&self) -> i64 {
        self.position
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.ephemeral.finish(self.position);
    }
}

fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}

impl Ephemeral {
    /// `stored`: the newest position already stored (receipts).
    pub fn new(stored: i64) -> Arc<Self> {
        let start = stored.max(now_ms() as i64);
        Arc::new(Ephemeral {
            head: watch::Sender::new(start),
            positions: Mutex::new(Positions {
                last: start,
                in_flight: BTreeSet::new(),
            }),
            typing: Mutex::default(),
        })
    }

    /// A new position, above every one given before, for a write that
    /// readers must not pass over until it is done (the guard dropped).
    pub fn reserve(&self) -> Reserved<'_> {
        let mut positions = self.positions.lock().expect("positions lock");
        let position = (positions.last + 1).max(now_ms() as i64);
        positions.last = position;
        positions.in_flight.insert(position);
        Reserved {
            ephemeral: self,
            position,
        }
    }

    /// A new position, above every one given before, for a change already
    /// made; `/sync` is woken.
    pub fn advance(&self) -> i64 {
        self.reserve().position
    }

    fn finish(&self, position: i64) {
        let mut positions = self.positions.lock().expect("positions lock");
        positions.in_flight.remove(&position);
        let complete = match positions.in_flight.first() {
            Some(lowest) => lowest - 1,
            None => positions.last,
        };
        // Under the lock, so that heads are published in order.
        self.head.send_if_modified(|head| {
            let moved = complete > *head;
            if moved {
                *head = complete;
            }
            moved
        });
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

    #[test]
    fn the_head_stays_below_positions_still_being_written() {
        // Positions follow a millisecond clock: the head may move up to
        // just below the first position given, never to it.
        let eph = Ephemeral::new(0);
        let first = eph.reserve();
        let below_first = first.position() - 1;
        let second = eph.reserve();
        assert!(second.position() > first.position());
        let second_position = second.position();
        drop(second);
        assert_eq!(eph.head(), below_first, "the first is still being written");
        let typing = eph.advance();
        assert!(typing > second_position);
        assert_eq!(eph.head(), below_first);
        drop(first);
        assert_eq!(eph.head(), typing, "everything given out is complete");
    }
}
