//! Hermitage-style isolation tests (after Martin Kleppmann's Hermitage,
//! github.com/ept/hermitage): the anomalies of Adya's and Bailis et al.'s definitions,
//! each played out step by step by two or three sessions, every session a transaction on
//! its **own compute node** of an [`EmbeddedCluster`] (two nodes; three where three
//! sessions take part), so each anomaly is probed across buffer pools, page locks and
//! coherence, not only inside one node.
//!
//! Setup for every test (Hermitage's): a table `test` with rows `1 -> 10` and `2 -> 20`
//! (keys are the ids as zero-padded decimal, values decimal text). SQL statements map to
//! the embedding API: a point `select`/`update` is `get`/`put`; `select ... where P` is a
//! full `scan` filtered by `P`; `update/delete ... where P` is that scan followed by a
//! `put`/`delete` of each matching row (so a write predicate is a read predicate plus
//! item writes). A step that blocks in PostgreSQL runs on a helper thread: under
//! wait-die a *younger* second writer dies at once with a retryable conflict, an *older*
//! one waits for the holder; the test then performs the step that unblocks it, and waits
//! (with a generous timeout, so a bug fails instead of hanging) for the outcome. The
//! nodes run wait-die for that (wound-wait, the default, would make an older second
//! writer wound the younger holder after its grace period instead of waiting it out;
//! `locking_reads.rs` covers wound-wait).
//!
//! The engine takes a snapshot at `begin` (PostgreSQL at a transaction's first
//! statement); sessions begin where Hermitage's `begin` is, except where that would
//! change what the scenario probes (OTV's third session begins at its first read).
//! Read committed takes a fresh snapshot per statement (every `get`/`put`/`scan`).
//! After a retryable error a session aborts, as a PostgreSQL transaction must after an
//! error. (The engine does not do that by itself: a failed write installs nothing and
//! leaves the transaction open, and a `commit` after it commits the earlier writes;
//! `TxnError::is_retryable` tells the caller to abort and run it again.)
//!
//! | anomaly | Hermitage's scenario | snapshot isolation (default) | read committed |
//! |---|---|---|---|
//! | G0 write cycles | T1 and T2 both update rows 1 and 2, T2's first update while T1's is uncommitted | prevented: T2's update of row 1 dies at once (younger) or waits for T1 (older) and then loses (first updater wins); final state `11, 21` | prevented the same way (a waiting writer keeps its statement's snapshot, so it conflicts once T1 commits; PostgreSQL would re-read and apply `12, 22`) |
//! | G1a aborted reads | T1 updates row 1 and aborts; T2 reads before and after | prevented: T2 reads `10` throughout | prevented |
//! | G1b intermediate reads | T1 writes `101` then `11` to row 1 and commits; T2 reads between and after | prevented: T2 never reads `101`; it reads `10` until it ends | prevented: T2 reads `10`, then `11` after T1's commit |
//! | G1c circular information flow | T1 updates row 1, T2 row 2, each reads the other's row | prevented: each reads the other's old value; both commit | prevented |
//! | OTV observed transaction vanishes | T1 updates rows 1 and 2 and commits; T2 updates them after it; T3 reads in between | prevented: T2 dies (it wrote row 1 after T1's uncommitted write); T3 sees all of T1 (`11, 19`) or none | prevented: T3 sees `11` then `19` (all of T1), never half of T2 |
//! | PMP predicate-many-preceders (read) | T1 scans a predicate; T2 inserts `3 -> 30` and commits; T1 scans again | prevented: T1's second scan (and a key-range scan) returns what the first did | **not prevented**: T1's second scan returns the new row (Hermitage's PostgreSQL result) |
//! | PMP (write predicates) | T1 adds 10 to every row; T2 deletes `where value = 20` meanwhile | prevented: T2's delete of row 2 dies or waits and loses; final `20, 30` | not run |
//! | P4 lost update | T1 and T2 read row 1, both write `11`, T2's write while T1's is uncommitted | prevented: T2 gets a retryable conflict (at once, or after waiting for T1), also when it writes after T1 committed; exactly one commits | Hermitage's interleaving: as under SI; a second write *after* T1's commit is a new statement and **overwrites** (lost update allowed, PostgreSQL's result) |
//! | G-single read skew | T1 reads row 1; T2 changes rows 1 and 2 and commits; T1 reads row 2 | prevented: T1 reads `20`; with a predicate dependency T1's `value % 3 = 0` finds nothing; with a write predicate T1's `delete where value = 20` gets a retryable conflict | **not prevented**: T1 reads `18` (read skew) |
//! | G2-item write skew | T1 and T2 read rows 1 and 2, T1 writes row 1, T2 row 2 | **allowed**: both commit (final `11, 21`) | not run |
//! | G2 anti-dependency cycles | T1 and T2 scan `value % 3 = 0`, insert `3 -> 30` and `4 -> 42` | **allowed**: both commit; Fekete et al.'s read-only anomaly (T1 reads, T2 and then T3 commit, T1 writes) commits too | not run |
//!
//! Every test ends by reading the committed state in a fresh snapshot transaction on
//! every node and comparing it with what its assertions imply.

