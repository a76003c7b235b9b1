//! Several weft processes serving one server over one PostgreSQL database
//! (issue "Several weft processes"; `src/cluster/`): what one process
//! writes (events, account data, to-device messages, receipts, typing,
//! presence) reaches the requests parked on another at once, also after
//! the connection that hears the other processes was cut; duties move to a
//! survivor; a process killed during sends loses nothing acknowledged.
//! Runs where the suite
//! runs on PostgreSQL (`WEFT_TEST_POSTGRES` set, as `tools/test` does in
//! its second pass).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::process::WeftProcess;
use serde_json::{Value, json};

/// A user of one of the processes.
#[derive(Clone)]
struct User {
    http: reqwest::Client,
    base: String,
    token: String,
    user_id: String,
}

impl User {
    async fn register(process: &WeftProcess, name: &str) -> User {
        let http = reqwest::Client::new();
        let body: Value = http
            .post(format!("{}/_matrix/client/v3/register", process.base()))
            .json(&json!({ "username": name, "password": "secret", "auth": { "type": "m.login.dummy" } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        User {
            http,
            base: process.base(),
            token: body["access_token"].as_str().expect("registered").to_owned(),
            user_id: body["user_id"].as_str().unwrap().to_owned(),
        }
    }

    /// The same user (the same access token), on another process.
    fn on(&self, process: &WeftProcess) -> User {
        User {
            http: self.http.clone(),
            base: process.base(),
            token: self.token.clone(),
            user_id: self.user_id.clone(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
        self.call(
            reqwest::Method::GET,
            &format!("/_matrix/client/v3/sync?timeout={timeout_ms}{since}"),
            None,
        )
        .await
    }

    /// A new public room of the user's; its ID.
    async fn create_public_room(&self) -> String {
        self.call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({ "preset": "public_chat" })),
        )
        .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Joins `room`; the answer.
    async fn join(&self, room: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{room}"),
            Some(json!({})),
        )
        .await
    }

    /// Where the user says whether they type in `room`.
    fn typing_path(&self, room: &str) -> String {
        format!("/_matrix/client/v3/rooms/{room}/typing/{}", common::enc(&self.user_id))
    }

    /// Sends `count` messages one after another (transaction IDs and texts
    /// `<name><i>`); their IDs.
    async fn send_many(&self, room: &str, name: &str, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..count {
            ids.push(self.send(room, &format!("{name}{i}"), &format!("{name} {i}")).await);
        }
        ids
    }

    async fn send(&self, room: &str, txn: &str, text: &str) -> String {
        let body = self
            .call(
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
                Some(json!({ "msgtype": "m.text", "body": text })),
            )
            .await;
        body["event_id"].as_str().unwrap().to_owned()
    }
}

/// Processes A and B of one server over one database (their directory
/// lives as long as the value); `None`, the test skipped, where the suite
/// runs on SQLite.
async fn two_processes() -> Option<(tempfile::TempDir, WeftProcess, WeftProcess)> {
    two_processes_with(&[]).await
}

/// [`two_processes`], both with the `WEFT_*` variables `env`.
async fn two_processes_with(env: &[(&str, &str)]) -> Option<(tempfile::TempDir, WeftProcess, WeftProcess)> {
    if std::env::var("WEFT_TEST_POSTGRES").is_err() {
        eprintln!("skipped: runs in the PostgreSQL pass of tools/test (WEFT_TEST_POSTGRES)");
        return None;
    }
    weft::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    for process in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(process)).unwrap();
    }
    let mut a = WeftProcess::new(&dir.path().join("a"));
    a.instance_name = Some("a".to_owned());
    a.env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    a.start().await;
    let mut b = a.sibling(&dir.path().join("b"));
    b.instance_name = Some("b".to_owned());
    b.env = a.env.clone();
    b.start().await;
    Some((dir, a, b))
}

/// Alice on A and Bob on B, both in a public room of Alice's.
async fn alice_and_bob_in_a_room(a: &WeftProcess, b: &WeftProcess) -> (User, User, String) {
    let alice = User::register(a, "alice").await;
    let bob = User::register(b, "bob").await;
    let room = alice.create_public_room().await;
    bob.join(&room).await;
    (alice, bob, room)
}

/// A hostile server whose user `peer` joined `room` through `a`; the
/// cluster's server name and the room's ID, parsed.
async fn a_peer_in(
    a: &WeftProcess,
    room: &str,
) -> (common::hostile::Hostile, ruma::OwnedServerName, ruma::OwnedRoomId) {
    let peer = common::hostile::Hostile::start().await;
    let server_name: ruma::OwnedServerName = a.server_name().try_into().unwrap();
    let room_id: ruma::OwnedRoomId = room.try_into().unwrap();
    peer.join(&server_name, &room_id, "peer").await;
    (peer, server_name, room_id)
}

/// The IDs of the timeline events of `room` in a `/sync` answer.
fn timeline(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The `type`s of a list of events.
fn types(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

/// Long-polls `user`'s `/sync` from `since` while `send` runs, and returns
/// what it answered (with how long it took): woken by the send, the answer
/// has the event long before the poll's 30 s would have run out.
async fn woken_by(
    user: &User,
    since: &str,
    send: impl std::future::Future<Output = String>,
) -> (String, Value, Duration) {
    let started = Instant::now();
    let (sync, event_id) = tokio::join!(user.sync(Some(since), 30_000), async {
        // Parked first (a send before would be seen at once, too).
        tokio::time::sleep(Duration::from_millis(300)).await;
        send.await
    });
    (event_id, sync, started.elapsed())
}

/// The IDs of the room's newest 50 events, newest first, as `user` pages
/// them.
async fn history(user: &User, room: &str) -> Vec<String> {
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50");
    user.call(reqwest::Method::GET, &path, None).await["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_on_one_process_wakes_a_sync_on_another() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };

    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;

    // Bob's sync parked on B, Alice sending on A; then the other way.
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (sent, sync, took) = woken_by(&bob, &since, alice.send(&room, "t1", "from A")).await;
    eprintln!("B's sync answered {took:?} after it started (a send on A 300 ms in)");
    assert!(timeline(&sync, &room).contains(&sent), "B's sync has A's event: {sync}");
    let since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (sent, sync, took) = woken_by(&alice, &since, bob.send(&room, "t2", "from B")).await;
    eprintln!("A's sync answered {took:?} after it started (a send on B 300 ms in)");
    assert!(timeline(&sync, &room).contains(&sent), "A's sync has B's event: {sync}");

    // Account data and to-device messages written through A reach Bob's
    // sync on B (their positions are the database's; their heads move).
    let bob_on_a = bob.on(&a);
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (_, sync, took) = woken_by(&bob, &since, async {
        let path = format!(
            "/_matrix/client/v3/user/{}/account_data/org.example.cluster",
            common::enc(&bob.user_id)
        );
        bob_on_a
            .call(reqwest::Method::PUT, &path, Some(json!({ "set": "on A" })))
            .await;
        String::new()
    })
    .await;
    eprintln!("B's sync answered {took:?} after it started (account data set on A 300 ms in)");
    assert!(
        types(&sync["account_data"]["events"]).contains(&"org.example.cluster".to_owned()),
        "B's sync has the account data set on A: {sync}"
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (_, sync, took) = woken_by(&bob, &since, async {
        alice
            .call(
                reqwest::Method::PUT,
                "/_matrix/client/v3/sendToDevice/org.example.ping/ping1",
                Some(json!({ "messages": { bob.user_id.as_str(): { "*": { "from": "A" } } } })),
            )
            .await;
        String::new()
    })
    .await;
    eprintln!("B's sync answered {took:?} after it started (a to-device message sent on A 300 ms in)");
    assert!(
        types(&sync["to_device"]["events"]).contains(&"org.example.ping".to_owned()),
        "B's sync has the to-device message sent on A: {sync}"
    );

    // The connection B hears A on is cut: B opens it again, reads the
    // head again and wakes its waiters; nothing is missed, only delayed.
    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (sent, sync, took) = woken_by(&bob, &since, async {
        common::run_as_admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN weft'");
        alice.send(&room, "t3", "while B is not listening").await
    })
    .await;
    eprintln!("B's sync answered {took:?} after it started (listening cut, then a send on A)");
    assert!(
        timeline(&sync, &room).contains(&sent),
        "B's sync has A's event sent while B was not listening: {sync}"
    );

    // Both processes page the room alike.
    let (on_a, on_b) = (history(&alice, &room).await, history(&bob, &room).await);
    assert_eq!(on_a, on_b, "both processes show the same history");
    assert!(on_a.len() >= 6, "create, joins, messages: {on_a:?}");
    assert_ne!(alice.user_id, bob.user_id);
}

/// Each process caches who is joined to a room (the users an event's push
/// rules are evaluated for, the servers it goes to) and users' push rules:
/// a join through B must reach A's cache, or Carol, who joined on B, would
/// never be notified of what Alice sends on A; and so must a push rule
/// Carol sets through B, or A would go on notifying her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_push_rule_on_one_process_are_known_to_the_others_push_rules() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };

    let alice = User::register(&a, "alice").await;
    let carol = User::register(&b, "carol").await;
    let room = alice.create_public_room().await;
    // A reads (and keeps) the room's members: Alice alone.
    alice.send(&room, "t1", "before Carol").await;
    let since = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Carol joins through B; A hears of it (Alice's sync on A shows it).
    let (_, sync, _) = woken_by(&alice, &since, async {
        carol.join(&room).await["room_id"].as_str().unwrap().to_owned()
    })
    .await;
    let joins = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str())
        .count();
    assert_eq!(joins, 1, "A's sync shows Carol's join: {sync}");

    // A message sent on A notifies Carol (the default rules notify every
    // message): A evaluated her rules.
    alice.send(&room, "t2", "after Carol joined").await;
    let counts = &carol.sync(None, 0).await["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(counts["notification_count"], 1, "Carol is notified once: {counts}");

    // Carol mutes the room through B: A, which keeps her rules since it
    // evaluated them, drops its copy, and notifies her no more.
    carol
        .call(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/pushrules/global/room/{}",
                room.replace('!', "%21").replace(':', "%3A")
            ),
            Some(json!({ "actions": [] })),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send(&room, "t3", "while the room is muted").await;
    let counts = &carol.sync(None, 0).await["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(
        counts["notification_count"], 1,
        "muted on B, not notified by A: {counts}"
    );
}

/// Two processes writing to one room at the same moment: each event is
/// placed on what the other wrote (the room's lock is the database's),
/// so the current state keeps every state event of both — without the
/// lock, each would build on the state it read, and the last to write
/// would drop the other's keys — and both show one history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_writing_one_room_keep_every_state_event() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };

    let alice = User::register(&a, "alice").await;
    let room = alice.create_public_room().await;
    let on = [alice.on(&a), alice.on(&b)];
    const EACH: usize = 24;
    let set = |user: &User, key: String| {
        let path = format!("/_matrix/client/v3/rooms/{room}/state/org.example.key/{key}");
        let user = user.clone();
        async move { user.call(reqwest::Method::PUT, &path, Some(json!({ "k": key }))).await }
    };
    // Four in flight through each process.
    let mut sends = Vec::new();
    for (p, user) in on.iter().enumerate() {
        for lane in 0..4 {
            let (user, set) = (user, &set);
            sends.push(async move {
                for i in (lane..EACH).step_by(4) {
                    set(user, format!("{p}-{i}")).await;
                }
            });
        }
    }
    futures_util::future::join_all(sends).await;

    for user in &on {
        let state = user
            .call(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/state"),
                None,
            )
            .await;
        let mut keys: Vec<String> = state
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "org.example.key")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        let mut expected: Vec<String> = (0..2)
            .flat_map(|p| (0..EACH).map(move |i| format!("{p}-{i}")))
            .collect();
        expected.sort();
        assert_eq!(
            keys, expected,
            "{}'s current state has every key of both processes",
            user.base
        );
    }
    let (on_a, on_b) = (history(&on[0], &room).await, history(&on[1], &room).await);
    assert_eq!(on_a, on_b, "both processes show the same history");
    let mut unique = on_a.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), on_a.len(), "no event twice: {on_a:?}");
}

/// An event another process redacts is served redacted here too, though
/// this process had it cached (the redacting statement notifies the
/// others, which drop their copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_on_one_process_reaches_the_others_cache() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };

