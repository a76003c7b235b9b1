//! Application services' event queues and room lists.

use async_trait::async_trait;
use ruma::{EventId, OwnedEventId};

use super::{PgStorage, big, col, exec, parse, pg_write, query};
use crate::{
    cluster::appservice_duty,
    storage::{
        Result,
        appservice::{AppserviceRoom, AppserviceStorage},
    },
};

/// Advisory lock class of an application service's queue (the key is the
/// hash of its ID); "wf" 3. Positions come from the identity column, taken
/// when a row is inserted, and the sender deletes "up to" the last one it
/// sent: were a lower position to commit after a higher one was read, it
/// would be dropped unsent. Writers to a queue hold its lock (taken before
/// the positions, in one order) until they commit, so a queue only grows
/// at its end.
const QUEUE_LOCK: i32 = 0x7766_0003;

#[async_trait]
impl AppserviceStorage for PgStorage {
    async fn queue_appservice_event(&self, ids: &[String], event_id: &EventId) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        pg_write!(self, |tx| {
            exec(
                &tx,
                "SELECT pg_advisory_xact_lock($1, k)
                 FROM (SELECT DISTINCT hashtext(id) AS k FROM UNNEST($2::text[]) AS id) AS keys ORDER BY k",
                &[&QUEUE_LOCK, &ids],
            )
            .await?;
            // In the order of `ids`, as one insert after another would.
            exec(
                &tx,
                "INSERT INTO appservice_queue (appservice, event_id)
                 SELECT id, $2 FROM UNNEST($1::text[]) WITH ORDINALITY AS q (id, n) ORDER BY n",
                &[&ids, &event_id.as_str()],
            )
            .await?;
            // The process sending to a service, if another, hears of it.
            let duties: Vec<String> = ids.iter().map(|id| appservice_duty(id)).collect();
            super::duties::notify_holders(&tx, &duties).await?;
        })
    }

    async fn queued_appservice_events(&self, id: &str, limit: usize) -> Result<Vec<(i64, OwnedEventId)>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT position, event_id FROM appservice_queue WHERE appservice = $1 ORDER BY position LIMIT $2",
            &[&id, &big(limit as u64)],
        )
        .await?;
        rows.iter().map(|r| Ok((col(r, 0)?, parse(col(r, 1)?)?))).collect()
    }

    async fn dequeue_appservice_events(&self, id: &str, up_to: i64) -> Result<()> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM appservice_queue WHERE appservice = $1 AND position <= $2",
                &[&id, &up_to],
            )
            .await?;
        })
    }

    async fn set_appservice_room(&self, room: &AppserviceRoom, published: bool) -> Result<()> {
        let sql = if published {
            "INSERT INTO appservice_room_list (appservice, network_id, room_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM appservice_room_list WHERE appservice = $1 AND network_id = $2 AND room_id = $3"
        };
        pg_write!(self, |tx| {
            exec(&tx, sql, &[&room.appservice, &room.network_id, &room.room_id.as_str()]).await?;
        })
    }

    async fn appservice_rooms(&self) -> Result<Vec<AppserviceRoom>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT appservice, network_id, room_id FROM appservice_room_list
             ORDER BY appservice, network_id, room_id",
            &[],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AppserviceRoom {
                    appservice: col(r, 0)?,
                    network_id: col(r, 1)?,
                    room_id: parse(col(r, 2)?)?,
                })
            })
            .collect()
    }
}
