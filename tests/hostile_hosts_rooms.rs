//! The hostile server (`common::hostile`) as the resident server of a room
//! weft joins: `make_join`, `send_join` (with a partial state when asked),
//! `/state` at the join, then its members talking over `/send`.

mod common;

use std::{collections::HashSet, time::Duration};

use common::{
    TestServer, User, enc,
    federation::verify_pdu,
    hostile::{Hostile, auth_events_of, set_auth_events},
};
use reqwest::Method;
use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId,
    api::federation::{
        event::get_room_state,
        membership::{create_join_event, prepare_join_event},
    },
};
use serde_json::{Value, json};

const MEMBERS: [&str; 5] = ["m1", "m2", "m3", "m4", "m5"];
/// A `/sync` filter that loads members lazily (which has rooms joined
/// with partial state in its answers).
const LAZY: &str = "filter=%7B%22room%22%3A%7B%22state%22%3A%7B%22lazy_load_members%22%3Atrue%7D%7D%7D";

/// Alice of weft joins `room` of the hostile server through it; the join
/// went through `make_join` and `send_join`, and is the hostile server's
/// one forward extremity.
async fn alice_joins<'a>(weft: &'a TestServer, hostile: &Hostile, room: &OwnedRoomId) -> User<'a> {
    let alice = weft.register("alice").await;
    let (status, body) = alice
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(room.as_str()),
                enc(hostile.name.as_str())
            ),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "join: {body}");
    assert_eq!(body["room_id"], room.as_str());
    assert!(
        !hostile.seen_at("/_matrix/federation/v1/make_join/").is_empty(),
        "make_join was asked"
    );
    assert!(
        !hostile.seen_at("/_matrix/federation/v2/send_join/").is_empty()
            || !hostile.seen_at("/_matrix/federation/v1/send_join/").is_empty(),
        "send_join was asked: {:?}",
        hostile.seen()
    );
    // The join is in the hostile server's view; the state before it is
    // the state weft was given (or the full one, the partial state's).
    let view = hostile.room(room);
    let join = view.state[&("m.room.member".to_owned(), alice.user_id.clone())].clone();
    assert_eq!(view.extremities, vec![join.clone()]);
    assert_eq!(view.state_before[&join].len() + 1, view.state.len());
    alice
}

/// `member` of the hostile server says `text` in `room` over `/send`;
/// weft takes it and shows it to Alice in `/messages`.
async fn member_talks(
    weft: &TestServer,
    hostile: &Hostile,
    alice: &User<'_>,
    room: &OwnedRoomId,
    member: &str,
    text: &str,
) {
    let said = hostile.message(room, &hostile.user(member), text);
    hostile.commit(room, &said);
    let (status, answer) = hostile
        .send_transaction(&weft.server_name(), text, std::slice::from_ref(&said.pdu))
        .await;
    assert_eq!(status, 200, "{answer}");
    let result = &answer["pdus"][said.id.as_str()];
    assert!(result.is_object() && result.get("error").is_none(), "{answer}");
    common::eventually(Duration::from_secs(30), "the message is in /messages", || async {
        let page = alice.messages(room.as_str(), "dir=b&limit=50").await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        match chunk.iter().find(|e| e["event_id"] == said.id.as_str()) {
            Some(e) if e["content"]["body"] == text => Ok(()),
            _ => Err(page.to_string()),
        }
    })
    .await;
}

/// The joined members of `room` in `user`'s `/joined_members` (which waits
/// for the full state).
async fn joined_members(user: &User<'_>, room: &OwnedRoomId) -> HashSet<String> {
    let joined = user.joined_members(room.as_str()).await;
    joined["joined"].as_object().unwrap().keys().cloned().collect()
}

/// Two messages of m1 in `room`, the second after the first ("the gap",
/// "past the gap"): weft sent the second alone asks for the first.
fn a_gap(hostile: &Hostile, room: &OwnedRoomId) -> (common::hostile::Built, common::hostile::Built) {
    let unseen = hostile.message(room, &hostile.user("m1"), "the gap");
    hostile.commit(room, &unseen);
    let past_gap = hostile.message(room, &hostile.user("m1"), "past the gap");
    hostile.commit(room, &past_gap);
    (unseen, past_gap)
}

/// weft (joining with partial state) and the hostile server with a room
/// named `name` of the creator and [`MEMBERS`], whose `/state` it does not
/// serve yet: a join there stays partial until the test lets it
/// (`serve_state`).
async fn resync_held(name: &str) -> (TestServer, Hostile, OwnedRoomId) {
    let weft = TestServer::start_federating_with(|c| c.partial_state_joins = true).await;
    let hostile = Hostile::start().await;
    hostile.set_behaviour(|b| b.serve_state = false);
    let room = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some(name));
    (weft, hostile, room)
}

/// The hostile server's creator and [`MEMBERS`], but `except`.
fn residents(hostile: &Hostile, except: &[&str]) -> HashSet<String> {
    std::iter::once("creator")
        .chain(MEMBERS)
        .filter(|m| !except.contains(m))
        .map(|m| hostile.user(m).to_string())
        .collect()
}

