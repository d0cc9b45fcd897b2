//! Freeze sweeps bound the GTM's outcome index and commit log (`gtm::freeze`), and lose
//! nothing: two nodes insert, update, lock and abort while sweeps run; the index and
//! the log level off far below the number of commits; afterwards a node with a cold
//! cache reads every row as the model says (a version the sweep missed would make its
//! read fail: its writer's outcome is forgotten), and the GTM survives a restart with
//! its floor.

use cluster::{ClusterOptions, EmbeddedCluster};
use common::fabric::Transport;
use compute_node::node::ComputeConfig;
use compute_node::txn::Table;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn cluster() -> EmbeddedCluster {
    cluster_with(50)
}

/// `poll_ms` 0: no node sweeps by itself (the test drives the sweeps).
fn cluster_with(poll_ms: u64) -> EmbeddedCluster {
    common::service::init_tracing("warn");
    EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 2,
        transport: Transport::Shm,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 15,
        buffer_frames: 2048,
        compute: ComputeConfig {
            freeze_poll_ms: poll_ms,
            ..ComputeConfig::default()
        },
        gtm: gtm::config::GtmConfig {
            // Small: slots are reused within the run, so retired commits go to the
            // outcome index (which the sweeps must then bound).
            status_capacity: 512,
            freeze_interval_ms: 200,
            freeze_after_txns: 0,
            ..gtm::config::GtmConfig::default()
        },
        ..ClusterOptions::default()
    })
    .expect("cluster starts")
}

fn key(k: u32) -> [u8; 4] {
    k.to_be_bytes()
}

/// One round on `node`: inserts, updates, a locking read that writes nothing, an
/// aborted write; the model keeps what committed.
fn round(
    c: &EmbeddedCluster,
    node: usize,
    t: &Table,
    rng: &mut rand::rngs::StdRng,
    model: &mut BTreeMap<u32, Vec<u8>>,
    next_key: &mut u32,
) {
    let n = &c.nodes[node];
    for _ in 0..12 {
        let mut tx = n.begin().unwrap();
        let mut writes = Vec::new();
        for _ in 0..3 {
            let k = if model.is_empty() || rng.gen_bool(0.4) {
                *next_key += 1;
                *next_key
            } else {
                *model.keys().nth(rng.gen_range(0..model.len())).unwrap()
            };
            let v = format!("{k}:{}", rng.gen::<u32>()).into_bytes();
            match tx.put(t, &key(k), &v) {
                Ok(()) => writes.push((k, v)),
                Err(e) if e.is_retryable() => break,
                Err(e) => panic!("put: {e}"),
            }
        }
        match rng.gen_range(0..10) {
            0 => tx.abort().unwrap(),
            _ => match tx.commit() {
                Ok(_) => model.extend(writes),
                Err(e) if e.is_retryable() => {}
                Err(e) => panic!("commit: {e}"),
            },
        }
    }
    // A lock that commits without a write, and a read-only transaction.
    if let Some(&k) = model.keys().next() {
        let mut tx = n.begin().unwrap();
        let _ = tx.get_for_update(t, &key(k));
        let _ = tx.commit();
    }
}

fn gtm_metric(c: &EmbeddedCluster, f: impl Fn(&gtm::metrics::Metrics) -> u64) -> u64 {
    f(&c.gtm().metrics())
}

