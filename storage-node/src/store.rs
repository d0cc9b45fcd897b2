//! The page store engine: every request's logic, and the two background threads.
//!
//! ## Threads
//!
//! * fabric connection threads call [`Store::handle`]; it never blocks on a lock wait,
//!   a log force or page-file I/O: those requests keep their `Replier` (lock queue,
//!   force queue) or go to the worker as a [`Job`];
//! * the **log forcer** takes every queued `ForceLog` at once, fsyncs each stream they
//!   name once, and answers them all (group commit);
//! * the **worker** does page-file I/O: fault-ins, allocations (metadata fsync),
//!   `release_locks_of` rebuilds, checkpoints and log truncation, and expires long polls.
//!
//! One mutex (`core`) guards the in-memory state; fsyncs and page-file I/O happen
//! outside it, except reading back a dead node's redo records during a rebuild.
//!
//! ## Invariants (DESIGN.md section 7) kept here
//!
//! 1. *Versions totally ordered, changes under X:* `append_redo` accepts a record only
//!    from the page's X holder and only if `before` equals the page's last logged version
//!    ([`Store::append_redo`]); `write_back` only from the holder, only with a version
//!    above the stored one ([`Store::try_write_back`]).
//! 3. *WAL:* `write_back` refuses an image whose version is above the page's durable
//!    redo version; the checkpointer writes only such images; a dead node's page is
//!    rebuilt only from its stream after that stream was fsynced.
//! 6. *A fenced node writes nothing:* after `release_locks_of(node, epoch)` every request
//!    of that node with an epoch <= `epoch` is refused ([`Core::admit`]); the fence is
//!    persisted before the call returns, so it survives a restart.
//! 7. *Acknowledged commits survive a crash:* `force_log` answers only after fsync; a
//!    restart replays every durable record (`recovery`).

use crate::frames::FrameTable;
use crate::locks::{Acquire, Grant, LockTable};
use crate::metrics::Metrics;
use crate::page_dir::Regions;
use crate::page_file::{target_slot, PageFile, Slot};
use crate::redo::Stream;
use common::fabric::Replier;
use common::ids::{Epoch, Lsn, NodeId, PageId, PageVersion};
use common::storage::dir::{LockHolder, MAX_EPOCH};
use common::storage::msg::{
    encode_response, Envelope, Layout, Request, Response, Revocation, RevocationKind, ADMIN_NODE,
};
use common::storage::page::Page;
use common::storage::redo::RedoRecord;
use common::storage::StorageError;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a revocation long poll is parked.
const MAX_POLL: Duration = Duration::from_secs(5);
/// Worker tick when idle.
const TICK: Duration = Duration::from_millis(20);

/// Per-page state.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageMeta {
    /// Version of the stored (written-back) image.
    pub version: PageVersion,
    /// Highest version whose redo is durable (in any stream).
    pub durable: PageVersion,
    /// Highest version whose redo was appended (the chain head for the next record).
    pub logged: PageVersion,
    pub frame: Option<u32>,
    /// Versions of the valid images in the two page-file slots (0 = none).
    pub disk: [PageVersion; 2],
}

struct Poller {
    replier: Replier,
    deadline: Instant,
    conn: u64,
}

pub struct Core {
    pub pages: Vec<PageMeta>,
    pub frames: FrameTable,
    pub locks: LockTable,
    pub streams: HashMap<NodeId, Stream>,
    /// Per node, the highest fenced epoch: that epoch and all older ones are dead.
    pub fenced: HashMap<NodeId, Epoch>,
    revocations: HashMap<LockHolder, Vec<Revocation>>,
    pollers: HashMap<LockHolder, Poller>,
}

impl Core {
    pub fn new(pages: Vec<PageMeta>, frames: u32) -> Core {
        Core {
            pages,
            frames: FrameTable::new(frames),
            locks: LockTable::default(),
            streams: HashMap::new(),
            fenced: HashMap::new(),
            revocations: HashMap::new(),
            pollers: HashMap::new(),
        }
    }

    fn admit(&self, who: LockHolder) -> Result<(), StorageError> {
        if who.node == ADMIN_NODE {
            return Ok(());
        }
        if who.epoch.0 > MAX_EPOCH {
            return Err(StorageError::BadRequest(format!(
                "epoch {} exceeds {MAX_EPOCH}",
                who.epoch
            )));
        }
        match self.fenced.get(&who.node) {
            Some(e) if who.epoch <= *e => Err(StorageError::Fenced {
                node: who.node,
                epoch: who.epoch,
            }),
            _ => Ok(()),
        }
    }
}

/// Work for the worker thread.
enum Job {
    Allocate {
        count: u32,
        replier: Replier,
    },
    ReadPages {
        pages: Vec<PageId>,
        replier: Replier,
    },
    WriteBack {
        who: LockHolder,
        page: Page,
        replier: Replier,
    },
    ReleaseLocksOf {
        node: NodeId,
        epoch: Epoch,
        replier: Replier,
    },
}

struct ForceWaiter {
    node: NodeId,
    lsn: Lsn,
    replier: Replier,
}

