//! Invariant 7 on the redo path under injected faults: a failed redo write or fsync is
//! never followed by an acknowledgement of what it lost (S2), and sealing a segment
//! never acknowledges a tail the log forcer took but has not written yet (S3).
//!
//! Needs the `failpoints` feature (`cargo test -p storage-node --features failpoints`):
//! the points are process-wide, so every test here holds a `fail::FailScenario`, which
//! serialises them.
#![cfg(feature = "failpoints")]

mod support;

use common::ids::{Lsn, PageVersion};
use common::storage::page::Page;
use common::storage::StorageError;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use storage_node::config::{ByteSize, StorageConfig};
use support::*;

/// A node that checkpoints only when asked (the page file keeps the base images, so
/// what survives a crash is exactly what the redo log holds).
fn no_checkpoints(dir: &Path) -> StorageConfig {
    let mut cfg = config(dir, 64);
    cfg.checkpoint_interval_ms = 3_600_000;
    cfg
}

/// The active (newest) segment of node `node`'s stream.
fn newest_segment(cfg: &StorageConfig, node: u32) -> std::path::PathBuf {
    let dir = cfg.data_dir.join("redo").join(node.to_string());
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a stream has a segment")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Restarts on a copy of `cfg`'s data directory as it is now (what a crash at this
/// instant leaves: everything handed to the kernel, nothing still in the node's memory)
/// and returns the page as recovery rebuilt it.
fn crash_copy_and_read(cfg: &StorageConfig, page: common::ids::PageId) -> Page {
    let copy = tempfile::tempdir().unwrap();
    let mut cfg2 = no_checkpoints(copy.path());
    cfg2.redo_segment = cfg.redo_segment;
    copy_dir(&cfg.data_dir, &cfg2.data_dir);
    let node = start(&cfg2);
    let c = client(&node.endpoint(), 9, 1);
    let got = c.read_pages(&[page]).unwrap().remove(0);
    drop(c);
    drop(node); // no clean shutdown: it would force through the paused fail point
    got
}

/// Every image a test produced, by version, to check a recovered page's content.
fn image_at(images: &[Page], v: PageVersion) -> &Page {
    images
        .iter()
        .find(|p| p.version() == v)
        .unwrap_or_else(|| panic!("no image at version {v}"))
}

/// S2, write side: a redo write fails (ENOSPC, nothing reaches the file). The compute
/// node resends the lost record in front of the next one, as `flush_redo_to` does. The
/// storage node must not acknowledge a force that covers the lost bytes: before the fix
/// the dedup skipped the resend, the next force wrote the later record past a hole and
/// marked everything durable, and recovery cut the stream at the hole.
#[test]
fn a_failed_redo_write_is_never_acknowledged_later() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let cfg = no_checkpoints(dir.path());
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 1);
    let p = c.allocate_pages(1).unwrap()[0];
    c.lock_exclusive(p).unwrap();
    let v0 = c.read_pages(&[p]).unwrap().remove(0);
    let (v1, r1) = next_version(&v0);
    let (v2, r2) = next_version(&v1);
    let (v3, r3) = next_version(&v2);
    let images = [v0, v1.clone(), v2.clone(), v3.clone()];
    c.append_and_force(&[r1]).unwrap();
    let mut acked = v1.version();

    fail::cfg("redo::write_error", "return").unwrap();
    let failed = c.append_and_force(std::slice::from_ref(&r2));
    assert!(
        matches!(failed, Err(StorageError::Io(_))),
        "the injected write error reaches the caller: {failed:?}"
    );
    fail::remove("redo::write_error");

    // The disk has room again. The compute node resends the record whose force failed,
    // ahead of the next one; then a write-back and another force ask about it.
    let resent = c.append_and_force(&[r2, r3]);
    if resent.is_ok() {
        acked = v3.version();
    }
    let write_back = c.write_back(&v3);
    let forced = c.force_log(Lsn(1));
    let metrics = c.metrics().unwrap();
    // The node's lease expires: its pages are not rebuilt from a stream that may
    // still gain the failed bytes on disk (their locks stay until the restart).
    let gtm = common::storage::StorageClient::connect_admin(&node.endpoint(), &opts()).unwrap();
    let released = gtm.release_locks_of(common::ids::NodeId(1), common::ids::Epoch(1));

    drop(gtm);
    drop(c);
    drop(node); // crash: nothing is flushed beyond what was forced
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 2);
    let got = c.read_pages(&[p]).unwrap().remove(0);
    assert!(
        got.version() >= acked,
        "acknowledged redo lost: the force of version {acked} was answered {resent:?}, \
         but after a crash the page is at version {}",
        got.version()
    );
    assert_same(&got, image_at(&images, got.version()));
    // What the failed stream answered: the resend and the write-back above the durable
    // redo are refused; a force at or below the durable LSN (fsynced before the
    // failure) may be answered.
    assert!(
        matches!(resent, Err(StorageError::Io(_))),
        "an append to a stream whose write failed: {resent:?}"
    );
    assert!(
        write_back.is_err(),
        "a write-back above the durable redo of a failed stream: {write_back:?}"
    );
    assert!(forced.is_ok(), "{forced:?}");
    assert!(
        metrics.contains("storage_redo_streams_failed 1"),
        "{metrics}"
    );
    assert!(
        matches!(released, Err(StorageError::Io(_))),
        "release_locks_of over a failed stream: {released:?}"
    );
    // The restarted node starts the stream afresh and accepts the chain from the
    // recovered version.
    c.lock_exclusive(p).unwrap();
    let next = change(&c, &got);
    drop(c);
    node.shutdown().unwrap();
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 3);
    assert_same(&c.read_pages(&[p]).unwrap()[0], &next);
    drop(c);
    node.shutdown().unwrap();
}

