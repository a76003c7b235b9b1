//! What storage keeps of the media repository: one row per file, local
//! uploads and other servers' media cached here alike. The bytes are files
//! under `<data_dir>/media/` (see [`crate::media`]); this is their
//! metadata. A supertrait of [`super::Storage`], as
//! [`super::push::PushStorage`] is.

use async_trait::async_trait;
use ruma::{OwnedServerName, OwnedUserId, ServerName};

use super::Result;

/// A file of the media repository, as `mxc://{origin}/{media_id}` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    pub origin: OwnedServerName,
    pub media_id: String,
    pub content_type: Option<String>,
    pub file_name: Option<String>,
    pub size: u64,
    /// The local user who uploaded it; none for other servers' media.
    pub uploader: Option<OwnedUserId>,
    /// When it was uploaded or fetched (ms since the epoch).
    pub created_ts: u64,
    /// The name of its file under `<data_dir>/media/`.
    pub file_id: String,
}

#[async_trait]
pub trait MediaStorage: Send + Sync {
    /// Records a file. `AlreadyExists` when `(origin, media_id)` has one.
    async fn put_media(&self, record: MediaRecord) -> Result<()>;
    /// The file `mxc://{origin}/{media_id}`, when this server has it.
    async fn media(&self, origin: &ServerName, media_id: &str) -> Result<Option<MediaRecord>>;
}
