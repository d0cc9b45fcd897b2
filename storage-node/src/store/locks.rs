//! The page-lock protocol: taking and releasing X locks, handing a lock over to the
//! next waiter, and queueing revocations for holders (answered through their long poll).
//!
//! Keeps invariant 1's lock side (docs/design.md): the lock table has at most one
//! holder per page, and every grant or release is published in the page's directory
//! entry (`Regions::set_lock`) before the new holder is answered.

use super::reclaim::Parked;
use super::{reply, Core, Store};
use crate::locks::{Acquire, Grant};
use crate::metrics::Metrics;
use common::fabric::Replier;
use common::ids::PageId;
use common::storage::dir::LockHolder;
use common::storage::msg::{Response, Revocation, RevocationKind, ADMIN_NODE};
use common::storage::StorageError;
use parking_lot::MutexGuard;

impl Store {
    pub(super) fn lock_page(
        &self,
        core: &mut MutexGuard<'_, Core>,
        who: LockHolder,
        conn: u64,
        page: PageId,
        replier: Replier,
    ) {
        if let Err(e) = self.index(core, page) {
            return reply(replier, Err(e));
        }
        if who.node == ADMIN_NODE {
            return reply(
                replier,
                Err(StorageError::BadRequest(
                    "the admin identity takes no locks".into(),
                )),
            );
        }
        let parked = Parked {
            who,
            conn,
            page,
            replier,
        };
        if let Some(p) = self.park_lock(core, parked) {
            self.grant_or_queue(core, p.who, p.conn, p.page, p.replier);
        }
    }

    /// Grants the lock or queues the request behind the holder (asked to release).
    pub(super) fn grant_or_queue(
        &self,
        core: &mut Core,
        who: LockHolder,
        conn: u64,
        page: PageId,
        replier: Replier,
    ) {
        let Ok(idx) = self.index(core, page) else {
            return reply(replier, Err(StorageError::NotAllocated(page)));
        };
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

    pub(super) fn unlock_page(
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
    pub(super) fn pass_lock(
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
    pub(super) fn revoke(&self, core: &mut Core, holder: LockHolder, rev: Revocation) {
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
}
