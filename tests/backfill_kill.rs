//! kill -9 in the middle of backfill: a weft (the real binary, "the
//! joiner") joins a room with a long history held by another weft ("the
//! host"), pages back through it with `/messages` — each page fetched with
//! `/backfill` and written in one transaction — and is killed with SIGKILL
//! as soon as a write transaction is seen open in its database while those
//! requests are in flight (a write of the backfill, nearly always), three
//! times, restarted on the same data directory and database each time. Then the whole history pages back
//! on the joiner as on the host: every event once, in the host's order, no
//! gap; the state of backfilled events and the room's current state are
//! right, `/sync` works, and the room still carries messages both ways.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use common::{TestServer, enc};
use reqwest::Method;
use serde_json::{Value, json};

/// Messages in the host's room (with state changes among them).
const MESSAGES: usize = 700;
/// The state changes: before which message, what.
const TOPICS: [usize; 3] = [90, 330, 610];
const CAROL_JOINS: usize = 200;
const CAROL_LEAVES: usize = 480;
/// How many times the joiner is killed while paging back.
const KILLS: usize = 3;

type Joiner = common::process::WeftProcess;

impl Joiner {
    fn client(&self, token: &str) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base(),
            token: token.to_owned(),
        }
    }
}

/// A logged-in user of either server, by URL (the joiner is no
/// `TestServer`).
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn try_call(&self, method: Method, path: &str, body: Option<&Value>) -> reqwest::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self
            .try_call(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(status, 200, "{method} {path}: {value}");
        value
    }

    fn messages_path(room: &str, from: Option<&str>, limit: usize) -> String {
        let from = from.map(|t| format!("&from={}", enc(t))).unwrap_or_default();
        format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}{from}",
            enc(room)
        )
    }

    /// One page back from `from` (the end when `None`).
    async fn page(&self, room: &str, from: Option<&str>, limit: usize) -> Value {
        self.ok(Method::GET, &Self::messages_path(room, from, limit), None)
            .await
    }

    /// Every event of the room, paging back 50 at a time, oldest first.
    async fn whole_history(&self, room: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from: Option<String> = None;
        for _ in 0..200 {
            let page = self.page(room, from.as_deref(), 50).await;
            events.extend(page["chunk"].as_array().unwrap().iter().cloned());
            match page["end"].as_str() {
                Some(end) => from = Some(end.to_owned()),
                None => {
                    events.reverse();
                    return events;
                }
            }
        }
        panic!("pagination did not end");
    }

    async fn send_text(&self, room: &str, txn: &str, text: &str) -> String {
        let body = self
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
                Some(&json!({ "msgtype": "m.text", "body": text })),
            )
            .await;
        body["event_id"].as_str().unwrap().to_owned()
    }

    /// The room's current state: (type, state key) → event ID.
    async fn current_state(&self, room: &str) -> HashMap<(String, String), String> {
        let state = self
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
                None,
            )
            .await;
        state
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    (
                        e["type"].as_str().unwrap().to_owned(),
                        e["state_key"].as_str().unwrap().to_owned(),
                    ),
                    e["event_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The topic in the state at `event_id` (by `/context`).
    async fn topic_at(&self, room: &str, event_id: &str) -> Option<String> {
        let ctx = self
            .ok(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/context/{}?limit=0",
                    enc(room),
                    enc(event_id)
                ),
                None,
            )
            .await;
        ctx["state"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "m.room.topic")
            .map(|e| e["content"]["topic"].as_str().unwrap().to_owned())
    }
}

/// Tells whether a write transaction is open in the joiner's database,
/// without disturbing it (more than a few microseconds).
enum WriteProbe {
    /// weft's writes take SQLite's write lock at their start (`BEGIN
    /// IMMEDIATE`): a `BEGIN IMMEDIATE` that finds it taken sees one.
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL transaction gets an ID at its first write.
    Postgres(tokio_postgres::Client),
}

impl WriteProbe {
    async fn open(joiner: &Joiner) -> WriteProbe {
        match &joiner.database_url {
            None => {
                let conn = rusqlite::Connection::open_with_flags(
                    joiner.data.join("weft.db"),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
                )
                .unwrap();
                conn.busy_timeout(Duration::ZERO).unwrap();
                WriteProbe::Sqlite(conn)
            }
            Some(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                WriteProbe::Postgres(client)
            }
        }
    }

