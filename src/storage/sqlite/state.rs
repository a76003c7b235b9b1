//! State groups (snapshots plus bounded delta chains) and the current
//! state table.

use std::collections::HashMap;

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId, events::StateEventType};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{accounts::parse, exec, query_one, user_directory};
use crate::storage::{
    CurrentStateChange, Membership, Result, StateGroupId, StateKey, StateWrite, StorageError, StoredGroup,
    StreamOrdering,
};

/// A delta chain never grows longer than this: the next group is a full
/// snapshot, so loading any state reads at most this many groups.
pub const MAX_CHAIN_LEN: i64 = 32;

pub fn write_state(tx: &Transaction<'_>, room_id: &RoomId, state: &StateWrite) -> Result<i64> {
    match state {
        StateWrite::Existing(group) => Ok(*group),
        StateWrite::AfterEvent(event_id) => tx
            .prepare_cached("SELECT state_group_after FROM events WHERE event_id = ?1 AND outlier = 0")?
            .query_row([event_id.as_str()], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten()
            .ok_or_else(|| StorageError::Corrupt(format!("no state known after {event_id}"))),
        StateWrite::Delta { base, changes } => insert_group(tx, room_id, *base, changes),
    }
}

/// Stores `base + changes` as a new group: a delta on `base`, or a full
/// snapshot when `base` is `None` or its chain is at its cap.
pub fn insert_group(
    tx: &Transaction<'_>,
    room_id: &RoomId,
    base: Option<StateGroupId>,
    changes: &[(StateKey, OwnedEventId)],
) -> Result<StateGroupId> {
    let base_len: Option<i64> = match base {
        Some(base) => Some(
            tx.prepare_cached("SELECT chain_len FROM state_groups WHERE id = ?1")?
                .query_row([base], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StorageError::Corrupt(format!("state group {base} missing")))?,
        ),
        None => None,
    };
    let next_id: i64 = query_one(tx, "SELECT COALESCE(MAX(id), 0) + 1 FROM state_groups", [], |r| {
        r.get(0)
    })?;
    let mut entries: Vec<(StateKey, OwnedEventId)>;
    let (prev, chain_len, rows) = match (base, base_len) {
        (Some(base), Some(len)) if len + 1 < MAX_CHAIN_LEN => (Some(base), len + 1, changes),
        (Some(base), _) => {
            let mut full: HashMap<StateKey, OwnedEventId> = load_group(tx, base)?.into_iter().collect();
            full.extend(changes.iter().cloned());
            entries = full.into_iter().collect();
            entries.sort();
            (None, 0, entries.as_slice())
        }
        (None, _) => (None, 0, changes),
    };
    exec(
        tx,
        "INSERT INTO state_groups (id, room_id, prev_group, chain_len) VALUES (?1, ?2, ?3, ?4)",
        params![next_id, room_id.as_str(), prev, chain_len],
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO state_group_entries (group_id, type, state_key, event_id)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for ((kind, key), event_id) in rows {
        insert.execute(params![next_id, kind.to_string(), key, event_id.as_str()])?;
    }
    Ok(next_id)
}

/// The full state of `group`, walking its delta chain back to a snapshot.
pub fn load_group(c: &Connection, group: StateGroupId) -> Result<Vec<(StateKey, OwnedEventId)>> {
    Ok(crate::storage::fold_chain(group_entries(c, &chain(c, group)?)?))
}

/// The groups `group` is built from, its chain's snapshot first.
pub fn chain(c: &Connection, group: StateGroupId) -> Result<Vec<StateGroupId>> {
    let mut chain = vec![group];
    let mut prev_stmt = c.prepare_cached("SELECT prev_group FROM state_groups WHERE id = ?1")?;
    let mut current = group;
    loop {
        let prev: Option<Option<i64>> = prev_stmt.query_row([current], |r| r.get(0)).optional()?;
        match prev {
            None => return Err(StorageError::Corrupt(format!("state group {current} missing"))),
            Some(None) => break,
            Some(Some(prev)) => {
                if chain.len() as i64 > MAX_CHAIN_LEN {
                    return Err(StorageError::Corrupt(format!("state group {group}: chain too long")));
                }
                chain.push(prev);
                current = prev;
            }
        }
    }
    chain.reverse();
    Ok(chain)
}

/// The entries of `groups` as stored, in the order given.
pub fn group_entries(c: &Connection, groups: &[StateGroupId]) -> Result<Vec<StoredGroup>> {
    let mut entries_stmt =
        c.prepare_cached("SELECT type, state_key, event_id FROM state_group_entries WHERE group_id = ?1")?;
    groups
        .iter()
        .map(|&id| {
            let rows = entries_stmt.query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?;
            let entries = rows
                .map(|row| {
                    let (kind, key, event_id) = row?;
                    Ok(((StateEventType::from(kind), key), event_id.map(parse).transpose()?))
                })
                .collect::<Result<_>>()?;
            Ok(StoredGroup { id, entries })
        })
        .collect()
}

/// The event at `key` in `group`'s state: the newest group of its chain
/// that names the key decides (a delta's NULL: the key left the state).
pub fn group_entry(c: &Connection, group: StateGroupId, (kind, state_key): &StateKey) -> Result<Option<OwnedEventId>> {
    let mut stmt = c.prepare_cached(
        "SELECT event_id FROM state_group_entries WHERE group_id = ?1 AND type = ?2 AND state_key = ?3",
    )?;
    let kind = kind.to_string();
    for id in chain(c, group)?.into_iter().rev() {
        let entry = stmt
            .query_row(params![id, kind, state_key], |r| r.get::<_, Option<String>>(0))
            .optional()?;
        if let Some(event_id) = entry {
            return event_id.map(parse).transpose();
        }
    }
    Ok(None)
}

pub fn apply_current_state_changes(
    tx: &Transaction<'_>,
    room_id: &RoomId,
    changes: &[CurrentStateChange],
) -> Result<()> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO current_state (room_id, type, state_key, event_id, membership)
         VALUES (?1, ?2, ?3, ?4,
             (SELECT json_extract(json, '$.content.membership') FROM events
              WHERE event_id = ?4 AND type = 'm.room.member'))
         ON CONFLICT (room_id, type, state_key) DO UPDATE SET
             event_id = excluded.event_id, membership = excluded.membership",
    )?;
    let mut delete =
        tx.prepare_cached("DELETE FROM current_state WHERE room_id = ?1 AND type = ?2 AND state_key = ?3")?;
    let directory = user_directory::before_current_state_changes(tx, room_id, changes)?;
    for change in changes {
        let (kind, key) = &change.key;
        match &change.event_id {
            Some(event_id) => upsert.execute(params![room_id.as_str(), kind.to_string(), key, event_id.as_str()])?,
            None => delete.execute(params![room_id.as_str(), kind.to_string(), key])?,
        };
    }
    user_directory::after_current_state_changes(tx, room_id, changes, directory)
}

