//! PostgreSQL: weft on a database server that several weft processes can
//! share (`database_url`).
//!
//! The driver is tokio-postgres (async, pipelined, binary protocol) with
//! deadpool-postgres's pool, which keeps a prepared-statement cache per
//! connection: every statement here goes through
//! [`GenericClient::prepare_cached`], so it is parsed once per connection.
//!
//! Writes run in a transaction ([`pg_write!`]); one that loses a race with
//! another writer (a serialization failure, a deadlock) is rolled back and
//! run again. When the server cannot be reached, calls fail with
//! [`StorageError::Unavailable`] (a 503 for clients) and the pool connects
//! again by itself once it is back. Stream positions are described in
//! `schema_v1.sql`: taken at the end of the writing transaction from a
//! counter row, so they commit in order whichever process writes them.

mod account_data;
mod accounts;
mod appservice;
mod backfilled;
mod cluster;
mod duties;
mod e2e;
mod ephemeral;
mod events;
mod history;
mod keys;
mod listen;
mod live;
mod locks;
mod media;
mod partial_state;
mod presence;
mod push;
mod rooms;
mod sliding_sync;
mod state;
mod threepid;
mod transactions;
mod user_directory;

use std::{collections::HashMap, str::FromStr, time::Duration};

use ruma::{OwnedRoomId, RoomId, RoomVersionId};

pub(crate) use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Row, error::SqlState, types::ToSql};

use super::{Result, StorageError, event_cache::EventCache};

/// Migrations, in order; the `schema_version` table records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
    include_str!("schema_v5.sql"),
    include_str!("schema_v6.sql"),
    include_str!("schema_v7.sql"),
    include_str!("schema_v8.sql"),
    include_str!("schema_v9.sql"),
    include_str!("schema_v10.sql"),
];

/// Connections kept at most. Requests wait for one (up to
/// [`POOL_WAIT`]) rather than open more.
const POOL_SIZE: usize = 16;
/// How long a request waits for a free connection, or for a new one to
/// open, before it fails as unavailable.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// A connection unused for this long is closed.
const IDLE_CLOSE: Duration = Duration::from_secs(300);
/// Bytes of events looked up by ID kept in memory (see [`EventCache`]).
const EVENT_CACHE_BYTES: usize = 4 << 20;
/// A write that keeps losing races is given up after this many attempts.
pub(crate) const WRITE_ATTEMPTS: u32 = 8;
/// Serialises schema migrations of processes that start together.
const MIGRATION_LOCK: i64 = 0x7765_6674_0001; // "weft" 1

/// Runs `$body` in a transaction on a pooled connection, bound to `$tx`,
/// and commits it if the body succeeds. The body may `.await` and use `?`.
/// A write conflict ([`StorageError::Conflict`]: serialization failure,
/// deadlock) rolls back and runs the body again; anything else is returned.
///
/// `pg_write!(one self, |c| …)`: a body of one statement, run on the
/// connection as it is: PostgreSQL commits a lone statement by itself, two
/// round trips (`BEGIN`, `COMMIT`) fewer.
macro_rules! pg_write {
    (one $storage:expr, |$c:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result: $crate::storage::Result<_> = async {
                let $c = $storage.client().await?;
                Ok($body)
            }
            .await;
            match result {
                Err($crate::storage::StorageError::Conflict(e)) if attempt < $crate::storage::postgres::WRITE_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "write conflict, running the statement again");
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 5)).await;
                }
                other => break other,
            }
        }
    }};
    ($storage:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result: $crate::storage::Result<_> = async {
                let mut client = $storage.client().await?;
                let $tx = client.transaction().await?;
                let value = $body;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match result {
                Err($crate::storage::StorageError::Conflict(e)) if attempt < $crate::storage::postgres::WRITE_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "write conflict, running the transaction again");
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 5)).await;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use pg_write;

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        let code = e.code().cloned();
        match code {
            Some(c) if c == SqlState::UNIQUE_VIOLATION => StorageError::AlreadyExists,
            Some(c) if c == SqlState::DISK_FULL => StorageError::DiskFull(describe(&e)),
            Some(c) if c == SqlState::T_R_SERIALIZATION_FAILURE || c == SqlState::T_R_DEADLOCK_DETECTED => {
                StorageError::Conflict(e.to_string())
            }
            // Class 08 (connection exception), the server shutting down or
            // starting up, too many connections.
            Some(c)
                if c.code().starts_with("08")
                    || c == SqlState::ADMIN_SHUTDOWN
                    || c == SqlState::CRASH_SHUTDOWN
                    || c == SqlState::CANNOT_CONNECT_NOW
                    || c == SqlState::TOO_MANY_CONNECTIONS =>
            {
                StorageError::Unavailable(e.to_string())
            }
            Some(_) => StorageError::Database(describe(&e)),
            // No SQLSTATE: the connection itself failed (closed, an I/O
            // error, a timeout), or a value did not convert (a bug: the
            // database is fine).
            None if e.is_closed() || io_failure(&e) => StorageError::Unavailable(describe(&e)),
            None => StorageError::Database(describe(&e)),
        }
    }
}

