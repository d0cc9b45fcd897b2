//! Per-compute-node redo streams: append, group-commit bookkeeping, read-back, truncation.
//!
//! One stream per compute node id lives in `<data>/redo/<node>/` as segment files named
//! by the LSN of their first byte (`<start lsn, 20 digits>.seg`). An LSN is a byte offset
//! in the node's logical stream; a record's LSN (stored in it) is the offset just past
//! it. Only the last segment is appended to; once it reaches the segment size, the sync
//! that writes and fsyncs its last bytes starts a new one. Records are those of
//! `common::storage::redo`, each with its own crc32c, so a torn tail is found by the
//! first record that fails to decode.
//!
//! The stream remembers, per page, the records not yet covered by a checkpointed page
//! image (`pending`); segments before the oldest such record are deleted after a
//! checkpoint (log truncation), and a dead node's pages are rebuilt from them.
//!
//! ## Writes, fsyncs and durability
//!
//! Three LSNs, `durable <= written <= appended`: [`Stream::append`] only encodes into
//! memory (`appended`), never does I/O and never seals. Bytes reach the file only through
//! a [`SyncJob`]: [`Stream::begin_sync`] takes the tail (`written = appended`),
//! [`SyncJob::run`] writes it at its offset, fsyncs it and, if the segment is full,
//! creates the next segment (directory fsync), touching nothing of the stream; and
//! [`Stream::finish_sync`] is the only place `durable` advances, to exactly the end of
//! the tail that job wrote and fsynced. One job at a time: `begin_sync` hands out none
//! while one is out, so tails reach the file in LSN order with no hole, and between
//! jobs `durable == written`.
//!
//! In the storage node the log forcer runs every job (`store::Store::sync_streams`):
//! its `sync_lock` orders all redo writes, fsyncs, seals and `finish_sync` (the durable
//! mark) of every stream; `begin_sync` and `finish_sync` run under the engine mutex
//! too, taken after `sync_lock`, and the write and fsync without it.
//!
//! ## Recycled segments
//!
//! A truncated segment is not always deleted: one at a time is renamed to
//! `<dir>/spare` (no `.seg` suffix, so no scan reads it) and becomes the next segment
//! when the active one is sealed, as PostgreSQL recycles WAL segments. Appends then go
//! over bytes the file already has, so a force's `fdatasync` writes the data blocks and
//! not the inode too (the size does not change; on ext4 that halves the I/Os of every
//! force once the log truncates). The old bytes are harmless: a scan stops at the first
//! record whose LSN is not its position in the stream, and every old record's LSN is
//! below the segment's start. A spare is cut to the segment size when recycled, and a
//! sealed segment holds at least that many bytes of records, so old bytes can only
//! follow the records of the last segment, where a scan ends anyway. A power cut that
//! undoes the rename brings the truncated segment back, as an undone deletion does.
//!
//! A write or fsync error fails the stream for good ([`Stream::finish_sync`]): it
//! keeps its `durable` mark and refuses appends and jobs until a restart, whose recovery
//! reads the valid prefix of records from the file.

use common::durable::{create_dir_all_durably, DurableFile, DurableFs, OpenMode};
use common::ids::{Lsn, NodeId, PageId, PageVersion};
use common::storage::redo::RedoRecord;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A record appended but not yet checkpointed.
#[derive(Clone, Copy, Debug)]
pub struct PendingRecord {
    pub start: Lsn,
    pub len: u32,
    pub before: PageVersion,
    pub after: PageVersion,
    /// `common::storage::redo::content_digest` of the record (tells a resend).
    pub digest: u32,
}

/// The stream's recycled segment (`spare_path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spare {
    None,
    /// A truncated segment is being renamed to it ([`Stream::take_recycle`]).
    Pending,
    /// It exists and the next seal may use it.
    Ready,
}

