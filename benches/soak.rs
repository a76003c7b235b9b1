//! Soak test (issue "Robust under load"): a server under a steady load for
//! a bounded time, watched from outside, and again after the load stops.
//!
//!   cargo bench --bench soak
//!
//! The server under test runs as a process of its own (`weft serve`, or
//! Synapse from `tests/common/synapse.rs`), on loopback. Its users, all
//! spoken to over HTTP from this process, each with a connection pool of
//! its own:
//!
//! - **syncers** (`WEFT_SOAK_SYNCERS`, 200), each long-polling
//!   `/sync?timeout=30000` in a loop with the `next_batch` of the answer
//!   before (filter: no presence, timeline limit `WEFT_SOAK_TIMELINE`, 50).
//!   They are spread over `WEFT_SOAK_ROOMS` (4) rooms, but for
//!   `WEFT_SOAK_QUIET_PERCENT` (20) % of them, who share a room of their
//!   own where nothing is sent: those should answer only at their timeout
//!   (the wake-ups are targeted);
//! - **senders** (`WEFT_SOAK_SENDERS`, 4), members of every room, each
//!   sending `m.room.message` as fast as it is answered (one request in
//!   flight; `WEFT_SOAK_RATE` caps each sender at that many sends per
//!   second), message `n` of sender `i` into room `(i + n) % rooms`;
//! - with `WEFT_SOAK_FEDERATED=1` (the default), a **peer**: a second
//!   `weft serve` on another server name whose user (the watcher) joined
//!   every room over federation, so that every message is also sent there,
//!   and who long-polls `/sync` on the peer like the others (the peer is
//!   weft for both servers under test).
//!
//! Before the syncers start (after everyone has joined), the senders send
//! alone for `WEFT_SOAK_ALONE_SECS` (10) into the same rooms: the rate the
//! load is compared with (`sends/s alone / under load`; with
//! `WEFT_SOAK_QUIET_PERCENT=100`, what idle parked `/sync`s of users who
//! share no room with the senders cost them). The syncers' first `since`
//! is taken after those messages.
//!
//! Every message carries the time its send started (`soak_us`, from a clock
//! of this process), so that each `/sync` answer gives the delivery
//! latency of each message in it: send → seen by a syncer of the room,
//! send → seen by the watcher on the peer.
//!
//! The load lasts `WEFT_SOAK_SECS` (60); the syncers keep syncing for
//! `WEFT_SOAK_DRAIN_SECS` (5) more, then every client is dropped (their
//! connections closed) and the server is left alone for
//! `WEFT_SOAK_REST_SECS` (10). Every `WEFT_SOAK_INTERVAL_SECS` (5) and at
//! each phase's end, a row: sends/s, send latency p50/p99, delivery latency
//! p50/p99 (to the syncers, to the peer), sync answers/s, errors, and the
//! server process's RSS (`VmRSS`), open files (`/proc/<pid>/fd`), threads
//! and CPU (% of one core; on PostgreSQL also its connections' CPU). At the
//! end, per server, the table, a summary (side by side) and one line.
//!
//! `WEFT_SOAK_CASES` (`weft,synapse`): the servers under test, one after
//! the other (Synapse is skipped, with a note, when its Python cannot be
//! found: `WEFT_TEST_PYTHON`). `WEFT_SOAK_BACKEND` (`sqlite`; `postgres`
//! starts a throw-away PostgreSQL as the other benchmarks do, and puts the
//! peer there too). Rate limits are off on both (`WEFT_RATE_LIMITS=false`,
//! set by `support/weft.rs`; the Synapse harness's are set high). Synapse
//! logs at `WARNING` here unless `WEFT_SYNAPSE_LOG_LEVEL` says otherwise
//! (weft at `warn`): at `INFO` it writes a line per request. The weft
//! processes inherit the other `WEFT_*` variables of the environment, e.g.
//! `WEFT_PRESENCE=false` (the Synapse harness runs with presence off).
//!
//! Bounded: each server's part ends `WEFT_SOAK_SECS` + drain + rest after
//! its load starts (tasks still running are aborted), and its setting up
//! (start, registering the users, rooms, joins, first syncs) is given
//! `WEFT_SOAK_SETUP_SECS` (600) at most; past either, the run fails (the
//! servers are killed). Without `--bench` (`cargo test --benches`) it does
//! a small smoke run: weft only, 10 syncers, 2 senders, 6 s.
//! `WEFT_SOAK_KEEP=1` keeps the weft servers' directories (data, logs).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;
#[path = "support/synapse.rs"]
mod synapse_process;
#[path = "support/weft.rs"]
mod weft_process;

use common::{
    enc,
    synapse::{Client, Synapse},
};
use futures_util::{StreamExt, stream};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{
    Latencies, Report, cpu_time, load_average, log_tail,
    postgres::{Backend, Database, PgCluster},
    print_side_by_side, proc_stat,
};
use synapse_process::{start_synapse, synapse_pid};
use weft_process::{Options, PASSWORD, WeftProcess};

/// How long one send may take before it counts as an error.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A long-poll of 30 s, and a margin.
const SYNC_TIMEOUT: Duration = Duration::from_secs(45);
/// A sync answered sooner than this without a message was woken for
/// nothing the syncer was shown (its timeout is 30 s).
const EARLY: Duration = Duration::from_secs(25);
/// Registrations, joins and first syncs in flight while setting up.
const SETUP_CONCURRENCY: usize = 4;

/// weft with open registration (users registered over the client API).
const OPEN: Options = Options {
    metrics: false,
    open_registration: true,
    appservice: false,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    Weft,
    Synapse,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Weft => "weft",
            Case::Synapse => "Synapse",
        }
    }
}

/// The run's settings, from `WEFT_SOAK_*` (see the module's comment).
#[derive(Debug, Clone)]
struct Settings {
    secs: u64,
    syncers: usize,
    senders: usize,
    rooms: usize,
    quiet_percent: usize,
    federated: bool,
    cases: Vec<Case>,
    postgres: bool,
    /// Sends per second per sender (0: as fast as answered).
    rate: f64,
    timeline: usize,
    interval: Duration,
    drain: Duration,
    rest: Duration,
    setup: Duration,
    /// The senders alone before the load.
    alone: Duration,
}