/// S2, fsync side: the write succeeds, the fsync fails (EIO). After a failed fsync the
/// kernel may have dropped the dirty pages (and mark them clean: a retried fsync then
/// succeeds without writing them; PostgreSQL's "fsyncgate"). The test makes that
/// happen: it zeroes the bytes the failed fsync covered. Nothing that includes them may
/// be acknowledged afterwards.
#[test]
fn a_failed_redo_fsync_fails_the_stream() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let cfg = no_checkpoints(dir.path());
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 1);
    let p = c.allocate_pages(1).unwrap()[0];
    c.lock_exclusive(p).unwrap();
    let v0 = c.read_pages(&[p]).unwrap().remove(0);
    let (v1, r1) = next_version(&v0);
    let (v2, r2) = next_version(&v1);
    let (v3, r3) = next_version(&v2);
    let images = [v0, v1.clone(), v2.clone(), v3.clone()];
    let end1 = c.append_and_force(&[r1]).unwrap();
    let mut acked = v1.version();

    fail::cfg("redo::fsync_error", "return").unwrap();
    let failed = c.append_and_force(std::slice::from_ref(&r2));
    assert!(
        matches!(failed, Err(StorageError::Io(_))),
        "the injected fsync error reaches the caller: {failed:?}"
    );
    fail::remove("redo::fsync_error");
    // The kernel dropped the pages it could not write (the stream's first segment
    // starts at LSN 0, so file offsets are LSNs).
    {
        use std::os::unix::fs::FileExt;
        let seg = newest_segment(&cfg, 1);
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&vec![0u8; r2.encoded_len()], end1.0)
            .unwrap();
        f.sync_data().unwrap();
    }

    let resent = c.append_and_force(&[r2, r3]);
    if resent.is_ok() {
        acked = v3.version();
    }
    let forced = c.force_log(end1);

    drop(c);
    drop(node); // crash
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 2);
    let got = c.read_pages(&[p]).unwrap().remove(0);
    assert!(
        got.version() >= acked,
        "acknowledged redo lost: the force of version {acked} was answered {resent:?} \
         after a failed fsync, but after a crash the page is at version {}",
        got.version()
    );
    assert_same(&got, image_at(&images, got.version()));
    assert!(
        resent.is_err(),
        "acknowledged after a failed fsync of the same stream: {resent:?}"
    );
    // LSNs up to `end1` were fsynced before the failure.
    assert!(forced.is_ok(), "{forced:?}");
    drop(c);
    node.shutdown().unwrap();
}

