//! Benchmark of weft's federation read path: `/backfill` and `/event`,
//! asked by one weft server of another over real HTTPS on loopback.
//!
//!   cargo bench --bench federation
//!
//! Two servers run in this process (the library's `server::start`): A
//! holds a world-readable room of 100,000 events and one of 1,000 (built
//! with `rooms::send::send_event`, without HTTP); B's federation client
//! makes signed requests to A. It measures `/backfill?limit=100` (events
//! served per second, latency per page) paging back from the newest event
//! and from random events, `/event` of random events, the same walk as a
//! library call on A's storage without HTTP, and the ratio between the big
//! room and the small one. Every answer is checked (event IDs recomputed
//! from the PDUs, order, no duplicates). See docs/benchmarks.md. Sizes can
//! be overridden with `WEFT_BENCH_*` variables (listed in
//! [`Settings::from_env`]).
//!
//! A and B run on each backend of `WEFT_BENCH_BACKENDS` (SQLite, and
//! PostgreSQL, whose CPU time is added to the process's); the results are
//! printed side by side.
//!
//! Run without `--bench` (`cargo test --benches`), it does a small smoke
//! run instead.

use std::{
    collections::HashSet,
    net::TcpListener,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomVersionId, UInt,
    api::federation::{backfill::get_backfill, event::get_event},
};
#[path = "support/mod.rs"]
mod support;

use serde::Deserialize;
use serde_json::{Map, json, value::RawValue};
use support::{
    Latencies, Report, load_average, ms,
    postgres::{Backend, Clock, Database, Used},
    print_side_by_side,
};
use weft::{
    config::Config,
    events::EventTemplate,
    rooms::create::{CreateRoom, Preset},
    server::RunningServer,
    services::Services,
};

/// `limit` of every `/backfill` (the server's cap).
const PAGE: usize = 100;
const VERSION: RoomVersionId = RoomVersionId::V11;

/// Sizes of the run; each can be overridden by an environment variable:
/// `WEFT_BENCH_BIG` (100000 events; 2000 without `--bench`),
/// `WEFT_BENCH_SMALL` (1000; 300), `WEFT_BENCH_WALK_PAGES` (200; 10),
/// `WEFT_BENCH_RANDOM_PAGES` (500; 20), `WEFT_BENCH_EVENT_GETS` (1000; 50),
/// `WEFT_BENCH_CONCURRENCY` (4), `WEFT_BENCH_SEED` (1). Setting
/// `WEFT_BENCH_KEEP` keeps the two data directories (path printed).
/// `WEFT_BENCH_BACKENDS` (`sqlite,postgres`): the storage backends.
#[derive(Debug, Clone)]
struct Settings {
    /// Events in the big room (all of them, the createRoom events included).
    big: usize,
    /// Events in the small room.
    small: usize,
    /// Pages of the walk back from the newest event (at most the room).
    walk_pages: usize,
    /// `/backfill` pages from random events, one at a time (and again
    /// with `concurrency` in flight).
    random_pages: usize,
    /// Distinct random events fetched with `/event` (at most the room).
    event_gets: usize,
    /// Requests in flight for the concurrent random pages.
    concurrency: usize,
    /// Seed of the random choices (same seed, same events).
    seed: u64,
}

impl Settings {
    fn from_env(full: bool) -> Settings {
        fn var(name: &str, default: usize) -> usize {
            match std::env::var(name) {
                Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
                Err(_) => default,
            }
        }
        let pick = |full_value, smoke_value| if full { full_value } else { smoke_value };
        Settings {
            big: var("WEFT_BENCH_BIG", pick(100_000, 2_000)),
            small: var("WEFT_BENCH_SMALL", pick(1_000, 300)),
            walk_pages: var("WEFT_BENCH_WALK_PAGES", pick(200, 10)).max(1),
            random_pages: var("WEFT_BENCH_RANDOM_PAGES", pick(500, 20)).max(1),
            event_gets: var("WEFT_BENCH_EVENT_GETS", pick(1_000, 50)).max(1),
            concurrency: var("WEFT_BENCH_CONCURRENCY", 4).max(1),
            seed: var("WEFT_BENCH_SEED", 1) as u64,
        }
    }
}

