//! Resources come back after a burst: connections, database handles and
//! the requests' memory are not kept once the burst is over.

mod common;

use std::time::Duration;

use common::TestServer;
use futures_util::future::join_all;
use serde_json::json;

/// The file descriptors this process holds (the server runs in it).
fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_files_return_to_base_after_a_burst() {
    let server = TestServer::start_with(|c| c.max_requests_per_client = 1000).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for i in 0..20 {
        alice.send_text(&room, &format!("t{i}"), "hello").await;
    }
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    // Settled: one more request opens nothing new.
    alice.messages(&room, "dir=b&limit=5").await;
    let base = open_files();

    {
        // A client of its own, whose connections end with it.
        let http = reqwest::Client::new();
        let get = |path: String| {
            let request = http.get(format!("{}{path}", server.base())).bearer_auth(&alice.token);
            async move { request.send().await.map(|r| r.status()) }
        };
        let syncs = (0..300).map(|_| get(format!("/_matrix/client/v3/sync?timeout=1500&since={since}")));
        let pages = (0..200).map(|_| {
            get(format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
                common::enc(&room)
            ))
        });
        let (syncs, pages) = tokio::join!(join_all(syncs), join_all(pages));
        assert!(
            syncs
                .iter()
                .chain(&pages)
                .all(|s| s.as_ref().is_ok_and(|s| s.is_success()))
        );
        let during = open_files();
        eprintln!("open files: {base} before, {during} at the end of the burst");
        assert!(during > base + 100, "the burst held connections: {during} vs {base}");
    }

    // SQLite keeps its 8 readers open (a database and a WAL descriptor
    // each); PostgreSQL's pool keeps up to 16 connections (idle ones closed
    // after 5 minutes), beside the 8 of room locks.
    let slack = match server.services().config.database_url {
        None => 20,
        Some(_) => 24,
    };
    let after = common::eventually(Duration::from_secs(15), "open files back to base", || async {
        let now = open_files();
        if now <= base + slack {
            Ok(now)
        } else {
            let what: Vec<String> = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect();
            Err(format!("{now} open, {base} before: {what:?}"))
        }
    })
    .await;
    eprintln!("open files: {after} after the burst");
}
