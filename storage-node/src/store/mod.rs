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
//! Lock order: `sync_lock` → `core` → `forces` (a leaf). `sync_lock` orders every redo
//! write, fsync, segment seal and durable mark: only `Store::sync_streams` (the log
//! forcer, a rebuild, shutdown) writes records to redo files, and it holds `sync_lock`
//! from taking a stream's tail (`Stream::begin_sync`, under `core`) through the write
//! and fsync (without `core`) to recording it durable (`Stream::finish_sync`, under
//! `core`).
//! `meta_lock` orders the metadata files (allocation mark, fences).
//!
//! ## Invariants (docs/design.md) kept here
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
//!    restart replays every durable record (`recovery`). A stream whose write or fsync
//!    failed refuses appends and forces past its durable LSN until a restart.
//!
//! ## Files
//!
//! * this file — the [`Store`] and its state ([`Core`]), admission of a request
//!   (fencing), and dispatch of each request to its handler;
//! * `locks` — the page-lock protocol: grants, hand-overs, revocations;
//! * `force` — redo append, log force and the log forcer (group commit);
//! * `pages` — frames, write-back, reads and fault-in, checkpoints;
//! * `worker` — the worker thread: its job queue, long-poll expiry, allocation;
//! * `rebuild` — `release_locks_of`: fencing a dead node and rebuilding its pages.

mod force;
mod locks;
mod pages;
mod rebuild;
mod reclaim;
mod worker;

use crate::frames::FrameTable;
use crate::locks::LockTable;
use crate::metrics::Metrics;
use crate::page_dir::Regions;
use crate::page_file::PageFile;
use crate::redo::Stream;
use crate::slot_map::SlotMap;
use common::durable::DurableFs;
use common::fabric::Replier;
use common::ids::{Epoch, Lsn, NodeId, PageId, PageVersion};
use common::storage::dir::{LockHolder, MAX_EPOCH};
use common::storage::msg::{
    encode_response, Envelope, Layout, Request, Response, Revocation, RevocationKind, ADMIN_NODE,
};
use common::storage::page::Page;
use common::storage::StorageError;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::page_meta::PageMeta;

/// Longest a revocation long poll is parked.
const MAX_POLL: Duration = Duration::from_secs(5);

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
    /// Pages whose holders were asked to write back for log truncation: the version
    /// asked for, and when.
    truncation_asks: HashMap<PageId, (PageVersion, Instant)>,
    /// Per compute node, the newest epoch that connected (durable in `members`).
    pub members: HashMap<NodeId, Epoch>,
    /// The reclaim grace period after a restart (`reclaim`).
    grace: Option<reclaim::Grace>,
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
            truncation_asks: HashMap::new(),
            members: HashMap::new(),
            grace: None,
        }
    }

    /// Starts the reclaim grace period after a restart: every recorded member that is
    /// not fenced may hold locks from the previous incarnation. None: nothing to wait
    /// for.
    pub fn start_grace(&mut self, grace: Duration) {
        let pending: HashSet<LockHolder> = self
            .members
            .iter()
            .map(|(n, e)| LockHolder {
                node: *n,
                epoch: *e,
            })
            .filter(|h| self.admit(*h).is_ok())
            .collect();
        if grace.is_zero() || pending.is_empty() {
            return;
        }
        let now = Instant::now();
        tracing::info!(
            members = pending.len(),
            grace_ms = grace.as_millis() as u64,
            "waiting for compute nodes to reclaim their locks"
        );
        self.grace = Some(reclaim::Grace {
            until: now + grace,
            pending,
            parked: Vec::new(),
            started: now,
        });
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
    /// A compute node's first request: record it in `members`, then describe.
    Join {
        who: LockHolder,
        replier: Replier,
    },
}

struct ForceWaiter {
    node: NodeId,
    lsn: Lsn,
    /// None: a sync nobody waits for (a full segment to seal).
    replier: Option<Replier>,
}

