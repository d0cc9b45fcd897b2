//! Dead-node rebuild: `release_locks_of(node, epoch)` fences the identity, persists
//! the fence, makes the dead node's stream durable, rebuilds every page it held from
//! the stored image plus its durable redo, and hands its locks on.
//!
//! Keeps invariant 6 (a fenced node writes nothing: the fence is in memory before
//! anything else and on disk before the call returns) and invariant 3 (a page is
//! rebuilt only from redo that was fsynced).
//!
//! If the dead node's stream failed (a redo write or fsync error), the call fails after
//! persisting the fence and the GTM retries it: the pages stay locked until the storage
//! node restarts. Rebuilding from the durable prefix and handing the pages on would let
//! another node continue their chains from there, while bytes of the failed tail may
//! still reach the disk; recovery would then find two records starting at the same
//! version of a page.

use super::{io_err, reply, Core, Store};
use crate::metrics::Metrics;
use common::ids::{Epoch, NodeId, PageId};
use common::storage::dir::LockHolder;
use common::storage::StorageError;

impl Store {
    /// Fences `(node, <= epoch)`, rebuilds every page it held from the last
    /// written-back image plus its durable redo, and frees its locks.
    pub(super) fn release_locks_of(&self, node: NodeId, epoch: Epoch) -> Result<(), StorageError> {
        Metrics::add(&self.metrics.fenced, 1);
        let dead = |h: &LockHolder| h.node == node && h.epoch <= epoch;
        let held: Vec<(LockHolder, PageId)>;
        {
            let mut core = self.core.lock();
            let e = core.fenced.entry(node).or_insert(epoch);
            if *e < epoch {
                *e = epoch;
            }
            self.forget_member(&mut core, dead);
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
            crate::recovery::write_fences(&*self.opts.fs, &self.opts.data_dir, &fenced)
                .map_err(io_err)?;
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
            if pr.start >= stream.durable() {
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
}
