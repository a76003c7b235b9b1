//! Benchmark of weft's federation write path: PDUs pushed by another
//! server through `PUT /_matrix/federation/v1/send/{txnId}`, and joining a
//! room held by another server.
//!
//!   cargo bench --bench write_path
//!
//! Server A is the real `weft serve` binary in a child process (so that its
//! CPU time can be read from /proc); server B is weft as a library in this
//! process (`tests/common`'s `TestServer`), a real federating server with
//! its own key that A fetches over HTTPS.
//!
//! 1. **/send.** A user of B joins a room on A (through B's client API).
//!    The benchmark then builds, as B would, a chain of messages from that
//!    user (signed with B's key, `prev_events` the one before, `auth_events`
//!    from the room's state) and pushes them to A in transactions of 50,
//!    signed by B's federation client. A runs every check on receipt
//!    (X-Matrix signature, format, event ID, event signature, content
//!    hash, auth against auth events, state before, current state) and
//!    stores each PDU. It reports PDUs accepted per second, latency per
//!    transaction and A's CPU per PDU; it checks that every PDU's result is
//!    `Ok` and that A's `/messages` then shows every message once, in order.
//! 2. **The bare cost** of one ed25519 verification and one sha256 per PDU
//!    over those same PDUs, and the ratio of A's CPU per PDU to it.
//! 3. **Join time** for a room of 1,000 state events (custom state events,
//!    and a room of 1,000 members): a user of a fresh B joins through B's
//!    client API (make_join, send_join, B checks every PDU of the answer
//!    and stores the state).
//!
//! A and B run on each backend of `WEFT_BENCH_BACKENDS` (SQLite, and
//! PostgreSQL, whose CPU time counts as A's and B's); the results are
//! printed side by side.
//!
//! See docs/benchmarks.md. Sizes can be overridden with `WEFT_BENCH_*`
//! variables (listed in [`Settings::from_env`]). Run without `--bench`
//! (`cargo test --bench write_path`), it does a small smoke run.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;
#[path = "support/weft.rs"]
mod weft_process;

use std::{
    collections::{HashMap, HashSet},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    TestServer, enc,
    synapse::{Client, register_as_appservice},
};
use reqwest::{Method, StatusCode};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedTransactionId,
    OwnedUserId, RoomVersionId, SigningKeyAlgorithm,
    api::federation::{event::get_event, transactions::send_transaction_message},
    serde::{Base64, base64::Standard},
    signatures::{PublicKeyMap, PublicKeySet, Verified},
};
use serde_json::{Value, json, value::RawValue};
use sha2::{Digest, Sha256};
use support::{
    Latencies, Report, context_switches, cpu_time, in_flight, load_average, log_tail, median, ms,
    postgres::{Backend, Database, PgCpu},
    print_side_by_side,
};
use weft::events::{EventTemplate, Placement, build_event};
use weft_process::{AS_TOKEN, Options, WEFT, WeftProcess};

/// Sizes of the run; each can be overridden by an environment variable:
/// `WEFT_BENCH_PDUS` (10000; 300 without `--bench`), `WEFT_BENCH_TXN_SIZE`
/// (50), `WEFT_BENCH_JOIN_STATE` (1000; 100), `WEFT_BENCH_JOIN_MEMBERS`
/// (1000; 30), `WEFT_BENCH_JOIN_COMBINED` (0; 1: the members join the
/// room of custom state, the room of members and state, instead of
/// a room of their own), `WEFT_BENCH_JOIN_RUNS` (3; 1), `WEFT_BENCH_ROOM_VERSION`
/// (11), `WEFT_BENCH_PARTIAL_STATE` (1; 0: B joins with the full state at
/// once). Setting `WEFT_BENCH_KEEP` keeps A's data directory and log;
/// `WEFT_BENCH_PERF=<file>` records A with `perf record` during the /send
/// part. `WEFT_BENCH_BACKENDS` (`sqlite,postgres`): the storage backends.
#[derive(Debug, Clone)]
struct Settings {
    /// PDUs pushed to A through /send.
    pdus: usize,
    /// PDUs per transaction (the spec's maximum is 50).
    txn_size: usize,
    /// Custom state events (`org.example.state`, state keys 0..n) in the
    /// first room joined.
    join_state: usize,
    /// Members (besides the creator) of the second room joined; 0: none.
    join_members: usize,
    /// The members join the first room (custom state) instead.
    join_combined: bool,
    /// Joins of each room, each by a fresh server B.
    join_runs: usize,
    version: RoomVersionId,
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
        let version = std::env::var("WEFT_BENCH_ROOM_VERSION").unwrap_or_else(|_| "11".to_owned());
        Settings {
            pdus: var("WEFT_BENCH_PDUS", pick(10_000, 300)).max(1),
            txn_size: var("WEFT_BENCH_TXN_SIZE", 50).clamp(1, 50),
            join_state: var("WEFT_BENCH_JOIN_STATE", pick(1_000, 100)),
            join_members: var("WEFT_BENCH_JOIN_MEMBERS", pick(1_000, 30)),
            join_combined: var("WEFT_BENCH_JOIN_COMBINED", 0) != 0,
            join_runs: var("WEFT_BENCH_JOIN_RUNS", pick(3, 1)).max(1),
            version: RoomVersionId::try_from(version.as_str()).expect("WEFT_BENCH_ROOM_VERSION"),
        }
    }
}

