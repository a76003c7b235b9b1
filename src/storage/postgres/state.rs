//! State groups (snapshots plus bounded delta chains) and the current
//! state table (as `sqlite/state.rs`). Group IDs come from an identity
//! column: writers of different rooms never wait for one another.

use std::collections::HashMap;

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId, events::StateEventType};
use tokio_postgres::types::ToSql;

use super::{GenericClient, col, exec, parse, query, query_one, query_opt, user_directory};
use crate::storage::{
    CurrentStateChange, Membership, Result, StateGroupId, StateKey, StateWrite, StorageError, StoredGroup,
    StreamOrdering,
};

/// A delta chain never grows longer than this (as in SQLite): the next
/// group is a full snapshot, so loading any state reads at most this many.
const MAX_CHAIN_LEN: i64 = 32;

pub async fn write_state(tx: &impl GenericClient, room_id: &RoomId, state: &StateWrite) -> Result<i64> {
    match state {
        StateWrite::Existing(group) => Ok(*group),
        StateWrite::AfterEvent(event_id) => query_opt(
            tx,
            "SELECT state_group_after FROM events WHERE event_id = $1 AND NOT outlier",
            &[&event_id.as_str()],
        )
        .await?
        .map(|r| col::<Option<i64>>(&r, 0))
        .transpose()?
        .flatten()
        .ok_or_else(|| StorageError::Corrupt(format!("no state known after {event_id}"))),
        StateWrite::Delta { base, changes } => insert_group(tx, room_id, *base, changes).await,
    }
}

/// Stores `base + changes` as a new group: a delta on `base`, or a full
/// snapshot when `base` is `None` or its chain is at its cap.
pub async fn insert_group(
    tx: &impl GenericClient,
    room_id: &RoomId,
    base: Option<StateGroupId>,
    changes: &[(StateKey, OwnedEventId)],
) -> Result<StateGroupId> {
    let base_len: Option<i64> = match base {
        Some(base) => Some(col(
            &query_opt(tx, "SELECT chain_len FROM state_groups WHERE id = $1", &[&base])
                .await?
                .ok_or_else(|| StorageError::Corrupt(format!("state group {base} missing")))?,
            0,
        )?),
        None => None,
    };
    let mut entries: Vec<(StateKey, OwnedEventId)>;
    let (prev, chain_len, rows) = match (base, base_len) {
        (Some(base), Some(len)) if len + 1 < MAX_CHAIN_LEN => (Some(base), len + 1, changes),
        (Some(base), _) => {
            let mut full: HashMap<StateKey, OwnedEventId> = load_group(tx, base).await?.into_iter().collect();
            full.extend(changes.iter().cloned());
            entries = full.into_iter().collect();
            entries.sort();
            (None, 0, entries.as_slice())
        }
        (None, _) => (None, 0, changes),
    };
    let id: i64 = col(
        &query_one(
            tx,
            "INSERT INTO state_groups (room_id, prev_group, chain_len) VALUES ($1, $2, $3) RETURNING id",
            &[&room_id.as_str(), &prev, &chain_len],
        )
        .await?,
        0,
    )?;
    // One row per key: a later change of a key replaces an earlier one,
    // as SQLite's INSERT OR REPLACE does row by row.
    let mut latest: HashMap<(String, &str), &str> = HashMap::new();
    for ((kind, key), event_id) in rows {
        latest.insert((kind.to_string(), key.as_str()), event_id.as_str());
    }
    let (mut types, mut keys, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for ((kind, key), event_id) in latest {
        types.push(kind);
        keys.push(key);
        ids.push(event_id);
    }
    exec(
        tx,
        "INSERT INTO state_group_entries (group_id, type, state_key, event_id)
         SELECT $1, t, k, e FROM unnest($2::text[], $3::text[], $4::text[]) AS x(t, k, e)",
        &[&id, &types, &keys, &ids],
    )
    .await?;
    Ok(id)
}

/// The groups of `group`'s chain, newest (itself) first, back to its
/// snapshot.
async fn chain_ids(c: &impl GenericClient, group: StateGroupId) -> Result<Vec<i64>> {
    let chain = query(
        c,
        "WITH RECURSIVE chain(id, prev, n) AS (
             SELECT id, prev_group, 0::bigint FROM state_groups WHERE id = $1
             UNION ALL
             SELECT g.id, g.prev_group, chain.n + 1 FROM state_groups g JOIN chain ON g.id = chain.prev
             WHERE chain.n <= $2
         )
         SELECT id, prev FROM chain ORDER BY n",
        &[&group, &MAX_CHAIN_LEN],
    )
    .await?;
    let ids: Vec<i64> = chain.iter().map(|r| col(r, 0)).collect::<Result<_>>()?;
    match chain.last() {
        None => return Err(StorageError::Corrupt(format!("state group {group} missing"))),
        Some(last) => {
            if let Some(prev) = col::<Option<i64>>(last, 1)? {
                return Err(StorageError::Corrupt(format!(
                    "state group {group}: chain too long or group {prev} missing"
                )));
            }
        }
    }
    Ok(ids)
}

