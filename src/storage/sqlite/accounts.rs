//! Users, devices, access tokens, filters and room aliases.

use ruma::{DeviceId, OwnedDeviceId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::now_ms;
use crate::storage::{Device, Result, StorageError, TokenOwner, UserRecord};

pub(super) use crate::storage::parse;

pub fn create_user(tx: &Transaction<'_>, user: &UserRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO users (user_id, password_hash, admin, deactivated, displayname, avatar_url,
                            created_ts, is_guest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            user.user_id.as_str(),
            user.password_hash,
            user.admin,
            user.deactivated,
            user.displayname,
            user.avatar_url,
            now_ms(),
            user.is_guest
        ],
    )?;
    Ok(())
}

pub fn user(c: &Connection, user_id: &UserId) -> Result<Option<UserRecord>> {
    let row = c
        .query_row(
            "SELECT password_hash, admin, deactivated, displayname, avatar_url, is_guest
             FROM users WHERE user_id = ?1",
            [user_id.as_str()],
            |r| {
                Ok(UserRecord {
                    user_id: user_id.to_owned(),
                    password_hash: r.get(0)?,
                    admin: r.get(1)?,
                    deactivated: r.get(2)?,
                    displayname: r.get(3)?,
                    avatar_url: r.get(4)?,
                    is_guest: r.get(5)?,
                })
            },
        )
        .optional()?;
    Ok(row)
}

pub fn upgrade_guest(tx: &Transaction<'_>, user_id: &UserId, hash: &str) -> Result<()> {
    let n = tx.execute(
        "UPDATE users SET password_hash = ?2, is_guest = 0 WHERE user_id = ?1 AND is_guest = 1",
        params![user_id.as_str(), hash],
    )?;
    if n == 0 {
        return Err(StorageError::NotFound);
    }
    Ok(())
}

pub fn set_password_hash(tx: &Transaction<'_>, user_id: &UserId, hash: &str) -> Result<()> {
    let n = tx.execute(
        "UPDATE users SET password_hash = ?2 WHERE user_id = ?1",
        params![user_id.as_str(), hash],
    )?;
    if n == 0 {
        return Err(StorageError::NotFound);
    }
    Ok(())
}

pub fn set_profile(
    tx: &Transaction<'_>,
    user_id: &UserId,
    displayname: Option<Option<String>>,
    avatar_url: Option<Option<String>>,
) -> Result<()> {
    if let Some(displayname) = displayname {
        tx.execute(
            "UPDATE users SET displayname = ?2 WHERE user_id = ?1",
            params![user_id.as_str(), displayname],
        )?;
    }
    if let Some(avatar_url) = avatar_url {
        tx.execute(
            "UPDATE users SET avatar_url = ?2 WHERE user_id = ?1",
            params![user_id.as_str(), avatar_url],
        )?;
    }
    Ok(())
}

pub fn create_session(
    tx: &Transaction<'_>,
    user_id: &UserId,
    device_id: &DeviceId,
    display_name: Option<&str>,
    token: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET
             display_name = COALESCE(excluded.display_name, devices.display_name),
             last_seen_ts = excluded.last_seen_ts",
        params![user_id.as_str(), device_id.as_str(), display_name, now_ms()],
    )?;
    // A device has one access token at a time.
    tx.execute(
        "DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2",
        params![user_id.as_str(), device_id.as_str()],
    )?;
    tx.execute(
        "INSERT INTO access_tokens (token, user_id, device_id, created_ts)
         VALUES (?1, ?2, ?3, ?4)",
        params![token, user_id.as_str(), device_id.as_str(), now_ms()],
    )?;
    Ok(())
}

