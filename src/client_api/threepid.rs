//! `/account/3pid`: the account's 3PIDs (none: accounts hold none here),
//! and binding and unbinding 3PIDs at identity servers (see
//! [`crate::threepid`]).

use std::sync::Arc;

use ruma::api::client::account::{bind_3pid, delete_3pid, unbind_3pid};

use super::extract::Ruma;
use crate::{error::MatrixError, services::Services, threepid};

/// `GET /account/3pid`: the 3PIDs of the account. This server verifies
/// none (no email or SMS), so an account has none; 3PIDs bound at an
/// identity server through `/3pid/bind` are the identity server's, not
/// the account's, as the spec has it. Not `.ruma`: ruma leaves an empty
/// `threepids` out, and clients read the field without looking (Element's
/// settings page, for one), as Synapse always sends it.
pub async fn get_3pids(
    axum::extract::State(svc): axum::extract::State<Arc<Services>>,
    parts: http::request::Parts,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    super::extract::token_owner(&svc, &parts).await?;
    Ok(axum::Json(serde_json::json!({ "threepids": [] })))
}

/// `POST /account/3pid/bind`.
pub async fn bind(
    svc: Arc<Services>,
    req: Ruma<bind_3pid::v3::Request>,
) -> Result<bind_3pid::v3::Response, MatrixError> {
    let info = &req.body.identity_server_info;
    threepid::bind(
        &svc,
        &req.user().user_id,
        &info.id_server,
        &info.id_access_token,
        req.body.sid.as_str(),
        req.body.client_secret.as_str(),
    )
    .await?;
    Ok(bind_3pid::v3::Response::new())
}

/// `POST /account/3pid/unbind`.
pub async fn unbind(
    svc: Arc<Services>,
    req: Ruma<unbind_3pid::v3::Request>,
) -> Result<unbind_3pid::v3::Response, MatrixError> {
    let body = &req.body;
    let result = threepid::unbind(
        &svc,
        &req.user().user_id,
        body.medium.as_str(),
        &body.address,
        body.id_server.as_deref(),
    )
    .await?;
    Ok(unbind_3pid::v3::Response::new(result))
}

/// `POST /account/3pid/delete`: the account holds no 3PIDs here, so
/// deleting one is unbinding it.
pub async fn delete(
    svc: Arc<Services>,
    req: Ruma<delete_3pid::v3::Request>,
) -> Result<delete_3pid::v3::Response, MatrixError> {
    let body = &req.body;
    let result = threepid::unbind(
        &svc,
        &req.user().user_id,
        body.medium.as_str(),
        &body.address,
        body.id_server.as_deref(),
    )
    .await?;
    Ok(delete_3pid::v3::Response::new(result))
}