// ---------------------------------------------------------------------------
// Small tools.

/// Latency distribution (nearest-rank percentiles).
fn ratio(big: Duration, small: Duration) -> String {
    format!("{:.2}", big.as_secs_f64() / small.as_secs_f64().max(1e-9))
}

/// xorshift64*: reproducible choices without depending on a crate's API.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// `k` distinct indices below `n`, in random order.
    fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

/// (VmRSS, VmHWM) of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status")) as f64
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_size(dir: &Path) -> String {
    let mut parts = Vec::new();
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir).expect("data dir").flatten() {
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        total += len;
        if len >= 1024 * 1024 {
            parts.push(format!(
                "{} {:.1} MiB",
                entry.file_name().to_string_lossy(),
                len as f64 / 1048576.0
            ));
        }
    }
    parts.sort();
    format!("{:.1} MiB ({})", total as f64 / 1048576.0, parts.join(", "))
}

/// The event ID of a PDU as received, recomputed from its content (the
/// reference hash): a check that does not trust the server's word.
fn event_id_of(raw: &RawValue) -> OwnedEventId {
    let rules = VERSION.rules().expect("v11 rules");
    let object: CanonicalJsonObject = serde_json::from_str(raw.get()).expect("PDU is a JSON object");
    let hash = ruma::signatures::reference_hash(&object, &rules).expect("reference hash");
    format!("${hash}").try_into().expect("event ID")
}

#[derive(Deserialize)]
struct Prevs {
    prev_events: Vec<OwnedEventId>,
}

// ---------------------------------------------------------------------------
// Servers and rooms.

async fn start_server(data_dir: &Path, database: Option<&Database>) -> RunningServer {
    // A free port: the server name must carry the federation port.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .unwrap()
        .port();
    let config = Config {
        server_name: format!("127.0.0.1:{port}").try_into().unwrap(),
        federation_listen: format!("127.0.0.1:{port}").parse().unwrap(),
        client_listen: "127.0.0.1:0".parse().unwrap(),
        federation_verify_tls: false,
        data_dir: data_dir.to_owned(),
        database_url: database.map(|d| d.url.clone()),
        log: "warn".to_owned(),
        ..Config::default()
    };
    weft::server::start(config).await.expect("start weft")
}

/// A room on A and its events, oldest first (the DAG is a line: every
/// event has the one before as its only prev_event).
struct Room {
    id: OwnedRoomId,
    events: Vec<OwnedEventId>,
    /// Local sends: count, time, and the time of each completion.
    sends: usize,
    build: Duration,
    done: Vec<Duration>,
}

