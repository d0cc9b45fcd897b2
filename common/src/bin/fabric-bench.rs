//! `fabric-bench`: one-sided ops and RPC over each transport, server in its own process.
//!
//! ```text
//! cargo run --release -p common --bin fabric-bench -- --json --quick
//! ```
//!
//! The client spawns `fabric-bench serve` as a child process (a region server with an
//! echo RPC service), connects over `shm` and `tcp`, and runs every case for a fixed
//! time. Each output line (with `--json`) is one case: `transport`, `op`, `bytes` (payload
//! per op), `batch` (ops per post), `threads`, `batching` (RPC message batching),
//! `ops_per_s`, `p50_us`/`p99_us` (latency of one post or one call), and for RPC
//! `requests_per_message` (the batch size the adaptive batcher achieved).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use common::fabric::{
    Access, ClientOptions, ClusterKey, Connection, Endpoint, FnService, Op, Server, Transport,
};
use common::ids::RegionId;
use hdrhistogram::Histogram;
use rand::Rng;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of the data region the server registers (region 0, all rights).
const DATA_REGION: u64 = 64 << 20;
/// Size of the read-only region (region 1), used by tests of rights checks.
const RO_REGION: u64 = 64 << 10;

#[derive(Parser)]
#[command(about = "Benchmark the fabric: batched one-sided ops and batching RPC")]
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
    /// Seconds per case (overrides the --quick default of 0.4 s and the normal 2 s).
    #[arg(long)]
    seconds: Option<f64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a data region and an echo RPC service until stdin closes or SIGTERM.
    Serve {
        /// tcp://127.0.0.1:0, shm:///tmp/x.sock, ...
        #[arg(long)]
        endpoint: String,
        /// File holding the cluster key (at least 16 bytes).
        #[arg(long)]
        key_file: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match &args.cmd {
        Some(Cmd::Serve { endpoint, key_file }) => serve(endpoint, key_file),
        None => bench(&args),
    }
}

/// The server process: prints `READY <endpoint>` once listening; exits when its stdin
/// reaches EOF (the parent died or closed it).
fn serve(endpoint: &str, key_file: &std::path::Path) -> Result<()> {
    let key = ClusterKey::from_file(key_file).map_err(anyhow::Error::msg)?;
    let endpoint: Endpoint = endpoint.parse().map_err(anyhow::Error::msg)?;
    let server = Server::new(key);
    let data = server.register(DATA_REGION, Access::ALL)?;
    let ro = server.register(RO_REGION, Access::READ_ONLY)?;
    // Recognisable contents: word i of each region holds i.
    for i in 0..(RO_REGION / 8) {
        ro.mem().store_u64(i * 8, i).expect("in bounds");
        data.mem().store_u64(i * 8, i).expect("in bounds");
    }
    let service = FnService(|_peer: &common::fabric::PeerInfo, req: &[u8]| {
        if req == b"fail" {
            Err("asked to fail".to_string())
        } else {
            Ok(req.to_vec())
        }
    });
    let handle = server.serve(&endpoint, Arc::new(service))?;
    println!("READY {}", handle.endpoint());
    std::io::stdout().flush()?;
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {
        sink.clear();
    }
    Ok(())
}

/// A `fabric-bench serve` child process; killed on drop.
pub struct ServerProcess {
    child: Child,
    pub endpoint: Endpoint,
    _dir: PathBuf,
}

