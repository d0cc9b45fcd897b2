//! The GTM engine in-process over real fabric connections: batching, the commit/abort
//! race, the GC watermark, slot retirement, bad input; and the binary's config errors
//! and clean SIGTERM.

mod support;

use common::fabric::{ClusterKey, Connection, Endpoint};
use common::gtm::proto::{ErrorKind, Request, Response};
use common::gtm::{GtmClient, GtmError, TxnStatus};
use common::ids::{NodeId, Timestamp, TxnId};
use gtm::{Gtm, GtmOptions, RecordingReleaser};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::{opts, KEY};

fn start(dir: &std::path::Path, capacity: u64) -> (Gtm, Endpoint) {
    let mut o = GtmOptions::new(dir.join("data"));
    o.status_capacity = capacity;
    o.gc_publish_interval = Duration::from_millis(5);
    let mut gtm = Gtm::start(
        &o,
        ClusterKey::from_material(KEY.as_bytes()).unwrap(),
        Box::new(RecordingReleaser::default()),
    )
    .unwrap();
    let ep = gtm
        .serve(&format!("shm://{}/gtm.sock", dir.display()).parse().unwrap())
        .unwrap();
    (gtm, ep)
}

#[test]
fn invariant_5_concurrent_timestamps_are_unique_and_a_batch_is_one_grant() {
    let dir = tempfile::tempdir().unwrap();
    let (gtm, ep) = start(dir.path(), 1024);
    let client = Arc::new(GtmClient::connect(&ep, &opts()).unwrap());
    let hs: Vec<_> = (0..16)
        .map(|_| {
            let c = client.clone();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                for _ in 0..500 {
                    let t = c.timestamp().unwrap();
                    assert!(v.last().is_none_or(|l| *l < t), "went backwards");
                    v.push(t);
                }
                v
            })
        })
        .collect();
    let mut all: Vec<Timestamp> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a timestamp was handed out twice");
    let m = gtm.metrics();
    let grants = m.tso_grants.load(Ordering::Relaxed);
    assert!(
        grants < n as u64,
        "{grants} grants for {n} timestamps: batches were not granted at once"
    );
}

/// A combined timestamp is granted after its caller asked: one drawn after a commit
/// returned is above that commit's timestamp, while many threads keep the client's
/// combiner busy (so the call joins a batch while another request is in flight).
#[test]
fn invariant_5_a_combined_timestamp_is_above_every_commit_that_returned_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_gtm, ep) = start(dir.path(), 4096);
    let client = Arc::new(GtmClient::connect(&ep, &opts()).unwrap());
    client.register(NodeId(1)).unwrap();
    // 300 commits behind eight busy threads can outlast a lease on a loaded machine.
    let _beats = client.spawn_heartbeats(Duration::from_millis(200));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..8)
        .map(|_| {
            let (c, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    c.timestamp().unwrap();
                }
            })
        })
        .collect();
    for _ in 0..300 {
        let (txn, _) = client.begin().unwrap();
        let cts = client.commit(txn).unwrap();
        let ts = client.timestamp().unwrap();
        assert!(ts > cts, "timestamp {ts} drawn after commit {cts} returned");
    }
    stop.store(true, Ordering::Relaxed);
    for h in busy {
        h.join().unwrap();
    }
    assert!(
        client.timestamp_callers_per_request() > 1.0,
        "calls were never combined"
    );
}

/// Read-committed statement snapshots: the published "last granted" word, read
/// one-sided, is above every commit acknowledged before the read, also while other
/// threads commit and draw timestamps, and it only grows.
#[test]
fn invariant_5_a_published_timestamp_is_above_every_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (_gtm, ep) = start(dir.path(), 4096);
    let client = Arc::new(GtmClient::connect(&ep, &opts()).unwrap());
    client.register(NodeId(1)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let (c, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (t, _) = c.begin().unwrap();
                    c.commit(t).unwrap();
                }
            })
        })
        .collect();
    let mut last = client.published_timestamp().unwrap();
    for _ in 0..300 {
        let (txn, _) = client.begin().unwrap();
        let cts = client.commit(txn).unwrap();
        let ts = client.published_timestamp().unwrap();
        assert!(
            ts > cts,
            "published snapshot {ts} read after commit {cts} returned"
        );
        assert!(
            ts >= last,
            "published timestamps went back: {last} then {ts}"
        );
        last = ts;
    }
    stop.store(true, Ordering::Relaxed);
    for h in busy {
        h.join().unwrap();
    }
}