/// Releases a paused fail point when dropped (also when an assertion fails).
struct Unpause(Arc<AtomicBool>);

impl Drop for Unpause {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// S3: the log forcer has taken a tail and not yet written it (paused at
/// `storage::before_log_fsync`); appends meanwhile fill the 64 KiB segment. Before the
/// fix the append that sealed the segment fsynced it and marked the whole stream
/// durable, covering the forcer's unwritten tail: a second force of that tail was
/// answered at once, and a crash at that instant lost it.
#[test]
fn sealing_a_segment_never_acknowledges_the_forcers_unwritten_tail() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = no_checkpoints(dir.path());
    cfg.redo_segment = ByteSize(64 << 10);
    let node = start(&cfg);
    let c = Arc::new(client(&node.endpoint(), 1, 1));
    let pages = c.allocate_pages(2).unwrap();
    let (p, q) = (pages[0], pages[1]);
    c.lock_exclusive(p).unwrap();
    c.lock_exclusive(q).unwrap();
    let p0 = c.read_pages(&[p]).unwrap().remove(0);
    let (p1, rp1) = next_version(&p0);
    let images = [p0, p1.clone()];
    let lsn1 = c.append_redo(&[rp1]).unwrap();

    // Pause the forcer between taking the tail and writing it (its first pass only).
    let paused = Arc::new(AtomicBool::new(true));
    let (reached_tx, reached) = mpsc::channel();
    {
        let paused = paused.clone();
        let first = AtomicBool::new(true);
        let reached_tx = parking_lot::Mutex::new(reached_tx);
        fail::cfg_callback("storage::before_log_fsync", move || {
            if !first.swap(false, Ordering::SeqCst) {
                return;
            }
            let _ = reached_tx.lock().send(());
            while paused.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap();
    }
    let _unpause = Unpause(paused.clone());
    let first = {
        let c = c.clone();
        std::thread::spawn(move || c.force_log(lsn1))
    };
    reached
        .recv_timeout(Duration::from_secs(10))
        .expect("the forcer takes the tail");

    // Fill the segment past 64 KiB with full images of another page (no force).
    let mut img = c.read_pages(&[q]).unwrap().remove(0);
    let mut end = lsn1;
    for _ in 0..12 {
        let (next, _) = next_version(&img);
        let rec = common::storage::redo::RedoRecord::image(&next, img.version());
        end = c.append_redo(&[rec]).unwrap();
        img = next;
    }
    assert!(end.0 > 64 << 10);

    // Another force of the same tail: it must wait for the forcer's write.
    let (second_tx, second) = mpsc::channel();
    {
        let c = c.clone();
        std::thread::spawn(move || {
            let _ = second_tx.send(c.force_log(lsn1));
        });
    }
    if let Ok(answer) = second.recv_timeout(Duration::from_millis(1000)) {
        // Answered while the tail is still in the forcer's hands: a crash now keeps
        // only what reached the file.
        let got = crash_copy_and_read(&cfg, p);
        assert!(
            got.version() >= p1.version(),
            "force of LSN {lsn1} answered {answer:?} before its bytes were written: \
             after a crash page {p} is at version {} (acknowledged {})",
            got.version(),
            p1.version()
        );
        assert_same(&got, image_at(&images, got.version()));
        panic!("force of LSN {lsn1} answered ({answer:?}) while the forcer had not written it");
    }
    paused.store(false, Ordering::SeqCst);
    assert!(first.join().unwrap().unwrap() >= lsn1);
    assert!(second
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .unwrap()
        .ge(&lsn1));
    // The forcer seals the full segment once it has written it.
    assert!(c.force_log(end).unwrap() >= end);
    let segs = std::fs::read_dir(cfg.data_dir.join("redo").join("1"))
        .unwrap()
        .count();
    assert!(segs >= 2, "the full segment was sealed ({segs} segments)");
    let got = crash_copy_and_read(&cfg, p);
    assert_same(&got, &p1);
    drop(c);
    node.shutdown().unwrap();
}
