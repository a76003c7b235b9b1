//! Profiles: display name and avatar, mirrored into the user's
//! membership events in the rooms they are joined to.

use std::sync::Arc;

use ruma::{
    UserId,
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
};
use serde_json::{Value, json};

use super::extract::Ruma;
use crate::{
    error::MatrixError, events::EventTemplate, rooms::send::send_event, services::Services, storage::UserRecord,
};

async fn local_profile(svc: &Services, user_id: &UserId) -> Result<UserRecord, MatrixError> {
    if user_id.server_name() != svc.server_name() {
        return Err(MatrixError::not_found(
            "Profile lookup over federation is not available yet",
        ));
    }
    svc.storage
        .user(user_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Profile not found"))
}

pub async fn get_profile(
    svc: Arc<Services>,
    req: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response, MatrixError> {
    let user = local_profile(&svc, &req.body.user_id).await?;
    let mut fields: Vec<(String, Value)> = Vec::new();
    if let Some(name) = user.displayname {
        fields.push(("displayname".to_owned(), json!(name)));
    }
    if let Some(url) = user.avatar_url {
        fields.push(("avatar_url".to_owned(), json!(url)));
    }
    Ok(get_profile::v3::Response::from_iter(fields))
}

pub async fn get_display_name(
    svc: Arc<Services>,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response, MatrixError> {
    let user = local_profile(&svc, &req.body.user_id).await?;
    Ok(get_display_name::v3::Response::new(user.displayname))
}

pub async fn get_avatar_url(
    svc: Arc<Services>,
    req: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response, MatrixError> {
    let user = local_profile(&svc, &req.body.user_id).await?;
    Ok(get_avatar_url::v3::Response::new(user.avatar_url.map(Into::into)))
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