impl Settings {
    fn from_env(full: bool) -> Settings {
        fn var<T: FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
                _ => default,
            }
        }
        let pick = |full_value: u64, smoke: u64| if full { full_value } else { smoke };
        let cases = var::<String>("WEFT_SOAK_CASES", if full { "weft,synapse" } else { "weft" }.to_owned())
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .map(|c| match c.as_str() {
                "weft" => Case::Weft,
                "synapse" => Case::Synapse,
                other => panic!("WEFT_SOAK_CASES: unknown case {other:?} (weft, synapse)"),
            })
            .collect();
        let federated = var::<String>("WEFT_SOAK_FEDERATED", "1".to_owned()).to_ascii_lowercase();
        let backend = var::<String>("WEFT_SOAK_BACKEND", "sqlite".to_owned()).to_ascii_lowercase();
        Settings {
            secs: var("WEFT_SOAK_SECS", pick(60, 6)).max(1),
            syncers: var("WEFT_SOAK_SYNCERS", pick(200, 10) as usize),
            senders: var("WEFT_SOAK_SENDERS", pick(4, 2) as usize).max(1),
            rooms: var("WEFT_SOAK_ROOMS", pick(4, 2) as usize).max(1),
            quiet_percent: var("WEFT_SOAK_QUIET_PERCENT", 20usize).min(100),
            federated: !matches!(federated.as_str(), "0" | "false" | "no" | "off"),
            cases,
            postgres: match backend.as_str() {
                "sqlite" => false,
                "postgres" | "pg" => true,
                other => panic!("WEFT_SOAK_BACKEND: unknown backend {other:?} (sqlite, postgres)"),
            },
            rate: var("WEFT_SOAK_RATE", 0.0f64).max(0.0),
            timeline: var("WEFT_SOAK_TIMELINE", 50usize).max(1),
            interval: Duration::from_secs(var("WEFT_SOAK_INTERVAL_SECS", pick(5, 2)).max(1)),
            drain: Duration::from_secs(var("WEFT_SOAK_DRAIN_SECS", pick(5, 2))),
            alone: Duration::from_secs(var("WEFT_SOAK_ALONE_SECS", pick(10, 2))),
            rest: Duration::from_secs(var("WEFT_SOAK_REST_SECS", pick(10, 2))),
            setup: Duration::from_secs(var("WEFT_SOAK_SETUP_SECS", 600)),
        }
    }

    /// Syncer `j` is in the quiet room.
    fn is_quiet(&self, j: usize) -> bool {
        // Spread evenly: the j-th is quiet when the share of quiet ones
        // among the first j + 1 moves past a whole number.
        (j + 1) * self.quiet_percent / 100 > j * self.quiet_percent / 100
    }

    fn quiet_count(&self) -> usize {
        (0..self.syncers).filter(|&j| self.is_quiet(j)).count()
    }

    /// What the table's and the report's titles say of the load.
    fn describe(&self) -> String {
        let quiet = self.quiet_count();
        format!(
            "{} syncers ({} in {} rooms, {quiet} in a quiet room), {} senders ({}), {}{} s of load",
            self.syncers,
            self.syncers - quiet,
            self.rooms,
            self.senders,
            if self.rate > 0.0 {
                format!("{} sends/s each", self.rate)
            } else {
                "as fast as answered".to_owned()
            },
            if self.federated { "a federated weft peer, " } else { "" },
            self.secs
        )
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(full);
    if std::env::var_os("WEFT_SYNAPSE_LOG_LEVEL").is_none() {
        // SAFETY: no other thread runs yet (the runtime is made below).
        unsafe { std::env::set_var("WEFT_SYNAPSE_LOG_LEVEL", "WARNING") };
    }
    weft::tls::install_crypto_provider();
    eprintln!("weft binary: {}", weft_process::WEFT);
    eprintln!("{settings:?}");
    let backend = match settings.postgres {
        true => Backend::Postgres(Arc::new(PgCluster::start())),
        false => Backend::Sqlite,
    };
    let runtime = support::bench_runtime();
    let mut results = Vec::new();
    for &case in &settings.cases {
        if case == Case::Synapse
            && let Err(why) = synapse_available()
        {
            eprintln!("Synapse skipped: {why}");
            continue;
        }
        let budget = settings.setup + Duration::from_secs(settings.secs) + settings.drain + settings.rest;
        let run = runtime.block_on(async {
            tokio::time::timeout(budget + Duration::from_secs(60), run(case, &settings, &backend)).await
        });
        match run {
            Ok(result) => results.push(result),
            Err(_) => panic!(
                "{}: the soak did not end within {} s (setting up {} s at most, then {} s of load, drain and rest)",
                backend.label(case.name()),
                (budget + Duration::from_secs(60)).as_secs(),
                settings.setup.as_secs(),
                (budget - settings.setup).as_secs()
            ),
        }
    }
    let title = format!("soak: {}", settings.describe());
    println!();
    println!("{title}");
    for result in &results {
        println!();
        print!("{}", result.table);
    }
    let (reports, lines): (Vec<Report>, Vec<String>) = results.into_iter().map(|r| (r.report, r.line)).unzip();
    if !reports.is_empty() {
        print_side_by_side(&title, &reports);
    }
    println!();
    for line in lines {
        println!("{line}");
    }
}

/// Whether the test virtualenv's Python can run Synapse (else why not).
fn synapse_available() -> Result<(), String> {
    std::panic::catch_unwind(common::synapse::python)
        .map(|_| ())
        .map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "no Python with synapse".to_owned())
        })
}

/// What a server's part gives: its table, its report, its line.
struct CaseResult {
    table: String,
    report: Report,
    line: String,
}

// ---------------------------------------------------------------------------
// The server under test.