pub fn current_state(
    c: &Connection,
    room_id: &RoomId,
    event_type: Option<&StateEventType>,
) -> Result<Vec<(StateKey, OwnedEventId)>> {
    let mut stmt = c.prepare_cached(
        "SELECT type, state_key, event_id FROM current_state
         WHERE room_id = ?1 AND (?2 IS NULL OR type = ?2) ORDER BY type, state_key",
    )?;
    let rows = stmt.query_map(params![room_id.as_str(), event_type.map(|t| t.to_string())], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
    })?;
    rows.map(|r| {
        let (kind, key, id) = r?;
        Ok(((StateEventType::from(kind), key), parse(id)?))
    })
    .collect()
}

fn memberships(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Membership>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    rows.map(|r| {
        let (room, user, membership, event_id, stream) = r?;
        Ok(Membership {
            room_id: parse::<OwnedRoomId>(room)?,
            user_id: parse(user)?,
            membership: membership.unwrap_or_default(),
            event_id: parse(event_id)?,
            stream_ordering: stream,
        })
    })
    .collect()
}

const MEMBERSHIP_SELECT: &str = "SELECT c.room_id, c.state_key, c.membership, c.event_id,
        e.stream_ordering
    FROM current_state c JOIN events e ON e.event_id = c.event_id";

pub fn room_members(c: &Connection, room_id: &RoomId, membership: Option<&str>) -> Result<Vec<Membership>> {
    memberships(
        c,
        &format!(
            "{MEMBERSHIP_SELECT} WHERE c.room_id = ?1 AND c.type = 'm.room.member'
                AND (?2 IS NULL OR c.membership = ?2) ORDER BY c.state_key"
        ),
        params![room_id.as_str(), membership],
    )
}

pub fn user_memberships(c: &Connection, user_id: &UserId) -> Result<Vec<Membership>> {
    memberships(
        c,
        &format!(
            "{MEMBERSHIP_SELECT} WHERE c.state_key = ?1 AND c.type = 'm.room.member'
             ORDER BY c.room_id"
        ),
        params![user_id.as_str()],
    )
}

pub fn membership_changes(
    c: &Connection,
    user_id: &UserId,
    after: StreamOrdering,
    upto: StreamOrdering,
) -> Result<Vec<OwnedRoomId>> {
    let mut stmt = c.prepare_cached(
        "SELECT DISTINCT room_id FROM events
         WHERE state_key = ?1 AND type = 'm.room.member' AND stream_ordering > ?2
             AND stream_ordering <= ?3 AND outlier = 0 AND rejected IS NULL",
    )?;
    let rows = stmt.query_map(params![user_id.as_str(), after, upto], |r| r.get::<_, String>(0))?;
    rows.map(|r| parse(r?)).collect()
}
