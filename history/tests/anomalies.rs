//! One hand-built history per anomaly kind, plus the edge cases of which transactions
//! count, the report's limits and its JSON form.

use std::collections::BTreeSet;

use history::checker::{check, check_bank, AnomalyKind, CheckOptions, Report};
use history::model::{bank_value, Elem, History, Key, Op, Outcome, TxnIdx, TxnRecord};

use AnomalyKind::*;
use Outcome::{Aborted, Committed, Unknown};

fn a(key: Key, elem: Elem) -> Op {
    Op::Append { key, elem }
}
fn r(key: Key, value: &[Elem]) -> Op {
    Op::ReadList {
        key,
        value: Some(value.to_vec()),
    }
}
fn w(key: Key, value: u64) -> Op {
    Op::Write { key, value }
}
fn rr(key: Key, value: Option<u64>) -> Op {
    Op::ReadReg {
        key,
        value: Some(value),
    }
}

/// Builds histories; transactions overlap in real time unless placed with `at`.
#[derive(Default)]
struct B {
    h: History,
}

impl B {
    /// A transaction concurrent with every other one (no real-time facts).
    fn add(&mut self, outcome: Outcome, ops: Vec<Op>) -> TxnIdx {
        self.at(outcome, 0, 1_000_000, ops)
    }

    fn at(&mut self, outcome: Outcome, start: u64, end: u64, ops: Vec<Op>) -> TxnIdx {
        let i = self.h.txns.len();
        self.h.txns.push(TxnRecord {
            process: i as u32,
            node: 0,
            ops,
            outcome,
            start,
            end,
            txn_id: Some(100 + i as u64),
            snapshot: None,
            commit_ts: None,
        });
        i
    }

    fn check(&self) -> Report {
        check(&self.h, &CheckOptions::default())
    }
}

fn kinds(report: &Report) -> BTreeSet<AnomalyKind> {
    report.counts.keys().copied().collect()
}

/// The report has exactly these kinds.
#[track_caller]
fn assert_kinds(report: &Report, expected: &[AnomalyKind]) {
    let expected: BTreeSet<AnomalyKind> = expected.iter().copied().collect();
    assert_eq!(kinds(report), expected, "{}", report.summary());
    for e in &report.examples {
        assert!(!e.explanation.is_empty());
        // Explanations describe at most 16 transactions (a long cycle's others are
        // only listed in `txns`).
        for t in e.txns.iter().take(16) {
            assert!(
                e.explanation.contains(&format!("T{t} (process")),
                "explanation does not describe T{t}: {}",
                e.explanation
            );
        }
    }
}

#[test]
fn empty_history_is_valid() {
    let report = check(&History::default(), &CheckOptions::default());
    assert!(report.is_valid());
    assert_kinds(&report, &[]);
}

#[test]
fn serial_list_history_is_valid() {
    let mut b = B::default();
    b.at(Committed, 0, 1, vec![a(1, 1), r(1, &[1])]);
    b.at(Committed, 2, 3, vec![r(1, &[1]), a(1, 2), r(1, &[1, 2])]);
    b.at(Committed, 4, 5, vec![r(1, &[1, 2]), a(2, 3)]);
    b.at(Committed, 6, 7, vec![r(2, &[3]), r(1, &[1, 2])]);
    let report = b.check();
    assert_kinds(&report, &[]);
    assert_eq!(report.committed, 4);
}

#[test]
fn serial_register_history_is_valid() {
    let mut b = B::default();
    b.at(Committed, 0, 1, vec![rr(1, None), w(1, 10)]);
    b.at(
        Committed,
        2,
        3,
        vec![rr(1, Some(10)), w(1, 11), rr(1, Some(11))],
    );
    b.at(Committed, 4, 5, vec![rr(1, Some(11)), rr(2, None)]);
    assert_kinds(&b.check(), &[]);
}

#[test]
fn g0_write_cycle() {
    let mut b = B::default();
    b.add(Committed, vec![a(1, 1), a(2, 2)]);
    b.add(Committed, vec![a(1, 3), a(2, 4)]);
    b.add(Committed, vec![r(1, &[1, 3]), r(2, &[4, 2])]);
    let report = b.check();
    assert_kinds(&report, &[G0]);
    assert_eq!(report.examples[0].txns.len(), 2);
}

#[test]
fn g1a_aborted_read() {
    let mut b = B::default();
    let bad = b.add(Aborted, vec![a(1, 1)]);
    let reader = b.add(Committed, vec![r(1, &[1])]);
    let report = b.check();
    assert_kinds(&report, &[G1a]);
    assert_eq!(report.examples[0].txns, vec![bad, reader]);
    assert_eq!(report.aborted, 1);

    let mut b = B::default();
    b.add(Aborted, vec![rr(1, None), w(1, 7)]);
    b.add(Committed, vec![rr(1, Some(7))]);
    assert_kinds(&b.check(), &[G1a]);
}

