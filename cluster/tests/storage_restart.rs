//! A storage node's restart ends every X lock it had granted (its lock table starts
//! empty). A compute node that has not rejoined yet must not go on trusting its cached
//! images of that node's pages as the newest (invariant 9), or it reads a state older
//! than a commit that preceded its snapshot (invariant 2).

use cluster::{ClusterOptions, EmbeddedCluster};
use common::fabric::Transport;
use compute_node::node::ComputeNode;
use compute_node::txn::{Table, TxnError};
use std::time::{Duration, Instant};

fn cluster(transport: Transport) -> EmbeddedCluster {
    common::service::init_tracing("warn");
    EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 2,
        storage_nodes: 1,
        transport,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 14,
        buffer_frames: 1024,
        ..ClusterOptions::default()
    })
    .expect("cluster starts")
}

fn put(node: &ComputeNode, t: &Table, key: &[u8], value: &[u8]) -> Result<(), TxnError> {
    let mut tx = node.begin()?;
    tx.put(t, key, value)?;
    tx.commit().map(|_| ())
}

/// Rejoins `node` and writes `value`, retrying until the cluster lets it.
fn rejoin_and_put(node: &ComputeNode, t: &Table, key: &[u8], value: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = node
            .rejoin("the storage node restarted")
            .map_err(|e| e.to_string())
            .and_then(|()| put(node, t, key, value).map_err(|e| e.to_string()));
        match r {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "not yet");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!(
                "node {} never wrote after the restart: {e}",
                node.engine().pager().node.0
            ),
        }
    }
}

fn stale_lock_is_not_trusted(transport: Transport) {
    let mut c = cluster(transport);
    let t = c.nodes[0].create_table("t").unwrap();
    // Node 1 writes the row: it now holds the leaf's X lock lazily, its image LOCKED.
    put(&c.nodes[0], &t, b"k", b"before").unwrap();
    let mut tx = c.nodes[0].begin().unwrap();
    assert_eq!(tx.get(&t, b"k").unwrap().as_deref(), Some(&b"before"[..]));
    tx.commit().unwrap();

    c.restart_storage_node(0).unwrap();
    // Node 2 rejoins, takes the leaf's lock from the fresh lock table and commits.
    rejoin_and_put(&c.nodes[1], &t, b"k", b"after");

    // Node 1 has not rejoined. A transaction it begins now (after node 2's commit) must
    // read "after", or fail; "before" would be a stale read.
    let node = &c.nodes[0];
    match node.begin() {
        Err(e) => tracing::info!(error = %e, "begin refused, as it may be"),
        Ok(mut tx) => match tx.get(&t, b"k") {
            Err(e) => tracing::info!(error = %e, "read refused, as it may be"),
            Ok(v) => {
                let v = v.expect("the row exists");
                let committed = tx.commit();
                assert!(
                    v == b"after" || committed.is_err(),
                    "node 1 read {:?} after node 2 committed \"after\", and its transaction \
                     committed ({committed:?}): a stale read",
                    String::from_utf8_lossy(&v)
                );
            }
        },
    }
    // Once node 1 rejoins it reads the newest value.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = node
            .rejoin("the storage node restarted")
            .map_err(|e| e.to_string());
        let r = r.and_then(|()| {
            let mut tx = node.begin().map_err(|e| e.to_string())?;
            let v = tx.get(&t, b"k").map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            Ok(v)
        });
        match r {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some(&b"after"[..]));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "not yet");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("node 1 never read after rejoining: {e}"),
        }
    }
    c.shutdown().unwrap();
}

#[test]
fn a_node_that_has_not_rejoined_does_not_trust_its_old_locks_shm() {
    stale_lock_is_not_trusted(Transport::Shm);
}

#[test]
fn a_node_that_has_not_rejoined_does_not_trust_its_old_locks_tcp() {
    stale_lock_is_not_trusted(Transport::Tcp);
}

// ---- Reclaim: a restart keeps the compute nodes' pools ----

fn get(node: &ComputeNode, t: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
    let mut tx = node.begin()?;
    let v = tx.get(t, key)?;
    tx.commit()?;
    Ok(v)
}