pub fn token_owner(c: &Connection, token: &str) -> Result<Option<TokenOwner>> {
    let row: Option<(String, String, bool)> = c
        .prepare_cached(
            "SELECT t.user_id, t.device_id, coalesce(u.is_guest, 0)
             FROM access_tokens t LEFT JOIN users u ON u.user_id = t.user_id
             WHERE t.token = ?1",
        )?
        .query_row([token], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    row.map(|(user_id, device_id, is_guest)| {
        Ok(TokenOwner {
            user_id: parse(user_id)?,
            device_id: OwnedDeviceId::from(device_id),
            is_guest,
        })
    })
    .transpose()
}

pub fn delete_token(tx: &Transaction<'_>, token: &str) -> Result<()> {
    // Logging out removes the device too, and its sliding sync connections.
    super::sliding_sync::forget_token_device(tx, token)?;
    tx.execute(
        "DELETE FROM devices WHERE (user_id, device_id) IN
             (SELECT user_id, device_id FROM access_tokens WHERE token = ?1)",
        [token],
    )?;
    tx.execute("DELETE FROM access_tokens WHERE token = ?1", [token])?;
    Ok(())
}

pub fn delete_all_tokens(tx: &Transaction<'_>, user_id: &UserId) -> Result<()> {
    super::sliding_sync::forget_user(tx, user_id)?;
    tx.execute("DELETE FROM access_tokens WHERE user_id = ?1", [user_id.as_str()])?;
    tx.execute("DELETE FROM devices WHERE user_id = ?1", [user_id.as_str()])?;
    Ok(())
}

pub fn devices(c: &Connection, user_id: &UserId) -> Result<Vec<Device>> {
    let mut stmt = c.prepare(
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent
         FROM devices WHERE user_id = ?1 ORDER BY device_id",
    )?;
    let rows = stmt.query_map([user_id.as_str()], |r| {
        Ok(Device {
            device_id: OwnedDeviceId::from(r.get::<_, String>(0)?),
            display_name: r.get(1)?,
            last_seen_ts: r.get::<_, Option<i64>>(2)?.map(|t| t as u64),
            last_seen_ip: r.get(3)?,
            last_seen_user_agent: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn device_seen(
    tx: &Transaction<'_>,
    user_id: &UserId,
    device_id: &DeviceId,
    seen: &crate::connections::Seen,
) -> Result<()> {
    tx.execute(
        "UPDATE devices SET last_seen_ts = ?3, last_seen_ip = ?4, last_seen_user_agent = ?5
         WHERE user_id = ?1 AND device_id = ?2",
        params![
            user_id.as_str(),
            device_id.as_str(),
            seen.ts as i64,
            seen.ip,
            seen.user_agent
        ],
    )?;
    Ok(())
}

pub fn save_filter(tx: &Transaction<'_>, user_id: &UserId, filter: &str) -> Result<String> {
    let next: i64 = tx.query_row(
        "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = ?1",
        [user_id.as_str()],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO filters (user_id, filter_id, json) VALUES (?1, ?2, ?3)",
        params![user_id.as_str(), next, filter],
    )?;
    Ok(next.to_string())
}

pub fn filter(c: &Connection, user_id: &UserId, filter_id: &str) -> Result<Option<String>> {
    let Ok(id) = filter_id.parse::<i64>() else {
        return Ok(None);
    };
    Ok(c.query_row(
        "SELECT json FROM filters WHERE user_id = ?1 AND filter_id = ?2",
        params![user_id.as_str(), id],
        |r| r.get(0),
    )
    .optional()?)
}

pub fn create_alias(tx: &Transaction<'_>, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
    tx.execute(
        "INSERT INTO room_aliases (alias, room_id, creator) VALUES (?1, ?2, ?3)",
        params![alias.as_str(), room_id.as_str(), creator.as_str()],
    )?;
    Ok(())
}

pub fn resolve_alias(c: &Connection, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>> {
    let row: Option<(String, String)> = c
        .query_row(
            "SELECT room_id, creator FROM room_aliases WHERE alias = ?1",
            [alias.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(room, creator)| Ok((parse(room)?, parse(creator)?)))
        .transpose()
}

pub fn delete_alias(tx: &Transaction<'_>, alias: &RoomAliasId) -> Result<bool> {
    Ok(tx.execute("DELETE FROM room_aliases WHERE alias = ?1", [alias.as_str()])? > 0)
}

pub fn move_aliases(tx: &Transaction<'_>, old: &RoomId, new: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    let moved = room_aliases(tx, old)?;
    tx.execute(
        "UPDATE room_aliases SET room_id = ?2 WHERE room_id = ?1",
        params![old.as_str(), new.as_str()],
    )?;
    Ok(moved)
}

pub fn room_aliases(c: &Connection, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    let mut stmt = c.prepare("SELECT alias FROM room_aliases WHERE room_id = ?1 ORDER BY alias")?;
    let rows = stmt.query_map([room_id.as_str()], |r| r.get::<_, String>(0))?;
    rows.map(|r| parse(r?)).collect()
}
