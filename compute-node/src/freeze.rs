//! The freeze sweep, compute side: stamp every old row version so the GTM can forget
//! old outcomes (the protocol and why it is safe: `gtm::freeze`).
//!
//! Every compute node runs a [`FreezeThread`] that asks the GTM every
//! `freeze_poll_ms` whether a sweep is due (`GtmClient::freeze_target`). The GTM grants
//! one sweep at a time, with a target `T` below which every txn has ended. The node
//! then walks every table of the catalog in key order, in batches: a lock-free scan
//! picks the rows whose chain holds an unstamped version of a txn below `T`
//! ([`Chain::needs_freeze`]), and their leaves are rewritten a leaf at a time
//! ([`BTree::rewrite_leaf`]: one latch, one publish and one redo record for all of a
//! leaf's rows, which a stamp changes by 8 bytes each, in place) with
//! [`Chain::freeze`] (stamp, drop aborted versions and finished locks; a chain left
//! with nothing visible is removed) through the normal page-write path (X lock, redo).
//! After each batch the node forces its redo; at most once a second it then reports
//! how far it got to the GTM (`GtmClient::freeze_progress`, a [`SweepPoint`]), which
//! keeps the point durably with the grant. A sweep cut short by a fault (of this node,
//! a storage node or the GTM) resumes at the last point the GTM acknowledged, on
//! whichever node the GTM hands the grant to next (`gtm::freeze`, "Resuming a sweep").
//! When every table is done it reports `Frozen { below: T }`.
//!
//! Why the scan finds every such row: every version below `T` was written before the
//! GTM chose `T` (its writer had ended), so before the sweep began; a row's chain only
//! moves to a key-ordered neighbour (a B-link split moves the upper half right, which
//! the scan reaches later), and a rewrite by a newer txn stamps or keeps versions,
//! never unstamps one. The rewrite itself re-reads the chain under the latch, so a
//! stale scan image only costs a rewrite that finds nothing to do.
//!
//! Tables are what the catalog lists: a tree made with `Engine::create_tree` and never
//! entered in the catalog is not swept, and must not hold row versions.

use crate::btree::{BTree, Rewrite, MAX_ENTRY_LEN};
use crate::catalog::Catalog;
use crate::mvcc::MvccError;
use crate::mvcc::{encoded_needs_freeze, Chain};
use crate::pager::Pager;
use crate::txn::{Engine, Table, TxnError};
use common::gtm::SweepPoint;
use common::ids::TxnId;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Rows rewritten per batch (one redo force each).
const BATCH: usize = 256;
/// Least time between two progress reports to the GTM (each costs it an fsync).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Wait before asking again after a sweep failed (a storage node restarting, say).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub tables: u64,
    pub rows_scanned: u64,
    pub rows_rewritten: u64,
    pub rows_removed: u64,
}

/// Where a sweep's durable progress goes: called after a batch's redo is forced, with
/// the point everything before is swept to. An error ends the sweep (the grant is
/// not this node's any more, or the GTM cannot be reached).
pub type Report<'a> = dyn FnMut(&SweepPoint) -> Result<(), TxnError> + 'a;

/// Stamps every version of a txn below `below` in every table of `catalog` (every
/// such txn must have ended) and makes it durable, going on after `resume`. `stop`
/// ends it early (an error). `report` hears of the progress, at most once per
/// `report_every` (the sweeper's: [`REPORT_EVERY`]).
pub fn sweep(
    engine: &Engine,
    catalog: &Catalog,
    below: TxnId,
    resume: &SweepPoint,
    stop: &AtomicBool,
    report_every: Duration,
    report: &mut Report<'_>,
) -> Result<SweepStats, TxnError> {
    let mut stats = SweepStats::default();
    if *resume == SweepPoint::Done {
        return Ok(stats);
    }
    let mut reporter = Throttled {
        report,
        every: report_every,
        last: Instant::now(),
    };
    for table in catalog.tables()? {
        let after = match resume {
            SweepPoint::In { table: t, .. } if table.name < *t => continue,
            SweepPoint::In { table: t, after } if table.name == *t => after.clone(),
            _ => None,
        };
        sweep_table(
            engine,
            &table,
            below,
            stop,
            &mut stats,
            after,
            &mut reporter,
        )?;
        stats.tables += 1;
    }
    Ok(stats)
}

fn mvcc_failure(table: &Table, e: MvccError) -> TxnError {
    TxnError::Storage(format!("freeze sweep of {}: {e}", table.name))
}

struct Throttled<'r, 'a> {
    report: &'r mut Report<'a>,
    every: Duration,
    last: Instant,
}

impl Throttled<'_, '_> {
    fn progress(&mut self, table: &str, after: &[u8]) -> Result<(), TxnError> {
        if self.last.elapsed() < self.every {
            return Ok(());
        }
        self.last = Instant::now();
        (self.report)(&SweepPoint::In {
            table: table.to_string(),
            after: Some(after.to_vec()),
        })
    }
}