// ---------------------------------------------------------------------------
// Small tools.

/// Latency distribution (nearest-rank percentiles).
fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// `GET /rooms/{room}/state`: the room's current state as `client` sees it.
async fn room_state(client: &Client, room: &str) -> Vec<Value> {
    let state = client
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            None,
        )
        .await;
    state.as_array().cloned().expect("state is an array")
}

fn state_event_id(state: &[Value], kind: &str, state_key: &str) -> OwnedEventId {
    let event = state
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == state_key)
        .unwrap_or_else(|| panic!("no {kind} [{state_key}] in the room's state"));
    event["event_id"].as_str().expect("event_id").try_into().unwrap()
}

// ---------------------------------------------------------------------------
// 1. /send.

/// The messages B's user sends, built and signed as B builds its events.
struct Chain {
    pdus: Vec<weft::events::Pdu>,
}

/// Builds `n` messages of `sender` (a user of B) in `room`, each on the one
/// before, the first on `tip` (an event ID and its depth).
fn build_chain(
    b: &TestServer,
    version: &RoomVersionId,
    room: &OwnedRoomId,
    sender: &OwnedUserId,
    auth_events: &[OwnedEventId],
    tip: (OwnedEventId, u64),
    n: usize,
) -> Chain {
    let keys = &b.services().keys;
    let (mut prev, depth) = tip;
    let mut pdus = Vec::with_capacity(n);
    for i in 0..n {
        let template = EventTemplate::message(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": format!("write {i}") }),
        );
        let pdu = build_event(
            keys,
            version,
            sender,
            &template,
            Placement {
                room_id: Some(room),
                prev_events: vec![prev.clone()],
                auth_events: auth_events.to_vec(),
                depth: depth + 1 + i as u64,
                ref_hashes: Default::default(),
            },
            MilliSecondsSinceUnixEpoch::now(),
        )
        .expect("build a PDU");
        prev = pdu.event_id.clone();
        pdus.push(pdu);
    }
    Chain { pdus }
}

struct SendRun {
    elapsed: Duration,
    latencies: Latencies,
    /// Per transaction: completion time from the start, PDUs, A's CPU
    /// (with PostgreSQL's) from the start.
    done: Vec<(Duration, usize, Duration)>,
    a_cpu: Duration,
    /// PostgreSQL's CPU on A's behalf: its connections and the shared work.
    a_pg: Duration,
    bench_cpu: Duration,
    /// A's context switches over the run.
    a_switches: u64,
}

