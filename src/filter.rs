//! Event filters as clients upload them (the spec's `Filter`,
//! `RoomFilter` and `RoomEventFilter`): which rooms and events a
//! `/sync` or `/messages` response includes.

use std::{collections::HashMap, num::NonZeroUsize};

use lru::LruCache;
use ruma::{
    DeviceId, EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::client::filter::{Filter, LazyLoadOptions, RoomEventFilter, RoomFilter, UrlFilter},
};

use crate::events::Pdu;

/// `pattern` against an event type; `*` matches any run of characters.
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = kind.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: an exact match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether a room passes a room list filter (`rooms`, `not_rooms`).
fn room_listed(rooms: Option<&[ruma::OwnedRoomId]>, not_rooms: &[ruma::OwnedRoomId], room_id: &RoomId) -> bool {
    !not_rooms.iter().any(|r| r == room_id) && rooms.is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

/// Whether the room filter lets `room_id` into a response at all.
pub fn room_allowed(filter: &RoomFilter, room_id: &RoomId) -> bool {
    room_listed(filter.rooms.as_deref(), &filter.not_rooms, room_id)
}

/// Whether `event` passes a room event filter (types, senders, rooms,
/// `contains_url`). The `limit` is the caller's business.
pub fn event_matches(filter: &RoomEventFilter, event: &Pdu) -> bool {
    let kind = event.kind.to_string();
    if filter.not_types.iter().any(|t| type_matches(t, &kind)) {
        return false;
    }
    if let Some(types) = &filter.types
        && !types.iter().any(|t| type_matches(t, &kind))
    {
        return false;
    }
    if filter.not_senders.contains(&event.sender) {
        return false;
    }
    if let Some(senders) = &filter.senders
        && !senders.contains(&event.sender)
    {
        return false;
    }
    if !room_listed(filter.rooms.as_deref(), &filter.not_rooms, &event.room_id) {
        return false;
    }
    match filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => event.content_value().get("url").is_some(),
        Some(UrlFilter::EventsWithoutUrl) => event.content_value().get("url").is_none(),
        _ => true,
    }
}

/// Whether an event type passes a filter's `types` and `not_types`.
fn type_allowed(types: Option<&[String]>, not_types: &[String], kind: &str) -> bool {
    !not_types.iter().any(|t| type_matches(t, kind))
        && types.is_none_or(|types| types.iter().any(|t| type_matches(t, kind)))
}

/// Whether global account data of type `kind` passes the filter's
/// `account_data` section (account data has no sender to filter on).
pub fn account_data_matches(filter: &Filter, kind: &str) -> bool {
    type_allowed(filter.types.as_deref(), &filter.not_types, kind)
}

/// Whether the filter's `presence` section lets `m.presence` events in.
pub fn presence_type_allowed(filter: &Filter) -> bool {
    type_allowed(filter.types.as_deref(), &filter.not_types, "m.presence")
}

/// Whether the filter's `presence` section lets in the presence of `user`.
pub fn presence_sender_allowed(filter: &Filter, user: &UserId) -> bool {
    !filter.not_senders.iter().any(|u| u == user) && filter.senders.as_ref().is_none_or(|s| s.iter().any(|u| u == user))
}

/// Whether a room's account data of type `kind` passes the room filter's
/// `account_data` section.
pub fn room_account_data_matches(filter: &RoomEventFilter, room_id: &RoomId, kind: &str) -> bool {
    type_allowed(filter.types.as_deref(), &filter.not_types, kind)
        && room_listed(filter.rooms.as_deref(), &filter.not_rooms, room_id)
}

/// Lazy loading of members: `None` when off, else whether redundant
/// membership events were asked for.
pub fn lazy_load_members(filter: &RoomEventFilter) -> Option<bool> {
    match filter.lazy_load_options {
        LazyLoadOptions::Disabled => None,
        LazyLoadOptions::Enabled {
            include_redundant_members,
        } => Some(include_redundant_members),
    }
}

/// Which membership events each device has been sent per room, so that
/// lazy-loading syncs can leave out the redundant ones (the spec allows
/// either). Kept in memory only: after a restart, or for a device pushed
/// out of the cache, members are sent again, which is harmless.
pub struct LazyLoadCache {
    sent: std::sync::Mutex<LruCache<DeviceRoom, HashMap<OwnedUserId, OwnedEventId>>>,
}

/// A device of a user, in a room.
type DeviceRoom = (OwnedUserId, OwnedDeviceId, OwnedRoomId);

const LAZY_LOAD_CACHE_ENTRIES: usize = 10_000;

impl Default for LazyLoadCache {
    fn default() -> Self {
        LazyLoadCache {
            sent: std::sync::Mutex::new(LruCache::new(
                NonZeroUsize::new(LAZY_LOAD_CACHE_ENTRIES).expect("non-zero"),
            )),
        }
    }
}

impl LazyLoadCache {
    fn key(user: &UserId, device: &DeviceId, room_id: &RoomId) -> DeviceRoom {
        (user.to_owned(), device.to_owned(), room_id.to_owned())
    }

    /// Forgets what the device was sent in the room (before a full sync).
    pub fn reset(&self, user: &UserId, device: &DeviceId, room_id: &RoomId) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.pop(&Self::key(user, device, room_id));
    }

    /// Whether the device was sent exactly this membership event of `member`.
    pub fn was_sent(
        &self,
        user: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        member: &UserId,
        event: &EventId,
    ) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.get(&Self::key(user, device, room_id))
            .and_then(|members| members.get(member))
            .is_some_and(|id| id == event)
    }

    /// Records membership events sent to the device.
    pub fn record<'a>(
        &self,
        user: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        events: impl IntoIterator<Item = (&'a UserId, &'a EventId)>,
    ) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let members = sent.get_or_insert_mut(Self::key(user, device, room_id), HashMap::new);
        for (member, event) in events {
            members.insert(member.to_owned(), event.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::type_matches;

    #[test]
    fn wildcards() {
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(!type_matches("m.room.message", "m.room.message2"));
        assert!(!type_matches("m.room", "m.room.message"));
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(type_matches("*", "anything"));
        assert!(type_matches("m.*.message", "m.room.message"));
        assert!(!type_matches("m.*.message", "m.room.member"));
        assert!(type_matches("*.member", "m.room.member"));
        assert!(!type_matches("a*a", "a"));
        assert!(type_matches("a*a", "aa"));
    }
}
