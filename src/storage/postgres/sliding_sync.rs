//! Simplified sliding sync connections (`schema_v5.sql`), and rooms'
//! activity for ordering room lists.
//!
//! A write of a connection locks its `sliding_connections` row first (the
//! `UPDATE` or upsert that marks it used), so that the writes of one
//! connection, through whichever process, run one at a time; the statements
//! after it see what the one before committed.

use std::collections::HashMap;

use async_trait::async_trait;
use ruma::{OwnedRoomId, UserId};

use super::{GenericClient, PgStorage, big, col, exec, now_ms, parse, pg_write, query, query_one, query_opt};
use crate::storage::{
    Result, StorageError, StreamOrdering,
    sliding_sync::{
        BUMP_WINDOW, RoomActivity, SentRoom, SlidingConnection, SlidingSyncStorage, bump_types_sql, distinct_rooms,
    },
};

/// Marks `conn` used now (locking its row); its row, or `None` when it has
/// none.
async fn touch(tx: &impl GenericClient, conn: &SlidingConnection) -> Result<Option<i64>> {
    query_opt(
        tx,
        "UPDATE sliding_connections SET last_used_ts = $4
         WHERE user_id = $1 AND device_id = $2 AND conn_id = $3 RETURNING connection",
        &[
            &conn.user_id.as_str(),
            &conn.device_id.as_str(),
            &conn.conn_id,
            &now_ms(),
        ],
    )
    .await?
    .map(|r| col(&r, 0))
    .transpose()
}

/// Forgets the positions and records of `connections`, whose rows were
/// just deleted: the deletion waited for their writes in progress, which
/// this statement sees.
async fn forget_connections(tx: &impl GenericClient, connections: &[i64]) -> Result<()> {
    if connections.is_empty() {
        return Ok(());
    }
    exec(
        tx,
        "WITH positions AS (DELETE FROM sliding_positions WHERE connection = ANY($1))
         DELETE FROM sliding_rooms WHERE connection = ANY($1)",
        &[&connections],
    )
    .await?;
    Ok(())
}

/// Forgets the connections of a device that is deleted (in its deletion's
/// transaction).
pub(super) async fn forget_device(tx: &impl GenericClient, user_id: &UserId, device_id: &str) -> Result<()> {
    let rows = query(
        tx,
        "DELETE FROM sliding_connections WHERE user_id = $1 AND device_id = $2 RETURNING connection",
        &[&user_id.as_str(), &device_id],
    )
    .await?;
    let gone: Vec<i64> = rows.iter().map(|r| col(r, 0)).collect::<Result<_>>()?;
    forget_connections(tx, &gone).await
}

/// Forgets the connections of the device an access token logs out (before
/// the token goes, in the logout's transaction).
pub(super) async fn forget_token_device(tx: &impl GenericClient, token: &str) -> Result<()> {
    let rows = query(
        tx,
        "DELETE FROM sliding_connections WHERE (user_id, device_id) IN
             (SELECT user_id, device_id FROM access_tokens WHERE token = $1)
         RETURNING connection",
        &[&token],
    )
    .await?;
    let gone: Vec<i64> = rows.iter().map(|r| col(r, 0)).collect::<Result<_>>()?;
    forget_connections(tx, &gone).await
}

/// Forgets every connection of a user logged out of all devices.
pub(super) async fn forget_user(tx: &impl GenericClient, user_id: &UserId) -> Result<()> {
    let rows = query(
        tx,
        "DELETE FROM sliding_connections WHERE user_id = $1 RETURNING connection",
        &[&user_id.as_str()],
    )
    .await?;
    let gone: Vec<i64> = rows.iter().map(|r| col(r, 0)).collect::<Result<_>>()?;
    forget_connections(tx, &gone).await
}

