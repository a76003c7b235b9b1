//! Pushers and notifications.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, RoomId, UserId};

use super::{GenericClient, PgStorage, big, col, duties::NOW_MS, exec, parse, pg_write, query, query_one, query_opt};
use crate::{
    cluster::PUSH_DUTY,
    storage::{
        Result, StreamOrdering,
        push::{NewNotification, NotificationRecord, PushStorage, PusherKey, PusherRecord, QueuedPush, UnreadCounts},
    },
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
        room_name: Option<&str>,
    ) -> Result<bool> {
        if notifications.is_empty() {
            return Ok(false);
        }
        pg_write!(one self, |c| {
            insert_notifications(
                &c,
                (room_id, event_id, stream_ordering, ts),
                notifications,
                room_name,
            )
            .await?
        })
    }

    async fn any_queued_push(&self) -> Result<bool> {
        let c = self.client().await?;
        Ok(query_opt(&c, "SELECT 1 FROM push_queue LIMIT 1", &[]).await?.is_some())
    }

    async fn pushers_with_pushes(&self, limit: usize) -> Result<Vec<PusherKey>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT DISTINCT q.user_id, q.app_id, q.pushkey FROM push_queue q
             WHERE EXISTS (SELECT 1 FROM pushers p
                           WHERE p.user_id = q.user_id AND p.app_id = q.app_id AND p.pushkey = q.pushkey)
             LIMIT $1",
            &[&big(limit as u64)],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PusherKey {
                    user_id: parse(col::<String>(r, 0)?)?,
                    app_id: col(r, 1)?,
                    pushkey: col(r, 2)?,
                })
            })
            .collect()
    }

    async fn queued_pushes(&self, pusher: &PusherKey, limit: usize) -> Result<Vec<QueuedPush>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT position, event_id, actions, room_name FROM push_queue
             WHERE user_id = $1 AND app_id = $2 AND pushkey = $3 ORDER BY position LIMIT $4",
            &[
                &pusher.user_id.as_str(),
                &pusher.app_id,
                &pusher.pushkey,
                &big(limit as u64),
            ],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedPush {
                    position: col(r, 0)?,
                    event_id: parse(col::<String>(r, 1)?)?,
                    actions: col(r, 2)?,
                    room_name: col(r, 3)?,
                })
            })
            .collect()
    }

    async fn push_done(&self, position: i64) -> Result<()> {
        pg_write!(one self, |c| {
            exec(&c, "DELETE FROM push_queue WHERE position = $1", &[&position]).await?
        })?;
        Ok(())
    }

    async fn drop_old_pushes(&self, before_ms: u64) -> Result<u64> {
        pg_write!(one self, |c| {
            exec(
                &c,
                "DELETE FROM push_queue q WHERE q.queued_ts < $1
                     OR NOT EXISTS (SELECT 1 FROM pushers p
                                    WHERE p.user_id = q.user_id AND p.app_id = q.app_id AND p.pushkey = q.pushkey)",
                &[&big(before_ms)],
            )
            .await?
        })
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

/// Writes the notifications of an event (`(room, event, stream_ordering,
/// origin_server_ts)`) in one statement: the rows, a push queued for each
/// HTTP pusher of their users, and word to the process sending pushes if
/// another. Whether a push was queued.
pub(super) async fn insert_notifications(
    c: &impl GenericClient,
    (room_id, event_id, stream_ordering, ts): crate::storage::push::EventPlace<'_>,
    notifications: &[NewNotification],
    room_name: Option<&str>,
) -> Result<bool> {
    if notifications.is_empty() {
        return Ok(false);
    }
    // One row per user, the last one given winning (as one replacing
    // insert after another would): a statement may not upsert a row
    // twice.
    let by_user: BTreeMap<&str, &NewNotification> = notifications.iter().map(|n| (n.user_id.as_str(), n)).collect();
    let users: Vec<&str> = by_user.keys().copied().collect();
    let highlights: Vec<bool> = by_user.values().map(|n| n.highlight).collect();
    let actions: Vec<&str> = by_user.values().map(|n| n.actions.as_str()).collect();
    // One statement: the notifications, the pushes of the users' HTTP
    // pushers, and word to the process sending pushes if another.
    let sql = format!(
        "WITH added AS (
             INSERT INTO notifications (user_id, room_id, event_id, stream_ordering, highlight, actions, ts)
             SELECT n.user_id, $2, $3, $4, n.highlight, n.actions, $7
             FROM UNNEST($1::text[], $5::boolean[], $6::text[]) AS n (user_id, highlight, actions)
             ON CONFLICT (user_id, stream_ordering) DO UPDATE SET
                 room_id = excluded.room_id, event_id = excluded.event_id,
                 highlight = excluded.highlight, actions = excluded.actions, ts = excluded.ts
         ), queued AS (
             INSERT INTO push_queue (user_id, app_id, pushkey, event_id, actions, room_name, queued_ts)
             SELECT p.user_id, p.app_id, p.pushkey, $3, n.actions, $8, {NOW_MS}
             FROM UNNEST($1::text[], $6::text[]) AS n (user_id, actions)
             JOIN pushers p ON p.user_id = n.user_id
             WHERE p.json::jsonb ->> 'kind' = 'http'
             RETURNING 1
         ), told AS (
             SELECT pg_notify('weft', concat_ws(' ', current_setting('weft.process', TRUE), 'queued', holder, duty))
             FROM duties WHERE duty = $9 AND expires_ms >= {NOW_MS}
                 AND holder IS DISTINCT FROM current_setting('weft.process', TRUE)
                 AND EXISTS (SELECT 1 FROM queued)
         )
         SELECT (SELECT count(*) FROM queued), (SELECT count(*) FROM told)"
    );
    let row = query_one(
        c,
        &sql,
        &[
            &users,
            &room_id.as_str(),
            &event_id.as_str(),
            &stream_ordering,
            &highlights,
            &actions,
            &big(ts),
            &room_name,
            &PUSH_DUTY,
        ],
    )
    .await?;
    Ok(col::<i64>(&row, 0)? > 0)
}
