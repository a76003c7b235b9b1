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

/// Password hashes computed at once, at most one per core: each takes
/// milliseconds of CPU and 7 MiB of memory (argon2id's parameters), so a
/// flood of logins or registrations queues here instead of taking every
/// blocking thread and hundreds of MiB. Process-wide like the CPU it
/// guards (not per `Services`: the command-line tools hash too).
static HASHING: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
});

/// Runs `f` (an argon2 hash or check) on the blocking pool, within [`HASHING`].
async fn hashing<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, AccountError> {
    let _permit = HASHING.acquire().await.map_err(|e| AccountError::Hash(e.to_string()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// [`hash_password`] on the blocking pool (argon2 takes milliseconds).
pub async fn hash_password_blocking(password: &str) -> Result<String, AccountError> {
    let password = password.to_owned();
    hashing(move || hash_password(&password)).await?
}

/// Creates an account. Hashing runs on the blocking pool.
pub async fn create_user(
    storage: &dyn Storage,
    user_id: &UserId,
    password: Option<&str>,
    admin: bool,
) -> Result<(), AccountError> {
    let password_hash = match password {
        Some(p) => Some(hash_password_blocking(p).await?),
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
            is_guest: false,
        })
        .await
        .map_err(|e| match e {
            StorageError::AlreadyExists => AccountError::UserInUse,
            e => e.into(),
        })
}

/// Creates a guest account, named by a random number as Synapse names
/// its guests (a full account can take that name only by upgrading the
/// guest: registration with the guest's access token).
pub async fn create_guest(storage: &dyn Storage, server: &ServerName) -> Result<OwnedUserId, AccountError> {
    for _ in 0..8 {
        let localpart = rand::rng().random_range(100_000_000u64..10_000_000_000).to_string();
        let user_id = user_id_for(&localpart, server)?;
        let record = UserRecord {
            user_id: user_id.clone(),
            password_hash: None,
            admin: false,
            deactivated: false,
            displayname: None,
            avatar_url: None,
            is_guest: true,
        };
        match storage.create_user(record).await {
            Ok(()) => return Ok(user_id),
            Err(StorageError::AlreadyExists) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AccountError::UserInUse)
}

/// Checks a password login.
pub async fn check_password(storage: &dyn Storage, user_id: &UserId, password: &str) -> Result<(), AccountError> {
    let user = storage.user(user_id).await?.ok_or(AccountError::BadCredentials)?;
    if user.deactivated {
        return Err(AccountError::Deactivated);
    }
    let hash = user.password_hash.ok_or(AccountError::BadCredentials)?;
    let password = password.to_owned();
    let ok = hashing(move || verify_password(&password, &hash)).await?;
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

/// Single-use nonces for shared-secret registration
/// (`/_synapse/admin/v1/register`), each valid for [`NONCE_LIFETIME`].
#[derive(Default)]
pub struct RegistrationNonces {
    issued: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How long a shared-secret registration nonce stays usable (Synapse: 60 s).
pub const NONCE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

impl RegistrationNonces {
    /// A new nonce; forgets the expired ones.
    pub fn issue(&self) -> String {
        let nonce = random_string(32);
        let now = std::time::Instant::now();
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.retain(|_, at| now.duration_since(*at) < NONCE_LIFETIME);
        issued.insert(nonce.clone(), now);
        nonce
    }

    /// Uses up `nonce`: true if it was issued and has not expired. A nonce
    /// is consumed even when the request that presents it then fails.
    pub fn take(&self, nonce: &str) -> bool {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.remove(nonce).is_some_and(|at| at.elapsed() < NONCE_LIFETIME)
    }
}

/// What a registration request asked for; remembered with its
/// user-interactive-auth session so that later requests of the session
/// may leave it out.
#[derive(Debug, Clone, Default)]
pub struct RegistrationParams {
    pub username: Option<String>,
    pub password: Option<String>,
    pub device_id: Option<OwnedDeviceId>,
    pub initial_device_display_name: Option<String>,
    pub inhibit_login: bool,
    /// A guest's access token: the registration upgrades that guest.
    pub guest_access_token: Option<String>,
}

impl RegistrationParams {
    /// These parameters, with the gaps filled from `earlier`.
    pub fn or(self, earlier: &RegistrationParams) -> RegistrationParams {
        RegistrationParams {
            username: self.username.or_else(|| earlier.username.clone()),
            password: self.password.or_else(|| earlier.password.clone()),
            device_id: self.device_id.or_else(|| earlier.device_id.clone()),
            initial_device_display_name: self
                .initial_device_display_name
                .or_else(|| earlier.initial_device_display_name.clone()),
            inhibit_login: self.inhibit_login || earlier.inhibit_login,
            guest_access_token: self.guest_access_token.or_else(|| earlier.guest_access_token.clone()),
        }
    }
}

/// A registration's user-interactive-auth session.
#[derive(Debug, Clone)]
pub struct RegistrationSession {
    pub params: RegistrationParams,
    /// Set once the session's registration succeeded: a retry of the
    /// completed session gets the result again (spec: UIA).
    pub registered: Option<OwnedUserId>,
    started: std::time::Instant,
}

/// How long a registration session is remembered.
pub const REGISTRATION_SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// Registration sessions, in memory (a restart forgets them; clients then
/// start again).
#[derive(Default)]
pub struct RegistrationSessions {
    sessions: std::sync::Mutex<std::collections::HashMap<String, RegistrationSession>>,
}

impl RegistrationSessions {
    /// Starts a session remembering `params`; forgets expired ones.
    pub fn start(&self, params: RegistrationParams) -> String {
        let id = random_string(24);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.started.elapsed() < REGISTRATION_SESSION_LIFETIME);
        sessions.insert(
            id.clone(),
            RegistrationSession {
                params,
                registered: None,
                started: std::time::Instant::now(),
            },
        );
        id
    }

    pub fn get(&self, id: &str) -> Option<RegistrationSession> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(id)
            .filter(|s| s.started.elapsed() < REGISTRATION_SESSION_LIFETIME)
            .cloned()
    }

    /// Records that the session's registration created `user_id`.
    pub fn complete(&self, id: &str, user_id: &UserId) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(session) = sessions.get_mut(id) {
            session.registered = Some(user_id.to_owned());
        }
    }
}

/// User-interactive-auth sessions of operations other than registration
/// (deleting devices, deactivating, replacing cross-signing keys), in
/// memory. Each is bound to the user and the operation it was started
/// for: the spec has the server keep the operation consistent through a
/// session, so that credentials given to approve one operation cannot
/// approve another.
#[derive(Default)]
pub struct AuthSessions {
    sessions: std::sync::Mutex<std::collections::HashMap<String, (OwnedUserId, String, std::time::Instant)>>,
}

impl AuthSessions {
    /// A new session for `operation` by `user`; forgets expired ones.
    pub fn start(&self, user: &UserId, operation: &str) -> String {
        let id = random_string(24);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, (_, _, started)| started.elapsed() < REGISTRATION_SESSION_LIFETIME);
        sessions.insert(
            id.clone(),
            (user.to_owned(), operation.to_owned(), std::time::Instant::now()),
        );
        id
    }

    /// Whether session `id` may approve `operation` by `user`: not if it
    /// was started by another user or for another operation. A session
    /// not known here (forgotten by a restart, or never started) does not
    /// forbid anything.
    pub fn allows(&self, id: &str, user: &UserId, operation: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(id) {
            Some((owner, started_for, started)) if started.elapsed() < REGISTRATION_SESSION_LIFETIME => {
                owner == user && started_for == operation
            }
            _ => true,
        }
    }
}
