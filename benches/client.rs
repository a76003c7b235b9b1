//! Benchmark of weft's local client-API performance, against the real
//! `weft serve` binary in a child process, spoken to over loopback HTTP,
//! with Synapse (`tests/common/synapse.rs`) measured the same way beside it.
//!
//!   cargo bench --bench client
//!
//! Measures start-up time, idle memory, local sends per second (one
//! client, then several in flight), `/messages` latency paging through a
//! large room both ways (checking every message comes back exactly once),
//! memory after the load, and start-up again on the filled database.
//! Each server runs on each backend of `WEFT_BENCH_BACKENDS` (SQLite, and
//! PostgreSQL, whose CPU time counts as the server's); the results are
//! printed side by side, labelled `weft(sqlite)`, `weft(pg)`,
//! `Synapse(pg)`, …. See docs/benchmarks.md. Sizes can be overridden with
//! `WEFT_BENCH_*` variables (listed in [`Settings::from_env`]).
//!
//! Run without `--bench` (`cargo test --benches`), it does a small smoke
//! run instead, so that it stays quick when run as a test.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;
#[path = "support/synapse.rs"]
mod synapse_process;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{
    Latencies, Report, log_tail, ms,
    postgres::{Backend, Clock, Database, Used},
    print_side_by_side,
};
use synapse_process::{start_synapse, synapse_pid};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

/// Sizes of the run; each can be overridden by an environment variable:
/// `WEFT_BENCH_EVENTS` (10000; 200 without `--bench`),
/// `WEFT_BENCH_SEQ_SENDS` (min(events, 1000)), `WEFT_BENCH_CONC_SENDS`
/// (min(events, 2000)), `WEFT_BENCH_CONCURRENCY` (8), `WEFT_BENCH_ROOMS`
/// (4), `WEFT_BENCH_PAGE` (50), `WEFT_BENCH_IDLE_SECS` (3),
/// `WEFT_BENCH_SYNAPSE` (1; 0 without `--bench`: Synapse too). Setting
/// `WEFT_BENCH_KEEP` keeps the data directory and the server log.
/// `WEFT_BENCH_BACKENDS` (`sqlite,postgres`): the storage backends.
#[derive(Debug, Clone)]
struct Settings {
    /// Messages in the big room that `/messages` pages through.
    events: usize,
    /// Messages sent one at a time by one client.
    seq_sends: usize,
    /// Messages sent with `concurrency` requests in flight.
    conc_sends: usize,
    /// Requests in flight for the concurrent sends and the room fill.
    concurrency: usize,
    /// Rooms the concurrent sends are spread over.
    rooms: usize,
    /// `limit` of each `/messages` request.
    page: usize,
    /// Idle time before reading memory after the load.
    idle: Duration,
    /// Measure Synapse too.
    synapse: bool,
}

impl Settings {
    fn from_env(full: bool) -> Settings {
        fn var(name: &str, default: usize) -> usize {
            match std::env::var(name) {
                Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
                Err(_) => default,
            }
        }
        let events = var("WEFT_BENCH_EVENTS", if full { 10_000 } else { 200 });
        Settings {
            events,
            seq_sends: var("WEFT_BENCH_SEQ_SENDS", events.min(1_000)),
            conc_sends: var("WEFT_BENCH_CONC_SENDS", events.min(2_000)),
            concurrency: var("WEFT_BENCH_CONCURRENCY", 8).max(1),
            rooms: var("WEFT_BENCH_ROOMS", 4).max(1),
            page: var("WEFT_BENCH_PAGE", 50).max(1),
            idle: Duration::from_secs(var("WEFT_BENCH_IDLE_SECS", 3) as u64),
            synapse: var("WEFT_BENCH_SYNAPSE", usize::from(full)) != 0,
        }
    }
}

// ---------------------------------------------------------------------------
// The child process.

/// A running `weft serve`; killed when dropped (also on panic, when the
/// tail of its log is printed).
struct Server {
    child: Child,
    log: PathBuf,
    base: String,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server with SIGTERM (graceful), SIGKILL after 10 s.
    fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("weft did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- last lines of the weft log ({}) ----", self.log.display());
            eprintln!("{}", log_tail(&self.log, 40));
        }
    }
}

