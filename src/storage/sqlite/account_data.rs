//! Account data (global and per room): one row per user, room and type,
//! holding the latest content and the stream position of its last change.

use ruma::{OwnedRoomId, RoomId, UserId};
use rusqlite::{Connection, Transaction, params};

use super::{exec, query_one};
use crate::storage::{AccountData, Result, StorageError};

/// Global account data is stored under the empty room ID.
fn room_key(room_id: Option<&RoomId>) -> &str {
    room_id.map_or("", RoomId::as_str)
}

pub fn put(
    tx: &Transaction<'_>,
    user_id: &UserId,
    room_id: Option<&RoomId>,
    data_type: &str,
    content: &str,
) -> Result<i64> {
    // The writer is one connection in an immediate transaction: positions
    // are handed out (and committed) in order.
    let position: i64 = query_one(tx, "SELECT COALESCE(MAX(position), 0) + 1 FROM account_data", [], |r| {
        r.get(0)
    })?;
    exec(
        tx,
        "INSERT INTO account_data (user_id, room_id, data_type, content, position)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET
             content = excluded.content, position = excluded.position",
        params![user_id.as_str(), room_key(room_id), data_type, content, position],
    )?;
    Ok(position)
}

pub fn get(c: &Connection, user_id: &UserId, room_id: Option<&RoomId>, data_type: &str) -> Result<Option<String>> {
    match query_one(
        c,
        "SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND data_type = ?3",
        params![user_id.as_str(), room_key(room_id), data_type],
        |r| r.get(0),
    ) {
        Ok(content) => Ok(Some(content)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn rows(mut stmt: rusqlite::CachedStatement<'_>, params: impl rusqlite::Params) -> Result<Vec<AccountData>> {
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    rows.map(|row| {
        let (room, data_type, content, position) = row?;
        let room_id = match room.as_str() {
            "" => None,
            _ => Some(
                OwnedRoomId::try_from(room).map_err(|e| StorageError::Corrupt(format!("account data room ID: {e}")))?,
            ),
        };
        Ok(AccountData {
            room_id,
            data_type,
            content,
            position,
        })
    })
    .collect()
}

pub fn changes(c: &Connection, user_id: &UserId, after: Option<i64>, upto: i64) -> Result<Vec<AccountData>> {
    let stmt = c.prepare_cached(
        "SELECT room_id, data_type, content, position FROM account_data
         WHERE user_id = ?1 AND position > ?2 AND position <= ?3 ORDER BY position",
    )?;
    rows(stmt, params![user_id.as_str(), after.unwrap_or(i64::MIN), upto])
}

pub fn of_room(c: &Connection, user_id: &UserId, room_id: &RoomId, upto: i64) -> Result<Vec<AccountData>> {
    let stmt = c.prepare_cached(
        "SELECT room_id, data_type, content, position FROM account_data
         WHERE user_id = ?1 AND room_id = ?2 AND position <= ?3 ORDER BY position",
    )?;
    rows(stmt, params![user_id.as_str(), room_id.as_str(), upto])
}

pub fn max_position(c: &Connection) -> Result<i64> {
    Ok(query_one(
        c,
        "SELECT COALESCE(MAX(position), 0) FROM account_data",
        [],
        |r| r.get(0),
    )?)
}