use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::node::ComputeNode;
use compute_node::txn::{Isolation, Table, Txn, TxnError};
use std::ops::Bound;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// How long a possibly blocking step gets before the test treats it as waiting (it may
/// finish later; the assertions look only at its outcome).
const PROBE: Duration = Duration::from_millis(500);
/// How long a blocked step may take once the step that unblocks it has run.
const HANG: Duration = Duration::from_secs(60);

const SI: Isolation = Isolation::Snapshot;
const RC: Isolation = Isolation::ReadCommitted;

/// A row of `test`: (id, value).
type Row = (i64, i64);
/// A `where` clause over (id, value).
type Pred = fn(i64, i64) -> bool;

fn cluster(nodes: usize) -> EmbeddedCluster {
    common::service::init_tracing("warn");
    EmbeddedCluster::start(ClusterOptions {
        compute_nodes: nodes,
        storage_memory: 32 << 20,
        pages_per_storage_node: 1 << 16,
        buffer_frames: 1024,
        compute: compute_node::node::ComputeConfig {
            wait_policy: compute_node::mvcc::WaitPolicy::WaitDie,
            ..compute_node::node::ComputeConfig::default()
        },
        ..ClusterOptions::default()
    })
    .expect("cluster starts")
}

fn key(id: i64) -> Vec<u8> {
    format!("{id:03}").into_bytes()
}

fn decode(k: &[u8], v: &[u8]) -> Row {
    let num = |b: &[u8]| -> i64 {
        std::str::from_utf8(b)
            .expect("utf-8")
            .parse()
            .expect("a number")
    };
    (num(k), num(v))
}

/// Hermitage's setup: `create table test (id int primary key, value int)` with
/// `(1, 10), (2, 20)`, committed from node 0.
fn setup(c: &EmbeddedCluster) -> Table {
    let t = c.nodes[0].create_table("test").expect("create table");
    let mut tx = c.nodes[0].begin().expect("begin");
    put(&mut tx, &t, 1, 10).expect("insert 1");
    put(&mut tx, &t, 2, 20).expect("insert 2");
    tx.commit().expect("setup commits");
    t
}

fn begin(node: &ComputeNode, iso: Isolation) -> Txn {
    node.begin_with(iso).expect("begin")
}

/// `update test set value = v where id = id` (or an insert of a new id).
fn put(tx: &mut Txn, t: &Table, id: i64, v: i64) -> Result<(), TxnError> {
    tx.put(t, &key(id), v.to_string().as_bytes())
}

fn try_get(tx: &mut Txn, t: &Table, id: i64) -> Result<Option<i64>, TxnError> {
    Ok(tx.get(t, &key(id))?.map(|v| decode(&key(id), &v).1))
}

/// `select value from test where id = id`.
fn get(tx: &mut Txn, t: &Table, id: i64) -> Option<i64> {
    try_get(tx, t, id).expect("point read")
}

fn try_select(tx: &mut Txn, t: &Table, pred: Pred) -> Result<Vec<Row>, TxnError> {
    let rows = tx.scan(t, (Bound::Unbounded, Bound::Unbounded), false, None)?;
    Ok(rows
        .iter()
        .map(|(k, v)| decode(k, v))
        .filter(|&(id, v)| pred(id, v))
        .collect())
}

/// `select * from test where pred`: a full scan, filtered.
fn select(tx: &mut Txn, t: &Table, pred: Pred) -> Vec<Row> {
    try_select(tx, t, pred).expect("scan")
}

/// `select * from test`.
fn select_all(tx: &mut Txn, t: &Table) -> Vec<Row> {
    select(tx, t, |_, _| true)
}

/// `select * from test where id between lo and hi`: a key-range scan.
fn select_ids(tx: &mut Txn, t: &Table, lo: i64, hi: i64) -> Vec<Row> {
    let (lo, hi) = (key(lo), key(hi));
    tx.scan(
        t,
        (Bound::Included(&lo[..]), Bound::Included(&hi[..])),
        false,
        None,
    )
    .expect("range scan")
    .iter()
    .map(|(k, v)| decode(k, v))
    .collect()
}

/// `update test set value = f(value) where pred`: the predicate's scan, then a write of
/// each matching row. Returns the ids written.
fn update_where(
    tx: &mut Txn,
    t: &Table,
    pred: Pred,
    f: fn(i64) -> i64,
) -> Result<Vec<i64>, TxnError> {
    let mut ids = Vec::new();
    for (id, v) in try_select(tx, t, pred)? {
        put(tx, t, id, f(v))?;
        ids.push(id);
    }
    Ok(ids)
}

