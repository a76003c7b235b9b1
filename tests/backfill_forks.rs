//! Backfill between weft servers over a forked DAG, and from a second
//! server when the first choice is down.
//!
//! - A room on A and B forks: each server adds a branch of 20 events
//!   (with a state change) while it cannot see the other's; the branches
//!   merge; C joins afterwards and pages back through both branches.
//! - A room shared by A and B, with history; C joins; A (the server C asks
//!   first: longest in the room) goes down; C still gets the history, from B.
//!
//! Run with `cargo nextest run --test backfill_forks -j 1` (or
//! `cargo test --test backfill_forks -- --test-threads=1`);
//! `WEFT_TEST_LOG=weft=info` shows the servers' side.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{
    TestServer, enc, eventually,
    synapse::{Client, assert_same_timeline, describe_event, duplicate_ids, event_ids, membership_is, message_bodies},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long anything that crosses servers may take. A server that was
/// down is retried with a back-off (the outbound queue's, 2 s doubling,
/// and the federation client's, 5 s doubling): after a partition of a few
/// seconds delivery can take half a minute.
const DEADLINE: Duration = Duration::from_secs(120);

/// The same user, on its server as it runs now (a restarted test server
/// keeps its federation port and data but gets a new client port).
fn on(server: &TestServer, user: &Client) -> Client {
    Client {
        http: server.http.clone(),
        base: server.base(),
        ..user.clone()
    }
}

