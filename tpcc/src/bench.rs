//! One benchmark run end to end: start the cluster, create the schema, load, check,
//! drive, check again, report. The `tpcc` binary is a thin wrapper around [`run`].

use crate::check::CheckResult;
use crate::driver::{self, Affinity, DriverConfig};
use crate::load::Scale;
use crate::random::NuRandConstants;
use crate::remote::RemoteTarget;
use crate::report::{self, Report};
use crate::schema::SPEC_ITEMS;
use crate::spawn::{ProcessCluster, SpawnOptions, SpawnTransport};
use crate::target::{EngineTarget, LoadRequest, Target};
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

/// `--isolation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    /// The engine: snapshot; PostgreSQL: READ COMMITTED with locking reads, REPEATABLE
    /// READ with plain reads (the like-for-like pairs).
    Auto,
    /// The engine's snapshot isolation; PostgreSQL's REPEATABLE READ.
    Snapshot,
    /// A snapshot per statement (needs locking reads); PostgreSQL's READ COMMITTED.
    ReadCommitted,
}

/// `--wait-policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitPolicyArg {
    /// Wound-wait with locking reads, wait-die with plain reads (the earlier mode).
    Auto,
    WoundWait,
    WaitDie,
    NoWait,
}

/// `--locking`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LockingArg {
    /// Locking reads of the rows a transaction updates (SELECT … FOR UPDATE).
    ForUpdate,
    /// Snapshot reads, then first-updater-wins writes (the earlier mode).
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterMode {
    /// Storage node, GTM and compute nodes in this process over shared memory.
    Embedded,
    /// Each service (storage node, GTM, compute nodes) as its own local process,
    /// started and stopped by the harness; transactions run as gRPC stored procedures.
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
    /// Isolation level of the transactions (see the values).
    #[arg(long, value_enum, default_value_t = IsolationArg::Auto)]
    pub isolation: IsolationArg,
    /// How the rows a transaction updates are read: `for-update` (locking reads: Payment's
    /// warehouse, district and customer, New-Order's district and stock, Delivery's
    /// new-order row and customer) or `plain` (the earlier mode).
    #[arg(long, value_enum, default_value_t = LockingArg::ForUpdate)]
    pub locking: LockingArg,
    /// The compute nodes' wait policy for a row another transaction is writing (embedded
    /// and spawned clusters; a `--connect`ed cluster keeps its own).
    #[arg(long, value_enum, default_value_t = WaitPolicyArg::Auto)]
    pub wait_policy: WaitPolicyArg,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Cluster mode: `embedded` (default: one process over shm) or `spawn` (the three
    /// service binaries as local processes).
    #[arg(long, value_enum, default_value_t = ClusterMode::Embedded)]
    pub cluster: ClusterMode,
    /// With `--cluster spawn`: how the services talk to each other.
    #[arg(long, value_enum, default_value_t = SpawnTransport::Tcp)]
    pub transport: SpawnTransport,
    /// With `--cluster spawn`: GTM lease in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub lease_ms: u64,
    /// With `--cluster spawn`: the storage node's redo segment size in MiB (default: the
    /// storage node's); redo is deleted a whole sealed segment at a time, and lock
    /// holders are asked to write back once a stream keeps more than 4 segments.
    #[arg(long)]
    pub redo_segment_mb: Option<u64>,
    /// Redo a storage node keeps per compute node before it asks lock holders to write
    /// back the pages that hold truncation back, in MiB (default: the storage node's,
    /// 1 GiB embedded; 4 segments with `--redo-segment-mb`). Like PostgreSQL's
    /// `max_wal_size`: more means fewer page write-backs under load, longer recovery.
    #[arg(long)]
    pub redo_retain_mb: Option<u64>,
    /// The GTM's `freeze_after_txns`: txn ids issued above the freeze floor before a
    /// freeze sweep is due (default: the GTM's, 1,000,000; 0: every
    /// `freeze_interval_ms`, 60 s). Like PostgreSQL's `autovacuum_freeze_max_age`.
    #[arg(long)]
    pub freeze_after_txns: Option<u64>,
    /// With `--cluster spawn`: keep configs, data and logs in this directory (default: a
    /// temporary one, removed after a clean run).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Run against a running cluster: the compute nodes' gRPC addresses (host:port,...).
    #[arg(long, value_delimiter = ',')]
    pub connect: Vec<String>,
    /// With --connect: the client token, from a tokens file (its first line) or a file
    /// holding just the token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// With --connect: speak TLS, trusting this CA (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// With --connect and --tls-ca: the name the servers' certificates carry (default:
    /// the address's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// With --connect and --tls-ca: a client certificate and key (PEM) for mutual TLS.
    #[arg(long, num_args = 2, value_names = ["CERT", "KEY"])]
    pub tls_client_cert: Vec<PathBuf>,
    /// With --cluster spawn: the client API over TLS (a test CA made in the run
    /// directory); clients authenticate with a token either way.
    #[arg(long)]
    pub client_tls: bool,
    /// Do not create and load the database: it was loaded by an earlier run with the
    /// same --warehouses, --scale-items and --seed (with --connect, --target, or
    /// --cluster spawn reusing a --run-dir).
    #[arg(long)]
    pub skip_load: bool,
    /// Run against PostgreSQL instead of the engine, `postgres://...` (or a libpq
    /// key=value string).
    #[arg(long)]
    pub target: Option<String>,
    /// Draw throughput over time and latency CDFs to an SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Append every acknowledged New-Order as `w d o_id` to this file; after the run
    /// the harness checks that each of them is in the database either way.
    #[arg(long)]
    pub ack_log: Option<PathBuf>,
    /// How long a terminal keeps retrying while its node is unavailable (restarting,
    /// fenced, cut off) before the run fails, seconds.
    #[arg(long, default_value_t = 0)]
    pub unavailable_patience: u64,
    /// With `--cluster spawn`: inject a fault during the measurement window (see
    /// `crate::fault`), e.g. `kill:compute-2@10+2` = kill -9 compute-2 10 s into the
    /// window and start it again 2 s later.
    #[arg(long)]
    pub fault: Vec<String>,
    /// Write the run as JSON lines while it goes (a line per second and per fault; see
    /// `crate::events`), e.g. for `scripts/soak-test.sh`.
    #[arg(long)]
    pub events: Option<PathBuf>,
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

/// The engine's transaction mode the options ask for.
fn engine_mode(o: &Options) -> Result<crate::transactions::Mode> {
    use compute_node::txn::Isolation;
    let locking = locking_of(o);
    let isolation = match o.isolation {
        IsolationArg::Auto | IsolationArg::Snapshot => Isolation::Snapshot,
        IsolationArg::ReadCommitted => Isolation::ReadCommitted,
    };
    crate::transactions::Mode::check(isolation, locking).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(crate::transactions::Mode {
        isolation: Some(isolation),
        locking,
    })
}

fn locking_of(o: &Options) -> crate::transactions::Locking {
    match o.locking {
        LockingArg::ForUpdate => crate::transactions::Locking::ForUpdate,
        LockingArg::Plain => crate::transactions::Locking::Plain,
    }
}

/// The compute nodes' wait policy the options ask for.
fn wait_policy_of(o: &Options) -> compute_node::mvcc::WaitPolicy {
    use compute_node::mvcc::WaitPolicy as W;
    match o.wait_policy {
        WaitPolicyArg::Auto => match o.locking {
            LockingArg::ForUpdate => W::WoundWait,
            LockingArg::Plain => W::WaitDie,
        },
        WaitPolicyArg::WoundWait => W::WoundWait,
        WaitPolicyArg::WaitDie => W::WaitDie,
        WaitPolicyArg::NoWait => W::NoWait,
    }
}

fn policy_name(o: &Options) -> &'static str {
    match wait_policy_of(o) {
        compute_node::mvcc::WaitPolicy::WoundWait => "wound-wait",
        compute_node::mvcc::WaitPolicy::WaitDie => "wait-die",
        compute_node::mvcc::WaitPolicy::NoWait => "no-wait",
    }
}

/// PostgreSQL's.
fn pg_mode(o: &Options) -> Result<crate::pg::PgMode> {
    let locking = locking_of(o);
    let read_committed = match o.isolation {
        IsolationArg::Auto => locking == crate::transactions::Locking::ForUpdate,
        IsolationArg::Snapshot => false,
        IsolationArg::ReadCommitted => true,
    };
    if read_committed && locking == crate::transactions::Locking::Plain {
        bail!("TPC-C at read committed needs locking reads (--locking for-update)");
    }
    Ok(crate::pg::PgMode {
        read_committed,
        locking,
    })
}

pub fn run(o: &Options) -> Result<Outcome> {
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
    let modes = [
        o.target.is_some(),
        !o.connect.is_empty(),
        o.cluster == ClusterMode::Spawn,
    ];
    if modes.iter().filter(|&&m| m).count() > 1 {
        bail!("--target, --connect and --cluster spawn exclude each other");
    }
    if !o.fault.is_empty() && o.cluster != ClusterMode::Spawn {
        bail!("--fault needs --cluster spawn (the harness must own the processes)");
    }
    let faults = o
        .fault
        .iter()
        .map(|f| crate::fault::Fault::parse(f, o.nodes))
        .collect::<Result<Vec<_>>>()?;
    let reused_run_dir = o.cluster == ClusterMode::Spawn && o.run_dir.is_some();
    if o.skip_load && o.target.is_none() && o.connect.is_empty() && !reused_run_dir {
        bail!(
            "--skip-load needs --connect, --target or --cluster spawn with --run-dir (other \
             modes start empty)"
        );
    }
    let w = o.warehouses as u64;
    let buffer_frames = o
        .buffer_frames
        .unwrap_or((16_384 + 24_576 * w as usize).min(1 << 20));
    let storage_memory_mb = o.storage_memory_mb.unwrap_or(512 + 384 * w);
    let t0 = Instant::now();
    let mode = if o.target.is_some() {
        None
    } else {
        Some(engine_mode(o)?)
    };
    if let Some(url) = &o.target {
        let terminals = o.warehouses as usize * o.terminals_per_warehouse as usize;
        let target = crate::pg::PgTarget::connect(url, terminals, pg_mode(o)?)?;
        return run_on(o, &target, "postgres", t0, None);
    }
    if !o.connect.is_empty() {
        let mut copts = match &o.token_file {
            Some(f) => {
                common::compute::ConnectOptions::token_file(f).map_err(anyhow::Error::msg)?
            }
            None => common::compute::ConnectOptions::default(),
        };
        if let Some(ca) = &o.tls_ca {
            copts = copts.with_tls(common::compute::ClientTls {
                ca: ca.clone(),
                domain: o.tls_domain.clone(),
                identity: match o.tls_client_cert.as_slice() {
                    [c, k] => Some((c.clone(), k.clone())),
                    _ => None,
                },
            });
        }
        let target = RemoteTarget::connect(&o.connect, Duration::from_secs(30), &copts)?
            .with_mode(engine_mode(o)?, "the nodes' wait policy");
        return run_on(o, &target, "connect", t0, None);
    }
    match o.cluster {
        ClusterMode::Spawn => {
            let cluster = ProcessCluster::start(&SpawnOptions {
                transport: o.transport,
                compute_nodes: o.nodes,
                buffer_frames,
                storage_memory_mb,
                lock_mode: match o.lock_mode {
                    LockModeArg::Lazy => "lazy",
                    LockModeArg::Eager => "eager",
                },
                wait_policy: match wait_policy_of(o) {
                    compute_node::mvcc::WaitPolicy::WoundWait => "wound_wait",
                    compute_node::mvcc::WaitPolicy::WaitDie => "wait_die",
                    compute_node::mvcc::WaitPolicy::NoWait => "no_wait",
                },
                lease_ms: o.lease_ms,
                redo_segment_mb: o.redo_segment_mb,
                redo_retain_mb: o.redo_retain_mb,
                freeze_after_txns: o.freeze_after_txns,
                client_tls: o.client_tls,
                dir: o.run_dir.clone(),
            })
            .context("starting the service processes")?;
            let target = RemoteTarget::connect(
                &cluster.compute_addrs,
                Duration::from_secs(60),
                &cluster.client,
            )?
            .with_pids(cluster.services().iter().filter_map(|s| s.pid()).collect())
            .with_mode(mode.expect("an engine target"), policy_name(o));
            let label = match (o.transport, o.client_tls) {
                (SpawnTransport::Tcp, false) => "spawn (tcp)",
                (SpawnTransport::Tcp, true) => "spawn (tcp, client API over TLS)",
                (SpawnTransport::Shm, false) => "spawn (shm)",
                (SpawnTransport::Shm, true) => "spawn (shm, client API over TLS)",
            };
            let cluster = parking_lot::Mutex::new(cluster);
            let out = run_on(o, &target, label, t0, Some((&cluster, &faults)));
            drop(target);
            let stopped = cluster.into_inner().stop();
            let out = out?;
            stopped.context("stopping the service processes")?;
            Ok(out)
        }
        ClusterMode::Embedded => {
            let mut copts = ClusterOptions {
                compute_nodes: o.nodes,
                buffer_frames,
                storage_memory: storage_memory_mb << 20,
                compute: compute_node::node::ComputeConfig {
                    lock_mode: match o.lock_mode {
                        LockModeArg::Lazy => compute_node::coherence::LockMode::Lazy,
                        LockModeArg::Eager => compute_node::coherence::LockMode::Eager,
                    },
                    wait_policy: wait_policy_of(o),
                    ..compute_node::node::ComputeConfig::default()
                },
                ..ClusterOptions::default()
            };
            if let Some(m) = o.redo_retain_mb {
                copts.storage.redo_retain = cluster::ByteSize(m << 20);
            }
            if let Some(n) = o.freeze_after_txns {
                copts.gtm.freeze_after_txns = n;
            }
            let cluster = EmbeddedCluster::start(copts).context("starting the embedded cluster")?;
            let target = EngineTarget::new(&cluster.nodes, mode.expect("an engine target"))?;
            let out = run_on(o, &target, "embedded", t0, None);
            drop(target);
            cluster.shutdown().context("shutting the cluster down")?;
            out
        }
    }
}

/// Faults to inject into a spawned cluster.
type Faults<'a> = (
    &'a parking_lot::Mutex<ProcessCluster>,
    &'a [crate::fault::Fault],
);

