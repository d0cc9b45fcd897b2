//! The transaction status table: commit records, decided by compare-and-set.
//!
//! Two halves, always changed together under the GTM's state lock:
//!
//! * the **region** (layout in `common::gtm::layout`): one seqlock entry per txn slot,
//!   registered read-only so compute nodes read statuses with batched one-sided READs;
//! * the **active map**: txn id -> owner `(node, epoch)`, snapshot, and whether a commit
//!   is under way; plus the active snapshots in order, for the GC watermark.
//!
//! ## Decisions (invariant 4 of docs/design.md)
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
//!
//! ## Outcomes of retired transactions ([`OutcomeIndex`])
//!
//! Compute nodes stamp commit timestamps into row versions lazily, so a version's writer
//! may have lost its slot long ago; its outcome must still be known. When `begin` reuses
//! a slot whose occupant is Committed, the occupant's `txn -> cts` moves into the
//! **outcome index**; Aborted occupants need no entry. On start the index is rebuilt from
//! the commit log (every commit record of a txn below `boot floor - C`; the ones above
//! go back into their slots and move to the index when those are reused). So for a txn
//! the slot no longer answers for, [`StatusTable::outcome`] says: in the index ->
//! Committed(cts); otherwise Aborted (aborted, or never begun because its id was skipped,
//! or issued before a restart without a durable commit record). Clients ask with the
//! `Outcomes` RPC (`common::gtm::proto`), batched.
//!
//! The index is durable through the commit log, which is therefore never cut below the
//! index (see `commit_log`).
//!
//! **Memory bound**: 16 bytes per committed transaction whose slot was reused — a sorted
//! `Vec<(u64, u64)>`, appended in eviction order (ascending but for slots skipped by
//! `Busy` begins, which go to a small side map merged back in batches of
//! [`OutcomeIndex::MERGE_AT`]). Without freeze sweeps it grows without bound: 1 GiB per
//! 67 M commits (at 100 k commits/s, about 5.8 GB per hour; the commit log grows 20
//! bytes per commit).
//! The Vec's spare capacity is untouched virtual memory, not resident. The gauge
//! `gtm_retired_commits` shows the entry count.
//!
//! **Compaction** ([`crate::freeze`]): the index (and the commit log) need to cover only
//! transactions whose versions may still be unstamped. A freeze sweep stamps every
//! version of the txns below a target `T`; once no snapshot older than its report
//! runs, the GTM persists `T` as the freeze floor, drops the index entries below it
//! ([`StatusTable::freeze_below`]) and rewrites the commit log without their records.
//! `outcome` then answers `Retired` for txns below the floor that are not in a slot,
//! never `Aborted`: a committed txn must not turn into an aborted one. So the index
//! holds the commits since the last applied sweep, not all of them.

