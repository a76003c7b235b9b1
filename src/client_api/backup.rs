//! Server-side backups of room keys (`/room_keys/version`,
//! `/room_keys/keys`): versions with the client's opaque algorithm data,
//! and keys per room and session, a key replaced only by a better one.
//! Keys go to the current version only.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedRoomId, UInt,
    api::client::backup::{
        RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
        delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
        get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
        get_latest_backup_info, update_backup_version,
    },
    serde::Raw,
};
use serde_json::{Value, json};

use super::extract::Ruma;
use crate::{
    error::{ErrCode, MatrixError},
    services::Services,
    storage::{
        StorageError,
        e2e::{BackupKey, BackupVersion},
    },
};

fn no_version() -> MatrixError {
    MatrixError::not_found("Unknown backup version")
}

/// The algorithm data of a new or updated version, checked.
fn algorithm_json<T>(raw: &Raw<T>) -> Result<String, MatrixError> {
    let value: Value = serde_json::from_str(raw.json().get()).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if !value["algorithm"].is_string() || value.get("auth_data").is_none() {
        return Err(MatrixError::bad_json(
            "A backup version needs an algorithm and auth_data",
        ));
    }
    Ok(json!({ "algorithm": value["algorithm"], "auth_data": value["auth_data"] }).to_string())
}

fn raw_json<T>(json: &str) -> Result<Raw<T>, MatrixError> {
    serde_json::value::RawValue::from_string(json.to_owned())
        .map(Raw::from_json)
        .map_err(|e| MatrixError::internal("stored backup", e))
}

fn count(version: &BackupVersion) -> UInt {
    UInt::new_saturating(version.count)
}

/// Whether backed-up key `new` should replace `old` (the spec's order:
/// verified first, then the lower first message index, then the fewer
/// forwards).
fn better(new: &str, old: &str) -> bool {
    let (Ok(new), Ok(old)) = (serde_json::from_str::<Value>(new), serde_json::from_str::<Value>(old)) else {
        return true;
    };
    let verified = |v: &Value| v["is_verified"].as_bool().unwrap_or(false);
    let number = |v: &Value, field: &str| v[field].as_u64().unwrap_or(u64::MAX);
    if verified(&new) != verified(&old) {
        return verified(&new);
    }
    (number(&new, "first_message_index"), number(&new, "forwarded_count"))
        < (number(&old, "first_message_index"), number(&old, "forwarded_count"))
}

