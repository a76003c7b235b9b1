//! `GET /_matrix/federation/v1/openid/userinfo`: whom an OpenID token
//! stands for (see [`crate::openid`]). Not signed with `X-Matrix`: the
//! asker is any service holding a token, so it is served on the client
//! listener too, as Synapse does.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Query, State},
};
use serde_json::{Value, json};

use crate::{error::MatrixError, openid, services::Services};

pub async fn userinfo(
    State(svc): State<Arc<Services>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, MatrixError> {
    let token = query.get("access_token").ok_or_else(openid::unknown_token)?;
    let user_id = openid::user_of(svc.storage.as_ref(), token).await?;
    Ok(Json(json!({ "sub": user_id })))
}