use common::fabric::Region;
use common::gtm::layout::{self, Entry, EntryState};
use common::gtm::TxnStatus;
use common::ids::{Epoch, NodeId, Timestamp, TxnId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Commit timestamps of committed transactions that lost their slot: `txn -> cts`.
/// See the module documentation for the memory bound and how to compact it.
#[derive(Default, Debug)]
pub struct OutcomeIndex {
    /// Sorted by txn id, no duplicates.
    sorted: Vec<(u64, u64)>,
    /// Entries that arrived out of order (a txn below `sorted`'s last one); merged into
    /// `sorted` when there are `MERGE_AT` of them.
    late: BTreeMap<u64, u64>,
}

impl OutcomeIndex {
    /// Out-of-order entries kept aside before one merge (a merge moves the `sorted`
    /// entries above the smallest of them once).
    pub const MERGE_AT: usize = 1024;

    /// Builds the index from commit records in any order (duplicates allowed, e.g. a
    /// commit retried while its record was on its way to disk is logged twice).
    pub fn from_records(mut records: Vec<(TxnId, Timestamp)>) -> OutcomeIndex {
        records.sort_unstable();
        records.dedup_by_key(|r| r.0);
        let mut sorted = Vec::with_capacity(records.len());
        sorted.extend(records.into_iter().map(|(t, c)| (t.0, c.0)));
        OutcomeIndex {
            sorted,
            late: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.late.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the entries occupy (resident; excludes untouched spare capacity).
    pub fn bytes(&self) -> usize {
        self.sorted.len() * 16 + self.late.len() * 40
    }

    pub fn get(&self, txn: TxnId) -> Option<Timestamp> {
        match self.sorted.binary_search_by_key(&txn.0, |e| e.0) {
            Ok(i) => Some(Timestamp(self.sorted[i].1)),
            Err(_) => self.late.get(&txn.0).map(|&c| Timestamp(c)),
        }
    }

    pub fn insert(&mut self, txn: TxnId, cts: Timestamp) {
        match self.sorted.last() {
            Some(&(last, _)) if last >= txn.0 => {
                if let Ok(i) = self.sorted.binary_search_by_key(&txn.0, |e| e.0) {
                    self.sorted[i].1 = cts.0;
                    return;
                }
                self.late.insert(txn.0, cts.0);
                if self.late.len() >= Self::MERGE_AT {
                    self.merge_late();
                }
            }
            _ => self.sorted.push((txn.0, cts.0)),
        }
    }

    /// Merges `late` into `sorted` in place, from the back: only the entries above the
    /// smallest late one move.
    fn merge_late(&mut self) {
        let late = std::mem::take(&mut self.late);
        let n = late.len();
        let old_len = self.sorted.len();
        self.sorted.resize(old_len + n, (0, 0));
        let mut i = old_len; // unmerged sorted entries: [0, i)
        let mut k = old_len + n; // next slot to fill from the back: k - 1
        for (t, c) in late.into_iter().rev() {
            while i > 0 && self.sorted[i - 1].0 > t {
                self.sorted[k - 1] = self.sorted[i - 1];
                i -= 1;
                k -= 1;
            }
            self.sorted[k - 1] = (t, c);
            k -= 1;
        }
        debug_assert_eq!(i, k);
    }

    /// Drops every entry below `txn` (for the compaction described in the module
    /// documentation; the caller must first make `txn` durable as the "lost" floor).
    pub fn forget_below(&mut self, txn: TxnId) {
        let cut = self.sorted.partition_point(|e| e.0 < txn.0);
        self.sorted.drain(..cut);
        self.late = self.late.split_off(&txn.0);
    }
}

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

    /// Publishes the highest timestamp granted so far (monotonic: callers hold the
    /// state lock, and grants only grow).
    pub fn publish_last_granted(&self, ts: Timestamp) {
        let m = self.region.mem();
        if m.load_u64(layout::OFF_LAST_GRANTED).unwrap_or(0) < ts.0 {
            let _ = m.store_u64(layout::OFF_LAST_GRANTED, ts.0);
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

    pub fn retired_below(&self) -> TxnId {
        TxnId(
            self.region
                .mem()
                .load_u64(layout::OFF_RETIRED_BELOW)
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

/// Both halves of the table, and the outcomes of transactions that lost their slot.
pub struct StatusTable {
    pub region: StatusRegion,
    active: HashMap<TxnId, ActiveTxn>,
    snapshots: BTreeSet<(Timestamp, TxnId)>,
    boot_txn_floor: TxnId,
    outcomes: OutcomeIndex,
    /// The freeze floor (`crate::freeze`): outcomes below it are forgotten.
    frozen_below: TxnId,
}

impl StatusTable {
    pub fn new(region: StatusRegion, boot_txn_floor: TxnId) -> StatusTable {
        StatusTable {
            region,
            active: HashMap::new(),
            snapshots: BTreeSet::new(),
            boot_txn_floor,
            outcomes: OutcomeIndex::default(),
            frozen_below: TxnId(0),
        }
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// The outcome index (committed txns whose slot was reused).
    pub fn outcome_index(&self) -> &OutcomeIndex {
        &self.outcomes
    }

    /// Recovery: the commit records read back from the log, all of txns issued before
    /// this start. Those of the last `C` txn ids before the boot floor go back into their
    /// slots (one-sided readers find them there), older ones into the outcome index.
    pub fn restore_committed(&mut self, records: Vec<(TxnId, Timestamp)>) {
        let ring_from = TxnId(self.boot_txn_floor.0.saturating_sub(self.region.capacity()));
        let (ring, older): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.0 >= ring_from);
        for (txn, cts) in ring {
            debug_assert!(txn < self.boot_txn_floor);
            self.region.write(txn, EntryState::Committed(cts.0));
        }
        self.outcomes = OutcomeIndex::from_records(older);
    }

    /// Forgets the outcomes below `floor`, which the caller has made durable as the
    /// freeze floor (`crate::freeze`): they answer `Retired` from now on.
    pub fn freeze_below(&mut self, floor: TxnId) {
        if floor > self.frozen_below {
            self.frozen_below = floor;
            self.outcomes.forget_below(floor);
        }
    }

    /// What the GTM knows about `txn`, also after its slot was reused (the `Outcomes`
    /// RPC). `Retired` only below the freeze floor, once its slot was reused.
    pub fn outcome(&self, txn: TxnId) -> TxnStatus {
        if txn.0 == 0 {
            return TxnStatus::Unknown;
        }
        let e = self.region.read_slot(txn);
        if e.txn == txn.0 {
            return match e.state {
                EntryState::InProgress => TxnStatus::InProgress,
                EntryState::Committing(ts) => TxnStatus::Committing(Timestamp(ts)),
                EntryState::Committed(ts) => TxnStatus::Committed(Timestamp(ts)),
                EntryState::Aborted => TxnStatus::Aborted,
            };
        }
        if let Some(cts) = self.outcomes.get(txn) {
            return TxnStatus::Committed(cts);
        }
        if txn < self.frozen_below {
            // Committed or aborted, no longer known: every version it wrote is stamped
            // or gone, so no reader should ask (never `Aborted`: it may have committed).
            return TxnStatus::Retired;
        }
        if txn < self.boot_txn_floor || e.txn > txn.0 {
            // Issued before this start without a durable commit record; or its slot was
            // reused (so it was aborted, or its id was skipped and never began).
            TxnStatus::Aborted
        } else {
            // Not begun (yet), or skipped with its slot not reused since.
            TxnStatus::Unknown
        }
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
        let evicted = self.region.read_slot(txn);
        let keep = evicted.txn != 0 && evicted.txn >= self.frozen_below.0;
        if let (EntryState::Committed(cts), true) = (evicted.state, keep) {
            self.outcomes.insert(TxnId(evicted.txn), Timestamp(cts));
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
        match self.outcome(txn) {
            TxnStatus::Committed(ts) => Some(EntryState::Committed(ts.0)),
            TxnStatus::Aborted => Some(EntryState::Aborted),
            _ => None,
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
    /// The oldest txn in progress or committing.
    pub fn oldest_active_txn(&self) -> Option<TxnId> {
        self.active.keys().min().copied()
    }

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
    fn retired_commits_keep_their_timestamp_and_retired_aborts_read_aborted() {
        let mut t = table(16);
        t.begin(TxnId(1), N, E, Timestamp(1), Timestamp(1));
        t.try_commit(TxnId(1), N, E, Timestamp(2));
        t.finish_commit(TxnId(1), Timestamp(2));
        t.begin(TxnId(2), N, E, Timestamp(3), Timestamp(1));
        t.abort_decision(TxnId(2));
        assert_eq!(t.outcome(TxnId(3)), TxnStatus::Unknown, "not begun");
        assert_eq!(t.outcome(TxnId(0)), TxnStatus::Unknown);
        for n in 3..=40u64 {
            assert!(t.begin(TxnId(n), N, E, Timestamp(10 * n), Timestamp(10 * n)));
            t.try_commit(TxnId(n), N, E, Timestamp(10 * n + 1));
            t.finish_commit(TxnId(n), Timestamp(10 * n + 1));
        }
        assert_eq!(t.region.read_slot(TxnId(1)).txn, 33, "slot of 1 reused");
        assert_eq!(t.outcome(TxnId(1)), TxnStatus::Committed(Timestamp(2)));
        assert_eq!(t.outcome(TxnId(2)), TxnStatus::Aborted);
        assert_eq!(t.outcome(TxnId(3)), TxnStatus::Committed(Timestamp(31)));
        assert_eq!(t.outcome(TxnId(40)), TxnStatus::Committed(Timestamp(401)));
        assert_eq!(t.outcome(TxnId(41)), TxnStatus::Unknown);
        // Decisions about retired txns follow their outcome.
        assert_eq!(
            t.abort_decision(TxnId(1)),
            AbortDecision::Committed(Timestamp(2))
        );
        assert_eq!(
            t.try_commit(TxnId(1), N, E, Timestamp(999)),
            CommitDecision::AlreadyCommitted(Timestamp(2))
        );
        assert_eq!(
            t.try_commit(TxnId(2), N, E, Timestamp(999)),
            CommitDecision::Aborted
        );
        assert_eq!(t.outcome_index().len(), 40 - 16 - 1);

        // Frozen below 20: retired txns below it are forgotten (never Aborted), those in
        // slots still answer, the index keeps only what is above the floor.
        t.freeze_below(TxnId(20));
        assert_eq!(t.outcome(TxnId(1)), TxnStatus::Retired);
        assert_eq!(
            t.outcome(TxnId(2)),
            TxnStatus::Retired,
            "not Aborted: unknown now"
        );
        assert_eq!(t.outcome(TxnId(19)), TxnStatus::Retired);
        assert_eq!(t.outcome(TxnId(24)), TxnStatus::Committed(Timestamp(241)));
        assert_eq!(t.outcome(TxnId(40)), TxnStatus::Committed(Timestamp(401)));
        assert_eq!(t.outcome_index().len(), 5, "20 ..= 24");
        // A slot reused now does not put a frozen occupant into the index.
        assert!(t.begin(TxnId(41), N, E, Timestamp(500), Timestamp(500)));
        assert_eq!(t.outcome_index().len(), 6, "25 moved in, above the floor");
    }

    #[test]
    fn a_restart_puts_recent_commits_in_slots_and_older_ones_in_the_index() {
        let server = Server::new(ClusterKey::random());
        let region = server
            .register(layout::region_len(16), Access::READ)
            .unwrap();
        // Boot floor 100: txns 84..100 go back into slots, older ones into the index.
        let mut t = StatusTable::new(StatusRegion::format(region, 16, TxnId(100)), TxnId(100));
        t.restore_committed(vec![
            (TxnId(90), Timestamp(900)),
            (TxnId(5), Timestamp(50)),
            (TxnId(60), Timestamp(600)),
            (TxnId(5), Timestamp(50)),
        ]);
        assert_eq!(t.region.read_slot(TxnId(90)).txn, 90);
        assert_eq!(t.region.read_slot(TxnId(60)).txn, 0);
        assert_eq!(t.outcome_index().len(), 2);
        for (txn, want) in [
            (5, TxnStatus::Committed(Timestamp(50))),
            (60, TxnStatus::Committed(Timestamp(600))),
            (90, TxnStatus::Committed(Timestamp(900))),
            (6, TxnStatus::Aborted),
            (91, TxnStatus::Aborted),
            (100, TxnStatus::Unknown),
        ] {
            assert_eq!(t.outcome(TxnId(txn)), want, "txn {txn}");
        }
        // A new txn reusing the slot of 90 moves it into the index.
        assert!(t.begin(TxnId(106), N, E, Timestamp(1000), Timestamp(1000)));
        assert_eq!(t.outcome_index().len(), 3);
        assert_eq!(t.outcome(TxnId(90)), TxnStatus::Committed(Timestamp(900)));
        assert_eq!(t.outcome(TxnId(106)), TxnStatus::InProgress);
    }

    #[test]
    fn the_outcome_index_takes_out_of_order_entries_and_merges_them() {
        let mut ix = OutcomeIndex::from_records(vec![
            (TxnId(10), Timestamp(1)),
            (TxnId(2), Timestamp(2)),
            (TxnId(10), Timestamp(1)),
        ]);
        assert_eq!(ix.len(), 2);
        let mut want = std::collections::BTreeMap::new();
        want.insert(10u64, 1u64);
        want.insert(2, 2);
        // Mostly ascending with stragglers, enough of them for several merges.
        let mut next = 11u64;
        let mut straggler = 3u64;
        for i in 0..(3 * OutcomeIndex::MERGE_AT as u64 + 7) {
            if i % 3 == 0 {
                ix.insert(TxnId(straggler), Timestamp(straggler * 7));
                want.insert(straggler, straggler * 7);
                straggler += 2;
            } else {
                next += 10;
                ix.insert(TxnId(next), Timestamp(next * 7));
                want.insert(next, next * 7);
            }
        }
        ix.insert(TxnId(2), Timestamp(2)); // a duplicate changes nothing
        assert_eq!(ix.len(), want.len());
        assert!(ix.sorted.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        for t in 0..next + 5 {
            assert_eq!(
                ix.get(TxnId(t)),
                want.get(&t).map(|&c| Timestamp(c)),
                "txn {t}"
            );
        }
        ix.forget_below(TxnId(1000));
        assert_eq!(ix.len(), want.range(1000..).count());
        assert_eq!(ix.get(TxnId(3)), None);
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
