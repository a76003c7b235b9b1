//! Rooms joined with partial state ([`crate::storage::partial_state`]).

use async_trait::async_trait;
use ruma::RoomId;
use rusqlite::{Connection, params};

use super::{SqliteStorage, exec, state};
use crate::storage::{
    CurrentStateChange, Result, parse,
    partial_state::{Completion, PartialState, PartialStateStorage},
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
         WHERE ?1 IS NULL OR room_id = ?1 ORDER BY room_id",
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
                "INSERT OR REPLACE INTO partial_state_rooms (room_id, join_event_id, servers) VALUES (?1, ?2, ?3)",
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

    async fn complete_partial_state(&self, completion: &Completion) -> Result<()> {
        let completion = completion.clone();
        self.write(move |tx| {
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
            let changes: Vec<CurrentStateChange> = completion
                .current_additions
                .iter()
                .map(|(key, event_id)| CurrentStateChange {
                    key: key.clone(),
                    event_id: Some(event_id.clone()),
                })
                .collect();
            state::apply_current_state_changes(tx, &completion.room_id, &changes)?;
            exec(
                tx,
                "DELETE FROM partial_state_rooms WHERE room_id = ?1 AND join_event_id = ?2",
                [room_id, completion.join_event_id.as_str()],
            )?;
            Ok(())
        })
        .await
    }
}
