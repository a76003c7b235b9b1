//! The user directory: kept up to date in the transaction that moves a
//! room's current state, searched with the text search vector of
//! `user_directory` (words without diacritics: see `schema_v1.sql`) and
//! the indexed `current_state` table. See `crate::user_directory` for the
//! design, and OpenID tokens.
//!
//! Where the SQLite version asks once per changed member, this asks once
//! per statement for all of them (a server round trip costs more than an
//! SQLite lookup), a batch of [`BATCH`] members at a time.

use std::collections::BTreeSet;

use async_trait::async_trait;
use ruma::{OwnedUserId, RoomId, UserId, events::StateEventType};
use serde_json::Value;

use super::{GenericClient, PgStorage, big, col, exec, parse, pg_write, query, query_one, query_opt};
use crate::storage::{
    CurrentStateChange, Result, StorageError,
    user_directory::{DirectoryUser, OpenIdStorage, UserDirectoryStorage},
};

/// The most members one statement asks about.
const BATCH: usize = 1000;

/// The users whose membership `changes` change, each once, sorted (rows
/// are then locked in one order by every writer).
fn changed_members(changes: &[CurrentStateChange]) -> Vec<&str> {
    let members: BTreeSet<&str> = changes
        .iter()
        .filter(|c| c.key.0 == StateEventType::RoomMember)
        .map(|c| c.key.1.as_str())
        .collect();
    members.into_iter().collect()
}

/// Whether `changes` touch what makes a room public for the directory.
fn touches_public(changes: &[CurrentStateChange]) -> bool {
    changes.iter().any(|c| {
        c.key.1.is_empty()
            && (c.key.0 == StateEventType::RoomJoinRules || c.key.0 == StateEventType::RoomHistoryVisibility)
    })
}

/// The `content` of an event's JSON (`null` when it has none).
fn content(json: &str) -> Result<Value> {
    #[derive(serde::Deserialize)]
    struct Event {
        #[serde(default)]
        content: Value,
    }
    let event: Event = serde_json::from_str(json).map_err(|e| StorageError::Corrupt(format!("event JSON: {e}")))?;
    Ok(event.content)
}

/// `content[field]` when it is a string, without NUL characters (which
/// JSON may carry and a PostgreSQL `TEXT` may not).
fn string_field(content: &Value, field: &str) -> Option<String> {
    content.get(field).and_then(Value::as_str).map(|s| s.replace('\0', ""))
}

/// How many of `members` are local users (a user with an account here)
/// joined to the room, as the current state stands.
async fn local_joins_among(tx: &impl GenericClient, room_id: &RoomId, members: &[&str]) -> Result<i64> {
    let mut count = 0;
    for batch in members.chunks(BATCH) {
        let r = query_one(
            tx,
            "SELECT COUNT(*) FROM UNNEST($2::text[]) AS m (user_id)
             JOIN current_state c ON c.room_id = $1 AND c.type = 'm.room.member' AND c.state_key = m.user_id
             JOIN users u ON u.user_id = m.user_id
             WHERE c.membership = 'join'",
            &[&room_id.as_str(), &batch],
        )
        .await?;
        count += col::<i64>(&r, 0)?;
    }
    Ok(count)
}

/// What the directory needs to know before `changes` replace a room's
/// current state: how many local users among the changed members were
/// joined. Pass it to [`after_current_state_changes`].
pub struct Before {
    local_joins: i64,
}

pub async fn before_current_state_changes(
    tx: &impl GenericClient,
    room_id: &RoomId,
    changes: &[CurrentStateChange],
) -> Result<Before> {
    Ok(Before {
        local_joins: local_joins_among(tx, room_id, &changed_members(changes)).await?,
    })
}

/// Brings the directory up to date once `changes` are in the current
/// state: the room's count of joined local users, whether it is public
/// for the directory (join rule `public` or history visibility
/// `world_readable`), and other servers' users' names (their newest join
/// here; gone once they are joined to no room here).
pub async fn after_current_state_changes(
    tx: &impl GenericClient,
    room_id: &RoomId,
    changes: &[CurrentStateChange],
    before: Before,
) -> Result<()> {
    let members = changed_members(changes);
    let touches_public = touches_public(changes);
    if members.is_empty() && !touches_public {
        return Ok(());
    }
    exec(
        tx,
        "INSERT INTO user_directory_rooms (room_id) VALUES ($1) ON CONFLICT (room_id) DO NOTHING",
        &[&room_id.as_str()],
    )
    .await?;
    let delta = local_joins_among(tx, room_id, &members).await? - before.local_joins;
    if delta != 0 {
        exec(
            tx,
            "UPDATE user_directory_rooms SET local_joined = GREATEST(0, local_joined + $2) WHERE room_id = $1",
            &[&room_id.as_str(), &delta],
        )
        .await?;
    }
    if touches_public {
        let public = is_public(tx, room_id).await?;
        exec(
            tx,
            "UPDATE user_directory_rooms SET public = $2 WHERE room_id = $1",
            &[&room_id.as_str(), &public],
        )
        .await?;
    }
    for batch in members.chunks(BATCH) {
        remote_members_changed(tx, room_id, batch).await?;
    }
    Ok(())
}

