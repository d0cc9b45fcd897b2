//! The buffer pool: a fixed number of frames holding page images, a concurrent page
//! table, pins, CLOCK eviction, and epoch-based reclamation of replaced images.
//!
//! * **Lookups take no global lock.** The page table is a sharded map (one shard's read
//!   lock per lookup); a frame's image is a `crossbeam_epoch::Atomic` pointer that a
//!   reader loads under an epoch guard and clones out as an `Arc<Page>`. A writer swaps
//!   in a new image and defers the old one's destruction until every reader that could
//!   still see it has left its epoch.
//! * **Pins** keep a frame from being chosen as a victim while a caller works with it
//!   (a hit pins only for the instant of the lookup; a write latch pins for its life).
//! * **CLOCK**: a referenced bit per frame, set on every hit, cleared by the sweeping
//!   hand; the first unpinned, clean, unreferenced frame is the victim. A frame whose
//!   page this node holds X-locked or has changed without writing back is never evicted
//!   here (the pager writes it back first and clears [`FrameFlags`]).
//! * **Validation ticks**: each frame remembers the coherence tick of the directory read
//!   that last confirmed its image, and whether that confirmation still stands for the
//!   change-notice rounds: the tick of the confirming read (`notice_from`) against the
//!   tick of the last round that saw a notice for the page (`invalidated`); see
//!   `coherence`. The pool stores the ticks and applies the rules that need its
//!   internals (a fresh frame installed while a round was invalidating cannot claim a
//!   confirmation the round might have missed).

use common::ids::{PageId, PageVersion};
use common::storage::page::Page;
use crossbeam_epoch::{self as epoch, Atomic, Owned};
use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

/// Index of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameId(pub u32);

/// Per-frame state that pins the page in memory beyond its pin count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameFlags(u8);

impl FrameFlags {
    /// This node holds the page's global X lock.
    pub const LOCKED: u8 = 1;
    /// The image differs from what the storage node has.
    pub const DIRTY: u8 = 2;
}

const NO_PAGE: u64 = u64::MAX;
/// Set in a frame's pin count while the frame is being reassigned: pinning fails.
const EVICTING: u32 = 1 << 31;

struct Frame {
    /// Page id held, or `NO_PAGE`.
    page: AtomicU64,
    image: Atomic<Arc<Page>>,
    pins: AtomicU32,
    referenced: AtomicBool,
    flags: AtomicU8,
    validated: AtomicU64,
    /// Tick of the directory read that confirmed the image with no X holder elsewhere
    /// (0: none): the notice rounds extend that confirmation while `invalidated` is
    /// older.
    notice_from: AtomicU64,
    /// Tick of the newest notice round that named the page.
    invalidated: AtomicU64,
    /// Version of `image` (stored after the image), so bulk validation can list the
    /// cached versions without touching the images themselves.
    version: AtomicU64,
}

/// Counters, read by metrics and benchmarks.
#[derive(Default, Debug)]
pub struct PoolStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// A cached image as returned by a lookup.
#[derive(Clone, Debug)]
pub struct Cached {
    pub frame: FrameId,
    pub image: Arc<Page>,
    /// Coherence tick at which the image was last confirmed current.
    pub validated: u64,
    /// The image was confirmed with no X holder elsewhere and no notice round has named
    /// the page since: it stays current through every later completed round.
    pub notice_valid: bool,
    pub flags: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("buffer pool full: all {0} frames are pinned, locked or dirty")]
pub struct PoolFull(pub usize);

pub struct BufferPool {
    table: DashMap<PageId, FrameId>,
    frames: Box<[Frame]>,
    hand: AtomicUsize,
    /// Serialises installing a page into a new frame (misses); hits never take it.
    install: Mutex<()>,
    /// Tick of the newest notice round that started invalidating pages (see
    /// [`BufferPool::begin_invalidation`]).
    notice_round: AtomicU64,
    /// Tick of the newest full round (see [`BufferPool::invalidate_all`]).
    invalidated_all: AtomicU64,
    pub stats: PoolStats,
}

/// A cached, unlocked page as listed for bulk validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub frame: FrameId,
    pub page: PageId,
    pub version: PageVersion,
}

