//! The embedded default: SQLite in WAL mode under the data directory.
//!
//! One writer connection (SQLite serialises writers anyway) and a small
//! pool of readers, which WAL lets run beside the writer. Every call runs
//! on tokio's blocking pool. Recently used events are cached.

mod account_data;
mod accounts;
mod appservice;
mod e2e;
mod ephemeral;
mod events;
mod history;
mod keys;
mod media;
mod partial_state;
mod presence;
mod push;
mod sliding_sync;
mod state;
mod threepid;
mod transactions;
mod user_directory;

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use crate::{
    events::Pdu,
    storage::{Receipt, RemoteInvite, RoomTyping, Typing},
};
use async_trait::async_trait;
use ruma::{
    DeviceId, EventId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, RoomId,
    ServerName, UserId, events::StateEventType,
};
use rusqlite::{Connection, OpenFlags, Transaction};

use super::{
    Device, Direction, Membership, NewTimelineEvent, Persisted, Result, RoomInfo, ServerKey, StateGroupId, StateKey,
    StateWrite, Storage, StorageError, StoredEvent, StoredGroup, StreamOrdering, TokenOwner, TopoKey, TxnKey,
    UserRecord, event_cache::EventCache,
};

/// Migrations, in order; `PRAGMA user_version` records how many ran.
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
    include_str!("schema_v11.sql"),
    include_str!("schema_v12.sql"),
    include_str!("schema_v13.sql"),
    include_str!("schema_v14.sql"),
    include_str!("schema_v15.sql"),
    include_str!("schema_v16.sql"),
    include_str!("schema_v17.sql"),
    include_str!("schema_v18.sql"),
    include_str!("schema_v19.sql"),
    include_str!("schema_v20.sql"),
    include_str!("schema_v21.sql"),
    include_str!("schema_v22.sql"),
    include_str!("schema_v23.sql"),
    include_str!("schema_v24.sql"),
    include_str!("schema_v25.sql"),
    include_str!("schema_v26.sql"),
    include_str!("schema_v27.sql"),
];

/// Reader connections open at once, at most: more readers than cores gain
/// nothing, and each costs file descriptors that SQLite keeps (for reuse)
/// until every connection to the file is closed.
const MAX_READERS: usize = 8;
/// Idle readers kept open: all of them. Opening one parses the schema, so
/// closing the ones beyond a smaller number made a steady load open and
/// close a connection per read.
const MAX_IDLE_READERS: usize = MAX_READERS;
/// Bytes of events looked up by ID (state and auth events, mostly) kept
/// in memory. Pages of timeline are read in bulk and not cached: each is
/// read once.
const EVENT_CACHE_BYTES: usize = 4 << 20;

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                StorageError::AlreadyExists
            }
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                StorageError::DiskFull(e.to_string())
            }
            e => StorageError::Database(e.to_string()),
        }
    }
}

pub struct SqliteStorage {
    path: std::path::PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per reader connection open ([`MAX_READERS`]).
    reading: Arc<tokio::sync::Semaphore>,
    events: Arc<EventCache>,
    /// Whether any user was ever erased: until one is, `erased_users`
    /// (asked for every page of history read) answers without a query.
    /// This process is the database's only writer, so the flag is exact.
    any_erased: Arc<std::sync::atomic::AtomicBool>,
}

/// The event ID of an element `l` of `json_each` over an event's
/// `prev_events` or `auth_events`: the element, or the first of an
/// `[ID, hashes]` pair (room versions 1 and 2).
pub(crate) const LISTED_ID: &str = "CASE l.type WHEN 'array' THEN l.value ->> 0 ELSE l.value END";

/// WAL pages after which a commit copies them into the database file
/// (SQLite's default is 1,000, 4 MiB). A page written by many commits is
/// copied once per checkpoint: a room's hot index pages are rewritten by
/// every commit. Receiving 10,000 PDUs (benches/write_path.rs), the
/// default's checkpoints took 12% of the CPU, these 5%. The WAL grows to
/// about 40 MiB. (With `synchronous = NORMAL`, a power cut may lose the
/// commits since the last checkpoint: more of them now; a crash of weft
/// loses none.)
const WAL_CHECKPOINT_PAGES: u32 = 10_000;

