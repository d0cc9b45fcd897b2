//! The page directory and frame regions as the storage node writes them.
//!
//! Layout and reader protocol: `common::storage::dir`. This module is the writer side of
//! that seqlock: [`Regions::publish`] is the only way a frame's contents change, and it
//! brackets the copy with the BUSY version word so a concurrent one-sided reader either
//! sees the old image whole, the new image whole, or a mismatch it retries.

use common::fabric::Region;
use common::ids::{PageId, PageVersion};
use common::storage::dir::{
    frame_word, lock_word, version_word, LockHolder, DIR_ENTRY_SIZE, FRAME_WORD, LOCK_WORD,
    VERSION_WORD,
};
use common::storage::notice;
use common::storage::page::{Page, PAGE_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Regions {
    pub dir: Arc<Region>,
    pub frames: Arc<Region>,
    pub first_page: PageId,
    /// The change-notice ring (`common::storage::notice`) and its number of slots.
    pub notices: Arc<Region>,
    pub notice_capacity: u32,
    /// Sequence number of the newest notice (written under the engine lock only).
    pub notice_head: AtomicU64,
}

impl Regions {
    fn entry(&self, index: u64) -> u64 {
        index * DIR_ENTRY_SIZE as u64
    }

    fn store(&self, offset: u64, value: u64) {
        // Words are little-endian in the region (the fabric's CAS/FETCH_ADD convention).
        self.dir
            .mem()
            .store_u64(offset, u64::from_le_bytes(value.to_le_bytes()))
            .expect("directory offsets are in bounds by construction");
    }

    pub fn set_version(&self, index: u64, version: PageVersion) {
        self.store(
            self.entry(index) + VERSION_WORD,
            version_word(version, false),
        );
    }

    /// Publishes the page's lock holder. A new holder's grant gets a change notice,
    /// published after the lock word and before the caller answers the grant (see
    /// `common::storage::notice`). Callers hold the engine lock, which serialises
    /// notices.
    pub fn set_lock(&self, index: u64, holder: Option<LockHolder>) {
        self.store(self.entry(index) + LOCK_WORD, lock_word(holder));
        if holder.is_some() {
            self.publish_notice(PageId(self.first_page.0 + index));
        }
    }

    fn publish_notice(&self, page: PageId) {
        let seq = self.notice_head.load(Ordering::Relaxed) + 1;
        let slot = notice::slot_offset(seq, self.notice_capacity);
        let mem = self.notices.mem();
        let put = |off: u64, v: u64| {
            mem.store_u64(off, u64::from_le_bytes(v.to_le_bytes()))
                .expect("notice offsets are in bounds by construction")
        };
        put(slot + 8, page.0);
        put(slot, seq);
        put(notice::HEAD_OFFSET, seq);
        self.notice_head.store(seq, Ordering::Relaxed);
    }

    /// Marks page `index` not resident (its frame is about to be reused or was dropped).
    pub fn clear_frame(&self, index: u64) {
        self.store(self.entry(index) + FRAME_WORD, frame_word(None));
    }

    /// Puts `page` (at page index `index`, currently at `old` in the directory) into
    /// `frame`, whose previous page (if another) is `evicted`. Seqlock writer protocol.
    pub fn publish(
        &self,
        index: u64,
        old: PageVersion,
        frame: u32,
        evicted: Option<u64>,
        page: &Page,
    ) {
        let e = self.entry(index);
        self.store(e + VERSION_WORD, version_word(old, true));
        if let Some(q) = evicted.filter(|q| *q != index) {
            self.clear_frame(q);
        }
        self.frames
            .mem()
            .write(u64::from(frame) * PAGE_SIZE as u64, page.as_bytes())
            .expect("frame offsets are in bounds by construction");
        self.store(e + FRAME_WORD, frame_word(Some(frame)));
        self.store(e + VERSION_WORD, version_word(page.version(), false));
    }

    /// Copies a frame out (the storage node's own view; no validation needed: frames
    /// change only under the engine lock, which the caller holds).
    pub fn read_frame(&self, frame: u32) -> Page {
        let mut buf = vec![0u8; PAGE_SIZE];
        self.frames
            .mem()
            .read(u64::from(frame) * PAGE_SIZE as u64, &mut buf)
            .expect("in bounds");
        Page::from_bytes(&buf).expect("8 KiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::fabric::{Access, ClusterKey, Server};
    use common::ids::Epoch;
    use common::storage::dir::DirEntry;
    use std::sync::atomic::AtomicBool;

    fn page(v: u64) -> Page {
        let mut p = Page::empty(PageId(1));
        p.stamp(PageVersion(v), common::ids::Lsn(0));
        p.seal();
        p
    }

    /// A reader that copies a directory entry while the storage node changes it never
    /// sees a (version, free lock) pair that did not exist at one instant, for a version
    /// it knew before the read (the validation question; see `common::storage::dir`),
    /// however long the gap between the words it copies.
    /// The writer keeps the lock over two versions in a row, so "free at an odd
    /// version" never exists: a reader that copied the version word before the lock
    /// word could see it (the old version, then the lock freed after the next write).
    #[test]
    fn a_directory_read_never_pairs_a_known_version_with_a_lock_freed_later() {
        let server = Server::new(ClusterKey::random());
        let regions = Arc::new(Regions {
            dir: server
                .register(DIR_ENTRY_SIZE as u64, Access::READ_ONLY)
                .unwrap(),
            frames: server
                .register(PAGE_SIZE as u64, Access::READ_ONLY)
                .unwrap(),
            first_page: PageId(1),
            notices: server
                .register(notice::region_len(16), Access::READ_ONLY)
                .unwrap(),
            notice_capacity: 16,
            notice_head: AtomicU64::new(0),
        });
        let holder = LockHolder {
            node: common::ids::NodeId(2),
            epoch: Epoch(1),
        };
        let images: Vec<Page> = (0..=64).map(page).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (regions, stop) = (regions.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut v = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    regions.set_lock(0, Some(holder));
                    for _ in 0..2 {
                        let next = v % 64 + 1;
                        regions.publish(0, PageVersion(v), 0, None, &images[next as usize]);
                        v = next;
                    }
                    regions.set_lock(0, None);
                    if v == 64 {
                        // Versions wrap in this test only; the reader's rule is per pass.
                        v = 0;
                        regions.set_version(0, PageVersion(0));
                    }
                }
            })
        };
        let mem = regions.dir.mem();
        let (mut confirmed, mut violations) = (0u64, 0u64);
        let mut buf = [0u8; DIR_ENTRY_SIZE];
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        while std::time::Instant::now() < deadline {
            // What the reader knows before it reads: the version word alone.
            mem.read(VERSION_WORD, &mut buf[..8]).unwrap();
            let known = u64::from_le_bytes(buf[..8].try_into().unwrap());
            if known >> 63 != 0 || known == 0 {
                continue;
            }
            // An entry is copied word by word upwards; a network read may stretch the
            // gap between two words arbitrarily, so this one does too.
            mem.read(0, &mut buf[..8]).unwrap();
            for _ in 0..(known % 4) {
                std::thread::yield_now();
            }
            mem.read(8, &mut buf[8..]).unwrap();
            let e = DirEntry::decode(&buf).unwrap();
            if e.holder.is_none() && !e.busy && e.version.0 == known {
                confirmed += 1;
                if known % 2 == 1 {
                    violations += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(
            violations, 0,
            "pairs that never existed ({confirmed} confirmations)"
        );
        assert!(confirmed > 0, "the reader confirmed something");
    }
}