/// Waits until `client` sees every event of `ids` among the newest `limit`
/// events of the room.
async fn sees_all(client: &Client, room: &str, ids: &[String], limit: u32) {
    eventually(
        DEADLINE,
        &format!(
            "{} ({}) sees {} events in {room}",
            client.user_id,
            client.base,
            ids.len()
        ),
        || async {
            let page = client.messages(room, &format!("dir=b&limit={limit}")).await;
            let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
            let held: Vec<&str> = chunk.iter().filter_map(|e| e["event_id"].as_str()).collect();
            let missing: Vec<&String> = ids.iter().filter(|id| !held.contains(&id.as_str())).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "missing {missing:?}; newest events: {:#?}",
                    chunk.iter().take(10).map(describe_event).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

/// The `prev_events` of the events of a timeline, as `server` holds them.
async fn parents(server: &TestServer, events: &[Value]) -> HashMap<String, Vec<String>> {
    let mut parents = HashMap::new();
    for id in event_ids(events) {
        let event_id = ruma::EventId::parse(&id).unwrap();
        let stored = server
            .services()
            .storage
            .event(&event_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} does not hold {id}", server.server_name()));
        parents.insert(id, stored.pdu.prev_events.iter().map(|p| p.to_string()).collect());
    }
    parents
}

/// A complete history read oldest first is an order of the DAG: every
/// event's parents are in it, and before it.
fn assert_dag_order(what: &str, events: &[Value], parents: &HashMap<String, Vec<String>>) {
    let position: HashMap<String, usize> = event_ids(events)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    for (i, event) in events.iter().enumerate() {
        let id = event["event_id"].as_str().unwrap();
        for prev in &parents[id] {
            match position.get(prev) {
                Some(&p) if p < i => {}
                Some(&p) => panic!(
                    "{what}: event {i} ({}) comes before its parent {prev} (at {p})",
                    describe_event(event)
                ),
                None => panic!(
                    "{what}: the parent {prev} of event {i} ({}) is not in the history",
                    describe_event(event)
                ),
            }
        }
    }
}

/// The places where two orders of the same events differ, for the output.
fn order_differences(got: &[Value], want: &[Value]) -> Vec<String> {
    got.iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g["event_id"] != w["event_id"])
        .map(|(i, (g, w))| format!("{i:4}: got {} | want {}", describe_event(g), describe_event(w)))
        .collect()
}

/// The fork, and what each server says of it.
struct Forked {
    a: TestServer,
    b: TestServer,
    c: TestServer,
    room: String,
    alice: Client,
    bob: Client,
    carol: Client,
    a_branch: Vec<String>,
    b_branch: Vec<String>,
    merge: String,
}

/// Makes a room on A and B whose DAG forks into two branches of 20
/// events, then merges.
///
/// How the fork is made: first both servers hold the same newest event X
/// (bob's message, seen by A). Then B is shut down, and alice sends 20
/// events on A (one changes the topic): A's outbound queue keeps them for
/// B, which is down. Then A is shut down too (the queue is durable), and B
/// is started again: B has never seen A's 20, so bob's 20 (one changes the
/// name) have X as the fork point too, and wait in B's queue for A, which
/// is down. Then A starts again: each queue delivers its branch to the
/// other server, which takes it in (its parents, X and the branch before,
/// are known). Two branches of 20 events each now hang from X, each
/// event of one concurrent with every event of the other. alice's next
/// event on A names both branch tips as parents: the merge.
async fn fork() -> Forked {
    let mut a = TestServer::start_federating().await;
    let mut b = TestServer::start_federating().await;
    let c = TestServer::start_federating().await;
    let alice = Client::register_on_weft(&a, "alice").await;
    let bob = Client::register_on_weft(&b, "bob").await;
    let carol = Client::register_on_weft(&c, "carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Fork", "topic": "before the fork" }))
        .await;
    for i in 0..10 {
        alice.send_text(&room, &format!("c{i}"), &format!("common {i}")).await;
    }
    let (status, body) = bob
        .join(&room, &format!("server_name={}", enc(a.server_name().as_str())))
        .await;
    assert_eq!(status, StatusCode::OK, "bob joins: {body}");
    // Power for bob (to change the name in his branch).
    let (status, mut levels) = alice.state(&room, "m.room.power_levels", "").await;
    assert_eq!(status, StatusCode::OK, "{levels}");
    levels["users"][&bob.user_id] = json!(50);
    let levels_id = alice.put_state(&room, "m.room.power_levels", "", &levels).await;
    sees_all(&bob, &room, &[levels_id], 20).await;
    // B holds the whole history before the partition (paging back on B
    // later must not ask A, which may be down).
    let before = bob.page_back_all(&room, 100).await;
    assert_eq!(before.first().map(|e| e["type"].clone()), Some(json!("m.room.create")));
    let x = bob.send_text(&room, "x", "the fork point").await;
    sees_all(&alice, &room, std::slice::from_ref(&x), 20).await;

    // A's branch, while B is down.
    b.server.take().expect("B runs").shutdown().await;
    let mut a_branch = Vec::new();
    for i in 0..20 {
        let id = if i == 10 {
            alice
                .put_state(&room, "m.room.topic", "", &json!({ "topic": "set on A's branch" }))
                .await
        } else {
            alice
                .send_text(&room, &format!("a{i}"), &format!("A's branch {i}"))
                .await
        };
        a_branch.push(id);
    }
    a.server.take().expect("A runs").shutdown().await;

    // B's branch, while A is down (and B never saw A's).
    b.restart().await;
    let bob = on(&b, &bob);
    let mut b_branch = Vec::new();
    for i in 0..20 {
        let id = if i == 10 {
            bob.put_state(&room, "m.room.name", "", &json!({ "name": "set on B's branch" }))
                .await
        } else {
            bob.send_text(&room, &format!("b{i}"), &format!("B's branch {i}")).await
        };
        b_branch.push(id);
    }

    // Both back: the queues deliver the branches.
    a.restart().await;
    let alice = on(&a, &alice);
    sees_all(&alice, &room, &b_branch, 100).await;
    sees_all(&bob, &room, &a_branch, 100).await;

    // The merge: alice's next event names both tips.
    let merge = alice.send_text(&room, "merge", "after the merge").await;
    let merge_event = a
        .services()
        .storage
        .event(&ruma::EventId::parse(&merge).unwrap())
        .await
        .unwrap()
        .expect("A holds its merge");
    let mut prev: Vec<String> = merge_event.pdu.prev_events.iter().map(|p| p.to_string()).collect();
    prev.sort();
    let mut tips = vec![a_branch.last().unwrap().clone(), b_branch.last().unwrap().clone()];
    tips.sort();
    assert_eq!(prev, tips, "the merge's parents are the tips of both branches");
    sees_all(&bob, &room, std::slice::from_ref(&merge), 20).await;
    // Both state changes survive the merge, on both servers.
    for client in [&alice, &bob] {
        let (_, topic) = client.state(&room, "m.room.topic", "").await;
        assert_eq!(topic["topic"], "set on A's branch", "{}: {topic}", client.base);
        let (_, name) = client.state(&room, "m.room.name", "").await;
        assert_eq!(name["name"], "set on B's branch", "{}: {name}", client.base);
    }

    // C joins after the merge: all of the fork is history to it.
    let (status, body) = carol
        .join(&room, &format!("server_name={}", enc(a.server_name().as_str())))
        .await;
    assert_eq!(status, StatusCode::OK, "carol joins: {body}");
    membership_is(DEADLINE, &alice, &room, &carol.user_id, "join").await;
    Forked {
        a,
        b,
        c,
        room,
        alice,
        bob,
        carol,
        a_branch,
        b_branch,
        merge,
    }
}

