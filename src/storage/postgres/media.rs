//! The media repository's metadata.

use async_trait::async_trait;
use ruma::ServerName;

use super::{PgStorage, big, col, exec, parse, pg_write, query_opt};
use crate::storage::{
    Result,
    media::{MediaRecord, MediaStorage},
};

#[async_trait]
impl MediaStorage for PgStorage {
    async fn put_media(&self, record: MediaRecord) -> Result<()> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO media (origin, media_id, content_type, file_name, size, uploader, created_ts, file_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &record.origin.as_str(),
                    &record.media_id,
                    &record.content_type,
                    &record.file_name,
                    &big(record.size),
                    &record.uploader.as_ref().map(|u| u.as_str()),
                    &big(record.created_ts),
                    &record.file_id,
                ],
            )
            .await?;
        })
    }

    async fn media(&self, origin: &ServerName, media_id: &str) -> Result<Option<MediaRecord>> {
        let c = self.client().await?;
        let Some(r) = query_opt(
            &c,
            "SELECT content_type, file_name, size, uploader, created_ts, file_id
             FROM media WHERE origin = $1 AND media_id = $2",
            &[&origin.as_str(), &media_id],
        )
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(MediaRecord {
            origin: origin.to_owned(),
            media_id: media_id.to_owned(),
            content_type: col(&r, 0)?,
            file_name: col(&r, 1)?,
            size: col::<i64>(&r, 2)? as u64,
            uploader: col::<Option<String>>(&r, 3)?.map(parse).transpose()?,
            created_ts: col::<i64>(&r, 4)? as u64,
            file_id: col(&r, 5)?,
        }))
    }
}
