//! Restart recovery and the node's small metadata files.
//!
//! ## Data directory
//!
//! ```text
//! <data>/meta       "first_page <n>\nallocated <n>\n"  (written atomically: tmp + rename)
//! <data>/fences     one "<node> <epoch>" line per fenced node (same)
//! <data>/members    one "<node> <epoch>" line per compute node that connected (same)
//! <data>/pages      the page file, two slots per page (`page_file`)
//! <data>/slots      the versions each page's slots hold, 32 bytes per page (`slot_map`)
//! <data>/redo/<node>/<start lsn>.seg   redo streams (`redo`)
//! ```
//!
//! ## Recovery, step by step
//!
//! 1. Read `meta` (allocation high-water mark) and `fences`.
//! 2. Read the slot map (`slot_map`): the versions in each page's two slots, 32 bytes
//!    per page, so start-up does not read the page file.
//! 3. Scan every redo stream; a stream's torn tail is cut at the first record that fails
//!    to decode.
//! 4. Read the real slots of every page that has redo beyond its slot-map entry, or no
//!    valid entry (one
//!    sequential scan of the page file if most entries are unknown): the newest slot
//!    that verifies is the page's base image; a slot that fails its checksum is a torn
//!    write (reported).
//! 5. Per page, merge the records of all streams in version order and apply the chain
//!    that starts at the base version (a record applies iff its `before` equals the
//!    page's current version; older records are skipped).
//! 6. Write each changed page into its other slot, fsync the page file; write the
//!    slot-map entries of every page read in step 4, fsync the slot map.
//! 7. Start every stream in a fresh segment at its old end LSN; delete the old
//!    segments (all their records are now in the page file: log truncation).
//!
//! Each step is idempotent, so a crash during recovery is followed by the same recovery.

use crate::page_file::{target_slot, PageFile, Slot};
use crate::page_meta::PageMeta;
use crate::redo::{scan_streams_keeping, segment_path, Stream};
use crate::slot_map::SlotMap;
use common::durable::{replace_file, DurableFs};
use common::ids::{Epoch, NodeId, PageId, PageVersion};
use common::storage::page::Page;
use common::storage::redo::RedoRecord;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Replaces `dir/name` with `text` durably (`name.tmp`, fsync, rename, directory fsync).
fn write_atomic(fs: &dyn DurableFs, dir: &Path, name: &str, text: &str) -> io::Result<()> {
    replace_file(
        fs,
        &dir.join(format!("{name}.tmp")),
        &dir.join(name),
        text.as_bytes(),
    )
}

/// A small text file, `None` if it does not exist.
fn read_text(fs: &dyn DurableFs, path: &Path) -> io::Result<Option<String>> {
    match fs.read(path) {
        Ok(b) => String::from_utf8(b).map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not UTF-8 text", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn write_meta(fs: &dyn DurableFs, dir: &Path, first: PageId, allocated: u64) -> io::Result<()> {
    write_atomic(
        fs,
        dir,
        "meta",
        &format!("first_page {}\nallocated {}\n", first.0, allocated),
    )
}

/// `(first page, allocated)` or `None` for a fresh directory.
pub fn read_meta(fs: &dyn DurableFs, dir: &Path) -> io::Result<Option<(PageId, u64)>> {
    let Some(text) = read_text(fs, &dir.join("meta"))? else {
        return Ok(None);
    };
    let mut first = None;
    let mut alloc = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
            (Some("first_page"), Some(v)) => first = Some(v),
            (Some("allocated"), Some(v)) => alloc = Some(v),
            _ => {}
        }
    }
    match (first, alloc) {
        (Some(f), Some(a)) => Ok(Some((PageId(f), a))),
        _ => Err(io::Error::other(format!(
            "{}: malformed metadata file",
            dir.join("meta").display()
        ))),
    }
}