#[test]
fn g1b_intermediate_read() {
    let mut b = B::default();
    b.add(Committed, vec![a(1, 1), a(1, 2)]);
    b.add(Committed, vec![r(1, &[1])]);
    assert_kinds(&b.check(), &[G1b]);

    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), w(1, 10), w(1, 11)]);
    b.add(Committed, vec![rr(1, Some(10))]);
    assert_kinds(&b.check(), &[G1b]);

    // A transaction seeing its own partial appends is not G1b.
    let mut b = B::default();
    b.add(Committed, vec![a(1, 1), r(1, &[1]), a(1, 2), r(1, &[1, 2])]);
    b.add(Committed, vec![r(1, &[1, 2])]);
    assert_kinds(&b.check(), &[]);
}

#[test]
fn g1c_circular_information_flow() {
    let mut b = B::default();
    b.add(Committed, vec![a(1, 1), r(2, &[2])]);
    b.add(Committed, vec![a(2, 2), r(1, &[1])]);
    assert_kinds(&b.check(), &[G1c]);

    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), w(1, 1), rr(2, Some(2))]);
    b.add(Committed, vec![rr(2, None), w(2, 2), rr(1, Some(1))]);
    // Each read the other's write: two wr edges (and no anti-dependency, since
    // neither read a version the other overwrote).
    assert_kinds(&b.check(), &[G1c]);
}

#[test]
fn lost_update_lists() {
    let mut b = B::default();
    b.add(Committed, vec![r(1, &[]), a(1, 1)]);
    b.add(Committed, vec![r(1, &[]), a(1, 2)]);
    b.add(Committed, vec![r(1, &[1, 2])]);
    // The second appender read the version before the first's append: G-single too.
    assert_kinds(&b.check(), &[LostUpdate, GSingle]);
}

#[test]
fn lost_update_registers() {
    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), w(1, 1)]);
    b.add(Committed, vec![rr(1, None), w(1, 2)]);
    let report = b.check();
    // The two anti-dependencies form an (allowed) two-rw cycle; the lost update is
    // what makes it forbidden.
    assert_kinds(&report, &[LostUpdate, WriteSkew]);
    assert_eq!(report.forbidden(), 1);
}

#[test]
fn g_single_read_skew() {
    let mut b = B::default();
    b.add(Committed, vec![a(1, 1), a(2, 2)]);
    b.add(Committed, vec![r(1, &[]), r(2, &[2])]);
    b.add(Committed, vec![r(1, &[1])]);
    let report = b.check();
    assert_kinds(&report, &[GSingle]);
    let text = &report.examples[0].explanation;
    assert!(text.contains("-rw->") && text.contains("-wr->"), "{text}");

    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), w(1, 1), rr(2, None), w(2, 2)]);
    b.add(Committed, vec![rr(1, None), rr(2, Some(2))]);
    assert_kinds(&b.check(), &[GSingle]);
}

#[test]
fn write_skew_is_reported_but_valid() {
    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), rr(2, None), w(1, 1)]);
    b.add(Committed, vec![rr(1, None), rr(2, None), w(2, 2)]);
    let report = b.check();
    assert_kinds(&report, &[WriteSkew]);
    assert!(report.is_valid());
    assert_eq!(report.forbidden(), 0);
    assert!(report.summary().contains("VALID"));
    // Judged against serializability (histories of locking reads), it is not.
    let strict = check(
        &b.h,
        &CheckOptions {
            serializable: true,
            ..CheckOptions::default()
        },
    );
    assert_kinds(&strict, &[WriteSkew]);
    assert!(!strict.is_valid());
    assert!(strict.summary().contains("INVALID"));
}

#[test]
fn g_nonadjacent_cycle() {
    // T0 -rw-> T1 -wr-> T2 -rw-> T3 -wr-> T0: two anti-dependencies, never adjacent.
    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), rr(4, Some(40))]);
    b.add(
        Committed,
        vec![rr(1, None), w(1, 10), rr(3, None), w(3, 30)],
    );
    b.add(Committed, vec![rr(3, Some(30)), rr(2, None)]);
    b.add(
        Committed,
        vec![rr(2, None), w(2, 20), rr(4, None), w(4, 40)],
    );
    let report = b.check();
    assert_kinds(&report, &[GNonadjacent]);
    assert_eq!(report.examples[0].txns.len(), 4);
}

