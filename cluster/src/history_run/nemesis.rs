//! Faults injected while a history workload runs (Jepsen's "nemesis"). Each nemesis
//! acts at seeded random moments until the run's deadline, then heals everything
//! before the final reads.
//!
//! * [`ComputeFaults`] (compute nodes in this process): a node *crashes* (its
//!   connections are cut without writing anything back and it joins again with a new
//!   epoch, as a restarted process would: the GTM aborts its transactions, the storage
//!   nodes rebuild its pages from its durable redo), or *leaves* (the lease-expiry
//!   path: `leave`, then it joins again).
//! * [`StorageFaults`] (an [`EmbeddedCluster`]): a storage node crashes (no flush, no
//!   checkpoint) and starts again from its data directory; the compute nodes reclaim
//!   their locks within its grace period and keep their pools.
//! * [`ProcessFaults`] (a [`ProcessCluster`]): `kill -9` and restart of a compute
//!   node, of the storage node or of the GTM, and SIGSTOP of a compute node past its
//!   lease, then SIGCONT.

use super::Nodes;
use crate::spawn::ProcessCluster;
use crate::EmbeddedCluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Something that injects faults during a run.
pub trait Nemesis: Send {
    /// Injects faults until `deadline` (or `stop`), then heals everything it broke.
    fn run(&mut self, deadline: Instant, stop: &AtomicBool);
    /// What it did, one line per fault.
    fn log(&self) -> &[String];
}

/// Sleeps until `t`, waking early if `stop` is set; false if it was.
fn sleep_until(t: Instant, stop: &AtomicBool) -> bool {
    while Instant::now() < t {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        std::thread::sleep((t - Instant::now()).min(Duration::from_millis(20)));
    }
    true
}

/// Rejoins every node that says it is broken (after a run: every node serving again).
fn heal(nodes: &Nodes) {
    for (i, node) in nodes.iter().enumerate() {
        for _ in 0..100 {
            match node.broken() {
                None => break,
                Some(why) => {
                    if let Err(e) = node.rejoin(&why) {
                        tracing::warn!(node = i + 1, error = %e, "rejoin after the run");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    }
}

/// Kinds of compute-node faults in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeFault {
    Crash,
    Leave,
}

/// Crashes or removes compute nodes of this process at random moments.
pub struct ComputeFaults {
    nodes: Nodes,
    kinds: Vec<ComputeFault>,
    rng: StdRng,
    /// Mean time between faults.
    every: Duration,
    log: Vec<String>,
}

impl ComputeFaults {
    pub fn new(nodes: Nodes, kinds: Vec<ComputeFault>, every: Duration, seed: u64) -> Self {
        ComputeFaults {
            nodes,
            kinds,
            rng: StdRng::seed_from_u64(seed ^ 0x4e45_4d45_5349_5321),
            every,
            log: Vec::new(),
        }
    }
}

impl Nemesis for ComputeFaults {
    fn run(&mut self, deadline: Instant, stop: &AtomicBool) {
        let t0 = Instant::now();
        loop {
            let wait = self.every.mul_f64(self.rng.gen_range(0.5..1.5));
            let at = Instant::now() + wait;
            if at >= deadline || !sleep_until(at, stop) || self.kinds.is_empty() {
                break;
            }
            let i = self.rng.gen_range(0..self.nodes.len());
            let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
            let node = &self.nodes[i];
            let what = match kind {
                ComputeFault::Crash => "crash (connections cut, no write-back)",
                ComputeFault::Leave => "leave (lease given up)",
            };
            if kind == ComputeFault::Leave {
                let _ = node.engine().gtm().leave();
                std::thread::sleep(Duration::from_millis(self.rng.gen_range(0..50)));
            }
            let r = node.rejoin(what);
            self.log.push(format!(
                "{:>7.3}s compute-{}: {what}; rejoin {}",
                t0.elapsed().as_secs_f64(),
                i + 1,
                match r {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("failed: {e}"),
                }
            ));
        }
        // Heal: every node serving again.
        heal(&self.nodes);
    }

    fn log(&self) -> &[String] {
        &self.log
    }
}

/// Crashes and restarts the storage nodes of an [`EmbeddedCluster`] at random moments.
pub struct StorageFaults<'a> {
    cluster: &'a mut EmbeddedCluster,
    nodes: Nodes,
    rng: StdRng,
    every: Duration,
    log: Vec<String>,
}

impl<'a> StorageFaults<'a> {
    pub fn new(cluster: &'a mut EmbeddedCluster, nodes: Nodes, every: Duration, seed: u64) -> Self {
        StorageFaults {
            cluster,
            nodes,
            rng: StdRng::seed_from_u64(seed ^ 0x5354_4f52_4147_4521),
            every,
            log: Vec::new(),
        }
    }
}

impl Nemesis for StorageFaults<'_> {
    fn run(&mut self, deadline: Instant, stop: &AtomicBool) {
        let t0 = Instant::now();
        let storages = self.cluster.storage_endpoints().len();
        loop {
            let wait = self.every.mul_f64(self.rng.gen_range(0.5..1.5));
            let at = Instant::now() + wait;
            if at >= deadline || !sleep_until(at, stop) {
                break;
            }
            let i = self.rng.gen_range(0..storages);
            let down = Duration::from_millis(self.rng.gen_range(0..200));
            let r = self.cluster.crash_storage_node_for(i, down);
            self.log.push(format!(
                "{:>7.3}s storage-{i}: crash, down {} ms, restart {}",
                t0.elapsed().as_secs_f64(),
                down.as_millis(),
                match r {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("failed: {e}"),
                }
            ));
        }
        // Heal: a node whose reclaim was refused (it came back too late) rejoins.
        heal(&self.nodes);
        let rejoins: u64 = self.nodes.iter().map(|n| n.rejoins()).sum();
        let reclaimed: u64 = self
            .nodes
            .iter()
            .map(|n| {
                n.engine()
                    .pager()
                    .stats
                    .locks_reclaimed
                    .load(Ordering::Relaxed)
            })
            .sum();
        self.log.push(format!(
            "compute-node rejoins: {rejoins}; X locks reclaimed: {reclaimed}"
        ));
    }

    fn log(&self) -> &[String] {
        &self.log
    }
}

/// Kinds of process faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessFault {
    KillCompute,
    PauseCompute,
    KillStorage,
    KillGtm,
}