    let alice = User::register(&a, "alice").await;
    let room = alice.create_public_room().await;
    let secret = alice.send(&room, "t1", "a secret").await;
    let alice_on_b = alice.on(&b);
    let path = format!("/_matrix/client/v3/rooms/{room}/event/{secret}");
    // B reads (and caches) it.
    let before = alice_on_b.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(before["content"]["body"], "a secret");

    alice
        .call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/redact/{secret}/r1"),
            Some(json!({ "reason": "oops" })),
        )
        .await;
    // A's answer came after the redaction was stored; B hears of it within
    // milliseconds (5 s is the bound of this test, not an expectation).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = alice_on_b.call(reqwest::Method::GET, &path, None).await;
        if after["content"].as_object().is_some_and(|c| c.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "B still serves the redacted event: {after}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ephemeral events (typing, receipts) of `room` in a `/sync` answer.
fn ephemeral<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

/// Typing and read receipts are kept in the database, at positions it
/// gives: who types on A is seen by a `/sync` parked on B at once (typing
/// was in the memory of the process that heard it, and B never saw it),
/// and so is a receipt sent through A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_cross_processes() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let event = alice.send(&room, "t1", "read me").await;
    let typing_path = alice.typing_path(&room);

    let since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (_, sync, took) = woken_by(&bob, &since, async {
        alice
            .call(
                reqwest::Method::PUT,
                &typing_path,
                Some(json!({ "typing": true, "timeout": 30000 })),
            )
            .await;
        String::new()
    })
    .await;
    eprintln!("B's sync answered {took:?} after it started (typing on A 300 ms in)");
    let typing = ephemeral(&sync, &room, "m.typing").unwrap_or_else(|| panic!("B sees A's typing: {sync}"));
    assert_eq!(typing["content"]["user_ids"], json!([alice.user_id]));

    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (_, sync, took) = woken_by(&bob, &since, async {
        alice
            .call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"),
                Some(json!({})),
            )
            .await;
        String::new()
    })
    .await;
    eprintln!("B's sync answered {took:?} after it started (a receipt on A 300 ms in)");
    let receipt = ephemeral(&sync, &room, "m.receipt").unwrap_or_else(|| panic!("B sees A's receipt: {sync}"));
    assert!(
        receipt["content"][&event]["m.read"][&alice.user_id]["ts"].is_u64(),
        "{receipt}"
    );

    // Stopping on A is seen on B too; B's own view of the room agrees.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (_, sync, _) = woken_by(&bob, &since, async {
        alice
            .call(reqwest::Method::PUT, &typing_path, Some(json!({ "typing": false })))
            .await;
        String::new()
    })
    .await;
    let typing = ephemeral(&sync, &room, "m.typing").unwrap_or_else(|| panic!("B sees A stop: {sync}"));
    assert_eq!(typing["content"]["user_ids"], json!([]));
    let full = bob.sync(None, 0).await;
    let receipt = ephemeral(&full, &room, "m.receipt").expect("the receipt in a full sync on B");
    assert!(receipt["content"][&event]["m.read"][&alice.user_id].is_object());
}

