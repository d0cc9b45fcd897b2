//! The short form of the history-checked suite (`scripts/history-test.sh` runs the long
//! one): workloads that record every attempt and read, checked for the anomalies
//! snapshot isolation forbids (invariant 10) and for lost acknowledged commits
//! (invariant 7), with races widened at the engine's injection points.

use cluster::history_run::case::{run_case, Case, CaseResult, Faults, Mode};
use cluster::history_run::inject::Intensity;
use cluster::history_run::Workload;
use common::fabric::Transport;
use compute_node::coherence::LockMode;

fn case(workload: Workload, nodes: usize, storage: usize) -> Case {
    Case {
        workload,
        mode: Mode::Embedded,
        compute_nodes: nodes,
        storage_nodes: storage,
        lock_mode: LockMode::Lazy,
        transport: Transport::Shm,
        faults: Faults::None,
        inject: Intensity::Light,
        seconds: 3.0,
        keys: 8,
        threads_per_node: 3,
        notice_slots: common::storage::notice::NOTICE_CAPACITY,
        locking: false,
        seed: 1,
    }
}

fn must_pass(c: &Case) -> CaseResult {
    common::service::init_tracing("error");
    let out = std::env::temp_dir().join("dsb-history-failures");
    let r = run_case(c, Some(&out)).unwrap_or_else(|e| panic!("{}: {e}", c.label()));
    eprintln!(
        "{} faults={} inject={} seed={}: {} attempts, {} committed, {} unknown, {} injection delays; {}",
        c.label(),
        c.faults.name(),
        c.inject.name(),
        c.seed,
        r.attempts,
        r.committed,
        r.unknown,
        r.inject_delays,
        r.summary
    );
    assert!(
        r.passed(),
        "{}\nreplay: {}\nsaved: {:?}",
        r.summary,
        c.replay_command(),
        r.saved
    );
    assert!(r.committed > 50, "the workload made progress: {r:?}");
    if c.inject != Intensity::Off {
        assert!(r.inject_hits > 0, "the injection points are compiled in");
    }
    r
}

/// The race of the first defect: a node gave a page's X lock up before it stopped
/// trusting its cached image, so for a moment it read (and wrote over) an image
/// another node had already changed and committed. Delays right before and after the
/// unlock and in revocations widen that moment; with the old order this lost
/// acknowledged appends within a few seeds (a transaction with a snapshot later than
/// another node's commit read the list without its element, appended, committed).
#[test]
fn invariant_10_three_nodes_lose_no_update_with_the_unlock_race_widened() {
    for seed in 1..=2 {
        let mut c = case(Workload::ListAppend, 3, 1);
        c.inject = Intensity::Heavy;
        c.seconds = 4.0;
        c.seed = seed;
        must_pass(&c);
    }
}

/// Notice rings of 16 slots: the compute nodes are lapped all the time and their
/// validation rounds fall back to checking every cached page.
#[test]
fn invariant_10_with_compute_nodes_lapped_by_the_notice_ring() {
    let mut c = case(Workload::ListAppend, 3, 2);
    c.notice_slots = 16;
    must_pass(&c);
}

#[test]
fn invariant_10_bank_across_two_storage_nodes() {
    let mut c = case(Workload::Bank, 3, 2);
    c.inject = Intensity::Heavy;
    must_pass(&c);
}

#[test]
fn invariant_10_registers_with_eager_locks_over_tcp() {
    let mut c = case(Workload::Register, 2, 1);
    c.lock_mode = LockMode::Eager;
    c.transport = Transport::Tcp;
    must_pass(&c);
}

#[test]
fn invariant_10_four_nodes_crashing_and_rejoining() {
    let mut c = case(Workload::ListAppend, 4, 2);
    c.faults = Faults::Crash;
    c.seconds = 4.0;
    must_pass(&c);
}

#[test]
fn invariant_10_nodes_leaving_mid_run() {
    let mut c = case(Workload::Bank, 3, 1);
    c.faults = Faults::Leave;
    c.seconds = 4.0;
    must_pass(&c);
}

/// Storage nodes crash (no flush, no checkpoint) and restart mid-run; the compute nodes
/// reclaim their X locks and go on with their pools (invariant 9 across a restart).
#[test]
fn invariant_9_and_10_storage_nodes_crashing_with_locks_reclaimed() {
    for (workload, seed) in [(Workload::ListAppend, 1), (Workload::Bank, 2)] {
        let mut c = case(workload, 3, 2);
        c.faults = Faults::StorageCrash;
        c.seconds = 4.0;
        c.seed = seed;
        let r = must_pass(&c);
        eprintln!("{}", r.faults_log.join("\n"));
        assert!(
            r.faults_log.iter().any(|l| l.contains("crash, down")),
            "the storage nodes crashed: {:?}",
            r.faults_log
        );
    }
}

/// The services as processes, clients over gRPC, compute nodes killed and restarted.
#[test]
fn invariant_7_and_10_processes_with_compute_nodes_killed() {
    let mut c = case(Workload::ListAppend, 3, 1);
    c.mode = Mode::Processes;
    c.transport = Transport::Tcp;
    c.faults = Faults::KillCompute;
    c.inject = Intensity::Off;
    c.threads_per_node = 2;
    c.seconds = 8.0;
    must_pass(&c);
}

/// Writers that take every key they read with a locking read (wound-wait across three
/// nodes, heavy injection): the histories must be serializable, G2-item included.
#[test]
fn locking_reads_make_writer_histories_serializable() {
    for w in [Workload::ListAppend, Workload::Bank] {
        let mut c = case(w, 3, 1);
        c.inject = Intensity::Heavy;
        c.locking = true;
        let r = must_pass(&c);
        assert_eq!(r.anomalies.get("G2-item"), None, "{}", r.summary);
    }
}
