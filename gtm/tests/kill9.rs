//! DESIGN.md invariants 4, 5 and 7 under `kill -9` of the real `gtm` binary, in a loop,
//! while callers take timestamps and commit (some commits racing aborts).

mod support;

use common::gtm::{GtmClient, GtmError, TxnStatus};
use common::ids::{NodeId, Timestamp, TxnId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{opts, GtmProc};

#[derive(Default)]
struct Seen {
    max_ts: u64,
    /// Acknowledged commits: txn -> commit ts.
    committed: HashMap<TxnId, Timestamp>,
    /// Acknowledged aborts.
    aborted: Vec<TxnId>,
    /// Commits whose call failed (outcome unknown: must be resolved after restart).
    unknown: Vec<TxnId>,
}

#[test]
fn invariants_4_5_7_timestamps_increase_and_acknowledged_commits_survive_kill9_loop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = vec![format!("shm://{}/gtm.sock", dir.path().display())];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut total_commits = 0;
    for round in 0..6 {
        let mut gtm = GtmProc::start(dir.path(), &data, &listen, &["--lease-ms", "5000"]);
        let ep = gtm.endpoints[0].clone();
        let client = Arc::new(GtmClient::connect(&ep, &opts()).unwrap());

        // Everything handed out before the restart is below what comes after it.
        let first = client.timestamp().unwrap();
        {
            let s = seen.lock();
            assert!(
                first.0 > s.max_ts,
                "round {round}: timestamp {first} after restart is not above {} (invariant 5)",
                s.max_ts
            );
            // Every acknowledged commit is still committed, with its timestamp.
            let txns: Vec<TxnId> = s.committed.keys().copied().collect();
            let st = client.txn_status_batch(&txns).unwrap();
            for (t, st) in txns.iter().zip(st) {
                assert_eq!(
                    st,
                    TxnStatus::Committed(s.committed[t]),
                    "round {round}: acknowledged commit {t} lost (invariant 7)"
                );
            }
            // No acknowledged abort became a commit.
            let st = client.txn_status_batch(&s.aborted).unwrap();
            for (t, st) in s.aborted.iter().zip(st) {
                assert_eq!(
                    st,
                    TxnStatus::Aborted,
                    "round {round}: aborted {t} (invariant 4)"
                );
            }
            // Commits with an unknown outcome are resolved one way or the other.
            let st = client.txn_status_batch(&s.unknown).unwrap();
            for (t, st) in s.unknown.iter().zip(st) {
                assert!(
                    st.is_resolved(),
                    "round {round}: {t} is {st:?} after restart"
                );
            }
        }
        client.register(NodeId(1)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..6 {
            let (client, stop, seen) = (client.clone(), stop.clone(), seen.clone());
            workers.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if w < 2 {
                        match client.timestamps(3) {
                            Ok((f, n)) => {
                                let mut s = seen.lock();
                                s.max_ts = s.max_ts.max(f.0 + n as u64 - 1);
                            }
                            Err(_) => return,
                        }
                        continue;
                    }
                    let Ok((txn, _)) = client.begin() else { return };
                    // Every third transaction races an abort against its commit.
                    let racer = i.is_multiple_of(3).then(|| {
                        let c = client.clone();
                        std::thread::spawn(move || c.abort(txn))
                    });
                    let r = client.commit(txn);
                    let a = racer.map(|h| h.join().unwrap());
                    let mut s = seen.lock();
                    match r {
                        Ok(cts) => {
                            assert!(
                                !matches!(a, Some(Ok(()))),
                                "{txn} both committed and aborted (invariant 4)"
                            );
                            s.max_ts = s.max_ts.max(cts.0);
                            s.committed.insert(txn, cts);
                        }
                        Err(GtmError::Aborted) => {
                            assert!(matches!(a, Some(Ok(()))), "{txn} aborted by nobody");
                            s.aborted.push(txn);
                        }
                        Err(_) => {
                            s.unknown.push(txn);
                            if matches!(a, Some(Ok(()))) {
                                s.aborted.push(txn);
                            }
                            return;
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(300 + 100 * round));
        gtm.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        total_commits = seen.lock().committed.len();
    }
    assert!(
        total_commits > 100,
        "only {total_commits} commits: the load did not run"
    );
}
