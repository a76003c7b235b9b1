//! Device management (`/devices`, `/delete_devices`) and account
//! deactivation, with user-interactive auth by password where the spec
//! asks for it.

use std::sync::Arc;

use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::{
        account::{ThirdPartyIdRemovalStatus, deactivate},
        device::{self, delete_device, delete_devices, get_device, get_devices, update_device},
        uiaa::{AuthData, UserIdentifier},
    },
};
use serde_json::json;

use super::extract::Ruma;
use crate::{
    accounts::{self, AccountError},
    devices,
    error::{ErrCode, MatrixError},
    services::Services,
    storage::{Device, TokenOwner},
};

/// A device as the API shows it, with where it was last seen from (the
/// latest request noted in memory, else what storage has).
fn to_ruma(svc: &Services, user_id: &ruma::UserId, device: Device) -> device::Device {
    let (ip, ts) = match svc.connections.last(user_id, &device.device_id) {
        Some(seen) => (Some(seen.ip), Some(seen.ts)),
        None => (device.last_seen_ip, device.last_seen_ts),
    };
    let mut out = device::Device::new(device.device_id);
    out.display_name = device.display_name;
    out.last_seen_ip = ip;
    out.last_seen_ts = ts.and_then(|t| UInt::try_from(t).ok()).map(MilliSecondsSinceUnixEpoch);
    out
}

/// A user-interactive-auth answer (HTTP 401): the password stage, the
/// session (bound to `operation` by `owner`), and `error` when an attempt
/// failed.
fn uia_challenge(svc: &Services, owner: &TokenOwner, operation: &str, error: Option<(ErrCode, &str)>) -> MatrixError {
    let session = svc.auth_sessions.start(&owner.user_id, operation);
    let mut challenge = MatrixError::new(ErrCode::Unauthorized, "Authentication required")
        .with_field("flows", json!([{ "stages": ["m.login.password"] }]))
        .with_field("params", json!({}))
        .with_field("completed", json!([]))
        .with_field("session", json!(session));
    if let Some((code, message)) = error {
        challenge = challenge
            .with_field("errcode", json!(code.as_str()))
            .with_field("error", json!(message));
    }
    challenge
}

