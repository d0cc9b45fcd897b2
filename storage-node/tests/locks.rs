//! Global page locks: exclusion under contention (invariant 1), dead-node release and
//! fencing (invariant 6), lazy-holder revocation.

mod support;

use common::ids::{Epoch, NodeId, PageVersion};
use common::storage::msg::RevocationKind;
use common::storage::{StorageClient, StorageError};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

#[test]
fn invariant_1_one_exclusive_holder_under_contention() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&config(dir.path(), 256));
    let ep = node.endpoint();
    let setup = client(&ep, 1, 1);
    let pages = setup.allocate_pages(2).unwrap();
    let inside = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU64::new(0));
    const ROUNDS: u64 = 150;
    let mut threads = Vec::new();
    // Two nodes, two threads each (each thread its own client identity).
    for n in 0..4u32 {
        let ep = ep.clone();
        let inside = inside.clone();
        let done = done.clone();
        let pages = pages.clone();
        threads.push(std::thread::spawn(move || {
            let c = client(&ep, 10 + n, 1);
            for i in 0..ROUNDS {
                let page = pages[(i % 2) as usize];
                c.lock_exclusive(page).unwrap();
                if i % 2 == 0 {
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders of one page"
                    );
                }
                // The directory shows us as holder while we hold it.
                let e = c.read_dir_entries(&[page]).unwrap()[0];
                assert_eq!(e.holder.map(|h| h.node), Some(NodeId(10 + n)));
                // A read-modify-write that would lose updates without exclusion.
                let cur = c.read_pages(&[page]).unwrap().remove(0);
                let next = change(&c, &cur);
                check_content(&next);
                if i % 2 == 0 {
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
                c.unlock(page).unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 4 * ROUNDS);
    let got = setup.read_pages(&pages).unwrap();
    // Every change was applied exactly once: the versions count them.
    assert_eq!(got[0].version(), PageVersion(4 * ROUNDS / 2));
    assert_eq!(got[1].version(), PageVersion(4 * ROUNDS / 2));
    let e = setup.read_dir_entries(&pages).unwrap();
    assert!(e.iter().all(|e| e.holder.is_none()));
    node.shutdown().unwrap();
}

#[test]
fn invariant_6_release_locks_of_fences_and_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64);
    let node = start(&cfg);
    let ep = node.endpoint();
    let a = client(&ep, 1, 7);
    let pages = a.allocate_pages(3).unwrap();
    // A changes pages 0 and 1 twice, forces the redo but writes back only the first
    // change of page 0; page 2 it locks without changing.
    let mut imgs = a.read_pages(&pages).unwrap();
    for p in &pages {
        a.lock_exclusive(*p).unwrap();
    }
    imgs[0] = change(&a, &imgs[0]);
    let (v2, r2) = next_version(&imgs[0]);
    let (w1, s1) = next_version(&imgs[1]);
    let (w2, s2) = next_version(&w1);
    let lsn = a.append_redo(&[r2, s1, s2]).unwrap();
    a.force_log(lsn).unwrap();
    // B waits for page 0.
    let b = Arc::new(client(&ep, 2, 1));
    let b2 = b.clone();
    let p0 = pages[0];
    let waiter = std::thread::spawn(move || b2.lock_exclusive(p0));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished(), "B got a lock A holds");
    // The GTM declares A dead.
    let gtm = StorageClient::connect_admin(&ep, &opts()).unwrap();
    gtm.release_locks_of(NodeId(1), Epoch(7)).unwrap();
    waiter.join().unwrap().unwrap();
    // Rebuilt from the last written-back image plus A's durable redo.
    let got = b.read_pages(&pages).unwrap();
    assert_same(&got[0], &v2);
    assert_same(&got[1], &w2);
    assert_eq!(got[2].version(), PageVersion(0));
    let e = b.read_dir_entries(&pages).unwrap();
    assert_eq!(e[0].holder.map(|h| h.node), Some(NodeId(2)));
    assert!(e[1].holder.is_none() && e[2].holder.is_none());
    // B continues the chain.
    let after = change(&b, &got[0]);
    assert_eq!(after.version(), PageVersion(3));
    // Every later request of A is refused, and so is a reconnect with that epoch.
    assert!(matches!(
        a.lock_exclusive(pages[1]),
        Err(StorageError::Fenced { .. })
    ));
    assert!(matches!(
        a.write_back(&v2),
        Err(StorageError::Fenced { .. })
    ));
    assert!(matches!(
        StorageClient::connect(&ep, &opts(), NodeId(1), Epoch(7)),
        Err(StorageError::Fenced { .. })
    ));
    // A's next incarnation works.
    let a8 = client(&ep, 1, 8);
    a8.lock_exclusive(pages[1]).unwrap();
    a8.unlock(pages[1]).unwrap();
    b.unlock(pages[0]).unwrap();
    drop((a, a8, b, gtm));
    node.shutdown().unwrap();
    // The fence survives a restart.
    let node = start(&cfg);
    assert!(matches!(
        StorageClient::connect(&node.endpoint(), &opts(), NodeId(1), Epoch(7)),
        Err(StorageError::Fenced { .. })
    ));
    let c = client(&node.endpoint(), 3, 1);
    assert_eq!(c.read_pages(&pages).unwrap()[0].version(), PageVersion(3));
    node.shutdown().unwrap();
}

