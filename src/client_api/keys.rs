//! End-to-end encryption keys: `/keys/upload`, `/keys/query`,
//! `/keys/claim`, `/keys/changes`, and cross-signing
//! (`/keys/device_signing/upload`, `/keys/signatures/upload`). Keys of
//! other servers' users come from the device list cache while they share a
//! room with a local user ([`crate::devices`]), else from their server.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use axum::response::IntoResponse;
use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedServerName, OwnedUserId, UInt,
    api::{
        client::keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
        federation::keys::{claim_keys as fed_claim, get_keys as fed_get_keys},
    },
    encryption::DeviceKeys,
    serde::Raw,
};
use serde_json::{Value, json};

use super::{devices::require_password, e2e_sync, extract::Ruma};
use crate::{
    devices,
    e2e_keys::{self, KeyQueryResult},
    error::{ErrCode, MatrixError},
    services::Services,
    storage::{
        StorageError,
        e2e::{MASTER, OneTimeKeyRecord, SELF_SIGNING, USER_SIGNING},
    },
};

/// How long a query or claim waits for other servers by default.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

fn key_records(
    keys: &BTreeMap<ruma::OwnedOneTimeKeyId, Raw<ruma::encryption::OneTimeKey>>,
) -> Result<Vec<OneTimeKeyRecord>, MatrixError> {
    keys.iter()
        .map(|(id, key)| {
            serde_json::from_str::<Value>(key.json().get())
                .map_err(|e| MatrixError::bad_json(format!("Key {id}: {e}")))?;
            Ok(OneTimeKeyRecord {
                algorithm: id.algorithm().to_string(),
                key_id: id.key_name().to_string(),
                json: key.json().get().to_owned(),
            })
        })
        .collect()
}

pub async fn upload_keys(
    svc: Arc<Services>,
    req: Ruma<upload_keys::v3::Request>,
) -> Result<upload_keys::v3::Response, MatrixError> {
    let owner = req.user().clone();
    let body = req.body;
    if let Some(device_keys) = &body.device_keys {
        let parsed: DeviceKeys = device_keys
            .deserialize()
            .map_err(|e| MatrixError::bad_json(format!("Invalid device keys: {e}")))?;
        if parsed.user_id != owner.user_id || parsed.device_id != owner.device_id {
            return Err(MatrixError::invalid_param(
                "The device keys are not those of this user and device",
            ));
        }
        let mut new: Value =
            serde_json::from_str(device_keys.json().get()).map_err(|e| MatrixError::bad_json(e.to_string()))?;
        if let Some(map) = new.as_object_mut() {
            map.remove("unsigned");
        }
        // The same keys again keep the signatures added to them since.
        let held = svc
            .storage
            .local_device_keys(&owner.user_id)
            .await?
            .into_iter()
            .find(|d| d.device_id == owner.device_id)
            .and_then(|d| d.keys)
            .and_then(|k| serde_json::from_str::<Value>(&k).ok());
        if let Some(held) = held.filter(|held| e2e_keys::signed_part(held) == e2e_keys::signed_part(&new)) {
            let mut merged = held.clone();
            if let Some(signers) = new["signatures"].as_object() {
                for signer in signers.keys() {
                    e2e_keys::merge_signatures(&mut merged, &new, signer);
                }
            }
            new = merged;
        }
        if let Some(position) = svc
            .storage
            .set_device_keys(&owner.user_id, &owner.device_id, &new.to_string())
            .await?
        {
            devices::device_changed(&svc, &owner.user_id, &owner.device_id, position, false).await?;
        }
    }
    if !body.one_time_keys.is_empty() {
        let keys = key_records(&body.one_time_keys)?;
        match svc
            .storage
            .add_one_time_keys(&owner.user_id, &owner.device_id, keys)
            .await
        {
            Err(StorageError::AlreadyExists) => {
                return Err(MatrixError::invalid_param(
                    "A one-time key with this ID was uploaded before with other content",
                ));
            }
            other => other?,
        }
    }
    if !body.fallback_keys.is_empty() {
        let keys = key_records(&body.fallback_keys)?;
        svc.storage
            .set_fallback_keys(&owner.user_id, &owner.device_id, keys)
            .await?;
    }
    let counts = svc
        .storage
        .one_time_key_counts(&owner.user_id, &owner.device_id)
        .await?
        .into_iter()
        .map(|(algorithm, count)| (OneTimeKeyAlgorithm::from(algorithm), UInt::new_saturating(count)))
        .collect();
    Ok(upload_keys::v3::Response::new(counts))
}