/// The `m.presence` event of `user` in a `/sync` answer.
fn presence_of<'a>(sync: &'a Value, user: &str) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["sender"] == user)
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_crosses_processes() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };
    let (alice, bob, _room) = alice_and_bob_in_a_room(&a, &b).await;
    let status_path = |user: &User| format!("/_matrix/client/v3/presence/{}/status", common::enc(&user.user_id));

    // Set on A, a /sync parked on B wakes with it (another change, such as
    // Bob's own, may answer first: the poll goes on from there).
    let mut since = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (_, mut sync, took) = woken_by(&bob, &since, async {
        alice
            .call(
                reqwest::Method::PUT,
                &status_path(&alice),
                Some(json!({ "presence": "online", "status_msg": "lunch" })),
            )
            .await;
        String::new()
    })
    .await;
    eprintln!("B's sync answered {took:?} after it started (presence set on A 300 ms in)");
    for _ in 0..5 {
        if presence_of(&sync, &alice.user_id).is_some() {
            break;
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
        sync = bob.sync(Some(&since), 10_000).await;
    }
    let seen = presence_of(&sync, &alice.user_id).unwrap_or_else(|| panic!("B's sync shows A's presence: {sync}"));
    assert_eq!(seen["content"]["status_msg"], "lunch", "{seen}");
    assert_eq!(seen["content"]["presence"], "online", "{seen}");

    // Read through B; a full sync on B shows it too.
    let read = bob.call(reqwest::Method::GET, &status_path(&alice), None).await;
    assert_eq!(
        (read["presence"].as_str(), read["status_msg"].as_str()),
        (Some("online"), Some("lunch"))
    );
    let full = bob.sync(None, 0).await;
    assert_eq!(
        presence_of(&full, &alice.user_id).unwrap()["content"]["status_msg"],
        "lunch"
    );

    // Bob went online by syncing on B: Alice sees it on A; a change made
    // through the other process is applied to what it set (the status
    // message set on A stays when Alice syncs through B as unavailable).
    let on_a = alice.sync(None, 0).await;
    assert_eq!(
        presence_of(&on_a, &bob.user_id).unwrap()["content"]["presence"],
        "online",
        "{on_a}"
    );
    alice
        .on(&b)
        .call(
            reqwest::Method::GET,
            "/_matrix/client/v3/sync?timeout=0&set_presence=unavailable",
            None,
        )
        .await;
    let read = alice.call(reqwest::Method::GET, &status_path(&alice), None).await;
    assert_eq!(
        (read["presence"].as_str(), read["status_msg"].as_str()),
        (Some("unavailable"), Some("lunch"))
    );
}