/// Two distinct free loopback ports.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// Where a weft server under test keeps its data and listens.
struct Setup {
    data_dir: PathBuf,
    ports: (u16, u16),
    /// Its PostgreSQL database (`None`: SQLite in the data directory).
    database: Option<Database>,
}

fn weft_command(setup: &Setup) -> Command {
    let (data_dir, ports) = (&setup.data_dir, setup.ports);
    let mut cmd = Command::new(WEFT);
    cmd.env_remove("WEFT_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("WEFT_DATABASE_URL");
    if let Some(database) = &setup.database {
        cmd.env("WEFT_DATABASE_URL", &database.url);
    }
    cmd.env("WEFT_DATA_DIR", data_dir)
        .env("WEFT_CLIENT_LISTEN", format!("127.0.0.1:{}", ports.0))
        .env("WEFT_FEDERATION_LISTEN", format!("127.0.0.1:{}", ports.1))
        .env("WEFT_LOG", "warn")
        .env("WEFT_RATE_LIMITS", "false");
    cmd
}

fn register_user(setup: &Setup) {
    let out = weft_command(setup)
        .args(["register-user", USER, "--password", PASSWORD])
        .output()
        .expect("run weft register-user");
    assert!(
        out.status.success(),
        "weft register-user failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `weft serve` and waits until `/versions` answers 200. Returns
/// the server and the time from spawn to the first answer.
async fn start_server(setup: &Setup, log: &Path) -> (Server, Duration) {
    let file = File::options().create(true).append(true).open(log).expect("log file");
    let started = Instant::now();
    let child = weft_command(setup)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("spawn weft serve");
    let mut server = Server {
        child,
        log: log.to_owned(),
        base: format!("http://127.0.0.1:{}", setup.ports.0),
    };
    let probe = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let url = format!("{}/_matrix/client/versions", server.base);
    loop {
        if let Ok(res) = probe.get(&url).send().await {
            assert_eq!(res.status(), StatusCode::OK, "GET /versions");
            let elapsed = started.elapsed();
            let body: Value = res.json().await.expect("/versions body");
            assert!(body["versions"].is_array(), "/versions: {body}");
            return (server, elapsed);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("weft serve exited during start-up ({status})");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "weft did not answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Memory of a process from /proc/<pid>/status, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------
// The client.

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Sends answered with a 5xx and sent again (Synapse on SQLite answers
    /// an occasional 500 under load; weft should never).
    retries: AtomicUsize,
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Client {
    fn with_token(base: &str, token: &str) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .build()
            .expect("http client");
        Client {
            http,
            base: base.to_owned(),
            token: token.to_owned(),
            retries: AtomicUsize::new(0),
        }
    }

    async fn login(base: &str) -> Client {
        let http = reqwest::Client::builder().no_proxy().build().expect("http client");
        let res = http
            .post(format!("{base}/_matrix/client/v3/login"))
            .json(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": USER },
                "password": PASSWORD,
            }))
            .send()
            .await
            .expect("login request");
        let status = res.status();
        let body: Value = res.json().await.expect("login body");
        assert_eq!(status, StatusCode::OK, "login: {body}");
        Client::with_token(base, body["access_token"].as_str().expect("access_token"))
    }

    /// A request that must answer 200 with a JSON body.
    async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let (status, text) = self.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: bad JSON ({e}): {text}"))
    }

    /// A request: its status and body.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, String) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status();
        let text = res
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
        (status, text)
    }

    async fn create_room(&self) -> String {
        let body = self
            .ok(Method::POST, "/_matrix/client/v3/createRoom", Some(&json!({})))
            .await;
        body["room_id"].as_str().expect("room_id").to_owned()
    }

    async fn send_text(&self, room_id: &str, txn: &str, text: &str) -> String {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room_id),
            enc(txn)
        );
        let content = json!({ "msgtype": "m.text", "body": text });
        // A 5xx is retried with the same transaction ID: sent once.
        let mut attempt = 1;
        let (status, text) = loop {
            let (status, text) = self.call(Method::PUT, &path, Some(&content)).await;
            if !status.is_server_error() || attempt == 5 {
                break (status, text);
            }
            attempt += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(status, StatusCode::OK, "PUT {path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("PUT {path}: bad JSON ({e}): {text}"));
        body["event_id"]
            .as_str()
            .unwrap_or_else(|| panic!("send: no event_id: {body}"))
            .to_owned()
    }
}

// ---------------------------------------------------------------------------
// Measurements.

struct SendRun {
    elapsed: Duration,
    latencies: Latencies,
    /// (index, event_id) of every message sent.
    sent: Vec<(usize, String)>,
    /// When each send completed, from the start of the run, sorted.
    done: Vec<Duration>,
    server_cpu: Used,
}

impl SendRun {
    fn rate(&self) -> f64 {
        self.sent.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Sends per second over the first and the last tenth of the run,
    /// to show whether sending slows down as rooms grow.
    fn rate_first_last_tenth(&self) -> String {
        let n = self.done.len();
        let tenth = n / 10;
        if tenth < 2 {
            return String::from("(too few sends)");
        }
        let first = tenth as f64 / self.done[tenth - 1].as_secs_f64();
        let last = tenth as f64 / (self.done[n - 1] - self.done[n - 1 - tenth]).as_secs_f64();
        format!("{first:.0} events/s in the first tenth, {last:.0} events/s in the last")
    }
}

/// Sends `n` messages `tag {i}` (transaction `tag-{i}`), message `i` into
/// `rooms[i % rooms.len()]`, with `concurrency` requests in flight.
async fn send_many(
    client: &Arc<Client>,
    clock: &Clock,
    rooms: &[String],
    n: usize,
    concurrency: usize,
    tag: &str,
) -> SendRun {
    let next = Arc::new(AtomicUsize::new(0));
    let rooms: Arc<Vec<String>> = Arc::new(rooms.to_vec());
    let cpu_before = clock.read();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        let rooms = rooms.clone();
        let tag = tag.to_owned();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent = Vec::new();
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let room = &rooms[i % rooms.len()];
                let t = Instant::now();
                let event_id = client
                    .send_text(room, &format!("{tag}-{i}"), &format!("{tag} {i}"))
                    .await;
                latencies.push(t.elapsed());
                done.push(started.elapsed());
                sent.push((i, event_id));
            }
            (latencies, sent, done)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut sent = Vec::with_capacity(n);
    let mut done = Vec::with_capacity(n);
    for worker in workers {
        let (l, s, d) = worker.await.expect("send worker panicked");
        latencies.extend(l);
        sent.extend(s);
        done.extend(d);
    }
    done.sort();
    let elapsed = started.elapsed();
    let server_cpu = clock.since(cpu_before);
    assert_eq!(sent.len(), n, "every send answered");
    let distinct: HashSet<&str> = sent.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(distinct.len(), n, "every send made a distinct event");
    SendRun {
        elapsed,
        latencies: Latencies::new(latencies),
        sent,
        done,
        server_cpu,
    }
}

/// One event as `/messages` returned it.
struct Seen {
    event_id: String,
    kind: String,
    body: Option<String>,
}

struct PageRun {
    first_page: Duration,
    latencies: Latencies,
    pages: usize,
    elapsed: Duration,
    events: Vec<Seen>,
    server_cpu: Used,
}

/// Pages through the whole room with `/messages` in `dir` ("b" from the
/// end, "f" from the start), following `end` until it is absent.
async fn page_through(
    client: &Client,
    clock: &Clock,
    room_id: &str,
    dir: &str,
    limit: usize,
    expected: usize,
) -> PageRun {
    let max_pages = expected / limit + 10;
    let mut from: Option<String> = None;
    let mut latencies = Vec::new();
    let mut events = Vec::new();
    let cpu_before = clock.read();
    let started = Instant::now();
    loop {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir={dir}&limit={limit}",
            enc(room_id)
        );
        if let Some(from) = &from {
            write!(path, "&from={}", enc(from)).unwrap();
        }
        let t = Instant::now();
        let body = client.ok(Method::GET, &path, None).await;
        latencies.push(t.elapsed());
        let chunk = body["chunk"]
            .as_array()
            .unwrap_or_else(|| panic!("/messages: no chunk: {body}"));
        assert!(
            chunk.len() <= limit,
            "/messages returned {} > limit {limit}",
            chunk.len()
        );
        for event in chunk {
            events.push(Seen {
                event_id: event["event_id"].as_str().expect("event_id").to_owned(),
                kind: event["type"].as_str().expect("type").to_owned(),
                body: event["content"]["body"].as_str().map(str::to_owned),
            });
        }
        match body["end"].as_str() {
            None => break,
            Some(end) => {
                assert_ne!(from.as_deref(), Some(end), "/messages: end token did not move");
                from = Some(end.to_owned());
            }
        }
        assert!(
            latencies.len() <= max_pages,
            "/messages dir={dir}: more than {max_pages} pages for {expected} events"
        );
    }
    let elapsed = started.elapsed();
    let server_cpu = clock.since(cpu_before);
    PageRun {
        first_page: latencies[0],
        pages: latencies.len(),
        latencies: Latencies::new(latencies),
        elapsed,
        events,
        server_cpu,
    }
}

/// Checks that the room's messages are exactly `tag 0 .. tag n-1`, each
/// once, with the event IDs the sends returned, and that no event came
/// twice.
fn check_complete(run: &PageRun, dir: &str, tag: &str, sent: &[(usize, String)]) {
    let mut ids = HashSet::new();
    for seen in &run.events {
        assert!(
            ids.insert(seen.event_id.as_str()),
            "dir={dir}: event {} came twice",
            seen.event_id
        );
    }
    let expected: HashMap<&str, usize> = sent.iter().map(|(i, id)| (id.as_str(), *i)).collect();
    let mut found = vec![0u32; sent.len()];
    let mut messages = 0;
    for seen in run.events.iter().filter(|s| s.kind == "m.room.message") {
        messages += 1;
        let i = *expected
            .get(seen.event_id.as_str())
            .unwrap_or_else(|| panic!("dir={dir}: unexpected message {}", seen.event_id));
        assert_eq!(
            seen.body.as_deref(),
            Some(format!("{tag} {i}").as_str()),
            "dir={dir}: body of {}",
            seen.event_id
        );
        found[i] += 1;
    }
    let missing = found.iter().filter(|&&c| c == 0).count();
    assert_eq!(
        missing,
        0,
        "dir={dir}: {missing} of {} messages never came back",
        sent.len()
    );
    assert_eq!(messages, sent.len(), "dir={dir}: message count");
    let create_at = match dir {
        "b" => run.events.last(),
        _ => run.events.first(),
    };
    assert_eq!(
        create_at.map(|s| s.kind.as_str()),
        Some("m.room.create"),
        "dir={dir}: the room's first event should be its create event"
    );
}

/// On-disk size of a server's storage: its PostgreSQL database, or the
/// files of 1 MiB or more in its directory (logs left out).
fn storage_size(backend: &Backend, dir: &Path, database: Option<&Database>) -> String {
    if let Some(database) = database {
        return format!("database {}", mib(backend.database_size(database) / 1024));
    }
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len()))
        })
        .filter(|(name, len)| *len >= 1024 * 1024 && !name.ends_with(".log"))
        .collect();
    files.sort();
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let parts: Vec<String> = files
        .iter()
        .map(|(name, len)| format!("{name} {}", mib(len / 1024)))
        .collect();
    format!("{} ({})", mib(total / 1024), parts.join(", "))
}

