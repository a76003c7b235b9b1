//! Background duties across processes: a row of `duties` per duty held,
//! naming the process that holds it until when (the database's clock).
//! A process takes a duty that nobody holds or whose holder let it expire
//! (died), and renews the ones it holds; `crate::federation_client::sender`
//! holds [`crate::cluster::federation_duty`] while it sends to a
//! destination.

use std::time::Duration;

use super::{GenericClient, exec, query_opt};
use crate::storage::{Result, StorageError};

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

/// Gives up `duty` if `holder` holds it.
pub async fn release(c: &impl GenericClient, duty: &str, holder: &str) -> Result<()> {
    exec(
        c,
        "DELETE FROM duties WHERE duty = $1 AND holder = $2",
        &[&duty, &holder],
    )
    .await?;
    Ok(())
}

/// Gives up every duty of `holder` (it stops).
pub async fn release_all(c: &impl GenericClient, holder: &str) -> Result<()> {
    exec(c, "DELETE FROM duties WHERE holder = $1", &[&holder]).await?;
    Ok(())
}

/// Tells the holders of `duties`, but this process, that there is work
/// for them (`<process> queued <holder> <duty>`, at the commit). A duty
/// run out is nobody's: the first process to look takes it.
pub async fn notify_holders(tx: &impl GenericClient, duties: &[String]) -> Result<()> {
    let sql = format!(
        "SELECT pg_notify('weft', concat_ws(' ', current_setting('weft.process', TRUE), 'queued', holder, duty))
         FROM duties WHERE duty = ANY($1) AND expires_ms >= {NOW_MS}
             AND holder IS DISTINCT FROM current_setting('weft.process', TRUE)"
    );
    exec(tx, &sql, &[&duties]).await?;
    Ok(())
}

/// How long a named process's hold on its name lasts unrenewed.
const INSTANCE_TTL: Duration = Duration::from_secs(10);
/// How often a named process renews it.
const INSTANCE_RENEW: Duration = Duration::from_secs(3);

/// Holds the duty `instance <name>` for this start of the process (a
/// random holder: a second process with the same name is told apart from
/// this one's restart only by waiting), renewed until the guard drops.
/// A process killed without stopping leaves its name held for
/// [`INSTANCE_TTL`]: its restart waits that long; a name still held after
/// twice that is another running process's, and this start fails.
pub async fn claim_instance(pool: &deadpool_postgres::Pool, name: &str) -> Result<tokio_util::sync::DropGuard> {
    let duty = format!("instance {name}");
    let holder = format!("{:016x}", rand::random::<u64>());
    let started = tokio::time::Instant::now();
    let mut warned = false;
    loop {
        let held = hold(&pool.get().await?, &duty, &holder, INSTANCE_TTL).await?;
        if held {
            break;
        }
        if started.elapsed() > 2 * INSTANCE_TTL {
            return Err(StorageError::Database(format!(
                "another weft process runs as instance_name {name:?} on this database: \
                 each process needs a name of its own"
            )));
        }
        if !warned {
            tracing::warn!(
                instance_name = name,
                "the name is held, waiting for the process that held it to stop"
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let (stop, pool, name) = (cancel.clone(), pool.clone(), name.to_owned());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(INSTANCE_RENEW) => {}
            }
            let renewed = match pool.get().await {
                Ok(c) => hold(&c, &duty, &holder, INSTANCE_TTL).await,
                Err(e) => Err(e.into()),
            };
            match renewed {
                Ok(true) => {}
                Ok(false) => tracing::error!(instance_name = %name, "another process took this process's name"),
                Err(e) => tracing::warn!(instance_name = %name, error = %e, "cannot renew this process's name"),
            }
        }
        // Stopped: the name is free at once.
        if let Ok(c) = pool.get().await {
            let _ = c
                .execute("DELETE FROM duties WHERE duty = $1 AND holder = $2", &[&duty, &holder])
                .await;
        }
    });
    Ok(cancel.drop_guard())
}
