//! End-to-end keys as other parties ask for them: the answer to a key
//! query or claim for local users (shared by `/keys/query` and the
//! federation's `/user/keys/query`), and checks of the ed25519 signatures
//! that cross-signing keys carry.

use std::collections::BTreeMap;

use ruma::{
    OwnedDeviceId, OwnedUserId, UserId,
    encryption::{CrossSigningKey, DeviceKeys},
    serde::{Base64, Raw, base64::Standard},
};
use serde_json::{Value, json};

use crate::{
    services::Services,
    storage::{
        StorageError,
        e2e::{DeviceKeysRecord, MASTER, SELF_SIGNING, USER_SIGNING},
    },
};

/// The answer to a key query, as the client-server API shapes it (the
/// federation's is a part of it).
#[derive(Default)]
pub struct KeyQueryResult {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>>,
    pub master_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub user_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub failures: BTreeMap<String, Value>,
}

pub fn raw<T>(value: &Value) -> Option<Raw<T>> {
    serde_json::value::to_raw_value(value).ok().map(Raw::from_json)
}

/// The device keys of `devices` (all if empty) among `records`, with
/// `unsigned.device_display_name` where the device has a name.
pub fn device_keys_of(
    records: &[DeviceKeysRecord],
    devices: &[OwnedDeviceId],
) -> BTreeMap<OwnedDeviceId, Raw<DeviceKeys>> {
    let mut out = BTreeMap::new();
    for record in records {
        if !devices.is_empty() && !devices.contains(&record.device_id) {
            continue;
        }
        let Some(Value::Object(mut keys)) = record.keys.as_deref().and_then(|k| serde_json::from_str(k).ok()) else {
            continue;
        };
        let unsigned = keys.entry("unsigned").or_insert_with(|| json!({}));
        if let (Some(unsigned), Some(name)) = (unsigned.as_object_mut(), &record.display_name) {
            unsigned.insert("device_display_name".to_owned(), json!(name));
        }
        if let Some(keys) = raw(&Value::Object(keys)) {
            out.insert(record.device_id.clone(), keys);
        }
    }
    out
}

/// Adds the cross-signing keys of `user_id` held here to `result`: the
/// master and self-signing keys for everyone, the user-signing key for
/// its owner only, and the signatures `requester` made on the master key.
pub async fn add_cross_signing_keys(
    svc: &Services,
    requester: Option<&UserId>,
    user_id: &UserId,
    result: &mut KeyQueryResult,
) -> Result<(), StorageError> {
    for (kind, json) in svc.storage.cross_signing_keys(user_id).await? {
        let Ok(mut key) = serde_json::from_str::<Value>(&json) else {
            continue;
        };
        let target = match kind.as_str() {
            MASTER => {
                if let Some(requester) = requester.filter(|r| *r != user_id) {
                    for (_, key_id, signature) in svc.storage.cross_user_signatures(requester, user_id).await? {
                        if let Some(key) = key.as_object_mut() {
                            let signatures = key.entry("signatures").or_insert_with(|| json!({}));
                            signatures[requester.as_str()][key_id] = json!(signature);
                        }
                    }
                }
                &mut result.master_keys
            }
            SELF_SIGNING => &mut result.self_signing_keys,
            USER_SIGNING if requester == Some(user_id) => &mut result.user_signing_keys,
            _ => continue,
        };
        if let Some(key) = raw(&key) {
            target.insert(user_id.to_owned(), key);
        }
    }
    Ok(())
}

/// The keys of a local user for a query.
pub async fn query_local(
    svc: &Services,
    requester: Option<&UserId>,
    user_id: &UserId,
    devices: &[OwnedDeviceId],
    result: &mut KeyQueryResult,
) -> Result<(), StorageError> {
    let records = svc.storage.local_device_keys(user_id).await?;
    result
        .device_keys
        .insert(user_id.to_owned(), device_keys_of(&records, devices));
    add_cross_signing_keys(svc, requester, user_id, result).await
}

/// The single ed25519 public key of a cross-signing key, `(key ID, key)`.
pub fn cross_signing_public_key(key: &Value) -> Option<(String, String)> {
    let keys = key["keys"].as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, public) = keys.iter().next()?;
    id.starts_with("ed25519:")
        .then(|| (id.clone(), public.as_str().unwrap_or_default().to_owned()))
}

/// Whether `object` carries a valid signature of `signer` with the
/// ed25519 key `key_id` (`ed25519:…`) whose public half is `public_key`.
pub fn signed_by(object: &Value, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(signature) = object["signatures"][signer][key_id].as_str() else {
        return false;
    };
    let Ok(canonical) = serde_json::from_value::<ruma::CanonicalJsonObject>(object.clone()) else {
        return false;
    };
    let Ok(bytes) = ruma::signatures::to_canonical_json_string_for_signing(&canonical) else {
        return false;
    };
    let (Ok(signature), Ok(public_key)) = (
        Base64::<Standard>::parse(signature),
        Base64::<Standard>::parse(public_key),
    ) else {
        return false;
    };
    ruma::signatures::verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        bytes.as_bytes(),
    )
    .is_ok()
}

/// `object` without `signatures` and `unsigned`: what a signature covers.
pub fn signed_part(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    object
}

/// Adds `from`'s signatures of `signer` to `into`.
pub fn merge_signatures(into: &mut Value, from: &Value, signer: &str) {
    let Some(new) = from["signatures"][signer].as_object() else {
        return;
    };
    let Some(into) = into.as_object_mut() else {
        return;
    };
    let signatures = into.entry("signatures").or_insert_with(|| json!({}));
    if !signatures.is_object() {
        *signatures = json!({});
    }
    let entry = signatures
        .as_object_mut()
        .map(|s| s.entry(signer.to_owned()).or_insert_with(|| json!({})));
    if let Some(Value::Object(entry)) = entry {
        for (key_id, signature) in new {
            entry.insert(key_id.clone(), signature.clone());
        }
    }
}