pub struct Stream {
    pub node: NodeId,
    fs: Arc<dyn DurableFs>,
    dir: PathBuf,
    /// Start LSNs of the segments, ascending; the last one is active.
    segments: Vec<Lsn>,
    active: Arc<dyn DurableFile>,
    /// End of the stream (LSN past the last appended record).
    appended: Lsn,
    /// Everything before this LSN was written and fsynced. Advanced only by
    /// [`Stream::finish_sync`], to the end of the tail its job wrote.
    durable: Lsn,
    /// Encoded records from `written` to `appended`, not yet handed to the kernel: the
    /// log forcer writes and fsyncs them in one go (appends never do I/O).
    buf: Vec<u8>,
    /// LSN up to which bytes were taken by a [`SyncJob`] (written, or being written).
    written: Lsn,
    /// A [`SyncJob`] is out (between `begin_sync` and `finish_sync`).
    syncing: bool,
    /// The active segment is full and the log forcer was asked to seal it.
    seal_asked: bool,
    /// A write or fsync of this stream failed: why. The stream refuses every append and
    /// sync from then on (until a restart recovers it from what is on disk).
    failed: Option<String>,
    segment_bytes: u64,
    /// (end lsn, page, version after) of appended records not yet durable.
    undurable: VecDeque<(Lsn, PageId, PageVersion)>,
    spare: Spare,
    pub pending: HashMap<PageId, VecDeque<PendingRecord>>,
}

/// The unwritten tail of a stream, taken by [`Stream::begin_sync`]: [`SyncJob::run`]
/// writes and fsyncs it (and, if the active segment is full, starts the next segment)
/// without any lock held; [`Stream::finish_sync`] then records what became durable.
pub struct SyncJob {
    fs: Arc<dyn DurableFs>,
    file: Arc<dyn DurableFile>,
    offset: u64,
    bytes: Vec<u8>,
    upto: Lsn,
    /// The stream's directory, when the next segment starts at `upto`.
    seal: Option<PathBuf>,
    /// The next segment is the stream's spare (renamed), not a new file.
    use_spare: bool,
}

/// What a [`SyncJob`] did, for [`Stream::finish_sync`].
pub struct SyncDone {
    upto: Lsn,
    written: io::Result<()>,
    /// The next segment (starting at `upto`), when the job sealed the active one.
    next_segment: Option<io::Result<Box<dyn DurableFile>>>,
}

impl SyncJob {
    /// Writes and fsyncs the tail; then, if asked to seal, creates the next segment
    /// and fsyncs the directory. Does not touch the stream (no lock needed).
    pub fn run(self) -> SyncDone {
        let written = write_and_sync(&*self.file, self.offset, &self.bytes);
        let next_segment = match (&written, &self.seal) {
            (Ok(()), Some(dir)) => Some(create_segment(&*self.fs, dir, self.upto, self.use_spare)),
            _ => None,
        };
        SyncDone {
            upto: self.upto,
            written,
            next_segment,
        }
    }
}

pub fn segment_path(dir: &Path, start: Lsn) -> PathBuf {
    dir.join(format!("{:020}.seg", start.0))
}

/// Name of a stream's recycled segment, waiting to become its next one.
pub fn spare_path(dir: &Path) -> PathBuf {
    dir.join("spare")
}

/// Writes `bytes` at `offset` of a segment and fsyncs it (data only): the one place a
/// redo tail reaches the disk. With the `failpoints` feature, `redo::write_error` fails
/// the write (nothing written, as with ENOSPC) and `redo::fsync_error` fails the fsync
/// after a successful write (EIO), both without touching the file.
pub fn write_and_sync(file: &dyn DurableFile, offset: u64, bytes: &[u8]) -> io::Result<()> {
    fail::fail_point!("redo::write_error", |_| Err(io::Error::from_raw_os_error(
        28 // ENOSPC
    )));
    file.write_all_at(bytes, offset)?;
    fail::fail_point!("redo::fsync_error", |_| Err(io::Error::from_raw_os_error(
        5 // EIO
    )));
    file.sync_data()
}

/// Makes the segment file of `dir` starting at `start` — the spare renamed, if
/// `use_spare` and the rename works, else a new empty file — and makes its directory
/// entry durable.
fn create_segment(
    fs: &dyn DurableFs,
    dir: &Path,
    start: Lsn,
    use_spare: bool,
) -> io::Result<Box<dyn DurableFile>> {
    let path = segment_path(dir, start);
    let recycled = use_spare
        && match fs.rename(&spare_path(dir), &path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot recycle the spare redo segment; starting an empty one");
                false
            }
        };
    let f = fs.open(
        &path,
        if recycled {
            OpenMode::ReadWrite
        } else {
            OpenMode::Truncate
        },
    )?;
    fs.sync_dir(dir)?;
    Ok(f)
}

