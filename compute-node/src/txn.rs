//! Transactions: the embedding API's engine (DESIGN.md §6 "MVCC" and "Commit",
//! invariants 2, 3, 4, 6).
//!
//! * `begin`: a transaction id and snapshot from the GTM, then a coherence view taken
//!   *after* the snapshot (so every page it reads is at least as new as the snapshot
//!   needs, invariant 2).
//! * Reads walk a table's B-link tree through the view and pick the visible row version
//!   ([`crate::mvcc`]); writes append a version to the row's chain under the leaf's
//!   page latch (the global X lock), first updater wins, wait-die between writers.
//! * `commit`: the transaction's redo is forced on every storage node it touched (one
//!   group-committed force each, in parallel), then the commit record is written at the
//!   GTM, then the caller hears "committed" (invariant 3). A lease that may have run out
//!   fences the commit before it is sent (invariant 6).
//! * A wait-die victim's caller can [`Txn::abort_and_wait`]: abort first (holding
//!   nothing, it cannot close a wait cycle), then wait until the writer it died on has
//!   finished, so the retry starts after that writer instead of after a blind back-off.
//! * `abort`: the status becomes Aborted at the GTM; the versions stay and are invisible
//!   (invariant 4) until a later change of their page prunes them.
//!
//! Read committed takes a fresh snapshot (and view) per statement.

use crate::btree::{BTree, BTreeError};
use crate::coherence::{CoherentPager, TxnView};
use crate::mvcc::{Chain, MvccError, StatusOracle, WaitPolicy, WriterState};
use crate::pager::{Pager, PagerError};
use common::gtm::{GtmClient, GtmError, TxnStatus};
use common::ids::{PageId, Timestamp, TxnId};
use dashmap::DashMap;
use parking_lot::Mutex;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Isolation levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    #[default]
    Snapshot,
    ReadCommitted,
}

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
}

impl TxnError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, TxnError::Conflict(_))
    }
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
    /// How long a writer waits (wait-die) for an older holder before giving up.
    pub lock_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            isolation: Isolation::Snapshot,
            wait_policy: WaitPolicy::WaitDie,
            lock_wait: Duration::from_secs(5),
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
        if self.resolved.len() > 1_000_000 {
            self.resolved.clear();
        }
        self.resolved.insert(w, s);
        Ok(s)
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
    pub stats: EngineStats,
}

#[derive(Default, Debug)]
pub struct EngineStats {
    pub begun: AtomicU64,
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub conflicts: AtomicU64,
    pub lock_waits: AtomicU64,
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
            stats: EngineStats::default(),
        })
    }

    pub fn pager(&self) -> &Arc<CoherentPager> {
        &self.pager
    }

    pub fn gtm(&self) -> &Arc<GtmClient> {
        &self.gtm
    }

    fn gc_watermark(&self) -> Timestamp {
        let mut at = self.watermark_at.lock();
        if at.elapsed() > Duration::from_millis(200) {
            if let Ok(w) = self.gtm.published_gc_watermark() {
                self.watermark.store(w.0, Ordering::Relaxed);
            }
            *at = Instant::now();
        }
        Timestamp(self.watermark.load(Ordering::Relaxed))
    }

    /// Polls the status table until `txn` is no longer in progress (true) or `deadline`
    /// passes (false). Polls start fine-grained: a holder usually commits within a
    /// couple of log forces.
    pub fn wait_until_resolved(&self, txn: TxnId, deadline: Instant) -> Result<bool, TxnError> {
        let mut pause = Duration::from_micros(20);
        loop {
            match self.gtm.txn_status_batch_nowait(&[txn])?.pop() {
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

    pub fn begin(self: &Arc<Self>) -> Result<Txn, TxnError> {
        self.begin_with(self.config.isolation)
    }

    pub fn begin_with(self: &Arc<Self>, isolation: Isolation) -> Result<Txn, TxnError> {
        self.gtm.check_lease()?;
        let (id, snapshot) = self.gtm.begin()?;
        let view = Arc::new(self.pager.view());
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
        })
    }

    /// Creates an empty tree (a table or index) and returns its meta page.
    pub fn create_tree(&self) -> Result<PageId, TxnError> {
        let view: Arc<dyn Pager> = Arc::new(self.pager.view());
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
        Ok(())
    }

    /// Read committed: every statement sees what committed before it started.
    fn statement_view(&mut self) -> Result<(), TxnError> {
        if self.isolation == Isolation::ReadCommitted {
            self.snapshot = self.engine.gtm.timestamp()?;
            let fresh = self.engine.pager.view();
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

    pub fn get(&mut self, table: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        self.check_open()?;
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

    fn write(&mut self, table: &Table, key: &[u8], row: Option<Vec<u8>>) -> Result<(), TxnError> {
        self.check_open()?;
        self.blocker = None;
        self.statement_view()?;
        self.engine.gtm.check_lease()?;
        let tree = self.tree(table)?;
        let deadline = Instant::now() + self.engine.config.lock_wait;
        let (me, snapshot) = (self.id, self.snapshot);
        let policy = self.engine.config.wait_policy;
        loop {
            let watermark = self.engine.gc_watermark();
            let oracle = &self.engine.oracle;
            let row = row.clone();
            let res = tree.upsert(key, |old| {
                let mut chain = match old {
                    Some(b) => Chain::decode(b).map_err(UpsertFail::Mvcc)?,
                    None => Chain::default(),
                };
                chain
                    .write(me, snapshot, row, watermark, policy, oracle)
                    .map_err(UpsertFail::Mvcc)?;
                chain
                    .fit(crate::btree::MAX_ENTRY_LEN.saturating_sub(key.len()))
                    .map_err(UpsertFail::Mvcc)?;
                Ok::<_, UpsertFail>(Some(chain.encode()))
            });
            match res {
                Ok(_) => {
                    self.wrote = true;
                    return Ok(());
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
            }
        }
    }

    /// Waits (polling the status table, backing off) until `holder` resolves.
    fn wait_for(&self, holder: TxnId, deadline: Instant) -> Result<(), TxnError> {
        if self.engine.wait_until_resolved(holder, deadline)? {
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
    pub fn commit(mut self) -> Result<Timestamp, TxnError> {
        self.check_open()?;
        self.done = true;
        if !self.wrote {
            self.engine.stats.committed.fetch_add(1, Ordering::Relaxed);
            self.engine.gtm.abort(self.id)?;
            return Ok(self.snapshot);
        }
        {
            self.engine.gtm.check_lease()?;
            self.view.force_redo()?;
        }
        match self.engine.gtm.commit(self.id) {
            Ok(cts) => {
                self.engine.stats.committed.fetch_add(1, Ordering::Relaxed);
                if self.engine.pager.lock_mode == crate::coherence::LockMode::Eager {
                    self.engine.pager.release_all()?;
                }
                Ok(cts)
            }
            Err(e) => {
                self.engine.stats.aborted.fetch_add(1, Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    pub fn abort(mut self) -> Result<(), TxnError> {
        self.check_open()?;
        self.done = true;
        self.engine.stats.aborted.fetch_add(1, Ordering::Relaxed);
        self.engine.gtm.abort(self.id)?;
        Ok(())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if !self.done {
            self.engine.stats.aborted.fetch_add(1, Ordering::Relaxed);
            let _ = self.engine.gtm.abort(self.id);
        }
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

/// How an upsert failed: the row logic refused, or the tree did.
enum UpsertFail {
    Mvcc(MvccError),
    Tree(BTreeError),
}

impl From<BTreeError> for UpsertFail {
    fn from(e: BTreeError) -> Self {
        UpsertFail::Tree(e)
    }
}
