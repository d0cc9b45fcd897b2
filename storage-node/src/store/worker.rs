//! The worker thread: runs the jobs that need page-file or metadata I/O (allocation,
//! slow reads, write-backs waiting for a frame, `release_locks_of`), expires long
//! polls, and starts checkpoints on time (when frames are dirty or a redo stream keeps
//! more than `redo_retain`) or when half the frames are dirty.
//!
//! Keeps the rule that fabric threads never block on I/O: they hand such requests over
//! as a `Job`. An allocation is made durable in the metadata file before the pages are
//! handed out, so a restart never hands them out again.

use super::{io_err, reply, Job, PageMeta, Store};
use common::ids::PageVersion;
use common::storage::dir::LockHolder;
use common::storage::msg::Response;
use common::storage::StorageError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Worker tick when idle.
const TICK: Duration = Duration::from_millis(20);

impl Store {
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
            self.check_grace();
            let (dirty, frames, log_over) = {
                let c = self.core.lock();
                let over = c
                    .streams
                    .values()
                    .any(|s| s.retained_bytes() > self.opts.redo_retain);
                (c.frames.dirty_count(), c.frames.len(), over)
            };
            // A log over its retained size checkpoints on time even with nothing dirty:
            // that is when the pages holding it back are asked for.
            let due = last_ckpt.elapsed() >= self.opts.checkpoint_interval;
            if (dirty > 0 && (due || dirty * 2 > frames)) || (log_over && due) {
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
            Job::Join { who, replier } => reply(replier, self.join(who)),
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

    /// Records a compute node's identity in `members` (durably: after a restart it is
    /// waited for to reclaim its locks) before its first answer, which describes the
    /// node.
    fn join(&self, who: LockHolder) -> Result<Response, StorageError> {
        let _meta = self.meta_lock.lock();
        let members = {
            let mut core = self.core.lock();
            core.admit(who)?;
            let e = core.members.entry(who.node).or_insert(who.epoch);
            if *e < who.epoch {
                *e = who.epoch;
            }
            // A newer epoch of a node supersedes the older ones (the GTM fences them):
            // they will not reclaim.
            self.forget_member(&mut core, |h| h.node == who.node && h.epoch < who.epoch);
            core.members.clone()
        };
        crate::recovery::write_members(&*self.opts.fs, &self.opts.data_dir, &members)
            .map_err(io_err)?;
        Ok(Response::Layout(self.layout()))
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
        crate::recovery::write_meta(
            &*self.opts.fs,
            &self.opts.data_dir,
            self.opts.first_page,
            new,
        )
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
}
