//! Where the driver's transactions run: a [`Target`] loads the database, runs one
//! attempt of a transaction on one of its nodes, checks the consistency conditions and
//! tells which acknowledged New-Orders it cannot find.
//!
//! * [`EngineTarget`] — compute nodes in this process (the embedded cluster): the
//!   transaction code of [`tpcc_workload`] runs directly.
//! * [`crate::remote::RemoteTarget`] — compute-node services over gRPC: the same code
//!   runs server-side as stored procedures (`--cluster spawn`, `--connect`).
//! * [`crate::pg::PgTarget`] — PostgreSQL over SQL (`--target postgres://...`).

use crate::check::{self, CheckResult};
use crate::load::{Loader, Scale};
use crate::random::NuRandConstants;
use crate::schema::{key, Tables};
use crate::transactions::{self as tx, Input, Locking, Mode, Outcome};
use anyhow::{Context, Result};
use compute_node::node::ComputeNode;
use compute_node::txn::TxnError;
use std::fmt;

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub enum AttemptError {
    /// A conflict (write-write, wait-die victim, serialization failure, deadlock
    /// victim): run the same inputs again after a back-off. `chain_full` marks the
    /// engine's "snapshot too old" on an over-long version chain, which clears only
    /// when the GC watermark moves (the driver waits longer).
    Retryable { msg: String, chain_full: bool },
    /// The node cannot serve right now (restarting, fenced, link down): the
    /// transaction's fate is unknown; it is not acknowledged, and the driver retries
    /// it until the node is back (or its patience runs out).
    Unavailable(String),
    /// Anything else ends the run.
    Fatal(String),
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Retryable { msg, .. } => write!(f, "retryable: {msg}"),
            AttemptError::Unavailable(m) => write!(f, "unavailable: {m}"),
            AttemptError::Fatal(m) => f.write_str(m),
        }
    }
}

/// Whether a retryable error is the engine's "snapshot too old" on an over-long version
/// chain (embedded or relayed over gRPC, the message says so).
pub fn is_chain_full(msg: &str) -> bool {
    msg.contains("snapshot too old")
}

impl From<TxnError> for AttemptError {
    fn from(e: TxnError) -> Self {
        let chain_full = matches!(&e, TxnError::Conflict(m) if is_chain_full(m));
        if e.is_retryable() || chain_full {
            AttemptError::Retryable {
                msg: e.to_string(),
                chain_full,
            }
        } else if matches!(
            e,
            TxnError::Fenced(_) | TxnError::Storage(_) | TxnError::Gtm(_)
        ) || e.is_unknown()
        {
            // An unknown commit outcome (e.g. the GTM restarted mid-commit) is handled
            // like an unavailable node, as before it had a kind of its own: not
            // acknowledged, run again (at least once; resolving it first would make it
            // exactly once, see `Engine::resolve_outcome`).
            AttemptError::Unavailable(e.to_string())
        } else {
            AttemptError::Fatal(e.to_string())
        }
    }
}

/// How a target's transactions read and lock, for the report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModeReport {
    /// E.g. `snapshot`, `read committed`, `repeatable read`.
    pub isolation: String,
    /// E.g. `for-update (wound-wait)`, `plain (first updater wins)`.
    pub locking: String,
}

impl ModeReport {
    /// An engine's: `mode` as the harness asked for it, `policy` the nodes' wait policy.
    pub fn of_engine(mode: &Mode, policy: &str) -> ModeReport {
        ModeReport {
            isolation: match mode.isolation {
                None => "node default".into(),
                Some(compute_node::txn::Isolation::Snapshot) => "snapshot".into(),
                Some(compute_node::txn::Isolation::ReadCommitted) => "read committed".into(),
            },
            locking: match mode.locking {
                Locking::ForUpdate => format!("for-update ({policy})"),
                Locking::Plain => format!("plain (first updater wins, {policy})"),
            },
        }
    }
}

/// What the loader is asked to load.
#[derive(Clone, Copy, Debug)]
pub struct LoadRequest {
    pub scale: Scale,
    pub c_load: NuRandConstants,
    pub seed: u64,
    /// Loader threads (per node for remote targets).
    pub threads: usize,
    pub progress: bool,
}

/// An acknowledged New-Order: (warehouse, district, order id).
pub type OrderId = (u32, u32, u32);