/// An error of the connection: I/O, or a timeout talking to the server.
fn io_failure(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    e.to_string().contains("timeout")
}

/// The error with its cause (tokio-postgres's `Display` alone often says
/// only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => {
                let e = StorageError::from(e);
                match e {
                    StorageError::Database(m) => StorageError::Unavailable(m),
                    e => e,
                }
            }
            e => StorageError::Unavailable(e.to_string()),
        }
    }
}

/// Where a connection string points, for messages: hosts, port and
/// database, never the password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let host = if hosts.is_empty() {
        "localhost".to_owned()
    } else {
        hosts.join(",")
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .map(str::to_owned)
        .or_else(|| config.get_user().map(str::to_owned))
        .unwrap_or_default();
    format!("{host}:{port}/{db}")
}

pub struct PgStorage {
    pool: Pool,
    /// The room locks this process holds (`locks.rs`).
    locks: std::sync::Arc<locks::HeldLocks>,
    events: std::sync::Arc<EventCache>,
    /// Room versions read so far: a room's never changes, so every process
    /// may keep them (one statement less per event received).
    room_versions: std::sync::Mutex<HashMap<OwnedRoomId, RoomVersionId>>,
    /// How to connect, for the connection that hears other processes.
    config: tokio_postgres::Config,
    /// This process's name in its events' notifications and the duties
    /// it holds.
    process: String,
    /// Holds `instance_name` while the storage lives (`duties.rs`).
    _instance: Option<tokio_util::sync::DropGuard>,
}

