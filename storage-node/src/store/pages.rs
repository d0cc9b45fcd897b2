//! Page images between memory and the page file: frame allocation (CLOCK eviction),
//! installing an image, write-back from the lock holder, reads (resident fast path and
//! fault-in), and checkpoints.
//!
//! Keeps invariant 1's write-back side (only the holder, only a newer version) and
//! invariant 3 (WAL): `write_back` refuses an image above the page's durable redo
//! version, and the checkpointer writes only images whose redo is durable, then
//! truncates the redo streams.

use super::{io_err, reply, Core, Store};
use crate::metrics::Metrics;
use crate::page_file::{target_slot, Slot};
use common::ids::{Lsn, PageId, PageVersion};
use common::storage::dir::LockHolder;
use common::storage::msg::{Response, Revocation, RevocationKind};
use common::storage::page::Page;
use common::storage::StorageError;
use std::time::{Duration, Instant};

impl Store {
    /// A frame for a page that is not resident: a free or clean one (CLOCK). Marks the
    /// evicted page non-resident in memory; the caller publishes (which clears the
    /// evicted page's directory frame word before the frame is overwritten).
    fn take_frame(&self, core: &mut Core) -> Option<(u32, Option<u64>)> {
        let (f, old) = core.frames.victim()?;
        if let Some(q) = old {
            core.pages[q as usize].frame = None;
            Metrics::add(&self.metrics.evictions, 1);
        }
        Some((f, old))
    }

    /// Installs `page` (page index `idx`) into memory as the page's new stored image.
    /// Returns false if no frame is free.
    pub(super) fn install(&self, core: &mut Core, idx: u64, page: &Page, dirty: bool) -> bool {
        let meta = core.pages[idx as usize];
        let (f, evicted) = match meta.frame {
            Some(f) => (f, None),
            None => match self.take_frame(core) {
                Some(x) => x,
                None => return false,
            },
        };
        self.regions.publish(idx, meta.version, f, evicted, page);
        let was_dirty = core.frames.get(f).dirty && core.frames.get(f).page == Some(idx);
        core.frames.set(f, idx, dirty || was_dirty);
        let m = &mut core.pages[idx as usize];
        m.frame = Some(f);
        m.version = page.version();
        true
    }

    /// `Ok(false)`: valid, but no frame is free right now (the worker retries after a
    /// checkpoint).
    pub(super) fn try_write_back(
        &self,
        core: &mut Core,
        who: LockHolder,
        page: &Page,
    ) -> Result<bool, StorageError> {
        let h = page
            .verify()
            .map_err(|e| StorageError::Corrupt(format!("write_back: {e}")))?;
        let idx = self.index(core, h.id)?;
        if core.locks.holder(h.id) != Some(who) {
            return Err(StorageError::NotHolder(h.id));
        }
        let meta = core.pages[idx as usize];
        if h.version == meta.version && h.version > PageVersion(0) {
            // The holder sends the version stored here already: its earlier write-back
            // whose answer was lost, or, after a restart of this node, an image that
            // recovery rebuilt from the holder's redo (it reclaimed the lock, its frame
            // still dirty). Only the holder changed the page since, so the images are
            // the same: nothing to install.
            for r in core.locks.take_flush_waiters(h.id) {
                reply(r, Ok(Response::Done));
            }
            return Ok(true);
        }
        if h.version <= meta.version {
            return Err(StorageError::Stale {
                page: h.id,
                got: h.version,
                stored: meta.version,
            });
        }
        if h.version > meta.durable {
            return Err(StorageError::NotDurable {
                page: h.id,
                version: h.version,
            });
        }
        if !self.install(core, idx, page, true) {
            return Ok(false);
        }
        Metrics::add(&self.metrics.write_backs, 1);
        for r in core.locks.take_flush_waiters(h.id) {
            reply(r, Ok(Response::Done));
        }
        Ok(true)
    }

    /// All-resident fast path; `Ok(None)` if some page must be faulted in.
    pub(super) fn read_resident(
        &self,
        core: &mut Core,
        pages: &[PageId],
    ) -> Result<Option<Vec<(u64, Page)>>, StorageError> {
        let mut frames = Vec::with_capacity(pages.len());
        for p in pages {
            let idx = self.index(core, *p)?;
            match core.pages[idx as usize].frame {
                Some(f) => frames.push(f),
                None => return Ok(None),
            }
        }
        Ok(Some(
            frames
                .into_iter()
                .map(|f| {
                    core.frames.touch(f);
                    (u64::from(f) + 1, self.regions.read_frame(f))
                })
                .collect(),
        ))
    }

