//! Benchmark of the room list as Element X loads it (issue "Element X
//! works"): a user in many rooms, simplified sliding sync (MSC4186) with
//! the request matrix-sdk-ui's `RoomListService` makes, beside `/sync` v2
//! for the same user, on weft and on Synapse in the same run.
//!
//!   cargo bench --bench sliding_sync
//!
//! Per server: the user creates `WEFT_BENCH_ROOMS` (500; 20 without
//! `--bench`) rooms, each with a name and a message. Then:
//!
//! - **first answer**: a new connection's first request (list `all_rooms`,
//!   range `[0, 19]`, the SDK's 17 `required_state` entries, timeline 1,
//!   the account data, receipts and typing extensions), and the time to
//!   the whole list loaded as the SDK grows its range (by 100, `timeout=0`),
//!   `WEFT_BENCH_FIRSTS` (10; 2) times, each on a new connection;
//! - **incremental answer**: with the whole list in range, the user sends
//!   a message to a random room, then asks from its `pos` (`timeout=0`):
//!   the answer's latency (the room must be in it), `WEFT_BENCH_ROUNDS`
//!   (100; 5) times;
//! - the same two for `/sync` v2 (filter: timeline limit 1): an initial
//!   sync, and an incremental sync after a message.
//!
//! Latencies p50/p99; the server's CPU over each part. SQLite, or the
//! backends of `WEFT_BENCH_BACKENDS`. `WEFT_BENCH_SYNAPSE=0` leaves Synapse
//! out.

use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;
#[path = "support/synapse.rs"]
mod synapse_process;
#[path = "support/weft.rs"]
mod weft_process;

use common::{enc, synapse::Client};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Latencies, Report, cpu_time, ms, postgres::Backend, print_side_by_side};
use synapse_process::{start_synapse, synapse_pid};
use weft_process::{Options, WeftProcess};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

#[derive(Debug, Clone)]
struct Settings {
    rooms: usize,
    firsts: usize,
    rounds: usize,
    synapse: bool,
}

impl Settings {
    fn from_env(full: bool) -> Settings {
        let var = |name: &str, full_default: usize, smoke: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(if full { full_default } else { smoke })
        };
        Settings {
            rooms: var("WEFT_BENCH_ROOMS", 500, 20).max(1),
            firsts: var("WEFT_BENCH_FIRSTS", 10, 2).max(1),
            rounds: var("WEFT_BENCH_ROUNDS", 100, 5).max(1),
            synapse: var("WEFT_BENCH_SYNAPSE", 1, 0) != 0,
        }
    }
}

/// matrix-sdk-ui 0.18's `all_rooms` list (`room_list_service/mod.rs`).
fn room_list_request(conn_id: &str, range_end: usize) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": { "all_rooms": {
            "ranges": [[0, range_end]],
            "required_state": [
                ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
                ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.avatar", ""],
                ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
                ["org.matrix.msc3401.call.member", "*"], ["m.room.join_rules", ""],
                ["m.room.tombstone", ""], ["m.room.create", ""], ["m.room.history_visibility", ""],
                ["io.element.functional_members", ""], ["m.space.parent", "*"], ["m.space.child", "*"],
                ["org.matrix.msc3672.beacon_info", "*"]
            ],
            "filters": {},
            "timeline_limit": 1,
        } },
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    })
}

/// One sliding sync request: the answer (which must be a 200) and its
/// latency.
async fn sliding(client: &Client, pos: Option<&str>, body: &Value) -> (Value, Duration) {
    let path = match pos {
        Some(pos) => format!("{PATH}?timeout=0&pos={}", enc(pos)),
        None => format!("{PATH}?timeout=0"),
    };
    let t = Instant::now();
    let answer = client.ok(Method::POST, &path, Some(body)).await;
    (answer, t.elapsed())
}

struct Part {
    latencies: Vec<Duration>,
    cpu: Duration,
}

fn row(report: &mut Report, name: &str, part: &Part) {
    let l = Latencies::new(part.latencies.clone());
    report.row(
        name,
        format!(
            "p50 {} | p99 {} ({} runs; server CPU {} per run)",
            ms(l.pct(50.0)),
            ms(l.pct(99.0)),
            part.latencies.len(),
            ms(part.cpu / part.latencies.len().max(1) as u32)
        ),
    );
}

