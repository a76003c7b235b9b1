//! Push notifications through the client API: push rules (defaults,
//! changes, ordering, errors), notification counts in /sync and
//! GET /notifications, pushers, and pushes to a push gateway (a loopback
//! HTTP server the test runs).

mod common;

use std::time::Duration;

use common::{
    TestServer, User, enc, eventually,
    push_gateway::{PushGateway, pusher},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const RULES: &str = "/_matrix/client/v3/pushrules";

fn rule_ids(rules: &Value) -> Vec<String> {
    rules
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rules_defaults_changes_and_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;

    // The server defaults, for this user.
    let all = alice.ok(Method::GET, &format!("{RULES}/"), None).await;
    let overrides = rule_ids(&all["global"]["override"]);
    assert_eq!(overrides[0], ".m.rule.master", "{all}");
    assert!(overrides.contains(&".m.rule.is_user_mention".to_owned()), "{all}");
    assert!(rule_ids(&all["global"]["underride"]).contains(&".m.rule.message".to_owned()));
    let master = alice
        .ok(Method::GET, &format!("{RULES}/global/override/.m.rule.master"), None)
        .await;
    assert_eq!(master["default"], true);
    assert_eq!(master["enabled"], false);

    // New rules come first; `before` and `after` place them.
    let sender = |id: &str| format!("{RULES}/global/sender/{}", enc(id));
    let notify = json!({ "actions": ["notify"] });
    for id in ["@a:example.org", "@b:example.org"] {
        alice.ok(Method::PUT, &sender(id), Some(&notify)).await;
    }
    alice
        .ok(
            Method::PUT,
            &format!("{}?before={}", sender("@c:example.org"), enc("@a:example.org")),
            Some(&notify),
        )
        .await;
    alice
        .ok(
            Method::PUT,
            &format!("{}?after={}", sender("@d:example.org"), enc("@a:example.org")),
            Some(&notify),
        )
        .await;
    let listed = alice.ok(Method::GET, &format!("{RULES}/global/"), None).await;
    assert_eq!(
        rule_ids(&listed["sender"]),
        ["@b:example.org", "@c:example.org", "@a:example.org", "@d:example.org"]
    );
    // The list of one kind.
    let kind = alice.ok(Method::GET, &format!("{RULES}/global/sender/"), None).await;
    assert_eq!(rule_ids(&kind).len(), 4);

    // Enabled and actions, of a user rule and of a default one.
    alice
        .ok(
            Method::PUT,
            &format!("{}/enabled", sender("@a:example.org")),
            Some(&json!({ "enabled": false })),
        )
        .await;
    let rule = alice.ok(Method::GET, &sender("@a:example.org"), None).await;
    assert_eq!(rule["enabled"], false);
    assert_eq!(rule["default"], false);
    let actions = json!({ "actions": ["notify", { "set_tweak": "highlight" }] });
    alice
        .ok(
            Method::PUT,
            &format!("{RULES}/global/underride/.m.rule.message/actions"),
            Some(&actions),
        )
        .await;
    let got = alice
        .ok(
            Method::GET,
            &format!("{RULES}/global/underride/.m.rule.message/actions"),
            None,
        )
        .await;
    assert_eq!(got["actions"], json!(["notify", { "set_tweak": "highlight" }]));
    let got = alice
        .ok(Method::GET, &format!("{}/enabled", sender("@a:example.org")), None)
        .await;
    assert_eq!(got, json!({ "enabled": false }));

    // Deleting.
    alice.ok(Method::DELETE, &sender("@b:example.org"), None).await;
    let listed = alice.ok(Method::GET, &format!("{RULES}/global/"), None).await;
    assert_eq!(rule_ids(&listed["sender"])[0], "@c:example.org");

    // Errors: unknown rules are 404, malformed requests 400.
    for (method, path, body, status) in [
        (Method::GET, sender("@nobody:example.org"), None, StatusCode::NOT_FOUND),
        (
            Method::DELETE,
            sender("@nobody:example.org"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            format!("{RULES}/global/override/.not.a.rule/actions"),
            Some(json!({ "actions": ["notify"] })),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            format!("{}?before={}", sender("@e:example.org"), enc("@nobody:example.org")),
            Some(notify.clone()),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            format!("{RULES}/global/override/.m.rule.master"),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            sender(".m.mine"),
            Some(notify.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            format!("{RULES}/global/override/x"),
            Some(notify.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            sender("@e:example.org"),
            Some(json!({ "actions": ["not_an_action"] })),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            format!("{RULES}/global/content/x"),
            Some(notify.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            format!("{RULES}/"),
            Some(notify.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, format!("{RULES}/global"), None, StatusCode::BAD_REQUEST),
        (
            Method::GET,
            format!("{RULES}/global/room"),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, format!("{RULES}/other/"), None, StatusCode::BAD_REQUEST),
        (
            Method::GET,
            format!("{RULES}/global/nonsense/"),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("{RULES}/global/override/.m.rule.master/colour"),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, RULES.to_owned(), None, StatusCode::NOT_FOUND),
    ] {
        let (got, body_back) = alice.call(method.clone(), &path, body.as_ref()).await;
        assert_eq!(got, status, "{method} {path}: {body_back}");
        assert!(body_back["errcode"].is_string(), "{method} {path}: {body_back}");
    }

    // The rules are the user's m.push_rules account data in /sync, and
    // changes come down incremental syncs.
    let sync = alice.sync("").await;
    let pushed = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .cloned()
        .expect("m.push_rules in a full sync");
    assert_eq!(rule_ids(&pushed["content"]["global"]["sender"])[0], "@c:example.org");
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    alice.ok(Method::DELETE, &sender("@c:example.org"), None).await;
    let sync = alice.sync(&format!("since={}&timeout=5000", enc(&since))).await;
    let pushed = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .cloned()
        .expect("m.push_rules changed");
    assert_eq!(rule_ids(&pushed["content"]["global"]["sender"])[0], "@a:example.org");

    // Other users have their own rules.
    let bob = server.register("bob").await;
    let bobs = bob.ok(Method::GET, &format!("{RULES}/global/"), None).await;
    assert!(
        bobs["sender"].is_null() || rule_ids(&bobs["sender"]).is_empty(),
        "{bobs}"
    );
}

async fn send(user: &User<'_>, room: &str, txn: &str, content: Value) -> String {
    let value = user
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
            Some(&content),
        )
        .await;
    value["event_id"].as_str().unwrap().to_owned()
}

fn counts(sync: &Value, room: &str) -> (u64, u64) {
    let unread = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        unread["notification_count"].as_u64().unwrap_or(u64::MAX),
        unread["highlight_count"].as_u64().unwrap_or(u64::MAX),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_highlight_and_receipts_clear_the_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    assert_eq!(counts(&alice.sync("").await, &room), (0, 0));

    // A mention of alice: a highlight. A plain message: a notification.
    send(
        &bob,
        &room,
        "m1",
        json!({ "msgtype": "m.text", "body": "hi alice", "m.mentions": { "user_ids": [alice.user_id] } }),
    )
    .await;
    let last = send(&bob, &room, "m2", json!({ "msgtype": "m.text", "body": "hello" })).await;
    assert_eq!(counts(&alice.sync("").await, &room), (2, 1));
    // The sender is not notified of their own messages.
    assert_eq!(counts(&bob.sync("").await, &room), (0, 0));

    let notifications = alice.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    let list = notifications["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{notifications}");
    assert_eq!(list[0]["event"]["event_id"], last.as_str());
    assert_eq!(list[0]["read"], false);
    assert_eq!(list[0]["room_id"], room.as_str());
    assert!(list[0].as_object().unwrap().contains_key("profile_tag"));
    assert!(
        list[1]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["set_tweak"] == "highlight")
    );
    let highlights = alice
        .ok(Method::GET, "/_matrix/client/v3/notifications?only=highlight", None)
        .await;
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 1);
    let page = alice
        .ok(Method::GET, "/_matrix/client/v3/notifications?limit=1", None)
        .await;
    let next = page["next_token"].as_str().expect("a next page").to_owned();
    let rest = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/notifications?from={next}"),
            None,
        )
        .await;
    assert_eq!(rest["notifications"][0]["event"]["content"]["body"], "hi alice");

    // A read receipt on the last message clears the counts (also in an
    // incremental sync, where the room is there for the receipt only).
    let since = alice.sync("").await["next_batch"].as_str().unwrap().to_owned();
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
            Some(&json!({})),
        )
        .await;
    let incremental = alice.sync(&format!("since={}&timeout=5000", enc(&since))).await;
    assert_eq!(counts(&incremental, &room), (0, 0), "{incremental}");
    assert_eq!(counts(&alice.sync("").await, &room), (0, 0));
    let notifications = alice.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert_eq!(notifications["notifications"][0]["read"], true);

    // Without m.mentions, the legacy rules highlight a message that names
    // alice's localpart or her display name; with m.mentions, only the
    // mentions count.
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
            Some(&json!({ "displayname": "Alice Liddell" })),
        )
        .await;
    let legacy = send(
        &bob,
        &room,
        "l1",
        json!({ "msgtype": "m.text", "body": "see alice here" }),
    )
    .await;
    assert_eq!(counts(&alice.sync("").await, &room), (1, 1));
    send(
        &bob,
        &room,
        "l2",
        json!({ "msgtype": "m.text", "body": "see alice here", "m.mentions": {} }),
    )
    .await;
    assert_eq!(counts(&alice.sync("").await, &room), (2, 1));
    let listed = alice.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert_eq!(listed["notifications"][1]["event"]["event_id"], legacy.as_str());
    alice
        .ok(
            Method::PUT,
            &format!("{RULES}/global/content/.m.rule.contains_user_name/enabled"),
            Some(&json!({ "enabled": false })),
        )
        .await;
    send(
        &bob,
        &room,
        "l3",
        json!({ "msgtype": "m.text", "body": "see alice here" }),
    )
    .await;
    assert_eq!(counts(&alice.sync("").await, &room), (3, 1));
    send(
        &bob,
        &room,
        "l4",
        json!({ "msgtype": "m.text", "body": "hi Alice Liddell!" }),
    )
    .await;
    assert_eq!(counts(&alice.sync("").await, &room), (4, 2));

    // A room rule that silences the room: no more notifications there.
    alice
        .ok(
            Method::PUT,
            &format!("{RULES}/global/room/{}", enc(&room)),
            Some(&json!({ "actions": [] })),
        )
        .await;
    send(&bob, &room, "m3", json!({ "msgtype": "m.text", "body": "quiet" })).await;
    assert_eq!(counts(&alice.sync("").await, &room), (4, 2));
}

