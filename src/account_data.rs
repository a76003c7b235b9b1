//! Account data (the spec's "Client Config"): per-user JSON objects by
//! type, global or for one room. Room tags (`m.tag`), the fully-read
//! marker (`m.fully_read`) and the ignore list (`m.ignored_user_list`)
//! are account data too.
//!
//! Every change takes a new position in the account data stream (kept in
//! storage); `/sync`'s token carries the position it covers, so an
//! incremental sync sends only what changed after it, and a change wakes
//! long-polling syncs through [`AccountDataStream`].

use std::collections::HashSet;

use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value};

use crate::{error::MatrixError, events::Pdu, services::Services, wakeups::Topic};

/// Types the server manages, which clients may read but not set through
/// the account data API (the spec's "Server Behaviour": 405 `M_BAD_JSON`).
pub const SERVER_MANAGED: [&str; 2] = ["m.fully_read", "m.push_rules"];

pub const TAG: &str = "m.tag";
pub const FULLY_READ: &str = "m.fully_read";
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The head of the account data stream, and the lock that makes
/// read-modify-write changes (tags) atomic.
pub struct AccountDataStream {
    head: crate::wakeups::StreamHead,
    writes: tokio::sync::Mutex<()>,
}

impl AccountDataStream {
    /// `stored`: the newest position in storage.
    pub fn new(stored: i64) -> Self {
        AccountDataStream {
            head: crate::wakeups::StreamHead::new(stored),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    pub fn head(&self) -> i64 {
        self.head.get()
    }

    /// A position was written (and committed): `/sync` may show it.
    pub fn advanced(&self, position: i64) {
        self.head.advance(position);
    }
}

/// Sets account data (no checks: the caller decides what may be set) and
/// wakes `/sync`.
pub async fn put(
    svc: &Services,
    user: &UserId,
    room_id: Option<&RoomId>,
    data_type: &str,
    content: &Value,
) -> Result<i64, MatrixError> {
    let _write = svc.account_data.writes.lock().await;
    put_locked(svc, user, room_id, data_type, content).await
}

async fn put_locked(
    svc: &Services,
    user: &UserId,
    room_id: Option<&RoomId>,
    data_type: &str,
    content: &Value,
) -> Result<i64, MatrixError> {
    let json = serde_json::to_string(content).map_err(|e| MatrixError::internal("account data", e))?;
    let position = svc.storage.put_account_data(user, room_id, data_type, &json).await?;
    svc.account_data.advanced(position);
    svc.notifier.wakeups.wake(&[Topic::User(user.to_owned())]);
    Ok(position)
}

/// The content of a piece of account data, if set.
pub async fn get(
    svc: &Services,
    user: &UserId,
    room_id: Option<&RoomId>,
    data_type: &str,
) -> Result<Option<Value>, MatrixError> {
    match svc.storage.account_data(user, room_id, data_type).await? {
        Some(json) => Ok(Some(
            serde_json::from_str(&json).map_err(|e| MatrixError::internal("stored account data", e))?,
        )),
        None => Ok(None),
    }
}

/// Changes a piece of account data atomically: `change` gets the current
/// content (if any) and returns the new one.
pub async fn update(
    svc: &Services,
    user: &UserId,
    room_id: Option<&RoomId>,
    data_type: &str,
    change: impl FnOnce(Option<Value>) -> Value,
) -> Result<i64, MatrixError> {
    let _write = svc.account_data.writes.lock().await;
    let current = get(svc, user, room_id, data_type).await?;
    put_locked(svc, user, room_id, data_type, &change(current)).await
}

/// As [`update`], for changes that may decline: `change` returns the new
/// content, or `None` to leave things as they are (nothing is written).
pub async fn try_update(
    svc: &Services,
    user: &UserId,
    room_id: Option<&RoomId>,
    data_type: &str,
    change: impl FnOnce(Option<Value>) -> Result<Option<Value>, MatrixError>,
) -> Result<Option<i64>, MatrixError> {
    let _write = svc.account_data.writes.lock().await;
    let current = get(svc, user, room_id, data_type).await?;
    match change(current)? {
        Some(content) => Ok(Some(put_locked(svc, user, room_id, data_type, &content).await?)),
        None => Ok(None),
    }
}

/// Checks content a client wants to set as account data of `data_type`.
pub fn check_client_content(data_type: &str, content: &Value) -> Result<(), MatrixError> {
    if SERVER_MANAGED.contains(&data_type) {
        return Err(MatrixError::bad_json(format!(
            "Cannot set {data_type} through this API: the server manages it"
        ))
        .with_status(http::StatusCode::METHOD_NOT_ALLOWED));
    }
    if !content.is_object() {
        return Err(MatrixError::bad_json("Account data content must be a JSON object"));
    }
    if data_type == IGNORED_USER_LIST && !content.get("ignored_users").is_some_and(Value::is_object) {
        return Err(MatrixError::bad_json(
            "m.ignored_user_list needs an 'ignored_users' object",
        ));
    }
    Ok(())
}

/// The users `user` ignores (`m.ignored_user_list`); entries that are not
/// user IDs are skipped.
pub async fn ignored_users(svc: &Services, user: &UserId) -> Result<HashSet<OwnedUserId>, MatrixError> {
    let Some(content) = get(svc, user, None, IGNORED_USER_LIST).await? else {
        return Ok(HashSet::new());
    };
    Ok(content
        .get("ignored_users")
        .and_then(Value::as_object)
        .map(|users| {
            users
                .keys()
                .filter_map(|u| OwnedUserId::try_from(u.as_str()).ok())
                .collect()
        })
        .unwrap_or_default())
}

/// Whether an event is hidden from a user who ignores `ignored`: every
/// event of an ignored sender except state events (the spec's "Ignoring
/// Users").
pub fn hidden_by_ignore(ignored: &HashSet<OwnedUserId>, pdu: &Pdu) -> bool {
    pdu.state_key.is_none() && ignored.contains(&pdu.sender)
}

/// The `tags` object of `m.tag` content (empty when missing or not an
/// object).
pub fn tags_of(content: Option<Value>) -> Map<String, Value> {
    match content {
        Some(Value::Object(mut content)) => match content.remove("tags") {
            Some(Value::Object(tags)) => tags,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
}
