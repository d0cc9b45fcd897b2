//! `storage-bench`: page reads (one-sided vs RPC) and log forces (group commit) against a
//! `storage-node` process, over `shm` and `tcp`.
//!
//! ```text
//! cargo run --release -p storage-node --bin storage-bench -- --json --quick
//! ```
//!
//! For each transport the bench spawns `storage-node` (the binary next to this one) with
//! a fresh data directory under the system temp dir (so on the machine's disk), loads
//! 1024 pages, and runs each case for a fixed time. Output, one line per case (`--json`:
//! one JSON object per line):
//!
//! * `case`: `page_read_onesided` (batched directory+frame reads, validated),
//!   `page_read_rpc` (the same pages through the `ReadPages` RPC) or `log_force` (one
//!   commit = append one 100-byte redo record and wait until it is durable; all
//!   committers share one compute node's stream, so one fsync can serve them all);
//! * `transport`, `threads`, `batch` (pages per read call; 1 for log_force);
//! * `ops_per_s` (pages/s or commits/s), `p50_us`, `p99_us` (latency of one call or one
//!   commit);
//! * for `log_force`: `rpcs_per_commit` (1: `append_and_force`, the commit path; 2 with
//!   `--split-commit`: `append_redo` then `force_log`), `commits_per_fsync`, and on the multi-threaded line `speedup_vs_1`
//!   (commits/s relative to the 1-committer line of the same run and transport).

use anyhow::{bail, Context, Result};
use clap::Parser;
use common::fabric::{ClientOptions, ClusterKey, Endpoint, Transport};
use common::ids::{Epoch, Lsn, NodeId, PageId, PageVersion};
use common::storage::page::Page;
use common::storage::redo::{RedoBody, RedoRecord};
use common::storage::StorageClient;
use hdrhistogram::Histogram;
use rand::Rng;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "storage-bench-cluster-key-0123456789";
const PAGES: u32 = 1024;

#[derive(Parser)]
#[command(
    about = "Benchmark the storage node: one-sided vs RPC page reads, group-committed log forces"
)]
struct Args {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Short runs (the whole benchmark ends within 30 s).
    #[arg(long)]
    quick: bool,
    /// Transports to measure (comma separated).
    #[arg(long, default_value = "shm,tcp", value_delimiter = ',')]
    transports: Vec<Transport>,
    /// Seconds per case (overrides the --quick default of 0.5 s and the normal 3 s).
    #[arg(long)]
    seconds: Option<f64>,
    /// Commit as two RPCs (append_redo, then force_log) instead of one append_and_force.
    #[arg(long)]
    split_commit: bool,
    /// Directory for the storage node's data (default: a fresh temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

struct NodeProcess {
    child: Child,
    endpoint: Endpoint,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(transport: Transport, dir: &Path) -> Result<NodeProcess> {
    let exe = std::env::current_exe()?
        .parent()
        .context("no exe dir")?
        .join("storage-node");
    let key = dir.join("key");
    std::fs::write(&key, KEY)?;
    let listen = match transport {
        Transport::Shm => dir.join("s.sock").display().to_string(),
        _ => "127.0.0.1:0".into(),
    };
    let mut child = Command::new(&exe)
        .args(["--transport", &transport.to_string(), "--listen", &listen])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--memory", "64MiB", "--page-count", "65536", "--key-file"])
        .arg(&key)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {}", exe.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let Some(ep) = line.trim().strip_prefix("READY ") else {
        let _ = child.kill();
        bail!("storage-node did not start (said {line:?})");
    };
    Ok(NodeProcess {
        endpoint: ep.parse().map_err(anyhow::Error::msg)?,
        child,
    })
}

struct CaseResult {
    case: &'static str,
    transport: Transport,
    threads: usize,
    batch: usize,
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    extra: serde_json::Map<String, serde_json::Value>,
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
                "case": self.case,
                "transport": self.transport.to_string(),
                "threads": self.threads,
                "batch": self.batch,
                "ops_per_s": self.ops_per_s().round(),
                "p50_us": p50,
                "p99_us": p99,
            });
            for (k, x) in &self.extra {
                v[k] = x.clone();
            }
            println!("{v}");
        } else {
            println!(
                "{:<20} {:<4} threads {:>2} batch {:>3} {:>12.0} ops/s p50 {:>8.1} us p99 {:>8.1} us {}",
                self.case,
                self.transport,
                self.threads,
                self.batch,
                self.ops_per_s(),
                p50,
                p99,
                serde_json::Value::Object(self.extra.clone())
            );
        }
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// Runs `op` on `threads` threads for `secs`; `op` returns how many ops it did.
fn run_case<F>(threads: usize, secs: f64, op: F) -> (u64, Duration, Histogram<u64>)
where
    F: Fn(usize) -> Result<u64> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let op = op.clone();
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>)> {
                let mut h = hist();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    n += op(t)?;
                    h.record(t0.elapsed().as_nanos() as u64).ok();
                }
                Ok((n, h))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut h = hist();
    for t in handles {
        match t.join().expect("bench thread panicked") {
            Ok((n, th)) => {
                total += n;
                h.add(th).ok();
            }
            Err(e) => panic!("bench op failed: {e:#}"),
        }
    }
    (total, start.elapsed(), h)
}