/// Event ID → how many acknowledged transactions (distinct IDs) carried it.
fn delivered(peer: &common::hostile::Hostile) -> std::collections::HashMap<String, usize> {
    let mut txns = std::collections::HashSet::new();
    let mut counts = std::collections::HashMap::new();
    for txn in peer.transactions().into_iter().filter(|t| t.acknowledged) {
        if txns.insert(txn.txn_id.clone()) {
            for id in txn.event_ids {
                *counts.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Sending to another server is one process's duty at a time: events sent
/// through both processes reach a peer once each (both processes read the
/// one queue, and each sent it all); when the process sending to the
/// peer dies with events queued, the other takes the destination over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_a_peer_once_and_a_dead_senders_destination_is_taken_over() {
    let Some((_dir, mut a, b)) = two_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let (peer, _, _) = a_peer_in(&a, &room).await;

    // Through both processes at once.
    let (from_a, from_b) = tokio::join!(alice.send_many(&room, "a", 10), bob.send_many(&room, "b", 10));
    let sent: Vec<String> = from_a.into_iter().chain(from_b).collect();
    wait_until("every event at the peer", Duration::from_secs(30), || {
        let got = delivered(&peer);
        sent.iter().all(|id| got.contains_key(id))
    })
    .await;
    // Time for any second sender to show itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = delivered(&peer);
    let twice: Vec<_> = sent.iter().filter(|id| got[*id] > 1).collect();
    assert!(
        twice.is_empty(),
        "events the peer got more than once: {twice:?} of {got:?}"
    );

    // Idle, the duty runs out (10 s): the next event's process takes it.
    tokio::time::sleep(Duration::from_secs(11)).await;
    peer.set_behaviour(|b| b.accept_transactions = false);
    let stranded = alice.send(&room, "a-down", "queued while the peer is down").await;
    wait_until("A trying the peer", Duration::from_secs(10), || {
        peer.transactions()
            .iter()
            .any(|t| !t.acknowledged && t.event_ids.iter().any(|id| id.as_str() == stranded))
    })
    .await;
    // A dies backing off, its duty held; the peer is back.
    a.kill_9();
    peer.set_behaviour(|b| b.accept_transactions = true);
    let took = wait_until("B sending what A left", Duration::from_secs(40), || {
        delivered(&peer).contains_key(&stranded)
    })
    .await;
    eprintln!("the peer had A's event {took:?} after A was killed");
    assert_eq!(delivered(&peer)[&stranded], 1);
    let _ = b;
}

/// Each process runs under a name of its own (`instance_name`), held in
/// the database while it runs: a second process started under a name in
/// use is refused (it would take the other's notifications for its own),
/// and a killed process restarted under its name comes back once its
/// hold has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_in_use_is_refused_and_a_killed_process_restarts_under_its_name() {
    let Some((dir, mut a, _b)) = two_processes().await else {
        return;
    };
    let alice = User::register(&a, "alice").await;
    let room = alice.create_public_room().await;

    std::fs::create_dir_all(dir.path().join("twin")).unwrap();
    let mut twin = a.sibling(&dir.path().join("twin"));
    twin.instance_name = a.instance_name.clone();
    let refused = twin.try_start().await.expect_err("a second process named a");
    assert!(
        refused.contains("another weft process runs as instance_name \"a\""),
        "{refused}"
    );

    a.kill_9();
    let started = Instant::now();
    a.start().await;
    eprintln!(
        "a, killed, served again {:?} after its restart began",
        started.elapsed()
    );
    let alice = User {
        base: a.base(),
        ..alice
    };
    alice.send(&room, "t1", "after the restart").await;
    assert!(
        a.log_text().contains("the name is held"),
        "the restart waited for the killed process's hold"
    );
}

/// Sending to an application service is one process's duty at a time too:
/// events sent through both processes reach the service once each (each
/// process's sender sent batches of the shared queue, often the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_an_application_service_once() {
    // The service: every transaction's ID and event IDs.
    type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<String>)>>>;
    let received: Received = Default::default();
    let app = {
        let received = received.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let received = received.clone();
            async move {
                let path = req.uri().path().to_owned();
                let bytes = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap();
                if let Some(txn) = path.strip_prefix("/_matrix/app/v1/transactions/") {
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                    let ids = body["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                        .collect();
                    received.lock().unwrap().push((txn.to_owned(), ids));
                }
                axum::Json(json!({}))
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let registration = tempfile::tempdir().unwrap();
    let path = registration.path().join("watcher.yaml");
    std::fs::write(
        &path,
        format!(
            "id: watcher\nurl: http://{addr}/\nas_token: as-token\nhs_token: hs-token\n\
             sender_localpart: watcher\nrate_limited: false\n\
             namespaces:\n  users: []\n  aliases: []\n  rooms:\n    - regex: '!.*'\n      exclusive: false\n"
        ),
    )
    .unwrap();
    let Some((_dir, a, b)) = two_processes_with(&[("WEFT_APP_SERVICE_CONFIG_FILES", path.to_str().unwrap())]).await
    else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let (from_a, from_b) = tokio::join!(alice.send_many(&room, "a", 10), bob.send_many(&room, "b", 10));
    let sent: Vec<String> = from_a.into_iter().chain(from_b).collect();
    // Every request counts: the service accepts each, so none is a retry
    // (two processes sending one batch under one ID is one too many).
    let counts = || {
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for (_, ids) in received.lock().unwrap().iter() {
            for id in ids {
                *counts.entry(id.clone()).or_default() += 1;
            }
        }
        counts
    };
    wait_until("every event at the service", Duration::from_secs(30), || {
        let got = counts();
        sent.iter().all(|id| got.contains_key(id))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = counts();
    let twice: Vec<_> = sent.iter().filter(|id| got[*id] > 1).collect();
    assert!(
        twice.is_empty(),
        "events the service got more than once: {twice:?} of {got:?}"
    );
}

/// Three processes, a user on each, all sending to one room at once while
/// a `/sync` on the third collects: every acknowledged event arrives
/// exactly once, in the order every process pages the room in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_sending_at_once_give_every_event_once_in_one_order() {
    let Some((dir, a, b)) = two_processes().await else {
        return;
    };
    std::fs::create_dir_all(dir.path().join("c")).unwrap();
    let mut c = a.sibling(&dir.path().join("c"));
    c.instance_name = Some("c".to_owned());
    c.start().await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let carol = User::register(&c, "carol").await;
    let room = alice.create_public_room().await;
    for user in [&bob, &carol] {
        user.join(&room).await;
    }
    let since = carol.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Carol's client on C: long-polls with a timeline big enough that no
    // answer is cut short, until it has every message.
    const EACH: usize = 15;
    let collector = {
        let carol = carol.clone();
        let room = room.clone();
        tokio::spawn(async move {
            let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A200%7D%7D%7D";
            let mut since = since;
            let mut seen: Vec<String> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.len() < 3 * EACH && Instant::now() < deadline {
                let path = format!("/_matrix/client/v3/sync?timeout=5000&since={since}&filter={filter}");
                let sync = carol.call(reqwest::Method::GET, &path, None).await;
                let timeline = &sync["rooms"]["join"][&room]["timeline"];
                assert_ne!(timeline["limited"], true, "no answer is cut short: {sync}");
                seen.extend(
                    timeline["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|e| e["type"] == "m.room.message")
                        .map(|e| e["event_id"].as_str().unwrap().to_owned()),
                );
                since = sync["next_batch"].as_str().unwrap().to_owned();
            }
            seen
        })
    };
    let (from_a, from_b, from_c) = tokio::join!(
        alice.send_many(&room, "a", EACH),
        bob.send_many(&room, "b", EACH),
        carol.send_many(&room, "c", EACH)
    );
    let sent: std::collections::HashSet<String> = from_a.into_iter().chain(from_b).chain(from_c).collect();
    let seen = collector.await.unwrap();
    let unique: std::collections::HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice in Carol's syncs: {seen:?}");
    assert_eq!(unique, sent, "every acknowledged event, and nothing else");

    // Each process pages the room back in the one order Carol saw.
    for user in [&alice, &bob, &carol] {
        let mut paged: Vec<String> = history(user, &room).await;
        paged.truncate(3 * EACH);
        paged.reverse();
        assert_eq!(paged, seen, "{} pages the order the sync gave", user.user_id);
    }
}

/// The messages of the room (event ID, body), oldest first, as `user`
/// pages the whole room back.
async fn all_messages(user: &User, room: &str) -> Vec<(String, String)> {
    let mut messages = Vec::new();
    let mut from = String::new();
    loop {
        let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100{from}");
        let page = user.call(reqwest::Method::GET, &path, None).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        messages.extend(chunk.iter().filter(|e| e["type"] == "m.room.message").map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["content"]["body"].as_str().unwrap().to_owned(),
            )
        }));
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = format!("&from={end}"),
            _ => break,
        }
    }
    messages.reverse();
    messages
}

/// A client sending `count` messages through `first`, and through `then`
/// once `first` fails (a load balancer taking the dead process out): a
/// failed send is sent again under its transaction ID. The acknowledged
/// (body, event ID)s (counted in `progress` as they come), and the first
/// message sent again through `then`.
async fn send_through(
    (first, then): (User, User),
    room: String,
    name: &'static str,
    count: usize,
    progress: Arc<AtomicUsize>,
) -> (Vec<(String, String)>, Option<usize>) {
    let mut acknowledged = Vec::new();
    let mut switched = None;
    let mut via = &first;
    for i in 0..count {
        let (txn, body) = (format!("{name}{i}"), format!("{name} {i}"));
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        loop {
            let sent = via
                .http
                .put(format!("{}{path}", via.base))
                .bearer_auth(&via.token)
                .json(&json!({ "msgtype": "m.text", "body": body }))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    let answer: Value = response.json().await.unwrap();
                    acknowledged.push((body.clone(), answer["event_id"].as_str().unwrap().to_owned()));
                    progress.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                other => {
                    assert!(std::ptr::eq(via, &first), "{name}: the survivor failed too: {other:?}");
                    via = &then;
                    switched = Some(i);
                }
            }
        }
    }
    (acknowledged, switched)
}