#[test]
fn invariant_4_commit_racing_abort_has_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let (_gtm, ep) = start(dir.path(), 4096);
    let a = Arc::new(GtmClient::connect(&ep, &opts()).unwrap());
    let b = Arc::new(GtmClient::connect(&ep, &opts()).unwrap());
    a.register(NodeId(1)).unwrap();
    b.register(NodeId(2)).unwrap();
    let (mut commits, mut aborts) = (0, 0);
    for _ in 0..300 {
        let (txn, snap) = a.begin().unwrap();
        let bb = b.clone();
        let racer = std::thread::spawn(move || bb.abort(txn));
        let c = a.commit(txn);
        let ab = racer.join().unwrap();
        let st = a.txn_status_batch(&[txn]).unwrap()[0];
        match (c, ab) {
            (Ok(cts), Err(GtmError::Busy(_))) => {
                assert_eq!(st, TxnStatus::Committed(cts));
                commits += 1;
            }
            (Ok(cts), Err(GtmError::AlreadyCommitted(ts))) => {
                assert_eq!(cts, ts);
                assert!(cts > snap);
                assert_eq!(st, TxnStatus::Committed(cts));
                commits += 1;
            }
            (Err(GtmError::Aborted), Ok(())) => {
                assert_eq!(st, TxnStatus::Aborted);
                aborts += 1;
            }
            other => panic!("both or neither won: {other:?}"),
        }
    }
    assert_eq!(commits + aborts, 300);
}

#[test]
fn gc_watermark_is_the_oldest_active_snapshot_and_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let (_gtm, ep) = start(dir.path(), 1024);
    let c = GtmClient::connect(&ep, &opts()).unwrap();
    c.register(NodeId(1)).unwrap();
    let (old, old_snap) = c.begin().unwrap();
    for _ in 0..20 {
        let (t, _) = c.begin().unwrap();
        c.commit(t).unwrap();
    }
    assert_eq!(c.gc_watermark().unwrap(), old_snap);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.published_gc_watermark().unwrap(), old_snap);
    c.abort(old).unwrap();
    let w = c.gc_watermark().unwrap();
    assert!(
        w > old_snap,
        "watermark did not advance after the oldest txn ended"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(c.published_gc_watermark().unwrap() >= w);
}

