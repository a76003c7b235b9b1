//! Backfill against a real Synapse (`tests/common/synapse.rs`), both ways:
//!
//! - a weft user joins a Synapse room of 500 messages with state changes
//!   along the way (topics, members joining and leaving, a history
//!   visibility change) and pages back to `m.room.create`: every event once,
//!   in Synapse's order, as Synapse holds it;
//! - the gap a leave and re-join leaves, and the one weft being down leaves
//!   (longer than `/get_missing_events` bridges), are filled in place;
//! - under `joined` history visibility the weft user sees nothing from
//!   before the join (Synapse sends such events redacted);
//! - a Synapse user joins a weft room of 500 messages and pages back through
//!   it (Synapse backfills from weft).
//!
//! The reference order is what Synapse's own `/messages` gives a user who
//! was in the room all along. Run one at a time (Synapse is CPU hungry):
//! `cargo nextest run --test synapse_backfill -j 1`. On failure the tail of
//! Synapse's log follows; `WEFT_TEST_LOG=info` (or `debug`) shows weft's
//! side, `WEFT_SYNAPSE_KEEP=1` keeps Synapse's directory.

mod common;

use std::time::{Duration, Instant};

use common::{
    TestServer, enc, eventually,
    synapse::{
        Client, Synapse, assert_same_timeline, describe_event, duplicate_ids, membership_is, message_bodies,
        synapse_requests,
    },
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long anything that crosses servers may take (Synapse backs off from
/// a server that was down for up to 30 s in this configuration).
const DEADLINE: Duration = Duration::from_secs(90);

/// Waits until `client` sees `event_id` among the newest 50 events of the
/// room's `/messages`.
async fn sees_event(client: &Client, room: &str, event_id: &str) {
    eventually(
        DEADLINE,
        &format!("{} ({}) sees {event_id} in {room}", client.user_id, client.base),
        || async {
            let page = client.messages(room, "dir=b&limit=50").await;
            let found = page["chunk"]
                .as_array()
                .is_some_and(|chunk| chunk.iter().any(|e| e["event_id"] == event_id));
            if found { Ok(()) } else { Err(page.to_string()) }
        },
    )
    .await
}

/// Every message of `bodies` once, in this order, and nothing else.
fn assert_messages(what: &str, events: &[Value], want: &[String]) {
    let got = message_bodies(events);
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(g, w)| g != w)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} messages against {} wanted; first difference at {first}: got {:?}, want {:?}",
            got.len(),
            want.len(),
            &got[first.saturating_sub(2)..(first + 3).min(got.len())],
            &want[first.saturating_sub(2)..(first + 3).min(want.len())],
        );
    }
}

/// Checks the two timelines agree, that nothing is twice, and that the
/// history goes back to the room's creation.
fn assert_complete(what: &str, on_weft: &[Value], on_synapse: &[Value]) {
    let twice = duplicate_ids(on_weft);
    assert!(twice.is_empty(), "{what}: events twice on weft: {twice:#?}");
    assert_eq!(
        on_synapse.first().map(|e| e["type"].clone()),
        Some(json!("m.room.create")),
        "{what}: Synapse's reference reaches the creation"
    );
    assert_same_timeline(what, on_weft, on_synapse);
}

/// What Synapse served to weft, for the output (and diagnostics).
fn report_requests(synapse: &Synapse, label: &str) {
    eprintln!(
        "{label}: Synapse served /backfill {} times, /state_ids {}, /event {}, /event_auth {}, \
         /get_missing_events {}",
        synapse_requests(synapse, "/_matrix/federation/v1/backfill/"),
        synapse_requests(synapse, "/_matrix/federation/v1/state_ids/"),
        synapse_requests(synapse, "/_matrix/federation/v1/event/"),
        synapse_requests(synapse, "/_matrix/federation/v1/event_auth/"),
        synapse_requests(synapse, "/_matrix/federation/v1/get_missing_events/"),
    );
}