async fn sliding_position(tx: &impl GenericClient, conn: &SlidingConnection, pos: i64) -> Result<Option<String>> {
    let Some(connection) = touch(tx, conn).await? else {
        return Ok(None);
    };
    let Some(row) = query_opt(
        tx,
        "SELECT heads, previous FROM sliding_positions WHERE position = $1 AND connection = $2",
        &[&pos, &connection],
    )
    .await?
    else {
        return Ok(None);
    };
    let (heads, previous): (String, Option<i64>) = (col(&row, 0)?, col(&row, 1)?);
    // The client took `pos`: every other position goes, and the records of
    // answers not on its way to `pos` (those after the position it followed
    // but its own).
    exec(
        tx,
        "WITH positions AS (DELETE FROM sliding_positions WHERE connection = $1 AND position <> $2)
         DELETE FROM sliding_rooms WHERE connection = $1 AND position > $3 AND position <> $2",
        &[&connection, &pos, &previous.unwrap_or(0)],
    )
    .await?;
    Ok(Some(heads))
}

async fn new_sliding_position(
    tx: &impl GenericClient,
    conn: &SlidingConnection,
    after: Option<i64>,
    heads: &str,
    sent: &[SentRoom],
) -> Result<i64> {
    let connection: i64 = match after {
        None => {
            let row = query_one(
                tx,
                "INSERT INTO sliding_connections (user_id, device_id, conn_id, last_used_ts)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, device_id, conn_id) DO UPDATE SET last_used_ts = excluded.last_used_ts
                 RETURNING connection",
                &[
                    &conn.user_id.as_str(),
                    &conn.device_id.as_str(),
                    &conn.conn_id,
                    &now_ms(),
                ],
            )
            .await?;
            let connection = col(&row, 0)?;
            forget_connections(tx, &[connection]).await?;
            connection
        }
        Some(_) => touch(tx, conn).await?.ok_or(StorageError::NotFound)?,
    };
    let row = query_opt(
        tx,
        "INSERT INTO sliding_positions (connection, previous, heads)
         SELECT $1, $2, $3
         WHERE $2::BIGINT IS NULL
            OR EXISTS (SELECT 1 FROM sliding_positions WHERE position = $2 AND connection = $1)
         RETURNING position",
        &[&connection, &after, &heads],
    )
    .await?
    .ok_or(StorageError::NotFound)?;
    let position: i64 = col(&row, 0)?;
    let sent = distinct_rooms(sent);
    if sent.is_empty() {
        return Ok(position);
    }
    let rooms: Vec<&str> = sent.iter().map(|r| r.room_id.as_str()).collect();
    let upto: Vec<i64> = sent.iter().map(|r| r.upto).collect();
    let configs: Vec<&str> = sent.iter().map(|r| r.config.as_str()).collect();
    // Of what was sent before, only the record in force at `after` still
    // counts (for `after`, should the client ask from it again).
    exec(
        tx,
        "WITH sent AS (SELECT * FROM unnest($2::TEXT[], $3::BIGINT[], $4::TEXT[]) AS s (room_id, upto, config)),
         dropped AS (
             DELETE FROM sliding_rooms r USING sent
             WHERE r.connection = $1 AND r.room_id = sent.room_id
               AND r.position < (SELECT MAX(o.position) FROM sliding_rooms o
                                 WHERE o.connection = $1 AND o.room_id = sent.room_id AND o.position <= $5))
         INSERT INTO sliding_rooms (connection, room_id, position, upto, config)
         SELECT $1, room_id, $6, upto, config FROM sent",
        &[&connection, &rooms, &upto, &configs, &after.unwrap_or(0), &position],
    )
    .await?;
    Ok(position)
}

