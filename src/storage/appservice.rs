//! What storage keeps for application services: the queue of events each
//! one is to be sent, and the rooms each one published in its own room
//! directory lists. A supertrait of [`super::Storage`], as
//! [`super::push::PushStorage`] is.

use async_trait::async_trait;
use ruma::{EventId, OwnedEventId, OwnedRoomId};

use super::Result;

/// A room published by an application service in the list of one of its
/// networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppserviceRoom {
    pub appservice: String,
    pub network_id: String,
    pub room_id: OwnedRoomId,
}

#[async_trait]
pub trait AppserviceStorage: Send + Sync + 'static {
    /// Queues `event_id` for each of the application services `ids`.
    async fn queue_appservice_event(&self, ids: &[String], event_id: &EventId) -> Result<()>;
    /// The oldest queued events of an application service, with their
    /// positions in its queue, at most `limit`.
    async fn queued_appservice_events(&self, id: &str, limit: usize) -> Result<Vec<(i64, OwnedEventId)>>;
    /// Drops the queued events of an application service up to `up_to`.
    async fn dequeue_appservice_events(&self, id: &str, up_to: i64) -> Result<()>;
    /// Publishes or unpublishes a room in an application service's list.
    async fn set_appservice_room(&self, room: &AppserviceRoom, published: bool) -> Result<()>;
    /// The rooms in application services' lists.
    async fn appservice_rooms(&self) -> Result<Vec<AppserviceRoom>>;
}
