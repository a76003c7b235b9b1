//! Third-party networks (client-server "Third-party networks"): the
//! protocols the application services bridge, and lookups of third-party
//! users and locations, relayed to those application services; and an
//! application service's ping of itself through this server.
//!
//! Not through ruma's types: application services answer with less than
//! ruma's `Protocol` requires (no `field_types`, instances without
//! `fields`), and the answers are passed on as they are, as Synapse does.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use ruma::api::client::appservice::request_ping;

use super::extract::token_owner;
use crate::{error::MatrixError, services::Services};

/// `GET /thirdparty/protocols`.
pub async fn protocols(
    State(svc): State<Arc<Services>>,
    parts: http::request::Parts,
) -> Result<Json<Value>, MatrixError> {
    token_owner(&svc, &parts).await?;
    Ok(Json(Value::Object(svc.appservices.protocols(None).await)))
}

/// `GET /thirdparty/protocol/{protocol}`.
pub async fn protocol(
    State(svc): State<Arc<Services>>,
    Path(protocol): Path<String>,
    parts: http::request::Parts,
) -> Result<Json<Value>, MatrixError> {
    token_owner(&svc, &parts).await?;
    svc.appservices
        .protocols(Some(&protocol))
        .await
        .remove(&protocol)
        .map(Json)
        .ok_or_else(|| MatrixError::not_found(format!("No protocol {protocol}")))
}

/// The query's fields, without the client API's own parameters.
fn fields(parts: &http::request::Parts) -> Vec<(String, String)> {
    parts
        .uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k != "access_token" && k != "user_id")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /thirdparty/user/{protocol}`.
pub async fn users(
    State(svc): State<Arc<Services>>,
    Path(protocol): Path<String>,
    parts: http::request::Parts,
) -> Result<Json<Value>, MatrixError> {
    lookup(&svc, "user", &protocol, &parts).await
}

/// `GET /thirdparty/location/{protocol}`.
pub async fn locations(
    State(svc): State<Arc<Services>>,
    Path(protocol): Path<String>,
    parts: http::request::Parts,
) -> Result<Json<Value>, MatrixError> {
    lookup(&svc, "location", &protocol, &parts).await
}

/// Asks the application services of `protocol` for the users or
/// locations (`kind`) matching the query's fields.
async fn lookup(
    svc: &Services,
    kind: &str,
    protocol: &str,
    parts: &http::request::Parts,
) -> Result<Json<Value>, MatrixError> {
    token_owner(svc, parts).await?;
    let found = svc.appservices.thirdparty_lookup(kind, protocol, &fields(parts)).await;
    Ok(Json(json!(found)))
}

/// `POST /appservice/{appserviceId}/ping`: an application service asks
/// this server to ping it (`/_matrix/app/v1/ping`), to check that the
/// server reaches it.
pub async fn ping(
    svc: Arc<Services>,
    req: super::extract::Ruma<request_ping::v1::Request>,
) -> Result<request_ping::v1::Response, MatrixError> {
    let appservice = match &req.appservice {
        Some(appservice) if appservice.id == req.body.appservice_id => appservice.clone(),
        _ => {
            return Err(MatrixError::forbidden(
                "Provided access token is not the appservice's as_token",
            ));
        }
    };
    let transaction_id = req.body.transaction_id.as_ref().map(|t| t.as_str());
    let duration = svc.appservices.ping(&appservice, transaction_id).await?;
    Ok(request_ping::v1::Response::new(duration))
}