/// A weft user joins a named room of the hostile server with five members
/// besides its creator (its full state given), sees its state, and gets a
/// message sent there.
async fn weft_joins_a_hostile_room(version: RoomVersionId) {
    let weft = TestServer::start_federating_with(|c| c.partial_state_joins = true).await;
    let hostile = Hostile::start().await;
    hostile.set_behaviour(|b| b.serve_partial_state = false);
    let room = hostile.create_room(version.clone(), "creator", &MEMBERS, Some("The hostile room"));
    assert_eq!(hostile.version(&room), version);
    let alice = alice_joins(&weft, &hostile, &room).await;

    // weft took the room's state.
    let name = alice.state_event(room.as_str(), "m.room.name", "").await;
    assert_eq!(name["name"], "The hostile room");
    for member in MEMBERS {
        alice
            .wait_for_membership(room.as_str(), hostile.user(member).as_str(), "join")
            .await;
    }
    member_talks(&weft, &hostile, &alice, &room, "m5", "hi").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_joins_a_hostile_room_v10() {
    weft_joins_a_hostile_room(RoomVersionId::V10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_joins_a_hostile_room_v11() {
    weft_joins_a_hostile_room(RoomVersionId::V11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_joins_a_hostile_room_v12() {
    weft_joins_a_hostile_room(RoomVersionId::V12).await;
}

/// With the partial state served and `/state` down, the room stays
/// partial in weft; a member weft has no member event of still talks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_talks_while_the_room_is_partial() {
    let (weft, hostile, room) = resync_held("Partial").await;
    let alice = alice_joins(&weft, &hostile, &room).await;
    let name = alice.state_event(room.as_str(), "m.room.name", "").await;
    assert_eq!(name["name"], "Partial");
    member_talks(&weft, &hostile, &alice, &room, "m5", "hi while partial").await;
}

/// With the partial state served and then the full one (`/state`), weft
/// gets every member, and a member talks after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_talks_after_the_partial_state_is_resynced() {
    let weft = TestServer::start_federating_with(|c| c.partial_state_joins = true).await;
    let hostile = Hostile::start().await;
    let room = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("Resynced"));
    let alice = alice_joins(&weft, &hostile, &room).await;
    // `/joined_members` is the full list (waiting for it, if weft must).
    let mut want = residents(&hostile, &[]);
    want.insert(alice.user_id.clone());
    assert_eq!(joined_members(&alice, &room).await, want);
    member_talks(&weft, &hostile, &alice, &room, "m5", "hi after the resync").await;
}

fn parsed(pdus: &[Box<serde_json::value::RawValue>]) -> Vec<Value> {
    pdus.iter().map(|p| serde_json::from_str(p.get()).unwrap()).collect()
}

fn members(state: &[Value]) -> HashSet<String> {
    state
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect()
}

/// `user` (of weft's server) joins `room` of the hostile server the way a
/// server does, with weft's federation client and key, asking for a
/// partial state or not. weft itself does not take the room.
async fn raw_join(
    weft: &TestServer,
    hostile: &Hostile,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    omit_members: bool,
) -> (OwnedEventId, create_join_event::v2::RoomState) {
    let fed = &weft.services().federation;
    let mut make = prepare_join_event::v1::Request::new(room.clone(), user.clone());
    make.ver = vec![RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];
    let template = fed.send(&hostile.name, make).await.expect("make_join");
    let version = template.room_version.expect("room version");
    assert_eq!(version, hostile.version(room));
    let rules = version.rules().unwrap();
    let mut event: CanonicalJsonObject = serde_json::from_str(template.event.get()).unwrap();
    ruma::signatures::hash_and_sign_event(
        weft.server_name().as_str(),
        weft.services().keys.key_pair(),
        &mut event,
        &rules.redaction,
    )
    .unwrap();
    let event_id: OwnedEventId = format!("${}", ruma::signatures::reference_hash(&event, &rules).unwrap())
        .try_into()
        .unwrap();
    let pdu = serde_json::value::to_raw_value(&event).unwrap();
    let mut send = create_join_event::v2::Request::new(room.clone(), event_id.clone(), pdu);
    send.omit_members = omit_members;
    let answer = fed.send(&hostile.name, send).await.expect("send_join").room_state;
    (event_id, answer)
}

/// The answers of the hostile server as a resident: a partial state
/// (no member events, the auth chain they need), a full one, and `/state`
/// at a join (all the members), or 503 when it is told not to serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_server_serves_partial_and_full_state() {
    let weft = TestServer::start_federating_with(|c| c.partial_state_joins = true).await;
    let hostile = Hostile::start().await;
    let room = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("Partial"));
    let all_members = residents(&hostile, &[]);
    let zed: OwnedUserId = format!("@zed:{}", weft.server_name()).try_into().unwrap();

    // A partial state: no members (zed had none before), the rest of the state.
    let (zed_join, answer) = raw_join(&weft, &hostile, &room, &zed, true).await;
    for pdu in answer.state.iter().chain(&answer.auth_chain) {
        verify_pdu(&weft, &RoomVersionId::V11, pdu).await;
    }
    assert!(answer.members_omitted);
    assert_eq!(answer.servers_in_room, Some(vec![hostile.name.to_string()]));
    let state = parsed(&answer.state);
    assert_eq!(members(&state), HashSet::new());
    let kinds: HashSet<&str> = state.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        HashSet::from([
            "m.room.create",
            "m.room.power_levels",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.name",
        ])
    );
    // The chain: what the state and the join need beyond the state: the
    // creator's join (an auth event of the power levels and the rest).
    let chain = parsed(&answer.auth_chain);
    assert_eq!(members(&chain), HashSet::from([hostile.user("creator").to_string()]));
    assert_eq!(chain.len(), 1, "{chain:?}");
    let joined: Value = serde_json::from_str(answer.event.as_ref().unwrap().get()).unwrap();
    assert_eq!(joined["state_key"], zed.as_str());

    // `/state` at zed's join: the full state before it.
    let fed = &weft.services().federation;
    let at_join = fed
        .send(
            &hostile.name,
            get_room_state::v1::Request::new(zed_join.clone(), room.clone()),
        )
        .await
        .expect("/state");
    assert_eq!(members(&parsed(&at_join.pdus)), all_members);

    // A full state, asked for: every member, zed included now.
    let yan: OwnedUserId = format!("@yan:{}", weft.server_name()).try_into().unwrap();
    let (_, full) = raw_join(&weft, &hostile, &room, &yan, false).await;
    assert!(!full.members_omitted);
    let mut want = all_members.clone();
    want.insert(zed.to_string());
    assert_eq!(members(&parsed(&full.state)), want);

    // Partial state turned off: asked for, not given.
    hostile.set_behaviour(|b| b.serve_partial_state = false);
    let xia: OwnedUserId = format!("@xia:{}", weft.server_name()).try_into().unwrap();
    let (_, refused) = raw_join(&weft, &hostile, &room, &xia, true).await;
    assert!(!refused.members_omitted);
    want.insert(yan.to_string());
    assert_eq!(members(&parsed(&refused.state)), want);
    // Its servers: the hostile server's and weft's (zed, yan).
    let mut servers = vec![hostile.name.to_string(), weft.server_name().to_string()];
    servers.sort();
    assert_eq!(refused.servers_in_room, Some(servers));

    // `/state` turned off: 503, and still seen.
    hostile.set_behaviour(|b| b.serve_state = false);
    let before = hostile.seen_at("/_matrix/federation/v1/state/").len();
    let err = fed
        .send(&hostile.name, get_room_state::v1::Request::new(zed_join, room.clone()))
        .await
        .expect_err("/state is down");
    assert_eq!(err.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert_eq!(hostile.seen_at("/_matrix/federation/v1/state/").len(), before + 1);
}

