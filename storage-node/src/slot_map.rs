//! The slot map: which version each page-file slot holds, so that start-up reads 32
//! bytes per page instead of the page's two 8 KiB slots.
//!
//! `<data>/slots` holds one 32-byte entry per page index: the versions of slot 0 and
//! slot 1 (little-endian `u64`s), a CRC-32C over them and the page index, and a magic
//! word. Entries never straddle a 512-byte sector, and one whose checksum fails (a torn
//! write, or a file shorter than the page count) reads as unknown: recovery then reads
//! that page's slots from the page file, as it did for every page before this file.
//!
//! ## Why a stale entry is harmless
//!
//! The checkpointer writes page images, fsyncs the page file, then writes their
//! entries here and fsyncs this file, and only then truncates the redo (`Store::
//! checkpoint`). So an entry can lag the page file only while the redo describing the
//! newer image is still in the log, and then that redo reaches beyond the entry's
//! newest version (the image written, or torn in the writing, was of a version the log
//! holds). Recovery reads the real slots of every page whose redo reaches beyond its
//! entry (it replays those pages anyway), rewrites their entries, and fsyncs this file
//! before it deletes a segment. Every other entry is exact, and start-up after a clean
//! shutdown reads no page. An entry is never ahead of the page file: it is written
//! after the page file's fsync.

use common::durable::{DurableFile, DurableFs, OpenMode};
use common::ids::PageVersion;
use std::io;
use std::path::Path;

/// Bytes per entry (16 per 512-byte sector).
pub const ENTRY: usize = 32;
const MAGIC: u32 = 0x534c_4f54; // "SLOT"

pub struct SlotMap {
    file: Box<dyn DurableFile>,
}

fn checksum(index: u64, disk: [PageVersion; 2]) -> u32 {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&disk[0].0.to_le_bytes());
    b[8..16].copy_from_slice(&disk[1].0.to_le_bytes());
    b[16..].copy_from_slice(&index.to_le_bytes());
    crc32c::crc32c(&b)
}

fn encode(index: u64, disk: [PageVersion; 2]) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..8].copy_from_slice(&disk[0].0.to_le_bytes());
    e[8..16].copy_from_slice(&disk[1].0.to_le_bytes());
    e[16..20].copy_from_slice(&checksum(index, disk).to_le_bytes());
    e[20..24].copy_from_slice(&MAGIC.to_le_bytes());
    e
}

fn decode(index: u64, e: &[u8]) -> Option<[PageVersion; 2]> {
    let word = |r: std::ops::Range<usize>| -> Option<u64> {
        Some(u64::from_le_bytes(e.get(r)?.try_into().ok()?))
    };
    let half = |r: std::ops::Range<usize>| -> Option<u32> {
        Some(u32::from_le_bytes(e.get(r)?.try_into().ok()?))
    };
    let disk = [PageVersion(word(0..8)?), PageVersion(word(8..16)?)];
    (half(20..24)? == MAGIC && half(16..20)? == checksum(index, disk)).then_some(disk)
}

impl SlotMap {
    /// Opens (or creates) the slot map at `path`. As for the page file, the caller makes
    /// a new file's directory entry durable.
    pub fn open_in(fs: &dyn DurableFs, path: &Path) -> io::Result<SlotMap> {
        Ok(SlotMap {
            file: fs.open(path, OpenMode::Create)?,
        })
    }

    /// The entries of pages `[0, count)`: `None` where an entry is missing or fails
    /// its checksum.
    pub fn read_all(&self, count: u64) -> io::Result<Vec<Option<[PageVersion; 2]>>> {
        const CHUNK: u64 = 1 << 15;
        let mut out = Vec::with_capacity(count as usize);
        let mut buf = vec![0u8; CHUNK as usize * ENTRY];
        let mut index = 0;
        while index < count {
            let n = CHUNK.min(count - index);
            let want = n as usize * ENTRY;
            buf[..want].fill(0);
            let mut got = 0;
            while got < want {
                let r = self
                    .file
                    .read_at(&mut buf[got..want], index * ENTRY as u64 + got as u64)?;
                if r == 0 {
                    break;
                }
                got += r;
            }
            for k in 0..n {
                let at = k as usize * ENTRY;
                out.push(decode(index + k, &buf[at..at + ENTRY]));
            }
            index += n;
        }
        Ok(out)
    }

    /// Writes the entries `(index, slot versions)`; runs of consecutive indexes go out
    /// as one write. Not durable until [`SlotMap::sync`].
    pub fn write(&self, entries: &mut [(u64, [PageVersion; 2])]) -> io::Result<()> {
        entries.sort_unstable_by_key(|(i, _)| *i);
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0;
        let mut next = None;
        for (i, disk) in entries.iter() {
            if next != Some(*i) {
                if !run.is_empty() {
                    self.file.write_all_at(&run, run_start * ENTRY as u64)?;
                    run.clear();
                }
                run_start = *i;
            }
            run.extend_from_slice(&encode(*i, *disk));
            next = Some(i + 1);
        }
        if !run.is_empty() {
            self.file.write_all_at(&run, run_start * ENTRY as u64)?;
        }
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::durable::StdFs;
    use proptest::prelude::*;

    #[test]
    fn entries_round_trip_and_gaps_read_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let m = SlotMap::open_in(&StdFs, &dir.path().join("slots")).unwrap();
        let v = |a, b| [PageVersion(a), PageVersion(b)];
        m.write(&mut [(3, v(7, 8)), (0, v(1, 0)), (1, v(2, 3))])
            .unwrap();
        m.sync().unwrap();
        let got = m.read_all(5).unwrap();
        assert_eq!(
            got,
            vec![Some(v(1, 0)), Some(v(2, 3)), None, Some(v(7, 8)), None]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A slot map of any content never panics; an entry with one changed byte, or
        /// one copied to another index, is never read as known.
        #[test]
        fn any_content_reads_as_entries_or_unknown(
            b in proptest::collection::vec(any::<u8>(), 0..4 * ENTRY),
            v0 in any::<u64>(), v1 in any::<u64>(),
            at in 0..24usize, x in 1u8..=255,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("slots");
            std::fs::write(&path, &b).unwrap();
            let m = SlotMap::open_in(&StdFs, &path).unwrap();
            let _ = m.read_all(6).unwrap();
            let e = encode(1, [PageVersion(v0), PageVersion(v1)]);
            prop_assert_eq!(decode(1, &e), Some([PageVersion(v0), PageVersion(v1)]));
            prop_assert_eq!(decode(2, &e), None);
            let mut bad = e;
            bad[at] ^= x;
            prop_assert_eq!(decode(1, &bad), None);
        }
    }
}