impl PgStorage {
    /// Connects to the database at `url` (a `postgres://` URL or a
    /// `key=value` string; a Unix socket is a `host` that is a path) and
    /// brings its schema up to date. Fails within seconds, naming the
    /// server and database, when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<PgStorage> {
        Self::connect_as(url, None).await
    }

    /// [`Self::connect`], as the process `instance` of several over this
    /// database (`instance_name`); `None`: a random name. A named process
    /// holds its name in the database while it runs (`duties.rs`): a start
    /// under a name in use waits for that process to stop, then fails.
    pub async fn connect_as(url: &str, instance: Option<&str>) -> Result<PgStorage> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StorageError::Database(format!("database_url is not a PostgreSQL connection string: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_WAIT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("weft");
        }
        // No JIT compilation: weft's statements are short lookups, but
        // PostgreSQL's estimate of a recursive walk (an auth chain) passes
        // the JIT threshold, and compiling took 40-80 ms of a 0.1 ms query.
        // Options of the connection string come after, and win.
        // `weft.process` names this process to the others: its events'
        // notifications carry it (see `listen.rs`).
        let process = match instance {
            Some(name) => name.to_owned(),
            None => format!("{:016x}", rand::random::<u64>()),
        };
        let options = match config.get_options() {
            Some(given) => format!("-c jit=off -c weft.process={process} {given}"),
            None => format!("-c jit=off -c weft.process={process}"),
        };
        config.options(&options);
        let target = describe_target(&config);
        let pool = |size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                tokio_postgres::NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(POOL_WAIT))
                .recycle_timeout(Some(POOL_WAIT))
                .build()
                .map_err(|e| StorageError::Database(format!("database pool: {e}")))
        };
        let (pool, locks) = (pool(POOL_SIZE)?, pool(locks::LOCK_CONNECTIONS)?);
        close_idle_connections(&pool);
        close_idle_connections(&locks);
        analyze_growing_tables(&pool);
        let storage = PgStorage {
            pool,
            locks: locks::HeldLocks::new(locks, process.clone()),
            events: std::sync::Arc::new(EventCache::new(EVENT_CACHE_BYTES)),
            room_versions: Default::default(),
            config,
            process,
            _instance: None,
        };
        let mut client = storage.pool.get().await.map_err(|e| {
            let cause = match StorageError::from(e) {
                StorageError::Unavailable(m) | StorageError::Database(m) => m,
                other => other.to_string(),
            };
            StorageError::Unavailable(format!("cannot connect to PostgreSQL at {target}: {cause}"))
        })?;
        migrate(&mut client).await?;
        drop(client);
        let mut storage = storage;
        if instance.is_some() {
            storage._instance = Some(duties::claim_instance(&storage.pool, &storage.process).await?);
        }
        Ok(storage)
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client> {
        Ok(self.pool.get().await?)
    }

    fn keep_room_version(&self, room_id: &RoomId, version: &RoomVersionId) {
        let mut versions = self.room_versions.lock().expect("room versions");
        if !versions.contains_key(room_id) {
            versions.insert(room_id.to_owned(), version.clone());
        }
    }
}

/// Closes, once a minute, the connections unused for [`IDLE_CLOSE`]: the
/// pool would otherwise keep what a burst opened. Ends with the pool.
fn close_idle_connections(pool: &Pool) {
    let weak = pool.weak();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { break };
            pool.retain(|_, metrics| metrics.last_used() < IDLE_CLOSE);
        }
    });
}

/// The tables a room's DAG lives in, whose plans go wrong while the
/// planner takes them for smaller than they are.
const DAG_TABLES: &[&str] = &[
    "events",
    "event_edges",
    "event_auth",
    "state_groups",
    "state_group_entries",
    "current_state",
    "forward_extremities",
    "backward_extremities",
];
/// Serialises the [`analyze_growing_tables`] of several processes.
const ANALYZE_LOCK: i64 = 0x7765_6674_0003; // "weft" 3

/// Every few seconds, `ANALYZE`s the DAG's tables that grew by a fifth
/// since they were last analysed. A server that joins a big room or
/// backfills grows them from nothing within seconds; autovacuum looks once
/// a minute, and until it has, the plans cached with each connection's
/// prepared statements take them for tiny and scan a room to find one row
/// (an `ANALYZE` makes PostgreSQL plan them again). Ends with the pool.
fn analyze_growing_tables(pool: &Pool) {
    let weak = pool.weak();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { break };
            if let Err(e) = analyze_if_grown(&pool).await {
                tracing::debug!(error = %e, "analysing the DAG's tables");
            }
        }
    });
}

