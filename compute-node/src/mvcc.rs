//! Row versions and their visibility (docs/protocols.md §5, invariant 4).
//!
//! A row is stored in its table's B-link tree as one value: the row's **version chain**,
//! newest first. A version carries the writer's transaction id and, once known, its
//! commit timestamp (stamped lazily, the next time the chain is rewritten). Visibility
//! follows only from commit timestamps and snapshots (invariant 4):
//!
//! * a transaction sees its own newest write;
//! * otherwise a version is visible to snapshot `S` iff its writer committed with
//!   `cts < S`; in-progress and aborted writers' versions are invisible; a writer in
//!   `Committing` is waited out by the status oracle, never guessed.
//!
//! Writes (snapshot isolation, **first updater wins**): the newest version decides.
//! If its writer is still in progress, the writer must wait or die (see
//! [`WaitPolicy`]); if it committed at or after our snapshot, we lose with a retryable
//! conflict; if it aborted, its version is dropped and the next one decides.
//!
//! **Locking reads** ([`Chain::lock`], `Txn::get_for_update`): a current read. The
//! newest version decides as for a write (an in-progress writer must be waited for or
//! died on); then, instead of a new row, the reader installs a *lock-only* version (no
//! row, invisible to every reader, itself included) and gets the newest committed row —
//! which may be newer than its snapshot. Its later write of the row turns the lock into
//! a data version and never fails first-updater-wins: nobody else could write the row
//! meanwhile. A lock-only version whose writer has finished (committed or aborted) means
//! nothing and is dropped the next time the chain is rewritten, so a committed lock
//! never makes a later writer lose first-updater-wins.
//!
//! Pruning: when a chain is rewritten, aborted versions are dropped and, of the
//! committed versions with `cts < gc_watermark`, only the newest is kept: no snapshot
//! at or above the watermark can see an older one.
//!
//! A chain must fit one B-tree entry. When a hot row's chain would outgrow it (the GC
//! watermark lags behind a burst of updates), the oldest committed versions are dropped
//! ([`Chain::fit`]) and the chain is marked *truncated*: a snapshot that finds no
//! version old enough for it gets [`MvccError::SnapshotTooOld`], a retryable error
//! (Oracle's ORA-01555), instead of a wrong answer. The mark is cleared once the oldest
//! kept version is below the watermark (no snapshot that old can still run).
//!
//! ## Encoding (little-endian)
//!
//! ```text
//! count u16 (bit 15: truncated; bits 0..=14: number of versions), then per version (newest first):
//!   writer txn u64 | cts u64 (0 = not stamped yet) |
//!   flags u8 (bit 0: tombstone, bit 1: lock-only; a lock-only version has bit 0 set and
//!   no row) | len u32 | len bytes of row
//! ```

use common::ids::{Timestamp, TxnId};

/// What the GTM says about a writer, as the MVCC layer needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterState {
    InProgress,
    Committed(Timestamp),
    Aborted,
}

/// Resolves writers' states (the GTM status table behind a cache). It waits out
/// `Committing` itself.
pub trait StatusOracle {
    fn state_of(&self, writer: TxnId) -> Result<WriterState, MvccError>;
}

/// How a writer (or locking reader) that meets another transaction's uncommitted
/// version behaves. All three are deadlock-free; every compute node of a cluster must
/// use the same one (mixed, wait-die's old-waits-for-young and wound-wait's
/// young-waits-for-old could close a cycle, broken only by the lock-wait timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitPolicy {
    /// Abort at once with a retryable conflict.
    NoWait,
    /// An older transaction (smaller id) waits for a younger holder; a younger one dies.
    /// Waits only ever point from older to younger, so no cycle can form.
    WaitDie,
    /// A younger transaction waits for an older holder; an older one waits for a
    /// younger holder for a grace period (`EngineConfig::wound_after`) and then
    /// *wounds* it: aborts it at the GTM (unless its commit already won) and goes on.
    /// Every wait cycle holds an edge from an older waiter to a younger holder, and that
    /// waiter breaks it within the grace period. Hot rows queue instead of aborting:
    /// the usual newcomer is younger than the holder, and waits.
    #[default]
    WoundWait,
}