#[async_trait]
impl SlidingSyncStorage for PgStorage {
    async fn sliding_position(&self, conn: &SlidingConnection, pos: i64) -> Result<Option<String>> {
        pg_write!(self, |tx| sliding_position(&tx, conn, pos).await?)
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
        let c = self.client().await?;
        let rooms: Vec<&str> = rooms.iter().map(|r| r.as_str()).collect();
        let rows = query(
            &c,
            "SELECT DISTINCT ON (r.room_id) r.room_id, r.upto, r.config FROM sliding_rooms r
             WHERE r.connection = (SELECT connection FROM sliding_connections
                                   WHERE user_id = $1 AND device_id = $2 AND conn_id = $3)
               AND r.room_id = ANY($4) AND r.position <= $5
             ORDER BY r.room_id, r.position DESC",
            &[
                &conn.user_id.as_str(),
                &conn.device_id.as_str(),
                &conn.conn_id,
                &rooms,
                &pos,
            ],
        )
        .await?;
        let mut sent = HashMap::with_capacity(rows.len());
        for row in &rows {
            let room_id: OwnedRoomId = parse(col::<String>(row, 0)?)?;
            let room = SentRoom {
                room_id: room_id.clone(),
                upto: col(row, 1)?,
                config: col(row, 2)?,
            };
            sent.insert(room_id, room);
        }
        Ok(sent)
    }

    async fn new_sliding_position(
        &self,
        conn: &SlidingConnection,
        after: Option<i64>,
        heads: &str,
        sent: &[SentRoom],
    ) -> Result<i64> {
        pg_write!(self, |tx| new_sliding_position(&tx, conn, after, heads, sent).await?)
    }

    async fn forget_sliding_connections(&self, unused_since_ms: u64) -> Result<u64> {
        pg_write!(self, |tx| {
            let rows = query(
                &tx,
                "DELETE FROM sliding_connections WHERE last_used_ts < $1 RETURNING connection",
                &[&big(unused_since_ms)],
            )
            .await?;
            let gone: Vec<i64> = rows.iter().map(|r| col(r, 0)).collect::<Result<_>>()?;
            forget_connections(&tx, &gone).await?;
            gone.len() as u64
        })
    }

    async fn room_activity(
        &self,
        rooms: &[OwnedRoomId],
        upto: StreamOrdering,
    ) -> Result<HashMap<OwnedRoomId, RoomActivity>> {
        if rooms.is_empty() {
            return Ok(HashMap::new());
        }
        let c = self.client().await?;
        let rooms: Vec<&str> = rooms.iter().map(|r| r.as_str()).collect();
        // The stamps kept with each room; for a room written to after
        // `upto`, a walk back from `upto` on `events_stream` (live events
        // only, as `events.rs` shows the timeline).
        let rows = query(
            &c,
            &format!(
                "SELECT m.room_id,
                     CASE WHEN m.latest_stream <= $2 THEN m.latest_stream ELSE
                         (SELECT e.stream_ordering FROM events e
                          WHERE e.room_id = m.room_id AND e.stream_ordering > 0 AND e.stream_ordering <= $2
                            AND NOT e.outlier AND e.rejected IS NULL AND NOT e.soft_failed
                          ORDER BY e.stream_ordering DESC LIMIT 1) END,
                     CASE WHEN m.bump_stream IS NULL OR m.bump_stream <= $2 THEN m.bump_stream ELSE
                         (SELECT max(w.stream_ordering) FROM
                             (SELECT e.stream_ordering, e.type FROM events e
                              WHERE e.room_id = m.room_id AND e.stream_ordering > 0 AND e.stream_ordering <= $2
                                AND NOT e.outlier AND e.rejected IS NULL AND NOT e.soft_failed
                              ORDER BY e.stream_ordering DESC LIMIT {BUMP_WINDOW}) w
                          WHERE w.type IN ({bump_types})) END
                 FROM rooms m WHERE m.room_id = ANY($1) AND m.latest_stream IS NOT NULL",
                bump_types = bump_types_sql(),
            ),
            &[&rooms, &upto],
        )
        .await?;
        let mut activity = HashMap::with_capacity(rows.len());
        for row in &rows {
            let Some(latest) = col::<Option<i64>>(row, 1)? else {
                continue;
            };
            let room_id: OwnedRoomId = parse(col::<String>(row, 0)?)?;
            activity.insert(
                room_id,
                RoomActivity {
                    latest,
                    bump: col(row, 2)?,
                },
            );
        }
        Ok(activity)
    }
}
