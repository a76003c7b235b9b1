//! PostgreSQL stopped and started again under a running weft: requests
//! fail with a Matrix error (503 `M_UNKNOWN`) while it is down, weft
//! reconnects by itself, and nothing acknowledged is lost. The test runs
//! its own PostgreSQL server (`tools/pg-cluster`), so that restarting it
//! disturbs no other test; it runs where the suite runs on PostgreSQL
//! (`WEFT_TEST_POSTGRES` set, as `tools/test` does in its second pass).

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{TestServer, eventually};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A PostgreSQL server of this test's own, in a temp directory.
struct Cluster {
    dir: PathBuf,
    conninfo: String,
    port: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("weft-pg-restart-{:x}", rand::random::<u64>()));
        let out = Command::new(tool())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run tools/pg-cluster");
        assert!(
            out.status.success(),
            "pg-cluster start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conninfo = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let port = conninfo
            .split_whitespace()
            .find_map(|p| p.strip_prefix("port="))
            .expect("port in conninfo")
            .to_owned();
        Cluster { dir, conninfo, port }
    }

    /// Runs `pg_ctl` on the cluster (as its owner when root).
    fn pg_ctl(&self, args: &[&str]) {
        let bin = Command::new(tool()).arg("bin").output().expect("pg-cluster bin");
        let pg_ctl = PathBuf::from(String::from_utf8(bin.stdout).unwrap().trim()).join("pg_ctl");
        let data = self.dir.join("data");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let status = command
            .arg("--pgdata")
            .arg(&data)
            .arg("--log")
            .arg(self.dir.join("server.log"))
            .args(args)
            .current_dir(&self.dir)
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl {args:?}");
    }

    fn stop(&self) {
        self.pg_ctl(&["--mode=fast", "--wait", "stop"]);
    }

    fn start_again(&self) {
        let options = format!("-p {}", self.port);
        self.pg_ctl(&["--options", &options, "--wait", "start"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(tool()).arg("stop").arg(&self.dir).status();
    }
}

fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/pg-cluster")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test]
async fn weft_rides_out_a_postgres_restart() {
    if std::env::var("WEFT_TEST_POSTGRES").is_err() {
        eprintln!("skipped: runs in the PostgreSQL pass of tools/test (WEFT_TEST_POSTGRES)");
        return;
    }
    let cluster = Cluster::start();
    let url = cluster.conninfo.clone();
    let server = TestServer::start_with(move |c| c.database_url = Some(url.clone())).await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "restart" })).await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (status, body) = alice
            .send_text(&room, &format!("before-{i}"), &format!("before {i}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        acknowledged.push(format!("before {i}"));
    }
    // A long-poll in flight when the database goes away.
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let poll = {
        let http = server.http.clone();
        let url = format!("{}/_matrix/client/v3/sync?since={since}&timeout=3000", server.base());
        let token = alice.token.clone();
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.map(|r| r.status()) })
    };

    cluster.stop();
    let (status, body) = alice.send_text(&room, "during", "while the database is down").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN", "{body}");
    let (status, body) = alice.call(Method::GET, "/_matrix/client/v3/joined_rooms", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The long-poll ends, one way or the other, without taking the server
    // down.
    let polled = tokio::time::timeout(Duration::from_secs(30), poll).await;
    assert!(polled.is_ok(), "the long-poll in flight ended");

    cluster.start_again();
    // The pool connects again by itself: the same send (same transaction
    // ID) goes through.
    eventually(Duration::from_secs(30), "sends work again", || async {
        let (status, body) = alice.send_text(&room, "during", "after the restart").await;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    acknowledged.push("after the restart".to_owned());
    let (status, body) = alice.send_text(&room, "after", "one more").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    acknowledged.push("one more".to_owned());

    let page = alice.messages(&room, "dir=b&limit=50").await;
    let mut bodies: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    bodies.reverse();
    assert_eq!(bodies, acknowledged, "every acknowledged message, once, in order");
    // The long-poll of a sync from before the restart sees them too.
    let body = alice.sync(&format!("since={since}&timeout=0")).await;
    let seen: Vec<&str> = body["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(seen, ["after the restart", "one more"], "{body}");
}
