//! Multi-master behaviour: several compute nodes (each with its own buffer pool, page
//! locks and coherence) writing the same rows and the same trees at once.

use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::node::ComputeNode;
use compute_node::txn::{Table, Txn, TxnError};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn cluster(nodes: usize) -> Arc<EmbeddedCluster> {
    common::service::init_tracing("warn");
    Arc::new(
        EmbeddedCluster::start(ClusterOptions {
            compute_nodes: nodes,
            storage_memory: 64 << 20,
            pages_per_storage_node: 1 << 16,
            buffer_frames: 4096,
            ..ClusterOptions::default()
        })
        .expect("cluster starts"),
    )
}

/// Runs `body` in a fresh transaction until it commits (retrying retryable conflicts).
fn retry<T>(node: &ComputeNode, mut body: impl FnMut(&mut Txn) -> Result<T, TxnError>) -> T {
    for attempt in 0..10_000 {
        let mut tx = node.begin().expect("begin");
        match body(&mut tx).and_then(|v| tx.commit().map(|_| v)) {
            Ok(v) => return v,
            Err(e) if e.is_retryable() => {
                if attempt % 8 == 7 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            Err(e) => panic!("non-retryable error: {e}"),
        }
    }
    panic!("transaction never committed");
}

fn get_u64(tx: &mut Txn, t: &Table, key: &[u8]) -> Result<u64, TxnError> {
    Ok(tx
        .get(t, key)?
        .map(|v| u64::from_le_bytes(v.try_into().expect("8 bytes")))
        .unwrap_or(0))
}

#[test]
fn concurrent_increments_of_the_same_counters_lose_no_update() {
    let c = cluster(3);
    let t = c.nodes[0].create_table("counters").unwrap();
    let per_thread = 60u64;
    let threads: Vec<_> = (0..6usize)
        .map(|i| {
            let c = c.clone();
            let t = t.clone();
            std::thread::spawn(move || {
                let node = &c.nodes[i % 3];
                for j in 0..per_thread {
                    let key = format!("c{}", (i as u64 + j) % 4);
                    retry(node, |tx| {
                        let v = get_u64(tx, &t, key.as_bytes())?;
                        tx.put(&t, key.as_bytes(), &(v + 1).to_le_bytes())
                    });
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    for node in &c.nodes {
        let total: u64 = retry(node, |tx| {
            (0..4)
                .map(|k| get_u64(tx, &t, format!("c{k}").as_bytes()))
                .sum()
        });
        assert_eq!(total, 6 * per_thread, "every node sees every increment");
    }
}

#[test]
fn transfers_keep_the_total_while_snapshot_readers_see_it_constant() {
    let c = cluster(3);
    let t = c.nodes[0].create_table("accounts").unwrap();
    let accounts = 20u64;
    retry(&c.nodes[0], |tx| {
        for a in 0..accounts {
            tx.put(&t, format!("a{a:03}").as_bytes(), &100u64.to_le_bytes())?;
        }
        Ok(())
    });
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3usize)
        .map(|i| {
            let (c, t, done) = (c.clone(), t.clone(), done.clone());
            std::thread::spawn(move || {
                let node = &c.nodes[i];
                for j in 0..50u64 {
                    let from = format!("a{:03}", (i as u64 * 7 + j * 3) % accounts);
                    let to = format!("a{:03}", (i as u64 * 5 + j * 11 + 1) % accounts);
                    if from == to {
                        continue;
                    }
                    retry(node, |tx| {
                        let a = get_u64(tx, &t, from.as_bytes())?;
                        let b = get_u64(tx, &t, to.as_bytes())?;
                        let amount = (j % 7).min(a);
                        tx.put(&t, from.as_bytes(), &(a - amount).to_le_bytes())?;
                        tx.put(&t, to.as_bytes(), &(b + amount).to_le_bytes())
                    });
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let readers: Vec<_> = (0..3usize)
        .map(|i| {
            let (c, t, done) = (c.clone(), t.clone(), done.clone());
            std::thread::spawn(move || {
                let node = &c.nodes[i];
                let mut checks = 0;
                while done.load(Ordering::SeqCst) < 3 || checks < 5 {
                    let mut tx = node.begin().unwrap();
                    let rows = tx
                        .scan(&t, (Bound::Unbounded, Bound::Unbounded), false, None)
                        .unwrap();
                    let total: u64 = rows
                        .iter()
                        .map(|(_, v)| u64::from_le_bytes(v.clone().try_into().unwrap()))
                        .sum();
                    assert_eq!(rows.len() as u64, accounts);
                    assert_eq!(total, accounts * 100, "a snapshot saw a half-done transfer");
                    tx.commit().unwrap();
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for r in readers {
        assert!(r.join().unwrap() >= 5);
    }
}

#[test]
fn concurrent_inserts_splitting_the_same_tree_lose_no_key() {
    let c = cluster(3);
    let t = c.nodes[0].create_table("wide").unwrap();
    let per_node = 1500u64;
    let threads: Vec<_> = (0..3usize)
        .map(|i| {
            let (c, t) = (c.clone(), t.clone());
            std::thread::spawn(move || {
                let node = &c.nodes[i];
                // Interleaved keys: every node inserts into every leaf, so leaves split
                // under all three nodes' hands.
                for chunk in (0..per_node).collect::<Vec<_>>().chunks(25) {
                    retry(node, |tx| {
                        for k in chunk {
                            let key = format!("key{:08}", k * 3 + i as u64);
                            tx.put(&t, key.as_bytes(), &[7u8; 64])?;
                        }
                        Ok(())
                    });
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    for node in &c.nodes {
        let mut tx = node.begin().unwrap();
        let rows = tx
            .scan(&t, (Bound::Unbounded, Bound::Unbounded), false, None)
            .unwrap();
        assert_eq!(rows.len() as u64, 3 * per_node, "a key went missing");
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
        let back = tx
            .scan(&t, (Bound::Unbounded, Bound::Unbounded), true, None)
            .unwrap();
        assert_eq!(back.len(), rows.len());
        tx.commit().unwrap();
    }
}

#[test]
fn eager_locks_and_per_access_validation_give_the_same_results() {
    common::service::init_tracing("warn");
    let compute = compute_node::node::ComputeConfig {
        lock_mode: compute_node::coherence::LockMode::Eager,
        validation: compute_node::coherence::ValidationMode::EachAccess,
        ..Default::default()
    };
    let c = Arc::new(
        EmbeddedCluster::start(ClusterOptions {
            compute_nodes: 2,
            storage_memory: 32 << 20,
            pages_per_storage_node: 1 << 16,
            buffer_frames: 2048,
            compute,
            ..ClusterOptions::default()
        })
        .unwrap(),
    );
    let t = c.nodes[0].create_table("eager").unwrap();
    let threads: Vec<_> = (0..4usize)
        .map(|i| {
            let (c, t) = (c.clone(), t.clone());
            std::thread::spawn(move || {
                for j in 0..40u64 {
                    let key = format!("c{}", j % 3);
                    retry(&c.nodes[i % 2], |tx| {
                        let v = get_u64(tx, &t, key.as_bytes())?;
                        tx.put(&t, key.as_bytes(), &(v + 1).to_le_bytes())
                    });
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let total: u64 = retry(&c.nodes[1], |tx| {
        (0..3)
            .map(|k| get_u64(tx, &t, format!("c{k}").as_bytes()))
            .sum()
    });
    assert_eq!(total, 160);
    // Eager mode keeps no page locks between transactions.
    for n in &c.nodes {
        assert_eq!(n.engine().pager().held_locks(), 0);
    }
}
