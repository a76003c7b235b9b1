//! The database of a test server: by default the SQLite file in its data
//! directory; with `WEFT_TEST_POSTGRES` set (the `key=value` connection
//! string of a PostgreSQL user that may create databases, e.g.
//! `host=/tmp/pg port=5432 user=postgres dbname=postgres`), a new, empty
//! PostgreSQL database for each server. `tools/pg-cluster` starts a
//! throw-away PostgreSQL server for this. Also included by the benchmarks.
#![allow(dead_code)]

/// What the names of the databases made here start with.
const PREFIX: &str = "weft_test_";

/// The `database_url` of a new test server: `None` (SQLite, in its data
/// directory) unless `WEFT_TEST_POSTGRES` is set, then a database created
/// there for this server alone. Keep it with the server's configuration:
/// the server restarted on it finds its data again.
pub fn fresh_database_url() -> Option<String> {
    let admin = admin()?;
    let name = format!("{PREFIX}{:016x}", rand::random::<u64>());
    admin_statement(&admin, format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("{e}"));
    Some(with_dbname(&admin, &name))
}

/// Drops the database of `url`, one [`fresh_database_url`] made, closing
/// the connections still open to it (a server not shut down keeps its
/// own). Failures are only printed: this runs as a test ends.
pub fn drop_database(url: &str) {
    let (Some(admin), Ok(config)) = (admin(), url.parse::<tokio_postgres::Config>()) else {
        return;
    };
    if let Some(name) = config.get_dbname().filter(|name| name.starts_with(PREFIX)) {
        let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(e) = admin_statement(&admin, statement) {
            eprintln!("{e}");
        }
    }
}

/// `WEFT_TEST_POSTGRES`, when set.
fn admin() -> Option<String> {
    std::env::var("WEFT_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Runs `statement` through a connection to `admin`, on a thread of its own
/// with its own runtime: callable from plain #[test]s and from within a
/// tokio runtime alike.
fn admin_statement(admin: &str, statement: String) -> Result<(), String> {
    let admin = admin.to_owned();
    let run = move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("WEFT_TEST_POSTGRES ({admin}): cannot connect: {e}"))?;
            tokio::spawn(connection);
            client
                .batch_execute(&statement)
                .await
                .map_err(|e| format!("WEFT_TEST_POSTGRES ({admin}): {statement}: {e}"))
        })
    };
    std::thread::spawn(run)
        .join()
        .unwrap_or_else(|_| Err("WEFT_TEST_POSTGRES: the admin connection panicked".to_owned()))
}

/// `conninfo` (`key=value` pairs) with its `dbname` replaced by `name`.
fn with_dbname(conninfo: &str, name: &str) -> String {
    let mut pairs: Vec<&str> = conninfo
        .split_whitespace()
        .filter(|pair| !pair.starts_with("dbname="))
        .collect();
    let dbname = format!("dbname={name}");
    pairs.push(&dbname);
    pairs.join(" ")
}

/// Runs `statement` as the `WEFT_TEST_POSTGRES` user (in its database);
/// panics if it fails or the variable is not set.
pub fn run_as_admin(statement: &str) {
    let admin = admin().expect("WEFT_TEST_POSTGRES");
    admin_statement(&admin, statement.to_owned()).unwrap_or_else(|e| panic!("{e}"));
}