/// `delete from test where pred`: the predicate's scan, then a delete of each matching
/// row. Returns the ids deleted.
fn delete_where(tx: &mut Txn, t: &Table, pred: Pred) -> Result<Vec<i64>, TxnError> {
    let mut ids = Vec::new();
    for (id, _) in try_select(tx, t, pred)? {
        if tx.delete(t, &key(id))? {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn commit(tx: Txn, who: &str) {
    if let Err(e) = tx.commit() {
        panic!("{who} must commit, got: {e}");
    }
}

#[track_caller]
fn assert_retryable<T: std::fmt::Debug>(r: &Result<T, TxnError>, what: &str) {
    match r {
        Err(e) if e.is_retryable() => {}
        Err(e) => panic!("{what}: expected a retryable conflict, got a non-retryable error: {e}"),
        Ok(v) => panic!("{what}: expected a retryable conflict, but it succeeded ({v:?})"),
    }
}

/// The committed state, read in a fresh snapshot transaction on every node; every node
/// must see `expected`.
#[track_caller]
fn assert_committed_state(c: &EmbeddedCluster, t: &Table, expected: &[Row]) {
    for (i, node) in c.nodes.iter().enumerate() {
        let mut tx = begin(node, SI);
        let rows = select_all(&mut tx, t);
        commit(tx, "the final read");
        assert_eq!(rows, expected, "committed state as read on node {i}");
    }
}

/// A session's step that may block (a write meeting another session's uncommitted
/// version), running on a helper thread that owns the session's transaction.
struct Pending<R> {
    what: &'static str,
    rx: mpsc::Receiver<(Txn, R)>,
    thread: JoinHandle<()>,
    /// The outcome, if the step finished within [`PROBE`] (it did not wait).
    early: Option<(Txn, R)>,
}

/// Starts `step` on `tx` in a helper thread and gives it [`PROBE`] to finish.
fn may_block<R: Send + 'static>(
    what: &'static str,
    mut tx: Txn,
    step: impl FnOnce(&mut Txn) -> R + Send + 'static,
) -> Pending<R> {
    let (send, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let r = step(&mut tx);
        let _ = send.send((tx, r));
    });
    let early = rx.recv_timeout(PROBE).ok();
    Pending {
        what,
        rx,
        thread,
        early,
    }
}

impl<T> Pending<Result<T, TxnError>> {
    /// A write that finished at once must have failed: succeeding would mean it
    /// overwrote (or went around) the other session's uncommitted version.
    #[track_caller]
    fn assert_not_applied_yet(&self) {
        if let Some((_, Ok(_))) = &self.early {
            panic!(
                "{}: succeeded while another transaction's write to the row was uncommitted",
                self.what
            );
        }
    }
}

impl<R> Pending<R> {
    /// Waits for the step's outcome (after the step that unblocks it has run). Returns
    /// the session, the outcome, and whether the step was still waiting after [`PROBE`].
    fn finish(self) -> (Txn, R, bool) {
        if let Some((tx, r)) = self.early {
            let _ = self.thread.join();
            return (tx, r, false);
        }
        match self.rx.recv_timeout(HANG) {
            Ok((tx, r)) => {
                let _ = self.thread.join();
                (tx, r, true)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
                panic!("{}: the helper thread panicked", self.what)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "{}: still blocked {HANG:?} after it was unblocked",
                    self.what
                )
            }
        }
    }
}

