//! `weft copy-to-postgres`: moves a SQLite deployment to PostgreSQL.
//!
//! Everything in `<data_dir>/weft.db` is copied into a new, empty
//! PostgreSQL database, so that weft started on it (`database_url`) carries
//! on where the SQLite deployment stopped: the same events at the same
//! stream positions (clients' sync tokens stay valid), the same accounts,
//! passwords and access tokens. Sliding sync connections too (their
//! positions, and what each answer sent of each room): their stream heads
//! keep their meaning, since the streams do, so clients carry on without
//! starting their connections afresh — and copying them is what the generic
//! copy does anyway, with nothing to name here.
//!
//! The copy is generic: the tables and their column types come from
//! PostgreSQL's catalog, the same columns are read from SQLite, and each
//! value is converted by its PostgreSQL type. What only one side has is
//! named here: SQLite's `e2e_stream` and full-text index (PostgreSQL keeps
//! the e2e head in `stream_positions` and computes its search column), and
//! PostgreSQL's `stream_positions` and sequences, which are set from the
//! copied data. Anything else that only one side has stops the copy before
//! it starts, rather than lose it.
//!
//! The whole copy is one PostgreSQL transaction: interrupted, it leaves the
//! database empty, and can be run again. Rows are streamed from one SQLite
//! read transaction into binary COPYs, never a whole table in memory.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags, types::ValueRef};
use tokio::sync::mpsc;
use tokio_postgres::{
    Transaction,
    binary_copy::BinaryCopyInWriter,
    types::{ToSql, Type},
};

use super::{
    StorageError,
    postgres::{PgStorage, describe_target},
};

/// The schema version of the SQLite databases this weft writes (the
/// number of `sqlite/schema_v*.sql` migrations).
const SQLITE_SCHEMA_VERSION: i64 = 27;
/// PostgreSQL tables that are not copied: set from the copied data
/// (`stream_positions`), by the migration (`schema_version`), or held by
/// running processes only (`duties`).
const PG_ONLY_TABLES: &[&str] = &["stream_positions", "schema_version", "duties"];
/// SQLite tables that are not copied: the e2e stream's head (PostgreSQL's
/// `stream_positions` 'e2e') and the events stream's (read to set
/// PostgreSQL's 'events'). SQLite's own tables (`sqlite_*`) and
/// full-text indexes (virtual tables and their shadow tables) are not
/// either.
const SQLITE_ONLY_TABLES: &[&str] = &["e2e_stream", "stream_positions"];
/// Sequences that are not a column's identity: the column whose values
/// each gives, `(sequence, table, column)`.
const SEQUENCES: &[(&str, &str, &str)] = &[
    ("backfill_stream", "events", "stream_ordering"),
    ("filter_ids", "filters", "filter_id"),
    ("outbound_pdu_positions", "outbound_pdus", "position"),
];
/// Rows per batch handed from the SQLite reader to the COPY.
const BATCH: usize = 128;
/// Batches on their way at most.
const BATCHES_QUEUED: usize = 4;
/// A progress report every so many rows of a big table.
const PROGRESS_EVERY: u64 = 100_000;
/// Serialises copies into one database: a second one waits, then finds
/// the database not empty.
const COPY_LOCK: i64 = 0x7765_6674_0002; // "weft" 2

/// Why the copy did not happen. Nothing was written to PostgreSQL but its
/// schema.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CopyError(String);

impl From<StorageError> for CopyError {
    fn from(e: StorageError) -> Self {
        CopyError(e.to_string())
    }
}

impl From<tokio_postgres::Error> for CopyError {
    fn from(e: tokio_postgres::Error) -> Self {
        StorageError::from(e).into()
    }
}

impl From<rusqlite::Error> for CopyError {
    fn from(e: rusqlite::Error) -> Self {
        CopyError(format!("SQLite: {e}"))
    }
}

