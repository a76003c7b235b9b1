//! The storage backends the benchmarks run their servers on, chosen with
//! `WEFT_BENCH_BACKENDS` (`sqlite,postgres` by default; `sqlite` alone
//! needs no PostgreSQL). For PostgreSQL, one server per benchmark run,
//! started with `tools/pg-cluster` and configured as for production
//! (`PG_CLUSTER_DURABLE=1`: fsync on, `synchronous_commit = off`), with a
//! new database for each server process; and its CPU time, read from /proc,
//! so that a server's CPU on PostgreSQL counts the database's work too.
//!
//! `WEFT_BENCH_PG_STATEMENTS=N`: the server loads `pg_stat_statements`, and
//! when the run ends the N statements that took the most time (all
//! databases) are printed to stderr, with their calls and mean time: where
//! PostgreSQL's share of the CPU goes (`WEFT_BENCH_PG_BY_CALLS=1`: the N
//! called most often).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use super::{ProcStat, proc_stat};

/// What the names of the databases made here start with.
const PREFIX: &str = "weft_bench_";
const PG_CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pg-cluster");

/// Where a server keeps its data.
#[derive(Clone)]
pub enum Backend {
    /// SQLite, in the server's data directory.
    Sqlite,
    /// A database of its own on the run's PostgreSQL server.
    Postgres(Arc<PgCluster>),
}

/// A database made for one server process.
#[derive(Clone, Debug)]
pub struct Database {
    pub name: String,
    /// Its `key=value` connection string (weft's `database_url`).
    pub url: String,
}

impl Backend {
    /// The backends of `WEFT_BENCH_BACKENDS` (comma-separated `sqlite`,
    /// `postgres`), in that order; starts the PostgreSQL server if
    /// `postgres` is among them.
    pub fn from_env() -> Vec<Backend> {
        let list = std::env::var("WEFT_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".to_owned());
        let mut cluster: Option<Arc<PgCluster>> = None;
        let mut backends = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            backends.push(match name {
                "sqlite" => Backend::Sqlite,
                "postgres" | "pg" => {
                    Backend::Postgres(cluster.get_or_insert_with(|| Arc::new(PgCluster::start())).clone())
                }
                other => panic!("WEFT_BENCH_BACKENDS: unknown backend {other:?} (sqlite, postgres)"),
            });
        }
        assert!(!backends.is_empty(), "WEFT_BENCH_BACKENDS names no backend");
        backends
    }

    /// `sqlite` or `pg`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "pg",
        }
    }

    /// `server(sqlite)`, `server(pg)`: how results are labelled.
    pub fn label(&self, server: &str) -> String {
        format!("{server}({})", self.name())
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }

    /// A server's CPU time, its process's and (on PostgreSQL) its share of
    /// the database server's, in `unit`: "total" on SQLite, "total
    /// (`process_name` … + PostgreSQL …)" on PostgreSQL.
    pub fn cpu_split(
        &self,
        process: Duration,
        pg: Duration,
        process_name: &str,
        unit: fn(Duration) -> String,
    ) -> String {
        match self {
            Backend::Sqlite => unit(process + pg),
            Backend::Postgres(_) => format!(
                "{} ({process_name} {} + PostgreSQL {})",
                unit(process + pg),
                unit(process),
                unit(pg)
            ),
        }
    }

    /// A new, empty database for one weft process (`None`: SQLite).
    pub fn fresh_database(&self) -> Option<Database> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres(cluster) => Some(cluster.create_database("")),
        }
    }

    /// A new, empty database for one Synapse, with the encoding and
    /// collation Synapse requires (`None`: SQLite).
    pub fn fresh_synapse_database(&self) -> Option<Database> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres(cluster) => {
                Some(cluster.create_database(" TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C' ENCODING 'UTF8'"))
            }
        }
    }

    /// The CPU time the PostgreSQL server has used so far (zero on SQLite).
    pub fn cpu(&self) -> PgCpu {
        match self {
            Backend::Sqlite => PgCpu::default(),
            Backend::Postgres(cluster) => cluster.cpu(),
        }
    }

    /// The size of a database on disk, as `pg_database_size` gives it.
    pub fn database_size(&self, database: &Database) -> u64 {
        match self {
            Backend::Sqlite => 0,
            Backend::Postgres(cluster) => cluster
                .psql(&format!("SELECT pg_database_size('{}')", database.name))
                .trim()
                .parse()
                .unwrap_or(0),
        }
    }
}

