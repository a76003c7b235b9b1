//! Pushers and notifications (`schema_v9.sql`).

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use rusqlite::{Connection, Transaction, params};

use super::{SqliteStorage, exec, query_one};
use crate::storage::{
    Result, StorageError, StreamOrdering,
    push::{NewNotification, NotificationRecord, PushStorage, PusherKey, PusherRecord, QueuedPush, UnreadCounts},
};

/// The stream ordering of the user's read receipt in the room (0 if none):
/// SQL over `?1` (user) and the room expression `room`.
fn read_position(room: &str) -> String {
    format!(
        "COALESCE((SELECT MAX(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id
                   WHERE r.room_id = {room} AND r.user_id = ?1
                     AND r.receipt_type IN ('m.read', 'm.read.private')), 0)"
    )
}

fn pushers_of(c: &Connection, user_id: &UserId) -> Result<Vec<PusherRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT app_id, pushkey, json, ts, device_id FROM pushers WHERE user_id = ?1
         ORDER BY ts, app_id, pushkey",
    )?;
    let rows = stmt.query_map([user_id.as_str()], |r| {
        Ok(PusherRecord {
            user_id: user_id.to_owned(),
            app_id: r.get(0)?,
            pushkey: r.get(1)?,
            json: r.get(2)?,
            ts: r.get::<_, i64>(3)? as u64,
            device_id: r.get::<_, Option<String>>(4)?.map(OwnedDeviceId::from),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[async_trait]
impl PushStorage for SqliteStorage {
    async fn set_pusher(&self, pusher: &PusherRecord, append: bool) -> Result<()> {
        let pusher = pusher.clone();
        self.write(move |tx| {
            if !append {
                exec(
                    tx,
                    "DELETE FROM pushers WHERE app_id = ?1 AND pushkey = ?2 AND user_id != ?3",
                    params![pusher.app_id, pusher.pushkey, pusher.user_id.as_str()],
                )?;
            }
            exec(
                tx,
                "INSERT INTO pushers (user_id, app_id, pushkey, json, ts, device_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET
                     json = excluded.json, device_id = excluded.device_id",
                params![
                    pusher.user_id.as_str(),
                    pusher.app_id,
                    pusher.pushkey,
                    pusher.json,
                    pusher.ts as i64,
                    pusher.device_id.as_ref().map(|d| d.as_str())
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<bool> {
        let (user_id, app_id, pushkey) = (user_id.to_owned(), app_id.to_owned(), pushkey.to_owned());
        self.write(move |tx| {
            Ok(exec(
                tx,
                "DELETE FROM pushers WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
                params![user_id.as_str(), app_id, pushkey],
            )? > 0)
        })
        .await
    }

    async fn pushers(&self, user_id: &UserId) -> Result<Vec<PusherRecord>> {
        let user_id = user_id.to_owned();
        self.read(move |c| pushers_of(c, &user_id)).await
    }

    async fn delete_other_devices_pushers(&self, user_id: &UserId, keep: &DeviceId) -> Result<()> {
        let (user_id, keep) = (user_id.to_owned(), keep.to_owned());
        self.write(move |tx| {
            exec(
                tx,
                "DELETE FROM pushers WHERE user_id = ?1 AND (device_id IS NULL OR device_id != ?2)",
                params![user_id.as_str(), keep.as_str()],
            )?;
            Ok(())
        })
        .await
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
        let (room_id, event_id, notifications) = (room_id.to_owned(), event_id.to_owned(), notifications.to_vec());
        let room_name = room_name.map(str::to_owned);
        self.write(move |tx| {
            insert_notifications(
                tx,
                (&room_id, &event_id, stream_ordering, ts),
                &notifications,
                room_name.as_deref(),
            )
        })
        .await
    }

    async fn any_queued_push(&self) -> Result<bool> {
        self.read(|c| Ok(c.prepare_cached("SELECT 1 FROM push_queue LIMIT 1")?.exists([])?))
            .await
    }

    async fn pushers_with_pushes(&self, limit: usize) -> Result<Vec<PusherKey>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT q.user_id, q.app_id, q.pushkey FROM push_queue q
                 WHERE EXISTS (SELECT 1 FROM pushers p
                               WHERE p.user_id = q.user_id AND p.app_id = q.app_id AND p.pushkey = q.pushkey)
                 LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            rows.map(|row| {
                let (user_id, app_id, pushkey) = row?;
                Ok(PusherKey {
                    user_id: OwnedUserId::try_from(user_id).map_err(|e| StorageError::Corrupt(e.to_string()))?,
                    app_id,
                    pushkey,
                })
            })
            .collect()
        })
        .await
    }

    async fn queued_pushes(&self, pusher: &PusherKey, limit: usize) -> Result<Vec<QueuedPush>> {
        let pusher = pusher.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT position, event_id, actions, room_name FROM push_queue
                 WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3 ORDER BY position LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![pusher.user_id.as_str(), pusher.app_id, pusher.pushkey, limit as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )?;
            rows.map(|row| {
                let (position, event_id, actions, room_name) = row?;
                Ok(QueuedPush {
                    position,
                    event_id: OwnedEventId::try_from(event_id).map_err(|e| StorageError::Corrupt(e.to_string()))?,
                    actions,
                    room_name,
                })
            })
            .collect()
        })
        .await
    }

    async fn push_done(&self, position: i64) -> Result<()> {
        self.write(move |tx| {
            exec(tx, "DELETE FROM push_queue WHERE position = ?1", [position])?;
            Ok(())
        })
        .await
    }

    async fn drop_old_pushes(&self, before_ms: u64) -> Result<u64> {
        self.write(move |tx| {
            Ok(exec(
                tx,
                "DELETE FROM push_queue WHERE queued_ts < ?1
                     OR NOT EXISTS (SELECT 1 FROM pushers p WHERE p.user_id = push_queue.user_id
                                    AND p.app_id = push_queue.app_id AND p.pushkey = push_queue.pushkey)",
                [before_ms as i64],
            )? as u64)
        })
        .await
    }

    async fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        self.read(move |c| {
            let sql = format!(
                "SELECT COUNT(*), COALESCE(SUM(highlight), 0) FROM notifications
                 WHERE user_id = ?1 AND room_id = ?2 AND stream_ordering > {}",
                read_position("?2")
            );
            let (notifications, highlights): (i64, i64) =
                query_one(c, &sql, params![user_id.as_str(), room_id.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok(UnreadCounts {
                notifications: notifications as u64,
                highlights: highlights as u64,
            })
        })
        .await
    }

    async fn unread_total(&self, user_id: &UserId) -> Result<u64> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            let sql = format!(
                "SELECT COUNT(*) FROM notifications n WHERE n.user_id = ?1 AND n.stream_ordering > {}",
                read_position("n.room_id")
            );
            let count: i64 = query_one(c, &sql, [user_id.as_str()], |r| r.get(0))?;
            Ok(count as u64)
        })
        .await
    }

    async fn notifications(
        &self,
        user_id: &UserId,
        before: Option<StreamOrdering>,
        limit: usize,
        highlights_only: bool,
    ) -> Result<Vec<NotificationRecord>> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            let sql = format!(
                "SELECT n.room_id, n.event_id, n.stream_ordering, n.highlight, n.actions, n.ts,
                        n.stream_ordering <= {}
                 FROM notifications n
                 WHERE n.user_id = ?1 AND n.stream_ordering < ?2 AND (?3 = 0 OR n.highlight = 1)
                 ORDER BY n.stream_ordering DESC LIMIT ?4",
                read_position("n.room_id")
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    user_id.as_str(),
                    before.unwrap_or(i64::MAX),
                    highlights_only,
                    limit as i64
                ],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, bool>(6)?,
                    ))
                },
            )?;
            rows.map(|row| {
                let (room_id, event_id, stream_ordering, highlight, actions, ts, read) = row?;
                Ok(NotificationRecord {
                    room_id: OwnedRoomId::try_from(room_id)
                        .map_err(|e| StorageError::Corrupt(format!("notification room ID: {e}")))?,
                    event_id: OwnedEventId::try_from(event_id)
                        .map_err(|e| StorageError::Corrupt(format!("notification event ID: {e}")))?,
                    stream_ordering,
                    highlight,
                    actions,
                    ts: ts as u64,
                    read,
                })
            })
            .collect()
        })
        .await
    }
}

