//! Keys: this server's own (`/_matrix/key/v2/server`) and, as a notary,
//! other servers' (`/_matrix/key/v2/query`), countersigned.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName,
    api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch},
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{client_api::extract::Ruma, error::MatrixError, services::Services};

/// `GET /_matrix/key/v2/server`: this server's keys, self-signed.
pub async fn server_keys(State(svc): State<Arc<Services>>) -> Json<Value> {
    let doc = svc.keys.server_key_document(MilliSecondsSinceUnixEpoch::now());
    Json(serde_json::to_value(doc).unwrap_or_default())
}

/// The key documents of the servers asked for (with the key IDs wanted,
/// none meaning all, and the validity wanted), each countersigned by this
/// server.
async fn notarised<T>(
    svc: &Services,
    queries: Vec<(OwnedServerName, Vec<String>, u64)>,
) -> Result<Vec<Raw<T>>, MatrixError> {
    let mut out = Vec::new();
    for (server, key_ids, minimum_valid_until) in queries {
        let docs = match svc
            .keyring
            .documents_for_notary(&server, &key_ids, minimum_valid_until)
            .await
        {
            Ok(docs) => docs,
            Err(e) => {
                tracing::debug!(%server, error = %e, "no keys to notarise");
                continue;
            }
        };
        for mut doc in docs {
            svc.keys.sign_json(&mut doc);
            let json = serde_json::value::to_raw_value(&doc).map_err(|e| MatrixError::internal("key document", e))?;
            out.push(Raw::from_json(json));
        }
    }
    Ok(out)
}

pub async fn query_one(
    svc: Arc<Services>,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response, MatrixError> {
    let minimum = u64::from(req.body.minimum_valid_until_ts.get());
    let keys = notarised(&svc, vec![(req.body.server_name.clone(), Vec::new(), minimum)]).await?;
    Ok(get_remote_server_keys::v2::Response::new(keys))
}

#[derive(serde::Deserialize)]
pub struct LegacyQuery {
    minimum_valid_until_ts: Option<u64>,
}

/// `GET /_matrix/key/v2/query/{serverName}/{keyId}`: the form with a key
/// ID that older servers (and SyTest) still use.
pub async fn query_one_key(
    State(svc): State<Arc<Services>>,
    Path((server_name, key_id)): Path<(String, String)>,
    Query(query): Query<LegacyQuery>,
) -> Result<Json<Value>, MatrixError> {
    let server = OwnedServerName::try_from(server_name).map_err(|e| MatrixError::invalid_param(e.to_string()))?;
    let minimum = query
        .minimum_valid_until_ts
        .unwrap_or_else(|| MilliSecondsSinceUnixEpoch::now().get().into());
    let keys: Vec<Raw<Value>> = notarised(&svc, vec![(server, vec![key_id], minimum)]).await?;
    Ok(Json(json!({ "server_keys": keys })))
}

pub async fn query_batch(
    svc: Arc<Services>,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response, MatrixError> {
    let now: u64 = MilliSecondsSinceUnixEpoch::now().get().into();
    let queries = req
        .body
        .server_keys
        .iter()
        .map(|(server, criteria)| {
            let minimum = criteria
                .values()
                .filter_map(|c| c.minimum_valid_until_ts)
                .map(|ts| u64::from(ts.get()))
                .max()
                .unwrap_or(now);
            (
                server.clone(),
                criteria.keys().map(|k| k.to_string()).collect(),
                minimum,
            )
        })
        .collect();
    Ok(get_remote_server_keys_batch::v2::Response::new(
        notarised(&svc, queries).await?,
    ))
}