enum Server {
    Weft(WeftProcess),
    Synapse {
        synapse: Synapse,
        pid: u32,
        database: Option<Database>,
    },
}

impl Server {
    async fn start(case: Case, root: &Path, backend: &Backend) -> Server {
        match case {
            Case::Weft => Server::Weft(WeftProcess::start(root, "soak", &[], OPEN, backend).await),
            Case::Synapse => {
                let (synapse, database) = start_synapse(backend).await;
                let pid = synapse_pid(&synapse);
                Server::Synapse { synapse, pid, database }
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Weft(p) => p.pid(),
            Server::Synapse { pid, .. } => *pid,
        }
    }

    fn name(&self) -> String {
        match self {
            Server::Weft(p) => p.server_name.clone(),
            Server::Synapse { synapse, .. } => synapse.server_name().to_owned(),
        }
    }

    fn database(&self) -> Option<&Database> {
        match self {
            Server::Weft(p) => p.database.as_ref(),
            Server::Synapse { database, .. } => database.as_ref(),
        }
    }

    async fn register(&self, http: &reqwest::Client, localpart: &str) -> Client {
        match self {
            Server::Weft(p) => register_on_weft(http, &p.client_base, localpart).await,
            Server::Synapse { synapse, .. } => {
                let (user_id, token) = synapse.register(localpart).await;
                Client {
                    http: http.clone(),
                    base: synapse.client_base(),
                    user_id,
                    token,
                }
            }
        }
    }

    /// The sizes of its database files (SQLite; on PostgreSQL, weft has
    /// none and Synapse's directory holds none).
    fn storage_files(&self) -> String {
        let dir = match self {
            Server::Weft(p) => p.log().parent().expect("log in a directory").join("data"),
            Server::Synapse { synapse, .. } => synapse.dir().to_owned(),
        };
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len())))
                    .filter(|(name, _)| name.contains(".db"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        match files.is_empty() {
            true => "none".to_owned(),
            false => files
                .iter()
                .map(|(name, len)| format!("{name} {:.1} MiB", *len as f64 / 1048576.0))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The lines its log has at warn (WARNING) or above.
    fn log_problems(&self) -> Vec<String> {
        match self {
            Server::Weft(p) => weft_log_problems(p),
            Server::Synapse { synapse, .. } => log_tail(&synapse.log_path(), usize::MAX)
                .lines()
                .filter(|l| {
                    [" - WARNING - ", " - ERROR - ", " - CRITICAL - "]
                        .iter()
                        .any(|level| l.contains(level))
                })
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// A weft log's lines (the benchmarks log at warn).
fn weft_log_problems(p: &WeftProcess) -> Vec<String> {
    log_tail(p.log(), usize::MAX)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Registers `localpart` through weft's open registration.
async fn register_on_weft(http: &reqwest::Client, base: &str, localpart: &str) -> Client {
    let res = http
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(&json!({
            "username": localpart,
            "password": PASSWORD,
            "auth": { "type": "m.login.dummy" },
        }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("register {localpart} at {base}: {e}"));
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "register {localpart} at {base}: {body}");
    Client {
        http: http.clone(),
        base: base.to_owned(),
        user_id: body["user_id"].as_str().expect("user_id").to_owned(),
        token: body["access_token"].as_str().expect("access_token").to_owned(),
    }
}

/// An HTTP client: the setting up's (shared), or one user's during the load.
fn http_client(idle_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(idle_per_host)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// The same user on an HTTP client of its own (its own connections).
fn on_own_connection(client: &Client) -> Client {
    Client {
        http: http_client(2),
        ..client.clone()
    }
}

// ---------------------------------------------------------------------------
// What the clients see.

/// What the clients saw in one interval (or, summed, in the whole run).
#[derive(Default)]
struct Window {
    /// Sends answered 200, their latency, and how many went to each room.
    sends: u64,
    send_latency: Vec<Duration>,
    sent_to: Vec<u64>,
    /// Send → seen in a `/sync` answer of a syncer of the room; how many
    /// were seen, by room.
    delivery: Vec<Duration>,
    delivered_in: Vec<u64>,
    /// Send → seen in a `/sync` answer of the watcher on the peer.
    federation: Vec<Duration>,
    /// `/sync` answers (200) of the syncers of the rooms and of the quiet
    /// room, and of the watcher on the peer.
    sync_answers: u64,
    quiet_answers: u64,
    peer_answers: u64,
    /// Answers of the syncers of the rooms, without a message, sooner than
    /// [`EARLY`]; the same of the quiet syncers.
    empty_early: u64,
    quiet_early: u64,
    /// Answers whose timeline of a sender room was `limited` (messages
    /// left out).
    limited: u64,
    /// Messages seen again, or before one sent earlier by the same sender
    /// into the same room.
    disorder: u64,
    /// Failed requests, by what failed.
    errors: BTreeMap<String, u64>,
}

fn bump(counts: &mut Vec<u64>, i: usize, n: u64) {
    if counts.len() <= i {
        counts.resize(i + 1, 0);
    }
    counts[i] += n;
}

impl Window {
    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other`'s figures to these.
    fn absorb(&mut self, other: &Window) {
        self.sends += other.sends;
        self.send_latency.extend_from_slice(&other.send_latency);
        for (i, n) in other.sent_to.iter().enumerate() {
            bump(&mut self.sent_to, i, *n);
        }
        self.delivery.extend_from_slice(&other.delivery);
        for (i, n) in other.delivered_in.iter().enumerate() {
            bump(&mut self.delivered_in, i, *n);
        }
        self.federation.extend_from_slice(&other.federation);
        self.sync_answers += other.sync_answers;
        self.quiet_answers += other.quiet_answers;
        self.peer_answers += other.peer_answers;
        self.empty_early += other.empty_early;
        self.quiet_early += other.quiet_early;
        self.limited += other.limited;
        self.disorder += other.disorder;
        for (what, n) in &other.errors {
            *self.errors.entry(what.clone()).or_default() += n;
        }
    }
}

/// What the load's tasks share.
struct Shared {
    /// The clock of `soak_us`.
    epoch: Instant,
    /// The sender rooms' IDs, to their index.
    rooms: HashMap<String, usize>,
    window: Mutex<Window>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// The parts of a `/sync` answer the soak reads.
#[derive(Deserialize)]
struct SyncAnswer {
    next_batch: String,
    #[serde(default)]
    rooms: SyncRooms,
}

#[derive(Deserialize, Default)]
struct SyncRooms {
    #[serde(default)]
    join: HashMap<String, JoinedRoom>,
}

#[derive(Deserialize)]
struct JoinedRoom {
    #[serde(default)]
    timeline: Timeline,
}

#[derive(Deserialize, Default)]
struct Timeline {
    #[serde(default)]
    events: Vec<TimelineEvent>,
    #[serde(default)]
    limited: bool,
}

#[derive(Deserialize)]
struct TimelineEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: SoakContent,
}

/// A soak message's content (other events' content reads as empty).
#[derive(Deserialize, Default)]
struct SoakContent {
    soak_us: Option<u64>,
    soak_sender: Option<u64>,
    soak_seq: Option<u64>,
}

/// A request of the load: its status and body, or what went wrong.
async fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(StatusCode, bytes::Bytes), String> {
    let mut req = client
        .http
        .request(method, format!("{}{path}", client.base))
        .bearer_auth(&client.token)
        .timeout(timeout);
    if let Some(body) = body {
        req = req.json(body);
    }
    let res = req.send().await.map_err(describe)?;
    let status = res.status();
    let body = res.bytes().await.map_err(describe)?;
    Ok((status, body))
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else if e.is_body() || e.is_decode() {
        "answer cut short".to_owned()
    } else {
        "request failed".to_owned()
    }
}

/// `<status> <errcode>` of an error answer.
fn status_and_errcode(status: StatusCode, body: &[u8]) -> String {
    let errcode = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errcode"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{} {errcode}", status.as_u16()).trim_end().to_owned()
}

/// Sender `i`: messages into the rooms in turn until `stop`.
/// Sender `i`, until `stop`; its transaction IDs start with `tag`.
async fn sender(
    (i, tag): (usize, &'static str),
    client: Client,
    rooms: Arc<Vec<String>>,
    rate: f64,
    stop: Instant,
    shared: Arc<Shared>,
) {
    let pace = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut next = Instant::now();
    let mut n: u64 = 0;
    while Instant::now() < stop {
        if let Some(pace) = pace {
            tokio::time::sleep_until(next.into()).await;
            next += pace;
            if Instant::now() >= stop {
                break;
            }
        }
        let r = (i + n as usize) % rooms.len();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{tag}{i}-{n}",
            enc(&rooms[r])
        );
        let content = json!({
            "msgtype": "m.text",
            "body": format!("soak message {n} of sender {i}"),
            "soak_us": shared.now_us(),
            "soak_sender": i,
            "soak_seq": n,
        });
        let asked = Instant::now();
        let answer = call(&client, Method::PUT, &path, Some(&content), SEND_TIMEOUT).await;
        let took = asked.elapsed();
        let pause = {
            let mut w = shared.window.lock().unwrap();
            match answer {
                Ok((StatusCode::OK, _)) => {
                    w.sends += 1;
                    w.send_latency.push(took);
                    bump(&mut w.sent_to, r, 1);
                    None
                }
                Ok((status, body)) => {
                    w.error(format!("send: {}", status_and_errcode(status, &body)));
                    let retry = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["retry_after_ms"].as_u64());
                    Some(Duration::from_millis(retry.unwrap_or(100)))
                }
                Err(e) => {
                    w.error(format!("send: {e}"));
                    Some(Duration::from_millis(100))
                }
            }
        };
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        n += 1;
    }
}

/// Who a syncing client is.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// A syncer of one of the sender rooms.
    Member,
    /// A syncer of the quiet room.
    Quiet,
    /// The peer's user, in every sender room.
    Watcher,
}

/// A client long-polling `/sync` from `since`, for ever (aborted at the
/// end of the load).
async fn syncer(role: Role, client: Client, mut since: String, filter: Arc<str>, shared: Arc<Shared>) {
    // The last message seen of each sender in each room: (room, sender) → seq.
    let mut last: HashMap<(usize, u64), u64> = HashMap::new();
    loop {
        let path = format!(
            "/_matrix/client/v3/sync?since={}&timeout=30000&filter={filter}",
            enc(&since)
        );
        let asked = Instant::now();
        let answer = call(&client, Method::GET, &path, None, SYNC_TIMEOUT).await;
        let seen_us = shared.now_us();
        let answer = match answer {
            Ok((StatusCode::OK, body)) => {
                serde_json::from_slice::<SyncAnswer>(&body).map_err(|_| "sync: not a sync answer".to_owned())
            }
            Ok((status, body)) => Err(format!("sync: {}", status_and_errcode(status, &body))),
            Err(e) => Err(format!("sync: {e}")),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(what) => {
                shared.window.lock().unwrap().error(what);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (mut latencies, mut seen_in, mut limited, mut disorder) = (Vec::new(), Vec::new(), 0, 0);
        for (room_id, room) in &answer.rooms.join {
            let Some(&r) = shared.rooms.get(room_id) else {
                continue;
            };
            limited += u64::from(room.timeline.limited);
            for event in &room.timeline.events {
                let SoakContent {
                    soak_us: Some(sent_us),
                    soak_sender: Some(sender),
                    soak_seq: Some(seq),
                } = event.content
                else {
                    continue;
                };
                if event.kind != "m.room.message" {
                    continue;
                }
                latencies.push(Duration::from_micros(seen_us.saturating_sub(sent_us)));
                seen_in.push(r);
                match last.get(&(r, sender)) {
                    Some(&before) if seq <= before => disorder += 1,
                    _ => {
                        last.insert((r, sender), seq);
                    }
                }
            }
        }
        since = answer.next_batch;
        let early = latencies.is_empty() && asked.elapsed() < EARLY;
        let mut w = shared.window.lock().unwrap();
        w.limited += limited;
        w.disorder += disorder;
        match role {
            Role::Member => {
                w.sync_answers += 1;
                w.empty_early += u64::from(early);
                w.delivery.extend(latencies);
                for r in seen_in {
                    bump(&mut w.delivered_in, r, 1);
                }
            }
            Role::Quiet => {
                w.sync_answers += 1;
                w.quiet_answers += 1;
                w.quiet_early += u64::from(early);
            }
            Role::Watcher => {
                w.peer_answers += 1;
                w.federation.extend(latencies);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The server process, from /proc.

#[derive(Clone, Copy, Default)]
struct ProcSample {
    rss_kib: u64,
    hwm_kib: u64,
    fds: u64,
    threads: u64,
    cpu: Duration,
}

fn sample(pid: u32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        cpu: proc_stat(pid).map(|s| s.cpu).unwrap_or_default(),
    }
}

/// The open files of a process by kind: TCP sockets by state (from
/// `/proc/<pid>/net/tcp{,6}`), other sockets, SQLite's files, other
/// files, pipes, anonymous inodes (epoll, eventfd, …); most first.
fn fd_kinds(pid: u32) -> String {
    let mut tcp: HashMap<u64, &'static str> = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(state), Some(inode)) = (fields.get(3), fields.get(9).and_then(|i| i.parse().ok())) else {
                continue;
            };
            let state = match *state {
                "01" => "ESTABLISHED",
                "02" => "SYN_SENT",
                "03" => "SYN_RECV",
                "04" => "FIN_WAIT1",
                "05" => "FIN_WAIT2",
                "06" => "TIME_WAIT",
                "08" => "CLOSE_WAIT",
                "09" => "LAST_ACK",
                "0A" => "LISTEN",
                "0B" => "CLOSING",
                _ => "CLOSE",
            };
            tcp.insert(inode, state);
        }
    }
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return "(gone)".to_owned();
    };
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let kind = if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            match inode.parse().ok().and_then(|i: u64| tcp.get(&i)) {
                Some(state) => format!("tcp {state}"),
                None => "other socket".to_owned(),
            }
        } else if target.starts_with("pipe:") {
            "pipe".to_owned()
        } else if let Some(anon) = target.strip_prefix("anon_inode:") {
            anon.trim_matches(['[', ']']).to_owned()
        } else if [".db", ".db-wal", ".db-shm", "-wal", "-shm", "-journal"]
            .iter()
            .any(|end| target.ends_with(end))
        {
            let name = target.rsplit('/').next().unwrap_or_default();
            format!("SQLite {name}")
        } else {
            "other file".to_owned()
        };
        *kinds.entry(kind).or_default() += 1;
    }
    let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    kinds
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Milliseconds, with fewer decimals as they grow.
fn msf(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// `p50/p99` in ms, `-` for no samples.
fn p50_p99(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "-".to_owned();
    }
    let l = Latencies::new(samples.to_vec());
    format!("{}/{}", msf(l.pct(50.0)), msf(l.pct(99.0)))
}

/// `p50 … | p90 … | p99 … | max … | mean …`, or `none`.
fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "none".to_owned();
    }
    format!(
        "{} ({} samples)",
        Latencies::new(samples.to_vec()).summary(),
        samples.len()
    )
}

const HEADER: [&str; 12] = [
    "phase", "t s", "sends/s", "send", "sync", "fed", "syncs/s", "errors", "RSS MiB", "fds", "thr", "CPU%",
];

fn table_line(cells: &[String], postgres: bool) -> String {
    let widths = [5, 5, 8, 13, 13, 13, 8, 6, 8, 5, 4, 6];
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i == 0 {
            write!(line, "{cell:<width$}").unwrap();
        } else {
            write!(line, " {cell:>width$}").unwrap();
        }
    }
    if postgres && let Some(pg) = cells.get(widths.len()) {
        write!(line, " {pg:>7}").unwrap();
    }
    line
}

// ---------------------------------------------------------------------------
// A server's part.

/// Everything set up for the load.
struct Setup {
    server: Server,
    peer: Option<WeftProcess>,
    /// The server right after start-up, and once the users are registered.
    started: ProcSample,
    registered: ProcSample,
    senders: Vec<Client>,
    /// Each syncer, its role and its first `next_batch`.
    syncers: Vec<(Client, Role, String)>,
    watcher: Option<(Client, String)>,
    rooms: Vec<String>,
    /// Syncers of each sender room.
    members_of: Vec<u64>,
    filter: Arc<str>,
    /// The senders alone before the load.
    alone: Window,
    took: Duration,
}

async fn set_up(case: Case, s: &Settings, backend: &Backend, root: &Path) -> Setup {
    let t = Instant::now();
    let label = backend.label(case.name());
    eprintln!("== {label}: setting up ({})", s.describe());
    let server = Server::start(case, root, backend).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = sample(server.pid());
    let http = http_client(64);

    let names = |prefix: &'static str, n: usize| (0..n).map(move |i| format!("soak{prefix}{i}"));
    let senders: Vec<Client> = stream::iter(names("sender", s.senders))
        .map(|name| {
            let (server, http) = (&server, &http);
            async move { server.register(http, &name).await }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let users: Vec<Client> = stream::iter(names("syncer", s.syncers))
        .map(|name| {
            let (server, http) = (&server, &http);
            async move { server.register(http, &name).await }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await;
    eprintln!(
        "  {} users registered ({:.1} s)",
        s.senders + s.syncers,
        t.elapsed().as_secs_f64()
    );
    let registered = sample(server.pid());

    // The sender rooms, the quiet room, and who joins which.
    let mut rooms = Vec::new();
    for r in 0..s.rooms {
        let body = json!({ "preset": "public_chat", "name": format!("soak room {r}") });
        rooms.push(senders[0].create_room(body).await);
    }
    let quiet: Vec<usize> = (0..s.syncers).filter(|&j| s.is_quiet(j)).collect();
    let quiet_room = match quiet.first() {
        Some(&j) => Some(
            users[j]
                .create_room(json!({ "preset": "public_chat", "name": "soak quiet room" }))
                .await,
        ),
        None => None,
    };
    let mut joins: Vec<(&Client, &str)> = Vec::new();
    for sender in &senders[1..] {
        joins.extend(rooms.iter().map(|room| (sender, room.as_str())));
    }
    let mut roles = Vec::new();
    let mut members_of = vec![0u64; s.rooms];
    let mut k = 0;
    for (j, user) in users.iter().enumerate() {
        if s.is_quiet(j) {
            roles.push(Role::Quiet);
            if Some(&j) != quiet.first() {
                joins.push((user, quiet_room.as_deref().unwrap()));
            }
        } else {
            roles.push(Role::Member);
            members_of[k % s.rooms] += 1;
            joins.push((user, &rooms[k % s.rooms]));
            k += 1;
        }
    }
    stream::iter(joins)
        .map(|(user, room)| async move {
            let (status, body) = user.join(room, "").await;
            assert_eq!(status, StatusCode::OK, "{} joins {room}: {body}", user.user_id);
        })
        .buffer_unordered(SETUP_CONCURRENCY * 2)
        .collect::<Vec<()>>()
        .await;
    eprintln!("  rooms made and joined ({:.1} s)", t.elapsed().as_secs_f64());

    // The peer, its watcher joined to every sender room over federation.
    let (peer, watcher) = if s.federated {
        let peer = WeftProcess::start(root, &format!("peer-of-{}", case.name()), &[], OPEN, backend).await;
        let watcher = register_on_weft(&http, &peer.client_base, "soakwatcher").await;
        let via = format!("server_name={}", enc(&server.name()));
        for room in &rooms {
            let (status, body) = watcher.join(room, &via).await;
            assert_eq!(status, StatusCode::OK, "the peer's watcher joins {room}: {body}");
        }
        eprintln!(
            "  peer {} joined the rooms ({:.1} s)",
            peer.server_name,
            t.elapsed().as_secs_f64()
        );
        (Some(peer), Some(watcher))
    } else {
        (None, None)
    };

    // The senders alone, then a moment for the peer to take their
    // messages in.
    let alone = senders_alone(s, &senders, &rooms).await;
    eprintln!(
        "  senders alone: {:.1} sends/s ({:.1} s)",
        alone.sends as f64 / s.alone.as_secs_f64().max(1e-3),
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Everyone's first sync, for a `since`.
    let filter: Arc<str> = enc(&json!({
        "presence": { "types": [] },
        "room": { "timeline": { "limit": s.timeline } },
    })
    .to_string())
    .into();
    let first_sync = |client: Client| {
        let filter = filter.clone();
        async move {
            let body = client
                .ok(
                    Method::GET,
                    &format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
                    None,
                )
                .await;
            let since = body["next_batch"].as_str().expect("next_batch").to_owned();
            (client, since)
        }
    };
    let firsts: Vec<(Client, String)> = stream::iter(users.iter().map(on_own_connection))
        .map(first_sync)
        .buffered(SETUP_CONCURRENCY * 2)
        .collect()
        .await;
    let syncers = firsts
        .into_iter()
        .zip(roles)
        .map(|((client, since), role)| (client, role, since))
        .collect();
    let watcher = match watcher {
        Some(watcher) => Some(first_sync(on_own_connection(&watcher)).await),
        None => None,
    };
    let senders = senders.iter().map(on_own_connection).collect();
    eprintln!("  first syncs done ({:.1} s)", t.elapsed().as_secs_f64());
    Setup {
        server,
        peer,
        started,
        registered,
        senders,
        syncers,
        watcher,
        rooms,
        members_of,
        filter,
        alone,
        took: t.elapsed(),
    }
}

/// The senders on their own for `s.alone`, as in the load (nobody syncs
/// yet): what they sent and how long each send took.
async fn senders_alone(s: &Settings, senders: &[Client], rooms: &[String]) -> Window {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        rooms: rooms.iter().cloned().enumerate().map(|(i, r)| (r, i)).collect(),
        window: Mutex::new(Window::default()),
    });
    let stop = Instant::now() + s.alone;
    let rooms = Arc::new(rooms.to_vec());
    let tasks: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(sender(
                (i, "alone"),
                on_own_connection(client),
                rooms.clone(),
                s.rate,
                stop,
                shared.clone(),
            ))
        })
        .collect();
    for task in tasks {
        task.await.expect("a sender alone");
    }
    std::mem::take(&mut *shared.window.lock().unwrap())
}

async fn run(case: Case, s: &Settings, backend: &Backend) -> CaseResult {
    let mut root = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("WEFT_SOAK_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
        root.disable_cleanup(true);
        eprintln!("keeping the servers' directories in {}", root.path().display());
    }
    let label = backend.label(case.name());
    let setup = tokio::time::timeout(s.setup, set_up(case, s, backend, root.path()))
        .await
        .unwrap_or_else(|_| panic!("{label}: setting up took more than {} s", s.setup.as_secs()));
    let Setup {
        server,
        peer,
        started,
        registered,
        senders,
        syncers,
        watcher,
        rooms,
        members_of,
        filter,
        alone,
        took: setup_took,
    } = setup;
    let pid = server.pid();
    let database = server.database().cloned();
    let pg_cpu = || backend.cpu().of(database.as_ref());
    // The setting up's connections closed, and a moment of quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = sample(pid);
    let base_fds = fd_kinds(pid);
    let log_before = server.log_problems().len();
    let peer_log_before = peer.as_ref().map_or(0, |p| weft_log_problems(p).len());
    let peer_base = peer.as_ref().map(|p| sample(p.pid()));
    let load_average_before = load_average();
    let quiet = syncers.iter().filter(|(_, role, _)| *role == Role::Quiet).count() as u64;

    // The load.
    let start = Instant::now();
    let stop_sends = start + Duration::from_secs(s.secs);
    let stop_syncs = stop_sends + s.drain;
    let end = stop_syncs + s.rest;
    let shared = Arc::new(Shared {
        epoch: start,
        rooms: rooms.iter().cloned().enumerate().map(|(i, r)| (r, i)).collect(),
        window: Mutex::new(Window::default()),
    });
    let self_cpu = cpu_time("self");
    let mut tasks = Vec::new();
    for (client, role, since) in syncers {
        tasks.push(tokio::spawn(syncer(
            role,
            client,
            since,
            filter.clone(),
            shared.clone(),
        )));
    }
    if let Some((client, since)) = watcher {
        tasks.push(tokio::spawn(syncer(
            Role::Watcher,
            client,
            since,
            filter.clone(),
            shared.clone(),
        )));
    }
    let room_list = Arc::new(rooms.clone());
    for (i, client) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(sender(
            (i, "soak"),
            client,
            room_list.clone(),
            s.rate,
            stop_sends,
            shared.clone(),
        )));
    }

    let header: Vec<String> = HEADER
        .iter()
        .map(|h| (*h).to_owned())
        .chain(backend.is_postgres().then(|| "pg CPU%".to_owned()))
        .collect();
    let mut table = format!(
        "{label}: {} (latencies in ms, p50/p99; CPU% of one core)\n",
        s.describe()
    );
    writeln!(table, "{}", table_line(&header, backend.is_postgres())).unwrap();
    eprintln!("{}", table.trim_end());
    let mut totals = Window::default();
    let (mut last_t, mut last_proc, mut last_pg) = (start, base, pg_cpu());
    let mut peak = base;
    let mut at_stop = base;
    let mut stop_fds = String::new();
    let mut stop_files = String::new();
    let mut at_stop_syncs = base;
    let mut load_cpu = (Duration::ZERO, Duration::ZERO);
    let mut self_cpu_used = Duration::ZERO;
    loop {
        let boundary = [stop_sends, stop_syncs, end]
            .into_iter()
            .find(|b| *b > last_t)
            .unwrap_or(end);
        let next = (last_t + s.interval).min(boundary);
        tokio::time::sleep_until(next.into()).await;
        if next == stop_syncs {
            // The load is over: every client goes, its connections closed.
            for task in &tasks {
                task.abort();
            }
            for task in tasks.drain(..) {
                let _ = task.await;
            }
            self_cpu_used = cpu_time("self").saturating_sub(self_cpu);
        }
        let window = std::mem::take(&mut *shared.window.lock().unwrap());
        let now = sample(pid);
        let pg = pg_cpu();
        let len = next.duration_since(last_t).as_secs_f64().max(1e-3);
        let phase = if next <= stop_sends {
            "load"
        } else if next <= stop_syncs {
            "drain"
        } else {
            "rest"
        };
        let cpu = now.cpu.saturating_sub(last_proc.cpu);
        let pg_used = pg.saturating_sub(last_pg);
        if phase != "rest" {
            load_cpu.0 += cpu;
            load_cpu.1 += pg_used;
        }
        let mut cells = vec![
            phase.to_owned(),
            format!("{:.0}", next.duration_since(start).as_secs_f64()),
            format!("{:.1}", window.sends as f64 / len),
            p50_p99(&window.send_latency),
            p50_p99(&window.delivery),
            p50_p99(&window.federation),
            format!("{:.0}", window.sync_answers as f64 / len),
            window.error_count().to_string(),
            mib(now.rss_kib),
            now.fds.to_string(),
            now.threads.to_string(),
            format!("{:.0}", cpu.as_secs_f64() / len * 100.0),
        ];
        if backend.is_postgres() {
            cells.push(format!("{:.0}", pg_used.as_secs_f64() / len * 100.0));
        }
        let line = table_line(&cells, backend.is_postgres());
        eprintln!("{line}");
        writeln!(table, "{line}").unwrap();
        totals.absorb(&window);
        peak.rss_kib = peak.rss_kib.max(now.rss_kib);
        peak.fds = peak.fds.max(now.fds);
        peak.threads = peak.threads.max(now.threads);
        if next == stop_sends {
            at_stop = now;
            stop_fds = fd_kinds(pid);
            stop_files = server.storage_files();
        }
        if next == stop_syncs {
            at_stop_syncs = now;
        }
        (last_t, last_proc, last_pg) = (next, now, pg);
        if next >= end {
            break;
        }
    }
    let rest = last_proc;
    let rest_cpu = rest.cpu.saturating_sub(at_stop_syncs.cpu);

    // The report.
    let mut report = Report::new(label.clone());
    report.section("setting up");
    report.row(
        "users, rooms, joins, first syncs",
        format!("{:.1} s", setup_took.as_secs_f64()),
    );
    report.row("load average before the load", load_average_before);
    report.section(&format!("load: {} s, then {} s of drain", s.secs, s.drain.as_secs()));
    let sends_per_s = totals.sends as f64 / s.secs as f64;
    let alone_per_s = alone.sends as f64 / s.alone.as_secs_f64().max(1e-3);
    report.row("sends answered 200", format!("{} ({sends_per_s:.1}/s)", totals.sends));
    report.row("send latency", summary(&totals.send_latency));
    report.row(
        format!("senders alone before the load ({} s): sends", s.alone.as_secs()),
        format!("{} ({alone_per_s:.1}/s); failed: {}", alone.sends, alone.error_count()),
    );
    report.row("  send latency alone", summary(&alone.send_latency));
    report.row(
        "sends/s alone / under load",
        format!("{:.2}×", alone_per_s / sends_per_s.max(1e-9)),
    );
    let expected: u64 = members_of
        .iter()
        .enumerate()
        .map(|(r, members)| members * totals.sent_to.get(r).copied().unwrap_or(0))
        .sum();
    report.row("delivery to syncers (send → in /sync)", summary(&totals.delivery));
    report.row(
        "  messages delivered to syncers",
        format!(
            "{} of {expected} ({:.2}%)",
            totals.delivery.len(),
            percent(totals.delivery.len() as u64, expected)
        ),
    );
    if s.federated {
        report.row(
            "delivery to the peer (send → in its /sync)",
            summary(&totals.federation),
        );
        report.row(
            "  messages delivered to the peer",
            format!(
                "{} of {} ({:.2}%)",
                totals.federation.len(),
                totals.sends,
                percent(totals.federation.len() as u64, totals.sends)
            ),
        );
    }
    let load_secs = (s.secs + s.drain.as_secs()) as f64;
    report.row(
        "sync answers",
        format!(
            "{} ({:.0}/s); without a message before {} s: {}; limited timelines: {}",
            totals.sync_answers,
            totals.sync_answers as f64 / load_secs,
            EARLY.as_secs(),
            totals.empty_early,
            totals.limited
        ),
    );
    report.row(
        "quiet syncers' answers",
        format!(
            "{} (≈ {} at their 30 s timeout); before {} s: {}",
            totals.quiet_answers,
            quiet * (load_secs / 30.0).floor() as u64,
            EARLY.as_secs(),
            totals.quiet_early
        ),
    );
    report.row("messages repeated or out of order", totals.disorder.to_string());
    let errors = match totals.errors.is_empty() {
        true => "none".to_owned(),
        false => totals
            .errors
            .iter()
            .map(|(what, n)| format!("{what} ×{n}"))
            .collect::<Vec<_>>()
            .join("; "),
    };
    report.row("failed requests", errors);

    report.section("server process");
    let states = |f: fn(&ProcSample) -> String| {
        [started, registered, base, peak, at_stop, rest]
            .iter()
            .map(f)
            .collect::<Vec<_>>()
            .join(" / ")
    };
    report.row(
        "RSS MiB: started / users registered / base / peak / end of load / after rest",
        format!("{} (VmHWM {})", states(|p| mib(p.rss_kib)), mib(rest.hwm_kib)),
    );
    report.row(
        "open files: started / users registered / base / peak / end of load / after rest",
        states(|p| p.fds.to_string()),
    );
    report.row("  open files at base, by kind", base_fds);
    report.row("  open files at the end of load, by kind", stop_fds);
    report.row("  open files after rest, by kind", fd_kinds(pid));
    report.row(
        "threads: started / users registered / base / peak / end of load / after rest",
        states(|p| p.threads.to_string()),
    );
    report.row(
        "database files: end of load; after rest",
        format!("{stop_files}; {}", server.storage_files()),
    );
    let server_cpu = match backend.is_postgres() {
        true => format!(
            "{:.1} s ({} {:.1} s + PostgreSQL {:.1} s)",
            (load_cpu.0 + load_cpu.1).as_secs_f64(),
            case.name(),
            load_cpu.0.as_secs_f64(),
            load_cpu.1.as_secs_f64()
        ),
        false => format!("{:.1} s", load_cpu.0.as_secs_f64()),
    };
    report.row(
        "CPU during load and drain",
        format!(
            "{server_cpu}, {:.0}% of a core",
            (load_cpu.0 + load_cpu.1).as_secs_f64() / load_secs * 100.0
        ),
    );
    report.row(
        format!("CPU during the {} s of rest", s.rest.as_secs()),
        format!("{:.2} s", rest_cpu.as_secs_f64()),
    );
    report.row(
        "log lines at warn or above, from the start of the load",
        log_summary(&server.log_problems()[log_before..]),
    );
    report.section("others on the machine");
    if let (Some(peer), Some(peer_base)) = (&peer, peer_base) {
        let now = sample(peer.pid());
        report.row(
            "peer (weft): CPU during load, drain and rest; RSS MiB base / after rest; open files",
            format!(
                "{:.1} s; {} / {}; {} / {}",
                now.cpu.saturating_sub(peer_base.cpu).as_secs_f64(),
                mib(peer_base.rss_kib),
                mib(now.rss_kib),
                peer_base.fds,
                now.fds
            ),
        );
        report.row(
            "peer's log lines at warn or above, from the start of the load",
            log_summary(&weft_log_problems(peer)[peer_log_before..]),
        );
    }
    report.row(
        "load generator (this process): CPU during load and drain",
        format!(
            "{:.1} s, {:.0}% of a core",
            self_cpu_used.as_secs_f64(),
            self_cpu_used.as_secs_f64() / load_secs * 100.0
        ),
    );
    report.row("load average after the rest", load_average());

    let mut line = format!(
        "{label}: {sends_per_s:.1} sends/s ({alone_per_s:.1} alone: {:.2}×) | send p50/p99 {} ms | sync delivery p50/p99 {} ms",
        alone_per_s / sends_per_s.max(1e-9),
        p50_p99(&totals.send_latency),
        p50_p99(&totals.delivery),
    );
    if s.federated {
        write!(line, " | federation p50/p99 {} ms", p50_p99(&totals.federation)).unwrap();
    }
    write!(
        line,
        " | RSS base/peak/rest {}/{}/{} MiB | fds base/peak/rest {}/{}/{} | CPU {:.1} s | {} failed requests",
        mib(base.rss_kib),
        mib(peak.rss_kib),
        mib(rest.rss_kib),
        base.fds,
        peak.fds,
        rest.fds,
        (load_cpu.0 + load_cpu.1).as_secs_f64(),
        totals.error_count()
    )
    .unwrap();
    drop(server);
    drop(peer);
    CaseResult { table, report, line }
}

fn percent(n: u64, of: u64) -> f64 {
    if of == 0 {
        return 100.0;
    }
    n as f64 * 100.0 / of as f64
}

/// How many lines, and the first (shortened).
fn log_summary(lines: &[String]) -> String {
    match lines.first() {
        None => "0".to_owned(),
        Some(first) => {
            let first: String = first.chars().take(160).collect();
            format!("{} (first: {first})", lines.len())
        }
    }
}
