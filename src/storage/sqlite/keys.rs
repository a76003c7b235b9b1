//! Other servers' signing keys and key documents.

use ruma::ServerName;
use rusqlite::{Connection, Transaction, params};

use super::{exec, now_ms};
use crate::storage::{Result, ServerKey};

pub fn store_server_keys(
    tx: &Transaction<'_>,
    server: &ServerName,
    keys: &[ServerKey],
    document: Option<(&str, u64)>,
) -> Result<()> {
    for key in keys {
        exec(
            tx,
            "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (server_name, key_id) DO UPDATE SET
                 public_key = excluded.public_key,
                 valid_until_ts = MAX(server_keys.valid_until_ts, excluded.valid_until_ts),
                 expired_ts = CASE
                     WHEN excluded.expired_ts IS NULL THEN server_keys.expired_ts
                     ELSE MAX(COALESCE(server_keys.expired_ts, 0), excluded.expired_ts) END,
                 fetched_ts = excluded.fetched_ts",
            params![
                server.as_str(),
                key.key_id,
                key.public_key,
                key.valid_until_ts as i64,
                key.expired_ts.map(|t| t as i64),
                now_ms()
            ],
        )?;
    }
    if let Some((json, valid_until)) = document {
        for key in keys.iter().filter(|k| k.expired_ts.is_none()) {
            exec(
                tx,
                "INSERT INTO server_key_documents (server_name, key_id, valid_until_ts, fetched_ts, json)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (server_name, key_id) DO UPDATE SET
                     valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts,
                     json = excluded.json
                 WHERE excluded.valid_until_ts >= server_key_documents.valid_until_ts",
                params![server.as_str(), key.key_id, valid_until as i64, now_ms(), json],
            )?;
        }
    }
    Ok(())
}

pub fn server_keys(c: &Connection, server: &ServerName) -> Result<Vec<ServerKey>> {
    let mut stmt = c.prepare_cached(
        "SELECT key_id, public_key, valid_until_ts, expired_ts FROM server_keys WHERE server_name = ?1
         ORDER BY key_id",
    )?;
    let rows = stmt.query_map([server.as_str()], |r| {
        Ok(ServerKey {
            key_id: r.get(0)?,
            public_key: r.get(1)?,
            valid_until_ts: r.get::<_, i64>(2)? as u64,
            expired_ts: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn server_key_documents(
    c: &Connection,
    server: &ServerName,
    key_ids: &[String],
) -> Result<Vec<(String, String, u64)>> {
    let mut stmt = c.prepare_cached(
        "SELECT key_id, json, valid_until_ts FROM server_key_documents WHERE server_name = ?1 ORDER BY key_id",
    )?;
    let rows = stmt.query_map([server.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        if key_ids.is_empty() || key_ids.contains(&row.0) {
            out.push(row);
        }
    }
    Ok(out)
}
