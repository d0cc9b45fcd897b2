//! Text for explanations: transactions, operations and values, truncated so that one
//! explanation stays readable however long the lists in a run grow.

use std::fmt::Write as _;

use crate::model::{Elem, History, Op, Outcome, TxnIdx};

/// Transactions described in one explanation (a long cycle names the rest only in
/// `Anomaly::txns`).
pub(crate) const MAX_TXNS: usize = 16;
/// Operations shown per transaction before the rest are summarised.
const MAX_OPS: usize = 16;
/// Lists up to this long are shown whole.
const MAX_LIST: usize = 12;
/// Elements shown at the end of a longer list (the end is where versions differ).
const LIST_TAIL: usize = 8;

/// A list value, truncated to its first elements and its tail.
pub(crate) fn list(v: &[Elem]) -> String {
    if v.len() <= MAX_LIST {
        return format!("{v:?}");
    }
    let head = &v[..2];
    let tail = &v[v.len() - LIST_TAIL..];
    format!(
        "[{}, … {} more …, {}] (length {})",
        join(head),
        v.len() - head.len() - tail.len(),
        join(tail),
        v.len()
    )
}

/// A list value shown around index `at` (where two reads diverge, say).
pub(crate) fn list_around(v: &[Elem], at: usize) -> String {
    if v.len() <= MAX_LIST {
        return format!("{v:?}");
    }
    let from = at.saturating_sub(3);
    let to = (at + 4).min(v.len());
    let mut s = String::from("[");
    if from > 0 {
        let _ = write!(s, "… {from} elements …, ");
    }
    s.push_str(&join(&v[from..to]));
    if to < v.len() {
        let _ = write!(s, ", … {} elements …", v.len() - to);
    }
    let _ = write!(s, "] (length {})", v.len());
    s
}

fn join(v: &[Elem]) -> String {
    v.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A register value: the number, or "absent" for the initial state.
pub(crate) fn reg(v: Option<u64>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "absent".to_string(),
    }
}

fn op(o: &Op) -> String {
    match o {
        Op::Append { key, elem } => format!("append({key}, {elem})"),
        Op::ReadList { key, value } => match value {
            Some(v) => format!("r({key})={}", list(v)),
            None => format!("r({key})=?"),
        },
        Op::Write { key, value } => format!("w({key}, {value})"),
        Op::ReadReg { key, value } => match value {
            Some(v) => format!("r({key})={}", reg(*v)),
            None => format!("r({key})=?"),
        },
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Committed => "committed",
        Outcome::Aborted => "aborted",
        Outcome::Unknown => "unknown",
    }
}

/// One transaction: index, where it ran, what the engine said about it, its outcome,
/// its real-time interval and its operations.
pub(crate) fn txn(h: &History, t: TxnIdx) -> String {
    let Some(r) = h.txns.get(t) else {
        return format!("T{t} (not in the history)");
    };
    let mut ops: Vec<String> = r.ops.iter().take(MAX_OPS).map(op).collect();
    if r.ops.len() > MAX_OPS {
        ops.push(format!("… {} more ops", r.ops.len() - MAX_OPS));
    }
    format!(
        "T{t} (process {}, node {}, txn_id {}, snapshot {}, commit_ts {}, {}, {}..{} ns): {}",
        r.process,
        r.node,
        opt(r.txn_id),
        opt(r.snapshot),
        opt(r.commit_ts),
        outcome(r.outcome),
        r.start,
        r.end,
        ops.join(" ")
    )
}

/// Several transactions, one per indented line, each once, at most [`MAX_TXNS`].
pub(crate) fn txns(h: &History, ts: &[TxnIdx]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    let mut more = 0;
    for &t in ts {
        if seen.insert(t) {
            if lines.len() < MAX_TXNS {
                lines.push(format!("  {}", txn(h, t)));
            } else {
                more += 1;
            }
        }
    }
    if more > 0 {
        lines.push(format!("  … {more} more transactions"));
    }
    lines.join("\n")
}
