//! `history-test`: history-checked runs of the engine (see `cluster::history_run`).
//!
//! One case (`--workload … --seed …`, repeated over `--seeds N` seeds), or a matrix
//! (`--matrix quick|full`) that cycles through cluster shapes, lock modes, transports,
//! modes and faults until `--runs` cases ran or `--minutes` passed. Prints one JSON
//! object per case with `--json`, then a table; exits 1 if any case found a forbidden
//! anomaly (its history, report and replay command are saved under `--out`).

use clap::Parser;
use cluster::history_run::case::{run_case, Case, CaseResult, Faults, Mode};
use cluster::history_run::inject::Intensity;
use cluster::history_run::Workload;
use common::fabric::Transport;
use compute_node::coherence::LockMode;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "History-checked (Elle-style) runs of the engine")]
struct Args {
    /// list-append, register or bank
    #[arg(long, default_value = "list-append")]
    workload: String,
    /// embedded or processes
    #[arg(long, default_value = "embedded")]
    mode: String,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 1)]
    storage_nodes: usize,
    /// lazy or eager
    #[arg(long, default_value = "lazy")]
    lock_mode: String,
    /// shm or tcp
    #[arg(long, default_value = "shm")]
    transport: String,
    /// none, crash, leave, storage-crash (embedded); kill-compute, pause-compute, kill-storage,
    /// kill-gtm, all-process (processes)
    #[arg(long, default_value = "none")]
    faults: String,
    /// off, light or heavy: seeded delays at the engine's injection points
    #[arg(long, default_value = "light")]
    inject: String,
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    #[arg(long, default_value_t = 8)]
    keys: u64,
    /// Client threads per compute node
    #[arg(long, default_value_t = 3)]
    threads: usize,
    /// Slots of each storage node's change-notice ring (embedded mode)
    #[arg(long, default_value_t = common::storage::notice::NOTICE_CAPACITY)]
    notice_slots: u32,
    /// Writing transactions read with locking reads; the history must be serializable
    #[arg(long)]
    locking: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run this many seeds (seed, seed+1, ...) of the case
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Cycle through a matrix of cases instead: quick or full
    #[arg(long)]
    matrix: Option<String>,
    /// Matrix: stop after this many cases
    #[arg(long)]
    runs: Option<u64>,
    /// Matrix: stop after this many minutes
    #[arg(long)]
    minutes: Option<f64>,
    /// off, on, or mixed (every other case): a thread writing and fsyncing a file in a
    /// loop while the case runs
    #[arg(long, default_value = "off")]
    fsync_pressure: String,
    /// Where failing cases' histories and reports go
    #[arg(long, default_value = "history-failures")]
    out: PathBuf,
    /// One JSON object per case on stdout
    #[arg(long)]
    json: bool,
}

fn parse<T>(what: &str, v: &str, f: impl Fn(&str) -> Option<T>) -> T {
    f(v).unwrap_or_else(|| {
        eprintln!("history-test: bad --{what} {v:?}");
        std::process::exit(2)
    })
}

fn lock_mode(s: &str) -> Option<LockMode> {
    match s {
        "lazy" => Some(LockMode::Lazy),
        "eager" => Some(LockMode::Eager),
        _ => None,
    }
}

fn transport(s: &str) -> Option<Transport> {
    match s {
        "shm" => Some(Transport::Shm),
        "tcp" => Some(Transport::Tcp),
        _ => None,
    }
}