/// A throw-away PostgreSQL server (`tools/pg-cluster start`, durable),
/// stopped and removed when dropped.
pub struct PgCluster {
    dir: PathBuf,
    admin: String,
    psql: PathBuf,
    postmaster: u32,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        // Under /tmp itself: as root, the server runs as the postgres user,
        // which must reach the directory.
        let dir = tempfile::Builder::new()
            .prefix("weft-bench-pg-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        let statements = statements_to_show() > 0;
        let out = Command::new(PG_CLUSTER)
            .arg("start")
            .arg(&dir)
            .env("PG_CLUSTER_DURABLE", "1")
            .env(
                "PG_CLUSTER_CONF",
                if statements {
                    "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all".to_owned()
                } else {
                    String::new()
                } + &std::env::var("PG_CLUSTER_CONF").unwrap_or_default(),
            )
            .stderr(Stdio::inherit())
            .output()
            .expect("run tools/pg-cluster");
        assert!(
            out.status.success(),
            "tools/pg-cluster start {} failed ({}): set WEFT_BENCH_BACKENDS=sqlite to run without PostgreSQL",
            dir.display(),
            out.status
        );
        let admin = String::from_utf8(out.stdout).expect("conninfo").trim().to_owned();
        let bin = Command::new(PG_CLUSTER)
            .arg("bin")
            .output()
            .expect("tools/pg-cluster bin");
        let psql = Path::new(String::from_utf8_lossy(&bin.stdout).trim()).join("psql");
        let pid_file = std::fs::read_to_string(dir.join("data/postmaster.pid")).expect("postmaster.pid");
        let postmaster = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("postmaster PID");
        eprintln!("PostgreSQL for this run (fsync on, synchronous_commit off): {admin}");
        let cluster = PgCluster {
            dir,
            admin,
            psql,
            postmaster,
        };
        if statements {
            cluster.psql("CREATE EXTENSION pg_stat_statements");
        }
        cluster
    }

    /// The statements that took the most time, to stderr.
    fn print_statements(&self, n: usize) {
        let order = if std::env::var_os("WEFT_BENCH_PG_BY_CALLS").is_some() {
            "calls"
        } else {
            "total_exec_time"
        };
        let top = self.psql(&format!(
            "SELECT calls, round(total_exec_time)::bigint, round((mean_exec_time * 1000)::numeric, 1),
                    round((min_exec_time * 1000)::numeric, 1), round((max_exec_time * 1000)::numeric, 1),
                    rows, dbid, toplevel, regexp_replace(query, '\\s+', ' ', 'g')
             FROM pg_stat_statements ORDER BY {order} DESC LIMIT {n}"
        ));
        let per_database = self.psql(
            "SELECT d.datname, sum(s.calls), round(sum(s.total_exec_time))::bigint
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE s.toplevel GROUP BY d.datname ORDER BY 2 DESC",
        );
        eprintln!("PostgreSQL statements per database (database | calls | total ms):");
        for line in per_database.lines() {
            eprintln!("  {line}");
        }
        eprintln!(
            "PostgreSQL statements by total time (calls | total ms | mean, min, max µs | rows | database | top level | statement):"
        );
        for line in top.lines() {
            let line: String = line.chars().take(220).collect();
            eprintln!("  {line}");
        }
    }

    /// Runs one SQL statement as the admin user; its output (unaligned).
    fn psql(&self, sql: &str) -> String {
        let out = Command::new(&self.psql)
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.admin,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `CREATE DATABASE weft_bench_<random>{options}`.
    fn create_database(&self, options: &str) -> Database {
        let name = format!("{PREFIX}{:016x}", rand::random::<u64>());
        self.psql(&format!("CREATE DATABASE {name}{options}"));
        let mut url: Vec<&str> = self
            .admin
            .split_whitespace()
            .filter(|p| !p.starts_with("dbname="))
            .collect();
        let dbname = format!("dbname={name}");
        url.push(&dbname);
        Database {
            url: url.join(" "),
            name,
        }
    }

    /// The CPU time of the server's processes: the postmaster with the
    /// children it reaped (connections that closed), and each live child,
    /// a connection counted under its database.
    fn cpu(&self) -> PgCpu {
        let Some(ProcStat { cpu, children_cpu, .. }) = proc_stat(self.postmaster) else {
            return PgCpu::default();
        };
        let mut reading = PgCpu {
            total: cpu + children_cpu,
            by_database: HashMap::new(),
        };
        for pid in self.children() {
            let Some(stat) = proc_stat(pid).filter(|s| s.ppid == self.postmaster) else {
                continue;
            };
            reading.total += stat.cpu;
            // A connection's title: "postgres: <user> <database> <host> <state>".
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&title).replace('\0', " ");
            if let Some(database) = title.split_whitespace().find(|w| w.starts_with(PREFIX)) {
                *reading.by_database.entry(database.to_owned()).or_default() += stat.cpu;
            }
        }
        reading
    }

