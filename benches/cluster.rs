//! Benchmark of several weft processes serving one server over one
//! PostgreSQL database (issue "Several weft processes"): the same load
//! with 1, 2 and 3 processes, side by side.
//!
//!   cargo bench --bench cluster
//!
//! For each number of processes: clients sending to one room through the
//! processes in turn (sends/s, latency), then `/sync` fan-out — users
//! long-polling through the processes in turn while one message at a time
//! is sent through the first — as the time from the send to each sync's
//! answer, for the syncs parked on the sending process and on the
//! others (the cross-process wake-up: `LISTEN`/`NOTIFY`). CPU is the
//! processes' and PostgreSQL's. On a 2-core machine the point is the
//! overhead of more processes and that they stay correct (every send
//! reaches every sync), not more throughput. Sizes: `WEFT_BENCH_PROCESSES`
//! (`1,2,3`), `WEFT_BENCH_SENDS` (2000; 100 without `--bench`),
//! `WEFT_BENCH_CONCURRENCY` (8), `WEFT_BENCH_SYNCERS` (30; 6),
//! `WEFT_BENCH_FANOUT_ROUNDS` (30; 5). PostgreSQL only (the run starts
//! its own, as the other benchmarks do).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;
#[path = "support/weft.rs"]
mod weft_process;

use common::synapse::Client;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{
    Latencies, Report, load_average, ms,
    postgres::{Backend, PgCluster},
    print_side_by_side,
};
use weft_process::{Options, WeftProcess};

#[derive(Debug, Clone)]
struct Settings {
    processes: Vec<usize>,
    sends: usize,
    concurrency: usize,
    syncers: usize,
    rounds: usize,
}

