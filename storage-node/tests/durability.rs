//! WAL rule (invariant 3), torn pages rebuilt from the log (invariant 7), larger than
//! memory, log truncation, group commit.

mod support;

use common::ids::{Lsn, PageId, PageVersion};
use common::storage::page::Page;
use common::storage::StorageError;
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage_node::page_file::{target_slot, PageFile};
use support::*;

#[test]
fn invariant_3_write_back_needs_durable_redo() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&config(dir.path(), 64));
    let c = client(&node.endpoint(), 1, 1);
    let p = c.allocate_pages(1).unwrap()[0];
    let cur = c.read_pages(&[p]).unwrap().remove(0);
    let (next, rec) = next_version(&cur);
    // Without the lock nothing is accepted.
    assert!(matches!(
        c.append_redo(std::slice::from_ref(&rec)),
        Err(StorageError::NotHolder(_))
    ));
    assert!(matches!(
        c.write_back(&next),
        Err(StorageError::NotHolder(_))
    ));
    c.lock_exclusive(p).unwrap();
    // Redo not yet appended, then appended but not forced: the image is refused.
    assert!(matches!(
        c.write_back(&next),
        Err(StorageError::NotDurable { .. })
    ));
    let lsn = c.append_redo(std::slice::from_ref(&rec)).unwrap();
    // The same record again is a resend (its first answer was lost): skipped, nothing
    // appended. A different record from the same version does not continue the chain.
    assert_eq!(c.append_redo(std::slice::from_ref(&rec)).unwrap(), lsn);
    let mut other = rec.clone();
    if let common::storage::redo::RedoBody::Diffs(ranges) = &mut other.body {
        ranges.push((4000, vec![9]));
    } else {
        other.body = common::storage::redo::RedoBody::Diffs(vec![(4000, vec![9])]);
    }
    assert!(matches!(
        c.append_redo(&[other]),
        Err(StorageError::VersionConflict { .. })
    ));
    // Nothing forced yet (the group-commit thread only runs on request).
    let res = c.write_back(&next);
    if !matches!(res, Err(StorageError::NotDurable { .. })) {
        panic!("write_back before force: {res:?}");
    }
    assert!(c.force_log(lsn).unwrap() >= lsn);
    c.write_back(&next).unwrap();
    // The same version again (an answer lost on the way) is a no-op; an older one is
    // refused.
    c.write_back(&next).unwrap();
    assert!(matches!(
        c.write_back(&cur),
        Err(StorageError::Stale { .. })
    ));
    let mut corrupt = next.clone();
    corrupt.as_bytes_mut()[5000] ^= 1;
    assert!(matches!(
        c.write_back(&corrupt),
        Err(StorageError::Corrupt(_))
    ));
    assert!(matches!(
        c.read_pages(&[PageId(5)]),
        Err(StorageError::NotAllocated(_))
    ));
    assert_eq!(c.read_pages(&[p]).unwrap()[0], next);
    drop(c);
    node.shutdown().unwrap();
}

#[test]
fn invariant_7_torn_page_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 64);
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 1);
    let pages = c.allocate_pages(4).unwrap();
    let mut imgs = c.read_pages(&pages).unwrap();
    for (p, img) in pages.iter().zip(imgs.iter_mut()) {
        c.lock_exclusive(*p).unwrap();
        *img = change(&c, img);
    }
    drop(c);
    node.shutdown().unwrap(); // v1 of every page is checkpointed.

    // Second run: no checkpoints; change every page again, then crash.
    cfg.checkpoint_interval_ms = 3_600_000;
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 2);
    for (p, img) in pages.iter().zip(imgs.iter_mut()) {
        c.lock_exclusive(*p).unwrap();
        *img = change(&c, img);
    }
    drop(c);
    drop(node); // crash: nothing flushed beyond the forced redo

    // The checkpoint of v2 was torn mid-write on pages 0 and 2: half an image in the
    // slot it would have gone to.
    let pf = PageFile::open(&cfg.data_dir.join("pages")).unwrap();
    for i in [0u64, 2] {
        let slots = pf.read_slots(i, pages[i as usize]).unwrap();
        let disk = [slots[0].version(), slots[1].version()];
        let s = target_slot(disk);
        pf.write_raw(i, s, 0, &imgs[i as usize].as_bytes()[..4096])
            .unwrap();
        let slots = pf.read_slots(i, pages[i as usize]).unwrap();
        assert!(matches!(slots[s], storage_node::page_file::Slot::Torn(_)));
    }
    pf.sync().unwrap();
    drop(pf);

    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 3);
    let got = c.read_pages(&pages).unwrap();
    for (g, want) in got.iter().zip(&imgs) {
        // Replay stamps the record's LSN into the header; body and version match.
        assert_eq!((g.id(), g.version()), (want.id(), want.version()));
        assert_eq!(g.body(), want.body());
        check_content(g);
    }
    drop(c);
    node.shutdown().unwrap();
}