/// 1. A Synapse room of 500 messages, with topic changes, other Synapse
/// users joining, talking and leaving, and history visibility going from
/// `shared` to `world_readable` at message 300; a weft user joins by alias
/// and pages back 50 at a time to `m.room.create`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_pages_back_through_500_synapse_messages_with_state_changes() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let carol = synapse.user("carol").await;
    let dave = synapse.user("dave").await;
    let bob = Client::register_on_weft(&weft, "bob").await;

    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "name": "Five hundred",
            "topic": "topic at the start",
            "room_alias_name": "fivehundred",
        }))
        .await;
    let started = Instant::now();
    let (mut carol_in, mut dave_in) = (false, false);
    let mut want = Vec::new();
    for i in 0..500 {
        match i {
            50 | 200 | 450 => {
                alice
                    .put_state(&room, "m.room.topic", "", &json!({ "topic": format!("topic at {i}") }))
                    .await;
            }
            100 | 400 => {
                let (status, body) = carol.join(&room, "").await;
                assert_eq!(status, StatusCode::OK, "carol joins: {body}");
                carol_in = true;
            }
            150 => {
                let (status, body) = dave.join(&room, "").await;
                assert_eq!(status, StatusCode::OK, "dave joins: {body}");
                dave_in = true;
            }
            250 => {
                carol.leave(&room).await;
                carol_in = false;
            }
            300 => {
                alice
                    .put_state(
                        &room,
                        "m.room.history_visibility",
                        "",
                        &json!({ "history_visibility": "world_readable" }),
                    )
                    .await;
            }
            350 => {
                dave.leave(&room).await;
                dave_in = false;
            }
            _ => {}
        }
        let sender = match i % 3 {
            1 if carol_in => &carol,
            2 if dave_in => &dave,
            _ => &alice,
        };
        let text = format!("message {i}");
        sender.send_text(&room, &format!("m{i}"), &text).await;
        want.push(text);
    }
    eprintln!(
        "500 messages sent on Synapse in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let alias = format!("#fivehundred:{}", synapse.server_name());
    let (status, body) = bob.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "weft joins {alias}: {body}");
    assert_eq!(body["room_id"], room.as_str(), "{body}");

    let on_synapse = alice.page_back_all(&room, 100).await;
    let started = Instant::now();
    let on_weft = bob.page_back_all(&room, 50).await;
    eprintln!(
        "weft paged back {} events in {:.1} s",
        on_weft.len(),
        started.elapsed().as_secs_f64()
    );
    report_requests(&synapse, "after the first page-back");
    assert_complete("weft's history of the Synapse room", &on_weft, &on_synapse);
    assert_messages("weft's messages", &on_weft, &want);
    assert_eq!(
        on_weft.last().map(|e| e["state_key"].clone()),
        Some(json!(bob.user_id)),
        "the newest event is bob's join"
    );
    // Backfilled state events are there, as Synapse made them.
    let topics: Vec<&Value> = on_weft
        .iter()
        .filter(|e| e["type"] == "m.room.topic")
        .map(|e| &e["content"]["topic"])
        .collect();
    assert_eq!(
        topics,
        ["topic at the start", "topic at 50", "topic at 200", "topic at 450"],
        "the topic changes"
    );
    let memberships: Vec<String> = on_weft
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| {
            format!(
                "{} {}",
                e["state_key"].as_str().unwrap(),
                e["content"]["membership"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        memberships,
        [
            format!("{} join", alice.user_id),
            format!("{} join", carol.user_id),
            format!("{} join", dave.user_id),
            format!("{} leave", carol.user_id),
            format!("{} leave", dave.user_id),
            format!("{} join", carol.user_id),
            format!("{} join", bob.user_id),
        ],
        "the membership changes"
    );

    // Paging back again asks Synapse nothing more and gives the same.
    let backfills = synapse_requests(&synapse, "/_matrix/federation/v1/backfill/");
    let again = bob.page_back_all(&room, 50).await;
    assert_same_timeline("weft's second page-back", &again, &on_weft);
    assert_eq!(
        synapse_requests(&synapse, "/_matrix/federation/v1/backfill/"),
        backfills,
        "a second page-back over filled history makes no /backfill request"
    );

    // The state before a backfilled event is known: the topic and members
    // at message 220 (after "topic at 200"; dave in, carol in).
    let m220 = on_weft
        .iter()
        .find(|e| e["content"]["body"] == "message 220")
        .expect("message 220");
    let ctx = bob
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=0",
                enc(&room),
                enc(m220["event_id"].as_str().unwrap())
            ),
            None,
        )
        .await;
    let state = ctx["state"].as_array().cloned().unwrap_or_default();
    let topic = state.iter().find(|e| e["type"] == "m.room.topic");
    assert_eq!(
        topic.map(|e| e["content"]["topic"].clone()),
        Some(json!("topic at 200")),
        "the topic at message 220: {ctx}"
    );
    let joined: Vec<&str> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    for user in [&alice.user_id, &carol.user_id, &dave.user_id] {
        assert!(joined.contains(&user.as_str()), "{user} joined at message 220: {ctx}");
    }
}

