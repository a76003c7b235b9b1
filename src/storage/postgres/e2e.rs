//! Devices' end-to-end keys, device lists and to-device messages.
//!
//! The e2e stream's head is the `'e2e'` row of `stream_positions`: a write
//! takes its position ([`next_position_of`]) as late as it can, since the
//! row stays locked, serialising e2e writers, until the transaction ends.
//! Its notification says whom the change concerns: `keys <user>
//! [<visible to>]` for a change of a user's keys, `to <user>…` for
//! to-device messages (nobody named when they are too many: everyone looks).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use tokio_postgres::{Row, types::ToSql};

use super::{
    GenericClient, PgStorage, col, exec, next_position_of, now_ms, parse, pg_write, query, query_one, query_opt,
    read_snapshot, stream_head,
};

/// Longest list of recipients a to-device notification names (PostgreSQL
/// takes payloads under 8,000 bytes).
const MAX_NAMED: usize = 7_000;
use crate::storage::{
    Device, Result, StorageError, StreamOrdering,
    e2e::{
        BackupKey, BackupVersion, DeviceKeysRecord, E2eStorage, OneTimeKeyRecord, RemoteDeviceList, ToDeviceDelivery,
        ToDeviceMessage, USER_SIGNING,
    },
};

/// Marks the cached device lists of `user_ids` to be fetched again.
async fn mark_stale(tx: &impl GenericClient, user_ids: &[OwnedUserId]) -> Result<()> {
    let users: Vec<&str> = user_ids.iter().map(|u| u.as_str()).collect();
    exec(
        tx,
        "UPDATE remote_device_lists SET stale = TRUE WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?;
    Ok(())
}

async fn record_change(tx: &impl GenericClient, user_id: &UserId, device_id: Option<&str>) -> Result<i64> {
    record_change_for(tx, user_id, device_id, None).await
}

/// Records a device list change at the next e2e position (taken here, so
/// call it last): told to everyone sharing a room with the user, or, with
/// `visible_to`, to that user only.
async fn record_change_for(
    tx: &impl GenericClient,
    user_id: &UserId,
    device_id: Option<&str>,
    visible_to: Option<&UserId>,
) -> Result<i64> {
    // Other processes wake whom it concerns (`listen.rs`).
    let concerns = match visible_to {
        Some(to) => format!("keys {user_id} {to}"),
        None => format!("keys {user_id}"),
    };
    let position = next_position_of(tx, "e2e", Some(&concerns)).await?;
    exec(
        tx,
        "INSERT INTO device_list_changes (position, user_id, device_id, visible_to) VALUES ($1, $2, $3, $4)",
        &[
            &position,
            &user_id.as_str(),
            &device_id,
            &visible_to.map(|u| u.as_str()),
        ],
    )
    .await?;
    Ok(position)
}

async fn device(c: &impl GenericClient, user_id: &UserId, device_id: &str) -> Result<Option<Device>> {
    let Some(r) = query_opt(
        c,
        "SELECT display_name, last_seen_ts, last_seen_ip, last_seen_user_agent
         FROM devices WHERE user_id = $1 AND device_id = $2",
        &[&user_id.as_str(), &device_id],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Device {
        device_id: OwnedDeviceId::from(device_id),
        display_name: col(&r, 0)?,
        last_seen_ts: col::<Option<i64>>(&r, 1)?.map(|t| t as u64),
        last_seen_ip: col(&r, 2)?,
        last_seen_user_agent: col(&r, 3)?,
    }))
}

/// Deletes a device with its tokens, keys, waiting messages, pushers and
/// sliding sync connections; false if there was no such device (then
/// nothing is deleted). Deleting the `devices` row first makes a concurrent
/// deletion of the same device wait, and then find nothing.
async fn delete_device(tx: &impl GenericClient, user_id: &UserId, device_id: &str) -> Result<bool> {
    let p: [&(dyn ToSql + Sync); 2] = [&user_id.as_str(), &device_id];
    if exec(tx, "DELETE FROM devices WHERE user_id = $1 AND device_id = $2", &p).await? == 0 {
        return Ok(false);
    }
    for sql in [
        "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM device_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM fallback_keys WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2",
        "DELETE FROM pushers WHERE user_id = $1 AND device_id = $2",
    ] {
        exec(tx, sql, &p).await?;
    }
    super::sliding_sync::forget_device(tx, user_id, device_id).await?;
    Ok(true)
}

