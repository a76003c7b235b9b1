//! Simplified sliding sync (MSC4186) over HTTP, as Element X's SDK speaks
//! it: lists with ranges and counts, rooms in order of activity, what a
//! room carries the first time and afterwards, `pos` (retried, unknown,
//! kept across a restart), long-polling, required state, filters,
//! subscriptions, invites and leaves, the extensions, bad input.

mod common;

use std::time::Duration;

use common::{TestServer, User, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One request: `pos` and `timeout` in the query, `body` as given.
async fn ss(user: &User<'_>, pos: Option<&str>, timeout: u64, body: &Value) -> (StatusCode, Value) {
    let mut path = format!("{PATH}?timeout={timeout}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", enc(pos)));
    }
    user.call(Method::POST, &path, Some(body)).await
}

async fn ok(user: &User<'_>, pos: Option<&str>, body: &Value) -> Value {
    let (status, answer) = ss(user, pos, 0, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["pos"].is_string(), "{answer}");
    answer
}

/// A list `all` of `ranges`, with `required_state` and `timeline_limit`.
fn list(ranges: Value, required_state: Value, timeline_limit: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": { "all": {
            "ranges": ranges,
            "required_state": required_state,
            "timeline_limit": timeline_limit,
        } },
    })
}

fn bodies(timeline: &Value) -> Vec<String> {
    timeline
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn state_types(room: &Value) -> Vec<(String, String)> {
    let mut types: Vec<(String, String)> = room["required_state"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap().to_owned(),
                        e["state_key"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    types.sort();
    types
}

#[tokio::test]
async fn versions_advertise_it() {
    let server = TestServer::start().await;
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["unstable_features"]["org.matrix.simplified_msc3575"], true,
        "{body}"
    );
}

/// Element X finds the client API from the server name alone.
#[tokio::test]
async fn well_known_client_gives_the_public_base_url() {
    let server = TestServer::start_with(|c| c.public_baseurl = Some("https://matrix.example.org/".to_owned())).await;
    let (status, body) = server
        .request(Method::GET, "/.well-known/matrix/client", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.example.org/");
    let unset = TestServer::start().await;
    let (status, body) = unset
        .request(Method::GET, "/.well-known/matrix/client", None, None)
        .await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (StatusCode::NOT_FOUND, json!("M_NOT_FOUND"))
    );
}

#[tokio::test]
async fn the_list_is_ordered_by_activity_and_counted_and_rooms_come_once_then_as_they_change() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        let room = alice.create_room(json!({ "name": format!("room {i}") })).await;
        alice.send_text(&room, "t", &format!("hello {i}")).await;
        rooms.push(room);
    }
    // Room 0 is the most recently active.
    alice.send_text(&rooms[0], "t2", "latest").await;

    let mut body = list(json!([[0, 1]]), json!([["m.room.name", ""], ["m.room.create", ""]]), 1);
    body["txn_id"] = json!("txn-1");
    let first = ok(&alice, None, &body).await;
    assert_eq!(first["txn_id"], "txn-1", "{first}");
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    let sent = first["rooms"].as_object().unwrap();
    assert_eq!(sent.len(), 2, "only the range's rooms: {first}");
    assert!(sent.contains_key(&rooms[0]) && sent.contains_key(&rooms[2]), "{first}");
    let room0 = &first["rooms"][&rooms[0]];
    assert_eq!(room0["initial"], true, "{room0}");
    assert_eq!(room0["name"], "room 0");
    assert_eq!(bodies(&room0["timeline"]), ["latest"], "timeline_limit 1: {room0}");
    assert_eq!(room0["limited"], true);
    assert!(room0["prev_batch"].is_string());
    assert_eq!(
        state_types(room0),
        [
            ("m.room.create".to_owned(), String::new()),
            ("m.room.name".to_owned(), String::new())
        ]
    );
    let stamp = |room: &str| first["rooms"][room]["bump_stamp"].as_u64().unwrap();
    assert!(stamp(&rooms[0]) > stamp(&rooms[2]), "{first}");
    assert_eq!(room0["joined_count"], 1);

    // The prev_batch pages back with /messages.
    let page = alice
        .messages(
            &rooms[0],
            &format!("dir=b&limit=10&from={}", enc(room0["prev_batch"].as_str().unwrap())),
        )
        .await;
    assert_eq!(bodies(&page["chunk"]), ["hello 0"], "{page}");

    // Nothing changed: an empty answer, at once with timeout 0.
    let pos = first["pos"].as_str().unwrap();
    let again = ok(&alice, Some(pos), &body).await;
    assert!(again["rooms"].as_object().is_none_or(|r| r.is_empty()), "{again}");
    assert_eq!(again["lists"]["all"]["count"], 3);

    // A message in room 2: only room 2, with only the new event.
    alice.send_text(&rooms[2], "t3", "news").await;
    let pos = again["pos"].as_str().unwrap();
    let next = ok(&alice, Some(pos), &body).await;
    let sent = next["rooms"].as_object().unwrap();
    assert_eq!(sent.len(), 1, "{next}");
    let room2 = &next["rooms"][&rooms[2]];
    assert!(room2["initial"].is_null(), "{room2}");
    assert_eq!(bodies(&room2["timeline"]), ["news"]);
    assert_eq!(room2["num_live"], 1);
    assert!(room2["name"].is_null(), "the name did not change: {room2}");
    assert!(room2["required_state"].is_null(), "no state changed: {room2}");

    // Room 1 enters the range (now [0, 2]): sent in full, once.
    let wider = list(json!([[0, 2]]), json!([["m.room.name", ""]]), 1);
    let pos = next["pos"].as_str().unwrap();
    let wide = ok(&alice, Some(pos), &wider).await;
    let sent = wide["rooms"].as_object().unwrap();
    assert_eq!(sent.keys().collect::<Vec<_>>(), [&rooms[1]], "{wide}");
    assert_eq!(wide["rooms"][&rooms[1]]["initial"], true);
}

