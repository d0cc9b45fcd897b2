//! The coherent pager: this node's view of the shared page space (docs/protocols.md §1-2,
//! invariants 1, 2, 8 and 9).
//!
//! ## Coherence ticks
//!
//! The node keeps a counter, the *coherence clock*. A transaction takes a tick `t`
//! right after it obtained its snapshot. Every directory read (validation) and every
//! page fetch takes a tick `v` right before it is issued, and the frames it confirms
//! remember `v`. A cached image may serve the transaction iff
//!
//! * this node holds the page's X lock (then the cached image is the newest there is), or
//! * the frame was confirmed at `v > t`: that read was issued after the snapshot was
//!   obtained and saw the directory at the image's version with no other X holder, so
//!   every change committed before the snapshot is in the image (changes precede their
//!   commit, and a holder writes its image back when a reader asks).
//!
//! A directory entry is read lock word first, version word second (see
//! `common::storage::dir`), so "free at my cached version" is a state that existed at
//! one instant; and a confirmation stamps a frame only if it still holds the image of
//! the version the read checked ([`BufferPool::confirm_version`]).
//!
//! ## Trusting a cached image as the newest (invariant 9)
//!
//! The LOCKED frame flag says "this node holds the page's X lock, its image is the
//! newest". It is set only after the lock was granted and the newest image installed,
//! and it is cleared — together with the frame's confirmation — *before* the unlock is
//! sent (`CoherentPager::write_back_latched`). A reader loads a frame's flags before
//! its image, so a LOCKED it sees was set at an instant this node held the lock, and the
//! image it then loads holds every change committed before that instant. (Clearing the
//! flag only after the unlock let a transaction that began after another node's commit
//! read the image from before it, write over it and commit: a lost update.) A lock
//! grant this node never learned of (its wait timed out, the storage node granted it
//! later) is still answered: a revocation always ends in an unlock.
//!
//! A storage node that restarts forgets its locks. Each round first checks that every
//! storage node answers from the incarnation (process) whose locks this node holds; one
//! that restarted gets them back first (`CoherentPager::recover_storage`: within its
//! grace period it grants nothing else, and gives a page back only if it is free and
//! not changed past the claimed image), so a LOCKED image stays the newest and the pool
//! is kept. If it refuses, the pager is broken and the node rejoins.
//!
//! ## Validation rounds follow the changes, not the cache (change notices)
//!
//! Every storage node publishes a *change notice* (the page id) in a ring region each
//! time it gives a page's X lock to a node, after the directory names the new holder
//! and before the holder hears of the grant (`common::storage::notice`). A transaction
//! start runs a *round* (transactions that begin together share one: each waits for
//! the first round that starts after its tick):
//!
//! 1. take tick `v`; per storage node read the ring's head and the notices since the
//!    last round (one batched one-sided read); take tick `w`;
//! 2. every cached page a notice names (not X-locked here) loses its standing
//!    confirmation (`invalidated = w`) and is re-checked in one batched directory read
//!    (confirmed again if unchanged with no other holder);
//! 3. the round completes: `round_tick = v`.
//!
//! A frame's confirmation by a directory read at tick `c` (no X holder elsewhere, the
//! image's version) *stands* while no round has named its page since (`c >
//! invalidated`); a standing frame serves a transaction at tick `t` if a round with
//! `v > t` completed. Why: a change committed before the snapshot was made under a grant
//! whose notice was in the ring before the change, hence before the snapshot, hence
//! before that round read the head; so some round up to it consumed the notice, at a
//! `w` after the notice, after the grant was visible in the directory. A confirmation
//! read before that grant has `c < w` and no longer stands; one read after it saw the
//! new holder (no confirmation), or, once the holder released, the version it wrote back.
//! A frame installed while a round was invalidating (the round's lookup may have missed
//! it) does not claim a standing confirmation read before that round
//! (`BufferPool::begin_invalidation`).
//!
//! So a round costs the notices since the last one plus a re-check of the cached pages
//! among them, not the size of the pool. The first round, and a round that finds the
//! ring lapped it (more notices than slots since its last round), checks every cached
//! page instead: the directory words of every cached page not X-locked here, in one
//! batched one-sided read per storage node, listed from the frames' own words. Pages
//! still unconfirmed when used are validated singly (one round trip) and refetched
//! one-sided if stale. [`ValidationMode::EachAccess`] turns rounds off (the baseline).
//! Read committed runs a round per statement: it costs what changed since the last one.
//!
//! ## Pages X-held elsewhere
//!
//! A reader that finds another node holding a page's X lock asks it, through the
//! storage node, to write its image back; the holder also gives the lock up, so the
//! reader can confirm the image it then reads and keep using it from its cache (see
//! [`CoherentPager::handle_revocation`]).
//!
//! Writes and lazy X locks are in [`locks`]; the redo queues, and how a structure
//! change spanning storage nodes is ordered (invariant 8), in [`redo`].

