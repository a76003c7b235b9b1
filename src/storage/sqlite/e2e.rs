//! Devices' end-to-end keys, device lists and to-device messages
//! (`schema_v8.sql`).

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{SqliteStorage, accounts::parse, exec, now_ms, query_one};
use crate::storage::{
    Device, Result, StorageError, StreamOrdering,
    e2e::{
        BackupKey, BackupVersion, DeviceKeysRecord, E2eStorage, OneTimeKeyRecord, RemoteDeviceList, ToDeviceDelivery,
        ToDeviceMessage, USER_SIGNING,
    },
};

/// The next e2e stream position (inside the write transaction).
fn next_position(tx: &Transaction<'_>) -> Result<i64> {
    exec(tx, "UPDATE e2e_stream SET position = position + 1 WHERE id = 0", [])?;
    Ok(query_one(
        tx,
        "SELECT position FROM e2e_stream WHERE id = 0",
        [],
        |r| r.get(0),
    )?)
}

/// Marks the cached device lists of `user_ids` to be fetched again.
fn mark_stale(tx: &Transaction<'_>, user_ids: &[OwnedUserId]) -> Result<()> {
    for user_id in user_ids {
        exec(
            tx,
            "UPDATE remote_device_lists SET stale = 1 WHERE user_id = ?1",
            [user_id.as_str()],
        )?;
    }
    Ok(())
}

fn record_change(tx: &Transaction<'_>, user_id: &UserId, device_id: Option<&str>) -> Result<i64> {
    record_change_for(tx, user_id, device_id, None)
}

fn record_change_for(
    tx: &Transaction<'_>,
    user_id: &UserId,
    device_id: Option<&str>,
    visible_to: Option<&UserId>,
) -> Result<i64> {
    let position = next_position(tx)?;
    exec(
        tx,
        "INSERT INTO device_list_changes (position, user_id, device_id, visible_to) VALUES (?1, ?2, ?3, ?4)",
        params![position, user_id.as_str(), device_id, visible_to.map(|u| u.as_str())],
    )?;
    Ok(position)
}

fn device(c: &Connection, user_id: &UserId, device_id: &str) -> Result<Option<Device>> {
    Ok(query_one(
        c,
        "SELECT display_name, last_seen_ts, last_seen_ip, last_seen_user_agent
         FROM devices WHERE user_id = ?1 AND device_id = ?2",
        params![user_id.as_str(), device_id],
        |r| {
            Ok(Device {
                device_id: OwnedDeviceId::from(device_id),
                display_name: r.get(0)?,
                last_seen_ts: r.get::<_, Option<i64>>(1)?.map(|t| t as u64),
                last_seen_ip: r.get(2)?,
                last_seen_user_agent: r.get(3)?,
            })
        },
    )
    .optional()?)
}

fn delete_device(tx: &Transaction<'_>, user_id: &UserId, device_id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM to_device_messages WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM pushers WHERE user_id = ?1 AND device_id = ?2",
    ] {
        exec(tx, sql, params![user_id.as_str(), device_id])?;
    }
    super::sliding_sync::forget_device(tx, user_id, device_id)
}

fn delete_devices(
    tx: &Transaction<'_>,
    user_id: &UserId,
    device_ids: &[OwnedDeviceId],
) -> Result<Vec<(OwnedDeviceId, i64)>> {
    let mut deleted = Vec::new();
    for device_id in device_ids {
        if device(tx, user_id, device_id.as_str())?.is_none() {
            continue;
        }
        delete_device(tx, user_id, device_id.as_str())?;
        let position = record_change(tx, user_id, Some(device_id.as_str()))?;
        deleted.push((device_id.clone(), position));
    }
    Ok(deleted)
}

