//! The `weft` binary as a child process of a test: started with `WEFT_*`
//! variables, killed with SIGKILL, started again on the same data
//! directory, database and ports.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::free_port;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// The `weft` binary as a child process (to be killed with SIGKILL and
/// started again), on the same ports after each restart (its server name
/// holds the federation port), with a fresh database of its own
/// ([`super::fresh_database_url`]) kept across restarts.
pub struct WeftProcess {
    pub child: Option<Child>,
    pub data: PathBuf,
    /// `None`: SQLite, in `data`.
    pub database_url: Option<String>,
    /// Whether the database is this process's to drop (not a sibling's).
    pub owns_database: bool,
    /// The server name, when it is another process's (a sibling).
    pub name: Option<String>,
    pub logs: PathBuf,
    pub client_port: u16,
    pub federation_port: u16,
    pub starts: usize,
    /// `WEFT_LOG` of the process.
    pub log_filter: String,
    /// `WEFT_INSTANCE_NAME` of the process (several over one database).
    pub instance_name: Option<String>,
    /// More `WEFT_*` variables.
    pub env: Vec<(String, String)>,
    /// A new client for each start: no connection pooled from a killed
    /// process.
    pub http: reqwest::Client,
}

impl Drop for WeftProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(url) = &self.database_url
            && self.owns_database
        {
            super::drop_database(url);
        }
    }
}

impl WeftProcess {
    pub fn new(dir: &Path) -> WeftProcess {
        WeftProcess {
            child: None,
            data: dir.join("data"),
            database_url: super::fresh_database_url(),
            owns_database: true,
            name: None,
            logs: dir.to_owned(),
            client_port: free_port(),
            federation_port: free_port(),
            starts: 0,
            log_filter: "info,ruma_state_res=warn".to_owned(),
            instance_name: None,
            env: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    /// Another process of the same server (several processes over one
    /// PostgreSQL database): the same data directory (signing key, media),
    /// database and server name, ports and logs (in `dir`) of its own.
    pub fn sibling(&self, dir: &Path) -> WeftProcess {
        WeftProcess {
            child: None,
            data: self.data.clone(),
            database_url: self.database_url.clone(),
            owns_database: false,
            name: Some(self.server_name()),
            logs: dir.to_owned(),
            client_port: free_port(),
            federation_port: free_port(),
            starts: 0,
            log_filter: self.log_filter.clone(),
            instance_name: None,
            env: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    pub fn server_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.federation_port))
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log_path(&self, start: usize) -> PathBuf {
        self.logs.join(format!("weft.{start}.log"))
    }

    /// The logs of every start so far.
    pub fn log_text(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                format!("----- start {i} -----\n{text}")
            })
            .collect()
    }

    /// Starts weft and waits until it answers. The first start
    /// picks other ports if one was taken meanwhile (by a test running
    /// beside); later ones keep them (the server name holds one).
    pub async fn start(&mut self) {
        let first = self.starts == 0;
        for _ in 0..5 {
            match self.try_start().await {
                Ok(()) => return,
                Err(log) if first && log.contains("already in use") => {
                    // Anew: other ports, and (unless a sibling's) nothing
                    // kept from the attempt.
                    self.client_port = free_port();
                    self.federation_port = free_port();
                    if self.owns_database {
                        self.data = self.logs.join(format!("data.{}", self.starts));
                        if let Some(url) = self.database_url.take() {
                            super::drop_database(&url);
                            self.database_url = super::fresh_database_url();
                        }
                    }
                }
                Err(log) => panic!("weft exited:\n{log}"),
            }
        }
        panic!("no free ports for weft:\n{}", self.log_text());
    }

    /// Starts the binary; `Err` with the logs if it exits instead of
    /// answering.
    pub async fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).unwrap();
        let child = Command::new(WEFT)
            .arg("serve")
            .env("WEFT_DATA_DIR", &self.data)
            .env("WEFT_DATABASE_URL", self.database_url.as_deref().unwrap_or(""))
            .env("WEFT_SERVER_NAME", self.server_name())
            .env("WEFT_CLIENT_LISTEN", format!("127.0.0.1:{}", self.client_port))
            .env("WEFT_FEDERATION_LISTEN", format!("127.0.0.1:{}", self.federation_port))
            .env("WEFT_ALLOW_REGISTRATION", "true")
            .env("WEFT_RATE_LIMITS", "false")
            .env("WEFT_FEDERATION_VERIFY_TLS", "false")
            .env("WEFT_LOG", &self.log_filter)
            .env("WEFT_INSTANCE_NAME", self.instance_name.as_deref().unwrap_or(""))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = self
                .http
                .get(format!("{}/_matrix/client/versions", self.base()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("({status})\n{}", self.log_text()));
            }
            assert!(Instant::now() < deadline, "weft did not start:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not exited: {status}");
    }
}