pub struct StoreOptions {
    pub data_dir: PathBuf,
    pub first_page: PageId,
    pub page_count: u64,
    pub checkpoint_interval: Duration,
    pub redo_segment: u64,
}

pub struct Store {
    pub opts: StoreOptions,
    pub regions: Regions,
    pub page_file: PageFile,
    pub core: Mutex<Core>,
    forces: Mutex<Vec<ForceWaiter>>,
    force_cv: Condvar,
    jobs: Mutex<VecDeque<Job>>,
    job_cv: Condvar,
    pub metrics: Metrics,
    stopping: AtomicBool,
    /// Serialises metadata writes (allocation high-water mark, fences).
    meta_lock: Mutex<()>,
    /// Serialises redo tail writes + fsyncs.
    sync_lock: Mutex<()>,
}

fn reply(r: Replier, res: Result<Response, StorageError>) {
    r.reply(Ok(encode_response(&res)));
}

fn io_err(e: std::io::Error) -> StorageError {
    StorageError::Io(e.to_string())
}

impl Store {
    pub fn new(opts: StoreOptions, regions: Regions, page_file: PageFile, core: Core) -> Store {
        Store {
            opts,
            regions,
            page_file,
            core: Mutex::new(core),
            forces: Mutex::new(Vec::new()),
            force_cv: Condvar::new(),
            jobs: Mutex::new(VecDeque::new()),
            job_cv: Condvar::new(),
            metrics: Metrics::default(),
            stopping: AtomicBool::new(false),
            meta_lock: Mutex::new(()),
            sync_lock: Mutex::new(()),
        }
    }

    pub fn layout(&self) -> Layout {
        Layout {
            first_page: self.opts.first_page,
            page_count: self.opts.page_count,
            dir_region: self.regions.dir.id(),
            frame_region: self.regions.frames.id(),
            frames: self.core.lock().frames.len() as u32,
            notice_region: self.regions.notices.id(),
            notice_capacity: self.regions.notice_capacity,
        }
    }

    fn redo_dir(&self) -> PathBuf {
        self.opts.data_dir.join("redo")
    }

    /// Page index of an allocated page.
    fn index(&self, core: &Core, page: PageId) -> Result<u64, StorageError> {
        page.0
            .checked_sub(self.opts.first_page.0)
            .filter(|i| *i < core.pages.len() as u64)
            .ok_or(StorageError::NotAllocated(page))
    }

    fn page_id(&self, index: u64) -> PageId {
        PageId(self.opts.first_page.0 + index)
    }

    fn push_job(&self, job: Job) {
        self.jobs.lock().push_back(job);
        self.job_cv.notify_one();
    }

    // ---------------------------------------------------------------- request entry

    /// Handles one request from connection `conn`. Never blocks for long.
    pub fn handle(&self, conn: u64, env: Envelope, replier: Replier) {
        Metrics::add(&self.metrics.rpc_requests, 1);
        if self.stopping.load(Ordering::Acquire) {
            return reply(replier, Err(StorageError::ShuttingDown));
        }
        let who = LockHolder {
            node: env.node,
            epoch: env.epoch,
        };
        let mut core = self.core.lock();
        if let Err(e) = core.admit(who) {
            drop(core);
            return reply(replier, Err(e));
        }
        match env.request {
            Request::Describe => {
                let frames = core.frames.len() as u32;
                drop(core);
                let mut l = self.layout_without_lock();
                l.frames = frames;
                reply(replier, Ok(Response::Layout(l)))
            }
            Request::Metrics => {
                let gauges = self.gauges(&core);
                drop(core);
                let g: Vec<(&str, &str, u64)> =
                    gauges.iter().map(|(a, b, c)| (*a, *b, *c)).collect();
                reply(replier, Ok(Response::Text(self.metrics.render(&g))))
            }
            Request::Allocate { count } => {
                drop(core);
                self.push_job(Job::Allocate { count, replier })
            }
            Request::Lock { page } => self.lock_page(&mut core, who, conn, page, replier),
            Request::Unlock { page } => {
                let r = self.unlock_page(&mut core, who, page);
                drop(core);
                reply(replier, r.map(|_| Response::Done))
            }
            Request::WriteBack { page } => match self.try_write_back(&mut core, who, &page) {
                Ok(true) => {
                    drop(core);
                    reply(replier, Ok(Response::Done))
                }
                Ok(false) => {
                    drop(core);
                    self.push_job(Job::WriteBack { who, page, replier })
                }
                Err(e) => {
                    drop(core);
                    reply(replier, Err(e))
                }
            },
            Request::AppendRedo { records } => {
                let r = self.append_redo(&mut core, who, records);
                drop(core);
                reply(replier, r.map(Response::Lsn))
            }
            Request::AppendForce { records } => match self.append_redo(&mut core, who, records) {
                Ok(lsn) => self.force_log(core, who, lsn, replier),
                Err(e) => {
                    drop(core);
                    reply(replier, Err(e))
                }
            },
            Request::ForceLog { lsn } => self.force_log(core, who, lsn, replier),
            Request::ReadPages { pages } => match self.read_resident(&mut core, &pages) {
                Ok(Some(out)) => {
                    drop(core);
                    Metrics::add(&self.metrics.pages_read_rpc, out.len() as u64);
                    reply(replier, Ok(Response::Pages(out)))
                }
                Ok(None) => {
                    drop(core);
                    self.push_job(Job::ReadPages { pages, replier })
                }
                Err(e) => {
                    drop(core);
                    reply(replier, Err(e))
                }
            },
            Request::ReleaseLocksOf { node, epoch } => {
                drop(core);
                if node == ADMIN_NODE || epoch.0 > MAX_EPOCH {
                    return reply(
                        replier,
                        Err(StorageError::BadRequest(format!(
                            "cannot fence node {node} epoch {epoch}"
                        ))),
                    );
                }
                self.push_job(Job::ReleaseLocksOf {
                    node,
                    epoch,
                    replier,
                })
            }
            Request::NextRevocations { max_wait_ms } => {
                if let Some(list) = core.revocations.remove(&who).filter(|l| !l.is_empty()) {
                    drop(core);
                    return reply(replier, Ok(Response::Revocations(list)));
                }
                let wait = Duration::from_millis(u64::from(max_wait_ms)).min(MAX_POLL);
                let old = core.pollers.insert(
                    who,
                    Poller {
                        replier,
                        deadline: Instant::now() + wait,
                        conn,
                    },
                );
                drop(core);
                if let Some(old) = old {
                    reply(old.replier, Ok(Response::Revocations(Vec::new())));
                }
            }
            Request::RequestWriteBack { page } => {
                if let Err(e) = self.index(&core, page) {
                    drop(core);
                    return reply(replier, Err(e));
                }
                match core.locks.add_flush_waiter(page, who, replier) {
                    Ok(holder) => self.revoke(
                        &mut core,
                        holder,
                        Revocation {
                            page,
                            kind: RevocationKind::WriteBackAndKeep,
                        },
                    ),
                    Err(r) => {
                        drop(core);
                        reply(r, Ok(Response::Done))
                    }
                }
            }
        }
    }

