//! Bad input gets the spec's error, never a panic, and leaves nothing
//! half-stored.

mod common;

use std::time::Duration;

use common::{TestServer, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn assert_error(status: StatusCode, body: &Value, want_status: u16, errcode: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["errcode"], errcode, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "an error message is given: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_errors() {
    let server = TestServer::start().await;
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/account/whoami", None, None)
        .await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/account/whoami", Some("nonsense"), None)
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/sync", Some("nonsense"), None)
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_mistyped_bodies() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let token = Some(alice.token.as_str());

    let (status, body) = server
        .request_raw(Method::POST, "/_matrix/client/v3/createRoom", token, "{not json")
        .await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let (status, body) = server
        .request_raw(Method::POST, "/_matrix/client/v3/createRoom", token, r#"{"name": 42}"#)
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = server
        .request_raw(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            token,
            r#"{"invite": "not a list"}"#,
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    let room = alice.create_room(json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1", enc(&room));
    let (status, body) = server.request_raw(Method::PUT, &path, token, "[1, 2]").await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = server.request_raw(Method::PUT, &path, token, r#"{"body": 1.5}"#).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = server.request_raw(Method::PUT, &path, token, "{\"body\": ").await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    // No body at all is no content, not an empty one (as Synapse answers);
    // an empty object is an empty content.
    let (status, body) = server.request_raw(Method::PUT, &path, token, "").await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let state_path = format!("/_matrix/client/v3/rooms/{}/state/org.example.empty/", enc(&room));
    let (status, body) = server.request_raw(Method::PUT, &state_path, token, "").await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let messages = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            None,
        )
        .await
        .1;
    let stored: Vec<&Value> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message" || e["type"] == "org.example.empty")
        .collect();
    assert!(stored.is_empty(), "nothing stored for the bodiless sends: {stored:?}");
    let (status, body) = server
        .request_raw(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t2", enc(&room)),
            token,
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "an empty content is a content: {body}");

    // Bad query parameters.
    let (status, body) = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=sideways", enc(&room)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&from=garbage", enc(&room)),
            None,
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .call(Method::GET, "/_matrix/client/v3/sync?since=garbage", None)
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // Unknown endpoints and methods.
    let (status, body) = alice.call(Method::GET, "/_matrix/client/v3/no/such/thing", None).await;
    assert_error(status, &body, 404, "M_UNRECOGNIZED");
    let (status, body) = alice.call(Method::DELETE, "/_matrix/client/v3/createRoom", None).await;
    assert_error(status, &body, 405, "M_UNRECOGNIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_rooms_and_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;

    let (status, body) = alice.send_text("!nowhere:localhost", "t", "hi").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice.join("!nowhere:localhost").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc("$nothing")),
            None,
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
            None,
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = alice
        .call(Method::GET, "/_matrix/client/v3/rooms/not-a-room-id/state", None)
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .call(
            Method::GET,
            "/_matrix/client/v3/rooms/!nowhere:localhost/messages?dir=b",
            None,
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_event_is_refused_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let before = alice.messages(&room, "dir=b&limit=100").await;

    let (status, body) = alice.send_text(&room, "big", &"x".repeat(70_000)).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    let (status, body) = alice
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
            Some(&json!({ "topic": "y".repeat(66_000) })),
        )
        .await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    // The older send without a transaction ID is checked the same way.
    let send = format!("/_matrix/client/v3/rooms/{}/send/m.room.message", enc(&room));
    let (status, body) = alice
        .call(
            Method::POST,
            &send,
            Some(&json!({ "msgtype": "m.text", "body": "x".repeat(70_000) })),
        )
        .await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    let (status, body) = alice
        .call(Method::POST, &send, Some(&json!({ "msgtype": "m.text", "n": 1.5 })))
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    let after = alice.messages(&room, "dir=b&limit=100").await;
    let ids = |page: &Value| -> Vec<Value> {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].clone())
            .collect()
    };
    assert_eq!(ids(&before), ids(&after), "a refused event leaves no trace");
    // The room goes on: the next event's parent is the last stored one.
    let (status, _) = alice.send_text(&room, "ok", "small").await;
    assert_eq!(status, 200);
    let room_id: ruma::OwnedRoomId = room.parse().unwrap();
    let svc = &server.running().services;
    let extremities = svc.storage.forward_extremities(&room_id).await.unwrap();
    assert_eq!(extremities.len(), 1);
    let newest = svc.storage.event(&extremities[0].0).await.unwrap().unwrap();
    let last_before = before["chunk"][0]["event_id"].as_str().unwrap();
    assert_eq!(
        newest.pdu.prev_events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        [last_before]
    );
    let sent = alice
        .ok(
            Method::POST,
            &send,
            Some(&json!({ "msgtype": "m.text", "body": "no txn" })),
        )
        .await;
    let event_id = sent["event_id"].as_str().expect("an event ID");
    let page = alice.messages(&room, "dir=b&limit=1").await;
    assert_eq!(page["chunk"][0]["event_id"], event_id);
    assert_eq!(page["chunk"][0]["content"]["body"], "no txn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_rule_violations_are_forbidden() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    // A membership event with a bad membership value.
    let (status, body) = alice
        .call(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc("@ghost:localhost")
            ),
            Some(&json!({ "membership": "join" })),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // A second create event.
    let (status, body) = alice
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.create", enc(&room)),
            Some(&json!({})),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}

/// Sends `request` on `stream` and reads one HTTP/1.1 response: its
/// status line, headers and `Content-Length` body.
async fn exchange(stream: &mut tokio::io::BufReader<tokio::net::TcpStream>, request: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    stream.get_mut().write_all(request).await.expect("request written");
    let mut line = String::new();
    stream.read_line(&mut line).await.expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line, not {line:?}"));
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).await.expect("header line");
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.expect("body");
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

/// Requests answered before their large body is read (a path weft does not
/// serve, a wrong method, a missing token) leave the connection usable:
/// keep-alive clients (SyTest among them) send their next request on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_keep_the_connection_usable() {
    let server = TestServer::start().await;
    let addr = server.running().client_addr;
    let mut stream = tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    let big = format!(r#"{{"body": "{}"}}"#, "A".repeat(70_000));
    for (method, path) in [
        ("POST", "/_matrix/client/v3/rooms/!r:localhost/no_such_endpoint"),
        ("DELETE", "/_matrix/client/versions"),
        ("POST", "/_matrix/client/v3/rooms/!r:localhost/send/m.room.message"),
    ] {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        );
        let (status, body) = exchange(&mut stream, request.as_bytes()).await;
        assert!([401, 404, 405].contains(&status), "{method} {path}: {status} {body}");
        assert!(
            ["M_UNRECOGNIZED", "M_MISSING_TOKEN"].contains(&body["errcode"].as_str().unwrap_or_default()),
            "{body}"
        );
    }
    let (status, body) = exchange(
        &mut stream,
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["versions"].is_array(), "{body}");
}

/// An inline `/sync` filter that is not JSON, or JSON that is not a filter,
/// is a 400 (as Synapse answers), not an unknown filter ID; an unknown ID
/// is still a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inline_sync_filters_are_400() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let sync = |filter: &str| {
        let path = format!("/_matrix/client/v3/sync?timeout=0&filter={}", enc(filter));
        let alice = &alice;
        async move { alice.call(Method::GET, &path, None).await }
    };
    let (status, body) = sync("{not json").await;
    assert_error(status, &body, 400, "M_NOT_JSON");
    let (status, body) = sync(r#"{"room": {"timeline": {"limit": "ten"}}}"#).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = sync("12345").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = sync(r#"{"room": {"timeline": {"limit": 1}}}"#).await;
    assert_eq!(status, StatusCode::OK, "a good inline filter: {body}");
}