/// `kill -9` of one of three processes while users send through all of
/// them: every acknowledged event is in the room once (a send retried
/// through a survivor under its transaction ID is not made twice), the
/// survivors keep serving and page the room alike, and the killed process
/// serves the same room once restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_during_sends_loses_nothing_acknowledged() {
    let Some((dir, a, mut b)) = two_processes().await else {
        return;
    };
    std::fs::create_dir_all(dir.path().join("c")).unwrap();
    let mut c = a.sibling(&dir.path().join("c"));
    c.instance_name = Some("c".to_owned());
    c.start().await;
    let alice = User::register(&a, "alice").await;
    let bob = User::register(&b, "bob").await;
    let carol = User::register(&c, "carol").await;
    let room = alice.create_public_room().await;
    for user in [&bob, &carol] {
        user.join(&room).await;
    }

    const EACH: usize = 40;
    let progress: [Arc<AtomicUsize>; 3] = Default::default();
    // Each client goes over to another process when its own fails.
    let clients = [(&alice, &c, "a"), (&bob, &a, "b"), (&carol, &a, "c")];
    let senders: Vec<_> = clients
        .into_iter()
        .zip(&progress)
        .map(|((user, survivor, name), progress)| {
            tokio::spawn(send_through(
                (user.clone(), user.on(survivor)),
                room.clone(),
                name,
                EACH,
                progress.clone(),
            ))
        })
        .collect();
    // B dies a quarter of the way through Bob's sends.
    wait_until("Bob's first sends through B", Duration::from_secs(30), || {
        progress[1].load(Ordering::SeqCst) >= EACH / 4
    })
    .await;
    b.kill_9();
    let mut acknowledged = Vec::new();
    let mut switched = Vec::new();
    for sender in senders {
        let (acked, switch) = sender.await.unwrap();
        acknowledged.extend(acked);
        switched.push(switch);
    }
    assert_eq!(acknowledged.len(), 3 * EACH, "every message acknowledged in the end");
    assert_eq!(switched[0], None, "Alice's A lived");
    assert_eq!(switched[2], None, "Carol's C lived");
    let bob_switched = switched[1].expect("Bob's client went to A");
    assert!(
        bob_switched < EACH,
        "B died during Bob's sends (at message {bob_switched})"
    );
    eprintln!("Bob's client went over to A at message {bob_switched} of {EACH}");

    // Each once, by the ID it was acknowledged with, on both survivors.
    let on_a = all_messages(&alice, &room).await;
    let on_c = all_messages(&carol, &room).await;
    assert_eq!(on_a, on_c, "the survivors page the room alike");
    let mut bodies: Vec<&str> = on_a.iter().map(|(_, body)| body.as_str()).collect();
    bodies.sort();
    let before = bodies.len();
    bodies.dedup();
    assert_eq!(bodies.len(), before, "no message stored twice");
    let held: std::collections::HashMap<&str, &str> =
        on_a.iter().map(|(id, body)| (body.as_str(), id.as_str())).collect();
    for (body, id) in &acknowledged {
        assert_eq!(
            held.get(body.as_str()),
            Some(&id.as_str()),
            "{body} held as acknowledged"
        );
    }
    assert_eq!(on_a.len(), acknowledged.len(), "nothing that was not acknowledged");

    // B, restarted, serves the room as the others do, and takes sends.
    b.start().await;
    assert_eq!(all_messages(&bob, &room).await, on_a);
    bob.send(&room, "after", "after the restart").await;
    assert_eq!(all_messages(&carol, &room).await.len(), on_a.len() + 1);
}

