//! Locking reads (`Txn::get_for_update`) across compute nodes: a hot row queues its
//! writers instead of aborting them, loses no update, never deadlocks (wound-wait), and
//! gives a waiter the committed row when the holder aborts. (The holder's node dying
//! is in `compute_faults.rs`, which runs compute nodes as processes.)

use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::node::ComputeNode;
use compute_node::txn::{Table, TxnError};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn u64_of(v: Option<Vec<u8>>) -> u64 {
    v.map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn put_committed(node: &ComputeNode, t: &Table, key: &[u8], value: &[u8]) {
    let mut tx = node.begin().unwrap();
    tx.put(t, key, value).unwrap();
    tx.commit().unwrap();
}

fn read_committed(node: &ComputeNode, t: &Table, key: &[u8]) -> Option<Vec<u8>> {
    let mut tx = node.begin().unwrap();
    let v = tx.get(t, key).unwrap();
    tx.commit().unwrap();
    v
}

/// Increments of one hot counter from two nodes, each a locking read and a write (or a
/// locking read-modify-write, `Txn::update`). The
/// history, not just the final value, is checked: every committed increment read a
/// different value, those values are exactly 0..n (no increment was lost, none counted
/// twice), and the final value is n.
#[test]
fn hot_counter_increments_from_two_nodes_lose_nothing_and_rarely_abort() {
    let c = cluster(2);
    let t = c.nodes[0].create_table("hot").unwrap();
    let per_thread = 40u64;
    let threads = 6usize;
    let results: Vec<(Vec<u64>, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let (c, t) = (&c, &t);
                s.spawn(move || {
                    let node = &c.nodes[i % 2];
                    let mut read = Vec::new();
                    let mut aborts = 0;
                    for _ in 0..per_thread {
                        loop {
                            let mut tx = node.begin().unwrap();
                            // Half the threads read and write in two steps, half in
                            // one (`update`); both lock the row the same way.
                            let r = if i % 4 < 2 {
                                tx.get_for_update(t, b"n").and_then(|v| {
                                    let n = u64_of(v);
                                    tx.put(t, b"n", &(n + 1).to_le_bytes()).map(|_| n)
                                })
                            } else {
                                let mut seen = 0;
                                tx.update(t, b"n", |v| {
                                    seen = u64_of(v.map(<[u8]>::to_vec));
                                    Ok(Some((seen + 1).to_le_bytes().to_vec()))
                                })
                                .map(|_| seen)
                            };
                            match r.and_then(|n| tx.commit().map(|_| n)) {
                                Ok(n) => {
                                    read.push(n);
                                    break;
                                }
                                Err(e) if e.is_retryable() => aborts += 1,
                                Err(e) => panic!("non-retryable: {e}"),
                            }
                        }
                    }
                    (read, aborts)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = per_thread * threads as u64;
    let mut seen = BTreeSet::new();
    let mut aborts = 0;
    for (read, a) in &results {
        aborts += a;
        for n in read {
            assert!(
                seen.insert(*n),
                "two committed increments read {n}: a lost update"
            );
        }
    }
    assert_eq!(seen, (0..total).collect::<BTreeSet<_>>());
    assert_eq!(u64_of(read_committed(&c.nodes[1], &t, b"n")), total);
    let waits: u64 = c
        .nodes
        .iter()
        .map(|n| n.engine().stats.lock_waits.load(Ordering::Relaxed))
        .sum();
    println!("{total} increments, {aborts} retryable aborts, {waits} lock waits");
    assert!(
        waits > 0,
        "the increments never met: the test shows nothing"
    );
    // Only a wound (an older transaction meeting a younger holder for longer than the
    // grace period) or a lock-wait timeout can abort one; with plain reads most of
    // them would lose first-updater-wins.
    assert!(
        aborts * 10 <= total,
        "{aborts} aborts for {total} commits: locking reads should make writers wait"
    );
}

/// A locking read returns the newest commit even when it is newer than the snapshot,
/// the write after it does not lose first-updater-wins, and plain reads in the same
/// transaction keep reading the snapshot.
#[test]
fn a_locking_read_is_a_current_read_and_the_rest_reads_the_snapshot() {
    let c = cluster(2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let t = a.create_table("t").unwrap();
    put_committed(a, &t, b"k", b"v1");
    let mut old = a.begin().unwrap();
    assert_eq!(old.get(&t, b"other").unwrap(), None);
    put_committed(b, &t, b"k", b"v2");
    assert_eq!(old.get(&t, b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(
        old.get_for_update(&t, b"k").unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(
        old.get(&t, b"k").unwrap().as_deref(),
        Some(&b"v1"[..]),
        "plain reads keep the snapshot"
    );
    // Locking again is a no-op that answers the same row.
    assert_eq!(
        old.get_for_update(&t, b"k").unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    old.put(&t, b"k", b"v3").unwrap();
    assert_eq!(
        old.get_for_update(&t, b"k").unwrap().as_deref(),
        Some(&b"v3"[..]),
        "its own write"
    );
    old.commit().unwrap();
    assert_eq!(read_committed(b, &t, b"k").as_deref(), Some(&b"v3"[..]));

    // The same interleaving with a plain read loses first-updater-wins.
    let mut plain = a.begin().unwrap();
    assert_eq!(plain.get(&t, b"k").unwrap().as_deref(), Some(&b"v3"[..]));
    put_committed(b, &t, b"k", b"v4");
    let e = plain.put(&t, b"k", b"v5").unwrap_err();
    assert!(e.is_retryable(), "{e}");
    plain.abort().unwrap();

    // A lock on a key without a row: an insert by another transaction waits for it.
    let mut locker = a.begin().unwrap();
    assert_eq!(locker.get_for_update(&t, b"new").unwrap(), None);
    std::thread::scope(|s| {
        let inserter = s.spawn(|| {
            let mut tx = b.begin().unwrap();
            tx.put(&t, b"new", b"inserted")?;
            tx.commit()
        });
        let started = Instant::now();
        while b.engine().stats.lock_waits.load(Ordering::Relaxed) == 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "never waited");
            std::thread::sleep(Duration::from_millis(2));
        }
        // The locker commits without writing: the lock ends and means nothing after.
        locker.commit().unwrap();
        inserter.join().unwrap().expect("the insert goes through");
    });
    assert_eq!(
        read_committed(a, &t, b"new").as_deref(),
        Some(&b"inserted"[..])
    );
}

/// When the holder of a row aborts, the transaction waiting for it gets the committed
/// row, not the aborted write.
#[test]
fn a_holders_abort_hands_the_waiter_the_committed_row() {
    let c = cluster(2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let t = a.create_table("t").unwrap();
    put_committed(a, &t, b"k", b"committed");
    let waits_before = b.engine().stats.lock_waits.load(Ordering::Relaxed);
    let mut holder = a.begin().unwrap();
    assert_eq!(
        holder.get_for_update(&t, b"k").unwrap().as_deref(),
        Some(&b"committed"[..])
    );
    holder.put(&t, b"k", b"aborted write").unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let mut tx = b.begin().unwrap();
            let seen = tx.get_for_update(&t, b"k")?;
            tx.put(&t, b"k", b"waiter")?;
            tx.commit().map(|_| seen)
        });
        let started = Instant::now();
        while b.engine().stats.lock_waits.load(Ordering::Relaxed) == waits_before {
            assert!(started.elapsed() < Duration::from_secs(20), "never waited");
            std::thread::sleep(Duration::from_millis(2));
        }
        holder.abort().unwrap();
        let seen = waiter.join().unwrap().expect("the waiter commits");
        assert_eq!(seen.as_deref(), Some(&b"committed"[..]));
    });
    assert_eq!(read_committed(a, &t, b"k").as_deref(), Some(&b"waiter"[..]));
}

/// Two transactions on two nodes lock two rows in opposite orders: a wait cycle.
/// Wound-wait breaks it: the older one wounds the younger after the grace period and
/// commits; the younger one ends in a retryable conflict; nothing waits for the
/// lock-wait timeout.
#[test]
fn a_wait_cycle_across_nodes_is_broken_by_a_wound() {
    let c = cluster(2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let t = a.create_table("t").unwrap();
    put_committed(a, &t, b"x", &0u64.to_le_bytes());
    put_committed(a, &t, b"y", &0u64.to_le_bytes());
    let mut older = a.begin().unwrap();
    let mut younger = b.begin().unwrap();
    assert!(older.id() < younger.id());
    older.get_for_update(&t, b"x").unwrap();
    younger.get_for_update(&t, b"y").unwrap();
    let started = Instant::now();
    let young_result: Result<(), TxnError> = std::thread::scope(|s| {
        let t = &t;
        let young = s.spawn(move || {
            // Waits for the older holder of x (the younger may wait).
            younger.get_for_update(t, b"x")?;
            younger.put(t, b"x", &2u64.to_le_bytes())?;
            younger.commit().map(|_| ())
        });
        // Waits for the younger holder of y, then wounds it.
        older.get_for_update(t, b"y").expect("the older goes on");
        older.put(t, b"y", &1u64.to_le_bytes()).unwrap();
        older.commit().expect("the older commits");
        young.join().unwrap()
    });
    let e = young_result.expect_err("the wounded transaction cannot commit");
    assert!(e.is_retryable(), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "resolved by the lock-wait timeout, not by a wound: {:?}",
        started.elapsed()
    );
    assert_eq!(a.engine().stats.wounds.load(Ordering::Relaxed), 1);
    assert_eq!(u64_of(read_committed(b, &t, b"y")), 1);
    assert_eq!(u64_of(read_committed(b, &t, b"x")), 0);
}

/// `Txn::update` is `get_for_update` and `put` in one step: the newest commit, not the
/// snapshot, is what the function sees; an error from it changes nothing.
#[test]
fn an_update_reads_the_newest_commit_and_an_error_changes_nothing() {
    let c = cluster(2);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let t = a.create_table("t").unwrap();
    put_committed(a, &t, b"k", b"v1");
    let mut old = a.begin().unwrap();
    assert_eq!(old.get(&t, b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    put_committed(b, &t, b"k", b"v2");
    let new = old
        .update(&t, b"k", |v| {
            assert_eq!(v, Some(&b"v2"[..]), "the newest commit");
            Ok(Some(b"v2+".to_vec()))
        })
        .unwrap();
    assert_eq!(new.as_deref(), Some(&b"v2+"[..]));
    old.commit().unwrap();
    assert_eq!(read_committed(b, &t, b"k").as_deref(), Some(&b"v2+"[..]));

    let mut tx = a.begin().unwrap();
    let e = tx
        .update(&t, b"k", |_| Err(TxnError::BadRequest("no, thanks".into())))
        .unwrap_err();
    assert!(e.to_string().contains("no, thanks"), "{e}");
    tx.commit().unwrap();
    assert_eq!(read_committed(b, &t, b"k").as_deref(), Some(&b"v2+"[..]));
    // Deleting through an update.
    let mut tx = b.begin().unwrap();
    assert_eq!(tx.update(&t, b"k", |_| Ok(None)).unwrap(), None);
    tx.commit().unwrap();
    assert_eq!(read_committed(a, &t, b"k"), None);
}