/// A stream found on disk at startup.
pub struct ScannedStream {
    pub node: NodeId,
    pub dir: PathBuf,
    pub segments: Vec<Lsn>,
    /// End of the valid records.
    pub end: Lsn,
    /// The valid records the caller's filter kept.
    pub records: Vec<RedoRecord>,
    /// Valid records read, kept or not.
    pub scanned: usize,
}

/// Reads every stream under `redo_dir`; truncates a torn tail of a stream's last segment.
pub fn scan_streams(fs: &dyn DurableFs, redo_dir: &Path) -> io::Result<Vec<ScannedStream>> {
    scan_streams_keeping(fs, redo_dir, &mut |_| true)
}

/// As [`scan_streams`], keeping in memory only the records `keep` wants (recovery drops
/// the ones its pages' images already hold, so its memory follows what it replays,
/// not the redo retained on disk).
pub fn scan_streams_keeping(
    fs: &dyn DurableFs,
    redo_dir: &Path,
    keep: &mut dyn FnMut(&RedoRecord) -> bool,
) -> io::Result<Vec<ScannedStream>> {
    let mut out = Vec::new();
    if !fs.exists(redo_dir) {
        return Ok(out);
    }
    for name in fs.list_dir(redo_dir)? {
        let Some(node) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            tracing::warn!(path = %redo_dir.join(&name).display(), "ignoring unexpected entry in the redo directory");
            continue;
        };
        let dir = redo_dir.join(&name);
        let mut segments: Vec<Lsn> = fs
            .list_dir(&dir)?
            .into_iter()
            .filter_map(|name| {
                let s = name.to_str()?;
                s.strip_suffix(".seg")?.parse::<u64>().ok().map(Lsn)
            })
            .collect();
        segments.sort();
        let mut records = Vec::new();
        let mut scanned = 0;
        let mut end = segments.first().copied().unwrap_or(Lsn(0));
        for (i, start) in segments.iter().enumerate() {
            let path = segment_path(&dir, *start);
            let bytes = fs.read(&path)?;
            let mut at = 0usize;
            while at < bytes.len() {
                match RedoRecord::decode(&bytes[at..]) {
                    // Checked: a segment named near u64::MAX must not overflow.
                    Ok((rec, n)) if start.0.checked_add((at + n) as u64) == Some(rec.lsn.0) => {
                        at += n;
                        scanned += 1;
                        if keep(&rec) {
                            records.push(rec);
                        }
                    }
                    other => {
                        let why = match other {
                            Ok(_) => "record carries a wrong LSN".to_string(),
                            Err(e) => e.to_string(),
                        };
                        if i + 1 == segments.len() {
                            tracing::info!(node, segment = %path.display(), offset = at, %why,
                                "redo ends here (a torn tail, or a recycled segment's old bytes); cutting the segment");
                            let f = fs.open(&path, OpenMode::ReadWrite)?;
                            f.set_len(at as u64)?;
                            f.sync_all()?;
                        } else {
                            tracing::error!(node, segment = %path.display(), offset = at, %why,
                                "corrupt redo record inside a sealed segment; the rest of this segment is skipped");
                        }
                        break;
                    }
                }
            }
            end = Lsn(start.0 + at as u64);
        }
        out.push(ScannedStream {
            node: NodeId(node),
            dir,
            segments,
            end,
            records,
            scanned,
        });
    }
    Ok(out)
}

impl Stream {
    /// Opens (or creates) the stream of `node` continuing at `end`, in a fresh segment
    /// that starts at `end`; older segments listed in `old` are kept until truncated.
    pub fn open(
        fs: Arc<dyn DurableFs>,
        redo_dir: &Path,
        node: NodeId,
        end: Lsn,
        old: &[Lsn],
        segment_bytes: u64,
    ) -> io::Result<Stream> {
        let dir = redo_dir.join(node.0.to_string());
        // `redo/` is fsynced even if the stream's directory exists: an earlier open may
        // have created it and failed at that fsync (a power cut then takes the stream).
        create_dir_all_durably(&*fs, &dir)?;
        let path = segment_path(&dir, end);
        let active = fs.open(&path, OpenMode::Create)?;
        // An existing segment at `end` holds only bytes past the valid end (a torn tail
        // already cut by the scan), so it is empty here.
        active.set_len(0)?;
        active.sync_all()?;
        fs.sync_dir(&dir)?;
        let mut segments: Vec<Lsn> = old.iter().copied().filter(|s| *s != end).collect();
        segments.push(end);
        // A spare left by the last run is used (a rename the power cut undid left none).
        let fs_spare = fs.exists(&spare_path(&dir));
        Ok(Stream {
            node,
            fs,
            dir,
            segments,
            active: Arc::from(active),
            appended: end,
            durable: end,
            buf: Vec::new(),
            written: end,
            syncing: false,
            seal_asked: false,
            failed: None,
            segment_bytes,
            undurable: VecDeque::new(),
            spare: if fs_spare { Spare::Ready } else { Spare::None },
            pending: HashMap::new(),
        })
    }