/// 2. A gap left by a leave and a re-join: the weft user pages back through
/// everything, leaves, Synapse's users send 50 more (one of them joining
/// first), the weft user re-joins and pages back: the 50 are in place,
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_gap_in_a_synapse_room_is_filled_in_place() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let carol = synapse.user("carol").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "name": "Comings and goings",
            "room_alias_name": "rejoin",
        }))
        .await;
    let mut want = Vec::new();
    for i in 0..100 {
        if i == 60 {
            alice
                .put_state(&room, "m.room.topic", "", &json!({ "topic": "before the gap" }))
                .await;
        }
        let text = format!("before {i}");
        alice.send_text(&room, &format!("b{i}"), &text).await;
        want.push(text);
    }
    let alias = format!("#rejoin:{}", synapse.server_name());
    let (status, body) = bob.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "weft joins {alias}: {body}");
    let first = bob.page_back_all(&room, 50).await;
    assert_complete("before the leave", &first, &alice.page_back_all(&room, 100).await);
    let text = "bob says goodbye".to_owned();
    let goodbye = bob.send_text(&room, "bye", &text).await;
    want.push(text);
    sees_event(&alice, &room, &goodbye).await;

    bob.leave(&room).await;
    membership_is(DEADLINE, &alice, &room, &bob.user_id, "leave").await;

    // While weft has nobody in the room: a join, a topic, 50 messages.
    let (status, body) = carol.join(&room, "").await;
    assert_eq!(status, StatusCode::OK, "carol joins: {body}");
    for i in 0..50 {
        if i == 25 {
            alice
                .put_state(&room, "m.room.topic", "", &json!({ "topic": "in the gap" }))
                .await;
        }
        let sender = if i % 2 == 0 { &alice } else { &carol };
        let text = format!("gap {i}");
        sender.send_text(&room, &format!("g{i}"), &text).await;
        want.push(text);
    }

    let (status, body) = bob.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "weft re-joins {alias}: {body}");
    membership_is(DEADLINE, &alice, &room, &bob.user_id, "join").await;
    let text = "bob is back".to_owned();
    let back = bob.send_text(&room, "back", &text).await;
    want.push(text);
    sees_event(&alice, &room, &back).await;

    let on_synapse = alice.page_back_all(&room, 100).await;
    let on_weft = bob.page_back_all(&room, 50).await;
    report_requests(&synapse, "after the re-join page-back");
    assert_complete("weft's history across the re-join gap", &on_weft, &on_synapse);
    assert_messages("weft's messages", &on_weft, &want);
    // Paged in small steps, across the gap's edges, the same.
    let small = bob.page_back_all(&room, 7).await;
    assert_same_timeline("weft's history, 7 at a time", &small, &on_synapse);
}

