//! Benchmark of backfill: a server that has just joined a room pages back
//! through its history with `/messages?dir=b`, fetching it from the server
//! that holds it (`/backfill`), side by side for weft and Synapse.
//!
//!   cargo bench --bench backfill
//!
//! Every server is its own process: weft is the real `weft serve` binary
//! (`CARGO_BIN_EXE_weft`), Synapse comes from the test virtualenv
//! (`tests/common/synapse.rs`), so each one's CPU time can be read from
//! /proc. The cases, each with a joiner that has never been in the room:
//!
//! - weft from weft, weft from Synapse, Synapse from Synapse (and Synapse
//!   from weft): a room of 1,000 messages on the host; a user of the joiner
//!   joins and pages back 100 at a time until `m.room.create`. Wall time,
//!   the joiner's CPU, CPU per backfilled event; every message must arrive
//!   exactly once, and the joiner's timeline must be the host's. With
//!   `WEFT_BENCH_ROOM_STATE=N`, each of these rooms first gets N custom
//!   state events: the join is then also timed until the joiner holds the
//!   full state (its `/members` answers: after a partial-state join, both
//!   servers wait for it), with the joiner's CPU per state event. With
//!   `WEFT_BENCH_ROOM_MEMBERS=M`, M users (registered by an application
//!   service of the host: no password) join each room after that state: the
//!   members a partial-state join leaves out. `WEFT_BENCH_PAGE_BACK=0` times
//!   the joins only (the room of 2,000 members and 20,000 state
//!   events: Synapse would page back through it for most of an hour); each
//!   host then fills one room, which its two joiners join one after the
//!   other.
//! - The cold page: a fresh weft joiner of a weft room of 10,000 messages
//!   (and of weft and Synapse rooms of 1,000, for comparison) asks for its
//!   first `/messages?dir=b&limit=50` right after the join. It holds nothing
//!   before its own join event, so this page has to backfill. A user of the
//!   Synapse joiner does the same once in each of these rooms.
//!
//! All of it runs on each backend of `WEFT_BENCH_BACKENDS` (SQLite, and
//! PostgreSQL, whose CPU time counts as the servers'), weft and Synapse
//! alike; the results are printed side by side.
//!
//! See docs/benchmarks.md. Sizes can be overridden with `WEFT_BENCH_*`
//! variables (listed in [`Settings::from_env`]). Run without `--bench`
//! (`cargo test --bench backfill`), it does a small smoke run.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;
#[path = "support/synapse.rs"]
mod synapse_process;
#[path = "support/weft.rs"]
mod weft_process;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    enc,
    synapse::{Client, Synapse, assert_same_timeline, duplicate_ids, register_as_appservice, synapse_requests},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    Latencies, Report, context_switches, cpu_time, in_flight, load_average, log_tail, median, ms,
    postgres::{Backend, Database, PgCpu},
    print_side_by_side,
};
use synapse_process::{start_synapse, synapse_pid};
use weft_process::{AS_TOKEN, Options, WEFT, WeftProcess};

/// Every weft server of this benchmark serves `/metrics`.
const METRICS: Options = Options {
    metrics: true,
    open_registration: false,
    appservice: false,
};

/// The weft host: `/metrics`, and the application service that registers
/// the rooms' members.
const HOST: Options = Options {
    appservice: true,
    ..METRICS
};

/// Sizes of the run; each can be overridden by an environment variable:
/// `WEFT_BENCH_MESSAGES` (1000; 100 without `--bench`), `WEFT_BENCH_PAGE`
/// (100), `WEFT_BENCH_COLD_EVENTS` (10000; 300), `WEFT_BENCH_COLD_PAGE`
/// (50), `WEFT_BENCH_COLD_RUNS` (3; 1), `WEFT_BENCH_SYNAPSE_COLD_EVENTS`
/// (1000; 100; 0: no Synapse room for the cold page),
/// `WEFT_BENCH_FILL_CONCURRENCY` (4), `WEFT_BENCH_SYNAPSE_FILL_CONCURRENCY` (1:
/// Synapse's rooms are lines), `WEFT_BENCH_ROOM_STATE` (0),
/// `WEFT_BENCH_ROOM_MEMBERS` (0), `WEFT_BENCH_PAGE_BACK` (1; 0: joins only),
/// `WEFT_BENCH_ROOM_VERSION` (11), `WEFT_BENCH_CASES` (all of
/// `weft-weft,weft-synapse,synapse-synapse,synapse-weft,cold`).
/// `WEFT_BENCH_KEEP` keeps the weft data directories and logs;
/// `WEFT_BENCH_WEFT_LOG` is the weft processes' log filter (`warn`);
/// `WEFT_BENCH_PERF=<file>` records the weft joiner of "weft from weft" (with call graphs) with
/// `perf record` while it pages back; `WEFT_BENCH_PERF_JOIN=<file>` records it while it joins
/// and takes the full state. `WEFT_BENCH_BACKENDS` (`sqlite,postgres`):
/// the storage backends, of weft and Synapse alike.
#[derive(Debug, Clone)]
struct Settings {
    /// Messages in the rooms paged back through.
    messages: usize,
    /// `limit` of each `/messages` request paging back.
    page: usize,
    /// Messages in the big room of the cold page on weft.
    cold_events: usize,
    /// `limit` of the cold page.
    cold_page: usize,
    /// Fresh joiners per cold-page room.
    cold_runs: usize,
    /// Messages in the Synapse room of the cold page (0: none).
    synapse_cold_events: usize,
    /// Sends in flight while filling the weft rooms (weft serialises sends
    /// into a room, so the room stays a line; Synapse does not, and its
    /// rooms are filled one send at a time so that they are lines too).
    fill_concurrency: usize,
    /// Requests in flight while filling the Synapse rooms (1: the rooms
    /// are lines, as the page-back's checks need).
    synapse_fill_concurrency: usize,
    version: String,
    cases: Vec<String>,
    /// Custom state events (`org.example.state`) in each room of the
    /// page-back cases, sent before its messages: the joiner's time to the
    /// full state and CPU per state event are then reported.
    room_state: usize,
    /// Users that join each room of the page-back cases after its state
    /// events (registered by the host's application service).
    room_members: usize,
    /// Page back after the join (else the joins alone, and each host's two
    /// joiners join one room).
    page_back: bool,
}

