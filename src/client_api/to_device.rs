//! `PUT /sendToDevice/{eventType}/{txnId}`: messages to devices, local
//! ones queued here, other servers' sent as `m.direct_to_device` EDUs.
//! A transaction ID seen before (from the same device) sends nothing.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, UserId, api::client::to_device::send_event_to_device,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::{Value, json};

use super::extract::Ruma;
use crate::{
    devices::E2eChange,
    error::MatrixError,
    services::Services,
    storage::{StorageError, e2e::ToDeviceDelivery},
};

/// Local deliveries of a message addressed to `target` (one device, or
/// `*`: all of the user's devices).
pub async fn local_deliveries(
    svc: &Services,
    user_id: &UserId,
    target: &DeviceIdOrAllDevices,
    content: &str,
    out: &mut Vec<ToDeviceDelivery>,
) -> Result<(), StorageError> {
    let devices: Vec<OwnedDeviceId> = match target {
        DeviceIdOrAllDevices::AllDevices => svc
            .storage
            .devices(user_id)
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect(),
        DeviceIdOrAllDevices::DeviceId(device_id) => vec![device_id.clone()],
    };
    for device_id in devices {
        if !out.iter().any(|d| d.user_id == user_id && d.device_id == device_id) {
            out.push(ToDeviceDelivery {
                user_id: user_id.to_owned(),
                device_id,
                content: content.to_owned(),
            });
        }
    }
    Ok(())
}

pub async fn send_to_device(
    svc: Arc<Services>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<send_event_to_device::v3::Response, MatrixError> {
    let owner = req.user().clone();
    let event_type = req.body.event_type.to_string();
    let mut local = Vec::new();
    let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, BTreeMap<String, Value>>> = BTreeMap::new();
    for (user_id, targets) in &req.body.messages {
        for (target, content) in targets {
            let content_json = content.json().get();
            if !content_json.trim_start().starts_with('{') {
                return Err(MatrixError::bad_json("A to-device message's content must be an object"));
            }
            if user_id.server_name() == svc.server_name() {
                local_deliveries(&svc, user_id, target, content_json, &mut local).await?;
            } else {
                let content: Value =
                    serde_json::from_str(content_json).map_err(|e| MatrixError::bad_json(e.to_string()))?;
                remote
                    .entry(user_id.server_name().to_owned())
                    .or_default()
                    .entry(user_id.clone())
                    .or_default()
                    .insert(target.to_string(), content);
            }
        }
    }
    let txn = (owner.device_id.to_string(), format!("{event_type}/{}", req.body.txn_id));
    let recipients = recipients(&local);
    let Some(position) = svc
        .storage
        .queue_to_device(&owner.user_id, &event_type, Some(txn), local)
        .await?
    else {
        // A retry: sent the first time.
        return Ok(send_event_to_device::v3::Response::new());
    };
    svc.e2e.changed(position, &E2eChange::ToDevice(recipients)).await?;
    for (server, messages) in remote {
        let edu = json!({
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": owner.user_id,
                "type": event_type,
                "message_id": format!("{}-{}-{position}", owner.device_id, req.body.txn_id),
                "messages": messages,
            }
        });
        svc.sender.send_edu_to(std::slice::from_ref(&server), edu);
    }
    Ok(send_event_to_device::v3::Response::new())
}

/// An `m.direct_to_device` EDU from `origin`: messages from one of its
/// users to local devices (delivered once per message ID).
pub async fn receive_direct_to_device(
    svc: &Services,
    origin: &ruma::ServerName,
    content: &Value,
) -> Result<(), StorageError> {
    let Some(sender) = content["sender"].as_str().and_then(|s| UserId::parse(s).ok()) else {
        return Ok(());
    };
    let (Some(event_type), Some(message_id), Some(messages)) = (
        content["type"].as_str(),
        content["message_id"].as_str(),
        content["messages"].as_object(),
    ) else {
        return Ok(());
    };
    if sender.server_name() != origin {
        tracing::info!(%origin, %sender, "to-device messages for another server's user dropped");
        return Ok(());
    }
    let mut deliveries = Vec::new();
    for (user_id, targets) in messages {
        let Ok(user_id) = UserId::parse(user_id) else { continue };
        if user_id.server_name() != svc.server_name() {
            continue;
        }
        for (target, content) in targets.as_object().into_iter().flatten() {
            if !content.is_object() {
                continue;
            }
            let Ok(target) = DeviceIdOrAllDevices::try_from(target.as_str()) else {
                continue;
            };
            local_deliveries(svc, &user_id, &target, &content.to_string(), &mut deliveries).await?;
        }
    }
    let txn = (format!("federation:{origin}"), message_id.to_owned());
    let recipients = recipients(&deliveries);
    if let Some(position) = svc
        .storage
        .queue_to_device(&sender, event_type, Some(txn), deliveries)
        .await?
    {
        svc.e2e.changed(position, &E2eChange::ToDevice(recipients)).await?;
    }
    Ok(())
}

/// The users messages go to, each once.
fn recipients(deliveries: &[ToDeviceDelivery]) -> Vec<OwnedUserId> {
    let mut users: Vec<OwnedUserId> = deliveries.iter().map(|d| d.user_id.clone()).collect();
    users.sort();
    users.dedup();
    users
}
