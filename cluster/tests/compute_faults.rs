//! Compute-node failures with real processes: kill -9 during a concurrent workload, and
//! a paused (SIGSTOP) node whose lease lapses (Invariants 6 and 7).

use cluster::{ClusterOptions, EmbeddedCluster};
use common::gtm::TxnStatus;
use common::ids::TxnId;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_millis(1000);

fn cluster() -> EmbeddedCluster {
    common::service::init_tracing("warn");
    EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 0,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 16,
        buffer_frames: 2048,
        lease: LEASE,
        ..ClusterOptions::default()
    })
    .expect("cluster starts")
}

struct Probe {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Probe {
    fn spawn(c: &EmbeddedCluster, node_id: u32, cmd: &[&str]) -> Probe {
        let storage: Vec<String> = c
            .storage_endpoints()
            .iter()
            .map(|e| e.to_string())
            .collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cluster-probe"))
            .args([
                "--node-id",
                &node_id.to_string(),
                "--gtm",
                &c.gtm_endpoint().to_string(),
            ])
            .args([
                "--storage",
                &storage.join(","),
                "--heartbeat-ms",
                "100",
                "--key-file",
            ])
            .arg(c.key_file())
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn probe");
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let p = Probe { child, lines: rx };
        assert_eq!(p.next(Duration::from_secs(30)).as_deref(), Some("READY"));
        p
    }

