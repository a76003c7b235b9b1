//! Simplified sliding sync connections (`schema_v22.sql`), and rooms'
//! activity for ordering room lists.

use std::collections::HashMap;

use async_trait::async_trait;
use ruma::{OwnedRoomId, UserId};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{SqliteStorage, accounts::parse, exec, now_ms, query_one};
use crate::storage::{
    Result, StorageError, StreamOrdering,
    sliding_sync::{
        BUMP_WINDOW, RoomActivity, SentRoom, SlidingConnection, SlidingSyncStorage, bump_types_sql, distinct_rooms,
    },
};

/// A list as a JSON array, for `json_each`: one statement for many values.
fn json_list<T: serde::Serialize>(values: &[T]) -> Result<String> {
    serde_json::to_string(values).map_err(|e| StorageError::Database(format!("a list as JSON: {e}")))
}

/// Marks `conn` used now; its row, or `None` when it has none.
fn touch(tx: &Transaction<'_>, conn: &SlidingConnection) -> Result<Option<i64>> {
    Ok(query_one(
        tx,
        "UPDATE sliding_connections SET last_used_ts = ?4
         WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3 RETURNING connection",
        params![conn.user_id.as_str(), conn.device_id.as_str(), conn.conn_id, now_ms()],
        |r| r.get(0),
    )
    .optional()?)
}

/// Forgets the positions and records of the connections `which` selects
/// (SQL over `?1`, `?2`), then the connections; how many.
fn forget_connections(tx: &Transaction<'_>, which: &str, params: impl rusqlite::Params + Copy) -> Result<u64> {
    exec(
        tx,
        &format!(
            "DELETE FROM sliding_rooms WHERE connection IN (SELECT connection FROM sliding_connections WHERE {which})"
        ),
        params,
    )?;
    exec(
        tx,
        &format!(
            "DELETE FROM sliding_positions WHERE connection IN (SELECT connection FROM sliding_connections WHERE {which})"
        ),
        params,
    )?;
    Ok(exec(tx, &format!("DELETE FROM sliding_connections WHERE {which}"), params)? as u64)
}

/// Forgets the connections of a device that is deleted (in its deletion's
/// transaction).
pub(super) fn forget_device(tx: &Transaction<'_>, user_id: &UserId, device_id: &str) -> Result<()> {
    forget_connections(
        tx,
        "user_id = ?1 AND device_id = ?2",
        params![user_id.as_str(), device_id],
    )?;
    Ok(())
}

/// Forgets the connections of the device an access token logs out (before
/// the token goes, in the logout's transaction).
pub(super) fn forget_token_device(tx: &Transaction<'_>, token: &str) -> Result<()> {
    forget_connections(
        tx,
        "(user_id, device_id) IN (SELECT user_id, device_id FROM access_tokens WHERE token = ?1)",
        params![token],
    )?;
    Ok(())
}

/// Forgets every connection of a user logged out of all devices.
pub(super) fn forget_user(tx: &Transaction<'_>, user_id: &UserId) -> Result<()> {
    forget_connections(tx, "user_id = ?1", params![user_id.as_str()])?;
    Ok(())
}

/// The conditions on `e` of a live timeline event (as `events.rs` shows the
/// timeline) at or before `upto` (`?2`): backfilled history (negative
/// positions) is not live.
const LIVE_UPTO: &str = "e.stream_ordering > 0 AND e.stream_ordering <= ?2
    AND e.outlier = 0 AND e.rejected IS NULL AND e.soft_failed = 0";

