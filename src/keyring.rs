//! Other servers' signing keys: fetched from the server itself
//! (`/_matrix/key/v2/server`) or through a notary (`/_matrix/key/v2/query`),
//! checked (server name, self-signature, notary signature), stored, and
//! held in memory until they stop being valid.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName, ServerName,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
};

use crate::{
    keys::ServerKeys,
    storage::{ServerKey, Storage, StorageError},
};

#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("no usable key {key_id} for {server}: {reason}")]
    Unavailable {
        server: OwnedServerName,
        key_id: String,
        reason: String,
    },
    #[error("invalid key document from {server}: {reason}")]
    InvalidDocument { server: OwnedServerName, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// How keys are fetched over the network (the federation client).
#[async_trait]
pub trait KeyFetcher: Send + Sync {
    /// `GET /_matrix/key/v2/server` of `server`.
    async fn server_keys(&self, server: &ServerName) -> Result<CanonicalJsonObject, String>;
    /// `POST /_matrix/key/v2/query` to `notary`, for `server`'s keys.
    async fn notary_query(&self, notary: &ServerName, server: &ServerName) -> Result<Vec<CanonicalJsonObject>, String>;
}

pub struct KeyRing {
    own: Arc<ServerKeys>,
    storage: Arc<dyn Storage>,
    fetcher: Arc<dyn KeyFetcher>,
    notaries: Vec<OwnedServerName>,
    cache: Mutex<HashMap<OwnedServerName, Arc<Vec<ServerKey>>>>,
    /// One fetch per server at a time.
    fetching: crate::keyed_locks::KeyedLocks<OwnedServerName>,
}

fn now_ms() -> u64 {
    MilliSecondsSinceUnixEpoch::now().get().into()
}

/// Whether `key` may verify a signature made at `at`.
fn usable(key: &ServerKey, at: u64) -> bool {
    match key.expired_ts {
        Some(expired) => at < expired,
        None => at <= key.valid_until_ts,
    }
}

impl KeyRing {
    pub fn new(
        own: Arc<ServerKeys>,
        storage: Arc<dyn Storage>,
        fetcher: Arc<dyn KeyFetcher>,
        notaries: Vec<OwnedServerName>,
    ) -> Self {
        KeyRing {
            own,
            storage,
            fetcher,
            notaries,
            cache: Mutex::default(),
            fetching: Default::default(),
        }
    }

    fn own_keys(&self) -> Vec<ServerKey> {
        vec![ServerKey {
            key_id: self.own.key_id(),
            public_key: self.own.public_key_base64().to_owned(),
            valid_until_ts: u64::MAX,
            expired_ts: None,
        }]
    }

    async fn known(&self, server: &ServerName) -> Result<Arc<Vec<ServerKey>>, KeyRingError> {
        if server == self.own.server_name() {
            return Ok(Arc::new(self.own_keys()));
        }
        if let Some(keys) = self.cache.lock().expect("key cache").get(server) {
            return Ok(keys.clone());
        }
        let keys = Arc::new(self.storage.server_keys(server).await?);
        self.cache
            .lock()
            .expect("key cache")
            .insert(server.to_owned(), keys.clone());
        Ok(keys)
    }

    /// The public key `key_id` of `server`, usable for a signature made at
    /// `at` (ms); fetched if not held.
    pub async fn key(&self, server: &ServerName, key_id: &str, at: u64) -> Result<Base64, KeyRingError> {
        let find = |keys: &[ServerKey]| keys.iter().find(|k| k.key_id == key_id && usable(k, at)).cloned();
        if let Some(key) = find(&self.known(server).await?) {
            return decode(server, &key);
        }
        let _guard = self.fetching.lock(server).await;
        // Someone may have fetched it while we waited.
        self.cache.lock().expect("key cache").remove(server);
        if let Some(key) = find(&self.known(server).await?) {
            return decode(server, &key);
        }
        let reason = self
            .fetch(server)
            .await
            .err()
            .unwrap_or_else(|| "not offered by the server".to_owned());
        match find(&self.known(server).await?) {
            Some(key) => decode(server, &key),
            None => Err(KeyRingError::Unavailable {
                server: server.to_owned(),
                key_id: key_id.to_owned(),
                reason,
            }),
        }
    }

    /// A key map for `server` with the keys usable at `at`, for ruma's
    /// verification functions.
    pub async fn key_map(&self, server: &ServerName, key_ids: &[&str], at: u64) -> Result<PublicKeyMap, KeyRingError> {
        let mut set = PublicKeySet::new();
        let mut last_error = None;
        for key_id in key_ids {
            match self.key(server, key_id, at).await {
                Ok(key) => {
                    set.insert((*key_id).to_owned(), key);
                }
                Err(e) => last_error = Some(e),
            }
        }
        if set.is_empty()
            && let Some(error) = last_error
        {
            return Err(error);
        }
        Ok(PublicKeyMap::from([(server.to_string(), set)]))
    }

    /// Fetches keys of `server`: directly, then through each notary.
    async fn fetch(&self, server: &ServerName) -> Result<(), String> {
        let mut errors = Vec::new();
        match self.fetcher.server_keys(server).await {
            Ok(doc) => match self.accept_document(server, &doc, None).await {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(e.to_string()),
            },
            Err(e) => errors.push(format!("{server}: {e}")),
        }
        for notary in &self.notaries {
            match self.fetcher.notary_query(notary, server).await {
                Ok(docs) => {
                    for doc in docs {
                        match self.accept_document(server, &doc, Some(notary)).await {
                            Ok(()) => return Ok(()),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                }
                Err(e) => errors.push(format!("notary {notary}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// Checks a key document (self-signed by `server`, and signed by
    /// `notary` when it came through one) and stores its keys.
    pub async fn accept_document(
        &self,
        server: &ServerName,
        doc: &CanonicalJsonObject,
        notary: Option<&ServerName>,
    ) -> Result<(), KeyRingError> {
        let parsed = parse_document(server, doc)?;
        let mut map = PublicKeyMap::new();
        map.insert(server.to_string(), parsed.verify_set());
        let mut to_check = doc.clone();
        if let Some(notary) = notary
            && notary != server
        {
            let key_ids: Vec<String> = match doc.get("signatures") {
                Some(CanonicalJsonValue::Object(s)) => match s.get(notary.as_str()) {
                    Some(CanonicalJsonValue::Object(by_notary)) => by_notary.keys().cloned().collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            if key_ids.is_empty() {
                return Err(invalid(server, &format!("not signed by the notary {notary}")));
            }
            let ids: Vec<&str> = key_ids.iter().map(String::as_str).collect();
            map.extend(Box::pin(self.key_map(notary, &ids, now_ms())).await?);
        }
        // Only the signatures we vouch for are checked; others are dropped.
        if let Some(CanonicalJsonValue::Object(signatures)) = to_check.get_mut("signatures") {
            signatures.retain(|entity, _| map.contains_key(entity));
            if !signatures.contains_key(server.as_str()) {
                return Err(invalid(server, "not signed by the server itself"));
            }
        } else {
            return Err(invalid(server, "no signatures"));
        }
        ruma::signatures::verify_json(&map, &to_check).map_err(|e| invalid(server, &e.to_string()))?;
        let json = serde_json::to_string(doc).map_err(|e| invalid(server, &e.to_string()))?;
        self.storage
            .store_server_keys(server, &parsed.keys, Some((&json, parsed.valid_until_ts)))
            .await?;
        self.cache.lock().expect("key cache").remove(server);
        tracing::debug!(%server, keys = parsed.keys.len(), "stored server keys");
        Ok(())
    }

    /// Key documents of `server` holding `key_ids` (any, if empty) valid
    /// until `minimum_valid_until`, fetched anew if the stored ones are not;
    /// for serving as a notary. What is stored is served even if stale
    /// (an expired key is better than none to a server verifying old events).
    pub async fn documents_for_notary(
        &self,
        server: &ServerName,
        key_ids: &[String],
        minimum_valid_until: u64,
    ) -> Result<Vec<CanonicalJsonObject>, KeyRingError> {
        if server == self.own.server_name() {
            return Ok(vec![self.own.server_key_document(MilliSecondsSinceUnixEpoch::now())]);
        }
        let stored = self.storage.server_key_documents(server, key_ids).await?;
        let fresh = |docs: &[(String, String, u64)]| {
            let valid = |id: Option<&String>| {
                docs.iter()
                    .any(|(key_id, _, until)| id.is_none_or(|id| id == key_id) && *until >= minimum_valid_until)
            };
            if key_ids.is_empty() {
                valid(None)
            } else {
                key_ids.iter().all(|id| valid(Some(id)))
            }
        };
        if !fresh(&stored) {
            let _guard = self.fetching.lock(server).await;
            if let Err(e) = self.fetch(server).await {
                tracing::debug!(%server, error = %e, "notary fetch failed; serving what is stored");
            }
        }
        let mut documents: Vec<String> = self
            .storage
            .server_key_documents(server, key_ids)
            .await?
            .into_iter()
            .map(|(_, json, _)| json)
            .collect();
        documents.sort();
        documents.dedup();
        Ok(documents
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect())
    }
}

struct ParsedDocument {
    keys: Vec<ServerKey>,
    valid_until_ts: u64,
}

impl ParsedDocument {
    fn verify_set(&self) -> PublicKeySet {
        self.keys
            .iter()
            .filter(|k| k.expired_ts.is_none())
            .filter_map(|k| Some((k.key_id.clone(), Base64::parse(&k.public_key).ok()?)))
            .collect::<BTreeMap<_, _>>()
    }
}

fn invalid(server: &ServerName, reason: &str) -> KeyRingError {
    KeyRingError::InvalidDocument {
        server: server.to_owned(),
        reason: reason.to_owned(),
    }
}

fn decode(server: &ServerName, key: &ServerKey) -> Result<Base64, KeyRingError> {
    Base64::parse(&key.public_key).map_err(|e| invalid(server, &format!("key {}: {e}", key.key_id)))
}

fn parse_document(server: &ServerName, doc: &CanonicalJsonObject) -> Result<ParsedDocument, KeyRingError> {
    match doc.get("server_name") {
        Some(CanonicalJsonValue::String(name)) if name == server.as_str() => {}
        _ => return Err(invalid(server, "server_name does not match")),
    }
    let valid_until_ts = match doc.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or_default(),
        _ => return Err(invalid(server, "missing valid_until_ts")),
    };
    let mut keys = Vec::new();
    for (field, old) in [("verify_keys", false), ("old_verify_keys", true)] {
        let Some(CanonicalJsonValue::Object(map)) = doc.get(field) else {
            if old {
                continue;
            }
            return Err(invalid(server, "missing verify_keys"));
        };
        for (key_id, entry) in map {
            let CanonicalJsonValue::Object(entry) = entry else {
                return Err(invalid(server, &format!("{field}.{key_id} is not an object")));
            };
            let Some(CanonicalJsonValue::String(key)) = entry.get("key") else {
                return Err(invalid(server, &format!("{field}.{key_id} has no key")));
            };
            Base64::<ruma::serde::base64::Standard>::parse(key)
                .map_err(|e| invalid(server, &format!("{field}.{key_id}: {e}")))?;
            let expired_ts = if old {
                match entry.get("expired_ts") {
                    Some(CanonicalJsonValue::Integer(ts)) => Some(u64::try_from(i64::from(*ts)).unwrap_or_default()),
                    _ => return Err(invalid(server, &format!("old key {key_id} has no expired_ts"))),
                }
            } else {
                None
            };
            keys.push(ServerKey {
                key_id: key_id.clone(),
                public_key: key.clone(),
                valid_until_ts,
                expired_ts,
            });
        }
    }
    Ok(ParsedDocument { keys, valid_until_ts })
}