    /// Makes page `idx` resident (worker only: reads the page file).
    pub(super) fn fault_in(&self, idx: u64) -> Result<(), StorageError> {
        let id = self.page_id(idx);
        for _ in 0..4 {
            let version = {
                let core = self.core.lock();
                let m = core.pages[idx as usize];
                if m.frame.is_some() {
                    return Ok(());
                }
                m.version
            };
            let image = if version == PageVersion(0) {
                Page::empty(id)
            } else {
                let slots = self.page_file.read_slots(idx, id).map_err(io_err)?;
                match slots.into_iter().find_map(|s| match s {
                    Slot::Valid(p) if p.version() == version => Some(p),
                    _ => None,
                }) {
                    Some(p) => p,
                    None => {
                        return Err(StorageError::Corrupt(format!(
                            "page {id}: no page-file slot holds version {version}"
                        )))
                    }
                }
            };
            let mut core = self.core.lock();
            if core.pages[idx as usize].frame.is_some() {
                return Ok(());
            }
            if core.pages[idx as usize].version != version {
                continue;
            }
            if self.install(&mut core, idx, &image, false) {
                Metrics::add(&self.metrics.fault_ins, 1);
                return Ok(());
            }
            drop(core);
            self.checkpoint()?;
        }
        Err(StorageError::Busy(format!(
            "no clean frame for page {id}; the node is short of memory"
        )))
    }

    pub(super) fn read_pages_slow(
        &self,
        pages: &[PageId],
    ) -> Result<Vec<(u64, Page)>, StorageError> {
        let mut out = Vec::with_capacity(pages.len());
        for p in pages {
            loop {
                let idx = {
                    let mut core = self.core.lock();
                    let idx = self.index(&core, *p)?;
                    if let Some(f) = core.pages[idx as usize].frame {
                        core.frames.touch(f);
                        out.push((u64::from(f) + 1, self.regions.read_frame(f)));
                        break;
                    }
                    idx
                };
                self.fault_in(idx)?;
            }
        }
        Metrics::add(&self.metrics.pages_read_rpc, out.len() as u64);
        Ok(out)
    }