fn describe<T>(r: &Result<T, TxnError>, waited: bool) -> String {
    match (r, waited) {
        (Ok(_), true) => "waited, then succeeded".into(),
        (Ok(_), false) => "succeeded at once".into(),
        (Err(e), true) => format!("waited, then failed: {e}"),
        (Err(e), false) => format!("failed at once: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// G0: write cycles (dirty writes)
// ---------------------------------------------------------------------------------------

/// T1 and T2 both update rows 1 and 2; T2's update of row 1 comes while T1's is
/// uncommitted. With `t2_older`, T2 begins first, so under wait-die it waits for T1
/// instead of dying at once.
fn g0(iso: Isolation, t2_older: bool) {
    let c = cluster(2);
    let t = setup(&c);
    let (mut t1, t2) = if t2_older {
        let t2 = begin(&c.nodes[1], iso);
        (begin(&c.nodes[0], iso), t2)
    } else {
        let t1 = begin(&c.nodes[0], iso);
        (t1, begin(&c.nodes[1], iso))
    };
    assert_eq!(t2_older, t2.id() < t1.id(), "begin order gives id order");
    put(&mut t1, &t, 1, 11).expect("T1: update 1 = 11");
    let tbl = t.clone();
    let step = may_block("T2: update 1 = 12", t2, move |tx| put(tx, &tbl, 1, 12));
    step.assert_not_applied_yet();
    put(&mut t1, &t, 2, 21).expect("T1: update 2 = 21");
    commit(t1, "T1");
    let mut after_t1 = begin(&c.nodes[0], SI);
    assert_eq!(
        select_all(&mut after_t1, &t),
        vec![(1, 11), (2, 21)],
        "after T1's commit"
    );
    commit(after_t1, "a reader after T1");
    let (mut t2, r, waited) = step.finish();
    eprintln!(
        "G0 ({iso:?}, T2 {}): T2's update of row 1 {}",
        if t2_older { "older" } else { "younger" },
        describe(&r, waited)
    );
    match (iso, r) {
        (Isolation::Snapshot, r) => {
            // First updater wins: T1 committed after T2's snapshot.
            assert_retryable(&r, "T2: update 1 = 12 under SI");
            t2.abort().expect("T2 aborts");
            assert_committed_state(&c, &t, &[(1, 11), (2, 21)]);
        }
        (_, Err(e)) => {
            assert!(e.is_retryable(), "T2's update failed, not retryably: {e}");
            t2.abort().expect("T2 aborts");
            assert_committed_state(&c, &t, &[(1, 11), (2, 21)]);
        }
        (_, Ok(())) => {
            // Read committed may apply T2 after T1 (PostgreSQL does): then all of T2
            // goes after all of T1.
            assert!(waited, "T2 can only have written row 1 after T1 finished");
            put(&mut t2, &t, 2, 22).expect("T2: update 2 = 22");
            commit(t2, "T2");
            assert_committed_state(&c, &t, &[(1, 12), (2, 22)]);
        }
    }
}

#[test]
fn g0_write_cycles_are_prevented() {
    g0(SI, false);
}

#[test]
fn g0_write_cycles_are_prevented_when_the_second_writer_is_older() {
    g0(SI, true);
}

#[test]
fn g0_write_cycles_are_prevented_under_read_committed() {
    g0(RC, false);
}

#[test]
fn g0_write_cycles_are_prevented_under_read_committed_when_the_second_writer_is_older() {
    g0(RC, true);
}

// ---------------------------------------------------------------------------------------
// G1a: aborted reads
// ---------------------------------------------------------------------------------------

fn g1a(iso: Isolation) {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], iso);
    let mut t2 = begin(&c.nodes[1], iso);
    put(&mut t1, &t, 1, 101).expect("T1: update 1 = 101");
    assert_eq!(
        select_all(&mut t2, &t),
        vec![(1, 10), (2, 20)],
        "T2 before T1 aborts"
    );
    assert_eq!(get(&mut t2, &t, 1), Some(10));
    t1.abort().expect("T1 aborts");
    assert_eq!(
        select_all(&mut t2, &t),
        vec![(1, 10), (2, 20)],
        "T2 after T1 aborted"
    );
    assert_eq!(get(&mut t2, &t, 1), Some(10));
    commit(t2, "T2");
    // A new transaction on T1's node does not see the aborted version either.
    let mut t3 = begin(&c.nodes[0], iso);
    assert_eq!(
        get(&mut t3, &t, 1),
        Some(10),
        "on the aborted writer's node"
    );
    commit(t3, "T3");
    assert_committed_state(&c, &t, &[(1, 10), (2, 20)]);
}

#[test]
fn g1a_aborted_reads_are_prevented() {
    g1a(SI);
}

#[test]
fn g1a_aborted_reads_are_prevented_under_read_committed() {
    g1a(RC);
}

// ---------------------------------------------------------------------------------------
// G1b: intermediate reads
// ---------------------------------------------------------------------------------------

fn g1b(iso: Isolation) {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], iso);
    let mut t2 = begin(&c.nodes[1], iso);
    put(&mut t1, &t, 1, 101).expect("T1: update 1 = 101");
    assert_eq!(
        select_all(&mut t2, &t),
        vec![(1, 10), (2, 20)],
        "T2 while 101 is there"
    );
    put(&mut t1, &t, 1, 11).expect("T1: update 1 = 11");
    commit(t1, "T1");
    let after = select_all(&mut t2, &t);
    match iso {
        // T2's snapshot predates T1's commit.
        Isolation::Snapshot => assert_eq!(after, vec![(1, 10), (2, 20)], "T2 after T1's commit"),
        // A new statement sees T1's final write, never its intermediate one.
        Isolation::ReadCommitted => {
            assert_eq!(after, vec![(1, 11), (2, 20)], "T2 after T1's commit")
        }
    }
    commit(t2, "T2");
    assert_committed_state(&c, &t, &[(1, 11), (2, 20)]);
}

#[test]
fn g1b_intermediate_reads_are_prevented() {
    g1b(SI);
}

#[test]
fn g1b_intermediate_reads_are_prevented_under_read_committed() {
    g1b(RC);
}

// ---------------------------------------------------------------------------------------
// G1c: circular information flow
// ---------------------------------------------------------------------------------------

fn g1c(iso: Isolation) {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], iso);
    let mut t2 = begin(&c.nodes[1], iso);
    put(&mut t1, &t, 1, 11).expect("T1: update 1 = 11");
    put(&mut t2, &t, 2, 22).expect("T2: update 2 = 22");
    assert_eq!(get(&mut t1, &t, 2), Some(20), "T1 must not read T2's write");
    assert_eq!(get(&mut t2, &t, 1), Some(10), "T2 must not read T1's write");
    commit(t1, "T1");
    commit(t2, "T2");
    assert_committed_state(&c, &t, &[(1, 11), (2, 22)]);
}

