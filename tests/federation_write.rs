//! The federation write path between two weft servers: a user of B joins
//! a room of A through the client API (remote alias, make_join/send_join),
//! and messages flow both ways through `/send`, also across a restart.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use reqwest::Method;
use serde_json::{Value, json};

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Pages back through a room on one server and returns its messages,
/// oldest first.
async fn all_messages(user: &User<'_>, room: &str) -> Vec<String> {
    let page = user.messages(room, "dir=b&limit=1000").await;
    let mut texts = bodies(&page["chunk"]);
    texts.reverse();
    texts
}

/// Waits until `user` sees `want` among the room's messages.
async fn eventually_sees(user: &User<'_>, room: &str, want: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen = all_messages(user, room).await;
        if want.iter().all(|w| seen.iter().any(|s| s == w)) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{} never saw {want:?}; saw {seen:?}",
            user.user_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_after_a_remote_join() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(
            json!({ "preset": "public_chat", "name": "Across", "topic": "two servers", "room_alias_name": "across", "visibility": "public" }),
        )
        .await;
    alice.send_text(&room, "a0", "before bob").await;

    // Bob finds it in A's room directory, through his own server.
    let server = enc(a.server_name().as_str());
    let listed = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            None,
        )
        .await;
    assert_eq!(listed["chunk"][0]["room_id"], room.as_str(), "{listed}");
    assert_eq!(listed["chunk"][0]["name"], "Across", "{listed}");
    let searched = bob
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/publicRooms?server={server}"),
            Some(&json!({ "filter": { "generic_search_term": "nothing like it" } })),
        )
        .await;
    assert_eq!(searched["chunk"], json!([]), "{searched}");
    let own = bob.ok(Method::GET, "/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(own["chunk"], json!([]), "B's own directory is B's: {own}");

    // Bob joins by the alias on A's server.
    let alias = format!("#across:{}", a.server_name());
    let (status, body) = bob.join(&alias).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());

    // B has the room's state; A has Bob as a member.
    let name = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
            None,
        )
        .await;
    assert_eq!(name["name"], "Across");
    let members = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
            None,
        )
        .await;
    assert!(members["joined"][&bob.user_id].is_object(), "{members}");
    bob.wait_for_full_state(&room).await;
    let sync = bob.sync("").await;
    assert!(
        sync["rooms"]["join"][&room].is_object(),
        "the room shows in Bob's sync: {sync}"
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let room_for_poll = room.clone();

    // A → B: Bob's long-poll wakes with Alice's message. A poll may also
    // wake first for something else of Alice's server (her presence, a
    // device list): Bob polls on from the token it got, as a client does.
    let poll = {
        let (http, token, base) = (b.http.clone(), bob.token.clone(), b.base());
        tokio::spawn(async move {
            let mut since = since;
            let mut woken_without = Vec::new();
            loop {
                let url = format!("{base}/_matrix/client/v3/sync?since={}&timeout=30000", enc(&since));
                let body: Value = http
                    .get(url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let events = &body["rooms"]["join"][&room_for_poll]["timeline"]["events"];
                if events.as_array().is_some_and(|a| !a.is_empty()) || woken_without.len() >= 5 {
                    return (body, woken_without);
                }
                since = body["next_batch"].as_str().unwrap().to_owned();
                woken_without.push(body);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = alice.send_text(&room, "a1", "hello bob").await;
    assert_eq!(status, 200);
    let (woke, before) = poll.await.unwrap();
    assert_eq!(
        bodies(&woke["rooms"]["join"][&room]["timeline"]["events"]),
        ["hello bob"],
        "{woke}; polls that woke before it: {before:?}"
    );

    // B → A.
    let (status, body) = bob.send_text(&room, "b1", "hello alice").await;
    assert_eq!(status, 200, "{body}");
    eventually_sees(&alice, &room, &["hello alice"]).await;

    // Both at once: each server sees both, in the same order.
    let (x, y) = tokio::join!(
        alice.send_text(&room, "a2", "from A"),
        bob.send_text(&room, "b2", "from B")
    );
    assert_eq!((x.0.as_u16(), y.0.as_u16()), (200, 200));
    let on_a = eventually_sees(&alice, &room, &["from A", "from B"]).await;
    let on_b = eventually_sees(&bob, &room, &["from A", "from B"]).await;
    // Concurrent events have the same depth: each server lists them in the
    // order they reached it (both are orders of the DAG).
    let tail = |v: &[String]| {
        let mut t = v[v.len() - 2..].to_vec();
        t.sort();
        t
    };
    assert_eq!(
        tail(&on_a),
        tail(&on_b),
        "both servers hold both events, and nothing after them"
    );
    // Paging back on B fills in what came before Bob's join (backfill):
    // both servers hold the same messages.
    let mut all_a = on_a.clone();
    all_a.sort();
    let mut all_b = on_b.clone();
    all_b.sort();
    assert_eq!(all_a, all_b);
    assert!(all_b.contains(&"before bob".to_owned()));

    // The room keeps one current state on both sides.
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
            Some(&json!({ "topic": "changed on A" })),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let topic = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
                None,
            )
            .await;
        if topic["topic"] == "changed on A" {
            break;
        }
        assert!(Instant::now() < deadline, "the topic change never reached B: {topic}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_for_a_server_that_is_down_arrive_when_it_is_back() {
    let mut a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let (alice_token, room) = {
        let alice = a.register("alice").await;
        let room = alice.create_room(json!({ "preset": "public_chat" })).await;
        (alice.token.clone(), room)
    };
    let bob = b.register("bob").await;
    let (status, body) = bob
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room),
                enc(a.server_name().as_str())
            ),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A goes down; Bob writes; A comes back on the same name and port.
    if let Some(server) = a.server.take() {
        server.shutdown().await;
    }
    for i in 0..5 {
        let (status, _) = bob
            .send_text(&room, &format!("d{i}"), &format!("while A was down {i}"))
            .await;
        assert_eq!(status, 200, "sending does not wait for other servers");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.restart().await;
    let alice = User {
        server: &a,
        user_id: format!("@alice:{}", a.server_name()),
        token: alice_token,
    };
    let want: Vec<String> = (0..5).map(|i| format!("while A was down {i}")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let seen = eventually_sees(&alice, &room, &want).await;
    let got: Vec<&String> = seen.iter().filter(|s| s.starts_with("while A was down")).collect();
    assert_eq!(got, want, "every queued event once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_across_servers_joined_rejected_and_left() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Invite only" }))
        .await;
    let since_bob = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();

    // Alice invites Bob: B countersigns, Bob sees the invite with the room's name.
    alice.invite(&room, &bob.user_id).await;
    let sync = bob.sync(&format!("since={}", enc(&since_bob))).await;
    let invite = &sync["rooms"]["invite"][&room]["invite_state"]["events"];
    let names: Vec<&Value> = invite
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(names[0]["content"]["name"], "Invite only", "{sync}");
    assert!(
        invite
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
    );
    alice.wait_for_membership(&room, &bob.user_id, "invite").await;

    // Bob joins the invite-only room (through the inviting server).
    let (status, body) = bob.join(&room).await;
    assert_eq!(status, 200, "{body}");
    alice.wait_for_membership(&room, &bob.user_id, "join").await;
    bob.wait_for_full_state(&room).await;
    let sync = bob.sync("").await;
    assert!(sync["rooms"]["join"][&room].is_object());
    assert!(
        sync["rooms"]["invite"].get(&room).is_none(),
        "the invite is gone once joined"
    );

    // Carol is invited and rejects.
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&json!({ "user_id": carol.user_id })),
        )
        .await;
    alice.wait_for_membership(&room, &carol.user_id, "invite").await;
    // B is in the room now: the invite reaches Carol through the room.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !carol.sync("").await["rooms"]["invite"][&room].is_object() {
        assert!(Instant::now() < deadline, "Carol never saw her invite");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = carol
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    alice.wait_for_membership(&room, &carol.user_id, "leave").await;
    let sync = carol.sync("").await;
    assert!(
        sync["rooms"]["invite"].get(&room).is_none(),
        "a rejected invite is gone"
    );

    // An invite to a room B is not in is rejected through the inviting server.
    let other = alice
        .create_room(json!({ "preset": "private_chat", "name": "Elsewhere" }))
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&other)),
            Some(&json!({ "user_id": carol.user_id })),
        )
        .await;
    assert!(carol.sync("").await["rooms"]["invite"][&other].is_object());
    let (status, body) = carol
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&other)),
            Some(&json!({ "reason": "no" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    alice.wait_for_membership(&other, &carol.user_id, "leave").await;
    assert!(carol.sync("").await["rooms"]["invite"].get(&other).is_none());

    // Bob leaves.
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        Some(&json!({})),
    )
    .await;
    alice.wait_for_membership(&room, &bob.user_id, "leave").await;

    // An invite to a room everyone on A has since left: A will not make a
    // leave for a room it has no user in, so B rejects it on its own.
    let empty = alice
        .create_room(json!({ "preset": "private_chat", "name": "Left behind" }))
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&empty)),
            Some(&json!({ "user_id": carol.user_id })),
        )
        .await;
    let since = carol.sync("").await;
    assert!(since["rooms"]["invite"][&empty].is_object(), "{since}");
    let since = since["next_batch"].as_str().unwrap().to_owned();
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&empty)),
            Some(&json!({})),
        )
        .await;
    let (status, body) = carol
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&empty)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sync = carol.sync(&format!("since={}", enc(&since))).await;
    assert!(sync["rooms"]["invite"].get(&empty).is_none(), "{sync}");
    let left = &sync["rooms"]["leave"][&empty]["timeline"]["events"][0];
    assert_eq!(left["content"]["membership"], "leave", "{sync}");
    assert_eq!(left["sender"], carol.user_id.as_str(), "{sync}");
    assert!(carol.sync("").await["rooms"]["invite"].get(&empty).is_none());
}

