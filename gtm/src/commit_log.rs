//! The commit-record log: commit decisions made durable with one fsync per group.
//!
//! Only commits are logged. An abort needs no record: after a restart every txn id
//! issued before it (below the txn-id high-water mark) without a durable commit record
//! reads as Aborted, which is exactly right for aborted txns, for txns still in progress
//! at the crash, and for commits whose record did not reach the disk (their callers never
//! got an acknowledgement). DESIGN.md invariant 7: a commit is acknowledged only after
//! its record is durable.
//!
//! ## File format (`commit.log`, appended, little-endian)
//!
//! ```text
//! record (20 bytes): txn u64 | commit_ts u64 | crc32c(bytes 0..16) u32
//! ```
//!
//! Replay stops at the first short or mismatching record (a torn tail from a crash) and
//! truncates the file there. On every start the log is rewritten with only the records
//! still covered by the status table (txn ids >= boot floor - capacity); older
//! transactions are retired (see `status_table`).

use common::ids::{Timestamp, TxnId};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const RECORD_LEN: usize = 20;

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
    file: File,
    path: PathBuf,
}

impl CommitLog {
    /// Opens `path`, returns the commit records of txns `>= keep_from` and rewrites the
    /// log to hold just those.
    pub fn open(
        path: &Path,
        keep_from: TxnId,
    ) -> std::io::Result<(CommitLog, Vec<(TxnId, Timestamp)>)> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (records, valid) = decode_records(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - valid,
                "commit log has a torn tail (crash during a write); dropping it"
            );
        }
        let kept: Vec<_> = records
            .into_iter()
            .filter(|(t, _)| *t >= keep_from)
            .collect();
        let mut image = Vec::with_capacity(kept.len() * RECORD_LEN);
        for &(t, c) in &kept {
            encode_record(t, c, &mut image);
        }
        crate::tso::replace_file(path, &image)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok((
            CommitLog {
                file,
                path: path.to_path_buf(),
            },
            kept,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a group of encoded records and makes them durable (one fdatasync).
    pub fn append_durably(&mut self, records: &[u8]) -> std::io::Result<()> {
        self.file.write_all(records)?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_dropped_and_old_records_are_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commit.log");
        {
            let (mut log, recs) = CommitLog::open(&path, TxnId(0)).unwrap();
            assert!(recs.is_empty());
            let mut buf = Vec::new();
            for t in 1..=10 {
                encode_record(TxnId(t), Timestamp(100 + t), &mut buf);
            }
            buf.extend_from_slice(&[1, 2, 3]); // torn
            log.append_durably(&buf).unwrap();
        }
        let (_, recs) = CommitLog::open(&path, TxnId(4)).unwrap();
        assert_eq!(recs.len(), 7);
        assert_eq!(recs[0], (TxnId(4), Timestamp(104)));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            7 * RECORD_LEN as u64
        );
        let (_, recs) = CommitLog::open(&path, TxnId(0)).unwrap();
        assert_eq!(recs.len(), 7);
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
}
