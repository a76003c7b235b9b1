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

/// A set of latencies, for nearest-rank percentiles.
#[derive(Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut v: Vec<Duration>) -> Latencies {
        v.sort();
        Latencies(v)
    }
    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
    pub fn mean(&self) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.iter().sum::<Duration>() / self.0.len() as u32
    }
    /// p50, p90, p99, max and mean.
    pub fn summary(&self) -> String {
        format!(
            "p50 {} | p90 {} | p99 {} | max {} | mean {}",
            ms(self.pct(50.0)),
            ms(self.pct(90.0)),
            ms(self.pct(99.0)),
            ms(self.max()),
            ms(self.mean())
        )
    }
    /// p50, p90 and max: for a few samples (a dozen pages).
    pub fn short_summary(&self) -> String {
        format!(
            "p50 {} | p90 {} | max {}",
            ms(self.pct(50.0)),
            ms(self.pct(90.0)),
            ms(self.max())
        )
    }
}

/// Milliseconds: three decimals under 10 ms, one above.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `f(0)`, …, `f(n - 1)` with `concurrency` of them in flight,
/// telling stderr every 2,000.
pub async fn in_flight<F, Fut>(n: usize, concurrency: usize, f: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = std::sync::Arc::new(f);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (f, next) = (f.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i).await;
                if (i + 1) % 2_000 == 0 {
                    eprintln!("    {} sent", i + 1);
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker panicked");
    }
}