/// A real Synapse in a room of the cluster (it knows the server by A's
/// federation port; B sends through the destination's one duty): every
/// event sent through either process reaches it once, in the order the
/// processes page the room; its user's message reaches users syncing on
/// both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synapse_in_a_room_of_the_cluster() {
    use common::synapse::{Synapse, duplicate_ids, event_ids};
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let synapse = Synapse::start().await;
    let sam = synapse.user("sam").await;
    let query = format!("server_name={}", common::enc(&a.server_name()));
    let (status, body) = sam.join(&room, &query).await;
    assert_eq!(status, reqwest::StatusCode::OK, "Synapse joins through A: {body}");

    // Through both processes at once.
    let (from_a, from_b) = tokio::join!(alice.send_many(&room, "a", 10), bob.send_many(&room, "b", 10));
    let sent: std::collections::HashSet<String> = from_a.into_iter().chain(from_b).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_synapse = loop {
        let events = sam.page_back_all(&room, 100).await;
        let messages: Vec<_> = events.into_iter().filter(|e| e["type"] == "m.room.message").collect();
        let got: std::collections::HashSet<String> = event_ids(&messages).into_iter().collect();
        if sent.is_subset(&got) {
            break messages;
        }
        assert!(
            Instant::now() < deadline,
            "Synapse has {} of the {} messages",
            got.len(),
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(duplicate_ids(&on_synapse).is_empty(), "once each on Synapse");
    let mut on_a: Vec<String> = history(&alice, &room).await;
    on_a.retain(|id| sent.contains(id));
    on_a.reverse();
    let synapse_order: Vec<String> = event_ids(&on_synapse)
        .into_iter()
        .filter(|id| sent.contains(id))
        .collect();
    assert_eq!(synapse_order, on_a, "Synapse orders the messages as A pages them");
    assert_eq!(
        on_a.len(),
        sent.len(),
        "A pages every message (the newest 50 hold them all)"
    );

    // Synapse's user, to users syncing on either process.
    let since_a = alice.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let since_b = bob.sync(None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let from_sam = sam.send_text(&room, "s1", "from Synapse").await;
    for (user, since) in [(&alice, since_a), (&bob, since_b)] {
        let mut since = since;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sync = user.sync(Some(&since), 5_000).await;
            if timeline(&sync, &room).contains(&from_sam) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never saw Synapse's message",
                user.user_id
            );
            since = sync["next_batch"].as_str().unwrap().to_owned();
        }
    }
}