const ALL_CASES: [&str; 5] = ["weft-weft", "weft-synapse", "synapse-synapse", "synapse-weft", "cold"];

impl Settings {
    fn from_env(full: bool) -> Settings {
        fn var(name: &str, default: usize) -> usize {
            match std::env::var(name) {
                Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
                Err(_) => default,
            }
        }
        let pick = |full_value, smoke_value| if full { full_value } else { smoke_value };
        let cases: Vec<String> = match std::env::var("WEFT_BENCH_CASES") {
            Ok(list) => list
                .split(',')
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect(),
            Err(_) => ALL_CASES.iter().map(|c| (*c).to_owned()).collect(),
        };
        for case in &cases {
            assert!(
                ALL_CASES.contains(&case.as_str()),
                "unknown case {case:?}: {ALL_CASES:?}"
            );
        }
        Settings {
            messages: var("WEFT_BENCH_MESSAGES", pick(1_000, 100)).max(1),
            page: var("WEFT_BENCH_PAGE", 100).max(1),
            cold_events: var("WEFT_BENCH_COLD_EVENTS", pick(10_000, 300)),
            cold_page: var("WEFT_BENCH_COLD_PAGE", 50).max(1),
            cold_runs: var("WEFT_BENCH_COLD_RUNS", pick(3, 1)).max(1),
            synapse_cold_events: var("WEFT_BENCH_SYNAPSE_COLD_EVENTS", pick(1_000, 100)),
            fill_concurrency: var("WEFT_BENCH_FILL_CONCURRENCY", 4).max(1),
            synapse_fill_concurrency: var("WEFT_BENCH_SYNAPSE_FILL_CONCURRENCY", 1).max(1),
            version: std::env::var("WEFT_BENCH_ROOM_VERSION").unwrap_or_else(|_| "11".to_owned()),
            cases,
            room_state: var("WEFT_BENCH_ROOM_STATE", 0),
            room_members: var("WEFT_BENCH_ROOM_MEMBERS", 0),
            page_back: var("WEFT_BENCH_PAGE_BACK", 1) != 0,
        }
    }

    fn has(&self, case: &str) -> bool {
        self.cases.iter().any(|c| c == case)
    }
}

// ---------------------------------------------------------------------------
// Small tools.

/// Latency distribution (nearest-rank percentiles).
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn settle(pid: u32, quiet: Duration, limit: Duration) {
    let started = Instant::now();
    let mut last = cpu_time(pid);
    let mut since = Instant::now();
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = cpu_time(pid);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// The backfill counters of `/metrics`: (requests by outcome, events
/// added).
async fn backfill_counters(w: &WeftProcess) -> (String, u64) {
    let text = w
        .http
        .get(w.metrics.as_deref().expect("started with metrics"))
        .send()
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("/metrics body");
    let mut requests = Vec::new();
    let mut events = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Some(labels) = name.strip_prefix("weft_backfill_requests_total") {
            let outcome = labels.trim_start_matches("{outcome=\"").trim_end_matches("\"}");
            requests.push(format!("{outcome} {value}"));
        } else if name == "weft_backfill_events_total" {
            events = value.parse().unwrap_or(0);
        }
    }
    requests.sort();
    (requests.join(", "), events)
}

// ---------------------------------------------------------------------------
// Rooms.

/// A room on a host and the message bodies sent into it.
#[derive(Clone)]
struct Room {
    id: String,
    bodies: Vec<String>,
    /// Its `org.example.state` events.
    state: usize,
    /// Its members besides the creator (the joiners not counted).
    members: usize,
}

/// What [`fill_room`] puts in a room, in this order.
#[derive(Clone, Copy)]
struct Contents {
    /// Custom state events (`org.example.state`, keys `k{i}`).
    state: usize,
    /// Users `@m<i>` registered by the host's application service, who join.
    members: usize,
    /// Messages `"{tag} {i}"`.
    messages: usize,
}