/// The GTM sends a release again when it did not see every storage node acknowledge it
/// (a restarted GTM does every release it still owes): a repeated release, or one of an
/// older epoch, is a no-op. The fence stays, and the node's next epoch keeps its locks,
/// its pages and its durable redo.
#[test]
fn invariant_6_a_repeated_release_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64);
    let node = start(&cfg);
    let ep = node.endpoint();
    let a7 = client(&ep, 1, 7);
    let pages = a7.allocate_pages(2).unwrap();
    let imgs = a7.read_pages(&pages).unwrap();
    a7.lock_exclusive(pages[0]).unwrap();
    let (v1, r1) = next_version(&imgs[0]);
    let lsn = a7.append_redo(&[r1]).unwrap();
    a7.force_log(lsn).unwrap();
    let gtm = StorageClient::connect_admin(&ep, &opts()).unwrap();
    gtm.release_locks_of(NodeId(1), Epoch(7)).unwrap();

    // Epoch 8 of the same node takes both pages: page 0 it changes in its durable redo
    // only, page 1 it also writes back.
    let a8 = client(&ep, 1, 8);
    a8.lock_exclusive(pages[0]).unwrap();
    a8.lock_exclusive(pages[1]).unwrap();
    let cur = a8.read_pages(&pages).unwrap();
    assert_same(&cur[0], &v1);
    let (v2, r2) = next_version(&cur[0]);
    let lsn = a8.append_redo(&[r2]).unwrap();
    a8.force_log(lsn).unwrap();
    let w1 = change(&a8, &cur[1]);
    let before = a8.read_pages(&pages).unwrap();

    for epoch in [7, 7, 6] {
        gtm.release_locks_of(NodeId(1), Epoch(epoch)).unwrap();
    }
    let holders: Vec<_> = a8
        .read_dir_entries(&pages)
        .unwrap()
        .iter()
        .map(|e| e.holder.map(|h| (h.node, h.epoch)))
        .collect();
    assert_eq!(holders, vec![Some((NodeId(1), Epoch(8))); 2]);
    let after = a8.read_pages(&pages).unwrap();
    assert_same(&after[0], &before[0]);
    assert_same(&after[1], &w1);
    // Epoch 8 goes on; epoch 7 stays fenced.
    a8.write_back(&v2).unwrap();
    let w2 = change(&a8, &w1);
    a8.unlock(pages[0]).unwrap();
    a8.unlock(pages[1]).unwrap();
    assert!(matches!(
        StorageClient::connect(&ep, &opts(), NodeId(1), Epoch(7)),
        Err(StorageError::Fenced { .. })
    ));
    let c = client(&ep, 2, 1);
    let got = c.read_pages(&pages).unwrap();
    assert_same(&got[0], &v2);
    assert_same(&got[1], &w2);
    drop((a7, a8, c, gtm));
    node.shutdown().unwrap();
    assert_eq!(
        storage_node::recovery::read_fences(&common::durable::StdFs, &cfg.data_dir).unwrap(),
        [(NodeId(1), Epoch(7))].into_iter().collect()
    );
}