/// Typing a process heard of, that process killed before the timeout ran
/// out: another process ends it (a `/sync` on B is told Alice stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_left_by_a_killed_process_is_ended_by_another() {
    let Some((_dir, mut a, b)) = two_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let typing_path = alice.typing_path(&room);
    alice
        .call(
            reqwest::Method::PUT,
            &typing_path,
            Some(json!({ "typing": true, "timeout": 1000 })),
        )
        .await;
    let full = bob.sync(None, 0).await;
    let typing = ephemeral(&full, &room, "m.typing").expect("B sees Alice typing");
    assert_eq!(typing["content"]["user_ids"], json!([alice.user_id]));
    let killed = Instant::now();
    a.kill_9();
    let mut since = full["next_batch"].as_str().unwrap().to_owned();
    loop {
        let sync = bob.sync(Some(&since), 5_000).await;
        if let Some(typing) = ephemeral(&sync, &room, "m.typing")
            && typing["content"]["user_ids"] == json!([])
        {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "B never said Alice stopped");
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
    eprintln!(
        "B told its sync Alice stopped {:?} after A was killed",
        killed.elapsed()
    );
}

/// A self-destructing message stored through A, A killed before its time:
/// B prunes it (every process looks at the earliest expiry every few
/// seconds; storage expires each event once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_destructing_message_of_a_killed_process_is_pruned_by_another() {
    let Some((_dir, mut a, b)) = two_processes_with(&[("WEFT_EPHEMERAL_MESSAGES", "true")]).await else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body = alice
        .call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/sd1"),
            Some(json!({ "msgtype": "m.text", "body": "gone soon", "org.matrix.self_destruct_after": now + 1500 })),
        )
        .await;
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    a.kill_9();
    let killed = Instant::now();
    let path = format!("/_matrix/client/v3/rooms/{room}/event/{event_id}");
    loop {
        let event = bob.call(reqwest::Method::GET, &path, None).await;
        if event["content"].as_object().is_some_and(|c| c.is_empty()) {
            break;
        }
        assert_eq!(event["content"]["body"], "gone soon", "{event}");
        assert!(killed.elapsed() < Duration::from_secs(20), "B never pruned it: {event}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "B pruned it {:?} after A was killed (due 1.5 s after the send)",
        killed.elapsed()
    );
}

/// Pushes are one process's duty: a push stored through A, which A keeps
/// trying while the gateway fails, is sent by B once A is killed (B takes
/// the duty when A's runs out), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_of_a_killed_process_are_sent_by_another() {
    let Some((_dir, mut a, b)) = two_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let mut gateway = common::push_gateway::PushGateway::start(json!({})).await;
    gateway.set_down(true);
    alice
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(gateway.pusher("key1")),
        )
        .await;
    // Bob's message goes through A: A queues the push and sends it.
    let event_id = bob.on(&a).send(&room, "p1", "ping").await;
    loop {
        let push = gateway.next("A trying the gateway").await;
        if push.event_id() == Some(event_id.as_str()) {
            break;
        }
    }
    a.kill_9();
    let killed = Instant::now();
    gateway.set_down(false);
    loop {
        let push = tokio::time::timeout(Duration::from_secs(40), gateway.next("B sending A's push"))
            .await
            .expect("B never sent the push");
        if push.accepted && push.event_id() == Some(event_id.as_str()) {
            break;
        }
    }
    eprintln!("the gateway had the push {:?} after A was killed", killed.elapsed());
    if let Some(push) = gateway.next_within(Duration::from_secs(2)).await
        && push.event_id() == Some(event_id.as_str())
    {
        panic!("pushed twice: {}", push.body);
    }
}

