//! Rooms joined with partial state ([`crate::storage::partial_state`]).

use async_trait::async_trait;
use ruma::{OwnedRoomId, RoomId};
use rusqlite::{Connection, params};

use super::{SqliteStorage, exec, next_position, state};
use crate::storage::{
    Result, StreamOrdering, parse,
    partial_state::{Completion, PartialState, PartialStateStorage, Rejection},
};

fn row(room_id: String, join: String, servers: String) -> Result<PartialState> {
    Ok(PartialState {
        room_id: parse(room_id)?,
        join_event_id: parse(join)?,
        servers: servers.lines().map(|s| parse(s.to_owned())).collect::<Result<_>>()?,
    })
}

fn marks(c: &Connection, room_id: Option<&str>) -> Result<Vec<PartialState>> {
    let mut stmt = c.prepare_cached(
        "SELECT room_id, join_event_id, servers FROM partial_state_rooms
         WHERE (?1 IS NULL OR room_id = ?1) AND completed_at IS NULL ORDER BY room_id",
    )?;
    let rows = stmt
        .query_map([room_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<(String, String, String)>>>()?;
    rows.into_iter().map(|(a, b, c)| row(a, b, c)).collect()
}

#[async_trait]
impl PartialStateStorage for SqliteStorage {
    async fn mark_partial_state(&self, partial: &PartialState) -> Result<()> {
        let partial = partial.clone();
        self.write(move |tx| {
            let servers: Vec<&str> = partial.servers.iter().map(|s| s.as_str()).collect();
            exec(
                tx,
                "INSERT OR REPLACE INTO partial_state_rooms (room_id, join_event_id, servers, completed_at)
                 VALUES (?1, ?2, ?3, NULL)",
                params![
                    partial.room_id.as_str(),
                    partial.join_event_id.as_str(),
                    servers.join("\n")
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn partial_state(&self, room_id: &RoomId) -> Result<Option<PartialState>> {
        let room_id = room_id.to_owned();
        self.read(move |c| Ok(marks(c, Some(room_id.as_str()))?.pop())).await
    }

    async fn partial_state_rooms(&self) -> Result<Vec<PartialState>> {
        self.read(move |c| marks(c, None)).await
    }

    async fn partial_states_since(&self, after: StreamOrdering) -> Result<Vec<(OwnedRoomId, Option<StreamOrdering>)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT room_id, completed_at FROM partial_state_rooms WHERE completed_at IS NULL OR completed_at > ?1",
            )?;
            let rows = stmt
                .query_map([after], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter().map(|(room, at)| Ok((parse(room)?, at))).collect()
        })
        .await
    }

    async fn drop_partial_state(&self, room_id: &RoomId) -> Result<()> {
        let room_id = room_id.to_owned();
        self.write(move |tx| {
            exec(
                tx,
                "DELETE FROM partial_state_rooms WHERE room_id = ?1",
                [room_id.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn complete_partial_state(&self, completion: &Completion) -> Result<StreamOrdering> {
        let rejected: Vec<_> = completion.rejections.iter().map(|r| r.event_id.clone()).collect();
        let completion = completion.clone();
        let position = self
            .write(move |tx| {
                let room_id = completion.room_id.as_str();
                let mut groups: Vec<i64> = vec![completion.partial_group];
                let mut after = tx.prepare_cached(
                    "SELECT g.id FROM state_groups g WHERE g.id > ?1 AND g.room_id = ?2 AND g.prev_group IS NULL
                 AND EXISTS (SELECT 1 FROM state_group_entries se JOIN events e ON e.event_id = se.event_id
                     WHERE se.group_id = g.id AND se.type = 'm.room.member' AND se.state_key = ?3
                     AND e.depth >= ?4)",
                )?;
                let rows = after.query_map(
                    params![
                        completion.partial_group,
                        room_id,
                        completion.joiner,
                        completion.join_depth
                    ],
                    |r| r.get::<_, i64>(0),
                )?;
                for group in rows {
                    groups.push(group?);
                }
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO state_group_entries (group_id, type, state_key, event_id)
                 VALUES (?1, ?2, ?3, ?4)",
                )?;
                for group in &groups {
                    for ((kind, key), event_id) in &completion.additions {
                        insert.execute(params![group, kind.to_string(), key, event_id.as_str()])?;
                    }
                }
                reject(tx, room_id, completion.partial_group, &completion.rejections)?;
                state::apply_current_state_changes(tx, &completion.room_id, &completion.current_changes)?;
                let position = next_position(tx, "events")?;
                exec(
                    tx,
                    "UPDATE partial_state_rooms SET completed_at = ?3
                 WHERE room_id = ?1 AND join_event_id = ?2 AND completed_at IS NULL",
                    params![room_id, completion.join_event_id.as_str(), position],
                )?;
                Ok(position)
            })
            .await?;
        for event_id in &rejected {
            self.events.forget(event_id);
        }
        Ok(position)
    }
}

/// Rejects the events of `rejections` (see
/// [`PartialStateStorage::complete_partial_state`]); the states touched
/// are those of the room from `partial_group` on.
fn reject(tx: &Connection, room_id: &str, partial_group: i64, rejections: &[Rejection]) -> Result<()> {
    let mut mark = tx.prepare_cached("UPDATE events SET rejected = ?2 WHERE event_id = ?1 AND rejected IS NULL")?;
    let mut revert = tx.prepare_cached(
        "UPDATE state_group_entries SET event_id = ?5
         WHERE type = ?3 AND state_key = ?4 AND event_id = ?6
         AND group_id IN (SELECT id FROM state_groups WHERE room_id = ?1 AND id >= ?2)",
    )?;
    // A snapshot has no use for a removal (`NULL`): the key is absent.
    let mut tidy = tx.prepare_cached(
        "DELETE FROM state_group_entries WHERE type = ?3 AND state_key = ?4 AND event_id IS NULL
         AND group_id IN (SELECT id FROM state_groups WHERE room_id = ?1 AND id >= ?2 AND prev_group IS NULL)",
    )?;
    let mut unfwd = tx.prepare_cached("DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2")?;
    for rejection in rejections {
        let event_id = rejection.event_id.as_str();
        mark.execute(params![event_id, rejection.reason])?;
        unfwd.execute(params![room_id, event_id])?;
        if let Some(((kind, key), replacement)) = &rejection.state {
            let (kind, replacement) = (kind.to_string(), replacement.as_ref().map(|r| r.as_str()));
            revert.execute(params![room_id, partial_group, kind, key, replacement, event_id])?;
            tidy.execute(params![room_id, partial_group, kind, key])?;
        }
    }
    // A rejected redaction redacts nothing that comes later; a rejected
    // event counts in no one's notifications.
    let ids = serde_json::to_string(&rejections.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>())
        .map_err(|e| crate::storage::StorageError::Corrupt(e.to_string()))?;
    exec(
        tx,
        "DELETE FROM redactions WHERE event_id IN (SELECT value FROM json_each(?1))",
        [ids.as_str()],
    )?;
    exec(
        tx,
        "DELETE FROM notifications WHERE stream_ordering IN
             (SELECT e.stream_ordering FROM events e, json_each(?1) r WHERE e.event_id = r.value)",
        [ids.as_str()],
    )?;
    // Once all are rejected: a parent left with no accepted child is a
    // forward extremity again.
    let mut refwd = tx.prepare_cached(&format!(
        "INSERT OR IGNORE INTO forward_extremities (room_id, event_id)
             SELECT ?2, p.event_id FROM ({}) parent JOIN events p ON p.event_id = parent.id
             WHERE p.room_id = ?2 AND p.outlier = 0 AND p.rejected IS NULL AND p.soft_failed = 0
             AND NOT EXISTS (SELECT 1 FROM event_edges c JOIN events ce ON ce.event_id = c.event_id
                 WHERE c.prev_event_id = p.event_id AND ce.outlier = 0 AND ce.rejected IS NULL AND ce.soft_failed = 0)",
        super::history::listed_ids("prev_events")
    ))?;
    for rejection in rejections {
        refwd.execute(params![rejection.event_id.as_str(), room_id])?;
    }
    Ok(())
}
