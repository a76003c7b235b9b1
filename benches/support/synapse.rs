//! Synapse (`tests/common/synapse.rs`) for the benchmarks that set it beside
//! weft: started on a storage backend, and its process found for its CPU
//! time. Included by the benchmarks that also include `tests/common`.
#![allow(dead_code)]

use crate::{
    common::synapse::Synapse,
    support::postgres::{Backend, Database},
};

/// A Synapse on `backend`: SQLite, or a new database of its own on the
/// run's PostgreSQL server (through psycopg2). Returns the database too.
pub async fn start_synapse(backend: &Backend) -> (Synapse, Option<Database>) {
    match backend.fresh_synapse_database() {
        None => (Synapse::start().await, None),
        Some(database) => (Synapse::start_on_postgres(&database.url).await, Some(database)),
    }
}

/// Synapse's process ID: the process whose command line names its
/// directory (the harness runs `python <dir>/launcher.py -c
/// <dir>/homeserver.yaml`, Synapse itself in that process).
pub fn synapse_pid(synapse: &Synapse) -> u32 {
    let dir = synapse.dir().to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(&format!("{dir}/launcher.py")) {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "processes running {dir}/launcher.py: {found:?}");
    found[0]
}
