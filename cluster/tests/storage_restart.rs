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
