//! What the benchmarks that run weft (and Synapse) as child processes
//! share: reading a process's CPU time and context switches from /proc,
//! the machine's load, the tail of a server's log, and the report printed
//! at the end.
#![allow(dead_code)]

use std::{
    fmt::Display,
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
    time::Duration,
};

/// User + system CPU time of a process (`pid`, or `"self"`), from
/// `/proc/<pid>/stat` (clock ticks of 10 ms).
pub fn cpu_time(pid: impl Display) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Context switches (voluntary + involuntary) of a process's live
/// threads, summed over /proc/<pid>/task/*/status (threads that exited
/// meanwhile are not counted; zero if the process is gone).
pub fn context_switches(pid: impl Display) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return String::from("(no log)");
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The figures of a run: each printed to stderr as it is measured, and
/// all of them as a table on stdout at the end.
pub struct Report {
    title: String,
    rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(title: impl Into<String>) -> Report {
        Report {
            title: title.into(),
            rows: Vec::new(),
        }
    }
    pub fn section(&mut self, title: &str) {
        eprintln!("== {title}");
        self.rows.push((String::new(), String::new()));
        self.rows.push((format!("== {title}"), String::new()));
    }
    pub fn row(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        eprintln!("  {name}: {value}");
        self.rows.push((name, value));
    }
    pub fn print(&self) {
        let width = self.rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
        println!();
        println!("{}", self.title);
        for (name, value) in &self.rows {
            if value.is_empty() {
                println!("{name}");
            } else {
                println!("  {name:<width$}  {value}");
            }
        }
    }
}
