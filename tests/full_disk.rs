//! A full disk: writes are refused with a clear error (`507
//! M_RESOURCE_LIMIT_EXCEEDED`), reads keep working, no half-written media
//! file is left behind, and writes work again once space is freed.
//!
//! The data directory is a small tmpfs, filled up by the test. Mounting
//! one needs root (as CI runs); elsewhere the test says so and passes.

mod common;

use std::{io::Write, path::Path, process::Command};

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Writes a file until the disk is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if file.write_all(&chunk).and_then(|()| file.flush()).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
}

fn assert_disk_full(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["errcode"], "M_RESOURCE_LIMIT_EXCEEDED", "{body}");
    assert!(body["error"].as_str().unwrap().contains("disk is full"), "{body}");
    // The spec requires where to reach the administrator with this code.
    assert_eq!(body["admin_contact"], ADMIN_CONTACT, "{body}");
}

const ADMIN_CONTACT: &str = "mailto:admin@example.org";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_keeps_reads() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    let data = tmpfs.path().join("data");
    let server = TestServer::start_with(|c| {
        c.data_dir = data.clone();
        c.database_url = None;
        c.admin_contact = Some(ADMIN_CONTACT.to_owned());
    })
    .await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let (status, body) = alice.send_text(&room, "t0", "before").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    let filler = tmpfs.path().join("filler");
    fill(&filler);

    // Writes: refused, named as such.
    let (status, body) = alice.send_text(&room, "t1", "during").await;
    assert_disk_full(status, &body);
    let upload = server
        .http
        .post(format!("{}/_matrix/media/v3/upload?filename=a.bin", server.base()))
        .bearer_auth(&alice.token)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 64 * 1024])
        .send()
        .await
        .unwrap();
    let status = upload.status();
    assert_disk_full(status, &upload.json().await.unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(data.join("media"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "nothing half-written is kept: {leftovers:?}");

    // Reads: served.
    let (status, body) = alice
        .call(
            Method::GET,
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = alice.messages(&room, "dir=b&limit=10").await;
    assert_eq!(page["chunk"][0]["content"]["body"], "before", "{page}");

    // Space freed: writes work again.
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = alice.send_text(&room, "t2", "after").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = alice.messages(&room, "dir=b&limit=1").await;
    assert_eq!(page["chunk"][0]["content"]["body"], "after", "{page}");
}
