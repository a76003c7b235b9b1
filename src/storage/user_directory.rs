//! What storage keeps for the user directory (see [`crate::user_directory`]
//! for who may find whom, and why it is kept this way), and OpenID tokens.
//! Supertraits of [`super::Storage`], as [`super::e2e::E2eStorage`] is.
//!
//! The directory itself needs no writes of its own from callers: storage
//! keeps it up to date where a room's current state moves
//! ([`super::Storage::persist_timeline_event`]) and where a local user's
//! profile changes ([`super::Storage::set_profile`]).

use async_trait::async_trait;
use ruma::{OwnedUserId, UserId};

use super::Result;

/// A user the directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

#[async_trait]
pub trait UserDirectoryStorage: Send + Sync {
    /// Users `searcher` may find whose user ID or display name has, for
    /// each of `words`, a word starting with it (case-insensitively), best
    /// matches first, at most `limit`. `words` must not be empty.
    async fn search_user_directory(
        &self,
        searcher: &UserId,
        words: &[String],
        limit: usize,
    ) -> Result<Vec<DirectoryUser>>;
}

#[async_trait]
pub trait OpenIdStorage: Send + Sync {
    /// Records an OpenID token of `user_id`, valid until `expires_ts` (ms),
    /// and forgets the tokens that expired before `now_ts`.
    async fn put_openid_token(&self, token: &str, user_id: &UserId, expires_ts: u64, now_ts: u64) -> Result<()>;
    /// The user an OpenID token stands for, if it is known and has not
    /// expired by `now_ts` (ms).
    async fn openid_token_user(&self, token: &str, now_ts: u64) -> Result<Option<OwnedUserId>>;
}
