//! 3PID bindings made through this server.

use async_trait::async_trait;
use ruma::UserId;

use super::{PgStorage, col, exec, pg_write, query};
use crate::storage::{
    Result,
    threepid::{ThreepidBinding, ThreepidStorage},
};

#[async_trait]
impl ThreepidStorage for PgStorage {
    async fn add_threepid_binding(&self, user_id: &UserId, binding: &ThreepidBinding) -> Result<()> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO threepid_bindings (user_id, medium, address, id_server)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&user_id.as_str(), &binding.medium, &binding.address, &binding.id_server],
            )
            .await?;
        })
    }

    async fn threepid_bindings(
        &self,
        user_id: &UserId,
        threepid: Option<(&str, &str)>,
    ) -> Result<Vec<ThreepidBinding>> {
        let c = self.client().await?;
        let (medium, address) = threepid.unzip();
        // All of the user's bindings when no 3PID is given.
        let rows = query(
            &c,
            "SELECT medium, address, id_server FROM threepid_bindings
             WHERE user_id = $1 AND ($2::text IS NULL OR (medium = $2 AND address = $3))
             ORDER BY medium, address, id_server",
            &[&user_id.as_str(), &medium, &address],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ThreepidBinding {
                    medium: col(r, 0)?,
                    address: col(r, 1)?,
                    id_server: col(r, 2)?,
                })
            })
            .collect()
    }

    async fn remove_threepid_binding(&self, user_id: &UserId, binding: &ThreepidBinding) -> Result<()> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM threepid_bindings
                 WHERE user_id = $1 AND medium = $2 AND address = $3 AND id_server = $4",
                &[&user_id.as_str(), &binding.medium, &binding.address, &binding.id_server],
            )
            .await?;
        })
    }
}
