//! Users, devices, access tokens, filters and room aliases.

use std::collections::HashSet;

use ruma::{DeviceId, OwnedDeviceId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};

use super::{GenericClient, big, col, exec, now_ms, parse, query, query_one, query_opt};
use crate::storage::{Device, Result, StorageError, TokenOwner, UserRecord};

pub async fn create_user(tx: &impl GenericClient, user: &UserRecord) -> Result<()> {
    exec(
        tx,
        "INSERT INTO users (user_id, password_hash, admin, deactivated, displayname, avatar_url,
                            created_ts, is_guest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &user.user_id.as_str(),
            &user.password_hash,
            &user.admin,
            &user.deactivated,
            &user.displayname,
            &user.avatar_url,
            &now_ms(),
            &user.is_guest,
        ],
    )
    .await?;
    Ok(())
}

pub async fn user(c: &impl GenericClient, user_id: &UserId) -> Result<Option<UserRecord>> {
    let Some(r) = query_opt(
        c,
        "SELECT password_hash, admin, deactivated, displayname, avatar_url, is_guest
         FROM users WHERE user_id = $1",
        &[&user_id.as_str()],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(UserRecord {
        user_id: user_id.to_owned(),
        password_hash: col(&r, 0)?,
        admin: col(&r, 1)?,
        deactivated: col(&r, 2)?,
        displayname: col(&r, 3)?,
        avatar_url: col(&r, 4)?,
        is_guest: col(&r, 5)?,
    }))
}

/// `Ok` if the statement changed a row, else [`StorageError::NotFound`].
fn found(changed: u64) -> Result<()> {
    if changed == 0 {
        return Err(StorageError::NotFound);
    }
    Ok(())
}

pub async fn upgrade_guest(tx: &impl GenericClient, user_id: &UserId, hash: &str) -> Result<()> {
    found(
        exec(
            tx,
            "UPDATE users SET password_hash = $2, is_guest = FALSE WHERE user_id = $1 AND is_guest",
            &[&user_id.as_str(), &hash],
        )
        .await?,
    )
}

pub async fn set_password_hash(tx: &impl GenericClient, user_id: &UserId, hash: &str) -> Result<()> {
    found(
        exec(
            tx,
            "UPDATE users SET password_hash = $2 WHERE user_id = $1",
            &[&user_id.as_str(), &hash],
        )
        .await?,
    )
}

pub async fn set_profile(
    tx: &impl GenericClient,
    user_id: &UserId,
    displayname: Option<Option<String>>,
    avatar_url: Option<Option<String>>,
) -> Result<()> {
    if let Some(displayname) = displayname {
        exec(
            tx,
            "UPDATE users SET displayname = $2 WHERE user_id = $1",
            &[&user_id.as_str(), &displayname],
        )
        .await?;
    }
    if let Some(avatar_url) = avatar_url {
        exec(
            tx,
            "UPDATE users SET avatar_url = $2 WHERE user_id = $1",
            &[&user_id.as_str(), &avatar_url],
        )
        .await?;
    }
    Ok(())
}

pub async fn create_session(
    tx: &impl GenericClient,
    user_id: &UserId,
    device_id: &DeviceId,
    display_name: Option<&str>,
    token: &str,
) -> Result<()> {
    exec(
        tx,
        "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET
             display_name = COALESCE(excluded.display_name, devices.display_name),
             last_seen_ts = excluded.last_seen_ts",
        &[&user_id.as_str(), &device_id.as_str(), &display_name, &now_ms()],
    )
    .await?;
    // A device has one access token at a time.
    exec(
        tx,
        "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
        &[&user_id.as_str(), &device_id.as_str()],
    )
    .await?;
    exec(
        tx,
        "INSERT INTO access_tokens (token, user_id, device_id, created_ts)
         VALUES ($1, $2, $3, $4)",
        &[&token, &user_id.as_str(), &device_id.as_str(), &now_ms()],
    )
    .await?;
    Ok(())
}

pub async fn token_owner(c: &impl GenericClient, token: &str) -> Result<Option<TokenOwner>> {
    let Some(r) = query_opt(
        c,
        "SELECT t.user_id, t.device_id, COALESCE(u.is_guest, FALSE)
         FROM access_tokens t LEFT JOIN users u ON u.user_id = t.user_id
         WHERE t.token = $1",
        &[&token],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(TokenOwner {
        user_id: parse(col(&r, 0)?)?,
        device_id: OwnedDeviceId::from(col::<String>(&r, 1)?),
        is_guest: col(&r, 2)?,
    }))
}

pub async fn delete_token(tx: &impl GenericClient, token: &str) -> Result<()> {
    // Logging out removes the device too, and its sliding sync connections.
    super::sliding_sync::forget_token_device(tx, token).await?;
    exec(
        tx,
        "DELETE FROM devices WHERE (user_id, device_id) IN
             (SELECT user_id, device_id FROM access_tokens WHERE token = $1)",
        &[&token],
    )
    .await?;
    exec(tx, "DELETE FROM access_tokens WHERE token = $1", &[&token]).await?;
    Ok(())
}