    /// The postmaster's child processes: from /proc/<pid>/task/<pid>/children
    /// (cheap enough to read between two requests), else every process.
    fn children(&self) -> Vec<u32> {
        let pm = self.postmaster;
        match std::fs::read_to_string(format!("/proc/{pm}/task/{pm}/children")) {
            Ok(list) => list.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
            Err(_) => std::fs::read_dir("/proc")
                .expect("/proc")
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect(),
        }
    }
}

/// `WEFT_BENCH_PG_STATEMENTS` (0: none).
fn statements_to_show() -> usize {
    std::env::var("WEFT_BENCH_PG_STATEMENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let n = statements_to_show();
        if n > 0 {
            self.print_statements(n);
        }
        let _ = Command::new(PG_CLUSTER)
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// CPU time of the PostgreSQL server: in all, and of the connections to
/// each database. A reading, or the difference of two
/// ([`PgCpu::since`]).
#[derive(Clone, Debug, Default)]
pub struct PgCpu {
    total: Duration,
    by_database: HashMap<String, Duration>,
}

impl PgCpu {
    /// What was used between `before` and this reading (a connection that
    /// closed in between moves from its database to the rest).
    pub fn since(&self, before: &PgCpu) -> PgCpu {
        PgCpu {
            total: self.total.saturating_sub(before.total),
            by_database: self
                .by_database
                .iter()
                .map(|(name, cpu)| {
                    let earlier = before.by_database.get(name).copied().unwrap_or_default();
                    (name.clone(), cpu.saturating_sub(earlier))
                })
                .collect(),
        }
    }

    /// All the server's processes.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// The connections to `database` (zero for none: SQLite).
    pub fn of(&self, database: Option<&Database>) -> Duration {
        database
            .and_then(|d| self.by_database.get(&d.name))
            .copied()
            .unwrap_or_default()
    }

    /// What no database's connections account for: the background
    /// processes (WAL writer, checkpointer, …) and connections that closed.
    pub fn shared(&self) -> Duration {
        self.total.saturating_sub(self.by_database.values().sum())
    }

    /// The connections to `database` and [`PgCpu::shared`]: the work of the
    /// server of that database while the others only read (zero: SQLite).
    pub fn with_shared(&self, database: Option<&Database>) -> Duration {
        match database {
            Some(_) => self.of(database) + self.shared(),
            None => Duration::ZERO,
        }
    }
}

/// The CPU clock of a server under test that is PostgreSQL's only user:
/// its process (`pid`, or `"self"`) and, on PostgreSQL, all the database
/// server's processes. /proc counts in 10 ms ticks, so short phases read
/// coarse.
pub struct Clock {
    pid: String,
    backend: Backend,
    /// The server's name, for "weft … + PostgreSQL …".
    server: &'static str,
}

/// CPU time used: the server's process and PostgreSQL's.
#[derive(Clone, Copy)]
pub struct Used {
    pub process: Duration,
    pub pg: Duration,
}

impl Clock {
    pub fn new(pid: impl std::fmt::Display, backend: &Backend, server: &'static str) -> Clock {
        Clock {
            pid: pid.to_string(),
            backend: backend.clone(),
            server,
        }
    }

    pub fn read(&self) -> Used {
        Used {
            process: super::cpu_time(&self.pid),
            pg: self.backend.cpu().total(),
        }
    }

    pub fn since(&self, before: Used) -> Used {
        let now = self.read();
        Used {
            process: now.process.saturating_sub(before.process),
            pg: now.pg.saturating_sub(before.pg),
        }
    }

    /// Over `n` units: per unit (split on PostgreSQL) and in total.
    pub fn show(&self, used: Used, n: usize, unit: &str) -> String {
        let n = n.max(1) as u32;
        format!(
            "{} per {unit}; {} total",
            self.backend
                .cpu_split(used.process / n, used.pg / n, self.server, super::ms),
            super::ms(used.process + used.pg)
        )
    }
}
