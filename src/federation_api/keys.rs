//! Keys: this server's own (`/_matrix/key/v2/server`) and, as a notary,
//! other servers' (`/_matrix/key/v2/query`), countersigned.

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName,
    api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch},
    serde::Raw,
};
use serde_json::Value;

use crate::{client_api::extract::Ruma, error::MatrixError, services::Services};

/// `GET /_matrix/key/v2/server`: this server's keys, self-signed.
pub async fn server_keys(State(svc): State<Arc<Services>>) -> Json<Value> {
    let doc = svc.keys.server_key_document(MilliSecondsSinceUnixEpoch::now());
    Json(serde_json::to_value(doc).unwrap_or_default())
}

/// The key documents of `servers`, each countersigned by this server.
async fn notarised<T>(svc: &Services, servers: Vec<(OwnedServerName, u64)>) -> Result<Vec<Raw<T>>, MatrixError> {
    let mut out = Vec::new();
    for (server, minimum_valid_until) in servers {
        let doc = match svc.keyring.document_for_notary(&server, minimum_valid_until).await {
            Ok(Some(doc)) => doc,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(%server, error = %e, "no keys to notarise");
                continue;
            }
        };
        let mut doc = doc;
        svc.keys.sign_json(&mut doc);
        let json = serde_json::value::to_raw_value(&doc).map_err(|e| MatrixError::internal("key document", e))?;
        out.push(Raw::from_json(json));
    }
    Ok(out)
}

pub async fn query_one(
    svc: Arc<Services>,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<get_remote_server_keys::v2::Response, MatrixError> {
    let minimum = u64::from(req.body.minimum_valid_until_ts.get());
    let keys = notarised(&svc, vec![(req.body.server_name.clone(), minimum)]).await?;
    Ok(get_remote_server_keys::v2::Response::new(keys))
}

pub async fn query_batch(
    svc: Arc<Services>,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<get_remote_server_keys_batch::v2::Response, MatrixError> {
    let servers = req
        .body
        .server_keys
        .iter()
        .map(|(server, criteria)| {
            let minimum = criteria
                .values()
                .filter_map(|c| c.minimum_valid_until_ts)
                .map(|ts| u64::from(ts.get()))
                .max()
                .unwrap_or_else(|| MilliSecondsSinceUnixEpoch::now().get().into());
            (server.clone(), minimum)
        })
        .collect();
    Ok(get_remote_server_keys_batch::v2::Response::new(
        notarised(&svc, servers).await?,
    ))
}