/// Keeps a frame from eviction while alive.
pub struct Pin<'a> {
    pool: &'a BufferPool,
    frame: FrameId,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.pool
            .frame(self.frame)
            .pins
            .fetch_sub(1, Ordering::Release);
    }
}

impl Pin<'_> {
    pub fn frame(&self) -> FrameId {
        self.frame
    }
}

impl BufferPool {
    pub fn new(frames: usize) -> BufferPool {
        assert!(frames > 0, "a buffer pool needs at least one frame");
        BufferPool {
            table: DashMap::with_capacity(frames),
            frames: (0..frames)
                .map(|_| Frame {
                    page: AtomicU64::new(NO_PAGE),
                    image: Atomic::null(),
                    pins: AtomicU32::new(0),
                    referenced: AtomicBool::new(false),
                    flags: AtomicU8::new(0),
                    validated: AtomicU64::new(0),
                    notice_from: AtomicU64::new(0),
                    invalidated: AtomicU64::new(0),
                    version: AtomicU64::new(0),
                })
                .collect(),
            hand: AtomicUsize::new(0),
            install: Mutex::new(()),
            notice_round: AtomicU64::new(0),
            invalidated_all: AtomicU64::new(0),
            stats: PoolStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.frames.len()
    }

    /// Frames holding a page now (at most [`BufferPool::capacity`]).
    pub fn resident(&self) -> usize {
        self.table.len()
    }

    fn frame(&self, f: FrameId) -> &Frame {
        &self.frames[f.0 as usize]
    }

    /// Pins the frame holding `page`, if cached.
    pub fn pin(&self, page: PageId) -> Option<Pin<'_>> {
        let f = *self.table.get(&page)?;
        let frame = self.frame(f);
        let prev = frame.pins.fetch_add(1, Ordering::AcqRel);
        // The frame may be being reassigned, or have been reassigned between the table
        // lookup and the pin.
        if prev & EVICTING != 0 || frame.page.load(Ordering::Acquire) != page.0 {
            frame.pins.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(Pin {
            pool: self,
            frame: f,
        })
    }

    /// As [`BufferPool::get`], without counting a hit or miss (bookkeeping lookups).
    pub fn get_quiet(&self, page: PageId) -> Option<Cached> {
        let pin = self.pin(page)?;
        self.cached(pin.frame).filter(|c| c.image.id() == page)
    }

    /// The cached image of `page`, if any (a hit sets the CLOCK reference bit).
    pub fn get(&self, page: PageId) -> Option<Cached> {
        let pin = self.pin(page);
        let Some(pin) = pin else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let c = self.cached(pin.frame).filter(|c| c.image.id() == page);
        if c.is_some() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        c
    }

    /// The frame's flags and confirmation tick are loaded *before* its image. Images
    /// only move forward and every writer stores the image before it raises the tick
    /// or sets LOCKED, so what the flags and tick vouch for holds for the image loaded
    /// after them (the image is that one or newer). Loaded the other way round, a
    /// reader could pair an old image with a newer image's confirmation or lock mark.
    fn cached(&self, f: FrameId) -> Option<Cached> {
        let frame = self.frame(f);
        frame.referenced.store(true, Ordering::Relaxed);
        let flags = frame.flags.load(Ordering::Acquire);
        let validated = frame.validated.load(Ordering::Acquire);
        let notice_from = frame.notice_from.load(Ordering::Acquire);
        let notice_valid = notice_from
            > frame
                .invalidated
                .load(Ordering::Acquire)
                .max(self.invalidated_all.load(Ordering::Acquire));
        let guard = epoch::pin();
        let shared = frame.image.load(Ordering::Acquire, &guard);
        // SAFETY: a non-null image pointer stays valid while `guard` is held: writers
        // only free replaced images through `defer_destroy`.
        let image = unsafe { shared.as_ref() }?.clone();
        Some(Cached {
            frame: f,
            image,
            validated,
            notice_valid,
            flags,
        })
    }

    /// Replaces the image in a pinned frame.
    /// Replaces the frame's image unless the cached one is newer (never moves a page
    /// backwards: a stale read must not overwrite a version this node wrote).
    pub fn set_image_if_newer(
        &self,
        pin: &Pin<'_>,
        image: Arc<Page>,
        validated: u64,
        notice: bool,
    ) {
        let frame = self.frame(pin.frame);
        let guard = epoch::pin();
        let version = image.version().0;
        let mut new = Owned::new(image);
        loop {
            let cur = frame.image.load(Ordering::Acquire, &guard);
            // SAFETY: `cur` is protected by `guard` (destroyed only after unlinking and
            // a grace period).
            if let Some(c) = unsafe { cur.as_ref() } {
                if c.version().0 > version {
                    return;
                }
            }
            match frame.image.compare_exchange(
                cur,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
                &guard,
            ) {
                Ok(_) => {
                    frame.version.fetch_max(version, Ordering::AcqRel);
                    frame.validated.fetch_max(validated, Ordering::AcqRel);
                    if notice {
                        frame.notice_from.fetch_max(validated, Ordering::AcqRel);
                    }
                    if !cur.is_null() {
                        // SAFETY: `cur` is unlinked; readers that loaded it are protected
                        // by their epoch guards until it is destroyed.
                        unsafe { guard.defer_destroy(cur) };
                    }
                    return;
                }
                Err(e) => new = e.new,
            }
        }
    }

    pub fn set_image(&self, pin: &Pin<'_>, image: Arc<Page>, validated: u64) {
        let frame = self.frame(pin.frame);
        let guard = epoch::pin();
        let version = image.version().0;
        let old = frame
            .image
            .swap(Owned::new(image), Ordering::AcqRel, &guard);
        frame.version.store(version, Ordering::Release);
        frame.validated.fetch_max(validated, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: `old` is unlinked; readers that loaded it are protected by their
            // epoch guards until it is destroyed.
            unsafe { guard.defer_destroy(old) };
        }
    }

    /// Records that a directory read issued at `tick` confirmed the frame's image.
    pub fn mark_validated(&self, pin: &Pin<'_>, tick: u64) {
        self.frame(pin.frame)
            .validated
            .fetch_max(tick, Ordering::AcqRel);
    }

    /// Forgets a confirmation (the image is known stale).
    pub fn mark_stale(&self, pin: &Pin<'_>) {
        let frame = self.frame(pin.frame);
        frame.validated.store(0, Ordering::Release);
        frame.notice_from.store(0, Ordering::Release);
    }

    /// A notice round at tick `tick` is about to name pages: a fresh frame whose
    /// confirmation was read before `tick` and that the round's lookups might miss
    /// (it was not in the page table yet) cannot claim it (see `install_with`).
    pub fn begin_invalidation(&self, tick: u64) {
        self.notice_round.fetch_max(tick, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// A full round at tick `tick` is about to check every cached page: no confirmation
    /// from before `tick` extends to later rounds unless the round renews it.
    pub fn invalidate_all(&self, tick: u64) {
        self.invalidated_all.fetch_max(tick, Ordering::SeqCst);
        self.begin_invalidation(tick);
    }

    /// A notice round at tick `tick` named `page`: its confirmations from before `tick`
    /// no longer extend to later rounds.
    pub fn invalidate(&self, page: PageId, tick: u64) {
        if let Some(pin) = self.pin(page) {
            self.frame(pin.frame)
                .invalidated
                .fetch_max(tick, Ordering::AcqRel);
        }
    }

    pub fn set_flags(&self, pin: &Pin<'_>, flags: u8) {
        self.frame(pin.frame)
            .flags
            .fetch_or(flags, Ordering::AcqRel);
    }

    pub fn clear_flags(&self, pin: &Pin<'_>, flags: u8) {
        self.frame(pin.frame)
            .flags
            .fetch_and(!flags, Ordering::AcqRel);
    }

    pub fn flags(&self, pin: &Pin<'_>) -> u8 {
        self.frame(pin.frame).flags.load(Ordering::Acquire)
    }

    /// Caches `image` for its page (replacing a cached image) and returns the pinned
    /// frame. Fails only when every frame is pinned, locked or dirty.
    pub fn install(&self, image: Arc<Page>, validated: u64) -> Result<Pin<'_>, PoolFull> {
        self.install_with(image, validated, false, false)
    }

    /// Like [`BufferPool::install`] for an image read from storage without this node's
    /// X lock: if the page is cached at a newer version (this node changed it under its
    /// lock meanwhile, or a newer read won the race), the cached image stays. `notice`:
    /// the directory read at `validated` saw no X holder elsewhere, so the image's
    /// confirmation may extend through later notice rounds.
    pub fn install_clean(
        &self,
        image: Arc<Page>,
        validated: u64,
        notice: bool,
    ) -> Result<Pin<'_>, PoolFull> {
        self.install_with(image, validated, true, notice)
    }

    fn install_with(
        &self,
        image: Arc<Page>,
        validated: u64,
        newer_only: bool,
        notice: bool,
    ) -> Result<Pin<'_>, PoolFull> {
        let page = image.id();
        let put = |pin: &Pin<'_>, image: Arc<Page>| {
            if newer_only {
                self.set_image_if_newer(pin, image, validated, notice);
            } else {
                self.set_image(pin, image, validated);
            }
        };
        if let Some(pin) = self.pin(page) {
            put(&pin, image);
            return Ok(pin);
        }
        let _g = self.install.lock();
        if let Some(pin) = self.pin(page) {
            put(&pin, image);
            return Ok(pin);
        }
        let f = self.find_victim()?;
        let frame = self.frame(f);
        // The victim carries EVICTING, so nobody can pin it until we are done.
        let old = frame.page.swap(page.0, Ordering::AcqRel);
        if old != NO_PAGE {
            self.table.remove_if(&PageId(old), |_, v| *v == f);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        frame.validated.store(0, Ordering::Release);
        frame.notice_from.store(0, Ordering::Release);
        frame.invalidated.store(0, Ordering::Release);
        frame.flags.store(0, Ordering::Release);
        frame.referenced.store(true, Ordering::Relaxed);
        let pin = Pin {
            pool: self,
            frame: f,
        };
        self.set_image(&pin, image, validated);
        if notice {
            frame.notice_from.store(validated, Ordering::Release);
        }
        self.table.insert(page, f);
        // A notice round that began invalidating before this frame was in the table
        // may have looked the page up and missed it: if it began after the confirming
        // read (tick `validated`), its notice may be for a grant after that read.
        // (Round: store `notice_round`, fence, then look pages up; here: insert, fence,
        // then load it: one of the two sees the other.)
        std::sync::atomic::fence(Ordering::SeqCst);
        let round = self.notice_round.load(Ordering::SeqCst);
        if notice && round >= validated {
            frame.invalidated.fetch_max(round, Ordering::AcqRel);
        }
        // Turn the eviction mark into our own pin.
        frame.pins.fetch_add(1, Ordering::AcqRel);
        frame.pins.fetch_sub(EVICTING, Ordering::AcqRel);
        Ok(pin)
    }

