//! Rooms joined with partial state ([`crate::storage::partial_state`]).

use async_trait::async_trait;
use ruma::RoomId;

use super::{GenericClient, PgStorage, col, exec, pg_write, query, state};
use crate::storage::{
    CurrentStateChange, Result, parse,
    partial_state::{Completion, PartialState, PartialStateStorage},
};

async fn marks(c: &impl GenericClient, room_id: Option<&str>) -> Result<Vec<PartialState>> {
    let rows = query(
        c,
        "SELECT room_id, join_event_id, servers FROM partial_state_rooms
         WHERE $1::text IS NULL OR room_id = $1 ORDER BY room_id",
        &[&room_id],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let servers: String = col(r, 2)?;
            Ok(PartialState {
                room_id: parse(col::<String>(r, 0)?)?,
                join_event_id: parse(col::<String>(r, 1)?)?,
                servers: servers.lines().map(|s| parse(s.to_owned())).collect::<Result<_>>()?,
            })
        })
        .collect()
}

#[async_trait]
impl PartialStateStorage for PgStorage {
    async fn mark_partial_state(&self, partial: &PartialState) -> Result<()> {
        let servers: Vec<&str> = partial.servers.iter().map(|s| s.as_str()).collect();
        let servers = servers.join("\n");
        pg_write!(one self, |c| {
            exec(
            &c,
            "INSERT INTO partial_state_rooms (room_id, join_event_id, servers) VALUES ($1, $2, $3)
             ON CONFLICT (room_id) DO UPDATE SET join_event_id = excluded.join_event_id, servers = excluded.servers",
            &[&partial.room_id.as_str(), &partial.join_event_id.as_str(), &servers],
        )
        .await?;
        })
    }

    async fn partial_state(&self, room_id: &RoomId) -> Result<Option<PartialState>> {
        Ok(marks(&self.client().await?, Some(room_id.as_str())).await?.pop())
    }

    async fn partial_state_rooms(&self) -> Result<Vec<PartialState>> {
        marks(&self.client().await?, None).await
    }

    async fn drop_partial_state(&self, room_id: &RoomId) -> Result<()> {
        pg_write!(one self, |c| {
            exec(&c, "DELETE FROM partial_state_rooms WHERE room_id = $1", &[&room_id.as_str()]).await?;
        })
    }

    async fn complete_partial_state(&self, completion: &Completion) -> Result<()> {
        let changes: Vec<CurrentStateChange> = completion
            .current_additions
            .iter()
            .map(|(key, event_id)| CurrentStateChange {
                key: key.clone(),
                event_id: Some(event_id.clone()),
            })
            .collect();
        let kinds: Vec<String> = completion.additions.iter().map(|((k, _), _)| k.to_string()).collect();
        let keys: Vec<&str> = completion.additions.iter().map(|((_, k), _)| k.as_str()).collect();
        let ids: Vec<&str> = completion.additions.iter().map(|(_, id)| id.as_str()).collect();
        let room_id = completion.room_id.as_str();
        pg_write!(self, |tx| {
            exec(
                &tx,
                "WITH groups AS (
                     SELECT $1::bigint AS id
                     UNION
                     SELECT g.id FROM state_groups g WHERE g.id > $1 AND g.room_id = $2 AND g.prev_group IS NULL
                         AND EXISTS (SELECT 1 FROM state_group_entries se JOIN events e ON e.event_id = se.event_id
                             WHERE se.group_id = g.id AND se.type = 'm.room.member' AND se.state_key = $3
                             AND e.depth >= $4))
                 INSERT INTO state_group_entries (group_id, type, state_key, event_id)
                 SELECT groups.id, a.type, a.state_key, a.event_id
                 FROM groups, unnest($5::text[], $6::text[], $7::text[]) AS a (type, state_key, event_id)
                 ON CONFLICT DO NOTHING",
                &[
                    &completion.partial_group,
                    &room_id,
                    &completion.joiner,
                    &completion.join_depth,
                    &kinds,
                    &keys,
                    &ids,
                ],
            )
            .await?;
            state::apply_current_state_changes(&tx, &completion.room_id, &changes).await?;
            exec(
                &tx,
                "DELETE FROM partial_state_rooms WHERE room_id = $1 AND join_event_id = $2",
                &[&room_id, &completion.join_event_id.as_str()],
            )
            .await?;
            // The other processes' caches (who is joined, the states) follow.
            exec(
                &tx,
                "SELECT pg_notify('weft', concat_ws(' ', current_setting('weft.process', TRUE), 'members', 0, $1::text))",
                &[&room_id],
            )
            .await?;
        })
    }
}