/// Pushes the chain to A in transactions of `txn_size`, one at a time (as a
/// server sends to one destination), checking every PDU's result.
async fn push(backend: &Backend, b: &TestServer, a: &WeftProcess, chain: &Chain, txn_size: usize) -> SendRun {
    let fed = &b.services().federation;
    let origin = b.server_name();
    let a_name = a.name();
    let nonce = weft::accounts::random_string(8);
    let txns: Vec<Vec<Box<RawValue>>> = chain
        .pdus
        .chunks(txn_size)
        .map(|chunk| {
            chunk
                .iter()
                .map(|p| RawValue::from_string(p.json.to_string()).unwrap())
                .collect()
        })
        .collect();
    let mut latencies = Vec::new();
    let mut done = Vec::new();
    let mut results = Vec::new();
    let (a_cpu, pg) = (a.cpu(), backend.cpu());
    let a_used = || {
        let pg = backend.cpu().since(&pg).with_shared(a.database.as_ref());
        (a.cpu().saturating_sub(a_cpu), pg)
    };
    let a_switches = context_switches(a.pid());
    let bench_cpu = cpu_time("self");
    let started = Instant::now();
    for (k, pdus) in txns.into_iter().enumerate() {
        let n = pdus.len();
        let mut req = send_transaction_message::v1::Request::new(
            OwnedTransactionId::from(format!("wp-{nonce}-{k}")),
            origin.clone(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        req.pdus = pdus;
        let t = Instant::now();
        let res = fed
            .send(&a_name, req)
            .await
            .unwrap_or_else(|e| panic!("transaction {k}: {e}"));
        latencies.push(t.elapsed());
        let (process, pg) = a_used();
        done.push((started.elapsed(), n, process + pg));
        results.push(res.pdus);
    }
    let elapsed = started.elapsed();
    let (a_cpu, a_pg) = a_used();
    let a_switches = context_switches(a.pid()).saturating_sub(a_switches);
    let bench_cpu = cpu_time("self").saturating_sub(bench_cpu);
    // Every PDU has its own result, and it is Ok.
    for (k, (chunk, result)) in chain.pdus.chunks(txn_size).zip(&results).enumerate() {
        assert_eq!(result.len(), chunk.len(), "transaction {k}: results: {result:?}");
        for pdu in chunk {
            match result.get(&pdu.event_id) {
                Some(Ok(())) => {}
                other => panic!("transaction {k}: {}: {other:?}", pdu.event_id),
            }
        }
    }
    SendRun {
        elapsed,
        latencies: Latencies::new(latencies),
        done,
        a_cpu,
        a_pg,
        bench_cpu,
        a_switches,
    }
}

impl SendRun {
    /// PDUs/s and A's CPU per PDU over the first and the last tenth of the
    /// transactions, to show whether receiving slows down as the room grows.
    fn first_last_tenth(&self) -> String {
        let k = self.done.len() / 10;
        if k < 2 {
            return "(too few transactions)".to_owned();
        }
        let span = |from: usize, to: usize| {
            // Transactions from..to (exclusive), from the end of from-1.
            let (t0, c0) = match from {
                0 => (Duration::ZERO, Duration::ZERO),
                _ => (self.done[from - 1].0, self.done[from - 1].2),
            };
            let (t1, c1) = (self.done[to - 1].0, self.done[to - 1].2);
            let n: usize = self.done[from..to].iter().map(|d| d.1).sum();
            (n as f64 / (t1 - t0).as_secs_f64(), us(c1.saturating_sub(c0) / n as u32))
        };
        let len = self.done.len();
        let (first, first_cpu) = span(0, k);
        let (last, last_cpu) = span(len - k, len);
        format!(
            "first tenth {first:.0} PDUs/s, A's CPU {first_cpu} per PDU; last tenth {last:.0} PDUs/s, {last_cpu} per PDU"
        )
    }
}

/// Pages A's `/messages` back from the end until `stop` (B's user's join):
/// the events above it, oldest first.
async fn messages_since(client: &Client, room: &str, stop: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let query = match &from {
            Some(token) => format!("dir=b&limit=1000&from={}", enc(token)),
            None => "dir=b&limit=1000".to_owned(),
        };
        let page = client.messages(room, &query).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        for event in chunk {
            if event["event_id"] == stop {
                events.reverse();
                return events;
            }
            events.push(event);
        }
        match page["end"].as_str() {
            Some(end) if from.as_deref() != Some(end) => from = Some(end.to_owned()),
            _ => panic!("paged back through {room} without finding {stop}"),
        }
    }
}

// ---------------------------------------------------------------------------
// 2. The bare cost.

struct CryptoCost {
    ed25519: Duration,
    sha256: Duration,
    parse: Duration,
    verify_event: Duration,
    reference_hash: Duration,
    /// Bytes hashed per PDU, on average.
    bytes: usize,
}

impl CryptoCost {
    fn bare(&self) -> Duration {
        self.ed25519 + self.sha256
    }
}

/// Per PDU, over the PDUs of the chain: one ed25519 verification of B's
/// signature (over the redacted event's canonical JSON, prepared
/// beforehand) plus one sha256 over the event's canonical JSON (the
/// content-hash input, prepared beforehand). For context: parsing the PDU
/// into canonical JSON, ruma's `verify_event` (redacting serialisation +
/// the verification + the content hash) and the reference hash (the event
/// ID), which is what a receiver computes from a PDU besides.
fn crypto_cost(b: &TestServer, version: &RoomVersionId, chain: &Chain) -> CryptoCost {
    let rules = version.rules().unwrap();
    let keys = &b.services().keys;
    let origin = b.server_name();
    let public_key = Base64::<Standard>::parse(keys.public_key_base64()).expect("public key");
    let key_id = keys.key_id();
    let mut key_map = PublicKeyMap::new();
    let mut set = PublicKeySet::new();
    set.insert(key_id.clone(), public_key.clone());
    key_map.insert(origin.to_string(), set);

    struct Prepared {
        json: std::sync::Arc<str>,
        object: CanonicalJsonObject,
        signed: String,
        signature: Vec<u8>,
        hashed: String,
    }
    let prepared: Vec<Prepared> = chain
        .pdus
        .iter()
        .map(|pdu| {
            let object: CanonicalJsonObject = serde_json::from_str(&pdu.json).unwrap();
            let redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None).unwrap();
            let signed = ruma::signatures::to_canonical_json_string_for_signing(&redacted).unwrap();
            let signature = match &object["signatures"] {
                CanonicalJsonValue::Object(servers) => match &servers[origin.as_str()] {
                    CanonicalJsonValue::Object(sigs) => match &sigs[&key_id] {
                        CanonicalJsonValue::String(s) => Base64::<Standard>::parse(s).unwrap().into_inner(),
                        _ => panic!("signature"),
                    },
                    _ => panic!("signature"),
                },
                _ => panic!("signatures"),
            };
            let mut unhashed = object.clone();
            for field in ["signatures", "unsigned", "hashes"] {
                unhashed.remove(field);
            }
            let hashed = serde_json::to_string(&unhashed).unwrap();
            Prepared {
                json: pdu.json.clone(),
                object,
                signed,
                signature,
                hashed,
            }
        })
        .collect();
    let n = prepared.len() as u32;
    let time = |f: &dyn Fn(&Prepared)| {
        // One round to warm up, then the timed rounds (at least 0.3 s).
        for p in prepared.iter().take(100) {
            f(p);
        }
        let started = Instant::now();
        let mut rounds = 0;
        while rounds == 0 || started.elapsed() < Duration::from_millis(300) {
            for p in &prepared {
                f(p);
            }
            rounds += 1;
        }
        started.elapsed() / (n * rounds)
    };
    let ed25519 = time(&|p| {
        ruma::signatures::verify_canonical_json_bytes(
            &SigningKeyAlgorithm::Ed25519,
            public_key.as_bytes(),
            &p.signature,
            p.signed.as_bytes(),
        )
        .expect("signature verifies");
    });
    let sha256 = time(&|p| {
        std::hint::black_box(Sha256::digest(std::hint::black_box(p.hashed.as_bytes())));
    });
    let parse = time(&|p| {
        std::hint::black_box(serde_json::from_str::<CanonicalJsonObject>(std::hint::black_box(&p.json)).unwrap());
    });
    let verify_event = time(&|p| {
        let verified = ruma::signatures::verify_event(&key_map, &p.object, &rules).expect("verify_event");
        assert_eq!(verified, Verified::All);
    });
    let reference_hash = time(&|p| {
        std::hint::black_box(ruma::signatures::reference_hash(&p.object, &rules).unwrap());
    });
    CryptoCost {
        ed25519,
        sha256,
        parse,
        verify_event,
        reference_hash,
        bytes: prepared.iter().map(|p| p.hashed.len()).sum::<usize>() / prepared.len(),
    }
}