/// The resident server will not give the full state: the room stays
/// partial (usable: Alice sends, a member talks), and `/joined_members`
/// waits. weft restarts meanwhile; once the state is served, the resync
/// (resumed by the restarted server, retrying) completes the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_the_resync_resumes_it() {
    let mut weft = TestServer::start_federating_with(|c| c.partial_state_joins = true).await;
    let hostile = Hostile::start().await;
    hostile.set_behaviour(|b| b.serve_state = false);
    let room = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("Restarted"));
    let alice_id = {
        let alice = alice_joins(&weft, &hostile, &room).await;
        let (status, body) = alice.send_text(room.as_str(), "a0", "sent while partial").await;
        assert_eq!(status, 200, "{body}");
        member_talks(&weft, &hostile, &alice, &room, "m2", "talking while partial").await;
        // The full list waits for the full state: not within a second.
        let waiting = tokio::time::timeout(
            Duration::from_secs(1),
            alice.call(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room.as_str())),
                None,
            ),
        )
        .await;
        assert!(waiting.is_err(), "/joined_members answered while partial: {waiting:?}");
        // Nor does weft give the room's state to others meanwhile.
        let join_id = hostile.room(&room).state[&("m.room.member".to_owned(), alice.user_id.clone())].clone();
        let (status, body) = hostile
            .request(
                &weft.server_name(),
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/state_ids/{}?event_id={}",
                    enc(room.as_str()),
                    enc(join_id.as_str())
                ),
                None,
            )
            .await;
        assert_eq!((status, &body["errcode"]), (404, &json!("M_NOT_FOUND")), "{body}");
        let (status, body) = hostile
            .request(
                &weft.server_name(),
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/make_join/{}/{}?ver=11",
                    enc(room.as_str()),
                    enc(hostile.user("newcomer").as_str())
                ),
                None,
            )
            .await;
        assert_eq!((status, &body["errcode"]), (404, &json!("M_NOT_FOUND")), "{body}");
        (alice.user_id.clone(), alice.token.clone())
    };
    // (The state's IDs are asked first.)
    let asked_before = hostile.seen_at("/_matrix/federation/v1/state_ids/").len();
    assert!(asked_before >= 1, "the resync asked for the state");

    weft.restart().await;
    hostile.set_behaviour(|b| b.serve_state = true);
    let alice = User {
        server: &weft,
        user_id: alice_id.0,
        token: alice_id.1,
    };
    let mut want = residents(&hostile, &[]);
    want.insert(alice.user_id.clone());
    assert_eq!(joined_members(&alice, &room).await, want);
    assert!(
        hostile.seen_at("/_matrix/federation/v1/state_ids/").len() > asked_before,
        "the restarted server asked again"
    );
    member_talks(&weft, &hostile, &alice, &room, "m4", "after the restart").await;
}

/// A join answer with forged state in it (full state): an event whose
/// signature does not verify is dropped, one its own auth events refuse (a
/// member without the power to name the room) is held rejected, and weft
/// takes the room's honest state; the room works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_state_in_a_join_answer_is_dropped_or_rejected() {
    let weft = TestServer::start_federating().await;
    let hostile = Hostile::start().await;
    let room = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("The hostile room"));
    // Both newer than the room's name, which each would replace if taken.
    let mut bad_signature = hostile
        .build(
            &room,
            &hostile.user("creator"),
            "m.room.name",
            Some(""),
            json!({ "name": "A bad signature" }),
        )
        .pdu;
    let signatures = bad_signature["signatures"][hostile.name.as_str()]
        .as_object_mut()
        .expect("the hostile server's signatures");
    for signature in signatures.values_mut() {
        *signature = json!("A".repeat(86)); // 64 zero bytes, unpadded base64
    }
    let unauthorised = hostile.build(
        &room,
        &hostile.user("m1"),
        "m.room.name",
        Some(""),
        json!({ "name": "Not allowed" }),
    );
    hostile.set_behaviour(|b| b.extra_join_state = vec![bad_signature, unauthorised.pdu.clone()]);

    let alice = alice_joins(&weft, &hostile, &room).await;
    let name = alice.state_event(room.as_str(), "m.room.name", "").await;
    assert_eq!(name["name"], "The hostile room", "weft took a forged name: {name}");
    let held = weft
        .services()
        .storage
        .event(&unauthorised.id)
        .await
        .unwrap()
        .expect("the unauthorised event is held");
    assert!(
        held.meta.outlier && held.meta.rejected.is_some(),
        "held as a rejected outlier: {:?}",
        held.meta
    );
    for member in MEMBERS {
        alice
            .wait_for_membership(room.as_str(), hostile.user(member).as_str(), "join")
            .await;
    }
    member_talks(&weft, &hostile, &alice, &room, "m2", "still here").await;
}

