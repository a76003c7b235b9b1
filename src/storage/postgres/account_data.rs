//! Account data (global and per room): one row per user, room and type,
//! holding the latest content and the stream position of its last change.

use ruma::{OwnedRoomId, RoomId, UserId};
use tokio_postgres::Row;

use super::{GenericClient, col, exec, next_position_of, query, query_opt, stream_head};
use crate::storage::{AccountData, Result, StorageError};

/// Global account data is stored under the empty room ID.
fn room_key(room_id: Option<&RoomId>) -> &str {
    room_id.map_or("", RoomId::as_str)
}

pub async fn put(
    tx: &impl GenericClient,
    user_id: &UserId,
    room_id: Option<&RoomId>,
    data_type: &str,
    content: &str,
) -> Result<i64> {
    // Taken last, just before the row is written: the counter row stays
    // locked until commit, so positions are committed in order.
    let position = next_position_of(tx, "account_data", Some(user_id.as_str())).await?;
    exec(
        tx,
        "INSERT INTO account_data (user_id, room_id, data_type, content, position)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET
             content = excluded.content, position = excluded.position",
        &[&user_id.as_str(), &room_key(room_id), &data_type, &content, &position],
    )
    .await?;
    Ok(position)
}

pub async fn get(
    c: &impl GenericClient,
    user_id: &UserId,
    room_id: Option<&RoomId>,
    data_type: &str,
) -> Result<Option<String>> {
    query_opt(
        c,
        "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3",
        &[&user_id.as_str(), &room_key(room_id), &data_type],
    )
    .await?
    .map(|r| col(&r, 0))
    .transpose()
}

/// Rows of `room_id, data_type, content, position`.
fn rows(rows: &[Row]) -> Result<Vec<AccountData>> {
    rows.iter()
        .map(|r| {
            let room: String = col(r, 0)?;
            let room_id = match room.as_str() {
                "" => None,
                _ => Some(
                    OwnedRoomId::try_from(room)
                        .map_err(|e| StorageError::Corrupt(format!("account data room ID: {e}")))?,
                ),
            };
            Ok(AccountData {
                room_id,
                data_type: col(r, 1)?,
                content: col(r, 2)?,
                position: col(r, 3)?,
            })
        })
        .collect()
}

pub async fn changes(
    c: &impl GenericClient,
    user_id: &UserId,
    after: Option<i64>,
    upto: i64,
) -> Result<Vec<AccountData>> {
    rows(
        &query(
            c,
            "SELECT room_id, data_type, content, position FROM account_data
             WHERE user_id = $1 AND position > $2 AND position <= $3 ORDER BY position",
            &[&user_id.as_str(), &after.unwrap_or(i64::MIN), &upto],
        )
        .await?,
    )
}

pub async fn of_room(
    c: &impl GenericClient,
    user_id: &UserId,
    room_id: &RoomId,
    upto: i64,
) -> Result<Vec<AccountData>> {
    rows(
        &query(
            c,
            "SELECT room_id, data_type, content, position FROM account_data
             WHERE user_id = $1 AND room_id = $2 AND position <= $3 ORDER BY position",
            &[&user_id.as_str(), &room_id.as_str(), &upto],
        )
        .await?,
    )
}

/// The newest committed position of the account data stream (its counter
/// row: it never goes back, even when an erased user's rows are deleted).
pub async fn max_position(c: &impl GenericClient) -> Result<i64> {
    stream_head(c, "account_data").await
}
