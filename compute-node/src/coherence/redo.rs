//! Redo queues: one per storage node, group-committed (invariants 3 and 8).
//!
//! Each storage node has its own queue; a commit (or a write-back, which must follow
//! its redo) flushes it with one append-and-force that carries everything queued so
//! far. A B-link split changes pages that may live on different storage nodes, and
//! each queue is made durable on its own, so the tree orders its publishes
//! ([`crate::pager::PageWrite::after`]): new right page, then left page, then parent
//! (or new root, then meta page). A record ordered after one in another queue is sent
//! only once that one is durable (`CoherentPager::flush_redo_to`), so whatever a
//! crash leaves durable is a prefix of the split, and every prefix is a valid tree.
//! Records of unrelated changes carry no such order: commits still force their storage
//! nodes in parallel.

use super::{storage_err, CoherentPager, LockMode};
use crate::buffer_pool::FrameFlags;
use crate::pager::{PagerError, Published};
use common::storage::page::Page;
use common::storage::redo::{RedoBody, RedoRecord};
use fail::fail_point;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Redo records waiting to be sent to one storage node: changes append here without a
/// round trip; a commit (or a write-back, which must follow its redo: WAL) flushes the
/// buffer with one append-and-force request that carries every record queued so far —
/// so concurrent committers share one request and one fsync.
#[derive(Default)]
pub(super) struct RedoBuffer {
    records: Vec<RedoRecord>,
    /// Sequence number of the last record pushed.
    pushed: u64,
    /// Records up to this sequence number are durable on the storage node.
    durable: u64,
    flushing: bool,
    /// Records that may be sent only once a record of another storage node's queue is
    /// durable (a structure change spanning storage nodes, invariant 8).
    deps: Vec<RedoDep>,
}

/// Record `seq` of this queue waits for record `other_seq` of queue `other`.
#[derive(Clone, Copy, Debug)]
pub(super) struct RedoDep {
    seq: u64,
    other: usize,
    other_seq: u64,
}

impl RedoBuffer {
    /// Per other queue, the newest record that must be durable before the records up to
    /// `upto` may be sent.
    pub(super) fn deps_upto(&self, upto: u64) -> HashMap<usize, u64> {
        let mut need: HashMap<usize, u64> = HashMap::new();
        for d in self.deps.iter().filter(|d| d.seq <= upto) {
            let e = need.entry(d.other).or_insert(0);
            *e = (*e).max(d.other_seq);
        }
        need
    }
}

pub(super) struct RedoQueue {
    pub(super) buf: Mutex<RedoBuffer>,
    pub(super) flushed: Condvar,
}

impl CoherentPager {
    /// Makes this node's redo for storage node `i` durable up to sequence `seq`,
    /// sending everything queued so far in one append-and-force request (group commit).
    pub(super) fn flush_redo(&self, i: usize, seq: u64) -> Result<(), PagerError> {
        self.flush_redo_to(i, seq, false)
    }

    /// As [`CoherentPager::flush_redo`]; with `exact`, sends nothing past `seq`.
    ///
    /// Records that depend on another queue's records (invariant 8) are sent only after
    /// those are durable: first the dependencies are flushed, `exact`ly up to what is
    /// needed (so the recursion only ever goes to records pushed earlier, and ends),
    /// then the records up to the point whose dependencies were met. The `flushing`
    /// flag is set only around the send itself, which waits for nothing else, so two
    /// queues flushing each other's dependencies cannot deadlock.
    pub(super) fn flush_redo_to(&self, i: usize, seq: u64, exact: bool) -> Result<(), PagerError> {
        let q = &self.redo[i];
        let mut cap = exact.then_some(seq);
        let mut b = q.buf.lock();
        loop {
            if b.durable >= seq {
                return Ok(());
            }
            if b.flushing {
                q.flushed.wait(&mut b);
                continue;
            }
            let upto = cap.unwrap_or(b.pushed).min(b.pushed);
            let need = b.deps_upto(upto);
            if !need.is_empty() {
                drop(b);
                for (j, s) in need {
                    self.flush_redo_to(j, s, true)?;
                }
                b = q.buf.lock();
                b.deps.retain(|d| d.seq > upto);
                cap = Some(upto);
                continue;
            }
            // Unsent records start right after `durable` (none is in flight).
            let n = (upto.saturating_sub(b.durable) as usize).min(b.records.len());
            let mut records: Vec<RedoRecord> = b.records.drain(..n).collect();
            let sent_upto = b.durable + n as u64;
            b.flushing = true;
            drop(b);
            fail_point!("coherence::before_redo_force");
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            self.stats.redo_forces.fetch_add(1, Ordering::Relaxed);
            let res = self.storage.node(i).append_and_force(&records);
            fail_point!("coherence::after_redo_force");
            b = q.buf.lock();
            b.flushing = false;
            q.flushed.notify_all();
            match res {
                Ok(_) => b.durable = b.durable.max(sent_upto),
                Err(e) => {
                    // Not durable: put the records back in front (a later flush retries
                    // them in order; the storage node skips what it already has); the
                    // caller's transaction fails.
                    records.append(&mut b.records);
                    b.records = records;
                    return Err(storage_err(e));
                }
            }
        }
    }

    pub(super) fn publish(
        &self,
        old: &Page,
        page: Page,
        view_touched: &Mutex<HashMap<usize, u64>>,
        after: Vec<Published>,
    ) -> Result<Published, PagerError> {
        let id = page.id();
        let i = self.storage.index_of(id)?;
        let seq = {
            let record = RedoRecord::diff(old, &page);
            self.stats.redo_records.fetch_add(1, Ordering::Relaxed);
            self.stats
                .redo_bytes
                .fetch_add(record.encoded_len() as u64, Ordering::Relaxed);
            if matches!(record.body, RedoBody::Image(_)) {
                self.stats.redo_images.fetch_add(1, Ordering::Relaxed);
            }
            let mut b = self.redo[i].buf.lock();
            b.records.push(record);
            b.pushed += 1;
            let seq = b.pushed;
            for (other, other_seq) in after.iter().filter_map(|p| p.redo) {
                if other != i {
                    b.deps.push(RedoDep {
                        seq,
                        other,
                        other_seq,
                    });
                }
            }
            seq
        };
        {
            let mut t = view_touched.lock();
            let e = t.entry(i).or_insert(0);
            *e = (*e).max(seq);
        }
        self.page_redo.insert(id, seq);
        let v = self.tick();
        let pin = loop {
            match self.pool.install(Arc::new(page.clone()), v) {
                Ok(pin) => break pin,
                Err(_) => self.relieve_pressure()?,
            }
        };
        self.pool
            .set_flags(&pin, FrameFlags::LOCKED | FrameFlags::DIRTY);
        drop(pin);
        if self.lock_mode == LockMode::Eager {
            self.write_back_latched(id, false)?;
        }
        Ok(Published {
            redo: Some((i, seq)),
        })
    }
}