/// Writes the notifications of an event (`(room, event, stream_ordering,
/// origin_server_ts)`), a push queued for each HTTP pusher of their users,
/// inside the write transaction; whether a push was queued.
pub(super) fn insert_notifications(
    tx: &Transaction<'_>,
    (room_id, event_id, stream_ordering, ts): crate::storage::push::EventPlace<'_>,
    notifications: &[NewNotification],
    room_name: Option<&str>,
) -> Result<bool> {
    let now = super::now_ms();
    let mut queued = 0;
    for n in notifications {
        exec(
            tx,
            "INSERT OR REPLACE INTO notifications
                 (user_id, room_id, event_id, stream_ordering, highlight, actions, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                n.user_id.as_str(),
                room_id.as_str(),
                event_id.as_str(),
                stream_ordering,
                n.highlight,
                n.actions,
                ts as i64
            ],
        )?;
        queued += exec(
            tx,
            "INSERT INTO push_queue (user_id, app_id, pushkey, event_id, actions, room_name, queued_ts)
             SELECT user_id, app_id, pushkey, ?2, ?3, ?4, ?5 FROM pushers
             WHERE user_id = ?1 AND json_extract(json, '$.kind') = 'http'",
            params![n.user_id.as_str(), event_id.as_str(), n.actions, room_name, now],
        )?;
    }
    Ok(queued > 0)
}