#[test]
fn g1c_circular_information_flow_is_prevented() {
    g1c(SI);
}

#[test]
fn g1c_circular_information_flow_is_prevented_under_read_committed() {
    g1c(RC);
}

// ---------------------------------------------------------------------------------------
// OTV: observed transaction vanishes
// ---------------------------------------------------------------------------------------

/// T1 updates rows 1 and 2; T2 updates row 1 while T1's write is uncommitted; T1
/// commits; T3 reads row 1, T2 updates row 2, T3 reads row 2, T2 commits, T3 reads
/// both again. Once T3 has seen T1's write to row 1 it must see T1's write to row 2
/// (or a later one), and once it has seen T2's write to row 2 it must see T2's to row 1.
fn otv(iso: Isolation) {
    let c = cluster(3);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], iso);
    let t2 = begin(&c.nodes[1], iso);
    // Read committed reads with a snapshot per statement, so T3 begins where Hermitage
    // begins it. A snapshot transaction sees what committed before it began (PostgreSQL:
    // before its first statement), so under SI T3 begins at its first read below.
    let mut t3 = (iso == RC).then(|| begin(&c.nodes[2], iso));
    put(&mut t1, &t, 1, 11).expect("T1: update 1 = 11");
    put(&mut t1, &t, 2, 19).expect("T1: update 2 = 19");
    let tbl = t.clone();
    let step = may_block("T2: update 1 = 12", t2, move |tx| put(tx, &tbl, 1, 12));
    step.assert_not_applied_yet();
    commit(t1, "T1");
    let mut t3 = t3.take().unwrap_or_else(|| begin(&c.nodes[2], iso));
    assert_eq!(get(&mut t3, &t, 1), Some(11), "T3 sees T1's write to row 1");
    let (mut t2, r, waited) = step.finish();
    eprintln!(
        "OTV ({iso:?}): T2's update of row 1 {}",
        describe(&r, waited)
    );
    if iso == SI {
        assert_retryable(&r, "T2: update 1 = 12 under SI (T1 wrote row 1 first)");
    }
    match r {
        Err(e) => {
            assert!(e.is_retryable(), "T2's update failed, not retryably: {e}");
            t2.abort().expect("T2 aborts");
            assert_eq!(get(&mut t3, &t, 2), Some(19), "T3 sees T1's write to row 2");
            assert_eq!(get(&mut t3, &t, 2), Some(19));
            assert_eq!(get(&mut t3, &t, 1), Some(11));
            commit(t3, "T3");
            assert_committed_state(&c, &t, &[(1, 11), (2, 19)]);
        }
        Ok(()) => {
            // Read committed, PostgreSQL's path: T2 went on after T1 committed.
            put(&mut t2, &t, 2, 18).expect("T2: update 2 = 18");
            assert_eq!(
                get(&mut t3, &t, 2),
                Some(19),
                "T3: T1's row 2, not T2's yet"
            );
            commit(t2, "T2");
            assert_eq!(get(&mut t3, &t, 2), Some(18), "T3 sees T2's write to row 2");
            assert_eq!(
                get(&mut t3, &t, 1),
                Some(12),
                "so it sees T2's write to row 1"
            );
            commit(t3, "T3");
            assert_committed_state(&c, &t, &[(1, 12), (2, 18)]);
        }
    }
}

#[test]
fn otv_observed_transaction_vanishes_is_prevented() {
    otv(SI);
}

#[test]
fn otv_observed_transaction_vanishes_is_prevented_under_read_committed() {
    otv(RC);
}

// ---------------------------------------------------------------------------------------
// PMP: predicate-many-preceders
// ---------------------------------------------------------------------------------------

/// T1 scans `value = 30` (nothing) and the key range 1..=9; T2 inserts `3 -> 30` and
/// commits; T1 scans `value % 3 = 0` and the key range again.
fn pmp_read(iso: Isolation) {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], iso);
    let mut t2 = begin(&c.nodes[1], iso);
    assert_eq!(
        select(&mut t1, &t, |_, v| v == 30),
        vec![],
        "T1: value = 30"
    );
    assert_eq!(
        select_ids(&mut t1, &t, 1, 9),
        vec![(1, 10), (2, 20)],
        "T1: ids 1..=9"
    );
    put(&mut t2, &t, 3, 30).expect("T2: insert 3 -> 30");
    commit(t2, "T2");
    let predicate = select(&mut t1, &t, |_, v| v % 3 == 0);
    let range = select_ids(&mut t1, &t, 1, 9);
    match iso {
        Isolation::Snapshot => {
            assert_eq!(predicate, vec![], "T1: value % 3 = 0 within its snapshot");
            assert_eq!(
                range,
                vec![(1, 10), (2, 20)],
                "T1: ids 1..=9 within its snapshot"
            );
        }
        Isolation::ReadCommitted => {
            // Not prevented under read committed: each statement sees the latest commits.
            assert_eq!(
                predicate,
                vec![(3, 30)],
                "T1: value % 3 = 0, a new statement"
            );
            assert_eq!(range, vec![(1, 10), (2, 20), (3, 30)], "T1: ids 1..=9");
        }
    }
    commit(t1, "T1");
    assert_committed_state(&c, &t, &[(1, 10), (2, 20), (3, 30)]);
}

