//! The commit-record log: commit decisions made durable with one fsync per group.
//!
//! Only commits are logged. An abort needs no record: after a restart every txn id
//! issued before it (below the txn-id high-water mark) without a durable commit record
//! reads as Aborted, which is exactly right for aborted txns, for txns still in progress
//! at the crash, and for commits whose record did not reach the disk (their callers never
//! got an acknowledgement). Invariant 7: a commit is acknowledged only after
//! its record is durable.
//!
//! ## File format (`commit.log`, appended, little-endian)
//!
//! ```text
//! record (20 bytes): txn u64 | commit_ts u64 | crc32c(bytes 0..16) u32
//! ```
//!
//! Replay stops at the first short or mismatching record. The file is kept
//! preallocated with zeroes ahead of the records ([`PREALLOCATE`] at a time): a group
//! is written over zeroes at the end of the records, so its `fdatasync` writes the data
//! and not the inode too (the size does not change; on ext4 that halves the I/Os per
//! commit group, as PostgreSQL's zero-filled WAL segments do). A zero record never
//! decodes (its checksum is not 0), so replay stops at the first zero byte of the
//! preallocated end. Anything else past the valid prefix is a torn tail from a crash:
//! the file is cut there at start, before anything is appended, so that records of a
//! group whose write was cut short cannot reappear behind later appends (they were
//! never acknowledged, and their txns were answered Aborted after the restart).
//!
//! ## Size and compaction
//!
//! The log is the durable half of the GTM's outcome index
//! (`status_table::OutcomeIndex`), which answers for committed transactions long after
//! their status-table slot was reused, because compute nodes stamp commit timestamps
//! into row versions lazily. It grows by 20 bytes per commit (a retried commit may log
//! its record twice) and is read in full (streamed) at every start.
//!
//! Freeze sweeps bound it (`crate::freeze`): once the freeze floor `F` is durable, the
//! group-commit thread rewrites the log without the records of txns below `F`
//! ([`CommitLog::compact_below`]: the kept records into `commit.log.tmp`, fsync, rename
//! over `commit.log`, fsync the directory; appends go on in the new file). A crash at
//! any point leaves either the old log or the new one, both complete above `F`.
//! Never drop a record without persisting `F` first: a missing record reads as
//! Aborted below the boot floor.

use common::durable::{parent_dir, DurableFile, DurableFs, OpenMode, StdFs};
use common::ids::{Timestamp, TxnId};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const RECORD_LEN: usize = 20;

/// Bytes of zeroes the log is extended by when the records reach its end (52,428
/// records).
pub const PREALLOCATE: u64 = 1 << 20;

pub fn encode_record(txn: TxnId, cts: Timestamp, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&txn.0.to_le_bytes());
    out.extend_from_slice(&cts.0.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..start + 16]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes the valid prefix of a log image; returns the records and the prefix length.
pub fn decode_records(bytes: &[u8]) -> (Vec<(TxnId, Timestamp)>, usize) {
    let mut out = Vec::with_capacity(bytes.len() / RECORD_LEN);
    let mut pos = 0;
    while pos + RECORD_LEN <= bytes.len() {
        let r = &bytes[pos..pos + RECORD_LEN];
        let crc = u32::from_le_bytes(r[16..20].try_into().expect("4 bytes"));
        if crc32c::crc32c(&r[..16]) != crc {
            break;
        }
        let txn = u64::from_le_bytes(r[0..8].try_into().expect("8 bytes"));
        let cts = u64::from_le_bytes(r[8..16].try_into().expect("8 bytes"));
        out.push((TxnId(txn), Timestamp(cts)));
        pos += RECORD_LEN;
    }
    (out, pos)
}

pub struct CommitLog {
    file: Box<dyn DurableFile>,
    path: PathBuf,
    fs: Arc<dyn DurableFs>,
    /// End of the records: the next group is written here.
    end: u64,
    /// Length of the file (the records, then zeroes).
    allocated: u64,
}

/// Where a compaction writes the new log before renaming it over the old one.
fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension("log.tmp")
}