/// The rules that name their user (an invite for them, a mention of them,
/// their user name, their display name), for users who never changed a
/// rule: they share one default ruleset, made theirs as events are
/// evaluated. Each user is notified of what names them, not of what names
/// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_rules_notify_each_user_of_what_names_them() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;

    // An invite notifies its invitee only.
    alice.invite(&room, &carol.user_id).await;
    let invites = carol.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    let list = invites["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{invites}");
    assert_eq!(list[0]["event"]["type"], "m.room.member");
    assert_eq!(list[0]["event"]["state_key"], carol.user_id.as_str());
    alice.invite(&room, &dave.user_id).await;
    let invites = carol.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert_eq!(invites["notifications"].as_array().unwrap().len(), 1, "{invites}");

    for user in [&carol, &dave] {
        assert_eq!(user.join(&room).await.0, 200);
    }
    for (user, name) in [(&carol, "Carol Ann"), (&dave, "Dave Bowman")] {
        user.ok(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&user.user_id)),
            Some(&json!({ "displayname": name })),
        )
        .await;
    }
    let highlights = async |user: &User<'_>| counts(&user.sync("").await, &room).1;
    let sent = [
        json!({ "msgtype": "m.text", "body": "hi", "m.mentions": { "user_ids": [carol.user_id] } }),
        json!({ "msgtype": "m.text", "body": "where is carol?" }),
        json!({ "msgtype": "m.text", "body": "ask Carol Ann" }),
        json!({ "msgtype": "m.text", "body": "nobody named" }),
    ];
    for (i, content) in sent.into_iter().enumerate() {
        send(&alice, &room, &format!("c{i}"), content).await;
    }
    assert_eq!(
        highlights(&carol).await,
        3,
        "mention, user name and display name of carol"
    );
    assert_eq!(highlights(&dave).await, 0, "nothing named dave");
    send(
        &alice,
        &room,
        "d1",
        json!({ "msgtype": "m.text", "body": "hi Dave Bowman" }),
    )
    .await;
    assert_eq!(highlights(&dave).await, 1);
    assert_eq!(highlights(&carol).await, 3);
}