/// One process at a time fills a room's gap (the duty `backfill <room>`):
/// `/messages` through A and through B at once, both paging back across
/// the same gap, ask the peer for its history once — the second waits
/// for the first's fill, then finds the gap filled — and both give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_filled_by_one_process_at_a_time() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let (peer, server_name, room_id) = a_peer_in(&a, &room).await;
    let mallory = peer.user("peer");
    // The peer gives only the newest missing event: the rest is a gap,
    // which `/backfill` fills, slowly.
    peer.set_behaviour(|b| {
        b.missing_events_limit = Some(1);
        b.backfill_delay = Duration::from_millis(1500);
    });
    let mut in_gap = Vec::new();
    for i in 0..5 {
        let message = peer.message(&room_id, &mallory, &format!("in the gap {i}"));
        peer.commit(&room_id, &message);
        in_gap.push(message.id.to_string());
    }
    let last = peer.message(&room_id, &mallory, "after the gap");
    peer.commit(&room_id, &last);
    let (status, answer) = peer
        .send_transaction(&server_name, "gap", std::slice::from_ref(&last.pdu))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][last.id.as_str()], json!({}), "{answer}");
    assert!(
        peer.seen_at("/_matrix/federation/v1/backfill/").is_empty(),
        "nobody paged back yet"
    );

    let (through_a, through_b) = tokio::join!(history(&alice, &room), history(&bob, &room));
    for (process, history) in [("A", &through_a), ("B", &through_b)] {
        let missing: Vec<_> = in_gap.iter().filter(|id| !history.contains(id)).collect();
        assert!(missing.is_empty(), "{process} pages back without {missing:?}");
    }
    assert_eq!(through_a, through_b, "one order");
    let asked = peer.seen_at("/_matrix/federation/v1/backfill/");
    assert_eq!(
        asked.len(),
        1,
        "the peer was asked for the gap more than once: {asked:?}"
    );
}

/// A sliding sync connection whose requests go to either process: its
/// state is in the database. A `pos` of A goes on on B; a request waiting
/// on A is woken by a send on B; a retried `pos` is answered again on the
/// other process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_sync_connection_moves_between_processes() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let body = json!({
        "conn_id": "room-list",
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 5 } },
    });
    let ss = |user: &User, pos: Option<&str>, timeout: u64| {
        let query = match pos {
            Some(pos) => format!("?timeout={timeout}&pos={}", common::enc(pos)),
            None => format!("?timeout={timeout}"),
        };
        let (user, path, body) = (user.clone(), format!("{path}{query}"), body.clone());
        async move { user.call(reqwest::Method::POST, &path, Some(body)).await }
    };
    let texts = |answer: &Value| -> Vec<String> {
        answer["rooms"][&room]["timeline"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = ss(&alice, None, 0).await;
    assert_eq!(first["rooms"][&room]["initial"], true, "{first}");
    let pos = first["pos"].as_str().unwrap().to_owned();

    // Waiting on A, woken by Bob's message on B.
    let alice_on_b = alice.on(&b);
    let (answer, _) = tokio::join!(ss(&alice, Some(&pos), 30_000), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        bob.send(&room, "b1", "from b").await
    });
    assert_eq!(texts(&answer), ["from b"], "{answer}");
    // The same pos again, on B: the same message (the first answer may
    // have been lost).
    let retried = ss(&alice_on_b, Some(&pos), 0).await;
    assert_eq!(texts(&retried), ["from b"], "{retried}");
    // And on from B's answer, on A.
    let pos = retried["pos"].as_str().unwrap().to_owned();
    bob.send(&room, "b2", "again").await;
    // (With a timeout: A may hear of B's send a moment after it returns.)
    let next = ss(&alice, Some(&pos), 30_000).await;
    assert_eq!(texts(&next), ["again"], "{next}");
}

/// Alice of the cluster joins a room of another server through process A,
/// with partial state (that server's `/state` down for now). A `/sync`
/// that loads every member, on B, leaves the room out; parked there, it is
/// woken when the full state is in (the resync takes the next position of
/// the events stream, which B hears of) and gets the room as newly joined.
/// A runs the resync: the join starts it there, and B looks for rooms left
/// partial only at its start and once a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_room_completed_reaches_a_sync_parked_on_another_process() {
    let Some((_dir, a, b)) = two_processes().await else {
        return;
    };
    let host = common::hostile::Hostile::start().await;
    host.set_behaviour(|b| b.serve_state = false);
    let room = host.create_room(ruma::RoomVersionId::V11, "creator", &["m1", "m2"], Some("Partial"));
    let alice = User::register(&a, "alice").await;
    alice
        .call(
            reqwest::Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                common::enc(room.as_str()),
                common::enc(host.name.as_str())
            ),
            Some(json!({})),
        )
        .await;
    let alice_on_b = alice.on(&b);
    let first = alice_on_b.sync(None, 0).await;
    assert!(first["rooms"]["join"].get(room.as_str()).is_none(), "partial: {first}");
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    host.set_behaviour(|b| b.serve_state = true);
    for _ in 0..10 {
        let answer = alice_on_b.sync(Some(&since), 30_000).await;
        if let Some(room) = answer["rooms"]["join"].get(room.as_str()) {
            assert_eq!(room["timeline"]["limited"], true, "as newly joined: {room}");
            let members: Vec<&str> = room["state"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["type"] == "m.room.member")
                .filter_map(|e| e["state_key"].as_str())
                .collect();
            for member in ["creator", "m1", "m2"] {
                let user = host.user(member);
                assert!(members.contains(&user.as_str()), "{member}: {room}");
            }
            return;
        }
        // Woken by something else (a timed-out answer is empty).
        let some = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
        assert!(
            some(&answer["presence"]["events"]) || some(&answer["device_lists"]["changed"]),
            "timed out without the room: {answer}"
        );
        since = answer["next_batch"].as_str().unwrap().to_owned();
    }
    panic!("the room never came");
}