/// The groups `group` is built from, its chain's snapshot first.
pub async fn chain(c: &impl GenericClient, group: StateGroupId) -> Result<Vec<StateGroupId>> {
    let mut ids = chain_ids(c, group).await?;
    ids.reverse();
    Ok(ids)
}

/// The entries of `groups` as stored, in the order given (one statement).
pub async fn group_entries(c: &impl GenericClient, groups: &[StateGroupId]) -> Result<Vec<StoredGroup>> {
    let rows = query(
        c,
        "SELECT group_id, type, state_key, event_id FROM state_group_entries WHERE group_id = ANY($1)",
        &[&groups],
    )
    .await?;
    let mut by_group: HashMap<i64, Vec<(StateKey, Option<OwnedEventId>)>> = HashMap::new();
    for row in &rows {
        by_group.entry(col(row, 0)?).or_default().push((
            (StateEventType::from(col::<String>(row, 1)?), col(row, 2)?),
            col::<Option<String>>(row, 3)?.map(parse).transpose()?,
        ));
    }
    Ok(groups
        .iter()
        .map(|&id| StoredGroup {
            id,
            entries: by_group.remove(&id).unwrap_or_default(),
        })
        .collect())
}

/// The event at `key` in `group`'s state: the chain, then one statement
/// for the key in its groups, the newest group that names it winning (a
/// delta's NULL: the key left the state). Completing a partial state
/// changes entries, never chains: the second statement alone must see one
/// version, and does.
pub async fn group_entry(
    c: &impl GenericClient,
    group: StateGroupId,
    (kind, state_key): &StateKey,
) -> Result<Option<OwnedEventId>> {
    let ids = chain_ids(c, group).await?;
    let row = query_opt(
        c,
        "SELECT s.event_id
         FROM unnest($1::bigint[]) WITH ORDINALITY AS chain (group_id, n)
         JOIN state_group_entries s ON s.group_id = chain.group_id AND s.type = $2 AND s.state_key = $3
         ORDER BY chain.n LIMIT 1",
        &[&ids, &kind.to_string(), state_key],
    )
    .await?;
    match row {
        Some(row) => col::<Option<String>>(&row, 0)?.map(parse).transpose(),
        None => Ok(None),
    }
}

/// The full state of `group`, walking its delta chain back to a snapshot
/// (one statement: the chain, then its entries, newest group winning).
pub async fn load_group(c: &impl GenericClient, group: StateGroupId) -> Result<Vec<(StateKey, OwnedEventId)>> {
    let ids = chain_ids(c, group).await?;
    let rows = query(
        c,
        "SELECT DISTINCT ON (s.type, s.state_key) s.type, s.state_key, s.event_id
         FROM unnest($1::bigint[]) WITH ORDINALITY AS chain (group_id, n),
             LATERAL (SELECT type, state_key, event_id FROM state_group_entries
                      WHERE group_id = chain.group_id OFFSET 0) s
         ORDER BY s.type, s.state_key, chain.n",
        &[&ids],
    )
    .await?;
    let mut state = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(event_id) = col::<Option<String>>(row, 2)? {
            state.push((
                (StateEventType::from(col::<String>(row, 0)?), col(row, 1)?),
                parse(event_id)?,
            ));
        }
    }
    Ok(state)
}

/// The membership an `m.room.member` event sets, read from its JSON.
fn membership_of(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Member {
        content: Content,
    }
    #[derive(serde::Deserialize)]
    struct Content {
        membership: Option<String>,
    }
    serde_json::from_str::<Member>(json).ok()?.content.membership
}

