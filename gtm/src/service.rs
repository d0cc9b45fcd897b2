//! The GTM engine: state, the batch-handling RPC service, and its background threads.
//!
//! ## Handling one message batch (`GtmService::handle_batch`)
//!
//! 1. Decode every request (a malformed one is answered `BadRequest`; the rest go on).
//! 2. Under the state lock, once per batch: grant all timestamps the batch needs
//!    (snapshots, commit timestamps, `Timestamps` requests) with **one** `fetch_add`,
//!    all txn ids with one more; then apply each request in order: lease checks, begins,
//!    the commit/abort compare-and-sets (`status_table`), `Committing(cts)` published in
//!    the region before the lock is released.
//!    `Outcomes` requests are answered from the table and its outcome index under the
//!    same lock acquisition (a binary search per txn).
//! 3. After the lock: synchronous answers go out (one message, the fabric corks the
//!    batch); commits that won their CAS go to the **group-commit thread** with their
//!    [`Replier`]s. The handler never waits for a disk.
//!
//! ## Threads
//!
//! * group commit: takes every queued commit, appends their records, one `fdatasync`,
//!   then `Committed(cts)` in the table and the answers (invariant 7 of docs/design.md);
//! * housekeeper: expires leases (aborting the node's in-progress txns under the state
//!   lock), publishes the GC watermark, and calls the [`LockReleaser`] outside the lock,
//!   retrying failures; a release stays owed in the epoch store until it succeeded, and
//!   a started GTM begins with the releases owed from before;
//! * one high-water-mark helper per [`Sequence`] (timestamps, txn ids).
//!
//! Lock order: `state` then `commit_queue`; the releaser and the fabric are never called
//! under `state`.

use crate::commit_log::{self, CommitLog};
use crate::freeze::{Freezer, GrantFile};
use crate::lease::{EpochStore, LockReleaser, Members};
use crate::metrics::Metrics;
use crate::status_table::{AbortDecision, CommitDecision, StatusRegion, StatusTable};
use crate::tso::Sequence;
use crate::watermark;
use common::durable::{DurableFs, StdFs};
use common::fabric::{
    Access, ClusterKey, Endpoint, FabricError, PeerInfo, Replier, Request as RpcRequest,
    RpcService, Server, ServerHandle,
};
use common::gtm::layout;
use common::gtm::proto::{ErrorKind, Request, Response};
use common::gtm::STATUS_REGION;
use common::ids::{Epoch, NodeId, Timestamp, TxnId};
use parking_lot::{Condvar, Mutex};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Engine settings (the binary builds them from `GtmConfig`).
#[derive(Clone, Debug)]
pub struct GtmOptions {
    /// Where the durable files live (`StdFs`; the power-loss tests pass a `SimFs`).
    pub fs: Arc<dyn DurableFs>,
    pub data_dir: PathBuf,
    pub lease: Duration,
    pub reaper_interval: Duration,
    pub gc_publish_interval: Duration,
    pub tso_window: u64,
    pub txn_id_window: u64,
    pub status_capacity: u64,
    /// Least time between two freeze sweeps; zero: none (`crate::freeze`).
    pub freeze_interval: Duration,
    /// Txn ids issued above the freeze floor before a sweep is due; 0: time alone.
    pub freeze_after_txns: u64,
}

impl GtmOptions {
    pub fn from_config(c: &crate::config::GtmConfig) -> GtmOptions {
        GtmOptions {
            fs: StdFs::shared(),
            data_dir: c.data_dir.clone(),
            lease: c.lease(),
            reaper_interval: Duration::from_millis(c.reaper_interval_ms),
            gc_publish_interval: Duration::from_millis(c.gc_publish_interval_ms),
            tso_window: c.tso_window,
            txn_id_window: c.txn_id_window,
            status_capacity: c.status_capacity,
            freeze_interval: Duration::from_millis(c.freeze_interval_ms),
            freeze_after_txns: c.freeze_after_txns,
        }
    }