fn sweep_table(
    engine: &Engine,
    table: &Table,
    below: TxnId,
    stop: &AtomicBool,
    stats: &mut SweepStats,
    mut after: Option<Vec<u8>>,
    reporter: &mut Throttled<'_, '_>,
) -> Result<(), TxnError> {
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(TxnError::Storage("freeze sweep stopped".into()));
        }
        let view = Arc::new(engine.pager().view()?);
        let tree = BTree::open(view.clone() as Arc<dyn Pager>, table.meta)?;
        let lo = match &after {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Unbounded,
        };
        // Scan until BATCH candidates or 16 x BATCH rows, whichever comes first.
        let mut keys = Vec::new();
        let mut last = None;
        let mut scanned = 0u64;
        tree.scan((lo, Bound::Unbounded), false, None, |k, v| {
            scanned += 1;
            last = Some(k.to_vec());
            if encoded_needs_freeze(v, below) {
                keys.push(k.to_vec());
            }
            Ok::<_, TxnError>(keys.len() < BATCH && scanned < 16 * BATCH as u64)
        })?;
        stats.rows_scanned += scanned;
        let watermark = engine.gc_watermark();
        // One latch and one publish per leaf: the first candidate's leaf is rewritten
        // from that candidate on, and the candidates below where it stopped (its high
        // key, or an entry it left for the next round) are done with it.
        let mut next = 0;
        while let Some(key) = keys.get(next) {
            let went_to = tree.rewrite_leaf(key, |k, v| -> Result<Rewrite, TxnError> {
                let mut chain = Chain::decode(v)
                    .map_err(|e| TxnError::Corrupt(format!("{}: {e}", table.name)))?;
                if !chain
                    .freeze(below, watermark, engine.oracle())
                    .map_err(|e| mvcc_failure(table, e))?
                {
                    return Ok(Rewrite::Keep);
                }
                if chain.is_dead(watermark) {
                    stats.rows_removed += 1;
                    return Ok(Rewrite::Remove);
                }
                chain
                    .fit(MAX_ENTRY_LEN.saturating_sub(k.len()))
                    .map_err(|e| mvcc_failure(table, e))?;
                stats.rows_rewritten += 1;
                Ok(Rewrite::Put(chain.encode()))
            })?;
            next += 1;
            match went_to {
                Some(h) => {
                    while keys.get(next).is_some_and(|k| k.as_slice() < h.as_slice()) {
                        next += 1;
                    }
                }
                None => break,
            }
        }
        view.force_redo()?;
        match last {
            Some(k) if scanned > 0 => {
                // Durable up to `k`: a sweep for the same target may start after it.
                reporter.progress(&table.name, &k)?;
                after = Some(k);
            }
            _ => return Ok(()),
        }
        // Let transactions have the cores between batches.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The node's sweeper: asks the GTM every `poll` whether to sweep, sweeps, reports.
/// Stops when dropped.
pub struct FreezeThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl FreezeThread {
    pub fn spawn(engine: Arc<Engine>, catalog: Arc<Catalog>, poll: Duration) -> FreezeThread {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("freeze-sweep".into())
            .spawn(move || run(&engine, &catalog, poll, &s))
            .map_err(|e| tracing::error!(error = %e, "cannot start the freeze sweeper"))
            .ok();
        FreezeThread { stop, handle }
    }
}

impl FreezeThread {
    /// Asks the thread to stop (a running sweep ends after its batch).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = &self.handle {
            h.thread().unpark();
        }
    }
}

impl Drop for FreezeThread {
    /// Stops the thread without waiting for it: a batch in flight may wait on a dead
    /// service for an RPC timeout, and a rejoin must not (the thread owns what it uses).
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(engine: &Engine, catalog: &Catalog, poll: Duration, stop: &AtomicBool) {
    let mut wait = poll;
    loop {
        std::thread::park_timeout(wait);
        wait = poll;
        if stop.load(Ordering::Acquire) || engine.gtm().connection().is_closed() {
            return;
        }
        let (below, resume) = match engine.gtm().freeze_target() {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "freeze target");
                continue;
            }
        };
        let started = Instant::now();
        let mut report = |point: &SweepPoint| {
            engine
                .gtm()
                .freeze_progress(below, point)
                .map_err(|e| TxnError::Storage(format!("freeze sweep progress: {e}")))
        };
        match sweep(
            engine,
            catalog,
            below,
            &resume,
            stop,
            REPORT_EVERY,
            &mut report,
        ) {
            Ok(st) => match engine.gtm().frozen(below) {
                Ok(()) => {
                    engine.count_freeze(&st);
                    tracing::info!(%below, ?resume, ?st,
                        took_ms = started.elapsed().as_millis() as u64, "freeze sweep done");
                }
                Err(e) => tracing::warn!(error = %e, %below, "freeze sweep report refused"),
            },
            Err(e) => {
                // The grant stays this node's for its lease: ask again soon and resume
                // at the last point the GTM kept.
                wait = RETRY_AFTER.min(poll);
                tracing::warn!(error = %e, %below, "freeze sweep failed; it resumes where it stopped")
            }
        }
    }
}
