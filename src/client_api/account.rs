//! Registration, login, logout, whoami, password, capabilities, filters.

use std::sync::Arc;

use ruma::api::client::{
    account::{change_password, get_username_availability, register, whoami},
    filter::{create_filter, get_filter},
    session::{get_login_types, login, logout, logout_all},
    uiaa::{AuthData, UserIdentifier},
};
use serde_json::json;

use super::extract::Ruma;
use crate::{
    accounts::{self, AccountError, RegistrationParams},
    error::{ErrCode, MatrixError},
    services::Services,
};

impl From<AccountError> for MatrixError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidUsername(m) => MatrixError::new(ErrCode::InvalidUsername, m),
            AccountError::UserInUse => MatrixError::new(ErrCode::UserInUse, "User ID already taken"),
            AccountError::BadCredentials => MatrixError::forbidden("Invalid username or password"),
            AccountError::Deactivated => {
                MatrixError::new(ErrCode::UserDeactivated, "This account has been deactivated")
            }
            AccountError::Hash(m) => MatrixError::internal("password hashing", m),
            AccountError::Storage(e) => e.into(),
        }
    }
}

pub async fn get_login_types(
    svc: Arc<Services>,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response, MatrixError> {
    let mut types = vec![get_login_types::v3::LoginType::Password(Default::default())];
    if !svc.appservices.is_empty() {
        types.push(get_login_types::v3::LoginType::ApplicationService(Default::default()));
    }
    Ok(get_login_types::v3::Response::new(types))
}

/// The user a login names: a user ID, or a localpart of this server.
#[allow(deprecated)]
fn login_user(
    svc: &Services,
    identifier: Option<&UserIdentifier>,
    user: Option<&String>,
) -> Result<ruma::OwnedUserId, MatrixError> {
    let name = match identifier {
        Some(UserIdentifier::Matrix(id)) => id.user.clone(),
        Some(_) => return Err(MatrixError::forbidden("Only user ID logins are supported")),
        None => user
            .cloned()
            .ok_or_else(|| MatrixError::bad_json("Missing identifier"))?,
    };
    match ruma::UserId::parse_with_server_name(name.to_lowercase().as_str(), svc.server_name()) {
        Ok(id) if id.server_name() == svc.server_name() => Ok(id),
        _ => Err(MatrixError::forbidden("Invalid username or password")),
    }
}

pub async fn login(svc: Arc<Services>, req: Ruma<login::v3::Request>) -> Result<login::v3::Response, MatrixError> {
    let body = &req.body;
    #[allow(deprecated)]
    let user_id = match &body.login_info {
        login::v3::LoginInfo::Password(password) => {
            svc.limits.login(req.client_ip)?;
            let user_id = login_user(&svc, password.identifier.as_ref(), password.user.as_ref())?;
            svc.limits.account_login(user_id.as_str())?;
            accounts::check_password(&*svc.storage, &user_id, &password.password).await?;
            user_id
        }
        // An application service logs in as a registered user of its
        // namespaces, with its as_token.
        login::v3::LoginInfo::ApplicationService(info) => {
            let Some(appservice) = req.appservice.as_ref() else {
                return Err(MatrixError::new(
                    ErrCode::MissingToken,
                    "m.login.application_service needs the application service's token",
                ));
            };
            let user_id = login_user(&svc, info.identifier.as_ref(), info.user.as_ref())?;
            if !appservice.is_user_in_namespace(&user_id) {
                return Err(MatrixError::forbidden(
                    "This user is not in the application service's namespaces",
                ));
            }
            match svc.storage.user(&user_id).await? {
                Some(user) if user.deactivated => return Err(AccountError::Deactivated.into()),
                Some(_) => user_id,
                None => return Err(MatrixError::forbidden("Unknown user")),
            }
        }
        _ => {
            return Err(
                MatrixError::new(ErrCode::Unknown, "Unsupported login type").with_status(http::StatusCode::BAD_REQUEST)
            );
        }
    };
    let (device_id, token) = accounts::new_session(
        &*svc.storage,
        &user_id,
        body.device_id.clone(),
        body.initial_device_display_name.as_deref(),
    )
    .await?;
    crate::devices::record_device_change(&svc, &user_id, &device_id).await?;
    let mut response = login::v3::Response::new(user_id, token, device_id);
    #[allow(deprecated)]
    {
        response.home_server = Some(svc.server_name().to_owned());
    }
    Ok(response)
}

pub async fn logout(svc: Arc<Services>, req: Ruma<logout::v3::Request>) -> Result<logout::v3::Response, MatrixError> {
    if let Some(owner) = &req.owner {
        crate::devices::delete_devices(&svc, &owner.user_id, std::slice::from_ref(&owner.device_id)).await?;
    } else if let Some(token) = &req.access_token {
        svc.storage.delete_token(token).await?;
    }
    Ok(logout::v3::Response::new())
}

pub async fn logout_all(
    svc: Arc<Services>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response, MatrixError> {
    let user_id = &req.user().user_id;
    let devices: Vec<_> = svc
        .storage
        .devices(user_id)
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    crate::devices::delete_devices(&svc, user_id, &devices).await?;
    svc.storage.delete_all_tokens(user_id).await?;
    Ok(logout_all::v3::Response::new())
}

pub async fn whoami(_: Arc<Services>, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response, MatrixError> {
    let owner = req.user();
    let mut response = whoami::v3::Response::new(owner.user_id.clone(), false);
    response.device_id = Some(owner.device_id.clone());
    Ok(response)
}

/// The user-interactive-auth challenge for registration: one dummy stage.
fn uia_challenge(session: &str) -> MatrixError {
    let mut error =
        MatrixError::new(ErrCode::Unauthorized, "Authentication required").with_status(http::StatusCode::UNAUTHORIZED);
    error.extra = Some(Box::new(
        json!({ "flows": [{ "stages": ["m.login.dummy"] }], "params": {}, "session": session })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    ));
    error
}

pub async fn register(
    svc: Arc<Services>,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response, MatrixError> {
    if req.body.login_type == Some(register::LoginType::ApplicationService) {
        return register_by_appservice(&svc, req).await;
    }
    if req.appservice.is_some() {
        return Err(MatrixError::forbidden(
            "An application service registers users with type m.login.application_service",
        ));
    }
    let client_ip = req.client_ip;
    let body = req.body;
    if body.kind == register::RegistrationKind::Guest {
        svc.limits.registration(client_ip)?;
        return register_guest(&svc, body.initial_device_display_name.as_deref()).await;
    }
    if !svc.config.allow_registration {
        return Err(MatrixError::forbidden("Registration has been disabled"));
    }
    let session_id = match &body.auth {
        Some(AuthData::Dummy(dummy)) => dummy.session.clone(),
        _ => None,
    };
    let session = session_id.as_deref().and_then(|id| svc.registration_sessions.get(id));
    let mut params = RegistrationParams {
        username: body.username.clone(),
        password: body.password.clone(),
        device_id: body.device_id.clone(),
        initial_device_display_name: body.initial_device_display_name.clone(),
        inhibit_login: body.inhibit_login,
        guest_access_token: body.guest_access_token.clone(),
    };
    if let Some(session) = &session {
        params = params.or(&session.params);
        // The session's stages were all completed and the account made:
        // a retry gets the result again, as the spec's UIA section asks.
        if let Some(user_id) = &session.registered {
            return registered(&svc, user_id.clone(), &params).await;
        }
    }
    let localpart = match &params.username {
        Some(name) => name.to_lowercase(),
        None => accounts::random_string(12).to_lowercase(),
    };
    let user_id = accounts::user_id_for(&localpart, svc.server_name())?;
    // Upgrading a guest: the account exists, and must be the guest's own.
    let upgrading = match &params.guest_access_token {
        Some(token) => {
            let owner = svc.storage.token_owner(token).await?;
            if !owner.is_some_and(|o| o.is_guest && o.user_id == user_id) {
                return Err(MatrixError::forbidden(
                    "guest_access_token is not the access token of the guest named by username",
                ));
            }
            true
        }
        None => false,
    };
    if !upgrading && svc.storage.user(&user_id).await?.is_some() {
        return Err(AccountError::UserInUse.into());
    }
    refuse_exclusive(&svc, &user_id)?;
    match &body.auth {
        Some(AuthData::Dummy(_)) => {}
        Some(_) => return Err(MatrixError::forbidden("Unsupported authentication stage")),
        None => return Err(uia_challenge(&svc.registration_sessions.start(params))),
    }
    svc.limits.registration(client_ip)?;
    let password = params
        .password
        .as_deref()
        .ok_or_else(|| MatrixError::bad_json("Missing password"))?;
    if upgrading {
        let hash = accounts::hash_password_blocking(password).await?;
        svc.storage.upgrade_guest(&user_id, &hash).await.map_err(|e| match e {
            crate::storage::StorageError::NotFound => MatrixError::forbidden("This account is not a guest"),
            e => e.into(),
        })?;
        tracing::info!(%user_id, "guest upgraded to a full account");
    } else {
        accounts::create_user(&*svc.storage, &user_id, Some(password), false).await?;
        tracing::info!(%user_id, "registered");
    }
    if let Some(id) = &session_id {
        svc.registration_sessions.complete(id, &user_id);
    }
    registered(&svc, user_id, &params).await
}

/// A user ID in an application service's exclusive namespace is that
/// service's alone: `M_EXCLUSIVE` for anyone else.
fn refuse_exclusive(svc: &Services, user_id: &ruma::UserId) -> Result<(), MatrixError> {
    match svc.appservices.exclusive_user_owner(user_id) {
        Some(_) => Err(MatrixError::new(
            ErrCode::Exclusive,
            "This user ID is reserved by an application service",
        )),
        None => Ok(()),
    }
}

/// Registration by an application service (`type` is
/// `m.login.application_service`, with its `as_token`): a user of its user
/// namespaces, without a password or user-interactive auth.
async fn register_by_appservice(
    svc: &Services,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response, MatrixError> {
    let Some(appservice) = req.appservice.as_ref() else {
        return Err(MatrixError::forbidden(
            "Only application services may register with m.login.application_service",
        ));
    };
    let body = req.body;
    let localpart = body
        .username
        .as_deref()
        .ok_or_else(|| MatrixError::missing_param("Missing username"))?
        .to_lowercase();
    let user_id = accounts::user_id_for(&localpart, svc.server_name())?;
    if !appservice.is_user_in_namespace(&user_id) {
        return Err(MatrixError::new(
            ErrCode::Exclusive,
            "This user ID is not in the application service's namespaces",
        ));
    }
    accounts::create_user(&*svc.storage, &user_id, None, false).await?;
    tracing::info!(%user_id, appservice = %appservice.id, "registered by application service");
    let params = RegistrationParams {
        username: Some(localpart),
        password: None,
        device_id: body.device_id,
        initial_device_display_name: body.initial_device_display_name,
        inhibit_login: body.inhibit_login,
        ..RegistrationParams::default()
    };
    registered(svc, user_id, &params).await
}

/// `POST /register?kind=guest`: a guest account and its session. The
/// spec has every body parameter but the device's display name ignored.
async fn register_guest(
    svc: &Services,
    initial_device_display_name: Option<&str>,
) -> Result<register::v3::Response, MatrixError> {
    if !svc.config.allow_guest_access {
        return Err(MatrixError::new(
            ErrCode::GuestAccessForbidden,
            "Guest access is disabled on this server",
        ));
    }
    let user_id = accounts::create_guest(&*svc.storage, svc.server_name()).await?;
    tracing::info!(%user_id, "guest registered");
    let params = RegistrationParams {
        initial_device_display_name: initial_device_display_name.map(str::to_owned),
        ..RegistrationParams::default()
    };
    registered(svc, user_id, &params).await
}

/// The answer to a successful registration: a new session unless
/// `inhibit_login`.
async fn registered(
    svc: &Services,
    user_id: ruma::OwnedUserId,
    params: &RegistrationParams,
) -> Result<register::v3::Response, MatrixError> {
    let mut response = register::v3::Response::new(user_id.clone());
    if !params.inhibit_login {
        let (device_id, token) = accounts::new_session(
            &*svc.storage,
            &user_id,
            params.device_id.clone(),
            params.initial_device_display_name.as_deref(),
        )
        .await?;
        crate::devices::record_device_change(svc, &user_id, &device_id).await?;
        response.access_token = Some(token);
        response.device_id = Some(device_id);
    }
    Ok(response)
}

pub async fn username_available(
    svc: Arc<Services>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response, MatrixError> {
    let user_id = accounts::user_id_for(&req.body.username.to_lowercase(), svc.server_name())?;
    if svc.storage.user(&user_id).await?.is_some() {
        return Err(AccountError::UserInUse.into());
    }
    refuse_exclusive(&svc, &user_id)?;
    Ok(get_username_availability::v3::Response::new(true))
}

pub async fn change_password(
    svc: Arc<Services>,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response, MatrixError> {
    let owner = req.user().clone();
    match &req.body.auth {
        Some(AuthData::Password(p)) => {
            accounts::check_password(&*svc.storage, &owner.user_id, &p.password).await?;
        }
        _ => {
            let mut challenge = uia_challenge(&accounts::random_string(16));
            if let Some(extra) = challenge.extra.as_mut() {
                extra.insert("flows".to_owned(), json!([{ "stages": ["m.login.password"] }]));
            }
            return Err(challenge);
        }
    }
    let hash = accounts::hash_password_blocking(&req.body.new_password).await?;
    svc.storage.set_password_hash(&owner.user_id, &hash).await?;
    if req.body.logout_devices {
        // The other devices' pushers go with them.
        svc.storage
            .delete_other_devices_pushers(&owner.user_id, &owner.device_id)
            .await?;
        svc.storage.delete_all_tokens(&owner.user_id).await?;
        if let Some(token) = &req.access_token {
            svc.storage
                .create_session(&owner.user_id, &owner.device_id, None, token)
                .await?;
        }
    }
    Ok(change_password::v3::Response::new())
}

/// `GET /capabilities` (not `.ruma`: ruma leaves out capabilities at their
/// default, and clients and SyTest look for `m.change_password`). Every
/// capability weft has is listed, defaults included.
pub async fn capabilities(
    axum::extract::State(svc): axum::extract::State<Arc<Services>>,
    parts: http::request::Parts,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    super::extract::token_owner(&svc, &parts).await?;
    let available: serde_json::Map<String, serde_json::Value> = crate::config::SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| (v.to_string(), json!("stable")))
        .collect();
    Ok(axum::Json(json!({
        "capabilities": {
            "m.room_versions": { "default": svc.config.default_room_version, "available": available },
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            // No third-party identifiers (email, phone) here.
            "m.3pid_changes": { "enabled": false },
        }
    })))
}

pub async fn create_filter(
    svc: Arc<Services>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response, MatrixError> {
    if req.body.user_id != req.user().user_id {
        return Err(MatrixError::forbidden("Cannot create filters for other users"));
    }
    let json = serde_json::to_string(&req.body.filter).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let id = svc.storage.save_filter(&req.user().user_id, &json).await?;
    Ok(create_filter::v3::Response::new(id))
}

pub async fn get_filter(
    svc: Arc<Services>,
    req: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response, MatrixError> {
    if req.body.user_id != req.user().user_id {
        return Err(MatrixError::forbidden("Cannot read filters of other users"));
    }
    let json = svc
        .storage
        .filter(&req.user().user_id, &req.body.filter_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("No such filter"))?;
    let filter = serde_json::from_str(&json).map_err(|e| MatrixError::internal("stored filter", e))?;
    Ok(get_filter::v3::Response::new(filter))
}
