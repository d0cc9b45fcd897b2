//! Invariant 6: a compute node whose lease lapses (here: a real client process
//! frozen with SIGSTOP) has its in-progress transactions aborted and its locks freed,
//! and after SIGCONT its commits are refused — by its own fence and by the GTM.

mod support;

use common::fabric::{ClusterKey, Endpoint};
use common::gtm::{GtmClient, GtmError, TxnStatus};
use common::ids::{Epoch, NodeId, TxnId};
use gtm::{Gtm, GtmOptions, RecordingReleaser};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{key_file, opts, KEY};

const LEASE: Duration = Duration::from_millis(400);

fn start_gtm(dir: &std::path::Path) -> (Gtm, Endpoint, Arc<RecordingReleaser>) {
    let mut o = GtmOptions::new(dir.join("data"));
    o.lease = LEASE;
    o.reaper_interval = Duration::from_millis(20);
    let releaser = Arc::new(RecordingReleaser::default());
    let mut gtm = Gtm::start(
        &o,
        ClusterKey::from_material(KEY.as_bytes()).unwrap(),
        Box::new(releaser.clone()),
    )
    .unwrap();
    let ep = gtm
        .serve(&format!("shm://{}/gtm.sock", dir.display()).parse().unwrap())
        .unwrap();
    (gtm, ep, releaser)
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l.trim().to_string()
}

#[test]
fn invariant_6_lapsed_lease_aborts_txns_frees_locks_and_fences_a_sigstopped_node() {
    let dir = tempfile::tempdir().unwrap();
    let (_gtm, ep, releaser) = start_gtm(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gtm-bench"))
        .args([
            "probe",
            "--endpoint",
            &ep.to_string(),
            "--node",
            "7",
            "--txns",
            "3",
        ])
        .arg("--key-file")
        .arg(key_file(dir.path()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let epoch: u32 = read_line(&mut out)
        .strip_prefix("EPOCH ")
        .unwrap()
        .parse()
        .unwrap();
    let txns: Vec<TxnId> = (0..3)
        .map(|_| {
            TxnId(
                read_line(&mut out)
                    .strip_prefix("TXN ")
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(read_line(&mut out), "READY");

    let observer = GtmClient::connect(&ep, &opts()).unwrap();
    // Three lease lengths with heartbeats: the lease holds, the txns stay in progress.
    std::thread::sleep(LEASE * 3);
    assert_eq!(
        observer.txn_status_batch(&txns).unwrap(),
        vec![TxnStatus::InProgress; 3],
        "heartbeats must keep a live node's transactions alive"
    );
    assert!(releaser.released.lock().is_empty());

    kill(pid, Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let deadline = stopped + LEASE * 10;
    loop {
        let st = observer.txn_status_batch(&txns).unwrap();
        if st == vec![TxnStatus::Aborted; 3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "txns of the dead node not aborted: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The last renewal was at most a heartbeat interval (lease / 4) before the stop.
    assert!(
        stopped.elapsed() >= LEASE * 3 / 4 - Duration::from_millis(20),
        "aborted before the lease could have run out"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while releaser.released.lock().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        *releaser.released.lock(),
        vec![(NodeId(7), Epoch(epoch))],
        "the storage nodes must be told to free the dead epoch's locks"
    );

    kill(pid, Signal::SIGCONT).unwrap();
    writeln!(stdin, "commit").unwrap();
    stdin.flush().unwrap();
    for &t in &txns {
        let l = read_line(&mut out);
        assert_eq!(
            l,
            format!("COMMIT {t} local=fenced remote=fenced"),
            "a fenced node's commit must be refused locally and by the GTM"
        );
    }
    assert_eq!(read_line(&mut out), "LEASE fenced");
    assert_eq!(read_line(&mut out), "DONE");
    drop(stdin);
    child.wait().unwrap();

    // Still aborted; and the node comes back only with a new epoch.
    assert_eq!(
        observer.txn_status_batch(&txns).unwrap(),
        vec![TxnStatus::Aborted; 3]
    );
    let reg = observer.register(NodeId(7)).unwrap();
    assert_eq!(reg.epoch, Epoch(epoch + 1));
    match observer.commit_as(NodeId(7), Epoch(epoch), txns[0]) {
        Err(GtmError::Fenced(_)) => {}
        other => panic!("old epoch's commit accepted: {other:?}"),
    }
}

#[test]
fn invariant_6_the_client_fences_itself_before_the_gtm_expires_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (_gtm, ep, _rel) = start_gtm(dir.path());
    let c = GtmClient::connect(&ep, &opts()).unwrap();
    let reg = c.register(NodeId(3)).unwrap();
    let (txn, _) = c.begin().unwrap();
    // No heartbeats: the local deadline (lease minus margin) passes first.
    let wd = c.write_deadline().unwrap();
    std::thread::sleep(wd.saturating_duration_since(Instant::now()) + Duration::from_millis(5));
    assert!(matches!(c.check_lease(), Err(GtmError::Fenced(_))));
    assert!(matches!(c.commit(txn), Err(GtmError::Fenced(_))));
    // The GTM has not reaped yet (margin), but will: the txn ends up aborted.
    std::thread::sleep(LEASE);
    assert!(
        matches!(c.heartbeat(), Err(GtmError::Fenced(_))),
        "no revival after the deadline"
    );
    assert_eq!(
        c.txn_status_batch(&[txn]).unwrap(),
        vec![TxnStatus::Aborted]
    );
    assert!(matches!(
        c.commit_as(reg.node, reg.epoch, txn),
        Err(GtmError::Fenced(_))
    ));
}
