//! Profiles: display name and avatar, mirrored into the user's
//! membership events in the rooms they are joined to.

use std::sync::Arc;

use ruma::{
    UserId,
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
    api::federation::query::get_profile_information,
    profile::ProfileFieldName,
};
use serde_json::{Value, json};

use super::extract::Ruma;
use crate::{
    error::MatrixError, events::EventTemplate, rooms::send::send_event, services::Services, storage::UserRecord,
};

async fn local_profile(svc: &Services, user_id: &UserId) -> Result<UserRecord, MatrixError> {
    svc.storage
        .user(user_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Profile not found"))
}

/// A user's display name and avatar: from storage for this server's
/// users, else asked of their server (`/query/profile`, `field` only when
/// one is wanted).
async fn profile(
    svc: &Services,
    user_id: &UserId,
    field: Option<&str>,
) -> Result<(Option<String>, Option<String>), MatrixError> {
    if user_id.server_name() == svc.server_name() {
        let user = local_profile(svc, user_id).await?;
        return Ok((user.displayname, user.avatar_url));
    }
    let mut request = get_profile_information::v1::Request::new(user_id.to_owned());
    request.field = field.map(ProfileFieldName::from);
    let answer = match svc.federation.send(user_id.server_name(), request).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::info!(%user_id, error = %e, "remote profile not fetched");
            return Err(match e.status() {
                Some(http::StatusCode::NOT_FOUND) => MatrixError::not_found("Profile not found"),
                _ => MatrixError::not_found(format!("The profile of {user_id} cannot be fetched from its server")),
            });
        }
    };
    let text = |name: &str| answer.get(name).and_then(Value::as_str).map(str::to_owned);
    Ok((text("displayname"), text("avatar_url")))
}

pub async fn get_profile(
    svc: Arc<Services>,
    req: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response, MatrixError> {
    let (displayname, avatar_url) = profile(&svc, &req.body.user_id, None).await?;
    let mut fields: Vec<(String, Value)> = Vec::new();
    if let Some(name) = displayname {
        fields.push(("displayname".to_owned(), json!(name)));
    }
    if let Some(url) = avatar_url {
        fields.push(("avatar_url".to_owned(), json!(url)));
    }
    Ok(get_profile::v3::Response::from_iter(fields))
}

pub async fn get_display_name(
    svc: Arc<Services>,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response, MatrixError> {
    let (displayname, _) = profile(&svc, &req.body.user_id, Some("displayname")).await?;
    Ok(get_display_name::v3::Response::new(displayname))
}

pub async fn get_avatar_url(
    svc: Arc<Services>,
    req: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response, MatrixError> {
    let (_, avatar_url) = profile(&svc, &req.body.user_id, Some("avatar_url")).await?;
    Ok(get_avatar_url::v3::Response::new(avatar_url.map(Into::into)))
}

pub async fn set_display_name(
    svc: Arc<Services>,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response, MatrixError> {
    let user_id = &req.user().user_id;
    if req.body.user_id != *user_id {
        return Err(MatrixError::forbidden("Cannot set another user's display name"));
    }
    svc.storage
        .set_profile(user_id, Some(req.body.displayname.as_deref()), None)
        .await?;
    update_memberships(&svc, user_id).await?;
    Ok(set_display_name::v3::Response::new())
}

pub async fn set_avatar_url(
    svc: Arc<Services>,
    req: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response, MatrixError> {
    let user_id = &req.user().user_id;
    if req.body.user_id != *user_id {
        return Err(MatrixError::forbidden("Cannot set another user's avatar"));
    }
    let url = req.body.avatar_url.as_ref().map(|u| u.as_str());
    svc.storage.set_profile(user_id, None, Some(url)).await?;
    update_memberships(&svc, user_id).await?;
    Ok(set_avatar_url::v3::Response::new())
}

/// Sends a fresh join event with the new profile into each joined room.
async fn update_memberships(svc: &Services, user_id: &UserId) -> Result<(), MatrixError> {
    let user = local_profile(svc, user_id).await?;
    for membership in svc.storage.user_memberships(user_id).await? {
        if membership.membership != "join" {
            continue;
        }
        let mut content = json!({ "membership": "join" });
        if let Some(name) = &user.displayname {
            content["displayname"] = json!(name);
        }
        if let Some(url) = &user.avatar_url {
            content["avatar_url"] = json!(url);
        }
        let template = EventTemplate::state("m.room.member", user_id.as_str(), content);
        if let Err(e) = send_event(svc, &membership.room_id, user_id, template, None).await {
            tracing::warn!(room_id = %membership.room_id, error = %e, "profile change not sent to room");
        }
    }
    Ok(())
}
