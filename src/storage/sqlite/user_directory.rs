//! The user directory (`schema_v13.sql`): kept up to date in the
//! transaction that moves a room's current state, searched with FTS5 and
//! the indexed `current_state` table. See `crate::user_directory` for the
//! design, and OpenID tokens.

use async_trait::async_trait;
use ruma::{OwnedUserId, RoomId, UserId, events::StateEventType};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{SqliteStorage, accounts::parse, exec, query_one};
use crate::storage::{
    CurrentStateChange, Result,
    user_directory::{DirectoryUser, OpenIdStorage, UserDirectoryStorage},
};

/// A user with an account here is a local user.
fn is_local(c: &Connection, user_id: &str) -> Result<bool> {
    Ok(query_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM users WHERE user_id = ?1)",
        [user_id],
        |r| r.get(0),
    )?)
}

fn membership(c: &Connection, room_id: &RoomId, user_id: &str) -> Result<Option<String>> {
    Ok(query_one(
        c,
        "SELECT membership FROM current_state
         WHERE room_id = ?1 AND type = 'm.room.member' AND state_key = ?2",
        params![room_id.as_str(), user_id],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()?
    .flatten())
}

/// How many of the members in `changes` are local users joined to the
/// room, as the current state stands.
fn local_joins_among(tx: &Transaction<'_>, room_id: &RoomId, changes: &[CurrentStateChange]) -> Result<i64> {
    let mut count = 0;
    for change in changes {
        let (kind, user) = &change.key;
        if *kind == StateEventType::RoomMember
            && is_local(tx, user)?
            && membership(tx, room_id, user)?.as_deref() == Some("join")
        {
            count += 1;
        }
    }
    Ok(count)
}

/// What the directory needs to know before `changes` replace a room's
/// current state: how many local users among the changed members were
/// joined. Pass it to [`after_current_state_changes`].
pub struct Before {
    local_joins: i64,
}

pub fn before_current_state_changes(
    tx: &Transaction<'_>,
    room_id: &RoomId,
    changes: &[CurrentStateChange],
) -> Result<Before> {
    Ok(Before {
        local_joins: local_joins_among(tx, room_id, changes)?,
    })
}

/// Brings the directory up to date once `changes` are in the current
/// state: the room's count of joined local users, whether it is public
/// for the directory (join rule `public` or history visibility
/// `world_readable`), and other servers' users' names (their newest join
/// here; gone once they are joined to no room here).
pub fn after_current_state_changes(
    tx: &Transaction<'_>,
    room_id: &RoomId,
    changes: &[CurrentStateChange],
    before: Before,
) -> Result<()> {
    let relevant = changes.iter().any(|c| {
        c.key.0 == StateEventType::RoomMember
            || (c.key.1.is_empty()
                && (c.key.0 == StateEventType::RoomJoinRules || c.key.0 == StateEventType::RoomHistoryVisibility))
    });
    if !relevant {
        return Ok(());
    }
    exec(
        tx,
        "INSERT INTO user_directory_rooms (room_id) VALUES (?1) ON CONFLICT (room_id) DO NOTHING",
        [room_id.as_str()],
    )?;
    let delta = local_joins_among(tx, room_id, changes)? - before.local_joins;
    if delta != 0 {
        exec(
            tx,
            "UPDATE user_directory_rooms SET local_joined = max(0, local_joined + ?2) WHERE room_id = ?1",
            params![room_id.as_str(), delta],
        )?;
    }
    if changes.iter().any(|c| {
        c.key.1.is_empty()
            && (c.key.0 == StateEventType::RoomJoinRules || c.key.0 == StateEventType::RoomHistoryVisibility)
    }) {
        exec(
            tx,
            "UPDATE user_directory_rooms SET public = EXISTS (
                 SELECT 1 FROM current_state c JOIN events e ON e.event_id = c.event_id
                 WHERE c.room_id = ?1 AND c.state_key = ''
                     AND ((c.type = 'm.room.join_rules'
                           AND json_extract(e.json, '$.content.join_rule') = 'public')
                       OR (c.type = 'm.room.history_visibility'
                           AND json_extract(e.json, '$.content.history_visibility') = 'world_readable')))
             WHERE room_id = ?1",
            [room_id.as_str()],
        )?;
    }
    for change in changes {
        let (kind, user) = &change.key;
        if *kind != StateEventType::RoomMember || is_local(tx, user)? {
            continue;
        }
        match (&change.event_id, membership(tx, room_id, user)?.as_deref()) {
            (Some(event_id), Some("join")) => {
                exec(
                    tx,
                    "INSERT INTO user_directory (user_id, display_name, avatar_url)
                     SELECT ?1,
                         CASE json_type(json, '$.content.displayname')
                             WHEN 'text' THEN json_extract(json, '$.content.displayname') END,
                         CASE json_type(json, '$.content.avatar_url')
                             WHEN 'text' THEN json_extract(json, '$.content.avatar_url') END
                     FROM events WHERE event_id = ?2
                     ON CONFLICT (user_id) DO UPDATE SET
                         display_name = excluded.display_name, avatar_url = excluded.avatar_url
                     WHERE display_name IS NOT excluded.display_name
                         OR avatar_url IS NOT excluded.avatar_url",
                    params![user, event_id.as_str()],
                )?;
            }
            _ => {
                exec(
                    tx,
                    "DELETE FROM user_directory WHERE user_id = ?1 AND NOT EXISTS (
                         SELECT 1 FROM current_state
                         WHERE state_key = ?1 AND type = 'm.room.member' AND membership = 'join')",
                    [user],
                )?;
            }
        }
    }
    Ok(())
}