#[test]
fn pmp_predicate_reads_are_stable_within_a_snapshot() {
    pmp_read(SI);
}

#[test]
fn pmp_predicate_reads_see_new_rows_under_read_committed() {
    pmp_read(RC);
}

/// Hermitage's write-predicate variant (from the PostgreSQL documentation): T1 runs
/// `update test set value = value + 10`; T2 runs `delete from test where value = 20`,
/// which meets T1's uncommitted version of row 2; T1 commits. T2 must not delete
/// anything on the strength of a predicate T1 has since made false.
#[test]
fn pmp_write_predicates_are_prevented() {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], SI);
    let t2 = begin(&c.nodes[1], SI);
    let ids = update_where(&mut t1, &t, |_, _| true, |v| v + 10).expect("T1: value += 10");
    assert_eq!(ids, vec![1, 2]);
    let tbl = t.clone();
    let step = may_block("T2: delete where value = 20", t2, move |tx| {
        delete_where(tx, &tbl, |_, v| v == 20)
    });
    step.assert_not_applied_yet();
    commit(t1, "T1");
    let (t2, r, waited) = step.finish();
    eprintln!(
        "PMP write: T2's delete where value = 20 {}",
        describe(&r, waited)
    );
    assert_retryable(
        &r,
        "T2: delete where value = 20 (row 2 was rewritten by T1)",
    );
    t2.abort().expect("T2 aborts");
    assert_committed_state(&c, &t, &[(1, 20), (2, 30)]);
}

// ---------------------------------------------------------------------------------------
// P4: lost update
// ---------------------------------------------------------------------------------------

/// T1 and T2 read row 1, both write 11; T2's write comes while T1's is uncommitted.
fn p4(t2_older: bool) {
    let c = cluster(2);
    let t = setup(&c);
    let (mut t1, mut t2) = if t2_older {
        let t2 = begin(&c.nodes[1], SI);
        (begin(&c.nodes[0], SI), t2)
    } else {
        let t1 = begin(&c.nodes[0], SI);
        (t1, begin(&c.nodes[1], SI))
    };
    assert_eq!(t2_older, t2.id() < t1.id(), "begin order gives id order");
    assert_eq!(get(&mut t1, &t, 1), Some(10), "T1 reads row 1");
    assert_eq!(get(&mut t2, &t, 1), Some(10), "T2 reads row 1");
    put(&mut t1, &t, 1, 11).expect("T1: update 1 = 11");
    let tbl = t.clone();
    let step = may_block("T2: update 1 = 11", t2, move |tx| put(tx, &tbl, 1, 11));
    step.assert_not_applied_yet();
    commit(t1, "T1");
    let (t2, r, waited) = step.finish();
    eprintln!(
        "P4 (T2 {}): T2's update of row 1 {}",
        if t2_older { "older" } else { "younger" },
        describe(&r, waited)
    );
    assert_retryable(&r, "T2: update 1 = 11 (T1 updated row 1 first)");
    t2.abort().expect("T2 aborts");
    assert_committed_state(&c, &t, &[(1, 11), (2, 20)]);
}

#[test]
fn p4_lost_update_is_prevented() {
    p4(false);
}

#[test]
fn p4_lost_update_is_prevented_when_the_second_writer_is_older() {
    p4(true);
}

/// The same, but T2 writes only after T1 committed: nothing to wait for, and still T2
/// must lose (its snapshot predates T1's commit).
#[test]
fn p4_lost_update_is_prevented_when_the_second_write_follows_the_first_commit() {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], SI);
    let mut t2 = begin(&c.nodes[1], SI);
    assert_eq!(get(&mut t1, &t, 1), Some(10));
    assert_eq!(get(&mut t2, &t, 1), Some(10));
    put(&mut t1, &t, 1, 11).expect("T1: update 1 = 11");
    commit(t1, "T1");
    let r = put(&mut t2, &t, 1, 11);
    assert_retryable(&r, "T2: update 1 = 11 after T1 committed");
    t2.abort().expect("T2 aborts");
    // A retry (new snapshot) reads T1's value and goes through.
    let mut retry = begin(&c.nodes[1], SI);
    assert_eq!(get(&mut retry, &t, 1), Some(11), "the retry sees T1");
    put(&mut retry, &t, 1, 12).expect("the retry's update");
    commit(retry, "T2's retry");
    assert_committed_state(&c, &t, &[(1, 12), (2, 20)]);
}