pub trait Target: Sync {
    /// Places terminals can be bound to (compute nodes; 1 for PostgreSQL).
    fn nodes(&self) -> usize;
    /// Creates the schema and loads the initial population; returns rows written.
    fn load(&self, req: &LoadRequest) -> Result<u64>;
    /// The twelve consistency conditions of clause 3.3.2.
    fn checks(&self, warehouses: u32, delivery_ran: bool) -> Result<Vec<CheckResult>>;
    /// One attempt of `input` on node `node` (0-based): begin, profile, commit.
    fn attempt(
        &self,
        node: usize,
        input: &Input,
        now: u64,
        history_key: (u32, u64),
    ) -> Result<Outcome, AttemptError>;
    /// The orders of `acked` that the database does not have (must be none).
    fn missing_orders(&self, acked: &[OrderId]) -> Result<Vec<OrderId>>;
    /// Per node, the engine's coherence and commit counters so far (empty where the
    /// target cannot tell: remote nodes, PostgreSQL).
    fn counters(&self) -> Vec<NodeCounters> {
        Vec::new()
    }
    /// The isolation level and row locking its transactions run with, as the report
    /// states them.
    fn txn_mode(&self) -> ModeReport;
    /// CPU time (user + system) of the processes that serve the target so far, in
    /// seconds, if known (the embedded cluster: this process).
    fn cpu_seconds(&self) -> Option<f64> {
        None
    }
    /// Each reachable compute node's buffer-pool occupancy now (`--events` lines
    /// `pool`: a soak test tells a pool filling up to its configured size from a leak).
    /// May block for a node's RPC timeout; called from a thread of its own.
    fn pools(&self) -> Vec<PoolSample> {
        Vec::new()
    }
}

/// One compute node's buffer pool at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolSample {
    pub node_id: u32,
    /// The node's incarnation (a rejoin starts an empty pool).
    pub epoch: u64,
    /// Frames holding a page.
    pub resident: u64,
    pub capacity: u64,
    /// Bytes of one page image.
    pub page_bytes: u64,
}

/// One compute node's counters (cumulative; the driver subtracts the values at the
/// start of the measurement window from those at its end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeCounters {
    /// Transactions that committed (read-only ones included).
    pub committed: u64,
    pub validation_rounds: u64,
    /// Cached pages confirmed by rounds (notice re-checks and full rounds).
    pub pages_validated: u64,
    /// Change notices read by rounds.
    pub notices: u64,
    /// Rounds that checked every cached page.
    pub full_rounds: u64,
    /// Pages confirmed one at a time (one round trip each).
    pub single_validations: u64,
    /// Page images read from a storage node.
    pub page_fetches: u64,
    /// Write-backs asked of other nodes' X holders.
    pub write_back_requests: u64,
    /// Revocations this node served (another node wanted one of its pages).
    pub revocations_served: u64,
    /// Page images this node wrote back.
    pub write_backs: u64,
    pub lock_acquires: u64,
    /// Append-and-force requests (one storage-node fsync round each).
    pub redo_forces: u64,
    /// Redo records (page changes), their bytes, and those that are whole page images.
    pub redo_records: u64,
    pub redo_bytes: u64,
    pub redo_images: u64,
    /// Messages to the GTM (each carries one or more requests) and one-sided reads
    /// of its status table.
    pub gtm_messages: u64,
    pub gtm_status_reads: u64,
}

impl NodeCounters {
    /// Reads `node`'s counters.
    pub fn of(node: &ComputeNode) -> NodeCounters {
        let engine = node.engine();
        let p = &engine.pager().stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let gtm = engine.gtm().connection().stats();
        NodeCounters {
            committed: l(&engine.stats.committed),
            validation_rounds: l(&p.validation_rounds),
            pages_validated: l(&p.pages_validated),
            notices: l(&p.notices),
            full_rounds: l(&p.full_rounds),
            single_validations: l(&p.single_validations),
            page_fetches: l(&p.fetches),
            write_back_requests: l(&p.write_back_requests),
            revocations_served: l(&p.revocations),
            write_backs: l(&p.write_backs),
            lock_acquires: l(&p.lock_acquires),
            redo_forces: l(&p.redo_forces),
            redo_records: l(&p.redo_records),
            redo_bytes: l(&p.redo_bytes),
            redo_images: l(&p.redo_images),
            gtm_messages: gtm.messages,
            gtm_status_reads: gtm.onesided_batches,
        }
    }

    /// `self - earlier`, field by field (a counter that went backwards, as after a
    /// rejoin with fresh counters, counts from 0).
    pub fn since(&self, earlier: &NodeCounters) -> NodeCounters {
        let d = |a: u64, b: u64| a.checked_sub(b).unwrap_or(a);
        NodeCounters {
            committed: d(self.committed, earlier.committed),
            validation_rounds: d(self.validation_rounds, earlier.validation_rounds),
            pages_validated: d(self.pages_validated, earlier.pages_validated),
            notices: d(self.notices, earlier.notices),
            full_rounds: d(self.full_rounds, earlier.full_rounds),
            single_validations: d(self.single_validations, earlier.single_validations),
            page_fetches: d(self.page_fetches, earlier.page_fetches),
            write_back_requests: d(self.write_back_requests, earlier.write_back_requests),
            revocations_served: d(self.revocations_served, earlier.revocations_served),
            write_backs: d(self.write_backs, earlier.write_backs),
            lock_acquires: d(self.lock_acquires, earlier.lock_acquires),
            redo_forces: d(self.redo_forces, earlier.redo_forces),
            redo_records: d(self.redo_records, earlier.redo_records),
            redo_bytes: d(self.redo_bytes, earlier.redo_bytes),
            redo_images: d(self.redo_images, earlier.redo_images),
            gtm_messages: d(self.gtm_messages, earlier.gtm_messages),
            gtm_status_reads: d(self.gtm_status_reads, earlier.gtm_status_reads),
        }
    }