#[tokio::test]
async fn a_room_out_of_range_catches_up_when_it_comes_back() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let quiet = alice.create_room(json!({})).await;
    let busy = alice.create_room(json!({})).await;
    alice.send_text(&busy, "b0", "busy 0").await;
    let body = list(json!([[0, 0]]), json!([]), 10);
    let first = ok(&alice, None, &body).await;
    assert!(first["rooms"].get(&busy).is_some(), "{first}");
    // Quiet comes on top: sent in full (it never was); busy is out of
    // range.
    alice.send_text(&quiet, "q1", "quiet 1").await;
    let pos = first["pos"].as_str().unwrap();
    let second = ok(&alice, Some(pos), &body).await;
    assert_eq!(second["rooms"][&quiet]["initial"], true, "{second}");
    assert_eq!(bodies(&second["rooms"][&quiet]["timeline"]), ["quiet 1"], "{second}");
    assert!(second["rooms"].get(&busy).is_none(), "{second}");
    // Busy gets a message while out of range (quiet stays on top).
    alice.send_text(&busy, "b1", "busy 1").await;
    alice.send_text(&quiet, "q2", "quiet 2").await;
    let pos = second["pos"].as_str().unwrap();
    let third = ok(&alice, Some(pos), &body).await;
    assert_eq!(bodies(&third["rooms"][&quiet]["timeline"]), ["quiet 2"], "{third}");
    assert!(third["rooms"].get(&busy).is_none(), "{third}");
    // Back on top, busy catches up from where it was last sent.
    alice.send_text(&busy, "b2", "busy 2").await;
    let pos = third["pos"].as_str().unwrap();
    let fourth = ok(&alice, Some(pos), &body).await;
    let room = &fourth["rooms"][&busy];
    assert!(room["initial"].is_null(), "{fourth}");
    assert_eq!(bodies(&room["timeline"]), ["busy 1", "busy 2"], "{fourth}");
    assert_eq!(room["num_live"], 1, "busy 1 came before the pos: {fourth}");
}

#[tokio::test]
async fn pos_retried_unknown_and_of_another_connection() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let body = list(json!([[0, 9]]), json!([]), 5);
    let first = ok(&alice, None, &body).await;
    let pos1 = first["pos"].as_str().unwrap().to_owned();
    alice.send_text(&room, "m1", "one").await;
    let second = ok(&alice, Some(&pos1), &body).await;
    assert_eq!(bodies(&second["rooms"][&room]["timeline"]), ["one"]);
    // The answer was lost: the client asks again from the same pos and
    // gets the message again.
    let retried = ok(&alice, Some(&pos1), &body).await;
    assert_eq!(bodies(&retried["rooms"][&room]["timeline"]), ["one"], "{retried}");
    let pos2 = retried["pos"].as_str().unwrap().to_owned();

    for bad in ["nonsense", "99999/s1", "-1/s1", ""] {
        let (status, answer) = ss(&alice, Some(bad), 0, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        assert_eq!(answer["errcode"], "M_UNKNOWN_POS", "{bad}: {answer}");
    }
    // Another connection's pos, or another user's, is unknown to this one.
    let mut other_conn = body.clone();
    other_conn["conn_id"] = json!("other");
    let (status, answer) = ss(&alice, Some(&pos2), 0, &other_conn).await;
    assert_eq!(
        (status, answer["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_UNKNOWN_POS"))
    );
    let bob = server.register("bob").await;
    let (status, answer) = ss(&bob, Some(&pos2), 0, &body).await;
    assert_eq!(
        (status, answer["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_UNKNOWN_POS"))
    );

    // The connection is kept by storage: after a restart the pos goes on.
    let token = alice.token.clone();
    let user_id = alice.user_id.clone();
    drop(alice);
    drop(bob);
    server.restart().await;
    let alice = User {
        server: &server,
        user_id,
        token,
    };
    alice.send_text(&room, "m2", "two").await;
    let after = ok(&alice, Some(&pos2), &body).await;
    assert_eq!(bodies(&after["rooms"][&room]["timeline"]), ["two"], "{after}");
}