/// A `"<node> <epoch>"` line per entry, written atomically (`fences`, `members`).
fn write_node_epochs(
    fs: &dyn DurableFs,
    dir: &Path,
    name: &str,
    map: &HashMap<NodeId, Epoch>,
) -> io::Result<()> {
    let mut v: Vec<_> = map.iter().collect();
    v.sort();
    let text: String = v
        .iter()
        .map(|(n, e)| format!("{} {}\n", n.0, e.0))
        .collect();
    write_atomic(fs, dir, name, &text)
}

fn read_node_epochs(
    fs: &dyn DurableFs,
    dir: &Path,
    name: &str,
) -> io::Result<HashMap<NodeId, Epoch>> {
    Ok(read_text(fs, &dir.join(name))?
        .map(|t| parse_node_epochs(&t))
        .unwrap_or_default())
}

pub fn write_fences(
    fs: &dyn DurableFs,
    dir: &Path,
    fenced: &HashMap<NodeId, Epoch>,
) -> io::Result<()> {
    write_node_epochs(fs, dir, "fences", fenced)
}

pub fn read_fences(fs: &dyn DurableFs, dir: &Path) -> io::Result<HashMap<NodeId, Epoch>> {
    read_node_epochs(fs, dir, "fences")
}

/// Every compute-node identity that connected, the newest epoch per node: who may
/// hold locks when the node restarts (`store::reclaim`). Same format as `fences`.
pub fn write_members(
    fs: &dyn DurableFs,
    dir: &Path,
    members: &HashMap<NodeId, Epoch>,
) -> io::Result<()> {
    write_node_epochs(fs, dir, "members", members)
}

pub fn read_members(fs: &dyn DurableFs, dir: &Path) -> io::Result<HashMap<NodeId, Epoch>> {
    read_node_epochs(fs, dir, "members")
}

fn parse_node_epochs(text: &str) -> HashMap<NodeId, Epoch> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(Ok(n)), Some(Ok(e))) = (
            it.next().map(str::parse::<u32>),
            it.next().map(str::parse::<u32>),
        ) {
            out.insert(NodeId(n), Epoch(e));
        }
    }
    out
}

