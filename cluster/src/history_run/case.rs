//! One history case: a cluster configuration, a workload, a nemesis, an injection
//! schedule and a seed — started, run, checked, and summed up as a [`CaseResult`].
//! `history-test` runs many of them; the short tests in `cluster/tests/history.rs` run a
//! few.

use super::client::{Client, EmbeddedClient, RemoteClient};
use super::inject::{self, Intensity};
use super::nemesis::{
    ComputeFault, ComputeFaults, Nemesis, ProcessFault, ProcessFaults, StorageFaults,
};
use super::{run, RunOptions, Workload};
use crate::spawn::{ProcessCluster, SpawnOptions, SpawnTransport};
use crate::{ClusterOptions, EmbeddedCluster};
use common::fabric::Transport;
use compute_node::coherence::LockMode;
use compute_node::node::ComputeConfig;
use history::checker::{self, CheckOptions, Report};
use history::model::History;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage_node::config::{ByteSize, StorageConfig};

/// Where the services run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every service in this process ([`EmbeddedCluster`]); the workload uses the
    /// embedding API.
    Embedded,
    /// Every service its own process ([`ProcessCluster`], one storage node); the
    /// workload uses gRPC.
    Processes,
}

/// Which faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Faults {
    None,
    /// Embedded: compute nodes crash (no write-back) and rejoin.
    Crash,
    /// Embedded: compute nodes leave (lease given up) and rejoin.
    Leave,
    /// Embedded: a storage node crashes (no flush, no checkpoint) and restarts; the
    /// compute nodes reclaim their locks and keep their pools.
    StorageCrash,
    /// Processes: kill -9 and restart of a compute node.
    KillCompute,
    /// Processes: SIGSTOP of a compute node past its lease.
    PauseCompute,
    /// Processes: kill -9 and restart of the storage node.
    KillStorage,
    /// Processes: kill -9 and restart of the GTM.
    KillGtm,
    /// Processes: all of the above, mixed.
    AllProcess,
}

impl Faults {
    pub fn name(self) -> &'static str {
        match self {
            Faults::None => "none",
            Faults::Crash => "crash",
            Faults::Leave => "leave",
            Faults::StorageCrash => "storage-crash",
            Faults::KillCompute => "kill-compute",
            Faults::PauseCompute => "pause-compute",
            Faults::KillStorage => "kill-storage",
            Faults::KillGtm => "kill-gtm",
            Faults::AllProcess => "all-process",
        }
    }

    pub fn parse(s: &str) -> Option<Faults> {
        [
            Faults::None,
            Faults::Crash,
            Faults::Leave,
            Faults::StorageCrash,
            Faults::KillCompute,
            Faults::PauseCompute,
            Faults::KillStorage,
            Faults::KillGtm,
            Faults::AllProcess,
        ]
        .into_iter()
        .find(|f| f.name() == s)
    }

    fn needs_processes(self) -> bool {
        !matches!(
            self,
            Faults::None | Faults::Crash | Faults::Leave | Faults::StorageCrash
        )
    }
}

/// Everything that defines one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Case {
    pub workload: Workload,
    pub mode: Mode,
    pub compute_nodes: usize,
    pub storage_nodes: usize,
    pub lock_mode: LockMode,
    pub transport: Transport,
    pub faults: Faults,
    pub inject: Intensity,
    pub seconds: f64,
    pub keys: u64,
    pub threads_per_node: usize,
    /// Slots of each storage node's change-notice ring (small rings lap the compute
    /// nodes, whose rounds then check their whole cache).
    pub notice_slots: u32,
    /// Writing transactions read with locking reads; judged against serializability.
    pub locking: bool,
    pub seed: u64,
}

impl Case {
    /// The `history-test` command line that runs exactly this case again.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p cluster --features failpoints --bin history-test -- \
             --workload {} --mode {} --nodes {} --storage-nodes {} --lock-mode {} \
             --transport {} --faults {} --inject {} --seconds {} --keys {} --threads {} \
             --notice-slots {}{} --seed {}",
            self.workload.name(),
            match self.mode {
                Mode::Embedded => "embedded",
                Mode::Processes => "processes",
            },
            self.compute_nodes,
            self.storage_nodes,
            match self.lock_mode {
                LockMode::Lazy => "lazy",
                LockMode::Eager => "eager",
            },
            transport_name(self.transport),
            self.faults.name(),
            self.inject.name(),
            self.seconds,
            self.keys,
            self.threads_per_node,
            self.notice_slots,
            if self.locking { " --locking" } else { "" },
            self.seed
        )
    }

    /// A short label for tables.
    pub fn label(&self) -> String {
        format!(
            "{}{} {}x{} {} {} {}",
            self.workload.name(),
            if self.locking { "+lock" } else { "" },
            self.compute_nodes,
            self.storage_nodes,
            match self.lock_mode {
                LockMode::Lazy => "lazy",
                LockMode::Eager => "eager",
            },
            transport_name(self.transport),
            match self.mode {
                Mode::Embedded => "embedded",
                Mode::Processes => "processes",
            },
        )
    }
}

pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Shm => "shm",
        Transport::Tcp => "tcp",
        _ => "rdma",
    }
}

/// What one case found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub case: Case,
    pub attempts: usize,
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    /// Attempts a node refused to begin (down, rejoining).
    pub unavailable: u64,
    /// Anomaly counts by name (forbidden and allowed).
    pub anomalies: BTreeMap<String, usize>,
    /// Forbidden anomalies in all (0 for a passing case).
    pub forbidden: usize,
    /// Acknowledged commits that vanished (part of `forbidden`).
    pub lost: usize,
    /// Injection-point hits and delays.
    pub inject_hits: u64,
    pub inject_delays: u64,
    pub faults_log: Vec<String>,
    pub elapsed_s: f64,
    /// Where the history and the report were written when the case failed.
    pub saved: Option<String>,
    /// Examples of what was found, for the log.
    pub summary: String,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.forbidden == 0
    }
}

fn check(h: &History, bank: &Option<(Vec<u64>, u64)>, serializable: bool) -> Report {
    let opts = CheckOptions {
        serializable,
        ..CheckOptions::default()
    };
    match bank {
        Some((accounts, total)) => checker::check_bank(h, accounts, *total, &opts),
        None => checker::check(h, &opts),
    }
}

/// Runs one case to completion. `out`: where to save a failing case's history.
pub fn run_case(case: &Case, out: Option<&std::path::Path>) -> Result<CaseResult, String> {
    let t0 = Instant::now();
    let opts = RunOptions {
        workload: case.workload,
        keys: case.keys,
        threads_per_node: case.threads_per_node,
        duration: Duration::from_secs_f64(case.seconds),
        seed: case.seed,
        locking: case.locking,
        ..RunOptions::default()
    };
    let schedule = inject::install(case.seed, case.inject);
    let (run, log) = match case.mode {
        Mode::Embedded => {
            if case.faults.needs_processes() {
                return Err(format!(
                    "faults {} need --mode processes",
                    case.faults.name()
                ));
            }
            let mut cluster = EmbeddedCluster::start(ClusterOptions {
                compute_nodes: case.compute_nodes,
                storage_nodes: case.storage_nodes,
                pages_per_storage_node: 1 << 16,
                storage_memory: 64 << 20,
                buffer_frames: 2048,
                transport: case.transport,
                lease: Duration::from_millis(1500),
                compute: ComputeConfig {
                    lock_mode: case.lock_mode,
                    // Writers that lock keys in random order deadlock often: a short
                    // grace period keeps the run moving (and wounds often).
                    wound_after_ms: if case.locking { 20 } else { 200 },
                    freeze_poll_ms: 100,
                    ..ComputeConfig::default()
                },
                // Freeze sweeps run during the histories (and outcomes are forgotten
                // below their floors): a version a sweep missed fails a read.
                gtm: gtm::config::GtmConfig {
                    freeze_interval_ms: 500,
                    freeze_after_txns: 0,
                    status_capacity: 512,
                    ..gtm::config::GtmConfig::default()
                },
                notice_slots: case.notice_slots,
                // Small segments and a small retained size: histories also run while
                // segments are truncated and lazy holders are asked for write-backs.
                storage: StorageConfig {
                    redo_segment: ByteSize(256 << 10),
                    redo_retain: ByteSize(512 << 10),
                    ..StorageConfig::default()
                },
            })
            .map_err(|e| e.to_string())?;
            let nodes: Arc<Vec<_>> = Arc::new(
                std::mem::take(&mut cluster.nodes)
                    .into_iter()
                    .map(Arc::new)
                    .collect(),
            );
            let client = EmbeddedClient::new(nodes.to_vec(), "history")?;
            let every = Duration::from_secs_f64((case.seconds / 4.0).max(0.3));
            let mut storage_faults = (case.faults == Faults::StorageCrash)
                .then(|| StorageFaults::new(&mut cluster, nodes.clone(), every, case.seed));
            let mut nemesis = match case.faults {
                Faults::Crash => Some(ComputeFaults::new(
                    nodes.clone(),
                    vec![ComputeFault::Crash],
                    Duration::from_secs_f64((case.seconds / 4.0).max(0.3)),
                    case.seed,
                )),
                Faults::Leave => Some(ComputeFaults::new(
                    nodes.clone(),
                    vec![ComputeFault::Leave],
                    Duration::from_secs_f64((case.seconds / 4.0).max(0.3)),
                    case.seed,
                )),
                _ => None,
            };
            let chosen: Option<&mut dyn Nemesis> = match (&mut nemesis, &mut storage_faults) {
                (Some(n), _) => Some(n),
                (None, Some(s)) => Some(s),
                (None, None) => None,
            };
            let run = run(&client as &dyn Client, &opts, chosen)?;
            let log = match (nemesis, storage_faults) {
                (Some(n), _) => n.log().to_vec(),
                (None, Some(s)) => s.log().to_vec(),
                (None, None) => Vec::new(),
            };
            drop(client);
            for n in nodes.iter() {
                let _ = n.shutdown();
            }
            drop(nodes);
            let _ = cluster.shutdown();
            (run, log)
        }
        Mode::Processes => {
            if case.storage_nodes != 1 {
                return Err("process mode runs one storage node".into());
            }
            let mut pc = ProcessCluster::start(&SpawnOptions {
                transport: match case.transport {
                    Transport::Shm => SpawnTransport::Shm,
                    _ => SpawnTransport::Tcp,
                },
                compute_nodes: case.compute_nodes,
                buffer_frames: 2048,
                storage_memory_mb: 64,
                lock_mode: match case.lock_mode {
                    LockMode::Lazy => "lazy",
                    LockMode::Eager => "eager",
                },
                wait_policy: "wound_wait",
                client_tls: false,
                lease_ms: 1500,
                redo_segment_mb: None,
                redo_retain_mb: None,
                // As the embedded cases: sweeps whenever one is due by time.
                freeze_after_txns: Some(0),
                dir: None,
            })
            .map_err(|e| format!("{e:#}"))?;
            let client = RemoteClient::connect(&pc.compute_addrs.clone(), "history", &pc.client)?;
            let kinds = match case.faults {
                Faults::KillCompute => vec![ProcessFault::KillCompute],
                Faults::PauseCompute => vec![ProcessFault::PauseCompute],
                Faults::KillStorage => vec![ProcessFault::KillStorage],
                Faults::KillGtm => vec![ProcessFault::KillGtm],
                Faults::AllProcess => vec![
                    ProcessFault::KillCompute,
                    ProcessFault::PauseCompute,
                    ProcessFault::KillStorage,
                    ProcessFault::KillGtm,
                ],
                _ => Vec::new(),
            };
            let (run, log) = if kinds.is_empty() {
                (run(&client as &dyn Client, &opts, None)?, Vec::new())
            } else {
                let mut n = ProcessFaults::new(
                    &mut pc,
                    case.compute_nodes,
                    kinds,
                    Duration::from_secs_f64((case.seconds / 3.0).max(1.0)),
                    Duration::from_millis(2500),
                    case.seed,
                );
                let r = run(&client as &dyn Client, &opts, Some(&mut n))?;
                (r, n.log().to_vec())
            };
            drop(client);
            pc.stop().map_err(|e| format!("{e:#}"))?;
            (run, log)
        }
    };
    let (inject_hits, inject_delays) = schedule.counts();
    drop(schedule);
    let report = check(&run.history, &run.bank, case.locking);
    let h = &run.history;
    let count = |o| h.txns.iter().filter(|t| t.outcome == o).count();
    let mut result = CaseResult {
        case: case.clone(),
        attempts: h.txns.len(),
        committed: count(history::model::Outcome::Committed),
        aborted: count(history::model::Outcome::Aborted),
        unknown: count(history::model::Outcome::Unknown),
        unavailable: run.unavailable,
        anomalies: report
            .counts
            .iter()
            .map(|(k, v)| (k.name().to_string(), *v))
            .collect(),
        forbidden: report.forbidden(),
        lost: report
            .counts
            .get(&checker::AnomalyKind::LostWrite)
            .copied()
            .unwrap_or(0),
        inject_hits,
        inject_delays,
        faults_log: log,
        elapsed_s: t0.elapsed().as_secs_f64(),
        saved: None,
        summary: report.summary(),
    };
    if !result.passed() {
        if let Some(dir) = out {
            result.saved = save(dir, case, h, &report).ok();
        }
    }
    Ok(result)
}

fn save(
    dir: &std::path::Path,
    case: &Case,
    h: &History,
    report: &Report,
) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let base: PathBuf = dir.join(format!(
        "{}-{}n{}s-{}-seed{}",
        case.workload.name(),
        case.compute_nodes,
        case.storage_nodes,
        case.faults.name(),
        case.seed
    ));
    let hp = base.with_extension("history.json");
    std::fs::write(&hp, serde_json::to_vec(h)?)?;
    std::fs::write(
        base.with_extension("report.json"),
        serde_json::to_vec_pretty(report)?,
    )?;
    std::fs::write(
        base.with_extension("replay.txt"),
        format!("{}\n", case.replay_command()),
    )?;
    Ok(hp.display().to_string())
}