#[tokio::test]
async fn a_request_with_pos_waits_for_news_and_is_woken_by_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let body = list(json!([[0, 9]]), json!([]), 5);
    let first = ok(&alice, None, &body).await;
    let pos = first["pos"].as_str().unwrap().to_owned();

    // Nothing new: answered empty at its timeout.
    let started = std::time::Instant::now();
    let (status, empty) = ss(&alice, Some(&pos), 300, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300), "{empty}");
    assert!(empty["rooms"].as_object().is_none_or(|r| r.is_empty()), "{empty}");

    // A message while it waits (60 s) answers it.
    let waiting = {
        let url = format!("{}{PATH}?timeout=60000&pos={}", server.base(), enc(&pos));
        let request = server.http.post(url).bearer_auth(&alice.token).json(&body);
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send_text(&room, "m", "wake up").await;
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by the message")
        .unwrap();
    assert_eq!(bodies(&answer["rooms"][&room]["timeline"]), ["wake up"], "{answer}");
}

#[tokio::test]
async fn required_state_wildcards_me_lazy_members_and_a_subscription_that_asks_for_more() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "topic": "the topic" }))
        .await;
    bob.join(&room).await;
    carol.join(&room).await;
    bob.send_text(&room, "b", "from bob").await;

    let body = list(
        json!([[0, 0]]),
        json!([
            ["m.room.member", "$LAZY"],
            ["m.room.member", "$ME"],
            ["m.room.topic", ""]
        ]),
        1,
    );
    let first = ok(&alice, None, &body).await;
    let sent = &first["rooms"][&room];
    assert_eq!(
        state_types(sent),
        [
            ("m.room.member".to_owned(), alice.user_id.clone()),
            ("m.room.member".to_owned(), bob.user_id.clone()),
            ("m.room.topic".to_owned(), String::new()),
        ],
        "$ME, and bob as the timeline's sender; not carol: {sent}"
    );
    assert_eq!(sent["joined_count"], 3);
    let heroes: Vec<&str> = sent["heroes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(heroes, [bob.user_id.as_str(), carol.user_id.as_str()], "{sent}");

    // A subscription asking for everything and a longer timeline: the room
    // is sent again at once, with all its state and its newest events.
    let mut subscribed = body.clone();
    subscribed["room_subscriptions"] = json!({ &room: { "required_state": [["*", "*"]], "timeline_limit": 20 } });
    let pos = first["pos"].as_str().unwrap();
    let more = ok(&alice, Some(pos), &subscribed).await;
    let sent = &more["rooms"][&room];
    let types: Vec<String> = state_types(sent).into_iter().map(|(t, _)| t).collect();
    for kind in [
        "m.room.create",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.topic",
    ] {
        assert!(types.iter().any(|t| t == kind), "{kind} in {sent}");
    }
    assert_eq!(types.iter().filter(|t| *t == "m.room.member").count(), 3, "{sent}");
    assert!(
        sent["timeline"].as_array().unwrap().len() > 1,
        "the longer timeline: {sent}"
    );
}

#[tokio::test]
async fn invites_and_leaves_and_the_list_filters() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let invited = bob.create_room(json!({ "name": "come in" })).await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&invited)),
        Some(&json!({ "user_id": alice.user_id })),
    )
    .await;
    let encrypted = alice
        .create_room(json!({ "initial_state": [{
            "type": "m.room.encryption", "state_key": "",
            "content": { "algorithm": "m.megolm.v1.aes-sha2" }
        }] }))
        .await;
    let direct = alice.create_room(json!({})).await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&alice.user_id)),
            Some(&json!({ bob.user_id.clone(): [direct] })),
        )
        .await;

    let lists = json!({
        "conn_id": "filters",
        "lists": {
            "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": true } },
            "encrypted": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_encrypted": true } },
            "dms": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_dm": true } },
            "all": { "ranges": [[0, 9]], "timeline_limit": 1,
                     "required_state": [["m.room.member", "$ME"]] },
        },
    });
    let first = ok(&alice, None, &lists).await;
    assert_eq!(first["lists"]["invites"]["count"], 1, "{first}");
    assert_eq!(first["lists"]["encrypted"]["count"], 1, "{first}");
    assert_eq!(first["lists"]["dms"]["count"], 1, "{first}");
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    let invite = &first["rooms"][&invited];
    let stripped: Vec<&str> = invite["invite_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        stripped.contains(&"m.room.name") && stripped.contains(&"m.room.member"),
        "{invite}"
    );
    assert!(invite["timeline"].is_null(), "{invite}");
    assert_eq!(first["rooms"][&direct]["is_dm"], true, "{first}");

    // Alice leaves the encrypted room: the next answer shows it once, with
    // her leave as its state; then it is gone from the lists.
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&encrypted)),
            Some(&json!({})),
        )
        .await;
    let pos = first["pos"].as_str().unwrap();
    let left = ok(&alice, Some(pos), &lists).await;
    let room = &left["rooms"][&encrypted];
    let me = room["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("her membership: {left}"));
    assert_eq!(me["content"]["membership"], "leave");
    let pos = left["pos"].as_str().unwrap();
    let after = ok(&alice, Some(pos), &lists).await;
    assert_eq!(after["lists"]["all"]["count"], 2, "{after}");
    assert!(after["rooms"].get(&encrypted).is_none(), "{after}");
}