/// What recovery hands the engine.
pub struct Recovered {
    pub pages: Vec<PageMeta>,
    pub streams: Vec<Stream>,
    pub fenced: HashMap<NodeId, Epoch>,
    pub members: HashMap<NodeId, Epoch>,
    pub torn_pages: usize,
    pub pages_redone: usize,
    pub records_scanned: usize,
    /// Pages whose slots were read from the page file (step 4).
    pub pages_read: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("I/O error during recovery: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Inconsistent(String),
}

pub fn recover(
    fs: &Arc<dyn DurableFs>,
    data_dir: &Path,
    first: PageId,
    page_count: u64,
    page_file: &PageFile,
    slot_map: &SlotMap,
    segment_bytes: u64,
) -> Result<Recovered, RecoveryError> {
    // 1. metadata
    let allocated = match read_meta(&**fs, data_dir)? {
        Some((f, a)) => {
            if f != first {
                return Err(RecoveryError::Inconsistent(format!(
                    "data directory {} belongs to a node whose first_page is {f}, not {first}",
                    data_dir.display()
                )));
            }
            if a > page_count {
                return Err(RecoveryError::Inconsistent(format!(
                    "data directory {} has {a} allocated pages but page_count is {page_count}",
                    data_dir.display()
                )));
            }
            a
        }
        None => {
            write_meta(&**fs, data_dir, first, 0)?;
            0
        }
    };
    let fenced = read_fences(&**fs, data_dir)?;
    let members = read_members(&**fs, data_dir)?;

    // 2. slot map: the versions in each page's two slots, without reading the pages
    let mut pages = vec![PageMeta::default(); allocated as usize];
    let known = slot_map.read_all(allocated)?;
    let mut exact = vec![false; allocated as usize];
    for (m, k) in pages.iter_mut().zip(&known) {
        if let Some(disk) = k {
            m.disk = *disk;
            m.version = disk[0].max(disk[1]);
        }
    }
    // 3. redo streams
    // Only records past the page's slot-map entry are kept: the page file holds the
    // rest (an entry is never ahead of it), and replay would skip them.
    let redo_dir = data_dir.join("redo");
    let mut scanned = scan_streams_keeping(&**fs, &redo_dir, &mut |r| {
        match r.page.0.checked_sub(first.0).filter(|i| *i < allocated) {
            Some(i) => r.after > pages[i as usize].version,
            None => true, // reported below
        }
    })?;
    let mut by_page: HashMap<PageId, Vec<RedoRecord>> = HashMap::new();
    let mut records_scanned = 0;
    for s in &mut scanned {
        records_scanned += s.scanned;
        for r in std::mem::take(&mut s.records) {
            by_page.entry(r.page).or_default().push(r);
        }
    }

    // 4. The real slots of every page with redo beyond its entry (the entry may lag the
    // page file: see `slot_map`) or without a valid entry. Most or all unknown (a data directory from before the slot
    // map, or a lost one): one sequential scan instead.
    let mut torn = vec![false; allocated as usize];
    let mut read_real = |i: u64, slots: [Slot; 2], pages: &mut [PageMeta], exact: &mut [bool]| {
        let m = &mut pages[i as usize];
        m.disk = [PageVersion(0); 2];
        for (k, s) in slots.iter().enumerate() {
            match s {
                Slot::Valid(p) => m.disk[k] = p.version(),
                Slot::Torn(why) => {
                    tracing::warn!(page = %PageId(first.0 + i), slot = k, %why, "torn page-file slot");
                    torn[i as usize] = true;
                }
                Slot::Empty => {}
            }
        }
        m.version = m.disk[0].max(m.disk[1]);
        exact[i as usize] = true;
    };
    let unknown = known.iter().filter(|k| k.is_none()).count() as u64;
    if unknown > 0 && unknown >= allocated / 4 {
        tracing::info!(
            pages = allocated,
            unknown,
            "slot map missing or stale: scanning the page file"
        );
        page_file.scan(first, allocated, |i, slots| {
            read_real(i, slots, &mut pages, &mut exact)
        })?;
    } else {
        let mut want: Vec<u64> = (0..allocated)
            .filter(|i| known[*i as usize].is_none())
            .chain(by_page.iter().filter_map(|(id, recs)| {
                let i = id.0.checked_sub(first.0).filter(|i| *i < allocated)?;
                let newest = recs.iter().map(|r| r.after).max()?;
                (newest > pages[i as usize].version).then_some(i)
            }))
            .collect();
        want.sort_unstable();
        want.dedup();
        for i in want {
            let slots = page_file.read_slots(i, PageId(first.0 + i))?;
            read_real(i, slots, &mut pages, &mut exact);
        }
    }

    // 5 + 6. replay per page in version order
    let mut redone = 0;
    let mut ids: Vec<PageId> = by_page.keys().copied().collect();
    ids.sort();
    for id in ids {
        let Some(idx) = id.0.checked_sub(first.0).filter(|i| *i < allocated) else {
            tracing::warn!(page = %id, "redo for a page that is not allocated; ignored");
            continue;
        };
        let mut recs = by_page.remove(&id).expect("listed");
        recs.sort_by_key(|r| r.before);
        let meta = &mut pages[idx as usize];
        let mut image = if meta.version == PageVersion(0) {
            Page::empty(id)
        } else {
            let slots = page_file.read_slots(idx, id)?;
            slots
                .into_iter()
                .find_map(|s| match s {
                    Slot::Valid(p) if p.version() == meta.version => Some(p),
                    _ => None,
                })
                .ok_or_else(|| {
                    RecoveryError::Inconsistent(format!("page {id}: base image vanished"))
                })?
        };
        let base = image.version();
        for r in &recs {
            if r.after <= image.version() {
                continue;
            }
            if r.before != image.version() {
                tracing::error!(page = %id, at = %image.version(), next = %r.before,
                    "gap in the redo chain; the page stays at the version before the gap");
                break;
            }
            r.apply(&mut image).map_err(|e| {
                RecoveryError::Inconsistent(format!("page {id}: cannot apply redo: {e}"))
            })?;
        }
        if image.version() > base {
            let slot = target_slot(meta.disk);
            page_file.write_slot(idx, slot, &image)?;
            meta.disk[slot] = image.version();
            meta.version = image.version();
            redone += 1;
        }
    }
    let mut torn_pages = 0;
    for (i, t) in torn.iter().enumerate() {
        if *t {
            torn_pages += 1;
            let m = &pages[i];
            if m.version == PageVersion(0) && m.disk == [PageVersion(0); 2] {
                return Err(RecoveryError::Inconsistent(format!(
                    "page {}: torn in the page file with no intact slot and no redo to rebuild it",
                    PageId(first.0 + i as u64)
                )));
            }
            tracing::info!(page = %PageId(first.0 + i as u64), version = %m.version,
                "torn page repaired from its intact slot and the redo log");
        }
    }
    page_file.sync()?;
    // Every entry read from the page file goes back to the slot map, durably, before a
    // segment is deleted (after that, those pages have no redo to be read for).
    let mut entries: Vec<(u64, [PageVersion; 2])> = exact
        .iter()
        .enumerate()
        .filter(|(i, e)| **e && known[*i] != Some(pages[*i].disk))
        .map(|(i, _)| (i as u64, pages[i].disk))
        .collect();
    if !entries.is_empty() {
        slot_map.write(&mut entries)?;
        slot_map.sync()?;
    }
    for m in pages.iter_mut() {
        m.durable = m.version;
        m.logged = m.version;
    }

    // 7. fresh segments; old ones are fully checkpointed now
    let mut streams = Vec::new();
    for s in scanned {
        let stream = Stream::open(fs.clone(), &redo_dir, s.node, s.end, &[], segment_bytes)?;
        for seg in s.segments.iter().filter(|seg| **seg != s.end) {
            fs.remove_file(&segment_path(&s.dir, *seg))?;
        }
        fs.sync_dir(&s.dir)?;
        streams.push(stream);
    }
    Ok(Recovered {
        pages,
        streams,
        fenced,
        members,
        torn_pages,
        pages_redone: redone,
        records_scanned,
        pages_read: exact.iter().filter(|e| **e).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::durable::StdFs;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// `meta` and `fences` of any content: values or an error, never a panic; what
        /// is written is read back.
        #[test]
        fn metadata_files_of_any_content_never_panic(
            junk in proptest::collection::vec(any::<u8>(), 0..64),
            text in "[a-z_ 0-9\n-]{0,64}",
            first in any::<u64>(),
            allocated in any::<u64>(),
            fenced in proptest::collection::hash_map(any::<u32>(), any::<u32>(), 0..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            for content in [&junk[..], text.as_bytes()] {
                std::fs::write(dir.path().join("meta"), content).unwrap();
                std::fs::write(dir.path().join("fences"), content).unwrap();
                std::fs::write(dir.path().join("members"), content).unwrap();
                let _ = read_meta(&StdFs, dir.path());
                let _ = read_fences(&StdFs, dir.path());
                let _ = read_members(&StdFs, dir.path());
            }
            write_meta(&StdFs, dir.path(), PageId(first), allocated).unwrap();
            prop_assert_eq!(read_meta(&StdFs, dir.path()).unwrap(), Some((PageId(first), allocated)));
            let fenced: HashMap<NodeId, Epoch> =
                fenced.into_iter().map(|(n, e)| (NodeId(n), Epoch(e))).collect();
            write_fences(&StdFs, dir.path(), &fenced).unwrap();
            prop_assert_eq!(read_fences(&StdFs, dir.path()).unwrap(), fenced.clone());
            write_members(&StdFs, dir.path(), &fenced).unwrap();
            prop_assert_eq!(read_members(&StdFs, dir.path()).unwrap(), fenced);
        }
    }
}