// ---------------------------------------------------------------------------

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(full);
    // reqwest is built without a default rustls provider; weft's is ring.
    weft::tls::install_crypto_provider();
    eprintln!("weft binary: {WEFT}");
    eprintln!("{settings:?}");
    let backends = Backend::from_env();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut reports = Vec::new();
    for backend in &backends {
        reports.push(runtime.block_on(run_weft(&settings, backend)));
    }
    if settings.synapse {
        for backend in &backends {
            reports.push(runtime.block_on(run_synapse(&settings, backend)));
        }
    }
    let s = &settings;
    print_side_by_side(
        &format!(
            "client-API benchmark: room of {} messages, {} sequential + {} concurrent sends ({} in flight, {} rooms), page limit {}",
            s.events, s.seq_sends, s.conc_sends, s.concurrency, s.rooms, s.page
        ),
        &reports,
    );
}

/// weft on `backend`: start-up, the load, memory, restart.
async fn run_weft(s: &Settings, backend: &Backend) -> Report {
    let mut dir = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("WEFT_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping the data directory and log in {}", dir.path().display());
    }
    let setup = Setup {
        data_dir: dir.path().join("data"),
        ports: free_ports(),
        database: backend.fresh_database(),
    };
    let log = dir.path().join("weft.log");
    let mut report = Report::new(backend.label("weft"));

    // 1. Start-up.
    report.section("start-up");
    let t = Instant::now();
    register_user(&setup);
    report.row("weft register-user", ms(t.elapsed()));
    let (server, startup) = start_server(&setup, &log).await;
    let pid = server.pid();
    report.row("start until /versions answers (new data dir)", ms(startup));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = memory(pid);
    report.row(
        "RSS idle after start-up (empty)",
        format!("{} (HWM {})", mib(idle.rss_kib), mib(idle.hwm_kib)),
    );
    let t = Instant::now();
    let client = Arc::new(Client::login(&server.base).await);
    report.row("login (password)", ms(t.elapsed()));

    // 2. and 3. The load.
    let clock = Clock::new(pid, backend, "weft");
    let big = load(s, &mut report, &client, (pid, &clock)).await;

    // 4. Memory at rest.
    at_rest(s, &mut report, pid, idle).await;
    report.row(
        "storage size",
        storage_size(backend, &setup.data_dir, setup.database.as_ref()),
    );

    // 5. Start-up again on the filled database.
    report.section("restart on the filled database");
    let stopped = server.stop();
    report.row("stop (SIGTERM until exit)", ms(stopped));
    let warnings = log_tail(&log, usize::MAX);
    let (server, startup) = start_server(&setup, &log).await;
    let pid = server.pid();
    report.row("start until /versions answers", ms(startup));
    let t = Instant::now();
    let first = client
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={}", enc(&big), s.page),
            None,
        )
        .await;
    let n = first["chunk"].as_array().map_or(0, Vec::len);
    assert!(n > 0 && n <= s.page, "/messages after restart: {n} events");
    report.row("first /messages page after restart (cold)", ms(t.elapsed()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = memory(pid);
    report.row("RSS idle after restart", mib(restarted.rss_kib));
    drop(server);

    report.section("server log");
    let lines = warnings.lines().filter(|l| !l.trim().is_empty()).count();
    report.row("lines logged at warn or above during the load", lines.to_string());
    if lines > 0 {
        eprintln!("\nweft log:\n{}", log_tail(&log, 20));
    }
    report
}

/// Synapse on `backend`: start-up, the same load, memory.
async fn run_synapse(s: &Settings, backend: &Backend) -> Report {
    let mut report = Report::new(backend.label("Synapse"));
    report.section("start-up");
    let t = Instant::now();
    let (synapse, database) = start_synapse(backend).await;
    // Synapse's includes generating its signing key (a run of its own).
    report.row("start until /versions answers (new data dir)", ms(t.elapsed()));
    let pid = synapse_pid(&synapse);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = memory(pid);
    report.row(
        "RSS idle after start-up (empty)",
        format!("{} (HWM {})", mib(idle.rss_kib), mib(idle.hwm_kib)),
    );
    let user = synapse.user(USER).await;
    let client = Arc::new(Client::with_token(&synapse.client_base(), &user.token));
    let clock = Clock::new(pid, backend, "Synapse");
    load(s, &mut report, &client, (pid, &clock)).await;
    at_rest(s, &mut report, pid, idle).await;
    report.row("storage size", storage_size(backend, synapse.dir(), database.as_ref()));
    report
}

/// Local sends (2.), the big room and `/messages` both ways (3.), one
/// initial `/sync`, on the server of process `pid`; returns the big room.
async fn load(s: &Settings, report: &mut Report, client: &Arc<Client>, (pid, clock): (u32, &Clock)) -> String {
    report.section("local sends (PUT /rooms/{id}/send/m.room.message/{txn})");
    let t = Instant::now();
    let seq_room = client.create_room().await;
    report.row("createRoom", ms(t.elapsed()));
    let seq = send_many(client, clock, std::slice::from_ref(&seq_room), s.seq_sends, 1, "seq").await;
    report.row(
        format!("sequential, 1 client, {} msgs", s.seq_sends),
        format!("{:.0} events/s ({} total)", seq.rate(), ms(seq.elapsed)),
    );
    report.row("  latency", seq.latencies.summary());
    report.row("  server CPU", clock.show(seq.server_cpu, s.seq_sends, "event"));
    let mut rooms = Vec::new();
    for _ in 0..s.rooms {
        rooms.push(client.create_room().await);
    }
    let conc = send_many(client, clock, &rooms, s.conc_sends, s.concurrency, "conc").await;
    report.row(
        format!(
            "concurrent, {} in flight, {} rooms, {} msgs",
            s.concurrency, s.rooms, s.conc_sends
        ),
        format!("{:.0} events/s ({} total)", conc.rate(), ms(conc.elapsed)),
    );
    report.row("  latency", conc.latencies.summary());
    report.row("  server CPU", clock.show(conc.server_cpu, s.conc_sends, "event"));

    report.section(&format!("room of {} messages: /messages?limit={}", s.events, s.page));
    let big = client.create_room().await;
    let fill = send_many(
        client,
        clock,
        std::slice::from_ref(&big),
        s.events,
        s.concurrency,
        "fill",
    )
    .await;
    report.row(
        format!("fill: {} msgs into 1 room, {} in flight", s.events, s.concurrency),
        format!("{:.0} events/s ({} total)", fill.rate(), ms(fill.elapsed)),
    );
    report.row("  latency", fill.latencies.summary());
    report.row("  server CPU", clock.show(fill.server_cpu, s.events, "event"));
    report.row("  rate as the room grows", fill.rate_first_last_tenth());
    report.row(
        "sends retried after a 5xx answer",
        client.retries.load(Ordering::Relaxed).to_string(),
    );
    let after_fill = memory(pid);
    report.row(
        "RSS right after the sends",
        format!("{} (HWM {})", mib(after_fill.rss_kib), mib(after_fill.hwm_kib)),
    );

    let back = page_through(client, clock, &big, "b", s.page, s.events).await;
    check_complete(&back, "b", "fill", &fill.sent);
    report_pages(report, clock, "b", "first page (from the end)", &back);
    let fwd = page_through(client, clock, &big, "f", s.page, s.events).await;
    check_complete(&fwd, "f", "fill", &fill.sent);
    let back_ids: Vec<&str> = back.events.iter().rev().map(|e| e.event_id.as_str()).collect();
    let fwd_ids: Vec<&str> = fwd.events.iter().map(|e| e.event_id.as_str()).collect();
    assert!(back_ids == fwd_ids, "dir=f order is not the reverse of dir=b order");
    report_pages(report, clock, "f", "first page (from the start)", &fwd);
    report.row(
        "checks",
        "status 200 everywhere; every message exactly once both ways; f = reverse of b",
    );

    // One initial /sync, for scale (all rooms, default timeline limit).
    let t = Instant::now();
    let sync = client.ok(Method::GET, "/_matrix/client/v3/sync", None).await;
    let joined = sync["rooms"]["join"].as_object().map_or(0, |m| m.len());
    assert_eq!(joined, 2 + s.rooms, "initial /sync: joined rooms");
    report.row(format!("initial /sync ({joined} rooms)"), ms(t.elapsed()));
    big
}

fn report_pages(report: &mut Report, clock: &Clock, dir: &str, first: &str, run: &PageRun) {
    report.row(format!("dir={dir}: {first}"), ms(run.first_page));
    report.row(
        format!("dir={dir}: whole room"),
        format!(
            "{} pages, {} events, {} total, {:.0} events/s",
            run.pages,
            run.events.len(),
            ms(run.elapsed),
            run.events.len() as f64 / run.elapsed.as_secs_f64()
        ),
    );
    report.row(format!("dir={dir}: latency per page"), run.latencies.summary());
    report.row(
        format!("dir={dir}: server CPU"),
        clock.show(run.server_cpu, run.pages, "page"),
    );
}

/// Memory at rest (4.): after `s.idle` without requests.
async fn at_rest(s: &Settings, report: &mut Report, pid: u32, idle: Memory) {
    report.section("memory");
    tokio::time::sleep(s.idle).await;
    let rest = memory(pid);
    report.row("RSS idle after start-up (empty)", mib(idle.rss_kib));
    report.row(
        format!("RSS at rest after the load ({} s idle)", s.idle.as_secs()),
        mib(rest.rss_kib),
    );
    report.row("peak RSS (VmHWM)", mib(rest.hwm_kib));
}
