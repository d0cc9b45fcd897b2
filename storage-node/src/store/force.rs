//! Redo append and log force: validating and appending a request's redo records to
//! the sender's stream, queueing `ForceLog` waiters, and the log forcer thread that
//! fsyncs each named stream once per batch (group commit).
//!
//! Keeps invariant 1's log side: a record is accepted only from the page's X holder and
//! only if it continues the page's version chain (`before` equals the logged head), and
//! a request is appended whole or not at all. Keeps invariant 7: a force is answered
//! only after the stream was written and fsynced up to the asked LSN, and a page's
//! `durable` version advances only after that fsync (`Stream::finish_sync`, called only
//! by `Store::sync_streams` under `sync_lock`; appends do no I/O and never seal a
//! segment). A stream whose write or fsync failed is failed for good: its appends and
//! its forces past its durable LSN are refused until the node restarts, so nothing
//! lost with the failed tail is ever acknowledged (a resend of a lost record would
//! otherwise pass the dedup as "already logged").

use super::{io_err, reply, Core, ForceWaiter, Store};
use crate::metrics::Metrics;
use crate::redo::{Stream, SyncJob};
use common::fabric::Replier;
use common::ids::{Lsn, NodeId, PageId, PageVersion};
use common::storage::dir::LockHolder;
use common::storage::msg::{Response, ADMIN_NODE};
use common::storage::redo::RedoRecord;
use common::storage::StorageError;
use parking_lot::MutexGuard;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Store {
    pub(super) fn append_redo(
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
        // A stream whose write or fsync failed takes nothing more, resends included:
        // the dedup below would take a record lost with the failed tail for logged.
        if let Some(e) = core.streams.get(&who.node).and_then(|s| s.failure()) {
            return Err(StorageError::Io(e.to_string()));
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
                    self.opts.fs.clone(),
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
        let (end, full) = stream.append(&mut records).map_err(StorageError::Io)?;
        if full {
            // The active segment is full: the forcer writes the tail and seals it even
            // if nobody forces (appends never do I/O; the buffer stays bounded).
            self.queue_force(who.node, Lsn(0), None);
        }
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

    pub(super) fn force_log(
        &self,
        core: MutexGuard<'_, Core>,
        who: LockHolder,
        lsn: Lsn,
        replier: Replier,
    ) {
        Metrics::add(&self.metrics.force_requests, 1);
        let (durable, appended, failed) = match core.streams.get(&who.node) {
            Some(s) => (s.durable(), s.appended(), s.failure().map(str::to_string)),
            None => (Lsn(0), Lsn(0), None),
        };
        drop(core);
        // Up to `durable` was written and fsynced, also on a stream that failed later.
        if lsn <= durable {
            return reply(replier, Ok(Response::Lsn(durable)));
        }
        if let Some(e) = failed {
            return reply(replier, Err(StorageError::Io(e)));
        }
        if lsn > appended {
            return reply(
                replier,
                Err(StorageError::BadRequest(format!(
                    "force to LSN {lsn} beyond the stream's end {appended}"
                ))),
            );
        }
        self.queue_force(who.node, lsn, Some(replier));
    }

    /// Queues a force of `node`'s stream for the log forcer (`replier` None: nobody
    /// waits, e.g. a full segment to seal). The force queue's mutex is a leaf: it may be
    /// taken under the engine mutex.
    fn queue_force(&self, node: NodeId, lsn: Lsn, replier: Option<Replier>) {
        self.forces.lock().push(ForceWaiter { node, lsn, replier });
        self.force_cv.notify_one();
    }

    /// Writes and fsyncs the unwritten tails of the streams of `nodes` and records what
    /// became durable; returns each stream's durable LSN (or why its sync failed).
    ///
    /// The one writer of redo files: under `sync_lock`, for each stream, take its tail
    /// (`Stream::begin_sync`, engine mutex), write + fsync it and seal a full segment
    /// (`SyncJob::run`, no engine mutex, so appends and one-sided work go on), then
    /// record the result (`Stream::finish_sync`, engine mutex) before `sync_lock` is
    /// released. So tails reach a file in LSN order, a segment is sealed only after its
    /// last bytes were fsynced, and a stream's (and a page's) durable mark covers only
    /// bytes some job wrote and fsynced.
    pub(super) fn sync_streams(&self, nodes: &[NodeId]) -> HashMap<NodeId, Result<Lsn, String>> {
        let _serial = self.sync_lock.lock();
        let mut out = HashMap::new();
        let mut jobs: Vec<(NodeId, SyncJob)> = Vec::new();
        {
            let mut core = self.core.lock();
            for n in nodes {
                match core.streams.get_mut(n).map(|s| s.begin_sync()) {
                    Some(Ok(Some(job))) => jobs.push((*n, job)),
                    Some(Err(e)) => {
                        out.insert(*n, Err(e));
                    }
                    Some(Ok(None)) | None => {}
                }
            }
        }
        let mut done = Vec::with_capacity(jobs.len());
        for (n, job) in jobs {
            fail::fail_point!("storage::before_log_fsync");
            Metrics::add(&self.metrics.log_fsyncs, 1);
            done.push((n, job.run()));
        }
        let mut core = self.core.lock();
        for (n, d) in done {
            let s = core.streams.get_mut(&n).expect("streams are never removed");
            let (newly, r) = s.finish_sync(d);
            let r = r.map(|()| s.durable());
            if let Err(e) = &r {
                Metrics::add(&self.metrics.redo_stream_failures, 1);
                tracing::error!(node = %n, error = %e, "redo write/fsync failed; stream failed");
            }
            self.mark_durable(&mut core, newly);
            out.insert(n, r);
        }
        for n in nodes {
            if let (Some(s), false) = (core.streams.get(n), out.contains_key(n)) {
                out.insert(*n, Ok(s.durable()));
            }
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
                let Some(replier) = w.replier else { continue };
                match res.get(&w.node) {
                    Some(Ok(d)) if *d >= w.lsn => reply(replier, Ok(Response::Lsn(*d))),
                    Some(Err(e)) => reply(replier, Err(StorageError::Io(e.clone()))),
                    _ => reply(
                        replier,
                        Err(StorageError::Io("log force did not reach the LSN".into())),
                    ),
                }
            }
        }
    }
}
