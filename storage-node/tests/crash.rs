//! Invariant 7 against the real binary: kill -9 at random points while clients write and
//! force pages, restart, and find every acknowledged change and no torn page.

mod support;

use common::ids::{PageId, PageVersion};
use common::storage::page::Page;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn spawn_node(dir: &std::path::Path, key: &std::path::Path, transport: &str) -> NodeProc {
    let listen = match transport {
        "shm" => dir.join("s.sock").display().to_string(),
        _ => "127.0.0.1:0".to_string(),
    };
    let _ = std::fs::remove_file(dir.join("s.sock"));
    NodeProc::spawn(&[
        "--transport",
        transport,
        "--listen",
        &listen,
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--memory",
        "256KiB",
        "--first-page",
        "0",
        "--page-count",
        "4096",
        "--key-file",
        &key.display().to_string(),
        "--checkpoint-interval-ms",
        "30",
        "--redo-segment",
        "64KiB",
    ])
}

#[test]
fn invariant_7_kill9_loop_keeps_every_acknowledged_change() {
    const ITERATIONS: u32 = 10;
    const PAGES_PER_WRITER: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let key = write_key_file(dir.path());
    // Last acknowledged (forced) version of every page.
    let acked: Arc<Mutex<HashMap<PageId, PageVersion>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut rng = rand::thread_rng();
    let mut total_changes = 0u64;
    for it in 0..ITERATIONS {
        let transport = if it % 2 == 0 { "tcp" } else { "shm" };
        let node = spawn_node(dir.path(), &key, transport);
        let ep = node.endpoint.clone();
        let c = client(&ep, 1, 100 + it);
        // Verify: every acknowledged change is there, every page verifies.
        let ids: Vec<PageId> = {
            let mut v: Vec<PageId> = acked.lock().keys().copied().collect();
            v.sort();
            v
        };
        if it == 0 {
            for p in c.allocate_pages(2 * PAGES_PER_WRITER as u32).unwrap() {
                acked.lock().insert(p, PageVersion(0));
            }
        } else {
            let got = c.read_pages(&ids).unwrap();
            let a = acked.lock();
            for (id, page) in ids.iter().zip(&got) {
                assert_eq!(page.id(), *id);
                check_content(page);
                assert!(
                    page.version() >= a[id],
                    "iteration {it}: page {id} at v{} lost acknowledged v{}",
                    page.version(),
                    a[id]
                );
            }
        }
        let ids: Vec<PageId> = {
            let mut v: Vec<PageId> = acked.lock().keys().copied().collect();
            v.sort();
            v
        };
        drop(c);
        // Write: two writers, each owning half of the pages, until the node dies.
        let mut writers = Vec::new();
        for w in 0..2u32 {
            let ep = ep.clone();
            let mine: Vec<PageId> = ids
                .iter()
                .copied()
                .skip(w as usize * PAGES_PER_WRITER)
                .take(PAGES_PER_WRITER)
                .collect();
            let acked = acked.clone();
            writers.push(std::thread::spawn(move || -> u64 {
                let Ok(c) = common::storage::StorageClient::connect(
                    &ep,
                    &opts(),
                    common::ids::NodeId(10 + w),
                    common::ids::Epoch(100 + it),
                ) else {
                    return 0;
                };
                let Ok(imgs) = c.read_pages(&mine) else {
                    return 0;
                };
                let mut cache: HashMap<PageId, Page> = mine.iter().copied().zip(imgs).collect();
                let mut rng = rand::thread_rng();
                let mut n = 0;
                for p in &mine {
                    if c.lock_exclusive(*p).is_err() {
                        return n;
                    }
                }
                loop {
                    let p = mine[rng.gen_range(0..mine.len())];
                    let (next, rec) = next_version(&cache[&p]);
                    let Ok(lsn) = c.append_redo(&[rec]) else {
                        return n;
                    };
                    if c.force_log(lsn).is_err() {
                        return n;
                    }
                    // Acknowledged: from here on the change must survive.
                    acked.lock().insert(p, next.version());
                    n += 1;
                    // Lazy holders write back only some of their changes.
                    if rng.gen_bool(0.6) && c.write_back(&next).is_err() {
                        return n;
                    }
                    cache.insert(p, next);
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..700)));
        node.kill9();
        for w in writers {
            total_changes += w.join().unwrap();
        }
    }
    assert!(
        total_changes > 100,
        "only {total_changes} changes were made"
    );
    // Finally a clean stop (SIGTERM flushes) and one last check.
    let node = spawn_node(dir.path(), &key, "tcp");
    let c = client(&node.endpoint, 1, 1000);
    let ids: Vec<PageId> = acked.lock().keys().copied().collect();
    let before = c.read_pages(&ids).unwrap();
    drop(c);
    assert!(node.sigterm().success(), "SIGTERM must exit cleanly");
    let node = spawn_node(dir.path(), &key, "tcp");
    let c = client(&node.endpoint, 1, 1001);
    let after = c.read_pages(&ids).unwrap();
    assert_eq!(before, after);
    let a = acked.lock();
    for (id, p) in ids.iter().zip(&after) {
        check_content(p);
        assert!(p.version() >= a[id]);
    }
}
