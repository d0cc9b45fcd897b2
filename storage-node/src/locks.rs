//! Global page locks: exclusive holder + FIFO wait queue per page, and the revocation
//! requests sent to lazy holders.
//!
//! A waiter never spins: its request's `Replier` is parked in the queue and answered
//! when the lock is handed to it. Hand-over is direct (release grants the head waiter),
//! so the directory's lock word never reads "free" while someone waits. Whenever a page
//! has a holder and waiters, the holder has a `WriteBackAndRelease` revocation queued
//! (delivered by its long poll). Invariant 1 (one writer per page) is kept here: there is
//! at most one holder per page and only [`LockTable::release`] by that holder, or
//! [`LockTable::force_release`] for a fenced holder, ends a hold.

use common::fabric::Replier;
use common::ids::PageId;
use common::storage::dir::LockHolder;
use std::collections::{HashMap, HashSet, VecDeque};

pub struct Waiter {
    pub who: LockHolder,
    pub conn: u64,
    pub replier: Replier,
}

#[derive(Default)]
struct PageLock {
    holder: Option<LockHolder>,
    waiters: VecDeque<Waiter>,
    /// Readers waiting for the holder to write back (answered at write-back or release).
    flush_waiters: Vec<Replier>,
}

#[derive(Default)]
pub struct LockTable {
    locks: HashMap<PageId, PageLock>,
    held: HashMap<LockHolder, HashSet<PageId>>,
}

pub enum Acquire {
    /// Granted at once; answer the replier.
    Granted(Replier),
    /// The requester holds it already; answer the replier (nothing changed).
    AlreadyHeld(Replier),
    /// Queued behind `holder`, who should be asked to release.
    Queued { holder: LockHolder },
}

/// `release` by someone who does not hold the lock.
#[derive(Debug)]
pub struct NotHolder;

/// The lock passed to a waiter.
pub struct Grant {
    pub who: LockHolder,
    pub replier: Replier,
    /// More waiters remain: the new holder must be asked to release too.
    pub contended: bool,
}

impl LockTable {
    pub fn holder(&self, page: PageId) -> Option<LockHolder> {
        self.locks.get(&page).and_then(|l| l.holder)
    }

    pub fn acquire(
        &mut self,
        page: PageId,
        who: LockHolder,
        conn: u64,
        replier: Replier,
    ) -> Acquire {
        let l = self.locks.entry(page).or_default();
        match l.holder {
            None => {
                l.holder = Some(who);
                self.held.entry(who).or_default().insert(page);
                Acquire::Granted(replier)
            }
            Some(h) if h == who => Acquire::AlreadyHeld(replier),
            Some(h) => {
                l.waiters.push_back(Waiter { who, conn, replier });
                Acquire::Queued { holder: h }
            }
        }
    }

    /// Gives `page` to `who` if nobody holds it or waits for it (a reclaim after a
    /// restart); whether `who` holds it now.
    pub fn take_free(&mut self, page: PageId, who: LockHolder) -> bool {
        let l = self.locks.entry(page).or_default();
        match l.holder {
            Some(h) => h == who,
            None if l.waiters.is_empty() => {
                l.holder = Some(who);
                self.held.entry(who).or_default().insert(page);
                true
            }
            None => false,
        }
    }

    /// Ends `who`'s hold on `page` and hands the lock to the next waiter. `Err` if `who`
    /// does not hold it. Also returns the page's flush waiters to answer.
    pub fn release(
        &mut self,
        page: PageId,
        who: LockHolder,
    ) -> Result<(Option<Grant>, Vec<Replier>), NotHolder> {
        match self.locks.get(&page).and_then(|l| l.holder) {
            Some(h) if h == who => {}
            _ => return Err(NotHolder),
        }
        Ok(self.pass_on(page))
    }

    fn pass_on(&mut self, page: PageId) -> (Option<Grant>, Vec<Replier>) {
        let l = self.locks.get_mut(&page).expect("checked by caller");
        if let Some(old) = l.holder.take() {
            if let Some(set) = self.held.get_mut(&old) {
                set.remove(&page);
                if set.is_empty() {
                    self.held.remove(&old);
                }
            }
        }
        let flush = std::mem::take(&mut l.flush_waiters);
        let grant = l.waiters.pop_front().map(|w| {
            l.holder = Some(w.who);
            Grant {
                who: w.who,
                replier: w.replier,
                contended: !l.waiters.is_empty(),
            }
        });
        if let Some(g) = &grant {
            self.held.entry(g.who).or_default().insert(page);
        } else if l.waiters.is_empty() {
            self.locks.remove(&page);
        }
        (grant, flush)
    }

    /// Pages `who` holds.
    pub fn held_by(&self, who: LockHolder) -> Vec<PageId> {
        let mut v: Vec<PageId> = self
            .held
            .get(&who)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Ends a hold without the holder's consent (it was fenced); the caller rebuilt the
    /// page first.
    pub fn force_release(&mut self, page: PageId) -> (Option<Grant>, Vec<Replier>) {
        if !self.locks.contains_key(&page) {
            return (None, Vec::new());
        }
        self.pass_on(page)
    }

    /// Removes every queued request of `who` (fenced) and returns their repliers.
    pub fn remove_waiters_of(&mut self, who: LockHolder) -> Vec<Replier> {
        let mut out = Vec::new();
        for l in self.locks.values_mut() {
            let mut keep = VecDeque::new();
            for w in l.waiters.drain(..) {
                if w.who == who {
                    out.push(w.replier);
                } else {
                    keep.push_back(w);
                }
            }
            l.waiters = keep;
        }
        self.locks
            .retain(|_, l| l.holder.is_some() || !l.waiters.is_empty());
        out
    }

    /// Drops the queued requests that arrived on connection `conn` (it closed; nobody
    /// waits for the answer, and granting to it would leak the lock).
    pub fn remove_waiters_of_conn(&mut self, conn: u64) {
        for l in self.locks.values_mut() {
            l.waiters.retain(|w| w.conn != conn);
        }
        self.locks
            .retain(|_, l| l.holder.is_some() || !l.waiters.is_empty());
    }

    /// Parks a reader until the holder writes back. Returns the replier if there is no
    /// holder other than `who` (answer at once).
    pub fn add_flush_waiter(
        &mut self,
        page: PageId,
        who: LockHolder,
        replier: Replier,
    ) -> Result<LockHolder, Replier> {
        match self.locks.get_mut(&page) {
            Some(l) if l.holder.is_some_and(|h| h != who) => {
                l.flush_waiters.push(replier);
                Ok(l.holder.expect("checked"))
            }
            _ => Err(replier),
        }
    }

    /// The page was written back: readers waiting for it can go.
    pub fn take_flush_waiters(&mut self, page: PageId) -> Vec<Replier> {
        self.locks
            .get_mut(&page)
            .map(|l| std::mem::take(&mut l.flush_waiters))
            .unwrap_or_default()
    }

    /// Every identity holding at least one lock.
    pub fn holders(&self) -> Vec<LockHolder> {
        self.held.keys().copied().collect()
    }

    /// Every identity with a queued request.
    pub fn waiting_identities(&self) -> Vec<LockHolder> {
        let mut v: Vec<LockHolder> = self
            .locks
            .values()
            .flat_map(|l| l.waiters.iter().map(|w| w.who))
            .collect();
        v.sort_by_key(|h| (h.node, h.epoch));
        v.dedup();
        v
    }

    pub fn has_waiters(&self, page: PageId) -> bool {
        self.locks.get(&page).is_some_and(|l| !l.waiters.is_empty())
    }
}