#[test]
fn stale_read_lists() {
    let mut b = B::default();
    b.at(Committed, 0, 10, vec![a(1, 1)]);
    b.at(Committed, 20, 30, vec![r(1, &[])]);
    b.at(Committed, 40, 50, vec![r(1, &[1])]);
    let report = b.check();
    assert_kinds(&report, &[StaleRead]);
    assert_eq!(report.examples[0].txns, vec![0, 1]);
    // Without real time the history is serialisable (T1 before T0).
    let relaxed = check(
        &b.h,
        &CheckOptions {
            realtime: false,
            ..CheckOptions::default()
        },
    );
    assert_kinds(&relaxed, &[]);
}

#[test]
fn lost_write_lists() {
    let mut b = B::default();
    b.at(Committed, 0, 10, vec![a(1, 1)]);
    b.at(Committed, 20, 30, vec![r(1, &[])]);
    assert_kinds(&b.check(), &[LostWrite]);
}

#[test]
fn stale_read_registers() {
    let mut b = B::default();
    b.at(Committed, 0, 10, vec![rr(1, None), w(1, 1)]);
    b.at(Committed, 20, 30, vec![rr(1, None)]);
    assert_kinds(&b.check(), &[StaleRead]);
}

#[test]
fn lost_write_registers() {
    let mut b = B::default();
    b.at(Committed, 0, 10, vec![rr(1, None), w(1, 1)]);
    b.at(Committed, 5, 15, vec![rr(1, None), w(1, 2)]);
    b.at(Committed, 20, 30, vec![rr(1, Some(2))]);
    let report = b.check();
    assert_kinds(&report, &[LostUpdate, LostWrite, WriteSkew]);
    let lost = report
        .examples
        .iter()
        .find(|e| e.kind == LostWrite)
        .map(|e| e.txns.clone());
    assert_eq!(lost, Some(vec![0, 2]));
}

#[test]
fn internal_inconsistency() {
    let mut b = B::default();
    b.add(Committed, vec![a(1, 1), r(1, &[])]);
    assert_kinds(&b.check(), &[Internal]);

    // Non-repeatable list read.
    let mut b = B::default();
    b.add(Committed, vec![a(1, 5)]);
    b.add(Committed, vec![r(1, &[]), r(1, &[5])]);
    assert_kinds(&b.check(), &[Internal]);

    // Register read after an own write.
    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), w(1, 1), rr(1, None)]);
    assert_kinds(&b.check(), &[Internal]);

    // Non-repeatable register read.
    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), w(1, 1)]);
    b.add(Committed, vec![rr(1, None), rr(1, Some(1))]);
    assert_kinds(&b.check(), &[Internal]);

    // Reading an own element before appending it.
    let mut b = B::default();
    b.add(Committed, vec![r(1, &[9]), a(1, 9)]);
    assert_kinds(&b.check(), &[Internal]);
}

#[test]
fn incompatible_orders() {
    let mut b = B::default();
    b.add(Committed, vec![a(1, 1)]);
    b.add(Committed, vec![a(1, 2)]);
    let longest = b.add(Committed, vec![r(1, &[1, 2])]);
    let other = b.add(Committed, vec![r(1, &[2, 1])]);
    let report = b.check();
    assert_kinds(&report, &[IncompatibleOrder]);
    assert_eq!(report.examples[0].txns, vec![other, longest]);
}

#[test]
fn duplicates() {
    let mut b = B::default();
    b.add(Committed, vec![a(1, 1)]);
    b.add(Committed, vec![r(1, &[1, 1])]);
    assert_kinds(&b.check(), &[DuplicateElement]);

    let mut b = B::default();
    b.add(Committed, vec![a(1, 1)]);
    b.add(Committed, vec![a(1, 1)]);
    assert_kinds(&b.check(), &[DuplicateElement]);
}

#[test]
fn garbage_reads() {
    let mut b = B::default();
    b.add(Committed, vec![r(1, &[99])]);
    assert_kinds(&b.check(), &[GarbageRead]);

    let mut b = B::default();
    b.add(Committed, vec![rr(1, Some(99))]);
    assert_kinds(&b.check(), &[GarbageRead]);

    // An element appended to another key is garbage in this one.
    let mut b = B::default();
    b.add(Committed, vec![a(2, 5)]);
    b.add(Committed, vec![r(1, &[5])]);
    assert_kinds(&b.check(), &[GarbageRead]);
}