/// A local user's profile as the directory shows it (at registration and
/// on every change).
pub fn local_profile_changed(tx: &Transaction<'_>, user_id: &UserId) -> Result<()> {
    exec(
        tx,
        "INSERT INTO user_directory (user_id, display_name, avatar_url)
         SELECT user_id, displayname, avatar_url FROM users WHERE user_id = ?1
         ON CONFLICT (user_id) DO UPDATE SET
             display_name = excluded.display_name, avatar_url = excluded.avatar_url
         WHERE display_name IS NOT excluded.display_name OR avatar_url IS NOT excluded.avatar_url",
        [user_id.as_str()],
    )?;
    Ok(())
}

/// The FTS5 query for `words`: every one a prefix of a word of the user ID
/// or display name. Each is quoted (a string, never FTS5 syntax).
fn fts_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Users matching `words` whom `searcher` may find: joined to a room the
/// searcher is joined to, or to a room public for the directory that this
/// server is still in. Deactivated users are not found.
fn search(c: &Connection, searcher: &UserId, words: &[String], limit: usize) -> Result<Vec<DirectoryUser>> {
    let mut stmt = c.prepare_cached(
        "SELECT d.user_id, d.display_name, d.avatar_url
         FROM user_directory_search s JOIN user_directory d ON d.rowid = s.rowid
         WHERE user_directory_search MATCH ?1
             AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = d.user_id AND u.deactivated = 1)
             AND EXISTS (
                 SELECT 1 FROM current_state m JOIN user_directory_rooms r ON r.room_id = m.room_id
                 WHERE m.state_key = d.user_id AND m.type = 'm.room.member' AND m.membership = 'join'
                     AND ((r.public = 1 AND r.local_joined > 0)
                       OR (d.user_id != ?2 AND EXISTS (
                           SELECT 1 FROM current_state me
                           WHERE me.room_id = m.room_id AND me.type = 'm.room.member'
                               AND me.state_key = ?2 AND me.membership = 'join'))))
         ORDER BY s.rank, d.display_name IS NULL, d.avatar_url IS NULL, d.user_id
         LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            fts_query(words),
            searcher.as_str(),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        },
    )?;
    rows.map(|r| {
        let (user_id, display_name, avatar_url) = r?;
        Ok(DirectoryUser {
            user_id: parse(user_id)?,
            display_name,
            avatar_url,
        })
    })
    .collect()
}

#[async_trait]
impl UserDirectoryStorage for SqliteStorage {
    async fn search_user_directory(
        &self,
        searcher: &UserId,
        words: &[String],
        limit: usize,
    ) -> Result<Vec<DirectoryUser>> {
        let (searcher, words) = (searcher.to_owned(), words.to_vec());
        self.read(move |c| search(c, &searcher, &words, limit)).await
    }
}

#[async_trait]
impl OpenIdStorage for SqliteStorage {
    async fn put_openid_token(&self, token: &str, user_id: &UserId, expires_ts: u64, now_ts: u64) -> Result<()> {
        let (token, user_id) = (token.to_owned(), user_id.to_owned());
        self.write(move |tx| {
            exec(tx, "DELETE FROM openid_tokens WHERE expires_ts <= ?1", [now_ts as i64])?;
            exec(
                tx,
                "INSERT INTO openid_tokens (token, user_id, expires_ts) VALUES (?1, ?2, ?3)",
                params![token, user_id.as_str(), expires_ts as i64],
            )?;
            Ok(())
        })
        .await
    }

    async fn openid_token_user(&self, token: &str, now_ts: u64) -> Result<Option<OwnedUserId>> {
        let token = token.to_owned();
        self.read(move |c| {
            let user = query_one(
                c,
                "SELECT user_id FROM openid_tokens WHERE token = ?1 AND expires_ts > ?2",
                params![token, now_ts as i64],
                |r| r.get::<_, String>(0),
            )
            .optional()?;
            user.map(parse).transpose()
        })
        .await
    }
}