/// Runs `f` until it succeeds (the storage node is coming back), at most 20 s.
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, TxnError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, what, "not yet");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Rows of 400 bytes: 300 of them fill a few dozen leaves.
fn val(tag: u8) -> Vec<u8> {
    vec![b'a' + tag; 400]
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

fn pool_kept(transport: Transport, crash: bool) {
    let mut c = cluster(transport);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let t = a.create_table("t").unwrap();
    // Node 1 writes 300 rows (several leaves, all X-held lazily by it, dirty); node 2
    // reads the first 100 (it caches their pages; the leaves it asked for are
    // released by node 1), then node 1 changes every row again.
    for i in 0..300 {
        put(a, &t, &key(i), &val(1)).unwrap();
    }
    for i in 0..100 {
        assert_eq!(get(b, &t, &key(i)).unwrap().as_deref(), Some(&val(1)[..]));
    }
    for i in 0..300 {
        put(a, &t, &key(i), &val(2)).unwrap();
    }
    let held = a.engine().pager().held_locks();
    let cached = [a, b].map(|n| n.engine().pager().pool().snapshot_versions().len());
    assert!(held > 0);

    if crash {
        c.crash_storage_node(0).unwrap();
    } else {
        c.restart_storage_node(0).unwrap();
    }
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    // Both nodes read every row; node 2 writes one node 1 holds (a revocation after
    // the reclaim), node 1 reads it back.
    for i in (0..300).step_by(7) {
        let v = retry("read after the restart", || get(a, &t, &key(i)));
        assert_eq!(v.as_deref(), Some(&val(2)[..]), "row {i} on node 1");
        let v = retry("read after the restart", || get(b, &t, &key(i)));
        assert_eq!(v.as_deref(), Some(&val(2)[..]), "row {i} on node 2");
    }
    retry("write after the restart", || put(b, &t, &key(250), &val(3)));
    assert_eq!(
        retry("read node 2's write", || get(a, &t, &key(250))).as_deref(),
        Some(&val(3)[..])
    );
    retry("write after the restart", || put(a, &t, &key(5), &val(4)));
    assert_eq!(
        retry("read node 1's write", || get(b, &t, &key(5))).as_deref(),
        Some(&val(4)[..])
    );

    // Nobody rejoined; node 1 took its locks back; the pools are still there.
    for (n, node) in [a, b].iter().enumerate() {
        assert_eq!(node.rejoins(), 0, "node {} rejoined", n + 1);
        assert!(node.broken().is_none());
        let after = node.engine().pager().pool().snapshot_versions().len();
        assert!(
            after * 10 >= cached[n] * 9,
            "node {}: {} pages cached before the restart, {after} after",
            n + 1,
            cached[n]
        );
    }
    let engine = a.engine();
    let reclaimed = engine
        .pager()
        .stats
        .locks_reclaimed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        reclaimed as usize >= held - 1,
        "node 1 held {held} locks, reclaimed {reclaimed}"
    );
    let m = &c.storage(0).store.metrics;
    let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&m.reclaims), 2, "both compute nodes reclaimed");
    assert_eq!(load(&m.reclaims_refused), 0);
    assert_eq!(load(&m.locks_reclaimed), reclaimed);
    println!("pool kept: node 1 held {held} locks, reclaimed {reclaimed}; pages cached before {cached:?}");
    c.shutdown().unwrap();
}

#[test]
fn a_clean_storage_restart_keeps_the_pools_shm() {
    pool_kept(Transport::Shm, false);
}

#[test]
fn a_storage_crash_keeps_the_pools_shm() {
    pool_kept(Transport::Shm, true);
}

#[test]
fn a_storage_crash_keeps_the_pools_tcp() {
    pool_kept(Transport::Tcp, true);
}

/// With no grace period the restarted node refuses every reclaim: the compute nodes
/// report themselves broken and rejoin with empty pools (the behaviour before reclaim).
#[test]
fn without_a_grace_period_the_nodes_rejoin() {
    common::service::init_tracing("warn");
    let mut storage = storage_node::config::StorageConfig {
        reclaim_grace_ms: 0,
        ..Default::default()
    };
    storage.checkpoint_interval_ms = 500;
    let mut c = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 1,
        storage_nodes: 1,
        transport: Transport::Shm,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 14,
        buffer_frames: 1024,
        storage,
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let t = c.nodes[0].create_table("t").unwrap();
    put(&c.nodes[0], &t, b"k", b"v").unwrap();
    c.crash_storage_node(0).unwrap();
    let node = &c.nodes[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.broken().is_none() {
        assert!(Instant::now() < deadline, "the node never noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        node.broken().unwrap().contains("did not give"),
        "{:?}",
        node.broken()
    );
    retry("rejoin", || {
        node.rejoin("test")
            .map_err(|e| TxnError::Storage(e.to_string()))
    });
    assert_eq!(
        retry("read", || get(node, &t, b"k")).as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(node.rejoins(), 1);
    c.shutdown().unwrap();
}
