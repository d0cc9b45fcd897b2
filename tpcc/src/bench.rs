//! One benchmark run end to end: start the cluster, create the schema, load, check,
//! drive, check again, report. The `tpcc` binary is a thin wrapper around [`run`].

use crate::check::{self, CheckResult};
use crate::driver::{self, Affinity, DriverConfig};
use crate::load::{Loader, Scale};
use crate::random::NuRandConstants;
use crate::report::{self, Report};
use crate::schema::{Tables, SPEC_ITEMS};
use crate::transactions::Workload;
use anyhow::{bail, Context, Result};
use clap::Parser;
use cluster::{ClusterOptions, EmbeddedCluster};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LockModeArg {
    Lazy,
    Eager,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterMode {
    /// Storage node, GTM and compute nodes in this process over shared memory.
    Embedded,
    /// Each service as its own local process (not implemented yet).
    Spawn,
}

/// TPC-C against the disaggregated shared-buffer engine.
#[derive(Clone, Debug, Parser)]
#[command(name = "tpcc", version)]
pub struct Options {
    /// Warehouses (the scale factor).
    #[arg(long, default_value_t = 1)]
    pub warehouses: u32,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Warm-up before the measurement window, seconds.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Compute nodes of the embedded cluster.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// How terminals are spread over compute nodes.
    #[arg(long, value_enum, default_value_t = Affinity::Partitioned)]
    pub affinity: Affinity,
    /// Terminals per warehouse (10 per the spec).
    #[arg(long, default_value_t = 10)]
    pub terminals_per_warehouse: u32,
    /// Worker threads that run the terminals (default: min(terminals, 4 x CPUs)).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Loader threads (default: 2 x CPUs).
    #[arg(long)]
    pub load_threads: Option<usize>,
    /// Transaction mix in percent: New-Order, Payment, Order-Status, Delivery, Stock-Level.
    #[arg(
        long,
        default_value = "45,43,4,4,4",
        value_delimiter = ',',
        num_args = 5
    )]
    pub mix: Vec<u32>,
    /// Keying and think times per clause 5.2.5 (off by default).
    #[arg(long)]
    pub keying_think: bool,
    /// Run the twelve consistency checks of clause 3.3.2 after load and after the run.
    #[arg(long)]
    pub check: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// NOT SPEC: load only N items (and N stock rows per warehouse) instead of 100,000.
    /// For tests and CI only; the report then says `spec_compliant: false`.
    #[arg(long)]
    pub scale_items: Option<u32>,
    /// Seed for every random choice (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Give up on a transaction after this many retryable aborts.
    #[arg(long, default_value_t = 100)]
    pub max_retries: u32,
    /// Buffer-pool frames (8 KiB) per compute node (default scales with warehouses).
    #[arg(long)]
    pub buffer_frames: Option<usize>,
    /// Storage-node frame memory in MiB (default scales with warehouses).
    #[arg(long)]
    pub storage_memory_mb: Option<u64>,
    /// Page locks: `lazy` (kept until another node asks) or `eager` (written back and
    /// released after every change: the baseline).
    #[arg(long, value_enum, default_value_t = LockModeArg::Lazy)]
    pub lock_mode: LockModeArg,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Cluster mode: `embedded` (default) or `spawn` (not implemented yet).
    #[arg(long, value_enum, default_value_t = ClusterMode::Embedded)]
    pub cluster: ClusterMode,
    /// Run against a running cluster's compute nodes (not implemented yet).
    #[arg(long, value_delimiter = ',')]
    pub connect: Vec<String>,
    /// Run against PostgreSQL, `postgres://...` (not implemented yet).
    #[arg(long)]
    pub target: Option<String>,
    /// Draw throughput over time and latency CDFs to an SVG file (not implemented yet).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// A requested feature that does not exist yet (the binary exits 2).
#[derive(Debug, thiserror::Error)]
#[error("not implemented yet: {0}")]
pub struct NotImplemented(pub String);

/// How a finished run went.
pub struct Outcome {
    pub json: serde_json::Value,
    pub checks_failed: bool,
}

fn print_checks(phase: &str, checks: &[CheckResult], quiet: bool) {
    if !quiet {
        eprintln!(
            "consistency checks {phase}:\n{}",
            report::format_checks(checks)
        );
    }
}