pub async fn apply_current_state_changes(
    tx: &impl GenericClient,
    room_id: &RoomId,
    changes: &[CurrentStateChange],
) -> Result<()> {
    let directory = user_directory::before_current_state_changes(tx, room_id, changes).await?;
    // The memberships that member events set, from their JSON.
    let members: Vec<&str> = changes
        .iter()
        .filter(|c| c.key.0 == StateEventType::RoomMember)
        .filter_map(|c| c.event_id.as_deref().map(|e| e.as_str()))
        .collect();
    let mut memberships: HashMap<String, Option<String>> = HashMap::new();
    if !members.is_empty() {
        for row in query(
            tx,
            "SELECT e.event_id, e.json FROM unnest($1::text[]) AS member (id),
                 LATERAL (SELECT event_id, json, type FROM events WHERE event_id = member.id OFFSET 0) e
             WHERE e.type = 'm.room.member'",
            &[&members],
        )
        .await?
        {
            memberships.insert(col(&row, 0)?, membership_of(&col::<String>(&row, 1)?));
        }
    }
    // Each key as its last change leaves it, in two statements.
    let mut last: HashMap<(String, &str), Option<&str>> = HashMap::with_capacity(changes.len());
    for change in changes {
        let (kind, key) = &change.key;
        last.insert(
            (kind.to_string(), key.as_str()),
            change.event_id.as_deref().map(|e| e.as_str()),
        );
    }
    let (mut set_types, mut set_keys, mut set_ids, mut set_memberships) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut gone_types, mut gone_keys) = (Vec::new(), Vec::new());
    for ((kind, key), event_id) in last {
        match event_id {
            Some(event_id) => {
                set_memberships.push(memberships.get(event_id).cloned().flatten());
                set_types.push(kind);
                set_keys.push(key);
                set_ids.push(event_id);
            }
            None => {
                gone_types.push(kind);
                gone_keys.push(key);
            }
        }
    }
    if !set_ids.is_empty() {
        exec(
            tx,
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership)
             SELECT $1, x.t, x.k, x.e, x.m FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS x(t, k, e, m)
             ON CONFLICT (room_id, type, state_key) DO UPDATE SET
                 event_id = excluded.event_id, membership = excluded.membership",
            &[&room_id.as_str(), &set_types, &set_keys, &set_ids, &set_memberships],
        )
        .await?;
    }
    if !gone_types.is_empty() {
        exec(
            tx,
            "DELETE FROM current_state c USING unnest($2::text[], $3::text[]) AS x(t, k)
             WHERE c.room_id = $1 AND c.type = x.t AND c.state_key = x.k",
            &[&room_id.as_str(), &gone_types, &gone_keys],
        )
        .await?;
    }
    user_directory::after_current_state_changes(tx, room_id, changes, directory).await
}

pub async fn current_state(
    c: &impl GenericClient,
    room_id: &RoomId,
    event_type: Option<&StateEventType>,
) -> Result<Vec<(StateKey, OwnedEventId)>> {
    let event_type = event_type.map(|t| t.to_string());
    query(
        c,
        "SELECT type, state_key, event_id FROM current_state
         WHERE room_id = $1 AND ($2::text IS NULL OR type = $2) ORDER BY type, state_key",
        &[&room_id.as_str(), &event_type],
    )
    .await?
    .iter()
    .map(|r| {
        Ok((
            (StateEventType::from(col::<String>(r, 0)?), col(r, 1)?),
            parse(col::<String>(r, 2)?)?,
        ))
    })
    .collect()
}

async fn memberships(c: &impl GenericClient, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Membership>> {
    query(c, sql, params)
        .await?
        .iter()
        .map(|r| {
            Ok(Membership {
                room_id: parse::<OwnedRoomId>(col(r, 0)?)?,
                user_id: parse(col::<String>(r, 1)?)?,
                membership: col::<Option<String>>(r, 2)?.unwrap_or_default(),
                event_id: parse(col::<String>(r, 3)?)?,
                stream_ordering: col(r, 4)?,
            })
        })
        .collect()
}

const MEMBERSHIP_SELECT: &str = "SELECT c.room_id, c.state_key, c.membership, c.event_id,
        e.stream_ordering
    FROM current_state c,
        LATERAL (SELECT stream_ordering FROM events WHERE events.event_id = c.event_id OFFSET 0) e";

pub async fn room_members(
    c: &impl GenericClient,
    room_id: &RoomId,
    membership: Option<&str>,
) -> Result<Vec<Membership>> {
    memberships(
        c,
        &format!(
            "{MEMBERSHIP_SELECT} WHERE c.room_id = $1 AND c.type = 'm.room.member'
                AND ($2::text IS NULL OR c.membership = $2) ORDER BY c.state_key"
        ),
        &[&room_id.as_str(), &membership],
    )
    .await
}

pub async fn user_memberships(c: &impl GenericClient, user_id: &UserId) -> Result<Vec<Membership>> {
    memberships(
        c,
        &format!("{MEMBERSHIP_SELECT} WHERE c.state_key = $1 AND c.type = 'm.room.member' ORDER BY c.room_id"),
        &[&user_id.as_str()],
    )
    .await
}

pub async fn membership_changes(
    c: &impl GenericClient,
    user_id: &UserId,
    after: StreamOrdering,
    upto: StreamOrdering,
) -> Result<Vec<OwnedRoomId>> {
    query(
        c,
        "SELECT DISTINCT room_id FROM events
         WHERE state_key = $1 AND type = 'm.room.member' AND stream_ordering > $2
             AND stream_ordering <= $3 AND NOT outlier AND rejected IS NULL",
        &[&user_id.as_str(), &after, &upto],
    )
    .await?
    .iter()
    .map(|r| parse(col::<String>(r, 0)?))
    .collect()
}