    fn next(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counter_sum(c: &EmbeddedCluster, table: &str, keys: u64) -> u64 {
    let node = c.start_compute_node(99).expect("checker node");
    let t = node.table(table).unwrap();
    let mut tx = node.begin().unwrap();
    let sum = (0..keys)
        .map(|k| {
            tx.get(&t, format!("c{k}").as_bytes())
                .unwrap()
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
        })
        .sum();
    tx.commit().unwrap();
    node.shutdown().unwrap();
    sum
}

#[test]
fn invariant_7_kill9_of_a_compute_node_loses_no_acknowledged_commit() {
    let c = cluster();
    // Create the table first so every probe finds it.
    let setup = c.start_compute_node(50).unwrap();
    setup.create_table("counters").unwrap();
    setup.shutdown().unwrap();
    drop(setup);

    let keys = 4u64;
    let count = 120u64;
    let probes: Vec<Probe> = (1..=3)
        .map(|id| {
            Probe::spawn(
                &c,
                id,
                &[
                    "increments",
                    "--table",
                    "counters",
                    "--keys",
                    "4",
                    "--count",
                    &count.to_string(),
                ],
            )
        })
        .collect();
    let mut acked = [0u64; 3];
    let mut finished = [false; 3];
    let mut victim_killed = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished
        .iter()
        .zip(0..)
        .any(|(f, i)| !(*f || (i == 1 && victim_killed)))
    {
        assert!(
            Instant::now() < deadline,
            "survivors did not finish: acked {acked:?}"
        );
        for (i, p) in probes.iter().enumerate() {
            if finished[i] || (i == 1 && victim_killed) {
                continue;
            }
            while let Ok(line) = p.lines.try_recv() {
                if line.starts_with("ACK ") {
                    acked[i] += 1;
                } else {
                    panic!("probe {} said {line}", i + 1);
                }
            }
            if acked[i] == count {
                finished[i] = true;
            }
        }
        if !victim_killed && acked[1] >= 20 {
            kill(probes[1].pid(), Signal::SIGKILL).unwrap();
            victim_killed = true;
            // Lines it printed before dying still count as acknowledged.
            std::thread::sleep(Duration::from_millis(50));
            while let Ok(line) = probes[1].lines.try_recv() {
                if line.starts_with("ACK ") {
                    acked[1] += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        victim_killed,
        "the victim finished before it could be killed"
    );
    let total: u64 = acked.iter().sum();
    let sum = counter_sum(&c, "counters", keys);
    // Every acknowledged increment is there; at most the victim's one in-flight commit
    // (committed at the GTM, never acknowledged) may be there too.
    assert!(
        sum >= total && sum <= total + 1,
        "sum {sum}, acknowledged {total} ({acked:?})"
    );
}

#[test]
fn invariant_6_a_paused_node_loses_its_lease_locks_and_transactions() {
    let c = cluster();
    let setup = c.start_compute_node(50).unwrap();
    let t = setup.create_table("held").unwrap();
    let mut p = Probe::spawn(&c, 7, &["hold", "--table", "held", "--key", "k"]);
    let line = p.next(Duration::from_secs(30)).expect("probe holds");
    let txn = TxnId(
        line.strip_prefix("HOLDING ")
            .expect("HOLDING line")
            .parse()
            .unwrap(),
    );
    kill(p.pid(), Signal::SIGSTOP).unwrap();
    // Past the lease and the reaper: the GTM aborts the txn and frees the page locks.
    std::thread::sleep(LEASE * 3);
    let started = Instant::now();
    let mut tx = setup.begin().unwrap();
    tx.put(&t, b"k", b"survivor")
        .expect("the paused node's lock and intent are gone");
    tx.commit().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let status = setup.engine().gtm().txn_status_batch(&[txn]).unwrap()[0];
    assert_eq!(status, TxnStatus::Aborted);

    kill(p.pid(), Signal::SIGCONT).unwrap();
    p.child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"commit\n")
        .unwrap();
    let said = p.next(Duration::from_secs(30)).expect("probe answers");
    assert!(said.starts_with("ERR "), "a fenced node committed: {said}");
    let status = p.child.wait().unwrap();
    assert_ne!(status.code(), Some(0));
    let mut tx = setup.begin().unwrap();
    assert_eq!(tx.get(&t, b"k").unwrap(), Some(b"survivor".to_vec()));
    tx.commit().unwrap();
}

/// A locking read that waits for a holder whose node is killed (-9) gets the row once
/// the holder's lease has run out: the newest committed value, not the dead holder's
/// uncommitted one, and the waiter's write is kept.
#[test]
fn a_locking_read_waiting_for_a_killed_holder_gets_the_committed_row() {
    let c = cluster();
    let node = c.start_compute_node(51).unwrap();
    let t = node.create_table("hot").unwrap();
    let mut tx = node.begin().unwrap();
    tx.put(&t, b"k", b"committed").unwrap();
    tx.commit().unwrap();
    let p = Probe::spawn(
        &c,
        8,
        &["hold", "--table", "hot", "--key", "k", "--for-update"],
    );
    let line = p.next(Duration::from_secs(30)).expect("probe holds");
    let holder = TxnId(
        line.strip_prefix("HOLDING ")
            .expect("HOLDING line")
            .parse()
            .unwrap(),
    );
    std::thread::scope(|s| {
        // Retries a lock wait that times out (the lease and the GTM's reaper may take
        // longer than one wait), as a client would.
        let waiter = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut tx = node.begin().unwrap();
                let r = tx
                    .get_for_update(&t, b"k")
                    .and_then(|seen| tx.put(&t, b"k", b"after the holder").map(|_| seen))
                    .and_then(|seen| tx.commit().map(|_| seen));
                match r {
                    Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
                    r => return r,
                }
            }
        });
        // Kill the holder while the waiter waits for it.
        let started = Instant::now();
        while node
            .engine()
            .stats
            .lock_waits
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            assert!(started.elapsed() < Duration::from_secs(20), "never waited");
            std::thread::sleep(Duration::from_millis(5));
        }
        kill(p.pid(), Signal::SIGKILL).unwrap();
        let seen = waiter.join().unwrap().expect("the waiter commits");
        assert_eq!(seen.as_deref(), Some(&b"committed"[..]));
    });
    let status = node.engine().gtm().txn_status_batch(&[holder]).unwrap()[0];
    assert_eq!(status, TxnStatus::Aborted);
    let mut tx = node.begin().unwrap();
    assert_eq!(
        tx.get(&t, b"k").unwrap().as_deref(),
        Some(&b"after the holder"[..])
    );
    tx.commit().unwrap();
    drop(p);
    node.shutdown().unwrap();
}

/// A snapshot held across a pause that outlives the lease: once the GTM fenced the node
/// its snapshot no longer holds back version pruning, so a read after the pause may find
/// the versions it needs gone. It must fail (`Fenced`), never answer "no such row" or a
/// value other than the snapshot's.
#[test]
fn a_snapshot_read_after_the_lease_lapsed_is_fenced_not_answered() {
    let c = cluster();
    let writer = c.start_compute_node(52).unwrap();
    // One row per leaf: the probe's second read fetches a page it never cached.
    let t = writer
        .ensure_table_with(
            "snap",
            compute_node::btree::TreeOptions {
                max_leaf_entries: 1,
            },
        )
        .unwrap();
    let mut tx = writer.begin().unwrap();
    tx.put(&t, b"a", b"a1").unwrap();
    tx.put(&t, b"b", b"b1").unwrap();
    tx.commit().unwrap();
    writer.release_page_locks().unwrap();
    let mut p = Probe::spawn(
        &c,
        9,
        &["snapshot", "--table", "snap", "--first", "a", "--then", "b"],
    );
    assert_eq!(
        p.next(Duration::from_secs(30)).as_deref(),
        Some("READ a a1")
    );
    kill(p.pid(), Signal::SIGSTOP).unwrap();
    // Past the lease and the reaper: the probe's transaction is aborted at the GTM, so
    // the GC watermark passes its snapshot and new writes prune what it would read.
    std::thread::sleep(LEASE * 3);
    // Spread out, so that the published watermark (refreshed every few hundred ms)
    // passes the earlier ones and a later write prunes "b1".
    for v in [b"b2", b"b3", b"b4", b"b5", b"b6"] {
        let mut tx = writer.begin().unwrap();
        tx.put(&t, b"b", v).unwrap();
        tx.commit().unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    writer.release_page_locks().unwrap();
    kill(p.pid(), Signal::SIGCONT).unwrap();
    p.child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"read\n")
        .unwrap();
    let said = p.next(Duration::from_secs(30)).expect("probe answers");
    assert!(
        said == "READ b b1" || said.starts_with("ERR fenced"),
        "a read after the lease lapsed answered: {said}"
    );
    let status = p.child.wait().unwrap();
    assert_ne!(status.code(), Some(0), "a fenced snapshot committed");
    writer.shutdown().unwrap();
}