/// Kills, pauses and restarts the services of a [`ProcessCluster`].
pub struct ProcessFaults<'a> {
    cluster: &'a mut ProcessCluster,
    compute_nodes: usize,
    kinds: Vec<ProcessFault>,
    rng: StdRng,
    every: Duration,
    /// How long a paused node stays stopped (past its lease).
    pause: Duration,
    log: Vec<String>,
}

impl<'a> ProcessFaults<'a> {
    pub fn new(
        cluster: &'a mut ProcessCluster,
        compute_nodes: usize,
        kinds: Vec<ProcessFault>,
        every: Duration,
        pause: Duration,
        seed: u64,
    ) -> Self {
        ProcessFaults {
            cluster,
            compute_nodes,
            kinds,
            rng: StdRng::seed_from_u64(seed ^ 0x5052_4f43_4553_5321),
            every,
            pause,
            log: Vec::new(),
        }
    }

    fn restart(&mut self, name: &str, down: Duration) -> String {
        if let Err(e) = self.cluster.kill(name) {
            return format!("kill failed: {e}");
        }
        std::thread::sleep(down);
        match self.cluster.start_service(name) {
            Ok(d) => format!("killed; back after {:.2}s", (down + d).as_secs_f64()),
            Err(e) => format!("restart failed: {e}"),
        }
    }
}

impl Nemesis for ProcessFaults<'_> {
    fn run(&mut self, deadline: Instant, stop: &AtomicBool) {
        use nix::sys::signal::Signal;
        let t0 = Instant::now();
        loop {
            let wait = self.every.mul_f64(self.rng.gen_range(0.5..1.5));
            let at = Instant::now() + wait;
            if at >= deadline || !sleep_until(at, stop) || self.kinds.is_empty() {
                break;
            }
            let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
            let compute = format!("compute-{}", self.rng.gen_range(1..=self.compute_nodes));
            let down = Duration::from_millis(self.rng.gen_range(100..800));
            let (who, what) = match kind {
                ProcessFault::KillCompute => {
                    let r = self.restart(&compute, down);
                    (compute, r)
                }
                ProcessFault::KillStorage => {
                    ("storage-0".to_string(), self.restart("storage-0", down))
                }
                ProcessFault::KillGtm => ("gtm".to_string(), self.restart("gtm", down)),
                ProcessFault::PauseCompute => {
                    let r = match self.cluster.signal(&compute, Signal::SIGSTOP) {
                        Ok(()) => {
                            std::thread::sleep(self.pause);
                            match self.cluster.signal(&compute, Signal::SIGCONT) {
                                Ok(()) => format!("paused {:.1}s", self.pause.as_secs_f64()),
                                Err(e) => format!("SIGCONT failed: {e}"),
                            }
                        }
                        Err(e) => format!("SIGSTOP failed: {e}"),
                    };
                    (compute, r)
                }
            };
            self.log.push(format!(
                "{:>7.3}s {who}: {what}",
                t0.elapsed().as_secs_f64()
            ));
        }
    }

    fn log(&self) -> &[String] {
        &self.log
    }
}