/// Calls `call` until it answers 200 (Synapse on SQLite answers an
/// occasional 500 under load), at most 5 times; counts the retries.
async fn until_ok<F, Fut>(what: &str, retried: &AtomicUsize, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)>,
{
    for attempt in 1.. {
        let (status, body) = call().await;
        if status == StatusCode::OK {
            return;
        }
        assert!(attempt < 5, "{what}: {status} {body}");
        retried.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Creates a public room on `host` and fills it with `contents`, with
/// `concurrency` requests in flight. A request that fails is retried (a
/// message with the same transaction ID, so it is sent once).
async fn fill_room(
    report: &mut Report,
    host: &Host<'_>,
    version: &str,
    tag: &str,
    contents: Contents,
    concurrency: usize,
) -> Room {
    let creator = host.creator;
    let retries = Arc::new(AtomicUsize::new(0));
    let rate = |n: usize, t: Instant, what: &str| {
        format!(
            "{} ({:.0} {what}/s)",
            secs(t.elapsed()),
            n as f64 / t.elapsed().as_secs_f64()
        )
    };
    let id = creator
        .create_room(json!({ "preset": "public_chat", "room_version": version, "name": tag }))
        .await;
    // (Sent one by one: Synapse takes longer than a minute to create a room
    // with 3,000 `initial_state` events, more than sending them.)
    if contents.state > 0 {
        let t = Instant::now();
        let (c, r, retried) = (creator.clone(), id.clone(), retries.clone());
        in_flight(contents.state, concurrency, move |i| {
            let (c, r, retried) = (c.clone(), r.clone(), retried.clone());
            async move {
                let path = format!("/_matrix/client/v3/rooms/{}/state/org.example.state/k{i}", enc(&r));
                let body = json!({ "i": i });
                until_ok(&format!("{} sets state k{i}", c.user_id), &retried, || {
                    c.call(reqwest::Method::PUT, &path, Some(&body))
                })
                .await;
            }
        })
        .await;
        report.row(
            format!(
                "{}: room {tag}: {} state events (in flight: {concurrency})",
                host.kind, contents.state
            ),
            rate(contents.state, t, "events"),
        );
    }
    if contents.members > 0 {
        let t = Instant::now();
        let (http, base, token) = (creator.http.clone(), creator.base.clone(), host.as_token.to_owned());
        let (r, retried) = (id.clone(), retries.clone());
        in_flight(contents.members, concurrency, move |i| {
            let (http, base, token, r, retried) =
                (http.clone(), base.clone(), token.clone(), r.clone(), retried.clone());
            async move {
                let member = register_as_appservice(&http, &base, &token, i).await;
                until_ok(&format!("{} joins", member.user_id), &retried, || member.join(&r, "")).await;
            }
        })
        .await;
        report.row(
            format!(
                "{}: room {tag}: {} members registered (by an application service) and joined (in flight: {concurrency})",
                host.kind, contents.members
            ),
            rate(contents.members, t, "joins"),
        );
    }
    let t = Instant::now();
    let (c, r, tg, retried) = (creator.clone(), id.clone(), tag.to_owned(), retries.clone());
    in_flight(contents.messages, concurrency, move |i| {
        let (c, r, tg, retried) = (c.clone(), r.clone(), tg.clone(), retried.clone());
        async move {
            let content = json!({ "msgtype": "m.text", "body": format!("{tg} {i}") });
            let txn = format!("{tg}-{i}");
            until_ok(&format!("{} sends {tg} {i}", c.user_id), &retried, || {
                c.send(&r, "m.room.message", &txn, &content)
            })
            .await;
        }
    })
    .await;
    let retries = retries.load(Ordering::Relaxed);
    report.row(
        format!(
            "{}: room {tag} of {} messages (sends in flight: {concurrency})",
            host.kind, contents.messages
        ),
        format!(
            "{}{}",
            rate(contents.messages, t, "messages"),
            match retries {
                0 => String::new(),
                n => format!(", {n} requests of the fill retried after an error"),
            }
        ),
    );
    Room {
        id,
        bodies: (0..contents.messages).map(|i| format!("{tag} {i}")).collect(),
        state: contents.state,
        members: contents.members,
    }
}

// ---------------------------------------------------------------------------
// The page-back.

/// A server that joins and pages back.
struct Joiner<'a> {
    kind: &'static str,
    client: Client,
    pid: u32,
    /// Its PostgreSQL database (`None`: SQLite).
    database: Option<Database>,
    weft: Option<&'a WeftProcess>,
}

/// The host's side, for its CPU and (Synapse) its access log.
struct Host<'a> {
    kind: &'static str,
    name: String,
    creator: &'a Client,
    /// The token of its application service, which registers the rooms'
    /// members.
    as_token: &'a str,
    pid: u32,
    /// Its PostgreSQL database (`None`: SQLite).
    database: Option<Database>,
    synapse: Option<&'a Synapse>,
}

/// CPU time of a joiner and its host: their processes, and PostgreSQL's.
/// The joiner, which writes, is given the database server's shared work
/// (WAL writer, checkpointer); the host only its own connections.
#[derive(Clone, Copy, Default)]
struct Cpu {
    joiner: Duration,
    joiner_pg: Duration,
    host: Duration,
    host_pg: Duration,
}

impl Cpu {
    fn read(backend: &Backend, joiner: u32, host: u32) -> (Duration, Duration, PgCpu) {
        (cpu_time(joiner), cpu_time(host), backend.cpu())
    }

    /// What was used since `before` (a [`Cpu::read`]).
    fn since(
        before: &(Duration, Duration, PgCpu),
        backend: &Backend,
        joiner: (u32, Option<&Database>),
        host: (u32, Option<&Database>),
    ) -> Cpu {
        let pg = backend.cpu().since(&before.2);
        Cpu {
            joiner: cpu_time(joiner.0).saturating_sub(before.0),
            joiner_pg: pg.with_shared(joiner.1),
            host: cpu_time(host.0).saturating_sub(before.1),
            host_pg: pg.of(host.1),
        }
    }

    fn joiner_total(&self) -> Duration {
        self.joiner + self.joiner_pg
    }

    fn host_total(&self) -> Duration {
        self.host + self.host_pg
    }
}