/// Deletes the devices that exist (see [`delete_device`]); those.
async fn remove_devices(
    tx: &impl GenericClient,
    user_id: &UserId,
    device_ids: &[OwnedDeviceId],
) -> Result<Vec<OwnedDeviceId>> {
    let mut deleted = Vec::new();
    for device_id in device_ids {
        if delete_device(tx, user_id, device_id.as_str()).await? {
            deleted.push(device_id.clone());
        }
    }
    Ok(deleted)
}

/// Records a change for each device (in order): with their positions.
async fn record_device_changes(
    tx: &impl GenericClient,
    user_id: &UserId,
    device_ids: Vec<OwnedDeviceId>,
) -> Result<Vec<(OwnedDeviceId, i64)>> {
    let mut changes = Vec::with_capacity(device_ids.len());
    for device_id in device_ids {
        let position = record_change(tx, user_id, Some(device_id.as_str())).await?;
        changes.push((device_id, position));
    }
    Ok(changes)
}

/// Column `i` of each row.
fn strings(rows: &[Row], i: usize) -> Result<Vec<String>> {
    rows.iter().map(|r| col(r, i)).collect()
}

fn pairs(rows: &[Row]) -> Result<Vec<(String, String)>> {
    rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
}

fn triples(rows: &[Row]) -> Result<Vec<(String, String, String)>> {
    rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?))).collect()
}

async fn device_records(c: &impl GenericClient, sql: &str, user_id: &UserId) -> Result<Vec<DeviceKeysRecord>> {
    query(c, sql, &[&user_id.as_str()])
        .await?
        .iter()
        .map(|r| {
            Ok(DeviceKeysRecord {
                device_id: OwnedDeviceId::from(col::<String>(r, 0)?),
                display_name: col(r, 1)?,
                keys: col(r, 2)?,
            })
        })
        .collect()
}

async fn put_remote_device(tx: &impl GenericClient, user_id: &UserId, device: &DeviceKeysRecord) -> Result<()> {
    exec(
        tx,
        "INSERT INTO remote_devices (user_id, device_id, display_name, keys) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name, keys = excluded.keys",
        &[
            &user_id.as_str(),
            &device.device_id.as_str(),
            &device.display_name,
            &device.keys,
        ],
    )
    .await?;
    Ok(())
}

async fn put_cross_signing_keys(tx: &impl GenericClient, user_id: &UserId, keys: &[(String, String)]) -> Result<()> {
    for (kind, json) in keys {
        exec(
            tx,
            "INSERT INTO cross_signing_keys (user_id, kind, json) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, kind) DO UPDATE SET json = excluded.json",
            &[&user_id.as_str(), kind, json],
        )
        .await?;
    }
    Ok(())
}

/// A backup version as stored (a number); `None` for anything else, which
/// names no version.
fn version_number(version: &str) -> Option<i64> {
    version.parse::<i64>().ok()
}

