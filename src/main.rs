//! The `weft` command: serve, generate-config, register-user,
//! copy-to-postgres.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use weft::{
    accounts,
    config::{Config, DEFAULT_CONFIG_TOML},
    server,
    storage::Storage,
};

#[derive(Parser)]
#[command(name = "weft", version, about = "weft, a Matrix homeserver")]
struct Cli {
    /// Configuration file (TOML). Every key can also be set with WEFT_<KEY>.
    #[arg(long, short, global = true, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve,
    /// Print a commented default configuration file.
    GenerateConfig,
    /// Make a signed federation request as this server and print the answer
    /// (the tool for looking at what another server says).
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Create a local account.
    RegisterUser {
        /// Localpart (`alice`) or full user ID (`@alice:example.org`).
        name: String,
        #[arg(long, short)]
        password: String,
        /// Make the account a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Copy everything from the SQLite database in data_dir into a new,
    /// empty PostgreSQL database (stop the server first). Then set
    /// database_url to it and serve: weft carries on where it was.
    CopyToPostgres {
        /// The PostgreSQL database: `postgres://user@host/db`, or the
        /// `key=value` form (`host=/run/postgresql dbname=weft`).
        url: String,
    },
}

#[derive(Subcommand)]
enum FederationCommand {
    /// `weft federation get example.org /_matrix/federation/v1/version`
    Get { server: String, path: String },
    /// POST with a JSON body (default `{}`).
    Post {
        server: String,
        path: String,
        body: Option<String>,
    },
    /// PUT with a JSON body (default `{}`).
    Put {
        server: String,
        path: String,
        body: Option<String>,
    },
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// glibc's allocator, left to itself, keeps what a burst allocated: a
/// freed block of a few MiB (an argon2 hash takes 7 MiB) raises its mmap
/// threshold, so the next ones come from the heap and stay there. With a
/// fixed threshold such blocks are mapped and unmapped; and every minute
/// what the heaps hold free is given back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod allocator {
    pub fn tune() {
        // SAFETY: mallopt sets one parameter of the allocator; it is called
        // before any other thread of this process starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        }
    }

    pub async fn trim_every_minute() {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only returns free memory to the system.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod allocator {
    pub fn tune() {}
    pub async fn trim_every_minute() {}
}

fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    if let Command::GenerateConfig = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => {
                // Every connection is a file descriptor: the soft limit
                // (often 1024) is raised to the hard one, as servers do.
                match rlimit::increase_nofile_limit(u64::MAX) {
                    Ok(limit) => tracing::info!(limit, "open files limit"),
                    Err(e) => tracing::warn!(error = %e, "open files limit not raised"),
                }
                let running = server::start(config).await.map_err(|e| e.to_string())?;
                tokio::spawn(allocator::trim_every_minute());
                running.run_until_signal().await;
                Ok(())
            }
            Command::RegisterUser { name, password, admin } => register_user(&config, &name, &password, admin).await,
            Command::Federation(request) => federation_request(&config, request).await,
            Command::CopyToPostgres { url } => copy_to_postgres(&config, &url).await,
            Command::GenerateConfig => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn register_user(config: &Config, name: &str, password: &str, admin: bool) -> Result<(), String> {
    let localpart = match name.strip_prefix('@') {
        Some(full) => {
            let (localpart, server) = full.split_once(':').ok_or("a full user ID needs a server name")?;
            if server != config.server_name.as_str() {
                return Err(format!("{name} is not a user of this server ({})", config.server_name));
            }
            localpart
        }
        None => name,
    };
    let user_id = accounts::user_id_for(localpart, &config.server_name).map_err(|e| e.to_string())?;
    let storage: Arc<dyn Storage> = weft::storage::open(config).await.map_err(|e| e.to_string())?;
    accounts::create_user(&*storage, &user_id, Some(password), admin)
        .await
        .map_err(|e| e.to_string())?;
    println!("created {user_id}{}", if admin { " (admin)" } else { "" });
    Ok(())
}

async fn copy_to_postgres(config: &Config, url: &str) -> Result<(), String> {
    use weft::storage::copy::Progress;
    println!("copying {} into PostgreSQL", config.data_dir.join("weft.db").display());
    let summary = weft::storage::copy::sqlite_to_postgres(&config.data_dir, url, |progress| match progress {
        Progress::Copying { table, rows } => println!("  {table:<28} {rows:>10} rows…"),
        Progress::Copied { table, rows } => println!("  {table:<28} {rows:>10} rows"),
    })
    .await
    .map_err(|e| e.to_string())?;
    let rows: u64 = summary.tables.iter().map(|(_, rows)| rows).sum();
    let positions: Vec<String> = summary
        .streams
        .iter()
        .chain(&summary.sequences)
        .map(|(name, position)| format!("{name} {position}"))
        .collect();
    println!(
        "copied {rows} rows of {} tables into {} in {:.1?} (positions: {})",
        summary.tables.len(),
        summary.target,
        summary.elapsed,
        positions.join(", ")
    );
    println!("now set database_url to it and start weft (media, keys and certificates stay in data_dir)");
    Ok(())
}

async fn federation_request(config: &Config, request: FederationCommand) -> Result<(), String> {
    let (method, server, path, body) = match request {
        FederationCommand::Get { server, path } => (http::Method::GET, server, path, None),
        FederationCommand::Post { server, path, body } => (http::Method::POST, server, path, Some(body)),
        FederationCommand::Put { server, path, body } => (http::Method::PUT, server, path, Some(body)),
    };
    let server = ruma::OwnedServerName::try_from(server).map_err(|e| format!("invalid server name: {e}"))?;
    if !path.starts_with('/') {
        return Err(format!("the path must start with '/': {path}"));
    }
    let body: Option<serde_json::Value> = match body {
        Some(text) => Some(
            serde_json::from_str(text.as_deref().unwrap_or("{}")).map_err(|e| format!("the body is not JSON: {e}"))?,
        ),
        None => None,
    };
    let keys = weft::keys::ServerKeys::load_or_generate(&config.data_dir, config.server_name.clone())
        .map_err(|e| e.to_string())?;
    let client = weft::federation_client::FederationClient::new(Arc::new(keys), config.federation_verify_tls)
        .map_err(|e| e.to_string())?;
    let (status, bytes) = client
        .raw(&server, method, &path, body.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json) => println!(
            "{}",
            serde_json::to_string_pretty(&json).expect("JSON values serialise")
        ),
        Err(_) => println!("{}", String::from_utf8_lossy(&bytes)),
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{server} answered {status}"))
    }
}