impl Room {
    fn len(&self) -> usize {
        self.events.len()
    }
    fn build_rate(&self) -> f64 {
        self.sends as f64 / self.build.as_secs_f64()
    }
    /// Rate over the first and the last tenth of the sends.
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

/// Creates a world-readable room and fills it with messages, by library
/// calls on A, until it holds `total` events.
async fn build_room(svc: &Services, user: &OwnedUserId, name: &str, total: usize) -> Room {
    let id = weft::rooms::create::create_room(
        svc,
        user,
        CreateRoom {
            version: VERSION,
            preset: Preset::PublicChat,
            creation_content: Map::new(),
            initial_state: vec![(
                "m.room.history_visibility".to_owned(),
                String::new(),
                json!({ "history_visibility": "world_readable" }),
            )],
            invite: vec![],
            is_direct: false,
            name: Some(name.to_owned()),
            topic: None,
            alias_localpart: None,
            power_level_override: None,
            publish: false,
        },
    )
    .await
    .expect("create room");
    let send = |i: usize| {
        weft::rooms::send::send_event(
            svc,
            &id,
            user,
            EventTemplate::message(
                "m.room.message",
                json!({ "msgtype": "m.text", "body": format!("{name} message {i}") }),
            ),
            None,
        )
    };
    let started = Instant::now();
    let first = send(0).await.expect("send");
    // The createRoom events, found by following prev_events down from the
    // first message in A's storage (not with the walk being measured).
    let mut setup = Vec::new();
    let mut prevs = first.pdu.prev_events.clone();
    while let Some(prev) = prevs.pop() {
        assert!(prevs.is_empty(), "createRoom made a fork");
        let event = svc.storage.event(&prev).await.expect("storage").expect("held");
        prevs = event.pdu.prev_events.clone();
        setup.push(prev);
    }
    setup.reverse();
    assert_eq!(first.pdu.depth as usize, setup.len() + 1, "depth of the first message");
    let sends = total.checked_sub(setup.len()).expect("room smaller than createRoom");
    let mut events = setup;
    events.reserve(total);
    events.push(first.pdu.event_id.clone());
    let mut done = vec![started.elapsed()];
    for i in 1..sends {
        let sent = send(i).await.expect("send");
        assert_eq!(
            sent.pdu.prev_events.as_slice(),
            std::slice::from_ref(events.last().unwrap()),
            "the room should be a line"
        );
        events.push(sent.pdu.event_id.clone());
        done.push(started.elapsed());
        if i % 10_000 == 0 {
            eprintln!("  {name}: {i} of {sends} sent");
        }
    }
    Room {
        id,
        events,
        sends,
        build: started.elapsed(),
        done,
    }
}

// ---------------------------------------------------------------------------
// Measurements.

/// One `/backfill` answer, kept for checking after the timed part.
struct Page {
    /// Index in `Room::events` of the `v` asked from.
    from: usize,
    pdus: Vec<Box<RawValue>>,
}

struct PageRun {
    pages: Vec<Page>,
    latencies: Latencies,
    elapsed: Duration,
    cpu: Used,
}

impl PageRun {
    fn events(&self) -> usize {
        self.pages.iter().map(|p| p.pdus.len()).sum()
    }
    fn rate(&self) -> f64 {
        self.events() as f64 / self.elapsed.as_secs_f64()
    }
    fn throughput(&self) -> String {
        format!(
            "{} pages, {} events in {}: {:.0} events/s",
            self.pages.len(),
            self.events(),
            ms(self.elapsed),
            self.rate()
        )
    }
    fn cpu_per_page(&self, clock: &Clock) -> String {
        clock.show(self.cpu, self.pages.len(), "page")
    }
}

async fn backfill(
    b: &Services,
    a_name: &OwnedServerName,
    room: &OwnedRoomId,
    v: &OwnedEventId,
) -> (Vec<Box<RawValue>>, Duration) {
    let req = get_backfill::v1::Request::new(room.clone(), vec![v.clone()], UInt::new(PAGE as u64).unwrap());
    let t = Instant::now();
    let res = b
        .federation
        .send(a_name, req)
        .await
        .unwrap_or_else(|e| panic!("/backfill from {v}: {e}"));
    let elapsed = t.elapsed();
    assert_eq!(&res.origin, a_name, "/backfill: origin");
    (res.pdus, elapsed)
}

/// Pages back from the newest event, `pages` pages (or the whole room),
/// each `v` the prev_event of the oldest event of the page before.
async fn walk(clock: &Clock, b: &Services, a_name: &OwnedServerName, room: &Room, pages: usize) -> PageRun {
    let mut from = room.len() - 1;
    let mut v = room.events[from].clone();
    let mut out = Vec::new();
    let mut latencies = Vec::new();
    let cpu = clock.read();
    let started = Instant::now();
    loop {
        let (pdus, took) = backfill(b, a_name, &room.id, &v).await;
        latencies.push(took);
        let oldest: Prevs = serde_json::from_str(pdus.last().expect("an empty page").get()).expect("prev_events");
        let n = pdus.len();
        out.push(Page { from, pdus });
        if out.len() == pages || oldest.prev_events.is_empty() {
            break;
        }
        assert_eq!(oldest.prev_events.len(), 1, "the room is a line");
        from = from.checked_sub(n).expect("more events than the room holds");
        v = oldest.prev_events.into_iter().next().unwrap();
    }
    PageRun {
        pages: out,
        latencies: Latencies::new(latencies),
        elapsed: started.elapsed(),
        cpu: clock.since(cpu),
    }
}

/// `/backfill` from random events, `concurrency` requests in flight.
async fn random_pages(
    clock: &Clock,
    b: &Arc<Services>,
    a_name: &OwnedServerName,
    room: &Room,
    starts: Vec<usize>,
    concurrency: usize,
) -> PageRun {
    let starts = Arc::new(starts);
    let events = Arc::new(room.events.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = clock.read();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (b, a_name, room_id) = (b.clone(), a_name.clone(), room.id.clone());
        let (starts, events, next) = (starts.clone(), events.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut pages = Vec::new();
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&from) = starts.get(i) else { break };
                let (pdus, took) = backfill(&b, &a_name, &room_id, &events[from]).await;
                latencies.push(took);
                pages.push(Page { from, pdus });
            }
            (pages, latencies)
        }));
    }
    let mut pages = Vec::new();
    let mut latencies = Vec::new();
    for worker in workers {
        let (p, l) = worker.await.expect("worker panicked");
        pages.extend(p);
        latencies.extend(l);
    }
    PageRun {
        pages,
        latencies: Latencies::new(latencies),
        elapsed: started.elapsed(),
        cpu: clock.since(cpu),
    }
}