/// 5. C pages back (10 at a time, so pages end inside the fork) and gets
/// every event of both branches once, in an order of the DAG, the same
/// events as A and B hold, in A's order but for the order among
/// concurrent events of equal depth; and the state at events of each
/// branch is that branch's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_server_backfills_both_branches_of_a_fork() {
    let f = fork().await;
    let on_a = f.alice.page_back_all(&f.room, 50).await;
    let on_b = f.bob.page_back_all(&f.room, 50).await;
    let on_c = f.carol.page_back_all(&f.room, 10).await;

    for (what, events, server) in [("A", &on_a, &f.a), ("B", &on_b, &f.b), ("C", &on_c, &f.c)] {
        let twice = duplicate_ids(events);
        assert!(twice.is_empty(), "{what}: events twice: {twice:#?}");
        assert_eq!(
            events.first().map(|e| e["type"].clone()),
            Some(json!("m.room.create")),
            "{what}'s history reaches the creation"
        );
        assert_dag_order(&format!("{what}'s /messages"), events, &parents(server, events).await);
        let ids = event_ids(events);
        for id in f.a_branch.iter().chain(&f.b_branch).chain([&f.merge]) {
            assert!(ids.contains(id), "{what}'s history holds {id}");
        }
    }
    // The same events everywhere.
    let sorted = |events: &[Value]| {
        let mut ids = event_ids(events);
        ids.sort();
        ids
    };
    assert_eq!(sorted(&on_c), sorted(&on_a), "C holds what A holds");
    assert_eq!(sorted(&on_b), sorted(&on_a), "B holds what A holds");
    // The branches interleave by depth: the order is A's but for the order
    // of events of equal depth.
    let depth_of = |server: &TestServer, events: &[Value]| {
        let server = server.services().clone();
        let ids = event_ids(events);
        async move {
            let mut depths = Vec::new();
            for id in ids {
                let event = server
                    .storage
                    .event(&ruma::EventId::parse(&id).unwrap())
                    .await
                    .unwrap()
                    .unwrap();
                depths.push((event.pdu.depth, id));
            }
            depths
        }
    };
    let c_depths = depth_of(&f.c, &on_c).await;
    let a_depths = depth_of(&f.a, &on_a).await;
    let by_depth = |mut v: Vec<(u64, String)>| {
        v.sort();
        v
    };
    // C backfilled all of it: concurrent events come in the /backfill
    // walk's order, (depth, event ID) ascending, whatever order A or B
    // received them in (docs/history.md).
    assert_eq!(
        c_depths,
        by_depth(c_depths.clone()),
        "C orders its backfilled history by depth, then event ID"
    );
    assert!(
        c_depths.windows(2).any(|w| w[0].0 == w[1].0),
        "the fork gives events of equal depth (else the order above proves nothing): {c_depths:?}"
    );
    assert_eq!(
        by_depth(c_depths.clone()),
        by_depth(a_depths.clone()),
        "C's order is A's up to events of equal depth"
    );
    let differences = order_differences(&on_c, &on_a);
    eprintln!(
        "C's order against A's: {} of {} places differ (concurrent events of equal depth){}",
        differences.len(),
        on_c.len(),
        if differences.is_empty() {
            String::new()
        } else {
            format!(": {differences:#?}")
        }
    );
    // Contents as A has them.
    let by_id: HashMap<String, &Value> = on_a
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap().to_owned(), e))
        .collect();
    for event in &on_c {
        let id = event["event_id"].as_str().unwrap();
        for field in ["type", "sender", "state_key", "content", "origin_server_ts"] {
            assert_eq!(event[field], by_id[id][field], "{field} of {id} on C and on A");
        }
    }
    let messages = message_bodies(&on_c);
    for i in 0..20 {
        if i != 10 {
            for branch in ["A's", "B's"] {
                let text = format!("{branch} branch {i}");
                assert_eq!(messages.iter().filter(|m| **m == text).count(), 1, "{text:?} once on C");
            }
        }
    }

    // The state at an event of each branch is that branch's own: at the
    // last event of A's branch the topic is A's and the name the old one;
    // at B's, the other way round.
    for (tip, topic, name) in [
        (f.a_branch.last().unwrap(), "set on A's branch", "Fork"),
        (f.b_branch.last().unwrap(), "before the fork", "set on B's branch"),
    ] {
        let ctx = f
            .carol
            .ok(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/context/{}?limit=0", enc(&f.room), enc(tip)),
                None,
            )
            .await;
        let state = ctx["state"].as_array().cloned().unwrap_or_default();
        let content = |kind: &str, field: &str| {
            state
                .iter()
                .find(|e| e["type"] == kind)
                .map(|e| e["content"][field].clone())
        };
        assert_eq!(
            content("m.room.topic", "topic"),
            Some(json!(topic)),
            "topic at {tip} on C: {ctx}"
        );
        assert_eq!(
            content("m.room.name", "name"),
            Some(json!(name)),
            "name at {tip} on C: {ctx}"
        );
    }
}