    /// CLOCK sweep; returns a victim frame marked EVICTING.
    fn find_victim(&self) -> Result<FrameId, PoolFull> {
        let n = self.frames.len();
        for _ in 0..3 * n {
            let i = self.hand.fetch_add(1, Ordering::Relaxed) % n;
            let frame = &self.frames[i];
            if frame.pins.load(Ordering::Acquire) != 0 || frame.flags.load(Ordering::Acquire) != 0 {
                continue;
            }
            if frame.referenced.swap(false, Ordering::AcqRel) {
                continue;
            }
            if frame
                .pins
                .compare_exchange(0, EVICTING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            if frame.flags.load(Ordering::Acquire) != 0 {
                frame.pins.fetch_sub(EVICTING, Ordering::Release);
                continue;
            }
            return Ok(FrameId(i as u32));
        }
        Err(PoolFull(n))
    }

    /// Drops `page` from the cache (e.g. after losing a race it cannot resolve).
    pub fn evict(&self, page: PageId) -> bool {
        let _g = self.install.lock();
        let Some(f) = self.table.get(&page).map(|f| *f) else {
            return false;
        };
        let frame = self.frame(f);
        if frame
            .pins
            .compare_exchange(0, EVICTING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if frame.flags.load(Ordering::Acquire) != 0 {
            frame.pins.fetch_sub(EVICTING, Ordering::Release);
            return false;
        }
        self.table.remove_if(&page, |_, v| *v == f);
        frame.page.store(NO_PAGE, Ordering::Release);
        let guard = epoch::pin();
        let old = frame
            .image
            .swap(epoch::Shared::null(), Ordering::AcqRel, &guard);
        if !old.is_null() {
            // SAFETY: unlinked; see `set_image`.
            unsafe { guard.defer_destroy(old) };
        }
        frame.pins.fetch_sub(EVICTING, Ordering::Release);
        true
    }

    /// Every cached page with the version of its image.
    pub fn snapshot_versions(&self) -> Vec<(PageId, PageVersion)> {
        self.table
            .iter()
            .filter_map(|e| {
                let c = self.cached(*e.value())?;
                (c.image.id() == *e.key()).then(|| (*e.key(), c.image.version()))
            })
            .collect()
    }

    /// Every cached page not X-locked here, with its image's version: what a bulk
    /// validation round must confirm. Reads only the frames' own words (no page table,
    /// no image), so a round over a large pool costs little more than a scan of the
    /// frame array. A frame being reassigned is skipped.
    pub fn validation_candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for (i, frame) in self.frames.iter().enumerate() {
            let page = frame.page.load(Ordering::Acquire);
            if page == NO_PAGE
                || frame.pins.load(Ordering::Acquire) & EVICTING != 0
                || frame.flags.load(Ordering::Acquire) & FrameFlags::LOCKED != 0
            {
                continue;
            }
            out.push(Candidate {
                frame: FrameId(i as u32),
                page: PageId(page),
                version: PageVersion(frame.version.load(Ordering::Acquire)),
            });
        }
        out
    }

    /// Pins `c.frame` if it still holds `c.page` at `c.version`, not X-locked here.
    fn pin_candidate(&self, c: &Candidate) -> Option<Pin<'_>> {
        let frame = self.frame(c.frame);
        let prev = frame.pins.fetch_add(1, Ordering::AcqRel);
        let pin = Pin {
            pool: self,
            frame: c.frame,
        };
        // Pinned and not being reassigned: page and version can only move forward now
        // (the version word is stored after its image, so a match means the image is at
        // least that new).
        (prev & EVICTING == 0
            && frame.page.load(Ordering::Acquire) == c.page.0
            && frame.version.load(Ordering::Acquire) == c.version.0
            && frame.flags.load(Ordering::Acquire) & FrameFlags::LOCKED == 0)
            .then_some(pin)
    }