/// User-interactive auth by password of the user the token belongs to,
/// for `operation` (a description of what is being approved: a session
/// started for one operation does not approve another). Someone else's
/// credentials (a stolen token used with the thief's own password) are
/// refused with 403.
pub async fn require_password(
    svc: &Services,
    owner: &TokenOwner,
    operation: &str,
    auth: Option<&AuthData>,
) -> Result<(), MatrixError> {
    let Some(AuthData::Password(password)) = auth else {
        return Err(uia_challenge(svc, owner, operation, None));
    };
    if let Some(session) = password.session.as_deref()
        && !svc.auth_sessions.allows(session, &owner.user_id, operation)
    {
        return Err(MatrixError::forbidden(
            "This authentication session was started for another operation",
        ));
    }
    let user_id = match &password.identifier {
        UserIdentifier::Matrix(id) => {
            ruma::UserId::parse_with_server_name(id.user.to_lowercase().as_str(), svc.server_name())
                .map_err(|_| MatrixError::forbidden("Invalid user identifier"))?
        }
        _ => return Err(MatrixError::forbidden("Only user ID identifiers are supported")),
    };
    if user_id != owner.user_id {
        return Err(MatrixError::forbidden("Authenticated as another user"));
    }
    match accounts::check_password(&*svc.storage, &user_id, &password.password).await {
        Ok(()) => Ok(()),
        Err(AccountError::BadCredentials) => Err(uia_challenge(
            svc,
            owner,
            operation,
            Some((ErrCode::Forbidden, "Invalid password")),
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn get_devices(
    svc: Arc<Services>,
    req: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response, MatrixError> {
    let user_id = &req.user().user_id;
    let devices = svc.storage.devices(user_id).await?;
    Ok(get_devices::v3::Response::new(
        devices.into_iter().map(|d| to_ruma(&svc, user_id, d)).collect(),
    ))
}

pub async fn get_device(
    svc: Arc<Services>,
    req: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response, MatrixError> {
    let device = svc
        .storage
        .device(&req.user().user_id, &req.body.device_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("No such device"))?;
    Ok(get_device::v3::Response::new(to_ruma(
        &svc,
        &req.user().user_id,
        device,
    )))
}

pub async fn update_device(
    svc: Arc<Services>,
    req: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response, MatrixError> {
    let user_id = &req.user().user_id;
    let device_id = &req.body.device_id;
    let Some(name) = &req.body.display_name else {
        // Nothing to change; the device must exist all the same.
        svc.storage
            .device(user_id, device_id)
            .await?
            .ok_or_else(|| MatrixError::not_found("No such device"))?;
        return Ok(update_device::v3::Response::new());
    };
    if name.len() > 100 {
        return Err(MatrixError::invalid_param("Device display name too long"));
    }
    let position = svc
        .storage
        .rename_device(user_id, device_id, Some(name))
        .await?
        .ok_or_else(|| MatrixError::not_found("No such device"))?;
    devices::device_changed(&svc, user_id, device_id, position, false).await?;
    Ok(update_device::v3::Response::new())
}

pub async fn delete_device(
    svc: Arc<Services>,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response, MatrixError> {
    let owner = req.user();
    if svc.storage.device(&owner.user_id, &req.body.device_id).await?.is_none() {
        return Err(MatrixError::not_found("No such device"));
    }
    let operation = format!("delete device {}", req.body.device_id);
    require_password(&svc, owner, &operation, req.body.auth.as_ref()).await?;
    devices::delete_devices(&svc, &owner.user_id, std::slice::from_ref(&req.body.device_id)).await?;
    Ok(delete_device::v3::Response::new())
}

pub async fn delete_devices(
    svc: Arc<Services>,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response, MatrixError> {
    let owner = req.user();
    let mut ids: Vec<&str> = req.body.devices.iter().map(|d| d.as_str()).collect();
    ids.sort_unstable();
    let operation = format!("delete devices {}", ids.join(" "));
    require_password(&svc, owner, &operation, req.body.auth.as_ref()).await?;
    devices::delete_devices(&svc, &owner.user_id, &req.body.devices).await?;
    Ok(delete_devices::v3::Response::new())
}

/// `POST /account/deactivate`: the account can no longer log in; its
/// devices, access tokens and keys are gone. An application service
/// deactivates one of its users with the `user_id` query parameter.
pub async fn deactivate(
    svc: Arc<Services>,
    req: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response, MatrixError> {
    let Some(owner) = req.owner.as_ref() else {
        return Err(MatrixError::new(ErrCode::MissingToken, "Missing access token"));
    };
    // An application service deactivates the users of its namespaces
    // without user-interactive auth (it holds no password of theirs).
    if req.appservice.is_none() {
        require_password(&svc, owner, "deactivate", req.body.auth.as_ref()).await?;
    }
    for (device_id, position) in svc.storage.deactivate_user(&owner.user_id).await? {
        devices::device_changed(&svc, &owner.user_id, &device_id, position, true).await?;
    }
    if req.body.erase {
        // Their events are served redacted from now on to those who could
        // not see them when sent (see visibility.rs).
        svc.storage.erase_user(&owner.user_id).await?;
    }
    tracing::info!(user_id = %owner.user_id, erase = req.body.erase, "account deactivated");
    // After the deactivation: an identity server that cannot be reached
    // must not keep the account alive.
    let unbound = match crate::threepid::unbind_all(&svc, &owner.user_id, req.body.id_server.as_deref()).await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(user_id = %owner.user_id, error = %e.body(), "3PIDs not unbound at deactivation");
            ThirdPartyIdRemovalStatus::NoSupport
        }
    };
    Ok(deactivate::v3::Response::new(unbound))
}
