//! Joining with partial state (issue 17, item 2): weft asks the resident
//! server for the state without its member events (`omit_members`), the
//! room is usable at once, and the full state is fetched in the
//! background. Against another weft here; against a real Synapse in
//! `tests/synapse_interop.rs`.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{TestServer, User, enc};
use reqwest::Method;
use serde_json::{Value, json};

/// The joined members of a room as `user` sees them (`/joined_members`,
/// which waits for the full state).
async fn joined_members(user: &User<'_>, room: &str) -> BTreeSet<String> {
    let answer = user
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room)),
            None,
        )
        .await;
    answer["joined"].as_object().unwrap().keys().cloned().collect()
}

/// The joined members in `/members`.
async fn members(user: &User<'_>, room: &str) -> BTreeSet<String> {
    let answer = user
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/members?membership=join", enc(room)),
            None,
        )
        .await;
    answer["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect()
}

async fn newest_message(user: &User<'_>, room: &str) -> Option<String> {
    let page: Value = user.messages(room, "dir=b&limit=10").await;
    page["chunk"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.room.message")
        .and_then(|e| e["content"]["body"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_joined_with_partial_state_is_usable_and_gets_its_members() {
    let a = TestServer::start_federating().await;
    let b = TestServer::start_federating_with(|c| c.partial_state_joins = true).await;
    let alice = a.register("alice").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Many members" }))
        .await;
    let mut expected = BTreeSet::from([alice.user_id.to_string()]);
    let mut others = Vec::new();
    for i in 0..20 {
        let user = a.register(&format!("member{i}")).await;
        assert_eq!(user.join(&room).await.0, 200);
        expected.insert(user.user_id.to_string());
        others.push(user);
    }
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
    expected.insert(bob.user_id.to_string());

    // Usable at once: Bob sends, and a member whose join Bob's server was
    // not given with the join sends to him.
    let (status, body) = bob.send_text(&room, "b0", "hello from bob").await;
    assert_eq!(status, 200, "{body}");
    common::eventually(Duration::from_secs(30), "the host gets Bob's message", || async {
        match newest_message(&alice, &room).await.as_deref() {
            Some("hello from bob") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (status, body) = others[7].send_text(&room, "m7", "hello from member7").await;
    assert_eq!(status, 200, "{body}");
    common::eventually(Duration::from_secs(30), "Bob gets member7's message", || async {
        match newest_message(&bob, &room).await.as_deref() {
            Some("hello from member7") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The member lists are whole (they wait for the full state).
    assert_eq!(joined_members(&bob, &room).await, expected);
    assert_eq!(members(&bob, &room).await, expected);
    assert_eq!(joined_members(&alice, &room).await, expected);
    // And so is the room's current state.
    let state = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            None,
        )
        .await;
    let in_state: BTreeSet<String> = state
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(in_state, expected);

    // A member joining after the resync is seen by both.
    let late = a.register("late").await;
    assert_eq!(late.join(&room).await.0, 200);
    expected.insert(late.user_id.to_string());
    common::eventually(Duration::from_secs(30), "Bob's server sees the late join", || async {
        let now = joined_members(&bob, &room).await;
        (now == expected).then_some(()).ok_or_else(|| format!("{now:?}"))
    })
    .await;
}