#[test]
fn lazy_holder_is_asked_to_write_back_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&config(dir.path(), 64));
    let ep = node.endpoint();
    let a = Arc::new(client(&ep, 1, 1));
    let page = a.allocate_pages(1).unwrap()[0];
    a.lock_exclusive(page).unwrap();
    let cur = a.read_pages(&[page]).unwrap().remove(0);
    // A changes the page and logs it, but keeps the newest image to itself (lazy).
    let (next, rec) = next_version(&cur);
    let lsn = a.append_redo(&[rec]).unwrap();
    a.force_log(lsn).unwrap();
    let dirty = Arc::new(parking_lot::Mutex::new(Some(next.clone())));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    {
        let dirty = dirty.clone();
        let seen = seen.clone();
        a.on_revocation(move |c, rev| {
            seen.lock().push(rev.kind);
            if let Some(img) = dirty.lock().take() {
                c.write_back(&img).unwrap();
            }
            if rev.kind == RevocationKind::WriteBackAndRelease {
                c.unlock(rev.page).unwrap();
            }
        })
        .unwrap();
    }
    // A reader asks for the newest image: A writes back and keeps the lock.
    let r = client(&ep, 3, 1);
    r.request_write_back(page).unwrap();
    assert_eq!(r.read_pages(&[page]).unwrap()[0], next);
    assert_eq!(
        r.read_dir_entries(&[page]).unwrap()[0]
            .holder
            .map(|h| h.node),
        Some(NodeId(1))
    );
    // A writer asks for the lock: A releases.
    let b = client(&ep, 2, 1);
    b.lock_exclusive(page).unwrap();
    assert_eq!(
        *seen.lock(),
        vec![
            RevocationKind::WriteBackAndKeep,
            RevocationKind::WriteBackAndRelease
        ]
    );
    let got = b.read_pages(&[page]).unwrap().remove(0);
    assert_eq!(got, next);
    change(&b, &got);
    b.unlock(page).unwrap();
    drop((a, b, r));
    node.shutdown().unwrap();
}

/// Every grant is announced in the change-notice ring before its requester hears of
/// it, in grant order; a reader that falls more than the ring's slots behind is told
/// it was lapped.
#[test]
fn grants_are_announced_in_the_notice_ring() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 256);
    cfg.notice_slots = 16;
    let node = start(&cfg);
    let ep = node.endpoint();
    let a = client(&ep, 1, 1);
    let b = client(&ep, 2, 1);
    let pages = a.allocate_pages(4).unwrap();
    let start = a.poll_notices(0).unwrap().head;
    a.lock_exclusive(pages[0]).unwrap();
    // Re-locking a held page grants nothing new.
    a.lock_exclusive(pages[0]).unwrap();
    b.lock_exclusive(pages[1]).unwrap();
    // A hand-over is a grant too: B waits for page 0, A releases it.
    let waiter = {
        let b = client(&ep, 2, 1);
        let p = pages[0];
        std::thread::spawn(move || b.lock_exclusive(p).unwrap())
    };
    while a.poll_notices(start).unwrap().head < start + 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    a.unlock(pages[0]).unwrap();
    waiter.join().unwrap();
    let poll = a.poll_notices(start).unwrap();
    assert_eq!(poll.head, start + 3);
    assert_eq!(poll.pages, Some(vec![pages[0], pages[1], pages[0]]));
    // Unlocks announce nothing; 20 more grants lap a reader still at `start`.
    for i in 0..20 {
        let p = pages[2 + i % 2];
        a.lock_exclusive(p).unwrap();
        a.unlock(p).unwrap();
    }
    let lapped = a.poll_notices(start).unwrap();
    assert_eq!(lapped.head, start + 23);
    assert_eq!(lapped.pages, None, "more notices than slots since `start`");
    // Caught up: the last 16 are all there, across the ring's wrap.
    let recent = a.poll_notices(lapped.head - 16).unwrap();
    assert_eq!(recent.pages.map(|p| p.len()), Some(16));
}