pub struct StoreOptions {
    /// Where every durable file lives (`StdFs` in the service; `SimFs` in the
    /// power-loss tests).
    pub fs: Arc<dyn DurableFs>,
    pub data_dir: PathBuf,
    pub first_page: PageId,
    pub page_count: u64,
    pub checkpoint_interval: Duration,
    pub redo_segment: u64,
    /// Redo a stream keeps before holders of the pages that hold it back are asked to
    /// write them back (`pages::ask_holders_to_unpin_log`).
    pub redo_retain: u64,
    /// Drawn at random at start-up (`Layout::incarnation`).
    pub incarnation: u64,
}

pub struct Store {
    pub opts: StoreOptions,
    pub regions: Regions,
    pub page_file: PageFile,
    /// Which version each page-file slot holds (written after the page file's fsync,
    /// before the redo is truncated; `slot_map`).
    pub slot_map: SlotMap,
    pub core: Mutex<Core>,
    forces: Mutex<Vec<ForceWaiter>>,
    force_cv: Condvar,
    jobs: Mutex<VecDeque<Job>>,
    job_cv: Condvar,
    pub metrics: Metrics,
    stopping: AtomicBool,
    /// Serialises metadata writes (allocation high-water mark, fences).
    meta_lock: Mutex<()>,
    /// Serialises checkpoints (the worker's and the shutdown's): each picks target
    /// slots from `PageMeta::disk` and updates it after its fsyncs.
    checkpoint_lock: Mutex<()>,
    /// Serialises redo tail writes, fsyncs, segment seals and durable marks (taken
    /// before `core`).
    sync_lock: Mutex<()>,
}

fn reply(r: Replier, res: Result<Response, StorageError>) {
    r.reply(Ok(encode_response(&res)));
}

fn io_err(e: std::io::Error) -> StorageError {
    StorageError::Io(e.to_string())
}

impl Store {
    pub fn new(
        opts: StoreOptions,
        regions: Regions,
        page_file: PageFile,
        slot_map: SlotMap,
        core: Core,
    ) -> Store {
        Store {
            opts,
            regions,
            page_file,
            slot_map,
            core: Mutex::new(core),
            forces: Mutex::new(Vec::new()),
            force_cv: Condvar::new(),
            jobs: Mutex::new(VecDeque::new()),
            job_cv: Condvar::new(),
            metrics: Metrics::default(),
            stopping: AtomicBool::new(false),
            meta_lock: Mutex::new(()),
            checkpoint_lock: Mutex::new(()),
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
            incarnation: self.opts.incarnation,
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
                let known = core.members.get(&who.node).is_some_and(|e| *e >= who.epoch);
                drop(core);
                if who.node != ADMIN_NODE && !known {
                    return self.push_job(Job::Join { who, replier });
                }
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
            Request::Reclaim { pages, done } => {
                let r = self.reclaim(&mut core, who, &pages, done);
                drop(core);
                reply(replier, r)
            }
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
            incarnation: self.opts.incarnation,
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
            (
                "redo_streams_failed",
                "redo streams that refuse appends after a write or fsync error",
                core.streams
                    .values()
                    .filter(|s| s.failure().is_some())
                    .count() as u64,
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

    /// Clean shutdown: refuse new requests, make every stream durable, checkpoint all.
    pub fn flush_for_shutdown(&self) -> Result<(), StorageError> {
        self.stopping.store(true, Ordering::Release);
        self.force_cv.notify_all();
        self.job_cv.notify_all();
        let nodes: Vec<NodeId> = self.core.lock().streams.keys().copied().collect();
        let mut failed = None;
        for (n, r) in self.sync_streams(&nodes) {
            if let Err(e) = r {
                failed.get_or_insert(StorageError::Io(format!("stream {n}: {e}")));
            }
        }
        // Checkpoints write only images whose redo is durable, also when a stream
        // failed: what they write is still right, and shortens the next recovery.
        for _ in 0..4 {
            if self.checkpoint()? == 0 {
                break;
            }
        }
        failed.map_or(Ok(()), Err)
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