/// The matrix: cluster shapes × lock modes × transports × modes × faults, each with
/// every workload in turn. `quick` keeps the embedded part.
fn matrix(kind: &str, seconds: f64) -> Vec<Case> {
    let base = |workload, mode, nodes, storage, lock, transport, faults, inject| Case {
        workload,
        mode,
        compute_nodes: nodes,
        storage_nodes: storage,
        lock_mode: lock,
        transport,
        faults,
        inject,
        seconds,
        keys: 8,
        threads_per_node: 3,
        notice_slots: common::storage::notice::NOTICE_CAPACITY,
        locking: false,
        seed: 0,
    };
    use Faults::*;
    use Intensity::*;
    use LockMode::*;
    use Mode::*;
    use Transport::*;
    let shapes: Vec<(usize, usize, LockMode, Transport, Faults, Intensity)> = vec![
        (1, 1, Lazy, Shm, None, Light),
        (2, 1, Lazy, Shm, None, Heavy),
        (3, 1, Lazy, Shm, None, Light),
        (3, 1, Lazy, Shm, None, Heavy),
        (4, 1, Lazy, Shm, None, Light),
        (2, 2, Lazy, Shm, None, Light),
        (3, 2, Lazy, Shm, None, Heavy),
        (3, 1, Eager, Shm, None, Light),
        (2, 2, Eager, Shm, None, Heavy),
        (3, 1, Lazy, Tcp, None, Light),
        (2, 2, Lazy, Tcp, None, Heavy),
        (3, 1, Lazy, Shm, Crash, Light),
        (3, 2, Lazy, Shm, Leave, Light),
        (2, 1, Eager, Tcp, Crash, Light),
        (4, 2, Lazy, Shm, Crash, Heavy),
        (3, 1, Lazy, Shm, StorageCrash, Light),
        (3, 2, Lazy, Tcp, StorageCrash, Heavy),
        (2, 1, Eager, Shm, StorageCrash, Light),
    ];
    let mut cases = Vec::new();
    for (n, s, l, t, f, i) in shapes {
        for w in [Workload::ListAppend, Workload::Bank, Workload::Register] {
            cases.push(base(w, Embedded, n, s, l, t, f, i));
        }
    }
    // Notice rings so small that compute nodes are lapped again and again: their
    // rounds fall back to checking every cached page.
    for (n, s, f) in [(3, 1, None), (3, 2, Crash)] {
        for w in [Workload::ListAppend, Workload::Bank] {
            let mut c = base(w, Embedded, n, s, Lazy, Shm, f, Light);
            c.notice_slots = 16;
            cases.push(c);
        }
    }
    // Writers with locking reads (wound-wait): histories must be serializable.
    for (n, s, l, t, f, i) in [
        (2, 1, Lazy, Shm, None, Light),
        (3, 1, Lazy, Shm, None, Heavy),
        (3, 2, Lazy, Shm, Crash, Light),
        (2, 1, Eager, Tcp, None, Light),
    ] {
        for w in [Workload::ListAppend, Workload::Bank, Workload::Register] {
            let mut c = base(w, Embedded, n, s, l, t, f, i);
            c.locking = true;
            cases.push(c);
        }
    }
    if kind == "full" {
        let procs: Vec<(usize, Transport, Faults)> = vec![
            (3, Tcp, None),
            (3, Tcp, KillCompute),
            (3, Tcp, PauseCompute),
            (2, Tcp, KillStorage),
            (2, Shm, KillGtm),
            (3, Tcp, AllProcess),
        ];
        for (n, t, f) in procs {
            for w in [Workload::ListAppend, Workload::Bank] {
                let mut c = base(w, Processes, n, 1, Lazy, t, f, Off);
                c.seconds = seconds.max(8.0);
                c.threads_per_node = 2;
                cases.push(c);
            }
        }
    }
    cases
}