#[test]
fn observed_unknown_counts_as_committed() {
    let mut b = B::default();
    b.at(Unknown, 0, 10, vec![a(1, 1)]);
    b.at(Committed, 20, 30, vec![r(1, &[1])]);
    let report = b.check();
    assert_kinds(&report, &[]);
    assert_eq!((report.unknown, report.unknown_committed), (1, 1));

    // Counted, so it takes part in cycles.
    let mut b = B::default();
    b.add(Unknown, vec![a(1, 1), a(2, 2)]);
    b.add(Committed, vec![r(1, &[]), r(2, &[2])]);
    b.add(Committed, vec![r(1, &[1])]);
    assert_kinds(&b.check(), &[GSingle]);

    // Registers; an aborted reader's observation is evidence too.
    let mut b = B::default();
    b.add(Unknown, vec![rr(1, None), w(1, 1)]);
    b.add(Aborted, vec![rr(1, Some(1))]);
    let report = b.check();
    assert_kinds(&report, &[]);
    assert_eq!(report.unknown_committed, 1);
}

#[test]
fn unobserved_unknown_is_left_out() {
    let mut b = B::default();
    b.at(Unknown, 0, 10, vec![a(1, 1)]);
    b.at(Committed, 20, 30, vec![r(1, &[])]);
    let report = b.check();
    // Not a lost write: the client never heard it committed.
    assert_kinds(&report, &[]);
    assert_eq!((report.unknown, report.unknown_committed), (1, 0));

    // Its own reads are not checked either (it may not have run on a snapshot at all).
    let mut b = B::default();
    b.add(Unknown, vec![r(1, &[99]), a(1, 1), r(1, &[])]);
    assert_kinds(&b.check(), &[]);

    // Reading only its own write does not make it observed.
    let mut b = B::default();
    b.add(Unknown, vec![rr(1, None), w(1, 1), rr(1, Some(1))]);
    assert_eq!(b.check().unknown_committed, 0);
}

#[test]
fn aborted_transactions_are_not_checked() {
    let mut b = B::default();
    b.add(
        Aborted,
        vec![r(1, &[42]), rr(2, Some(7)), a(1, 1), r(1, &[])],
    );
    b.add(
        Aborted,
        vec![Op::ReadList {
            key: 1,
            value: None,
        }],
    );
    assert_kinds(&b.check(), &[]);
}

#[test]
fn bank_total() {
    let total = 100;
    let accounts = [0, 1];
    let mut b = B::default();
    let v0 = bank_value(1, 50);
    let v1 = bank_value(2, 50);
    b.at(
        Committed,
        0,
        1,
        vec![rr(0, None), w(0, v0), rr(1, None), w(1, v1)],
    );
    // A transfer of 10 from account 0 to 1.
    let v0b = bank_value(3, 40);
    let v1b = bank_value(4, 60);
    b.at(
        Committed,
        2,
        10,
        vec![rr(0, Some(v0)), rr(1, Some(v1)), w(0, v0b), w(1, v1b)],
    );
    // A consistent audit, and one that saw half of the transfer.
    b.at(Committed, 3, 9, vec![rr(0, Some(v0)), rr(1, Some(v1))]);
    let torn = b.at(Committed, 4, 8, vec![rr(0, Some(v0b)), rr(1, Some(v1))]);
    // A transaction that read only one account is not an audit.
    b.at(Committed, 11, 12, vec![rr(0, Some(v0b))]);
    let opts = CheckOptions::default();
    let report = check_bank(&b.h, &accounts, total, &opts);
    assert_eq!(report.count(BankTotal), 1, "{}", report.summary());
    let bank = report.examples.iter().find(|e| e.kind == BankTotal);
    assert_eq!(bank.map(|e| e.txns.clone()), Some(vec![torn]));
    // The torn read is also a read skew in the graph.
    assert!(report.count(GSingle) > 0, "{}", report.summary());
    // check alone does not know about balances.
    assert_eq!(check(&b.h, &opts).count(BankTotal), 0);

    // A snapshot from before set-up (every account absent) is exempt; one that saw
    // part of the set-up is not.
    let mut b = B::default();
    b.at(Committed, 0, 1, vec![rr(0, None), rr(1, None)]);
    b.at(
        Committed,
        2,
        3,
        vec![rr(0, None), w(0, v0), rr(1, None), w(1, v1)],
    );
    assert_eq!(
        check_bank(&b.h, &accounts, total, &opts).count(BankTotal),
        0
    );
    b.at(Committed, 0, 10, vec![rr(0, Some(v0)), rr(1, None)]);
    assert_eq!(
        check_bank(&b.h, &accounts, total, &opts).count(BankTotal),
        1
    );
}

