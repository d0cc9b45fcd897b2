//! Lock reclaim after a restart: the compute nodes that held this node's X locks take
//! them again, so they keep their buffer pools (docs/protocols.md, "Storage-node
//! restart: reclaim").
//!
//! The lock table lives in memory only. What survives a restart is who might hold
//! locks: `members` (every `(node, epoch)` that connected, written before its first
//! answer) less `fences`. After recovery the node starts a *grace period*
//! (`reclaim_grace_ms`) during which it grants no lock: lock requests are parked. A
//! member that reconnects sees a new [`Layout::incarnation`] and sends
//! `Reclaim{pages, done}` with every page whose X lock it held and the version of its
//! cached image; each page that is free, and whose logged version here is not past the
//! claimed one, is granted back (published in the directory with a change notice, like
//! any grant). The grace period ends when every member has sent `done`, or was fenced,
//! or at its deadline; then the parked requests are served, and every later reclaim is
//! refused (that node must rejoin with a new epoch).
//!
//! Why a reclaimed lock may be trusted as if it had never been lost (invariant 9):
//! between the crash and the reclaim no node held the page here (nothing is granted
//! during the grace period, and a reclaim takes only free pages), so no change was
//! made to it but the holder's own, whose redo is in the holder's queue or durable
//! here; the holder's image is still the newest.
//!
//! [`Layout::incarnation`]: common::storage::msg::Layout::incarnation

use super::{Core, Store};
use crate::metrics::Metrics;
use common::fabric::Replier;
use common::ids::{PageId, PageVersion};
use common::storage::dir::LockHolder;
use common::storage::msg::Response;
use common::storage::StorageError;
use std::collections::HashSet;
use std::time::Instant;

/// A lock request that arrived during the grace period.
pub(super) struct Parked {
    pub who: LockHolder,
    pub conn: u64,
    pub page: PageId,
    pub replier: Replier,
}

/// The grace period after a restart.
pub(super) struct Grace {
    pub until: Instant,
    /// Members that may still reclaim.
    pub pending: HashSet<LockHolder>,
    pub parked: Vec<Parked>,
    pub started: Instant,
}

impl Store {
    /// Handles `Reclaim` from `who` (see the module doc). Grants every listed page or
    /// none: a page that is held or was changed past the claimed version refuses the
    /// whole batch (the caller rejoins; pages granted by its earlier batches are freed
    /// when the GTM fences that epoch).
    pub(super) fn reclaim(
        &self,
        core: &mut Core,
        who: LockHolder,
        pages: &[(PageId, PageVersion)],
        done: bool,
    ) -> Result<Response, StorageError> {
        let refuse = |why: String| {
            Metrics::add(&self.metrics.reclaims_refused, 1);
            Err(StorageError::ReclaimRefused(why))
        };
        match &core.grace {
            None => return refuse("the grace period after the restart is over".into()),
            Some(g) if !g.pending.contains(&who) => {
                return refuse(format!(
                "node {} epoch {} was not connected before the restart, or has reclaimed already",
                who.node, who.epoch
            ))
            }
            Some(_) => {}
        }
        let mut idxs = Vec::with_capacity(pages.len());
        for (page, version) in pages {
            let idx = self.index(core, *page)?;
            if let Some(h) = core.locks.holder(*page).filter(|h| *h != who) {
                return refuse(format!("page {page} is held by node {}", h.node));
            }
            let logged = core.pages[idx as usize].logged;
            if logged > *version {
                return refuse(format!(
                    "page {page} is at version {logged} here, past the claimed {version}"
                ));
            }
            idxs.push((idx, *page));
        }
        for (idx, page) in idxs {
            if core.locks.take_free(page, who) {
                self.regions.set_lock(idx, Some(who));
                Metrics::add(&self.metrics.locks_reclaimed, 1);
            }
        }
        if done {
            if let Some(g) = core.grace.as_mut() {
                g.pending.remove(&who);
            }
            Metrics::add(&self.metrics.reclaims, 1);
            self.end_grace_if_over(core);
        }
        Ok(Response::Done)
    }

    /// A lock request during the grace period waits for its end.
    pub(super) fn park_lock(&self, core: &mut Core, parked: Parked) -> Option<Parked> {
        match core.grace.as_mut() {
            Some(g) => {
                Metrics::add(&self.metrics.lock_requests_parked, 1);
                g.parked.push(parked);
                None
            }
            None => Some(parked),
        }
    }

    /// A member fenced during the grace period will not reclaim.
    pub(super) fn forget_member(&self, core: &mut Core, dead: impl Fn(&LockHolder) -> bool) {
        if let Some(g) = core.grace.as_mut() {
            g.pending.retain(|h| !dead(h));
        }
        self.end_grace_if_over(core);
    }

    /// Ends the grace period if every member reclaimed or its time is up, and serves
    /// the parked lock requests.
    pub(super) fn end_grace_if_over(&self, core: &mut Core) {
        let over = core
            .grace
            .as_ref()
            .is_some_and(|g| g.pending.is_empty() || Instant::now() >= g.until);
        if !over {
            return;
        }
        let g = core.grace.take().expect("checked");
        tracing::info!(
            waited_ms = g.started.elapsed().as_millis() as u64,
            not_reclaimed = g.pending.len(),
            parked = g.parked.len(),
            "lock reclaim over; granting locks"
        );
        for p in g.parked {
            self.grant_or_queue(core, p.who, p.conn, p.page, p.replier);
        }
    }

    /// Called by the worker: ends a grace period whose time is up.
    pub(super) fn check_grace(&self) {
        let mut core = self.core.lock();
        if core.grace.is_some() {
            self.end_grace_if_over(&mut core);
        }
    }
}
