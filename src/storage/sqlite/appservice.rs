//! Application services' event queues and room lists (`schema_v12.sql`).

use async_trait::async_trait;
use ruma::{EventId, OwnedEventId};
use rusqlite::params;

use super::{SqliteStorage, accounts::parse, exec};
use crate::storage::{
    Result,
    appservice::{AppserviceRoom, AppserviceStorage},
};

#[async_trait]
impl AppserviceStorage for SqliteStorage {
    async fn queue_appservice_event(&self, ids: &[String], event_id: &EventId) -> Result<()> {
        let (ids, event_id) = (ids.to_vec(), event_id.to_owned());
        self.write(move |tx| {
            for id in &ids {
                exec(
                    tx,
                    "INSERT INTO appservice_queue (appservice, event_id) VALUES (?1, ?2)",
                    params![id, event_id.as_str()],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn queued_appservice_events(&self, id: &str, limit: usize) -> Result<Vec<(i64, OwnedEventId)>> {
        let id = id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT position, event_id FROM appservice_queue WHERE appservice = ?1 ORDER BY position LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            rows.map(|r| {
                let (position, event_id) = r?;
                Ok((position, parse(event_id)?))
            })
            .collect()
        })
        .await
    }

    async fn dequeue_appservice_events(&self, id: &str, up_to: i64) -> Result<()> {
        let id = id.to_owned();
        self.write(move |tx| {
            exec(
                tx,
                "DELETE FROM appservice_queue WHERE appservice = ?1 AND position <= ?2",
                params![id, up_to],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_appservice_room(&self, room: &AppserviceRoom, published: bool) -> Result<()> {
        let room = room.clone();
        self.write(move |tx| {
            let sql = if published {
                "INSERT OR IGNORE INTO appservice_room_list (appservice, network_id, room_id) VALUES (?1, ?2, ?3)"
            } else {
                "DELETE FROM appservice_room_list WHERE appservice = ?1 AND network_id = ?2 AND room_id = ?3"
            };
            exec(
                tx,
                sql,
                params![room.appservice, room.network_id, room.room_id.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn appservice_rooms(&self) -> Result<Vec<AppserviceRoom>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT appservice, network_id, room_id FROM appservice_room_list
                 ORDER BY appservice, network_id, room_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            rows.map(|r| {
                let (appservice, network_id, room_id) = r?;
                Ok(AppserviceRoom {
                    appservice,
                    network_id,
                    room_id: parse(room_id)?,
                })
            })
            .collect()
        })
        .await
    }
}