    /// Defaults for tests and embedded clusters, state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> GtmOptions {
        GtmOptions::from_config(&crate::config::GtmConfig {
            data_dir: data_dir.into(),
            ..Default::default()
        })
    }
}

/// Why the GTM could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sequence(#[from] crate::tso::SequenceError),
    #[error("fabric: {0}")]
    Fabric(#[from] FabricError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

struct State {
    members: Members,
    table: StatusTable,
    freezer: Freezer,
    /// Last computed GC watermark (monotone).
    watermark: Timestamp,
}

struct PendingCommit {
    txn: TxnId,
    cts: Timestamp,
    replier: Replier,
}

struct Inner {
    tso: Arc<Sequence>,
    txn_ids: Arc<Sequence>,
    state: Mutex<State>,
    commit_queue: Mutex<Vec<PendingCommit>>,
    commit_wake: Condvar,
    /// A freeze floor the group-commit thread is to compact the commit log to (0: none).
    compact_to: AtomicU64,
    /// `sweep.grant`: the freeze sweep's grant and point, written outside the state lock.
    grants: GrantFile,
    /// Lock releases still to do (retried until they succeed).
    release_queue: Mutex<Vec<(NodeId, Epoch)>>,
    housekeeper_wake: Condvar,
    releaser: Box<dyn LockReleaser>,
    metrics: Arc<Metrics>,
    stop: AtomicBool,
    /// Set when the commit log failed: the durable state is unknown; refuse commits.
    failed: AtomicBool,
    lease: Duration,
    reaper_interval: Duration,
    gc_publish_interval: Duration,
}

/// A running GTM: serve it on endpoints with [`Gtm::serve`], stop it with
/// [`Gtm::shutdown`] (or drop).
pub struct Gtm {
    inner: Arc<Inner>,
    server: Server,
    listeners: Vec<ServerHandle>,
    threads: Vec<JoinHandle<()>>,
    housekeeper: Option<JoinHandle<()>>,
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

impl Gtm {
    /// Recovers from `opts.data_dir` and starts the engine (not yet serving).
    pub fn start(
        opts: &GtmOptions,
        key: ClusterKey,
        releaser: Box<dyn LockReleaser>,
    ) -> Result<Gtm, StartError> {
        let dir = &opts.data_dir;
        let fs = &opts.fs;
        // Durably: a directory whose entry is lost to a power cut takes every file in it.
        common::durable::create_dir_all_durably(&**fs, dir).map_err(io_err(dir))?;
        let tso = Sequence::open_in(
            fs.clone(),
            &dir.join("tso.hwm"),
            opts.tso_window,
            layout::MAX_TIMESTAMP,
        )?;
        let txn_ids = Sequence::open_in(
            fs.clone(),
            &dir.join("txn.hwm"),
            opts.txn_id_window,
            u64::MAX / 2,
        )?;
        let boot_floor = TxnId(txn_ids.current());
        let epochs = EpochStore::open_in(fs.clone(), &dir.join("epochs")).map_err(io_err(dir))?;

        let server = Server::new(key);
        let capacity = opts.status_capacity;
        let region = server.register(layout::region_len(capacity), Access::READ)?;
        assert_eq!(region.id(), STATUS_REGION, "the status table is region 0");
        let status = StatusRegion::format(region, capacity, boot_floor);
        let mut table = StatusTable::new(status, boot_floor);
        let floor_path = dir.join("freeze.floor");
        let grants = GrantFile::new(fs.clone(), &dir.join("sweep.grant"));
        let freezer = Freezer::open(
            fs.clone(),
            &floor_path,
            &grants,
            opts.freeze_interval,
            opts.freeze_after_txns,
        )
        .map_err(io_err(&floor_path))?;
        let floor = freezer.floor();
        let log_path = dir.join("commit.log");
        let (log, mut records) =
            CommitLog::open_in(fs.clone(), &log_path).map_err(io_err(&log_path))?;
        let logged = records.len();
        records.retain(|&(txn, cts)| {
            let ok = txn.0 != 0 && txn < boot_floor && cts.0 < tso.current();
            if !ok {
                tracing::error!(%txn, %cts, "commit record beyond the high-water marks; ignored");
            }
            // Below the freeze floor (a compaction that did not finish): forgotten.
            ok && txn >= floor
        });
        // The last `capacity` txn ids go back into their slots, older ones into the
        // outcome index (answered through the `Outcomes` RPC).
        table.freeze_below(floor);
        table.restore_committed(records);
        let watermark = Timestamp(tso.current());
        table.region.publish_gc_watermark(watermark);
        tracing::info!(
            data_dir = %dir.display(),
            first_timestamp = tso.current(),
            first_txn = %boot_floor,
            recovered_commits = logged,
            freeze_floor = %floor,
            retired_commits = table.outcome_index().len(),
            outcome_index_bytes = table.outcome_index().bytes(),
            "GTM recovered"
        );

        let members = Members::new(epochs, opts.lease, Instant::now());
        // Releases a previous run fenced or superseded but did not see acknowledged by
        // every storage node: done again (a storage node ignores a repeated one).
        let owed = members.unreleased();
        if !owed.is_empty() {
            tracing::warn!(?owed, "lock releases owed from before the restart; queued");
        }
        let metrics = Arc::new(Metrics::default());
        metrics.freeze_floor.store(floor.0, Ordering::Relaxed);
        metrics
            .commit_log_records
            .store(logged as u64, Ordering::Relaxed);
        let inner = Arc::new(Inner {
            tso: tso.clone(),
            txn_ids: txn_ids.clone(),
            state: Mutex::new(State {
                members,
                table,
                freezer,
                watermark,
            }),
            commit_queue: Mutex::new(Vec::new()),
            commit_wake: Condvar::new(),
            compact_to: AtomicU64::new(0),
            grants,
            release_queue: Mutex::new(owed),
            housekeeper_wake: Condvar::new(),
            releaser,
            metrics,
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            lease: opts.lease,
            reaper_interval: opts.reaper_interval,
            gc_publish_interval: opts.gc_publish_interval,
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(StartError::Thread)
        };
        let mut threads = Vec::new();
        threads.push(spawn("gtm-tso-hwm", Box::new(move || tso.run_extender()))?);
        threads.push(spawn(
            "gtm-txn-hwm",
            Box::new(move || txn_ids.run_extender()),
        )?);
        let gc = inner.clone();
        threads.push(spawn(
            "gtm-group-commit",
            Box::new(move || gc.run_group_commit(log)),
        )?);
        let hk = inner.clone();
        let housekeeper = spawn("gtm-housekeeper", Box::new(move || hk.run_housekeeper()))?;
        Ok(Gtm {
            inner,
            server,
            listeners: Vec::new(),
            threads,
            housekeeper: Some(housekeeper),
        })
    }

    /// Serves the GTM on `endpoint`; returns the endpoint actually bound.
    pub fn serve(&mut self, endpoint: &Endpoint) -> Result<Endpoint, FabricError> {
        let h = self
            .server
            .serve(endpoint, Arc::new(GtmService(self.inner.clone())))?;
        let ep = h.endpoint().clone();
        self.listeners.push(h);
        Ok(ep)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Whether the commit log failed (the process should exit and be restarted).
    pub fn failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }

    /// Stops serving, lets queued commits finish, and joins the threads.
    pub fn shutdown(&mut self) {
        for mut l in self.listeners.drain(..) {
            l.shutdown();
        }
        self.inner.stop.store(true, Ordering::Release);
        self.inner.tso.stop();
        self.inner.txn_ids.stop();
        {
            let _q = self.inner.commit_queue.lock();
            self.inner.commit_wake.notify_all();
        }
        {
            let _q = self.inner.release_queue.lock();
            self.inner.housekeeper_wake.notify_all();
        }
        if let Some(h) = self.housekeeper.take() {
            let _ = h.join();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Gtm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The fabric-facing service.
struct GtmService(Arc<Inner>);

fn answer(replier: Replier, r: Response) {
    replier.reply(Ok(r.encode()));
}

impl RpcService for GtmService {
    fn handle_batch(&self, peer: &PeerInfo, batch: Vec<RpcRequest>) {
        self.0.handle_batch(peer, batch);
    }
}

impl Inner {
    fn handle_batch(&self, peer: &PeerInfo, batch: Vec<RpcRequest>) {
        let m = &self.metrics;
        m.rpc_batches.fetch_add(1, Ordering::Relaxed);
        m.rpc_requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut reqs = Vec::with_capacity(batch.len());
        let (mut ts_needed, mut begins) = (0u64, 0u64);
        for r in batch {
            match Request::decode(&r.payload) {
                Ok(q) => {
                    match &q {
                        Request::Timestamps { count } => ts_needed += *count as u64,
                        Request::Begin { .. } => {
                            ts_needed += 1;
                            begins += 1;
                        }
                        Request::Commit { .. } => ts_needed += 1,
                        _ => {}
                    }
                    reqs.push((q, r.replier));
                }
                Err(e) => {
                    m.bad_requests.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "malformed GTM request");
                    answer(
                        r.replier,
                        Response::error(ErrorKind::BadRequest, e.to_string()),
                    );
                }
            }
        }
        if reqs.is_empty() {
            return;
        }
        let mut replies: Vec<(Replier, Response)> = Vec::with_capacity(reqs.len());
        // Answered once `sweep.grant` is written (the freeze sweep's progress and
        // reports; a report stands even if the write fails: keeping it is a saving).
        let mut after_grant_write: Vec<(Replier, Response)> = Vec::new();
        let mut commits: Vec<PendingCommit> = Vec::new();
        let mut released: Vec<(NodeId, Epoch)> = Vec::new();
        let now = Instant::now();
        let failed = self.failed.load(Ordering::Acquire);
        {
            let mut st = self.state.lock();
            let st = &mut *st;
            // One atomic grant for the whole batch.
            let granted = (ts_needed > 0)
                .then(|| self.tso.grant(ts_needed))
                .transpose();
            let txns = (begins > 0).then(|| self.txn_ids.grant(begins)).transpose();
            let (mut next_ts, mut next_txn) = match (granted, txns) {
                (Ok(t), Ok(x)) => (t.unwrap_or(0), x.unwrap_or(0)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot grant timestamps");
                    for (_, r) in reqs {
                        answer(r, Response::error(ErrorKind::Internal, e.to_string()));
                    }
                    return;
                }
            };
            if ts_needed > 0 {
                m.tso_grants.fetch_add(1, Ordering::Relaxed);
                m.timestamps_granted.fetch_add(ts_needed, Ordering::Relaxed);
            }
            let last_granted = (ts_needed > 0).then(|| Timestamp(next_ts + ts_needed - 1));
            // For slot reuse: below every snapshot of this batch and every active one.
            let wm = watermark::compute(
                st.table.oldest_snapshot(),
                Timestamp(next_ts.max(1)),
                st.watermark,
            );
            for (q, replier) in reqs {
                let r = match q {
                    Request::Register { node } => match st.members.register(node, now) {
                        Ok((epoch, old)) => {
                            m.registrations.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%node, %epoch, %peer, "node registered");
                            if let Some(old) = old {
                                let v = st.table.abort_all_of(node, old);
                                m.aborts.fetch_add(v.len() as u64, Ordering::Relaxed);
                                released.push((node, old));
                            }
                            Response::Registered {
                                epoch,
                                lease_ms: self.lease.as_millis() as u32,
                                status_region: STATUS_REGION,
                                status_capacity: st.table.region.capacity(),
                            }
                        }
                        Err(e) => {
                            tracing::error!(%node, error = %e, "cannot persist the epoch");
                            Response::error(ErrorKind::Internal, format!("persist epoch: {e}"))
                        }
                    },
                    Request::Heartbeat { node, epoch } => {
                        if st.members.renew(node, epoch, now) {
                            Response::LeaseRenewed {
                                lease_ms: self.lease.as_millis() as u32,
                            }
                        } else {
                            m.fenced_requests.fetch_add(1, Ordering::Relaxed);
                            fenced(node, epoch)
                        }
                    }
                    Request::Begin { node, epoch } => {
                        let (txn, snapshot) = (TxnId(next_txn), Timestamp(next_ts));
                        next_txn += 1;
                        next_ts += 1;
                        if !st.members.is_live(node, epoch, now) {
                            m.fenced_requests.fetch_add(1, Ordering::Relaxed);
                            fenced(node, epoch)
                        } else if st.table.begin(txn, node, epoch, snapshot, wm) {
                            m.begins.fetch_add(1, Ordering::Relaxed);
                            Response::Begun { txn, snapshot }
                        } else {
                            m.busy_begins.fetch_add(1, Ordering::Relaxed);
                            Response::error(
                                ErrorKind::Busy,
                                "status table full: the slot's previous transaction is not \
                                 retired yet (raise status_capacity or end old transactions)",
                            )
                        }
                    }
                    Request::Timestamps { count } => {
                        let first = Timestamp(next_ts);
                        next_ts += count as u64;
                        Response::Timestamps { first, count }
                    }
                    Request::Commit { node, epoch, txn } => {
                        let cts = Timestamp(next_ts);
                        next_ts += 1;
                        if !st.members.is_live(node, epoch, now) {
                            m.fenced_requests.fetch_add(1, Ordering::Relaxed);
                            fenced(node, epoch)
                        } else if failed {
                            Response::error(ErrorKind::Internal, "commit log failed")
                        } else {
                            match st.table.try_commit(txn, node, epoch, cts) {
                                CommitDecision::Committing(cts)
                                | CommitDecision::StillCommitting(cts) => {
                                    commits.push(PendingCommit { txn, cts, replier });
                                    continue;
                                }
                                CommitDecision::AlreadyCommitted(ts) => {
                                    Response::Committed { commit_ts: ts }
                                }
                                CommitDecision::Aborted => Response::Aborted,
                                CommitDecision::NotOwner => Response::error(
                                    ErrorKind::UnknownTxn,
                                    format!("txn {txn} belongs to another node or epoch"),
                                ),
                                CommitDecision::Unknown => Response::error(
                                    ErrorKind::UnknownTxn,
                                    format!("txn {txn} is not known to the GTM"),
                                ),
                            }
                        }
                    }
                    Request::Abort { txn, .. } => match st.table.abort_decision(txn) {
                        AbortDecision::Aborted => {
                            m.aborts.fetch_add(1, Ordering::Relaxed);
                            Response::Aborted
                        }
                        AbortDecision::Committed(ts) => Response::Committed { commit_ts: ts },
                        AbortDecision::Committing(_) => Response::error(
                            ErrorKind::Busy,
                            format!("txn {txn} is committing; its outcome is a commit"),
                        ),
                        AbortDecision::Unknown => Response::error(
                            ErrorKind::UnknownTxn,
                            format!("txn {txn} is not known to the GTM"),
                        ),
                    },
                    Request::GcWatermark => {
                        let w = watermark::compute(
                            st.table.oldest_snapshot(),
                            Timestamp(self.tso.current()),
                            st.watermark,
                        );
                        st.watermark = w;
                        Response::GcWatermark { ts: w }
                    }
                    Request::Outcomes { txns } => {
                        m.outcome_requests.fetch_add(1, Ordering::Relaxed);
                        m.outcome_lookups
                            .fetch_add(txns.len() as u64, Ordering::Relaxed);
                        Response::Outcomes(txns.iter().map(|&t| st.table.outcome(t)).collect())
                    }
                    Request::FreezeTarget { node, epoch } => {
                        // Every txn below it has ended: the oldest one in progress or
                        // committing, or the next id to be issued.
                        let next = if begins > 0 {
                            next_txn
                        } else {
                            self.txn_ids.current()
                        };
                        let target = st.table.oldest_active_txn().map_or(next, |t| t.0.min(next));
                        if !st.members.is_live(node, epoch, now) {
                            m.fenced_requests.fetch_add(1, Ordering::Relaxed);
                            fenced(node, epoch)
                        } else {
                            let members = &st.members;
                            match st.freezer.grant(node, epoch, TxnId(target), now, |n, e| {
                                members.is_live(n, e, now)
                            }) {
                                Ok((below, resume)) => {
                                    m.freeze_grants.fetch_add(1, Ordering::Relaxed);
                                    tracing::info!(%node, %below, ?resume, "freeze sweep granted");
                                    Response::FreezeTarget { below, resume }
                                }
                                Err(why) => Response::error(ErrorKind::Busy, why),
                            }
                        }
                    }
                    Request::Frozen { node, epoch, below } => {
                        if !st.members.is_live(node, epoch, now) {
                            m.fenced_requests.fetch_add(1, Ordering::Relaxed);
                            fenced(node, epoch)
                        } else {
                            // Taken at a timestamp above every snapshot granted so far.
                            let at = Timestamp(self.tso.current().max(next_ts));
                            match st.freezer.report(node, epoch, below, at) {
                                Ok(()) => {
                                    tracing::info!(%node, %below, "freeze sweep reported");
                                    after_grant_write.push((replier, Response::Frozen));
                                    continue;
                                }
                                Err(why) => Response::error(ErrorKind::BadRequest, why),
                            }
                        }
                    }
                    Request::FreezeProgress {
                        node,
                        epoch,
                        below,
                        point,
                    } => {
                        if !st.members.is_live(node, epoch, now) {
                            m.fenced_requests.fetch_add(1, Ordering::Relaxed);
                            fenced(node, epoch)
                        } else {
                            match st.freezer.progress(node, epoch, below, point) {
                                Ok(()) => {
                                    after_grant_write.push((replier, Response::ProgressNoted));
                                    continue;
                                }
                                Err(why) => Response::error(ErrorKind::BadRequest, why),
                            }
                        }
                    }
                    Request::Leave { node, epoch } => {
                        if st.members.remove(node, epoch) {
                            let v = st.table.abort_all_of(node, epoch);
                            m.aborts.fetch_add(v.len() as u64, Ordering::Relaxed);
                            released.push((node, epoch));
                            tracing::info!(%node, %epoch, aborted = v.len(), "node left");
                        }
                        Response::Left
                    }
                };
                replies.push((replier, r));
            }
            // Published after every commit of the batch is marked committing, before
            // any answer goes out: a reader of the word then finds every commit with a
            // timestamp at or below it decided or being decided (read-committed
            // statement snapshots, `GtmClient::published_timestamp`).
            if let Some(ts) = last_granted {
                st.table.region.publish_last_granted(ts);
            }
        }
        for (replier, r) in replies {
            answer(replier, r);
        }
        if !after_grant_write.is_empty() {
            // The newest grant state, written outside the state lock (after the other
            // answers of the batch went out): a sweep point is acknowledged only once
            // it is durable, so a GTM restart resumes from it.
            let written = self
                .grants
                .write(|| self.state.lock().freezer.durable_grant());
            for (replier, r) in after_grant_write {
                answer(
                    replier,
                    match &written {
                        Ok(()) => r,
                        Err(_) if r == Response::Frozen => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot keep the freeze sweep's point");
                            Response::error(ErrorKind::Internal, format!("sweep.grant: {e}"))
                        }
                    },
                );
            }
        }
        if !commits.is_empty() {
            self.commit_queue.lock().append(&mut commits);
            self.commit_wake.notify_one();
        }
        if !released.is_empty() {
            self.release_locks(released);
        }
    }

    /// Queues lock releases for the housekeeper (handlers never wait on storage nodes).
    fn release_locks(&self, pending: Vec<(NodeId, Epoch)>) {
        self.release_queue.lock().extend(pending);
        self.housekeeper_wake.notify_one();
    }

    /// Calls the releaser for every queued `(node, epoch)`; persists the ones every
    /// storage node acknowledged (they are owed no more); keeps the failures queued.
    /// `false` if some failed.
    fn run_releases(&self) -> bool {
        let pending = std::mem::take(&mut *self.release_queue.lock());
        let mut failed = Vec::new();
        let mut done = Vec::new();
        for (node, epoch) in pending {
            match self.releaser.release_locks_of(node, epoch) {
                Ok(()) => {
                    self.metrics.lock_releases.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%node, %epoch, "page locks released");
                    done.push((node, epoch));
                }
                Err(e) => {
                    self.metrics
                        .lock_release_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%node, %epoch, error = %e, "lock release failed; will retry");
                    failed.push((node, epoch));
                }
            }
        }
        if !done.is_empty() {
            self.state.lock().members.released(&done);
        }
        if failed.is_empty() {
            return true;
        }
        self.release_queue.lock().extend(failed);
        false
    }

    /// Expires leases, publishes the GC watermark, frees dead nodes' locks.
    fn run_housekeeper(&self) {
        let tick = self
            .reaper_interval
            .min(self.gc_publish_interval)
            .max(Duration::from_millis(1));
        let mut last_gc = Instant::now();
        // After a failed release the next attempt waits a tick (a new release wakes
        // the thread sooner), so storage nodes that are down are not called in a loop.
        let mut retry_later = false;
        loop {
            {
                let mut q = self.release_queue.lock();
                if (q.is_empty() || retry_later) && !self.stop.load(Ordering::Acquire) {
                    self.housekeeper_wake.wait_for(&mut q, tick);
                }
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            let mut expired_now = Vec::new();
            let mut freeze = None;
            {
                let mut st = self.state.lock();
                for (node, epoch) in st.members.expire(now) {
                    let victims = st.table.abort_all_of(node, epoch);
                    self.metrics.lease_expiries.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .aborts
                        .fetch_add(victims.len() as u64, Ordering::Relaxed);
                    tracing::warn!(
                        %node, %epoch, aborted = victims.len(),
                        "lease expired: node fenced, its in-progress transactions aborted"
                    );
                    expired_now.push((node, epoch));
                }
                if now.duration_since(last_gc) >= self.gc_publish_interval {
                    last_gc = now;
                    let w = watermark::compute(
                        st.table.oldest_snapshot(),
                        Timestamp(self.tso.current()),
                        st.watermark,
                    );
                    st.watermark = w;
                    st.table.region.publish_gc_watermark(w);
                    self.metrics.gc_watermark.store(w.0, Ordering::Relaxed);
                    freeze = st.freezer.ready(w);
                }
                self.metrics
                    .active_txns
                    .store(st.table.active_count() as u64, Ordering::Relaxed);
                self.metrics
                    .retired_commits
                    .store(st.table.outcome_index().len() as u64, Ordering::Relaxed);
                self.metrics
                    .live_members
                    .store(st.members.live_count() as u64, Ordering::Relaxed);
            }
            if !expired_now.is_empty() {
                self.release_queue.lock().extend(expired_now);
            }
            if let Some(below) = freeze {
                self.apply_freeze(below);
            }
            retry_later = !self.run_releases();
        }
    }

    /// Applies a reported freeze sweep whose old snapshots have ended: the floor is made
    /// durable first, then the outcomes below it are forgotten and the commit log is
    /// compacted (by the group-commit thread, which owns the log).
    fn apply_freeze(&self, below: TxnId) {
        // The fsyncs of the floor file run under the state lock: once a few minutes.
        let mut st = self.state.lock();
        if let Err(e) = st.freezer.raise_floor(below) {
            tracing::error!(error = %e, %below, "cannot persist the freeze floor; nothing dropped");
            return;
        }
        let before = st.table.outcome_index().len();
        st.table.freeze_below(below);
        let forgotten = before - st.table.outcome_index().len();
        drop(st);
        self.metrics.freezes.fetch_add(1, Ordering::Relaxed);
        self.metrics.freeze_floor.store(below.0, Ordering::Relaxed);
        tracing::info!(floor = %below, forgotten, "freeze floor raised");
        self.compact_to.fetch_max(below.0, Ordering::AcqRel);
        let _q = self.commit_queue.lock();
        self.commit_wake.notify_one();
    }

    /// Compacts the commit log if a new freeze floor asks for it (group-commit thread).
    fn compact_log(&self, log: &mut CommitLog) {
        let floor = self.compact_to.swap(0, Ordering::AcqRel);
        if floor == 0 {
            return;
        }
        match log.compact_below(TxnId(floor)) {
            Ok((kept, dropped)) => {
                self.metrics.log_compactions.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .log_records_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                self.metrics
                    .commit_log_records
                    .store(kept as u64, Ordering::Relaxed);
                tracing::info!(floor, kept, dropped, "commit log compacted");
            }
            Err(e @ commit_log::CompactError::Before(_)) => {
                // The old log stays in use, complete; the next floor tries again.
                tracing::warn!(error = %e, "commit log compaction failed");
            }
            Err(e @ commit_log::CompactError::After(_)) => {
                tracing::error!(error = %e, "commit log may not be durable; refusing commits");
                self.failed.store(true, Ordering::Release);
            }
        }
    }

    /// The group-commit loop: one fsync per group of commit records.
    fn run_group_commit(&self, mut log: CommitLog) {
        let mut buf = Vec::new();
        loop {
            let group = {
                let mut q = self.commit_queue.lock();
                while q.is_empty()
                    && !self.stop.load(Ordering::Acquire)
                    && self.compact_to.load(Ordering::Acquire) == 0
                {
                    self.commit_wake.wait(&mut q);
                }
                if q.is_empty() && self.stop.load(Ordering::Acquire) {
                    return;
                }
                std::mem::take(&mut *q)
            };
            self.compact_log(&mut log);
            if group.is_empty() {
                continue;
            }
            buf.clear();
            for c in &group {
                commit_log::encode_record(c.txn, c.cts, &mut buf);
            }
            if let Err(e) = log.append_durably(&buf) {
                // The durable state of these records is unknown: the callers get an error
                // (outcome unknown), the GTM refuses further commits and should be
                // restarted; recovery decides from what reached the disk.
                tracing::error!(path = %log.path().display(), error = %e, "commit log write failed");
                self.failed.store(true, Ordering::Release);
                for c in group {
                    answer(
                        c.replier,
                        Response::error(ErrorKind::Internal, format!("commit log failed: {e}")),
                    );
                }
                continue;
            }
            self.metrics.log_syncs.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .log_records
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            self.metrics
                .commit_log_records
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            self.metrics
                .commits
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            {
                let mut st = self.state.lock();
                for c in &group {
                    st.table.finish_commit(c.txn, c.cts);
                }
            }
            for c in group {
                answer(c.replier, Response::Committed { commit_ts: c.cts });
            }
        }
    }
}

fn fenced(node: NodeId, epoch: Epoch) -> Response {
    Response::error(
        ErrorKind::Fenced,
        format!("node {node} epoch {epoch} holds no live lease (expired or superseded)"),
    )
}
