//! Every stored event verifies (content hash, signature, event ID) against
//! the key the server publishes at `/_matrix/key/v2/server`; and a restart
//! loses nothing.

mod common;

use common::{TestServer, enc};
use reqwest::Method;
use ruma::{
    CanonicalJsonObject, OwnedRoomId, RoomVersionId,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet, Verified},
};
use serde_json::{Value, json};
use weft::storage::{Direction, StoredEvent};

/// Fetches the server's key document over HTTPS and checks its
/// self-signature; returns the key map to verify events with.
async fn published_keys(server: &TestServer) -> PublicKeyMap {
    weft::tls::install_crypto_provider();
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let doc: CanonicalJsonObject = http
        .get(format!("{}/_matrix/key/v2/server", server.federation_base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server_name = doc["server_name"].as_str().unwrap().to_owned();
    assert_eq!(server_name, "localhost");
    let valid_until = doc["valid_until_ts"].as_integer().map(i64::from).unwrap();
    assert!(valid_until > ruma::MilliSecondsSinceUnixEpoch::now().get().into());
    let mut set = PublicKeySet::new();
    for (key_id, key) in doc["verify_keys"].as_object().unwrap() {
        let key = key.as_object().unwrap()["key"].as_str().unwrap();
        set.insert(key_id.clone(), Base64::parse(key).unwrap());
    }
    let mut map = PublicKeyMap::new();
    map.insert(server_name, set);
    ruma::signatures::verify_json(&map, &doc).expect("the key document is self-signed");
    map
}

async fn all_events(server: &TestServer, room: &str) -> Vec<StoredEvent> {
    let room_id: OwnedRoomId = room.parse().unwrap();
    server
        .running()
        .services
        .storage
        .timeline_page(&room_id, weft::timeline::END, Direction::Backward, 100_000)
        .await
        .unwrap()
}

/// Checks hashes, signature and event ID of every event of the rooms.
async fn verify_rooms(server: &TestServer, rooms: &[(String, RoomVersionId)]) -> usize {
    let keys = published_keys(server).await;
    let mut checked = 0;
    for (room, version) in rooms {
        let rules = version.rules().unwrap();
        for event in all_events(server, room).await {
            let object: CanonicalJsonObject = serde_json::from_str(&event.pdu.json).unwrap();
            let verified = ruma::signatures::verify_event(&keys, &object, &rules)
                .unwrap_or_else(|e| panic!("{} does not verify: {e}", event.pdu.event_id));
            let expected = if event.meta.redacted_by.is_some() {
                Verified::Signatures
            } else {
                Verified::All
            };
            assert_eq!(verified, expected, "{}", event.pdu.event_id);
            let hash = ruma::signatures::reference_hash(&object, &rules).unwrap();
            assert_eq!(
                event.pdu.event_id.as_str(),
                format!("${hash}"),
                "event ID is the reference hash"
            );
            checked += 1;
        }
    }
    checked
}

fn bodies(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.pdu.kind.to_string() == "m.room.message")
        .map(|e| {
            e.pdu.content_value()["body"]
                .as_str()
                .unwrap_or("<redacted>")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_verify_and_survive_a_restart() {
    let mut server = TestServer::start().await;
    let (alice_token, bob_token, rooms) = {
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let mut rooms = Vec::new();
        for version in [
            RoomVersionId::V3,
            RoomVersionId::V6,
            RoomVersionId::V9,
            RoomVersionId::V10,
            RoomVersionId::V11,
            RoomVersionId::V12,
        ] {
            let room = alice
                .create_room(json!({
                    "room_version": version.as_str(),
                    "preset": "public_chat",
                    "name": "signed",
                    "topic": "every event verifies",
                    "room_alias_name": format!("signed{}", version.as_str()),
                }))
                .await;
            assert_eq!(bob.join(&room).await.0, 200);
            for i in 0..5 {
                alice
                    .send_text(&room, &format!("{version}-a{i}"), &format!("a{i}"))
                    .await;
                bob.send_text(&room, &format!("{version}-b{i}"), &format!("b{i}")).await;
            }
            let (_, sent) = bob.send_text(&room, &format!("{version}-oops"), "oops").await;
            bob.ok(
                Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/redact/{}/r",
                    enc(&room),
                    enc(sent["event_id"].as_str().unwrap())
                ),
                Some(&json!({})),
            )
            .await;
            rooms.push((room, version));
        }
        (alice.token.clone(), bob.token.clone(), rooms)
    };
    let checked = verify_rooms(&server, &rooms).await;
    assert!(checked > rooms.len() * 20, "checked only {checked} events");

    let before: Vec<Vec<String>> = {
        let mut out = Vec::new();
        for (room, _) in &rooms {
            out.push(bodies(&all_events(&server, room).await));
        }
        out
    };

    server.restart().await;

    // Everything is still there, still verifies; sessions survive.
    for ((room, _), expected) in rooms.iter().zip(&before) {
        assert_eq!(&bodies(&all_events(&server, room).await), expected);
    }
    assert_eq!(verify_rooms(&server, &rooms).await, checked);
    let alice = common::User {
        server: &server,
        user_id: "@alice:localhost".into(),
        token: alice_token,
    };
    let bob = common::User {
        server: &server,
        user_id: "@bob:localhost".into(),
        token: bob_token,
    };
    let who = bob.ok(Method::GET, "/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(who["user_id"], "@bob:localhost");
    let resolved = bob
        .ok(
            Method::GET,
            "/_matrix/client/v3/directory/room/%23signed11:localhost",
            None,
        )
        .await;
    let v11 = rooms.iter().find(|(_, v)| *v == RoomVersionId::V11).unwrap();
    assert_eq!(resolved["room_id"], v11.0.as_str());

    // The rooms go on from where they were: one forward extremity, the
    // new event's parent is the last event before the restart.
    for (room, _) in &rooms {
        let last = all_events(&server, room).await.remove(0);
        let (status, sent) = alice.send_text(room, "after-restart", "after restart").await;
        assert_eq!(status, 200, "{sent}");
        let event_id: ruma::OwnedEventId = sent["event_id"].as_str().unwrap().try_into().unwrap();
        let new = server
            .running()
            .services
            .storage
            .event(&event_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(new.pdu.prev_events, vec![last.pdu.event_id.clone()]);
        assert_eq!(new.pdu.depth, last.pdu.depth + 1);
    }
    assert_eq!(verify_rooms(&server, &rooms).await, checked + rooms.len());

    // Sync after restart still sees the whole room state.
    let sync: Value = bob.sync("").await;
    for (room, _) in &rooms {
        let state = sync["rooms"]["join"][room]["state"]["events"].as_array().unwrap();
        assert!(state.iter().any(|e| e["type"] == "m.room.name"), "state after restart");
    }
}