struct CaseResult {
    label: String,
    /// `weft`, `Synapse`: the joiner's process.
    joiner: &'static str,
    join: Duration,
    /// From the join's start until the joiner answers `/members` (which
    /// waits for the full state after a partial-state join).
    full_state: Duration,
    /// The room's state events as the joiner holds them then.
    state_events: usize,
    /// The joiner's CPU over the join, the full state and the settling.
    join_cpu: Cpu,
    /// `None` without the page-back (`WEFT_BENCH_PAGE_BACK=0`).
    page_back: Option<PageBack>,
}

/// The page-back of a case.
struct PageBack {
    pages: usize,
    events: usize,
    backfilled: usize,
    wall: Duration,
    cpu: Cpu,
    /// The joiner's context switches over the page-back (live threads).
    joiner_switches: u64,
    first_page: Duration,
    latencies: Latencies,
    requests: String,
}

/// Pages `/messages?dir=b&limit=page` from the newest event until the
/// page holding `m.room.create` (or no `end`). Returns the events oldest
/// first and the latency of each page.
async fn page_back(client: &Client, room: &str, page: usize, max_pages: usize) -> (Vec<Value>, Vec<Duration>) {
    let mut events: Vec<Value> = Vec::new();
    let mut latencies = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let query = match &from {
            Some(token) => format!("dir=b&limit={page}&from={}", enc(token)),
            None => format!("dir=b&limit={page}"),
        };
        let t = Instant::now();
        let body = client.messages(room, &query).await;
        latencies.push(t.elapsed());
        let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
        let done = chunk.iter().any(|e| e["type"] == "m.room.create");
        events.extend(chunk);
        match body["end"].as_str() {
            Some(end) if !done => {
                assert_ne!(
                    from.as_deref(),
                    Some(end),
                    "{}: /messages: end did not move",
                    client.base
                );
                from = Some(end.to_owned());
            }
            _ => break,
        }
        assert!(
            latencies.len() <= max_pages,
            "{} paged back {max_pages} times without reaching m.room.create ({} events so far)",
            client.base,
            events.len()
        );
    }
    events.reverse();
    (events, latencies)
}

/// Starts `perf record` (with call graphs) of process `pid` into `out`.
async fn perf_record(out: &std::ffi::OsStr, pid: u32) -> std::process::Child {
    let perf = Command::new("perf")
        .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start perf record");
    tokio::time::sleep(Duration::from_millis(500)).await;
    perf
}

/// Stops a [`perf_record`] and waits for it to write its file.
fn perf_stop(mut perf: std::process::Child) {
    let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
    let _ = perf.wait();
}