fn remote_timeout(asked: Option<Duration>) -> Duration {
    asked.unwrap_or(DEFAULT_REMOTE_TIMEOUT).min(MAX_REMOTE_TIMEOUT)
}

fn failure(error: impl std::fmt::Display) -> Value {
    json!({ "status": 503, "message": error.to_string() })
}

/// Keys of users of other servers: from the cache where it can, else
/// asking their servers (at most `timeout` each, all at once).
async fn query_remote(
    svc: &Services,
    requester: &ruma::UserId,
    wanted: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    timeout: Duration,
    result: &mut KeyQueryResult,
) -> Result<(), MatrixError> {
    let mut ask: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>> = BTreeMap::new();
    for (user_id, devices) in wanted {
        match devices::remote_devices(svc, &user_id).await? {
            Some(records) => {
                result
                    .device_keys
                    .insert(user_id.clone(), e2e_keys::device_keys_of(&records, &devices));
                e2e_keys::add_cross_signing_keys(svc, Some(requester), &user_id, result).await?;
            }
            None => {
                ask.entry(user_id.server_name().to_owned())
                    .or_default()
                    .insert(user_id, devices);
            }
        }
    }
    let requests = ask.into_iter().map(|(server, users)| async move {
        let request = fed_get_keys::v1::Request::new(users);
        let answer = tokio::time::timeout(timeout, svc.federation.send(&server, request)).await;
        (server, answer)
    });
    for (server, answer) in futures_util::future::join_all(requests).await {
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                result.failures.insert(server.to_string(), failure(e));
                continue;
            }
            Err(_) => {
                result.failures.insert(server.to_string(), failure("timed out"));
                continue;
            }
        };
        // Only what the server may speak for: its own users.
        let own = |user: &OwnedUserId| user.server_name() == server;
        result
            .device_keys
            .extend(response.device_keys.into_iter().filter(|(u, _)| own(u)));
        result
            .master_keys
            .extend(response.master_keys.into_iter().filter(|(u, _)| own(u)));
        result
            .self_signing_keys
            .extend(response.self_signing_keys.into_iter().filter(|(u, _)| own(u)));
    }
    Ok(())
}

pub async fn get_keys(
    svc: Arc<Services>,
    req: Ruma<get_keys::v3::Request>,
) -> Result<get_keys::v3::Response, MatrixError> {
    let requester = req.user().user_id.clone();
    let mut result = KeyQueryResult::default();
    let mut remote = BTreeMap::new();
    for (user_id, devices) in req.body.device_keys {
        if user_id.server_name() == svc.server_name() {
            e2e_keys::query_local(&svc, Some(&requester), &user_id, &devices, &mut result).await?;
        } else {
            remote.insert(user_id, devices);
        }
    }
    if !remote.is_empty() {
        query_remote(&svc, &requester, remote, remote_timeout(req.body.timeout), &mut result).await?;
    }
    let mut response = get_keys::v3::Response::new();
    response.device_keys = result.device_keys;
    response.master_keys = result.master_keys;
    response.self_signing_keys = result.self_signing_keys;
    response.user_signing_keys = result.user_signing_keys;
    response.failures = result.failures;
    Ok(response)
}

/// Response middleware for `/keys/query` and `/keys/claim`: `failures` is
/// always there (ruma leaves it out when empty; clients look for it).
pub async fn with_failures(response: axum::response::Response) -> axum::response::Response {
    if response.status() != http::StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return MatrixError::unknown("response unreadable").into_response();
    };
    let bytes = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut map)) => {
            map.entry("failures").or_insert_with(|| json!({}));
            serde_json::to_vec(&map).map_or(bytes, Into::into)
        }
        _ => bytes,
    };
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Claims keys of local users: one per device asked for, when there is one.
pub async fn claim_local(
    svc: &Services,
    claims: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
) -> Result<BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys>, MatrixError> {
    let mut out: BTreeMap<OwnedUserId, claim_keys::v3::OneTimeKeys> = BTreeMap::new();
    for (user_id, devices) in claims {
        if user_id.server_name() != svc.server_name() {
            continue;
        }
        for (device_id, algorithm) in devices {
            let Some((key_id, json)) = svc.storage.claim_key(user_id, device_id, algorithm.as_str()).await? else {
                continue;
            };
            let Ok(id) = ruma::OwnedOneTimeKeyId::try_from(format!("{algorithm}:{key_id}")) else {
                continue;
            };
            let Ok(key) = serde_json::value::RawValue::from_string(json) else {
                continue;
            };
            out.entry(user_id.clone())
                .or_default()
                .entry(device_id.clone())
                .or_default()
                .insert(id, Raw::from_json(key));
        }
    }
    Ok(out)
}