pub async fn create_version(
    svc: Arc<Services>,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response, MatrixError> {
    let algorithm = algorithm_json(&req.body.algorithm)?;
    let version = svc
        .storage
        .create_backup_version(&req.user().user_id, &algorithm)
        .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

async fn version_info(
    svc: &Services,
    user_id: &ruma::UserId,
    version: Option<&str>,
) -> Result<BackupVersion, MatrixError> {
    svc.storage
        .backup_version(user_id, version)
        .await?
        .ok_or_else(no_version)
}

pub async fn latest_version(
    svc: Arc<Services>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response, MatrixError> {
    let v = version_info(&svc, &req.user().user_id, None).await?;
    Ok(get_latest_backup_info::v3::Response::new(
        raw_json(&v.algorithm)?,
        count(&v),
        v.etag.clone(),
        v.version.clone(),
    ))
}

pub async fn get_version(
    svc: Arc<Services>,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response, MatrixError> {
    let v = version_info(&svc, &req.user().user_id, Some(&req.body.version)).await?;
    Ok(get_backup_info::v3::Response::new(
        raw_json(&v.algorithm)?,
        count(&v),
        v.etag.clone(),
        v.version.clone(),
    ))
}

pub async fn update_version(
    svc: Arc<Services>,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response, MatrixError> {
    let value: Value =
        serde_json::from_str(req.body.algorithm.json().get()).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if let Some(version) = value.get("version")
        && version.as_str() != Some(req.body.version.as_str())
    {
        return Err(MatrixError::invalid_param(
            "The version in the body is not the one in the path",
        ));
    }
    let algorithm = algorithm_json(&req.body.algorithm)?;
    let user_id = &req.user().user_id;
    if let Some(held) = svc.storage.backup_version(user_id, Some(&req.body.version)).await? {
        let held: Value = serde_json::from_str(&held.algorithm).unwrap_or_default();
        if held["algorithm"] != value["algorithm"] {
            return Err(MatrixError::invalid_param(
                "The algorithm of a backup version cannot change",
            ));
        }
    }
    if !svc
        .storage
        .update_backup_version(user_id, &req.body.version, &algorithm)
        .await?
    {
        return Err(no_version());
    }
    Ok(update_backup_version::v3::Response::new())
}

pub async fn delete_version(
    svc: Arc<Services>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response, MatrixError> {
    if !svc
        .storage
        .delete_backup_version(&req.user().user_id, &req.body.version)
        .await?
    {
        return Err(no_version());
    }
    Ok(delete_backup_version::v3::Response::new())
}

/// Keys go to the current version only.
async fn put(
    svc: &Services,
    user_id: &ruma::UserId,
    version: &str,
    keys: Vec<BackupKey>,
) -> Result<BackupVersion, MatrixError> {
    let current = version_info(svc, user_id, None).await?;
    if current.version != version {
        return Err(MatrixError::forbidden("Not the current backup version")
            .with_field("errcode", json!("M_WRONG_ROOM_KEYS_VERSION"))
            .with_field("current_version", json!(current.version)));
    }
    for (_, session, json) in &keys {
        let value: Value = serde_json::from_str(json).map_err(|e| MatrixError::bad_json(e.to_string()))?;
        if !value.is_object() || session.is_empty() {
            return Err(MatrixError::bad_json("Bad backed-up key"));
        }
    }
    match svc.storage.put_backup_keys(user_id, version, keys, better).await {
        Err(StorageError::NotFound) => Err(no_version()),
        other => Ok(other?),
    }
}

fn session_keys(
    room_id: &OwnedRoomId,
    sessions: &BTreeMap<String, Raw<ruma::api::client::backup::KeyBackupData>>,
) -> Vec<BackupKey> {
    sessions
        .iter()
        .map(|(session, data)| (room_id.to_string(), session.clone(), data.json().get().to_owned()))
        .collect()
}

pub async fn put_session(
    svc: Arc<Services>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response, MatrixError> {
    let b = &req.body;
    let keys = vec![(
        b.room_id.to_string(),
        b.session_id.clone(),
        b.session_data.json().get().to_owned(),
    )];
    let v = put(&svc, &req.user().user_id, &b.version, keys).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(
        v.etag.clone(),
        count(&v),
    ))
}

pub async fn put_room(
    svc: Arc<Services>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response, MatrixError> {
    let b = &req.body;
    let v = put(
        &svc,
        &req.user().user_id,
        &b.version,
        session_keys(&b.room_id, &b.sessions),
    )
    .await?;
    Ok(add_backup_keys_for_room::v3::Response::new(v.etag.clone(), count(&v)))
}

pub async fn put_all(
    svc: Arc<Services>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response, MatrixError> {
    let b = &req.body;
    let keys = b
        .rooms
        .iter()
        .flat_map(|(room_id, backup)| session_keys(room_id, &backup.sessions))
        .collect();
    let v = put(&svc, &req.user().user_id, &b.version, keys).await?;
    Ok(add_backup_keys::v3::Response::new(v.etag.clone(), count(&v)))
}

async fn get(
    svc: &Services,
    user_id: &ruma::UserId,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<Vec<BackupKey>, MatrixError> {
    version_info(svc, user_id, Some(version)).await?;
    Ok(svc.storage.backup_keys(user_id, version, room_id, session_id).await?)
}

pub async fn get_session(
    svc: Arc<Services>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response, MatrixError> {
    let b = &req.body;
    let keys = get(
        &svc,
        &req.user().user_id,
        &b.version,
        Some(b.room_id.as_str()),
        Some(&b.session_id),
    )
    .await?;
    let (_, _, json) = keys
        .into_iter()
        .next()
        .ok_or_else(|| MatrixError::not_found("No key backed up for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw_json(&json)?))
}

pub async fn get_room(
    svc: Arc<Services>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response, MatrixError> {
    let b = &req.body;
    let keys = get(&svc, &req.user().user_id, &b.version, Some(b.room_id.as_str()), None).await?;
    let sessions = keys
        .into_iter()
        .map(|(_, session, json)| Ok((session, raw_json(&json)?)))
        .collect::<Result<_, MatrixError>>()?;
    Ok(get_backup_keys_for_room::v3::Response::new(sessions))
}

pub async fn get_all(
    svc: Arc<Services>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response, MatrixError> {
    let keys = get(&svc, &req.user().user_id, &req.body.version, None, None).await?;
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<_>>> = BTreeMap::new();
    for (room, session, json) in keys {
        let Ok(room) = OwnedRoomId::try_from(room) else {
            continue;
        };
        rooms.entry(room).or_default().insert(session, raw_json(&json)?);
    }
    Ok(get_backup_keys::v3::Response::new(
        rooms
            .into_iter()
            .map(|(room, sessions)| (room, RoomKeyBackup::new(sessions)))
            .collect(),
    ))
}

async fn delete(
    svc: &Services,
    user_id: &ruma::UserId,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<BackupVersion, MatrixError> {
    match svc
        .storage
        .delete_backup_keys(user_id, version, room_id, session_id)
        .await
    {
        Err(StorageError::NotFound) => Err(MatrixError::new(ErrCode::NotFound, "Unknown backup version")),
        other => Ok(other?),
    }
}

pub async fn delete_session(
    svc: Arc<Services>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response, MatrixError> {
    let b = &req.body;
    let v = delete(
        &svc,
        &req.user().user_id,
        &b.version,
        Some(b.room_id.as_str()),
        Some(&b.session_id),
    )
    .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(
        v.etag.clone(),
        count(&v),
    ))
}

pub async fn delete_room(
    svc: Arc<Services>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response, MatrixError> {
    let b = &req.body;
    let v = delete(&svc, &req.user().user_id, &b.version, Some(b.room_id.as_str()), None).await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(
        v.etag.clone(),
        count(&v),
    ))
}

pub async fn delete_all(
    svc: Arc<Services>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response, MatrixError> {
    let v = delete(&svc, &req.user().user_id, &req.body.version, None, None).await?;
    Ok(delete_backup_keys::v3::Response::new(v.etag.clone(), count(&v)))
}