async fn backup_version(
    c: &impl GenericClient,
    user_id: &UserId,
    version: Option<&str>,
) -> Result<Option<BackupVersion>> {
    let version: Option<i64> = match version {
        Some(v) => match version_number(v) {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        None => None,
    };
    let Some(r) = query_opt(
        c,
        "SELECT version, algorithm, etag FROM backup_versions
         WHERE user_id = $1 AND NOT deleted AND ($2::BIGINT IS NULL OR version = $2)
         ORDER BY version DESC LIMIT 1",
        &[&user_id.as_str(), &version],
    )
    .await?
    else {
        return Ok(None);
    };
    let (version, algorithm, etag): (i64, String, i64) = (col(&r, 0)?, col(&r, 1)?, col(&r, 2)?);
    let count: i64 = col(
        &query_one(
            c,
            "SELECT COUNT(*) FROM backup_keys WHERE user_id = $1 AND version = $2",
            &[&user_id.as_str(), &version],
        )
        .await?,
        0,
    )?;
    Ok(Some(BackupVersion {
        version: version.to_string(),
        algorithm,
        count: count as u64,
        etag: etag.to_string(),
    }))
}

/// Locks a (not deleted) backup version's row until the transaction ends,
/// so that writes to a version and its deletion happen one after another:
/// the version's number, or `None` if there is no such version.
async fn lock_backup_version(tx: &impl GenericClient, user_id: &UserId, version: &str) -> Result<Option<i64>> {
    let Some(version) = version_number(version) else {
        return Ok(None);
    };
    let row = query_opt(
        tx,
        "SELECT version FROM backup_versions WHERE user_id = $1 AND version = $2 AND NOT deleted FOR UPDATE",
        &[&user_id.as_str(), &version],
    )
    .await?;
    row.map(|r| col(&r, 0)).transpose()
}

async fn bump_backup_etag(tx: &impl GenericClient, user_id: &UserId, version: i64) -> Result<()> {
    exec(
        tx,
        "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2",
        &[&user_id.as_str(), &version],
    )
    .await?;
    Ok(())
}

async fn delete_backup_keys(
    tx: &impl GenericClient,
    user_id: &UserId,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<BackupVersion> {
    let held = lock_backup_version(tx, user_id, version)
        .await?
        .ok_or(StorageError::NotFound)?;
    exec(
        tx,
        "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2
           AND ($3::TEXT IS NULL OR room_id = $3) AND ($4::TEXT IS NULL OR session_id = $4)",
        &[&user_id.as_str(), &held, &room_id, &session_id],
    )
    .await?;
    bump_backup_etag(tx, user_id, held).await?;
    backup_version(tx, user_id, Some(version))
        .await?
        .ok_or(StorageError::NotFound)
}

async fn put_backup_keys(
    tx: &impl GenericClient,
    user_id: &UserId,
    version: &str,
    keys: &[BackupKey],
    better: for<'n, 'o> fn(&'n str, &'o str) -> bool,
) -> Result<BackupVersion> {
    // The version's lock also keeps two uploads of one session from both
    // replacing the key they read.
    let held = lock_backup_version(tx, user_id, version)
        .await?
        .ok_or(StorageError::NotFound)?;
    for (room_id, session_id, json) in keys {
        let old: Option<String> = query_opt(
            tx,
            "SELECT json FROM backup_keys
             WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
            &[&user_id.as_str(), &held, room_id, session_id],
        )
        .await?
        .map(|r| col(&r, 0))
        .transpose()?;
        if old.as_deref().is_some_and(|old| !better(json, old)) {
            continue;
        }
        exec(
            tx,
            "INSERT INTO backup_keys (user_id, version, room_id, session_id, json) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET json = excluded.json",
            &[&user_id.as_str(), &held, room_id, session_id, json],
        )
        .await?;
    }
    bump_backup_etag(tx, user_id, held).await?;
    backup_version(tx, user_id, Some(version))
        .await?
        .ok_or(StorageError::NotFound)
}

/// Stores identity keys unless the same are held: a change (its position)
/// if they were stored. One upsert, so two uploads of the same keys at
/// once record one change.
async fn set_device_keys(
    tx: &impl GenericClient,
    user_id: &UserId,
    device_id: &str,
    json: &str,
) -> Result<Option<i64>> {
    let stored = exec(
        tx,
        "INSERT INTO device_keys (user_id, device_id, json) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, device_id) DO UPDATE SET json = excluded.json
         WHERE device_keys.json <> excluded.json",
        &[&user_id.as_str(), &device_id, &json],
    )
    .await?;
    if stored == 0 {
        return Ok(None);
    }
    Ok(Some(record_change(tx, user_id, Some(device_id)).await?))
}

/// Adds one-time keys; a key ID held with other content is refused
/// (`AlreadyExists`; the caller's transaction is then rolled back).
async fn add_one_time_keys(
    tx: &impl GenericClient,
    user_id: &UserId,
    device_id: &str,
    keys: &[OneTimeKeyRecord],
) -> Result<()> {
    for key in keys {
        let p: [&(dyn ToSql + Sync); 4] = [&user_id.as_str(), &device_id, &key.algorithm, &key.key_id];
        let added = exec(
            tx,
            "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, json) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[p[0], p[1], p[2], p[3], &key.json],
        )
        .await?;
        if added > 0 {
            continue;
        }
        let held = query_opt(
            tx,
            "SELECT json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
            &p,
        )
        .await?;
        if let Some(held) = held
            && col::<String>(&held, 0)? != key.json
        {
            return Err(StorageError::AlreadyExists);
        }
    }
    Ok(())
}

/// Takes one one-time key of `algorithm` (deleted), or else the fallback
/// key (kept, marked used). Keys being claimed by another transaction are
/// skipped, so that concurrent claims never hand out the same key.
async fn claim_key(
    tx: &impl GenericClient,
    user_id: &UserId,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, String)>> {
    let p: [&(dyn ToSql + Sync); 3] = [&user_id.as_str(), &device_id, &algorithm];
    let key = query_opt(
        tx,
        "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
           AND key_id = (SELECT key_id FROM one_time_keys
                         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                         ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING key_id, json",
        &p,
    )
    .await?;
    let key = match key {
        Some(key) => Some(key),
        None => {
            query_opt(
                tx,
                "UPDATE fallback_keys SET used = TRUE WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                 RETURNING key_id, json",
                &p,
            )
            .await?
        }
    };
    key.map(|r| Ok((col(&r, 0)?, col(&r, 1)?))).transpose()
}

/// Replaces a remote user's cached device list. The `remote_device_lists`
/// row is written first: it locks the user's cache, so concurrent
/// replacements and updates apply one after another.
async fn replace_remote_device_list(
    tx: &impl GenericClient,
    user_id: &UserId,
    stream_id: i64,
    devices: &[DeviceKeysRecord],
    cross_signing: &[(String, String)],
) -> Result<i64> {
    exec(
        tx,
        "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES ($1, $2, FALSE)
         ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = FALSE",
        &[&user_id.as_str(), &stream_id],
    )
    .await?;
    exec(
        tx,
        "DELETE FROM remote_devices WHERE user_id = $1",
        &[&user_id.as_str()],
    )
    .await?;
    for device in devices {
        put_remote_device(tx, user_id, device).await?;
    }
    put_cross_signing_keys(tx, user_id, cross_signing).await?;
    record_change(tx, user_id, None).await
}

/// Applies one m.device_list_update (see [`replace_remote_device_list`]
/// for why the `remote_device_lists` row comes first).
async fn update_remote_device(
    tx: &impl GenericClient,
    user_id: &UserId,
    stream_id: i64,
    device: &Result<DeviceKeysRecord, OwnedDeviceId>,
) -> Result<i64> {
    exec(
        tx,
        "UPDATE remote_device_lists SET stream_id = $2 WHERE user_id = $1",
        &[&user_id.as_str(), &stream_id],
    )
    .await?;
    let device_id = match device {
        Ok(record) => {
            put_remote_device(tx, user_id, record).await?;
            &record.device_id
        }
        Err(deleted) => {
            exec(
                tx,
                "DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2",
                &[&user_id.as_str(), &deleted.as_str()],
            )
            .await?;
            deleted
        }
    };
    record_change(tx, user_id, Some(device_id.as_str())).await
}

/// Records a to-device transaction of `sender`; false if seen before (a
/// concurrent one waits for the first to commit, then finds it).
async fn record_to_device_txn(tx: &impl GenericClient, sender: &UserId, scope: &str, txn_id: &str) -> Result<bool> {
    Ok(exec(
        tx,
        "INSERT INTO to_device_txns (sender, scope, txn_id, seen_ts) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        &[&sender.as_str(), &scope, &txn_id, &now_ms()],
    )
    .await?
        > 0)
}

/// Queues messages at one new position. A device named twice gets the
/// last message (as SQLite's `INSERT OR REPLACE` would leave it).
async fn queue_to_device(
    tx: &impl GenericClient,
    sender: &UserId,
    event_type: &str,
    messages: &[ToDeviceDelivery],
) -> Result<i64> {
    let mut seen = HashSet::new();
    let (mut users, mut devices, mut contents) = (Vec::new(), Vec::new(), Vec::new());
    for m in messages.iter().rev() {
        if seen.insert((m.user_id.as_str(), m.device_id.as_str())) {
            users.push(m.user_id.as_str());
            devices.push(m.device_id.as_str());
            contents.push(m.content.as_str());
        }
    }
    // Other processes wake the recipients (`listen.rs`); everyone when
    // they are too many to name in a notification.
    let mut recipients: Vec<&str> = users.clone();
    recipients.sort_unstable();
    recipients.dedup();
    let named = format!("to {}", recipients.join(" "));
    let position = next_position_of(tx, "e2e", (named.len() < MAX_NAMED).then_some(named.as_str())).await?;
    exec(
        tx,
        "INSERT INTO to_device_messages (user_id, device_id, position, sender, event_type, content)
         SELECT u, d, $4, $5, $6, c FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS m (u, d, c)",
        &[&users, &devices, &contents, &position, &sender.as_str(), &event_type],
    )
    .await?;
    Ok(position)
}

/// Deletes a user's devices and cross-signing keys and marks them
/// deactivated; the device changes (with positions), recorded after all
/// the deletions, then the cross-signing change.
async fn deactivate_user(tx: &impl GenericClient, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, i64)>> {
    exec(
        tx,
        "UPDATE users SET deactivated = TRUE WHERE user_id = $1",
        &[&user_id.as_str()],
    )
    .await?;
    let devices: Vec<OwnedDeviceId> = strings(
        &query(
            tx,
            "SELECT device_id FROM devices WHERE user_id = $1",
            &[&user_id.as_str()],
        )
        .await?,
        0,
    )?
    .into_iter()
    .map(OwnedDeviceId::from)
    .collect();
    let deleted = remove_devices(tx, user_id, &devices).await?;
    exec(tx, "DELETE FROM access_tokens WHERE user_id = $1", &[&user_id.as_str()]).await?;
    let had_keys = exec(
        tx,
        "DELETE FROM cross_signing_keys WHERE user_id = $1",
        &[&user_id.as_str()],
    )
    .await?;
    let changes = record_device_changes(tx, user_id, deleted).await?;
    if had_keys > 0 {
        record_change(tx, user_id, None).await?;
    }
    Ok(changes)
}

/// `(room, user, membership)` of the member events in `rooms` that arrived
/// in `(after, upto]`: room by room as given, each in arrival order. The
/// membership is read from the event JSON here (an event without one has
/// `""`).
async fn member_events_between(
    c: &impl GenericClient,
    rooms: &[OwnedRoomId],
    after: StreamOrdering,
    upto: StreamOrdering,
) -> Result<Vec<(OwnedRoomId, OwnedUserId, String)>> {
    let names: Vec<&str> = rooms.iter().map(|r| r.as_str()).collect();
    let rows = query(
        c,
        "SELECT room_id, state_key, json FROM events
         WHERE room_id = ANY($1) AND stream_ordering > $2 AND stream_ordering <= $3
           AND type = 'm.room.member' AND NOT outlier AND rejected IS NULL AND NOT soft_failed
         ORDER BY stream_ordering",
        &[&names, &after, &upto],
    )
    .await?;
    let mut by_room: HashMap<String, Vec<(OwnedUserId, String)>> = HashMap::new();
    for r in &rows {
        let (room, user, json): (String, Option<String>, String) = (col(r, 0)?, col(r, 1)?, col(r, 2)?);
        let Some(Ok(user)) = user.map(OwnedUserId::try_from) else {
            continue;
        };
        by_room.entry(room).or_default().push((user, membership(&json)));
    }
    let mut out = Vec::new();
    for room in rooms {
        for (user, membership) in by_room.get(room.as_str()).into_iter().flatten() {
            out.push((room.clone(), user.clone(), membership.clone()));
        }
    }
    Ok(out)
}

/// `content.membership` of a member event's JSON (`""` if it has none).
fn membership(json: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Event {
        #[serde(default)]
        content: Content,
    }
    #[derive(serde::Deserialize, Default)]
    struct Content {
        #[serde(default)]
        membership: Option<serde_json::Value>,
    }
    let membership = serde_json::from_str::<Event>(json)
        .ok()
        .and_then(|e| e.content.membership);
    match membership {
        Some(serde_json::Value::String(m)) => m,
        _ => String::new(),
    }
}

#[async_trait]
impl E2eStorage for PgStorage {
    async fn create_backup_version(&self, user_id: &UserId, algorithm: &str) -> Result<String> {
        pg_write!(self, |tx| {
            // The user's row, locked until commit, keeps two new versions
            // from taking the same number.
            query_opt(
                &tx,
                "SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE",
                &[&user_id.as_str()],
            )
            .await?;
            let version: i64 = col(
                &query_one(
                    &tx,
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM backup_versions WHERE user_id = $1",
                    &[&user_id.as_str()],
                )
                .await?,
                0,
            )?;
            exec(
                &tx,
                "INSERT INTO backup_versions (user_id, version, algorithm) VALUES ($1, $2, $3)",
                &[&user_id.as_str(), &version, &algorithm],
            )
            .await?;
            version.to_string()
        })
    }

    async fn backup_version(&self, user_id: &UserId, version: Option<&str>) -> Result<Option<BackupVersion>> {
        let c = self.client().await?;
        backup_version(&c, user_id, version).await
    }

    async fn update_backup_version(&self, user_id: &UserId, version: &str, algorithm: &str) -> Result<bool> {
        pg_write!(self, |tx| {
            match lock_backup_version(&tx, user_id, version).await? {
                Some(held) => {
                    exec(
                        &tx,
                        "UPDATE backup_versions SET algorithm = $3 WHERE user_id = $1 AND version = $2",
                        &[&user_id.as_str(), &held, &algorithm],
                    )
                    .await?;
                    true
                }
                None => false,
            }
        })
    }

    async fn delete_backup_version(&self, user_id: &UserId, version: &str) -> Result<bool> {
        pg_write!(self, |tx| {
            let held = lock_backup_version(&tx, user_id, version).await?;
            if let Some(held) = held {
                let p: [&(dyn ToSql + Sync); 2] = [&user_id.as_str(), &held];
                exec(&tx, "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2", &p).await?;
                exec(
                    &tx,
                    "UPDATE backup_versions SET deleted = TRUE WHERE user_id = $1 AND version = $2",
                    &p,
                )
                .await?;
            }
            held.is_some()
        })
    }

    async fn backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKey>> {
        // A version that is no number names no keys (SQLite compares it
        // as text, and finds none either).
        let Some(version) = version_number(version) else {
            return Ok(Vec::new());
        };
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT room_id, session_id, json FROM backup_keys WHERE user_id = $1 AND version = $2
               AND ($3::TEXT IS NULL OR room_id = $3) AND ($4::TEXT IS NULL OR session_id = $4)
             ORDER BY room_id, session_id",
            &[&user_id.as_str(), &version, &room_id, &session_id],
        )
        .await?;
        triples(&rows)
    }

    async fn put_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        keys: Vec<BackupKey>,
        better: for<'n, 'o> fn(&'n str, &'o str) -> bool,
    ) -> Result<BackupVersion> {
        pg_write!(self, |tx| put_backup_keys(&tx, user_id, version, &keys, better).await?)
    }

    async fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<BackupVersion> {
        pg_write!(self, |tx| delete_backup_keys(
            &tx, user_id, version, room_id, session_id
        )
        .await?)
    }

    async fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<Device>> {
        let c = self.client().await?;
        device(&c, user_id, device_id.as_str()).await
    }

    async fn rename_device(&self, user_id: &UserId, device_id: &DeviceId, name: Option<&str>) -> Result<Option<i64>> {
        pg_write!(self, |tx| {
            let n = exec(
                &tx,
                "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
                &[&user_id.as_str(), &device_id.as_str(), &name],
            )
            .await?;
            if n == 0 {
                None
            } else {
                Some(record_change(&tx, user_id, Some(device_id.as_str())).await?)
            }
        })
    }

    async fn delete_devices(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<Vec<(OwnedDeviceId, i64)>> {
        pg_write!(self, |tx| {
            let deleted = remove_devices(&tx, user_id, device_ids).await?;
            record_device_changes(&tx, user_id, deleted).await?
        })
    }

    async fn deactivate_user(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, i64)>> {
        pg_write!(self, |tx| deactivate_user(&tx, user_id).await?)
    }

    async fn record_device_list_change(&self, user_id: &UserId, device_id: Option<&DeviceId>) -> Result<i64> {
        pg_write!(self, |tx| record_change(&tx, user_id, device_id.map(|d| d.as_str()))
            .await?)
    }

    async fn set_device_keys(&self, user_id: &UserId, device_id: &DeviceId, json: &str) -> Result<Option<i64>> {
        pg_write!(self, |tx| set_device_keys(&tx, user_id, device_id.as_str(), json)
            .await?)
    }

    async fn add_one_time_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: Vec<OneTimeKeyRecord>,
    ) -> Result<()> {
        pg_write!(self, |tx| add_one_time_keys(&tx, user_id, device_id.as_str(), &keys)
            .await?)
    }

    async fn set_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: Vec<OneTimeKeyRecord>,
    ) -> Result<()> {
        pg_write!(self, |tx| {
            for key in &keys {
                // The same key again keeps its used flag.
                exec(
                    &tx,
                    "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, json, used)
                     VALUES ($1, $2, $3, $4, $5, FALSE)
                     ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET
                         used = CASE WHEN fallback_keys.key_id = excluded.key_id
                                      AND fallback_keys.json = excluded.json
                                     THEN fallback_keys.used ELSE FALSE END,
                         key_id = excluded.key_id, json = excluded.json",
                    &[
                        &user_id.as_str(),
                        &device_id.as_str(),
                        &key.algorithm,
                        &key.key_id,
                        &key.json,
                    ],
                )
                .await?;
            }
        })
    }

    async fn one_time_key_counts(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Vec<(String, u64)>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
            &[&user_id.as_str(), &device_id.as_str()],
        )
        .await?
        .iter()
        .map(|r| Ok((col(r, 0)?, col::<i64>(r, 1)? as u64)))
        .collect()
    }

    async fn unused_fallback_key_types(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT algorithm FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used
             ORDER BY algorithm",
            &[&user_id.as_str(), &device_id.as_str()],
        )
        .await?;
        strings(&rows, 0)
    }

    async fn claim_key(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(String, String)>> {
        pg_write!(self, |tx| claim_key(&tx, user_id, device_id.as_str(), algorithm)
            .await?)
    }

    async fn local_device_keys(&self, user_id: &UserId) -> Result<Vec<DeviceKeysRecord>> {
        let c = self.client().await?;
        device_records(
            &c,
            "SELECT d.device_id, d.display_name, k.json FROM devices d
             LEFT JOIN device_keys k ON k.user_id = d.user_id AND k.device_id = d.device_id
             WHERE d.user_id = $1 ORDER BY d.device_id",
            user_id,
        )
        .await
    }

    async fn replace_device_keys_json(&self, user_id: &UserId, device_id: &DeviceId, json: &str) -> Result<i64> {
        pg_write!(self, |tx| {
            let n = exec(
                &tx,
                "UPDATE device_keys SET json = $3 WHERE user_id = $1 AND device_id = $2",
                &[&user_id.as_str(), &device_id.as_str(), &json],
            )
            .await?;
            if n == 0 {
                return Err(StorageError::NotFound);
            }
            record_change(&tx, user_id, Some(device_id.as_str())).await?
        })
    }

    async fn cross_signing_keys(&self, user_id: &UserId) -> Result<Vec<(String, String)>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT kind, json FROM cross_signing_keys WHERE user_id = $1 ORDER BY kind",
            &[&user_id.as_str()],
        )
        .await?;
        pairs(&rows)
    }

    async fn set_cross_signing_keys(&self, user_id: &UserId, keys: Vec<(String, String)>) -> Result<i64> {
        pg_write!(self, |tx| {
            put_cross_signing_keys(&tx, user_id, &keys).await?;
            // A user-signing key is its owner's business only.
            let private = keys.iter().all(|(kind, _)| kind == USER_SIGNING);
            record_change_for(&tx, user_id, None, private.then_some(user_id)).await?
        })
    }

    async fn add_cross_user_signature(
        &self,
        signer: &UserId,
        target: &UserId,
        target_key: &str,
        key_id: &str,
        signature: &str,
    ) -> Result<i64> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO cross_user_signatures (signer_id, target_id, target_key, key_id, signature)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (signer_id, target_id, target_key, key_id) DO UPDATE SET signature = excluded.signature",
                &[&signer.as_str(), &target.as_str(), &target_key, &key_id, &signature],
            )
            .await?;
            record_change_for(&tx, target, None, Some(signer)).await?
        })
    }

    async fn cross_user_signatures(&self, signer: &UserId, target: &UserId) -> Result<Vec<(String, String, String)>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT target_key, key_id, signature FROM cross_user_signatures WHERE signer_id = $1 AND target_id = $2",
            &[&signer.as_str(), &target.as_str()],
        )
        .await?;
        triples(&rows)
    }

    async fn device_list_changes(&self, viewer: &UserId, after: i64, upto: i64) -> Result<Vec<(OwnedUserId, bool)>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT DISTINCT user_id, visible_to IS NOT NULL FROM device_list_changes
             WHERE position > $1 AND position <= $2 AND (visible_to IS NULL OR visible_to = $3)",
            &[&after, &upto, &viewer.as_str()],
        )
        .await?
        .iter()
        .map(|r| Ok((parse(col(r, 0)?)?, col(r, 1)?)))
        .collect()
    }

    async fn last_device_change(&self, user_id: &UserId, before: i64) -> Result<Option<i64>> {
        let c = self.client().await?;
        let row = query_one(
            &c,
            "SELECT MAX(position) FROM device_list_changes
             WHERE user_id = $1 AND device_id IS NOT NULL AND position < $2",
            &[&user_id.as_str(), &before],
        )
        .await?;
        col(&row, 0)
    }

    async fn max_e2e_position(&self) -> Result<i64> {
        let c = self.client().await?;
        stream_head(&c, "e2e").await
    }

    async fn remote_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>> {
        let mut c = self.client().await?;
        // The list's head and its devices from one snapshot.
        let tx = read_snapshot(&mut c).await?;
        let Some(head) = query_opt(
            &tx,
            "SELECT stream_id, stale FROM remote_device_lists WHERE user_id = $1",
            &[&user_id.as_str()],
        )
        .await?
        else {
            return Ok(None);
        };
        let devices = device_records(
            &tx,
            "SELECT device_id, display_name, keys FROM remote_devices WHERE user_id = $1 ORDER BY device_id",
            user_id,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(RemoteDeviceList {
            stream_id: col(&head, 0)?,
            stale: col(&head, 1)?,
            devices,
        }))
    }

    async fn replace_remote_device_list(
        &self,
        user_id: &UserId,
        stream_id: i64,
        devices: Vec<DeviceKeysRecord>,
        cross_signing: Vec<(String, String)>,
    ) -> Result<i64> {
        pg_write!(self, |tx| {
            replace_remote_device_list(&tx, user_id, stream_id, &devices, &cross_signing).await?
        })
    }

    async fn update_remote_device(
        &self,
        user_id: &UserId,
        stream_id: i64,
        device: Result<DeviceKeysRecord, OwnedDeviceId>,
    ) -> Result<i64> {
        pg_write!(self, |tx| update_remote_device(&tx, user_id, stream_id, &device)
            .await?)
    }

    async fn remote_users_met(&self, user_ids: &[OwnedUserId]) -> Result<Vec<i64>> {
        pg_write!(self, |tx| {
            mark_stale(&tx, user_ids).await?;
            // The positions last, as `record_change` asks.
            let mut positions = Vec::with_capacity(user_ids.len());
            for user_id in user_ids {
                positions.push(record_change(&tx, user_id, None).await?);
            }
            positions
        })
    }

    async fn mark_remote_device_lists_stale(&self, user_ids: &[OwnedUserId]) -> Result<()> {
        pg_write!(self, |tx| mark_stale(&tx, user_ids).await?)
    }

    async fn queue_to_device(
        &self,
        sender: &UserId,
        event_type: &str,
        txn: Option<(String, String)>,
        messages: Vec<ToDeviceDelivery>,
    ) -> Result<Option<i64>> {
        pg_write!(self, |tx| {
            let fresh = match &txn {
                Some((scope, txn_id)) => record_to_device_txn(&tx, sender, scope, txn_id).await?,
                None => true,
            };
            if fresh {
                Some(queue_to_device(&tx, sender, event_type, &messages).await?)
            } else {
                None
            }
        })
    }

    async fn record_to_device_txn(&self, sender: &UserId, scope: &str, txn_id: &str) -> Result<bool> {
        pg_write!(self, |tx| record_to_device_txn(&tx, sender, scope, txn_id).await?)
    }

    async fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<ToDeviceMessage>> {
        let c = self.client().await?;
        query(
            &c,
            "SELECT position, sender, event_type, content FROM to_device_messages
             WHERE user_id = $1 AND device_id = $2 AND position <= $3 ORDER BY position LIMIT $4",
            &[&user_id.as_str(), &device_id.as_str(), &upto, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ToDeviceMessage {
                position: col(r, 0)?,
                sender: parse(col(r, 1)?)?,
                event_type: col(r, 2)?,
                content: col(r, 3)?,
            })
        })
        .collect()
    }

    async fn delete_to_device_messages(&self, user_id: &UserId, device_id: &DeviceId, upto: i64) -> Result<()> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND position <= $3",
                &[&user_id.as_str(), &device_id.as_str(), &upto],
            )
            .await?;
        })
    }

    async fn member_events_between(
        &self,
        rooms: &[OwnedRoomId],
        after: StreamOrdering,
        upto: StreamOrdering,
    ) -> Result<Vec<(OwnedRoomId, OwnedUserId, String)>> {
        let c = self.client().await?;
        member_events_between(&c, rooms, after, upto).await
    }
}
