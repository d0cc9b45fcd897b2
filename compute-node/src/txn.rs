//! Transactions: the embedding API's engine (docs/protocols.md §5,
//! invariants 2, 3, 4, 6).
//!
//! * `begin`: a transaction id and snapshot from the GTM, then a coherence view taken
//!   *after* the snapshot (so every page it reads is at least as new as the snapshot
//!   needs, invariant 2).
//! * Reads walk a table's B-link tree through the view and pick the visible row version
//!   ([`crate::mvcc`]); writes append a version to the row's chain under the leaf's
//!   page latch (the global X lock), first updater wins; a writer meeting another's
//!   uncommitted version waits or aborts by the node's wait policy (wound-wait by
//!   default, [`crate::mvcc::WaitPolicy`]).
//! * `commit`: the transaction's redo is forced on every storage node it touched (one
//!   group-committed force each, in parallel), then the commit record is written at the
//!   GTM, then the caller hears "committed" (invariant 3). A lease that may have run out
//!   fences the commit before it is sent (invariant 6).
//! * A conflict's victim (wait-die, no-wait) can [`Txn::abort_and_wait`]: abort first (holding
//!   nothing, it cannot close a wait cycle), then wait until the writer it died on has
//!   finished, so the retry starts after that writer instead of after a blind back-off.
//! * `abort`: the status becomes Aborted at the GTM; the versions stay and are invisible
//!   (invariant 4) until a later change of their page prunes them.
//!
//! Read committed takes a fresh snapshot (and view) per statement.
//!
//! ## Commit outcomes: definite and unknown
//!
//! A failed [`Txn::commit`] either proves that the transaction did not commit — it was
//! aborted (the abort won the GTM's compare-and-set, [`TxnError::Conflict`]), or the
//! commit was refused before anything was decided: the local lease fence or the GTM's
//! lease check ([`TxnError::Fenced`]), a redo force that failed before the commit was
//! sent ([`TxnError::Storage`]), a GTM that did not know the transaction as this node's
//! ([`TxnError::Gtm`]) — or it returns [`TxnError::Unknown`]: the commit request may
//! have reached the GTM, but no decision came back (a GTM timeout, a lost connection, a
//! garbled answer, a commit-log failure at the GTM). After a definite failure the
//! transaction is aborted at the GTM (best effort; a failed abort is retried at the next
//! `begin`), so it does not linger until the lease runs out.
//!
//! An unknown outcome is **not** retryable ([`TxnError::is_retryable`] is false,
//! [`TxnError::is_unknown`] true): running the transaction again could apply it twice.
//! The caller must first resolve it by its id, [`Engine::resolve_outcome`] (or
//! `ComputeNode::resolve_outcome`, or the `ResolveOutcome` RPC), on this or any other
//! compute node:
//!
//! * [`Resolved::Committed`]`(cts)`: it committed; do not run it again;
//! * [`Resolved::Aborted`]: it did not commit and never will; run it again if wanted;
//! * another `Unknown` error: the GTM could not be asked (or the commit record is still
//!   on its way to disk); nothing was decided, call `resolve_outcome` again later.
//!
//! The answer is final: a transaction the GTM shows in progress (or does not show at
//! all, its commit request still on the way) is aborted at the GTM by compare-and-set,
//! so a commit request that arrives later loses; one it shows committing is waited for;
//! retired ones are looked up in the GTM's outcome index. The GTM accepts an abort of
//! any node's transaction from any registered node, also a fenced one (aborting never
//! needs a lease), and keeps outcomes across its restarts (its commit log; whatever was
//! in progress at a crash is aborted), so resolution works from every node, after the
//! transaction's node rejoined with a new epoch, and after a GTM restart.

use crate::btree::{BTree, BTreeError};
use crate::coherence::{CoherentPager, TxnView};
use crate::mvcc::{Chain, LockRead, MvccError, StatusOracle, WaitPolicy, WriterState};
use crate::pager::{Pager, PagerError};
use common::gtm::{GtmClient, GtmError, TxnStatus};
use common::ids::{PageId, Timestamp, TxnId};
use dashmap::DashMap;
use parking_lot::Mutex;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use common::txn::{Isolation, Resolved};

/// Errors a transaction reports; [`TxnError::is_retryable`] tells the caller to run it
/// again from the start.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Write-write conflict, wait-die victim, or aborted by the GTM (lease expiry).
    #[error("retryable conflict: {0}")]
    Conflict(String),
    /// This node may no longer write (lease lost); reconnect.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("no such table: {0}")]
    NoSuchTable(String),
    #[error("table already exists: {0}")]
    TableExists(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("transaction already finished")]
    Finished,
    #[error("storage: {0}")]
    Storage(String),
    #[error("GTM: {0}")]
    Gtm(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The commit of `txn` may or may not have happened: the request may have reached
    /// the GTM, but no decision came back. Not retryable: resolve it first
    /// ([`Engine::resolve_outcome`]; see the module docs). `resolve_outcome` answers it
    /// too while it cannot reach a decision (call it again later).
    #[error("outcome of transaction {txn} unknown: {message} (resolve it by its id before running it again)")]
    Unknown { txn: TxnId, message: String },
}

impl TxnError {
    /// Abort (if still open) and run the transaction again from the start.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TxnError::Conflict(_))
    }

    /// The transaction's commit may have happened: resolve it by its id
    /// ([`TxnError::unknown_txn`]) before deciding whether to run it again.
    pub fn is_unknown(&self) -> bool {
        matches!(self, TxnError::Unknown { .. })
    }

    /// The transaction whose outcome is unknown, for an `Unknown` error.
    pub fn unknown_txn(&self) -> Option<TxnId> {
        match self {
            TxnError::Unknown { txn, .. } => Some(*txn),
            _ => None,
        }
    }
}

