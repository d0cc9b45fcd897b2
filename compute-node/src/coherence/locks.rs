//! Writes and lazy X locks (invariants 1 and 9).
//!
//! A write takes this node's local latch on the page, then the global X lock unless the
//! node holds it already (locks are kept lazily across transactions), changes a copy,
//! appends a redo record (byte-range diffs or a full image) to this node's queue for
//! the page's storage node, and installs the new image (version + 1) as dirty. The
//! storage node asks for the page when another node wants it
//! ([`CoherentPager::handle_revocation`]): the holder forces the page's redo, writes the
//! image back, and releases the lock. With [`super::LockMode::Eager`] every change is
//! written back and unlocked at once (the baseline).

use super::{storage_err, CoherentPager};
use crate::buffer_pool::FrameFlags;
use crate::pager::PagerError;
use common::ids::PageId;
use common::storage::msg::{Revocation, RevocationKind};
use common::storage::page::Page;
use common::storage::StorageError;
use fail::fail_point;
use parking_lot::{Condvar, Mutex};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Local page latches: one writer thread per page on this node.
#[derive(Default)]
pub(super) struct Latches {
    held: Mutex<HashSet<PageId>>,
    freed: Condvar,
}

impl Latches {
    /// The latch, if nobody holds it.
    pub(super) fn try_acquire(self: &Arc<Self>, page: PageId) -> Option<Box<dyn FnOnce() + Send>> {
        let mut h = self.held.lock();
        if !h.insert(page) {
            return None;
        }
        let me = self.clone();
        Some(Box::new(move || {
            me.held.lock().remove(&page);
            me.freed.notify_all();
        }))
    }

    pub(super) fn acquire(self: &Arc<Self>, page: PageId) -> Box<dyn FnOnce() + Send> {
        let mut h = self.held.lock();
        while h.contains(&page) {
            self.freed.wait(&mut h);
        }
        h.insert(page);
        let me = self.clone();
        Box::new(move || {
            me.held.lock().remove(&page);
            me.freed.notify_all();
        })
    }
}

impl CoherentPager {
    /// Takes the global X lock (unless held) and returns the newest image, latched.
    pub(super) fn lock_for_write(&self, page: PageId) -> Result<Arc<Page>, PagerError> {
        if let Some(c) = self.pool.get(page) {
            if c.flags & FrameFlags::LOCKED != 0 {
                return Ok(c.image);
            }
        }
        let i = self.storage.index_of(page)?;
        let client = self.storage.node(i);
        let recoveries = self.recoveries[i].load(Ordering::SeqCst);
        self.stats.lock_acquires.fetch_add(1, Ordering::Relaxed);
        self.stats.round_trips.fetch_add(2, Ordering::Relaxed);
        client.lock_exclusive(page).map_err(storage_err)?;
        self.held.insert(page, ());
        fail_point!("coherence::after_lock_grant");
        let v = self.tick();
        let img = Arc::new(
            client
                .read_pages(&[page])
                .map_err(storage_err)?
                .pop()
                .expect("one page"),
        );
        let pin = loop {
            match self.pool.install(img.clone(), v) {
                Ok(pin) => break pin,
                Err(_) => self.relieve_pressure()?,
            }
        };
        self.pool.set_flags(&pin, FrameFlags::LOCKED);
        // Invariant 9 across a storage-node restart: if a recovery of this storage node
        // began since the request, it may have listed the held pages before this grant
        // set LOCKED, so the restarted node may not hold the lock for us. Undo; a
        // revocation of a grant we do not believe in is still answered with an unlock.
        if self.recoveries[i].load(Ordering::SeqCst) != recoveries {
            self.pool.clear_flags(&pin, FrameFlags::LOCKED);
            self.pool.mark_stale(&pin);
            drop(pin);
            self.held.remove(&page);
            return Err(PagerError::Storage(format!(
                "page {page}: the storage node restarted while its lock was taken"
            )));
        }
        Ok(img)
    }

    /// Forces the page's redo, writes its image back, and unlocks it. `revoked`: the
    /// storage node asked, so it believes this node holds the lock (see
    /// [`CoherentPager::write_back_latched`]). The caller must not hold the page's
    /// local latch.
    pub(super) fn write_back_page(&self, page: PageId, revoked: bool) -> Result<(), PagerError> {
        let unlatch = self.latches.acquire(page);
        let res = self.write_back_latched(page, revoked);
        unlatch();
        res
    }

