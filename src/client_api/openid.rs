//! `POST /user/{userId}/openid/request_token`: an OpenID token for the
//! user (see [`crate::openid`]).

use std::sync::Arc;

use ruma::api::client::account::request_openid_token;

use super::extract::Ruma;
use crate::{error::MatrixError, openid, services::Services};

pub async fn request_token(
    svc: Arc<Services>,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response, MatrixError> {
    let user_id = &req.user().user_id;
    if req.body.user_id != *user_id {
        return Err(MatrixError::forbidden(
            "Cannot request an OpenID token for another user",
        ));
    }
    let token = openid::issue(svc.storage.as_ref(), user_id).await?;
    Ok(request_openid_token::v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        svc.server_name().to_owned(),
        openid::TOKEN_LIFETIME,
    ))
}
