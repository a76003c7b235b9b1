//! The federation (server-server) API listener: today the unauthenticated
//! key and version endpoints; the authenticated federation endpoints join
//! here.

use std::sync::Arc;

use axum::{Json, Router, extract::State, routing::get};
use ruma::MilliSecondsSinceUnixEpoch;
use serde_json::{Value, json};

use crate::services::Services;

pub fn router() -> Router<Arc<Services>> {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/federation/v1/version", get(version))
}

/// `GET /_matrix/key/v2/server`: this server's keys, self-signed.
async fn server_keys(State(svc): State<Arc<Services>>) -> Json<Value> {
    let doc = svc.keys.server_key_document(MilliSecondsSinceUnixEpoch::now());
    Json(serde_json::to_value(doc).unwrap_or_default())
}

async fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "weft", "version": env!("CARGO_PKG_VERSION") } }))
}