/// What a failed commit request says about the transaction.
enum CommitFailure {
    /// It did not commit and never will: the GTM aborted it (`Decided`), or the
    /// commit was refused — before it was sent, or by the GTM without a decision — and
    /// the transaction is still in progress at the GTM (`Refused`: abort it).
    Decided(TxnError),
    Refused(TxnError),
    /// The request may have reached the GTM and its commit may have won.
    Unknown(String),
}

/// Classifies every way `GtmClient::commit` can fail (no catch-all: a new variant must
/// be placed in one class or the other).
fn classify_commit_error(e: GtmError) -> Result<Timestamp, CommitFailure> {
    use common::fabric::FabricError as F;
    use CommitFailure::{Decided, Refused, Unknown};
    Err(match e {
        // Decided: an abort (explicit, a wound, lease expiry) won the compare-and-set.
        GtmError::Aborted => Decided(TxnError::Conflict("aborted by the GTM".into())),
        // Refused before anything was decided: by the local fence before sending, or by
        // the GTM's lease check, which precedes its compare-and-set.
        GtmError::Fenced(m) => Refused(TxnError::Fenced(m)),
        // Refused locally before sending.
        GtmError::NotRegistered => Refused(TxnError::Gtm(e.to_string())),
        // Refusals of the GTM that leave the transaction as it was: not this node's
        // (another node or epoch), not known, malformed, or no capacity (commits never
        // answer Busy today; a Busy answer would be a refusal before the CAS).
        GtmError::UnknownTxn(_) | GtmError::BadRequest(_) => Refused(TxnError::Gtm(e.to_string())),
        GtmError::Busy(m) => Refused(TxnError::Conflict(format!("GTM busy: {m}"))),
        // An abort's answer, never a commit's; if a GTM said it, the commit is durable.
        GtmError::AlreadyCommitted(ts) => return Ok(ts),
        // The GTM failed: it refuses commits after its commit log failed (before the
        // CAS), but a group whose log write failed *after* the CAS gets the same kind,
        // and its record may be on disk (recovery decides). Cannot be told apart.
        GtmError::Internal(_) => Unknown(e.to_string()),
        // An answer came that makes no sense: the request was received and handled.
        GtmError::Protocol(_) => Unknown(e.to_string()),
        // No answer in time: the request may be queued, handled, or lost.
        GtmError::Timeout(_) => Unknown(e.to_string()),
        GtmError::Fabric(ref f) => match f {
            // Refused by the client before anything was sent.
            F::TooLarge(_) | F::Unsupported(_) => Refused(TxnError::Gtm(e.to_string())),
            // The connection failed or went quiet: before, while or after the request
            // went out (a closed connection may have delivered it before closing), or the
            // server answered with a failure of its own.
            F::Io(_)
            | F::Disconnected
            | F::Timeout(_)
            | F::Refused(_)
            | F::Protocol(_)
            | F::Remote(_) => Unknown(e.to_string()),
        },
    })
}

impl From<PagerError> for TxnError {
    fn from(e: PagerError) -> Self {
        match e {
            PagerError::Fenced(m) => TxnError::Fenced(m),
            other => TxnError::Storage(other.to_string()),
        }
    }
}

impl From<GtmError> for TxnError {
    fn from(e: GtmError) -> Self {
        match e {
            GtmError::Aborted => TxnError::Conflict("aborted by the GTM".into()),
            GtmError::Fenced(m) => TxnError::Fenced(m),
            GtmError::Busy(m) => TxnError::Conflict(format!("GTM busy: {m}")),
            other => TxnError::Gtm(other.to_string()),
        }
    }
}

impl From<BTreeError> for TxnError {
    fn from(e: BTreeError) -> Self {
        match e {
            BTreeError::Pager(p) => p.into(),
            e @ (BTreeError::KeyTooLarge { .. } | BTreeError::EntryTooLarge { .. }) => {
                TxnError::BadRequest(e.to_string())
            }
            other => TxnError::Corrupt(other.to_string()),
        }
    }
}

/// A key and the row visible under it.
pub type Row = (Vec<u8>, Vec<u8>);

/// A table (or secondary index): a B-link tree identified by its meta page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub meta: PageId,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub isolation: Isolation,
    pub wait_policy: WaitPolicy,
    /// How long a writer (or locking reader) waits for a row's holder before it gives
    /// up with a retryable conflict.
    pub lock_wait: Duration,
    /// Wound-wait: how long an older transaction waits for a younger holder before it
    /// wounds it (aborts it at the GTM). Longer than a holder usually holds a row, so
    /// that only a wait cycle (a deadlock) costs an abort; that is also how long a
    /// deadlock can stall.
    pub wound_after: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            isolation: Isolation::Snapshot,
            wait_policy: WaitPolicy::WoundWait,
            lock_wait: Duration::from_secs(5),
            wound_after: Duration::from_millis(200),
        }
    }
}

/// Resolves writers through the GTM status table, caching final states.
struct Oracle {
    gtm: Arc<GtmClient>,
    resolved: DashMap<TxnId, WriterState>,
}

impl StatusOracle for Oracle {
    fn state_of(&self, w: TxnId) -> Result<WriterState, MvccError> {
        if let Some(s) = self.resolved.get(&w) {
            return Ok(*s);
        }
        let st = self
            .gtm
            .txn_status_batch(&[w])
            .map_err(|e| MvccError::Status(e.to_string()))?
            .pop()
            .ok_or_else(|| MvccError::Status("empty status answer".into()))?;
        let s = match st {
            TxnStatus::Committed(cts) => WriterState::Committed(cts),
            TxnStatus::Aborted => WriterState::Aborted,
            TxnStatus::InProgress | TxnStatus::Committing(_) => return Ok(WriterState::InProgress),
            TxnStatus::Retired => {
                return Err(MvccError::Status(format!(
                    "status of transaction {w} was retired before its versions were stamped"
                )))
            }
            TxnStatus::Unknown => return Ok(WriterState::InProgress),
        };
        self.learn(w, s);
        Ok(s)
    }
}