impl Settings {
    fn from_env(full: bool) -> Settings {
        let var = |name: &str, full_default: usize, smoke: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(if full { full_default } else { smoke })
        };
        let processes = std::env::var("WEFT_BENCH_PROCESSES")
            .unwrap_or_else(|_| "1,2,3".to_owned())
            .split(',')
            .map(|n| n.trim().parse().expect("WEFT_BENCH_PROCESSES: numbers"))
            .collect();
        Settings {
            processes,
            sends: var("WEFT_BENCH_SENDS", 2000, 100),
            concurrency: var("WEFT_BENCH_CONCURRENCY", 8, 4),
            syncers: var("WEFT_BENCH_SYNCERS", 30, 6),
            rounds: var("WEFT_BENCH_FANOUT_ROUNDS", 30, 5),
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(full);
    weft::tls::install_crypto_provider();
    eprintln!("weft binary: {}", weft_process::WEFT);
    eprintln!("{settings:?}");
    let backend = Backend::Postgres(Arc::new(PgCluster::start()));
    let runtime = support::bench_runtime();
    let reports: Vec<Report> = settings
        .processes
        .iter()
        .map(|&n| runtime.block_on(run(&settings, &backend, n)))
        .collect();
    let s = &settings;
    print_side_by_side(
        &format!(
            "several processes over one PostgreSQL: {} sends ({} in flight), /sync fan-out to {} users × {} rounds",
            s.sends, s.concurrency, s.syncers, s.rounds
        ),
        &reports,
    );
}

/// The CPU the processes and PostgreSQL used so far.
fn cpu(processes: &[WeftProcess], backend: &Backend) -> (Duration, Duration) {
    (processes.iter().map(|p| p.cpu()).sum(), backend.cpu().total())
}

async fn run(s: &Settings, backend: &Backend, n: usize) -> Report {
    let mut report = Report::new(format!("{n} process{}", if n == 1 { "" } else { "es" }));
    report.row("load average at the start", load_average());
    let dir = tempfile::tempdir().expect("temp dir");
    let senders: Vec<String> = (0..s.concurrency).map(|i| format!("sender{i}")).collect();
    let syncers: Vec<String> = (0..s.syncers).map(|i| format!("syncer{i}")).collect();
    let users: Vec<&str> = senders.iter().chain(&syncers).map(String::as_str).collect();
    let mut processes = vec![WeftProcess::start(dir.path(), "p0", &users, Options::default(), backend).await];
    for i in 1..n {
        let sibling = processes[0].sibling(&format!("p{i}")).await;
        processes.push(sibling);
    }

    // Users log in through the processes in turn; the room is public.
    let mut sending = Vec::new();
    for (i, user) in senders.iter().enumerate() {
        sending.push(processes[i % n].login(user).await);
    }
    let mut syncing = Vec::new();
    for (i, user) in syncers.iter().enumerate() {
        syncing.push(processes[i % n].login(user).await);
    }
    let (status, created) = sending[0]
        .call(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&json!({ "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    for client in sending.iter().skip(1).chain(&syncing) {
        let (status, body) = client
            .call(
                Method::POST,
                &format!("/_matrix/client/v3/join/{room}"),
                Some(&json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // Sends through every process at once.
    report.section("sends to one room, through the processes in turn");
    let before = cpu(&processes, backend);
    let started = Instant::now();
    let per_client = s.sends / s.concurrency;
    let tasks: Vec<_> = sending
        .iter()
        .cloned()
        .enumerate()
        .map(|(c, client)| {
            let room = room.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in 0..per_client {
                    let at = Instant::now();
                    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s{c}-{i}");
                    let (status, body) = client
                        .call(
                            Method::PUT,
                            &path,
                            Some(&json!({ "msgtype": "m.text", "body": format!("{c} {i}") })),
                        )
                        .await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    latencies.push(at.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("sender"));
    }
    let took = started.elapsed();
    let after = cpu(&processes, backend);
    let sent = per_client * s.concurrency;
    report.row(
        "client sends",
        format!(
            "{:.0} events/s ({sent} in {}, {} in flight)",
            sent as f64 / took.as_secs_f64(),
            ms(took),
            s.concurrency
        ),
    );
    report.row("send latency", Latencies::new(latencies).summary());
    report.row(
        "CPU per send",
        backend.cpu_split(
            (after.0 - before.0) / sent as u32,
            (after.1 - before.1) / sent as u32,
            "weft",
            ms,
        ),
    );

    // Fan-out: every syncer parked, one send through the first process.
    report.section("/sync fan-out: one send through the first process, syncs parked on all");
    let mut tokens = Vec::new();
    for client in &syncing {
        tokens.push(initial_token(client).await);
    }
    let (mut same, mut other) = (Vec::new(), Vec::new());
    let before = cpu(&processes, backend);
    for round in 0..s.rounds {
        let polls: Vec<_> = syncing
            .iter()
            .cloned()
            .zip(tokens.iter().cloned())
            .map(|(client, since)| {
                tokio::spawn(async move {
                    let (status, body) = client.call(Method::GET, &client.sync_path(Some(&since)), None).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    (Instant::now(), body)
                })
            })
            .collect();
        // Parked (a sync answered before the send would not be woken).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let at = Instant::now();
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/fan{round}");
        let (status, body) = sending[0]
            .call(
                Method::PUT,
                &path,
                Some(&json!({ "msgtype": "m.text", "body": format!("fan-out {round}") })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let event_id = body["event_id"].as_str().unwrap().to_owned();
        for (i, poll) in polls.into_iter().enumerate() {
            let (answered, body) = poll.await.expect("sync");
            let events = &body["rooms"]["join"][&room]["timeline"]["events"];
            assert!(
                events
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["event_id"] == event_id)),
                "round {round}: syncer {i} got the message: {body}"
            );
            tokens[i] = body["next_batch"].as_str().unwrap().to_owned();
            let latency = answered.saturating_duration_since(at);
            if i % n == 0 {
                same.push(latency)
            } else {
                other.push(latency)
            }
        }
    }
    let after = cpu(&processes, backend);
    let all: Vec<Duration> = same.iter().chain(&other).copied().collect();
    report.row("send → every sync answered", Latencies::new(all).summary());
    report.row("syncs on the sending process", Latencies::new(same).short_summary());
    if n > 1 {
        report.row("syncs on the other processes", Latencies::new(other).short_summary());
    }
    let woken = s.rounds * s.syncers;
    report.row(
        "CPU per sync answered",
        backend.cpu_split(
            (after.0 - before.0) / woken as u32,
            (after.1 - before.1) / woken as u32,
            "weft",
            ms,
        ),
    );
    report.row("load average at the end", load_average());
    report
}

/// What `Client` lacks here.
trait SyncPath {
    fn sync_path(&self, since: Option<&str>) -> String;
}

impl SyncPath for Client {
    /// A long-poll of 30 s, from `since`, of the timeline only.
    fn sync_path(&self, since: Option<&str>) -> String {
        let filter = "%7B%22presence%22%3A%7B%22types%22%3A%5B%5D%7D%2C%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A10%7D%7D%7D";
        match since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=30000&since={since}&filter={filter}"),
            None => format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
        }
    }
}

/// The `next_batch` of a first sync of `client`.
async fn initial_token(client: &Client) -> String {
    let (status, body): (StatusCode, Value) = client.call(Method::GET, &client.sync_path(None), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["next_batch"].as_str().unwrap().to_owned()
}
