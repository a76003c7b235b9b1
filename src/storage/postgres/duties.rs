//! Background duties across processes: a row of `duties` per duty held,
//! naming the process that holds it until when (the database's clock).
//! A process takes a duty that nobody holds or whose holder let it expire
//! (died), and renews the ones it holds; `crate::federation_client::sender`
//! holds [`crate::storage::federation_duty`] while it sends to a
//! destination.

use std::time::Duration;

use super::{GenericClient, query_opt};
use crate::storage::Result;

/// The database's clock, in ms.
pub const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

/// Takes or renews `duty` for `holder` for `ttl`; false while another
/// process holds it.
pub async fn hold(c: &impl GenericClient, duty: &str, holder: &str, ttl: Duration) -> Result<bool> {
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let sql = format!(
        "INSERT INTO duties (duty, holder, expires_ms) VALUES ($1, $2, {NOW_MS} + $3)
         ON CONFLICT (duty) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
         WHERE duties.holder = excluded.holder OR duties.expires_ms < {NOW_MS}
         RETURNING 1"
    );
    Ok(query_opt(c, &sql, &[&duty, &holder, &ttl]).await?.is_some())
}
