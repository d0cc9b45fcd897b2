//! The page file: two slots per page, written alternately ("ping-pong").
//!
//! Page index `i` (page id minus the node's first page id) owns bytes
//! `[2*i*8K, 2*i*8K + 16K)`: slot 0 then slot 1. A checkpoint writes a page's new image
//! into the slot that does *not* hold its newest durable image, so a torn write (crash in
//! the middle of `pwrite`) can only damage the slot being written: the other slot still
//! holds the previous checkpointed image, and the redo since that image is still in the
//! log (truncation waits for the fsync that follows the write). Recovery reads both
//! slots, detects a torn slot by checksum and rebuilds the page from the good slot plus
//! the redo streams.

use common::durable::{DurableFile, DurableFs, OpenMode, StdFs};
use common::ids::{PageId, PageVersion};
use common::storage::page::{verify_image, Page, PageError, PAGE_SIZE};
use std::io;
use std::path::Path;

/// What one slot holds.
#[derive(Clone, Debug)]
pub enum Slot {
    /// Never written (all zeroes).
    Empty,
    Valid(Page),
    /// Fails its checksum or names another page: a torn or corrupt write.
    Torn(String),
}

impl Slot {
    pub fn version(&self) -> PageVersion {
        match self {
            Slot::Valid(p) => p.version(),
            _ => PageVersion(0),
        }
    }
}

pub struct PageFile {
    file: Box<dyn DurableFile>,
}

fn classify(id: PageId, b: &[u8]) -> Slot {
    let arr: &[u8; PAGE_SIZE] = b.try_into().expect("slot is 8 KiB");
    match verify_image(arr) {
        Ok(h) if h.id == id => Slot::Valid(Page::from_bytes(b).expect("8 KiB")),
        Ok(h) => Slot::Torn(format!("slot holds page {} instead of {id}", h.id)),
        Err(PageError::NoMagic) if b.iter().all(|x| *x == 0) => Slot::Empty,
        Err(e) => Slot::Torn(e.to_string()),
    }
}

impl PageFile {
    /// Opens (or creates) the page file at `path` on the real filesystem.
    pub fn open(path: &Path) -> io::Result<PageFile> {
        Self::open_in(&StdFs, path)
    }

    /// Opens (or creates) the page file at `path` on `fs`. The caller makes a new file's
    /// directory entry durable (the storage node fsyncs the data directory next).
    pub fn open_in(fs: &dyn DurableFs, path: &Path) -> io::Result<PageFile> {
        let file = fs.open(path, OpenMode::Create)?;
        Ok(PageFile { file })
    }

    fn offset(index: u64, slot: usize) -> u64 {
        (index * 2 + slot as u64) * PAGE_SIZE as u64
    }