pub async fn delete_all_tokens(tx: &impl GenericClient, user_id: &UserId) -> Result<()> {
    super::sliding_sync::forget_user(tx, user_id).await?;
    exec(tx, "DELETE FROM access_tokens WHERE user_id = $1", &[&user_id.as_str()]).await?;
    exec(tx, "DELETE FROM devices WHERE user_id = $1", &[&user_id.as_str()]).await?;
    Ok(())
}

pub async fn devices(c: &impl GenericClient, user_id: &UserId) -> Result<Vec<Device>> {
    let rows = query(
        c,
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent
         FROM devices WHERE user_id = $1 ORDER BY device_id",
        &[&user_id.as_str()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Device {
                device_id: OwnedDeviceId::from(col::<String>(r, 0)?),
                display_name: col(r, 1)?,
                last_seen_ts: col::<Option<i64>>(r, 2)?.map(|t| t as u64),
                last_seen_ip: col(r, 3)?,
                last_seen_user_agent: col(r, 4)?,
            })
        })
        .collect()
}

pub async fn device_seen(
    tx: &impl GenericClient,
    user_id: &UserId,
    device_id: &DeviceId,
    seen: &crate::connections::Seen,
) -> Result<()> {
    exec(
        tx,
        "UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4, last_seen_user_agent = $5
         WHERE user_id = $1 AND device_id = $2",
        &[
            &user_id.as_str(),
            &device_id.as_str(),
            &big(seen.ts),
            &seen.ip,
            &seen.user_agent,
        ],
    )
    .await?;
    Ok(())
}

/// Filter IDs come from the `filter_ids` sequence: unique over all users,
/// so writers in several processes never take the same one.
pub async fn save_filter(tx: &impl GenericClient, user_id: &UserId, filter: &str) -> Result<String> {
    let row = query_one(
        tx,
        "INSERT INTO filters (user_id, filter_id, json) VALUES ($1, nextval('filter_ids'), $2)
         RETURNING filter_id",
        &[&user_id.as_str(), &filter],
    )
    .await?;
    Ok(col::<i64>(&row, 0)?.to_string())
}

pub async fn filter(c: &impl GenericClient, user_id: &UserId, filter_id: &str) -> Result<Option<String>> {
    let Ok(id) = filter_id.parse::<i64>() else {
        return Ok(None);
    };
    query_opt(
        c,
        "SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2",
        &[&user_id.as_str(), &id],
    )
    .await?
    .map(|r| col(&r, 0))
    .transpose()
}

pub async fn create_alias(
    tx: &impl GenericClient,
    alias: &RoomAliasId,
    room_id: &RoomId,
    creator: &UserId,
) -> Result<()> {
    exec(
        tx,
        "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)",
        &[&alias.as_str(), &room_id.as_str(), &creator.as_str()],
    )
    .await?;
    Ok(())
}

pub async fn resolve_alias(c: &impl GenericClient, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>> {
    let Some(r) = query_opt(
        c,
        "SELECT room_id, creator FROM room_aliases WHERE alias = $1",
        &[&alias.as_str()],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some((parse(col(&r, 0)?)?, parse(col(&r, 1)?)?)))
}

pub async fn delete_alias(tx: &impl GenericClient, alias: &RoomAliasId) -> Result<bool> {
    Ok(exec(tx, "DELETE FROM room_aliases WHERE alias = $1", &[&alias.as_str()]).await? > 0)
}

pub async fn move_aliases(tx: &impl GenericClient, old: &RoomId, new: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    let moved = room_aliases(tx, old).await?;
    exec(
        tx,
        "UPDATE room_aliases SET room_id = $2 WHERE room_id = $1",
        &[&old.as_str(), &new.as_str()],
    )
    .await?;
    Ok(moved)
}

pub async fn room_aliases(c: &impl GenericClient, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    let rows = query(
        c,
        "SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias",
        &[&room_id.as_str()],
    )
    .await?;
    rows.iter().map(|r| parse(col(r, 0)?)).collect()
}

/// Marks a (deactivated) user erased, and drops their account data.
pub async fn erase_user(tx: &impl GenericClient, user_id: &UserId) -> Result<()> {
    exec(
        tx,
        "UPDATE users SET erased = TRUE WHERE user_id = $1",
        &[&user_id.as_str()],
    )
    .await?;
    exec(tx, "DELETE FROM account_data WHERE user_id = $1", &[&user_id.as_str()]).await?;
    Ok(())
}

/// Which of `users` are erased. Asked for every page of history read: one
/// query whatever the number of users (none for none).
pub async fn erased_users(c: &impl GenericClient, users: &[OwnedUserId]) -> Result<HashSet<OwnedUserId>> {
    if users.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
    let rows = query(
        c,
        "SELECT user_id FROM users WHERE user_id = ANY($1) AND erased",
        &[&ids],
    )
    .await?;
    rows.iter().map(|r| parse(col(r, 0)?)).collect()
}