#[test]
fn freeze_sweeps_bound_the_outcome_index_and_the_commit_log() {
    let mut c = cluster();
    let t = c.nodes[0].create_table("t").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model = BTreeMap::new();
    let mut next_key = 0;
    let mut samples = Vec::new();
    let started = Instant::now();
    for r in 0..120 {
        round(&c, r % 2, &t, &mut rng, &mut model, &mut next_key);
        if r % 12 == 11 {
            let m = c.gtm().metrics();
            samples.push((
                m.commits.load(Ordering::Relaxed),
                m.retired_commits.load(Ordering::Relaxed),
                m.commit_log_records.load(Ordering::Relaxed),
                m.freeze_floor.load(Ordering::Relaxed),
            ));
        }
    }
    eprintln!(
        "{:?}: (commits, outcome index, commit-log records, floor) every 12 rounds: {samples:?}",
        started.elapsed()
    );
    let commits = gtm_metric(&c, |m| m.commits.load(Ordering::Relaxed));
    assert!(commits > 1000, "{commits} commits");

    // Quiet now: the next sweeps cover every commit; the index and the log shrink to
    // (almost) nothing. Without sweeps they would hold every retired commit.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let index = gtm_metric(&c, |m| m.retired_commits.load(Ordering::Relaxed));
        let log = gtm_metric(&c, |m| m.commit_log_records.load(Ordering::Relaxed));
        if index < 50 && log < 600 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outcome index {index}, commit log {log} records after {commits} commits"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = c.gtm().metrics();
    assert!(m.freezes.load(Ordering::Relaxed) >= 2);
    assert!(m.log_records_dropped.load(Ordering::Relaxed) > commits / 2);
    // The file is its records, then at most `PREALLOCATE` zeroes written ahead of them.
    let file = std::fs::read(c.dir().join("gtm").join("commit.log")).unwrap();
    let (_, records) = gtm::commit_log::decode_records(&file);
    assert!(
        records < 600 * 20,
        "commit.log holds {records} bytes of records"
    );
    assert!(
        (file.len() as u64) < records as u64 + gtm::commit_log::PREALLOCATE,
        "commit.log is {} bytes for {records} bytes of records",
        file.len()
    );
    assert!(
        file[records..].iter().all(|b| *b == 0),
        "zeroes after the records"
    );
    let swept: u64 = c
        .nodes
        .iter()
        .map(|n| n.engine().stats.freeze_sweeps.load(Ordering::Relaxed))
        .sum();
    assert!(swept >= 2, "the compute nodes ran {swept} sweeps");

    // A cold node reads every row (forgotten outcomes would fail it), twice: by key and
    // by scan.
    let check = |c: &EmbeddedCluster, id: u32| {
        let n = c.start_compute_node(id).unwrap();
        let mut tx = n.begin().unwrap();
        for (k, v) in &model {
            assert_eq!(
                tx.get(&t, &key(*k)).unwrap().as_deref(),
                Some(&v[..]),
                "key {k}"
            );
        }
        let rows = tx
            .scan(
                &t,
                (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
                false,
                None,
            )
            .unwrap();
        assert_eq!(rows.len(), model.len());
        tx.commit().unwrap();
        n.shutdown().unwrap();
    };
    check(&c, 3);

    // The floor survives a GTM restart: old txns stay forgotten, not aborted. Sweeps
    // go on meanwhile (node 3's txns made another one due), so a sweep applied between
    // the reading and the restart may raise it; it is never lower.
    let floor = gtm_metric(&c, |m| m.freeze_floor.load(Ordering::Relaxed));
    assert!(floor > 0);
    c.restart_gtm().unwrap();
    let restarted = gtm_metric(&c, |m| m.freeze_floor.load(Ordering::Relaxed));
    assert!(
        restarted >= floor,
        "floor {floor} before the restart, {restarted} after"
    );
    for n in &c.nodes {
        n.rejoin("the GTM restarted").unwrap();
    }
    check(&c, 4);
    c.shutdown().unwrap();
}

/// A sweep cut short keeps its place: node 0 sweeps part of a table and reports points;
/// the GTM restarts (keeping the grant and the point in `sweep.grant`); node 1 gets the
/// same target and point, sweeps a little further and rejoins (its grant goes void);
/// node 0 gets the newer point and finishes, scanning only what was left. Nothing is
/// missed: once the floor is raised, a cold node reads every row (an unstamped version
/// below the floor would fail its read: its writer's outcome is forgotten).
#[test]
fn a_sweep_cut_short_resumes_at_its_point_on_another_node_and_after_a_gtm_restart() {
    use common::gtm::SweepPoint;
    use compute_node::freeze::sweep;
    use compute_node::txn::TxnError;
    use std::sync::atomic::AtomicBool;

    let mut c = cluster_with(0);
    let t = c.nodes[0].create_table("t").unwrap();
    let mut model = BTreeMap::new();
    const ROWS: u32 = 3000;
    for chunk in 0..ROWS / 100 {
        let n = &c.nodes[(chunk % 2) as usize];
        let mut tx = n.begin().unwrap();
        for k in chunk * 100..(chunk + 1) * 100 {
            let v = format!("row {k} {}", "x".repeat(60)).into_bytes();
            tx.put(&t, &key(k), &v).unwrap();
            model.insert(k, v);
        }
        tx.commit().unwrap();
    }
    std::thread::sleep(Duration::from_millis(250)); // freeze_interval_ms

    // Runs a sweep on `node` from `resume`, stopping after `reports` points (0: to
    // the end); returns the points the GTM acknowledged and the rows scanned.
    let run = |c: &EmbeddedCluster, node: usize, below, resume: &SweepPoint, reports: usize| {
        let n = &c.nodes[node];
        let engine = n.engine();
        let stop = AtomicBool::new(false);
        let mut points = Vec::new();
        let mut report = |p: &SweepPoint| -> Result<(), TxnError> {
            engine
                .gtm()
                .freeze_progress(below, p)
                .map_err(|e| TxnError::Storage(e.to_string()))?;
            points.push(p.clone());
            if points.len() == reports {
                stop.store(true, Ordering::Release);
            }
            Ok(())
        };
        let r = sweep(
            &engine,
            &n.catalog(),
            below,
            resume,
            &stop,
            Duration::ZERO,
            &mut report,
        );
        (r, points)
    };

    let (below, resume) = c.nodes[0].engine().gtm().freeze_target().unwrap().unwrap();
    assert_eq!(resume, SweepPoint::Start);
    let (r, points0) = run(&c, 0, below, &resume, 3);
    assert!(r.is_err(), "stopped after three points: {r:?}");
    assert_eq!(points0.len(), 3);

    c.restart_gtm().unwrap();
    for n in &c.nodes {
        n.rejoin("the GTM restarted").unwrap();
    }
    let (b1, resume1) = c.nodes[1].engine().gtm().freeze_target().unwrap().unwrap();
    assert_eq!(
        (b1, &resume1),
        (below, &points0[2]),
        "kept across the restart"
    );
    let (r, points1) = run(&c, 1, below, &resume1, 2);
    assert!(r.is_err());
    assert_eq!(points1.len(), 2);
    assert_ne!(points1[1], points0[2], "node 1 went further");

    c.nodes[1].rejoin("a test cut its sweep short").unwrap();
    let (b2, resume2) = c.nodes[0].engine().gtm().freeze_target().unwrap().unwrap();
    assert_eq!(
        (b2, &resume2),
        (below, &points1[1]),
        "handed over with the point"
    );
    let (r, _) = run(&c, 0, below, &resume2, 0);
    let st = r.unwrap();
    assert!(
        st.rows_scanned > 0 && st.rows_scanned < u64::from(ROWS),
        "the last sweep resumed: it scanned {} of {ROWS} rows",
        st.rows_scanned
    );
    c.nodes[0].engine().gtm().frozen(below).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while gtm_metric(&c, |m| m.freeze_floor.load(Ordering::Relaxed)) < below.0 {
        assert!(Instant::now() < deadline, "the floor was not raised");
        // A snapshot after the report's timestamp moves the GC watermark past it.
        c.nodes[1].begin().unwrap().commit().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let n = c.start_compute_node(3).unwrap();
    let mut tx = n.begin().unwrap();
    for (k, v) in &model {
        assert_eq!(
            tx.get(&t, &key(*k)).unwrap().as_deref(),
            Some(&v[..]),
            "key {k}"
        );
    }
    tx.commit().unwrap();
    n.shutdown().unwrap();
    c.shutdown().unwrap();
}

/// Rows written once are stamped by the next write to their leaf, not left to a sweep:
/// 300 single-row transactions append to one table (as TPC-C's order lines do); each
/// write stamps, in place, the versions of the committed writers its node knows in the
/// leaf it changes. A sweep then finds only the last row unstamped (nobody wrote its
/// leaf after it), where without the stamping it would rewrite all 300; and another
/// node, which has never heard of those writers, reads every row.
#[test]
fn rows_written_once_are_stamped_by_later_writes_to_their_leaf() {
    use common::gtm::SweepPoint;
    use compute_node::freeze::sweep;
    use std::sync::atomic::AtomicBool;

    let c = cluster_with(0);
    let t = c.nodes[0].create_table("t").unwrap();
    const ROWS: u32 = 300;
    for k in 0..ROWS {
        let mut tx = c.nodes[0].begin().unwrap();
        tx.put(
            &t,
            &key(k),
            format!("row {k} {}", "x".repeat(80)).as_bytes(),
        )
        .unwrap();
        tx.commit().unwrap();
    }
    std::thread::sleep(Duration::from_millis(250)); // freeze_interval_ms
    let engine = c.nodes[0].engine();
    let (below, resume) = engine.gtm().freeze_target().unwrap().unwrap();
    let st = sweep(
        &engine,
        &c.nodes[0].catalog(),
        below,
        &resume,
        &AtomicBool::new(false),
        Duration::ZERO,
        &mut |_: &SweepPoint| Ok(()),
    )
    .unwrap();
    assert!(
        st.rows_scanned >= u64::from(ROWS),
        "the sweep scanned {st:?}"
    );
    assert!(
        st.rows_rewritten <= 2,
        "{} of {ROWS} rows were left for the sweep to stamp",
        st.rows_rewritten
    );
    let mut tx = c.nodes[1].begin().unwrap();
    for k in 0..ROWS {
        let got = tx.get(&t, &key(k)).unwrap().expect("row present");
        assert!(got.starts_with(format!("row {k} ").as_bytes()), "row {k}");
    }
    tx.commit().unwrap();
}