/// Load, check, drive, check, report on `target`.
fn run_on(
    o: &Options,
    target: &dyn Target,
    cluster_label: &str,
    t0: Instant,
    faults: Option<Faults>,
) -> Result<Outcome> {
    let items = o.scale_items.unwrap_or(SPEC_ITEMS);
    let mix: [u32; 5] = o
        .mix
        .clone()
        .try_into()
        .map_err(|_| anyhow::anyhow!("--mix takes 5 numbers"))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let seed = o.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let c_load = NuRandConstants::for_load(&mut rng);
    let c_run = NuRandConstants::for_run(&c_load, &mut rng);
    let nodes = target.nodes();
    if !o.quiet {
        eprintln!(
            "{cluster_label}: up in {:.1}s ({nodes} node(s)); seed {seed}; NURand C load {:?} run {:?}",
            t0.elapsed().as_secs_f64(),
            c_load,
            c_run
        );
    }
    let scale = Scale {
        warehouses: o.warehouses,
        items,
    };
    let lt = Instant::now();
    let load_rows = if o.skip_load {
        0
    } else {
        target
            .load(&LoadRequest {
                scale,
                c_load,
                seed,
                threads: o.load_threads.unwrap_or(2 * cpus),
                progress: !o.quiet,
            })
            .context("loading")?
    };
    let load_s = lt.elapsed().as_secs_f64();
    if !o.quiet && !o.skip_load {
        eprintln!(
            "loaded {load_rows} rows in {load_s:.1}s ({:.0} rows/s)",
            load_rows as f64 / load_s
        );
    }

    let mut checks_after_load = Vec::new();
    if o.check && !o.skip_load {
        let ct = Instant::now();
        checks_after_load = target
            .checks(o.warehouses, false)
            .context("checks after load")?;
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
        unavailable_patience: Duration::from_secs(o.unavailable_patience),
        events: o
            .events
            .as_deref()
            .map(crate::events::EventLog::create)
            .transpose()?
            .map(std::sync::Arc::new),
    };
    let (res, fault_reports) = match faults {
        Some((cluster, faults)) if !faults.is_empty() => {
            let window = Instant::now() + dcfg.warmup;
            std::thread::scope(|s| {
                let injector = s.spawn(|| {
                    crate::fault::inject(cluster, faults, window, dcfg.events.as_deref())
                });
                let res = driver::run(target, &dcfg);
                let reports = injector
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("fault injector panicked")));
                (res, reports)
            })
        }
        _ => (driver::run(target, &dcfg), Ok(Vec::new())),
    };
    let res = res.context("running the workload")?;
    let fault_reports = fault_reports.context("injecting faults")?;

    if let Some(path) = &o.ack_log {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        );
        for (w, d, id) in &res.acked {
            writeln!(f, "{w} {d} {id}")?;
        }
        f.flush()?;
    }
    let lost = if o.ack_log.is_some() || !fault_reports.is_empty() {
        let missing = target
            .missing_orders(&res.acked)
            .context("looking up acknowledged New-Orders")?;
        if !missing.is_empty() {
            eprintln!(
                "LOST: {} acknowledged New-Order(s) are missing, e.g. (w, d, o_id) = {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        Some(missing.len())
    } else {
        None
    };

    let mut checks_after_run = Vec::new();
    if o.check {
        let ct = Instant::now();
        checks_after_run = target
            // After --skip-load, earlier runs may have delivered orders already.
            .checks(o.warehouses, res.delivery_ran || o.skip_load)
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
        nodes,
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
        counters: &res.counters,
        cpu_s: res.cpu_s,
        mode: &target.txn_mode(),
        extra: serde_json::json!({
            "seed": seed,
            "nurand_c_load": c_load,
            "nurand_c_run": c_run,
            "mix": mix,
            "keying_think": o.keying_think,
            "cluster": cluster_label,
            "acknowledged_new_orders": res.acked.len(),
            "lost_new_orders": lost,
            "unavailable_attempts": res.unavailable,
            "max_client_stall_s": res.max_stall.as_secs_f64(),
            "client_downtime_s": res.max_gap.iter().map(Duration::as_secs_f64).fold(0.0, f64::max),
            "client_downtime_per_node_s": res.max_gap.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "faults": fault_reports.iter().map(|f| f.to_json()).collect::<Vec<_>>(),
        }),
    };
    println!("{}", rep.to_text());
    if !fault_reports.is_empty() || lost.is_some() {
        println!(
            "acknowledged New-Orders: {}  lost: {}  unavailable attempts: {}  downtime seen by clients per node: {:?}",
            res.acked.len(),
            lost.unwrap_or(0),
            res.unavailable,
            res.max_gap
                .iter()
                .map(|d| format!("{:.2}s", d.as_secs_f64()))
                .collect::<Vec<_>>()
        );
        for f in &fault_reports {
            println!("fault: {f}");
        }
    }
    let json = rep.to_json();
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &o.plot {
        let title = format!(
            "{} warehouse(s), {nodes} node(s), {cluster_label}",
            o.warehouses
        );
        crate::plot::write_svg(
            path,
            &crate::plot::PlotInput {
                title: &title,
                timeline: &res.timeline,
                stats: &res.stats,
            },
        )?;
    }
    let checks_failed = checks_after_load
        .iter()
        .chain(&checks_after_run)
        .any(CheckResult::failed)
        || lost.is_some_and(|n| n > 0);
    Ok(Outcome {
        json,
        checks_failed,
    })
}
