//! The ephemeral stream: read receipts and who is typing, at positions
//! of the `'ephemeral'` row of `stream_positions` (the writer is one
//! connection in an immediate transaction: positions are committed in
//! order). PostgreSQL's `ephemeral.rs` is the same, for several processes.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{exec, next_position, now_ms, query_one, stream_head};
use crate::storage::{Receipt, Result, RoomTyping, Typing, parse};

pub fn put_receipt(tx: &Transaction<'_>, r: &Receipt) -> Result<Option<i64>> {
    // A receipt only moves forward: one for an event older (in stream
    // order) than the one already acknowledged is dropped. An event not
    // held here counts as the newest.
    let moves: bool = query_one(
        tx,
        "SELECT coalesce((SELECT stream_ordering FROM events WHERE event_id = ?4), 9223372036854775807)
             >= coalesce((SELECT e.stream_ordering FROM receipts r JOIN events e ON e.event_id = r.event_id
                          WHERE r.room_id = ?1 AND r.user_id = ?2 AND r.receipt_type = ?3),
                         -9223372036854775808)",
        params![
            r.room_id.as_str(),
            r.user_id.as_str(),
            r.receipt_type,
            r.event_id.as_str()
        ],
        |row| row.get(0),
    )?;
    if !moves {
        return Ok(None);
    }
    let position = next_position(tx, "ephemeral")?;
    exec(
        tx,
        "INSERT INTO receipts (room_id, user_id, receipt_type, event_id, ts, position)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (room_id, user_id, receipt_type) DO UPDATE SET
             event_id = excluded.event_id, ts = excluded.ts, position = excluded.position",
        params![
            r.room_id.as_str(),
            r.user_id.as_str(),
            r.receipt_type,
            r.event_id.as_str(),
            i64::try_from(r.ts).unwrap_or(i64::MAX),
            position
        ],
    )?;
    Ok(Some(position))
}

pub fn receipts(c: &Connection, room_id: &RoomId, after: Option<i64>) -> Result<Vec<Receipt>> {
    let mut stmt = c.prepare_cached(
        "SELECT user_id, receipt_type, event_id, ts, position FROM receipts
         WHERE room_id = ?1 AND position > ?2 ORDER BY position",
    )?;
    let rows = stmt.query_map(params![room_id.as_str(), after.unwrap_or(i64::MIN)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut receipts = Vec::new();
    for row in rows {
        let (user, receipt_type, event, ts, position) = row?;
        receipts.push(Receipt {
            room_id: room_id.to_owned(),
            user_id: parse(user)?,
            receipt_type,
            event_id: parse(event)?,
            ts: u64::try_from(ts).unwrap_or(0),
            position,
        });
    }
    Ok(receipts)
}

pub fn set_typing(tx: &Transaction<'_>, room_id: &RoomId, user_id: &UserId, change: Typing) -> Result<Option<i64>> {
    let (room, user) = (room_id.as_str(), user_id.as_str());
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let was: Option<i64> = tx
        .prepare_cached("SELECT until_ms FROM typing WHERE room_id = ?1 AND user_id = ?2")?
        .query_row(params![room, user], |r| r.get(0))
        .optional()?;
    let changed = match change {
        Typing::Until(until) => {
            exec(
                tx,
                "INSERT INTO typing (room_id, user_id, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room_id, user_id) DO UPDATE SET until_ms = excluded.until_ms",
                params![room, user, ms(until)],
            )?;
            was.is_none_or(|was| was <= now_ms())
        }
        Typing::Stopped => {
            exec(
                tx,
                "DELETE FROM typing WHERE room_id = ?1 AND user_id = ?2",
                params![room, user],
            )?;
            was.is_some_and(|was| was > now_ms())
        }
        Typing::Expired(until) => {
            was == Some(ms(until))
                && exec(
                    tx,
                    "DELETE FROM typing WHERE room_id = ?1 AND user_id = ?2",
                    params![room, user],
                )? > 0
        }
    };
    if !changed {
        return Ok(None);
    }
    let position = next_position(tx, "ephemeral")?;
    exec(
        tx,
        "INSERT INTO typing_rooms (room_id, position) VALUES (?1, ?2)
         ON CONFLICT (room_id) DO UPDATE SET position = excluded.position",
        params![room, position],
    )?;
    Ok(Some(position))
}

pub fn typing(c: &Connection, after: Option<i64>, up_to: i64) -> Result<Vec<RoomTyping>> {
    let mut stmt = c.prepare_cached(
        "SELECT r.room_id, r.position, t.user_id FROM typing_rooms r
         LEFT JOIN typing t ON t.room_id = r.room_id AND t.until_ms > ?3
         WHERE r.position > ?1 AND r.position <= ?2
         ORDER BY r.position",
    )?;
    let rows = stmt.query_map(params![after.unwrap_or(i64::MIN), up_to, now_ms()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    RoomTyping::from_rows(rows.map(|row| Ok(row?)))
}

pub fn head(c: &Connection) -> Result<i64> {
    stream_head(c, "ephemeral")
}

pub fn run_out(c: &Connection, before_ms: u64) -> Result<Vec<(OwnedRoomId, OwnedUserId, u64)>> {
    let mut stmt = c.prepare_cached("SELECT room_id, user_id, until_ms FROM typing WHERE until_ms <= ?1")?;
    let rows = stmt.query_map([i64::try_from(before_ms).unwrap_or(i64::MAX)], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
    })?;
    rows.map(|row| {
        let (room, user, until) = row?;
        Ok((parse(room)?, parse(user)?, until.max(0) as u64))
    })
    .collect()
}
