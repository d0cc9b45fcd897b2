//! The transaction status table: commit records, decided by compare-and-set.
//!
//! Two halves, always changed together under the GTM's state lock:
//!
//! * the **region** (layout in `common::gtm::layout`): one seqlock entry per txn slot,
//!   registered read-only so compute nodes read statuses with batched one-sided READs;
//! * the **active map**: txn id -> owner `(node, epoch)`, snapshot, and whether a commit
//!   is under way; plus the active snapshots in order, for the GC watermark.
//!
//! ## Decisions (DESIGN.md invariant 4)
//!
//! A transaction leaves `InProgress` exactly once, by a compare-and-set on its state:
//! `InProgress -> Committing(cts)` (commit) or `InProgress -> Aborted` (abort, wound, or
//! lease expiry). Both run under the same lock and test the same state, so a commit
//! racing an abort has one winner. `Committing -> Committed(cts)` happens only after the
//! commit record is durable (the group-commit log, `commit_log`); until then readers that
//! meet `Committing` wait. A commit's timestamp is granted under the same lock that
//! publishes `Committing`, so no snapshot larger than `cts` exists while the table still
//! shows `InProgress` for it.
//!
//! ## Retirement
//!
//! Slot `t % C` is reused for a new txn only when its occupant is Aborted, or Committed
//! with a commit timestamp below the GC watermark, or from before the GTM's last start;
//! otherwise `begin` answers `Busy`. The header's `retired_below` is
//! `newest txn id - C`. (Layout and the reader's side: `common::gtm::layout`.)

use common::fabric::Region;
use common::gtm::layout::{self, Entry, EntryState};
use common::ids::{Epoch, NodeId, Timestamp, TxnId};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// The region half: seqlock writes of entries and header words. One writer at a time
/// (the caller holds the state lock).
pub struct StatusRegion {
    region: Arc<Region>,
    capacity: u64,
    next_seq: u64,
}

impl StatusRegion {
    /// Formats the header of a fresh (zeroed) region.
    pub fn format(region: Arc<Region>, capacity: u64, boot_txn_floor: TxnId) -> StatusRegion {
        assert!(
            region.len() >= layout::region_len(capacity),
            "region too small"
        );
        let m = region.mem();
        let put = |off, v| m.store_u64(off, v).expect("header in bounds");
        put(layout::OFF_MAGIC, layout::MAGIC);
        put(layout::OFF_VERSION, layout::LAYOUT_VERSION);
        put(layout::OFF_CAPACITY, capacity);
        put(layout::OFF_BOOT_TXN_FLOOR, boot_txn_floor.0);
        put(
            layout::OFF_RETIRED_BELOW,
            boot_txn_floor.0.saturating_sub(capacity),
        );
        StatusRegion {
            region,
            capacity,
            next_seq: 1,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn write(&mut self, txn: TxnId, state: EntryState) {
        let off = layout::entry_offset(txn.0, self.capacity);
        let m = self.region.mem();
        let seq = self.next_seq;
        self.next_seq += 1;
        // Tail first, head last: a reader that sees equal words saw one whole write.
        m.store_u64(off + 24, seq).expect("entry in bounds");
        m.store_u64(off + 8, txn.0).expect("entry in bounds");
        m.store_u64(off + 16, state.encode())
            .expect("entry in bounds");
        m.store_u64(off, seq).expect("entry in bounds");
    }

    /// The entry of `txn`'s slot (whoever occupies it). Only the writer calls this, so
    /// the image is never torn.
    pub fn read_slot(&self, txn: TxnId) -> Entry {
        let off = layout::entry_offset(txn.0, self.capacity);
        let m = self.region.mem();
        Entry {
            txn: m.load_u64(off + 8).expect("entry in bounds"),
            state: EntryState::decode(m.load_u64(off + 16).expect("entry in bounds")),
        }
    }

    pub fn publish_gc_watermark(&self, ts: Timestamp) {
        let m = self.region.mem();
        let _ = m.store_u64(layout::OFF_GC_WATERMARK, ts.0);
    }

    pub fn gc_watermark(&self) -> Timestamp {
        Timestamp(
            self.region
                .mem()
                .load_u64(layout::OFF_GC_WATERMARK)
                .expect("header"),
        )
    }

    pub fn publish_retired_below(&self, txn: TxnId) {
        let _ = self
            .region
            .mem()
            .store_u64(layout::OFF_RETIRED_BELOW, txn.0);
    }
}

/// A transaction the GTM still tracks (in progress or committing).
#[derive(Clone, Copy, Debug)]
pub struct ActiveTxn {
    pub node: NodeId,
    pub epoch: Epoch,
    pub snapshot: Timestamp,
    pub committing: Option<Timestamp>,
}

/// The outcome of a commit's compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitDecision {
    /// Won: now `Committing(cts)`; answer after the record is durable.
    Committing(Timestamp),
    /// A duplicate commit of a committed txn (e.g. a retry after a lost answer).
    AlreadyCommitted(Timestamp),
    /// A duplicate commit while the first one is still on its way to disk.
    StillCommitting(Timestamp),
    Aborted,
    /// The txn belongs to another (node, epoch).
    NotOwner,
    Unknown,
}

/// The outcome of an abort's compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortDecision {
    Aborted,
    Committed(Timestamp),
    Committing(Timestamp),
    Unknown,
}