#[test]
fn larger_than_memory_n_frames_serve_10n_pages() {
    const FRAMES: u32 = 16;
    const PAGES: u32 = 10 * FRAMES;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), FRAMES);
    cfg.checkpoint_interval_ms = 20;
    let node = start(&cfg);
    let ep = node.endpoint();
    let c = client(&ep, 1, 1);
    let pages = c.allocate_pages(PAGES).unwrap();
    // Write every page twice (forces fault-ins, checkpoints and frame reuse).
    let mut want: Vec<Page> = Vec::new();
    for p in &pages {
        c.lock_exclusive(*p).unwrap();
        let cur = c.read_pages(&[*p]).unwrap().remove(0);
        let v1 = change(&c, &cur);
        want.push(change(&c, &v1));
        c.unlock(*p).unwrap();
    }
    // Concurrent one-sided readers with stale frame hints while frames are reused.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..2u32 {
        let ep = ep.clone();
        let pages = pages.clone();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let c = client(&ep, 20 + r, 1);
            let mut rng = rand::thread_rng();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<PageId> = (0..8)
                    .map(|_| pages[rng.gen_range(0..pages.len())])
                    .collect();
                for (id, pg) in batch.iter().zip(c.read_pages(&batch).unwrap()) {
                    assert_eq!(pg.id(), *id);
                    assert_eq!(pg.version(), PageVersion(2));
                    check_content(&pg);
                    n += 1;
                }
            }
            n
        }));
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let got = c.read_pages(&pages).unwrap();
        assert_eq!(got, want);
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let m = c.metrics().unwrap();
    let evictions: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("storage_evictions "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(evictions > u64::from(PAGES), "{m}");
    drop(c);
    node.shutdown().unwrap();
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 2);
    assert_eq!(c.read_pages(&pages).unwrap(), want);
    drop(c);
    node.shutdown().unwrap();
}

#[test]
fn log_is_truncated_after_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 64);
    cfg.redo_segment = storage_node::config::ByteSize(64 << 10);
    cfg.checkpoint_interval_ms = 20;
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 1);
    let pages = c.allocate_pages(4).unwrap();
    let mut imgs = c.read_pages(&pages).unwrap();
    for p in &pages {
        c.lock_exclusive(*p).unwrap();
    }
    let seg_dir = cfg.data_dir.join("redo").join("1");
    let mut max_segments = 0;
    for round in 0..60 {
        for img in imgs.iter_mut() {
            *img = change(&c, img);
        }
        let n = std::fs::read_dir(&seg_dir).unwrap().count();
        max_segments = max_segments.max(n);
        if round % 10 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    // One more record so the stream seals nothing new; checkpoint has run meanwhile.
    let n = std::fs::read_dir(&seg_dir).unwrap().count();
    // 240 changes of ~8 KiB are ~2 MiB of redo = ~30 segments without truncation.
    assert!(n <= 3, "{n} segments remain (max seen {max_segments})");
    drop(c);
    node.shutdown().unwrap();
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 2);
    assert_eq!(c.read_pages(&pages).unwrap(), imgs);
    drop(c);
    node.shutdown().unwrap();
}

