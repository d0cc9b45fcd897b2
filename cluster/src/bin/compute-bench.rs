//! `compute-bench`: point reads through a compute node's buffer pool, with a warm pool
//! (pages confirmed by one validation round per transaction), a cold pool (every page
//! fetched one-sided), and validation forced per access (the baseline); and the
//! *pool-size* case: the same 20 point reads per transaction with a small and with a
//! large pool of cached, unlocked pages (a round costs the change notices since the
//! last one, not the pool: the rates should match).
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
//! a compute-node binary may not link the storage node and GTM, docs/design.md.)

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
    /// Pool-size case: cached pages (comma list; empty to skip)
    #[arg(long, default_value = "4096,65536", value_delimiter = ',')]
    pool_pages: Vec<u64>,
    /// Pool-size case: transport
    #[arg(long, default_value = "shm")]
    pool_transport: Transport,
}

fn key(i: u64) -> Vec<u8> {
    format!("row{i:010}").into_bytes()
}

struct Outcome {
    reads: u64,
    txns: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    counters: Counters,
}

/// Coherence work over a measurement (deltas of `CoherenceStats`).
#[derive(Default, Clone, Copy)]
struct Counters {
    round_trips: u64,
    rounds: u64,
    pages_validated: u64,
    single_validations: u64,
    notices: u64,
    fetches: u64,
}

impl Counters {
    fn read(p: &compute_node::coherence::CoherentPager) -> Counters {
        let s = &p.stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            round_trips: l(&s.round_trips),
            rounds: l(&s.validation_rounds),
            pages_validated: l(&s.pages_validated),
            single_validations: l(&s.single_validations),
            notices: l(&s.notices),
            fetches: l(&s.fetches),
        }
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            round_trips: self.round_trips - before.round_trips,
            rounds: self.rounds - before.rounds,
            pages_validated: self.pages_validated - before.pages_validated,
            single_validations: self.single_validations - before.single_validations,
            notices: self.notices - before.notices,
            fetches: self.fetches - before.fetches,
        }
    }
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
    let c0 = Counters::read(&pager);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let node = node.clone();
            let table = table.clone();
            std::thread::spawn(move || -> Result<(u64, u64, Histogram<u64>)> {
                let mut rng = rand::thread_rng();
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                let (mut reads, mut txns) = (0u64, 0u64);
                let begun = Instant::now();
                while begun.elapsed() < dur {
                    if cold {
                        node.engine().pager().evict_unlocked();
                    }
                    let mut tx = node.begin()?;
                    for j in 0..per_txn {
                        // `rows == 0`: the same `per_txn` rows every time (pool-size case).
                        let k = key(if rows == 0 {
                            j as u64
                        } else {
                            rng.gen_range(0..rows)
                        });
                        let t = Instant::now();
                        let v = tx.get(&table, &k)?;
                        hist.record(t.elapsed().as_nanos().max(1) as u64)?;
                        anyhow::ensure!(v.is_some(), "row missing");
                        reads += 1;
                    }
                    tx.commit()?;
                    txns += 1;
                }
                Ok((reads, txns, hist))
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut reads, mut txns) = (0, 0);
    for h in handles {
        let (r, t, hh) = h.join().expect("bench thread")?;
        reads += r;
        txns += t;
        hist.add(hh)?;
    }
    Ok(Outcome {
        reads,
        txns,
        elapsed: start.elapsed(),
        hist,
        counters: Counters::read(&pager).since(c0),
    })
}