/// Read committed does not prevent lost updates: T2's write after T1's commit is a new
/// statement with a new snapshot, so it overwrites T1's update with a value computed
/// from what T2 read before it (Hermitage's PostgreSQL "read committed" result).
#[test]
fn p4_lost_update_happens_under_read_committed() {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], RC);
    let mut t2 = begin(&c.nodes[1], RC);
    let v1 = get(&mut t1, &t, 1).expect("T1 reads row 1");
    let v2 = get(&mut t2, &t, 1).expect("T2 reads row 1");
    put(&mut t1, &t, 1, v1 + 1).expect("T1: value = value + 1, as read");
    commit(t1, "T1");
    put(&mut t2, &t, 1, v2 + 1).expect("T2: value = value + 1, as read");
    commit(t2, "T2");
    // Two increments, one lost.
    assert_committed_state(&c, &t, &[(1, 11), (2, 20)]);
}

// ---------------------------------------------------------------------------------------
// G-single: single anti-dependency cycles (read skew)
// ---------------------------------------------------------------------------------------

/// T1 reads row 1; T2 reads both rows, sets 1 -> 12 and 2 -> 18 (the sum stays 30) and
/// commits; T1 reads row 2.
fn g_single(iso: Isolation) {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], iso);
    let mut t2 = begin(&c.nodes[1], iso);
    assert_eq!(get(&mut t1, &t, 1), Some(10), "T1 reads row 1");
    assert_eq!(get(&mut t2, &t, 1), Some(10));
    assert_eq!(get(&mut t2, &t, 2), Some(20));
    put(&mut t2, &t, 1, 12).expect("T2: update 1 = 12");
    put(&mut t2, &t, 2, 18).expect("T2: update 2 = 18");
    commit(t2, "T2");
    let y = get(&mut t1, &t, 2);
    match iso {
        Isolation::Snapshot => {
            assert_eq!(y, Some(20), "T1 reads row 2 in its snapshot (no read skew)")
        }
        // Not prevented under read committed: T1 sees 10 + 18.
        Isolation::ReadCommitted => assert_eq!(y, Some(18), "T1 reads row 2 as a new statement"),
    }
    commit(t1, "T1");
    assert_committed_state(&c, &t, &[(1, 12), (2, 18)]);
}

#[test]
fn g_single_read_skew_is_prevented() {
    g_single(SI);
}

#[test]
fn g_single_read_skew_happens_under_read_committed() {
    g_single(RC);
}

/// With a predicate dependency: T1 scans `value % 5 = 0`; T2 runs `update test set
/// value = 12 where value = 10` and commits; T1 scans `value % 3 = 0` and must find
/// nothing (12 would only be there with T2's write).
#[test]
fn g_single_read_skew_with_predicate_dependencies_is_prevented() {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], SI);
    let mut t2 = begin(&c.nodes[1], SI);
    assert_eq!(
        select(&mut t1, &t, |_, v| v % 5 == 0),
        vec![(1, 10), (2, 20)],
        "T1: value % 5 = 0"
    );
    let ids = update_where(&mut t2, &t, |_, v| v == 10, |_| 12).expect("T2: update where 10");
    assert_eq!(ids, vec![1]);
    commit(t2, "T2");
    assert_eq!(
        select(&mut t1, &t, |_, v| v % 3 == 0),
        vec![],
        "T1: value % 3 = 0"
    );
    commit(t1, "T1");
    assert_committed_state(&c, &t, &[(1, 12), (2, 20)]);
}

/// With a write predicate: T1 reads row 1; T2 reads everything, sets 1 -> 12 and
/// 2 -> 18, commits; T1 runs `delete from test where value = 20`. Its snapshot still
/// shows row 2 as 20, but deleting it would act on a value T2 has overwritten: T1 must
/// get a retryable conflict.
#[test]
fn g_single_read_skew_with_a_write_predicate_is_prevented() {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], SI);
    let mut t2 = begin(&c.nodes[1], SI);
    assert_eq!(get(&mut t1, &t, 1), Some(10), "T1 reads row 1");
    assert_eq!(select_all(&mut t2, &t), vec![(1, 10), (2, 20)]);
    put(&mut t2, &t, 1, 12).expect("T2: update 1 = 12");
    put(&mut t2, &t, 2, 18).expect("T2: update 2 = 18");
    commit(t2, "T2");
    let r = delete_where(&mut t1, &t, |_, v| v == 20);
    assert_retryable(&r, "T1: delete where value = 20");
    t1.abort().expect("T1 aborts");
    assert_committed_state(&c, &t, &[(1, 12), (2, 18)]);
}

// ---------------------------------------------------------------------------------------
// G2-item: item anti-dependency cycles (write skew) — allowed under SI
// ---------------------------------------------------------------------------------------