    /// `(name, count)` of every counter except `committed`, in report order.
    pub fn fields(&self) -> [(&'static str, u64); 16] {
        [
            ("validation_rounds", self.validation_rounds),
            ("pages_validated", self.pages_validated),
            ("notices", self.notices),
            ("full_rounds", self.full_rounds),
            ("single_validations", self.single_validations),
            ("page_fetches", self.page_fetches),
            ("write_back_requests", self.write_back_requests),
            ("revocations_served", self.revocations_served),
            ("write_backs", self.write_backs),
            ("lock_acquires", self.lock_acquires),
            ("redo_forces", self.redo_forces),
            ("redo_records", self.redo_records),
            ("redo_bytes", self.redo_bytes),
            ("redo_images", self.redo_images),
            ("gtm_messages", self.gtm_messages),
            ("gtm_status_reads", self.gtm_status_reads),
        ]
    }
}

/// CPU time of this process (user + system), seconds.
pub fn process_cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(tv(u.user_time()) + tv(u.system_time()))
}

/// CPU time (user + system) of process `pid` so far, seconds, from `/proc/PID/stat`.
pub fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its ')'):
    // state is field 3, utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)?;
    Some(ticks as f64 / hz as f64)
}

/// Compute nodes in this process.
pub struct EngineTarget<'a> {
    nodes: &'a [ComputeNode],
    tables: Vec<Tables>,
    mode: Mode,
}

impl<'a> EngineTarget<'a> {
    /// Creates the schema (once) and opens every table on every node.
    pub fn new(nodes: &'a [ComputeNode], mode: Mode) -> Result<EngineTarget<'a>> {
        anyhow::ensure!(!nodes.is_empty(), "no compute nodes");
        Tables::ensure(&nodes[0]).context("creating the schema")?;
        let tables = nodes
            .iter()
            .map(Tables::ensure)
            .collect::<Result<Vec<_>, _>>()
            .context("opening the schema")?;
        Ok(EngineTarget {
            nodes,
            tables,
            mode,
        })
    }
}

impl Target for EngineTarget<'_> {
    fn nodes(&self) -> usize {
        self.nodes.len()
    }

    fn load(&self, req: &LoadRequest) -> Result<u64> {
        let n = self.nodes.len();
        let w = req.scale.warehouses;
        let node_of = |wh: u32| crate::driver::partition_of(wh, w, n);
        let rows = Loader {
            nodes: self.nodes,
            tables: &self.tables,
            node_of: &node_of,
            scale: req.scale,
            only: None,
            c_load: req.c_load,
            seed: req.seed,
            threads: req.threads,
            progress: req.progress,
        }
        .run()?;
        // A bulk load ends with its pages written back and their locks given up (as a
        // load finished long before the run would have), so the run starts with no
        // page X-held by the node that happened to load it.
        for (i, node) in self.nodes.iter().enumerate() {
            node.release_page_locks().with_context(|| {
                format!("compute node {} releasing the load's page locks", i + 1)
            })?;
        }
        Ok(rows)
    }

    fn checks(&self, warehouses: u32, delivery_ran: bool) -> Result<Vec<CheckResult>> {
        check::run_checks(&self.nodes[0], warehouses, delivery_ran)
    }

    fn attempt(
        &self,
        node: usize,
        input: &Input,
        now: u64,
        history_key: (u32, u64),
    ) -> Result<Outcome, AttemptError> {
        tx::run_once(
            &self.nodes[node],
            &self.tables[node],
            input,
            now,
            history_key,
            self.mode,
        )
        .map_err(AttemptError::from)
    }

    fn txn_mode(&self) -> ModeReport {
        let policy = match self.nodes[0].engine().config().wait_policy {
            compute_node::mvcc::WaitPolicy::WoundWait => "wound-wait",
            compute_node::mvcc::WaitPolicy::WaitDie => "wait-die",
            compute_node::mvcc::WaitPolicy::NoWait => "no-wait",
        };
        ModeReport::of_engine(&self.mode, policy)
    }

    fn missing_orders(&self, acked: &[OrderId]) -> Result<Vec<OrderId>> {
        let node = &self.nodes[0];
        let t = &self.tables[0];
        let mut missing = Vec::new();
        for chunk in acked.chunks(1000) {
            let mut txn = node.begin()?;
            for &(w, d, o) in chunk {
                if txn.get(&t.orders, &key::order(w, d, o))?.is_none() {
                    missing.push((w, d, o));
                }
            }
            txn.abort()?;
        }
        Ok(missing)
    }

    fn counters(&self) -> Vec<NodeCounters> {
        self.nodes.iter().map(NodeCounters::of).collect()
    }

    fn pools(&self) -> Vec<PoolSample> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let engine = n.engine();
                let pool = engine.pager().pool();
                PoolSample {
                    node_id: i as u32 + 1,
                    epoch: engine
                        .gtm()
                        .registration()
                        .map_or(0, |r| u64::from(r.epoch.0)),
                    resident: pool.resident() as u64,
                    capacity: pool.capacity() as u64,
                    page_bytes: common::storage::page::PAGE_SIZE as u64,
                }
            })
            .collect()
    }

    fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds()
    }
}