    fn active_start(&self) -> Lsn {
        *self.segments.last().expect("a stream always has a segment")
    }

    /// End of the stream (LSN past the last appended record).
    pub fn appended(&self) -> Lsn {
        self.appended
    }

    /// Everything before this LSN was written and fsynced.
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// Why the stream failed (a write or fsync error), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Appends records (their LSNs are assigned here) to the in-memory tail; returns the
    /// new end, and whether the active segment just became full: the caller then asks
    /// the log forcer to sync the stream, which seals the segment. No I/O. A failed
    /// stream refuses (its error).
    pub fn append(&mut self, records: &mut [RedoRecord]) -> Result<(Lsn, bool), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut lsn = self.appended.0;
        for r in records.iter_mut() {
            let start = lsn;
            let len = r.encoded_len();
            lsn += len as u64;
            r.lsn = Lsn(lsn);
            let at = self.buf.len();
            r.encode(&mut self.buf);
            let digest = common::storage::redo::content_digest(&self.buf[at..]);
            self.undurable.push_back((Lsn(lsn), r.page, r.after));
            self.pending
                .entry(r.page)
                .or_default()
                .push_back(PendingRecord {
                    start: Lsn(start),
                    len: len as u32,
                    before: r.before,
                    after: r.after,
                    digest,
                });
        }
        self.appended = Lsn(lsn);
        let full = self.appended.0 - self.active_start().0 >= self.segment_bytes;
        let ask = full && !self.seal_asked;
        self.seal_asked |= ask;
        Ok((self.appended, ask))
    }

    /// Takes the unwritten tail for writing: `None` if there is nothing to write or
    /// seal, or if a job is already out. The one writer of the stream's file runs the
    /// job and hands its result to [`Stream::finish_sync`]; until then no other job is
    /// handed out, so tails reach the file in LSN order and nothing is marked durable
    /// that a job has not written and fsynced. The active segment is sealed by the job
    /// that writes its last bytes, after their fsync (the only place a segment ends).
    /// A failed stream refuses (its error): it has nothing more it can make durable.
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>, String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.syncing {
            return Ok(None);
        }
        debug_assert_eq!(
            self.durable, self.written,
            "no job out: all written is durable"
        );
        let seal = self.appended.0 - self.active_start().0 >= self.segment_bytes;
        if self.buf.is_empty() && !seal {
            return Ok(None);
        }
        let job = SyncJob {
            fs: self.fs.clone(),
            file: self.active.clone(),
            offset: self.written.0 - self.active_start().0,
            bytes: std::mem::take(&mut self.buf),
            upto: self.appended,
            seal: seal.then(|| self.dir.clone()),
            use_spare: seal && self.spare == Spare::Ready,
        };
        if seal && self.spare == Spare::Ready {
            self.spare = Spare::None;
        }
        self.written = self.appended;
        self.syncing = true;
        Ok(Some(job))
    }

    /// Records the outcome of the job [`Stream::begin_sync`] handed out: on success
    /// everything before its end is durable (returned: the (page, version after) of the
    /// records that just became durable) and, if it sealed the segment, appends go to
    /// the next one.
    ///
    /// A failed write or fsync fails the stream for good: the tail's bytes are no longer
    /// in memory, the file may hold any part of them, and after a failed fsync the
    /// kernel may have dropped the dirty pages and marked them clean, so a later fsync
    /// would succeed without writing them (PostgreSQL's "fsyncgate"). Nothing at or
    /// past the failed tail is ever marked durable: forces beyond `durable` and appends
    /// are refused until a restart recovers the stream from the file (the valid prefix
    /// of records, which holds everything durable). A failed seal (the write and fsync
    /// worked, the next segment could not be made durable) marks the tail durable and
    /// fails the stream too.
    pub fn finish_sync(
        &mut self,
        done: SyncDone,
    ) -> (Vec<(PageId, PageVersion)>, Result<(), String>) {
        debug_assert!(self.syncing, "finish_sync without begin_sync");
        self.syncing = false;
        if let Err(e) = done.written {
            return (
                Vec::new(),
                Err(self.fail(format!(
                    "redo write/fsync of LSNs {}..{} failed: {e}",
                    self.durable, done.upto
                ))),
            );
        }
        let newly = self.mark_durable(done.upto);
        match done.next_segment {
            None => (newly, Ok(())),
            Some(Ok(f)) => {
                self.active = Arc::from(f);
                self.segments.push(done.upto);
                self.seal_asked = false;
                (newly, Ok(()))
            }
            Some(Err(e)) => {
                let e = self.fail(format!(
                    "cannot start the redo segment at LSN {}: {e}",
                    done.upto
                ));
                (newly, Err(e))
            }
        }
    }

    fn fail(&mut self, why: String) -> String {
        let why = format!(
            "redo stream of node {} failed: {why}; it refuses appends and forces past \
             LSN {} until the storage node restarts",
            self.node, self.durable
        );
        self.buf = Vec::new();
        self.failed = Some(why.clone());
        why
    }

    /// Records that everything before `upto` (written and fsynced by a job) is durable;
    /// returns the (page, version after) of the records that just became durable.
    fn mark_durable(&mut self, upto: Lsn) -> Vec<(PageId, PageVersion)> {
        debug_assert!(upto <= self.written, "durable beyond what was written");
        let mut out = Vec::new();
        if upto > self.durable {
            self.durable = upto;
        }
        while let Some((end, page, after)) = self.undurable.front().copied() {
            if end > self.durable {
                break;
            }
            self.undurable.pop_front();
            out.push((page, after));
        }
        out
    }

    /// Reads a record back from its segment.
    pub fn read_record(&self, rec: &PendingRecord) -> io::Result<RedoRecord> {
        let seg = self
            .segments
            .iter()
            .rev()
            .find(|s| **s <= rec.start)
            .copied()
            .ok_or_else(|| io::Error::other(format!("no segment holds LSN {}", rec.start)))?;
        let f = if seg == self.active_start() {
            None
        } else {
            Some(
                self.fs
                    .open(&segment_path(&self.dir, seg), OpenMode::Read)?,
            )
        };
        let file: &dyn DurableFile = f.as_deref().unwrap_or(&*self.active);
        let mut buf = vec![0u8; rec.len as usize];
        file.read_exact_at(&mut buf, rec.start.0 - seg.0)?;
        let (r, _) = RedoRecord::decode(&buf)
            .map_err(|e| io::Error::other(format!("redo record at LSN {}: {e}", rec.start)))?;
        Ok(r)
    }

    /// A page image at `version` reached the page file: its records up to it are no
    /// longer needed.
    pub fn checkpointed(&mut self, page: PageId, version: PageVersion) {
        if let Some(q) = self.pending.get_mut(&page) {
            while q.front().is_some_and(|r| r.after <= version) {
                q.pop_front();
            }
            if q.is_empty() {
                self.pending.remove(&page);
            }
        }
    }

    /// Drops the sealed segments that hold only checkpointed records; returns their
    /// paths for deletion outside the engine lock.
    pub fn truncate(&mut self) -> Vec<PathBuf> {
        let keep_from = self
            .pending
            .values()
            .filter_map(|q| q.front().map(|r| r.start))
            .min()
            .unwrap_or(self.appended);
        let mut out = Vec::new();
        while self.segments.len() > 1 && self.segments[1] <= keep_from {
            let s = self.segments.remove(0);
            out.push(segment_path(&self.dir, s));
        }
        out
    }

    /// Of the segment files a truncation freed (`paths`, from [`Stream::truncate`]),
    /// the one to recycle as the spare, if the stream has none and none is on its way:
    /// the caller renames it with [`recycle_segment`] (no lock held) and reports the
    /// outcome to [`Stream::spare_made`]. The others are deleted.
    pub fn take_recycle(&mut self, paths: &mut Vec<PathBuf>) -> Option<(PathBuf, PathBuf)> {
        if self.spare != Spare::None || self.failed.is_some() {
            return None;
        }
        let p = paths.pop()?;
        self.spare = Spare::Pending;
        Some((p, spare_path(&self.dir)))
    }

    /// The rename [`Stream::take_recycle`] asked for is done (`ok`) or failed.
    pub fn spare_made(&mut self, ok: bool) {
        self.spare = if ok { Spare::Ready } else { Spare::None };
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes of log the stream keeps: from the start of its oldest segment to its end.
    pub fn retained_bytes(&self) -> u64 {
        self.appended.0 - self.segments[0].0
    }

    /// Up to `max` pages whose oldest needed record starts before `lsn`, with the
    /// version that record produces: the pages that keep the log from being truncated
    /// to `lsn`. The storage node asks their lock holders to write them back.
    pub fn pages_holding_back(&self, lsn: Lsn, max: usize) -> Vec<(PageId, PageVersion)> {
        self.pending
            .iter()
            .filter_map(|(p, q)| q.front().filter(|r| r.start < lsn).map(|r| (*p, r.after)))
            .take(max)
            .collect()
    }
}