#[async_trait]
impl SlidingSyncStorage for SqliteStorage {
    async fn sliding_position(&self, conn: &SlidingConnection, pos: i64) -> Result<Option<String>> {
        let conn = conn.clone();
        self.write(move |tx| {
            let Some(connection) = touch(tx, &conn)? else {
                return Ok(None);
            };
            let Some((heads, previous)) = query_one(
                tx,
                "SELECT heads, previous FROM sliding_positions WHERE position = ?1 AND connection = ?2",
                params![pos, connection],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)),
            )
            .optional()?
            else {
                return Ok(None);
            };
            // The client took `pos`: every other position goes, and the
            // records of answers not on its way to `pos` (those after the
            // position it followed but its own).
            exec(
                tx,
                "DELETE FROM sliding_positions WHERE connection = ?1 AND position <> ?2",
                params![connection, pos],
            )?;
            exec(
                tx,
                "DELETE FROM sliding_rooms WHERE connection = ?1 AND position > ?3 AND position <> ?2",
                params![connection, pos, previous.unwrap_or(0)],
            )?;
            Ok(Some(heads))
        })
        .await
    }

    async fn sliding_sent_rooms(
        &self,
        conn: &SlidingConnection,
        pos: i64,
        rooms: &[OwnedRoomId],
    ) -> Result<HashMap<OwnedRoomId, SentRoom>> {
        if rooms.is_empty() {
            return Ok(HashMap::new());
        }
        let (conn, rooms) = (conn.clone(), json_list(rooms)?);
        self.read(move |c| {
            // SQLite takes the other columns from the row of the MAX.
            let mut stmt = c.prepare_cached(
                "SELECT room_id, MAX(position), upto, config FROM sliding_rooms
                 WHERE connection = (SELECT connection FROM sliding_connections
                                     WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3)
                   AND room_id IN (SELECT value FROM json_each(?4)) AND position <= ?5
                 GROUP BY room_id",
            )?;
            let rows = stmt.query_map(
                params![conn.user_id.as_str(), conn.device_id.as_str(), conn.conn_id, rooms, pos],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?)),
            )?;
            let mut sent = HashMap::new();
            for row in rows {
                let (room_id, upto, config) = row?;
                let room_id: OwnedRoomId = parse(room_id)?;
                sent.insert(room_id.clone(), SentRoom { room_id, upto, config });
            }
            Ok(sent)
        })
        .await
    }

    async fn new_sliding_position(
        &self,
        conn: &SlidingConnection,
        after: Option<i64>,
        heads: &str,
        sent: &[SentRoom],
    ) -> Result<i64> {
        let (conn, heads) = (conn.clone(), heads.to_owned());
        let sent: Vec<SentRoom> = distinct_rooms(sent).into_iter().cloned().collect();
        self.write(move |tx| {
            let connection: i64 = match after {
                None => {
                    let connection = query_one(
                        tx,
                        "INSERT INTO sliding_connections (user_id, device_id, conn_id, last_used_ts)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (user_id, device_id, conn_id) DO UPDATE SET last_used_ts = excluded.last_used_ts
                         RETURNING connection",
                        params![conn.user_id.as_str(), conn.device_id.as_str(), conn.conn_id, now_ms()],
                        |r| r.get(0),
                    )?;
                    exec(tx, "DELETE FROM sliding_positions WHERE connection = ?1", [connection])?;
                    exec(tx, "DELETE FROM sliding_rooms WHERE connection = ?1", [connection])?;
                    connection
                }
                Some(after) => {
                    let connection = touch(tx, &conn)?.ok_or(StorageError::NotFound)?;
                    if !tx
                        .prepare_cached("SELECT 1 FROM sliding_positions WHERE position = ?1 AND connection = ?2")?
                        .exists(params![after, connection])?
                    {
                        return Err(StorageError::NotFound);
                    }
                    connection
                }
            };
            let position: i64 = query_one(
                tx,
                "INSERT INTO sliding_positions (connection, previous, heads) VALUES (?1, ?2, ?3)
                 RETURNING position",
                params![connection, after, heads],
                |r| r.get(0),
            )?;
            // Of what was sent before, only the record in force at `after`
            // still counts (for `after`, should the client ask from it again).
            let after = after.unwrap_or(0);
            for room in &sent {
                exec(
                    tx,
                    "DELETE FROM sliding_rooms WHERE connection = ?1 AND room_id = ?2
                         AND position < (SELECT MAX(position) FROM sliding_rooms
                                         WHERE connection = ?1 AND room_id = ?2 AND position <= ?3)",
                    params![connection, room.room_id.as_str(), after],
                )?;
                exec(
                    tx,
                    "INSERT INTO sliding_rooms (connection, room_id, position, upto, config)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![connection, room.room_id.as_str(), position, room.upto, room.config],
                )?;
            }
            Ok(position)
        })
        .await
    }

    async fn forget_sliding_connections(&self, unused_since_ms: u64) -> Result<u64> {
        let before = i64::try_from(unused_since_ms).unwrap_or(i64::MAX);
        self.write(move |tx| forget_connections(tx, "last_used_ts < ?1", [before]))
            .await
    }

    async fn room_activity(
        &self,
        rooms: &[OwnedRoomId],
        upto: StreamOrdering,
    ) -> Result<HashMap<OwnedRoomId, RoomActivity>> {
        if rooms.is_empty() {
            return Ok(HashMap::new());
        }
        let rooms = json_list(rooms)?;
        self.read(move |c| {
            // The stamps kept with each room; for a room written to after
            // `upto`, a walk back from `upto` (CASE evaluates only the
            // branch it takes).
            let mut stmt = c.prepare_cached(&format!(
                "SELECT r.value, m.latest_stream, m.bump_stream,
                     CASE WHEN m.latest_stream > ?2 THEN
                         (SELECT e.stream_ordering FROM events e WHERE e.room_id = r.value AND {LIVE_UPTO}
                          ORDER BY e.stream_ordering DESC LIMIT 1) END,
                     CASE WHEN m.bump_stream > ?2 THEN
                         (SELECT max(w.stream_ordering) FROM
                             (SELECT e.stream_ordering, e.type FROM events e WHERE e.room_id = r.value AND {LIVE_UPTO}
                              ORDER BY e.stream_ordering DESC LIMIT {BUMP_WINDOW}) w
                          WHERE w.type IN ({bump_types})) END
                 FROM json_each(?1) r JOIN rooms m ON m.room_id = r.value
                 WHERE m.latest_stream IS NOT NULL",
                bump_types = bump_types_sql(),
            ))?;
            let rows = stmt.query_map(params![rooms, upto], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
            let mut activity = HashMap::new();
            for row in rows {
                let (room_id, latest, bump, walked_latest, walked_bump) = row?;
                let latest = if latest <= upto { Some(latest) } else { walked_latest };
                let bump = match bump {
                    Some(bump) if bump > upto => walked_bump,
                    bump => bump,
                };
                if let Some(latest) = latest {
                    activity.insert(parse(room_id)?, RoomActivity { latest, bump });
                }
            }
            Ok(activity)
        })
        .await
    }
}