impl SqliteStorage {
    /// Opens (creating if needed) `data_dir/weft.db` and runs migrations.
    pub fn open(data_dir: &Path) -> Result<SqliteStorage> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StorageError::Database(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join("weft.db");
        // The writer's page cache: 64 MiB. A big write (a join's 20,000
        // state events, each inserted at a random place in the event ID
        // indexes) spilled a 2 MiB cache to the WAL mid-transaction and
        // read pages back; readers' caches are dropped at every write
        // anyway, so they keep the small one.
        let mut writer = Self::connect(&path, 65536)?;
        migrate(&mut writer)?;
        let any_erased: bool =
            writer.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE erased = 1)", [], |r| r.get(0))?;
        Ok(SqliteStorage {
            path,
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(Mutex::new(Vec::new())),
            reading: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)),
            events: Arc::new(EventCache::new(EVENT_CACHE_BYTES)),
            any_erased: Arc::new(std::sync::atomic::AtomicBool::new(any_erased)),
        })
    }

    fn connect(path: &Path, cache_kib: u32) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        // The bundled SQLite is built with STAT4: without the query
        // planner stability guarantee, a cached statement whose plan may
        // depend on a bound value is re-parsed from its SQL on every run
        // (rusqlite clears the bindings when the cache takes it back, which
        // expires it). With QPSG the plan is made once.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = OFF;
             PRAGMA cache_size = -{cache_kib};
             PRAGMA temp_store = MEMORY;
             PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES};"
        ))?;
        Ok(conn)
    }

    /// Runs `f` on a reader connection, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let permit = self
            .reading
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StorageError::Database(format!("reader pool closed: {e}")))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = readers.lock().expect("reader pool lock").pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => Self::connect(&path, 1024)?,
            };
            let result = f(&conn);
            let mut pool = readers.lock().expect("reader pool lock");
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StorageError::Database(format!("storage task failed: {e}")))?
    }

    /// [`Self::read`] with `f`'s statements in one read transaction: one
    /// snapshot and one lock for many statements (a statement on its own
    /// takes the WAL's read lock, and may find its page cache stale, every
    /// time).
    async fn read_together<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` in a write transaction, committed if `f` succeeds.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
        .map_err(|e| StorageError::Database(format!("storage task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(StorageError::Database(format!(
            "the database has schema version {version}, newer than this weft ({}); \
             refusing to touch it",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}

/// `execute` through the connection's statement cache: hot paths run the
/// same statements over and over, and parsing SQL is not free.
pub(crate) fn exec(c: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the statement cache.
pub(crate) fn query_one<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(params, f)
}

pub(crate) use super::now_ms;

/// Takes the next position of `stream` (a row of `stream_positions`),
/// inside the write transaction: the writer is one connection in an
/// immediate transaction, so positions are committed in order.
pub(crate) fn next_position(tx: &Transaction<'_>, stream: &str) -> Result<i64> {
    Ok(query_one(
        tx,
        "UPDATE stream_positions SET position = position + 1 WHERE stream = ?1 RETURNING position",
        [stream],
        |r| r.get(0),
    )?)
}

/// The newest position of `stream` handed out.
pub(crate) fn stream_head(c: &Connection, stream: &str) -> Result<i64> {
    Ok(query_one(
        c,
        "SELECT position FROM stream_positions WHERE stream = ?1",
        [stream],
        |r| r.get(0),
    )?)
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn create_user(&self, user: UserRecord) -> Result<()> {
        self.write(move |tx| {
            accounts::create_user(tx, &user)?;
            user_directory::local_profile_changed(tx, &user.user_id)
        })
        .await
    }

    async fn user(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        let user_id = user_id.to_owned();
        self.read(move |c| accounts::user(c, &user_id)).await
    }

    async fn set_password_hash(&self, user_id: &UserId, hash: &str) -> Result<()> {
        let (user_id, hash) = (user_id.to_owned(), hash.to_owned());
        self.write(move |tx| accounts::set_password_hash(tx, &user_id, &hash))
            .await
    }

    async fn device_seen(&self, user_id: &UserId, device_id: &DeviceId, seen: &crate::connections::Seen) -> Result<()> {
        let (user_id, device_id, seen) = (user_id.to_owned(), device_id.to_owned(), seen.clone());
        self.write(move |tx| accounts::device_seen(tx, &user_id, &device_id, &seen))
            .await
    }

    async fn erase_user(&self, user_id: &UserId) -> Result<()> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            exec(tx, "UPDATE users SET erased = 1 WHERE user_id = ?1", [user_id.as_str()])?;
            exec(tx, "DELETE FROM account_data WHERE user_id = ?1", [user_id.as_str()])?;
            Ok(())
        })
        .await?;
        self.any_erased.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn erased_users(&self, users: &[OwnedUserId]) -> Result<std::collections::HashSet<OwnedUserId>> {
        if !self.any_erased.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(std::collections::HashSet::new());
        }
        let users = users.to_vec();
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT erased FROM users WHERE user_id = ?1")?;
            let mut erased = std::collections::HashSet::new();
            for user in users {
                let flag: Option<bool> =
                    rusqlite::OptionalExtension::optional(stmt.query_row([user.as_str()], |r| r.get(0)))?;
                if flag == Some(true) {
                    erased.insert(user);
                }
            }
            Ok(erased)
        })
        .await
    }

    async fn upgrade_guest(&self, user_id: &UserId, hash: &str) -> Result<()> {
        let (user_id, hash) = (user_id.to_owned(), hash.to_owned());
        self.write(move |tx| accounts::upgrade_guest(tx, &user_id, &hash)).await
    }

    async fn set_profile(
        &self,
        user_id: &UserId,
        displayname: Option<Option<&str>>,
        avatar_url: Option<Option<&str>>,
    ) -> Result<()> {
        let user_id = user_id.to_owned();
        let displayname = displayname.map(|d| d.map(str::to_owned));
        let avatar_url = avatar_url.map(|a| a.map(str::to_owned));
        self.write(move |tx| {
            accounts::set_profile(tx, &user_id, displayname, avatar_url)?;
            user_directory::local_profile_changed(tx, &user_id)
        })
        .await
    }

    async fn create_session(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
        token: &str,
    ) -> Result<()> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        let (display_name, token) = (display_name.map(str::to_owned), token.to_owned());
        self.write(move |tx| accounts::create_session(tx, &user_id, &device_id, display_name.as_deref(), &token))
            .await
    }

    async fn token_owner(&self, token: &str) -> Result<Option<TokenOwner>> {
        let token = token.to_owned();
        self.read(move |c| accounts::token_owner(c, &token)).await
    }

    async fn delete_token(&self, token: &str) -> Result<()> {
        let token = token.to_owned();
        self.write(move |tx| accounts::delete_token(tx, &token)).await
    }

    async fn delete_all_tokens(&self, user_id: &UserId) -> Result<()> {
        let user_id = user_id.to_owned();
        self.write(move |tx| accounts::delete_all_tokens(tx, &user_id)).await
    }

    async fn devices(&self, user_id: &UserId) -> Result<Vec<Device>> {
        let user_id = user_id.to_owned();
        self.read(move |c| accounts::devices(c, &user_id)).await
    }

    async fn save_filter(&self, user_id: &UserId, filter: &str) -> Result<String> {
        let (user_id, filter) = (user_id.to_owned(), filter.to_owned());
        self.write(move |tx| accounts::save_filter(tx, &user_id, &filter)).await
    }

    async fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<String>> {
        let (user_id, filter_id) = (user_id.to_owned(), filter_id.to_owned());
        self.read(move |c| accounts::filter(c, &user_id, &filter_id)).await
    }

    async fn create_alias(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
        let (alias, room_id, creator) = (alias.to_owned(), room_id.to_owned(), creator.to_owned());
        self.write(move |tx| accounts::create_alias(tx, &alias, &room_id, &creator))
            .await
    }

    async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>> {
        let alias = alias.to_owned();
        self.read(move |c| accounts::resolve_alias(c, &alias)).await
    }

    async fn delete_alias(&self, alias: &RoomAliasId) -> Result<bool> {
        let alias = alias.to_owned();
        self.write(move |tx| accounts::delete_alias(tx, &alias)).await
    }

    async fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let room_id = room_id.to_owned();
        self.read(move |c| accounts::room_aliases(c, &room_id)).await
    }

    async fn move_aliases(&self, old: &RoomId, new: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let (old, new) = (old.to_owned(), new.to_owned());
        self.write(move |tx| accounts::move_aliases(tx, &old, &new)).await
    }

    async fn set_room_published(&self, room_id: &RoomId, published: bool) -> Result<()> {
        let room_id = room_id.to_owned();
        self.write(move |tx| events::set_room_published(tx, &room_id, published))
            .await
    }

    async fn published_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        self.read(events::published_rooms).await
    }

    async fn room(&self, room_id: &RoomId) -> Result<Option<RoomInfo>> {
        let room_id = room_id.to_owned();
        self.read(move |c| events::room(c, &room_id)).await
    }

    async fn add_room(&self, room_id: &RoomId, version: &ruma::RoomVersionId) -> Result<()> {
        let (room_id, version) = (room_id.to_owned(), version.to_string());
        self.write(move |tx| {
            exec(
                tx,
                "INSERT OR IGNORE INTO rooms (room_id, room_version, created_ts) VALUES (?1, ?2, ?3)",
                rusqlite::params![room_id.as_str(), version, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    async fn event(&self, event_id: &EventId) -> Result<Option<StoredEvent>> {
        Ok(self.events(&[event_id.to_owned()]).await?.pop())
    }

    async fn events(&self, ids: &[OwnedEventId]) -> Result<Vec<StoredEvent>> {
        self.events
            .get_or_load(ids, |missing| {
                self.read_together(move |c| {
                    missing
                        .iter()
                        .filter_map(|id| events::event(c, id).transpose())
                        .collect::<Result<Vec<_>>>()
                })
            })
            .await
    }

    async fn event_keys(&self, ids: &[OwnedEventId]) -> Result<Vec<crate::storage::EventKey>> {
        let ids = ids.to_vec();
        self.read_together(move |c| events::event_keys(c, &ids)).await
    }

    async fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
        let room_id = room_id.to_owned();
        self.read(move |c| events::forward_extremities(c, &room_id)).await
    }

    async fn children(&self, event_id: &EventId) -> Result<Vec<OwnedEventId>> {
        let event_id = event_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT g.event_id FROM event_edges g JOIN events e ON e.event_id = g.event_id
                 WHERE g.prev_event_id = ?1 AND e.outlier = 0",
            )?;
            let rows = stmt.query_map([event_id.as_str()], |r| r.get::<_, String>(0))?;
            rows.map(|r| {
                let id = r?;
                OwnedEventId::try_from(id.clone()).map_err(|_| StorageError::Corrupt(format!("event ID {id:?}")))
            })
            .collect()
        })
        .await
    }

    async fn backward_extremities(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
        let room_id = room_id.to_owned();
        self.read(move |c| events::backward_extremities(c, &room_id)).await
    }

    async fn persist_timeline_events(&self, events: Vec<NewTimelineEvent>) -> Result<Vec<Persisted>> {
        let writes = self.events.writes();
        let events = Arc::new(events);
        let written = events.clone();
        let persisted = self
            .write(move |tx| {
                written
                    .iter()
                    .map(|event| events::persist_timeline_event(tx, event))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        for (event, persisted) in events.iter().zip(&persisted) {
            self.events.written(event, persisted, writes);
        }
        Ok(persisted)
    }

    async fn persist_timeline_event(&self, event: NewTimelineEvent) -> Result<Persisted> {
        let writes = self.events.writes();
        let event = Arc::new(event);
        let written = event.clone();
        let persisted = self
            .write(move |tx| events::persist_timeline_event(tx, &written))
            .await?;
        // (It may have been held as an outlier: the cache has it anew.)
        self.events.written(&event, &persisted, writes);
        Ok(persisted)
    }

    async fn persist_outliers(&self, outliers: Vec<(Arc<Pdu>, Option<String>)>) -> Result<()> {
        let ids: Vec<OwnedEventId> = outliers.iter().map(|(pdu, _)| pdu.event_id.clone()).collect();
        self.write(move |tx| events::persist_outliers(tx, &outliers)).await?;
        for id in &ids {
            self.events.forget(id);
        }
        Ok(())
    }

    async fn next_expiry(&self) -> Result<Option<(OwnedEventId, u64)>> {
        self.read(events::next_expiry).await
    }

    async fn expire_event(&self, event_id: &EventId, pruned_json: Option<&str>) -> Result<bool> {
        let (id, json) = (event_id.to_owned(), pruned_json.map(str::to_owned));
        let expired = self
            .write(move |tx| events::expire_event(tx, &id, json.as_deref()))
            .await?;
        self.events.forget(event_id);
        Ok(expired)
    }

    async fn txn_event(&self, txn: &TxnKey) -> Result<Option<OwnedEventId>> {
        let txn = txn.clone();
        self.read(move |c| events::txn_event(c, &txn)).await
    }

    async fn apply_redaction(&self, event_id: &EventId, redacted_json: &str, redacted_by: &EventId) -> Result<()> {
        let (id, json, by) = (event_id.to_owned(), redacted_json.to_owned(), redacted_by.to_owned());
        self.write(move |tx| events::apply_redaction(tx, &id, &json, &by))
            .await?;
        self.events.forget(event_id);
        Ok(())
    }

    async fn timeline_page(
        &self,
        room_id: &RoomId,
        from: TopoKey,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let room_id = room_id.to_owned();
        self.read(move |c| events::timeline_page(c, &room_id, from, dir, limit))
            .await
    }

    async fn event_near_timestamp(&self, room_id: &RoomId, ts: u64, dir: Direction) -> Result<Option<StoredEvent>> {
        let room_id = room_id.to_owned();
        self.read(move |c| events::event_near_timestamp(c, &room_id, ts, dir))
            .await
    }

    async fn stream_page(
        &self,
        room_id: &RoomId,
        after: StreamOrdering,
        upto: StreamOrdering,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let room_id = room_id.to_owned();
        self.read(move |c| events::stream_page(c, &room_id, after, upto, limit))
            .await
    }

    async fn topo_key_at_stream(&self, room_id: &RoomId, stream: StreamOrdering) -> Result<Option<TopoKey>> {
        let room_id = room_id.to_owned();
        self.read(move |c| events::topo_key_at_stream(c, &room_id, stream))
            .await
    }

    async fn max_stream_ordering(&self) -> Result<StreamOrdering> {
        self.read(events::max_stream_ordering).await
    }

    async fn store_state_group(&self, room_id: &RoomId, state: StateWrite) -> Result<StateGroupId> {
        let room_id = room_id.to_owned();
        self.write(move |tx| state::write_state(tx, &room_id, &state)).await
    }

    async fn state_group(&self, group: StateGroupId) -> Result<Vec<(StateKey, OwnedEventId)>> {
        self.read(move |c| state::load_group(c, group)).await
    }

    async fn state_group_chain(&self, group: StateGroupId) -> Result<Vec<StateGroupId>> {
        self.read(move |c| state::chain(c, group)).await
    }

    async fn state_group_entries(&self, groups: &[StateGroupId]) -> Result<Vec<StoredGroup>> {
        let groups = groups.to_vec();
        self.read(move |c| state::group_entries(c, &groups)).await
    }

    async fn state_group_entry(&self, group: StateGroupId, key: &StateKey) -> Result<Option<OwnedEventId>> {
        let key = key.clone();
        self.read_together(move |c| state::group_entry(c, group, &key)).await
    }

    async fn current_state(
        &self,
        room_id: &RoomId,
        event_type: Option<&StateEventType>,
    ) -> Result<Vec<(StateKey, OwnedEventId)>> {
        let room_id = room_id.to_owned();
        let event_type = event_type.cloned();
        self.read(move |c| state::current_state(c, &room_id, event_type.as_ref()))
            .await
    }

    async fn room_members(&self, room_id: &RoomId, membership: Option<&str>) -> Result<Vec<Membership>> {
        let room_id = room_id.to_owned();
        let membership = membership.map(str::to_owned);
        self.read(move |c| state::room_members(c, &room_id, membership.as_deref()))
            .await
    }

    async fn user_memberships(&self, user_id: &UserId) -> Result<Vec<Membership>> {
        let user_id = user_id.to_owned();
        self.read(move |c| state::user_memberships(c, &user_id)).await
    }

    async fn membership_changes(
        &self,
        user_id: &UserId,
        after: StreamOrdering,
        upto: StreamOrdering,
    ) -> Result<Vec<OwnedRoomId>> {
        let user_id = user_id.to_owned();
        self.read(move |c| state::membership_changes(c, &user_id, after, upto))
            .await
    }

    async fn auth_chain(&self, event_ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
        let (ids, cache) = (event_ids.to_vec(), self.events.clone());
        self.read(move |c| history::auth_chain(c, &ids, |id| cache.auth_events(id)))
            .await
    }

    async fn backfill(&self, room_id: &RoomId, from: &[OwnedEventId], limit: usize) -> Result<Vec<StoredEvent>> {
        let (room_id, from) = (room_id.to_owned(), from.to_vec());
        self.read(move |c| history::backfill(c, &room_id, &from, limit)).await
    }

    async fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<StoredEvent>> {
        let (room_id, earliest, latest) = (room_id.to_owned(), earliest.to_vec(), latest.to_vec());
        self.read(move |c| history::missing_events(c, &room_id, &earliest, &latest, limit, min_depth))
            .await
    }

    async fn store_server_keys(
        &self,
        server: &ServerName,
        keys: &[ServerKey],
        document: Option<(&str, u64)>,
    ) -> Result<()> {
        let (server, keys) = (server.to_owned(), keys.to_vec());
        let document = document.map(|(json, until)| (json.to_owned(), until));
        self.write(move |tx| {
            keys::store_server_keys(tx, &server, &keys, document.as_ref().map(|(j, u)| (j.as_str(), *u)))
        })
        .await
    }

    async fn server_keys(&self, server: &ServerName) -> Result<Vec<ServerKey>> {
        let server = server.to_owned();
        self.read(move |c| keys::server_keys(c, &server)).await
    }

    async fn server_key_documents(
        &self,
        server: &ServerName,
        key_ids: &[String],
    ) -> Result<Vec<(String, String, u64)>> {
        let (server, key_ids) = (server.to_owned(), key_ids.to_vec());
        self.read(move |c| keys::server_key_documents(c, &server, &key_ids))
            .await
    }

    async fn received_transaction(&self, origin: &ServerName, txn_id: &str) -> Result<Option<String>> {
        let (origin, txn_id) = (origin.to_owned(), txn_id.to_owned());
        self.read(move |c| transactions::received(c, &origin, &txn_id)).await
    }

    async fn store_received_transaction(&self, origin: &ServerName, txn_id: &str, response: &str) -> Result<()> {
        let (origin, txn_id, response) = (origin.to_owned(), txn_id.to_owned(), response.to_owned());
        self.write(move |tx| transactions::store_received(tx, &origin, &txn_id, &response))
            .await
    }

    async fn queue_pdu(&self, destinations: &[OwnedServerName], event_id: &EventId) -> Result<()> {
        let (destinations, event_id) = (destinations.to_vec(), event_id.to_owned());
        self.write(move |tx| transactions::queue(tx, &destinations, &event_id))
            .await
    }

    async fn queued_pdus(&self, destination: &ServerName, limit: usize) -> Result<Vec<(i64, OwnedEventId)>> {
        let destination = destination.to_owned();
        self.read(move |c| transactions::queued(c, &destination, limit)).await
    }

    async fn dequeue_pdus(&self, destination: &ServerName, up_to: i64) -> Result<()> {
        let destination = destination.to_owned();
        self.write(move |tx| transactions::dequeue(tx, &destination, up_to))
            .await
    }

    async fn queued_destinations(&self) -> Result<Vec<OwnedServerName>> {
        self.read(transactions::destinations).await
    }

    async fn store_remote_invite(&self, invite: &RemoteInvite) -> Result<()> {
        let invite = invite.clone();
        self.write(move |tx| transactions::store_remote_invite(tx, &invite))
            .await
    }

    async fn remote_invites(&self, user_id: &UserId) -> Result<Vec<RemoteInvite>> {
        let user_id = user_id.to_owned();
        self.read(move |c| transactions::remote_invites(c, &user_id)).await
    }

    async fn delete_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        self.write(move |tx| {
            exec(
                tx,
                "DELETE FROM remote_invites WHERE user_id = ?1 AND room_id = ?2",
                rusqlite::params![user_id.as_str(), room_id.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn put_receipt(&self, receipt: &Receipt) -> Result<Option<i64>> {
        let receipt = receipt.clone();
        self.write(move |tx| ephemeral::put_receipt(tx, &receipt)).await
    }

    async fn receipts(&self, room_id: &RoomId, after: Option<i64>) -> Result<Vec<Receipt>> {
        let room_id = room_id.to_owned();
        self.read(move |c| ephemeral::receipts(c, &room_id, after)).await
    }

    async fn set_typing(&self, room_id: &RoomId, user_id: &UserId, change: Typing) -> Result<Option<i64>> {
        let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
        self.write(move |tx| ephemeral::set_typing(tx, &room_id, &user_id, change))
            .await
    }

    async fn typing(&self, after: Option<i64>, up_to: i64) -> Result<Vec<RoomTyping>> {
        self.read(move |c| ephemeral::typing(c, after, up_to)).await
    }

    async fn typing_run_out(&self, before_ms: u64) -> Result<Vec<(OwnedRoomId, OwnedUserId, u64)>> {
        self.read(move |c| ephemeral::run_out(c, before_ms)).await
    }

    async fn max_ephemeral_position(&self) -> Result<i64> {
        self.read(ephemeral::head).await
    }

    async fn put_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &str,
    ) -> Result<i64> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.map(RoomId::to_owned));
        let (data_type, content) = (data_type.to_owned(), content.to_owned());
        self.write(move |tx| account_data::put(tx, &user_id, room_id.as_deref(), &data_type, &content))
            .await
    }

    async fn account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
    ) -> Result<Option<String>> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.map(RoomId::to_owned));
        let data_type = data_type.to_owned();
        self.read(move |c| account_data::get(c, &user_id, room_id.as_deref(), &data_type))
            .await
    }

    async fn account_data_changes(
        &self,
        user_id: &UserId,
        after: Option<i64>,
        upto: i64,
    ) -> Result<Vec<super::AccountData>> {
        let user_id = user_id.to_owned();
        self.read(move |c| account_data::changes(c, &user_id, after, upto))
            .await
    }

    async fn room_account_data(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        upto: i64,
    ) -> Result<Vec<super::AccountData>> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        self.read(move |c| account_data::of_room(c, &user_id, &room_id, upto))
            .await
    }

    async fn max_account_data_position(&self) -> Result<i64> {
        self.read(account_data::max_position).await
    }

    async fn change_presence(&self, user_id: &UserId, change: super::PresenceChange) -> Result<super::PresenceWrite> {
        let user_id = user_id.to_owned();
        self.write(move |tx| presence::change(tx, &user_id, &change)).await
    }

    async fn restamp_presence(&self, user_id: &UserId) -> Result<Option<super::PresenceRecord>> {
        let user_id = user_id.to_owned();
        self.write(move |tx| presence::restamp(tx, &user_id)).await
    }

    async fn presence_changes(&self, after: Option<i64>, up_to: i64) -> Result<Vec<super::PresenceRecord>> {
        self.read(move |c| presence::changes(c, after, up_to)).await
    }

    async fn presence_of(&self, users: &[OwnedUserId]) -> Result<Vec<super::PresenceRecord>> {
        let users = users.to_vec();
        self.read(move |c| presence::of(c, &users)).await
    }

    async fn presence_quiet(&self, idle_before: i64, offline_before: i64) -> Result<Vec<OwnedUserId>> {
        self.read(move |c| presence::quiet(c, idle_before, offline_before))
            .await
    }

    async fn max_presence_position(&self) -> Result<i64> {
        self.read(presence::head).await
    }
}