/// What the copy has done so far, for the operator to watch.
pub enum Progress<'a> {
    /// A big table, part way.
    Copying { table: &'a str, rows: u64 },
    /// A table, done.
    Copied { table: &'a str, rows: u64 },
}

/// What was copied.
pub struct Summary {
    /// The database copied into (no password).
    pub target: String,
    /// Rows per table.
    pub tables: Vec<(String, u64)>,
    /// `stream_positions`, as set.
    pub streams: Vec<(String, i64)>,
    /// Sequences moved past the copied values.
    pub sequences: Vec<(String, i64)>,
    pub elapsed: Duration,
}

/// The PostgreSQL type of a column, and how a SQLite value becomes one.
#[derive(Clone, Copy)]
enum Kind {
    BigInt,
    Boolean,
    Text,
}

impl Kind {
    fn of(data_type: &str) -> Option<Kind> {
        match data_type {
            "bigint" => Some(Kind::BigInt),
            "boolean" => Some(Kind::Boolean),
            "text" => Some(Kind::Text),
            _ => None,
        }
    }

    fn pg_type(self) -> Type {
        match self {
            Kind::BigInt => Type::INT8,
            Kind::Boolean => Type::BOOL,
            Kind::Text => Type::TEXT,
        }
    }
}

/// One value of a row, converted.
enum Value {
    BigInt(Option<i64>),
    Boolean(Option<bool>),
    Text(Option<String>),
}

impl Value {
    /// `value` (read from SQLite) as `kind`: BIGINT from INTEGER, BOOLEAN
    /// from INTEGER (not 0 is true, as weft reads it from SQLite), TEXT
    /// from (UTF-8) TEXT; NULL stays NULL.
    fn convert(kind: Kind, value: ValueRef<'_>) -> Result<Value, String> {
        Ok(match (kind, value) {
            (Kind::BigInt, ValueRef::Null) => Value::BigInt(None),
            (Kind::BigInt, ValueRef::Integer(i)) => Value::BigInt(Some(i)),
            (Kind::Boolean, ValueRef::Null) => Value::Boolean(None),
            (Kind::Boolean, ValueRef::Integer(i)) => Value::Boolean(Some(i != 0)),
            (Kind::Text, ValueRef::Null) => Value::Text(None),
            (Kind::Text, ValueRef::Text(bytes)) => Value::Text(Some(
                std::str::from_utf8(bytes)
                    .map_err(|_| "text that is not UTF-8".to_owned())?
                    .to_owned(),
            )),
            (_, value) => {
                return Err(format!(
                    "a SQLite {} value where PostgreSQL has {:?}",
                    value.data_type(),
                    kind.pg_type().name()
                ));
            }
        })
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::BigInt(v) => v,
            Value::Boolean(v) => v,
            Value::Text(v) => v,
        }
    }
}

/// A PostgreSQL table to fill: its columns (but generated ones) in order.
struct Table {
    name: String,
    columns: Vec<(String, Kind)>,
}

/// The SQLite database, in one read transaction, and what it holds that
/// is no table of PostgreSQL's.
struct Sqlite {
    conn: Connection,
    /// The tables to copy, with their columns.
    tables: HashMap<String, Vec<String>>,
    /// The e2e stream's head.
    e2e_position: i64,
    /// SQLite's events head (`stream_positions` 'events'), which may be
    /// past the rows left.
    events_position: i64,
    /// SQLite's ephemeral head (`stream_positions` 'ephemeral': receipts
    /// and typing).
    ephemeral_position: i64,
    /// SQLite's presence head (`stream_positions` 'presence').
    presence_position: i64,
    /// The highest value each AUTOINCREMENT table ever gave
    /// (`sqlite_sequence`): more than the highest left when rows went.
    autoincrement: HashMap<String, i64>,
}