async fn page_back_case(
    backend: &Backend,
    label: &str,
    host: &Host<'_>,
    room: &Room,
    joiner: &Joiner<'_>,
    page: usize,
    then_page_back: bool,
) -> CaseResult {
    eprintln!("-- {label}: {} joins {}'s room and pages back", joiner.kind, host.kind);
    let pids = (joiner.pid, host.pid);
    let (joiner_of, host_of) = (
        (joiner.pid, joiner.database.as_ref()),
        (host.pid, host.database.as_ref()),
    );
    // WEFT_BENCH_PERF_JOIN=<file>: `perf record` the weft joiner of weft
    // from weft while it joins and takes the full state.
    let perf = match (std::env::var_os("WEFT_BENCH_PERF_JOIN"), joiner.weft, host.synapse) {
        (Some(out), Some(_), None) => Some(perf_record(&out, joiner.pid).await),
        _ => None,
    };
    // The joins of big rooms may take Synapse longer than the client's
    // minute.
    let patient = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(3600))
            .build()
            .expect("http client"),
        ..joiner.client.clone()
    };
    let cpu = Cpu::read(backend, pids.0, pids.1);
    let t = Instant::now();
    let (status, body) = patient
        .join(&room.id, &format!("server_name={}", enc(&host.name)))
        .await;
    let join = t.elapsed();
    assert_eq!(status, StatusCode::OK, "{label}: join: {body}");
    let members_path = format!("/_matrix/client/v3/rooms/{}/members", enc(&room.id));
    let (status, body) = patient.call(reqwest::Method::GET, &members_path, None).await;
    let full_state = t.elapsed();
    assert_eq!(status, StatusCode::OK, "{label}: members: {body}");
    settle(joiner.pid, Duration::from_millis(500), Duration::from_secs(30)).await;
    let join_cpu = Cpu::since(&cpu, backend, joiner_of, host_of);
    if let Some(perf) = perf {
        perf_stop(perf);
    }
    // (Checked once the join's CPU is read: reading the whole state is the
    // benchmark's work, not the join's.)
    let state = joiner
        .client
        .ok(
            reqwest::Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room.id)),
            None,
        )
        .await;
    let state = state.as_array().expect("a state").clone();
    let custom = state.iter().filter(|e| e["type"] == "org.example.state").count();
    assert_eq!(custom, room.state, "{label}: the joiner holds every state event");
    let joined = state
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .count();
    // The creator, the members, the joiner, and maybe an earlier joiner.
    assert!(
        joined >= room.members + 2,
        "{label}: the joiner's state has {joined} joined members of {}",
        room.members + 2
    );
    let result = CaseResult {
        label: label.to_owned(),
        joiner: joiner.kind,
        join,
        full_state,
        state_events: state.len(),
        join_cpu,
        page_back: None,
    };
    if !then_page_back {
        return result;
    }

    let before = match (joiner.weft, host.synapse) {
        (Some(w), _) => backfill_counters(w).await.1,
        _ => 0,
    };
    let synapse_backfills = host
        .synapse
        .map(|s| synapse_requests(s, "/_matrix/federation/v1/backfill/"));
    // WEFT_BENCH_PERF=<file>: `perf record` the weft joiner of weft from
    // weft while it pages back.
    let perf = match (std::env::var_os("WEFT_BENCH_PERF"), joiner.weft, host.synapse) {
        (Some(out), Some(_), None) => Some(perf_record(&out, joiner.pid).await),
        _ => None,
    };
    let cpu = Cpu::read(backend, pids.0, pids.1);
    let switches = context_switches(joiner.pid);
    let t = Instant::now();
    let max_pages = (room.bodies.len() + room.state + room.members) / page.max(1) * 5 + 50;
    let (events, latencies) = page_back(&joiner.client, &room.id, page, max_pages).await;
    let wall = t.elapsed();
    let cpu = Cpu::since(&cpu, backend, joiner_of, host_of);
    let joiner_switches = context_switches(joiner.pid).saturating_sub(switches);
    if let Some(perf) = perf {
        perf_stop(perf);
    }

    // Checks: nothing twice, every message once, the creation reached, the
    // same timeline as the host's, ending with the joiner's own join.
    let twice = duplicate_ids(&events);
    assert!(twice.is_empty(), "{label}: events twice: {twice:?}");
    let mut count: HashMap<&str, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "m.room.message") {
        *count.entry(e["content"]["body"].as_str().unwrap_or("?")).or_default() += 1;
    }
    let want: HashSet<&str> = room.bodies.iter().map(String::as_str).collect();
    let missing = want.iter().filter(|b| !count.contains_key(*b)).count();
    let extra: Vec<&&str> = count.keys().filter(|b| !want.contains(*b)).collect();
    assert_eq!(
        missing,
        0,
        "{label}: {missing} of {} messages never arrived",
        want.len()
    );
    assert!(extra.is_empty(), "{label}: unexpected messages {extra:?}");
    assert!(count.values().all(|&c| c == 1), "{label}: a message came twice");
    assert_eq!(
        events.first().map(|e| e["type"].clone()),
        Some(json!("m.room.create")),
        "{label}"
    );
    assert_eq!(
        events.last().map(|e| e["state_key"].clone()),
        Some(json!(joiner.client.user_id)),
        "{label}: the newest event is the joiner's join"
    );
    let on_host = host.creator.page_back_all(&room.id, 100).await;
    assert_same_timeline(label, &events, &on_host);

    let requests = match (joiner.weft, host.synapse) {
        (Some(w), _) => {
            let (by_outcome, added) = backfill_counters(w).await;
            format!(
                "joiner's /backfill requests: {by_outcome}; events added: {}",
                added - before
            )
        }
        (None, Some(s)) => format!(
            "host served /backfill {} times",
            synapse_requests(s, "/_matrix/federation/v1/backfill/") - synapse_backfills.unwrap_or(0)
        ),
        _ => String::new(),
    };
    CaseResult {
        page_back: Some(PageBack {
            pages: latencies.len(),
            events: events.len(),
            // Everything but the joiner's own join came from the host.
            backfilled: events.len() - 1,
            wall,
            cpu,
            joiner_switches,
            first_page: latencies[0],
            latencies: Latencies::new(latencies),
            requests,
        }),
        ..result
    }
}