#[test]
fn group_commit_serves_many_forces_with_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&config(dir.path(), 64));
    let ep = node.endpoint();
    let c = Arc::new(client(&ep, 1, 1));
    let pages = c.allocate_pages(16).unwrap();
    let mut threads = Vec::new();
    for p in &pages {
        let c = c.clone();
        let p = *p;
        threads.push(std::thread::spawn(move || {
            c.lock_exclusive(p).unwrap();
            let mut img = Page::empty(p);
            for _ in 0..30 {
                let (next, rec) = next_version(&img);
                let lsn = c.append_redo(&[rec]).unwrap();
                assert!(c.force_log(lsn).unwrap() >= lsn);
                img = next;
            }
            c.write_back(&img).unwrap();
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let m = c.metrics().unwrap();
    let get = |k: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("storage_{k} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(get("force_requests"), 16 * 30);
    assert!(
        get("log_fsyncs") * 2 < get("force_requests"),
        "fsyncs {} for {} forces",
        get("log_fsyncs"),
        get("force_requests")
    );
    assert!(c.force_log(Lsn(0)).unwrap() > Lsn(0));
    drop(c);
    node.shutdown().unwrap();
}

/// Start-up takes the slot versions from the slot map: after a clean shutdown it reads
/// no page; with entries torn it reads just those pages; with the slot map gone it scans
/// the page file and writes the map again. Every page reads back the same each time.
#[test]
fn start_up_reads_only_pages_with_redo_or_no_slot_map_entry() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 256);
    let node = start(&cfg);
    let c = client(&node.endpoint(), 1, 1);
    let pages = c.allocate_pages(40).unwrap();
    let mut imgs = c.read_pages(&pages).unwrap();
    for (p, img) in pages.iter().zip(imgs.iter_mut()) {
        c.lock_exclusive(*p).unwrap();
        *img = change(&c, img);
        *img = change(&c, img);
    }
    drop(c);
    node.shutdown().unwrap();
    let same = |node: &storage_node::StorageNode, epoch, imgs: &[Page]| {
        let c = client(&node.endpoint(), 1, epoch);
        for (g, want) in c.read_pages(&pages).unwrap().iter().zip(imgs) {
            assert_eq!(
                (g.id(), g.version(), g.body()),
                (want.id(), want.version(), want.body())
            );
        }
        node.store.metrics.recovery_pages_read.load(Relaxed)
    };

    let node = start(&cfg);
    assert_eq!(
        same(&node, 2, &imgs),
        0,
        "a clean restart reads no page at start-up"
    );
    node.shutdown().unwrap();

    // Three entries torn (one byte each): exactly those pages are read.
    let slots = cfg.data_dir.join("slots");
    let mut b = std::fs::read(&slots).unwrap();
    for i in [3usize, 17, 30] {
        b[i * storage_node::slot_map::ENTRY + 5] ^= 0x40;
    }
    std::fs::write(&slots, &b).unwrap();
    let node = start(&cfg);
    assert_eq!(same(&node, 3, &imgs), 3);
    node.shutdown().unwrap();
    let node = start(&cfg);
    assert_eq!(
        same(&node, 4, &imgs),
        0,
        "the torn entries were written again"
    );
    node.shutdown().unwrap();

    // No slot map (a data directory from before it): one scan, then none.
    std::fs::remove_file(&slots).unwrap();
    let node = start(&cfg);
    assert_eq!(same(&node, 5, &imgs), 40);
    node.shutdown().unwrap();

    // A crash with redo in the log: the pages changed since the checkpoint are read.
    cfg.checkpoint_interval_ms = 3_600_000;
    let node = start(&cfg);
    assert_eq!(same(&node, 6, &imgs), 0);
    let c = client(&node.endpoint(), 1, 7);
    for i in [1usize, 2] {
        c.lock_exclusive(pages[i]).unwrap();
        imgs[i] = change(&c, &imgs[i]);
    }
    drop(c);
    drop(node);
    let node = start(&cfg);
    assert_eq!(same(&node, 8, &imgs), 2);
    node.shutdown().unwrap();
}
