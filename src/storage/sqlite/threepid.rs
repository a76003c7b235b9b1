//! 3PID bindings made through this server (`schema_v17.sql`).

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStorage, exec};
use crate::storage::{
    Result,
    threepid::{ThreepidBinding, ThreepidStorage},
};

#[async_trait]
impl ThreepidStorage for SqliteStorage {
    async fn add_threepid_binding(&self, user_id: &ruma::UserId, binding: &ThreepidBinding) -> Result<()> {
        let (user_id, b) = (user_id.to_owned(), binding.clone());
        self.write(move |tx| {
            exec(
                tx,
                "INSERT OR IGNORE INTO threepid_bindings (user_id, medium, address, id_server)
                 VALUES (?1, ?2, ?3, ?4)",
                params![user_id.as_str(), b.medium, b.address, b.id_server],
            )?;
            Ok(())
        })
        .await
    }

    async fn threepid_bindings(
        &self,
        user_id: &ruma::UserId,
        threepid: Option<(&str, &str)>,
    ) -> Result<Vec<ThreepidBinding>> {
        let user_id = user_id.to_owned();
        let threepid = threepid.map(|(m, a)| (m.to_owned(), a.to_owned()));
        self.read(move |c| {
            let row = |r: &rusqlite::Row<'_>| {
                Ok(ThreepidBinding {
                    medium: r.get(0)?,
                    address: r.get(1)?,
                    id_server: r.get(2)?,
                })
            };
            let bindings = match threepid {
                Some((medium, address)) => c
                    .prepare_cached(
                        "SELECT medium, address, id_server FROM threepid_bindings
                         WHERE user_id = ?1 AND medium = ?2 AND address = ?3 ORDER BY id_server",
                    )?
                    .query_map(params![user_id.as_str(), medium, address], row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => c
                    .prepare_cached(
                        "SELECT medium, address, id_server FROM threepid_bindings
                         WHERE user_id = ?1 ORDER BY medium, address, id_server",
                    )?
                    .query_map(params![user_id.as_str()], row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(bindings)
        })
        .await
    }

    async fn remove_threepid_binding(&self, user_id: &ruma::UserId, binding: &ThreepidBinding) -> Result<()> {
        let (user_id, b) = (user_id.to_owned(), binding.clone());
        self.write(move |tx| {
            exec(
                tx,
                "DELETE FROM threepid_bindings
                 WHERE user_id = ?1 AND medium = ?2 AND address = ?3 AND id_server = ?4",
                params![user_id.as_str(), b.medium, b.address, b.id_server],
            )?;
            Ok(())
        })
        .await
    }
}