#[tokio::test]
async fn extensions_to_device_e2ee_account_data_receipts_typing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let (_, sent) = bob.send_text(&room, "m", "hi").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    bob.ok(
        Method::POST,
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(&event_id)
        ),
        Some(&json!({})),
    )
    .await;
    let mut messages = serde_json::Map::new();
    messages.insert(alice.user_id.clone(), json!({ "*": { "secret": 1 } }));
    bob.ok(
        Method::PUT,
        "/_matrix/client/v3/sendToDevice/org.example.test/t1",
        Some(&json!({ "messages": messages })),
    )
    .await;

    let body = json!({
        "conn_id": "ext",
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
        "extensions": {
            "to_device": { "enabled": true },
            "e2ee": { "enabled": true },
            "account_data": { "enabled": true },
            "receipts": { "enabled": true },
            "typing": { "enabled": true },
        },
    });
    let first = ok(&alice, None, &body).await;
    let ext = &first["extensions"];
    assert_eq!(ext["to_device"]["events"][0]["content"]["secret"], 1, "{ext}");
    let next_batch = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();
    assert!(ext["e2ee"]["device_unused_fallback_key_types"].is_array(), "{ext}");
    let global: Vec<&str> = ext["account_data"]["global"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(global.contains(&"m.push_rules"), "{ext}");
    let receipt = &ext["receipts"]["rooms"][&room];
    assert_eq!(receipt["type"], "m.receipt", "{ext}");
    assert!(
        receipt["content"][&event_id]["m.read"][&bob.user_id].is_object(),
        "{ext}"
    );

    // Bob types: alice's waiting request is woken with it. The to-device
    // message, acknowledged by its next_batch, is not sent again.
    let mut again = body.clone();
    again["extensions"]["to_device"]["since"] = json!(next_batch);
    let pos = first["pos"].as_str().unwrap().to_owned();
    let waiting = {
        let url = format!("{}{PATH}?timeout=60000&pos={}", server.base(), enc(&pos));
        let request = server.http.post(url).bearer_auth(&alice.token).json(&again);
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
        Some(&json!({ "typing": true, "timeout": 30000 })),
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by typing")
        .unwrap();
    let ext = &answer["extensions"];
    assert_eq!(
        ext["typing"]["rooms"][&room]["content"]["user_ids"],
        json!([bob.user_id]),
        "{answer}"
    );
    assert!(
        ext["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()),
        "{answer}"
    );
    assert!(
        ext["receipts"]["rooms"].get(&room).is_none(),
        "no new receipt: {answer}"
    );
}

#[tokio::test]
async fn bad_input_is_a_matrix_error() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bad = [
        json!({ "lists": { "all": { "timeline_limit": 1 } } }),
        json!({ "lists": { "all": { "ranges": [[0]], "timeline_limit": 1 } } }),
        json!({ "lists": { "all": { "ranges": [[-1, 3]], "timeline_limit": 1 } } }),
        json!({ "lists": "nope" }),
        json!({ "conn_id": "x".repeat(100) }),
        json!({ "extensions": { "to_device": { "enabled": true, "since": "not a number" } } }),
    ];
    for body in bad {
        let (status, answer) = ss(&alice, None, 0, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["errcode"].as_str().is_some_and(|e| e.starts_with("M_")),
            "{body}: {answer}"
        );
    }
    // A huge range is clamped to the list.
    let (status, answer) = ss(
        &alice,
        None,
        0,
        &json!({ "lists": { "all": { "ranges": [[0, 1_000_000_000u64]], "timeline_limit": 1 } } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["lists"]["all"]["count"], 0);
    // Without an access token.
    let (status, answer) = server.request(Method::POST, PATH, None, Some(&json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
}