/// The room's member count, as the push rules see it, follows each join
/// and leave (the server applies them to the members it holds in memory):
/// a message in a room of two is a one-to-one message (a notification with
/// a sound), in a room of three a plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_count_follows_joins_and_leaves() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    let sound_of_last = async || {
        let listed = alice
            .ok(Method::GET, "/_matrix/client/v3/notifications?limit=1", None)
            .await;
        let actions = listed["notifications"][0]["actions"].clone();
        actions.as_array().unwrap().iter().any(|a| a["set_tweak"] == "sound")
    };
    send(&bob, &room, "1", json!({ "msgtype": "m.text", "body": "two of us" })).await;
    assert!(sound_of_last().await, "a one-to-one message");
    for round in 0..2 {
        assert_eq!(carol.join(&room).await.0, 200);
        send(
            &bob,
            &room,
            &format!("3-{round}"),
            json!({ "msgtype": "m.text", "body": "three" }),
        )
        .await;
        assert!(!sound_of_last().await, "three members (round {round})");
        carol.leave(&room).await;
        send(
            &bob,
            &room,
            &format!("2-{round}"),
            json!({ "msgtype": "m.text", "body": "two" }),
        )
        .await;
        assert!(sound_of_last().await, "two members again (round {round})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushers_are_kept_and_pushed_to() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut pushes = PushGateway::start(json!({})).await;
    let url = pushes.url.clone();

    // Pushers: set, listed, bad ones refused.
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(&pusher(&url, "key1")),
        )
        .await;
    let listed = alice.ok(Method::GET, "/_matrix/client/v3/pushers", None).await;
    let first = &listed["pushers"][0];
    assert_eq!(first["pushkey"], "key1");
    assert_eq!(first["data"]["url"], url.as_str());
    assert_eq!(first["data"]["extra"], "kept");
    assert_eq!(first["device_display_name"], "Phone");
    let (status, _) = alice
        .call(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(&pusher("ftp://example.org/x", "key2")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bob.ok(Method::GET, "/_matrix/client/v3/pushers", None).await["pushers"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A message from bob reaches alice's gateway, with the counts.
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Pushy" }))
        .await;
    assert_eq!(bob.join(&room).await.0, 200);
    let event_id = send(&bob, &room, "p1", json!({ "msgtype": "m.text", "body": "ping" })).await;
    let push = loop {
        let push = pushes.next("bob's message").await.body;
        if push["notification"]["type"] == "m.room.message" {
            break push;
        }
    };
    let n = &push["notification"];
    assert_eq!(n["event_id"], event_id.as_str());
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["sender"], bob.user_id.as_str());
    assert_eq!(n["content"]["body"], "ping");
    assert_eq!(n["room_name"], "Pushy");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["devices"][0]["pushkey"], "key1");
    assert_eq!(n["devices"][0]["app_id"], "weft.test");
    assert_eq!(n["devices"][0]["data"]["extra"], "kept");
    assert!(n["devices"][0]["data"].get("url").is_none(), "{push}");

    // A read receipt sends the new badge.
    alice
        .ok(
            Method::POST,
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&event_id)
            ),
            Some(&json!({})),
        )
        .await;
    let badge = pushes.next("the receipt").await.body;
    assert_eq!(badge["notification"]["counts"]["unread"], 0, "{badge}");

    // Removing the pusher (kind null) stops the pushes.
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(&json!({ "kind": null, "app_id": "weft.test", "pushkey": "key1" })),
        )
        .await;
    assert!(
        alice.ok(Method::GET, "/_matrix/client/v3/pushers", None).await["pushers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    send(&bob, &room, "p2", json!({ "msgtype": "m.text", "body": "unheard" })).await;
    assert!(
        pushes.next_within(Duration::from_secs(2)).await.is_none(),
        "pushed without a pusher"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_rejects_a_pushkey_removes_the_pusher() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut pushes = PushGateway::start(json!({ "rejected": ["gone"] })).await;
    let url = pushes.url.clone();
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(&pusher(&url, "gone")),
        )
        .await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(bob.join(&room).await.0, 200);
    send(&bob, &room, "r1", json!({ "msgtype": "m.text", "body": "ping" })).await;
    pushes.next("the message").await;
    eventually(Duration::from_secs(10), "the rejected pusher removed", || async {
        let listed = alice.ok(Method::GET, "/_matrix/client/v3/pushers", None).await;
        match listed["pushers"].as_array().unwrap().len() {
            0 => Ok(()),
            n => Err(format!("{n} pushers")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushers_go_with_their_devices() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let login = || async {
        let (status, body) = server
            .request(
                Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(&json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": "alice" },
                    "password": "secret"
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        User {
            server: &server,
            user_id: alice.user_id.clone(),
            token: body["access_token"].as_str().unwrap().to_owned(),
        }
    };
    let pushkeys = || async {
        let listed = alice.ok(Method::GET, "/_matrix/client/v3/pushers", None).await;
        let mut keys: Vec<String> = listed["pushers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pushkey"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    };
    let url = "https://push.example.org/_matrix/push/v1/notify";
    let phone = login().await;
    let tablet = login().await;
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(&pusher(url, "mine")),
        )
        .await;
    phone
        .ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(&pusher(url, "phone")),
        )
        .await;
    tablet
        .ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(&pusher(url, "tablet")),
        )
        .await;
    assert_eq!(pushkeys().await, ["mine", "phone", "tablet"]);

    // Logging out takes the device's pusher.
    tablet
        .ok(Method::POST, "/_matrix/client/v3/logout", Some(&json!({})))
        .await;
    assert_eq!(pushkeys().await, ["mine", "phone"]);

    // A password change that logs out the other devices takes theirs.
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Some(&json!({
                "new_password": "newer",
                "auth": {
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": "alice" },
                    "password": "secret"
                }
            })),
        )
        .await;
    assert_eq!(pushkeys().await, ["mine"]);
}

/// Pushes are kept in storage until their gateway takes them: two
/// messages pushed while the gateway fails are tried, kept across a
/// restart of the server, and delivered once each, in order, when the
/// gateway is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_wait_for_a_failing_gateway_across_a_restart() {
    let mut server = TestServer::start().await;
    let mut gateway = PushGateway::start(json!({})).await;
    gateway.set_down(true);
    let (alice_id, alice_token, room, sent) = {
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/pushers/set",
                Some(&gateway.pusher("key1")),
            )
            .await;
        let room = alice.create_room(json!({ "preset": "public_chat" })).await;
        assert_eq!(bob.join(&room).await.0, 200);
        let mut sent = Vec::new();
        for (txn, text) in [("f1", "one"), ("f2", "two")] {
            sent.push(send(&bob, &room, txn, json!({ "msgtype": "m.text", "body": text })).await);
        }
        (alice.user_id.clone(), alice.token.clone(), room, sent)
    };
    // Tried (and refused) before the restart: the push is not lost with
    // the attempt.
    loop {
        let push = gateway.next("a first try").await;
        assert!(!push.accepted);
        if push.event_id() == Some(sent[0].as_str()) {
            break;
        }
    }
    server.restart().await;
    gateway.set_down(false);
    let mut accepted = Vec::new();
    while accepted.len() < 2 {
        let push = gateway.next("the pushes after the restart").await;
        if push.accepted {
            accepted.push(push.event_id().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(accepted, sent, "each once, in order");
    if let Some(push) = gateway.next_within(Duration::from_secs(2)).await {
        panic!("pushed again: {}", push.body);
    }
    // The counts are the server's: both unread.
    let alice = User {
        server: &server,
        user_id: alice_id,
        token: alice_token,
    };
    assert_eq!(counts(&alice.sync("").await, &room).0, 2);
}

/// SQLite's schema v27 keys notifications by position and reads the
/// DAGs from the events' JSON: a database written before it (taken back
/// to v26's tables here) keeps its notifications, counts and edges.
/// (PostgreSQL's migrations run under every test on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_edges_survive_the_schema_v27_migration() {
    let mut server = TestServer::start().await;
    if server.config.database_url.is_some() {
        return;
    }
    // What GET /notifications says, but the events' ages.
    fn listed(notifications: &Value) -> Vec<(Value, Value, Value)> {
        let list = notifications["notifications"].as_array().unwrap();
        list.iter()
            .map(|n| (n["event"]["event_id"].clone(), n["actions"].clone(), n["read"].clone()))
            .collect()
    }
    let (alice, bob, room, before) = {
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = alice.create_room(json!({ "preset": "public_chat" })).await;
        assert_eq!(bob.join(&room).await.0, 200);
        let mention = json!({ "msgtype": "m.text", "body": "hi alice", "m.mentions": { "user_ids": [alice.user_id] } });
        send(&bob, &room, "m1", mention).await;
        send(&bob, &room, "m2", json!({ "msgtype": "m.text", "body": "hello" })).await;
        let notifications = alice.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
        let before = (counts(&alice.sync("").await, &room), listed(&notifications));
        assert_eq!(before.0, (2, 1));
        assert_eq!(before.1.len(), 2);
        let keep = |u: &User<'_>| (u.user_id.clone(), u.token.clone());
        (keep(&alice), keep(&bob), room, before)
    };
    if let Some(running) = server.server.take() {
        running.shutdown().await;
    }
    let db = rusqlite::Connection::open(server.data_dir().join("weft.db")).unwrap();
    let edges = |db: &rusqlite::Connection| -> Vec<(String, String)> {
        let mut stmt = db
            .prepare("SELECT prev_event_id, event_id FROM event_edges ORDER BY 1, 2")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let held_edges = edges(&db);
    assert!(held_edges.len() >= 6, "{held_edges:?}");
    db.execute_batch(
        "CREATE TABLE n (user_id TEXT NOT NULL, room_id TEXT NOT NULL, event_id TEXT NOT NULL,
             stream_ordering INTEGER NOT NULL, highlight INTEGER NOT NULL, actions TEXT NOT NULL,
             ts INTEGER NOT NULL, PRIMARY KEY (user_id, event_id)) WITHOUT ROWID;
         INSERT INTO n SELECT user_id, room_id, event_id, stream_ordering, highlight, actions, ts
             FROM notifications;
         DROP TABLE notifications; ALTER TABLE n RENAME TO notifications;
         CREATE INDEX notifications_room ON notifications (user_id, room_id, stream_ordering);
         CREATE INDEX notifications_stream ON notifications (user_id, stream_ordering);
         CREATE TABLE g (event_id TEXT NOT NULL, prev_event_id TEXT NOT NULL, room_id TEXT NOT NULL,
             PRIMARY KEY (event_id, prev_event_id)) WITHOUT ROWID;
         INSERT INTO g SELECT x.event_id, x.prev_event_id, e.room_id
             FROM event_edges x JOIN events e ON e.event_id = x.event_id;
         DROP TABLE event_edges; ALTER TABLE g RENAME TO event_edges;
         CREATE INDEX event_edges_prev ON event_edges (prev_event_id);
         CREATE TABLE event_auth (event_id TEXT NOT NULL, auth_event_id TEXT NOT NULL,
             PRIMARY KEY (event_id, auth_event_id)) WITHOUT ROWID;
         INSERT INTO event_auth SELECT e.event_id, l.value FROM events e, json_each(e.json, '$.auth_events') l;
         PRAGMA user_version = 26;",
    )
    .unwrap();
    drop(db);
    server.restart().await;

    let db = rusqlite::Connection::open(server.data_dir().join("weft.db")).unwrap();
    assert_eq!(
        db.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(),
        27
    );
    assert_eq!(edges(&db), held_edges);
    let again = |(user_id, token): (String, String)| User {
        server: &server,
        user_id,
        token,
    };
    let (alice, bob) = (again(alice), again(bob));
    let notifications = alice.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert_eq!((counts(&alice.sync("").await, &room), listed(&notifications)), before);
    // New ones go on after them.
    let newest = send(&bob, &room, "m3", json!({ "msgtype": "m.text", "body": "again" })).await;
    assert_eq!(counts(&alice.sync("").await, &room), (3, 1));
    let notifications = alice.ok(Method::GET, "/_matrix/client/v3/notifications", None).await;
    assert_eq!(notifications["notifications"][0]["event"]["event_id"], newest.as_str());
    assert_eq!(listed(&notifications)[1..], before.1[..]);
}
