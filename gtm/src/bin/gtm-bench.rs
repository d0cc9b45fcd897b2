//! `gtm-bench`: timestamps/s and commits/s against a real `gtm` process.
//!
//! ```text
//! cargo run --release -p gtm --bin gtm-bench -- --json --quick
//! ```
//!
//! Spawns the `gtm` binary next to this one (own process, temp data dir, serving `tcp`
//! and `shm`), then for each transport, op, batching mode and caller-thread count runs
//! the callers on one shared `GtmClient` for a fixed time. Each output line (`--json`)
//! is one case: `op` (`timestamp`: one fresh timestamp per call; `commit`: begin +
//! commit per iteration, latency of the commit call, which includes the group fsync),
//! `transport`, `threads`, `batching`, `ops_per_s`, `p50_us`, `p99_us`,
//! `requests_per_message` (the batch size the fabric's batcher achieved),
//! `callers_per_request` (timestamp callers the client combined into one request) and
//! `parks_per_call` (how often a combined timestamp caller parked and had to be woken,
//! rather than finding its answer while yielding).
//! "Batching" is both layers: the fabric's message batching and the client's
//! combining of concurrent timestamp calls (as TiDB PD's TSO client does); off is one
//! request per call, one call per message.
//!
//! `gtm-bench probe ...` is a client process for the lease tests: it registers, begins
//! transactions, renews its lease, and on a line on stdin tries to commit them.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use common::fabric::{ClientOptions, ClusterKey, Endpoint, Transport};
use common::gtm::{GtmClient, GtmError};
use common::ids::{NodeId, TxnId};
use hdrhistogram::Histogram;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Benchmark the GTM: timestamps/s and commits/s, batching on and off")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Short runs (the whole benchmark ends within 30 s).
    #[arg(long)]
    quick: bool,
    /// Transports to measure (comma separated).
    #[arg(long, default_value = "shm,tcp", value_delimiter = ',')]
    transports: Vec<Transport>,
    /// Caller-thread counts (comma separated).
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Ops to measure (comma separated: timestamp, commit).
    #[arg(long, default_value = "timestamp,commit", value_delimiter = ',')]
    ops: Vec<String>,
    /// Seconds per case (overrides the --quick default of 0.35 s and the normal 2 s).
    #[arg(long)]
    seconds: Option<f64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lease-test client: register, begin `txns` transactions, print them, renew the
    /// lease; on each stdin line try to commit them all and print the outcomes.
    Probe {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long)]
        node: u32,
        #[arg(long, default_value_t = 3)]
        txns: usize,
    },
}

fn main() -> Result<()> {
    common::service::init_tracing("warn");
    let args = Args::parse();
    match &args.cmd {
        Some(Cmd::Probe {
            endpoint,
            key_file,
            node,
            txns,
        }) => probe(endpoint, key_file, NodeId(*node), *txns),
        None => bench(&args),
    }
}

fn outcome(r: &Result<common::ids::Timestamp, GtmError>) -> String {
    match r {
        Ok(ts) => format!("committed {ts}"),
        Err(GtmError::Fenced(_)) => "fenced".into(),
        Err(GtmError::Aborted) => "aborted".into(),
        Err(e) => format!("error {e}"),
    }
}

fn probe(endpoint: &str, key_file: &Path, node: NodeId, n: usize) -> Result<()> {
    let key = ClusterKey::from_file(key_file).map_err(anyhow::Error::msg)?;
    let ep: Endpoint = endpoint.parse().map_err(anyhow::Error::msg)?;
    let client = Arc::new(GtmClient::connect(&ep, &ClientOptions::new(key))?);
    let reg = client.register(node)?;
    let _hb = client.spawn_heartbeats(reg.lease / 4);
    let mut out = std::io::stdout();
    writeln!(out, "EPOCH {}", reg.epoch)?;
    let mut txns: Vec<TxnId> = Vec::new();
    for _ in 0..n {
        let (t, _) = client.begin()?;
        writeln!(out, "TXN {t}")?;
        txns.push(t);
    }
    writeln!(out, "READY")?;
    out.flush()?;
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line)? > 0 {
        line.clear();
        for &t in &txns {
            // The local fence first, then the GTM's own check (bypassing the local one).
            let local = client.commit(t);
            let remote = client.commit_as(reg.node, reg.epoch, t);
            writeln!(
                out,
                "COMMIT {t} local={} remote={}",
                outcome(&local),
                outcome(&remote)
            )?;
        }
        writeln!(
            out,
            "LEASE {}",
            if client.check_lease().is_ok() {
                "valid"
            } else {
                "fenced"
            }
        )?;
        writeln!(out, "DONE")?;
        out.flush()?;
    }
    Ok(())
}

/// A `gtm` child process with its own data dir; killed on drop.
struct GtmProcess {
    child: Child,
    endpoints: Vec<Endpoint>,
}

impl GtmProcess {
    fn spawn(dir: &Path, key_file: &Path) -> Result<GtmProcess> {
        let exe = std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("gtm");
        let mut child = Command::new(&exe)
            .arg("--listen")
            .arg("tcp://127.0.0.1:0")
            .arg("--listen")
            .arg(format!("shm://{}/gtm.sock", dir.display()))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--cluster-key-file")
            .arg(key_file)
            .arg("--lease-ms")
            .arg("60000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", exe.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let Some(eps) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            bail!("gtm did not start (said {line:?})");
        };
        let endpoints = eps
            .split_whitespace()
            .map(|e| e.parse().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?;
        Ok(GtmProcess { child, endpoints })
    }

    fn endpoint(&self, t: Transport) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.transport() == t)
    }
}

