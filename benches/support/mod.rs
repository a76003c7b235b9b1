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

pub mod postgres;

/// User + system CPU time of a process (`pid`, or `"self"`), from
/// `/proc/<pid>/stat` (clock ticks of 10 ms).
pub fn cpu_time(pid: impl Display) -> Duration {
    proc_stat(pid).expect("read /proc/<pid>/stat").cpu
}

/// What `/proc/<pid>/stat` says of a process.
pub struct ProcStat {
    pub ppid: u32,
    /// User + system CPU time (clock ticks of 10 ms).
    pub cpu: Duration,
    /// The same of the children it waited for.
    pub children_cpu: Duration,
}

/// `/proc/<pid>/stat` of a process (`pid`, or `"self"`); `None` if it is
/// gone.
pub fn proc_stat(pid: impl Display) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields from the third (state) on: the name before may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let ticks = |a: usize, b: usize| Duration::from_millis((fields[a] + fields[b]) * 10);
    Some(ProcStat {
        ppid: fields[1] as u32,
        cpu: ticks(11, 12),
        children_cpu: ticks(13, 14),
    })
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
/// The runtime a benchmark runs on: two workers, as the machine has cores.
pub fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs a benchmark once on each backend of `WEFT_BENCH_BACKENDS`.
pub fn on_each_backend<S>(settings: &S, run: impl AsyncFn(&S, &postgres::Backend) -> Report) -> Vec<Report> {
    let runtime = bench_runtime();
    postgres::Backend::from_env()
        .iter()
        .map(|backend| runtime.block_on(run(settings, backend)))
        .collect()
}

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
    pub fn title(&self) -> &str {
        &self.title
    }
    pub fn section(&mut self, title: &str) {
        eprintln!("== [{}] {title}", self.title);
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

/// Prints the reports of one benchmark on several servers or backends
/// (each report's title is its label: `weft(sqlite)`, `weft(pg)`, …) side
/// by side: each row once, with each report's value under it. Rows are
/// matched by section, name and how many rows of that name came before in
/// the section; a report without a row is left out of it.
pub fn print_side_by_side(title: &str, reports: &[Report]) {
    if let [report] = reports {
        println!("\n{title}: {}", report.title);
        report.print();
        return;
    }
    type Key = (String, String, usize);
    let mut order: Vec<Key> = Vec::new();
    let mut values: std::collections::HashMap<Key, Vec<(&str, &str)>> = Default::default();
    for report in reports {
        let mut section = String::new();
        let mut seen: std::collections::HashMap<&str, usize> = Default::default();
        for (name, value) in &report.rows {
            let key = match value.is_empty() {
                true if name.starts_with("== ") => {
                    section = name.clone();
                    seen.clear();
                    (section.clone(), String::new(), 0)
                }
                true => continue,
                false => {
                    let n = seen.entry(name.as_str()).or_default();
                    *n += 1;
                    (section.clone(), name.clone(), *n)
                }
            };
            if !values.contains_key(&key) {
                order.push(key.clone());
            }
            let entry = values.entry(key.clone()).or_default();
            if !key.1.is_empty() {
                entry.push((report.title.as_str(), value.as_str()));
            }
        }
    }
    let width = reports.iter().map(|r| r.title.chars().count()).max().unwrap_or(0);
    println!();
    println!("{title}");
    for key in &order {
        if key.1.is_empty() {
            println!();
            println!("{}", key.0);
            continue;
        }
        println!("  {}", key.1);
        for (label, value) in &values[key] {
            println!("      {label:<width$}  {value}");
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
