//! Commit outcomes: a commit whose answer never came is `TxnError::Unknown` (not
//! retryable) and `resolve_outcome` gives its final outcome — from any node, after a
//! rejoin, after a GTM restart — that a late commit request cannot change; a read-only
//! commit after a lapsed lease is refused; a commit whose redo force fails is aborted
//! at the GTM at once.
//!
//! Lost requests and lost answers are real: the compute node under test reaches the GTM
//! through a TCP proxy ([`support::proxy`]) that holds one direction of the traffic (a
//! network fault, not a mock of the GTM), with a 1 s GTM client timeout.

#[path = "support/proxy.rs"]
mod proxy;

use cluster::{ClusterOptions, EmbeddedCluster};
use common::fabric::{ClientOptions, ClusterKey, Endpoint, Transport};
use common::gtm::{GtmError, TxnStatus};
use common::ids::TxnId;
use compute_node::node::{ComputeConfig, ComputeNode};
use compute_node::txn::{Resolved, TxnError};
use gtm::{Gtm, GtmOptions, StorageReleaser};
use proxy::{Direction, Proxy};
use std::path::Path;
use std::time::{Duration, Instant};
use storage_node::config::{ByteSize, StorageConfig};
use storage_node::StorageNode;

/// Heartbeats this rare never run during a test: nothing of the node under test is in
/// flight to the GTM when a direction is held (its lease is the cluster's long one).
const NO_HEARTBEATS_MS: u64 = 600_000;

fn cluster(lease: Duration) -> EmbeddedCluster {
    common::service::init_tracing("warn");
    EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 0,
        transport: Transport::Tcp,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 16,
        buffer_frames: 1024,
        lease,
        ..ClusterOptions::default()
    })
    .expect("cluster starts")
}