/// 3. A gap made by weft being down while the room moves on: weft stops,
/// two Synapse users join and send 60 messages (more than the 20 that
/// weft's `/get_missing_events` asks for), the topic changes; weft comes
/// back; one more message tells weft of the room again; paging back leaves
/// no gap and shows nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_left_while_weft_was_down_is_filled() {
    let mut synapse = Synapse::start().await;
    let mut weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let carol = synapse.user("carol").await;
    let dave = synapse.user("dave").await;
    let bob_token = {
        let bob = weft.register("bob").await;
        bob.token.clone()
    };
    let bob_id = format!("@bob:{}", weft.server_name());
    let bob_on = |weft: &TestServer| Client {
        http: weft.http.clone(),
        base: weft.base(),
        user_id: bob_id.clone(),
        token: bob_token.clone(),
    };
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "name": "Outage",
            "room_alias_name": "outage",
        }))
        .await;
    let mut want = Vec::new();
    for i in 0..30 {
        let text = format!("before {i}");
        alice.send_text(&room, &format!("b{i}"), &text).await;
        want.push(text);
    }
    let alias = format!("#outage:{}", synapse.server_name());
    let live = {
        let bob = bob_on(&weft);
        let (status, body) = bob.join(&alias, "").await;
        assert_eq!(status, StatusCode::OK, "weft joins {alias}: {body}");
        let text = "live before the outage".to_owned();
        let live = alice.send_text(&room, "live", &text).await;
        want.push(text);
        sees_event(&bob, &room, &live).await;
        live
    };

    // weft goes down. Synapse keeps what it could not deliver in memory
    // and retries (with this harness's short back-off it would deliver
    // everything once weft is back, leaving no gap): Synapse is killed
    // while weft is down, so that, started again, it only "catches weft
    // up" with the newest event of the room, as it does after a long
    // outage.
    weft.server.take().expect("weft is running").shutdown().await;
    let weft_name = weft.server_name().to_string();
    // Two users join while weft is down and do the talking (so the events
    // weft fetches across the gap are theirs, whoever's is oldest).
    for user in [&carol, &dave] {
        let (status, body) = user.join(&room, "").await;
        assert_eq!(status, StatusCode::OK, "{} joins: {body}", user.user_id);
    }
    for i in 0..60 {
        if i == 30 {
            alice
                .put_state(&room, "m.room.topic", "", &json!({ "topic": "while weft was down" }))
                .await;
        }
        let sender = if i % 2 == 0 { &carol } else { &dave };
        let text = format!("outage {i}");
        sender.send_text(&room, &format!("o{i}"), &text).await;
        want.push(text);
    }

    synapse.kill();

    // weft is back (same name, port and data), then Synapse. A new message
    // tells weft of the room once Synapse's back-off from weft has passed:
    // send one every few seconds until weft has one.
    weft.restart().await;
    synapse.start_again().await;
    let bob = bob_on(&weft);
    let deadline = Instant::now() + DEADLINE;
    'nudge: for k in 0.. {
        let text = format!("after the outage {k}");
        let after = alice.send_text(&room, &format!("after{k}"), &text).await;
        want.push(text);
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            let page = bob.messages(&room, "dir=b&limit=5").await;
            if page["chunk"]
                .as_array()
                .is_some_and(|c| c.iter().any(|e| e["event_id"] == after.as_str()))
            {
                break 'nudge;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            Instant::now() < deadline,
            "weft never heard of the room again after its restart"
        );
    }
    let catch_up = synapse.log_lines_with(&format!("Catching up destination {weft_name}"));
    eprintln!("Synapse's catch-up of weft: {catch_up:#?}");
    // There is a gap to fill: in the outage, above the last event weft had
    // before it (what /get_missing_events did not bridge).
    let room_id = ruma::RoomId::parse(&room).unwrap();
    let storage = &weft.services().storage;
    let gaps = storage.backward_extremities(&room_id).await.unwrap();
    let live_depth = storage
        .event(&ruma::EventId::parse(&live).unwrap())
        .await
        .unwrap()
        .expect("weft holds the last event before the outage")
        .pdu
        .depth as i64;
    eprintln!(
        "weft asked Synapse for missing events {} times; its gaps before paging back: {gaps:?} \
         (the last event before the outage is at depth {live_depth})",
        synapse_requests(&synapse, "/_matrix/federation/v1/get_missing_events/")
    );
    assert!(
        gaps.iter().any(|(_, depth)| *depth > live_depth),
        "the outage left a gap in weft's timeline (else there is nothing to test): {gaps:?}"
    );

    let on_synapse = alice.page_back_all(&room, 100).await;
    let on_weft = bob.page_back_all(&room, 50).await;
    report_requests(&synapse, "after the outage page-back");
    assert_complete("weft's history across the outage", &on_weft, &on_synapse);
    assert_messages("weft's messages", &on_weft, &want);
    // The state moved on while weft was down: weft's current state has it.
    let (status, topic) = bob.state(&room, "m.room.topic", "").await;
    assert_eq!(
        (status, &topic["topic"]),
        (StatusCode::OK, &json!("while weft was down")),
        "{topic}"
    );
}

/// Under `joined` history visibility a weft user who joins late sees the
/// room from the join on, and nothing said before it, though weft pages
/// back over it (Synapse gives weft those events redacted, as no user of
/// weft's was in the room then). The events from before the first
/// `m.room.history_visibility` (the room's creation) are under the default,
/// `shared`, and stay visible. The reference is what Synapse shows dave, a
/// Synapse user who joined just before bob: the same, but for dave's own
/// join (bob was not in the room then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_history_visibility_hides_what_came_before_the_join() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let dave = synapse.user("dave").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "room_alias_name": "joinedonly",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": { "history_visibility": "joined" },
            }],
        }))
        .await;
    for i in 0..40 {
        alice.send_text(&room, &format!("s{i}"), &format!("secret {i}")).await;
    }
    let (status, body) = dave.join(&room, "").await;
    assert_eq!(status, StatusCode::OK, "dave joins: {body}");
    let alias = format!("#joinedonly:{}", synapse.server_name());
    let (status, body) = bob.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "weft joins {alias}: {body}");
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(alice.send_text(&room, &format!("p{i}"), &format!("public {i}")).await);
    }
    sees_event(&bob, &room, after.last().unwrap()).await;

    let for_dave = dave.page_back_all(&room, 100).await;
    let secret = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["content"]["body"].as_str().is_some_and(|b| b.starts_with("secret")))
            .map(describe_event)
            .collect()
    };
    assert!(secret(&for_dave).is_empty(), "Synapse shows dave: {for_dave:#?}");
    let want: Vec<Value> = for_dave
        .into_iter()
        .filter(|e| !(e["type"] == "m.room.member" && e["state_key"] == dave.user_id.as_str()))
        .collect();
    let on_weft = bob.page_back_all(&room, 10).await;
    let leaked = secret(&on_weft);
    assert!(
        leaked.is_empty(),
        "events from before the join shown to bob: {leaked:#?}"
    );
    assert_same_timeline("what bob sees under `joined`", &on_weft, &want);
    assert_eq!(message_bodies(&on_weft).len(), 5, "the five messages after the join");
}