mod locks;
use locks::Latches;
mod redo;
use redo::{RedoBuffer, RedoQueue};

use crate::buffer_pool::{BufferPool, Candidate, FrameFlags};
use crate::pager::{PageWrite, Pager, PagerError};
use common::ids::{NodeId, PageId, PageVersion};
use common::storage::client::StorageClient;
use common::storage::msg::Revocation;
use common::storage::page::Page;
use common::storage::StorageError;
use dashmap::DashMap;
use fail::fail_point;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationMode {
    /// A validation round per transaction start (shared by transactions that begin
    /// together) that re-checks the pages named by change notices since the last one.
    #[default]
    Batched,
    /// Every round checks every cached page (the design before change notices: its
    /// cost grows with the pool; kept as a baseline).
    FullRounds,
    /// Confirm every page on every access (one round trip each): the baseline.
    EachAccess,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Keep X locks across transactions until another node asks.
    #[default]
    Lazy,
    /// Write back and release after every change.
    Eager,
}

/// Counters of coherence work (exported as metrics, used by compute-bench).
#[derive(Default, Debug)]
pub struct CoherenceStats {
    pub validation_rounds: AtomicU64,
    pub pages_validated: AtomicU64,
    pub single_validations: AtomicU64,
    pub fetches: AtomicU64,
    pub round_trips: AtomicU64,
    pub lock_acquires: AtomicU64,
    pub write_backs: AtomicU64,
    /// Write-backs this node asked other nodes' X holders for (through the storage node).
    pub write_back_requests: AtomicU64,
    pub revocations: AtomicU64,
    /// Append-and-force requests sent (each one fsync round on a storage node).
    pub redo_forces: AtomicU64,
    /// Redo records made (one per page change), the bytes they encode to, and how
    /// many of them carry the whole page body instead of byte-range diffs.
    pub redo_records: AtomicU64,
    pub redo_bytes: AtomicU64,
    pub redo_images: AtomicU64,
    /// Change notices read by validation rounds.
    pub notices: AtomicU64,
    /// Rounds that checked every cached page (the first, or after being lapped).
    pub full_rounds: AtomicU64,
    /// Connections to a storage node made again (it restarted, or the link broke).
    pub storage_reconnects: AtomicU64,
    /// X locks taken back from a restarted storage node (`recover_storage`).
    pub locks_reclaimed: AtomicU64,
}

/// The storage nodes, each owning a range of page ids.
pub struct StorageSet {
    nodes: Vec<Arc<StorageClient>>,
    next_alloc: AtomicUsize,
}

impl StorageSet {
    pub fn new(nodes: Vec<Arc<StorageClient>>) -> StorageSet {
        assert!(!nodes.is_empty(), "at least one storage node");
        StorageSet {
            nodes,
            next_alloc: AtomicUsize::new(0),
        }
    }

