//! `GET /_matrix/federation/v1/media/download/{mediaId}`: this server's
//! own media for other servers (their users' downloads), answered as
//! `multipart/mixed` — an empty JSON metadata part, then the file.

use std::sync::Arc;

use ruma::api::federation::authenticated_media::{Content, ContentMetadata, FileOrLocation, get_content};

use super::extract::Fed;
use crate::{error::MatrixError, media, services::Services};

pub async fn download(
    svc: Arc<Services>,
    req: Fed<get_content::v1::Request>,
) -> Result<get_content::v1::Response, MatrixError> {
    // Only media uploaded here: other servers' media cached here is theirs
    // to serve.
    let (record, bytes) = media::held(&svc, svc.server_name(), &req.body.media_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("Media not found"))?;
    let disposition = media::content_disposition(record.content_type.as_deref(), record.file_name.as_deref());
    let content_type = record
        .content_type
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    Ok(get_content::v1::Response::new(
        ContentMetadata::new(),
        FileOrLocation::File(Content::new(bytes, content_type, disposition)),
    ))
}
