//! Pushers and notifications.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, RoomId, UserId};

use super::{PgStorage, big, col, exec, parse, pg_write, query, query_one};
use crate::storage::{
    Result, StreamOrdering,
    push::{NewNotification, NotificationRecord, PushStorage, PusherRecord, UnreadCounts},
};

/// The stream ordering of the user's read receipt in the room (0 if none):
/// SQL over `$1` (user) and the room expression `room`.
fn read_position(room: &str) -> String {
    format!(
        "COALESCE((SELECT MAX((SELECT e.stream_ordering FROM events e WHERE e.event_id = r.event_id))
                   FROM receipts r
                   WHERE r.room_id = {room} AND r.user_id = $1
                     AND r.receipt_type IN ('m.read', 'm.read.private')), 0)"
    )
}

#[async_trait]
impl PushStorage for PgStorage {
    async fn set_pusher(&self, pusher: &PusherRecord, append: bool) -> Result<()> {
        pg_write!(self, |tx| {
            if !append {
                exec(
                    &tx,
                    "DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id != $3",
                    &[&pusher.app_id, &pusher.pushkey, &pusher.user_id.as_str()],
                )
                .await?;
            }
            exec(
                &tx,
                "INSERT INTO pushers (user_id, app_id, pushkey, json, ts, device_id)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET
                     json = excluded.json, device_id = excluded.device_id",
                &[
                    &pusher.user_id.as_str(),
                    &pusher.app_id,
                    &pusher.pushkey,
                    &pusher.json,
                    &big(pusher.ts),
                    &pusher.device_id.as_ref().map(|d| d.as_str()),
                ],
            )
            .await?;
        })
    }

    async fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<bool> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
                &[&user_id.as_str(), &app_id, &pushkey],
            )
            .await?
                > 0
        })
    }

    async fn pushers(&self, user_id: &UserId) -> Result<Vec<PusherRecord>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT app_id, pushkey, json, ts, device_id FROM pushers WHERE user_id = $1
             ORDER BY ts, app_id, pushkey",
            &[&user_id.as_str()],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PusherRecord {
                    user_id: user_id.to_owned(),
                    app_id: col(r, 0)?,
                    pushkey: col(r, 1)?,
                    json: col(r, 2)?,
                    ts: col::<i64>(r, 3)? as u64,
                    device_id: col::<Option<String>>(r, 4)?.map(OwnedDeviceId::from),
                })
            })
            .collect()
    }

    async fn delete_other_devices_pushers(&self, user_id: &UserId, keep: &DeviceId) -> Result<()> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM pushers WHERE user_id = $1 AND (device_id IS NULL OR device_id != $2)",
                &[&user_id.as_str(), &keep.as_str()],
            )
            .await?;
        })
    }

    async fn add_notifications(
        &self,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        stream_ordering: StreamOrdering,
        ts: u64,
        notifications: &[NewNotification],
    ) -> Result<Vec<OwnedUserId>> {
        if notifications.is_empty() {
            return Ok(Vec::new());
        }
        // One row per user, the last one given winning (as one replacing
        // insert after another would): a statement may not upsert a row
        // twice.
        let by_user: BTreeMap<&str, &NewNotification> = notifications.iter().map(|n| (n.user_id.as_str(), n)).collect();
        let users: Vec<&str> = by_user.keys().copied().collect();
        let highlights: Vec<bool> = by_user.values().map(|n| n.highlight).collect();
        let actions: Vec<&str> = by_user.values().map(|n| n.actions.as_str()).collect();
        // (Whom a push is for comes back with the insert: one statement.)
        let with_pushers = pg_write!(one self, |c| {
            query(
                &c,
                "WITH added AS (
                     INSERT INTO notifications (user_id, room_id, event_id, stream_ordering, highlight, actions, ts)
                     SELECT n.user_id, $2, $3, $4, n.highlight, n.actions, $7
                     FROM UNNEST($1::text[], $5::boolean[], $6::text[]) AS n (user_id, highlight, actions)
                     ON CONFLICT (user_id, event_id) DO UPDATE SET
                         room_id = excluded.room_id, stream_ordering = excluded.stream_ordering,
                         highlight = excluded.highlight, actions = excluded.actions, ts = excluded.ts
                 )
                 SELECT u FROM unnest($1::text[]) AS u
                 WHERE EXISTS (SELECT 1 FROM pushers p WHERE p.user_id = u)",
                &[
                    &users,
                    &room_id.as_str(),
                    &event_id.as_str(),
                    &stream_ordering,
                    &highlights,
                    &actions,
                    &big(ts),
                ],
            )
            .await?
        })?;
        with_pushers.iter().map(|r| parse(col::<String>(r, 0)?)).collect()
    }

    async fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE highlight) FROM notifications
             WHERE user_id = $1 AND room_id = $2 AND stream_ordering > {}",
            read_position("$2")
        );
        let r = query_one(&c, &sql, &[&user_id.as_str(), &room_id.as_str()]).await?;
        Ok(UnreadCounts {
            notifications: col::<i64>(&r, 0)? as u64,
            highlights: col::<i64>(&r, 1)? as u64,
        })
    }

    async fn unread_total(&self, user_id: &UserId) -> Result<u64> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT COUNT(*) FROM notifications n WHERE n.user_id = $1 AND n.stream_ordering > {}",
            read_position("n.room_id")
        );
        let r = query_one(&c, &sql, &[&user_id.as_str()]).await?;
        Ok(col::<i64>(&r, 0)? as u64)
    }

    async fn notifications(
        &self,
        user_id: &UserId,
        before: Option<StreamOrdering>,
        limit: usize,
        highlights_only: bool,
    ) -> Result<Vec<NotificationRecord>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT n.room_id, n.event_id, n.stream_ordering, n.highlight, n.actions, n.ts,
                    n.stream_ordering <= {}
             FROM notifications n
             WHERE n.user_id = $1 AND n.stream_ordering < $2 AND (NOT $3 OR n.highlight)
             ORDER BY n.stream_ordering DESC LIMIT $4",
            read_position("n.room_id")
        );
        let rows = query(
            &c,
            &sql,
            &[
                &user_id.as_str(),
                &before.unwrap_or(i64::MAX),
                &highlights_only,
                &big(limit as u64),
            ],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NotificationRecord {
                    room_id: parse(col(r, 0)?)?,
                    event_id: parse(col(r, 1)?)?,
                    stream_ordering: col(r, 2)?,
                    highlight: col(r, 3)?,
                    actions: col(r, 4)?,
                    ts: col::<i64>(r, 5)? as u64,
                    read: col(r, 6)?,
                })
            })
            .collect()
    }
}
