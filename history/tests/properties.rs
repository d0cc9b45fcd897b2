//! Property tests of the checker against the snapshot-isolation simulator in `sim`:
//! histories of a correct SI engine must check valid (write skew allowed), and the
//! same histories with one mutation that breaks SI must not. Plus a performance
//! sanity run on a large valid history.

mod sim;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use history::checker::{check, AnomalyKind, CheckOptions, Report};
use history::model::{Elem, History, Key, Op, Outcome, TxnIdx};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sim::{run, Config, Model};

fn config(model: Model, processes: usize, txns: usize, keys: u64, max_ops: usize) -> Config {
    Config {
        processes,
        txns,
        keys,
        max_ops,
        ..Config::new(model)
    }
}

/// 300 cases per property, or `PROPTEST_CASES` for a longer soak.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn assert_valid(h: &History, report: &Report) {
    assert!(
        report.is_valid(),
        "a simulated SI history was rejected:\n{}\nhistory: {}",
        report.summary(),
        serde_json::to_string(h).unwrap_or_default()
    );
}

fn assert_invalid(h: &History, report: &Report, what: &str) {
    assert!(
        !report.is_valid(),
        "mutation ({what}) not detected:\n{}\nhistory: {}",
        report.summary(),
        serde_json::to_string(h).unwrap_or_default()
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Mutations need a candidate; a run without one is rejected, not passed.
        max_global_rejects: 4 * cases(),
        ..ProptestConfig::default()
    })]

    /// A correct SI engine's histories (both models, with aborts, unknown outcomes,
    /// blind writes and failed reads) check valid.
    #[test]
    fn simulated_si_histories_are_valid(
        seed in any::<u64>(),
        list in any::<bool>(),
        processes in 1usize..6,
        txns in 1usize..60,
        keys in 1u64..6,
        max_ops in 1usize..6,
        blind in any::<bool>(),
        observer in any::<bool>(),
    ) {
        let model = if list { Model::List } else { Model::Register };
        let cfg = Config {
            blind_writes: blind,
            final_observer: observer,
            ..config(model, processes, txns, keys, max_ops)
        };
        let s = run(&cfg, seed);
        let report = check(&s.history, &CheckOptions::default());
        assert_valid(&s.history, &report);
        let counted_unknown = s.history.txns.iter().filter(|t| t.outcome == Outcome::Unknown).count();
        prop_assert!(report.unknown_committed <= counted_unknown);
    }

    /// Lists: drop from one committed read an element whose writer's commit was
    /// acknowledged before the reader started. Always detected: the read is then a
    /// stale prefix (stale-read), or not a prefix at all (incompatible-order), or the
    /// element vanishes from every read (lost-write), or the reader's reads disagree
    /// (internal).
    #[test]
    fn dropping_a_committed_element_is_detected(
        seed in any::<u64>(),
        processes in 1usize..5,
        txns in 10usize..50,
        keys in 1u64..4,
        max_ops in 1usize..5,
    ) {
        let s = run(&config(Model::List, processes, txns, keys, max_ops), seed);
        let mut h = s.history;
        let writer = list_writers(&h);
        let mut candidates = Vec::new();
        for (r, txn) in h.txns.iter().enumerate() {
            if txn.outcome != Outcome::Committed {
                continue;
            }
            for (oi, op) in txn.ops.iter().enumerate() {
                let Op::ReadList { key, value: Some(v) } = op else { continue };
                for (pos, x) in v.iter().enumerate() {
                    let Some(&w) = writer.get(&(*key, *x)) else { continue };
                    if w != r && h.txns[w].outcome == Outcome::Committed && h.txns[w].end < txn.start {
                        candidates.push((r, oi, pos));
                    }
                }
            }
        }
        prop_assume!(!candidates.is_empty());
        let mut rng = StdRng::seed_from_u64(seed);
        let (r, oi, pos) = candidates[rng.gen_range(0..candidates.len())];
        if let Op::ReadList { value: Some(v), .. } = &mut h.txns[r].ops[oi] {
            v.remove(pos);
        }
        let report = check(&h, &CheckOptions::default());
        assert_invalid(&h, &report, "dropped a committed element");
    }

    /// Registers: make one committed snapshot read return the value before the last
    /// write acknowledged before the reader started. Always a stale read (the true
    /// value's writer descends from the value read), whatever else it breaks.
    #[test]
    fn reading_the_value_before_an_acknowledged_write_is_detected(
        seed in any::<u64>(),
        processes in 1usize..5,
        txns in 10usize..50,
        keys in 1u64..4,
        max_ops in 1usize..5,
    ) {
        let s = run(&config(Model::Register, processes, txns, keys, max_ops), seed);
        let mut h = s.history;
        let mut candidates = Vec::new();
        for (r, txn) in h.txns.iter().enumerate() {
            if txn.outcome != Outcome::Committed {
                continue;
            }
            let mut seen: HashSet<Key> = HashSet::new();
            for (oi, op) in txn.ops.iter().enumerate() {
                match op {
                    Op::Write { key, .. } => {
                        seen.insert(*key);
                    }
                    Op::ReadReg { key, value: Some(_) } if seen.insert(*key) => {
                        let chain = s.reg_chain.get(key).map_or(&[][..], |c| c.as_slice());
                        let last_acked = chain.iter().rposition(|&(w, _)| {
                            h.txns[w].outcome == Outcome::Committed && h.txns[w].end < txn.start
                        });
                        if let Some(c) = last_acked {
                            let before = if c == 0 { None } else { Some(chain[c - 1].1) };
                            candidates.push((r, oi, before));
                        }
                    }
                    _ => {}
                }
            }
        }
        prop_assume!(!candidates.is_empty());
        let mut rng = StdRng::seed_from_u64(seed);
        let (r, oi, before) = candidates[rng.gen_range(0..candidates.len())];
        if let Op::ReadReg { value: Some(v), .. } = &mut h.txns[r].ops[oi] {
            *v = before;
        }
        let report = check(&h, &CheckOptions::default());
        assert_invalid(&h, &report, "read the value before an acknowledged write");
        prop_assert!(report.count(AnomalyKind::StaleRead) > 0, "{}", report.summary());
    }

    /// Both models: let one transaction that first-committer-wins should abort commit
    /// (when the first conflicting committer was acknowledged and both read the key).
    #[test]
    fn two_conflicting_committers_are_detected(
        seed in any::<u64>(),
        list in any::<bool>(),
        processes in 2usize..6,
        txns in 10usize..50,
        keys in 1u64..3,
        max_ops in 1usize..5,
    ) {
        let model = if list { Model::List } else { Model::Register };
        let cfg = Config {
            force_conflict: true,
            final_observer: true,
            ..config(model, processes, txns, keys, max_ops)
        };
        let s = run(&cfg, seed);
        prop_assume!(s.forced.is_some());
        let report = check(&s.history, &CheckOptions::default());
        assert_invalid(&s.history, &report, "two conflicting writers committed");
    }
}

fn list_writers(h: &History) -> HashMap<(Key, Elem), TxnIdx> {
    let mut writer = HashMap::new();
    for (t, txn) in h.txns.iter().enumerate() {
        for op in &txn.ops {
            if let Op::Append { key, elem } = op {
                writer.insert((*key, *elem), t);
            }
        }
    }
    writer
}

/// Not a timing assertion: a large valid history is part of the normal run so that a
/// checker gone quadratic is noticed.
#[test]
fn large_valid_histories_check_quickly() {
    for model in [Model::List, Model::Register] {
        let cfg = Config {
            blind_writes: true,
            final_observer: true,
            ..config(model, 16, 50_000, 5_000, 4)
        };
        let s = run(&cfg, 7);
        let began = Instant::now();
        let report = check(&s.history, &CheckOptions::default());
        eprintln!(
            "{model:?}: checked {} transactions in {:?}: {} committed, {} G2-item",
            s.history.txns.len(),
            began.elapsed(),
            report.committed,
            report.count(AnomalyKind::WriteSkew)
        );
        assert_valid(&s.history, &report);
    }
}