/// Writes and fsyncs a file in a loop until dropped (disk pressure for group commit).
struct FsyncPressure {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FsyncPressure {
    fn start() -> FsyncPressure {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("pressure");
            let buf = vec![0x5au8; 1 << 20];
            while !s.load(Ordering::Relaxed) {
                if let Ok(mut f) = std::fs::File::create(&path) {
                    let _ = f.write_all(&buf);
                    let _ = f.sync_all();
                }
            }
        });
        FsyncPressure {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FsyncPressure {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct Row {
    runs: u64,
    failed: u64,
    attempts: usize,
    committed: usize,
    unknown: usize,
    lost: usize,
    anomalies: BTreeMap<String, usize>,
    pressure_runs: u64,
}

fn main() {
    common::service::init_tracing("error");
    let a = Args::parse();
    let cases: Vec<Case> = match &a.matrix {
        Some(m) if m == "quick" || m == "full" => matrix(m, a.seconds),
        Some(m) => {
            eprintln!("history-test: --matrix quick or full, not {m:?}");
            std::process::exit(2)
        }
        None => vec![Case {
            workload: parse("workload", &a.workload, Workload::parse),
            mode: parse("mode", &a.mode, |s| match s {
                "embedded" => Some(Mode::Embedded),
                "processes" => Some(Mode::Processes),
                _ => None,
            }),
            compute_nodes: a.nodes,
            storage_nodes: a.storage_nodes,
            lock_mode: parse("lock-mode", &a.lock_mode, lock_mode),
            transport: parse("transport", &a.transport, transport),
            faults: parse("faults", &a.faults, Faults::parse),
            inject: parse("inject", &a.inject, Intensity::parse),
            seconds: a.seconds,
            keys: a.keys,
            threads_per_node: a.threads,
            notice_slots: a.notice_slots,
            locking: a.locking,
            seed: a.seed,
        }],
    };
    let pressure = match a.fsync_pressure.as_str() {
        "off" => 0,
        "on" => 1,
        "mixed" => 2,
        p => {
            eprintln!("history-test: --fsync-pressure off, on or mixed, not {p:?}");
            std::process::exit(2)
        }
    };
    let budget = a.minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    let max_runs = match (&a.matrix, a.runs) {
        (Some(_), Some(r)) => r,
        (Some(_), None) if budget.is_some() => u64::MAX,
        (Some(_), None) => cases.len() as u64 * a.seeds,
        (None, _) => a.seeds,
    };
    let t0 = Instant::now();
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut n = 0u64;
    while n < max_runs && budget.is_none_or(|b| t0.elapsed() < b) {
        let mut case = cases[(n % cases.len() as u64) as usize].clone();
        case.seed = a.seed + n / cases.len() as u64 + if a.matrix.is_some() { n * 7919 } else { 0 };
        let under_pressure = pressure == 1 || (pressure == 2 && n % 2 == 1);
        let _p = under_pressure.then(FsyncPressure::start);
        let r = match run_case(&case, Some(&a.out)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "case {} seed {}: could not run: {e}",
                    case.label(),
                    case.seed
                );
                failed.push(format!("{} (did not run: {e})", case.replay_command()));
                n += 1;
                continue;
            }
        };
        drop(_p);
        report_case(&a, &r, under_pressure);
        let key = format!(
            "{}{} | {} | {}",
            r.case.label(),
            if r.case.notice_slots < 1024 {
                format!(", {}-slot ring", r.case.notice_slots)
            } else {
                String::new()
            },
            r.case.faults.name(),
            r.case.inject.name()
        );
        let row = rows.entry(key).or_default();
        row.runs += 1;
        row.pressure_runs += u64::from(under_pressure);
        row.attempts += r.attempts;
        row.committed += r.committed;
        row.unknown += r.unknown;
        row.lost += r.lost;
        for (k, v) in &r.anomalies {
            *row.anomalies.entry(k.clone()).or_default() += v;
        }
        if !r.passed() {
            row.failed += 1;
            failed.push(format!(
                "{}{}",
                r.case.replay_command(),
                r.saved
                    .as_deref()
                    .map(|s| format!("   (history: {s})"))
                    .unwrap_or_default()
            ));
        }
        n += 1;
    }
    print_table(&rows, t0.elapsed(), a.json);
    if !failed.is_empty() {
        let mut t = format!("\nFAILED cases ({}):\n", failed.len());
        for f in &failed {
            t += &format!("  {f}\n");
        }
        if a.json {
            eprint!("{t}");
        } else {
            print!("{t}");
        }
        std::process::exit(1);
    }
}

fn report_case(a: &Args, r: &CaseResult, pressure: bool) {
    if a.json {
        let mut v = serde_json::to_value(r).expect("serialisable");
        v["fsync_pressure"] = serde_json::Value::Bool(pressure);
        println!("{v}");
    } else {
        eprintln!(
            "{} {:<40} faults={:<13} inject={:<5} seed={:<6} {:>5} attempts {:>5} committed {:>3} unknown  {}{}",
            if r.passed() { "ok  " } else { "FAIL" },
            r.case.label(),
            r.case.faults.name(),
            r.case.inject.name(),
            r.case.seed,
            r.attempts,
            r.committed,
            r.unknown,
            if r.passed() { String::new() } else { r.summary.clone() },
            if pressure { " [fsync pressure]" } else { "" }
        );
    }
}

/// The table goes to stdout, or to stderr when stdout carries JSON.
fn print_table(rows: &BTreeMap<String, Row>, elapsed: Duration, json: bool) {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n| workload nodes x storage, locks, transport, mode | faults | inject | runs | under fsync pressure | attempts | committed | unknown | forbidden anomalies | lost | G2-item (allowed) |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut tot = Row::default();
    let forbidden_of = |r: &Row| -> Vec<String> {
        r.anomalies
            .iter()
            .filter(|(n, c)| n.as_str() != "G2-item" && **c > 0)
            .map(|(n, c)| format!("{n}: {c}"))
            .collect()
    };
    for (k, r) in rows {
        let forbidden = forbidden_of(r);
        let _ = writeln!(
            t,
            "| {k} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.runs,
            r.pressure_runs,
            r.attempts,
            r.committed,
            r.unknown,
            if forbidden.is_empty() {
                "0".to_string()
            } else {
                forbidden.join(", ")
            },
            r.lost,
            r.anomalies.get("G2-item").copied().unwrap_or(0)
        );
        tot.runs += r.runs;
        tot.failed += r.failed;
        tot.pressure_runs += r.pressure_runs;
        tot.attempts += r.attempts;
        tot.committed += r.committed;
        tot.unknown += r.unknown;
        tot.lost += r.lost;
        for (n, c) in &r.anomalies {
            *tot.anomalies.entry(n.clone()).or_default() += c;
        }
    }
    let forbidden = forbidden_of(&tot);
    let _ = writeln!(
        t,
        "| **all** | | | {} | {} | {} | {} | {} | {} | {} | {} |",
        tot.runs,
        tot.pressure_runs,
        tot.attempts,
        tot.committed,
        tot.unknown,
        if forbidden.is_empty() {
            "0".to_string()
        } else {
            forbidden.join(", ")
        },
        tot.lost,
        tot.anomalies.get("G2-item").copied().unwrap_or(0)
    );
    let _ = writeln!(
        t,
        "\n{} runs in {:.1} min, {} failed",
        tot.runs,
        elapsed.as_secs_f64() / 60.0,
        tot.failed
    );
    if json {
        eprint!("{t}");
    } else {
        print!("{t}");
    }
}