/// Milliseconds with three decimals.
fn ms3(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn report_case(report: &mut Report, backend: &Backend, r: &CaseResult) {
    report.section(&r.label);
    report.row(
        "join (until POST /join answers); joiner CPU incl. settling",
        format!(
            "{}; {}",
            ms(r.join),
            backend.cpu_split(r.join_cpu.joiner, r.join_cpu.joiner_pg, r.joiner, ms)
        ),
    );
    let per_state = |d: Duration| d / r.state_events.max(1) as u32;
    report.row(
        "full state (until /members answers); joiner CPU per state event",
        format!(
            "{} ({} state events); {}",
            ms(r.full_state),
            r.state_events,
            backend.cpu_split(
                per_state(r.join_cpu.joiner),
                per_state(r.join_cpu.joiner_pg),
                r.joiner,
                ms3
            )
        ),
    );
    let Some(p) = &r.page_back else {
        return;
    };
    let per_event = |d: Duration| d / p.backfilled.max(1) as u32;
    report.row(
        "page-back: wall time",
        format!(
            "{} ({} pages, {} events, {} backfilled)",
            secs(p.wall),
            p.pages,
            p.events,
            p.backfilled
        ),
    );
    report.row(
        "page-back: joiner CPU",
        backend.cpu_split(p.cpu.joiner, p.cpu.joiner_pg, r.joiner, secs),
    );
    report.row(
        "page-back: joiner CPU per backfilled event",
        backend.cpu_split(per_event(p.cpu.joiner), per_event(p.cpu.joiner_pg), r.joiner, ms3),
    );
    report.row(
        "page-back: joiner context switches (live threads)",
        format!(
            "{} total, {:.1} per backfilled event",
            p.joiner_switches,
            p.joiner_switches as f64 / p.backfilled as f64
        ),
    );
    report.row(
        "page-back: host CPU",
        format!(
            "{} total, {} per event",
            secs(p.cpu.host_total()),
            backend.cpu_split(per_event(p.cpu.host), per_event(p.cpu.host_pg), "host", ms3)
        ),
    );
    report.row(
        "page latency",
        format!("first {}; {}", ms(p.first_page), p.latencies.short_summary()),
    );
    if !p.requests.is_empty() {
        report.row("requests", p.requests.clone());
    }
}

// ---------------------------------------------------------------------------
// The cold page.

struct ColdRun {
    cold: Duration,
    cold_cpu: Duration,
    warm: Duration,
    next: Duration,
    events: usize,
}

/// A fresh weft joiner joins `room` on the host and asks for its first page
/// back; then the same page again (now held), then the page after it.
/// The joiner is returned to be kept running: the servers that join later
/// need its key to check its join event.
async fn cold_page(
    backend: &Backend,
    root: &Path,
    label: &str,
    host: &Host<'_>,
    room: &Room,
    limit: usize,
) -> (ColdRun, WeftProcess) {
    let process = WeftProcess::start(root, label, &["joiner"], METRICS, backend).await;
    let joiner = Joiner {
        kind: "weft",
        client: process.login("joiner").await,
        pid: process.pid(),
        database: process.database.clone(),
        weft: None,
    };
    let run = cold_page_of(backend, label, &joiner, host, room, limit, true).await;
    (run, process)
}

/// The cold page of a user of any server that is not in `room` yet: join,
/// first page back, the same page again, the next. `strict`: the page must
/// be full and exactly the host's (weft); else (Synapse) a short page is
/// allowed and reported.
async fn cold_page_of(
    backend: &Backend,
    label: &str,
    joiner: &Joiner<'_>,
    host: &Host<'_>,
    room: &Room,
    limit: usize,
    strict: bool,
) -> ColdRun {
    let client = &joiner.client;
    let (status, body) = client.join(&room.id, &format!("server_name={}", enc(&host.name))).await;
    assert_eq!(status, StatusCode::OK, "{label}: join: {body}");
    settle(joiner.pid, Duration::from_millis(300), Duration::from_secs(30)).await;
    let query = format!("dir=b&limit={limit}");
    let cpu = Cpu::read(backend, joiner.pid, host.pid);
    let t = Instant::now();
    let page = client.messages(&room.id, &query).await;
    let cold = t.elapsed();
    let cold_cpu = Cpu::since(
        &cpu,
        backend,
        (joiner.pid, joiner.database.as_ref()),
        (host.pid, host.database.as_ref()),
    )
    .joiner_total();
    let t = Instant::now();
    let again = client.messages(&room.id, &query).await;
    let warm = t.elapsed();
    let end = page["end"].as_str().expect("the cold page has an end").to_owned();
    let t = Instant::now();
    let next = client.messages(&room.id, &format!("{query}&from={}", enc(&end))).await;
    let next_time = t.elapsed();

    // The cold page is the newest `limit` events of the host's timeline.
    let ids = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|e| e["event_id"].as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let on_host = host.creator.messages(&room.id, &query).await;
    let on_host_next = host
        .creator
        .messages(
            &room.id,
            &format!("{query}&from={}", enc(on_host["end"].as_str().unwrap())),
        )
        .await;
    if strict {
        assert_eq!(ids(&page).len(), limit, "{label}: the cold page is full");
        assert_eq!(
            ids(&page),
            ids(&on_host),
            "{label}: the cold page is the host's newest {limit}"
        );
        assert_eq!(ids(&again), ids(&page), "{label}: the same page again");
        assert_eq!(ids(&next), ids(&on_host_next), "{label}: the next page");
    } else {
        // A page may be short, but what comes is the host's timeline, from
        // the newest event down, with nothing skipped or twice.
        let host_ids = [ids(&on_host), ids(&on_host_next)].concat();
        let got = [ids(&page), ids(&next)].concat();
        assert!(!ids(&page).is_empty(), "{label}: the cold page is empty");
        assert!(
            host_ids.starts_with(&got),
            "{label}: the first two pages are not the host's newest events: {got:?}"
        );
        assert!(
            host_ids.starts_with(&ids(&again)),
            "{label}: the same page again is not the host's newest events"
        );
    }
    ColdRun {
        cold,
        cold_cpu,
        warm,
        next: next_time,
        events: ids(&page).len(),
    }
}

fn report_cold(report: &mut Report, what: &str, runs: &[ColdRun]) {
    let list = |f: &dyn Fn(&ColdRun) -> Duration| -> String {
        let v: Vec<Duration> = runs.iter().map(f).collect();
        format!(
            "median {} ({})",
            ms(median(v.clone())),
            v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
        )
    };
    report.row(
        format!("{what}: cold page ({} events)", runs[0].events),
        list(&|r| r.cold),
    );
    report.row(
        format!("{what}: joiner CPU of the cold page (with PostgreSQL's)"),
        list(&|r| r.cold_cpu),
    );
    report.row(format!("{what}: the same page again (held)"), list(&|r| r.warm));
    report.row(format!("{what}: the page after it"), list(&|r| r.next));
}

// ---------------------------------------------------------------------------

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(full);
    weft::tls::install_crypto_provider();
    eprintln!("weft binary: {WEFT}");
    eprintln!("{settings:?}");
    let reports = support::on_each_backend(&settings, run);
    let s = &settings;
    print_side_by_side(
        &format!(
            "backfill benchmark: rooms of {} state events, {} members and {} messages{}; cold page of {} in rooms of {} and {} messages (weft host), {} run(s); Synapse room of {} for the cold page; room version {}; cases {}",
            s.room_state,
            s.room_members,
            s.messages,
            match s.page_back {
                true => format!(" paged back {} at a time", s.page),
                false => " (joins only, one room per host)".to_owned(),
            },
            s.cold_page,
            s.messages,
            s.cold_events,
            s.cold_runs,
            s.synapse_cold_events,
            s.version,
            s.cases.join(",")
        ),
        &reports,
    );
}

