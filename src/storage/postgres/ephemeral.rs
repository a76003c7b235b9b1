//! The ephemeral stream: read receipts and who is typing. Both take their
//! positions from the `'ephemeral'` row of `stream_positions` inside the
//! write, which notifies the other processes (`<process> ephemeral
//! <position> <room>`, `listen.rs`) and keeps the row locked until the commit: a
//! process that reads up to the head it heard of never misses a receipt
//! or a typing change another process is still writing. Typing is kept
//! here, not in memory, so that a `/sync` on any process sees who types.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::{GenericClient, big, col, exec, next_position_of, now_ms, parse, query, query_opt, stream_head};
use crate::storage::{Receipt, Result, RoomTyping, Typing};

/// Records a receipt at a new position; `None` when it would move the
/// user's receipt back to an older event (in stream order; an event not
/// held here counts as the newest). One statement: the position is taken
/// only when the receipt moves.
pub async fn put_receipt(c: &impl GenericClient, r: &Receipt) -> Result<Option<i64>> {
    let row = query_opt(
        c,
        "WITH moves AS (
             SELECT 1 WHERE coalesce((SELECT stream_ordering FROM events WHERE event_id = $4),
                                     9223372036854775807)
                 >= coalesce((SELECT e.stream_ordering FROM receipts r JOIN events e ON e.event_id = r.event_id
                              WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type = $3),
                             -9223372036854775808)
         ), taken AS (
             UPDATE stream_positions SET position = position + 1
             WHERE stream = 'ephemeral' AND EXISTS (SELECT 1 FROM moves)
             RETURNING position, pg_notify('weft', concat_ws(' ',
                 current_setting('weft.process', TRUE), stream, position, $1::text))::text
         )
         INSERT INTO receipts (room_id, user_id, receipt_type, event_id, ts, position)
         SELECT $1, $2, $3, $4, $5, position FROM taken
         ON CONFLICT (room_id, user_id, receipt_type) DO UPDATE SET
             event_id = excluded.event_id, ts = excluded.ts, position = excluded.position
         RETURNING position",
        &[
            &r.room_id.as_str(),
            &r.user_id.as_str(),
            &r.receipt_type,
            &r.event_id.as_str(),
            &big(r.ts),
        ],
    )
    .await?;
    row.map(|r| col(&r, 0)).transpose()
}

pub async fn receipts(c: &impl GenericClient, room_id: &RoomId, after: Option<i64>) -> Result<Vec<Receipt>> {
    let rows = query(
        c,
        "SELECT user_id, receipt_type, event_id, ts, position FROM receipts
         WHERE room_id = $1 AND position > $2 ORDER BY position",
        &[&room_id.as_str(), &after.unwrap_or(i64::MIN)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Receipt {
                room_id: room_id.to_owned(),
                user_id: parse(col::<String>(r, 0)?)?,
                receipt_type: col(r, 1)?,
                event_id: parse(col::<String>(r, 2)?)?,
                ts: u64::try_from(col::<i64>(r, 3)?).unwrap_or(0),
                position: col(r, 4)?,
            })
        })
        .collect()
}

/// In a transaction: the typing row, then (if whether the user types
/// changed) the position, taken last.
pub async fn set_typing(
    tx: &impl GenericClient,
    room_id: &RoomId,
    user_id: &UserId,
    change: Typing,
) -> Result<Option<i64>> {
    let (room, user) = (room_id.as_str(), user_id.as_str());
    let changed = match change {
        Typing::Until(until) => {
            let row = query_opt(
                tx,
                "WITH old AS (SELECT until_ms FROM typing WHERE room_id = $1 AND user_id = $2)
                 INSERT INTO typing (room_id, user_id, until_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (room_id, user_id) DO UPDATE SET until_ms = excluded.until_ms
                 RETURNING (SELECT until_ms FROM old)",
                &[&room, &user, &big(until)],
            )
            .await?;
            let was_until: Option<i64> = row.map(|r| col(&r, 0)).transpose()?.flatten();
            was_until.is_none_or(|was| was <= now_ms())
        }
        Typing::Stopped => {
            let row = query_opt(
                tx,
                "DELETE FROM typing WHERE room_id = $1 AND user_id = $2 RETURNING until_ms",
                &[&room, &user],
            )
            .await?;
            row.map(|r| col::<i64>(&r, 0))
                .transpose()?
                .is_some_and(|was| was > now_ms())
        }
        Typing::Expired(until) => {
            exec(
                tx,
                "DELETE FROM typing WHERE room_id = $1 AND user_id = $2 AND until_ms = $3",
                &[&room, &user, &big(until)],
            )
            .await?
                > 0
        }
    };
    if !changed {
        return Ok(None);
    }
    let position = next_position_of(tx, "ephemeral", Some(room)).await?;
    exec(
        tx,
        "INSERT INTO typing_rooms (room_id, position) VALUES ($1, $2)
         ON CONFLICT (room_id) DO UPDATE SET position = excluded.position",
        &[&room, &position],
    )
    .await?;
    Ok(Some(position))
}

pub async fn typing(c: &impl GenericClient, after: Option<i64>, up_to: i64) -> Result<Vec<RoomTyping>> {
    let rows = query(
        c,
        "SELECT r.room_id, r.position, t.user_id FROM typing_rooms r
         LEFT JOIN typing t ON t.room_id = r.room_id AND t.until_ms > $3
         WHERE r.position > $1 AND r.position <= $2
         ORDER BY r.position",
        &[&after.unwrap_or(i64::MIN), &up_to, &now_ms()],
    )
    .await?;
    RoomTyping::from_rows(rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?))))
}

pub async fn head(c: &impl GenericClient) -> Result<i64> {
    stream_head(c, "ephemeral").await
}

pub async fn run_out(c: &impl GenericClient, before_ms: u64) -> Result<Vec<(OwnedRoomId, OwnedUserId, u64)>> {
    let rows = query(
        c,
        "SELECT room_id, user_id, until_ms FROM typing WHERE until_ms <= $1",
        &[&big(before_ms)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                parse(col::<String>(r, 0)?)?,
                parse(col::<String>(r, 1)?)?,
                col::<i64>(r, 2)?.max(0) as u64,
            ))
        })
        .collect()
}