/// Checks every page: the events from `v` back, most recent first,
/// exactly `min(100, what is left)`, identified by their reference hash.
/// `whole`: the pages are one walk, so no event may come twice.
fn check_pages(room: &Room, run: &PageRun, what: &str, whole: bool) {
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    for (k, page) in run.pages.iter().enumerate() {
        let want = PAGE.min(page.from + 1);
        assert_eq!(
            page.pdus.len(),
            want,
            "{what}: page {k} from event #{} has {} events",
            page.from,
            page.pdus.len()
        );
        for (j, raw) in page.pdus.iter().enumerate() {
            let id = event_id_of(raw);
            assert_eq!(
                id,
                room.events[page.from - j],
                "{what}: page {k}, event {j}: not event #{}",
                page.from - j
            );
            if whole {
                assert!(seen.insert(id.clone()), "{what}: {id} came twice");
            }
        }
    }
}

/// Library call on A's storage: the walk without HTTP, TLS, signatures or
/// the visibility filter.
async fn storage_pages(a: &Services, room: &Room, starts: &[usize]) -> Latencies {
    let mut latencies = Vec::new();
    for &from in starts {
        let t = Instant::now();
        let events = a
            .storage
            .backfill(&room.id, std::slice::from_ref(&room.events[from]), PAGE)
            .await
            .expect("storage backfill");
        latencies.push(t.elapsed());
        assert_eq!(events.len(), PAGE.min(from + 1), "storage backfill from #{from}");
        assert_eq!(
            events[0].pdu.event_id, room.events[from],
            "storage backfill from #{from}"
        );
    }
    Latencies::new(latencies)
}

/// `/event` of each event of `picks`, one at a time.
async fn get_events(
    clock: &Clock,
    b: &Services,
    a_name: &OwnedServerName,
    room: &Room,
    picks: &[usize],
) -> (Latencies, Used) {
    let mut latencies = Vec::new();
    let cpu = clock.read();
    for &i in picks {
        let id = &room.events[i];
        let t = Instant::now();
        let res = b
            .federation
            .send(a_name, get_event::v1::Request::new(id.clone()))
            .await
            .unwrap_or_else(|e| panic!("/event {id}: {e}"));
        latencies.push(t.elapsed());
        assert_eq!(&res.origin, a_name, "/event: origin");
        assert_eq!(&event_id_of(&res.pdu), id, "/event {id}: another event came back");
    }
    (Latencies::new(latencies), clock.since(cpu))
}

/// The CPU rows' name.
const CPU: &str = "  CPU: process (A + B + bench), with PostgreSQL's on pg";

/// What is compared between the two rooms.
struct Figures {
    walk_p50: Duration,
    random_p50: Duration,
    random_p99: Duration,
    storage_p50: Duration,
    event_cold_p50: Duration,
    event_warm_p50: Duration,
    walk_rate: f64,
    random_rate: f64,
    concurrent_rate: f64,
}

/// The two servers of a run, and its CPU clock: this process (A, B and
/// the bench) and PostgreSQL's processes (A's and B's databases).
struct Servers {
    a: Arc<Services>,
    b: Arc<Services>,
    a_name: OwnedServerName,
    clock: Clock,
}