// ---------------------------------------------------------------------------
// 3. Joins.

/// Runs `f(i)` for i in 0..n with `concurrency` in flight.
/// A room on A that B's users join.
struct JoinRoom {
    label: String,
    id: String,
    /// State events of the room before a B user joins.
    state: usize,
}

struct JoinTime {
    /// Until the join returned (with a partial state, before the members).
    wall: Duration,
    /// Until the room's full state was held (`/joined_members` answers).
    full: Duration,
    a_cpu: Duration,
    bench_cpu: Duration,
}

/// A reading of a process's CPU time (`pid`, or `"self"`) and of
/// PostgreSQL's, for [`cpu_since`].
fn cpu_reading(backend: &Backend, pid: impl std::fmt::Display) -> (Duration, PgCpu) {
    (cpu_time(pid), backend.cpu())
}

/// The CPU time of a server since `start` (a [`cpu_reading`] of the same
/// `pid`): its process's, and PostgreSQL's on its behalf, that is its
/// connections' (to `database`), with the shared work (WAL writer,
/// checkpointer) when it is the one writing (`shared`).
fn cpu_since(
    backend: &Backend,
    start: &(Duration, PgCpu),
    pid: impl std::fmt::Display,
    database: Option<&Database>,
    shared: bool,
) -> Duration {
    let pg = backend.cpu().since(&start.1);
    let pg = match shared {
        true => pg.with_shared(database),
        false => pg.of(database),
    };
    cpu_time(pid).saturating_sub(start.0) + pg
}