impl Drop for GtmProcess {
    fn drop(&mut self) {
        // SIGTERM for a clean stop; the kill is the fallback.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Runs `threads` callers of `op` on one client for `dur`.
fn run_case(
    client: &Arc<GtmClient>,
    op: &str,
    threads: usize,
    dur: Duration,
) -> Result<(u64, Duration, Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let commit = op == "commit";
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>)> {
                let mut hist = new_hist();
                let mut n = 0u64;
                let mut last = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if commit {
                        let (txn, snap) = client.begin()?;
                        let t = Instant::now();
                        let cts = client.commit(txn)?;
                        hist.record(t.elapsed().as_nanos().max(1) as u64)?;
                        anyhow::ensure!(cts > snap, "commit ts {cts} not above snapshot {snap}");
                    } else {
                        let t = Instant::now();
                        let ts = client.timestamp()?;
                        hist.record(t.elapsed().as_nanos().max(1) as u64)?;
                        anyhow::ensure!(ts.0 > last, "timestamp went backwards");
                        last = ts.0;
                    }
                    n += 1;
                }
                Ok((n, hist))
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = new_hist();
    for h in handles {
        let (n, hh) = h.join().expect("bench thread panicked")?;
        total += n;
        hist.add(hh)?;
    }
    Ok((total, start.elapsed(), hist))
}

fn bench(args: &Args) -> Result<()> {
    let dur = Duration::from_secs_f64(args.seconds.unwrap_or(if args.quick { 0.35 } else { 2.0 }));
    let dir = std::env::temp_dir().join(format!("gtm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key_file = dir.join("cluster.key");
    std::fs::write(&key_file, "gtm-bench-cluster-key-0123456789")?;
    let key = ClusterKey::from_file(&key_file).map_err(anyhow::Error::msg)?;
    let gtm = GtmProcess::spawn(&dir, &key_file)?;
    if !args.json {
        println!(
            "{:<9} {:<5} {:>7} {:>8} {:>12} {:>9} {:>9} {:>8}",
            "op", "trans", "threads", "batching", "ops/s", "p50 us", "p99 us", "req/msg"
        );
    }
    let mut node = 0u32;
    let mut rates = std::collections::HashMap::new();
    for &transport in &args.transports {
        let Some(ep) = gtm.endpoint(transport) else {
            eprintln!("gtm-bench: skipping {transport} (not served)");
            continue;
        };
        for op in &args.ops {
            for batching in [true, false] {
                for &threads in &args.threads {
                    let client = Arc::new(GtmClient::connect(
                        ep,
                        &ClientOptions::new(key.clone()).batching(batching),
                    )?);
                    node += 1;
                    client.register(NodeId(node))?;
                    let (ops, elapsed, hist) = run_case(&client, op, threads, dur)?;
                    let s = client.connection().stats();
                    let rpm = s.rpc_requests as f64 / s.messages.max(1) as f64;
                    let ops_per_s = ops as f64 / elapsed.as_secs_f64();
                    let (p50, p99) = (
                        hist.value_at_quantile(0.5) as f64 / 1000.0,
                        hist.value_at_quantile(0.99) as f64 / 1000.0,
                    );
                    rates.insert((transport, op.clone(), batching, threads), ops_per_s);
                    let _ = client.leave();
                    if args.json {
                        let mut v = serde_json::json!({
                                "op": op,
                                "transport": transport.to_string(),
                                "threads": threads,
                                "batching": batching,
                                "ops_per_s": ops_per_s.round(),
                                "p50_us": p50,
                                "p99_us": p99,
                                "requests_per_message": (rpm * 100.0).round() / 100.0,
                        });
                        if op == "timestamp" {
                            v["callers_per_request"] = serde_json::json!(
                                (client.timestamp_callers_per_request() * 100.0).round() / 100.0
                            );
                            if let Some(c) = client.timestamp_combining() {
                                let parks = c.parks as f64 / c.callers.max(1) as f64;
                                v["parks_per_call"] =
                                    serde_json::json!((parks * 1000.0).round() / 1000.0);
                            }
                        }
                        println!("{v}");
                    } else {
                        println!(
                            "{op:<9} {transport:<5} {threads:>7} {batching:>8} {ops_per_s:>12.0} {p50:>9.1} {p99:>9.1} {rpm:>8.1}"
                        );
                    }
                    std::io::stdout().flush()?;
                }
            }
        }
    }
    for &transport in &args.transports {
        for op in &args.ops {
            let t = *args.threads.iter().max().unwrap_or(&1);
            if let (Some(on), Some(off)) = (
                rates.get(&(transport, op.clone(), true, t)),
                rates.get(&(transport, op.clone(), false, t)),
            ) {
                eprintln!(
                    "gtm-bench: {op} over {transport} at {t} threads: batching {on:.0}/s vs unbatched {off:.0}/s = {:.1}x",
                    on / off.max(1.0)
                );
            }
        }
    }
    drop(gtm);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