/// Copies the SQLite database of `data_dir` into the empty PostgreSQL
/// database at `url` (creating the schema there), reporting progress as
/// it goes. Refuses a SQLite database of another schema version than this
/// weft's, and a PostgreSQL database that holds anything.
pub async fn sqlite_to_postgres(
    data_dir: &Path,
    url: &str,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Summary, CopyError> {
    let started = Instant::now();
    let path = data_dir.join("weft.db");
    let mut sqlite = tokio::task::spawn_blocking(move || open_sqlite(&path))
        .await
        .map_err(|e| CopyError(format!("reading SQLite: {e}")))??;
    let target = url
        .parse::<tokio_postgres::Config>()
        .map(|config| describe_target(&config))
        .unwrap_or_else(|_| "the PostgreSQL database".to_owned());
    let storage = PgStorage::connect(url).await?;
    let mut client = storage.client().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COPY_LOCK]).await?;
    let tables = plan(pg_tables(&tx).await?, &sqlite.tables, &sqlite.conn)?;
    check_empty(&tx, &tables, &target).await?;

    let mut copied = Vec::with_capacity(tables.len());
    for table in &tables {
        let (conn, rows) = copy_table(&tx, sqlite.conn, table, &mut progress).await?;
        sqlite.conn = conn;
        progress(Progress::Copied {
            table: &table.name,
            rows,
        });
        copied.push((table.name.clone(), rows));
    }
    let streams = set_stream_positions(&tx, &sqlite).await?;
    let sequences = set_sequences(&tx, &sqlite.autoincrement).await?;
    tx.commit().await?;
    // Fresh statistics for the planner, rather than wait for autovacuum.
    if let Err(e) = client.batch_execute("ANALYZE").await {
        tracing::warn!(error = %StorageError::from(e), "ANALYZE after the copy failed");
    }
    Ok(Summary {
        target,
        tables: copied,
        streams,
        sequences,
        elapsed: started.elapsed(),
    })
}