/// The reference form of rooms v1 and v2: `[event ID, {"sha256": hash}]`
/// pairs; returns the IDs and hashes.
fn pair_references(event: &Value, field: &str) -> Vec<(String, String)> {
    event[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is a list: {event}"))
        .iter()
        .map(|pair| {
            let id = pair[0]
                .as_str()
                .unwrap_or_else(|| panic!("{field} holds pairs: {event}"));
            let hash = pair[1]["sha256"]
                .as_str()
                .unwrap_or_else(|| panic!("{field} pairs carry the sha256 hash: {event}"));
            (id.to_owned(), hash.to_owned())
        })
        .collect()
}

/// Rooms of versions 1 and 2: events carry IDs their server chose, and
/// reference others by ID and reference hash. Created on A, joined from B
/// (make_join/send_join), messages both ways, concurrent state changes
/// resolved alike on both (state resolution v1 for version 1, v2 for 2),
/// and A's events as B fetches them over federation verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_of_versions_1_and_2_across_servers() {
    use ruma::{
        CanonicalJsonObject, OwnedEventId, OwnedRoomId, RoomVersionId,
        api::federation::event::{get_event, get_room_state, get_room_state_ids},
    };

    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    for version in ["1", "2"] {
        let room = alice
            .create_room(json!({
                "preset": "public_chat",
                "room_version": version,
                "name": format!("Version {version}"),
                "room_alias_name": format!("old{version}"),
                "power_level_content_override": { "users": { &alice.user_id: 100, &bob.user_id: 100 } },
            }))
            .await;
        alice.send_text(&room, &format!("a0-{version}"), "before bob").await;
        let (status, body) = bob.join(&format!("#old{version}:{}", a.server_name())).await;
        assert_eq!(status, 200, "v{version}: {body}");
        let (status, body) = bob.send_text(&room, &format!("b1-{version}"), "hello alice").await;
        assert_eq!(status, 200, "{body}");
        eventually_sees(&alice, &room, &["before bob", "hello alice"]).await;
        // B pages back past Bob's join (backfill from A).
        eventually_sees(&bob, &room, &["before bob", "hello alice"]).await;

        // Event IDs name the server that made the event.
        let page = alice.messages(&room, "dir=b&limit=100").await;
        let events = page["chunk"].as_array().unwrap();
        let by_body = |body: &str| {
            events
                .iter()
                .find(|e| e["content"]["body"] == body)
                .unwrap_or_else(|| panic!("{body} in {page}"))
                .clone()
        };
        let mine = by_body("before bob");
        let theirs = by_body("hello alice");
        let mine_id = mine["event_id"].as_str().unwrap();
        assert!(mine_id.ends_with(&format!(":{}", a.server_name())), "{mine_id}");
        assert!(
            theirs["event_id"]
                .as_str()
                .unwrap()
                .ends_with(&format!(":{}", b.server_name())),
            "{theirs}"
        );

        // Over federation, as B fetches it: the event carries its ID, its
        // references are pairs whose hashes are the referenced events'
        // reference hashes, and it passes B's checks.
        let room_version = RoomVersionId::try_from(version).unwrap();
        let rules = room_version.rules().unwrap();
        let fed = &b.services().federation;
        let event_id = OwnedEventId::try_from(mine_id).unwrap();
        let fetched = fed
            .send(&a.server_name(), get_event::v1::Request::new(event_id.clone()))
            .await
            .expect("/event");
        let json: Value = serde_json::from_str(fetched.pdu.get()).unwrap();
        assert_eq!(json["event_id"], mine_id, "{json}");
        assert_eq!(
            common::federation::verify_pdu(&b, &room_version, &fetched.pdu).await,
            event_id
        );
        let references = pair_references(&json, "prev_events")
            .into_iter()
            .chain(pair_references(&json, "auth_events"));
        for (id, hash) in references {
            let referenced = fed
                .send(
                    &a.server_name(),
                    get_event::v1::Request::new(OwnedEventId::try_from(id.as_str()).unwrap()),
                )
                .await
                .expect("/event of a reference");
            let object: CanonicalJsonObject = serde_json::from_str(referenced.pdu.get()).unwrap();
            assert_eq!(ruma::signatures::reference_hash(&object, &rules).unwrap(), hash, "{id}");
        }

        // /state and /state_ids at the event: the same events, all verified.
        let room_id = OwnedRoomId::try_from(room.as_str()).unwrap();
        let ids = fed
            .send(
                &a.server_name(),
                get_room_state_ids::v1::Request::new(event_id.clone(), room_id.clone()),
            )
            .await
            .expect("/state_ids");
        let state = fed
            .send(&a.server_name(), get_room_state::v1::Request::new(event_id, room_id))
            .await
            .expect("/state");
        let mut verified = Vec::new();
        for pdu in &state.pdus {
            verified.push(common::federation::verify_pdu(&b, &room_version, pdu).await);
        }
        for pdu in &state.auth_chain {
            common::federation::verify_pdu(&b, &room_version, pdu).await;
        }
        let mut want = ids.pdu_ids.clone();
        want.sort();
        verified.sort();
        assert_eq!(verified, want);
        assert!(
            verified.len() >= 5,
            "create, members, power levels, join rules…: {verified:?}"
        );

        // Concurrent state changes on both servers, then messages on both
        // that merge the fork: both end with the same state.
        let topic_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room));
        let (from_a, from_b) = (json!({ "topic": "from A" }), json!({ "topic": "from B" }));
        let (x, y) = tokio::join!(
            alice.call(Method::PUT, &topic_path, Some(&from_a)),
            bob.call(Method::PUT, &topic_path, Some(&from_b))
        );
        assert_eq!((x.0.as_u16(), y.0.as_u16()), (200, 200), "{x:?} {y:?}");
        let (txn_a, txn_b) = (format!("a2-{version}"), format!("b2-{version}"));
        let (x, y) = tokio::join!(
            alice.send_text(&room, &txn_a, "after A's topic"),
            bob.send_text(&room, &txn_b, "after B's topic")
        );
        assert_eq!((x.0.as_u16(), y.0.as_u16()), (200, 200));
        eventually_sees(&alice, &room, &["after A's topic", "after B's topic"]).await;
        eventually_sees(&bob, &room, &["after A's topic", "after B's topic"]).await;
        alice.send_text(&room, &format!("a3-{version}"), "merged").await;
        eventually_sees(&bob, &room, &["merged"]).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let on_a = alice.ok(Method::GET, &topic_path, None).await;
            let on_b = bob.ok(Method::GET, &topic_path, None).await;
            if on_a == on_b {
                assert!(on_a["topic"] == "from A" || on_a["topic"] == "from B", "{on_a}");
                break;
            }
            assert!(Instant::now() < deadline, "v{version}: A has {on_a}, B has {on_b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Rejecting an invite whose inviting server is gone: the rejection is
/// recorded here alone (an out-of-band leave), and the room shows as left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_is_rejected_here_when_the_inviting_server_is_gone() {
    let mut a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let alice = a.register("alice").await;
    let carol = b.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Soon gone", "room_version": "1" }))
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&json!({ "user_id": carol.user_id })),
        )
        .await;
    let sync = carol.sync("").await;
    assert!(sync["rooms"]["invite"][&room].is_object(), "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    drop(alice);
    a.server.take().unwrap().shutdown().await;

    let (status, body) = carol
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sync = carol.sync(&format!("since={}", enc(&since))).await;
    let left = &sync["rooms"]["leave"][&room]["timeline"]["events"][0];
    assert_eq!(left["type"], "m.room.member", "{sync}");
    assert_eq!(left["state_key"], carol.user_id.as_str());
    assert_eq!(left["content"]["membership"], "leave");
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "{sync}");
    assert!(carol.sync("").await["rooms"]["invite"].get(&room).is_none());
}