/// Both halves of the table.
pub struct StatusTable {
    pub region: StatusRegion,
    active: HashMap<TxnId, ActiveTxn>,
    snapshots: BTreeSet<(Timestamp, TxnId)>,
    boot_txn_floor: TxnId,
}

impl StatusTable {
    pub fn new(region: StatusRegion, boot_txn_floor: TxnId) -> StatusTable {
        StatusTable {
            region,
            active: HashMap::new(),
            snapshots: BTreeSet::new(),
            boot_txn_floor,
        }
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Recovery: a commit record read back from the log.
    pub fn restore_committed(&mut self, txn: TxnId, cts: Timestamp) {
        self.region.write(txn, EntryState::Committed(cts.0));
    }

    /// Whether `txn`'s slot may be taken (see "Retirement").
    fn slot_free(&self, txn: TxnId, watermark: Timestamp) -> bool {
        let e = self.region.read_slot(txn);
        if e.txn == 0 || e.txn < self.boot_txn_floor.0 {
            return true;
        }
        match e.state {
            EntryState::Committed(ts) => ts < watermark.0,
            // Invisible to every snapshot, whatever the watermark.
            EntryState::Aborted => true,
            EntryState::InProgress | EntryState::Committing(_) => false,
        }
    }

    /// Starts `txn` for `(node, epoch)` with `snapshot`; `false` if its slot is still
    /// needed by an older transaction (the caller answers Busy).
    pub fn begin(
        &mut self,
        txn: TxnId,
        node: NodeId,
        epoch: Epoch,
        snapshot: Timestamp,
        watermark: Timestamp,
    ) -> bool {
        if !self.slot_free(txn, watermark) {
            return false;
        }
        self.region.write(txn, EntryState::InProgress);
        self.active.insert(
            txn,
            ActiveTxn {
                node,
                epoch,
                snapshot,
                committing: None,
            },
        );
        self.snapshots.insert((snapshot, txn));
        self.region
            .publish_retired_below(TxnId(txn.0.saturating_sub(self.region.capacity())));
        true
    }

    /// What the table says about a txn that is not active.
    fn resolved(&self, txn: TxnId) -> Option<EntryState> {
        let e = self.region.read_slot(txn);
        if e.txn == txn.0 {
            Some(e.state)
        } else if txn < self.boot_txn_floor && e.txn < txn.0 {
            Some(EntryState::Aborted)
        } else {
            None
        }
    }

    /// The commit compare-and-set: `InProgress -> Committing(cts)`.
    pub fn try_commit(
        &mut self,
        txn: TxnId,
        node: NodeId,
        epoch: Epoch,
        cts: Timestamp,
    ) -> CommitDecision {
        match self.active.get_mut(&txn) {
            Some(a) if a.node != node || a.epoch != epoch => CommitDecision::NotOwner,
            Some(a) => match a.committing {
                Some(ts) => CommitDecision::StillCommitting(ts),
                None => {
                    a.committing = Some(cts);
                    self.region.write(txn, EntryState::Committing(cts.0));
                    CommitDecision::Committing(cts)
                }
            },
            None => match self.resolved(txn) {
                Some(EntryState::Committed(ts)) => CommitDecision::AlreadyCommitted(Timestamp(ts)),
                Some(EntryState::Aborted) => CommitDecision::Aborted,
                _ => CommitDecision::Unknown,
            },
        }
    }

    /// `Committing(cts) -> Committed(cts)`, after the record is durable.
    pub fn finish_commit(&mut self, txn: TxnId, cts: Timestamp) {
        if let Some(a) = self.active.remove(&txn) {
            self.snapshots.remove(&(a.snapshot, txn));
        }
        self.region.write(txn, EntryState::Committed(cts.0));
    }

    /// The abort compare-and-set: `InProgress -> Aborted`; loses to a commit.
    pub fn abort_decision(&mut self, txn: TxnId) -> AbortDecision {
        match self.active.get(&txn) {
            Some(a) => match a.committing {
                Some(ts) => AbortDecision::Committing(ts),
                None => {
                    let a = self.active.remove(&txn).expect("present");
                    self.snapshots.remove(&(a.snapshot, txn));
                    self.region.write(txn, EntryState::Aborted);
                    AbortDecision::Aborted
                }
            },
            None => match self.resolved(txn) {
                Some(EntryState::Committed(ts)) => AbortDecision::Committed(Timestamp(ts)),
                Some(EntryState::Aborted) => AbortDecision::Aborted,
                _ => AbortDecision::Unknown,
            },
        }
    }

    /// Aborts every in-progress txn of `(node, epoch)` (lease expiry, leave, restart of
    /// the node). Committing ones won their CAS already and finish.
    pub fn abort_all_of(&mut self, node: NodeId, epoch: Epoch) -> Vec<TxnId> {
        let victims: Vec<TxnId> = self
            .active
            .iter()
            .filter(|(_, a)| a.node == node && a.epoch == epoch && a.committing.is_none())
            .map(|(t, _)| *t)
            .collect();
        for &t in &victims {
            let d = self.abort_decision(t);
            debug_assert_eq!(d, AbortDecision::Aborted);
        }
        victims
    }

    /// The oldest snapshot still active, if any.
    pub fn oldest_snapshot(&self) -> Option<Timestamp> {
        self.snapshots.first().map(|(ts, _)| *ts)
    }

    pub fn owner_of(&self, txn: TxnId) -> Option<ActiveTxn> {
        self.active.get(&txn).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::fabric::{Access, ClusterKey, Server};

    fn table(capacity: u64) -> StatusTable {
        let server = Server::new(ClusterKey::random());
        let region = server
            .register(layout::region_len(capacity), Access::READ)
            .unwrap();
        StatusTable::new(StatusRegion::format(region, capacity, TxnId(1)), TxnId(1))
    }

    const N: NodeId = NodeId(1);
    const E: Epoch = Epoch(1);

    #[test]
    fn commit_and_abort_have_one_winner() {
        let mut t = table(16);
        assert!(t.begin(TxnId(1), N, E, Timestamp(10), Timestamp(10)));
        assert_eq!(
            t.try_commit(TxnId(1), N, E, Timestamp(11)),
            CommitDecision::Committing(Timestamp(11))
        );
        assert_eq!(
            t.abort_decision(TxnId(1)),
            AbortDecision::Committing(Timestamp(11))
        );
        t.finish_commit(TxnId(1), Timestamp(11));
        assert_eq!(
            t.abort_decision(TxnId(1)),
            AbortDecision::Committed(Timestamp(11))
        );

        assert!(t.begin(TxnId(2), N, E, Timestamp(12), Timestamp(10)));
        assert_eq!(t.abort_decision(TxnId(2)), AbortDecision::Aborted);
        assert_eq!(
            t.try_commit(TxnId(2), N, E, Timestamp(13)),
            CommitDecision::Aborted
        );
        assert_eq!(t.region.read_slot(TxnId(2)).state, EntryState::Aborted);
    }

    #[test]
    fn only_the_owner_commits_and_expiry_aborts_in_progress_only() {
        let mut t = table(16);
        t.begin(TxnId(1), N, E, Timestamp(1), Timestamp(1));
        t.begin(TxnId(2), N, E, Timestamp(2), Timestamp(1));
        t.begin(TxnId(3), NodeId(2), E, Timestamp(3), Timestamp(1));
        assert_eq!(
            t.try_commit(TxnId(1), NodeId(2), E, Timestamp(5)),
            CommitDecision::NotOwner
        );
        assert_eq!(
            t.try_commit(TxnId(1), N, Epoch(2), Timestamp(5)),
            CommitDecision::NotOwner
        );
        t.try_commit(TxnId(1), N, E, Timestamp(5));
        assert_eq!(t.abort_all_of(N, E), vec![TxnId(2)]);
        assert_eq!(t.oldest_snapshot(), Some(Timestamp(1)));
        t.finish_commit(TxnId(1), Timestamp(5));
        assert_eq!(t.oldest_snapshot(), Some(Timestamp(3)));
    }

    #[test]
    fn a_slot_is_reused_only_after_its_occupant_resolved_below_the_watermark() {
        let mut t = table(4);
        t.begin(TxnId(1), N, E, Timestamp(1), Timestamp(1));
        assert!(
            !t.begin(TxnId(5), N, E, Timestamp(2), Timestamp(1)),
            "in progress"
        );
        t.try_commit(TxnId(1), N, E, Timestamp(3));
        t.finish_commit(TxnId(1), Timestamp(3));
        assert!(
            !t.begin(TxnId(5), N, E, Timestamp(4), Timestamp(3)),
            "cts not below"
        );
        assert!(t.begin(TxnId(5), N, E, Timestamp(4), Timestamp(4)));
        assert_eq!(t.region.read_slot(TxnId(1)).txn, 5);
    }
}
