//! The outbound federation queue survives kill -9: the real `weft` binary
//! queues events for a peer that is down (the hostile test server of
//! `common::hostile`, refusing `/send`), is killed, restarted, killed again
//! while retrying, and restarted once the peer is back: the peer gets every
//! queued event, exactly once, in order, and nothing it had already.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use common::{enc, hostile::Hostile};
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName};
use serde_json::{Value, json};
use weft::config::Config;

type Weft = common::process::WeftProcess;

impl Weft {
    async fn call(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base())).json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn send_text(&self, token: &str, room: &OwnedRoomId, txn: &str, text: &str) -> OwnedEventId {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    enc(room.as_str())
                ),
                Some(token),
                &json!({ "msgtype": "m.text", "body": text }),
            )
            .await;
        assert_eq!(status, 200, "send {text}: {body}");
        body["event_id"].as_str().unwrap().try_into().unwrap()
    }

    /// What is queued for `destination` in the server's database (weft
    /// must not be running).
    async fn queued_for(&self, destination: &OwnedServerName) -> Vec<OwnedEventId> {
        assert!(self.child.is_none(), "read the queue of a stopped server only");
        let config = Config {
            data_dir: self.data.clone(),
            database_url: self.database_url.clone(),
            ..Config::default()
        };
        let storage = weft::storage::open(&config)
            .await
            .expect("open the killed server's database");
        storage
            .queued_pdus(destination, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }
}

/// Event IDs the peer acknowledged, each with how many distinct
/// transactions carried it (a transaction retried under the same ID
/// counts once: that is what transaction IDs are for).
fn delivered(hostile: &Hostile) -> BTreeMap<OwnedEventId, usize> {
    let mut txns_seen = HashSet::new();
    let mut counts = BTreeMap::new();
    for txn in hostile.transactions().into_iter().filter(|t| t.acknowledged) {
        if !txns_seen.insert((txn.origin.clone(), txn.txn_id.clone())) {
            continue;
        }
        for id in txn.event_ids {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// The events of refused transactions, in the order they were offered.
fn refused(hostile: &Hostile) -> Vec<OwnedEventId> {
    hostile
        .transactions()
        .into_iter()
        .filter(|t| !t.acknowledged)
        .flat_map(|t| t.event_ids)
        .collect()
}

/// The order in which the peer first acknowledged each event.
fn delivery_order(hostile: &Hostile) -> Vec<OwnedEventId> {
    let mut seen = HashSet::new();
    hostile
        .transactions()
        .into_iter()
        .filter(|t| t.acknowledged)
        .flat_map(|t| t.event_ids)
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

async fn wait_for(what: &str, weft: &Weft, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; weft's log:\n{}",
            weft.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_survive_kill_9_and_arrive_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = Hostile::start().await;
    let mut weft = Weft::new(dir.path());
    weft.log_filter = "info,weft=debug,ruma_state_res=warn".to_owned();
    weft.start().await;

    let (status, body) = weft
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/register",
            None,
            &json!({ "username": "alice", "password": "secret", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, body) = weft
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&token),
            &json!({ "preset": "public_chat" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room: OwnedRoomId = body["room_id"].as_str().unwrap().try_into().unwrap();
    let server_name: OwnedServerName = weft.server_name().try_into().unwrap();
    hostile.join(&server_name, &room, "peer").await;

    // While the peer is up, events reach it.
    let mut early = Vec::new();
    for i in 0..3 {
        early.push(
            weft.send_text(&token, &room, &format!("u{i}"), &format!("up {i}"))
                .await,
        );
    }
    wait_for("the early events", &weft, Duration::from_secs(30), || {
        let got = delivered(&hostile);
        early.iter().all(|id| got.contains_key(id))
    })
    .await;

    // The peer goes down (it refuses /send); Alice goes on talking.
    hostile.set_behaviour(|b| b.accept_transactions = false);
    let mut queued = Vec::new();
    for i in 0..30 {
        queued.push(
            weft.send_text(&token, &room, &format!("d{i}"), &format!("while the peer is down {i}"))
                .await,
        );
    }
    // weft tried (so it knows of them) and failed: they are queued, not
    // delivered.
    wait_for("a refused delivery attempt", &weft, Duration::from_secs(30), || {
        refused(&hostile).iter().any(|id| queued.contains(id))
    })
    .await;
    weft.kill_9();
    let got = delivered(&hostile);
    assert!(
        queued.iter().all(|id| !got.contains_key(id)),
        "nothing was delivered while the peer was down"
    );
    let on_disk = weft.queued_for(&hostile.name).await;
    assert_eq!(
        on_disk, queued,
        "the queue on disk holds exactly the undelivered events, in order"
    );

    // Restarted with the peer still down: weft picks the queue up from disk
    // (a new refused attempt), and is killed again while retrying.
    let refused_before = hostile.transactions().iter().filter(|t| !t.acknowledged).count();
    weft.start().await;
    wait_for(
        "a delivery attempt after the restart",
        &weft,
        Duration::from_secs(30),
        || hostile.transactions().iter().filter(|t| !t.acknowledged).count() > refused_before,
    )
    .await;
    weft.kill_9();
    assert_eq!(weft.queued_for(&hostile.name).await, queued, "still all queued");

    // The peer comes back, then weft: everything arrives.
    hostile.set_behaviour(|b| b.accept_transactions = true);
    weft.start().await;
    wait_for("every queued event", &weft, Duration::from_secs(60), || {
        let got = delivered(&hostile);
        queued.iter().all(|id| got.contains_key(id))
    })
    .await;
    // Give a duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let got = delivered(&hostile);
    for id in early.iter().chain(&queued) {
        assert_eq!(got.get(id), Some(&1), "{id} delivered exactly once: {got:?}");
    }
    let order: Vec<OwnedEventId> = delivery_order(&hostile)
        .into_iter()
        .filter(|id| queued.contains(id))
        .collect();
    assert_eq!(order, queued, "delivered in the order they were sent");
    // The peer holds them all, as sent.
    for id in &queued {
        let event = hostile.event(id).expect("held by the peer");
        assert_eq!(event["room_id"], room.as_str());
    }

    for txn in hostile.transactions() {
        eprintln!(
            "transaction {} from {}: {} PDUs, {}",
            txn.txn_id,
            txn.origin,
            txn.event_ids.len(),
            if txn.acknowledged { "acknowledged" } else { "refused" }
        );
    }

    // Nothing left in the queue.
    weft.kill_9();
    assert!(weft.queued_for(&hostile.name).await.is_empty(), "the queue is empty");
}