    /// Writes every dirty frame whose redo is durable into its page-file slot, fsyncs,
    /// then truncates the redo streams. Returns the number of pages written.
    pub fn checkpoint(&self) -> Result<usize, StorageError> {
        const CHUNK: usize = 256;
        let _serial = self.checkpoint_lock.lock();
        let dirty = self.core.lock().frames.dirty_frames();
        let mut written = 0;
        for chunk in dirty.chunks(CHUNK) {
            let mut batch = Vec::with_capacity(chunk.len());
            {
                let core = self.core.lock();
                for (f, idx) in chunk {
                    let fm = core.frames.get(*f);
                    if fm.page != Some(*idx) || !fm.dirty {
                        continue;
                    }
                    let m = core.pages[*idx as usize];
                    if m.version > m.durable {
                        // Cannot happen (write_back checks it); never break the WAL rule.
                        tracing::error!(page = %self.page_id(*idx), "dirty page ahead of its durable redo");
                        continue;
                    }
                    batch.push((
                        *f,
                        *idx,
                        m.version,
                        target_slot(m.disk),
                        self.regions.read_frame(*f),
                    ));
                }
            }
            for (_, idx, _, slot, image) in &batch {
                self.page_file
                    .write_slot(*idx, *slot, image)
                    .map_err(io_err)?;
            }
            self.page_file.sync().map_err(io_err)?;
            // The slot map follows the page file and precedes truncation (see
            // `slot_map`: an entry may lag the page file only while redo remains).
            let mut entries: Vec<(u64, [PageVersion; 2])> = {
                let core = self.core.lock();
                batch
                    .iter()
                    .map(|(_, idx, v, slot, _)| {
                        let mut disk = core.pages[*idx as usize].disk;
                        disk[*slot] = *v;
                        (*idx, disk)
                    })
                    .collect()
            };
            self.slot_map.write(&mut entries).map_err(io_err)?;
            self.slot_map.sync().map_err(io_err)?;
            let mut paths = Vec::new();
            let mut recycle = Vec::new();
            {
                let mut core = self.core.lock();
                for (f, idx, v, slot, _) in &batch {
                    core.pages[*idx as usize].disk[*slot] = *v;
                    let still = core.frames.get(*f).page == Some(*idx)
                        && core.pages[*idx as usize].version == *v;
                    if still {
                        core.frames.set_dirty(*f, false);
                    }
                    let page = self.page_id(*idx);
                    for s in core.streams.values_mut() {
                        s.checkpointed(page, *v);
                    }
                }
                for (n, s) in core.streams.iter_mut() {
                    let mut freed = s.truncate();
                    if let Some((from, to)) = s.take_recycle(&mut freed) {
                        recycle.push((*n, from, to, s.segment_bytes()));
                    }
                    paths.extend(freed);
                }
            }
            // One freed segment per stream becomes its spare (redo.rs, "Recycled
            // segments"), outside the mutex.
            let truncated = paths.len() + recycle.len();
            for (n, from, to, bytes) in recycle.drain(..) {
                let ok = crate::redo::recycle_segment(&*self.opts.fs, &from, &to, bytes);
                if let Some(s) = self.core.lock().streams.get_mut(&n) {
                    s.spare_made(ok);
                }
            }
            // No directory fsync: a removal a power cut undoes brings back a sealed
            // segment of checkpointed records, which recovery skips (each is at or below
            // its page's image) and then deletes.
            for p in &paths {
                if let Err(e) = self.opts.fs.remove_file(p) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot delete a truncated redo segment");
                }
            }
            written += batch.len();
            Metrics::add(&self.metrics.segments_truncated, truncated as u64);
        }
        Metrics::add(&self.metrics.checkpoints, 1);
        Metrics::add(&self.metrics.pages_checkpointed, written as u64);
        self.ask_holders_to_unpin_log();
        Ok(written)
    }

    /// Bounds the redo a lazy holder can pin. A segment is deleted only once every page
    /// it describes is checkpointed, and a page whose newest image sits in a compute
    /// node that holds its X lock (and is never asked for it) is never checkpointed.
    /// So when a stream keeps more than `redo_retain` bytes, the holders of the pages
    /// whose oldest needed record lies before the last `redo_retain` bytes are asked
    /// to write them back and keep their locks (as for a reader's `RequestWriteBack`);
    /// the next checkpoint writes the images and truncates. A page is asked again once
    /// the image asked for has arrived and a newer record holds the log back, or after a
    /// second without an answer; at most `MAX_ASKS` pages per stream and checkpoint.
    pub(super) fn ask_holders_to_unpin_log(&self) {
        const MAX_ASKS: usize = 4096;
        const REPEAT: Duration = Duration::from_secs(1);
        let retain = self.opts.redo_retain;
        let mut core = self.core.lock();
        let now = Instant::now();
        core.truncation_asks
            .retain(|_, (_, at)| now.duration_since(*at) < REPEAT);
        let pinned: Vec<(PageId, PageVersion)> = core
            .streams
            .values()
            .filter(|s| s.retained_bytes() > retain && s.failure().is_none())
            .flat_map(|s| {
                let keep_from = Lsn(s.appended().0.saturating_sub(retain));
                s.pages_holding_back(keep_from, MAX_ASKS)
            })
            .collect();
        let mut asked = 0u64;
        for (page, needed) in pinned {
            let Ok(idx) = self.index(&core, page) else {
                continue;
            };
            let here = core.pages[idx as usize].version;
            let outstanding = core
                .truncation_asks
                .get(&page)
                .is_some_and(|(asked, _)| here < *asked);
            if here >= needed || outstanding {
                // The image is here (the next checkpoint writes it), or is on its way.
                continue;
            }
            let Some(holder) = core.locks.holder(page) else {
                continue;
            };
            core.truncation_asks.insert(page, (needed, now));
            self.revoke(
                &mut core,
                holder,
                Revocation {
                    page,
                    kind: RevocationKind::WriteBackAndKeep,
                },
            );
            asked += 1;
        }
        Metrics::add(&self.metrics.truncation_write_backs, asked);
    }
}
