//! OpenID tokens: a user asks for one (`/user/{userId}/openid/request_token`)
//! and hands it to another service, which asks this server, through the
//! federation API (`/openid/userinfo`), whom it stands for. A token is a
//! random string kept in storage for [`TOKEN_LIFETIME`], good for nothing
//! else (it is not an access token).

use std::time::Duration;

use ruma::{OwnedUserId, UserId};

use crate::{accounts::random_string, error::MatrixError, storage::Storage};

/// How long an OpenID token is valid (the spec's example, and Synapse's
/// default: an hour).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A new token for `user_id`, valid for [`TOKEN_LIFETIME`].
pub async fn issue(storage: &dyn Storage, user_id: &UserId) -> Result<String, MatrixError> {
    let token = random_string(32);
    let now = now_ms();
    storage
        .put_openid_token(&token, user_id, now + TOKEN_LIFETIME.as_millis() as u64, now)
        .await?;
    Ok(token)
}

/// The user a token stands for; unknown or expired: 401 `M_UNKNOWN_TOKEN`.
pub async fn user_of(storage: &dyn Storage, token: &str) -> Result<OwnedUserId, MatrixError> {
    storage
        .openid_token_user(token, now_ms())
        .await?
        .ok_or_else(unknown_token)
}

pub fn unknown_token() -> MatrixError {
    MatrixError::new(crate::error::ErrCode::UnknownToken, "OpenID token unknown or expired")
}