/// T1 and T2 both read rows 1 and 2, then T1 writes row 1 and T2 row 2, each on the
/// strength of what it read. The writes do not overlap, so snapshot isolation lets
/// both commit: the result (11, 21) matches no serial order of the two (either would
/// have read the other's write). Serializable isolation would abort one of them.
#[test]
fn g2_item_write_skew_commits_under_si() {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], SI);
    let mut t2 = begin(&c.nodes[1], SI);
    assert_eq!(
        select_ids(&mut t1, &t, 1, 2),
        vec![(1, 10), (2, 20)],
        "T1: ids 1, 2"
    );
    assert_eq!(
        select_ids(&mut t2, &t, 1, 2),
        vec![(1, 10), (2, 20)],
        "T2: ids 1, 2"
    );
    put(&mut t1, &t, 1, 11).expect("T1: update 1 = 11");
    put(&mut t2, &t, 2, 21).expect("T2: update 2 = 21");
    commit(t1, "T1 (write skew is allowed under SI)");
    commit(t2, "T2 (write skew is allowed under SI)");
    assert_committed_state(&c, &t, &[(1, 11), (2, 21)]);
}

// ---------------------------------------------------------------------------------------
// G2: anti-dependency cycles over predicates — allowed under SI
// ---------------------------------------------------------------------------------------

/// T1 and T2 both scan `value % 3 = 0` (nothing), then T1 inserts `3 -> 30` and T2
/// `4 -> 42`. Each insert would have changed the other's scan; SI lets both commit (no
/// key is written twice, and there are no predicate locks).
#[test]
fn g2_anti_dependency_cycles_commit_under_si() {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], SI);
    let mut t2 = begin(&c.nodes[1], SI);
    assert_eq!(
        select(&mut t1, &t, |_, v| v % 3 == 0),
        vec![],
        "T1: value % 3 = 0"
    );
    assert_eq!(
        select(&mut t2, &t, |_, v| v % 3 == 0),
        vec![],
        "T2: value % 3 = 0"
    );
    put(&mut t1, &t, 3, 30).expect("T1: insert 3 -> 30");
    put(&mut t2, &t, 4, 42).expect("T2: insert 4 -> 42");
    commit(t1, "T1 (allowed under SI)");
    commit(t2, "T2 (allowed under SI)");
    for node in &c.nodes {
        let mut tx = begin(node, SI);
        assert_eq!(
            select(&mut tx, &t, |_, v| v % 3 == 0),
            vec![(3, 30), (4, 42)],
            "either: value % 3 = 0"
        );
        commit(tx, "a reader");
    }
    assert_committed_state(&c, &t, &[(1, 10), (2, 20), (3, 30), (4, 42)]);
}

/// Fekete et al.'s example with two anti-dependency edges, T3 read-only: T1 reads
/// everything; T2 adds 5 to row 2 and commits; T3 reads everything (10, 25) and commits;
/// T1 sets row 1 to 0. T3 saw T2 but not T1, T1 did not see T2, and T1 commits after
/// both: no serial order explains it. PostgreSQL's serializable aborts T1; snapshot
/// isolation commits it.
#[test]
fn g2_fekete_read_only_anomaly_commits_under_si() {
    let c = cluster(3);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], SI);
    assert_eq!(
        select_all(&mut t1, &t),
        vec![(1, 10), (2, 20)],
        "T1 reads all"
    );
    let mut t2 = begin(&c.nodes[1], SI);
    let ids = update_where(&mut t2, &t, |id, _| id == 2, |v| v + 5).expect("T2: +5 on row 2");
    assert_eq!(ids, vec![2]);
    commit(t2, "T2");
    let mut t3 = begin(&c.nodes[2], SI);
    assert_eq!(
        select_all(&mut t3, &t),
        vec![(1, 10), (2, 25)],
        "T3 reads all"
    );
    commit(t3, "T3");
    put(&mut t1, &t, 1, 0).expect("T1: update 1 = 0 (allowed under SI)");
    commit(t1, "T1 (allowed under SI)");
    assert_committed_state(&c, &t, &[(1, 0), (2, 25)]);
}

/// Not a Hermitage case: a write that lost a conflict leaves its transaction good only
/// for an abort (as in PostgreSQL), so a caller that ignores the error cannot commit
/// the transaction's other writes.
#[test]
fn a_transaction_whose_write_failed_cannot_commit() {
    let c = cluster(2);
    let t = setup(&c);
    let mut t1 = begin(&c.nodes[0], SI);
    put(&mut t1, &t, 1, 11).unwrap();
    let mut t2 = begin(&c.nodes[1], SI);
    put(&mut t2, &t, 3, 30).unwrap();
    let err = put(&mut t2, &t, 1, 12).unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let again = try_get(&mut t2, &t, 3).unwrap_err();
    assert!(again.is_retryable(), "later operations fail too: {again}");
    let commit_err = t2.commit().unwrap_err();
    assert!(commit_err.is_retryable(), "{commit_err}");
    t1.commit().unwrap();
    assert_committed_state(&c, &t, &[(1, 11), (2, 20)]);
}