async fn analyze_if_grown(pool: &Pool) -> Result<()> {
    let client = pool.get().await?;
    let grown = query(
        &client,
        "SELECT relname::text FROM pg_stat_user_tables
         WHERE schemaname = current_schema() AND relname = ANY($1)
           AND n_mod_since_analyze > GREATEST(200, n_live_tup / 5)",
        &[&DAG_TABLES],
    )
    .await?;
    if grown.is_empty() {
        return Ok(());
    }
    let locked: bool = col(
        &query_one(&client, "SELECT pg_try_advisory_lock($1)", &[&ANALYZE_LOCK]).await?,
        0,
    )?;
    if !locked {
        return Ok(());
    }
    let tables: Vec<String> = grown.iter().map(|r| col(r, 0)).collect::<Result<_>>()?;
    // Names from the fixed list above, not from outside.
    let result = client.batch_execute(&format!("ANALYZE {}", tables.join(", "))).await;
    query_one(&client, "SELECT pg_advisory_unlock($1)", &[&ANALYZE_LOCK]).await?;
    result?;
    tracing::debug!(?tables, "analysed");
    Ok(())
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<()> {
    // Processes starting together: one migrates, the others wait for it.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result?;
    unlock?;
    Ok(())
}

async fn migrate_locked(client: &mut deadpool_postgres::Client) -> Result<()> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .await?;
    let version: i64 = client
        .query_opt("SELECT version FROM schema_version", &[])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(0);
    let version = usize::try_from(version).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StorageError::Database(format!(
            "the database has schema version {version}, newer than this weft ({}); refusing to touch it",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute("DELETE FROM schema_version", &[]).await?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&((i + 1) as i64)])
            .await?;
        tx.commit().await?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}

/// A read-only transaction that sees one snapshot of the database, for
/// reads of several statements that must agree (a walk of the DAG).
pub(crate) async fn read_snapshot(c: &mut deadpool_postgres::Client) -> Result<deadpool_postgres::Transaction<'_>> {
    Ok(c.build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?)
}

/// Parameters of a statement.
pub(crate) type Params<'a> = [&'a (dyn ToSql + Sync)];

/// A failed statement's error, naming the statement when the failure is
/// the statement's own (not the connection's).
fn in_statement(e: tokio_postgres::Error, sql: &str) -> StorageError {
    match StorageError::from(e) {
        StorageError::Database(message) => {
            let sql: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            let sql: String = sql.chars().take(120).collect();
            StorageError::Database(format!("{message} (in `{sql}`)"))
        }
        other => other,
    }
}

/// The rows of a statement, through the connection's statement cache.
pub(crate) async fn query(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| in_statement(e, sql))?;
    c.query(&stmt, params).await.map_err(|e| in_statement(e, sql))
}

/// The one row of a statement, or none.
pub(crate) async fn query_opt(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| in_statement(e, sql))?;
    c.query_opt(&stmt, params).await.map_err(|e| in_statement(e, sql))
}

/// The one row of a statement (an error if there is none).
pub(crate) async fn query_one(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<Row> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| in_statement(e, sql))?;
    c.query_one(&stmt, params).await.map_err(|e| in_statement(e, sql))
}

/// Runs a statement; how many rows it changed.
pub(crate) async fn exec(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> Result<u64> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| in_statement(e, sql))?;
    c.execute(&stmt, params).await.map_err(|e| in_statement(e, sql))
}

/// Column `i` of a row.
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    Ok(row.try_get(i)?)
}

/// Takes the next position of `stream` (a row of `stream_positions`). The
/// row stays locked until the transaction ends, so positions of a stream
/// commit in the order they were taken: call it last in a transaction,
/// just before writing the rows that carry the position. The other
/// processes are told `<process> <stream> <position> [<concerns>]`, where
/// `concerns` says whom the change concerns (a user, a room, …: see
/// `listen.rs`).
pub(crate) async fn next_position_of(tx: &impl GenericClient, stream: &str, concerns: Option<&str>) -> Result<i64> {
    // Other processes hear of the position at the commit (`listen.rs`).
    let row = query_one(
        tx,
        "UPDATE stream_positions SET position = position + 1 WHERE stream = $1
         RETURNING position, pg_notify('weft', concat_ws(' ',
             current_setting('weft.process', TRUE), stream, position, $2::text))::text",
        &[&stream, &concerns],
    )
    .await?;
    col(&row, 0)
}

/// The newest committed position of `stream`.
pub(crate) async fn stream_head(c: &impl GenericClient, stream: &str) -> Result<i64> {
    let row = query_one(c, "SELECT position FROM stream_positions WHERE stream = $1", &[&stream]).await?;
    col(&row, 0)
}

pub(crate) use super::{now_ms, parse};

/// A `u64` for a `BIGINT` column (saturating).
pub(crate) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
