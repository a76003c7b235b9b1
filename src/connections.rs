//! Where each device was last seen from: the client's IP address and user
//! agent, and when (client-server `GET /devices` `last_seen_ip`, and the
//! admin `GET /admin/whois`).
//!
//! Every authenticated request is noted in memory; storage is written
//! only when a device's address or user agent changes, or once a
//! [`WRITE_EVERY`] otherwise — not once per request.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use ruma::{MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedUserId};

use crate::storage::{Storage, StorageError, TokenOwner};

/// Longest time a device's stored `last_seen_ts` lags behind.
const WRITE_EVERY_MS: u64 = 60_000;
/// Devices noted before the ones already in storage are forgotten.
const PRUNE_AT: usize = 4096;

/// A device's last request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub ip: String,
    pub user_agent: Option<String>,
    pub ts: u64,
}

#[derive(Default)]
pub struct Connections {
    /// The last request of each device, and when storage last heard of it.
    seen: Mutex<HashMap<(OwnedUserId, OwnedDeviceId), (Seen, u64)>>,
    /// The size of `seen` at which it is next pruned.
    prune_at: AtomicUsize,
}

/// The client's address: the peer's, or with `x_forwarded` (weft behind a
/// reverse proxy) the first of `X-Forwarded-For`.
pub fn client_ip(parts: &http::request::Parts, x_forwarded: bool) -> Option<IpAddr> {
    if x_forwarded
        && let Some(ip) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

impl Connections {
    /// Notes a request of `owner`'s device; writes to storage when due.
    pub async fn record(
        &self,
        storage: &dyn Storage,
        owner: &TokenOwner,
        parts: &http::request::Parts,
        x_forwarded: bool,
    ) -> Result<(), StorageError> {
        let Some(ip) = client_ip(parts, x_forwarded) else {
            return Ok(());
        };
        let user_agent = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let now: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
        let seen = Seen {
            ip: ip.to_string(),
            user_agent,
            ts: now,
        };
        let due = {
            let mut map = self.seen.lock().expect("connections");
            let key = (owner.user_id.clone(), owner.device_id.clone());
            let due = match map.get(&key) {
                Some((last, written)) => {
                    last.ip != seen.ip || last.user_agent != seen.user_agent || now >= written + WRITE_EVERY_MS
                }
                None => true,
            };
            let written = match map.get(&key) {
                Some((_, written)) if !due => *written,
                _ => now,
            };
            map.insert(key, (seen.clone(), written));
            // Devices whose last request storage holds are forgotten once
            // there are many (the map does not grow with every device ever
            // seen); those with a newer request than storage's are kept.
            let prune_at = self.prune_at.load(Ordering::Relaxed).max(PRUNE_AT);
            if map.len() >= prune_at {
                map.retain(|_, (last, written)| last.ts != *written);
                // Not walked again before it has doubled.
                self.prune_at.store(2 * map.len(), Ordering::Relaxed);
            }
            due
        };
        if due {
            storage.device_seen(&owner.user_id, &owner.device_id, &seen).await?;
        }
        Ok(())
    }

    /// A device's last request as noted in memory (newer than storage's).
    pub fn last(&self, user_id: &ruma::UserId, device_id: &ruma::DeviceId) -> Option<Seen> {
        self.seen
            .lock()
            .expect("connections")
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .map(|(seen, _)| seen.clone())
    }
}