/// 6. A room shared by A and B, with history from both; C joins (through
/// A); then A, the server C asks first for history (in the room longest),
/// goes down. C's /messages still gets all of it, from B; C's metrics
/// show any failed request was to A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_asks_the_next_server_when_the_first_choice_is_down() {
    let mut a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let c = TestServer::start_federating_with(|config| {
        config.metrics_listen = Some(format!("127.0.0.1:{}", common::free_port()).parse().unwrap());
    })
    .await;
    let metrics_url = format!("http://{}/metrics", c.config.metrics_listen.unwrap());
    let alice = Client::register_on_weft(&a, "alice").await;
    let bob = Client::register_on_weft(&b, "bob").await;
    let carol = Client::register_on_weft(&c, "carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Two holders" }))
        .await;
    for i in 0..10 {
        alice.send_text(&room, &format!("a{i}"), &format!("alice {i}")).await;
    }
    let (status, body) = bob
        .join(&room, &format!("server_name={}", enc(a.server_name().as_str())))
        .await;
    assert_eq!(status, StatusCode::OK, "bob joins: {body}");
    // B fills in what came before its join while A is up.
    bob.page_back_all(&room, 100).await;
    // History from both servers, one after the other (no fork).
    let mut want = (0..10).map(|i| format!("alice {i}")).collect::<Vec<_>>();
    for round in 0..3 {
        let mut ids = Vec::new();
        for i in 0..20 {
            let text = format!("alice {round}.{i}");
            ids.push(alice.send_text(&room, &format!("a{round}.{i}"), &text).await);
            want.push(text);
        }
        sees_all(&bob, &room, &ids, 50).await;
        let mut ids = Vec::new();
        for i in 0..20 {
            let text = format!("bob {round}.{i}");
            ids.push(bob.send_text(&room, &format!("b{round}.{i}"), &text).await);
            want.push(text);
        }
        sees_all(&alice, &room, &ids, 50).await;
    }
    alice
        .put_state(&room, "m.room.topic", "", &json!({ "topic": "late topic" }))
        .await;

    // C joins through A, and B knows of it (B answers only servers in the
    // room).
    let (status, body) = carol
        .join(&room, &format!("server_name={}", enc(a.server_name().as_str())))
        .await;
    assert_eq!(status, StatusCode::OK, "carol joins: {body}");
    membership_is(DEADLINE, &bob, &room, &carol.user_id, "join").await;
    let on_a = alice.page_back_all(&room, 100).await;

    // A goes down; C pages back.
    a.server.take().expect("A runs").shutdown().await;
    let started = Instant::now();
    let on_c = carol.page_back_all(&room, 30).await;
    eprintln!(
        "C paged back {} events in {:.1} s with A down",
        on_c.len(),
        started.elapsed().as_secs_f64()
    );
    let on_b = bob.page_back_all(&room, 100).await;
    assert_same_timeline("C's history against B's", &on_c, &on_b);
    assert_same_timeline("C's history against A's (before A went down)", &on_c, &on_a);
    assert_eq!(message_bodies(&on_c), want, "every message once, in order");
    assert_dag_order("C's /messages", &on_c, &parents(&c, &on_c).await);

    let metrics = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let a_failures = value(&format!(
        "weft_backfill_failures_total{{server=\"{}\"}}",
        a.server_name()
    ));
    let b_failures = value(&format!(
        "weft_backfill_failures_total{{server=\"{}\"}}",
        b.server_name()
    ));
    // C asks A first, and A fails; unless another request of C's to A
    // failed since A went down (C then backs off from A and asks B first,
    // which is as right).
    let errors = value("weft_backfill_requests_total{outcome=\"error\"}");
    assert!(
        errors == 0.0 || a_failures >= 1.0,
        "a failed request was to A: {metrics}"
    );
    assert_eq!(b_failures, 0.0, "B never failed: {metrics}");
    assert!(
        value("weft_backfill_requests_total{outcome=\"events\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("weft_backfill_events_total") >= on_c.len() as f64 - 10.0,
        "{metrics}"
    );
}
