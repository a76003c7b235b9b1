//! The user directory: whom a user finds with `/user_directory/search`.
//!
//! As Synapse does by default (`search_all_users = false`), a user finds
//! the users who share a joined room with them, and the users joined to a
//! room that is public for the directory — join rule `public`, or history
//! visibility `world_readable` — while this server is in that room, other
//! servers' users included. A user is found by a prefix of any word of
//! their user ID or display name, case-insensitively; every word of the
//! search term must match. Deactivated users are not found.
//!
//! Design: nothing is computed per search over all users or all rooms.
//! Who is joined where is already indexed (the current state table, by
//! room and by user); storage adds, in the same transaction that moves a
//! room's current state, only what that index lacks: per room, whether it
//! is public for the directory and how many local users are joined (none:
//! the server has left, and the members it last saw no longer count), and
//! per user, the name they are found by (a local user's profile, another
//! server's user's display name from their newest join), with a full-text
//! index over user IDs and names. A search then reads the users whose
//! words match and, for each, the rooms they are joined to (an index
//! lookup) until one qualifies. Keeping Synapse's pairs of users sharing
//! private rooms instead would cost a write per pair of members — the
//! square of a room's size — on every join.
//!
//! Costs: a search reads every user its words match (to rank them), so a
//! one-letter search on a server that knows many users is the expensive
//! one (about 0.25 s for 100,000 matching users). A joined room's current
//! state costs, per member changed, two primary-key lookups and, for
//! another server's user, the upsert of their name and its full-text
//! entry (about 30 µs: some 3 s more in the transaction of a join to a
//! room of 100,000 members, beside the checks of as many PDUs).

use ruma::UserId;

use crate::{
    error::MatrixError,
    storage::{Storage, user_directory::DirectoryUser},
};

/// The most results one search returns, whatever `limit` asks (Synapse's
/// cap).
pub const MAX_LIMIT: usize = 50;

/// The words of a search term: its runs of letters and digits, lowercased
/// (the directory's index splits user IDs and names the same way, so
/// `@alice:example.org` is `alice`, `example`, `org`).
pub fn search_words(term: &str) -> Vec<String> {
    term.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Searches the directory for `searcher`: at most `limit` users, best
/// matches first, and whether there were more.
pub async fn search(
    storage: &dyn Storage,
    searcher: &UserId,
    term: &str,
    limit: usize,
) -> Result<(Vec<DirectoryUser>, bool), MatrixError> {
    let words = search_words(term);
    let limit = limit.min(MAX_LIMIT);
    if words.is_empty() {
        return Ok((Vec::new(), false));
    }
    let mut users = storage.search_user_directory(searcher, &words, limit + 1).await?;
    let limited = users.len() > limit;
    users.truncate(limit);
    Ok((users, limited))
}

#[cfg(test)]
mod tests {
    use super::search_words;

    #[test]
    fn words_split_at_punctuation_and_fold_case() {
        assert_eq!(search_words("@Alice:Example.org"), ["alice", "example", "org"]);
        assert_eq!(search_words("  Bob  the builder "), ["bob", "the", "builder"]);
        assert!(search_words("@:\"*").is_empty());
    }
}