/// The messages of `/messages` as `(event ID, body)`, newest first.
async fn messages(alice: &User<'_>, room: &OwnedRoomId) -> Vec<(String, String)> {
    let page = alice.messages(room.as_str(), "dir=b&limit=100").await;
    page["chunk"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| {
            (
                e["event_id"].as_str().unwrap_or_default().to_owned(),
                e["content"]["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A member banned before weft joins (the ban is left out of the partial
/// state, with the other member events) joins again and talks while the
/// room is partial, citing its old join: weft takes both then, as the
/// partial state allows. The resync's full state holds the ban: both are
/// rejected then, the member's entry in the state is the ban again, and
/// the message leaves `/messages`; an honest member's message stays, and
/// the banned member's next message is rejected at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_full_state_refuses_are_rejected_at_the_resync() {
    let (weft, hostile, room) = resync_held("Banned").await;
    let m5 = hostile.user("m5");
    let old_join = hostile.room(&room).state[&("m.room.member".to_owned(), m5.to_string())].clone();
    let ban = hostile.build(
        &room,
        &hostile.user("creator"),
        "m.room.member",
        Some(m5.as_str()),
        json!({ "membership": "ban" }),
    );
    hostile.commit(&room, &ban);
    let alice = alice_joins(&weft, &hostile, &room).await;

    // m5's events cite its old join where the ban stands.
    let forged = |kind: &str, state_key: Option<&str>, content: Value| {
        let mut draft = hostile.draft(&room, &m5, kind, state_key, content);
        let auth: Vec<_> = auth_events_of(&draft)
            .into_iter()
            .map(|id| if id == ban.id { old_join.clone() } else { id })
            .collect();
        set_auth_events(&mut draft, &auth);
        let built = hostile.sign(&room, draft);
        hostile.commit(&room, &built);
        built
    };
    let rejoin = forged(
        "m.room.member",
        Some(m5.as_str()),
        json!({ "membership": "join", "displayname": "back again" }),
    );
    let said = forged(
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "banned but talking" }),
    );
    let (status, answer) = hostile
        .send_transaction(&weft.server_name(), "banned", &[rejoin.pdu.clone(), said.pdu.clone()])
        .await;
    assert_eq!(status, 200, "{answer}");
    for id in [&rejoin.id, &said.id] {
        let result = &answer["pdus"][id.as_str()];
        assert!(result.is_object() && result.get("error").is_none(), "{answer}");
    }
    common::eventually(
        Duration::from_secs(30),
        "the partial room takes the message",
        || async {
            let now = messages(&alice, &room).await;
            now.iter()
                .any(|(id, _)| id == said.id.as_str())
                .then_some(())
                .ok_or_else(|| format!("{now:?}"))
        },
    )
    .await;
    member_talks(&weft, &hostile, &alice, &room, "m2", "honest while partial").await;
    let honest = messages(&alice, &room).await[0].0.clone();

    // The full state comes (the resync retries).
    hostile.set_behaviour(|b| b.serve_state = true);
    let mut want = residents(&hostile, &["m5"]);
    want.insert(alice.user_id.clone());
    assert_eq!(
        joined_members(&alice, &room).await,
        want,
        "the banned member is not joined"
    );
    let member = alice.state_event(room.as_str(), "m.room.member", m5.as_str()).await;
    assert_eq!(member["membership"], "ban", "{member}");
    let storage = &weft.services().storage;
    for id in [&rejoin.id, &said.id] {
        let held = storage.event(id).await.unwrap().expect("held");
        assert!(held.meta.rejected.is_some(), "{id} is rejected: {:?}", held.meta);
    }
    let honest_id = OwnedEventId::try_from(honest.as_str()).unwrap();
    let held = storage.event(&honest_id).await.unwrap().expect("held");
    assert!(held.meta.rejected.is_none(), "{:?}", held.meta);
    let now = messages(&alice, &room).await;
    assert!(!now.iter().any(|(id, _)| id == said.id.as_str()), "{now:?}");
    assert!(now.iter().any(|(id, _)| *id == honest), "{now:?}");

    // m5's next message (its auth events name the refused join) is
    // rejected on arrival; the room goes on.
    let again = hostile.message(&room, &m5, "still talking");
    hostile.commit(&room, &again);
    let (status, answer) = hostile
        .send_transaction(&weft.server_name(), "again", std::slice::from_ref(&again.pdu))
        .await;
    assert_eq!(status, 200, "{answer}");
    let held = storage.event(&again.id).await.unwrap().expect("held");
    assert!(held.meta.rejected.is_some(), "{answer} {:?}", held.meta);
    member_talks(&weft, &hostile, &alice, &room, "m4", "after the resync").await;
}

/// The senders of `server` in the presence events of a `/sync` answer,
/// with their status messages.
fn presence_of(sync: &Value, server: &str) -> Vec<(String, String)> {
    sync["presence"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["sender"].as_str().unwrap_or_default().to_owned(),
                e["content"]["status_msg"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .filter(|(user, _)| user.ends_with(&format!(":{server}")))
        .collect()
}

/// Presence that came while the room was partial, of a member weft did not
/// know of yet, reaches Alice once the resync makes the member known, even
/// in a sync from a point after it came (a sync that loads members lazily,
/// which has the room all along: it is not sent again in full); the presence of the resident
/// server's users who share no room with her never does (not even while
/// the room is partial). Her `/sync` names the members learned in
/// `device_lists.changed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_device_lists_of_members_learned_at_the_resync_reach_the_room() {
    let (weft, hostile, room) = resync_held("Presence").await;
    let alice = alice_joins(&weft, &hostile, &room).await;
    let (m3, stranger) = (hostile.user("m3"), hostile.user("stranger"));
    let update = |user: &OwnedUserId, msg: &str| {
        json!({
            "user_id": user, "presence": "online", "status_msg": msg,
            "last_active_ago": 1000, "currently_active": true,
        })
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body = json!({
        "origin": hostile.name, "origin_server_ts": now, "pdus": [],
        "edus": [{ "edu_type": "m.presence", "content": { "push": [update(&m3, "member"), update(&stranger, "in no room")] } }],
    });
    let (status, answer) = hostile
        .request(
            &weft.server_name(),
            Method::PUT,
            "/_matrix/federation/v1/send/presence",
            Some(&body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let presence = &weft.services().presence;
    common::eventually(Duration::from_secs(10), "weft holds the presence", || async {
        match (presence.get(&m3).await.unwrap(), presence.get(&stranger).await.unwrap()) {
            (Some(_), Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // While partial: m3 is not known to be in the room, the stranger is in
    // none.
    let partial = alice.sync(&format!("timeout=0&{LAZY}")).await;
    assert_eq!(presence_of(&partial, hostile.name.as_str()), vec![], "{partial}");
    let since = partial["next_batch"].as_str().unwrap().to_owned();

    hostile.set_behaviour(|b| b.serve_state = true);
    joined_members(&alice, &room).await;
    let m3_seen = (m3.to_string(), "member".to_owned());
    // (The resync stamps the presence anew just after the mark goes.)
    common::eventually(Duration::from_secs(10), "m3's presence since then", || async {
        let later = alice.sync(&format!("since={since}&timeout=1000&{LAZY}")).await;
        let seen = presence_of(&later, hostile.name.as_str());
        (seen == vec![m3_seen.clone()])
            .then_some(())
            .ok_or_else(|| later.to_string())
    })
    .await;
    // Alice's client is told to look at the device lists of the members
    // learned (it now shares a room with them).
    let members = residents(&hostile, &[]);
    common::eventually(Duration::from_secs(10), "the members' device lists changed", || async {
        let later = alice.sync(&format!("since={since}&timeout=1000&{LAZY}")).await;
        let changed: HashSet<String> = later["device_lists"]["changed"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect();
        members
            .is_subset(&changed)
            .then_some(())
            .ok_or_else(|| format!("{changed:?}"))
    })
    .await;
    let full = alice.sync(&format!("timeout=0&{LAZY}")).await;
    let seen = presence_of(&full, hostile.name.as_str());
    assert!(seen.contains(&m3_seen), "{full}");
    assert!(!seen.iter().any(|(u, _)| *u == stranger.as_str()), "{full}");
}

/// One transaction with events of two rooms, one of them past a gap whose
/// filling (`/get_missing_events`) is slow: the other room's event is taken
/// and shown meanwhile (the rooms of a transaction do not wait for each
/// other); then the gap is filled and the slow room's events come too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_room_does_not_hold_up_the_others_in_a_transaction() {
    let weft = TestServer::start_federating().await;
    let hostile = std::sync::Arc::new(Hostile::start().await);
    let slow = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("Slow"));
    let quick = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("Quick"));
    let alice = alice_joins(&weft, &hostile, &slow).await;
    let (status, body) = alice
        .call(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(quick.as_str()),
                enc(hostile.name.as_str())
            ),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "join: {body}");

    // The slow room: weft is sent the second of two messages, and asks
    // for the first, which takes a while.
    let (unseen, past_gap) = a_gap(&hostile, &slow);
    let said = hostile.message(&quick, &hostile.user("m2"), "no waiting");
    hostile.commit(&quick, &said);
    let delay = Duration::from_secs(8);
    hostile.set_behaviour(|b| b.missing_events_delay = delay);
    let started = std::time::Instant::now();
    let sending = {
        let (hostile, weft_name, pdus) = (
            hostile.clone(),
            weft.server_name(),
            vec![past_gap.pdu.clone(), said.pdu.clone()],
        );
        tokio::spawn(async move { hostile.send_transaction(&weft_name, "two-rooms", &pdus).await })
    };
    common::eventually(Duration::from_secs(6), "the quick room's message is shown", || async {
        let now = messages(&alice, &quick).await;
        now.iter()
            .any(|(id, _)| id == said.id.as_str())
            .then_some(())
            .ok_or_else(|| format!("{now:?}"))
    })
    .await;
    assert!(
        started.elapsed() < delay && !sending.is_finished(),
        "shown while the slow room's gap is being filled"
    );
    let (status, answer) = sending.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let now = messages(&alice, &slow).await;
    for event in [&unseen, &past_gap] {
        assert!(now.iter().any(|(id, _)| id == event.id.as_str()), "{now:?}");
    }
}

/// The server that gives the full state gives a stale one: a member's ban
/// that was lifted before weft joined (the member joined again since). The
/// member's message received while partial cites the later join: it is
/// checked against that join (whose auth chain holds the ban), not
/// rejected on the stale ban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_full_state_does_not_reject_a_member_who_came_back() {
    let weft = TestServer::start_federating().await;
    let hostile = Hostile::start().await;
    hostile.set_behaviour(|b| b.serve_state = false);
    let room = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("Unbanned"));
    let (creator, m5) = (hostile.user("creator"), hostile.user("m5"));
    let membership = |sender: &OwnedUserId, membership: &str| {
        let event = hostile.build(
            &room,
            sender,
            "m.room.member",
            Some(m5.as_str()),
            json!({ "membership": membership }),
        );
        hostile.commit(&room, &event);
        event
    };
    let ban = membership(&creator, "ban");
    membership(&creator, "leave");
    membership(&m5, "join");
    let alice = alice_joins(&weft, &hostile, &room).await;
    // The state at Alice's join, as the hostile server will tell it: the
    // ban, not the join that came after it.
    let view = hostile.room(&room);
    let join = view.state[&("m.room.member".to_owned(), alice.user_id.clone())].clone();
    let mut stale = view.state_before[&join].clone();
    stale.insert(("m.room.member".to_owned(), m5.to_string()), ban.id.clone());
    hostile.set_state_before(&room, &join, stale);

    member_talks(&weft, &hostile, &alice, &room, "m5", "back again").await;
    let said = messages(&alice, &room).await[0].0.clone();
    hostile.set_behaviour(|b| b.serve_state = true);
    joined_members(&alice, &room).await;
    let held = weft
        .services()
        .storage
        .event(&OwnedEventId::try_from(said.as_str()).unwrap())
        .await
        .unwrap()
        .expect("held");
    assert!(held.meta.rejected.is_none(), "{:?}", held.meta);
    assert!(messages(&alice, &room).await.iter().any(|(id, _)| *id == said));
}

/// The events and member state keys of `room` in a `/sync` answer's
/// `rooms.join`, if the room is there.
fn joined_section(sync: &Value, room: &OwnedRoomId) -> Option<(Vec<String>, HashSet<String>, bool)> {
    let section = sync["rooms"]["join"].get(room.as_str())?;
    let bodies = section["timeline"]["events"]
        .as_array()?
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    let members = section["state"]["events"]
        .as_array()?
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect();
    Some((bodies, members, section["timeline"]["limited"] == true))
}

/// A full member list asked for while the room's state is partial waits
/// for the full state parked on the room's wake-ups (no polling: many such
/// requests cost nothing meanwhile), and answers with every member once
/// the resync completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_list_asked_while_partial_waits_parked_and_is_whole() {
    let (weft, hostile, room) = resync_held("Waiting").await;
    let alice = alice_joins(&weft, &hostile, &room).await;
    let topic = weft::wakeups::Topic::Room(room.clone());
    let parked = || weft.services().notifier.wakeups.waiting(&topic);
    let before = parked();
    let path = format!(
        "/_matrix/client/v3/rooms/{}/members?membership=join",
        enc(room.as_str())
    );
    let asking = alice.call(Method::GET, &path, None);
    let releasing = async {
        common::eventually(Duration::from_secs(10), "the request is parked on the room", || async {
            let now = parked();
            (now > before).then_some(()).ok_or_else(|| format!("{now} parked"))
        })
        .await;
        hostile.set_behaviour(|b| b.serve_state = true);
    };
    let ((status, body), ()) = tokio::join!(asking, releasing);
    assert_eq!(status, 200, "{body}");
    let members: HashSet<String> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect();
    let mut want = residents(&hostile, &[]);
    want.insert(alice.user_id.clone());
    assert_eq!(members, want);
    assert_eq!(parked(), before, "the request is no longer parked");
}

/// A `/sync` that loads every member leaves out a room joined with
/// partial state (its member list is not whole), as Synapse does; one that
/// loads them lazily has it all along. Once the full state is in, a sync
/// of the first kind parked since before is woken and sends the room as
/// newly joined: all its state, every member's included, and a limited
/// timeline with what was said meanwhile. The next one does not send it
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_loading_every_member_gets_a_partial_room_once_it_is_full() {
    let (weft, hostile, room) = resync_held("Eager").await;
    let alice = alice_joins(&weft, &hostile, &room).await;
    member_talks(&weft, &hostile, &alice, &room, "m5", "said while partial").await;

    let lazy = alice.sync(&format!("timeout=0&{LAZY}")).await;
    let (bodies, _, _) = joined_section(&lazy, &room).unwrap_or_else(|| panic!("lazy: {lazy}"));
    assert!(bodies.contains(&"said while partial".to_owned()), "{lazy}");
    // A read receipt and account data of the room leave nothing of it in
    // the sync either.
    let said = lazy["rooms"]["join"][room.as_str()]["timeline"]["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (r, e) = (enc(room.as_str()), enc(&said));
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{r}/receipt/m.read/{e}"),
            Some(&json!({})),
        )
        .await;
    let user = enc(&alice.user_id);
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/user/{user}/rooms/{r}/account_data/org.example.note"),
            Some(&json!({ "note": "partial" })),
        )
        .await;
    let eager = alice.sync("timeout=0").await;
    assert_eq!(joined_section(&eager, &room), None, "{eager}");
    let mut since = eager["next_batch"].as_str().unwrap().to_owned();
    member_talks(&weft, &hostile, &alice, &room, "m4", "said while still partial").await;
    let again = alice.sync(&format!("since={since}&timeout=0")).await;
    assert_eq!(joined_section(&again, &room), None, "{again}");
    since = again["next_batch"].as_str().unwrap().to_owned();

    // Parked until the resync completes (the server serves `/state` again;
    // the resync's next attempt takes it).
    hostile.set_behaviour(|b| b.serve_state = true);
    let mut sent = None;
    for _ in 0..10 {
        let answer = alice.sync(&format!("since={since}&timeout=30000")).await;
        if let Some(section) = joined_section(&answer, &room) {
            sent = Some((section, answer["next_batch"].as_str().unwrap().to_owned(), answer));
            break;
        }
        // Woken by something else (not a timeout: that answer is empty).
        let some =
            |v: &Value| v.as_object().is_some_and(|o| !o.is_empty()) || v.as_array().is_some_and(|a| !a.is_empty());
        assert!(
            ["join", "invite", "leave"].iter().any(|k| some(&answer["rooms"][k]))
                || some(&answer["presence"]["events"])
                || some(&answer["account_data"]["events"])
                || some(&answer["device_lists"]["changed"]),
            "timed out without the room: {answer}"
        );
        since = answer["next_batch"].as_str().unwrap().to_owned();
    }
    let ((bodies, members, limited), next, answer) = sent.expect("the room was sent");
    let account_data = &answer["rooms"]["join"][room.as_str()]["account_data"]["events"];
    assert!(
        account_data
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "org.example.note"),
        "the room's account data with it: {account_data}"
    );
    assert!(limited, "sent as newly joined");
    for said in ["said while partial", "said while still partial"] {
        assert!(bodies.contains(&said.to_owned()), "{bodies:?}");
    }
    let mut want = residents(&hostile, &[]);
    want.insert(alice.user_id.clone());
    // (Alice's own join may be in the timeline rather than the state.)
    members.iter().for_each(|m| assert!(want.contains(m), "{m}"));
    want.remove(&alice.user_id);
    assert!(want.is_subset(&members), "every member: {members:?}");

    let after = alice.sync(&format!("since={next}&timeout=0")).await;
    assert_eq!(joined_section(&after, &room), None, "sent once: {after}");
}

/// Sliding sync: a list whose `required_state` needs every member (here
/// all state) leaves out a room joined with partial state, and does not
/// count it; one that loads members lazily has it at once. Once the full
/// state is in, the first list's request, waiting, gets the room, in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_sync_list_needing_every_member_gets_a_partial_room_once_it_is_full() {
    let (weft, hostile, room) = resync_held("Sliding").await;
    let alice = alice_joins(&weft, &hostile, &room).await;
    let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let request = |conn: &str, required_state: Value| {
        json!({
            "conn_id": conn,
            "lists": { "rooms": { "ranges": [[0, 9]], "timeline_limit": 5, "required_state": required_state } },
        })
    };
    let lazy = request("lazy", json!([["m.room.member", "$LAZY"], ["m.room.name", ""]]));
    let eager = request("eager", json!([["*", "*"]]));
    let answer = alice.ok(Method::POST, path, Some(&lazy)).await;
    assert_eq!(answer["lists"]["rooms"]["count"], 1, "{answer}");
    assert_eq!(answer["rooms"][room.as_str()]["name"], "Sliding", "{answer}");
    let answer = alice.ok(Method::POST, path, Some(&eager)).await;
    assert_eq!(answer["lists"]["rooms"]["count"], 0, "{answer}");
    assert!(answer["rooms"].get(room.as_str()).is_none(), "{answer}");
    let mut pos = answer["pos"].as_str().unwrap().to_owned();

    hostile.set_behaviour(|b| b.serve_state = true);
    for _ in 0..10 {
        let answer = alice
            .ok(
                Method::POST,
                &format!("{path}?timeout=30000&pos={}", enc(&pos)),
                Some(&eager),
            )
            .await;
        pos = answer["pos"].as_str().unwrap().to_owned();
        let Some(sent) = answer["rooms"].get(room.as_str()) else {
            // Woken by something else: not a timed-out answer.
            assert!(
                answer["extensions"].as_object().is_some_and(|e| !e.is_empty()),
                "timed out without the room: {answer}"
            );
            continue;
        };
        assert_eq!(answer["lists"]["rooms"]["count"], 1, "{answer}");
        assert_eq!(sent["initial"], true, "{sent}");
        let members: HashSet<String> = sent["required_state"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect();
        let mut want = residents(&hostile, &[]);
        want.insert(alice.user_id.clone());
        assert_eq!(members, want, "{sent}");
        return;
    }
    panic!("the room never came");
}

/// A transaction whose event follows a gap, whose filling
/// (`/get_missing_events`) is slow, does not hold the room: a local user's
/// message is sent meanwhile (what the sender must give is fetched before
/// the room's lock is taken). Then the gap is filled, and both lines of
/// history are in the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_being_filled_does_not_hold_up_the_room() {
    let weft = TestServer::start_federating().await;
    let hostile = std::sync::Arc::new(Hostile::start().await);
    let room = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("Gap"));
    let alice = alice_joins(&weft, &hostile, &room).await;
    let (_, past_gap) = a_gap(&hostile, &room);
    let delay = Duration::from_secs(8);
    hostile.set_behaviour(|b| b.missing_events_delay = delay);
    let started = std::time::Instant::now();
    let sending = {
        let (hostile, weft_name, pdus) = (hostile.clone(), weft.server_name(), vec![past_gap.pdu.clone()]);
        tokio::spawn(async move { hostile.send_transaction(&weft_name, "gap", &pdus).await })
    };
    common::eventually(Duration::from_secs(5), "weft asks for the gap", || async {
        match hostile.seen_at("/_matrix/federation/v1/get_missing_events/").len() {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    let (status, body) = alice.send_text(room.as_str(), "local", "while the gap is filled").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < delay && !sending.is_finished(),
        "sent while the gap is being filled"
    );
    let (status, answer) = sending.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let now = messages(&alice, &room).await;
    for text in ["the gap", "past the gap", "while the gap is filled"] {
        assert!(now.iter().any(|(_, body)| body == text), "{text}: {now:?}");
    }
}

/// A new member's join and first message in one transaction: the message's
/// auth events include the join, which comes first in the transaction, so
/// weft asks the sender for nothing (no `/event_auth`, no gap), and takes
/// both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_message_in_one_transaction_ask_for_nothing() {
    let weft = TestServer::start_federating().await;
    let hostile = Hostile::start().await;
    let room = hostile.create_room(RoomVersionId::V11, "creator", &MEMBERS, Some("Newcomer"));
    let alice = alice_joins(&weft, &hostile, &room).await;
    let newcomer = hostile.user("newcomer");
    let join = hostile.build(
        &room,
        &newcomer,
        "m.room.member",
        Some(newcomer.as_str()),
        json!({ "membership": "join" }),
    );
    hostile.commit(&room, &join);
    let said = hostile.message(&room, &newcomer, "hello from the newcomer");
    hostile.commit(&room, &said);
    let cited: Vec<&str> = said.pdu["auth_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|id| id.as_str())
        .collect();
    assert!(cited.contains(&join.id.as_str()), "the message cites the join");
    let asked_before = hostile.seen().len();
    let (status, answer) = hostile
        .send_transaction(&weft.server_name(), "newcomer", &[join.pdu.clone(), said.pdu.clone()])
        .await;
    assert_eq!(status, 200, "{answer}");
    for event in [&join, &said] {
        let result = &answer["pdus"][event.id.as_str()];
        assert!(result.is_object() && result.get("error").is_none(), "{answer}");
    }
    let asked: Vec<String> = hostile.seen()[asked_before..]
        .iter()
        .map(|s| s.path.clone())
        .filter(|p| p.contains("/event_auth/") || p.contains("/get_missing_events/"))
        .collect();
    assert_eq!(asked, Vec::<String>::new());
    let now = messages(&alice, &room).await;
    assert!(now.iter().any(|(id, _)| id == said.id.as_str()), "{now:?}");
}

/// A resync that lacks few of the state's events (the members of a room
/// with much other state) asks the state's IDs and fetches those events
/// alone (`/event`), not the whole state again; the room is then whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_lacking_few_events_fetches_only_those() {
    let (weft, hostile, room) = resync_held_with_much_state("Much state").await;
    let alice = alice_joins(&weft, &hostile, &room).await;
    let members = member_events(&hostile, &room);
    let fetched_before = hostile.seen_at("/_matrix/federation/v1/event/").len();
    hostile.set_behaviour(|b| b.serve_state = true);

    let mut want = residents(&hostile, &[]);
    want.insert(alice.user_id.clone());
    assert_eq!(joined_members(&alice, &room).await, want);
    assert!(
        !hostile.seen_at("/_matrix/federation/v1/state_ids/").is_empty(),
        "the resync asked the state's IDs"
    );
    assert!(
        hostile.seen_at("/_matrix/federation/v1/state/").is_empty(),
        "the resync asked the whole state again"
    );
    let fetched: Vec<String> = hostile.seen_at("/_matrix/federation/v1/event/")[fetched_before..]
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert!(!fetched.is_empty(), "the members left out were fetched");
    for path in &fetched {
        assert!(
            members.iter().any(|id| path.ends_with(id.as_str())),
            "{path} is not a member event"
        );
    }
    // Every custom state event is in the room's state, as given at the join.
    let state = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room.as_str())),
            None,
        )
        .await;
    let custom = state
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "org.example.state")
        .count();
    assert_eq!(custom, 100);
    member_talks(&weft, &hostile, &alice, &room, "m3", "after a light resync").await;
}