/// Renames a truncated segment to be the stream's spare, cut to `segment_bytes` if it
/// is longer (so that a sealed segment never ends in old bytes). No directory fsync:
/// the seal that uses the spare makes both renames durable. On failure the segment is
/// deleted, as a truncated one is.
pub fn recycle_segment(fs: &dyn DurableFs, from: &Path, spare: &Path, segment_bytes: u64) -> bool {
    let res = (|| {
        let f = fs.open(from, OpenMode::ReadWrite)?;
        if f.len()? > segment_bytes {
            f.set_len(segment_bytes)?;
        }
        drop(f);
        fs.rename(from, spare)
    })();
    match res {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(path = %from.display(), error = %e, "cannot recycle a truncated redo segment; deleting it");
            let _ = fs.remove_file(from);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::durable::StdFs;
    use common::storage::redo::RedoBody;
    use proptest::prelude::*;
    use std::fs::OpenOptions;

    fn rec(page: u64, before: u64) -> RedoRecord {
        RedoRecord {
            lsn: Lsn(0),
            page: PageId(page),
            before: PageVersion(before),
            after: PageVersion(before + 1),
            body: RedoBody::Diffs(vec![(100, vec![before as u8; 500])]),
        }
    }

    /// One force: begin, run, finish; returns how many records became durable.
    fn sync(s: &mut Stream) -> usize {
        match s.begin_sync().unwrap() {
            None => 0,
            Some(job) => {
                let (newly, r) = s.finish_sync(job.run());
                r.unwrap();
                newly.len()
            }
        }
    }

    /// The contract of `begin_sync`: one job at a time; appends made while it is out
    /// are not covered by it; a full segment is sealed only by the job that wrote its
    /// last bytes, and nothing is durable that no job wrote.
    #[test]
    fn only_written_and_fsynced_bytes_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            Stream::open(StdFs::shared(), dir.path(), NodeId(4), Lsn(0), &[], 2000).unwrap();
        let (end1, full) = s.append(&mut [rec(1, 0)]).unwrap();
        assert!(!full);
        let job = s.begin_sync().unwrap().expect("a tail to write");
        assert!(
            s.begin_sync().unwrap().is_none(),
            "a second job while one is out"
        );
        // Appends go on meanwhile and fill the segment: the forcer is asked once.
        let (_, full) = s.append(&mut [rec(1, 1), rec(1, 2), rec(1, 3)]).unwrap();
        assert!(full);
        let (end, again) = s.append(&mut [rec(1, 4)]).unwrap();
        assert!(!again, "asked once per segment");
        assert_eq!(s.durable(), Lsn(0));
        assert_eq!(s.segment_count(), 1, "appends never seal");
        let (newly, r) = s.finish_sync(job.run());
        r.unwrap();
        assert_eq!(newly, vec![(PageId(1), PageVersion(1))]);
        assert_eq!(s.durable(), end1, "only the job's tail is durable");
        // The next job writes the rest and seals the full segment after its fsync.
        assert_eq!(sync(&mut s), 4);
        assert_eq!((s.durable(), s.segment_count()), (end, 2));
        assert!(s.begin_sync().unwrap().is_none(), "nothing left to write");
        let scanned = scan_streams(&StdFs, dir.path()).unwrap();
        assert_eq!(scanned[0].records.len(), 5);
        assert_eq!(scanned[0].end, end);
    }

    /// A truncated segment recycled as the spare becomes the next segment: the file
    /// keeps its size (appends overwrite old bytes), a scan reads exactly the records
    /// written since, and none of the old ones, also across a reopen.
    #[test]
    fn a_recycled_segment_is_overwritten_and_its_old_records_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs::shared();
        let mut s = Stream::open(fs.clone(), dir.path(), NodeId(2), Lsn(0), &[], 2000).unwrap();
        // Three full segments of page 1, then all of it checkpointed.
        for v in 0..12 {
            s.append(&mut [rec(1, v)]).unwrap();
            sync(&mut s);
        }
        assert!(s.segment_count() >= 3);
        s.checkpointed(PageId(1), PageVersion(12));
        let mut freed = s.truncate();
        let n_freed = freed.len();
        let (from, to) = s.take_recycle(&mut freed).expect("one to recycle");
        assert_eq!(freed.len(), n_freed - 1);
        assert!(s.take_recycle(&mut freed).is_none(), "one spare at a time");
        let old_len = std::fs::metadata(&from).unwrap().len();
        assert!(recycle_segment(&*fs, &from, &to, 2000));
        s.spare_made(true);
        for p in &freed {
            std::fs::remove_file(p).unwrap();
        }
        assert_eq!(std::fs::metadata(&to).unwrap().len(), old_len.min(2000));
        // Fill the active segment: its seal takes the spare.
        let active_start = s.active_start();
        let mut v = 12;
        while s.active_start() == active_start {
            s.append(&mut [rec(1, v)]).unwrap();
            sync(&mut s);
            v += 1;
        }
        assert!(!to.exists(), "the spare became the next segment");
        let next = segment_path(&s.dir, s.active_start());
        assert_eq!(std::fs::metadata(&next).unwrap().len(), old_len.min(2000));
        // One record into the recycled segment: it overwrites old bytes, the size stays.
        let (end, _) = s.append(&mut [rec(1, v)]).unwrap();
        sync(&mut s);
        assert_eq!(std::fs::metadata(&next).unwrap().len(), old_len.min(2000));
        let scanned = scan_streams(&StdFs, dir.path()).unwrap();
        assert_eq!(scanned[0].end, end, "the scan ends at the new records");
        let versions: Vec<u64> = scanned[0].records.iter().map(|r| r.before.0).collect();
        assert_eq!(
            *versions.last().unwrap(),
            v,
            "the last record is the new one"
        );
        assert!(
            versions.windows(2).all(|w| w[1] == w[0] + 1),
            "no old record read back: {versions:?}"
        );
    }

    /// A failed job fails the stream: nothing it took is ever durable, and no later
    /// append or job is accepted (a later fsync could succeed without the lost bytes).
    #[test]
    fn a_failed_write_fails_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            Stream::open(StdFs::shared(), dir.path(), NodeId(4), Lsn(0), &[], 1 << 20).unwrap();
        s.append(&mut [rec(1, 0)]).unwrap();
        assert_eq!(sync(&mut s), 1);
        let durable = s.durable();
        s.append(&mut [rec(1, 1)]).unwrap();
        let job = s.begin_sync().unwrap().unwrap();
        let done = SyncDone {
            upto: job.upto,
            written: Err(io::Error::from_raw_os_error(5)),
            next_segment: None,
        };
        let (newly, r) = s.finish_sync(done);
        assert!(newly.is_empty());
        let e = r.unwrap_err();
        assert_eq!(s.failure(), Some(e.as_str()));
        assert_eq!(s.durable(), durable);
        assert!(s.append(&mut [rec(1, 2)]).is_err());
        assert!(s.begin_sync().is_err());
        assert_eq!(s.durable(), durable);
    }

    #[test]
    fn append_scan_truncate_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            Stream::open(StdFs::shared(), dir.path(), NodeId(4), Lsn(0), &[], 2000).unwrap();
        let mut durable = 0;
        for v in 0..10 {
            let (end, _) = s.append(&mut [rec(1, v), rec(2, v)]).unwrap();
            assert_eq!(end, s.appended);
            // A force writes and fsyncs the tail, and seals a full segment.
            durable += sync(&mut s);
            assert_eq!(s.durable(), end);
        }
        assert!(s.segment_count() > 2);
        assert_eq!(durable, 20);
        let first = *s.pending[&PageId(1)].front().unwrap();
        assert_eq!(s.read_record(&first).unwrap().before, PageVersion(0));
        // Checkpoint page 1 fully and page 2 to v5: segments before page 2's v5 record go.
        s.checkpointed(PageId(1), PageVersion(10));
        s.checkpointed(PageId(2), PageVersion(5));
        let gone = s.truncate();
        assert!(!gone.is_empty());
        for p in &gone {
            std::fs::remove_file(p).unwrap();
        }
        // The last sync sealed the full segment; one more record goes to the new one.
        s.append(&mut [rec(2, 10)]).unwrap();
        assert_eq!(sync(&mut s), 1);
        // Tear the tail: the scan keeps every whole record before it.
        let end = s.appended;
        let last = segment_path(&s.dir, s.active_start());
        drop(s);
        let len = std::fs::metadata(&last).unwrap().len();
        let f = OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(len - 7).unwrap();
        let scanned = scan_streams(&StdFs, dir.path()).unwrap();
        assert_eq!(scanned.len(), 1);
        assert!(scanned[0].end < end);
        let recs = &scanned[0].records;
        assert!(recs
            .iter()
            .all(|r| r.page == PageId(1) || r.page == PageId(2)));
        assert!(recs
            .iter()
            .any(|r| r.page == PageId(2) && r.before == PageVersion(5)));
        assert!(recs
            .iter()
            .any(|r| r.page == PageId(2) && r.before == PageVersion(9)));
        assert!(!recs
            .iter()
            .any(|r| r.page == PageId(2) && r.before == PageVersion(10)));
    }

    /// Writes segment `start` of node 1's stream under `redo_dir`: `records` (their LSNs
    /// set as the storage node sets them), then `tail`.
    fn write_segment(
        redo_dir: &Path,
        start: u64,
        records: &mut [RedoRecord],
        tail: &[u8],
    ) -> Vec<u8> {
        let dir = redo_dir.join("1");
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Vec::new();
        for r in records.iter_mut() {
            r.lsn = Lsn(start.wrapping_add((b.len() + r.encoded_len()) as u64));
            r.encode(&mut b);
        }
        let valid = b.clone();
        b.extend_from_slice(tail);
        std::fs::write(segment_path(&dir, Lsn(start)), &b).unwrap();
        valid
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A segment of whole records followed by any bytes (a torn or garbage tail):
        /// the scan keeps exactly the records, cuts the file after them and never
        /// panics.
        #[test]
        fn scan_keeps_the_valid_prefix_of_any_segment(
            start in prop_oneof![Just(0u64), 0..u64::MAX / 2],
            n in 0u64..5,
            tail in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut recs: Vec<_> = (0..n).map(|v| rec(3, v)).collect();
            let valid = write_segment(dir.path(), start, &mut recs, &tail);
            let scanned = scan_streams(&StdFs, dir.path()).unwrap();
            prop_assert_eq!(scanned.len(), 1);
            prop_assert_eq!(&scanned[0].records, &recs);
            prop_assert_eq!(scanned[0].end, Lsn(start + valid.len() as u64));
            let seg = segment_path(&dir.path().join("1"), Lsn(start));
            prop_assert_eq!(std::fs::read(&seg).unwrap(), valid);
        }

        /// Hostile names and contents: any bytes in a segment whose name is any u64
        /// (records included, so LSN arithmetic runs at the top of the range).
        #[test]
        fn scan_of_hostile_segments_never_panics(
            start in prop_oneof![Just(u64::MAX), u64::MAX - 2000.., any::<u64>()],
            n in 0u64..3,
            tail in proptest::collection::vec(any::<u8>(), 0..100),
            stray in "[0-9a-z][0-9a-z.]{0,23}",
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut recs: Vec<_> = (0..n).map(|v| rec(3, v)).collect();
            write_segment(dir.path(), start, &mut recs, &tail);
            std::fs::write(dir.path().join("1").join(stray), &tail).unwrap();
            std::fs::create_dir_all(dir.path().join("not-a-node")).unwrap();
            let _ = scan_streams(&StdFs, dir.path());
        }
    }
}