    pub fn index_of(&self, page: PageId) -> Result<usize, PagerError> {
        self.nodes
            .iter()
            .position(|n| n.layout().index_of(page).is_some())
            .ok_or_else(|| PagerError::Storage(format!("no storage node owns page {page}")))
    }

    pub fn node(&self, i: usize) -> &Arc<StorageClient> {
        &self.nodes[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn for_page(&self, page: PageId) -> Result<&Arc<StorageClient>, PagerError> {
        Ok(&self.nodes[self.index_of(page)?])
    }
}

fn storage_err(e: StorageError) -> PagerError {
    match e {
        StorageError::Fenced { .. } => PagerError::Fenced(e.to_string()),
        other => PagerError::Storage(other.to_string()),
    }
}

#[derive(Default)]
struct Round {
    /// Tick at which the last completed round started.
    last_started: u64,
    /// Per storage node, the last change notice consumed (`None`: no round yet, so the
    /// next one is a full round).
    consumed: Vec<Option<u64>>,
    /// Per storage node, the incarnation (process) whose X locks this node holds; a
    /// round trusts the LOCKED frames only after hearing from that incarnation.
    incarnations: Vec<u64>,
}

/// This node's coherent view of the shared pages (see module doc).
pub struct CoherentPager {
    pub node: NodeId,
    pool: BufferPool,
    storage: StorageSet,
    clock: AtomicU64,
    latches: Arc<Latches>,
    rounds: Mutex<Round>,
    /// `Round::last_started`, readable without the lock (stored after the round's
    /// invalidations are done).
    round_tick: AtomicU64,
    /// Per storage node, redo not yet sent.
    redo: Vec<RedoQueue>,
    /// Redo sequence number (in its storage node's queue) of the newest change of each
    /// page this node changed and has not written back.
    page_redo: DashMap<PageId, u64>,
    /// Pages whose global X lock this node holds.
    held: DashMap<PageId, ()>,
    pub validation: ValidationMode,
    pub lock_mode: LockMode,
    pub stats: CoherenceStats,
    /// Why this pager cannot go on (a restarted storage node refused its locks back):
    /// the node must rejoin.
    broken: Mutex<Option<String>>,
    closed: std::sync::atomic::AtomicBool,
    /// Per storage node, how many times `recover_storage` began: a lock grant may set
    /// LOCKED only if no recovery began since its request (`lock_for_write`), else the
    /// recovery may have missed it and the restarted node may not count it as ours.
    recoveries: Vec<AtomicU64>,
}

impl CoherentPager {
    pub fn new(
        node: NodeId,
        frames: usize,
        storage: StorageSet,
        validation: ValidationMode,
        lock_mode: LockMode,
    ) -> Arc<CoherentPager> {
        let redo_queues = storage.len();
        let incarnations = (0..storage.len())
            .map(|i| storage.node(i).incarnation())
            .collect();
        Arc::new(CoherentPager {
            node,
            pool: BufferPool::new(frames),
            storage,
            clock: AtomicU64::new(1),
            latches: Arc::default(),
            rounds: Mutex::new(Round {
                incarnations,
                ..Round::default()
            }),
            round_tick: AtomicU64::new(0),
            redo: (0..redo_queues)
                .map(|_| RedoQueue {
                    buf: Mutex::new(RedoBuffer::default()),
                    flushed: Condvar::new(),
                })
                .collect(),
            page_redo: DashMap::new(),
            held: DashMap::new(),
            validation,
            lock_mode,
            stats: CoherenceStats::default(),
            broken: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            recoveries: (0..redo_queues).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Why this pager cannot serve until its node rejoins, if it cannot.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().clone()
    }

    /// Ends this pager's storage connections (its node rejoins or shuts down): no
    /// reconnect is made after this.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for i in 0..self.storage.len() {
            self.storage.node(i).close();
        }
    }

    /// Starts the thread that notices a lost storage connection while no transaction
    /// starts, so that a restarted storage node gets this node's locks back within its
    /// grace period (`recover_storage`). Wakes every 100 ms; costs an atomic load per
    /// storage node then.
    pub fn spawn_storage_watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name(format!("storage-watch-{}", self.node))
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let Some(p) = weak.upgrade() else { return };
                if p.closed.load(Ordering::Acquire) || p.broken().is_some() {
                    return;
                }
                let lost = (0..p.storage.len()).any(|i| p.storage.node(i).connection().is_closed());
                if lost {
                    if let Err(e) = p.validate_all() {
                        tracing::debug!(error = %e, "storage node not back yet");
                    }
                }
            });
    }

    /// Makes sure every storage node's connection is up and reaches the incarnation
    /// whose locks this node holds; reconnects and reclaims where not (the caller holds
    /// the rounds lock: no round runs meanwhile).
    fn ensure_storage(&self, r: &mut Round) -> Result<(), PagerError> {
        for i in 0..self.storage.len() {
            let c = self.storage.node(i);
            if c.connection().is_closed() || c.incarnation() != r.incarnations[i] {
                self.recover_storage(i, r)?;
            }
        }
        Ok(())
    }

    /// Storage node `i`'s connection ended: connect again. If the same process answers
    /// (the link broke), its locks and notices stand. If it restarted, it remembers no
    /// lock: take back, within its grace period, the X lock of every page this node
    /// holds there with a LOCKED frame (its image is the newest: nobody else could lock
    /// the page meanwhile; see `storage_node::store::reclaim`), forget the others, and
    /// check every cached page of it in the next round (its notice ring is new). A
    /// refusal breaks the pager: the node must rejoin with a new epoch.
    fn recover_storage(&self, i: usize, r: &mut Round) -> Result<(), PagerError> {
        if let Some(why) = self.broken() {
            return Err(PagerError::Storage(why));
        }
        let client = self.storage.node(i);
        let incarnation = client.reconnect().map_err(storage_err)?;
        self.stats
            .storage_reconnects
            .fetch_add(1, Ordering::Relaxed);
        if incarnation == r.incarnations[i] {
            tracing::info!(storage = i, "storage connection made again; same process");
            return Ok(());
        }
        // Before the held pages are listed: a grant in flight either set LOCKED before
        // this (it is listed) or sees this and undoes itself (`lock_for_write`).
        self.recoveries[i].fetch_add(1, Ordering::SeqCst);
        let mut claims = Vec::new();
        let mut forgotten = 0;
        let held: Vec<PageId> = self.held.iter().map(|e| *e.key()).collect();
        for p in held {
            if self.storage.index_of(p).ok() != Some(i) {
                continue;
            }
            match self.pool.get_quiet(p) {
                Some(c) if c.flags & FrameFlags::LOCKED != 0 => claims.push((p, c.image.version())),
                _ => {
                    self.held.remove(&p);
                    forgotten += 1;
                }
            }
        }
        fail_point!("coherence::before_reclaim");
        match client.reclaim(&claims) {
            Ok(()) => {}
            // Lost on the way (the node went down again): the next round tries again.
            Err(e)
                if !matches!(
                    e,
                    StorageError::ReclaimRefused(_) | StorageError::Fenced { .. }
                ) =>
            {
                return Err(storage_err(e));
            }
            Err(e) => {
                let why = format!(
                    "storage node {i} restarted and did not give this node's locks back: {e}"
                );
                tracing::warn!(storage = i, error = %e, "lock reclaim refused; the node must rejoin");
                *self.broken.lock() = Some(why.clone());
                return Err(PagerError::Storage(why));
            }
        }
        self.stats
            .locks_reclaimed
            .fetch_add(claims.len() as u64, Ordering::Relaxed);
        tracing::info!(
            storage = i,
            reclaimed = claims.len(),
            forgotten,
            "storage node restarted; locks reclaimed, pool kept"
        );
        r.incarnations[i] = incarnation;
        r.consumed[i] = None;
        Ok(())
    }

    /// Starts the revocation handlers on every storage connection.
    pub fn install_revocation_handlers(self: &Arc<Self>) -> Result<(), PagerError> {
        for i in 0..self.storage.len() {
            let weak = Arc::downgrade(self);
            self.storage
                .node(i)
                .on_revocation(move |_client, r: Revocation| {
                    if let Some(p) = weak.upgrade() {
                        // Each revocation on its own thread: one that waits for a local
                        // latch must not hold up others (that could close a wait cycle
                        // across nodes).
                        std::thread::spawn(move || {
                            if let Err(e) = p.handle_revocation(r) {
                                tracing::warn!(page = %r.page, error = %e, "revocation failed");
                            }
                        });
                    }
                })
                .map_err(storage_err)?;
        }
        Ok(())
    }

    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    pub fn storage(&self) -> &StorageSet {
        &self.storage
    }

    /// A fresh coherence tick (see module doc).
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A view for a transaction whose snapshot was obtained just before this call.
    ///
    /// Fails if some storage node cannot be proven alive after the tick (a validation
    /// round reads every storage node and checks it is alive; without rounds, each is
    /// asked): a LOCKED frame is trusted only while the incarnation that holds its lock
    /// for this node is the one running (invariant 9). A restarted storage node has
    /// forgotten every lock it gave; the round first takes them back
    /// (`recover_storage`), or fails until it can, and breaks the pager (the node must
    /// rejoin) if the storage node refuses.
    pub fn view(self: &Arc<Self>) -> Result<TxnView, PagerError> {
        let t = self.tick();
        if self.validation == ValidationMode::EachAccess {
            self.ensure_storage(&mut self.rounds.lock())?;
            for i in 0..self.storage.len() {
                self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
                self.storage.node(i).confirm_alive().map_err(storage_err)?;
            }
        } else {
            self.validate_after(t)?;
        }
        Ok(TxnView {
            pager: self.clone(),
            tick: t,
            touched: Arc::default(),
        })
    }

    /// Makes sure a bulk validation round that started after tick `t` has completed.
    fn validate_after(&self, t: u64) -> Result<(), PagerError> {
        let mut r = self.rounds.lock();
        if r.last_started > t {
            return Ok(());
        }
        let started = self.round(&mut r)?;
        r.last_started = started;
        self.round_tick.store(started, Ordering::Release);
        Ok(())
    }

    /// One validation round now; returns its tick.
    pub fn validate_all(&self) -> Result<u64, PagerError> {
        let mut r = self.rounds.lock();
        let started = self.round(&mut r)?;
        r.last_started = r.last_started.max(started);
        self.round_tick.fetch_max(started, Ordering::AcqRel);
        Ok(started)
    }

    /// A validation round (see the module doc, "Change notices"): per storage node, the
    /// notices since the last round, one batched read; the pages they name that this
    /// node caches are re-checked in one batched directory read; every other cached
    /// page stays confirmed. The first round, and one that finds the ring lapped it,
    /// checks every cached page instead.
    fn round(&self, r: &mut Round) -> Result<u64, PagerError> {
        let v = self.tick();
        self.stats.validation_rounds.fetch_add(1, Ordering::Relaxed);
        let n = self.storage.len();
        if r.consumed.len() != n {
            r.consumed = vec![None; n];
        }
        self.ensure_storage(r)?;
        let mut heads = Vec::with_capacity(n);
        let mut noticed: Vec<(usize, Vec<PageId>)> = Vec::new();
        let mut full = false;
        for i in 0..n {
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            let poll = self
                .storage
                .node(i)
                .poll_notices(r.consumed[i].unwrap_or(0))
                .map_err(storage_err)?;
            if poll.incarnation != r.incarnations[i] {
                return Err(PagerError::Storage(format!(
                    "storage node {i} restarted during the round"
                )));
            }
            heads.push(poll.head);
            match (r.consumed[i], poll.pages) {
                (Some(_), Some(pages)) if self.validation != ValidationMode::FullRounds => {
                    noticed.push((i, pages))
                }
                _ => full = true,
            }
        }
        fail_point!("coherence::round_after_notices");
        // After every head read: whatever a notice up to the heads announced is visible
        // in the directory to reads issued from here on.
        let w = self.tick();
        if full {
            self.stats.full_rounds.fetch_add(1, Ordering::Relaxed);
            self.pool.invalidate_all(w);
            let confirm_at = self.tick();
            self.confirm_every_cached_page(confirm_at)?;
        } else {
            if noticed.iter().any(|(_, p)| !p.is_empty()) {
                self.pool.begin_invalidation(w);
            }
            let confirm_at = self.tick();
            for (i, pages) in noticed {
                self.stats
                    .notices
                    .fetch_add(pages.len() as u64, Ordering::Relaxed);
                self.recheck_noticed(i, pages, w, confirm_at)?;
            }
        }
        for (i, h) in heads.into_iter().enumerate() {
            r.consumed[i] = Some(h);
        }
        Ok(v)
    }

    /// Invalidates the noticed pages this node caches (not X-locked here) at tick `w`
    /// and confirms, at `confirm_at`, those the directory (read now) shows unchanged
    /// with no X holder elsewhere.
    fn recheck_noticed(
        &self,
        i: usize,
        mut pages: Vec<PageId>,
        w: u64,
        confirm_at: u64,
    ) -> Result<(), PagerError> {
        pages.sort_unstable();
        pages.dedup();
        let mut cached: Vec<(PageId, PageVersion)> = Vec::new();
        for p in pages {
            let Some(c) = self.pool.get_quiet(p) else {
                continue;
            };
            if c.flags & FrameFlags::LOCKED != 0 {
                continue;
            }
            self.pool.invalidate(p, w);
            cached.push((p, c.image.version()));
        }
        if cached.is_empty() {
            return Ok(());
        }
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let ids: Vec<PageId> = cached.iter().map(|(p, _)| *p).collect();
        let entries = self
            .storage
            .node(i)
            .read_dir_entries(&ids)
            .map_err(storage_err)?;
        let mut confirmed = 0;
        for ((p, version), e) in cached.iter().zip(entries) {
            if e.version == *version && !e.busy && !self.held_elsewhere(e.holder) {
                confirmed += self.pool.confirm_version(*p, *version, confirm_at) as u64;
            }
        }
        self.stats
            .pages_validated
            .fetch_add(confirmed, Ordering::Relaxed);
        Ok(())
    }

    /// The full round: the directory words of every cached page not X-locked here, in
    /// one batched one-sided read per storage node; frames that match are confirmed at
    /// `v`, the rest marked stale.
    fn confirm_every_cached_page(&self, v: u64) -> Result<(), PagerError> {
        // Pages X-locked here need no confirmation; the rest are listed from the frames'
        // own words (see `BufferPool::validation_candidates`).
        let cached = self.pool.validation_candidates();
        let mut by_node: Vec<Vec<Candidate>> = vec![Vec::new(); self.storage.len()];
        for c in cached {
            if let Ok(i) = self.storage.index_of(c.page) {
                by_node[i].push(c);
            }
        }
        for (i, mut pages) in by_node.into_iter().enumerate() {
            if pages.is_empty() {
                continue;
            }
            pages.sort_unstable_by_key(|c| c.page);
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            let client = self.storage.node(i);
            let lo = pages[0].page;
            let hi = pages[pages.len() - 1].page;
            let span = hi.0 - lo.0 + 1;
            // Dense enough: one sequential read of the directory range beats one small
            // read per page.
            let entries = if span <= 8 * pages.len() as u64 {
                let range = client.read_dir_range(lo, span).map_err(storage_err)?;
                pages
                    .iter()
                    .map(|c| range[(c.page.0 - lo.0) as usize])
                    .collect()
            } else {
                let ids: Vec<PageId> = pages.iter().map(|c| c.page).collect();
                client.read_dir_entries(&ids).map_err(storage_err)?
            };
            let mut confirmed = 0;
            for (c, e) in pages.iter().zip(entries) {
                if e.version == c.version && !e.busy && !self.held_elsewhere(e.holder) {
                    confirmed += self.pool.confirm_candidate(c, v) as u64;
                } else {
                    self.pool.forget_candidate(c);
                }
            }
            self.stats
                .pages_validated
                .fetch_add(confirmed, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The image of `page` that a transaction at tick `t` may use.
    fn read_at(&self, page: PageId, t: u64) -> Result<Arc<Page>, PagerError> {
        // Loaded before the frame: the round it names had finished its invalidations,
        // so a frame still valid by notice after it was valid through that round.
        let round = self.round_tick.load(Ordering::Acquire);
        if let Some(c) = self.pool.get(page) {
            // The flags were loaded before the image (see `BufferPool::get`): LOCKED
            // seen means this node held the X lock at that instant (invariant 9: the
            // mark is cleared before the lock is given up), so the image loaded after it
            // holds every change committed before `t`.
            if c.flags & FrameFlags::LOCKED != 0 {
                return Ok(c.image);
            }
            if self.validation != ValidationMode::EachAccess
                && (c.validated > t || (c.notice_valid && round > t))
            {
                return Ok(c.image);
            }
            // Confirm this one page (one round trip).
            let v = self.tick();
            let client = self.storage.for_page(page)?;
            self.stats
                .single_validations
                .fetch_add(1, Ordering::Relaxed);
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            let e = client
                .read_dir_entries(&[page])
                .map_err(storage_err)?
                .pop()
                .expect("one entry");
            fail_point!("coherence::validate_after_dir_read");
            let held_elsewhere = self.held_elsewhere(e.holder);
            if e.version == c.image.version() && !e.busy && !held_elsewhere {
                // Stamp the frame only if it still holds the image just confirmed.
                self.pool.confirm_version(page, e.version, v);
                return Ok(c.image);
            }
        }
        self.fetch(page)
    }

    /// Whether a directory entry's X holder is someone else: another node, or an
    /// earlier incarnation (epoch) of this one — after a rejoin its locks and dirty
    /// pages belong to the dead incarnation until the storage node has fenced it and
    /// rebuilt them from its redo, so its images must be asked for like anyone's.
    fn held_elsewhere(&self, holder: Option<common::storage::dir::LockHolder>) -> bool {
        let epoch = self.storage.node(0).epoch();
        holder.is_some_and(|h| h.node != self.node || h.epoch != epoch)
    }

    /// Reads the newest image of `page` from its storage node (asking a remote X holder
    /// to write back first) and caches it.
    fn fetch(&self, page: PageId) -> Result<Arc<Page>, PagerError> {
        let client = self.storage.for_page(page)?;
        for _ in 0..3 {
            let v = self.tick();
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            let e = client
                .read_dir_entries(&[page])
                .map_err(storage_err)?
                .pop()
                .expect("one entry");
            let elsewhere = self.held_elsewhere(e.holder);
            if elsewhere {
                self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .write_back_requests
                    .fetch_add(1, Ordering::Relaxed);
                client.request_write_back(page).map_err(storage_err)?;
            }
            fail_point!("coherence::fetch_before_read");
            self.stats.fetches.fetch_add(1, Ordering::Relaxed);
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            let img = Arc::new(
                client
                    .read_pages(&[page])
                    .map_err(storage_err)?
                    .pop()
                    .expect("one page"),
            );
            // A holder may have changed the page again between its write-back and our
            // read; the tick rule only needs the read to follow the snapshot, which it
            // does, but the image must not be older than the directory said.
            if img.version() >= e.version {
                if let Some(c) = self.pool.get(page) {
                    if c.flags & FrameFlags::LOCKED != 0 {
                        // We took the lock meanwhile; our own image is authoritative.
                        return Ok(c.image);
                    }
                }
                // Confirmed for later notice rounds only if nobody else held the lock
                // when the directory was read (the holder may change it again later
                // without a new grant).
                match self
                    .pool
                    .install_clean(img.clone(), v, !elsewhere && !e.busy)
                {
                    Ok(_) => {}
                    Err(full) => {
                        self.relieve_pressure()?;
                        tracing::debug!(error = %full, "pool full; serving uncached");
                    }
                }
                return Ok(img);
            }
        }
        Err(PagerError::Storage(format!(
            "page {page} kept changing under a read"
        )))
    }

    /// Writes back and releases some pages this node holds, so frames can be reused.
    /// The caller may hold a latch, so latches are only tried (waiting here could close
    /// a cycle with a thread that holds one of these and waits for the caller's).
    fn relieve_pressure(&self) -> Result<(), PagerError> {
        let held: Vec<PageId> = self.held.iter().map(|e| *e.key()).take(64).collect();
        let mut freed = 0;
        for p in held {
            if let Some(unlatch) = self.latches.try_acquire(p) {
                let r = self.write_back_latched(p, false);
                unlatch();
                r?;
                freed += 1;
            }
        }
        if freed == 0 {
            std::thread::yield_now();
        }
        Ok(())
    }
}

/// A transaction's view of the pages: implements [`Pager`] with the transaction's tick,
/// and records which storage nodes its changes went to (to force their redo at commit).
pub struct TxnView {
    pager: Arc<CoherentPager>,
    tick: u64,
    /// Storage node index -> redo sequence number of this transaction's last change.
    touched: Arc<Mutex<HashMap<usize, u64>>>,
}

impl TxnView {
    /// Storage node index -> redo sequence number of this transaction's last change.
    pub fn touched(&self) -> HashMap<usize, u64> {
        self.touched.lock().clone()
    }

    pub fn pager(&self) -> &Arc<CoherentPager> {
        &self.pager
    }

    /// Adopts another view's touched storage nodes (a new statement of the same
    /// transaction under read committed).
    pub fn merge_touched(&self, other: &TxnView) {
        let theirs = other.touched();
        let mut mine = self.touched.lock();
        for (i, seq) in theirs {
            let e = mine.entry(i).or_insert(0);
            *e = (*e).max(seq);
        }
    }

    /// Makes this view's redo durable on every storage node it touched (one
    /// append-and-force request each, in parallel when there are several). Invariant 3:
    /// runs before the commit record is written.
    pub fn force_redo(&self) -> Result<(), PagerError> {
        let touched = self.touched();
        if touched.len() <= 1 {
            for (i, seq) in touched {
                self.pager.flush_redo(i, seq)?;
            }
            return Ok(());
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = touched
                .into_iter()
                .map(|(i, seq)| s.spawn(move || self.pager.flush_redo(i, seq)))
                .collect();
            for h in handles {
                h.join().expect("flush thread")?;
            }
            Ok(())
        })
    }
}

impl Pager for TxnView {
    fn read(&self, id: PageId) -> Result<Arc<Page>, PagerError> {
        self.pager.read_at(id, self.tick)
    }

    fn write(&self, id: PageId) -> Result<PageWrite, PagerError> {
        let unlatch = self.pager.latches.acquire(id);
        let img = match self.pager.lock_for_write(id) {
            Ok(img) => img,
            Err(e) => {
                unlatch();
                return Err(e);
            }
        };
        let pager = self.pager.clone();
        let touched = self.touched.clone();
        Ok(PageWrite::new(
            (*img).clone(),
            Box::new(move |page, after| pager.publish(&img, page, &touched, after)),
            unlatch,
        ))
    }

    fn allocate(&self) -> Result<PageWrite, PagerError> {
        let n = self
            .pager
            .storage
            .next_alloc
            .fetch_add(1, Ordering::Relaxed)
            % self.pager.storage.len();
        let id = self
            .pager
            .storage
            .node(n)
            .allocate_pages(1)
            .map_err(storage_err)?[0];
        self.write(id)
    }
}