async fn measure(s: &Settings, report: &mut Report, servers: &Servers, room: &Room, label: &str) -> Figures {
    let (a, b, a_name, clock) = (&servers.a, &servers.b, &servers.a_name, &servers.clock);
    let mut rng = Rng::new(s.seed ^ room.len() as u64);
    let n = room.len();
    report.section(&format!("{label}: room of {n} events"));

    // 1. The walk from the newest event.
    let pages = s.walk_pages.min(n.div_ceil(PAGE));
    let walked = walk(clock, b, a_name, room, pages).await;
    check_pages(room, &walked, "walk", true);
    assert_eq!(walked.pages.len(), pages, "walk: pages");
    if pages == n.div_ceil(PAGE) {
        assert_eq!(walked.events(), n, "walk: the whole room");
    }
    report.row(
        "/backfill walk from the newest event",
        format!(
            "{}{}",
            walked.throughput(),
            if pages == n.div_ceil(PAGE) {
                " (the whole room)"
            } else {
                ""
            }
        ),
    );
    report.row("  latency per page", walked.latencies.summary());
    report.row(CPU, walked.cpu_per_page(clock));

    // 2. Pages from random events, one at a time, then several in flight.
    let starts: Vec<usize> = (0..s.random_pages).map(|_| rng.below(n)).collect();
    let random = random_pages(clock, b, a_name, room, starts.clone(), 1).await;
    check_pages(room, &random, "random pages", false);
    report.row("/backfill from random events, 1 in flight", random.throughput());
    report.row("  latency per page", random.latencies.summary());
    report.row(CPU, random.cpu_per_page(clock));
    let starts2: Vec<usize> = (0..s.random_pages).map(|_| rng.below(n)).collect();
    let concurrent = random_pages(clock, b, a_name, room, starts2, s.concurrency).await;
    check_pages(room, &concurrent, "concurrent random pages", false);
    report.row(
        format!("/backfill from random events, {} in flight", s.concurrency),
        concurrent.throughput(),
    );
    report.row("  latency per page", concurrent.latencies.summary());
    report.row(CPU, concurrent.cpu_per_page(clock));
    let storage = storage_pages(a, room, &starts).await;
    report.row(
        "storage walk alone (library call on A, same random starts)",
        storage.summary(),
    );

    // 3. /event of random events: first fetch (A's event cache misses),
    // then the same events again (cache hits: the cache holds 1,024).
    let picks = rng.sample(n, s.event_gets);
    let (cold, cold_cpu) = get_events(clock, b, a_name, room, &picks).await;
    report.row(
        format!("/event, {} distinct random events, first fetch", picks.len()),
        cold.summary(),
    );
    report.row(CPU, clock.show(cold_cpu, picks.len(), "request"));
    let mut again = picks.clone();
    for i in (1..again.len()).rev() {
        again.swap(i, rng.below(i + 1));
    }
    let (warm, _) = get_events(clock, b, a_name, room, &again).await;
    report.row("/event, the same events again", warm.summary());
    report.row(
        "checks",
        "every answer 200; every page exactly the events from v back (IDs recomputed), 100 per page but at the bottom; no event twice in the walk; /event returns the event asked",
    );
    Figures {
        walk_p50: walked.latencies.pct(50.0),
        random_p50: random.latencies.pct(50.0),
        random_p99: random.latencies.pct(99.0),
        storage_p50: storage.pct(50.0),
        event_cold_p50: cold.pct(50.0),
        event_warm_p50: warm.pct(50.0),
        walk_rate: walked.rate(),
        random_rate: random.rate(),
        concurrent_rate: concurrent.rate(),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(full);
    // Warnings of the servers (there should be none).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    weft::tls::install_crypto_provider();
    eprintln!("{settings:?}");
    let reports = support::on_each_backend(&settings, run);
    let s = &settings;
    print_side_by_side(
        &format!(
            "weft federation read benchmark: rooms of {} and {} events; walk of up to {} pages; {} random pages; {} /event; {} in flight for the concurrent pages",
            s.big, s.small, s.walk_pages, s.random_pages, s.event_gets, s.concurrency
        ),
        &reports,
    );
}

/// The whole benchmark, A and B on `backend`.
async fn run(s: &Settings, backend: &Backend) -> Report {
    let mut dir = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("WEFT_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping the data directories in {}", dir.path().display());
    }
    let mut report = Report::new(backend.label("weft"));
    report.row("load average (1, 5, 15 min) at the start", load_average());
    let a_database = backend.fresh_database();
    let a = start_server(&dir.path().join("a"), a_database.as_ref()).await;
    let b = start_server(&dir.path().join("b"), backend.fresh_database().as_ref()).await;
    let a_name: OwnedServerName = a.services.server_name().to_owned();
    let (asvc, bsvc) = (a.services.clone(), b.services.clone());
    let clock = Clock::new("self", backend, "process");

    report.section("building the rooms on A (rooms::send::send_event, no HTTP)");
    let user = weft::accounts::user_id_for("bench", &a_name).expect("user ID");
    weft::accounts::create_user(&*asvc.storage, &user, None, false)
        .await
        .expect("create user");
    let cpu = clock.read();
    let big = build_room(&asvc, &user, "big", s.big).await;
    let build_cpu = clock.since(cpu);
    report.row(
        format!("big room: {} local sends", big.sends),
        format!("{:.0} events/s ({} total)", big.build_rate(), ms(big.build)),
    );
    report.row("  CPU", clock.show(build_cpu, big.sends, "event"));
    report.row("  rate as the room grows", big.rate_first_last_tenth());
    let small = build_room(&asvc, &user, "small", s.small).await;
    report.row(
        format!("small room: {} local sends", small.sends),
        format!("{:.0} events/s ({} total)", small.build_rate(), ms(small.build)),
    );
    let (rss, hwm) = memory();
    report.row(
        "process RSS after the build (A + B + bench)",
        format!("{rss:.1} MiB (HWM {hwm:.1} MiB)"),
    );
    let storage = match &a_database {
        Some(database) => format!("database {:.1} MiB", backend.database_size(database) as f64 / 1048576.0),
        None => format!("data dir {}", dir_size(&dir.path().join("a"))),
    };
    report.row("A's storage", storage);

    // The first request: B's connection to A, and A fetching B's key.
    report.section("first request");
    let t = Instant::now();
    let first = bsvc
        .federation
        .send(&a_name, get_event::v1::Request::new(big.events[0].clone()))
        .await
        .expect("first /event");
    assert_eq!(event_id_of(&first.pdu), big.events[0]);
    report.row("first /event (TLS handshake, A fetches B's key)", ms(t.elapsed()));

    let servers = Servers {
        a: asvc,
        b: bsvc,
        a_name,
        clock,
    };
    let fb = measure(s, &mut report, &servers, &big, "big").await;
    let fs = measure(s, &mut report, &servers, &small, "small").await;

    report.section(&format!("ratio: room of {} / room of {}", big.len(), small.len()));
    report.row(
        "/backfill walk from the newest, p50 per page",
        ratio(fb.walk_p50, fs.walk_p50),
    );
    report.row(
        "/backfill from random events, p50 per page",
        ratio(fb.random_p50, fs.random_p50),
    );
    report.row(
        "/backfill from random events, p99 per page",
        ratio(fb.random_p99, fs.random_p99),
    );
    report.row(
        "storage walk alone, p50 per page",
        ratio(fb.storage_p50, fs.storage_p50),
    );
    report.row("/event first fetch, p50", ratio(fb.event_cold_p50, fs.event_cold_p50));
    report.row(
        "/event again (cached), p50",
        ratio(fb.event_warm_p50, fs.event_warm_p50),
    );
    report.row(
        "events/s: walk, random, concurrent",
        format!(
            "{:.0} / {:.0}, {:.0} / {:.0}, {:.0} / {:.0}",
            fb.walk_rate, fs.walk_rate, fb.random_rate, fs.random_rate, fb.concurrent_rate, fs.concurrent_rate
        ),
    );
    let (rss, hwm) = memory();
    report.section("end");
    report.row(
        "process RSS at the end (A + B + the pages the bench kept to check)",
        format!("{rss:.1} MiB (HWM {hwm:.1} MiB)"),
    );
    report.row("load average (1, 5, 15 min) at the end", load_average());
    drop(servers);
    b.shutdown().await;
    a.shutdown().await;
    report
}
