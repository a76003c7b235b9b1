//! The PostgreSQL storage is also the cluster of the processes sharing its
//! database (`crate::cluster`): `LISTEN`/`NOTIFY` (`listen.rs`), room
//! locks (`locks.rs`) and duties (`duties.rs`).

use std::time::Duration;

use async_trait::async_trait;
use ruma::RoomId;

use super::{PgStorage, pg_write};
use crate::{
    cluster::{Cluster, ClusterLock, OtherWrite},
    storage::Result,
};

#[async_trait]
impl Cluster for PgStorage {
    fn other_writers(&self) -> Option<tokio::sync::mpsc::Receiver<OtherWrite>> {
        Some(self.listen())
    }

    async fn lock_room(&self, room_id: &RoomId) -> Result<Option<ClusterLock>> {
        self.locks.lock(room_id).await.map(Some)
    }

    async fn hold_duty(&self, duty: &str, ttl: Duration) -> Result<bool> {
        pg_write!(one self, |c| super::duties::hold(&c, duty, &self.process, ttl).await?)
    }

    async fn release_duty(&self, duty: &str) -> Result<()> {
        pg_write!(one self, |c| super::duties::release(&c, duty, &self.process).await?)
    }

    async fn release_duties(&self) -> Result<()> {
        pg_write!(one self, |c| super::duties::release_all(&c, &self.process).await?)
    }
}
