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
    common::{
        free_port,
        synapse::{Client, appservice_registration},
    },
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
    /// An application service (no URL: it is sent nothing) whose token,
    /// [`AS_TOKEN`], registers users `@m<digits>` without a password (no
    /// argon2: filling a room of thousands of members takes seconds).
    pub appservice: bool,
}

/// The token of [`Options::appservice`].
pub const AS_TOKEN: &str = "bench-appservice-token";

/// A running `weft serve`, killed when dropped (the tail of its log is
/// printed if the benchmark panics).
pub struct WeftProcess {
    child: Child,
    log: PathBuf,
    /// How it was started (for [`Self::sibling`]).
    launch: Launch,
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

/// What a `weft serve` is started with.
#[derive(Debug, Clone)]
struct Launch {
    dir: PathBuf,
    server_name: String,
    /// Client, federation and metrics ports.
    ports: (u16, u16, u16),
    database: Option<Database>,
    options: Options,
    /// `instance_name`, for one of several processes.
    instance: Option<String>,
}

impl Launch {
    fn command(&self) -> Command {
        let (client_port, fed_port, metrics_port) = self.ports;
        let mut cmd = Command::new(WEFT);
        cmd.env_remove("WEFT_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("WEFT_DATABASE_URL")
            .env_remove("WEFT_INSTANCE_NAME")
            .env("WEFT_DATA_DIR", self.dir.join("data"));
        if let Some(database) = &self.database {
            cmd.env("WEFT_DATABASE_URL", &database.url);
        }
        if let Some(instance) = &self.instance {
            cmd.env("WEFT_INSTANCE_NAME", instance);
        }
        cmd.env("WEFT_SERVER_NAME", &self.server_name)
            .env("WEFT_CLIENT_LISTEN", format!("127.0.0.1:{client_port}"))
            .env("WEFT_FEDERATION_LISTEN", format!("127.0.0.1:{fed_port}"))
            .env("WEFT_FEDERATION_VERIFY_TLS", "false")
            // A benchmark measures the server, not its rate limits (429
            // M_LIMIT_EXCEEDED); a weft without the key ignores it.
            .env("WEFT_RATE_LIMITS", "false")
            .env(
                "WEFT_LOG",
                std::env::var("WEFT_BENCH_WEFT_LOG").unwrap_or_else(|_| "warn".to_owned()),
            );
        if self.options.metrics {
            cmd.env("WEFT_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"));
        }
        if self.options.open_registration {
            cmd.env("WEFT_ALLOW_REGISTRATION", "true");
        }
        if self.options.appservice {
            let file = self.dir.join("bench-appservice.yaml");
            std::fs::write(&file, appservice_registration(AS_TOKEN)).expect("write the appservice registration");
            cmd.env("WEFT_APP_SERVICE_CONFIG_FILES", &file);
        }
        cmd
    }

    /// Starts `weft serve` and waits until `/versions` answers; `None`
    /// when a port was taken meanwhile (start again on others).
    async fn serve(self, label: &str, attempt: u32) -> Option<WeftProcess> {
        let (client_port, _, metrics_port) = self.ports;
        let log = self.dir.join(format!("{label}.log"));
        let file = File::create(&log).expect("log file");
        let child = self
            .command()
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
            server_name: self.server_name.clone(),
            metrics: self
                .options
                .metrics
                .then(|| format!("http://127.0.0.1:{metrics_port}/metrics")),
            database: self.database.clone(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(300))
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            launch: self,
        };
        let started = Instant::now();
        loop {
            let url = format!("{}/_matrix/client/versions", server.client_base);
            if let Ok(res) = server.http.get(&url).send().await
                && res.status() == StatusCode::OK
            {
                return Some(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let tail = log_tail(&server.log, 20);
                if tail.contains("in use") && attempt < 5 {
                    eprintln!("weft {label}: a port was taken, starting again");
                    return None;
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
            let fed_port = free_port();
            let launch = Launch {
                dir: dir.clone(),
                server_name: format!("127.0.0.1:{fed_port}"),
                ports: (free_port(), fed_port, free_port()),
                database: backend.fresh_database(),
                options,
                instance: None,
            };
            std::fs::create_dir_all(&dir).expect("data dir");
            for user in users {
                let out = launch
                    .command()
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
            if let Some(server) = launch.serve(label, attempt).await {
                return server;
            }
        }
        panic!("weft {label} could not bind its ports");
    }

    /// Another process of the same server (same data directory, database
    /// and server name; on its own ports), named `instance`: several
    /// processes over one PostgreSQL database.
    pub async fn sibling(&self, instance: &str) -> WeftProcess {
        for attempt in 1..=5 {
            let mut launch = self.launch.clone();
            launch.ports = (free_port(), free_port(), free_port());
            launch.instance = Some(instance.to_owned());
            if let Some(server) = launch.serve(instance, attempt).await {
                return server;
            }
        }
        panic!("weft {instance} could not bind its ports");
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
