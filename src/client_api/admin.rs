//! Server administration: `GET /admin/whois/{userId}` (the spec's), and
//! Synapse-compatible shared-secret registration,
//! `/_synapse/admin/v1/register`: `GET` hands out a single-use nonce;
//! `POST {nonce, username, password, admin, mac}` creates the account,
//! where `mac` is the hex HMAC-SHA1, keyed with `registration_shared_secret`,
//! of `nonce \0 username \0 password \0 (admin|notadmin)`. Not in the
//! Matrix spec (and so not in ruma): tools such as SyTest and
//! `register_new_matrix_user` use it to make (admin) accounts.

use std::sync::Arc;

use axum::{Json, extract::State};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use ruma::api::client::admin::get_user_info;
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Sha1;

use crate::{
    accounts::{self, AccountError},
    error::{ErrCode, MatrixError},
    services::Services,
};

/// Longest username or password accepted (as Synapse).
const MAX_FIELD_BYTES: usize = 512;

fn bad_request(code: ErrCode, message: &str) -> MatrixError {
    MatrixError::new(code, message).with_status(http::StatusCode::BAD_REQUEST)
}

fn shared_secret(svc: &Services) -> Result<&str, MatrixError> {
    svc.config
        .registration_shared_secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad_request(ErrCode::Unknown, "Shared secret registration is not enabled"))
}

/// `GET /_synapse/admin/v1/register`
pub async fn register_nonce(State(svc): State<Arc<Services>>) -> Result<Json<Value>, MatrixError> {
    shared_secret(&svc)?;
    Ok(Json(json!({ "nonce": svc.registration_nonces.issue() })))
}

#[derive(Deserialize)]
struct RegisterBody {
    nonce: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default)]
    admin: bool,
    displayname: Option<String>,
    user_type: Option<String>,
    mac: Option<String>,
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `mac` (hex) is the HMAC-SHA1 of the request's fields under
/// `secret`. Compared in constant time.
fn mac_is_valid(secret: &str, body: &RegisterBody, nonce: &str, username: &str, password: &str) -> bool {
    let Some(given) = body.mac.as_deref().and_then(decode_hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(username.as_bytes());
    mac.update(b"\0");
    mac.update(password.as_bytes());
    mac.update(b"\0");
    mac.update(if body.admin { b"admin" } else { b"notadmin" });
    if let Some(user_type) = &body.user_type {
        mac.update(b"\0");
        mac.update(user_type.as_bytes());
    }
    mac.verify_slice(&given).is_ok()
}

fn checked_field<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, MatrixError> {
    let value = value
        .as_deref()
        .ok_or_else(|| bad_request(ErrCode::BadJson, &format!("{name} must be specified")))?;
    if value.len() > MAX_FIELD_BYTES || value.contains('\0') {
        return Err(bad_request(ErrCode::InvalidParam, &format!("Invalid {name}")));
    }
    Ok(value)
}

/// `POST /_synapse/admin/v1/register`
pub async fn register(State(svc): State<Arc<Services>>, body: Bytes) -> Result<Json<Value>, MatrixError> {
    let secret = shared_secret(&svc)?;
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))?;
    let body: RegisterBody = serde_json::from_value(value).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let nonce = body
        .nonce
        .as_deref()
        .ok_or_else(|| bad_request(ErrCode::BadJson, "nonce must be specified"))?;
    // Used up here, even if the rest of the request is refused.
    if !svc.registration_nonces.take(nonce) {
        return Err(bad_request(ErrCode::Unknown, "unrecognised nonce"));
    }
    let username = checked_field(&body.username, "username")?;
    let password = checked_field(&body.password, "password")?;
    if body.mac.is_none() {
        return Err(bad_request(ErrCode::BadJson, "mac must be specified"));
    }
    if !mac_is_valid(secret, &body, nonce, username, password) {
        return Err(MatrixError::forbidden("HMAC incorrect"));
    }
    if body.user_type.is_some() {
        return Err(bad_request(ErrCode::InvalidParam, "User types are not supported"));
    }

    let user_id = accounts::user_id_for(&username.to_lowercase(), svc.server_name())?;
    if svc.storage.user(&user_id).await?.is_some() {
        return Err(AccountError::UserInUse.into());
    }
    accounts::create_user(&*svc.storage, &user_id, Some(password), body.admin).await?;
    if let Some(name) = &body.displayname {
        svc.storage.set_profile(&user_id, Some(Some(name)), None).await?;
    }
    tracing::info!(%user_id, admin = body.admin, "registered with the shared secret");
    let (device_id, token) = accounts::new_session(&*svc.storage, &user_id, None, None).await?;
    crate::devices::record_device_change(&svc, &user_id, &device_id).await?;
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": token,
        "device_id": device_id,
        "home_server": svc.server_name(),
    })))
}

/// `GET /admin/whois/{userId}`: the user's devices and where each was
/// last seen from. For server admins, and for users about themselves.
pub async fn whois(
    svc: Arc<Services>,
    req: super::extract::Ruma<get_user_info::v3::Request>,
) -> Result<get_user_info::v3::Response, MatrixError> {
    let asker = &req.user().user_id;
    let target = &req.body.user_id;
    if asker != target && !svc.storage.user(asker).await?.is_some_and(|u| u.admin) {
        return Err(MatrixError::forbidden("Only server admins may look up other users"));
    }
    if target.server_name() != svc.server_name() {
        return Err(MatrixError::invalid_param("Only users of this server can be looked up"));
    }
    let mut response = get_user_info::v3::Response::new();
    response.user_id = Some(target.clone());
    for device in svc.storage.devices(target).await? {
        let mut connection = get_user_info::v3::ConnectionInfo::new();
        match svc.connections.last(target, &device.device_id) {
            Some(seen) => {
                connection.ip = Some(seen.ip);
                connection.user_agent = seen.user_agent;
                connection.last_seen = millis(seen.ts);
            }
            None => {
                connection.ip = device.last_seen_ip;
                connection.user_agent = device.last_seen_user_agent;
                connection.last_seen = device.last_seen_ts.and_then(millis);
            }
        }
        let mut session = get_user_info::v3::SessionInfo::new();
        if connection.ip.is_some() {
            session.connections.push(connection);
        }
        let mut info = get_user_info::v3::DeviceInfo::new();
        info.sessions.push(session);
        response.devices.insert(device.device_id.to_string(), info);
    }
    Ok(response)
}

fn millis(ts: u64) -> Option<ruma::MilliSecondsSinceUnixEpoch> {
    ruma::UInt::try_from(ts).ok().map(ruma::MilliSecondsSinceUnixEpoch)
}