async fn measure(s: &Settings, label: String, client: &Client, pid: u32) -> Report {
    let mut report = Report::new(label);
    let t = Instant::now();
    let mut rooms = Vec::new();
    for chunk in (0..s.rooms).collect::<Vec<_>>().chunks(4) {
        let made = futures_util::future::join_all(chunk.iter().map(|i| async move {
            let room = client.create_room(json!({ "name": format!("room {i}") })).await;
            client.send_text(&room, "first", &format!("hello {i}")).await;
            room
        }))
        .await;
        rooms.extend(made);
    }
    report.section("setting up");
    report.row(format!("{} rooms made", s.rooms), ms(t.elapsed()));

    // Sliding sync: a new connection's first answer, then the whole list.
    let (status, _) = client
        .call(Method::POST, &format!("{PATH}?timeout=0"), Some(&json!({})))
        .await;
    report.section("sliding sync (MSC4186), the SDK's room list");
    if status != StatusCode::OK {
        report.row("served", format!("no ({status})"));
        return report;
    }
    let mut first = Part {
        latencies: Vec::new(),
        cpu: Duration::ZERO,
    };
    let mut whole = Part {
        latencies: Vec::new(),
        cpu: Duration::ZERO,
    };
    let mut last = (String::new(), String::new());
    for k in 0..s.firsts {
        let conn = format!("room-list-{k}");
        let cpu = cpu_time(pid);
        let started = Instant::now();
        let (answer, took) = sliding(client, None, &room_list_request(&conn, 19)).await;
        first.latencies.push(took);
        first.cpu += cpu_time(pid) - cpu;
        let count = answer["lists"]["all_rooms"]["count"].as_u64().unwrap_or(0) as usize;
        assert_eq!(count, s.rooms, "the list's count: {answer}");
        let mut pos = answer["pos"].as_str().unwrap().to_owned();
        let mut end = 19;
        let mut seen = answer["rooms"].as_object().map_or(0, |r| r.len());
        while end + 1 < count {
            end = (end + 100).min(count - 1);
            let (answer, _) = sliding(client, Some(&pos), &room_list_request(&conn, end)).await;
            seen += answer["rooms"].as_object().map_or(0, |r| r.len());
            pos = answer["pos"].as_str().unwrap().to_owned();
        }
        whole.latencies.push(started.elapsed());
        whole.cpu += cpu_time(pid) - cpu;
        assert_eq!(seen, count, "every room sent once while the list grew");
        last = (conn, pos);
    }
    row(&mut report, "first answer (range [0, 19])", &first);
    row(&mut report, "whole list loaded (range grown by 100)", &whole);

    let (conn, mut pos) = last;
    let body = room_list_request(&conn, s.rooms - 1);
    let mut incremental = Part {
        latencies: Vec::new(),
        cpu: Duration::ZERO,
    };
    for i in 0..s.rounds {
        let room = &rooms[(i * 7919) % rooms.len()];
        client.send_text(room, &format!("ss{i}"), &format!("news {i}")).await;
        let cpu = cpu_time(pid);
        let (answer, took) = sliding(client, Some(&pos), &body).await;
        incremental.cpu += cpu_time(pid) - cpu;
        assert!(answer["rooms"].get(room).is_some(), "the room with news: {answer}");
        incremental.latencies.push(took);
        pos = answer["pos"].as_str().unwrap().to_owned();
    }
    row(&mut report, "incremental answer after a message", &incremental);

    // `/sync` v2 for the same user.
    report.section("/sync v2 (timeline limit 1)");
    let filter = enc(&json!({ "room": { "timeline": { "limit": 1 } } }).to_string());
    let mut initial = Part {
        latencies: Vec::new(),
        cpu: Duration::ZERO,
    };
    let mut since = String::new();
    for _ in 0..s.firsts {
        let cpu = cpu_time(pid);
        let t = Instant::now();
        let answer = client
            .ok(Method::GET, &format!("/_matrix/client/v3/sync?filter={filter}"), None)
            .await;
        initial.latencies.push(t.elapsed());
        initial.cpu += cpu_time(pid) - cpu;
        since = answer["next_batch"].as_str().unwrap().to_owned();
    }
    row(&mut report, "initial sync", &initial);
    let mut incremental = Part {
        latencies: Vec::new(),
        cpu: Duration::ZERO,
    };
    for i in 0..s.rounds {
        let room = &rooms[(i * 7919) % rooms.len()];
        client
            .send_text(room, &format!("v2-{i}"), &format!("v2 news {i}"))
            .await;
        let cpu = cpu_time(pid);
        let t = Instant::now();
        let answer = client
            .ok(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/sync?filter={filter}&timeout=0&since={}",
                    enc(&since)
                ),
                None,
            )
            .await;
        incremental.latencies.push(t.elapsed());
        incremental.cpu += cpu_time(pid) - cpu;
        assert!(
            answer["rooms"]["join"].get(room).is_some(),
            "the room with news: {answer}"
        );
        since = answer["next_batch"].as_str().unwrap().to_owned();
    }
    row(&mut report, "incremental sync after a message", &incremental);
    report
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let s = Settings::from_env(full);
    weft::tls::install_crypto_provider();
    eprintln!("{s:?}");
    let runtime = support::bench_runtime();
    let mut reports = Vec::new();
    for backend in Backend::from_env() {
        reports.push(runtime.block_on(async {
            let root = tempfile::tempdir().expect("temp dir");
            let weft = WeftProcess::start(root.path(), "weft", &["bench"], Options::default(), &backend).await;
            let client = weft.login("bench").await;
            let pid = weft.pid();
            measure(&s, backend.label("weft"), &client, pid).await
        }));
        if s.synapse {
            reports.push(runtime.block_on(async {
                let (synapse, _database) = start_synapse(&backend).await;
                let pid = synapse_pid(&synapse);
                let user = synapse.user("bench").await;
                measure(&s, backend.label("Synapse"), &user, pid).await
            }));
        }
    }
    print_side_by_side(
        &format!(
            "room list of a user in {} rooms: sliding sync and /sync v2 ({} first answers, {} incremental)",
            s.rooms, s.firsts, s.rounds
        ),
        &reports,
    );
}
