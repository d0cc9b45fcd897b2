//! DESIGN.md invariant 6 across a GTM crash: a compute node dies holding X page locks,
//! its lease runs out, and the GTM stops after it persisted the epoch as dead but
//! before the lock release reached every storage node. The restarted GTM must still
//! have every storage node fence that epoch, rebuild its pages from its durable redo and
//! free its locks, so other nodes can lock and read those pages again, with the dead
//! node's acknowledged commits in them.

use cluster::{ClusterOptions, EmbeddedCluster};
use common::ids::{Epoch, NodeId};
use compute_node::node::ComputeConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_millis(1000);
const FAILPOINT: &str = "gtm::release_locks_of";
const KEYS: u64 = 4;

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
            .args(["--node-id", &node_id.to_string()])
            .args(["--gtm", &c.gtm_endpoint().to_string()])
            .args(["--storage", &storage.join(","), "--heartbeat-ms", "100"])
            .arg("--key-file")
            .arg(c.key_file())
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn probe");
        let out = child.stdout.take().unwrap();
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
        assert_eq!(
            p.lines
                .recv_timeout(Duration::from_secs(30))
                .ok()
                .as_deref(),
            Some("READY")
        );
        p
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn invariant_6_a_lock_release_cut_short_by_a_gtm_crash_is_redone_after_the_restart() {
    common::service::init_tracing("warn");
    let mut c = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 0,
        storage_nodes: 2,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 16,
        buffer_frames: 2048,
        lease: LEASE,
        compute: ComputeConfig {
            rpc_timeout_s: 5,
            ..ComputeConfig::default()
        },
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let setup = c.start_compute_node(50).unwrap();
    setup.create_table("counters").unwrap();
    setup.shutdown().unwrap();
    drop(setup);

    // The setup node left; its (empty) release went through.
    let m = c.gtm().metrics();
    wait_until("the setup node's release", Duration::from_secs(10), || {
        m.lock_releases.load(Ordering::Relaxed) == 1
    });
    // From now on a release reaches storage node 0 only (node 1 "unreachable").
    fail::cfg(FAILPOINT, "return(1)").unwrap();

    // Node 1 commits increments (it keeps the leaf's X lock and its dirty image; the
    // commits are durable only as its redo on the storage nodes) and is killed -9.
    let victim = Probe::spawn(
        &c,
        1,
        &[
            "increments",
            "--table",
            "counters",
            "--keys",
            &KEYS.to_string(),
            "--count",
            "1000000",
        ],
    );
    let mut acked = 0u64;
    while acked < 20 {
        let line = victim
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the victim commits");
        assert!(line.starts_with("ACK "), "victim said {line}");
        acked += 1;
    }
    kill(Pid::from_raw(victim.child.id() as i32), Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    acked += victim
        .lines
        .try_iter()
        .filter(|l| l.starts_with("ACK "))
        .count() as u64;

    // The lease runs out; the GTM fences the epoch (persisted) and tries the release,
    // which does not get past storage node 0.
    wait_until("the lease to expire", Duration::from_secs(30), || {
        m.lease_expiries.load(Ordering::Relaxed) >= 1
            && m.lock_release_failures.load(Ordering::Relaxed) >= 1
    });
    assert_eq!(m.lock_releases.load(Ordering::Relaxed), 1);

    // The GTM crashes with the release still queued, and restarts from its files.
    c.stop_gtm();
    fail::remove(FAILPOINT);
    c.restart_gtm().expect("the GTM restarts");

    // Another node locks and reads the dead node's pages within a bounded time, and
    // finds its acknowledged commits (at most its one unacknowledged in-flight commit
    // more).
    let checker = c.start_compute_node(99).expect("checker node");
    let t = checker.table("counters").unwrap();
    let started = Instant::now();
    let bound = Duration::from_secs(25);
    let mut attempts = 0;
    let sum = loop {
        attempts += 1;
        let r = checker.begin().and_then(|mut tx| {
            let mut sum = 0u64;
            for k in 0..KEYS {
                sum += tx
                    .get(&t, format!("c{k}").as_bytes())?
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
            }
            tx.put(&t, b"checker", b"was here")?;
            tx.commit()?;
            Ok(sum)
        });
        match r {
            Ok(sum) => break sum,
            Err(e) => assert!(
                started.elapsed() < bound,
                "the dead node's pages stay locked {:?} after the GTM restart \
                 ({attempts} attempts): {e}",
                started.elapsed()
            ),
        }
    };
    assert!(
        sum >= acked && sum <= acked + 1,
        "counters sum to {sum}, the dead node had {acked} acknowledged increments"
    );

    // Every storage node fenced the dead epoch, durably.
    for i in 0..2 {
        let dir = c.dir().join(format!("storage-{i}"));
        wait_until(
            &format!("storage node {i} to fence node 1 epoch 1"),
            Duration::from_secs(10),
            || {
                storage_node::recovery::read_fences(&common::durable::StdFs, &dir)
                    .unwrap()
                    .get(&NodeId(1))
                    .is_some_and(|e| *e >= Epoch(1))
            },
        );
    }
    assert!(c.gtm().metrics().lock_releases.load(Ordering::Relaxed) >= 1);
    checker.shutdown().unwrap();
}