impl Oracle {
    /// The commit timestamp of `w` if this node already knows it committed (its own
    /// commit, or an outcome it looked up); never asks the GTM.
    pub fn known_commit(&self, w: TxnId) -> Option<Timestamp> {
        match self.resolved.get(&w).as_deref() {
            Some(WriterState::Committed(cts)) => Some(*cts),
            _ => None,
        }
    }

    /// Records a final outcome (from the GTM, or this node's own commit or abort: its
    /// readers then need no status read for this node's versions).
    fn learn(&self, w: TxnId, s: WriterState) {
        // A cache, bounded: at ~50 bytes an entry, 1M entries would grow a compute
        // node's RSS by ~50 MB before a clear; 64K recent writers cover the rows being
        // read (older versions are stamped by then, or by the next freeze sweep).
        if self.resolved.len() > 1 << 16 {
            self.resolved.clear();
        }
        self.resolved.insert(w, s);
    }
}

/// One compute node's transaction engine.
pub struct Engine {
    pager: Arc<CoherentPager>,
    gtm: Arc<GtmClient>,
    oracle: Oracle,
    config: EngineConfig,
    watermark: AtomicU64,
    watermark_at: Mutex<Instant>,
    /// Own transactions whose abort at the GTM failed (GTM unreachable for a moment):
    /// retried at the next `begin`, so they do not linger in progress, blocking writers,
    /// while this node's lease stays valid.
    pending_aborts: Mutex<Vec<TxnId>>,
    /// This node's open transactions that write: a writer that meets one of their
    /// versions waits on `writers_done` instead of polling the GTM for the outcome.
    writers: Mutex<std::collections::HashSet<TxnId>>,
    writers_done: parking_lot::Condvar,
    pub stats: EngineStats,
}

/// Most failed aborts kept for a retry (beyond, the GTM aborts them when this node's
/// epoch ends).
const MAX_PENDING_ABORTS: usize = 10_000;
/// Status lookups (each waits up to the GTM client's timeout for a committing
/// transaction) and abort attempts `resolve_outcome` makes before it answers `Unknown`.
const RESOLVE_ROUNDS: usize = 4;

#[derive(Default, Debug)]
pub struct EngineStats {
    pub begun: AtomicU64,
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub conflicts: AtomicU64,
    pub lock_waits: AtomicU64,
    /// Locking reads ([`Txn::get_for_update`]).
    pub lock_reads: AtomicU64,
    /// Younger holders this node's transactions wounded (wound-wait).
    pub wounds: AtomicU64,
    /// Commits that ended with an unknown outcome ([`TxnError::Unknown`]).
    pub unknown_outcomes: AtomicU64,
    /// Freeze sweeps this node ran and reported (`crate::freeze`).
    pub freeze_sweeps: AtomicU64,
    /// Row chains those sweeps rewrote (stamped) or removed.
    pub rows_frozen: AtomicU64,
}

