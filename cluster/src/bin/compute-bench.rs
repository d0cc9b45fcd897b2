//! `compute-bench`: point reads through a compute node's buffer pool, with a warm pool
//! (pages confirmed by one batched validation per transaction), a cold pool (every page
//! fetched one-sided), and validation forced per access (the baseline).
//!
//! ```text
//! cargo run --release -p cluster --bin compute-bench -- --json --quick
//! ```
//!
//! Storage node, GTM and compute node run embedded in this process and talk over the
//! chosen transport exactly as separate processes do. An op is one point read (a B-link
//! tree descent); reads run in read-only transactions of `--reads-per-txn` reads, so
//! `ops_per_s` includes each transaction's begin and commit at the GTM. `p50_us`/`p99_us`
//! are per read; `round_trips_per_op` counts storage-node round trips (validations,
//! fetches) per read. (This is a bin of the `cluster` crate rather than `compute-node`:
//! a compute-node binary may not link the storage node and GTM, DESIGN.md §2.)

use anyhow::Result;
use clap::Parser;
use cluster::{ClusterOptions, EmbeddedCluster};
use common::fabric::Transport;
use compute_node::coherence::ValidationMode;
use compute_node::node::ComputeNode;
use hdrhistogram::Histogram;
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Point reads through the buffer pool: warm, cold, validate-each")]
struct Args {
    #[arg(long)]
    json: bool,
    /// Short runs (ends within 30 s).
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value = "shm,tcp", value_delimiter = ',')]
    transports: Vec<Transport>,
    #[arg(long, default_value = "1,4", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Rows in the table.
    #[arg(long, default_value_t = 20_000)]
    rows: u64,
    #[arg(long, default_value_t = 20)]
    reads_per_txn: usize,
    /// Seconds per case (default 0.8 with --quick, else 3).
    #[arg(long)]
    seconds: Option<f64>,
}

fn key(i: u64) -> Vec<u8> {
    format!("row{i:010}").into_bytes()
}

struct Outcome {
    reads: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    round_trips: u64,
}

fn run_case(
    node: &Arc<ComputeNode>,
    table: &compute_node::txn::Table,
    cold: bool,
    threads: usize,
    rows: u64,
    per_txn: usize,
    dur: Duration,
) -> Result<Outcome> {
    let pager = node.engine().pager().clone();
    // Warm up: touch every page once so warm cases start with a full pool.
    if !cold {
        let mut tx = node.begin()?;
        let _ = tx.scan(
            table,
            (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
            false,
            None,
        )?;
        tx.commit()?;
    }
    let rt0 = pager.stats.round_trips.load(Ordering::Relaxed);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let node = node.clone();
            let table = table.clone();
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>)> {
                let mut rng = rand::thread_rng();
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                let mut reads = 0u64;
                let begun = Instant::now();
                while begun.elapsed() < dur {
                    if cold {
                        node.engine().pager().evict_unlocked();
                    }
                    let mut tx = node.begin()?;
                    for _ in 0..per_txn {
                        let k = key(rng.gen_range(0..rows));
                        let t = Instant::now();
                        let v = tx.get(&table, &k)?;
                        hist.record(t.elapsed().as_nanos().max(1) as u64)?;
                        anyhow::ensure!(v.is_some(), "row missing");
                        reads += 1;
                    }
                    tx.commit()?;
                }
                Ok((reads, hist))
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut reads = 0;
    for h in handles {
        let (r, hh) = h.join().expect("bench thread")?;
        reads += r;
        hist.add(hh)?;
    }
    Ok(Outcome {
        reads,
        elapsed: start.elapsed(),
        hist,
        round_trips: pager.stats.round_trips.load(Ordering::Relaxed) - rt0,
    })
}

fn main() -> Result<()> {
    common::service::init_tracing("warn");
    let args = Args::parse();
    let dur = Duration::from_secs_f64(args.seconds.unwrap_or(if args.quick { 0.8 } else { 3.0 }));
    if !args.json {
        println!(
            "{:<14} {:<5} {:>7} {:>12} {:>9} {:>9} {:>10}",
            "case", "trans", "threads", "reads/s", "p50 us", "p99 us", "rt/read"
        );
    }
    for &transport in &args.transports {
        if transport == Transport::Rdma {
            eprintln!("compute-bench: skipping rdma (no RDMA device here)");
            continue;
        }
        let cluster = EmbeddedCluster::start(ClusterOptions {
            compute_nodes: 0,
            transport,
            storage_memory: 256 << 20,
            pages_per_storage_node: 1 << 18,
            ..ClusterOptions::default()
        })?;
        // Load with one node, then measure each mode on its own node (own pool).
        let loader = cluster.start_compute_node(1)?;
        let table = loader.create_table("bench")?;
        for chunk in (0..args.rows).collect::<Vec<_>>().chunks(500) {
            let mut tx = loader.begin()?;
            for i in chunk {
                tx.put(&table, &key(*i), &[0x5a; 100])?;
            }
            tx.commit()?;
        }
        loader.shutdown()?;
        drop(loader);
        let mut next_id = 2;
        for (case, mode, cold) in [
            ("warm", ValidationMode::Batched, false),
            ("cold", ValidationMode::Batched, true),
            ("validate_each", ValidationMode::EachAccess, false),
        ] {
            for &threads in &args.threads {
                let mut cfg = cluster.compute_config(next_id);
                next_id += 1;
                cfg.validation = mode;
                cfg.buffer_frames = 16_384;
                let node = Arc::new(ComputeNode::start_with_key(&cfg, cluster.key().clone())?);
                let o = run_case(
                    &node,
                    &table,
                    cold,
                    threads,
                    args.rows,
                    args.reads_per_txn,
                    dur,
                )?;
                let ops = o.reads as f64 / o.elapsed.as_secs_f64();
                let p50 = o.hist.value_at_quantile(0.5) as f64 / 1000.0;
                let p99 = o.hist.value_at_quantile(0.99) as f64 / 1000.0;
                let rt = o.round_trips as f64 / o.reads.max(1) as f64;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "case": case, "transport": transport.to_string(), "threads": threads,
                            "ops_per_s": ops.round(), "p50_us": p50, "p99_us": p99,
                            "round_trips_per_op": (rt * 1000.0).round() / 1000.0,
                            "reads_per_txn": args.reads_per_txn, "rows": args.rows,
                        })
                    );
                } else {
                    println!("{case:<14} {transport:<5} {threads:>7} {ops:>12.0} {p50:>9.2} {p99:>9.2} {rt:>10.3}");
                }
                node.shutdown()?;
            }
        }
        cluster.shutdown()?;
    }
    Ok(())
}