pub async fn claim_keys(
    svc: Arc<Services>,
    req: Ruma<claim_keys::v3::Request>,
) -> Result<claim_keys::v3::Response, MatrixError> {
    let claims = req.body.one_time_keys;
    let mut keys = claim_local(&svc, &claims).await?;
    let mut ask: BTreeMap<OwnedServerName, fed_claim::v1::OneTimeKeyClaims> = BTreeMap::new();
    for (user_id, devices) in &claims {
        if user_id.server_name() != svc.server_name() {
            ask.entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user_id.clone(), devices.clone());
        }
    }
    let timeout = remote_timeout(req.body.timeout);
    let svc_ref = &svc;
    let requests = ask.into_iter().map(|(server, claims)| async move {
        let request = fed_claim::v1::Request::new(claims);
        let answer = tokio::time::timeout(timeout, svc_ref.federation.send(&server, request)).await;
        (server, answer)
    });
    let mut failures = BTreeMap::new();
    for (server, answer) in futures_util::future::join_all(requests).await {
        match answer {
            Ok(Ok(response)) => keys.extend(
                response
                    .one_time_keys
                    .into_iter()
                    .filter(|(u, _)| u.server_name() == server),
            ),
            Ok(Err(e)) => {
                failures.insert(server.to_string(), failure(e));
            }
            Err(_) => {
                failures.insert(server.to_string(), failure("timed out"));
            }
        }
    }
    let mut response = claim_keys::v3::Response::new(keys);
    response.failures = failures;
    Ok(response)
}

pub async fn key_changes(
    svc: Arc<Services>,
    req: Ruma<get_key_changes::v3::Request>,
) -> Result<get_key_changes::v3::Response, MatrixError> {
    let parse = |token: &str| {
        e2e_sync::parse_token(token).ok_or_else(|| MatrixError::invalid_param(format!("Invalid token {token:?}")))
    };
    let (from, to) = (parse(&req.body.from)?, parse(&req.body.to)?);
    let owner = req.user();
    let lists = e2e_sync::device_list_changes(&svc, &owner.user_id, from, to).await?;
    Ok(get_key_changes::v3::Response::new(lists.changed, lists.left))
}

/// A cross-signing key as uploaded: its JSON, checked to be the user's
/// and for `usage`.
fn cross_signing_key(
    key: &Option<Raw<ruma::encryption::CrossSigningKey>>,
    user_id: &ruma::UserId,
    usage: &str,
) -> Result<Option<Value>, MatrixError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(key.json().get()).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if value["user_id"].as_str() != Some(user_id.as_str()) {
        return Err(MatrixError::invalid_param(format!(
            "The {usage} key is not this user's"
        )));
    }
    if !value["usage"]
        .as_array()
        .is_some_and(|u| u.iter().any(|u| u.as_str() == Some(usage)))
    {
        return Err(MatrixError::invalid_param(format!("The {usage} key lacks its usage")));
    }
    if e2e_keys::cross_signing_public_key(&value).is_none() {
        return Err(MatrixError::invalid_param(format!(
            "The {usage} key must have exactly one ed25519 key"
        )));
    }
    Ok(Some(value))
}

