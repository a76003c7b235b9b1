//! Other servers' signing keys and key documents.

use ruma::ServerName;

use super::{GenericClient, big, col, exec, now_ms, query};
use crate::storage::{Result, ServerKey};

pub async fn store_server_keys(
    tx: &impl GenericClient,
    server: &ServerName,
    keys: &[ServerKey],
    document: Option<(&str, u64)>,
) -> Result<()> {
    for key in keys {
        exec(
            tx,
            "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (server_name, key_id) DO UPDATE SET
                 public_key = excluded.public_key,
                 valid_until_ts = GREATEST(server_keys.valid_until_ts, excluded.valid_until_ts),
                 expired_ts = CASE
                     WHEN excluded.expired_ts IS NULL THEN server_keys.expired_ts
                     ELSE GREATEST(COALESCE(server_keys.expired_ts, 0), excluded.expired_ts) END,
                 fetched_ts = excluded.fetched_ts",
            &[
                &server.as_str(),
                &key.key_id,
                &key.public_key,
                &big(key.valid_until_ts),
                &key.expired_ts.map(big),
                &now_ms(),
            ],
        )
        .await?;
    }
    if let Some((json, valid_until)) = document {
        for key in keys.iter().filter(|k| k.expired_ts.is_none()) {
            exec(
                tx,
                "INSERT INTO server_key_documents (server_name, key_id, valid_until_ts, fetched_ts, json)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (server_name, key_id) DO UPDATE SET
                     valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts,
                     json = excluded.json
                 WHERE excluded.valid_until_ts >= server_key_documents.valid_until_ts",
                &[&server.as_str(), &key.key_id, &big(valid_until), &now_ms(), &json],
            )
            .await?;
        }
    }
    Ok(())
}

pub async fn server_keys(c: &impl GenericClient, server: &ServerName) -> Result<Vec<ServerKey>> {
    let rows = query(
        c,
        "SELECT key_id, public_key, valid_until_ts, expired_ts FROM server_keys WHERE server_name = $1
         ORDER BY key_id",
        &[&server.as_str()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ServerKey {
                key_id: col(r, 0)?,
                public_key: col(r, 1)?,
                valid_until_ts: col::<i64>(r, 2)? as u64,
                expired_ts: col::<Option<i64>>(r, 3)?.map(|t| t as u64),
            })
        })
        .collect()
}

/// The stored key documents of `server` (JSON and validity) that hold one
/// of `key_ids` (all of them when it is empty), one per key ID.
pub async fn server_key_documents(
    c: &impl GenericClient,
    server: &ServerName,
    key_ids: &[String],
) -> Result<Vec<(String, String, u64)>> {
    let rows = query(
        c,
        "SELECT key_id, json, valid_until_ts FROM server_key_documents WHERE server_name = $1 ORDER BY key_id",
        &[&server.as_str()],
    )
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        let key_id: String = col(r, 0)?;
        if key_ids.is_empty() || key_ids.contains(&key_id) {
            out.push((key_id, col(r, 1)?, col::<i64>(r, 2)? as u64));
        }
    }
    Ok(out)
}