/// A redaction naming an event ID longer than the spec's 255 bytes is
/// refused (it could never name an event); one naming a well-formed ID
/// this server does not hold is accepted, as the spec allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redactions_of_impossible_event_ids_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let long = format!("${}", "a".repeat(10_000));
    let (status, body) = alice
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&long)),
            Some(&json!({})),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = alice
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r2", enc(&room), enc("$not-held")),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A connection that never finishes its request's headers is closed once
/// `header_read_timeout_secs` has run out, on both listeners (it held a
/// file descriptor for ever); a connection that sends its request in time
/// is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_headers_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.header_read_timeout_secs = 1).await;
    let running = server.running();
    // The client listener: headers begun, never finished; a request
    // answered, then nothing more on the kept-alive connection; a body
    // announced, never sent; the federation listener (TLS): nothing sent
    // at all, not even a handshake.
    for (addr, partial) in [
        (
            running.client_addr,
            &b"GET /_matrix/client/versions HTTP/1.1\r\nHost: loc"[..],
        ),
        (
            running.client_addr,
            &b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        ),
        (
            running.client_addr,
            &b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: localhost\r\ncontent-length: 100\r\n\r\n{"[..],
        ),
        (running.federation_addr, &b""[..]),
    ] {
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(partial).await.expect("partial headers written");
        let started = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match slow.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{addr}: still open after 10 s");
        eprintln!("{addr}: closed after {:?}", started.elapsed());
    }
    let (status, _) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// What hyper refuses before any handler runs (a URI past 64 KiB, headers
/// past its buffer, a byte no request line may hold) is answered with a
/// Matrix error body too, on both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_the_http_layer_get_matrix_errors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_federating().await;
    let long_uri = format!("/_matrix/client/versions?{}", "a".repeat(70_000));
    let big_headers = (0..500)
        .map(|i| format!("x-filler-{i}: {}\r\n", "b".repeat(1000)))
        .collect::<String>();
    let raw_requests = [
        (
            format!("GET {long_uri} HTTP/1.1\r\nHost: a\r\n\r\n"),
            414,
            "M_TOO_LARGE",
        ),
        (
            format!("GET /_matrix/client/versions HTTP/1.1\r\nHost: a\r\n{big_headers}\r\n"),
            431,
            "M_TOO_LARGE",
        ),
        (
            "GET /_matrix/client/\x01versions HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
            400,
            "M_UNRECOGNIZED",
        ),
    ];
    for (request, want_status, want_errcode) in raw_requests {
        let mut stream = tokio::net::TcpStream::connect(server.running().client_addr)
            .await
            .unwrap();
        // The server may answer and close before it has read it all.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with(&format!("HTTP/1.1 {want_status} ")), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-type: application/json"),
            "{head}"
        );
        let body: Value = serde_json::from_str(body).expect("a JSON body");
        assert_error(
            StatusCode::from_u16(want_status).unwrap(),
            &body,
            want_status,
            want_errcode,
        );
    }

    // The federation listener (TLS) too, over HTTP/1.1 (reqwest cannot send
    // a URI past 64 KiB nor a bad byte: headers it can). Over HTTP/2 there
    // is no answer to give: hyper ends the connection (GOAWAY).
    let http = reqwest::Client::builder()
        .http1_only()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let fed = server.federation_base();
    let mut request = http.get(format!("{fed}/_matrix/federation/v1/version"));
    for i in 0..500 {
        request = request.header(format!("x-filler-{i}"), "b".repeat(1000));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert_error(status, &response.json().await.unwrap(), 431, "M_TOO_LARGE");

    // And the connections that follow are served as ever.
    let (status, _) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
}