/// Whether the room's current join rule is `public` or its history
/// visibility `world_readable`.
async fn is_public(tx: &impl GenericClient, room_id: &RoomId) -> Result<bool> {
    let rows = query(
        tx,
        "SELECT c.type, e.json FROM current_state c,
             LATERAL (SELECT json FROM events WHERE events.event_id = c.event_id OFFSET 0) e
         WHERE c.room_id = $1 AND c.state_key = ''
             AND c.type IN ('m.room.join_rules', 'm.room.history_visibility')",
        &[&room_id.as_str()],
    )
    .await?;
    for r in &rows {
        let (kind, json): (String, String) = (col(r, 0)?, col(r, 1)?);
        let content = content(&json)?;
        let public = match kind.as_str() {
            "m.room.join_rules" => content.get("join_rule").and_then(Value::as_str) == Some("public"),
            _ => content.get("history_visibility").and_then(Value::as_str) == Some("world_readable"),
        };
        if public {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The names of other servers' users among `members` (sorted): those
/// joined to the room are found by the name and avatar of their join
/// (the current membership event: the change's own), the others are
/// dropped unless joined to another room here.
async fn remote_members_changed(tx: &impl GenericClient, room_id: &RoomId, members: &[&str]) -> Result<()> {
    let rows = query(
        tx,
        "SELECT m.user_id, e.json FROM UNNEST($2::text[]) WITH ORDINALITY AS m (user_id, n)
         LEFT JOIN current_state c ON c.room_id = $1 AND c.type = 'm.room.member'
             AND c.state_key = m.user_id AND c.membership = 'join'
         LEFT JOIN LATERAL (SELECT json FROM events WHERE events.event_id = c.event_id OFFSET 0) e ON TRUE
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = m.user_id)
         ORDER BY m.n",
        &[&room_id.as_str(), &members],
    )
    .await?;
    let (mut joined, mut names, mut avatars, mut gone) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let user: String = col(r, 0)?;
        match col::<Option<String>>(r, 1)? {
            Some(json) => {
                let content = content(&json)?;
                names.push(string_field(&content, "displayname"));
                avatars.push(string_field(&content, "avatar_url"));
                joined.push(user);
            }
            None => gone.push(user),
        }
    }
    if !joined.is_empty() {
        exec(
            tx,
            "INSERT INTO user_directory (user_id, display_name, avatar_url)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
             ON CONFLICT (user_id) DO UPDATE SET
                 display_name = excluded.display_name, avatar_url = excluded.avatar_url
             WHERE user_directory.display_name IS DISTINCT FROM excluded.display_name
                 OR user_directory.avatar_url IS DISTINCT FROM excluded.avatar_url",
            &[&joined, &names, &avatars],
        )
        .await?;
    }
    if !gone.is_empty() {
        // Lock the rows first: a writer joining one of these users to
        // another room holds their row (its upsert above) until it commits,
        // and the check below, a new statement, then sees that join.
        query(
            tx,
            "SELECT 1 FROM user_directory WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE",
            &[&gone],
        )
        .await?;
        exec(
            tx,
            "DELETE FROM user_directory d WHERE d.user_id = ANY($1) AND NOT EXISTS (
                 SELECT 1 FROM current_state
                 WHERE state_key = d.user_id AND type = 'm.room.member' AND membership = 'join')",
            &[&gone],
        )
        .await?;
    }
    Ok(())
}

/// A local user's profile as the directory shows it (at registration and
/// on every change).
pub async fn local_profile_changed(tx: &impl GenericClient, user_id: &UserId) -> Result<()> {
    exec(
        tx,
        "INSERT INTO user_directory (user_id, display_name, avatar_url)
         SELECT user_id, displayname, avatar_url FROM users WHERE user_id = $1
         ON CONFLICT (user_id) DO UPDATE SET
             display_name = excluded.display_name, avatar_url = excluded.avatar_url
         WHERE user_directory.display_name IS DISTINCT FROM excluded.display_name
             OR user_directory.avatar_url IS DISTINCT FROM excluded.avatar_url",
        &[&user_id.as_str()],
    )
    .await?;
    Ok(())
}