    /// Reads both slots of one page (one 16 KiB read; past the end reads as empty).
    pub fn read_slots(&self, index: u64, id: PageId) -> io::Result<[Slot; 2]> {
        let mut buf = vec![0u8; 2 * PAGE_SIZE];
        let mut got = 0;
        let base = Self::offset(index, 0);
        while got < buf.len() {
            let n = self.file.read_at(&mut buf[got..], base + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok([
            classify(id, &buf[..PAGE_SIZE]),
            classify(id, &buf[PAGE_SIZE..]),
        ])
    }

    /// Reads the slots of pages `[0, count)` sequentially, calling `f(index, slots)`.
    pub fn scan(
        &self,
        first: PageId,
        count: u64,
        mut f: impl FnMut(u64, [Slot; 2]),
    ) -> io::Result<()> {
        const CHUNK_PAGES: u64 = 64;
        let mut buf = vec![0u8; (CHUNK_PAGES as usize) * 2 * PAGE_SIZE];
        let mut index = 0;
        while index < count {
            let n = CHUNK_PAGES.min(count - index);
            let want = n as usize * 2 * PAGE_SIZE;
            buf[..want].fill(0);
            let mut got = 0;
            while got < want {
                let r = self
                    .file
                    .read_at(&mut buf[got..want], Self::offset(index, 0) + got as u64)?;
                if r == 0 {
                    break;
                }
                got += r;
            }
            for k in 0..n as usize {
                let id = PageId(first.0 + index + k as u64);
                let b = &buf[k * 2 * PAGE_SIZE..(k + 1) * 2 * PAGE_SIZE];
                f(
                    index + k as u64,
                    [classify(id, &b[..PAGE_SIZE]), classify(id, &b[PAGE_SIZE..])],
                );
            }
            index += n;
        }
        Ok(())
    }

    pub fn write_slot(&self, index: u64, slot: usize, page: &Page) -> io::Result<()> {
        self.file
            .write_all_at(page.as_bytes(), Self::offset(index, slot))
    }

    /// Writes raw bytes into a slot (tests tear pages with it).
    pub fn write_raw(&self, index: u64, slot: usize, at: usize, bytes: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(bytes, Self::offset(index, slot) + at as u64)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// The slot a new image goes to: the one not holding the newest version.
pub fn target_slot(disk: [PageVersion; 2]) -> usize {
    if disk[0] <= disk[1] {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::Lsn;
    use proptest::prelude::*;

    #[test]
    fn slots_alternate_and_torn_slots_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let pf = PageFile::open(&dir.path().join("pages")).unwrap();
        let id = PageId(10);
        let mut p = Page::empty(id);
        p.stamp(PageVersion(1), Lsn(1));
        let s = target_slot([PageVersion(0), PageVersion(0)]);
        pf.write_slot(0, s, &p).unwrap();
        p.stamp(PageVersion(2), Lsn(2));
        let s2 = target_slot([PageVersion(1), PageVersion(0)]);
        assert_ne!(s, s2);
        pf.write_slot(0, s2, &p).unwrap();
        pf.write_raw(0, s2, 5000, &[0xAB; 100]).unwrap();
        let slots = pf.read_slots(0, id).unwrap();
        assert_eq!(slots[s].version(), PageVersion(1));
        assert!(matches!(slots[s2], Slot::Torn(_)));
        let empty = pf.read_slots(5, PageId(15)).unwrap();
        assert!(matches!(empty[0], Slot::Empty) && matches!(empty[1], Slot::Empty));
        let mut seen = 0;
        pf.scan(PageId(10), 3, |i, slots| {
            seen += 1;
            if i == 0 {
                assert_eq!(slots[s].version(), PageVersion(1));
            }
        })
        .unwrap();
        assert_eq!(seen, 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A page file of any content and length: every slot reads as Empty, Valid (a
        /// page that verifies, with the right id) or Torn, never a panic; a slot with
        /// one changed byte is never Valid.
        #[test]
        fn slots_of_any_file_never_panic(
            b in proptest::collection::vec(any::<u8>(), 0..3 * PAGE_SIZE),
            version in 1u64..,
            at in 0..PAGE_SIZE,
            x in 1u8..=255,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("pages");
            std::fs::write(&path, &b).unwrap();
            let pf = PageFile::open(&path).unwrap();
            for slots in [pf.read_slots(0, PageId(1)).unwrap(), pf.read_slots(1, PageId(2)).unwrap()] {
                for s in slots {
                    if let Slot::Valid(p) = s {
                        prop_assert!(p.verify().is_ok());
                    }
                }
            }
            pf.scan(PageId(1), 2, |_, _| {}).unwrap();
            let mut p = Page::empty(PageId(1));
            p.stamp(PageVersion(version), Lsn(1));
            pf.write_slot(0, 0, &p).unwrap();
            prop_assert_eq!(pf.read_slots(0, PageId(1)).unwrap()[0].version(), PageVersion(version));
            prop_assert!(matches!(pf.read_slots(0, PageId(3)).unwrap()[0], Slot::Torn(_)));
            pf.write_raw(0, 0, at, &[p.as_bytes()[at] ^ x]).unwrap();
            prop_assert!(matches!(pf.read_slots(0, PageId(1)).unwrap()[0], Slot::Torn(_)));
        }
    }
}
