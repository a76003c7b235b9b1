//! The media repository: files users upload (avatars, images,
//! attachments), kept under `<data_dir>/media/` with their metadata in
//! storage ([`crate::storage::media`]), and other servers' media fetched
//! through the federation's `/media/download` and cached the same way.
//! The HTTP endpoints are `client_api::media` and `federation_api::media`.

use ruma::{
    ServerName,
    api::federation::authenticated_media::{FileOrLocation, get_content},
    http_headers::{ContentDisposition, ContentDispositionType},
};

use crate::{
    error::{ErrCode, MatrixError},
    federation_client::FederationError,
    services::Services,
    storage::media::MediaRecord,
};

/// Content types a browser may show in place (the spec's list of types
/// served with `Content-Disposition: inline`); anything else is an
/// attachment.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Image types a thumbnail request may be answered with as they are.
const THUMBNAILABLE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp", "image/apng"];

/// The bare media type of a `Content-Type` value (no parameters), lower case.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Whether `content_type` may be shown inline by a browser.
pub fn is_inline(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| INLINE_TYPES.contains(&essence(t).as_str()))
}

/// Whether a thumbnail request for media of `content_type` can be
/// answered (with the original image: weft has no image library).
pub fn is_thumbnailable(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| THUMBNAILABLE_TYPES.contains(&essence(t).as_str()))
}

/// The `Content-Disposition` of a file: inline for safe types, attachment
/// otherwise, with `file_name` (the one asked for, else the uploaded one).
pub fn content_disposition(content_type: Option<&str>, file_name: Option<&str>) -> ContentDisposition {
    let kind = match is_inline(content_type) {
        true => ContentDispositionType::Inline,
        false => ContentDispositionType::Attachment,
    };
    ContentDisposition::new(kind).with_filename(file_name.map(str::to_owned))
}

fn new_id() -> String {
    use rand::RngExt;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn media_dir(svc: &Services) -> std::path::PathBuf {
    svc.config.data_dir.join("media")
}

fn io_error(error: std::io::Error) -> MatrixError {
    if error.kind() == std::io::ErrorKind::StorageFull {
        return crate::error::disk_full(&error);
    }
    MatrixError::internal("media file", error)
}

fn too_large(svc: &Services) -> MatrixError {
    MatrixError::new(
        ErrCode::TooLarge,
        format!("Media larger than {} bytes is not accepted", svc.config.max_upload_size),
    )
}

/// Writes `bytes` to a new file and records it; the record.
async fn store(
    svc: &Services,
    origin: &ServerName,
    media_id: Option<String>,
    content_type: Option<String>,
    file_name: Option<String>,
    uploader: Option<&ruma::UserId>,
    bytes: &[u8],
) -> Result<MediaRecord, MatrixError> {
    let file_id = new_id();
    let dir = media_dir(svc);
    tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
    // Written under a temporary name and renamed: a crash leaves no half
    // file under a recorded name.
    let path = dir.join(&file_id);
    let part = dir.join(format!("{file_id}.part"));
    let written = match tokio::fs::write(&part, bytes).await {
        Ok(()) => tokio::fs::rename(&part, &path).await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        // A full disk, say: no half file is left behind.
        let _ = tokio::fs::remove_file(&part).await;
        return Err(io_error(e));
    }
    let record = MediaRecord {
        origin: origin.to_owned(),
        media_id: media_id.unwrap_or_else(|| file_id.clone()),
        content_type,
        file_name,
        size: bytes.len() as u64,
        uploader: uploader.map(ToOwned::to_owned),
        created_ts: now_ms(),
        file_id,
    };
    if let Err(e) = svc.storage.put_media(record.clone()).await {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e.into());
    }
    Ok(record)
}

/// Keeps a local user's upload; its `mxc://` URI.
pub async fn upload(
    svc: &Services,
    uploader: &ruma::UserId,
    content_type: Option<String>,
    file_name: Option<String>,
    bytes: &[u8],
) -> Result<String, MatrixError> {
    if bytes.len() as u64 > svc.config.max_upload_size {
        return Err(too_large(svc));
    }
    let record = store(
        svc,
        svc.server_name(),
        None,
        content_type,
        file_name,
        Some(uploader),
        bytes,
    )
    .await?;
    Ok(format!("mxc://{}/{}", record.origin, record.media_id))
}

/// The file `mxc://{origin}/{media_id}` if this server holds it (its
/// own, or cached from `origin`).
pub async fn held(
    svc: &Services,
    origin: &ServerName,
    media_id: &str,
) -> Result<Option<(MediaRecord, Vec<u8>)>, MatrixError> {
    let Some(record) = svc.storage.media(origin, media_id).await? else {
        return Ok(None);
    };
    match tokio::fs::read(media_dir(svc).join(&record.file_id)).await {
        Ok(bytes) => Ok(Some((record, bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(%origin, media_id, "media file missing from the media directory");
            Ok(None)
        }
        Err(e) => Err(io_error(e)),
    }
}

fn not_found() -> MatrixError {
    MatrixError::new(ErrCode::NotFound, "Media not found")
}

/// The file `mxc://{origin}/{media_id}`: held here, or (when
/// `allow_remote` and `origin` is another server) fetched from `origin`
/// through the federation's `/media/download`, cached, and returned.
/// A failure to reach `origin` is a 502; media it does not have, a 404.
pub async fn get(
    svc: &Services,
    origin: &ServerName,
    media_id: &str,
    allow_remote: bool,
) -> Result<(MediaRecord, Vec<u8>), MatrixError> {
    if let Some(found) = held(svc, origin, media_id).await? {
        return Ok(found);
    }
    if origin == svc.server_name() || !allow_remote {
        return Err(not_found());
    }
    let response = svc
        .federation
        .send(origin, get_content::v1::Request::new(media_id.to_owned()))
        .await
        .map_err(|e| remote_error(origin, e))?;
    let content = match response.content {
        FileOrLocation::File(content) => content,
        // A redirection to a URL: not followed (it would be an
        // unauthenticated fetch from anywhere).
        _ => {
            return Err(
                MatrixError::new(ErrCode::Unknown, format!("{origin} did not send the media"))
                    .with_status(http::StatusCode::BAD_GATEWAY),
            );
        }
    };
    if content.file.len() as u64 > svc.config.max_upload_size {
        return Err(too_large(svc).with_status(http::StatusCode::BAD_GATEWAY));
    }
    let file_name = content.content_disposition.and_then(|d| d.filename);
    match store(
        svc,
        origin,
        Some(media_id.to_owned()),
        content.content_type,
        file_name,
        None,
        &content.file,
    )
    .await
    {
        Ok(record) => Ok((record, content.file)),
        // Fetched by another request meanwhile: that copy is kept.
        Err(_) if matches!(svc.storage.media(origin, media_id).await, Ok(Some(_))) => {
            held(svc, origin, media_id).await?.ok_or_else(not_found)
        }
        Err(e) => Err(e),
    }
}

fn remote_error(origin: &ServerName, error: FederationError) -> MatrixError {
    tracing::info!(%origin, %error, "remote media not fetched");
    match error.status() {
        Some(http::StatusCode::NOT_FOUND) => not_found(),
        _ => MatrixError::new(ErrCode::Unknown, format!("Cannot fetch media from {origin}"))
            .with_status(http::StatusCode::BAD_GATEWAY),
    }
}
