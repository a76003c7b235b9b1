//! Local accounts: user ID rules, password hashing (argon2id), sessions.

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use rand::RngExt;
use ruma::{OwnedDeviceId, OwnedUserId, ServerName, UserId};

use crate::storage::{Storage, StorageError, UserRecord};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    #[error("user ID already taken")]
    UserInUse,
    #[error("invalid username or password")]
    BadCredentials,
    #[error("account is deactivated")]
    Deactivated,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// argon2id with a 7 MiB memory cost (one of OWASP's recommended
/// settings), so hashing does not balloon the server's memory.
fn hasher() -> Argon2<'static> {
    let params = argon2::Params::new(7 * 1024, 5, 1, None).expect("valid argon2 parameters");
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

pub fn hash_password(password: &str) -> Result<String, AccountError> {
    hasher()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| hasher().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A localpart as new accounts may have it: `a-z 0-9 . _ = - / +`.
pub fn user_id_for(localpart: &str, server: &ServerName) -> Result<OwnedUserId, AccountError> {
    if localpart.is_empty()
        || !localpart
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
    {
        return Err(AccountError::InvalidUsername(
            "user IDs may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'".to_owned(),
        ));
    }
    let user_id =
        UserId::parse(format!("@{localpart}:{server}")).map_err(|e| AccountError::InvalidUsername(e.to_string()))?;
    if user_id.as_str().len() > 255 {
        return Err(AccountError::InvalidUsername(
            "user ID is longer than 255 bytes".to_owned(),
        ));
    }
    Ok(user_id)
}

/// Creates an account. Hashing runs on the blocking pool.
pub async fn create_user(
    storage: &dyn Storage,
    user_id: &UserId,
    password: Option<&str>,
    admin: bool,
) -> Result<(), AccountError> {
    let password_hash = match password {
        Some(p) => {
            let p = p.to_owned();
            Some(
                tokio::task::spawn_blocking(move || hash_password(&p))
                    .await
                    .map_err(|e| AccountError::Hash(e.to_string()))??,
            )
        }
        None => None,
    };
    storage
        .create_user(UserRecord {
            user_id: user_id.to_owned(),
            password_hash,
            admin,
            deactivated: false,
            displayname: Some(user_id.localpart().to_owned()),
            avatar_url: None,
        })
        .await
        .map_err(|e| match e {
            StorageError::AlreadyExists => AccountError::UserInUse,
            e => e.into(),
        })
}

/// Checks a password login.
pub async fn check_password(storage: &dyn Storage, user_id: &UserId, password: &str) -> Result<(), AccountError> {
    let user = storage.user(user_id).await?.ok_or(AccountError::BadCredentials)?;
    if user.deactivated {
        return Err(AccountError::Deactivated);
    }
    let hash = user.password_hash.ok_or(AccountError::BadCredentials)?;
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .map_err(|e| AccountError::Hash(e.to_string()))?;
    if ok { Ok(()) } else { Err(AccountError::BadCredentials) }
}

pub fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Starts a session: a device (new unless given) and an access token.
pub async fn new_session(
    storage: &dyn Storage,
    user_id: &UserId,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<&str>,
) -> Result<(OwnedDeviceId, String), AccountError> {
    let device_id = device_id.unwrap_or_else(|| OwnedDeviceId::from(random_string(10).to_uppercase()));
    let token = format!("wft_{}", random_string(32));
    storage
        .create_session(user_id, &device_id, display_name, &token)
        .await?;
    Ok((device_id, token))
}