/// [`resync_held`], the room with 100 state events besides its members.
async fn resync_held_with_much_state(name: &str) -> (TestServer, Hostile, OwnedRoomId) {
    let (weft, hostile, room) = resync_held(name).await;
    let creator = hostile.user("creator");
    for i in 0..100 {
        let state = hostile.build(
            &room,
            &creator,
            "org.example.state",
            Some(&i.to_string()),
            json!({ "i": i }),
        );
        hostile.commit(&room, &state);
    }
    (weft, hostile, room)
}

/// The member events of the hostile server's state of `room`.
fn member_events(hostile: &Hostile, room: &OwnedRoomId) -> HashSet<OwnedEventId> {
    hostile
        .room(room)
        .state
        .iter()
        .filter(|((kind, _), _)| kind == "m.room.member")
        .map(|(_, id)| id.clone())
        .collect()
}

/// A resync that fetches the few events it lacks one by one, one of which
/// the server will not give, keeps none of them (they would be rejected
/// for want of each other) and takes the whole state instead: the room is
/// whole, that member included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_missing_an_event_it_fetched_takes_the_whole_state() {
    let (weft, hostile, room) = resync_held_with_much_state("An event withheld").await;
    let alice = alice_joins(&weft, &hostile, &room).await;
    let m4 = hostile.room(&room).state[&("m.room.member".to_owned(), hostile.user("m4").to_string())].clone();
    hostile.set_behaviour(|b| {
        b.withheld_events = vec![m4];
        b.serve_state = true;
    });
    let mut want = residents(&hostile, &[]);
    want.insert(alice.user_id.clone());
    assert_eq!(joined_members(&alice, &room).await, want);
    assert!(
        !hostile.seen_at("/_matrix/federation/v1/state/").is_empty(),
        "the resync asked the whole state"
    );
    member_talks(&weft, &hostile, &alice, &room, "m4", "whole after all").await;
}
