//! weft-sdk-interop: the Rust SDK Element X is built on (matrix-sdk and
//! matrix-sdk-ui) against weft, as Element X uses it: password login,
//! native sliding sync (MSC4186) through `SyncService`, the room list, the
//! timeline (live events, back-pagination to the start of a room, backfill
//! over federation, sending) and end-to-end encryption between two clients.
//!
//! tests/sdk_interop.rs prepares the servers, users and rooms and runs this
//! binary; it exits 0 when every step passed, else 1 with a message saying
//! which step failed and what was seen. Every wait is bounded.
//!
//! Arguments (all `--name value`):
//!   --homeserver URL               alice's and bob's server (client API)
//!   --alice USER --alice-password PW
//!   --bob USER --bob-password PW
//!   --expect-room ROOM=NAME        (repeated) a room alice's room list must
//!                                  show, with that display name
//!   --room ROOM                    a room of alice and bob, on --homeserver
//!   --history TEXT                 (repeated) its earlier messages, oldest first
//!   --live-text TEXT               bob sends it while alice's timeline is open
//!   --send-text TEXT               alice sends it from her timeline
//!   --remote-room ROOM             a room held on another server, that alice
//!                                  joined after its history was written
//!   --remote-history TEXT          (repeated) its earlier messages, oldest first
//!   --remote-homeserver URL --remote-user USER --remote-password PW
//!                                  a user of that other server, who sends
//!   --remote-live-text TEXT        into the remote room while alice watches
//!   --encrypted-room ROOM          an encrypted room of alice and bob
//!   --alice-secret TEXT --bob-secret TEXT
//!                                  what each sends there (the other decrypts)
//!
//! RUST_LOG sets the logging (e.g. `matrix_sdk=debug` shows the requests);
//! the default is warnings and this binary's progress.

#![recursion_limit = "256"]

use std::{collections::HashMap, future::IntoFuture, pin::Pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt};
use matrix_sdk::{
    Client, Room,
    config::RequestConfig,
    ruma::{
        OwnedRoomId, RoomId, TransactionId, api::client::message::send_message_event,
        events::room::message::RoomMessageEventContent,
    },
    sliding_sync::{Version, VersionBuilder},
};
use matrix_sdk_ui::{
    eyeball_im::{Vector, VectorDiff},
    room_list_service::{self, RoomListItem, filters::new_filter_non_left},
    sync_service::{self, SyncService},
    timeline::{RoomExt, Timeline, TimelineItem},
};
use tracing::info;

/// How long one wait (a room appearing, a message arriving) may take.
const WAIT: Duration = Duration::from_secs(30);
/// How long one back-pagination request may take (backfill included).
const PAGINATE: Duration = Duration::from_secs(60);

type Fallible<T> = Result<T, String>;

/// `fut`, or a failure naming `what` once `within` has passed.
async fn bounded<T>(within: Duration, what: &str, fut: impl IntoFuture<Output = T>) -> Fallible<T> {
    tokio::time::timeout(within, fut.into_future())
        .await
        .map_err(|_| format!("{what}: timed out after {within:?}"))
}

struct Args(HashMap<String, Vec<String>>);