pub async fn upload_signing_keys(
    svc: Arc<Services>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<upload_signing_keys::v3::Response, MatrixError> {
    let owner = req.user().clone();
    let user_id = &owner.user_id;
    let body = &req.body;
    let master = cross_signing_key(&body.master_key, user_id, "master")?;
    let self_signing = cross_signing_key(&body.self_signing_key, user_id, "self_signing")?;
    let user_signing = cross_signing_key(&body.user_signing_key, user_id, "user_signing")?;

    let held: BTreeMap<String, Value> = svc
        .storage
        .cross_signing_keys(user_id)
        .await?
        .into_iter()
        .filter_map(|(kind, json)| Some((kind, serde_json::from_str(&json).ok()?)))
        .collect();
    let uploads: Vec<(&str, &Value)> = [
        (MASTER, &master),
        (SELF_SIGNING, &self_signing),
        (USER_SIGNING, &user_signing),
    ]
    .into_iter()
    .filter_map(|(kind, key)| Some((kind, key.as_ref()?)))
    .collect();
    // Once cross-signing is set up, changing it takes the password (the
    // same keys again do not: a retried upload).
    let replay = uploads.iter().all(|(kind, key)| {
        held.get(*kind)
            .is_some_and(|h| e2e_keys::signed_part(h) == e2e_keys::signed_part(key))
    });
    if held.contains_key(MASTER) && !replay {
        require_password(&svc, &owner, "replace cross-signing keys", body.auth.as_ref()).await?;
    }
    let Some(master_key) = master.as_ref().or(held.get(MASTER)) else {
        if uploads.is_empty() {
            return Ok(upload_signing_keys::v3::Response::new());
        }
        return Err(MatrixError::invalid_param("A master key must be uploaded first"));
    };
    let (master_id, master_public) =
        e2e_keys::cross_signing_public_key(master_key).ok_or_else(|| MatrixError::invalid_param("Bad master key"))?;
    for (kind, key) in [(SELF_SIGNING, &self_signing), (USER_SIGNING, &user_signing)] {
        if let Some(key) = key
            && !e2e_keys::signed_by(key, user_id.as_str(), &master_id, &master_public)
        {
            return Err(MatrixError::new(
                ErrCode::InvalidParam,
                format!("The {kind} key is not signed by the master key"),
            )
            .with_field("errcode", json!("M_INVALID_SIGNATURE")));
        }
    }
    if uploads.is_empty() || replay {
        return Ok(upload_signing_keys::v3::Response::new());
    }
    let keys = uploads
        .iter()
        .map(|(kind, key)| ((*kind).to_owned(), key.to_string()))
        .collect();
    let position = svc.storage.set_cross_signing_keys(user_id, keys).await?;
    devices::signing_keys_changed(&svc, user_id, position).await?;
    Ok(upload_signing_keys::v3::Response::new())
}

fn signature_failure(message: &str) -> upload_signatures::v3::Failure {
    serde_json::from_value(json!({ "errcode": "M_INVALID_SIGNATURE", "error": message }))
        .expect("a failure deserialises")
}

/// Applies one uploaded signed object; `Err` is the failure to report.
async fn apply_signature(
    svc: &Services,
    signer: &ruma::UserId,
    target: &ruma::UserId,
    key_id: &str,
    signed: &Value,
) -> Result<(), String> {
    let keys: BTreeMap<String, Value> = svc
        .storage
        .cross_signing_keys(signer)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|(kind, json)| Some((kind, serde_json::from_str(&json).ok()?)))
        .collect();
    let signer_key = |kind: &str| {
        keys.get(kind)
            .and_then(e2e_keys::cross_signing_public_key)
            .ok_or_else(|| format!("no {kind} key to check the signature with"))
    };
    if target == signer {
        let master = keys.get(MASTER).and_then(e2e_keys::cross_signing_public_key);
        if let Some((_, master_public)) = master.as_ref().filter(|(_, public)| public == key_id) {
            // The user's master key, signed by one of their devices.
            let held = keys.get(MASTER).cloned().unwrap_or_default();
            if e2e_keys::signed_part(&held) != e2e_keys::signed_part(signed) {
                return Err("the signed master key is not the one held".to_owned());
            }
            let devices = svc.storage.local_device_keys(signer).await.map_err(|e| e.to_string())?;
            let mut merged = held;
            let mut any = false;
            for (sig_key_id, _) in signed["signatures"][signer.as_str()].as_object().into_iter().flatten() {
                let Some(device_id) = sig_key_id.strip_prefix("ed25519:") else {
                    continue;
                };
                if device_id == master_public {
                    continue;
                }
                let device_key = devices
                    .iter()
                    .find(|d| d.device_id.as_str() == device_id)
                    .and_then(|d| d.keys.as_deref())
                    .and_then(|k| serde_json::from_str::<Value>(k).ok())
                    .and_then(|k| k["keys"][sig_key_id].as_str().map(str::to_owned));
                let Some(public) = device_key else {
                    return Err(format!("unknown device {device_id}"));
                };
                if !e2e_keys::signed_by(signed, signer.as_str(), sig_key_id, &public) {
                    return Err("invalid signature".to_owned());
                }
                any = true;
            }
            if !any {
                return Err("no device signature".to_owned());
            }
            e2e_keys::merge_signatures(&mut merged, signed, signer.as_str());
            let position = svc
                .storage
                .set_cross_signing_keys(signer, vec![(MASTER.to_owned(), merged.to_string())])
                .await
                .map_err(|e| e.to_string())?;
            devices::signing_keys_changed(svc, signer, position)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        // One of the user's devices, signed by their self-signing key.
        let device_id = OwnedDeviceId::from(key_id);
        let held = svc
            .storage
            .local_device_keys(signer)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|d| d.device_id == device_id)
            .and_then(|d| d.keys)
            .and_then(|k| serde_json::from_str::<Value>(&k).ok())
            .ok_or_else(|| format!("unknown device or key {key_id}"))?;
        if e2e_keys::signed_part(&held) != e2e_keys::signed_part(signed) {
            return Err("the signed device keys are not those held".to_owned());
        }
        let (ssk_id, ssk_public) = signer_key(SELF_SIGNING)?;
        if !e2e_keys::signed_by(signed, signer.as_str(), &ssk_id, &ssk_public) {
            return Err("invalid signature".to_owned());
        }
        let mut merged = held;
        e2e_keys::merge_signatures(&mut merged, signed, signer.as_str());
        let position = svc
            .storage
            .replace_device_keys_json(signer, &device_id, &merged.to_string())
            .await
            .map_err(|e| e.to_string())?;
        devices::device_changed(svc, signer, &device_id, position, false)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    // Another user's master key, signed by the signer's user-signing key.
    let target_master = svc
        .storage
        .cross_signing_keys(target)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|(kind, _)| kind == MASTER)
        .and_then(|(_, json)| serde_json::from_str::<Value>(&json).ok())
        .ok_or_else(|| format!("{target} has no master key here"))?;
    match e2e_keys::cross_signing_public_key(&target_master) {
        Some((_, public)) if public == key_id => {}
        _ => return Err(format!("{key_id} is not {target}'s master key")),
    }
    if e2e_keys::signed_part(&target_master) != e2e_keys::signed_part(signed) {
        return Err("the signed master key is not the one held".to_owned());
    }
    let (usk_id, usk_public) = signer_key(USER_SIGNING)?;
    if !e2e_keys::signed_by(signed, signer.as_str(), &usk_id, &usk_public) {
        return Err("invalid signature".to_owned());
    }
    let signature = signed["signatures"][signer.as_str()][&usk_id]
        .as_str()
        .unwrap_or_default();
    let position = svc
        .storage
        .add_cross_user_signature(signer, target, key_id, &usk_id, signature)
        .await
        .map_err(|e| e.to_string())?;
    let change = crate::devices::E2eChange::Keys {
        user_id: target.to_owned(),
        visible_to: Some(signer.to_owned()),
    };
    svc.e2e.changed(position, &change).await.map_err(|e| e.to_string())?;
    Ok(())
}

pub async fn upload_signatures(
    svc: Arc<Services>,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<upload_signatures::v3::Response, MatrixError> {
    let signer = req.user().user_id.clone();
    let mut response = upload_signatures::v3::Response::new();
    let mut seen = HashSet::new();
    for (target, keys) in &req.body.signed_keys {
        let Ok(keys) = serde_json::to_value(keys) else {
            continue;
        };
        for (key_id, signed) in keys.as_object().into_iter().flatten() {
            if !seen.insert((target.clone(), key_id.clone())) {
                continue;
            }
            if let Err(error) = apply_signature(&svc, &signer, target, key_id, signed).await {
                tracing::debug!(%signer, %target, %key_id, %error, "signature refused");
                response
                    .failures
                    .entry(target.clone())
                    .or_default()
                    .insert(key_id.clone(), signature_failure(&error));
            }
        }
    }
    Ok(response)
}