/// Opens `path` read-only, checks its schema version, and reads what it
/// holds beside the tables to copy, in the read transaction the tables
/// will be read in.
fn open_sqlite(path: &Path) -> Result<Sqlite, CopyError> {
    if !path.is_file() {
        return Err(CopyError(format!(
            "there is no SQLite database at {} (is data_dir the one of the deployment to copy?)",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < SQLITE_SCHEMA_VERSION {
        return Err(CopyError(format!(
            "the SQLite database {} has schema version {version}, older than this weft's \
             ({SQLITE_SCHEMA_VERSION}): start weft once on it (without database_url) so that it \
             brings it up to date, stop it, then copy",
            path.display()
        )));
    }
    if version > SQLITE_SCHEMA_VERSION {
        return Err(CopyError(format!(
            "the SQLite database {} has schema version {version}, newer than this weft's \
             ({SQLITE_SCHEMA_VERSION}): copy it with the weft that wrote it",
            path.display()
        )));
    }
    // One snapshot for everything read from here on.
    conn.execute_batch("BEGIN")?;
    let all: Vec<(String, Option<String>)> = conn
        .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let virtual_tables: Vec<&str> = all
        .iter()
        .filter(|(_, sql)| sql.as_deref().is_some_and(|s| s.starts_with("CREATE VIRTUAL TABLE")))
        .map(|(name, _)| name.as_str())
        .collect();
    let mut tables = HashMap::new();
    for (name, _) in &all {
        let skipped = name.starts_with("sqlite_")
            || SQLITE_ONLY_TABLES.contains(&name.as_str())
            || virtual_tables
                .iter()
                .any(|v| name == v || name.strip_prefix(v).is_some_and(|rest| rest.starts_with('_')));
        if !skipped {
            let columns = conn
                .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
                .query_map([name], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            tables.insert(name.clone(), columns);
        }
    }
    let e2e_position = conn.query_row("SELECT COALESCE(MAX(position), 0) FROM e2e_stream", [], |r| r.get(0))?;
    let events_position = conn.query_row(
        "SELECT COALESCE(MAX(position), 0) FROM stream_positions WHERE stream = 'events'",
        [],
        |r| r.get(0),
    )?;
    let ephemeral_position = conn.query_row(
        "SELECT COALESCE(MAX(position), 0) FROM stream_positions WHERE stream = 'ephemeral'",
        [],
        |r| r.get(0),
    )?;
    let presence_position = conn.query_row(
        "SELECT COALESCE(MAX(position), 0) FROM stream_positions WHERE stream = 'presence'",
        [],
        |r| r.get(0),
    )?;
    let mut autoincrement = HashMap::new();
    if all.iter().any(|(name, _)| name == "sqlite_sequence") {
        let mut stmt = conn.prepare("SELECT name, seq FROM sqlite_sequence")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, seq) = row?;
            autoincrement.insert(name, seq);
        }
    }
    Ok(Sqlite {
        conn,
        tables,
        e2e_position,
        events_position,
        ephemeral_position,
        presence_position,
        autoincrement,
    })
}

/// The tables of the PostgreSQL schema (but [`PG_ONLY_TABLES`]), by name,
/// with their columns but generated ones.
async fn pg_tables(tx: &Transaction<'_>) -> Result<Vec<Table>, CopyError> {
    let rows = tx
        .query(
            "SELECT c.table_name::text, c.column_name::text, c.data_type::text
             FROM information_schema.columns c
             JOIN information_schema.tables t
                 ON t.table_schema = c.table_schema AND t.table_name = c.table_name
             WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
                 AND c.is_generated = 'NEVER'
             ORDER BY c.table_name, c.ordinal_position",
            &[],
        )
        .await?;
    let mut tables: Vec<Table> = Vec::new();
    for row in rows {
        let (table, column, data_type): (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if PG_ONLY_TABLES.contains(&table.as_str()) {
            continue;
        }
        let kind = Kind::of(&data_type).ok_or_else(|| {
            CopyError(format!(
                "column {table}.{column} is of type {data_type}, which weft copy-to-postgres cannot copy"
            ))
        })?;
        match tables.last_mut() {
            Some(last) if last.name == table => last.columns.push((column, kind)),
            _ => tables.push(Table {
                name: table,
                columns: vec![(column, kind)],
            }),
        }
    }
    Ok(tables)
}

/// Checks that the two schemas hold the same tables and columns (but what
/// this module names): anything only one side has would be lost, or
/// missing.
fn plan(pg: Vec<Table>, sqlite: &HashMap<String, Vec<String>>, conn: &Connection) -> Result<Vec<Table>, CopyError> {
    let mut problems = Vec::new();
    for table in &pg {
        if derived(&table.name).is_some() {
            // SQLite's query gives the PostgreSQL table's columns.
            if let Err(e) = conn.prepare(&format!("{} LIMIT 0", sqlite_select(table))) {
                problems.push(format!("the SQLite database cannot give {}: {e}", table.name));
            }
            continue;
        }
        match sqlite.get(&table.name) {
            None => problems.push(format!("the SQLite database has no table {}", table.name)),
            Some(columns) => problems.extend(
                table
                    .columns
                    .iter()
                    .filter(|(column, _)| !columns.contains(column))
                    .map(|(column, _)| format!("the SQLite database has no column {}.{column}", table.name)),
            ),
        }
    }
    let mut names: Vec<&String> = sqlite.keys().collect();
    names.sort();
    for name in names {
        if derived(name).is_some() {
            continue;
        }
        match pg.iter().find(|t| &t.name == name) {
            None => problems.push(format!("the PostgreSQL schema has no table {name}")),
            Some(table) => problems.extend(
                sqlite[name]
                    .iter()
                    .filter(|column| !table.columns.iter().any(|(c, _)| c == *column))
                    .map(|column| format!("the PostgreSQL schema has no column {name}.{column}")),
            ),
        }
    }
    if problems.is_empty() {
        Ok(pg)
    } else {
        Err(CopyError(format!(
            "the SQLite and PostgreSQL schemas of this weft do not match, nothing was copied: {}",
            problems.join("; ")
        )))
    }
}

/// Refuses a database that holds anything: a row in a table to fill, or a
/// stream that has moved.
async fn check_empty(tx: &Transaction<'_>, tables: &[Table], target: &str) -> Result<(), CopyError> {
    let mut held = Vec::new();
    for table in tables {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", ident(&table.name));
        if tx.query_one(sql.as_str(), &[]).await?.try_get::<_, bool>(0)? {
            held.push(table.name.clone());
        }
    }
    // The ephemeral and presence streams start at the clock, not at 0
    // (their positions followed a clock once); what they hold is in the
    // tables above.
    for row in tx
        .query(
            "SELECT stream FROM stream_positions WHERE position <> 0 AND stream NOT IN ('ephemeral', 'presence') ORDER BY stream",
            &[],
        )
        .await?
    {
        held.push(format!("stream_positions '{}'", row.try_get::<_, String>(0)?));
    }
    if held.is_empty() {
        Ok(())
    } else {
        Err(CopyError(format!(
            "the PostgreSQL database {target} is not empty ({} hold data): \
             weft copy-to-postgres copies only into a new, empty database",
            held.join(", ")
        )))
    }
}

/// Copies one table: SQLite's rows, read on the blocking pool, streamed
/// into a binary COPY. Hands the SQLite connection back.
async fn copy_table(
    tx: &Transaction<'_>,
    conn: Connection,
    table: &Table,
    progress: &mut impl FnMut(Progress<'_>),
) -> Result<(Connection, u64), CopyError> {
    let select = sqlite_select(table);
    let copy = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        ident(&table.name),
        column_list(table)
    );
    let context = |e: tokio_postgres::Error| CopyError(format!("copying {}: {}", table.name, StorageError::from(e)));

    let (send, mut receive) = mpsc::channel(BATCHES_QUEUED);
    let reader = tokio::task::spawn_blocking({
        let (name, kinds): (String, Vec<(String, Kind)>) = (table.name.clone(), table.columns.clone());
        move || {
            let read = read_rows(&conn, &select, &name, &kinds, &send);
            (conn, read)
        }
    });
    let types: Vec<Type> = table.columns.iter().map(|(_, kind)| kind.pg_type()).collect();
    let writer = BinaryCopyInWriter::new(tx.copy_in(copy.as_str()).await.map_err(context)?, &types);
    tokio::pin!(writer);
    let mut rows = 0u64;
    while let Some(batch) = receive.recv().await {
        for row in &batch {
            let values: Vec<&(dyn ToSql + Sync)> = row.iter().map(Value::as_sql).collect();
            writer.as_mut().write(&values).await.map_err(context)?;
            rows += 1;
            if rows.is_multiple_of(PROGRESS_EVERY) {
                progress(Progress::Copying {
                    table: &table.name,
                    rows,
                });
            }
        }
    }
    let (conn, read) = reader
        .await
        .map_err(|e| CopyError(format!("reading {} from SQLite: {e}", table.name)))?;
    read?;
    writer.as_mut().finish().await.map_err(context)?;
    Ok((conn, rows))
}

/// Reads the rows of `select` (the columns of `columns`, in order),
/// converted, in batches into `send`; stops early if the receiver is gone
/// (the COPY failed, and says why).
fn read_rows(
    conn: &Connection,
    select: &str,
    table: &str,
    columns: &[(String, Kind)],
    send: &mpsc::Sender<Vec<Vec<Value>>>,
) -> Result<(), CopyError> {
    let mut stmt = conn.prepare(select)?;
    let mut rows = stmt.query([])?;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns.len());
        for (i, (column, kind)) in columns.iter().enumerate() {
            let value = Value::convert(*kind, row.get_ref(i)?)
                .map_err(|what| CopyError(format!("cannot copy {table}.{column}: {what}")))?;
            values.push(value);
        }
        batch.push(values);
        if batch.len() == BATCH && send.blocking_send(std::mem::take(&mut batch)).is_err() {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = send.blocking_send(batch);
    }
    Ok(())
}

/// Sets each stream's head from the copied rows (the events' and the e2e
/// stream's from SQLite's heads, which may be past the rows left). A
/// stream this module does not know stops the copy.
async fn set_stream_positions(tx: &Transaction<'_>, sqlite: &Sqlite) -> Result<Vec<(String, i64)>, CopyError> {
    let mut set = Vec::new();
    for row in tx
        .query("SELECT stream FROM stream_positions ORDER BY stream", &[])
        .await?
    {
        let stream: String = row.try_get(0)?;
        // $1: the lowest the head may be.
        let (sql, floor) = match stream.as_str() {
            "events" => (
                "SELECT GREATEST(MAX(stream_ordering), $1) FROM events",
                sqlite.events_position,
            ),
            "account_data" => ("SELECT GREATEST(MAX(position), $1) FROM account_data", 0),
            "e2e" => (
                "SELECT GREATEST($1::BIGINT, (SELECT MAX(position) FROM device_list_changes),
                                 (SELECT MAX(position) FROM to_device_messages))",
                sqlite.e2e_position,
            ),
            "ephemeral" => (
                "SELECT GREATEST($1::BIGINT, (SELECT MAX(position) FROM receipts),
                                 (SELECT MAX(position) FROM typing_rooms))",
                sqlite.ephemeral_position,
            ),
            "presence" => (
                "SELECT GREATEST($1::BIGINT, (SELECT MAX(position) FROM presence))",
                sqlite.presence_position,
            ),
            other => {
                return Err(CopyError(format!(
                    "stream_positions has a stream '{other}' that weft copy-to-postgres cannot set"
                )));
            }
        };
        let head: i64 = tx.query_one(sql, &[&floor]).await?.try_get(0)?;
        tx.execute(
            "UPDATE stream_positions SET position = $2 WHERE stream = $1",
            &[&stream, &head],
        )
        .await?;
        set.push((stream, head));
    }
    Ok(set)
}

/// Moves every sequence past the values copied into its column: an
/// identity column's (and past what SQLite's AUTOINCREMENT gave, so that
/// no ID is given twice), or the column [`SEQUENCES`] names. A descending
/// sequence goes below the lowest value. A sequence this module does not
/// know stops the copy.
async fn set_sequences(
    tx: &Transaction<'_>,
    autoincrement: &HashMap<String, i64>,
) -> Result<Vec<(String, i64)>, CopyError> {
    let rows = tx
        .query(
            "SELECT s.relname::text, t.relname::text, a.attname::text,
                    q.increment_by, q.min_value, q.max_value
             FROM pg_class s
             JOIN pg_namespace n ON n.oid = s.relnamespace
             JOIN pg_sequences q ON q.schemaname = n.nspname AND q.sequencename = s.relname
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                 AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
             LEFT JOIN pg_class t ON t.oid = d.refobjid
             LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE s.relkind = 'S' AND n.nspname = current_schema()
             ORDER BY s.relname",
            &[],
        )
        .await?;
    let mut set = Vec::new();
    for row in rows {
        let sequence: String = row.try_get(0)?;
        let owner: Option<(String, String)> = row.try_get::<_, Option<String>>(1)?.zip(row.try_get(2)?);
        let (increment, min, max): (i64, i64, i64) = (row.try_get(3)?, row.try_get(4)?, row.try_get(5)?);
        let (table, column) = match owner {
            Some(owner) => owner,
            None => match SEQUENCES.iter().find(|(s, _, _)| *s == sequence) {
                Some((_, table, column)) => ((*table).to_owned(), (*column).to_owned()),
                None => {
                    return Err(CopyError(format!(
                        "the PostgreSQL schema has a sequence {sequence} that weft copy-to-postgres cannot set"
                    )));
                }
            },
        };
        let extreme = if increment > 0 { "MAX" } else { "MIN" };
        let sql = format!("SELECT {extreme}({}) FROM {}", ident(&column), ident(&table));
        let copied: Option<i64> = tx.query_one(sql.as_str(), &[]).await?.try_get(0)?;
        let given = autoincrement.get(&table).copied().filter(|_| increment > 0);
        let last = match (copied, given) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(last) = last.filter(|v| (min..=max).contains(v)) {
            tx.execute("SELECT setval($1::text::regclass, $2)", &[&ident(&sequence), &last])
                .await?;
            set.push((sequence, last));
        }
    }
    Ok(set)
}

/// The columns of `table`, quoted, for a statement.
fn column_list(table: &Table) -> String {
    let names: Vec<String> = table.columns.iter().map(|(name, _)| ident(name)).collect();
    names.join(", ")
}

/// The query of the SQLite database that gives the rows of PostgreSQL's
/// `table`, its columns in order: the table of the same name, or
/// [`derived`]'s query.
fn sqlite_select(table: &Table) -> String {
    let names = column_list(table);
    match derived(&table.name) {
        Some(query) => format!("SELECT {names} FROM ({query})"),
        None => format!("SELECT {names} FROM {}", ident(&table.name)),
    }
}

/// For a PostgreSQL table that SQLite keeps in another shape (its schema
/// v27), the query of the SQLite database it is filled from, its columns
/// named as PostgreSQL's. SQLite reads an event's auth
/// events and parents from its JSON, and keys its edges by the parent
/// alone.
fn derived(table: &str) -> Option<String> {
    match table {
        // (An ID listed twice by an event: once. A DISTINCT over all the
        // pairs would sort them all at once.)
        "event_auth" => Some(format!(
            "SELECT e.event_id AS event_id, {id} AS auth_event_id
             FROM events e, json_each(e.json, '$.auth_events') l
             WHERE NOT EXISTS (SELECT 1 FROM json_each(e.json, '$.auth_events') m
                 WHERE m.key < l.key AND {earlier} = {id})",
            id = super::sqlite::LISTED_ID,
            earlier = super::sqlite::LISTED_ID.replace("l.", "m.")
        )),
        "event_edges" => Some(
            "SELECT g.event_id AS event_id, g.prev_event_id AS prev_event_id, e.room_id AS room_id
             FROM event_edges g JOIN events e ON e.event_id = g.event_id"
                .to_owned(),
        ),
        _ => None,
    }
}

/// `name` as a quoted SQL identifier (SQLite and PostgreSQL alike).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`SQLITE_SCHEMA_VERSION`] is the number of SQLite migrations.
    #[test]
    fn sqlite_schema_version_is_the_latest_migration() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage/sqlite");
        let latest = format!("schema_v{SQLITE_SCHEMA_VERSION}.sql");
        let next = format!("schema_v{}.sql", SQLITE_SCHEMA_VERSION + 1);
        assert!(dir.join(latest).is_file());
        assert!(
            !dir.join(next).exists(),
            "a new SQLite migration: raise SQLITE_SCHEMA_VERSION, and see that the copy handles it"
        );
    }

    #[test]
    fn values_convert_by_postgres_type() {
        assert!(matches!(
            Value::convert(Kind::Boolean, ValueRef::Integer(1)),
            Ok(Value::Boolean(Some(true)))
        ));
        assert!(matches!(
            Value::convert(Kind::BigInt, ValueRef::Null),
            Ok(Value::BigInt(None))
        ));
        assert!(matches!(
            Value::convert(Kind::Text, ValueRef::Text(b"x")),
            Ok(Value::Text(Some(ref s))) if s == "x"
        ));
        assert!(Value::convert(Kind::BigInt, ValueRef::Text(b"1")).is_err());
        assert!(Value::convert(Kind::Text, ValueRef::Blob(b"x")).is_err());
    }
}