impl CommitLog {
    /// Opens (or creates) the log at `path` and returns every commit record in it, in log
    /// order (duplicates possible); a torn tail is cut off.
    pub fn open(path: &Path) -> std::io::Result<(CommitLog, Vec<(TxnId, Timestamp)>)> {
        Self::open_in(StdFs::shared(), path)
    }

    /// As [`CommitLog::open`], with the log on `fs`.
    pub fn open_in(
        fs: Arc<dyn DurableFs>,
        path: &Path,
    ) -> std::io::Result<(CommitLog, Vec<(TxnId, Timestamp)>)> {
        // A compaction that crashed before its rename left an unfinished copy.
        if fs.exists(&tmp_path(path)) {
            fs.remove_file(&tmp_path(path))?;
        }
        let mut records = Vec::new();
        let mut valid = 0u64;
        let mut len = 0u64;
        match fs.open(path, OpenMode::Read) {
            Ok(f) => {
                len = f.len()?;
                records.reserve((len / RECORD_LEN as u64) as usize);
                // Streamed in whole records, so a large log is never held twice.
                let mut chunk = vec![0u8; RECORD_LEN * (1 << 16)];
                loop {
                    let n = read_full(&*f, valid, &mut chunk)?;
                    let (recs, ok) = decode_records(&chunk[..n]);
                    records.extend(recs);
                    valid += ok as u64;
                    if ok < chunk.len() {
                        break;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = fs.open(path, OpenMode::Create)?;
        if valid < len && !zero_from(&*file, valid, len)? {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = len - valid,
                "commit log has a torn tail (crash during a write); dropping it"
            );
            file.set_len(valid)?;
            file.sync_all()?;
            len = valid;
        } else if len == 0 {
            file.sync_all()?;
            fs.sync_dir(parent_dir(path))?;
        }
        Ok((
            CommitLog {
                file,
                path: path.to_path_buf(),
                fs,
                end: valid,
                allocated: len,
            },
            records,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the log without the records of txns below `floor` (already durable as
    /// the freeze floor). Returns (records kept, records dropped). Runs in the
    /// group-commit thread, between groups. An error before the rename leaves the old
    /// log in use; an error after it (the directory fsync) means the rename may not be
    /// durable while appends would go to the new file, so the caller must stop
    /// committing (as for a failed append).
    pub fn compact_below(&mut self, floor: TxnId) -> Result<(usize, usize), CompactError> {
        let mut bytes = self.fs.read(&self.path).map_err(CompactError::Before)?;
        bytes.truncate(self.end as usize);
        let (records, valid) = decode_records(&bytes);
        if valid != bytes.len() {
            return Err(CompactError::Before(std::io::Error::other(format!(
                "{}: a damaged record at byte {valid} of {}",
                self.path.display(),
                bytes.len()
            ))));
        }
        let mut kept = Vec::with_capacity(bytes.len());
        let mut n = 0;
        for &(txn, cts) in &records {
            if txn >= floor {
                encode_record(txn, cts, &mut kept);
                n += 1;
            }
        }
        let dropped = records.len() - n;
        if dropped == 0 {
            return Ok((n, 0));
        }
        let tmp = tmp_path(&self.path);
        let file = (|| {
            let f = self.fs.open(&tmp, OpenMode::Truncate)?;
            f.write_all_at(&kept, 0)?;
            f.sync_all()?;
            // Appends go to this file once it is renamed over the log.
            Ok::<_, std::io::Error>(f)
        })()
        .map_err(CompactError::Before)?;
        self.fs
            .rename(&tmp, &self.path)
            .map_err(CompactError::Before)?;
        self.file = file;
        self.end = kept.len() as u64;
        self.allocated = self.end;
        self.fs
            .sync_dir(parent_dir(&self.path))
            .map_err(CompactError::After)?;
        Ok((n, dropped))
    }

    /// Appends a group of encoded records and makes them durable (one fdatasync).
    /// The group goes over the zeroes after the last record; when it would reach past
    /// the file's end, the file first grows by [`PREALLOCATE`] zeroes (that group's
    /// `fdatasync` then writes the new size too).
    pub fn append_durably(&mut self, records: &[u8]) -> std::io::Result<()> {
        let need = self.end + records.len() as u64;
        if need > self.allocated {
            let grow = (need - self.allocated).max(PREALLOCATE);
            let zeroes = vec![0u8; grow as usize];
            self.file.write_all_at(&zeroes, self.allocated)?;
            self.allocated += grow;
        }
        self.file.write_all_at(records, self.end)?;
        self.file.sync_data()?;
        self.end = need;
        Ok(())
    }
}

/// Whether `f` holds only zero bytes in `[from, to)`.
fn zero_from(f: &dyn DurableFile, from: u64, to: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 1 << 16];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(buf.len());
        let n = read_full(f, at, &mut buf[..want])?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Why a compaction failed: before the new log replaced the old one (nothing changed),
/// or after (the replacement may not be durable).
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("commit log compaction failed (the old log stays): {0}")]
    Before(std::io::Error),
    #[error("commit log compaction: directory fsync after the rename failed: {0}")]
    After(std::io::Error),
}

/// Reads at `offset` until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &dyn DurableFile, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_torn_tail_is_dropped_and_every_record_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commit.log");
        // More records than one read chunk, so the streamed replay crosses chunks.
        let n = 10_000u64;
        {
            let (mut log, recs) = CommitLog::open(&path).unwrap();
            assert!(recs.is_empty());
            let mut buf = Vec::new();
            for t in 1..=n {
                encode_record(TxnId(t), Timestamp(100 + t), &mut buf);
            }
            buf.extend_from_slice(&[1, 2, 3]); // torn
            log.append_durably(&buf).unwrap();
        }
        let (mut log, recs) = CommitLog::open(&path).unwrap();
        assert_eq!(recs.len(), n as usize);
        assert_eq!(recs[0], (TxnId(1), Timestamp(101)));
        assert_eq!(recs[n as usize - 1], (TxnId(n), Timestamp(100 + n)));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            n * RECORD_LEN as u64
        );
        // Appends after the cut continue the valid prefix.
        let mut buf = Vec::new();
        encode_record(TxnId(n + 1), Timestamp(7), &mut buf);
        log.append_durably(&buf).unwrap();
        drop(log);
        let (_, recs) = CommitLog::open(&path).unwrap();
        assert_eq!(recs.len(), n as usize + 1);
        assert_eq!(recs[n as usize], (TxnId(n + 1), Timestamp(7)));
    }

    #[test]
    fn compaction_keeps_the_records_above_the_floor_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commit.log");
        let (mut log, _) = CommitLog::open(&path).unwrap();
        let mut buf = Vec::new();
        // Commit order is not txn order: txn 7 commits after txn 9.
        for t in [1u64, 2, 3, 5, 9, 7, 12] {
            encode_record(TxnId(t), Timestamp(100 + t), &mut buf);
        }
        log.append_durably(&buf).unwrap();
        assert_eq!(log.compact_below(TxnId(7)).unwrap(), (3, 4));
        assert_eq!(
            log.compact_below(TxnId(7)).unwrap(),
            (3, 0),
            "nothing more to drop"
        );
        buf.clear();
        encode_record(TxnId(13), Timestamp(200), &mut buf);
        log.append_durably(&buf).unwrap();
        drop(log);
        assert!(!dir.path().join("commit.log.tmp").exists());
        let (_, recs) = CommitLog::open(&path).unwrap();
        let txns: Vec<u64> = recs.iter().map(|r| r.0 .0).collect();
        assert_eq!(txns, vec![9, 7, 12, 13]);
    }

    /// A new log in a temporary directory holding one record: txn 1 committed at 2.
    fn log_with_txn_1() -> (tempfile::TempDir, PathBuf, CommitLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commit.log");
        let (mut log, _) = CommitLog::open(&path).unwrap();
        let mut buf = Vec::new();
        encode_record(TxnId(1), Timestamp(2), &mut buf);
        log.append_durably(&buf).unwrap();
        (dir, path, log)
    }

    #[test]
    fn the_preallocated_zeroes_end_the_replay_quietly_and_appends_overwrite_them() {
        // A zero record must never decode (its checksum field would have to match).
        assert_ne!(crc32c::crc32c(&[0u8; 16]), 0);
        assert_eq!(decode_records(&[0u8; 3 * RECORD_LEN]), (Vec::new(), 0));
        let (_dir, path, mut log) = log_with_txn_1();
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, PREALLOCATE, "a group goes over preallocated zeroes");
        let mut buf = Vec::new();
        encode_record(TxnId(3), Timestamp(4), &mut buf);
        log.append_durably(&buf).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "no growth");
        assert_eq!(log.end, 2 * RECORD_LEN as u64);
        drop(log);
        let (mut log, recs) = CommitLog::open(&path).unwrap();
        assert_eq!(
            recs,
            vec![(TxnId(1), Timestamp(2)), (TxnId(3), Timestamp(4))]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "zeroes kept");
        // Growth past the preallocated end.
        let big: Vec<u8> = (0..PREALLOCATE / RECORD_LEN as u64)
            .flat_map(|t| {
                let mut b = Vec::new();
                encode_record(TxnId(10 + t), Timestamp(t), &mut b);
                b
            })
            .collect();
        log.append_durably(&big).unwrap();
        drop(log);
        let (_, recs) = CommitLog::open(&path).unwrap();
        assert_eq!(recs.len(), 2 + (PREALLOCATE / RECORD_LEN as u64) as usize);
    }

    #[test]
    fn a_torn_group_over_zeroes_is_cut_so_it_cannot_reappear_behind_later_appends() {
        let (_dir, path, log) = log_with_txn_1();
        drop(log);
        // A crash tore the next group: its first record is garbage, its second whole.
        let mut torn = vec![0xAB; RECORD_LEN];
        encode_record(TxnId(5), Timestamp(6), &mut torn);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &torn, RECORD_LEN as u64).unwrap();
        drop(f);
        let (mut log, recs) = CommitLog::open(&path).unwrap();
        assert_eq!(recs, vec![(TxnId(1), Timestamp(2))]);
        // A shorter group after the restart must not leave txn 5 readable behind it.
        let mut buf = Vec::new();
        encode_record(TxnId(7), Timestamp(8), &mut buf);
        log.append_durably(&buf).unwrap();
        drop(log);
        let (_, recs) = CommitLog::open(&path).unwrap();
        assert_eq!(
            recs,
            vec![(TxnId(1), Timestamp(2)), (TxnId(7), Timestamp(8))]
        );
    }

    #[test]
    fn a_flipped_bit_ends_the_replay() {
        let mut buf = Vec::new();
        encode_record(TxnId(1), Timestamp(2), &mut buf);
        encode_record(TxnId(3), Timestamp(4), &mut buf);
        buf[25] ^= 0x10;
        let (recs, valid) = decode_records(&buf);
        assert_eq!(recs, vec![(TxnId(1), Timestamp(2))]);
        assert_eq!(valid, RECORD_LEN);
    }

    proptest! {
        /// Any log image: the records of a valid prefix, never a panic; the prefix is
        /// whole records and re-encodes to the same bytes.
        #[test]
        fn decode_of_random_images_never_panics(b in proptest::collection::vec(any::<u8>(), 0..4 * RECORD_LEN)) {
            let (recs, valid) = decode_records(&b);
            prop_assert_eq!(valid, recs.len() * RECORD_LEN);
            let mut again = Vec::new();
            for (t, c) in &recs {
                encode_record(*t, *c, &mut again);
            }
            prop_assert_eq!(&again[..], &b[..valid]);
        }

        /// Records round-trip; a changed byte or a torn tail ends the replay at the
        /// record it hit.
        #[test]
        fn damaged_logs_keep_the_records_before_the_damage(
            recs in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..8),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let recs: Vec<_> = recs.into_iter().map(|(t, c)| (TxnId(t), Timestamp(c))).collect();
            let mut b = Vec::new();
            for (t, c) in &recs {
                encode_record(*t, *c, &mut b);
            }
            prop_assert_eq!(decode_records(&b), (recs.clone(), b.len()));
            let n = cut.index(b.len());
            prop_assert_eq!(decode_records(&b[..n]), (recs[..n / RECORD_LEN].to_vec(), n / RECORD_LEN * RECORD_LEN));
            let i = at.index(b.len());
            b[i] ^= x;
            let hit = i / RECORD_LEN;
            prop_assert_eq!(decode_records(&b), (recs[..hit].to_vec(), hit * RECORD_LEN));
        }
    }
}
