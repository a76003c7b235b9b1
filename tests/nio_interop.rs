//! Interop: matrix-nio (a real Matrix client library, from PyPI) uses weft.
//!
//! The flow itself lives in `tests/interop/nio_client.py`; this test starts
//! a server, registers the users and runs the script with a Python that has
//! `nio` installed (`WEFT_TEST_PYTHON`, else `~/.cache/weft-venv/bin/python`;
//! `tools/test` sets that virtualenv up).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::TestServer;
use tokio::process::Command;

/// The whole script must finish within this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/nio_client.py")
}

/// The first candidate interpreter that can import nio, else a failure
/// telling how to get one.
async fn python_with_nio() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("WEFT_TEST_PYTHON").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let venv = Path::new(&home).join(".cache/weft-venv/bin/python");
        if venv.exists() {
            candidates.push(venv);
        }
    }
    let mut tried = Vec::new();
    for python in candidates {
        let probe = Command::new(&python)
            .args(["-c", "import nio"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
            .await;
        match probe {
            Ok(out) if out.status.success() => return python,
            Ok(out) => tried.push(format!(
                "{}: cannot import nio: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{}: {e}", python.display())),
        }
    }
    panic!(
        "no Python with matrix-nio found (tried: {}). Run tools/test, which installs it into \
         ~/.cache/weft-venv (from tests/interop/requirements.txt), or set WEFT_TEST_PYTHON to a \
         python that has it",
        if tried.is_empty() {
            "WEFT_TEST_PYTHON unset, ~/.cache/weft-venv/bin/python missing".to_owned()
        } else {
            tried.join("; ")
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_client_flow() {
    let python = python_with_nio().await;
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let mut cmd = Command::new(&python);
    cmd.arg(script())
        .args(["--homeserver", &server.base()])
        // One by localpart, one by full user id: nio sends both as m.id.user.
        .args(["--user", "alice", "--password", "secret"])
        .args(["--user2", &bob.user_id, "--password2", "secret"])
        .args(["--messages", "30"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let output = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output()).await {
        Ok(result) => result.expect("nio script output"),
        Err(_) => panic!(
            "nio script did not finish within {SCRIPT_TIMEOUT:?} (user {})",
            alice.user_id
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "nio script failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("[nio-interop] OK:"),
        "nio script exited 0 without its summary:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}
