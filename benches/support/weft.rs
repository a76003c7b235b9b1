//! `weft serve` as a child process, for the benchmarks that measure a
//! weft server apart from the benchmark itself (its CPU from /proc).
//! Included by the benchmarks that also include `tests/common`.
#![allow(dead_code)]

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use ruma::OwnedServerName;
use serde_json::{Value, json};

use crate::{
    common::{free_port, synapse::Client},
    support::{
        cpu_time, log_tail,
        postgres::{Backend, Database},
    },
};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");
/// The password of every user the benchmarks register.
pub const PASSWORD: &str = "bench-password";

/// How a [`WeftProcess`] is started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Serve `/metrics` ([`WeftProcess::metrics`]).
    pub metrics: bool,
    /// Open registration (`m.login.dummy`).
    pub open_registration: bool,
}

/// A running `weft serve`, killed when dropped (the tail of its log is
/// printed if the benchmark panics).
pub struct WeftProcess {
    child: Child,
    log: PathBuf,
    pub client_base: String,
    pub server_name: String,
    /// `http://…/metrics`, when started with [`Options::metrics`].
    pub metrics: Option<String>,
    pub http: reqwest::Client,
    /// Its PostgreSQL database (`None`: SQLite in its data directory).
    pub database: Option<Database>,
}

impl Drop for WeftProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {}'s log ({}) ----",
                self.server_name,
                self.log.display()
            );
            eprintln!("{}", log_tail(&self.log, 40));
        }
    }
}

impl WeftProcess {
    /// Registers `users` (`weft register-user`) in a new data directory
    /// under `root` and, on PostgreSQL, a new database of `backend`, then
    /// starts `weft serve` (server name `127.0.0.1:<federation port>`,
    /// peers' certificates not verified, log filter `WEFT_BENCH_WEFT_LOG`
    /// or `warn`) and waits until `/versions` answers. A port taken
    /// meanwhile makes it start again on other ports.
    pub async fn start(root: &Path, label: &str, users: &[&str], options: Options, backend: &Backend) -> WeftProcess {
        for attempt in 1..=5 {
            let dir = root.join(format!("{label}-{}-{attempt}", backend.name()));
            let (client_port, fed_port, metrics_port) = (free_port(), free_port(), free_port());
            let server_name = format!("127.0.0.1:{fed_port}");
            let database = backend.fresh_database();
            let command = || {
                let mut cmd = Command::new(WEFT);
                cmd.env_remove("WEFT_CONFIG")
                    .env_remove("RUST_LOG")
                    .env_remove("WEFT_DATABASE_URL")
                    .env("WEFT_DATA_DIR", dir.join("data"));
                if let Some(database) = &database {
                    cmd.env("WEFT_DATABASE_URL", &database.url);
                }
                cmd.env("WEFT_SERVER_NAME", &server_name)
                    .env("WEFT_CLIENT_LISTEN", format!("127.0.0.1:{client_port}"))
                    .env("WEFT_FEDERATION_LISTEN", format!("127.0.0.1:{fed_port}"))
                    .env("WEFT_FEDERATION_VERIFY_TLS", "false")
                    .env(
                        "WEFT_LOG",
                        std::env::var("WEFT_BENCH_WEFT_LOG").unwrap_or_else(|_| "warn".to_owned()),
                    );
                if options.metrics {
                    cmd.env("WEFT_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"));
                }
                if options.open_registration {
                    cmd.env("WEFT_ALLOW_REGISTRATION", "true");
                }
                cmd
            };
            std::fs::create_dir_all(&dir).expect("data dir");
            for user in users {
                let out = command()
                    .args(["register-user", user, "--password", PASSWORD])
                    .output()
                    .expect("run weft register-user");
                assert!(
                    out.status.success(),
                    "weft register-user {user} failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let log = dir.join("weft.log");
            let file = File::create(&log).expect("log file");
            let child = command()
                .arg("serve")
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log file"))
                .stderr(file)
                .spawn()
                .expect("spawn weft serve");
            let mut server = WeftProcess {
                child,
                log,
                client_base: format!("http://127.0.0.1:{client_port}"),
                server_name,
                metrics: options
                    .metrics
                    .then(|| format!("http://127.0.0.1:{metrics_port}/metrics")),
                database,
                http: reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(300))
                    .pool_max_idle_per_host(64)
                    .build()
                    .expect("http client"),
            };
            let started = Instant::now();
            loop {
                let url = format!("{}/_matrix/client/versions", server.client_base);
                if let Ok(res) = server.http.get(&url).send().await
                    && res.status() == StatusCode::OK
                {
                    return server;
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    let tail = log_tail(&server.log, 20);
                    if tail.contains("in use") && attempt < 5 {
                        eprintln!("weft {label}: a port was taken, starting again");
                        break;
                    }
                    panic!("weft serve ({label}) exited during start-up ({status}):\n{tail}");
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "weft did not answer within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        panic!("weft {label} could not bind its ports");
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time the process used so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }

    pub fn name(&self) -> OwnedServerName {
        self.server_name.as_str().try_into().unwrap()
    }

    /// Logs in a user registered at start (password login).
    pub async fn login(&self, localpart: &str) -> Client {
        let res = self
            .http
            .post(format!("{}/_matrix/client/v3/login", self.client_base))
            .json(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": localpart },
                "password": PASSWORD,
            }))
            .send()
            .await
            .expect("login request");
        let status = res.status();
        let body: Value = res.json().await.expect("login body");
        assert_eq!(status, StatusCode::OK, "login {localpart}: {body}");
        Client {
            http: self.http.clone(),
            base: self.client_base.clone(),
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            token: body["access_token"].as_str().expect("access_token").to_owned(),
        }
    }
}