/// A compute node of `c` that reaches the GTM at `gtm` with a 1 s timeout.
fn node_via(c: &EmbeddedCluster, id: u32, gtm: &str, heartbeat_ms: u64) -> ComputeNode {
    let cfg = ComputeConfig {
        gtm: gtm.to_string(),
        rpc_timeout_s: 1,
        heartbeat_ms,
        ..c.compute_config(id)
    };
    ComputeNode::start_with_key(&cfg, c.key().clone()).expect("compute node starts")
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(node: &ComputeNode, table: &str, key: &[u8]) -> Option<Vec<u8>> {
    let t = node.table(table).unwrap();
    let mut tx = node.begin().unwrap();
    let v = tx.get(&t, key).unwrap();
    tx.commit().unwrap();
    v
}

fn expect_unknown(r: Result<common::ids::Timestamp, TxnError>, txn: TxnId) {
    let e = r.expect_err("the commit cannot have an answer");
    assert!(e.is_unknown(), "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(e.unknown_txn(), Some(txn), "{e}");
}

#[test]
fn a_commit_that_never_reached_the_gtm_resolves_aborted_and_a_late_commit_cannot_flip_it() {
    let c = cluster(Duration::from_secs(60));
    let gtm = Proxy::start(&c.gtm_endpoint().to_string());
    let a = node_via(&c, 1, &gtm.endpoint(), NO_HEARTBEATS_MS);
    let b = c.start_compute_node(2).unwrap();
    let t = a.create_table("t").unwrap();

    let mut tx = a.begin().unwrap();
    tx.put(&t, b"k", b"lost").unwrap();
    let id = tx.id();
    let reg = a.engine().gtm().registration().unwrap();
    gtm.hold(Direction::ToServer);
    expect_unknown(tx.commit(), id);
    assert!(
        gtm.held_bytes(Direction::ToServer) > 0,
        "the commit request waits in the network"
    );

    // Another node decides it: in progress at the GTM, so aborted by compare-and-set.
    assert_eq!(b.resolve_outcome(id).unwrap(), Resolved::Aborted);

    // The network comes back: the commit request reaches the GTM now, and loses.
    gtm.release(Direction::ToServer);
    // Answered only after the GTM handled everything sent before it on this connection
    // (one connection's messages are handled in order), the held commit included.
    a.engine().gtm().timestamp().unwrap();
    assert_eq!(a.resolve_outcome(id).unwrap(), Resolved::Aborted);
    assert_eq!(b.resolve_outcome(id).unwrap(), Resolved::Aborted);
    // A commit sent now on behalf of the (still live) owner loses as well.
    assert!(matches!(
        b.engine().gtm().commit_as(reg.node, reg.epoch, id),
        Err(GtmError::Aborted)
    ));
    assert_eq!(read(&b, "t", b"k"), None);
    assert_eq!(read(&a, "t", b"k"), None);

    // The node goes on working.
    let mut tx = a.begin().unwrap();
    tx.put(&t, b"k", b"kept").unwrap();
    tx.commit().unwrap();
    assert_eq!(read(&b, "t", b"k"), Some(b"kept".to_vec()));
}

#[test]
fn a_commit_whose_answer_was_lost_resolves_committed_with_its_timestamp_on_every_node() {
    let c = cluster(Duration::from_secs(60));
    let gtm = Proxy::start(&c.gtm_endpoint().to_string());
    let a = node_via(&c, 1, &gtm.endpoint(), NO_HEARTBEATS_MS);
    let b = c.start_compute_node(2).unwrap();
    let t = a.create_table("t").unwrap();

    let mut tx = a.begin().unwrap();
    tx.put(&t, b"k", b"durable").unwrap();
    let id = tx.id();
    // Let the answers to everything before reach the node (nothing is in flight).
    std::thread::sleep(Duration::from_millis(200));
    gtm.hold(Direction::ToClient);
    let sent = gtm.forwarded(Direction::ToServer);
    expect_unknown(tx.commit(), id);
    assert!(
        gtm.forwarded(Direction::ToServer) > sent,
        "the commit request went through"
    );
    assert!(
        gtm.held_bytes(Direction::ToClient) > 0,
        "its answer was held"
    );

    // The GTM committed it (the answer is sent after the record is durable).
    let cts = match b.resolve_outcome(id).unwrap() {
        Resolved::Committed(cts) => cts,
        Resolved::Aborted => panic!("the commit reached the GTM, yet it resolved aborted"),
    };
    let c3 = c.start_compute_node(3).unwrap();
    assert_eq!(c3.resolve_outcome(id).unwrap(), Resolved::Committed(cts));
    gtm.release(Direction::ToClient);
    assert_eq!(a.resolve_outcome(id).unwrap(), Resolved::Committed(cts));
    assert_eq!(
        b.engine().gtm().txn_status_batch(&[id]).unwrap(),
        vec![TxnStatus::Committed(cts)]
    );
    assert_eq!(read(&b, "t", b"k"), Some(b"durable".to_vec()));

    // After the node rejoined with a new epoch, it still resolves its old transaction.
    let old_epoch = a.engine().gtm().registration().unwrap().epoch;
    a.rejoin("test").unwrap();
    assert_ne!(a.engine().gtm().registration().unwrap().epoch, old_epoch);
    assert_eq!(a.resolve_outcome(id).unwrap(), Resolved::Committed(cts));
}

#[test]
fn resolution_is_final_for_committed_aborted_and_open_transactions_and_rejects_unknown_ids() {
    let c = cluster(Duration::from_secs(60));
    let a = c.start_compute_node(1).unwrap();
    let b = c.start_compute_node(2).unwrap();
    let t = a.create_table("t").unwrap();

    let mut tx = a.begin().unwrap();
    tx.put(&t, b"c", b"1").unwrap();
    let committed = tx.id();
    let cts = tx.commit().unwrap();
    let mut tx = a.begin().unwrap();
    tx.put(&t, b"a", b"1").unwrap();
    let aborted = tx.id();
    tx.abort().unwrap();
    for n in [&a, &b] {
        assert_eq!(
            n.resolve_outcome(committed).unwrap(),
            Resolved::Committed(cts)
        );
        assert_eq!(n.resolve_outcome(aborted).unwrap(), Resolved::Aborted);
    }

    // Still open on node a: resolving it from b aborts it; a's commit then loses.
    let mut open = a.begin().unwrap();
    open.put(&t, b"o", b"1").unwrap();
    assert_eq!(b.resolve_outcome(open.id()).unwrap(), Resolved::Aborted);
    let e = open.commit().unwrap_err();
    assert!(e.is_retryable() && !e.is_unknown(), "{e}");
    assert_eq!(read(&b, "t", b"o"), None);

    for never in [TxnId(0), TxnId(1 << 50)] {
        let e = b.resolve_outcome(never).unwrap_err();
        assert!(matches!(e, TxnError::BadRequest(_)), "{never}: {e}");
    }
}

#[test]
fn a_read_only_commit_after_a_lapsed_lease_is_fenced_and_a_fenced_node_still_resolves() {
    let lease = Duration::from_millis(1000);
    let c = cluster(lease);
    let gtm = Proxy::start(&c.gtm_endpoint().to_string());
    let a = node_via(&c, 1, &gtm.endpoint(), 100);
    let b = c.start_compute_node(2).unwrap();
    let t = b.create_table("t").unwrap();
    let mut tx = b.begin().unwrap();
    tx.put(&t, b"k", b"v").unwrap();
    let committed = tx.id();
    let cts = tx.commit().unwrap();

    let ta = a.table("t").unwrap();
    let mut ro = a.begin().unwrap();
    assert_eq!(ro.get(&ta, b"k").unwrap(), Some(b"v".to_vec()));
    // Heartbeats stop reaching the GTM: the lease lapses there (the GTM aborts the
    // node's transactions) and here (the local fence).
    gtm.hold(Direction::ToServer);
    let ro_id = ro.id();
    wait_until("the GTM expired the lease", lease * 30, || {
        b.engine().gtm().txn_status_batch(&[ro_id]).unwrap() == vec![TxnStatus::Aborted]
    });
    wait_until("the node fenced itself", lease * 30, || {
        a.engine().gtm().check_lease().is_err()
    });
    gtm.release(Direction::ToServer);

    // What it read may be wrong (other nodes may have pruned versions its snapshot
    // needed): no Ok for it.
    let e = ro.commit().unwrap_err();
    assert!(matches!(e, TxnError::Fenced(_)), "{e}");

    // A fenced node may still resolve (aborting needs no lease): a committed
    // transaction, and an open one of another node, which its abort decides.
    assert_eq!(
        a.resolve_outcome(committed).unwrap(),
        Resolved::Committed(cts)
    );
    let mut open = b.begin().unwrap();
    open.put(&t, b"o", b"1").unwrap();
    assert_eq!(a.resolve_outcome(open.id()).unwrap(), Resolved::Aborted);
    assert!(open.commit().unwrap_err().is_retryable());
}

#[test]
fn a_failed_redo_force_aborts_the_transaction_at_the_gtm() {
    // A long lease: lease expiry cannot be what aborts it.
    let c = cluster(Duration::from_secs(60));
    let a = c.start_compute_node(1).unwrap();
    let b = c.start_compute_node(2).unwrap();
    let t = a.create_table("t").unwrap();
    let mut tx = a.begin().unwrap();
    tx.put(&t, b"k", b"v").unwrap();
    let id = tx.id();
    // The redo cannot be forced: the storage connection is gone.
    a.engine().pager().storage().node(0).close();
    let e = tx.commit().unwrap_err();
    assert!(matches!(e, TxnError::Storage(_)), "{e}");
    assert!(!e.is_unknown(), "the commit was never sent: {e}");
    assert_eq!(
        b.engine().gtm().txn_status_batch(&[id]).unwrap(),
        vec![TxnStatus::Aborted],
        "not left in progress until the lease runs out"
    );
    assert_eq!(b.resolve_outcome(id).unwrap(), Resolved::Aborted);
}

// ---- A cluster whose GTM restarts ----

fn start_gtm(dir: &Path, key: &ClusterKey, storage: &Endpoint, listen: &str) -> (Gtm, Endpoint) {
    let mut o = GtmOptions::new(dir.join("gtm"));
    o.lease = Duration::from_secs(60);
    let releaser = StorageReleaser::new(vec![storage.clone()], ClientOptions::new(key.clone()));
    let mut g = Gtm::start(&o, key.clone(), Box::new(releaser)).expect("GTM starts");
    let ep = g.serve(&listen.parse().unwrap()).expect("GTM serves");
    (g, ep)
}

#[test]
fn outcomes_survive_a_gtm_restart_and_a_rejoin() {
    common::service::init_tracing("warn");
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::random();
    let storage = StorageNode::start_with_key(
        &StorageConfig {
            transport: Transport::Tcp,
            listen: "tcp://127.0.0.1:0".into(),
            data_dir: dir.path().join("storage"),
            memory: ByteSize(64 << 20),
            first_page: 1,
            page_count: 1 << 16,
            ..StorageConfig::default()
        },
        key.clone(),
        &Endpoint::Tcp("127.0.0.1:0".into()),
    )
    .expect("storage node starts");
    let storage_ep = storage.endpoint();
    let (g, gtm_ep) = start_gtm(dir.path(), &key, &storage_ep, "tcp://127.0.0.1:0");
    let proxy = Proxy::start(&gtm_ep.to_string());
    let node = |id: u32, gtm: &str, heartbeat_ms: u64| {
        let cfg = ComputeConfig {
            node_id: id,
            gtm: gtm.to_string(),
            storage: vec![storage_ep.to_string()],
            buffer_frames: 1024,
            heartbeat_ms,
            rpc_timeout_s: 1,
            ..ComputeConfig::default()
        };
        ComputeNode::start_with_key(&cfg, key.clone()).expect("compute node starts")
    };
    let a = node(1, &proxy.endpoint(), NO_HEARTBEATS_MS);
    let b = node(2, &gtm_ep.to_string(), 1000);
    let t = a.create_table("t").unwrap();

    // Committed durably, answer lost.
    let mut tx = a.begin().unwrap();
    tx.put(&t, b"committed", b"1").unwrap();
    let committed = tx.id();
    std::thread::sleep(Duration::from_millis(200));
    proxy.hold(Direction::ToClient);
    expect_unknown(tx.commit(), committed);
    let cts = match b.resolve_outcome(committed).unwrap() {
        Resolved::Committed(cts) => cts,
        Resolved::Aborted => panic!("the commit reached the GTM, yet it resolved aborted"),
    };
    proxy.release(Direction::ToClient);
    a.engine().gtm().timestamp().unwrap();

    // Never reached the GTM: still in progress there when it stops.
    let mut tx = a.begin().unwrap();
    tx.put(&t, b"in-progress", b"1").unwrap();
    let in_progress = tx.id();
    proxy.hold(Direction::ToServer);
    expect_unknown(tx.commit(), in_progress);

    // The GTM restarts on the same port (its state: the commit log, the sequences).
    drop(g);
    let (g2, ep2) = start_gtm(dir.path(), &key, &storage_ep, &gtm_ep.to_string());
    assert_eq!(ep2, gtm_ep);
    proxy.release(Direction::ToServer);
    for n in [&a, &b] {
        wait_until(
            "the node sees the GTM connection end",
            Duration::from_secs(30),
            || n.broken().is_some(),
        );
        // Until it rejoins it cannot ask; that is no answer, not a wrong one.
        let e = n.resolve_outcome(in_progress).unwrap_err();
        assert!(e.is_unknown(), "{e}");
        n.rejoin("GTM restarted").unwrap();
    }

    for n in [&a, &b] {
        // Read back from the commit log.
        assert_eq!(
            n.resolve_outcome(committed).unwrap(),
            Resolved::Committed(cts)
        );
        // In progress at the restart: aborted.
        assert_eq!(n.resolve_outcome(in_progress).unwrap(), Resolved::Aborted);
    }
    let c = node(3, &gtm_ep.to_string(), 1000);
    assert_eq!(
        c.resolve_outcome(committed).unwrap(),
        Resolved::Committed(cts)
    );
    assert_eq!(c.resolve_outcome(in_progress).unwrap(), Resolved::Aborted);
    assert_eq!(read(&c, "t", b"committed"), Some(b"1".to_vec()));
    assert_eq!(read(&c, "t", b"in-progress"), None);

    for n in [a, b, c] {
        let _ = n.shutdown();
    }
    drop(g2);
    let _ = storage.shutdown();
}