fn metric(c: &StorageClient, name: &str) -> Result<u64> {
    let m = c.metrics()?;
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("storage_{name} ")))
        .context("metric missing")?
        .parse()
        .context("metric value")
}

fn bench_transport(args: &Args, transport: Transport, secs: f64) -> Result<Vec<CaseResult>> {
    let tmp;
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("storage-bench").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let node = spawn_node(transport, &dir)?;
    let opts =
        ClientOptions::new(ClusterKey::from_material(KEY.as_bytes()).map_err(anyhow::Error::msg)?);
    let c = Arc::new(StorageClient::connect(
        &node.endpoint,
        &opts,
        NodeId(1),
        Epoch(1),
    )?);
    // Load: every page at version 1 with a full image.
    let pages = c.allocate_pages(PAGES)?;
    for chunk in pages.chunks(64) {
        let mut recs = Vec::new();
        let mut imgs = Vec::new();
        for p in chunk {
            c.lock_exclusive(*p)?;
            let mut img = Page::empty(*p);
            img.body_mut().fill(p.0 as u8);
            img.stamp(PageVersion(1), Lsn(0));
            recs.push(RedoRecord::image(&img, PageVersion(0)));
            imgs.push(img);
        }
        let lsn = c.append_redo(&recs)?;
        c.force_log(lsn)?;
        for (p, img) in chunk.iter().zip(&imgs) {
            c.write_back(img)?;
            c.unlock(*p)?;
        }
    }
    // Warm the frame hints.
    c.read_pages(&pages)?;
    let pages = Arc::new(pages);
    let mut out = Vec::new();
    for (case, batch) in [
        ("page_read_onesided", 16usize),
        ("page_read_onesided", 64),
        ("page_read_rpc", 16),
        ("page_read_rpc", 64),
    ] {
        let c2 = c.clone();
        let pages = pages.clone();
        let (ops, elapsed, hist) = run_case(1, secs, move |_| {
            let mut rng = rand::thread_rng();
            let start = rng.gen_range(0..pages.len() - batch);
            let ids: Vec<PageId> = pages[start..start + batch].to_vec();
            let got = if case == "page_read_onesided" {
                c2.read_pages(&ids)?
            } else {
                c2.read_pages_rpc(&ids)?
            };
            debug_assert_eq!(got.len(), batch);
            Ok(got.len() as u64)
        });
        out.push(CaseResult {
            case,
            transport,
            threads: 1,
            batch,
            ops,
            elapsed,
            hist,
            extra: Default::default(),
        });
    }
    // Log force: one page per committer (versions chain per page), one shared stream.
    let commit_pages = c.allocate_pages(16)?;
    for p in &commit_pages {
        c.lock_exclusive(*p)?;
    }
    // The version chain head of each committer's page (fresh pages start at 0).
    let heads: Arc<Vec<parking_lot::Mutex<PageVersion>>> = Arc::new(
        commit_pages
            .iter()
            .map(|_| parking_lot::Mutex::new(PageVersion(0)))
            .collect(),
    );
    let mut single = None;
    let split = args.split_commit;
    for threads in [1usize, 16] {
        let heads = heads.clone();
        let fsyncs0 = metric(&c, "log_fsyncs")?;
        let c2 = c.clone();
        let cp = commit_pages.clone();
        let (ops, elapsed, hist) = run_case(threads, secs, move |t| {
            let mut head = heads[t].lock();
            let rec = RedoRecord {
                lsn: Lsn(0),
                page: cp[t],
                before: *head,
                after: PageVersion(head.0 + 1),
                body: RedoBody::Diffs(vec![(64, vec![t as u8; 100])]),
            };
            if split {
                let lsn = c2.append_redo(&[rec])?;
                c2.force_log(lsn)?;
            } else {
                c2.append_and_force(&[rec])?;
            }
            head.0 += 1;
            Ok(1)
        });
        let fsyncs = metric(&c, "log_fsyncs")? - fsyncs0;
        let mut extra = serde_json::Map::new();
        extra.insert(
            "rpcs_per_commit".into(),
            serde_json::json!(if split { 2 } else { 1 }),
        );
        extra.insert(
            "commits_per_fsync".into(),
            serde_json::json!(((ops as f64 / fsyncs.max(1) as f64) * 100.0).round() / 100.0),
        );
        let r = CaseResult {
            case: "log_force",
            transport,
            threads,
            batch: 1,
            ops,
            elapsed,
            hist,
            extra,
        };
        match single {
            None => single = Some(r.ops_per_s()),
            Some(s) => {
                let mut r = r;
                r.extra.insert(
                    "speedup_vs_1".into(),
                    serde_json::json!(((r.ops_per_s() / s) * 100.0).round() / 100.0),
                );
                out.push(r);
                continue;
            }
        }
        out.push(r);
    }
    drop(c);
    drop(node);
    Ok(out)
}

fn main() -> Result<()> {
    common::service::init_tracing("warn");
    let args = Args::parse();
    let secs = args.seconds.unwrap_or(if args.quick { 0.5 } else { 3.0 });
    for t in &args.transports {
        if *t == Transport::Rdma {
            eprintln!("storage-bench: rdma is not measured by this benchmark; skipping");
            continue;
        }
        for r in bench_transport(&args, *t, secs)? {
            r.print(args.json);
        }
    }
    Ok(())
}