    /// Under the page's latch: makes the page's redo durable, writes a dirty image back,
    /// and gives the X lock up.
    ///
    /// Invariant 9: the frame stops being trusted (LOCKED cleared, confirmation
    /// forgotten) *before* the unlock is sent, so no transaction of this node can take
    /// the cached image for the newest once another node may change the page. And a
    /// revocation is answered with an unlock even when this node does not know it holds
    /// the lock (a lock wait that timed out here and was granted later): the storage
    /// node says it does, and only an unlock frees the page for the others.
    pub(super) fn write_back_latched(&self, page: PageId, revoked: bool) -> Result<(), PagerError> {
        let client = self.storage.for_page(page)?;
        let pin = self.pool.pin(page);
        let flags = pin.as_ref().map_or(0, |p| self.pool.flags(p));
        if let Some(pin) = pin.as_ref().filter(|_| flags & FrameFlags::DIRTY != 0) {
            if let Some(seq) = self.page_redo.get(&page).map(|l| *l) {
                self.flush_redo(self.storage.index_of(page)?, seq)?;
            }
            fail_point!("coherence::before_write_back");
            let img = self.pool.get(page).expect("pinned").image;
            client.write_back(&img).map_err(storage_err)?;
            fail_point!("coherence::after_write_back");
            self.stats.write_backs.fetch_add(1, Ordering::Relaxed);
            self.pool.clear_flags(pin, FrameFlags::DIRTY);
            self.page_redo.remove(&page);
        }
        let believed = self.held.remove(&page).is_some() || flags & FrameFlags::LOCKED != 0;
        if !believed && !revoked {
            return Ok(());
        }
        if let Some(pin) = &pin {
            self.pool.clear_flags(pin, FrameFlags::LOCKED);
            self.pool.mark_stale(pin);
        }
        fail_point!("coherence::before_unlock");
        match client.unlock(page) {
            Ok(()) => {}
            // A revocation for a lock this node had already given up (it crossed the
            // unlock on the wire): nothing to do.
            Err(StorageError::NotHolder(_)) if !believed => {}
            Err(e) => return Err(storage_err(e)),
        }
        fail_point!("coherence::after_unlock");
        Ok(())
    }

    /// The storage node asks for a page this node holds (lazy release): a writer
    /// elsewhere waits for the lock, or a reader for the newest image.
    ///
    /// Both end in a release. A reader sent the image while this node kept the lock
    /// could not confirm it (the page is X-held elsewhere), so each of its later reads
    /// would come back through this node; released, the page is confirmed once and then
    /// read from the reader's cache until some node takes the lock again (a grant, so a
    /// notice). Retaking it here costs one lock round trip with nobody to revoke.
    /// (TPC-C, 2 nodes: +22% tpmC with random affinity, no change partitioned.)
    pub fn handle_revocation(&self, r: Revocation) -> Result<(), PagerError> {
        self.stats.revocations.fetch_add(1, Ordering::Relaxed);
        fail_point!("coherence::revocation");
        if r.kind == RevocationKind::WriteBackAndRelease {
            // A writer elsewhere waits for this page (readers' requests skip this point).
            fail_point!("coherence::revocation_release");
        }
        self.write_back_page(r.page, true)
    }

    /// Number of pages whose global X lock this node holds right now.
    pub fn held_locks(&self) -> usize {
        self.held.len()
    }

    /// Drops every cached page this node does not hold locked (benchmarks' cold pool).
    pub fn evict_unlocked(&self) -> usize {
        self.pool
            .snapshot_versions()
            .into_iter()
            .filter(|(p, _)| self.pool.evict(*p))
            .count()
    }

    /// Writes back every dirty page and releases every lock (clean shutdown, eager
    /// mode, checkpoints).
    pub fn release_all(&self) -> Result<(), PagerError> {
        let held: Vec<PageId> = self.held.iter().map(|e| *e.key()).collect();
        for p in held {
            self.write_back_page(p, false)?;
        }
        Ok(())
    }
}