impl WaitPolicy {
    /// Whether `me` may wait for `holder` (wound-wait: always; the caller wounds an
    /// younger holder after the grace period).
    fn may_wait(self, me: TxnId, holder: TxnId) -> bool {
        match self {
            WaitPolicy::NoWait => false,
            WaitPolicy::WaitDie => me < holder,
            WaitPolicy::WoundWait => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// Another transaction's version blocks this write; with `may_wait` the caller may
    /// wait for `holder` to finish and retry the write, otherwise it must abort.
    #[error("row is being written by transaction {holder}")]
    Locked { holder: TxnId, may_wait: bool },
    /// A concurrent transaction committed a newer version first (retryable abort).
    #[error("write-write conflict: row changed by a transaction committed after this snapshot")]
    WriteConflict,
    #[error("corrupt version chain: {0}")]
    Corrupt(&'static str),
    #[error("status lookup failed: {0}")]
    Status(String),
    /// The versions this snapshot needs were dropped to keep the row's chain in bounds;
    /// retry with a newer snapshot.
    #[error("snapshot too old: the row's older versions were dropped")]
    SnapshotTooOld,
    /// Even the newest versions alone do not fit one entry.
    #[error("row too large: {0} bytes of versions do not fit {1}")]
    RowTooLarge(usize, usize),
}

/// What a locking read found ([`Chain::lock`]): the row it returns (`None`: no row, or
/// a tombstone), and whether the chain changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockRead {
    /// The lock was taken now: write the chain back.
    Acquired(Option<Vec<u8>>),
    /// The transaction held it already (a lock or its own write): nothing to write.
    Held(Option<Vec<u8>>),
}

impl LockRead {
    pub fn into_row(self) -> Option<Vec<u8>> {
        match self {
            LockRead::Acquired(r) | LockRead::Held(r) => r,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub writer: TxnId,
    /// `None` until stamped.
    pub cts: Option<Timestamp>,
    /// `None` is a tombstone (the row was deleted), or, with `lock`, nothing.
    pub row: Option<Vec<u8>>,
    /// A lock-only version (see the module doc, "Locking reads"): no row, invisible.
    pub lock: bool,
}

impl Version {
    /// Whether this version carries data (a row or a tombstone), not just a lock.
    fn is_data(&self) -> bool {
        !self.lock
    }
}

/// A decoded version chain, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub versions: Vec<Version>,
    /// Older versions were dropped by [`Chain::fit`].
    pub truncated: bool,
}

const TRUNCATED: u16 = 1 << 15;
/// Bytes of a version's header: writer, cts, flags, row length.
const VERSION_HEADER: usize = 21;

/// Walks an encoded chain's version headers without decoding it (no allocation):
/// `visit(header_offset, writer, cts, flags)` for each, newest first. `None` if the
/// bytes are not a well-formed chain (the caller then leaves them to the full decoder,
/// which reports what is wrong).
fn walk_encoded(b: &[u8], mut visit: impl FnMut(usize, TxnId, u64, u8)) -> Option<()> {
    let word = u16::from_le_bytes(b.get(..2)?.try_into().ok()?);
    let mut at = 2;
    for _ in 0..word & !TRUNCATED {
        let h = b.get(at..at + VERSION_HEADER)?;
        let writer = TxnId(u64::from_le_bytes(h[..8].try_into().ok()?));
        let cts = u64::from_le_bytes(h[8..16].try_into().ok()?);
        let len = u32::from_le_bytes(h[17..21].try_into().ok()?) as usize;
        let flags = h[16];
        // What the decoder rejects: unknown flags, a lock with a row, a tombstone with data.
        if flags & !3 != 0 || (flags & 2 != 0 && flags & 1 == 0) || (flags & 1 != 0 && len != 0) {
            return None;
        }
        visit(at, writer, cts, flags);
        at = at.checked_add(VERSION_HEADER + len)?;
    }
    (at == b.len()).then_some(())
}

/// [`Chain::needs_freeze`] on the encoding, without decoding (a sweep's scan looks at
/// every row). A malformed chain answers `true`: the rewrite decodes it and reports it.
pub fn encoded_needs_freeze(b: &[u8], below: TxnId) -> bool {
    let mut needs = false;
    walk_encoded(b, |_, writer, cts, _| needs |= writer < below && cts == 0).is_none() || needs
}

/// Stamps, in place, every data version of `b` (an encoded chain) whose writer `known`
/// says committed, with its commit timestamp; returns whether it stamped any. Lengths
/// do not change, so a leaf being written anyway can stamp its other rows for a few
/// bytes of redo each, and the freeze sweep finds them done. `known` must answer from
/// what is final and already known (a cache of outcomes), never guess; a version it
/// does not know stays as it is. Lock-only and aborted versions are left to the next
/// rewrite (dropping them changes the length). Malformed bytes are left untouched.
pub fn stamp_encoded(b: &mut [u8], known: impl Fn(TxnId) -> Option<Timestamp>) -> bool {
    let mut stamps: [(usize, u64); 8] = [(0, 0); 8];
    let mut n = 0;
    let well_formed = walk_encoded(b, |at, writer, cts, flags| {
        if cts == 0 && flags & 2 == 0 && n < stamps.len() {
            if let Some(t) = known(writer).filter(|t| t.0 != 0) {
                stamps[n] = (at, t.0);
                n += 1;
            }
        }
    });
    if well_formed.is_none() {
        return false;
    }
    for &(at, cts) in &stamps[..n] {
        b[at + 8..at + 16].copy_from_slice(&cts.to_le_bytes());
    }
    n > 0
}

impl Chain {
    pub fn decode(mut b: &[u8]) -> Result<Chain, MvccError> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], MvccError> {
            if b.len() < n {
                return Err(MvccError::Corrupt("truncated"));
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Ok(h)
        }
        let word = u16::from_le_bytes(take(&mut b, 2)?.try_into().expect("2"));
        let truncated = word & TRUNCATED != 0;
        let count = word & !TRUNCATED;
        let mut versions = Vec::with_capacity((count as usize).min(b.len() / 21));
        for _ in 0..count {
            let writer = TxnId(u64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8")));
            let cts = u64::from_le_bytes(take(&mut b, 8)?.try_into().expect("8"));
            let flags = take(&mut b, 1)?[0];
            if flags & !3 != 0 {
                return Err(MvccError::Corrupt("unknown flags"));
            }
            let lock = flags & 2 != 0;
            if lock && flags & 1 == 0 {
                return Err(MvccError::Corrupt("lock-only version with a row"));
            }
            let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4")) as usize;
            let body = take(&mut b, len)?;
            versions.push(Version {
                writer,
                cts: (cts != 0).then_some(Timestamp(cts)),
                row: if flags & 1 == 1 {
                    if len != 0 {
                        return Err(MvccError::Corrupt("tombstone with data"));
                    }
                    None
                } else {
                    Some(body.to_vec())
                },
                lock,
            });
        }
        if !b.is_empty() {
            return Err(MvccError::Corrupt("trailing bytes"));
        }
        Ok(Chain {
            versions,
            truncated,
        })
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        2 + self
            .versions
            .iter()
            .map(|v| {
                21 + if v.lock {
                    0
                } else {
                    v.row.as_ref().map_or(0, Vec::len)
                }
            })
            .sum::<usize>()
    }

    /// Drops the oldest committed versions until the encoding fits `max` bytes, keeping
    /// the newest version and the newest committed one; marks the chain truncated.
    pub fn fit(&mut self, max: usize) -> Result<(), MvccError> {
        while self.encoded_len() > max {
            let newest_committed = self
                .versions
                .iter()
                .position(|v| v.cts.is_some() && v.is_data());
            let keep = newest_committed.map_or(1, |i| i + 1).max(1);
            if self.versions.len() <= keep {
                return Err(MvccError::RowTooLarge(self.encoded_len(), max));
            }
            self.versions.pop();
            self.truncated = true;
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(self.encoded_len());
        let word = self.versions.len() as u16 | if self.truncated { TRUNCATED } else { 0 };
        o.extend_from_slice(&word.to_le_bytes());
        for v in &self.versions {
            o.extend_from_slice(&v.writer.0.to_le_bytes());
            o.extend_from_slice(&v.cts.map_or(0, |t| t.0).to_le_bytes());
            o.push((v.row.is_none() || v.lock) as u8 | (v.lock as u8) << 1);
            let row = if v.lock {
                &[][..]
            } else {
                v.row.as_deref().unwrap_or(&[])
            };
            o.extend_from_slice(&(row.len() as u32).to_le_bytes());
            o.extend_from_slice(row);
        }
        o
    }

    fn state(v: &Version, oracle: &dyn StatusOracle) -> Result<WriterState, MvccError> {
        match v.cts {
            Some(cts) => Ok(WriterState::Committed(cts)),
            None => oracle.state_of(v.writer),
        }
    }

    /// The row `me` sees at `snapshot` (`None`: no visible row, or a tombstone).
    pub fn visible(
        &self,
        me: TxnId,
        snapshot: Timestamp,
        oracle: &dyn StatusOracle,
    ) -> Result<Option<&[u8]>, MvccError> {
        for v in &self.versions {
            if v.lock {
                continue;
            }
            if v.writer == me {
                return Ok(v.row.as_deref());
            }
            if let WriterState::Committed(cts) = Chain::state(v, oracle)? {
                if cts < snapshot {
                    return Ok(v.row.as_deref());
                }
            }
        }
        if self.truncated {
            return Err(MvccError::SnapshotTooOld);
        }
        Ok(None)
    }

    /// Resolves every unstamped writer but `me` once (stamping commit timestamps),
    /// drops aborted versions and every lock-only version whose writer has finished.
    fn resolve(&mut self, me: TxnId, oracle: &dyn StatusOracle) -> Result<(), MvccError> {
        let mut kept = Vec::with_capacity(self.versions.len() + 1);
        for mut v in std::mem::take(&mut self.versions) {
            if v.writer != me {
                if v.cts.is_none() {
                    match oracle.state_of(v.writer) {
                        Ok(WriterState::Committed(cts)) => v.cts = Some(cts),
                        Ok(WriterState::Aborted) => continue,
                        Ok(WriterState::InProgress) => {}
                        Err(e) => {
                            kept.push(v);
                            self.versions = kept;
                            return Err(e);
                        }
                    }
                }
                if v.lock && v.cts.is_some() {
                    continue;
                }
            }
            kept.push(v);
        }
        self.versions = kept;
        Ok(())
    }

    /// After [`Chain::resolve`]: refuses if another transaction's version (a write or a
    /// lock) is the newest and still in progress.
    fn check_not_locked(&self, me: TxnId, policy: WaitPolicy) -> Result<(), MvccError> {
        match self.versions.first() {
            Some(newest) if newest.writer != me && newest.cts.is_none() => Err(MvccError::Locked {
                holder: newest.writer,
                may_wait: policy.may_wait(me, newest.writer),
            }),
            _ => Ok(()),
        }
    }

    /// Installs `me`'s new version (`row: None` deletes) under snapshot isolation, first
    /// updater wins — unless `me` holds the row's lock ([`Chain::lock`]), which makes
    /// the write its own. Stamps known commit timestamps and prunes below
    /// `gc_watermark` on the way (see module doc).
    pub fn write(
        &mut self,
        me: TxnId,
        snapshot: Timestamp,
        row: Option<Vec<u8>>,
        gc_watermark: Timestamp,
        policy: WaitPolicy,
        oracle: &dyn StatusOracle,
    ) -> Result<(), MvccError> {
        self.resolve(me, oracle)?;
        self.check_not_locked(me, policy)?;
        if let Some(newest) = self.versions.first_mut() {
            if newest.writer == me {
                newest.row = row;
                newest.lock = false;
                self.prune(gc_watermark);
                return Ok(());
            }
            if newest.cts.is_some_and(|cts| cts >= snapshot) {
                return Err(MvccError::WriteConflict);
            }
        }
        self.versions.insert(
            0,
            Version {
                writer: me,
                cts: None,
                row,
                lock: false,
            },
        );
        self.prune(gc_watermark);
        Ok(())
    }

    /// A locking read (see the module doc): takes `me`'s write intent on the row unless
    /// it holds one already, and returns the newest committed row (or `me`'s own write).
    /// [`LockRead::Held`] leaves the chain as it was; [`LockRead::Acquired`] means the
    /// chain (now with `me`'s lock-only version first) must be written back.
    pub fn lock(
        &mut self,
        me: TxnId,
        gc_watermark: Timestamp,
        policy: WaitPolicy,
        oracle: &dyn StatusOracle,
    ) -> Result<LockRead, MvccError> {
        self.resolve(me, oracle)?;
        self.check_not_locked(me, policy)?;
        if let Some(newest) = self.versions.first() {
            if newest.writer == me {
                let row = if newest.lock {
                    self.versions[1..]
                        .iter()
                        .find(|v| v.is_data() && v.cts.is_some())
                        .and_then(|v| v.row.clone())
                } else {
                    newest.row.clone()
                };
                return Ok(LockRead::Held(row));
            }
        }
        // Every version left is committed, and none is a lock: the first is the newest.
        let row = self.versions.first().and_then(|v| v.row.clone());
        self.versions.insert(
            0,
            Version {
                writer: me,
                cts: None,
                row: None,
                lock: true,
            },
        );
        self.prune(gc_watermark);
        Ok(LockRead::Acquired(row))
    }

    /// Removes `me`'s version again (statement-level undo is not needed: a transaction
    /// that aborts leaves its versions to be pruned, but a caller may clean eagerly).
    pub fn remove_own(&mut self, me: TxnId) {
        self.versions.retain(|v| v.writer != me);
    }

    fn prune(&mut self, gc_watermark: Timestamp) {
        // Versions are newest first and committed versions are in cts order, so once one
        // committed version is below the watermark everything after it is invisible to
        // every snapshot that may still run.
        if let Some(i) = self
            .versions
            .iter()
            .position(|v| v.is_data() && v.cts.is_some_and(|c| c < gc_watermark))
        {
            self.versions.truncate(i + 1);
            // The oldest kept version is below the watermark: no snapshot that could
            // have needed a dropped one is still running.
            self.truncated = false;
        }
    }

    /// Whether the chain holds a version of a txn below `below` that is not stamped (a
    /// write whose outcome readers still look up, or a lock): the rows a freeze sweep
    /// rewrites (`crate::freeze`).
    pub fn needs_freeze(&self, below: TxnId) -> bool {
        self.versions
            .iter()
            .any(|v| v.writer < below && v.cts.is_none())
    }

    /// The freeze sweep's rewrite: stamps every version of a txn below `below`, drops
    /// those that aborted and every finished lock, and prunes below `gc_watermark`.
    /// Every txn below `below` has ended, so one still in progress is an error (never a
    /// guess). Returns whether the chain changed.
    pub fn freeze(
        &mut self,
        below: TxnId,
        gc_watermark: Timestamp,
        oracle: &dyn StatusOracle,
    ) -> Result<bool, MvccError> {
        if !self.needs_freeze(below) {
            return Ok(false);
        }
        let mut kept = Vec::with_capacity(self.versions.len());
        for mut v in std::mem::take(&mut self.versions) {
            if v.writer < below && v.cts.is_none() {
                match oracle.state_of(v.writer) {
                    Ok(WriterState::Committed(cts)) => v.cts = Some(cts),
                    Ok(WriterState::Aborted) => continue,
                    Ok(WriterState::InProgress) => {
                        return Err(MvccError::Status(format!(
                            "txn {} is below the freeze target {below} but not ended",
                            v.writer
                        )))
                    }
                    Err(e) => return Err(e),
                }
                if v.lock {
                    continue;
                }
            }
            kept.push(v);
        }
        self.versions = kept;
        self.prune(gc_watermark);
        Ok(true)
    }

    /// True if the chain holds nothing anyone can ever see again: a lone tombstone
    /// committed below the watermark. Such a row may be removed from the tree.
    pub fn is_dead(&self, gc_watermark: Timestamp) -> bool {
        matches!(self.versions.as_slice(), [v] if v.row.is_none() && v.cts.is_some_and(|c| c < gc_watermark))
            || self.versions.iter().all(|v| v.lock && v.cts.is_some())
            || self.versions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    struct Table(HashMap<TxnId, WriterState>);
    impl StatusOracle for Table {
        fn state_of(&self, w: TxnId) -> Result<WriterState, MvccError> {
            Ok(*self.0.get(&w).unwrap_or(&WriterState::InProgress))
        }
    }

    #[test]
    fn first_updater_wins_and_snapshots_see_committed_before_them() {
        let mut st = Table(HashMap::new());
        let mut c = Chain::default();
        c.write(
            TxnId(1),
            Timestamp(10),
            Some(b"a".to_vec()),
            Timestamp(0),
            WaitPolicy::WaitDie,
            &st,
        )
        .unwrap();
        // T2 (younger) meets T1's intent: dies; T0-like older may wait.
        let e = c
            .write(
                TxnId(2),
                Timestamp(11),
                Some(b"b".to_vec()),
                Timestamp(0),
                WaitPolicy::WaitDie,
                &st,
            )
            .unwrap_err();
        assert_eq!(
            e,
            MvccError::Locked {
                holder: TxnId(1),
                may_wait: false
            }
        );
        st.0.insert(TxnId(1), WriterState::Committed(Timestamp(12)));
        // T2's snapshot 11 predates T1's commit at 12: first updater wins.
        let e = c
            .write(
                TxnId(2),
                Timestamp(11),
                Some(b"b".to_vec()),
                Timestamp(0),
                WaitPolicy::WaitDie,
                &st,
            )
            .unwrap_err();
        assert_eq!(e, MvccError::WriteConflict);
        assert_eq!(c.visible(TxnId(3), Timestamp(12), &st).unwrap(), None);
        assert_eq!(
            c.visible(TxnId(3), Timestamp(13), &st).unwrap(),
            Some(&b"a"[..])
        );
        c.write(
            TxnId(4),
            Timestamp(13),
            None,
            Timestamp(0),
            WaitPolicy::WaitDie,
            &st,
        )
        .unwrap();
        assert_eq!(c.versions[1].cts, Some(Timestamp(12)), "stamped lazily");
        assert_eq!(
            c.visible(TxnId(4), Timestamp(13), &st).unwrap(),
            None,
            "own delete"
        );
        st.0.insert(TxnId(4), WriterState::Aborted);
        assert_eq!(
            c.visible(TxnId(5), Timestamp(20), &st).unwrap(),
            Some(&b"a"[..])
        );
        c.write(
            TxnId(5),
            Timestamp(20),
            Some(b"c".to_vec()),
            Timestamp(0),
            WaitPolicy::WaitDie,
            &st,
        )
        .unwrap();
        assert_eq!(c.versions.len(), 2, "aborted version dropped");
    }

    fn put(c: &mut Chain, me: u64, snap: u64, v: &[u8], st: &Table) -> Result<(), MvccError> {
        c.write(
            TxnId(me),
            Timestamp(snap),
            Some(v.to_vec()),
            Timestamp(0),
            WaitPolicy::WoundWait,
            st,
        )
    }

    fn lock(c: &mut Chain, me: u64, st: &Table) -> Result<LockRead, MvccError> {
        c.lock(TxnId(me), Timestamp(0), WaitPolicy::WoundWait, st)
    }

    #[test]
    fn a_locking_read_returns_the_newest_commit_and_its_write_never_loses() {
        let mut st = Table(HashMap::new());
        let mut c = Chain::default();
        put(&mut c, 1, 10, b"v1", &st).unwrap();
        st.0.insert(TxnId(1), WriterState::Committed(Timestamp(11)));
        // T2's snapshot (5) predates T1's commit: a plain write loses ...
        assert_eq!(
            put(&mut c.clone(), 2, 5, b"x", &st),
            Err(MvccError::WriteConflict)
        );
        // ... a locking read returns T1's row, newer than the snapshot, and the write
        // that follows is T2's own.
        assert_eq!(
            lock(&mut c, 2, &st).unwrap(),
            LockRead::Acquired(Some(b"v1".to_vec()))
        );
        assert!(c.versions[0].lock && c.versions[0].writer == TxnId(2));
        assert_eq!(
            lock(&mut c, 2, &st).unwrap(),
            LockRead::Held(Some(b"v1".to_vec()))
        );
        // The lock is invisible, to its holder too (its snapshot rule still applies).
        assert_eq!(c.visible(TxnId(2), Timestamp(5), &st).unwrap(), None);
        assert_eq!(
            c.visible(TxnId(3), Timestamp(12), &st).unwrap(),
            Some(&b"v1"[..])
        );
        // Others wait for (or die on) the lock like on a write.
        assert_eq!(
            put(&mut c.clone(), 3, 12, b"y", &st),
            Err(MvccError::Locked {
                holder: TxnId(2),
                may_wait: true
            })
        );
        assert!(matches!(
            lock(&mut c.clone(), 3, &st),
            Err(MvccError::Locked {
                holder: TxnId(2),
                ..
            })
        ));
        put(&mut c, 2, 5, b"v2", &st).unwrap();
        assert!(!c.versions[0].lock && c.versions[0].row.as_deref() == Some(&b"v2"[..]));
        assert_eq!(
            lock(&mut c, 2, &st).unwrap(),
            LockRead::Held(Some(b"v2".to_vec()))
        );
        assert_eq!(Chain::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn a_finished_lock_means_nothing() {
        let mut st = Table(HashMap::new());
        let mut c = Chain::default();
        put(&mut c, 1, 10, b"v1", &st).unwrap();
        st.0.insert(TxnId(1), WriterState::Committed(Timestamp(11)));
        assert_eq!(
            lock(&mut c, 2, &st).unwrap(),
            LockRead::Acquired(Some(b"v1".to_vec()))
        );
        // Committed without writing: a later writer whose snapshot predates that
        // commit (but not T1's) does not lose first-updater-wins to a lock.
        st.0.insert(TxnId(2), WriterState::Committed(Timestamp(20)));
        put(&mut c, 3, 15, b"v3", &st).unwrap();
        assert_eq!(c.versions.len(), 2, "the committed lock was dropped");
        // An aborted locker's lock goes too.
        st.0.insert(TxnId(3), WriterState::Committed(Timestamp(21)));
        lock(&mut c, 4, &st).unwrap();
        st.0.insert(TxnId(4), WriterState::Aborted);
        assert_eq!(
            lock(&mut c, 5, &st).unwrap(),
            LockRead::Acquired(Some(b"v3".to_vec()))
        );
        assert_eq!(c.versions.len(), 3);
        // A lock on a key without a row returns nothing and still excludes writers.
        let mut empty = Chain::default();
        assert_eq!(lock(&mut empty, 6, &st).unwrap(), LockRead::Acquired(None));
        assert!(matches!(
            put(&mut empty.clone(), 7, 30, b"z", &st),
            Err(MvccError::Locked {
                holder: TxnId(6),
                ..
            })
        ));
        assert_eq!(empty.visible(TxnId(7), Timestamp(30), &st).unwrap(), None);
        st.0.insert(TxnId(6), WriterState::Committed(Timestamp(31)));
        put(&mut empty, 7, 30, b"z", &st).unwrap();
        assert_eq!(empty.versions.len(), 1, "only T7's row is left");
    }

    #[test]
    fn a_freeze_stamps_old_versions_drops_aborted_ones_and_finished_locks() {
        let v = |w: u64, lock: bool| Version {
            writer: TxnId(w),
            cts: None,
            row: (!lock).then(|| vec![w as u8]),
            lock,
        };
        // Newest first: 5 in progress, 4 a committed lock, 3 aborted, 1 committed.
        let mut c = Chain {
            versions: vec![v(5, false), v(4, true), v(3, false), v(1, false)],
            truncated: false,
        };
        let st = Table(HashMap::from([
            (TxnId(1), WriterState::Committed(Timestamp(6))),
            (TxnId(3), WriterState::Aborted),
            (TxnId(4), WriterState::Committed(Timestamp(9))),
        ]));
        assert!(c.needs_freeze(TxnId(5)));
        let wm = Timestamp(0);
        assert!(c.freeze(TxnId(5), wm, &st).unwrap());
        assert!(!c.needs_freeze(TxnId(5)), "{c:?}");
        let writers: Vec<u64> = c.versions.iter().map(|v| v.writer.0).collect();
        assert_eq!(
            writers,
            vec![5, 1],
            "aborted 3 and the finished lock of 4 are gone"
        );
        assert_eq!(c.versions[1].cts, Some(Timestamp(6)));
        assert_eq!(c.versions[0].cts, None, "5 is not below the target");
        assert!(!c.freeze(TxnId(5), wm, &st).unwrap(), "nothing left to do");
        // A target above a txn still in progress is refused, not guessed.
        assert!(matches!(
            c.freeze(TxnId(6), wm, &st),
            Err(MvccError::Status(_))
        ));
    }

    #[test]
    fn wait_policies_decide_who_may_wait() {
        let st = Table(HashMap::new());
        let mut c = Chain::default();
        put(&mut c, 5, 10, b"v", &st).unwrap();
        for (policy, me, may_wait) in [
            (WaitPolicy::WaitDie, 4, true),
            (WaitPolicy::WaitDie, 6, false),
            (WaitPolicy::WoundWait, 4, true),
            (WaitPolicy::WoundWait, 6, true),
            (WaitPolicy::NoWait, 4, false),
        ] {
            assert_eq!(
                c.clone()
                    .lock(TxnId(me), Timestamp(0), policy, &st)
                    .unwrap_err(),
                MvccError::Locked {
                    holder: TxnId(5),
                    may_wait
                },
                "{policy:?} T{me}"
            );
        }
    }

    #[test]
    fn overgrown_chains_are_trimmed_and_old_snapshots_told_so() {
        let st = Table(HashMap::new());
        let mut c = Chain::default();
        for i in 1..=20u64 {
            c.versions.insert(
                0,
                Version {
                    writer: TxnId(i),
                    cts: Some(Timestamp(10 * i)),
                    row: Some(vec![0; 100]),
                    lock: false,
                },
            );
        }
        c.fit(600).unwrap();
        assert!(c.encoded_len() <= 600 && c.truncated);
        assert_eq!(c.versions[0].cts, Some(Timestamp(200)), "the newest stays");
        assert_eq!(
            c.visible(TxnId(99), Timestamp(1000), &st)
                .unwrap()
                .map(<[u8]>::len),
            Some(100)
        );
        assert_eq!(
            c.visible(TxnId(99), Timestamp(15), &st),
            Err(MvccError::SnapshotTooOld)
        );
        let back = Chain::decode(&c.encode()).unwrap();
        assert_eq!(back, c);
        // Once the watermark passes the oldest kept version the mark goes.
        c.prune(Timestamp(1000));
        assert!(!c.truncated);
        let mut big = Chain::default();
        big.versions.push(Version {
            writer: TxnId(1),
            cts: None,
            row: Some(vec![0; 900]),
            lock: false,
        });
        assert!(matches!(big.fit(500), Err(MvccError::RowTooLarge(..))));
    }

    fn arb_chain() -> impl Strategy<Value = Chain> {
        proptest::collection::vec(
            (
                1u64..50,
                proptest::option::of(1u64..1000),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                any::<bool>(),
            ),
            0..6,
        )
        .prop_map(|vs| Chain {
            truncated: vs.len() % 2 == 1,
            versions: vs
                .into_iter()
                .map(|(w, c, r, lock)| Version {
                    writer: TxnId(w),
                    cts: c.map(Timestamp),
                    row: if lock { None } else { r },
                    lock,
                })
                .collect(),
        })
    }

    proptest! {
        #[test]
        fn chains_round_trip(c in arb_chain()) {
            prop_assert_eq!(Chain::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn decoder_is_total(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Chain::decode(&b);
            let mut m = b.clone();
            prop_assert!(!stamp_encoded(&mut m, |_| Some(Timestamp(7))) || Chain::decode(&b).is_ok());
            let _ = encoded_needs_freeze(&b, TxnId(10));
        }

        /// The byte-level helpers agree with the decoded chain: `encoded_needs_freeze`
        /// with `needs_freeze`, and `stamp_encoded` with stamping the decoded versions
        /// (data versions of writers it knows committed; locks and unknown writers left).
        #[test]
        fn encoded_helpers_agree_with_the_chain(c in arb_chain(), below in 1u64..50, odd in any::<bool>()) {
            let bytes = c.encode();
            prop_assert_eq!(encoded_needs_freeze(&bytes, TxnId(below)), c.needs_freeze(TxnId(below)));
            // Writers known committed: the odd ones (or the even ones), at 1000 + id.
            let known = |w: TxnId| (w.0 % 2 == odd as u64).then_some(Timestamp(1000 + w.0));
            let mut expect = c.clone();
            let mut stamped = false;
            for v in &mut expect.versions {
                if v.cts.is_none() && !v.lock {
                    if let Some(t) = known(v.writer) {
                        v.cts = Some(t);
                        stamped = true;
                    }
                }
            }
            let mut got = bytes.clone();
            prop_assert_eq!(stamp_encoded(&mut got, known), stamped);
            prop_assert_eq!(got.len(), bytes.len());
            prop_assert_eq!(Chain::decode(&got).unwrap(), expect);
        }

        /// A valid chain with one byte changed or cut short: an error or a chain that
        /// re-encodes to exactly those bytes, never a panic.
        #[test]
        fn damaged_chains_never_panic(
            c in arb_chain(),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut b = c.encode();
            prop_assert!(Chain::decode(&b[..cut.index(b.len())]).is_err());
            let i = at.index(b.len());
            b[i] ^= x;
            if let Ok(d) = Chain::decode(&b) {
                prop_assert_eq!(d.encode(), b);
            }
        }

        /// Pruning below the watermark never changes what a snapshot at or above the
        /// watermark sees.
        #[test]
        fn pruning_preserves_visibility(
            commits in proptest::collection::vec(1u64..100, 1..8),
            wm in 1u64..120,
            snap_off in 0u64..50,
        ) {
            let mut sorted = commits.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let st = Table(HashMap::new());
            let full = Chain { truncated: false, versions: sorted.iter().rev().enumerate().map(|(i, c)| Version {
                writer: TxnId(100 + i as u64), cts: Some(Timestamp(*c)), row: Some(vec![i as u8]), lock: false }).collect() };
            let mut pruned = full.clone();
            pruned.prune(Timestamp(wm));
            let snap = Timestamp(wm + snap_off);
            prop_assert_eq!(full.visible(TxnId(1), snap, &st).unwrap(), pruned.visible(TxnId(1), snap, &st).unwrap());
        }
    }
}