/// The whole benchmark, every server on `backend`.
async fn run(s: &Settings, backend: &Backend) -> Report {
    let mut root = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("WEFT_BENCH_KEEP").is_some() {
        root.disable_cleanup(true);
        eprintln!(
            "keeping the weft data directories and logs in {}",
            root.path().display()
        );
    }
    let root = root.path().to_owned();
    let mut report = Report::new(backend.name());
    report.row("load average (1, 5, 15 min) at the start", load_average());
    let cold = s.has("cold");
    let need_weft_host = s.has("weft-weft") || s.has("synapse-weft") || cold;
    let need_s1 = s.has("weft-synapse") || s.has("synapse-synapse") || (cold && s.synapse_cold_events > 0);
    let need_s2 = s.has("synapse-synapse") || s.has("synapse-weft") || cold;

    report.section("setting up (not measured)");
    let host = match need_weft_host {
        true => Some(WeftProcess::start(&root, "host", &["host"], HOST, backend).await),
        false => None,
    };
    let host_client = match &host {
        Some(h) => Some(h.login("host").await),
        None => None,
    };
    let (s1, s1_database) = match need_s1 {
        true => {
            let (synapse, database) = start_synapse(backend).await;
            (Some(synapse), database)
        }
        false => (None, None),
    };
    let (s2, s2_database) = match need_s2 {
        true => {
            let (synapse, database) = start_synapse(backend).await;
            (Some(synapse), database)
        }
        false => (None, None),
    };
    let alice = match &s1 {
        Some(s1) => Some(s1.user("alice").await),
        None => None,
    };
    let weft_host = host.as_ref().map(|h| Host {
        kind: "weft",
        name: h.server_name.clone(),
        creator: host_client.as_ref().unwrap(),
        as_token: AS_TOKEN,
        pid: h.pid(),
        database: h.database.clone(),
        synapse: None,
    });
    let synapse_host = s1.as_ref().map(|s1| Host {
        kind: "Synapse",
        name: s1.server_name().to_owned(),
        creator: alice.as_ref().unwrap(),
        as_token: s1.appservice_token(),
        pid: synapse_pid(s1),
        database: s1_database.clone(),
        synapse: Some(s1),
    });

    // One room per case: a room that an earlier joiner is in could be
    // backfilled from that joiner instead of from the host. Without the
    // page-back, the two joiners of a host join one room.
    let (wc, sc) = (s.fill_concurrency, s.synapse_fill_concurrency);
    let mut fill =
        async |host: &Option<Host<'_>>, wanted: bool, tag: &str, contents: Contents, concurrency: usize| match (
            host,
            wanted && contents.messages > 0,
        ) {
            (Some(h), true) => Some(fill_room(&mut report, h, &s.version, tag, contents, concurrency).await),
            _ => None,
        };
    let paged = Contents {
        state: s.room_state,
        members: s.room_members,
        messages: s.messages,
    };
    let messages_only = |messages| Contents {
        state: 0,
        members: 0,
        messages,
    };
    let room_ww = fill(&weft_host, s.has("weft-weft"), "ww", paged, wc).await;
    let room_sw = match (&room_ww, s.page_back) {
        (Some(shared), false) => Some(shared.clone()),
        _ => fill(&weft_host, s.has("synapse-weft"), "sw", paged, wc).await,
    };
    let room_cold_small = fill(&weft_host, cold, "wcold", messages_only(s.messages), wc).await;
    let room_cold_big = fill(&weft_host, cold, "wbig", messages_only(s.cold_events), wc).await;
    let room_ws = fill(&synapse_host, s.has("weft-synapse"), "ws", paged, sc).await;
    let room_ss = match (&room_ws, s.page_back) {
        (Some(shared), false) => Some(shared.clone()),
        _ => fill(&synapse_host, s.has("synapse-synapse"), "ss", paged, sc).await,
    };
    let room_cold_synapse = fill(&synapse_host, cold, "scold", messages_only(s.synapse_cold_events), sc).await;
    // Let the hosts finish what the fill left behind (Synapse's background
    // work) before measuring.
    if let Some(h) = &synapse_host {
        settle(h.pid, Duration::from_secs(1), Duration::from_secs(60)).await;
    }
    report.row("load average (1, 5, 15 min) after the fill", load_average());

    let mut results = Vec::new();
    // Every joiner keeps running to the end: the servers that join after it
    // need its key to check its join event (no notary is configured).
    let mut keep: Vec<WeftProcess> = Vec::new();
    let weft_cases = [
        ("weft-weft", "weft from weft", &weft_host, &room_ww),
        ("weft-synapse", "weft from Synapse", &synapse_host, &room_ws),
    ];
    for (case, label, host, room) in weft_cases {
        if !s.has(case) {
            continue;
        }
        let joiner = WeftProcess::start(&root, &format!("joiner-{case}"), &["joiner"], METRICS, backend).await;
        let j = Joiner {
            kind: "weft",
            client: joiner.login("joiner").await,
            pid: joiner.pid(),
            database: joiner.database.clone(),
            weft: Some(&joiner),
        };
        let (host, room) = (host.as_ref().unwrap(), room.as_ref().unwrap());
        let r = page_back_case(backend, label, host, room, &j, s.page, s.page_back).await;
        report_case(&mut report, backend, &r);
        results.push(r);
        keep.push(joiner);
    }
    // The Synapse joiner: one user of S2 for every case.
    let bob = match &s2 {
        Some(s2) => Some(Joiner {
            kind: "Synapse",
            client: s2.user("bob").await,
            pid: synapse_pid(s2),
            database: s2_database.clone(),
            weft: None,
        }),
        None => None,
    };
    let mut rooms_joined = 0;
    if let Some(j) = &bob {
        let synapse_cases = [
            ("synapse-synapse", "Synapse from Synapse", &synapse_host, &room_ss),
            ("synapse-weft", "Synapse from weft", &weft_host, &room_sw),
        ];
        for (case, label, host, room) in synapse_cases {
            if !s.has(case) {
                continue;
            }
            rooms_joined += 1;
            let label = match rooms_joined {
                1 => label.to_owned(),
                _ => format!("{label} (the joiner's second room)"),
            };
            let (host, room) = (host.as_ref().unwrap(), room.as_ref().unwrap());
            let r = page_back_case(backend, &label, host, room, j, s.page, s.page_back).await;
            report_case(&mut report, backend, &r);
            results.push(r);
        }
    }
    if !results.is_empty() {
        report.section(&match s.page_back {
            true => format!("summary: paging back {} messages, {} at a time", s.messages, s.page),
            false => format!("summary: joins of rooms of {} members", s.room_members),
        });
        for r in &results {
            let join = format!(
                "join {}, full state {} ({} state events), joiner CPU {} per state event",
                ms(r.join),
                ms(r.full_state),
                r.state_events,
                backend.cpu_split(
                    r.join_cpu.joiner / r.state_events.max(1) as u32,
                    r.join_cpu.joiner_pg / r.state_events.max(1) as u32,
                    r.joiner,
                    ms3
                ),
            );
            let page_back = match &r.page_back {
                None => String::new(),
                Some(p) => {
                    let per_event = |d: Duration| d / p.backfilled.max(1) as u32;
                    format!(
                        "; page-back wall {}, joiner CPU {} per backfilled event ({} events); host CPU {}",
                        secs(p.wall),
                        backend.cpu_split(per_event(p.cpu.joiner), per_event(p.cpu.joiner_pg), r.joiner, ms3),
                        p.backfilled,
                        secs(p.cpu.host_total())
                    )
                }
            };
            report.row(r.label.clone(), format!("{join}{page_back}"));
        }
    }

    if cold {
        report.section(&format!(
            "cold page: first /messages?dir=b&limit={} after the join (a fresh weft joiner each run; S2's user once, before them)",
            s.cold_page
        ));
        // Rooms that no other server has joined yet, so that the joiner
        // backfills from the host. The Synapse joiner goes first: Synapse
        // on SQLite asks the servers in the room in no particular order,
        // while weft asks the one in the room longest (the host).
        let mut rooms: Vec<(String, &Host<'_>, &Room)> = Vec::new();
        for (host, room) in [
            (&weft_host, &room_cold_small),
            (&weft_host, &room_cold_big),
            (&synapse_host, &room_cold_synapse),
        ] {
            if let (Some(h), Some(r)) = (host, room) {
                rooms.push((format!("{} host, room of {} messages", h.kind, r.bodies.len()), h, r));
            }
        }
        for (k, (what, host, room)) in rooms.iter().enumerate() {
            if let Some(j) = &bob {
                rooms_joined += 1;
                let label = format!("Synapse joiner, {what}");
                let r = cold_page_of(backend, &label, j, host, room, s.cold_page, false).await;
                eprintln!(
                    "  {what}, Synapse joiner (its room {rooms_joined}): cold {} (CPU {}), again {}, next {}",
                    ms(r.cold),
                    ms(r.cold_cpu),
                    ms(r.warm),
                    ms(r.next)
                );
                report_cold(&mut report, &format!("Synapse joiner, {what}"), &[r]);
                // Synapse goes on backfilling in the background after it
                // answers, and the host serves it: let both finish before
                // the weft joiners' cold pages.
                settle(j.pid, Duration::from_secs(1), Duration::from_secs(60)).await;
                settle(host.pid, Duration::from_secs(1), Duration::from_secs(60)).await;
            }
            let mut runs = Vec::new();
            for run in 0..s.cold_runs {
                let label = format!("cold-{k}-{run}");
                let (r, joiner) = cold_page(backend, &root, &label, host, room, s.cold_page).await;
                keep.push(joiner);
                eprintln!(
                    "  {what}, run {run}: cold {} (CPU {}), again {}, next {}",
                    ms(r.cold),
                    ms(r.cold_cpu),
                    ms(r.warm),
                    ms(r.next)
                );
                runs.push(r);
            }
            report_cold(&mut report, &format!("weft joiner, {what}"), &runs);
        }
        report.row(
            "checks",
            "weft: each page is exactly what the host's /messages gives for the same request; Synapse: the pages are the host's newest events, nothing skipped or twice",
        );
    }

    report.section("end");
    if let Some(h) = &host {
        let lines = log_tail(h.log(), usize::MAX)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        report.row("lines the weft host logged at warn or above", lines.to_string());
    }
    let joiner_lines: usize = keep
        .iter()
        .map(|j| {
            log_tail(j.log(), usize::MAX)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        })
        .sum();
    report.row(
        "lines the weft joiners logged at warn or above",
        joiner_lines.to_string(),
    );
    report.row("load average (1, 5, 15 min) at the end", load_average());
    drop(keep);
    report
}
