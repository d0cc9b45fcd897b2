//! Invariants 4, 5 and 7 under `kill -9` of the real `gtm` binary, in a loop,
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

/// Runs `n` begin+commit cycles (retrying `Busy`); returns the last txn and its cts.
fn churn(client: &GtmClient, n: usize) -> (TxnId, Timestamp) {
    let mut last = None;
    let mut done = 0;
    while done < n {
        match client.begin() {
            Ok((t, _)) => {
                last = Some((t, client.commit(t).unwrap()));
                done += 1;
            }
            Err(GtmError::Busy(_)) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    last.unwrap()
}

/// Invariants 4 and 7 for transactions whose status-table slot was reused (the ring of a
/// small capacity wrapped several times): an early committed txn still reads
/// `Committed(cts)` and an early aborted one `Aborted` through
/// `GtmClient::txn_status_batch`, before and after `kill -9` + restart of the real
/// binary, and after the ring wraps again past the commits restored at the restart.
#[test]
fn invariants_4_7_outcomes_of_retired_transactions_survive_kill9() {
    const CAP: u64 = 16;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = vec![format!("shm://{}/gtm.sock", dir.path().display())];
    // A small txn-id window keeps the boot floor close to the last txn issued, so the
    // last commits before a crash go back into their slots at the restart (the older
    // ones only into the outcome index): both paths are exercised.
    let cfg = dir.path().join("gtm.toml");
    std::fs::write(&cfg, "txn_id_window = 4\n").unwrap();
    let cfg = cfg.display().to_string();
    let args = [
        "--config",
        &cfg,
        "--status-capacity",
        "16",
        "--lease-ms",
        "5000",
    ];
    let start = || {
        let gtm = GtmProc::start(dir.path(), &data, &listen, &args);
        let c = GtmClient::connect(&gtm.endpoints[0], &opts()).unwrap();
        (gtm, c)
    };

    let (mut gtm, c) = start();
    c.register(NodeId(1)).unwrap();
    let (committed, _) = c.begin().unwrap();
    let cts = c.commit(committed).unwrap();
    let (aborted, _) = c.begin().unwrap();
    c.abort(aborted).unwrap();
    churn(&c, 3 * CAP as usize);
    for t in [committed, aborted] {
        assert!(
            support::slot_occupant(&c, t, CAP) > t.0,
            "the slot of {t} was not reused"
        );
    }
    let early = [committed, aborted];
    let want_early = vec![TxnStatus::Committed(cts), TxnStatus::Aborted];
    assert_eq!(c.txn_status_batch(&early).unwrap(), want_early);
    // The last commit before the crash is restored into its slot at the restart; a txn
    // in progress at the crash reads Aborted.
    let (recent, recent_cts) = churn(&c, 1);
    let (in_flight, _) = c.begin().unwrap();
    let all = [committed, aborted, recent, in_flight];
    let want_all = vec![
        TxnStatus::Committed(cts),
        TxnStatus::Aborted,
        TxnStatus::Committed(recent_cts),
        TxnStatus::Aborted,
    ];
    gtm.kill9();

    for round in 0..3 {
        let (g, c) = start();
        gtm = g;
        assert_eq!(
            c.txn_status_batch(&all).unwrap(),
            want_all,
            "round {round}: outcomes after kill -9 + restart"
        );
        assert_eq!(c.txn_status_batch_nowait(&all).unwrap(), want_all);
        if round == 0 {
            assert_eq!(
                support::slot_occupant(&c, recent, CAP),
                recent.0,
                "the last commit is back in its slot"
            );
            assert_ne!(support::slot_occupant(&c, committed, CAP), committed.0);
        }
        // Wrap the ring again: the restored commits lose their slots too.
        c.register(NodeId(1)).unwrap();
        churn(&c, 3 * CAP as usize);
        for t in all {
            assert_ne!(
                support::slot_occupant(&c, t, CAP),
                t.0,
                "round {round}: {t}"
            );
        }
        assert_eq!(
            c.txn_status_batch(&all).unwrap(),
            want_all,
            "round {round}: outcomes after the ring wrapped again"
        );
        gtm.kill9();
    }
}