    fn layout_without_lock(&self) -> Layout {
        Layout {
            first_page: self.opts.first_page,
            page_count: self.opts.page_count,
            dir_region: self.regions.dir.id(),
            frame_region: self.regions.frames.id(),
            frames: 0,
            notice_region: self.regions.notices.id(),
            notice_capacity: self.regions.notice_capacity,
        }
    }

    /// The text the `Metrics` RPC returns (every counter plus the gauges), for the
    /// `metrics_listen` endpoint.
    pub fn render_metrics(&self) -> String {
        let gauges = self.gauges(&self.core.lock());
        self.metrics.render(&gauges)
    }

    fn gauges(&self, core: &Core) -> Vec<(&'static str, &'static str, u64)> {
        vec![
            (
                "pages_allocated",
                "allocated pages",
                core.pages.len() as u64,
            ),
            ("frames", "page frames", core.frames.len() as u64),
            (
                "frames_dirty",
                "frames not yet checkpointed",
                core.frames.dirty_count() as u64,
            ),
            (
                "redo_streams",
                "redo streams (one per compute node)",
                core.streams.len() as u64,
            ),
        ]
    }

    /// The connection closed: nobody waits for its queued lock requests or long poll.
    pub fn disconnected(&self, conn: u64) {
        let mut core = self.core.lock();
        core.locks.remove_waiters_of_conn(conn);
        let gone: Vec<LockHolder> = core
            .pollers
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            core.pollers.remove(&k);
        }
    }

    // ---------------------------------------------------------------- locks

    fn lock_page(
        &self,
        core: &mut MutexGuard<'_, Core>,
        who: LockHolder,
        conn: u64,
        page: PageId,
        replier: Replier,
    ) {
        let idx = match self.index(core, page) {
            Ok(i) => i,
            Err(e) => return reply(replier, Err(e)),
        };
        if who.node == ADMIN_NODE {
            return reply(
                replier,
                Err(StorageError::BadRequest(
                    "the admin identity takes no locks".into(),
                )),
            );
        }
        match core.locks.acquire(page, who, conn, replier) {
            Acquire::Granted(r) => {
                self.regions.set_lock(idx, Some(who));
                Metrics::add(&self.metrics.lock_grants, 1);
                reply(r, Ok(Response::Done));
            }
            Acquire::AlreadyHeld(r) => reply(r, Ok(Response::Done)),
            Acquire::Queued { holder } => {
                Metrics::add(&self.metrics.lock_waits, 1);
                self.revoke(
                    core,
                    holder,
                    Revocation {
                        page,
                        kind: RevocationKind::WriteBackAndRelease,
                    },
                );
            }
        }
    }

    fn unlock_page(
        &self,
        core: &mut Core,
        who: LockHolder,
        page: PageId,
    ) -> Result<(), StorageError> {
        let idx = self.index(core, page)?;
        let (grant, flush) = core
            .locks
            .release(page, who)
            .map_err(|_| StorageError::NotHolder(page))?;
        if let Some(list) = core.revocations.get_mut(&who) {
            list.retain(|r| r.page != page);
        }
        self.pass_lock(core, idx, page, grant, flush);
        Ok(())
    }

    /// Publishes a lock hand-over in the directory and answers the new holder.
    fn pass_lock(
        &self,
        core: &mut Core,
        idx: u64,
        page: PageId,
        grant: Option<Grant>,
        flush: Vec<Replier>,
    ) {
        for r in flush {
            reply(r, Ok(Response::Done));
        }
        match grant {
            Some(g) => {
                self.regions.set_lock(idx, Some(g.who));
                Metrics::add(&self.metrics.lock_grants, 1);
                reply(g.replier, Ok(Response::Done));
                if g.contended {
                    self.revoke(
                        core,
                        g.who,
                        Revocation {
                            page,
                            kind: RevocationKind::WriteBackAndRelease,
                        },
                    );
                }
            }
            None => self.regions.set_lock(idx, None),
        }
    }

    /// Queues a revocation for `holder` and wakes its long poll.
    fn revoke(&self, core: &mut Core, holder: LockHolder, rev: Revocation) {
        Metrics::add(&self.metrics.revocations, 1);
        let list = core.revocations.entry(holder).or_default();
        match list.iter_mut().find(|r| r.page == rev.page) {
            Some(r) => {
                if rev.kind == RevocationKind::WriteBackAndRelease {
                    r.kind = rev.kind;
                }
            }
            None => list.push(rev),
        }
        if let Some(p) = core.pollers.remove(&holder) {
            let list = core.revocations.remove(&holder).unwrap_or_default();
            reply(p.replier, Ok(Response::Revocations(list)));
        }
    }

    // ---------------------------------------------------------------- frames

    /// A frame for a page that is not resident: a free or clean one (CLOCK). Marks the
    /// evicted page non-resident in memory; the caller publishes (which clears the
    /// evicted page's directory frame word before the frame is overwritten).
    fn take_frame(&self, core: &mut Core) -> Option<(u32, Option<u64>)> {
        let (f, old) = core.frames.victim()?;
        if let Some(q) = old {
            core.pages[q as usize].frame = None;
            Metrics::add(&self.metrics.evictions, 1);
        }
        Some((f, old))
    }

    /// Installs `page` (page index `idx`) into memory as the page's new stored image.
    /// Returns false if no frame is free.
    fn install(&self, core: &mut Core, idx: u64, page: &Page, dirty: bool) -> bool {
        let meta = core.pages[idx as usize];
        let (f, evicted) = match meta.frame {
            Some(f) => (f, None),
            None => match self.take_frame(core) {
                Some(x) => x,
                None => return false,
            },
        };
        self.regions.publish(idx, meta.version, f, evicted, page);
        let was_dirty = core.frames.get(f).dirty && core.frames.get(f).page == Some(idx);
        core.frames.set(f, idx, dirty || was_dirty);
        let m = &mut core.pages[idx as usize];
        m.frame = Some(f);
        m.version = page.version();
        true
    }

    // ---------------------------------------------------------------- write back

    /// `Ok(false)`: valid, but no frame is free right now (the worker retries after a
    /// checkpoint).
    fn try_write_back(
        &self,
        core: &mut Core,
        who: LockHolder,
        page: &Page,
    ) -> Result<bool, StorageError> {
        let h = page
            .verify()
            .map_err(|e| StorageError::Corrupt(format!("write_back: {e}")))?;
        let idx = self.index(core, h.id)?;
        if core.locks.holder(h.id) != Some(who) {
            return Err(StorageError::NotHolder(h.id));
        }
        let meta = core.pages[idx as usize];
        if h.version <= meta.version {
            return Err(StorageError::Stale {
                page: h.id,
                got: h.version,
                stored: meta.version,
            });
        }
        if h.version > meta.durable {
            return Err(StorageError::NotDurable {
                page: h.id,
                version: h.version,
            });
        }
        if !self.install(core, idx, page, true) {
            return Ok(false);
        }
        Metrics::add(&self.metrics.write_backs, 1);
        for r in core.locks.take_flush_waiters(h.id) {
            reply(r, Ok(Response::Done));
        }
        Ok(true)
    }

    // ---------------------------------------------------------------- redo

    fn append_redo(
        &self,
        core: &mut Core,
        who: LockHolder,
        mut records: Vec<RedoRecord>,
    ) -> Result<Lsn, StorageError> {
        if who.node == ADMIN_NODE {
            return Err(StorageError::BadRequest(
                "the admin identity has no redo stream".into(),
            ));
        }
        // Validate everything first: a request is appended whole or not at all.
        //
        // A record the stream already has (its `after` is at or below the page's logged
        // head while the sender holds the lock) is a resend: the sender's earlier
        // append-and-force was applied but its answer was lost (a timeout), and it sends
        // the same records again in front of newer ones. Only the lock holder appends a
        // page's records and it holds the lock since it read the version its first
        // record starts from, so such a record can only be its own; it is skipped, and
        // the force that follows covers it. Without this a lost answer would wedge the
        // stream (every resend a `VersionConflict`).
        let mut heads: HashMap<PageId, PageVersion> = HashMap::new();
        let mut resent = vec![false; records.len()];
        for (k, r) in records.iter().enumerate() {
            r.validate()
                .map_err(|e| StorageError::BadRequest(e.to_string()))?;
            let idx = self.index(core, r.page)?;
            if core.locks.holder(r.page) != Some(who) {
                return Err(StorageError::NotHolder(r.page));
            }
            let head = heads
                .entry(r.page)
                .or_insert(core.pages[idx as usize].logged);
            // A resend is the same record: where the stream still holds it (it was not
            // checkpointed away yet), the same versions and the same content.
            let same_as_logged = || {
                core.streams
                    .get(&who.node)
                    .and_then(|s| s.pending.get(&r.page))
                    .and_then(|q| q.iter().find(|p| p.after == r.after))
                    .is_none_or(|p| {
                        p.before == r.before
                            && p.len as usize == r.encoded_len()
                            && p.digest == r.digest()
                    })
            };
            if r.before == *head {
                *head = r.after;
            } else if r.after <= *head && same_as_logged() {
                resent[k] = true;
            } else {
                return Err(StorageError::VersionConflict {
                    page: r.page,
                    expected: *head,
                    got: r.before,
                });
            }
        }
        if resent.iter().any(|r| *r) {
            Metrics::add(
                &self.metrics.redo_resent,
                resent.iter().filter(|r| **r).count() as u64,
            );
            let mut k = 0;
            records.retain(|_| {
                k += 1;
                !resent[k - 1]
            });
        }
        if let std::collections::hash_map::Entry::Vacant(v) = core.streams.entry(who.node) {
            v.insert(
                Stream::open(
                    &self.redo_dir(),
                    who.node,
                    Lsn(0),
                    &[],
                    self.opts.redo_segment,
                )
                .map_err(io_err)?,
            );
        }
        let bytes: usize = records.iter().map(|r| r.encoded_len()).sum();
        let stream = core.streams.get_mut(&who.node).expect("inserted");
        let (end, newly) = stream.append(&mut records).map_err(io_err)?;
        self.mark_durable(core, newly);
        for (page, v) in heads {
            let idx = self.index(core, page)?;
            core.pages[idx as usize].logged = v;
        }
        Metrics::add(&self.metrics.redo_records, records.len() as u64);
        Metrics::add(&self.metrics.redo_bytes, bytes as u64);
        Ok(end)
    }

    fn mark_durable(&self, core: &mut Core, newly: Vec<(PageId, PageVersion)>) {
        for (page, v) in newly {
            if let Ok(idx) = self.index(core, page) {
                let m = &mut core.pages[idx as usize];
                if v > m.durable {
                    m.durable = v;
                }
            }
        }
    }

    fn force_log(&self, core: MutexGuard<'_, Core>, who: LockHolder, lsn: Lsn, replier: Replier) {
        Metrics::add(&self.metrics.force_requests, 1);
        let (durable, appended) = match core.streams.get(&who.node) {
            Some(s) => (s.durable, s.appended),
            None => (Lsn(0), Lsn(0)),
        };
        drop(core);
        if lsn <= durable {
            return reply(replier, Ok(Response::Lsn(durable)));
        }
        if lsn > appended {
            return reply(
                replier,
                Err(StorageError::BadRequest(format!(
                    "force to LSN {lsn} beyond the stream's end {appended}"
                ))),
            );
        }
        self.forces.lock().push(ForceWaiter {
            node: who.node,
            lsn,
            replier,
        });
        self.force_cv.notify_one();
    }

    /// Writes and fsyncs the unwritten tails of the streams of `nodes` (outside the core
    /// lock) and records durability. Serialised, so tails reach the file in order before
    /// anyone marks them durable.
    fn sync_streams(&self, nodes: &[NodeId]) -> HashMap<NodeId, Result<Lsn, String>> {
        let _serial = self.sync_lock.lock();
        type Tail = (NodeId, Arc<std::fs::File>, u64, Vec<u8>, Lsn);
        let tails: Vec<Tail> = {
            let mut core = self.core.lock();
            nodes
                .iter()
                .filter_map(|n| {
                    core.streams.get_mut(n).map(|s| {
                        let (f, off, bytes, upto) = s.take_unwritten();
                        (*n, f, off, bytes, upto)
                    })
                })
                .collect()
        };
        let mut out = HashMap::new();
        let mut synced = Vec::new();
        for (n, f, off, bytes, upto) in tails {
            fail::fail_point!("storage::before_log_fsync");
            Metrics::add(&self.metrics.log_fsyncs, 1);
            match f.write_all_at(&bytes, off).and_then(|_| f.sync_data()) {
                Ok(()) => synced.push((n, upto)),
                Err(e) => {
                    // The tail is lost from memory: the stream cannot continue safely.
                    tracing::error!(node = %n, error = %e, "redo write/fsync failed");
                    out.insert(n, Err(e.to_string()));
                }
            }
        }
        let mut core = self.core.lock();
        for (n, upto) in synced {
            let s = core.streams.get_mut(&n).expect("streams are never removed");
            let newly = s.mark_durable(upto);
            let d = s.durable;
            self.mark_durable(&mut core, newly);
            out.insert(n, Ok(d));
        }
        out
    }

    /// The log forcer: one fsync per stream for every force queued meanwhile.
    pub fn run_forcer(&self) {
        loop {
            let batch = {
                let mut q = self.forces.lock();
                while q.is_empty() && !self.stopping.load(Ordering::Acquire) {
                    self.force_cv.wait_for(&mut q, Duration::from_millis(100));
                }
                if q.is_empty() {
                    return;
                }
                std::mem::take(&mut *q)
            };
            let mut nodes: Vec<NodeId> = batch.iter().map(|w| w.node).collect();
            nodes.sort();
            nodes.dedup();
            let res = self.sync_streams(&nodes);
            for w in batch {
                match res.get(&w.node) {
                    Some(Ok(d)) if *d >= w.lsn => reply(w.replier, Ok(Response::Lsn(*d))),
                    Some(Err(e)) => reply(w.replier, Err(StorageError::Io(e.clone()))),
                    _ => reply(
                        w.replier,
                        Err(StorageError::Io("log force did not reach the LSN".into())),
                    ),
                }
            }
        }
    }

    // ---------------------------------------------------------------- reads

    /// All-resident fast path; `Ok(None)` if some page must be faulted in.
    fn read_resident(
        &self,
        core: &mut Core,
        pages: &[PageId],
    ) -> Result<Option<Vec<(u64, Page)>>, StorageError> {
        let mut frames = Vec::with_capacity(pages.len());
        for p in pages {
            let idx = self.index(core, *p)?;
            match core.pages[idx as usize].frame {
                Some(f) => frames.push(f),
                None => return Ok(None),
            }
        }
        Ok(Some(
            frames
                .into_iter()
                .map(|f| {
                    core.frames.touch(f);
                    (u64::from(f) + 1, self.regions.read_frame(f))
                })
                .collect(),
        ))
    }

    /// Makes page `idx` resident (worker only: reads the page file).
    fn fault_in(&self, idx: u64) -> Result<(), StorageError> {
        let id = self.page_id(idx);
        for _ in 0..4 {
            let version = {
                let core = self.core.lock();
                let m = core.pages[idx as usize];
                if m.frame.is_some() {
                    return Ok(());
                }
                m.version
            };
            let image = if version == PageVersion(0) {
                Page::empty(id)
            } else {
                let slots = self.page_file.read_slots(idx, id).map_err(io_err)?;
                match slots.into_iter().find_map(|s| match s {
                    Slot::Valid(p) if p.version() == version => Some(p),
                    _ => None,
                }) {
                    Some(p) => p,
                    None => {
                        return Err(StorageError::Corrupt(format!(
                            "page {id}: no page-file slot holds version {version}"
                        )))
                    }
                }
            };
            let mut core = self.core.lock();
            if core.pages[idx as usize].frame.is_some() {
                return Ok(());
            }
            if core.pages[idx as usize].version != version {
                continue;
            }
            if self.install(&mut core, idx, &image, false) {
                Metrics::add(&self.metrics.fault_ins, 1);
                return Ok(());
            }
            drop(core);
            self.checkpoint()?;
        }
        Err(StorageError::Busy(format!(
            "no clean frame for page {id}; the node is short of memory"
        )))
    }

    fn read_pages_slow(&self, pages: &[PageId]) -> Result<Vec<(u64, Page)>, StorageError> {
        let mut out = Vec::with_capacity(pages.len());
        for p in pages {
            loop {
                let idx = {
                    let mut core = self.core.lock();
                    let idx = self.index(&core, *p)?;
                    if let Some(f) = core.pages[idx as usize].frame {
                        core.frames.touch(f);
                        out.push((u64::from(f) + 1, self.regions.read_frame(f)));
                        break;
                    }
                    idx
                };
                self.fault_in(idx)?;
            }
        }
        Metrics::add(&self.metrics.pages_read_rpc, out.len() as u64);
        Ok(out)
    }

    // ---------------------------------------------------------------- worker

    /// The worker loop: jobs, checkpoints, long-poll expiry. Returns at shutdown.
    pub fn run_worker(&self) {
        let mut last_ckpt = Instant::now();
        loop {
            let job = {
                let mut q = self.jobs.lock();
                if q.is_empty() && !self.stopping.load(Ordering::Acquire) {
                    self.job_cv.wait_for(&mut q, TICK);
                }
                q.pop_front()
            };
            match job {
                Some(j) => self.run_job(j),
                None if self.stopping.load(Ordering::Acquire) => return,
                None => {}
            }
            self.expire_polls();
            let (dirty, frames) = {
                let c = self.core.lock();
                (c.frames.dirty_count(), c.frames.len())
            };
            if dirty > 0
                && (last_ckpt.elapsed() >= self.opts.checkpoint_interval || dirty * 2 > frames)
            {
                if let Err(e) = self.checkpoint() {
                    tracing::error!(error = %e, "checkpoint failed");
                }
                last_ckpt = Instant::now();
            }
        }
    }

    fn expire_polls(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut core = self.core.lock();
            let keys: Vec<LockHolder> = core
                .pollers
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                if let Some(p) = core.pollers.remove(&k) {
                    expired.push(p.replier);
                }
            }
        }
        for r in expired {
            reply(r, Ok(Response::Revocations(Vec::new())));
        }
    }

    fn run_job(&self, job: Job) {
        match job {
            Job::Allocate { count, replier } => reply(replier, self.allocate(count)),
            Job::ReadPages { pages, replier } => {
                reply(replier, self.read_pages_slow(&pages).map(Response::Pages))
            }
            Job::WriteBack { who, page, replier } => {
                let mut res = Err(StorageError::Busy("no frame for the write-back".into()));
                for _ in 0..4 {
                    let r = {
                        let mut core = self.core.lock();
                        if let Err(e) = core.admit(who) {
                            res = Err(e);
                            break;
                        }
                        self.try_write_back(&mut core, who, &page)
                    };
                    match r {
                        Ok(true) => {
                            res = Ok(Response::Done);
                            break;
                        }
                        Ok(false) => {
                            if let Err(e) = self.checkpoint() {
                                res = Err(e);
                                break;
                            }
                        }
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                reply(replier, res)
            }
            Job::ReleaseLocksOf {
                node,
                epoch,
                replier,
            } => reply(
                replier,
                self.release_locks_of(node, epoch).map(|_| Response::Done),
            ),
        }
    }

    fn allocate(&self, count: u32) -> Result<Response, StorageError> {
        if count == 0 {
            return Err(StorageError::BadRequest("allocate 0 pages".into()));
        }
        let _meta = self.meta_lock.lock();
        let old = self.core.lock().pages.len() as u64;
        let new = old + u64::from(count);
        if new > self.opts.page_count {
            return Err(StorageError::Exhausted);
        }
        // Durable before anyone may use the pages: a restart must not hand them out again.
        crate::recovery::write_meta(&self.opts.data_dir, self.opts.first_page, new)
            .map_err(io_err)?;
        let mut core = self.core.lock();
        core.pages.resize(new as usize, PageMeta::default());
        for i in old..new {
            self.regions.set_version(i, PageVersion(0));
        }
        Ok(Response::Allocated {
            first: self.page_id(old),
            count,
        })
    }

    /// Fences `(node, <= epoch)`, rebuilds every page it held from the last
    /// written-back image plus its durable redo, and frees its locks.
    fn release_locks_of(&self, node: NodeId, epoch: Epoch) -> Result<(), StorageError> {
        Metrics::add(&self.metrics.fenced, 1);
        let dead = |h: &LockHolder| h.node == node && h.epoch <= epoch;
        let held: Vec<(LockHolder, PageId)>;
        {
            let mut core = self.core.lock();
            let e = core.fenced.entry(node).or_insert(epoch);
            if *e < epoch {
                *e = epoch;
            }
            let holders: Vec<LockHolder> = core
                .pollers
                .keys()
                .chain(core.revocations.keys())
                .copied()
                .filter(dead)
                .collect();
            for h in holders {
                core.revocations.remove(&h);
                if let Some(p) = core.pollers.remove(&h) {
                    reply(
                        p.replier,
                        Err(StorageError::Fenced {
                            node: h.node,
                            epoch: h.epoch,
                        }),
                    );
                }
            }
            let mut waiters = Vec::new();
            let mut all_held = Vec::new();
            for h in core.locks.holders() {
                if dead(&h) {
                    all_held.extend(core.locks.held_by(h).into_iter().map(|p| (h, p)));
                }
            }
            for h in core.locks.waiting_identities() {
                if dead(&h) {
                    waiters.extend(core.locks.remove_waiters_of(h).into_iter().map(|r| (h, r)));
                }
            }
            for (h, r) in waiters {
                reply(
                    r,
                    Err(StorageError::Fenced {
                        node: h.node,
                        epoch: h.epoch,
                    }),
                );
            }
            held = all_held;
        }
        // The fence must survive a restart before we report success.
        {
            let _meta = self.meta_lock.lock();
            let fenced = self.core.lock().fenced.clone();
            crate::recovery::write_fences(&self.opts.data_dir, &fenced).map_err(io_err)?;
        }
        // Everything the dead node appended becomes durable, then is replayed.
        if let Some(Err(e)) = self.sync_streams(&[node]).remove(&node) {
            return Err(StorageError::Io(e));
        }
        for (h, page) in held {
            let idx = {
                let core = self.core.lock();
                self.index(&core, page)?
            };
            self.fault_in(idx)?;
            let mut core = self.core.lock();
            self.rebuild_page(&mut core, idx, node)?;
            if core.locks.holder(page) == Some(h) {
                let (grant, flush) = core.locks.force_release(page);
                self.pass_lock(&mut core, idx, page, grant, flush);
            }
        }
        tracing::info!(%node, %epoch, "node fenced; its page locks are released");
        Ok(())
    }

    /// Applies `node`'s durable redo for page `idx` past the stored image.
    fn rebuild_page(&self, core: &mut Core, idx: u64, node: NodeId) -> Result<(), StorageError> {
        let page = self.page_id(idx);
        let meta = core.pages[idx as usize];
        let Some(f) = meta.frame else {
            return Err(StorageError::Busy(format!(
                "page {page} was evicted during rebuild"
            )));
        };
        let Some(stream) = core.streams.get(&node) else {
            return Ok(());
        };
        let recs: Vec<_> = stream
            .pending
            .get(&page)
            .map(|q| {
                q.iter()
                    .copied()
                    .filter(|r| r.after > meta.version)
                    .collect()
            })
            .unwrap_or_default();
        if recs.is_empty() {
            return Ok(());
        }
        let mut image = self.regions.read_frame(f);
        for pr in recs {
            if pr.start.0 >= stream.durable.0 {
                break;
            }
            let rec = stream.read_record(&pr).map_err(io_err)?;
            if rec.before != image.version() {
                tracing::error!(%page, have = %image.version(), record = %rec.before,
                    "gap in the dead node's redo; page rebuilt up to the gap");
                break;
            }
            rec.apply(&mut image)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        }
        if image.version() > meta.version {
            let ok = self.install(core, idx, &image, true);
            debug_assert!(ok, "the page is resident");
            Metrics::add(&self.metrics.pages_rebuilt, 1);
            tracing::info!(%page, from = %meta.version, to = %image.version(), %node,
                "page rebuilt from the dead holder's redo");
        }
        let m = &mut core.pages[idx as usize];
        // Whatever could not be replayed is gone; the chain continues from here.
        m.logged = m.version;
        m.durable = m.durable.max(m.version);
        Ok(())
    }

    /// Writes every dirty frame whose redo is durable into its page-file slot, fsyncs,
    /// then truncates the redo streams. Returns the number of pages written.
    pub fn checkpoint(&self) -> Result<usize, StorageError> {
        const CHUNK: usize = 256;
        let dirty = self.core.lock().frames.dirty_frames();
        let mut written = 0;
        for chunk in dirty.chunks(CHUNK) {
            let mut batch = Vec::with_capacity(chunk.len());
            {
                let core = self.core.lock();
                for (f, idx) in chunk {
                    let fm = core.frames.get(*f);
                    if fm.page != Some(*idx) || !fm.dirty {
                        continue;
                    }
                    let m = core.pages[*idx as usize];
                    if m.version > m.durable {
                        // Cannot happen (write_back checks it); never break the WAL rule.
                        tracing::error!(page = %self.page_id(*idx), "dirty page ahead of its durable redo");
                        continue;
                    }
                    batch.push((
                        *f,
                        *idx,
                        m.version,
                        target_slot(m.disk),
                        self.regions.read_frame(*f),
                    ));
                }
            }
            for (_, idx, _, slot, image) in &batch {
                self.page_file
                    .write_slot(*idx, *slot, image)
                    .map_err(io_err)?;
            }
            self.page_file.sync().map_err(io_err)?;
            let mut paths = Vec::new();
            {
                let mut core = self.core.lock();
                for (f, idx, v, slot, _) in &batch {
                    core.pages[*idx as usize].disk[*slot] = *v;
                    let still = core.frames.get(*f).page == Some(*idx)
                        && core.pages[*idx as usize].version == *v;
                    if still {
                        core.frames.set_dirty(*f, false);
                    }
                    let page = self.page_id(*idx);
                    for s in core.streams.values_mut() {
                        s.checkpointed(page, *v);
                    }
                }
                for s in core.streams.values_mut() {
                    paths.extend(s.truncate());
                }
            }
            for p in &paths {
                if let Err(e) = std::fs::remove_file(p) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot delete a truncated redo segment");
                }
            }
            written += batch.len();
            Metrics::add(&self.metrics.segments_truncated, paths.len() as u64);
        }
        Metrics::add(&self.metrics.checkpoints, 1);
        Metrics::add(&self.metrics.pages_checkpointed, written as u64);
        Ok(written)
    }

    /// Clean shutdown: refuse new requests, make every stream durable, checkpoint all.
    pub fn flush_for_shutdown(&self) -> Result<(), StorageError> {
        self.stopping.store(true, Ordering::Release);
        self.force_cv.notify_all();
        self.job_cv.notify_all();
        let nodes: Vec<NodeId> = self.core.lock().streams.keys().copied().collect();
        for (n, r) in self.sync_streams(&nodes) {
            if let Err(e) = r {
                return Err(StorageError::Io(format!("stream {n}: {e}")));
            }
        }
        for _ in 0..4 {
            if self.checkpoint()? == 0 {
                break;
            }
        }
        Ok(())
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.force_cv.notify_all();
        self.job_cv.notify_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}