fn range(v: &[Duration]) -> String {
    let lo = v.iter().min().copied().unwrap_or_default();
    let hi = v.iter().max().copied().unwrap_or_default();
    format!("{}–{}", ms(lo), ms(hi))
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
            "weft federation write-path benchmark: {} PDUs in transactions of {}; joins of rooms of {} state events and {} members, {} run(s); room version {}",
            s.pdus, s.txn_size, s.join_state, s.join_members, s.join_runs, s.version
        ),
        &reports,
    );
}

/// B's configuration on `backend`: a new database of its own (or SQLite).
fn b_on(backend: &Backend) -> (Option<Database>, impl Fn(&mut weft::config::Config)) {
    let database = backend.fresh_database();
    let url = database.as_ref().map(|d| d.url.clone());
    // `WEFT_BENCH_PARTIAL_STATE=0`: B joins with the full state at once.
    let partial = std::env::var("WEFT_BENCH_PARTIAL_STATE").map_or(true, |v| v != "0");
    (database, move |c: &mut weft::config::Config| {
        c.database_url = url.clone();
        c.partial_state_joins = partial;
    })
}

/// The whole benchmark, A and B on `backend`.
async fn run(s: &Settings, backend: &Backend) -> Report {
    let mut root = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("WEFT_BENCH_KEEP").is_some() {
        root.disable_cleanup(true);
        eprintln!("keeping A's data directory and log in {}", root.path().display());
    }
    let mut report = Report::new(backend.label("weft"));
    report.row("load average (1, 5, 15 min) at the start", load_average());

    let a = WeftProcess::start(
        root.path(),
        "a",
        &["creator"],
        Options {
            metrics: false,
            open_registration: true,
            appservice: true,
        },
        backend,
    )
    .await;
    let a_name = a.name();
    let creator = a.login("creator").await;
    let (_, b_config) = b_on(backend);
    let b = TestServer::start_federating_with(b_config).await;
    let b_name = b.server_name();
    eprintln!("A = {a_name} (pid {}), B = {b_name} (in this process)", a.pid());

    // ---- 1. /send --------------------------------------------------------
    report.section(&format!(
        "/send: {} PDUs from B, transactions of {}",
        s.pdus, s.txn_size
    ));
    let room = creator
        .create_room(json!({ "preset": "public_chat", "room_version": s.version.as_str(), "name": "write path" }))
        .await;
    let room_id: OwnedRoomId = room.as_str().try_into().unwrap();
    let sender = Client::register_on_weft(&b, "sender").await;
    let t = Instant::now();
    let (status, body) = sender
        .join(&room, &format!("server_name={}", enc(a_name.as_str())))
        .await;
    assert_eq!(status, StatusCode::OK, "B's user joins A's room: {body}");
    report.row(
        "B's user joins the room (7 state events; B's first contact with A)",
        ms(t.elapsed()),
    );
    let sender_id: OwnedUserId = sender.user_id.as_str().try_into().unwrap();

    // The auth events of a message (the rules of ruma's
    // auth_types_for_event: create (not in v12), power levels, the
    // sender's membership), from A's state; the tip of A's DAG.
    let state = room_state(&creator, &room).await;
    let mut auth = vec![
        state_event_id(&state, "m.room.power_levels", ""),
        state_event_id(&state, "m.room.member", &sender.user_id),
    ];
    if !matches!(s.version, RoomVersionId::V12) {
        auth.insert(0, state_event_id(&state, "m.room.create", ""));
    }
    let tip = creator.messages(&room, "dir=b&limit=1").await;
    let tip = &tip["chunk"][0];
    assert_eq!(
        tip["state_key"],
        sender.user_id.as_str(),
        "the newest event is the join: {tip}"
    );
    let tip_id: OwnedEventId = tip["event_id"].as_str().unwrap().try_into().unwrap();
    let tip_pdu = b
        .services()
        .federation
        .send(&a_name, get_event::v1::Request::new(tip_id.clone()))
        .await
        .expect("/event of the join");
    let tip_depth = serde_json::from_str::<Value>(tip_pdu.pdu.get()).unwrap()["depth"]
        .as_u64()
        .expect("depth");

    let t = Instant::now();
    let chain = build_chain(
        &b,
        &s.version,
        &room_id,
        &sender_id,
        &auth,
        (tip_id.clone(), tip_depth),
        s.pdus,
    );
    report.row(
        "building and signing the PDUs in the bench (not timed below)",
        format!(
            "{} ({} per PDU, {} bytes of JSON per PDU on average)",
            ms(t.elapsed()),
            us(t.elapsed() / s.pdus as u32),
            chain.pdus.iter().map(|p| p.json.len()).sum::<usize>() / s.pdus
        ),
    );

    // WEFT_BENCH_PERF=<file>: `perf record` A while it receives.
    let perf = std::env::var_os("WEFT_BENCH_PERF").map(|out| {
        Command::new("perf")
            .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
            .arg(out)
            .args(["-p", &a.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start perf record")
    });
    if perf.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let run = push(backend, &b, &a, &chain, s.txn_size).await;
    if let Some(mut perf) = perf {
        let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
        let _ = perf.wait();
    }
    let rate = s.pdus as f64 / run.elapsed.as_secs_f64();
    let a_per_pdu = (run.a_cpu + run.a_pg) / s.pdus as u32;
    report.row(
        "accepted by A",
        format!(
            "{rate:.0} PDUs/s ({} PDUs in {}, {} per PDU wall)",
            s.pdus,
            ms(run.elapsed),
            us(run.elapsed / s.pdus as u32)
        ),
    );
    report.row("latency per transaction", run.latencies.summary());
    report.row("rate as the room grows", run.first_last_tenth());
    report.row(
        "A's CPU (separate process)",
        format!(
            "{} total, {} per PDU",
            backend.cpu_split(run.a_cpu, run.a_pg, "weft", ms),
            backend.cpu_split(run.a_cpu / s.pdus as u32, run.a_pg / s.pdus as u32, "weft", us)
        ),
    );
    report.row(
        "A's context switches (live threads)",
        format!(
            "{} total, {:.1} per PDU",
            run.a_switches,
            run.a_switches as f64 / s.pdus as f64
        ),
    );
    report.row(
        "bench process CPU (B sending: signing requests, TLS, HTTP/2)",
        format!(
            "{} total, {} per PDU",
            ms(run.bench_cpu),
            us(run.bench_cpu / s.pdus as u32)
        ),
    );

    // Every message is on A, once, in order, above the join.
    let t = Instant::now();
    let seen = messages_since(&creator, &room, tip_id.as_str()).await;
    let want: Vec<String> = chain.pdus.iter().map(|p| p.event_id.to_string()).collect();
    let got: Vec<String> = seen
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "A shows {} events above the join, {} sent",
        got.len(),
        want.len()
    );
    assert!(got == want, "A's timeline is not the chain, in order");
    for (i, event) in seen.iter().enumerate() {
        assert_eq!(
            event["content"]["body"],
            format!("write {i}"),
            "body of {}",
            event["event_id"]
        );
        assert_eq!(event["sender"], sender.user_id.as_str());
    }
    report.row(
        "checks",
        format!(
            "every PDU's result Ok; A's /messages shows all {} above the join, once, in order ({} to read them back)",
            s.pdus,
            ms(t.elapsed())
        ),
    );

    // ---- 2. The bare cost ----------------------------------------------
    report.section("bare cost per PDU (in the bench, one thread, same PDUs)");
    let cost = crypto_cost(&b, &s.version, &chain);
    report.row(
        "ed25519 verification of B's signature (prepared bytes)",
        us(cost.ed25519),
    );
    report.row(
        format!("sha256 over the canonical JSON ({} bytes)", cost.bytes),
        us(cost.sha256),
    );
    report.row("bare cost: one ed25519 + one sha256", us(cost.bare()));
    report.row("for context: parsing the PDU into canonical JSON", us(cost.parse));
    report.row(
        "for context: ruma verify_event (redacting serialisation + ed25519 + content hash)",
        us(cost.verify_event),
    );
    report.row("for context: reference hash (event ID)", us(cost.reference_hash));
    report.row(
        "ratio: A's CPU per PDU / bare cost",
        format!("{:.1}", a_per_pdu.as_secs_f64() / cost.bare().as_secs_f64()),
    );
    report.row(
        "ratio: wall time per PDU / bare cost",
        format!(
            "{:.1}",
            (run.elapsed / s.pdus as u32).as_secs_f64() / cost.bare().as_secs_f64()
        ),
    );

    // ---- 3. Joins ---------------------------------------------------------
    report.section("joining a room held by A (fresh B each run)");
    let mut rooms = Vec::new();
    let small = creator
        .create_room(json!({ "preset": "public_chat", "room_version": s.version.as_str(), "name": "small" }))
        .await;
    rooms.push(JoinRoom {
        label: "small room (first contact: B fetches A's key, connects)".to_owned(),
        id: small.clone(),
        state: room_state(&creator, &small).await.len(),
    });
    if s.join_state > 0 {
        let id = creator
            .create_room(json!({ "preset": "public_chat", "room_version": s.version.as_str(), "name": "state" }))
            .await;
        let a_cpu = cpu_reading(backend, a.pid());
        let t = Instant::now();
        let (c, r) = (creator.clone(), id.clone());
        in_flight(s.join_state, 4, move |i| {
            let (c, r) = (c.clone(), r.clone());
            async move {
                c.put_state(&r, "org.example.state", &i.to_string(), &json!({ "i": i }))
                    .await;
            }
        })
        .await;
        report.row(
            format!(
                "filling: {} org.example.state events (client API, 4 in flight)",
                s.join_state
            ),
            format!(
                "{} ({:.0} events/s, A's CPU {} per event)",
                ms(t.elapsed()),
                s.join_state as f64 / t.elapsed().as_secs_f64(),
                ms(cpu_since(backend, &a_cpu, a.pid(), a.database.as_ref(), true) / s.join_state as u32)
            ),
        );
        let state = room_state(&creator, &id).await.len();
        rooms.push(JoinRoom {
            label: format!("room of {state} state events ({} org.example.state)", s.join_state),
            id,
            state,
        });
    }
    if s.join_members > 0 {
        // The room: the members join the room of custom state.
        let combined = match rooms.last() {
            Some(last) if s.join_combined && s.join_state > 0 => Some(last.id.clone()),
            _ => None,
        };
        let id = match &combined {
            Some(id) => {
                rooms.pop();
                id.clone()
            }
            None => {
                creator
                    .create_room(
                        json!({ "preset": "public_chat", "room_version": s.version.as_str(), "name": "members" }),
                    )
                    .await
            }
        };
        let a_cpu = cpu_reading(backend, a.pid());
        let t = Instant::now();
        let a_http = (a.http.clone(), a.client_base.clone());
        let r = id.clone();
        in_flight(s.join_members, 4, move |i| {
            let (http, base, r) = (a_http.0.clone(), a_http.1.clone(), r.clone());
            async move {
                // As the benchmark's application service: no password to
                // hash (argon2 would be most of the fill).
                let member = register_as_appservice(&http, &base, AS_TOKEN, i).await;
                let (status, body) = member.join(&r, "").await;
                assert_eq!(status, StatusCode::OK, "m{i} joins: {body}");
            }
        })
        .await;
        report.row(
            format!(
                "filling: {} users registered (by an application service) and joined (4 in flight)",
                s.join_members
            ),
            format!(
                "{} (A's CPU {} per member)",
                ms(t.elapsed()),
                ms(cpu_since(backend, &a_cpu, a.pid(), a.database.as_ref(), true) / s.join_members as u32)
            ),
        );
        let state = room_state(&creator, &id).await.len();
        rooms.push(JoinRoom {
            label: match combined {
                Some(_) => format!(
                    "room of {state} state events ({} members, {} org.example.state)",
                    s.join_members + 1,
                    s.join_state
                ),
                None => format!("room of {state} state events ({} members)", s.join_members + 1),
            },
            id,
            state,
        });
    }

    let mut times: HashMap<usize, Vec<JoinTime>> = HashMap::new();
    for run in 0..s.join_runs {
        let (b2_database, b2_config) = b_on(backend);
        let b2 = TestServer::start_federating_with(b2_config).await;
        let joiner = Client::register_on_weft(&b2, "joiner").await;
        for (k, jr) in rooms.iter().enumerate() {
            // A serves; B (this process) writes, and is given PostgreSQL's
            // shared work.
            let a_cpu = cpu_reading(backend, a.pid());
            let bench_cpu = cpu_reading(backend, "self");
            let t = Instant::now();
            let (status, body) = joiner
                .join(&jr.id, &format!("server_name={}", enc(a_name.as_str())))
                .await;
            let wall = t.elapsed();
            assert_eq!(status, StatusCode::OK, "join {}: {body}", jr.label);
            // `/joined_members` waits for the full state (a partial-state join).
            joiner.joined_members(&jr.id).await;
            let full = t.elapsed();
            let time = JoinTime {
                wall,
                full,
                a_cpu: cpu_since(backend, &a_cpu, a.pid(), a.database.as_ref(), false),
                bench_cpu: cpu_since(backend, &bench_cpu, "self", b2_database.as_ref(), true),
            };
            eprintln!(
                "  run {run}: {}: {}, full state at {} (A CPU {}, B CPU {})",
                jr.label,
                ms(time.wall),
                ms(time.full),
                ms(time.a_cpu),
                ms(time.bench_cpu)
            );
            // B holds the room's state: every state event, and its own join.
            let on_b = room_state(&joiner, &jr.id).await;
            assert_eq!(
                on_b.len(),
                jr.state + 1,
                "{}: B holds {} state events, A had {} before the join",
                jr.label,
                on_b.len(),
                jr.state
            );
            let distinct: HashSet<(String, String)> = on_b
                .iter()
                .map(|e| (e["type"].to_string(), e["state_key"].to_string()))
                .collect();
            assert_eq!(distinct.len(), on_b.len(), "{}: state keys twice", jr.label);
            times.entry(k).or_default().push(time);
        }
        let mut b2 = b2;
        if let Some(server) = b2.server.take() {
            server.shutdown().await;
        }
    }
    for (k, jr) in rooms.iter().enumerate() {
        let t = &times[&k];
        let walls: Vec<Duration> = t.iter().map(|t| t.wall).collect();
        report.row(
            format!("join: {}", jr.label),
            format!(
                "median {} over {} run(s) ({}), full state at {}; A's CPU {}, B's CPU (bench process, join and resync) {} ({} per state event)",
                ms(median(walls.clone())),
                walls.len(),
                range(&walls),
                ms(median(t.iter().map(|t| t.full).collect())),
                ms(median(t.iter().map(|t| t.a_cpu).collect())),
                ms(median(t.iter().map(|t| t.bench_cpu).collect())),
                ms(median(t.iter().map(|t| t.bench_cpu).collect()) / jr.state.max(1) as u32)
            ),
        );
    }
    report.row(
        "checks",
        "every join 200; B then holds every state event A had, plus its own join, no key twice",
    );

    report.section("end");
    let warnings = log_tail(a.log(), usize::MAX);
    let lines = warnings.lines().filter(|l| !l.trim().is_empty()).count();
    report.row("lines A logged at warn or above", lines.to_string());
    report.row("load average (1, 5, 15 min) at the end", load_average());
    if lines > 0 {
        eprintln!("\nA's log (tail):\n{}", log_tail(a.log(), 20));
    }
    drop(sender);
    let mut b = b;
    if let Some(server) = b.server.take() {
        server.shutdown().await;
    }
    report
}
