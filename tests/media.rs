//! The media repository: uploads, downloads (authenticated and legacy),
//! thumbnails, the configuration, and another server's media fetched over
//! federation, through HTTP on real servers.

mod common;

use common::{TestServer, User};
use reqwest::{Method, StatusCode, header};
use serde_json::Value;

/// Uploads `bytes` as `user`; the status and answer.
async fn upload(user: &User<'_>, path: &str, content_type: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let res = user
        .server
        .http
        .post(format!("{}{path}", user.server.base()))
        .bearer_auth(&user.token)
        .header(header::CONTENT_TYPE, content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload sent");
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The `(server, media ID)` of an `mxc://` URI.
fn parse_mxc(uri: &str) -> (String, String) {
    let rest = uri.strip_prefix("mxc://").expect("an mxc URI");
    let (server, id) = rest.split_once('/').expect("server/id");
    (server.to_owned(), id.to_owned())
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = server.http.get(format!("{}{path}", server.base()));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("request sent")
}

fn header_of(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn upload_and_download_round_trip() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let (status, answer) = upload(
        &alice,
        "/_matrix/media/v3/upload?filename=cat%20photo.png",
        "image/png",
        bytes.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (origin, id) = parse_mxc(answer["content_uri"].as_str().unwrap());
    assert_eq!(origin, server.server_name().as_str());
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "URL-safe ID: {id}");

    for path in [
        format!("/_matrix/client/v1/media/download/{origin}/{id}"),
        format!("/_matrix/media/v3/download/{origin}/{id}"),
        format!("/_matrix/media/r0/download/{origin}/{id}"),
    ] {
        let token = path.starts_with("/_matrix/client").then_some(alice.token.as_str());
        let res = get(&server, &path, token).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(header_of(&res, "content-type"), "image/png", "{path}");
        assert_eq!(
            header_of(&res, "content-disposition"),
            "inline; filename=\"cat photo.png\"",
            "{path}"
        );
        assert!(
            header_of(&res, "content-security-policy").starts_with("sandbox;"),
            "{path}"
        );
        assert_eq!(
            header_of(&res, "cross-origin-resource-policy"),
            "cross-origin",
            "{path}"
        );
        assert_eq!(res.bytes().await.unwrap().to_vec(), bytes, "{path}");
    }

    // A file name in the path is the one given.
    let res = get(
        &server,
        &format!("/_matrix/client/v1/media/download/{origin}/{id}/other.png"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_of(&res, "content-disposition"), "inline; filename=other.png");

    // The file is kept on disk, under the media directory.
    assert!(server.data_dir().join("media").join(&id).is_file());
}

#[tokio::test]
async fn unsafe_types_are_attachments_and_uploads_survive_a_restart() {
    let mut server = TestServer::start().await;
    let token = server.register("alice").await.token;
    let uri = {
        let alice = User {
            server: &server,
            user_id: String::new(),
            token: token.clone(),
        };
        let (status, answer) = upload(&alice, "/_matrix/media/r0/upload", "text/html", b"<script>".to_vec()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["content_uri"].as_str().unwrap().to_owned()
    };
    server.restart().await;
    let (origin, id) = parse_mxc(&uri);
    let res = get(&server, &format!("/_matrix/media/v3/download/{origin}/{id}"), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_of(&res, "content-type"), "text/html");
    assert_eq!(header_of(&res, "content-disposition"), "attachment");
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"<script>");
}

#[tokio::test]
async fn authenticated_download_needs_a_token_and_unknown_media_is_not_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (_, answer) = upload(&alice, "/_matrix/media/v3/upload", "text/plain", b"hello".to_vec()).await;
    let (origin, id) = parse_mxc(answer["content_uri"].as_str().unwrap());

    let res = get(
        &server,
        &format!("/_matrix/client/v1/media/download/{origin}/{id}"),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.json::<Value>().await.unwrap()["errcode"], "M_MISSING_TOKEN");

    let (status, _) = server
        .request_raw(Method::POST, "/_matrix/media/v3/upload", None, "hello")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "upload needs a token");

    for path in [
        format!("/_matrix/client/v1/media/download/{origin}/nosuchmedia"),
        format!("/_matrix/media/v3/download/{origin}/nosuchmedia"),
        format!("/_matrix/client/v1/media/thumbnail/{origin}/nosuchmedia?width=32&height=32"),
    ] {
        let res = get(&server, &path, Some(&alice.token)).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(res.json::<Value>().await.unwrap()["errcode"], "M_NOT_FOUND", "{path}");
    }
}

#[tokio::test]
async fn config_and_size_limit() {
    let server = TestServer::start_with(|c| c.max_upload_size = 3 * 1024 * 1024).await;
    let alice = server.register("alice").await;
    let res = get(&server, "/_matrix/client/v1/media/config", Some(&alice.token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["m.upload.size"], 3 * 1024 * 1024);
    let res = get(&server, "/_matrix/client/v1/media/config", None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = get(&server, "/_matrix/media/v3/config", Some(&alice.token)).await;
    assert_eq!(res.json::<Value>().await.unwrap()["m.upload.size"], 3 * 1024 * 1024);

    // Larger than the 1 MiB of JSON bodies, within max_upload_size.
    let two_mib = vec![7u8; 2 * 1024 * 1024];
    let (status, answer) = upload(
        &alice,
        "/_matrix/media/v3/upload",
        "application/octet-stream",
        two_mib.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (origin, id) = parse_mxc(answer["content_uri"].as_str().unwrap());
    let res = get(&server, &format!("/_matrix/media/v3/download/{origin}/{id}"), None).await;
    assert_eq!(res.bytes().await.unwrap().len(), two_mib.len());

    // Over max_upload_size.
    let (status, answer) = upload(
        &alice,
        "/_matrix/media/v3/upload",
        "application/octet-stream",
        vec![7u8; 3 * 1024 * 1024 + 1],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["errcode"], "M_TOO_LARGE");

    // Other endpoints keep their 1 MiB cap.
    let res = server
        .http
        .put(format!(
            "{}/_matrix/client/v3/profile/{}/displayname",
            server.base(),
            alice.user_id
        ))
        .bearer_auth(&alice.token)
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn thumbnails_are_the_original_image() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (_, answer) = upload(
        &alice,
        "/_matrix/media/v3/upload",
        "image/jpeg",
        b"not really a jpeg".to_vec(),
    )
    .await;
    let (origin, image) = parse_mxc(answer["content_uri"].as_str().unwrap());
    let (_, answer) = upload(&alice, "/_matrix/media/v3/upload", "text/plain", b"words".to_vec()).await;
    let (_, text) = parse_mxc(answer["content_uri"].as_str().unwrap());

    let res = get(
        &server,
        &format!("/_matrix/client/v1/media/thumbnail/{origin}/{image}?width=64&height=64&method=scale"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_of(&res, "content-type"), "image/jpeg");
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"not really a jpeg");

    let res = get(
        &server,
        &format!("/_matrix/media/v3/thumbnail/{origin}/{image}?width=64&height=64"),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    let res = get(
        &server,
        &format!("/_matrix/client/v1/media/thumbnail/{origin}/{text}?width=64&height=64"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "text has no thumbnail");

    let res = get(
        &server,
        &format!("/_matrix/client/v1/media/thumbnail/{origin}/{image}?width=64"),
        Some(&alice.token),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "height is required");
    let res = get(
        &server,
        &format!("/_matrix/client/v1/media/thumbnail/{origin}/{image}"),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_servers_media_is_fetched_over_federation_and_cached() {
    let mut a = TestServer::start_federating().await;
    let b = TestServer::start_federating().await;
    let bytes = b"a picture from server A".to_vec();
    let uri = {
        let alice = a.register("alice").await;
        let (status, answer) = upload(
            &alice,
            "/_matrix/media/v3/upload?filename=from-a.png",
            "image/png",
            bytes.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["content_uri"].as_str().unwrap().to_owned()
    };
    let (origin, id) = parse_mxc(&uri);
    assert_eq!(origin, a.server_name().as_str());
    let bob = b.register("bob").await;

    // Unsigned, the federation endpoint refuses.
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let res = insecure
        .get(format!(
            "{}/_matrix/federation/v1/media/download/{id}",
            a.federation_base()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let path = format!("/_matrix/client/v1/media/download/{origin}/{id}");
    let res = get(&b, &path, Some(&bob.token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_of(&res, "content-type"), "image/png");
    assert_eq!(header_of(&res, "content-disposition"), "inline; filename=from-a.png");
    assert_eq!(res.bytes().await.unwrap().to_vec(), bytes);

    // Unknown media of A: A's 404 is passed on.
    let res = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{origin}/nosuchmedia"),
        Some(&bob.token),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // With A gone, B still has its copy; other media of A cannot be had.
    a.server.take().unwrap().shutdown().await;
    let res = get(&b, &format!("/_matrix/media/v3/download/{origin}/{id}"), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().to_vec(), bytes);
    let res = get(
        &b,
        &format!("/_matrix/client/v1/media/download/{origin}/othermedia"),
        Some(&bob.token),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    // Not fetched when asked not to.
    let res = get(
        &b,
        &format!("/_matrix/media/v3/download/{origin}/othermedia?allow_remote=false"),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}