impl Args {
    fn parse() -> Fallible<Args> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(name) = args.next() {
            let Some(name) = name.strip_prefix("--") else {
                return Err(format!("unexpected argument {name:?} (want --name value)"));
            };
            let value = args.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.entry(name.to_owned()).or_default().push(value);
        }
        Ok(Args(map))
    }

    fn one(&self, name: &str) -> Fallible<String> {
        match self.0.get(name).map(Vec::as_slice) {
            Some([value]) => Ok(value.clone()),
            Some(_) => Err(format!("--{name} given more than once")),
            None => Err(format!("--{name} is missing")),
        }
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0.get(name).cloned().unwrap_or_default()
    }

    fn room(&self, name: &str) -> Fallible<OwnedRoomId> {
        let value = self.one(name)?;
        RoomId::parse(&value).map_err(|e| format!("--{name} {value}: {e}"))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,weft_sdk_interop=info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = run().await;
    let _ = std::fs::remove_dir_all(store_root());
    match result {
        Ok(()) => println!("[sdk-interop] OK: every step passed"),
        Err(e) => {
            eprintln!("[sdk-interop] FAILED: {e}");
            println!("[sdk-interop] FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// Where this run keeps its clients' stores (removed at exit).
fn store_root() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("weft-sdk-interop-{}", std::process::id()))
}

/// Distinguishes two clients of one user.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn step(text: &str) {
    println!("[sdk-interop] {text}");
    info!("{text}");
}

/// A client of `homeserver` logged in with a password, as Element X logs
/// in: sliding sync discovered from `/versions` (the build fails unless it
/// advertises `org.matrix.simplified_msc3575`).
async fn login(homeserver: &str, user: &str, password: &str, discover: bool) -> Fallible<Client> {
    // Each client its own SQLite stores, under this run's directory.
    let dir = store_root().join(format!("{}-{}", user.replace(['@', ':', '/'], "_"), rand_suffix()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let builder = Client::builder()
        .homeserver_url(homeserver)
        .sqlite_store(&dir, None)
        .request_config(RequestConfig::short_retry())
        .sliding_sync_version_builder(if discover {
            VersionBuilder::DiscoverNative
        } else {
            VersionBuilder::None
        });
    let client = bounded(WAIT, "building the client (GET /versions)", builder.build())
        .await?
        .map_err(|e| format!("building the client for {homeserver} (sliding sync discovered from /versions): {e}"))?;
    if discover && !matches!(client.sliding_sync_version(), Version::Native) {
        return Err(format!(
            "{homeserver}: the client does not use native sliding sync: {:?}",
            client.sliding_sync_version()
        ));
    }
    bounded(
        WAIT,
        "login",
        client
            .matrix_auth()
            .login_username(user, password)
            .initial_device_display_name("weft-sdk-interop"),
    )
    .await?
    .map_err(|e| format!("password login of {user} at {homeserver}: {e}"))?;
    Ok(client)
}

/// A logged-in user with a running `SyncService` (room list and encryption
/// sliding sync connections).
struct Session {
    name: &'static str,
    client: Client,
    sync: SyncService,
}

impl Session {
    async fn start(name: &'static str, homeserver: &str, user: &str, password: &str) -> Fallible<Session> {
        let client = login(homeserver, user, password, true).await?;
        step(&format!(
            "{name}: logged in as {} (device {}), native sliding sync from /versions",
            client.user_id().map(|u| u.to_string()).unwrap_or_default(),
            client.device_id().map(|d| d.to_string()).unwrap_or_default(),
        ));
        let sync = bounded(
            WAIT,
            "building the SyncService",
            SyncService::builder(client.clone()).build(),
        )
        .await?
        .map_err(|e| format!("{name}: SyncService: {e}"))?;
        sync.start().await;
        let session = Session { name, client, sync };
        // The service says Running once its tasks run; the room list's own
        // state machine gets to Running after two good sliding sync answers
        // (Init -> SettingUp -> Running).
        let mut room_list_state = session.sync.room_list_service().state();
        let mut last = room_list_state.get();
        let reached = bounded(WAIT, "room list service reaching Running", async {
            loop {
                session.healthy()?;
                if matches!(last, room_list_service::State::Running) {
                    return Ok(());
                }
                tokio::select! {
                    next = room_list_state.next() => match next {
                        Some(state) => last = state,
                        None => return Err("the room list state stream ended".to_owned()),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        })
        .await;
        match reached {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("{name}: {e}")),
            Err(e) => {
                return Err(format!(
                    "{name}: {e}; last state {last:?}, sync service {:?}",
                    session.sync.state().get()
                ));
            }
        }
        session.healthy()?;
        step(&format!("{name}: SyncService Running, room list service Running"));
        bounded(
            WAIT,
            "e2ee initialisation (device keys upload)",
            session.client.encryption().wait_for_e2ee_initialization_tasks(),
        )
        .await
        .map_err(|e| format!("{name}: {e}"))?;
        Ok(session)
    }

    /// Fails if the sync service has left Running (an error stops it).
    fn healthy(&self) -> Fallible<()> {
        match self.sync.state().get() {
            sync_service::State::Running => Ok(()),
            other => Err(format!(
                "{}: the SyncService is no longer running: {other:?}",
                self.name
            )),
        }
    }

    /// The room list (all_rooms, non-left, as Element X shows it) once it
    /// has every room of `want` with its display name.
    async fn check_room_list(&self, want: &[(OwnedRoomId, String)]) -> Fallible<()> {
        let list = self
            .sync
            .room_list_service()
            .all_rooms()
            .await
            .map_err(|e| format!("{}: all_rooms: {e}", self.name))?;
        let (stream, controller) = list.entries_with_dynamic_adapters(100);
        let _ = controller.set_filter(Box::new(new_filter_non_left()));
        let mut stream = Box::pin(stream);
        let mut entries: Vector<RoomListItem> = Vector::new();
        let describe = |entries: &Vector<RoomListItem>| {
            entries
                .iter()
                .map(|r| format!("{} {:?}", r.room_id(), r.cached_display_name().map(|n| n.to_string())))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let done = bounded(WAIT, "the room list showing the rooms", async {
            loop {
                self.healthy()?;
                let missing: Vec<String> = want
                    .iter()
                    .filter(|(id, name)| {
                        !entries.iter().any(|r| {
                            r.room_id().as_str() == id.as_str()
                                && r.cached_display_name().map(|n| n.to_string()).as_deref() == Some(name)
                        })
                    })
                    .map(|(id, name)| format!("{id} named {name:?}"))
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                tokio::select! {
                    diffs = stream.next() => match diffs {
                        Some(diffs) => for diff in diffs { diff.apply(&mut entries) },
                        None => return Err("the room list stream ended".to_owned()),
                    },
                    // Display names are also computed after the diff that
                    // brought the room; look again now and then.
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        })
        .await;
        match done {
            Ok(Ok(())) => {
                step(&format!("{}: room list shows {}", self.name, describe(&entries)));
                Ok(())
            }
            Ok(Err(e)) => Err(format!("{}: {e}", self.name)),
            Err(e) => Err(format!(
                "{}: {e}: want {:?}; the list shows [{}]",
                self.name,
                want,
                describe(&entries)
            )),
        }
    }

    /// The room (known from sync), subscribed as Element X does when one
    /// opens it, and its live timeline.
    async fn open(&self, room_id: &RoomId) -> Fallible<(Room, TimelineView)> {
        let room = bounded(WAIT, "the room arriving by sync", async {
            loop {
                if let Some(room) = self.client.get_room(room_id) {
                    return room;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .map_err(|e| format!("{}: {room_id}: {e}", self.name))?;
        self.sync.room_list_service().subscribe_to_rooms(&[room_id]).await;
        let timeline = bounded(WAIT, "building the timeline", room.timeline())
            .await
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: timeline of {room_id}: {e}", self.name))?;
        let (items, stream) = timeline.subscribe().await;
        Ok((
            room,
            TimelineView {
                owner: self.name,
                room_id: room_id.to_owned(),
                timeline: Arc::new(timeline),
                items,
                stream: Box::pin(stream),
            },
        ))
    }
}

type Diffs = Vec<VectorDiff<Arc<TimelineItem>>>;

/// A timeline and the items it shows, kept up to date from its stream.
struct TimelineView {
    owner: &'static str,
    room_id: OwnedRoomId,
    timeline: Arc<Timeline>,
    items: Vector<Arc<TimelineItem>>,
    stream: Pin<Box<dyn Stream<Item = Diffs> + Send>>,
}

/// One message of a timeline, as shown.
#[derive(Debug, Clone)]
struct Shown {
    sender: String,
    body: String,
    remote: bool,
    encrypted: bool,
}

impl TimelineView {
    /// The messages shown, oldest first (undecryptable ones as `<UTD>`).
    fn messages(&self) -> Vec<Shown> {
        self.items
            .iter()
            .filter_map(|item| {
                let event = item.as_event()?;
                let body = if let Some(message) = event.content().as_message() {
                    message.body().to_owned()
                } else if event.content().is_unable_to_decrypt() {
                    "<UTD>".to_owned()
                } else {
                    return None;
                };
                Some(Shown {
                    sender: event.sender().to_string(),
                    body,
                    remote: event.is_remote_event(),
                    encrypted: event.encryption_info().is_some(),
                })
            })
            .collect()
    }

    fn describe(&self) -> String {
        let shown: Vec<String> = self
            .messages()
            .iter()
            .map(|m| {
                format!(
                    "{}: {:?}{}",
                    m.sender,
                    m.body,
                    if m.remote { "" } else { " (local echo)" }
                )
            })
            .collect();
        format!("{} messages: [{}]", shown.len(), shown.join(", "))
    }

    /// Takes every update already waiting, without blocking.
    fn drain(&mut self) {
        while let Some(Some(diffs)) = self.stream.next().now_or_never() {
            for diff in diffs {
                diff.apply(&mut self.items);
            }
        }
    }

    /// Applies updates until `done` holds of the messages shown.
    async fn wait_for(&mut self, what: &str, within: Duration, done: impl Fn(&[Shown]) -> bool) -> Fallible<()> {
        let result = tokio::time::timeout(within, async {
            loop {
                self.drain();
                if done(&self.messages()) {
                    return Ok(());
                }
                tokio::select! {
                    diffs = self.stream.next() => match diffs {
                        Some(diffs) => for diff in diffs { diff.apply(&mut self.items) },
                        None => return Err("the timeline stream ended".to_owned()),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "{} in {}: {what}: {e}; {}",
                self.owner,
                self.room_id,
                self.describe()
            )),
            Err(_) => Err(format!(
                "{} in {}: {what}: not within {within:?}; the timeline shows {}",
                self.owner,
                self.room_id,
                self.describe()
            )),
        }
    }

    /// Pages back until the timeline says it reached the room's start.
    async fn paginate_to_start(&mut self) -> Fallible<usize> {
        for round in 1..=200 {
            let timeline = self.timeline.clone();
            let hit_start = bounded(PAGINATE, "paginate_backwards(20)", timeline.paginate_backwards(20))
                .await
                .map_err(|e| format!("{} in {}: {e}; {}", self.owner, self.room_id, self.describe()))?
                .map_err(|e| {
                    format!(
                        "{} in {}: paginate_backwards failed (round {round}): {e}; {}",
                        self.owner,
                        self.room_id,
                        self.describe()
                    )
                })?;
            self.drain();
            if hit_start {
                // The last page's events may still be on their way.
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.drain();
                return Ok(round);
            }
        }
        Err(format!(
            "{} in {}: 200 rounds of back-pagination never reached the start; {}",
            self.owner,
            self.room_id,
            self.describe()
        ))
    }

    /// The messages among `expected`'s that the timeline shows, in order,
    /// must be exactly `expected` (each once, in that order).
    fn check_history(&self, expected: &[String]) -> Fallible<()> {
        let shown: Vec<String> = self
            .messages()
            .into_iter()
            .map(|m| m.body)
            .filter(|body| expected.contains(body))
            .collect();
        if shown == expected {
            return Ok(());
        }
        let mut problems = Vec::new();
        for text in expected {
            match shown.iter().filter(|b| *b == text).count() {
                0 => problems.push(format!("{text:?} missing")),
                1 => {}
                n => problems.push(format!("{text:?} shown {n} times")),
            }
        }
        if problems.is_empty() {
            problems.push("out of order".to_owned());
        }
        Err(format!(
            "{} in {}: the history is not every earlier message once, in order ({}); want {expected:?}; the timeline shows {}",
            self.owner,
            self.room_id,
            problems.join(", "),
            self.describe()
        ))
    }
}

use futures_util::FutureExt as _;

fn has(messages: &[Shown], sender: &str, body: &str) -> bool {
    messages
        .iter()
        .any(|m| m.remote && m.sender == sender && m.body == body)
}

async fn run() -> Fallible<()> {
    let args = Args::parse()?;
    let homeserver = args.one("homeserver")?;
    let room = args.room("room")?;
    let remote_room = args.room("remote-room")?;
    let encrypted_room = args.room("encrypted-room")?;
    let mut expect_rooms = Vec::new();
    for pair in args.all("expect-room") {
        let (id, name) = pair
            .split_once('=')
            .ok_or_else(|| format!("--expect-room {pair:?}: want ROOM=NAME"))?;
        let id = RoomId::parse(id).map_err(|e| format!("--expect-room {id}: {e}"))?;
        expect_rooms.push((id, name.to_owned()));
    }

    // 1. Log in, start the SyncService (native sliding sync) for both.
    step("step 1: password login, SyncService with native sliding sync");
    let alice = Session::start("alice", &homeserver, &args.one("alice")?, &args.one("alice-password")?).await?;
    let bob = Session::start("bob", &homeserver, &args.one("bob")?, &args.one("bob-password")?).await?;
    let alice_id = alice.client.user_id().ok_or("alice has no user id")?.to_string();
    let bob_id = bob.client.user_id().ok_or("bob has no user id")?.to_string();

    // 2. The room list.
    step("step 2: the room list shows alice's rooms with their names");
    alice.check_room_list(&expect_rooms).await?;

    // 3. A local room's timeline: a live message from bob, then back to the
    //    start of the room.
    step("step 3: timeline: a live message, then back-pagination to the start");
    let history = args.all("history");
    let live = args.one("live-text")?;
    let (_, mut alice_view) = alice.open(&room).await?;
    let (bob_room, mut bob_view) = bob.open(&room).await?;
    bob_view
        .timeline
        .send(RoomMessageEventContent::text_plain(live.clone()).into())
        .await
        .map_err(|e| format!("bob: sending into {}: {e}", bob_room.room_id()))?;
    alice_view
        .wait_for(&format!("bob's live message {live:?}"), WAIT, |m| {
            has(m, &bob_id, &live)
        })
        .await?;
    step(&format!("alice: bob's live message arrived: {live:?}"));
    let rounds = alice_view.paginate_to_start().await?;
    let mut with_live = history.clone();
    with_live.push(live.clone());
    alice_view.check_history(&with_live)?;
    step(&format!(
        "alice: {} earlier messages then the live one, in order, once ({rounds} pagination rounds)",
        history.len()
    ));

    // 4. A room held on another server, joined after its history was
    //    written: paging back makes weft backfill it.
    step("step 4: a room held on another server: live over federation, backfilled history");
    let remote_history = args.all("remote-history");
    let remote_live = args.one("remote-live-text")?;
    let remote_user = args.one("remote-user")?;
    let (_, mut remote_view) = alice.open(&remote_room).await?;
    let remote = login(
        &args.one("remote-homeserver")?,
        &remote_user,
        &args.one("remote-password")?,
        false,
    )
    .await?;
    let remote_id = remote.user_id().ok_or("the remote user has no user id")?.to_string();
    let request = send_message_event::v3::Request::new(
        remote_room.clone(),
        TransactionId::new(),
        &RoomMessageEventContent::text_plain(remote_live.clone()),
    )
    .map_err(|e| format!("building the remote send: {e}"))?;
    bounded(WAIT, "the remote user's send", remote.send(request))
        .await?
        .map_err(|e| format!("{remote_id}: sending into {remote_room} on its server: {e}"))?;
    remote_view
        .wait_for(&format!("{remote_id}'s live message {remote_live:?}"), WAIT, |m| {
            has(m, &remote_id, &remote_live)
        })
        .await?;
    step(&format!(
        "alice: the remote user's live message arrived over federation: {remote_live:?}"
    ));
    let rounds = remote_view.paginate_to_start().await?;
    let mut with_live = remote_history.clone();
    with_live.push(remote_live.clone());
    remote_view.check_history(&with_live)?;
    step(&format!(
        "alice: {} earlier messages of the remote room (backfilled) then the live one, in order, once ({rounds} rounds)",
        remote_history.len()
    ));

    // 5. Alice sends from her timeline: her echo, and bob sees it.
    step("step 5: sending from the timeline");
    let sent = args.one("send-text")?;
    alice_view
        .timeline
        .send(RoomMessageEventContent::text_plain(sent.clone()).into())
        .await
        .map_err(|e| format!("alice: timeline send: {e}"))?;
    alice_view
        .wait_for(&format!("the remote echo of alice's {sent:?}"), WAIT, |m| {
            has(m, &alice_id, &sent)
        })
        .await?;
    bob_view
        .wait_for(&format!("alice's {sent:?} at bob"), WAIT, |m| has(m, &alice_id, &sent))
        .await?;
    alice_view.check_history(&[live.clone(), sent.clone()])?;
    step(&format!("alice's {sent:?}: echoed once, and shown to bob"));

    // 6. End-to-end encryption between alice and bob.
    step("step 6: end-to-end encryption");
    let (alice_enc_room, mut alice_enc) = alice.open(&encrypted_room).await?;
    let (bob_enc_room, mut bob_enc) = bob.open(&encrypted_room).await?;
    for (who, room) in [("alice", &alice_enc_room), ("bob", &bob_enc_room)] {
        let state = room
            .latest_encryption_state()
            .await
            .map_err(|e| format!("{who}: encryption state of {encrypted_room}: {e}"))?;
        if !state.is_encrypted() {
            return Err(format!(
                "{who}: {encrypted_room} is not encrypted for the SDK: {state:?}"
            ));
        }
    }
    exchange(
        "alice",
        &alice_id,
        &mut alice_enc,
        "bob",
        &mut bob_enc,
        &args.one("alice-secret")?,
    )
    .await?;
    exchange(
        "bob",
        &bob_id,
        &mut bob_enc,
        "alice",
        &mut alice_enc,
        &args.one("bob-secret")?,
    )
    .await?;

    alice.healthy()?;
    bob.healthy()?;
    alice.sync.stop().await;
    bob.sync.stop().await;
    Ok(())
}

/// `sender` sends `text` into an encrypted room; it echoes, and `receiver`
/// shows it decrypted.
async fn exchange(
    sender: &str,
    sender_id: &str,
    sender_view: &mut TimelineView,
    receiver: &str,
    receiver_view: &mut TimelineView,
    text: &str,
) -> Fallible<()> {
    sender_view
        .timeline
        .send(RoomMessageEventContent::text_plain(text).into())
        .await
        .map_err(|e| format!("{sender}: encrypted send: {e}"))?;
    sender_view
        .wait_for(
            &format!("the remote echo of {sender}'s encrypted {text:?}"),
            WAIT,
            |m| has(m, sender_id, text),
        )
        .await?;
    receiver_view
        .wait_for(&format!("{sender}'s {text:?}, decrypted at {receiver}"), WAIT, |m| {
            m.iter()
                .any(|m| m.remote && m.sender == sender_id && m.body == text && m.encrypted)
        })
        .await?;
    step(&format!("{receiver} decrypted {sender}'s {text:?}"));
    Ok(())
}
