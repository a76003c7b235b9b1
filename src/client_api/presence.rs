//! `PUT` and `GET /presence/{userId}/status`. The state itself, who sees
//! it and how it travels are in [`crate::presence`].

use std::{sync::Arc, time::Duration};

use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::client::presence::{get_presence, set_presence},
    presence::PresenceState,
};

use super::extract::Ruma;
use crate::{error::MatrixError, presence, services::Services};

pub async fn set_status(
    svc: Arc<Services>,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response, MatrixError> {
    let user = &req.user().user_id;
    let b = &req.body;
    if b.user_id != *user {
        return Err(MatrixError::forbidden("Cannot set another user's presence"));
    }
    if !matches!(
        b.presence,
        PresenceState::Online | PresenceState::Offline | PresenceState::Unavailable
    ) {
        return Err(MatrixError::invalid_param(format!(
            "Unknown presence state {:?}: online, offline or unavailable",
            b.presence.as_str()
        )));
    }
    if let Some(status) = svc.presence.set(user, b.presence.clone(), b.status_msg.clone()).await? {
        presence::local_changed(&svc, user, &status).await?;
    }
    Ok(set_presence::v3::Response::new())
}

pub async fn get_status(
    svc: Arc<Services>,
    req: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response, MatrixError> {
    let observer = &req.user().user_id;
    let user = &req.body.user_id;
    if !presence::may_see(&svc, observer, user).await? {
        return Err(MatrixError::forbidden(format!(
            "You are not allowed to see the presence of {user}"
        )));
    }
    let Some(status) = svc.presence.get(user).await? else {
        return Ok(get_presence::v3::Response::new(PresenceState::Offline));
    };
    let now: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
    let mut response = get_presence::v3::Response::new(status.state.clone());
    response.status_msg = status.status_msg.clone();
    response.currently_active = Some(status.currently_active);
    if status.last_active_ts > 0 {
        response.last_active_ago = Some(Duration::from_millis(now.saturating_sub(status.last_active_ts)));
    }
    Ok(response)
}
