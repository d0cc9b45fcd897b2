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
use common::storage::page::{Page, PAGE_SIZE};
use std::sync::Arc;

pub struct Regions {
    pub dir: Arc<Region>,
    pub frames: Arc<Region>,
    pub first_page: PageId,
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

    pub fn set_lock(&self, index: u64, holder: Option<LockHolder>) {
        self.store(self.entry(index) + LOCK_WORD, lock_word(holder));
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