impl Engine {
    pub fn new(
        pager: Arc<CoherentPager>,
        gtm: Arc<GtmClient>,
        config: EngineConfig,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            oracle: Oracle {
                gtm: gtm.clone(),
                resolved: DashMap::new(),
            },
            pager,
            gtm,
            config,
            watermark: AtomicU64::new(0),
            watermark_at: Mutex::new(Instant::now() - Duration::from_secs(60)),
            pending_aborts: Mutex::new(Vec::new()),
            writers: Mutex::new(std::collections::HashSet::new()),
            writers_done: parking_lot::Condvar::new(),
            stats: EngineStats::default(),
        })
    }

    pub fn pager(&self) -> &Arc<CoherentPager> {
        &self.pager
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn gtm(&self) -> &Arc<GtmClient> {
        &self.gtm
    }

    /// The status oracle (the GTM status table behind this node's cache).
    pub(crate) fn oracle(&self) -> &dyn StatusOracle {
        &self.oracle
    }

    pub(crate) fn count_freeze(&self, st: &crate::freeze::SweepStats) {
        self.stats.freeze_sweeps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .rows_frozen
            .fetch_add(st.rows_rewritten + st.rows_removed, Ordering::Relaxed);
    }

    pub(crate) fn gc_watermark(&self) -> Timestamp {
        let mut at = self.watermark_at.lock();
        if at.elapsed() > Duration::from_millis(200) {
            if let Ok(w) = self.gtm.published_gc_watermark() {
                self.watermark.store(w.0, Ordering::Relaxed);
            }
            *at = Instant::now();
        }
        Timestamp(self.watermark.load(Ordering::Relaxed))
    }

    /// Waits until `txn` is no longer in progress (true) or `deadline` passes (false).
    /// A writer of this node is waited for locally (woken when it ends: its outcome is
    /// then known here); any other is polled in the status table, fine-grained at first
    /// (a holder usually commits within a couple of log forces).
    pub fn wait_until_resolved(&self, txn: TxnId, deadline: Instant) -> Result<bool, TxnError> {
        self.wait_resolved_or_wounded(txn, None, deadline)
    }

    /// [`Engine::wait_until_resolved`] for a waiter `me` (if given) that a wound-wait
    /// wound may end: a wounded waiter stops waiting with a retryable conflict.
    fn wait_resolved_or_wounded(
        &self,
        txn: TxnId,
        me: Option<TxnId>,
        deadline: Instant,
    ) -> Result<bool, TxnError> {
        let wounded = |s: Option<TxnStatus>| {
            if s == Some(TxnStatus::Aborted) {
                Err(TxnError::Conflict(format!(
                    "wounded by an older transaction while waiting for transaction {txn}"
                )))
            } else {
                Ok(())
            }
        };
        {
            let mut w = self.writers.lock();
            if w.contains(&txn) {
                while w.contains(&txn) {
                    if let Some(me) = me {
                        // A wound by this node's transactions is learned here.
                        if self.oracle.resolved.get(&me).map(|s| *s) == Some(WriterState::Aborted) {
                            return wounded(Some(TxnStatus::Aborted)).map(|_| false);
                        }
                    }
                    if self.writers_done.wait_until(&mut w, deadline).timed_out() {
                        return Ok(!w.contains(&txn));
                    }
                }
                return Ok(true);
            }
        }
        let mut pause = Duration::from_micros(20);
        let ids: Vec<TxnId> = std::iter::once(txn).chain(me).collect();
        loop {
            let st = self.gtm.txn_status_batch_nowait(&ids)?;
            wounded(st.get(1).copied())?;
            match st.first() {
                Some(TxnStatus::InProgress) | Some(TxnStatus::Committing(_)) => {}
                _ => return Ok(true),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_micros(500));
        }
    }

    /// Wound-wait: aborts the younger `holder` at the GTM so the older waiter can go
    /// on. True if `holder` is now finished (wounded, or its commit had won); false if
    /// its commit is being decided (wait for it: it waits for nothing).
    fn wound(&self, holder: TxnId) -> Result<bool, TxnError> {
        match self.gtm.abort(holder) {
            Ok(()) => {
                self.stats.wounds.fetch_add(1, Ordering::Relaxed);
                self.oracle.learn(holder, WriterState::Aborted);
                // Waiters of this node wait for it locally: it no longer blocks them.
                if self.writers.lock().remove(&holder) {
                    self.writers_done.notify_all();
                }
                tracing::debug!(%holder, "wounded");
                Ok(true)
            }
            Err(GtmError::AlreadyCommitted(ts)) => {
                self.oracle.learn(holder, WriterState::Committed(ts));
                Ok(true)
            }
            // Committing: its commit record is on its way to disk.
            Err(GtmError::Busy(_)) => Ok(false),
            // Already ended and retired from the status table.
            Err(GtmError::UnknownTxn(_)) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    pub fn begin(self: &Arc<Self>) -> Result<Txn, TxnError> {
        self.begin_with(self.config.isolation)
    }

    pub fn begin_with(self: &Arc<Self>, isolation: Isolation) -> Result<Txn, TxnError> {
        self.gtm.check_lease()?;
        self.retry_pending_aborts();
        let (id, snapshot) = self.gtm.begin()?;
        // Commits that land between the snapshot and the view's tick must still be seen
        // (invariant 2): the tick is taken after the snapshot.
        fail::fail_point!("txn::after_snapshot");
        let view = match self.pager.view() {
            Ok(v) => Arc::new(v),
            Err(e) => {
                // Some storage node is gone (or restarted): nothing this node caches from
                // it can be trusted until it rejoins.
                let _ = self.abort_best_effort(id);
                return Err(e.into());
            }
        };
        self.stats.begun.fetch_add(1, Ordering::Relaxed);
        Ok(Txn {
            engine: self.clone(),
            id,
            snapshot,
            view,
            isolation,
            wrote: false,
            done: false,
            blocker: None,
            failed: None,
            registered: false,
        })
    }

    /// Aborts `txn` (one of this node's, never sent for commit) at the GTM; if the GTM
    /// cannot be reached, queues it for a retry at the next `begin`.
    fn abort_best_effort(&self, txn: TxnId) -> Result<(), GtmError> {
        let r = self.gtm.abort(txn);
        if let Err(e) = &r {
            if abort_may_succeed_later(e) {
                let mut q = self.pending_aborts.lock();
                if q.len() < MAX_PENDING_ABORTS {
                    q.push(txn);
                }
            }
        }
        r
    }

    /// Retries the aborts that failed earlier (see `pending_aborts`).
    fn retry_pending_aborts(&self) {
        let todo = {
            let mut q = self.pending_aborts.lock();
            if q.is_empty() {
                return;
            }
            std::mem::take(&mut *q)
        };
        let mut again = Vec::new();
        for txn in todo {
            match self.gtm.abort(txn) {
                Err(e) if abort_may_succeed_later(&e) => again.push(txn),
                Err(e) => tracing::debug!(%txn, error = %e, "pending abort dropped"),
                Ok(()) => tracing::debug!(%txn, "pending abort done"),
            }
        }
        if !again.is_empty() {
            let mut q = self.pending_aborts.lock();
            let room = MAX_PENDING_ABORTS.saturating_sub(q.len());
            q.extend(again.into_iter().take(room));
        }
    }

    /// The final outcome of `txn` — this node's or any other's, of this incarnation or
    /// an earlier one — after its commit ended with [`TxnError::Unknown`] (see the
    /// module docs). Never answers something that can change afterwards:
    ///
    /// * committed or aborted at the GTM (its status table, else its outcome index for
    ///   a transaction whose slot was reused, or whose commit record was read back from
    ///   the commit log after a restart): that;
    /// * committing (its commit won and the record is on its way to disk): waited for;
    /// * in progress (its commit request not (yet) arrived, or never sent): aborted at
    ///   the GTM by compare-and-set — if the commit won meanwhile, the abort answers
    ///   "already committed" and so does this. A commit request that arrives later is
    ///   answered `Aborted`.
    ///
    /// Errors: `Unknown` if no decision could be reached now (the GTM unreachable or a
    /// commit record still not durable; nothing was decided, call again later),
    /// `BadRequest` for an id the GTM never began, `Gtm` if the GTM lost the outcome.
    /// Needs no lease: a fenced node can resolve (the node must be registered, which
    /// every incarnation is; after a GTM restart, rejoin first).
    pub fn resolve_outcome(&self, txn: TxnId) -> Result<Resolved, TxnError> {
        if txn.0 == 0 {
            return Err(TxnError::BadRequest(
                "transaction id 0 is not a transaction".into(),
            ));
        }
        let never_begun = || {
            TxnError::BadRequest(format!(
                "transaction {txn} was never begun (the GTM does not know it)"
            ))
        };
        for _ in 0..RESOLVE_ROUNDS {
            // One-sided reads of the status table, waiting out `Committing` (up to the
            // GTM client's timeout); slots reused by newer transactions are asked of
            // the GTM's outcome index (the `Outcomes` RPC).
            let status = match self.gtm.txn_status_batch(&[txn]) {
                Ok(v) => v.into_iter().next(),
                Err(e) => return Err(resolve_error(txn, e)),
            };
            match status {
                Some(TxnStatus::Committed(ts)) => return Ok(Resolved::Committed(ts)),
                Some(TxnStatus::Aborted) => return Ok(Resolved::Aborted),
                // Not produced by the waiting lookup; look again.
                Some(TxnStatus::Committing(_)) => continue,
                Some(TxnStatus::Retired) => {
                    return Err(TxnError::Gtm(format!(
                        "the outcome of transaction {txn} was forgotten: it is below the \
                         GTM's freeze floor (resolve unknown outcomes sooner than the GTM's \
                         freeze_interval_ms)"
                    )))
                }
                None => {
                    return Err(TxnError::Unknown {
                        txn,
                        message: "empty status answer".into(),
                    })
                }
                // In progress, or not known to the status table: decide it now.
                Some(TxnStatus::InProgress) | Some(TxnStatus::Unknown) => {}
            }
            match self.gtm.abort(txn) {
                // The abort won: the commit, if it ever arrives, loses.
                Ok(()) => return Ok(Resolved::Aborted),
                // The commit won and is durable.
                Err(GtmError::AlreadyCommitted(ts)) => return Ok(Resolved::Committed(ts)),
                // The commit won; its record is on its way to disk: wait for it.
                Err(GtmError::Busy(_)) => continue,
                // Neither in progress nor decided at the GTM: never begun.
                Err(GtmError::UnknownTxn(_)) => return Err(never_begun()),
                Err(e) => return Err(resolve_error(txn, e)),
            }
        }
        Err(TxnError::Unknown {
            txn,
            message: format!("still committing after {RESOLVE_ROUNDS} lookups"),
        })
    }

    /// Creates an empty tree (a table or index) and returns its meta page.
    pub fn create_tree(&self) -> Result<PageId, TxnError> {
        let view: Arc<dyn Pager> = Arc::new(self.pager.view()?);
        let tree = BTree::create(view.clone())?;
        let meta = tree.id();
        // Make the new tree durable and visible to other nodes before it is used.
        drop(tree);
        self.pager.release_all()?;
        Ok(meta)
    }
}

/// A transaction. Dropping it unfinished aborts it.
pub struct Txn {
    engine: Arc<Engine>,
    id: TxnId,
    snapshot: Timestamp,
    view: Arc<TxnView>,
    isolation: Isolation,
    wrote: bool,
    done: bool,
    /// The writer whose uncommitted version made this transaction die (wait-die), if so.
    blocker: Option<TxnId>,
    /// A write failed part-way (or lost a conflict): what it may have left in the tree
    /// is unknown to the caller, so the transaction can only be aborted (as in
    /// PostgreSQL). Whether the failure was retryable, and why.
    failed: Option<(bool, String)>,
    /// Registered in `Engine::writers` (from its first write until it ends).
    registered: bool,
}

impl Txn {
    pub fn id(&self) -> TxnId {
        self.id
    }

    pub fn snapshot(&self) -> Timestamp {
        self.snapshot
    }

    fn check_open(&self) -> Result<(), TxnError> {
        if self.done {
            return Err(TxnError::Finished);
        }
        if let Some((retryable, why)) = &self.failed {
            let m = format!(
                "transaction {} must be aborted: an earlier write failed ({why})",
                self.id
            );
            return Err(if *retryable {
                TxnError::Conflict(m)
            } else {
                TxnError::BadRequest(m)
            });
        }
        Ok(())
    }

    /// Read committed: every statement sees what committed before it started. The
    /// statement's snapshot is read one-sided from the GTM's status table header
    /// ([`GtmClient::published_timestamp`]: no GTM round trip), its view is a
    /// notice-based validation round (the pages changed since the last round), so a
    /// statement costs two one-sided reads when nothing changed.
    fn statement_view(&mut self) -> Result<(), TxnError> {
        if self.isolation == Isolation::ReadCommitted {
            self.snapshot = self.engine.gtm.published_timestamp()?.max(self.snapshot);
            let fresh = self.engine.pager.view()?;
            // Keep the touched-set of earlier statements: commit forces all of it.
            fresh.merge_touched(&self.view);
            self.view = Arc::new(fresh);
        }
        Ok(())
    }

    fn tree(&self, table: &Table) -> Result<BTree, TxnError> {
        Ok(BTree::open(
            self.view.clone() as Arc<dyn Pager>,
            table.meta,
        )?)
    }

    /// What a read found, or `Fenced` if this node's lease may have run out by now.
    ///
    /// A read is right only while the GTM still counts this node's snapshot: once the
    /// lease lapsed (a pause, a lost link) the GTM aborts the transaction, the GC
    /// watermark passes the snapshot, and other nodes prune the versions it would read,
    /// or take the page locks this node thinks it holds. So a row that is "not there",
    /// an old value, or a corrupt-looking chain read after that point says nothing.
    /// Checking after the read is enough: the local deadline is conservative (never
    /// later than the GTM's expiry, measured from when a renewal was sent) and only
    /// moves forward, a renewal is sent only while it has not passed, and a lapse or a
    /// fence is final; so a lease valid now was valid during the whole read. The check
    /// is two uncontended locks and a clock read.
    fn vouch<T>(&self, found: Result<T, TxnError>) -> Result<T, TxnError> {
        self.engine.gtm.check_lease()?;
        found
    }

    pub fn get(&mut self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        self.check_open()?;
        let found = self.get_row(table, key);
        self.vouch(found)
    }

    fn get_row(&mut self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        self.statement_view()?;
        let tree = self.tree(table)?;
        let Some(raw) = tree.get(key)? else {
            return Ok(None);
        };
        let chain = Chain::decode(&raw).map_err(|e| TxnError::Corrupt(e.to_string()))?;
        Ok(chain
            .visible(self.id, self.snapshot, &self.engine.oracle)
            .map_err(mvcc_err)?
            .map(<[u8]>::to_vec))
    }

    pub fn put(&mut self, table: &Table, key: &[u8], value: &[u8]) -> Result<(), TxnError> {
        self.write(table, key, Some(value.to_vec())).map(|_| ())
    }

    /// Deletes the row; returns whether a visible row was there.
    pub fn delete(&mut self, table: &Table, key: &[u8]) -> Result<bool, TxnError> {
        let existed = self.get(table, key)?.is_some();
        if existed {
            self.write(table, key, None)?;
        }
        Ok(existed)
    }

    /// A **locking read** (SQL's `SELECT … FOR UPDATE`, InnoDB's current read): waits
    /// for an in-progress writer of the row as a write would (the engine's
    /// [`WaitPolicy`]; wound-wait by default), takes this transaction's write intent on
    /// the row, and returns the newest committed row — which may be newer than the
    /// snapshot — or this transaction's own write of it. Until the transaction ends no
    /// other transaction can write or lock the row, so a later [`Txn::put`] or
    /// [`Txn::delete`] of it never fails first-updater-wins. Everything else keeps
    /// reading the snapshot, also [`Txn::get`] of this row (a plain read does not see
    /// the newer row a locking read returned). A key without a row is locked too (an
    /// insert by another transaction waits). Committing without writing the row leaves
    /// it as it was; the lock ends with the transaction either way.
    ///
    /// A failure leaves the transaction good only for an abort, as a failed write does.
    pub fn get_for_update(
        &mut self,
        table: &Table,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, TxnError> {
        self.engine.stats.lock_reads.fetch_add(1, Ordering::Relaxed);
        self.modify(table, key, RowOp::Lock)
    }

    /// A locking read-modify-write (SQL's `UPDATE … RETURNING`): what
    /// [`Txn::get_for_update`] followed by [`Txn::put`] (or [`Txn::delete`]) of the
    /// row does, in one step under the row's page latch — one B-tree change and one redo
    /// record instead of two. `f` gets the newest committed row (or this transaction's
    /// own write; `None`: no row) and answers the new one (`None`: delete it); the new
    /// row is returned. `f` may run more than once (after a wait for another writer),
    /// always on the row as it is then. An error from `f` changes nothing and is
    /// returned as it is; like any failed write it leaves the transaction good only for
    /// an abort (unless it is `BadRequest`).
    pub fn update<F>(
        &mut self,
        table: &Table,
        key: &[u8],
        f: F,
    ) -> Result<Option<Vec<u8>>, TxnError>
    where
        F: FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, TxnError>,
    {
        self.engine.stats.lock_reads.fetch_add(1, Ordering::Relaxed);
        let mut f = f;
        self.modify(table, key, RowOp::Update(&mut f))
    }

    /// Writes the row; a failure that may have changed something, or that lost a
    /// conflict, leaves the transaction good only for an abort (see `failed`).
    fn write(&mut self, table: &Table, key: &[u8], row: Option<Vec<u8>>) -> Result<(), TxnError> {
        self.modify(table, key, RowOp::Write(row)).map(|_| ())
    }

    /// A write or a locking read of one row, with the failure handling both share.
    fn modify(
        &mut self,
        table: &Table,
        key: &[u8],
        op: RowOp<'_>,
    ) -> Result<Option<Vec<u8>>, TxnError> {
        self.check_open()?;
        if !self.registered {
            self.engine.writers.lock().insert(self.id);
            self.registered = true;
        }
        let r = self.modify_row(table, key, op);
        // A locking read returns a row too: the page lock it was read under may have
        // been taken away if the lease ran out meanwhile.
        let r = self.vouch(r);
        if let Err(e) = &r {
            if !matches!(e, TxnError::BadRequest(_) | TxnError::NoSuchTable(_)) {
                self.failed = Some((e.is_retryable(), e.to_string()));
            }
        }
        r
    }

    fn modify_row(
        &mut self,
        table: &Table,
        key: &[u8],
        mut op: RowOp<'_>,
    ) -> Result<Option<Vec<u8>>, TxnError> {
        self.blocker = None;
        if matches!(op, RowOp::Write(_)) {
            // A locking read needs no snapshot: it reads the newest commit.
            self.statement_view()?;
        }
        self.engine.gtm.check_lease()?;
        let tree = self.tree(table)?;
        let deadline = Instant::now() + self.engine.config.lock_wait;
        let (me, snapshot) = (self.id, self.snapshot);
        let policy = self.engine.config.wait_policy;
        loop {
            let watermark = self.engine.gc_watermark();
            let oracle = &self.engine.oracle;
            let mut read = None;
            // Rows sharing the leaf get the commit timestamps this node knows stamped
            // into their versions as the leaf is written anyway (`stamp_encoded`):
            // rows written once (TPC-C's order lines) are then stamped without a
            // freeze sweep rewriting them.
            let stamp = |v: &mut [u8]| crate::mvcc::stamp_encoded(v, |w| oracle.known_commit(w));
            let res = tree.upsert_touching(
                key,
                |old| {
                    let mut chain = match old {
                        Some(b) => Chain::decode(b).map_err(UpsertFail::Mvcc)?,
                        None => Chain::default(),
                    };
                    match &mut op {
                        RowOp::Write(row) => chain
                            .write(me, snapshot, row.clone(), watermark, policy, oracle)
                            .map_err(UpsertFail::Mvcc)?,
                        RowOp::Update(f) => {
                            let current = chain
                                .lock(me, watermark, policy, oracle)
                                .map_err(UpsertFail::Mvcc)?
                                .into_row();
                            let new = f(current.as_deref()).map_err(UpsertFail::Caller)?;
                            // Newest is this transaction's lock now: the write is its own.
                            chain
                                .write(me, snapshot, new.clone(), watermark, policy, oracle)
                                .map_err(UpsertFail::Mvcc)?;
                            read = new;
                        }
                        RowOp::Lock => match chain
                            .lock(me, watermark, policy, oracle)
                            .map_err(UpsertFail::Mvcc)?
                        {
                            LockRead::Held(row) => {
                                read = row;
                                return Err(UpsertFail::Unchanged);
                            }
                            LockRead::Acquired(row) => read = row,
                        },
                    }
                    chain
                        .fit(crate::btree::MAX_ENTRY_LEN.saturating_sub(key.len()))
                        .map_err(UpsertFail::Mvcc)?;
                    Ok::<_, UpsertFail>(Some(chain.encode()))
                },
                stamp,
            );
            match res {
                Ok(_) | Err(UpsertFail::Unchanged) => {
                    self.wrote = true;
                    return Ok(read);
                }
                Err(UpsertFail::Mvcc(MvccError::Locked {
                    holder,
                    may_wait: true,
                })) if Instant::now() < deadline => {
                    self.engine.stats.lock_waits.fetch_add(1, Ordering::Relaxed);
                    self.wait_for(holder, deadline)?;
                }
                Err(UpsertFail::Mvcc(e)) => {
                    self.engine.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    if let MvccError::Locked { holder, .. } = e {
                        self.blocker = Some(holder);
                    }
                    return Err(mvcc_err(e));
                }
                Err(UpsertFail::Tree(e)) => return Err(e.into()),
                Err(UpsertFail::Caller(e)) => return Err(e),
            }
        }
    }

    /// Waits until `holder` resolves (or `deadline`); under wound-wait, an older
    /// transaction waits for a younger holder only `wound_after`, then wounds it.
    fn wait_for(&self, holder: TxnId, deadline: Instant) -> Result<(), TxnError> {
        let engine = &self.engine;
        let wounds = engine.config.wait_policy == WaitPolicy::WoundWait && self.id < holder;
        let patience = if wounds {
            deadline.min(Instant::now() + engine.config.wound_after)
        } else {
            deadline
        };
        if engine.wait_resolved_or_wounded(holder, Some(self.id), patience)? {
            return Ok(());
        }
        if wounds && (engine.wound(holder)? || engine.wait_until_resolved(holder, deadline)?) {
            return Ok(());
        }
        Err(TxnError::Conflict(format!(
            "timed out waiting for transaction {holder}"
        )))
    }

    /// The in-progress writer this transaction died on (wait-die), if its last write
    /// failed that way: a caller that retries should let it finish first
    /// ([`Txn::abort_and_wait`]).
    pub fn blocker(&self) -> Option<TxnId> {
        self.blocker
    }

    /// Aborts, then waits (at most `max`) until the writer this transaction died on has
    /// finished, so a retry does not run into the same uncommitted version. Waiting
    /// after the abort holds nothing, so no wait cycle can form (wait-die stays
    /// deadlock-free); it replaces the caller's blind back-off with a wake-up when the
    /// row is free.
    pub fn abort_and_wait(mut self, max: Duration) -> Result<(), TxnError> {
        let blocker = self.blocker.take();
        let engine = self.engine.clone();
        self.abort()?;
        if let Some(holder) = blocker {
            engine.wait_until_resolved(holder, Instant::now() + max)?;
        }
        Ok(())
    }

    /// Rows with keys in `range`, ascending (or descending with `reverse`), at most
    /// `limit` of them.
    pub fn scan(
        &mut self,
        table: &Table,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        limit: Option<usize>,
    ) -> Result<Vec<Row>, TxnError> {
        self.check_open()?;
        let found = self.scan_rows(table, range, reverse, limit);
        self.vouch(found)
    }

    fn scan_rows(
        &mut self,
        table: &Table,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        limit: Option<usize>,
    ) -> Result<Vec<Row>, TxnError> {
        self.statement_view()?;
        let tree = self.tree(table)?;
        let mut out = Vec::new();
        let mut err = None;
        let (me, snapshot) = (self.id, self.snapshot);
        let oracle = &self.engine.oracle;
        tree.scan::<BTreeError, _>(range, reverse, None, |k, v| {
            let chain = match Chain::decode(v) {
                Ok(c) => c,
                Err(e) => {
                    err = Some(TxnError::Corrupt(e.to_string()));
                    return Ok(false);
                }
            };
            match chain.visible(me, snapshot, oracle) {
                Ok(Some(row)) => out.push((k.to_vec(), row.to_vec())),
                Ok(None) => {}
                Err(e) => {
                    err = Some(mvcc_err(e));
                    return Ok(false);
                }
            }
            Ok(limit.is_none_or(|l| out.len() < l))
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Commits: redo durable on every storage node touched, then the commit record.
    /// A transaction that wrote nothing has nothing to make durable: it ends at the GTM
    /// without a commit record (no log force) and returns its snapshot timestamp.
    ///
    /// Errors are definite (the transaction did not commit; it is aborted at the GTM)
    /// or [`TxnError::Unknown`] (see the module docs: resolve before running it again).
    pub fn commit(mut self) -> Result<Timestamp, TxnError> {
        self.check_open()?;
        self.done = true;
        let engine = self.engine.clone();
        if !self.wrote {
            // Every read was vouched for when it returned (`vouch`); checking once more
            // makes "committed" mean the whole transaction ran inside the lease.
            let lease = engine.gtm.check_lease();
            // End it at the GTM either way (no commit record: its snapshot stops holding
            // back the GC watermark).
            let ended = engine.abort_best_effort(self.id);
            lease?;
            ended?;
            engine.stats.committed.fetch_add(1, Ordering::Relaxed);
            return Ok(self.snapshot);
        }
        // Until the commit request is sent nothing is decided: a failure here leaves the
        // transaction in progress at the GTM, blocking writers that wait for it until
        // this node's epoch ends, so abort it there before answering.
        let before = engine
            .gtm
            .check_lease()
            .map_err(TxnError::from)
            .and_then(|_| self.view.force_redo().map_err(TxnError::from));
        if let Err(e) = before {
            engine.stats.aborted.fetch_add(1, Ordering::Relaxed);
            if let Err(a) = engine.abort_best_effort(self.id) {
                tracing::debug!(txn = %self.id, error = %a, "abort after a failed commit");
            }
            return Err(e);
        }
        fail::fail_point!("txn::before_commit_record");
        match engine.gtm.commit(self.id).or_else(classify_commit_error) {
            Ok(cts) => {
                engine.stats.committed.fetch_add(1, Ordering::Relaxed);
                engine.oracle.learn(self.id, WriterState::Committed(cts));
                if engine.pager.lock_mode == crate::coherence::LockMode::Eager {
                    // The commit is durable: whatever happens now, the caller must hear
                    // "committed" (an error would invite a second run). A failed release
                    // leaves the locks to the lazy path (or to a rejoin).
                    if let Err(e) = engine.pager.release_all() {
                        tracing::warn!(txn = %self.id, error = %e,
                            "releasing page locks after a commit failed");
                    }
                }
                Ok(cts)
            }
            Err(CommitFailure::Decided(e)) => {
                engine.stats.aborted.fetch_add(1, Ordering::Relaxed);
                engine.oracle.learn(self.id, WriterState::Aborted);
                Err(e)
            }
            Err(CommitFailure::Refused(e)) => {
                // Refused without a decision: end it now rather than at lease expiry.
                engine.stats.aborted.fetch_add(1, Ordering::Relaxed);
                if let Err(a) = engine.abort_best_effort(self.id) {
                    tracing::debug!(txn = %self.id, error = %a, "abort after a refused commit");
                }
                Err(e)
            }
            Err(CommitFailure::Unknown(message)) => {
                // No abort here: the commit may have won. The caller resolves it.
                engine
                    .stats
                    .unknown_outcomes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(txn = %self.id, error = %message, "commit outcome unknown");
                Err(TxnError::Unknown {
                    txn: self.id,
                    message,
                })
            }
        }
    }

    pub fn abort(mut self) -> Result<(), TxnError> {
        if self.done {
            return Err(TxnError::Finished);
        }
        self.done = true;
        self.engine.stats.aborted.fetch_add(1, Ordering::Relaxed);
        self.engine.abort_best_effort(self.id)?;
        if self.wrote {
            self.engine.oracle.learn(self.id, WriterState::Aborted);
        }
        Ok(())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if !self.done {
            self.engine.stats.aborted.fetch_add(1, Ordering::Relaxed);
            let _ = self.engine.abort_best_effort(self.id);
        }
        // Runs at the end of `commit` and `abort` too (they take `self`): the outcome
        // is decided (or, after an unknown one, to be asked of the GTM) by now.
        if self.registered {
            self.engine.writers.lock().remove(&self.id);
            self.engine.writers_done.notify_all();
        }
    }
}

fn abort_may_succeed_later(e: &GtmError) -> bool {
    match e {
        GtmError::Fabric(_) | GtmError::Timeout(_) | GtmError::Protocol(_) => true,
        GtmError::Internal(_) | GtmError::Busy(_) => true,
        GtmError::Aborted
        | GtmError::AlreadyCommitted(_)
        | GtmError::Fenced(_)
        | GtmError::NotRegistered
        | GtmError::UnknownTxn(_)
        | GtmError::BadRequest(_) => false,
    }
}

/// What a failed status lookup or abort during [`Engine::resolve_outcome`] means: the
/// lookup and the abort change nothing unless they succeed, so a failure leaves the
/// outcome undecided (`Unknown`: ask again) unless it says the request itself is bad.
fn resolve_error(txn: TxnId, e: GtmError) -> TxnError {
    let undecided = |e: &GtmError| TxnError::Unknown {
        txn,
        message: format!("could not reach a decision: {e}"),
    };
    match e {
        GtmError::Fabric(_)
        | GtmError::Timeout(_)
        | GtmError::Protocol(_)
        | GtmError::Internal(_)
        | GtmError::Busy(_)
        // Lookups and aborts need no lease; the GTM never fences them.
        | GtmError::Fenced(_)
        // Handled by the caller (abort's answers); not produced by lookups.
        | GtmError::Aborted
        | GtmError::AlreadyCommitted(_) => undecided(&e),
        GtmError::UnknownTxn(m) | GtmError::BadRequest(m) => TxnError::BadRequest(m),
        GtmError::NotRegistered => TxnError::Gtm(e.to_string()),
    }
}

fn mvcc_err(e: MvccError) -> TxnError {
    match e {
        MvccError::Locked { holder, .. } => TxnError::Conflict(format!(
            "row is being written by transaction {holder} (wait-die)"
        )),
        MvccError::WriteConflict | MvccError::SnapshotTooOld => TxnError::Conflict(e.to_string()),
        MvccError::RowTooLarge(..) => TxnError::BadRequest(e.to_string()),
        MvccError::Corrupt(m) => TxnError::Corrupt(m.to_string()),
        MvccError::Status(m) => TxnError::Gtm(m),
    }
}

/// How an upsert failed: the row logic refused, or the tree did, or an update's
/// function — or nothing needs writing (`Unchanged`: a lock the transaction held
/// already).
pub(crate) enum UpsertFail {
    Mvcc(MvccError),
    Tree(BTreeError),
    Caller(TxnError),
    Unchanged,
}

/// What [`Txn::modify`] does to a row.
enum RowOp<'f> {
    /// A new version (`None`: a tombstone).
    Write(Option<Vec<u8>>),
    /// A locking read.
    Lock,
    /// A locking read-modify-write.
    Update(&'f mut RowFn<'f>),
}

/// An update's function: the current row in, the new row out.
type RowFn<'f> = dyn FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, TxnError> + 'f;

impl From<BTreeError> for UpsertFail {
    fn from(e: BTreeError) -> Self {
        UpsertFail::Tree(e)
    }
}