pub fn run(o: &Options) -> Result<Outcome> {
    if o.cluster == ClusterMode::Spawn {
        return Err(NotImplemented("--cluster spawn".into()).into());
    }
    if !o.connect.is_empty() {
        return Err(NotImplemented("--connect".into()).into());
    }
    if o.target.is_some() {
        return Err(NotImplemented("--target (PostgreSQL side-by-side)".into()).into());
    }
    if o.plot.is_some() {
        return Err(NotImplemented("--plot".into()).into());
    }
    if o.warehouses == 0 || o.nodes == 0 || o.terminals_per_warehouse == 0 {
        bail!("--warehouses, --nodes and --terminals-per-warehouse must be at least 1");
    }
    let items = o.scale_items.unwrap_or(SPEC_ITEMS);
    if items == 0 || items > SPEC_ITEMS {
        bail!("--scale-items must be in 1..=100000");
    }
    if items != SPEC_ITEMS {
        eprintln!(
            "WARNING: --scale-items {items}: NOT a spec-compliant database (spec: 100,000 items)"
        );
    }
    let mix: [u32; 5] = o
        .mix
        .clone()
        .try_into()
        .map_err(|_| anyhow::anyhow!("--mix takes 5 numbers"))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let w = o.warehouses as u64;
    let seed = o.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let c_load = NuRandConstants::for_load(&mut rng);
    let c_run = NuRandConstants::for_run(&c_load, &mut rng);

    let copts = ClusterOptions {
        compute_nodes: o.nodes,
        buffer_frames: o
            .buffer_frames
            .unwrap_or((16_384 + 24_576 * w as usize).min(1 << 20)),
        storage_memory: o.storage_memory_mb.unwrap_or(512 + 384 * w) << 20,
        compute: compute_node::node::ComputeConfig {
            lock_mode: match o.lock_mode {
                LockModeArg::Lazy => compute_node::coherence::LockMode::Lazy,
                LockModeArg::Eager => compute_node::coherence::LockMode::Eager,
            },
            ..compute_node::node::ComputeConfig::default()
        },
        ..ClusterOptions::default()
    };
    let t0 = Instant::now();
    let cluster = EmbeddedCluster::start(copts).context("starting the embedded cluster")?;
    let nodes = &cluster.nodes;
    // Create every table once, then open it on each node.
    Tables::ensure(&nodes[0]).context("creating the schema")?;
    let tables = nodes
        .iter()
        .map(Tables::ensure)
        .collect::<Result<Vec<_>, _>>()?;
    if !o.quiet {
        eprintln!(
            "cluster up in {:.1}s ({} compute node(s)); seed {seed}; NURand C load {:?} run {:?}",
            t0.elapsed().as_secs_f64(),
            nodes.len(),
            c_load,
            c_run
        );
    }

    let scale = Scale {
        warehouses: o.warehouses,
        items,
    };
    let node_of = |wh: u32| driver::partition_of(wh, o.warehouses, nodes.len());
    let lt = Instant::now();
    let load_rows = Loader {
        nodes,
        tables: &tables,
        node_of: &node_of,
        scale,
        c_load,
        seed,
        threads: o.load_threads.unwrap_or(2 * cpus),
        progress: !o.quiet,
    }
    .run()
    .context("loading")?;
    let load_s = lt.elapsed().as_secs_f64();
    if !o.quiet {
        eprintln!(
            "loaded {load_rows} rows in {load_s:.1}s ({:.0} rows/s)",
            load_rows as f64 / load_s
        );
    }

    let mut checks_after_load = Vec::new();
    if o.check {
        let ct = Instant::now();
        checks_after_load =
            check::run_checks(&nodes[0], o.warehouses, false).context("checks after load")?;
        print_checks(
            &format!("after load ({:.1}s)", ct.elapsed().as_secs_f64()),
            &checks_after_load,
            o.quiet,
        );
    }

    let terminals = o.warehouses as usize * o.terminals_per_warehouse as usize;
    let dcfg = DriverConfig {
        workload: Workload {
            warehouses: o.warehouses,
            items,
            c_run,
        },
        terminals_per_warehouse: o.terminals_per_warehouse,
        workers: o.workers.unwrap_or((4 * cpus).min(terminals)),
        warmup: Duration::from_secs(o.warmup),
        duration: Duration::from_secs(o.duration),
        mix,
        affinity: o.affinity,
        seed: seed ^ 0x5EED,
        keying_think: o.keying_think,
        progress: !o.quiet,
        max_retries: o.max_retries,
    };
    let res = driver::run(nodes, &tables, &dcfg).context("running the workload")?;

    let mut checks_after_run = Vec::new();
    if o.check {
        let ct = Instant::now();
        checks_after_run = check::run_checks(&nodes[0], o.warehouses, res.delivery_ran)
            .context("checks after run")?;
        print_checks(
            &format!("after run ({:.1}s)", ct.elapsed().as_secs_f64()),
            &checks_after_run,
            true,
        );
    }
    let rep = Report {
        stats: &res.stats,
        duration_s: res.measured_s,
        warmup_s: o.warmup as f64,
        warehouses: o.warehouses,
        nodes: nodes.len(),
        items,
        affinity: match o.affinity {
            Affinity::Partitioned => "partitioned",
            Affinity::Random => "random",
        },
        terminals: res.terminals,
        workers: res.workers,
        load_rows,
        load_s,
        checks_after_load: &checks_after_load,
        checks_after_run: &checks_after_run,
        timeline: &res.timeline,
        extra: serde_json::json!({
            "seed": seed,
            "nurand_c_load": c_load,
            "nurand_c_run": c_run,
            "mix": mix,
            "keying_think": o.keying_think,
            "cluster": "embedded",
        }),
    };
    println!("{}", rep.to_text());
    let json = rep.to_json();
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let checks_failed = checks_after_load
        .iter()
        .chain(&checks_after_run)
        .any(CheckResult::failed);
    drop(tables);
    cluster.shutdown().context("shutting the cluster down")?;
    Ok(Outcome {
        json,
        checks_failed,
    })
}
