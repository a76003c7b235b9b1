//! The content repository's client endpoints: upload
//! (`/_matrix/media/v3/upload`), the configuration, downloads and
//! thumbnails, both the authenticated `/_matrix/client/v1/media/…` forms
//! and the deprecated unauthenticated `/_matrix/media/{v3,r0}/…` ones.
//! Raw axum handlers: the bodies are bytes, not JSON. The files are kept
//! by [`crate::media`].

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, Query, Request, State},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use ruma::ServerName;
use serde_json::json;

use super::extract::token_owner;
use crate::{
    error::{ErrCode, MatrixError},
    media,
    services::Services,
};

/// Whether `path` is an upload, whose body may be as large as
/// `max_upload_size` (other bodies are JSON of at most
/// [`MAX_BODY_BYTES`](super::extract::MAX_BODY_BYTES)).
pub fn is_upload_path(path: &str) -> bool {
    matches!(path, "/_matrix/media/v3/upload" | "/_matrix/media/r0/upload")
}

/// `POST /_matrix/media/v3/upload`: the body is the file, its
/// `Content-Type` header the file's, `?filename=` its name.
pub async fn upload(State(svc): State<Arc<Services>>, req: Request) -> Result<Json<serde_json::Value>, MatrixError> {
    let (parts, body) = req.into_parts();
    let owner = token_owner(&svc, &parts).await?;
    // The body was read whole (up to `max_upload_size`) by the server's
    // first middleware: this takes it from memory.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| MatrixError::unknown(format!("Cannot read the upload: {e}")))?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let file_name = parts.uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "filename")
            .map(|(_, v)| v.into_owned())
    });
    let content_uri = media::upload(&svc, &owner.user_id, content_type, file_name, &bytes).await?;
    Ok(Json(json!({ "content_uri": content_uri })))
}

/// `GET /_matrix/client/v1/media/config` (authenticated).
pub async fn config(State(svc): State<Arc<Services>>, req: Request) -> Result<Json<serde_json::Value>, MatrixError> {
    let (parts, _) = req.into_parts();
    token_owner(&svc, &parts).await?;
    Ok(config_answer(&svc))
}

/// `GET /_matrix/media/v3/config` (deprecated; no token needed).
pub async fn legacy_config(State(svc): State<Arc<Services>>) -> Json<serde_json::Value> {
    config_answer(&svc)
}

fn config_answer(svc: &Services) -> Json<serde_json::Value> {
    Json(json!({ "m.upload.size": svc.config.max_upload_size }))
}

/// The path of a download or thumbnail: `{serverName}/{mediaId}` and,
/// for downloads, an optional `{fileName}`.
type MediaPath = Path<HashMap<String, String>>;

fn server_name(params: &HashMap<String, String>) -> Result<&ServerName, MatrixError> {
    let name = params.get("server_name").map(String::as_str).unwrap_or_default();
    <&ServerName>::try_from(name).map_err(|_| MatrixError::not_found("Media not found"))
}

fn allow_remote(query: &HashMap<String, String>) -> bool {
    query.get("allow_remote").map(String::as_str) != Some("false")
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`.
pub async fn download(
    State(svc): State<Arc<Services>>,
    Path(params): MediaPath,
    req: Request,
) -> Result<Response, MatrixError> {
    let (parts, _) = req.into_parts();
    token_owner(&svc, &parts).await?;
    serve_download(&svc, &params, true).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}]`
/// (deprecated, unauthenticated; `?allow_remote=false` keeps it local).
pub async fn legacy_download(
    State(svc): State<Arc<Services>>,
    Path(params): MediaPath,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, MatrixError> {
    serve_download(&svc, &params, allow_remote(&query)).await
}

async fn serve_download(
    svc: &Services,
    params: &HashMap<String, String>,
    allow_remote: bool,
) -> Result<Response, MatrixError> {
    let origin = server_name(params)?;
    let media_id = params.get("media_id").map(String::as_str).unwrap_or_default();
    let (record, bytes) = media::get(svc, origin, media_id, allow_remote).await?;
    let file_name = params
        .get("file_name")
        .or(record.file_name.as_ref())
        .map(String::as_str);
    Ok(file_response(record.content_type.as_deref(), file_name, bytes))
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
pub async fn thumbnail(
    State(svc): State<Arc<Services>>,
    Path(params): MediaPath,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response, MatrixError> {
    let (parts, _) = req.into_parts();
    token_owner(&svc, &parts).await?;
    serve_thumbnail(&svc, &params, &query, true).await
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}` (deprecated,
/// unauthenticated).
pub async fn legacy_thumbnail(
    State(svc): State<Arc<Services>>,
    Path(params): MediaPath,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, MatrixError> {
    serve_thumbnail(&svc, &params, &query, allow_remote(&query)).await
}

/// A thumbnail, without an image library: the original image itself. The
/// spec allows a thumbnail larger than the size asked for ("the server
/// SHOULD return an image larger than the requested size" when it has no
/// exact one), so the original is an acceptable answer. Media that is not
/// an image weft can pass on as it is cannot be thumbnailed: 400.
async fn serve_thumbnail(
    svc: &Services,
    params: &HashMap<String, String>,
    query: &HashMap<String, String>,
    allow_remote: bool,
) -> Result<Response, MatrixError> {
    for dimension in ["width", "height"] {
        match query.get(dimension) {
            None => return Err(MatrixError::missing_param(format!("Missing {dimension}"))),
            Some(value) if value.parse::<u32>().is_err() => {
                return Err(MatrixError::invalid_param(format!("Invalid {dimension}")));
            }
            Some(_) => {}
        }
    }
    if let Some(method) = query.get("method")
        && method != "crop"
        && method != "scale"
    {
        return Err(MatrixError::invalid_param("Invalid method"));
    }
    let origin = server_name(params)?;
    let media_id = params.get("media_id").map(String::as_str).unwrap_or_default();
    let (record, bytes) = media::get(svc, origin, media_id, allow_remote).await?;
    if !media::is_thumbnailable(record.content_type.as_deref()) {
        return Err(
            MatrixError::new(ErrCode::Unknown, "This media cannot be thumbnailed").with_status(StatusCode::BAD_REQUEST)
        );
    }
    Ok(file_response(record.content_type.as_deref(), None, bytes))
}

/// A file's bytes with the headers the spec asks of a download.
fn file_response(content_type: Option<&str>, file_name: Option<&str>, bytes: Vec<u8>) -> Response {
    let disposition = media::content_disposition(content_type, file_name).to_string();
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        content_type
            .and_then(|t| HeaderValue::from_str(t).ok())
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
             style-src 'unsafe-inline'; object-src 'self';",
        ),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    response
}