/// The longest word (in bytes) PostgreSQL's text search keeps: longer
/// ones are left out of the index, and out of a query.
const MAX_WORD: usize = 2047;

/// The text search query for `words`: every one a prefix of a word of the
/// user ID or display name. Words are lowercased and split again at
/// anything but letters and digits (as the index splits names), so only
/// letters and digits reach `to_tsquery`, never its operators; the search
/// then folds their diacritics as the index does (`user_directory_fold`,
/// one letter for one). `None` when nothing can match: no word, or one too
/// long for any indexed word to start with it (`to_tsquery` would drop it
/// and match more).
fn ts_query(words: &[String]) -> Option<String> {
    let words: Vec<String> = words
        .iter()
        .flat_map(|w| {
            w.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|part| !part.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    if words.is_empty() || words.iter().any(|w| w.len() > MAX_WORD) {
        return None;
    }
    Some(words.iter().map(|w| format!("{w}:*")).collect::<Vec<_>>().join(" & "))
}

/// Users matching `words` whom `searcher` may find: joined to a room the
/// searcher is joined to, or to a room public for the directory that this
/// server is still in. Deactivated users are not found.
async fn search(
    c: &impl GenericClient,
    searcher: &UserId,
    words: &[String],
    limit: usize,
) -> Result<Vec<DirectoryUser>> {
    let Some(query_text) = ts_query(words) else {
        return Ok(Vec::new());
    };
    let rows = query(
        c,
        "SELECT d.user_id, d.display_name, d.avatar_url
         FROM user_directory d
         WHERE d.search @@ to_tsquery('simple', user_directory_fold($1))
             AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = d.user_id AND u.deactivated)
             AND EXISTS (
                 SELECT 1 FROM current_state m JOIN user_directory_rooms r ON r.room_id = m.room_id
                 WHERE m.state_key = d.user_id AND m.type = 'm.room.member' AND m.membership = 'join'
                     AND ((r.public AND r.local_joined > 0)
                       OR (d.user_id != $2 AND EXISTS (
                           SELECT 1 FROM current_state me
                           WHERE me.room_id = m.room_id AND me.type = 'm.room.member'
                               AND me.state_key = $2 AND me.membership = 'join'))))
         ORDER BY ts_rank(d.search, to_tsquery('simple', user_directory_fold($1))) DESC,
             d.display_name IS NULL, d.avatar_url IS NULL, d.user_id
         LIMIT $3",
        &[&query_text, &searcher.as_str(), &big(limit as u64)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DirectoryUser {
                user_id: parse(col(r, 0)?)?,
                display_name: col(r, 1)?,
                avatar_url: col(r, 2)?,
            })
        })
        .collect()
}

#[async_trait]
impl UserDirectoryStorage for PgStorage {
    async fn search_user_directory(
        &self,
        searcher: &UserId,
        words: &[String],
        limit: usize,
    ) -> Result<Vec<DirectoryUser>> {
        let c = self.client().await?;
        search(&c, searcher, words, limit).await
    }
}

#[async_trait]
impl OpenIdStorage for PgStorage {
    async fn put_openid_token(&self, token: &str, user_id: &UserId, expires_ts: u64, now_ts: u64) -> Result<()> {
        pg_write!(self, |tx| {
            exec(&tx, "DELETE FROM openid_tokens WHERE expires_ts <= $1", &[&big(now_ts)]).await?;
            exec(
                &tx,
                "INSERT INTO openid_tokens (token, user_id, expires_ts) VALUES ($1, $2, $3)",
                &[&token, &user_id.as_str(), &big(expires_ts)],
            )
            .await?;
        })
    }

    async fn openid_token_user(&self, token: &str, now_ts: u64) -> Result<Option<OwnedUserId>> {
        let c = self.client().await?;
        let row = query_opt(
            &c,
            "SELECT user_id FROM openid_tokens WHERE token = $1 AND expires_ts > $2",
            &[&token, &big(now_ts)],
        )
        .await?;
        row.map(|r| parse(col(&r, 0)?)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::ts_query;

    #[test]
    fn only_letters_and_digits_reach_the_query() {
        let words = |w: &[&str]| w.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(ts_query(&words(&["Alice", "hs"])).as_deref(), Some("alice:* & hs:*"));
        assert_eq!(
            ts_query(&words(&["d&|!:*'\\(x", "Ümlaut"])).as_deref(),
            Some("d:* & x:* & ümlaut:*")
        );
        assert_eq!(ts_query(&words(&["&|!", ""])), None);
        assert_eq!(ts_query(&words(&["a", &"b".repeat(2048)])), None);
    }
}
