//! What storage keeps for push notifications: pushers, and the push
//! actions of events for local users (the notifications, with the counts
//! `/sync` and push gateways show). A supertrait of [`super::Storage`], as
//! [`super::e2e::E2eStorage`] is.
//!
//! Push rules themselves are account data (`m.push_rules`).

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::{Result, StreamOrdering};

/// A pusher of a user: its IDs, and the pusher as the client API shows it
/// (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherRecord {
    pub user_id: OwnedUserId,
    pub app_id: String,
    pub pushkey: String,
    pub json: String,
    /// When it was set (ms), the push gateway's `pushkey_ts`.
    pub ts: u64,
    /// The device that set it: the pusher goes when the device does.
    pub device_id: Option<OwnedDeviceId>,
}

/// Where an event's notifications are written: its room, ID, stream
/// ordering and `origin_server_ts`.
pub(crate) type EventPlace<'a> = (&'a RoomId, &'a ruma::EventId, StreamOrdering, u64);

/// The [`EventPlace`] of `pdu`, stored at `stream_ordering`.
pub(crate) fn place_of(pdu: &crate::events::Pdu, stream_ordering: StreamOrdering) -> EventPlace<'_> {
    (
        &pdu.room_id,
        &pdu.event_id,
        stream_ordering,
        pdu.origin_server_ts.get().into(),
    )
}

/// What the push rules of one local user said about an event that
/// notifies them.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user_id: OwnedUserId,
    pub highlight: bool,
    /// The actions, as JSON.
    pub actions: String,
}

/// A pusher, by its keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PusherKey {
    pub user_id: OwnedUserId,
    pub app_id: String,
    pub pushkey: String,
}

/// A push waiting in a pusher's queue: an event that notified its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedPush {
    /// Its place in the queue (rows are never renumbered).
    pub position: i64,
    pub event_id: OwnedEventId,
    /// The push actions, as JSON.
    pub actions: String,
    /// The room's name when its state is not held here (an invite from
    /// another server).
    pub room_name: Option<String>,
}

/// A notification kept for `GET /notifications`.
#[derive(Debug, Clone)]
pub struct NotificationRecord {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub stream_ordering: StreamOrdering,
    pub highlight: bool,
    pub actions: String,
    pub ts: u64,
    /// At or before the user's read receipt in the room.
    pub read: bool,
}

/// Unread notifications of a user in a room (after their read receipt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    pub notifications: u64,
    pub highlights: u64,
}

#[async_trait]
pub trait PushStorage: Send + Sync + 'static {
    /// Adds or replaces the user's pusher of `(app_id, pushkey)`. Unless
    /// `append`, the pushers of other users with the same app ID and
    /// pushkey are removed.
    async fn set_pusher(&self, pusher: &PusherRecord, append: bool) -> Result<()>;
    /// Removes a pusher; whether there was one.
    async fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<bool>;
    async fn pushers(&self, user_id: &UserId) -> Result<Vec<PusherRecord>>;
    /// Removes the user's pushers set by other devices than `keep` (a
    /// password change that logs the other devices out).
    async fn delete_other_devices_pushers(&self, user_id: &UserId, keep: &DeviceId) -> Result<()>;

    /// Records the notifications an event (at `stream_ordering`) gives,
    /// and queues a push of it to each HTTP pusher of their users
    /// (`room_name`: what [`QueuedPush::room_name`] says); whether any push
    /// was queued. On PostgreSQL, the process holding the duty
    /// [`crate::cluster::PUSH_DUTY`], if another, is told.
    async fn add_notifications(
        &self,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        stream_ordering: StreamOrdering,
        ts: u64,
        notifications: &[NewNotification],
        room_name: Option<&str>,
    ) -> Result<bool>;
    /// Whether any push is queued (one index probe).
    async fn any_queued_push(&self) -> Result<bool>;
    /// The pushers with queued pushes, at most `limit`.
    async fn pushers_with_pushes(&self, limit: usize) -> Result<Vec<PusherKey>>;
    /// The oldest pushes queued for `pusher`, at most `limit`, oldest first.
    async fn queued_pushes(&self, pusher: &PusherKey, limit: usize) -> Result<Vec<QueuedPush>>;
    /// Takes a push out of its queue (sent, or given up).
    async fn push_done(&self, position: i64) -> Result<()>;
    /// Drops the pushes queued before `before_ms` and those of pushers
    /// that are gone; how many.
    async fn drop_old_pushes(&self, before_ms: u64) -> Result<u64>;
    /// The user's notifications in the room after their read receipt.
    async fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts>;
    /// The user's unread notifications in all rooms (a push's badge).
    async fn unread_total(&self, user_id: &UserId) -> Result<u64>;
    /// The user's notifications, newest first, older than `before` (a
    /// stream ordering) if given; only highlights if `highlights_only`.
    async fn notifications(
        &self,
        user_id: &UserId,
        before: Option<StreamOrdering>,
        limit: usize,
        highlights_only: bool,
    ) -> Result<Vec<NotificationRecord>>;
}
