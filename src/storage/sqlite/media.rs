//! The media repository's metadata (`schema_v14.sql`).

use async_trait::async_trait;
use ruma::ServerName;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStorage, accounts::parse, exec, query_one};
use crate::storage::{
    Result,
    media::{MediaRecord, MediaStorage},
};

#[async_trait]
impl MediaStorage for SqliteStorage {
    async fn put_media(&self, record: MediaRecord) -> Result<()> {
        self.write(move |tx| {
            exec(
                tx,
                "INSERT INTO media (origin, media_id, content_type, file_name, size, uploader, created_ts, file_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    record.origin.as_str(),
                    record.media_id,
                    record.content_type,
                    record.file_name,
                    record.size as i64,
                    record.uploader.as_ref().map(|u| u.as_str()),
                    record.created_ts as i64,
                    record.file_id,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn media(&self, origin: &ServerName, media_id: &str) -> Result<Option<MediaRecord>> {
        let (origin, media_id) = (origin.to_owned(), media_id.to_owned());
        self.read(move |c| {
            let row = query_one(
                c,
                "SELECT content_type, file_name, size, uploader, created_ts, file_id
                 FROM media WHERE origin = ?1 AND media_id = ?2",
                params![origin.as_str(), media_id],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()?;
            let Some((content_type, file_name, size, uploader, created_ts, file_id)) = row else {
                return Ok(None);
            };
            Ok(Some(MediaRecord {
                origin,
                media_id,
                content_type,
                file_name,
                size: size as u64,
                uploader: uploader.map(parse).transpose()?,
                created_ts: created_ts as u64,
                file_id,
            }))
        })
        .await
    }
}
