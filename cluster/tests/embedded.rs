//! Single-node and multi-master behaviour of the whole engine on an embedded cluster
//! (storage node + GTM + compute nodes in one process, over shm).

use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::txn::TxnError;
use std::ops::Bound;

fn cluster(nodes: usize) -> EmbeddedCluster {
    EmbeddedCluster::start(ClusterOptions {
        compute_nodes: nodes,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 16,
        buffer_frames: 4096,
        ..ClusterOptions::default()
    })
    .expect("cluster starts")
}

#[test]
fn put_get_scan_commit_abort_on_one_node() {
    let c = cluster(1);
    let n = &c.nodes[0];
    let t = n.create_table("kv").unwrap();
    let mut tx = n.begin().unwrap();
    for i in 0..500u32 {
        tx.put(
            &t,
            format!("k{i:05}").as_bytes(),
            format!("v{i}").as_bytes(),
        )
        .unwrap();
    }
    assert_eq!(tx.get(&t, b"k00007").unwrap(), Some(b"v7".to_vec()));
    tx.commit().unwrap();

    let mut tx = n.begin().unwrap();
    assert_eq!(tx.get(&t, b"k00499").unwrap(), Some(b"v499".to_vec()));
    let rows = tx
        .scan(
            &t,
            (
                Bound::Included(&b"k00100"[..]),
                Bound::Excluded(&b"k00110"[..]),
            ),
            false,
            None,
        )
        .unwrap();
    assert_eq!(rows.len(), 10);
    let rows = tx
        .scan(&t, (Bound::Unbounded, Bound::Unbounded), true, Some(3))
        .unwrap();
    assert_eq!(rows[0].0, b"k00499".to_vec());
    assert_eq!(rows.len(), 3);
    assert!(tx.delete(&t, b"k00001").unwrap());
    tx.abort().unwrap();

    let mut tx = n.begin().unwrap();
    assert_eq!(
        tx.get(&t, b"k00001").unwrap(),
        Some(b"v1".to_vec()),
        "abort undid nothing visible"
    );
    assert!(tx.delete(&t, b"k00001").unwrap());
    tx.commit().unwrap();
    let mut tx = n.begin().unwrap();
    assert_eq!(tx.get(&t, b"k00001").unwrap(), None);
    assert!(matches!(n.table("nope"), Err(TxnError::NoSuchTable(_))));
    assert!(matches!(
        n.create_table("kv"),
        Err(TxnError::TableExists(_))
    ));
    tx.commit().unwrap();
}

#[test]
fn snapshot_isolation_first_updater_wins() {
    let c = cluster(1);
    let n = &c.nodes[0];
    let t = n.create_table("acct").unwrap();
    let mut setup = n.begin().unwrap();
    setup.put(&t, b"a", b"1").unwrap();
    setup.commit().unwrap();

    let mut t1 = n.begin().unwrap();
    let mut t2 = n.begin().unwrap();
    t1.put(&t, b"a", b"2").unwrap();
    // t2 is younger than t1 and meets t1's uncommitted version: wait-die kills it.
    let e = t2.put(&t, b"a", b"3").unwrap_err();
    assert!(e.is_retryable(), "{e}");
    drop(t2);
    let mut reader = n.begin().unwrap();
    t1.commit().unwrap();
    // The reader's snapshot predates t1's commit.
    assert_eq!(reader.get(&t, b"a").unwrap(), Some(b"1".to_vec()));
    // And a write by the reader now loses to the committed newer version.
    let e = reader.put(&t, b"a", b"4").unwrap_err();
    assert!(e.is_retryable(), "{e}");
}

#[test]
fn two_storage_nodes_share_the_page_space_and_both_get_forced() {
    let c = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 2,
        storage_nodes: 2,
        storage_memory: 32 << 20,
        pages_per_storage_node: 1 << 14,
        buffer_frames: 2048,
        ..ClusterOptions::default()
    })
    .unwrap();
    // Tables' pages are allocated round-robin over the storage nodes.
    let tables: Vec<_> = (0..4)
        .map(|i| c.nodes[0].create_table(&format!("t{i}")).unwrap())
        .collect();
    let mut tx = c.nodes[1].begin().unwrap();
    for t in &tables {
        for k in 0..200u32 {
            tx.put(t, &k.to_be_bytes(), b"row").unwrap();
        }
    }
    tx.commit().unwrap();
    let cached = c.nodes[1].engine().pager().pool().snapshot_versions();
    let on_second = cached
        .iter()
        .filter(|(p, _)| p.0 >= c.first_page(1).0)
        .count();
    assert!(
        on_second > 0 && on_second < cached.len(),
        "pages on both storage nodes"
    );
    let mut tx = c.nodes[0].begin().unwrap();
    for t in &tables {
        let rows = tx
            .scan(t, (Bound::Unbounded, Bound::Unbounded), false, None)
            .unwrap();
        assert_eq!(rows.len(), 200);
    }
    tx.commit().unwrap();
}

#[test]
fn committed_data_survives_a_cluster_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClusterOptions {
        compute_nodes: 1,
        storage_memory: 32 << 20,
        pages_per_storage_node: 1 << 14,
        buffer_frames: 2048,
        ..ClusterOptions::default()
    };
    {
        let mut c = EmbeddedCluster::start_in(dir.path(), opts.clone()).unwrap();
        let t = c.nodes[0].create_table("durable").unwrap();
        let mut tx = c.nodes[0].begin().unwrap();
        for k in 0..300u32 {
            tx.put(&t, &k.to_be_bytes(), format!("v{k}").as_bytes())
                .unwrap();
        }
        tx.commit().unwrap();
        // The compute node goes away without writing anything back: the storage node
        // must rebuild its pages from the redo the commit forced.
        c.nodes.clear();
        c.shutdown().unwrap();
    }
    let c = EmbeddedCluster::start_in(dir.path(), opts).unwrap();
    let t = c.nodes[0].table("durable").unwrap();
    let mut tx = c.nodes[0].begin().unwrap();
    let rows = tx
        .scan(&t, (Bound::Unbounded, Bound::Unbounded), false, None)
        .unwrap();
    assert_eq!(rows.len(), 300);
    assert_eq!(
        tx.get(&t, &7u32.to_be_bytes()).unwrap(),
        Some(b"v7".to_vec())
    );
    tx.commit().unwrap();
}