    /// What is being written now, if anything.
    async fn writing(&self) -> Option<String> {
        match self {
            WriteProbe::Sqlite(conn) => match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => {
                    conn.execute_batch("ROLLBACK").unwrap();
                    None
                }
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                    Some("a write transaction (SQLite's write lock is taken)".to_owned())
                }
                Err(e) => panic!("probing the joiner's database: {e}"),
            },
            WriteProbe::Postgres(client) => {
                let rows = client
                    .query(
                        "SELECT state || ', open for ' || (now() - xact_start)::text || ', at: ' \
                         || left(query, 100) FROM pg_stat_activity \
                         WHERE datname = current_database() AND pid <> pg_backend_pid() \
                         AND backend_xid IS NOT NULL",
                        &[],
                    )
                    .await
                    .unwrap();
                rows.first()
                    .map(|row| format!("a write transaction ({})", row.get::<_, String>(0)))
            }
        }
    }
}

/// The room on the host: `MESSAGES` messages by Alice, the topic set
/// three times, Carol joining and leaving.
async fn build_history(host: &TestServer) -> (Client, String) {
    let alice = host.register("alice").await;
    let carol = host.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "A long history" }))
        .await;
    for i in 0..MESSAGES {
        if TOPICS.contains(&i) {
            alice
                .ok(
                    Method::PUT,
                    &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
                    Some(&json!({ "topic": format!("topic at {i}") })),
                )
                .await;
        }
        if i == CAROL_JOINS {
            assert_eq!(carol.join(&room).await.0, 200);
        }
        if i == CAROL_LEAVES {
            carol.leave(&room).await;
        }
        let (status, body) = alice.send_text(&room, &format!("m{i}"), &format!("message {i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let client = Client {
        http: host.http.clone(),
        base: host.base(),
        token: alice.token.clone(),
    };
    (client, room)
}

/// The topic a message was sent under.
fn topic_before(message: usize) -> Option<String> {
    TOPICS
        .iter()
        .rev()
        .find(|&&at| at <= message)
        .map(|at| format!("topic at {at}"))
}

/// Pages back from the end, 50 at a time, until `depth` events have come
/// (filling gaps from the host on the way); returns the token to go on from.
async fn page_back_to(bob: &Client, room: &str, depth: usize) -> String {
    let mut seen = 0;
    let mut from: Option<String> = None;
    while seen < depth {
        let page = bob.page(room, from.as_deref(), 50).await;
        seen += page["chunk"].as_array().unwrap().len();
        from = Some(
            page["end"]
                .as_str()
                .unwrap_or_else(|| panic!("history ended after {seen} events, before {depth}"))
                .to_owned(),
        );
    }
    from.unwrap()
}

/// Several `/messages` requests at once from `from`, each crossing the gap
/// below what the joiner holds (so each waits on a fill from the host);
/// then SIGKILL as soon as a write of the joiner's is seen open. Returns
/// what was being written when it was killed, if anything was.
async fn kill_while_paging(joiner: &mut Joiner, bob: &Client, room: &str, from: &str) -> Option<String> {
    let probe = WriteProbe::open(joiner).await;
    // Writes already under way (a join's, say) are not what we are after.
    let settle = Instant::now() + Duration::from_secs(5);
    while probe.writing().await.is_some() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut requests = Vec::new();
    for limit in [50, 100, 30, 80] {
        let (bob, path) = (bob.clone(), Client::messages_path(room, Some(from), limit));
        // Errors are expected: the server dies under them.
        requests.push(tokio::spawn(
            async move { bob.try_call(Method::GET, &path, None).await },
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        if let Some(what) = probe.writing().await {
            break Some(what);
        }
        if Instant::now() > deadline || requests.iter().all(|r| r.is_finished()) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    joiner.kill_9();
    drop(probe);
    for request in requests {
        request.abort();
    }
    seen
}

/// Where two lists of event IDs first differ, and what is duplicated or
/// missing: the message of a failed comparison.
fn difference(joiner: &[String], host: &[String]) -> String {
    let first = joiner.iter().zip(host).position(|(a, b)| a != b);
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for id in joiner {
        *counts.entry(id).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let on_joiner: HashSet<&String> = joiner.iter().collect();
    let missing: Vec<(usize, &String)> = host
        .iter()
        .enumerate()
        .filter(|(_, id)| !on_joiner.contains(id))
        .collect();
    let on_host: HashSet<&String> = host.iter().collect();
    let extra: Vec<&String> = joiner.iter().filter(|id| !on_host.contains(id)).collect();
    format!(
        "joiner has {} events, host {}; first difference at {first:?}; duplicated: {duplicated:?}; \
         missing (host index, ID): {:?}{}; unknown to the host: {extra:?}",
        joiner.len(),
        host.len(),
        &missing[..missing.len().min(20)],
        if missing.len() > 20 { " …" } else { "" }
    )
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_survives_kill_9_mid_write_without_duplicates_or_gaps() {
    let started = Instant::now();
    let host = TestServer::start_federating().await;
    let (alice, room) = build_history(&host).await;
    eprintln!("history built in {:?}", started.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let mut joiner = Joiner::new(dir.path());
    joiner.start().await;
    let (status, body) = joiner
        .client("")
        .try_call(
            Method::POST,
            "/_matrix/client/v3/register",
            Some(&json!({ "username": "bob", "password": "secret", "auth": { "type": "m.login.dummy" } })),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let bob_id = body["user_id"].as_str().unwrap().to_owned();
    let token = body["access_token"].as_str().unwrap().to_owned();
    joiner
        .client(&token)
        .ok(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(host.server_name().as_str())
            ),
            Some(&json!({})),
        )
        .await;

    // Page back a little further each time (into history not yet held),
    // then fire several requests at the gap and kill mid-write.
    let mut kills = Vec::new();
    for cycle in 0..KILLS {
        let bob = joiner.client(&token);
        let from = page_back_to(&bob, &room, 120 + cycle * 200).await;
        let seen = kill_while_paging(&mut joiner, &bob, &room, &from).await;
        eprintln!(
            "kill {} at {:?}: {}",
            cycle + 1,
            started.elapsed(),
            seen.as_deref().unwrap_or("between writes (none seen open)")
        );
        kills.push(seen);
        joiner.start().await;
    }
    eprintln!("killed {KILLS} times by {:?}", started.elapsed());

    // The whole history, as the host has it: once each, in order.
    let bob = joiner.client(&token);
    let on_host = alice.whole_history(&room).await;
    let on_joiner = bob.whole_history(&room).await;
    let (host_ids, joiner_ids) = (ids(&on_host), ids(&on_joiner));
    assert!(
        joiner_ids == host_ids,
        "the joiner's history is the host's: {}\njoiner's log:\n{}",
        difference(&joiner_ids, &host_ids),
        joiner.log_text()
    );
    assert_eq!(on_joiner[0]["type"], "m.room.create", "back to the room's creation");
    let bodies: Vec<&str> = on_joiner
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("message {i}")).collect();
    assert_eq!(bodies, expected, "every message once, in order");
    // Paging again fetches nothing new and gives the same.
    assert_eq!(ids(&bob.whole_history(&room).await), host_ids, "a second walk");

    // The state of backfilled events: the topic each message was sent under.
    for i in [0, 89, 90, 250, 329, 330, 480, 609, 610, MESSAGES - 1] {
        let event = on_joiner
            .iter()
            .find(|e| e["content"]["body"] == format!("message {i}"))
            .unwrap();
        let id = event["event_id"].as_str().unwrap();
        assert_eq!(bob.topic_at(&room, id).await, topic_before(i), "topic at message {i}");
    }
    // The current state is the host's.
    assert_eq!(bob.current_state(&room).await, alice.current_state(&room).await);

    // /sync works and shows the room joined, with its state.
    let sync = bob.ok(Method::GET, "/_matrix/client/v3/sync?timeout=0", None).await;
    let joined = &sync["rooms"]["join"][&room];
    assert!(joined.is_object(), "the room in /sync: {sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // The room still works both ways.
    let from_bob = bob.send_text(&room, "after", "after the kills").await;
    let from_alice = {
        let alice = &alice;
        common::eventually(Duration::from_secs(30), "the host sees Bob's message", || {
            newest_is(alice, &room, &from_bob)
        })
        .await;
        alice.send_text(&room, "reply", "welcome back").await
    };
    common::eventually(Duration::from_secs(30), "the joiner gets Alice's reply", || {
        newest_is(&bob, &room, &from_alice)
    })
    .await;
    let member = ("m.room.member".to_owned(), bob_id);
    assert_eq!(
        bob.current_state(&room).await.get(&member),
        alice.current_state(&room).await.get(&member)
    );
    let log = joiner.log_text();
    assert!(!log.contains("panicked"), "the joiner panicked:\n{log}");
    eprintln!("kills: {kills:?}; done in {:?}", started.elapsed());

    // An incremental /sync from before those two messages has them: a new
    // event comes after every position a /sync has handed out.
    let sync = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&since)),
            None,
        )
        .await;
    let timeline: Vec<&str> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(
        timeline,
        [from_bob.as_str(), from_alice.as_str()],
        "/sync since {since} (taken before they were sent) shows the two new messages: {sync}"
    );
}

/// Whether `event_id` is the newest event of the room in `client`'s view.
async fn newest_is(client: &Client, room: &str, event_id: &str) -> Result<(), String> {
    let page = client.page(room, None, 1).await;
    (page["chunk"][0]["event_id"] == event_id)
        .then_some(())
        .ok_or_else(|| page.to_string())
}