/// The pool-size case: `pages` pages of 1,500-byte rows (five per page) loaded, written
/// back and unlocked (cached, as pages read from other nodes are), all cached by one
/// scan, then one thread's read-only transactions of the same `per_txn` point reads.
fn pool_case(
    transport: Transport,
    pages: u64,
    per_txn: usize,
    dur: Duration,
) -> Result<Vec<(&'static str, Outcome, usize)>> {
    const ROW: usize = 1500;
    let rows = pages * 5;
    let bytes = (pages + 4096) * 8192;
    let cluster = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 0,
        transport,
        storage_memory: bytes + bytes / 4,
        pages_per_storage_node: (pages * 2).max(1 << 16),
        buffer_frames: (pages * 6 / 5 + 8192) as usize,
        ..ClusterOptions::default()
    })?;
    let node = Arc::new(cluster.start_compute_node(1)?);
    let table = node.create_table("pool")?;
    for chunk in (0..rows).collect::<Vec<_>>().chunks(500) {
        let mut tx = node.begin()?;
        for i in chunk {
            tx.put(&table, &key(*i), &[0x5a; ROW])?;
        }
        tx.commit()?;
    }
    node.shutdown()?;
    drop(node);
    cluster.checkpoint()?;
    // Each validation mode on a node of its own (its own pool), the pool filled by the
    // warm-up scan of `run_case`.
    let mut out = Vec::new();
    for (id, (case, mode)) in [
        ("pool", ValidationMode::Batched),
        ("pool_full_rounds", ValidationMode::FullRounds),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cfg = cluster.compute_config(2 + id as u32);
        cfg.validation = mode;
        let node = Arc::new(ComputeNode::start_with_key(&cfg, cluster.key().clone())?);
        let o = run_case(&node, &table, false, 1, 0, per_txn, dur)?;
        let cached = node.engine().pager().pool().snapshot_versions().len();
        node.shutdown()?;
        out.push((case, o, cached));
    }
    cluster.shutdown()?;
    Ok(out)
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
        cluster.checkpoint()?;
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
                report(&args, case, transport, threads, &o, None);
                node.shutdown()?;
            }
        }
        cluster.shutdown()?;
    }
    let mut rates: Vec<(&str, usize, f64)> = Vec::new();
    for &pages in &args.pool_pages {
        for (case, o, cached) in pool_case(args.pool_transport, pages, args.reads_per_txn, dur)? {
            rates.push((case, cached, o.reads as f64 / o.elapsed.as_secs_f64()));
            report(&args, case, args.pool_transport, 1, &o, Some(cached));
        }
    }
    if !args.json {
        for case in ["pool", "pool_full_rounds"] {
            let r: Vec<_> = rates.iter().filter(|r| r.0 == case).collect();
            if let (Some(small), Some(large)) = (r.first(), r.last()) {
                if r.len() > 1 {
                    println!(
                        "{case}: {} cached pages {:.0} reads/s vs {} cached pages {:.0} reads/s: {:.2}x",
                        large.1,
                        large.2,
                        small.1,
                        small.2,
                        large.2 / small.2
                    );
                }
            }
        }
    }
    Ok(())
}

fn report(
    args: &Args,
    case: &str,
    transport: Transport,
    threads: usize,
    o: &Outcome,
    cached_pages: Option<usize>,
) {
    let ops = o.reads as f64 / o.elapsed.as_secs_f64();
    let p50 = o.hist.value_at_quantile(0.5) as f64 / 1000.0;
    let p99 = o.hist.value_at_quantile(0.99) as f64 / 1000.0;
    let per_read = |n: u64| n as f64 / o.reads.max(1) as f64;
    let per_txn = |n: u64| n as f64 / o.txns.max(1) as f64;
    let c = o.counters;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "case": case, "transport": transport.to_string(), "threads": threads,
                "ops_per_s": ops.round(), "p50_us": p50, "p99_us": p99,
                "round_trips_per_op": r3(per_read(c.round_trips)),
                "reads_per_txn": args.reads_per_txn,
                "rows": if case == "pool" { serde_json::Value::Null } else { args.rows.into() },
                "cached_pages": cached_pages,
                "rounds_per_txn": r3(per_txn(c.rounds)),
                "pages_validated_per_txn": r3(per_txn(c.pages_validated)),
                "notices_per_txn": r3(per_txn(c.notices)),
                "single_validations_per_op": r3(per_read(c.single_validations)),
                "fetches_per_op": r3(per_read(c.fetches)),
            })
        );
    } else {
        println!(
            "{case:<14} {transport:<5} {threads:>7} {ops:>12.0} {p50:>9.2} {p99:>9.2} {:>10.3}  validated/txn {:.1}  notices/txn {:.1}{}",
            per_read(c.round_trips),
            per_txn(c.pages_validated),
            per_txn(c.notices),
            cached_pages.map(|n| format!("  cached {n}")).unwrap_or_default()
        );
    }
}