    /// A directory read issued at `tick` saw `page` current at `version`: records the
    /// confirmation if the page's frame still holds an image of that version.
    pub fn confirm_version(&self, page: PageId, version: PageVersion, tick: u64) -> bool {
        let Some(f) = self.table.get(&page).map(|f| *f) else {
            return false;
        };
        self.confirm_candidate(
            &Candidate {
                frame: f,
                page,
                version,
            },
            tick,
        )
    }

    /// A directory read issued at `tick` saw `c` current: records the confirmation if
    /// the frame still holds that image.
    pub fn confirm_candidate(&self, c: &Candidate, tick: u64) -> bool {
        match self.pin_candidate(c) {
            Some(pin) => {
                self.mark_validated(&pin, tick);
                self.frame(pin.frame)
                    .notice_from
                    .fetch_max(tick, Ordering::AcqRel);
                true
            }
            None => false,
        }
    }

    /// A directory read saw `c` outdated: forgets the frame's confirmation if it still
    /// holds that image.
    pub fn forget_candidate(&self, c: &Candidate) {
        if let Some(pin) = self.pin_candidate(c) {
            self.mark_stale(&pin);
        }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: we have `&mut self`: no reader can hold a guard over these images.
        unsafe {
            let guard = epoch::unprotected();
            for f in self.frames.iter() {
                let old = f.image.swap(epoch::Shared::null(), Ordering::AcqRel, guard);
                if !old.is_null() {
                    drop(old.into_owned());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(id: u64, version: u64) -> Arc<Page> {
        let mut p = Page::empty(PageId(id));
        p.stamp(PageVersion(version), common::ids::Lsn(0));
        p.seal();
        Arc::new(p)
    }

    #[test]
    fn clock_evicts_unreferenced_clean_frames_only() {
        let pool = BufferPool::new(3);
        for i in 1..=3 {
            drop(pool.install(page(i, 1), 0).unwrap());
        }
        let locked = pool.pin(PageId(1)).unwrap();
        pool.set_flags(&locked, FrameFlags::LOCKED);
        drop(locked);
        for i in 4..=10 {
            drop(pool.install(page(i, 1), 0).unwrap());
        }
        assert!(
            pool.get(PageId(1)).is_some(),
            "a locked frame is never evicted"
        );
        assert!(pool.get(PageId(10)).is_some());
        assert_eq!(pool.snapshot_versions().len(), 3);
        let all_pinned: Vec<_> = [PageId(1), PageId(10)]
            .iter()
            .filter_map(|p| pool.pin(*p))
            .collect();
        let third = pool
            .snapshot_versions()
            .into_iter()
            .find(|(p, _)| p.0 != 1 && p.0 != 10)
            .unwrap()
            .0;
        let p3 = pool.pin(third).unwrap();
        assert!(pool.install(page(99, 1), 0).is_err(), "everything pinned");
        drop((all_pinned, p3));
        assert!(pool.install(page(99, 1), 0).is_ok());
    }

    #[test]
    fn validation_candidates_confirm_only_the_listed_image() {
        let pool = BufferPool::new(4);
        drop(pool.install(page(1, 3), 0).unwrap());
        drop(pool.install(page(2, 5), 0).unwrap());
        let locked = pool.install(page(3, 1), 0).unwrap();
        pool.set_flags(&locked, FrameFlags::LOCKED);
        drop(locked);
        let mut c = pool.validation_candidates();
        c.sort_by_key(|c| c.page);
        let listed: Vec<_> = c.iter().map(|c| (c.page.0, c.version.0)).collect();
        assert_eq!(
            listed,
            vec![(1, 3), (2, 5)],
            "X-locked pages need no confirmation"
        );
        // Page 2 moved on after it was listed: the old read confirms nothing.
        drop(pool.install(page(2, 6), 0).unwrap());
        assert!(pool.confirm_candidate(&c[0], 7));
        assert!(!pool.confirm_candidate(&c[1], 7));
        assert_eq!(pool.get(PageId(1)).unwrap().validated, 7);
        assert_eq!(pool.get(PageId(2)).unwrap().validated, 0);
        // Evicted and its frame reused: still nothing.
        assert!(pool.evict(PageId(1)));
        drop(pool.install(page(9, 3), 0).unwrap());
        assert!(!pool.confirm_candidate(&c[0], 8));
        pool.forget_candidate(&c[0]);
        let nine = pool.get(PageId(9)).unwrap();
        assert_eq!(nine.validated, 0);
    }

    #[test]
    fn a_single_confirmation_stamps_only_the_version_it_checked() {
        let pool = BufferPool::new(4);
        drop(pool.install(page(1, 3), 0).unwrap());
        assert!(pool.confirm_version(PageId(1), PageVersion(3), 5));
        assert_eq!(pool.get(PageId(1)).unwrap().validated, 5);
        // The frame moved on (a newer image arrived) after the directory read was
        // issued: the read says nothing about the new image.
        drop(pool.install(page(1, 4), 0).unwrap());
        assert!(!pool.confirm_version(PageId(1), PageVersion(3), 9));
        assert_eq!(pool.get(PageId(1)).unwrap().validated, 5);
        assert!(
            !pool.confirm_version(PageId(2), PageVersion(1), 9),
            "not cached"
        );
    }

    #[test]
    fn concurrent_hits_installs_and_evictions_never_mix_pages() {
        let pool = Arc::new(BufferPool::new(16));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let id = (i * 7 + t * 13) % 64 + 1;
                        if let Some(c) = pool.get(PageId(id)) {
                            assert_eq!(c.image.id(), PageId(id));
                        } else if let Ok(pin) = pool.install(page(id, i), i) {
                            let c = pool.cached(pin.frame()).unwrap();
                            assert_eq!(c.image.id(), PageId(id));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = &pool.stats;
        assert!(st.evictions.load(Ordering::Relaxed) > 0);
        for (p, _) in pool.snapshot_versions() {
            assert_eq!(pool.get(p).unwrap().image.id(), p);
        }
    }
}