fn strings(c: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<String>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(p, |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn pairs(c: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<Vec<(String, String)>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(p, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn device_records(c: &Connection, sql: &str, user_id: &UserId) -> Result<Vec<DeviceKeysRecord>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map([user_id.as_str()], |r| {
        Ok(DeviceKeysRecord {
            device_id: OwnedDeviceId::from(r.get::<_, String>(0)?),
            display_name: r.get(1)?,
            keys: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn put_remote_device(tx: &Transaction<'_>, user_id: &UserId, device: &DeviceKeysRecord) -> Result<()> {
    exec(
        tx,
        "INSERT OR REPLACE INTO remote_devices (user_id, device_id, display_name, keys) VALUES (?1, ?2, ?3, ?4)",
        params![
            user_id.as_str(),
            device.device_id.as_str(),
            device.display_name,
            device.keys
        ],
    )?;
    Ok(())
}

fn put_cross_signing_keys(tx: &Transaction<'_>, user_id: &UserId, keys: &[(String, String)]) -> Result<()> {
    for (kind, json) in keys {
        exec(
            tx,
            "INSERT OR REPLACE INTO cross_signing_keys (user_id, kind, json) VALUES (?1, ?2, ?3)",
            params![user_id.as_str(), kind, json],
        )?;
    }
    Ok(())
}

fn backup_version(c: &Connection, user_id: &UserId, version: Option<&str>) -> Result<Option<BackupVersion>> {
    let version: Option<i64> = match version {
        Some(v) => match v.parse::<i64>() {
            Ok(v) => Some(v),
            Err(_) => return Ok(None),
        },
        None => None,
    };
    let row: Option<(i64, String, i64)> = query_one(
        c,
        "SELECT version, algorithm, etag FROM backup_versions
         WHERE user_id = ?1 AND deleted = 0 AND (?2 IS NULL OR version = ?2)
         ORDER BY version DESC LIMIT 1",
        params![user_id.as_str(), version],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()?;
    let Some((version, algorithm, etag)) = row else {
        return Ok(None);
    };
    let count: i64 = query_one(
        c,
        "SELECT COUNT(*) FROM backup_keys WHERE user_id = ?1 AND version = ?2",
        params![user_id.as_str(), version],
        |r| r.get(0),
    )?;
    Ok(Some(BackupVersion {
        version: version.to_string(),
        algorithm,
        count: count as u64,
        etag: etag.to_string(),
    }))
}

fn delete_backup_keys(
    tx: &Transaction<'_>,
    user_id: &UserId,
    version: &str,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<BackupVersion> {
    let held = backup_version(tx, user_id, Some(version))?.ok_or(StorageError::NotFound)?;
    exec(
        tx,
        "DELETE FROM backup_keys WHERE user_id = ?1 AND version = ?2
           AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4)",
        params![user_id.as_str(), held.version, room_id, session_id],
    )?;
    exec(
        tx,
        "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2",
        params![user_id.as_str(), held.version],
    )?;
    backup_version(tx, user_id, Some(version))?.ok_or(StorageError::NotFound)
}

#[async_trait]
impl E2eStorage for SqliteStorage {
    async fn create_backup_version(&self, user_id: &UserId, algorithm: &str) -> Result<String> {
        let (user_id, algorithm) = (user_id.to_owned(), algorithm.to_owned());
        self.write(move |tx| {
            let version: i64 = query_one(
                tx,
                "SELECT COALESCE(MAX(version), 0) + 1 FROM backup_versions WHERE user_id = ?1",
                [user_id.as_str()],
                |r| r.get(0),
            )?;
            exec(
                tx,
                "INSERT INTO backup_versions (user_id, version, algorithm) VALUES (?1, ?2, ?3)",
                params![user_id.as_str(), version, algorithm],
            )?;
            Ok(version.to_string())
        })
        .await
    }

    async fn backup_version(&self, user_id: &UserId, version: Option<&str>) -> Result<Option<BackupVersion>> {
        let (user_id, version) = (user_id.to_owned(), version.map(str::to_owned));
        self.read(move |c| backup_version(c, &user_id, version.as_deref()))
            .await
    }

    async fn update_backup_version(&self, user_id: &UserId, version: &str, algorithm: &str) -> Result<bool> {
        let (user_id, version, algorithm) = (user_id.to_owned(), version.to_owned(), algorithm.to_owned());
        self.write(move |tx| {
            let Some(held) = backup_version(tx, &user_id, Some(&version))? else {
                return Ok(false);
            };
            exec(
                tx,
                "UPDATE backup_versions SET algorithm = ?3 WHERE user_id = ?1 AND version = ?2",
                params![user_id.as_str(), held.version, algorithm],
            )?;
            Ok(true)
        })
        .await
    }

    async fn delete_backup_version(&self, user_id: &UserId, version: &str) -> Result<bool> {
        let (user_id, version) = (user_id.to_owned(), version.to_owned());
        self.write(move |tx| {
            let Some(held) = backup_version(tx, &user_id, Some(&version))? else {
                return Ok(false);
            };
            exec(
                tx,
                "DELETE FROM backup_keys WHERE user_id = ?1 AND version = ?2",
                params![user_id.as_str(), held.version],
            )?;
            exec(
                tx,
                "UPDATE backup_versions SET deleted = 1 WHERE user_id = ?1 AND version = ?2",
                params![user_id.as_str(), held.version],
            )?;
            Ok(true)
        })
        .await
    }

    async fn backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKey>> {
        let (user_id, version) = (user_id.to_owned(), version.to_owned());
        let (room_id, session_id) = (room_id.map(str::to_owned), session_id.map(str::to_owned));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT room_id, session_id, json FROM backup_keys WHERE user_id = ?1 AND version = ?2
                   AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4)
                 ORDER BY room_id, session_id",
            )?;
            let rows = stmt.query_map(params![user_id.as_str(), version, room_id, session_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn put_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        keys: Vec<BackupKey>,
        better: for<'n, 'o> fn(&'n str, &'o str) -> bool,
    ) -> Result<BackupVersion> {
        let (user_id, version) = (user_id.to_owned(), version.to_owned());
        self.write(move |tx| {
            let held = backup_version(tx, &user_id, Some(&version))?.ok_or(StorageError::NotFound)?;
            for (room_id, session_id, json) in &keys {
                let old: Option<String> = query_one(
                    tx,
                    "SELECT json FROM backup_keys
                     WHERE user_id = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4",
                    params![user_id.as_str(), held.version, room_id, session_id],
                    |r| r.get(0),
                )
                .optional()?;
                if old.as_deref().is_some_and(|old| !better(json, old)) {
                    continue;
                }
                exec(
                    tx,
                    "INSERT OR REPLACE INTO backup_keys (user_id, version, room_id, session_id, json)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![user_id.as_str(), held.version, room_id, session_id, json],
                )?;
            }
            exec(
                tx,
                "UPDATE backup_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2",
                params![user_id.as_str(), held.version],
            )?;
            backup_version(tx, &user_id, Some(&version))?.ok_or(StorageError::NotFound)
        })
        .await
    }

    async fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<BackupVersion> {
        let (user_id, version) = (user_id.to_owned(), version.to_owned());
        let (room_id, session_id) = (room_id.map(str::to_owned), session_id.map(str::to_owned));
        self.write(move |tx| delete_backup_keys(tx, &user_id, &version, room_id.as_deref(), session_id.as_deref()))
            .await
    }

    async fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<Device>> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |c| device(c, &user_id, device_id.as_str())).await
    }

    async fn rename_device(&self, user_id: &UserId, device_id: &DeviceId, name: Option<&str>) -> Result<Option<i64>> {
        let (user_id, device_id, name) = (user_id.to_owned(), device_id.to_owned(), name.map(str::to_owned));
        self.write(move |tx| {
            let n = exec(
                tx,
                "UPDATE devices SET display_name = ?3 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id.as_str(), device_id.as_str(), name],
            )?;
            if n == 0 {
                return Ok(None);
            }
            Ok(Some(record_change(tx, &user_id, Some(device_id.as_str()))?))
        })
        .await
    }

    async fn delete_devices(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<Vec<(OwnedDeviceId, i64)>> {
        let (user_id, device_ids) = (user_id.to_owned(), device_ids.to_vec());
        self.write(move |tx| delete_devices(tx, &user_id, &device_ids)).await
    }

    async fn deactivate_user(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, i64)>> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            exec(
                tx,
                "UPDATE users SET deactivated = 1 WHERE user_id = ?1",
                [user_id.as_str()],
            )?;
            let devices: Vec<OwnedDeviceId> = strings(
                tx,
                "SELECT device_id FROM devices WHERE user_id = ?1",
                [user_id.as_str()],
            )?
            .into_iter()
            .map(OwnedDeviceId::from)
            .collect();
            let deleted = delete_devices(tx, &user_id, &devices)?;
            exec(tx, "DELETE FROM access_tokens WHERE user_id = ?1", [user_id.as_str()])?;
            let had_keys = exec(
                tx,
                "DELETE FROM cross_signing_keys WHERE user_id = ?1",
                [user_id.as_str()],
            )?;
            if had_keys > 0 {
                record_change(tx, &user_id, None)?;
            }
            Ok(deleted)
        })
        .await
    }

    async fn record_device_list_change(&self, user_id: &UserId, device_id: Option<&DeviceId>) -> Result<i64> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.map(ToOwned::to_owned));
        self.write(move |tx| record_change(tx, &user_id, device_id.as_ref().map(|d| d.as_str())))
            .await
    }

    async fn set_device_keys(&self, user_id: &UserId, device_id: &DeviceId, json: &str) -> Result<Option<i64>> {
        let (user_id, device_id, json) = (user_id.to_owned(), device_id.to_owned(), json.to_owned());
        self.write(move |tx| {
            let held: Option<String> = query_one(
                tx,
                "SELECT json FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
                params![user_id.as_str(), device_id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
            if held.as_deref() == Some(json.as_str()) {
                return Ok(None);
            }
            exec(
                tx,
                "INSERT OR REPLACE INTO device_keys (user_id, device_id, json) VALUES (?1, ?2, ?3)",
                params![user_id.as_str(), device_id.as_str(), json],
            )?;
            Ok(Some(record_change(tx, &user_id, Some(device_id.as_str()))?))
        })
        .await
    }

    async fn add_one_time_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: Vec<OneTimeKeyRecord>,
    ) -> Result<()> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.write(move |tx| {
            for key in &keys {
                let held: Option<String> = query_one(
                    tx,
                    "SELECT json FROM one_time_keys
                     WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 AND key_id = ?4",
                    params![user_id.as_str(), device_id.as_str(), key.algorithm, key.key_id],
                    |r| r.get(0),
                )
                .optional()?;
                match held {
                    Some(json) if json == key.json => {}
                    Some(_) => return Err(StorageError::AlreadyExists),
                    None => {
                        exec(
                            tx,
                            "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, json)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![
                                user_id.as_str(),
                                device_id.as_str(),
                                key.algorithm,
                                key.key_id,
                                key.json
                            ],
                        )?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn set_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: Vec<OneTimeKeyRecord>,
    ) -> Result<()> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.write(move |tx| {
            for key in &keys {
                // The same key again keeps its used flag.
                exec(
                    tx,
                    "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, json, used)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)
                     ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET
                         used = CASE WHEN fallback_keys.key_id = excluded.key_id
                                      AND fallback_keys.json = excluded.json
                                     THEN fallback_keys.used ELSE 0 END,
                         key_id = excluded.key_id, json = excluded.json",
                    params![
                        user_id.as_str(),
                        device_id.as_str(),
                        key.algorithm,
                        key.key_id,
                        key.json
                    ],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn one_time_key_counts(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Vec<(String, u64)>> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2
                 GROUP BY algorithm",
            )?;
            let rows = stmt.query_map(params![user_id.as_str(), device_id.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn unused_fallback_key_types(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Vec<String>> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |c| {
            strings(
                c,
                "SELECT algorithm FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND used = 0
                 ORDER BY algorithm",
                params![user_id.as_str(), device_id.as_str()],
            )
        })
        .await
    }

    async fn claim_key(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(String, String)>> {
        let (user_id, device_id, algorithm) = (user_id.to_owned(), device_id.to_owned(), algorithm.to_owned());
        self.write(move |tx| {
            let p = params![user_id.as_str(), device_id.as_str(), algorithm];
            let key: Option<(String, String)> = query_one(
                tx,
                "SELECT key_id, json FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                 ORDER BY key_id LIMIT 1",
                p,
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            if let Some((key_id, json)) = key {
                exec(
                    tx,
                    "DELETE FROM one_time_keys
                     WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 AND key_id = ?4",
                    params![user_id.as_str(), device_id.as_str(), algorithm, key_id],
                )?;
                return Ok(Some((key_id, json)));
            }
            let fallback: Option<(String, String)> = query_one(
                tx,
                "SELECT key_id, json FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3",
                p,
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            if fallback.is_some() {
                exec(
                    tx,
                    "UPDATE fallback_keys SET used = 1 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3",
                    p,
                )?;
            }
            Ok(fallback)
        })
        .await
    }

    async fn local_device_keys(&self, user_id: &UserId) -> Result<Vec<DeviceKeysRecord>> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            device_records(
                c,
                "SELECT d.device_id, d.display_name, k.json FROM devices d
                 LEFT JOIN device_keys k ON k.user_id = d.user_id AND k.device_id = d.device_id
                 WHERE d.user_id = ?1 ORDER BY d.device_id",
                &user_id,
            )
        })
        .await
    }

    async fn replace_device_keys_json(&self, user_id: &UserId, device_id: &DeviceId, json: &str) -> Result<i64> {
        let (user_id, device_id, json) = (user_id.to_owned(), device_id.to_owned(), json.to_owned());
        self.write(move |tx| {
            let n = exec(
                tx,
                "UPDATE device_keys SET json = ?3 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id.as_str(), device_id.as_str(), json],
            )?;
            if n == 0 {
                return Err(StorageError::NotFound);
            }
            record_change(tx, &user_id, Some(device_id.as_str()))
        })
        .await
    }

    async fn cross_signing_keys(&self, user_id: &UserId) -> Result<Vec<(String, String)>> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            pairs(
                c,
                "SELECT kind, json FROM cross_signing_keys WHERE user_id = ?1 ORDER BY kind",
                [user_id.as_str()],
            )
        })
        .await
    }

    async fn set_cross_signing_keys(&self, user_id: &UserId, keys: Vec<(String, String)>) -> Result<i64> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            put_cross_signing_keys(tx, &user_id, &keys)?;
            // A user-signing key is its owner's business only.
            let private = keys.iter().all(|(kind, _)| kind == USER_SIGNING);
            record_change_for(tx, &user_id, None, private.then_some(&*user_id))
        })
        .await
    }

    async fn add_cross_user_signature(
        &self,
        signer: &UserId,
        target: &UserId,
        target_key: &str,
        key_id: &str,
        signature: &str,
    ) -> Result<i64> {
        let (signer, target) = (signer.to_owned(), target.to_owned());
        let (target_key, key_id, signature) = (target_key.to_owned(), key_id.to_owned(), signature.to_owned());
        self.write(move |tx| {
            exec(
                tx,
                "INSERT OR REPLACE INTO cross_user_signatures (signer_id, target_id, target_key, key_id, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![signer.as_str(), target.as_str(), target_key, key_id, signature],
            )?;
            record_change_for(tx, &target, None, Some(&signer))
        })
        .await
    }

    async fn cross_user_signatures(&self, signer: &UserId, target: &UserId) -> Result<Vec<(String, String, String)>> {
        let (signer, target) = (signer.to_owned(), target.to_owned());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT target_key, key_id, signature FROM cross_user_signatures
                 WHERE signer_id = ?1 AND target_id = ?2",
            )?;
            let rows = stmt.query_map(params![signer.as_str(), target.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn device_list_changes(&self, viewer: &UserId, after: i64, upto: i64) -> Result<Vec<(OwnedUserId, bool)>> {
        let viewer = viewer.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT user_id, visible_to IS NOT NULL FROM device_list_changes
                 WHERE position > ?1 AND position <= ?2 AND (visible_to IS NULL OR visible_to = ?3)",
            )?;
            let rows = stmt.query_map(params![after, upto, viewer.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
            })?;
            rows.map(|r| {
                let (user, private) = r?;
                Ok((parse(user)?, private))
            })
            .collect()
        })
        .await
    }

    async fn last_device_change(&self, user_id: &UserId, before: i64) -> Result<Option<i64>> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            Ok(query_one(
                c,
                "SELECT MAX(position) FROM device_list_changes
                 WHERE user_id = ?1 AND device_id IS NOT NULL AND position < ?2",
                params![user_id.as_str(), before],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn max_e2e_position(&self) -> Result<i64> {
        self.read(|c| {
            Ok(query_one(c, "SELECT position FROM e2e_stream WHERE id = 0", [], |r| {
                r.get(0)
            })?)
        })
        .await
    }

    async fn remote_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>> {
        let user_id = user_id.to_owned();
        self.read(move |c| {
            let head: Option<(i64, bool)> = query_one(
                c,
                "SELECT stream_id, stale FROM remote_device_lists WHERE user_id = ?1",
                [user_id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            let Some((stream_id, stale)) = head else {
                return Ok(None);
            };
            let devices = device_records(
                c,
                "SELECT device_id, display_name, keys FROM remote_devices WHERE user_id = ?1 ORDER BY device_id",
                &user_id,
            )?;
            Ok(Some(RemoteDeviceList {
                stream_id,
                stale,
                devices,
            }))
        })
        .await
    }

    async fn replace_remote_device_list(
        &self,
        user_id: &UserId,
        stream_id: i64,
        devices: Vec<DeviceKeysRecord>,
        cross_signing: Vec<(String, String)>,
    ) -> Result<i64> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            exec(tx, "DELETE FROM remote_devices WHERE user_id = ?1", [user_id.as_str()])?;
            for device in &devices {
                put_remote_device(tx, &user_id, device)?;
            }
            exec(
                tx,
                "INSERT OR REPLACE INTO remote_device_lists (user_id, stream_id, stale) VALUES (?1, ?2, 0)",
                params![user_id.as_str(), stream_id],
            )?;
            put_cross_signing_keys(tx, &user_id, &cross_signing)?;
            record_change(tx, &user_id, None)
        })
        .await
    }

    async fn update_remote_device(
        &self,
        user_id: &UserId,
        stream_id: i64,
        device: Result<DeviceKeysRecord, OwnedDeviceId>,
    ) -> Result<i64> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            let device_id = match &device {
                Ok(record) => {
                    put_remote_device(tx, &user_id, record)?;
                    record.device_id.clone()
                }
                Err(deleted) => {
                    exec(
                        tx,
                        "DELETE FROM remote_devices WHERE user_id = ?1 AND device_id = ?2",
                        params![user_id.as_str(), deleted.as_str()],
                    )?;
                    deleted.clone()
                }
            };
            exec(
                tx,
                "UPDATE remote_device_lists SET stream_id = ?2 WHERE user_id = ?1",
                params![user_id.as_str(), stream_id],
            )?;
            record_change(tx, &user_id, Some(device_id.as_str()))
        })
        .await
    }

    async fn remote_users_met(&self, user_ids: &[OwnedUserId]) -> Result<Vec<i64>> {
        let user_ids = user_ids.to_vec();
        self.write(move |tx| {
            mark_stale(tx, &user_ids)?;
            user_ids
                .iter()
                .map(|user_id| record_change(tx, user_id, None))
                .collect()
        })
        .await
    }

    async fn mark_remote_device_lists_stale(&self, user_ids: &[OwnedUserId]) -> Result<()> {
        let user_ids = user_ids.to_vec();
        self.write(move |tx| mark_stale(tx, &user_ids)).await
    }

    async fn queue_to_device(
        &self,
        sender: &UserId,
        event_type: &str,
        txn: Option<(String, String)>,
        messages: Vec<ToDeviceDelivery>,
    ) -> Result<Option<i64>> {
        let (sender, event_type) = (sender.to_owned(), event_type.to_owned());
        self.write(move |tx| {
            if let Some((scope, txn_id)) = &txn {
                let added = exec(
                    tx,
                    "INSERT OR IGNORE INTO to_device_txns (sender, scope, txn_id, seen_ts) VALUES (?1, ?2, ?3, ?4)",
                    params![sender.as_str(), scope, txn_id, now_ms()],
                )?;
                if added == 0 {
                    return Ok(None);
                }
            }
            let position = next_position(tx)?;
            for m in &messages {
                exec(
                    tx,
                    "INSERT OR REPLACE INTO to_device_messages
                         (user_id, device_id, position, sender, event_type, content)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        m.user_id.as_str(),
                        m.device_id.as_str(),
                        position,
                        sender.as_str(),
                        event_type,
                        m.content
                    ],
                )?;
            }
            Ok(Some(position))
        })
        .await
    }

    async fn record_to_device_txn(&self, sender: &UserId, scope: &str, txn_id: &str) -> Result<bool> {
        let (sender, scope, txn_id) = (sender.to_owned(), scope.to_owned(), txn_id.to_owned());
        self.write(move |tx| {
            Ok(exec(
                tx,
                "INSERT OR IGNORE INTO to_device_txns (sender, scope, txn_id, seen_ts) VALUES (?1, ?2, ?3, ?4)",
                params![sender.as_str(), scope, txn_id, now_ms()],
            )? > 0)
        })
        .await
    }

    async fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<ToDeviceMessage>> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT position, sender, event_type, content FROM to_device_messages
                 WHERE user_id = ?1 AND device_id = ?2 AND position <= ?3 ORDER BY position LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![user_id.as_str(), device_id.as_str(), upto, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            rows.map(|r| {
                let (position, sender, event_type, content) = r?;
                Ok(ToDeviceMessage {
                    position,
                    sender: parse(sender)?,
                    event_type,
                    content,
                })
            })
            .collect()
        })
        .await
    }

    async fn delete_to_device_messages(&self, user_id: &UserId, device_id: &DeviceId, upto: i64) -> Result<()> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.write(move |tx| {
            exec(
                tx,
                "DELETE FROM to_device_messages WHERE user_id = ?1 AND device_id = ?2 AND position <= ?3",
                params![user_id.as_str(), device_id.as_str(), upto],
            )?;
            Ok(())
        })
        .await
    }

    async fn member_events_between(
        &self,
        rooms: &[OwnedRoomId],
        after: StreamOrdering,
        upto: StreamOrdering,
    ) -> Result<Vec<(OwnedRoomId, OwnedUserId, String)>> {
        let rooms = rooms.to_vec();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT state_key, json_extract(json, '$.content.membership') FROM events
                 WHERE room_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3
                   AND type = 'm.room.member' AND outlier = 0 AND rejected IS NULL AND soft_failed = 0
                 ORDER BY stream_ordering",
            )?;
            let mut out = Vec::new();
            for room in &rooms {
                let rows = stmt.query_map(params![room.as_str(), after, upto], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })?;
                for row in rows {
                    let (user, membership) = row?;
                    let Ok(user) = OwnedUserId::try_from(user) else {
                        continue;
                    };
                    out.push((room.clone(), user, membership.unwrap_or_default()));
                }
            }
            Ok(out)
        })
        .await
    }
}
