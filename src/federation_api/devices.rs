//! Devices and end-to-end keys for other servers: `/user/devices/{userId}`
//! (a local user's device list, with the stream ID its updates continue
//! from), `/user/keys/query`, `/user/keys/claim`; and the EDUs that carry
//! device lists, cross-signing keys and to-device messages in.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedDeviceId, UInt,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
};
use serde_json::Value;

use super::extract::Fed;
use crate::{
    client_api::{claim_local, receive_direct_to_device},
    devices,
    e2e_keys::{self, KeyQueryResult, raw},
    error::MatrixError,
    services::Services,
    storage::e2e::{MASTER, SELF_SIGNING},
};

pub async fn user_devices(
    svc: Arc<Services>,
    req: Fed<get_devices::v1::Request>,
) -> Result<get_devices::v1::Response, MatrixError> {
    let user_id = &req.body.user_id;
    if user_id.server_name() != svc.server_name() {
        return Err(MatrixError::not_found("Not a user of this server"));
    }
    let stream_id = svc.storage.last_device_change(user_id, i64::MAX).await?.unwrap_or(0);
    let mut response = get_devices::v1::Response::new(user_id.clone(), UInt::new_saturating(stream_id.max(0) as u64));
    for record in svc.storage.local_device_keys(user_id).await? {
        let keys: Value = record
            .keys
            .as_deref()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        let Some(keys) = raw(&keys) else { continue };
        let mut device = get_devices::v1::UserDevice::new(record.device_id, keys);
        device.device_display_name = record.display_name;
        response.devices.push(device);
    }
    for (kind, json) in svc.storage.cross_signing_keys(user_id).await? {
        let Some(key) = serde_json::from_str::<Value>(&json).ok().as_ref().and_then(raw) else {
            continue;
        };
        match kind.as_str() {
            MASTER => response.master_key = Some(key),
            SELF_SIGNING => response.self_signing_key = Some(key),
            _ => {}
        }
    }
    Ok(response)
}

pub async fn query_keys(
    svc: Arc<Services>,
    req: Fed<get_keys::v1::Request>,
) -> Result<get_keys::v1::Response, MatrixError> {
    let mut result = KeyQueryResult::default();
    for (user_id, devices) in &req.body.device_keys {
        if user_id.server_name() != svc.server_name() {
            continue;
        }
        e2e_keys::query_local(&svc, None, user_id, devices, &mut result).await?;
    }
    let mut response = get_keys::v1::Response::new(result.device_keys);
    response.master_keys = result.master_keys;
    response.self_signing_keys = result.self_signing_keys;
    Ok(response)
}

pub async fn claim_keys(
    svc: Arc<Services>,
    req: Fed<claim_keys::v1::Request>,
) -> Result<claim_keys::v1::Response, MatrixError> {
    let claims: BTreeMap<_, BTreeMap<OwnedDeviceId, _>> = req
        .body
        .one_time_keys
        .into_iter()
        .filter(|(user_id, _)| user_id.server_name() == svc.server_name())
        .collect();
    Ok(claim_keys::v1::Response::new(claim_local(&svc, &claims).await?))
}

/// The EDUs of end-to-end encryption; false for any other type.
pub async fn receive_edu(svc: &Arc<Services>, origin: &ruma::ServerName, edu: &Value) -> Result<bool, MatrixError> {
    let content = &edu["content"];
    match edu["edu_type"].as_str().unwrap_or_default() {
        "m.device_list_update" => devices::receive_device_list_update(svc, origin, content).await?,
        "m.signing_key_update" => devices::receive_signing_key_update(svc, origin, content).await?,
        "m.direct_to_device" => receive_direct_to_device(svc, origin, content).await?,
        _ => return Ok(false),
    }
    Ok(true)
}