/// 4. Synapse backfills from weft: a weft room of 500 messages with state
/// changes (topics, weft users joining and leaving, history visibility
/// made `world_readable`); a Synapse user joins by alias and pages back
/// through all of it on Synapse, in weft's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_pages_back_through_500_weft_messages() {
    let synapse = Synapse::start().await;
    let weft = TestServer::start_federating().await;
    let alice = synapse.user("alice").await;
    let bob = Client::register_on_weft(&weft, "bob").await;
    let carol = Client::register_on_weft(&weft, "carol").await;
    let dave = Client::register_on_weft(&weft, "dave").await;
    let room = bob
        .create_room(json!({
            "preset": "public_chat",
            "room_version": "12",
            "name": "Five hundred on weft",
            "topic": "topic at the start",
            "room_alias_name": "weftfivehundred",
        }))
        .await;
    let (mut carol_in, mut dave_in) = (false, false);
    let mut want = Vec::new();
    let started = Instant::now();
    for i in 0..500 {
        match i {
            50 | 200 | 450 => {
                bob.put_state(&room, "m.room.topic", "", &json!({ "topic": format!("topic at {i}") }))
                    .await;
            }
            100 | 400 => {
                let (status, body) = carol.join(&room, "").await;
                assert_eq!(status, StatusCode::OK, "carol joins: {body}");
                carol_in = true;
            }
            150 => {
                let (status, body) = dave.join(&room, "").await;
                assert_eq!(status, StatusCode::OK, "dave joins: {body}");
                dave_in = true;
            }
            250 => {
                carol.leave(&room).await;
                carol_in = false;
            }
            300 => {
                bob.put_state(
                    &room,
                    "m.room.history_visibility",
                    "",
                    &json!({ "history_visibility": "world_readable" }),
                )
                .await;
            }
            350 => {
                dave.leave(&room).await;
                dave_in = false;
            }
            _ => {}
        }
        let sender = match i % 3 {
            1 if carol_in => &carol,
            2 if dave_in => &dave,
            _ => &bob,
        };
        let text = format!("message {i}");
        sender.send_text(&room, &format!("m{i}"), &text).await;
        want.push(text);
    }
    eprintln!("500 messages sent on weft in {:.1} s", started.elapsed().as_secs_f64());

    let alias = format!("#weftfivehundred:{}", weft.server_name());
    let (status, body) = alice.join(&alias, "").await;
    assert_eq!(status, StatusCode::OK, "Synapse joins {alias}: {body}");
    assert_eq!(body["room_id"], room.as_str(), "{body}");

    let on_weft = bob.page_back_all(&room, 100).await;
    let started = Instant::now();
    let on_synapse = alice.page_back_all(&room, 50).await;
    eprintln!(
        "Synapse paged back {} events in {:.1} s; {} /backfill requests in its log",
        on_synapse.len(),
        started.elapsed().as_secs_f64(),
        synapse
            .log_lines_with("/_matrix/federation/v1/backfill/")
            .iter()
            .filter(|l| !l.contains("synapse.access"))
            .count()
    );
    assert_eq!(
        on_weft.first().map(|e| e["type"].clone()),
        Some(json!("m.room.create")),
        "weft's history reaches the creation"
    );
    let twice = duplicate_ids(&on_synapse);
    assert!(twice.is_empty(), "events twice on Synapse: {twice:#?}");
    assert_same_timeline("Synapse's history of the weft room", &on_synapse, &on_weft);
    assert_messages("Synapse's messages", &on_synapse, &want);
}
