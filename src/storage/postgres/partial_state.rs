//! Rooms joined with partial state ([`crate::storage::partial_state`]).

use async_trait::async_trait;
use ruma::{OwnedRoomId, RoomId};

use super::{GenericClient, PgStorage, col, exec, pg_write, query, query_one, state};
use crate::storage::{
    Result, StreamOrdering, parse,
    partial_state::{Completion, PartialState, PartialStateStorage, Rejection},
};

async fn marks(c: &impl GenericClient, room_id: Option<&str>) -> Result<Vec<PartialState>> {
    let rows = query(
        c,
        "SELECT room_id, join_event_id, servers FROM partial_state_rooms
         WHERE ($1::text IS NULL OR room_id = $1) AND completed_at IS NULL ORDER BY room_id",
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
             ON CONFLICT (room_id) DO UPDATE
             SET join_event_id = excluded.join_event_id, servers = excluded.servers, completed_at = NULL",
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

    async fn partial_states_since(&self, after: StreamOrdering) -> Result<Vec<(OwnedRoomId, Option<StreamOrdering>)>> {
        let rows = query(
            &self.client().await?,
            "SELECT room_id, completed_at FROM partial_state_rooms WHERE completed_at IS NULL OR completed_at > $1",
            &[&after],
        )
        .await?;
        rows.iter()
            .map(|r| Ok((parse(col::<String>(r, 0)?)?, col(r, 1)?)))
            .collect()
    }

    async fn drop_partial_state(&self, room_id: &RoomId) -> Result<()> {
        pg_write!(one self, |c| {
            exec(&c, "DELETE FROM partial_state_rooms WHERE room_id = $1", &[&room_id.as_str()]).await?;
        })
    }

    async fn complete_partial_state(&self, completion: &Completion) -> Result<StreamOrdering> {
        let kinds: Vec<String> = completion.additions.iter().map(|((k, _), _)| k.to_string()).collect();
        let keys: Vec<&str> = completion.additions.iter().map(|((_, k), _)| k.as_str()).collect();
        let ids: Vec<&str> = completion.additions.iter().map(|(_, id)| id.as_str()).collect();
        let room_id = completion.room_id.as_str();
        let position = pg_write!(self, |tx| {
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
            reject(&tx, room_id, completion.partial_group, &completion.rejections).await?;
            state::apply_current_state_changes(&tx, &completion.room_id, &completion.current_changes).await?;
            // The other processes' caches (who is joined, the states) follow.
            exec(
                &tx,
                "SELECT pg_notify('weft', concat_ws(' ', current_setting('weft.process', TRUE), 'members', 0, $1::text))",
                &[&room_id],
            )
            .await?;
            // Last, in one statement: the position (the counter row stays
            // locked until the commit), `<process> events <position> <room>`
            // to the others (who move their head and wake the room's
            // members), and the mark.
            let position: i64 = col(
                &query_one(
                    &tx,
                    "WITH next AS (
                         UPDATE stream_positions SET position = position + 1 WHERE stream = 'events'
                         RETURNING position, pg_notify('weft', concat_ws(' ',
                             current_setting('weft.process', TRUE), 'events', position, $1::text))::text AS notify
                     ), mark AS (
                         UPDATE partial_state_rooms SET completed_at = (SELECT position FROM next)
                         WHERE room_id = $1 AND join_event_id = $2 AND completed_at IS NULL
                     )
                     SELECT position, notify FROM next",
                    &[&room_id, &completion.join_event_id.as_str()],
                )
                .await?,
                0,
            )?;
            position
        })?;
        for rejection in &completion.rejections {
            self.events.forget(&rejection.event_id);
        }
        Ok(position)
    }
}

/// Rejects the events of `rejections` (see
/// [`PartialStateStorage::complete_partial_state`]); the states touched
/// are those of the room from `partial_group` on.
async fn reject(tx: &impl GenericClient, room_id: &str, partial_group: i64, rejections: &[Rejection]) -> Result<()> {
    if rejections.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rejections.iter().map(|r| r.event_id.as_str()).collect();
    let reasons: Vec<&str> = rejections.iter().map(|r| r.reason.as_str()).collect();
    exec(
        tx,
        "UPDATE events e SET rejected = r.reason FROM unnest($1::text[], $2::text[]) AS r (id, reason)
         WHERE e.event_id = r.id AND e.rejected IS NULL",
        &[&ids, &reasons],
    )
    .await?;
    let state: Vec<_> = rejections
        .iter()
        .filter_map(|r| Some((r.event_id.as_str(), r.state.as_ref()?)))
        .collect();
    let state_ids: Vec<&str> = state.iter().map(|(id, _)| *id).collect();
    let kinds: Vec<String> = state.iter().map(|(_, ((kind, _), _))| kind.to_string()).collect();
    let keys: Vec<&str> = state.iter().map(|(_, ((_, key), _))| key.as_str()).collect();
    let replacements: Vec<Option<&str>> = state
        .iter()
        .map(|(_, (_, replacement))| replacement.as_ref().map(|r| r.as_str()))
        .collect();
    exec(
        tx,
        "UPDATE state_group_entries se SET event_id = r.replacement
         FROM state_groups g, unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS r (id, type, state_key, replacement)
         WHERE g.room_id = $1 AND g.id >= $2 AND se.group_id = g.id
         AND se.type = r.type AND se.state_key = r.state_key AND se.event_id = r.id",
        &[&room_id, &partial_group, &state_ids, &kinds, &keys, &replacements],
    )
    .await?;
    // A snapshot has no use for a removal (`NULL`): the key is absent.
    exec(
        tx,
        "DELETE FROM state_group_entries se
         USING state_groups g, unnest($3::text[], $4::text[]) AS r (type, state_key)
         WHERE g.room_id = $1 AND g.id >= $2 AND g.prev_group IS NULL AND se.group_id = g.id
         AND se.type = r.type AND se.state_key = r.state_key AND se.event_id IS NULL",
        &[&room_id, &partial_group, &kinds, &keys],
    )
    .await?;
    exec(
        tx,
        "DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = ANY($2)",
        &[&room_id, &ids],
    )
    .await?;
    // A rejected redaction redacts nothing that comes later; a rejected
    // event counts in no one's notifications.
    exec(tx, "DELETE FROM redactions WHERE event_id = ANY($1)", &[&ids]).await?;
    exec(
        tx,
        "DELETE FROM notifications WHERE stream_ordering IN
             (SELECT stream_ordering FROM events WHERE event_id = ANY($1))",
        &[&ids],
    )
    .await?;
    // A parent left with no accepted child is a forward extremity again.
    exec(
        tx,
        "INSERT INTO forward_extremities (room_id, event_id)
         SELECT DISTINCT $1, p.event_id FROM event_edges ed JOIN events p ON p.event_id = ed.prev_event_id
         WHERE ed.event_id = ANY($2) AND p.room_id = $1 AND NOT p.outlier AND p.rejected IS NULL AND NOT p.soft_failed
         AND NOT EXISTS (SELECT 1 FROM event_edges c JOIN events ce ON ce.event_id = c.event_id
             WHERE c.prev_event_id = p.event_id AND NOT ce.outlier AND ce.rejected IS NULL AND NOT ce.soft_failed)
         ON CONFLICT DO NOTHING",
        &[&room_id, &ids],
    )
    .await?;
    // The other processes' cached copies are stale.
    exec(
        tx,
        "SELECT pg_notify('weft', concat_ws(' ', current_setting('weft.process', TRUE), 'event', id))
         FROM unnest($1::text[]) AS id",
        &[&ids],
    )
    .await?;
    Ok(())
}