impl ServerProcess {
    fn spawn(transport: Transport, key_file: &PathBuf, dir: &std::path::Path) -> Result<Self> {
        let endpoint = match transport {
            Transport::Tcp => "tcp://127.0.0.1:0".to_string(),
            Transport::Shm => format!("shm://{}/fabric-{}.sock", dir.display(), std::process::id()),
            Transport::Rdma => "rdma://127.0.0.1:0".to_string(),
        };
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--endpoint", &endpoint, "--key-file"])
            .arg(key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning the server process")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let Some(ep) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            bail!("server process did not start (said {line:?})");
        };
        Ok(ServerProcess {
            endpoint: ep.parse().map_err(anyhow::Error::msg)?,
            child,
            _dir: dir.to_path_buf(),
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct CaseResult {
    transport: Transport,
    op: &'static str,
    bytes: usize,
    batch: usize,
    threads: usize,
    batching: bool,
    /// RPC messages allowed in flight (`usize::MAX`: unlimited).
    window: Option<usize>,
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    requests_per_message: Option<f64>,
}

impl CaseResult {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn print(&self, json: bool) {
        let p50 = self.hist.value_at_quantile(0.5) as f64 / 1000.0;
        let p99 = self.hist.value_at_quantile(0.99) as f64 / 1000.0;
        if json {
            let mut v = serde_json::json!({
                "transport": self.transport.to_string(),
                "op": self.op,
                "bytes": self.bytes,
                "batch": self.batch,
                "threads": self.threads,
                "batching": self.batching,
                "ops_per_s": self.ops_per_s().round(),
                "p50_us": p50,
                "p99_us": p99,
            });
            if let Some(r) = self.requests_per_message {
                v["requests_per_message"] = serde_json::json!((r * 100.0).round() / 100.0);
            }
            if let Some(w) = self.window {
                v["max_in_flight"] = if w == usize::MAX {
                    serde_json::json!("unlimited")
                } else {
                    serde_json::json!(w)
                };
            }
            println!("{v}");
        } else {
            println!(
                "{:<5} {:<9} {:>6} {:>5} {:>7} {:>8} {:>6} {:>14.0} {:>9.2} {:>9.2} {}",
                self.transport,
                self.op,
                self.bytes,
                self.batch,
                self.threads,
                self.batching,
                match self.window {
                    None => "-".to_string(),
                    Some(usize::MAX) => "inf".to_string(),
                    Some(w) => w.to_string(),
                },
                self.ops_per_s(),
                p50,
                p99,
                self.requests_per_message
                    .map(|r| format!("{r:.1}"))
                    .unwrap_or_default()
            );
        }
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// One thread posting batches of `batch` ops of `op` kind for `dur`.
fn run_onesided(
    conn: &Connection,
    op: &'static str,
    bytes: usize,
    batch: usize,
    dur: Duration,
) -> Result<(u64, Duration, Histogram<u64>)> {
    let mut rng = rand::thread_rng();
    let mut hist = new_hist();
    let slots = DATA_REGION / bytes.max(8) as u64;
    let start = Instant::now();
    let mut ops_done = 0u64;
    let mut ops = Vec::with_capacity(batch);
    while start.elapsed() < dur {
        ops.clear();
        for _ in 0..batch {
            let offset = rng.gen_range(0..slots) * bytes.max(8) as u64;
            let region = RegionId(0);
            ops.push(match op {
                "read" => Op::Read {
                    region,
                    offset,
                    len: bytes as u32,
                },
                "write" => Op::Write {
                    region,
                    offset,
                    data: vec![7u8; bytes],
                },
                "cas" => Op::Cas {
                    region,
                    offset,
                    expected: 0,
                    new: 1,
                },
                _ => Op::FetchAdd {
                    region,
                    offset,
                    add: 1,
                },
            });
        }
        let t = Instant::now();
        let res = conn.post(&ops)?;
        hist.record(t.elapsed().as_nanos().max(1) as u64)?;
        if let Some(Err(e)) = res.iter().find(|r| r.is_err()) {
            bail!("op failed: {e}");
        }
        ops_done += batch as u64;
    }
    Ok((ops_done, start.elapsed(), hist))
}

/// `threads` callers sharing one connection, each calling echo in a loop for `dur`.
fn run_rpc(
    conn: &Arc<Connection>,
    threads: usize,
    dur: Duration,
) -> Result<(u64, Duration, Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let conn = conn.clone();
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>)> {
                let mut hist = new_hist();
                let mut n = 0u64;
                let payload = [42u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = conn.call(&payload)?;
                    hist.record(t.elapsed().as_nanos().max(1) as u64)?;
                    anyhow::ensure!(r == payload, "echo mismatch");
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
    let dur = Duration::from_secs_f64(args.seconds.unwrap_or(if args.quick { 0.4 } else { 2.0 }));
    let dir = std::env::temp_dir().join(format!("fabric-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key_file = dir.join("cluster.key");
    std::fs::write(&key_file, "fabric-bench-cluster-key-0123456789")?;
    let key = ClusterKey::from_file(&key_file).map_err(anyhow::Error::msg)?;
    if !args.json {
        println!(
            "{:<5} {:<9} {:>6} {:>5} {:>7} {:>8} {:>6} {:>14} {:>9} {:>9} req/msg",
            "trans",
            "op",
            "bytes",
            "batch",
            "threads",
            "batching",
            "window",
            "ops/s",
            "p50 us",
            "p99 us"
        );
    }
    for &transport in &args.transports {
        if transport == Transport::Rdma {
            eprintln!("fabric-bench: skipping rdma (no RDMA device on this machine)");
            continue;
        }
        let server = ServerProcess::spawn(transport, &key_file, &dir)?;
        let conn = Connection::connect(&server.endpoint, &ClientOptions::new(key.clone()))?;
        let mut cases: Vec<(&'static str, usize, usize)> = Vec::new();
        for bytes in [8usize, 8192] {
            for batch in [1usize, 8, 64] {
                cases.push(("read", bytes, batch));
            }
        }
        for op in ["write", "cas", "fetch_add"] {
            for batch in [1usize, 64] {
                cases.push((op, 8, batch));
            }
        }
        for (op, bytes, batch) in cases {
            let (ops, elapsed, hist) = run_onesided(&conn, op, bytes, batch, dur)?;
            CaseResult {
                transport,
                op,
                bytes,
                batch,
                threads: 1,
                batching: false,
                window: None,
                ops,
                elapsed,
                hist,
                requests_per_message: None,
            }
            .print(args.json);
        }
        // Batching on and off under the same flow control (one message awaiting its
        // acknowledgement), and unbatched calls pipelined without limit.
        for (batching, window) in [(true, 1usize), (false, 1), (false, usize::MAX)] {
            for threads in [1usize, 4, 16] {
                let conn = Arc::new(Connection::connect(
                    &server.endpoint,
                    &ClientOptions::new(key.clone())
                        .batching(batching)
                        .max_in_flight(window),
                )?);
                let (ops, elapsed, hist) = run_rpc(&conn, threads, dur)?;
                let s = conn.stats();
                let rpm = s.rpc_requests as f64 / s.messages.max(1) as f64;
                CaseResult {
                    transport,
                    op: "rpc",
                    bytes: 16,
                    batch: 1,
                    threads,
                    batching,
                    window: Some(window),
                    ops,
                    elapsed,
                    hist,
                    requests_per_message: Some(rpm),
                }
                .print(args.json);
            }
        }
        drop(conn);
        drop(server);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
