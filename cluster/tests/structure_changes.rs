//! Invariant 8: a structure change (a B-link split, a new root) whose pages live on two
//! storage nodes is durable on both or on neither, so the pages a rebuild restores
//! always form a valid tree.
//!
//! The case that broke it: on node 1, T1 fills a new table's root leaf one row short of
//! a split and commits; T2 inserts the splitting row and aborts (or is still open); T3
//! updates one row and commits, which forces node 1's redo stream on T3's page's
//! storage node — with T2's split records for that node in it, but not those for the
//! other storage node. Node 1 then leaves without writing anything back: the storage
//! nodes rebuild its pages from its durable redo, and node 2's scan met a page that was
//! never formatted. Every variant runs: T2 aborted or open, T3's row in the lower half
//! (the old leaf) or the upper half (the new right page), and both parities of where
//! the split's new pages are allocated.

use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::btree::BTree;
use compute_node::node::ComputeNode;
use compute_node::pager::Pager;
use compute_node::txn::Table;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

const VALUE_LEN: usize = 100;

fn key(i: usize) -> Vec<u8> {
    format!("row-{i:05}").into_bytes()
}

fn leaves(node: &ComputeNode, t: &Table) -> usize {
    let view: Arc<dyn Pager> = Arc::new(node.engine().pager().view().unwrap());
    BTree::open(view, t.meta)
        .unwrap()
        .check_structure()
        .unwrap()
        .nodes_per_level[0]
}

/// Rows of `VALUE_LEN` bytes (one version each) that fit a root leaf.
fn rows_per_leaf(node: &ComputeNode) -> usize {
    let t = node.create_table("probe").unwrap();
    let mut tx = node.begin().unwrap();
    for i in 0.. {
        tx.put(&t, &key(i), &[7; VALUE_LEN]).unwrap();
        if leaves(node, &t) > 1 {
            tx.abort().unwrap();
            return i;
        }
    }
    unreachable!()
}

/// Waits until no directory entry of either storage node names `node_id` as X holder
/// (the storage nodes fenced it and rebuilt its pages).
fn wait_until_released(observer: &ComputeNode, node_id: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let engine = observer.engine();
    let storage = engine.pager().storage();
    loop {
        let held = (0..storage.len()).any(|i| {
            let s = storage.node(i);
            s.read_dir_range(s.layout().first_page, 64)
                .unwrap()
                .iter()
                .any(|e| e.holder.is_some_and(|h| h.node.0 == node_id))
        });
        if !held {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node_id}'s locks never freed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_variant(t2_open: bool, upper_half: bool, shift_parity: bool) {
    let mut c = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 2,
        storage_nodes: 2,
        pages_per_storage_node: 1 << 12,
        storage_memory: 16 << 20,
        buffer_frames: 512,
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let n1 = &c.nodes[0];
    let fit = rows_per_leaf(n1);
    if shift_parity {
        // One page allocated and never used moves every later allocation to the other
        // storage node.
        drop(n1.engine().pager().view().unwrap().allocate().unwrap());
    }
    let t = n1.create_table("t").unwrap();
    let mut t1 = n1.begin().unwrap();
    for i in 0..fit {
        t1.put(&t, &key(i), &[1; VALUE_LEN]).unwrap();
    }
    t1.commit().unwrap();
    assert_eq!(
        leaves(n1, &t),
        1,
        "the root leaf is one row short of a split"
    );
    let mut t2 = n1.begin().unwrap();
    t2.put(&t, &key(fit), &[2; VALUE_LEN]).unwrap();
    assert_eq!(leaves(n1, &t), 2, "T2's row split the root leaf");
    let t2_still_open = if t2_open {
        Some(t2)
    } else {
        t2.abort().unwrap();
        None
    };
    let updated = if upper_half { fit - 1 } else { 0 };
    let mut t3 = n1.begin().unwrap();
    t3.put(&t, &key(updated), &[3; VALUE_LEN]).unwrap();
    t3.commit().unwrap();
    // Node 1 goes away without writing anything back.
    n1.engine().gtm().leave().unwrap();
    let n2 = &c.nodes[1];
    wait_until_released(n2, 1);
    let mut r = n2.begin().unwrap();
    let rows = r
        .scan(&t, (Bound::Unbounded, Bound::Unbounded), false, None)
        .unwrap_or_else(|e| {
            panic!(
                "scan after node 1 left (T2 {}, T3 in the {} half, parity {}): {e}",
                if t2_open { "open" } else { "aborted" },
                if upper_half { "upper" } else { "lower" },
                shift_parity as u8
            )
        });
    assert_eq!(rows.len(), fit, "T1's rows, not T2's");
    for (i, (k, v)) in rows.iter().enumerate() {
        assert_eq!(k, &key(i));
        let want = if i == updated { 3 } else { 1 };
        assert_eq!(v, &vec![want; VALUE_LEN], "row {i}");
    }
    // Every row is found by a descent too, and by a reverse scan. (The durable prefix
    // may end before the new root: a top level of two nodes without a parent is a
    // valid B-link tree, repaired by the next split there.)
    for i in 0..fit {
        let want = if i == updated { 3 } else { 1 };
        assert_eq!(r.get(&t, &key(i)).unwrap(), Some(vec![want; VALUE_LEN]));
    }
    assert_eq!(r.get(&t, &key(fit)).unwrap(), None, "T2 never committed");
    let back = r
        .scan(&t, (Bound::Unbounded, Bound::Unbounded), true, None)
        .unwrap();
    assert_eq!(back.len(), fit);
    r.commit().unwrap();
    drop(t2_still_open);
    c.nodes.remove(0);
}

#[test]
fn invariant_8_split_across_storage_nodes_survives_the_writer_leaving() {
    common::service::init_tracing("warn");
    for t2_open in [false, true] {
        for upper_half in [false, true] {
            for shift_parity in [false, true] {
                run_variant(t2_open, upper_half, shift_parity);
            }
        }
    }
}