#[test]
fn examples_are_capped_but_every_instance_counted() {
    let mut b = B::default();
    for i in 0..10 {
        b.add(Committed, vec![r(1, &[1000 + i])]);
    }
    let opts = CheckOptions {
        max_examples: 3,
        ..CheckOptions::default()
    };
    let report = check(&b.h, &opts);
    assert_eq!(report.count(GarbageRead), 10);
    assert_eq!(report.examples.len(), 3);
    assert_eq!(report.forbidden(), 10);
    assert!(!report.is_valid());
}

#[test]
fn report_round_trips_through_json() {
    let mut b = B::default();
    b.add(Committed, vec![rr(1, None), rr(2, None), w(1, 1)]);
    b.add(Committed, vec![rr(1, None), rr(2, None), w(2, 2)]);
    b.add(Committed, vec![r(1, &[99])]);
    let report = b.check();
    let json = serde_json::to_string(&report).expect("serialise");
    assert!(json.contains("\"WriteSkew\""), "{json}");
    let back: Report = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, report);
}

#[test]
fn explanations_name_the_transactions() {
    let mut b = B::default();
    b.h.txns.push(TxnRecord {
        process: 7,
        node: 3,
        ops: vec![rr(1, Some(5))],
        outcome: Committed,
        start: 11,
        end: 12,
        txn_id: Some(4242),
        snapshot: Some(99),
        commit_ts: Some(100),
    });
    let report = b.check();
    let text = &report.examples[0].explanation;
    for needle in [
        "T0",
        "process 7",
        "node 3",
        "txn_id 4242",
        "snapshot 99",
        "commit_ts 100",
        "committed",
        "r(1)=5",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
    // Long lists are truncated.
    let long: Vec<Elem> = (0..1000).collect();
    let mut b = B::default();
    b.add(Committed, vec![r(1, &long)]);
    let report = b.check();
    assert!(
        report.examples[0].explanation.len() < 1000,
        "{}",
        report.summary()
    );
}

#[test]
fn malformed_histories_do_not_panic() {
    // Two writers that each read the other's value: a predecessor cycle.
    let mut b = B::default();
    b.add(Committed, vec![rr(1, Some(2)), w(1, 1)]);
    b.add(Committed, vec![rr(1, Some(1)), w(1, 2)]);
    b.at(Committed, 2_000_000, 2_000_001, vec![rr(1, Some(1))]);
    let report = b.check();
    assert!(report.count(G0) > 0, "{}", report.summary());

    // Reads that never returned, reads of keys nobody wrote, empty transactions,
    // values written twice in one transaction, mixed models on one key.
    let mut b = B::default();
    b.add(Committed, vec![]);
    b.add(
        Committed,
        vec![
            Op::ReadReg {
                key: 3,
                value: None,
            },
            w(3, 1),
            w(3, 1),
        ],
    );
    b.add(Committed, vec![r(3, &[]), a(3, 1), rr(3, Some(1))]);
    b.at(Committed, 5, 1, vec![r(4, &[])]);
    let report = b.check();
    assert_eq!(report.committed, 4);
    assert!(report.count(DuplicateElement) > 0, "{}", report.summary());
}

#[test]
fn a_large_write_skew_component_stays_valid() {
    // T_i reads keys i and i+1 (mod n) and writes key i: a ring of n anti-dependencies,
    // all adjacent.
    let n = 2_000u64;
    let mut b = B::default();
    for i in 0..n {
        b.add(
            Committed,
            vec![rr(i, None), rr((i + 1) % n, None), w(i, 1_000_000 + i)],
        );
    }
    let report = b.check();
    assert_kinds(&report, &[WriteSkew]);
    assert_eq!(report.count(WriteSkew), 1);
    let example = &report.examples[0];
    assert_eq!(example.txns.len(), 2000);
    assert!(example
        .explanation
        .contains("component of 2000 transactions"));
    assert!(example.explanation.contains("1984 more transactions"));
    assert!(
        example.explanation.len() < 10_000,
        "{}",
        example.explanation
    );
}

#[test]
fn kind_names_and_forbidden() {
    assert!(!WriteSkew.forbidden_under_si());
    for k in AnomalyKind::ALL {
        if k != WriteSkew {
            assert!(k.forbidden_under_si(), "{k:?}");
        }
    }
    let names: Vec<&str> = AnomalyKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(
        names,
        [
            "G0",
            "G1a",
            "G1b",
            "G1c",
            "lost-update",
            "G-single",
            "G-nonadjacent",
            "stale-read",
            "lost-write",
            "internal",
            "incompatible-order",
            "duplicate",
            "garbage-read",
            "G2-item",
            "bank-total"
        ]
    );
}