#[test]
fn status_slots_are_retired_only_below_the_watermark_and_their_outcomes_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (gtm, ep) = start(dir.path(), 16);
    let c = GtmClient::connect(&ep, &opts()).unwrap();
    c.register(NodeId(1)).unwrap();
    let (pinned, _) = c.begin().unwrap();
    let (aborted, _) = c.begin().unwrap();
    c.abort(aborted).unwrap();
    let mut first = None;
    let mut busy = 0;
    for _ in 0..40 {
        match c.begin() {
            Ok((t, _)) => {
                let cts = c.commit(t).unwrap();
                first.get_or_insert((t, cts));
            }
            Err(GtmError::Busy(_)) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(busy > 0, "the in-progress txn's slot was reused");
    assert_eq!(
        c.txn_status_batch(&[pinned]).unwrap(),
        vec![TxnStatus::InProgress]
    );
    let pinned_cts = c.commit(pinned).unwrap();
    for _ in 0..40 {
        let (t, _) = c.begin().unwrap();
        c.commit(t).unwrap();
    }
    let (first, first_cts) = first.unwrap();
    for t in [pinned, aborted, first] {
        assert!(
            support::slot_occupant(&c, t, 16) > t.0,
            "slot of {t} not reused"
        );
    }
    // The region no longer knows them; the client asks the GTM in one batch.
    let before = gtm_outcome_requests(&gtm);
    assert_eq!(
        c.txn_status_batch(&[pinned, aborted, first]).unwrap(),
        vec![
            TxnStatus::Committed(pinned_cts),
            TxnStatus::Aborted,
            TxnStatus::Committed(first_cts)
        ]
    );
    assert_eq!(gtm_outcome_requests(&gtm), before + 1, "one Outcomes RPC");
    assert_eq!(
        c.txn_status_batch_nowait(&[first]).unwrap(),
        vec![TxnStatus::Committed(first_cts)]
    );
    // Decisions about retired transactions follow their outcome.
    assert!(matches!(c.abort(first), Err(GtmError::AlreadyCommitted(ts)) if ts == first_cts));
    assert!(matches!(c.commit(aborted), Err(GtmError::Aborted)));
}

fn gtm_outcome_requests(g: &Gtm) -> u64 {
    g.metrics().outcome_requests.load(Ordering::Relaxed)
}

#[test]
fn outcomes_rpc_answers_every_state_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let (_gtm, ep) = start(dir.path(), 1024);
    let c = GtmClient::connect(&ep, &opts()).unwrap();
    c.register(NodeId(1)).unwrap();
    let (running, _) = c.begin().unwrap();
    let (done, _) = c.begin().unwrap();
    let cts = c.commit(done).unwrap();
    let (gone, _) = c.begin().unwrap();
    c.abort(gone).unwrap();
    let future = TxnId(gone.0 + 1_000_000);
    assert_eq!(
        c.outcomes(&[running, done, gone, future, TxnId(0)])
            .unwrap(),
        vec![
            TxnStatus::InProgress,
            TxnStatus::Committed(cts),
            TxnStatus::Aborted,
            TxnStatus::Unknown,
            TxnStatus::Unknown
        ]
    );
    // More than one request's worth: split into several requests, answered in order.
    let many: Vec<TxnId> = (0..2 * common::gtm::proto::MAX_OUTCOMES_PER_REQUEST + 3)
        .map(|i| if i % 2 == 0 { done } else { gone })
        .collect();
    let got = c.outcomes(&many).unwrap();
    assert_eq!(got.len(), many.len());
    for (t, s) in many.iter().zip(got) {
        let want = if *t == done {
            TxnStatus::Committed(cts)
        } else {
            TxnStatus::Aborted
        };
        assert_eq!(s, want);
    }
    // A bad count is a BadRequest for that request only.
    let raw = Connection::connect(&ep, &opts()).unwrap();
    let r = Response::decode(&raw.call(&[9, 0, 0]).unwrap()).unwrap();
    assert!(matches!(
        r,
        Response::Error {
            kind: ErrorKind::BadRequest,
            ..
        }
    ));
    let r = Response::decode(
        &raw.call(&Request::Outcomes { txns: vec![done] }.encode())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r, Response::Outcomes(vec![TxnStatus::Committed(cts)]));
}

#[test]
fn malformed_requests_get_bad_request_and_harm_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let (_gtm, ep) = start(dir.path(), 1024);
    let raw = Connection::connect(&ep, &opts()).unwrap();
    for junk in [&[][..], &[0xff][..], &[4, 0, 0, 0, 0][..], &[5, 1, 2][..]] {
        let r = Response::decode(&raw.call(junk).unwrap()).unwrap();
        assert!(
            matches!(
                r,
                Response::Error {
                    kind: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{junk:?} -> {r:?}"
        );
    }
    let r = Response::decode(
        &raw.call(&Request::Timestamps { count: 2 }.encode())
            .unwrap(),
    );
    assert!(matches!(r, Ok(Response::Timestamps { count: 2, .. })));
    let c = GtmClient::connect(&ep, &opts()).unwrap();
    assert!(matches!(c.begin(), Err(GtmError::NotRegistered)));
}

#[test]
fn the_binary_names_bad_config_keys_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gtm.toml");
    std::fs::write(&cfg, "lease_ms = 3000\nleese = 4\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gtm"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("leese") && err.contains("gtm.toml"), "{err}");

    let mut p = support::GtmProc::start(
        dir.path(),
        &dir.path().join("data"),
        &["tcp://127.0.0.1:0".to_string()],
        &[],
    );
    nix::sys::signal::kill(p.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = p.child.wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
}
