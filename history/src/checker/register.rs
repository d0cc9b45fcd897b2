//! Read-write register inference: who wrote each value, the per-transaction checks of
//! register reads, each key's version forest (a write's predecessor is the value its
//! transaction read first), the edges it implies, lost updates and the real-time
//! checks.

use std::collections::BTreeMap;

use super::graph::{Builder, Dep, Fact};
use super::{describe, AnomalyKind, CheckOptions, Collector, FastMap};
use crate::model::{History, Key, Op, Outcome, TxnIdx};

#[derive(Clone, Copy)]
struct Writer {
    txn: TxnIdx,
    /// The transaction's last write of the key (the version it installs); earlier
    /// writes are intermediate.
    last: bool,
}

/// Who wrote each value.
pub(crate) struct RegIndex {
    writer: FastMap<(Key, u64), Writer>,
}

impl RegIndex {
    pub(crate) fn build(h: &History, out: &mut Collector) -> Self {
        let mut writer: FastMap<(Key, u64), Writer> = FastMap::default();
        for (t, txn) in h.txns.iter().enumerate() {
            let mut last: Vec<(Key, u64)> = Vec::new();
            for op in &txn.ops {
                let Op::Write { key, value } = *op else {
                    continue;
                };
                match writer.get(&(key, value)) {
                    Some(first) => {
                        let first = first.txn;
                        out.add(AnomalyKind::DuplicateElement, || {
                            (
                                vec![first, t],
                                format!(
                                    "value {value} was written to register {key} twice (by T{first} and T{t}); the checker relies on unique values and attributes it to T{first}\n{}",
                                    describe::txns(h, &[first, t])
                                ),
                            )
                        });
                    }
                    None => {
                        writer.insert(
                            (key, value),
                            Writer {
                                txn: t,
                                last: false,
                            },
                        );
                    }
                }
                match last.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => slot.1 = value,
                    None => last.push((key, value)),
                }
            }
            for kv in last {
                if let Some(w) = writer.get_mut(&kv) {
                    if w.txn == t {
                        w.last = true;
                    }
                }
            }
        }
        RegIndex { writer }
    }

    /// Marks the writers whose values another transaction's read returned.
    pub(crate) fn mark_observed(&self, h: &History, observed: &mut [bool]) {
        for (t, txn) in h.txns.iter().enumerate() {
            for op in &txn.ops {
                if let Op::ReadReg {
                    key,
                    value: Some(Some(x)),
                } = op
                {
                    if let Some(w) = self.writer.get(&(*key, *x)) {
                        if w.txn != t {
                            observed[w.txn] = true;
                        }
                    }
                }
            }
        }
    }
}

/// What a write's transaction read of the key before its first write of it.
#[derive(Clone, Copy)]
enum Parent {
    Read(Option<u64>),
    Unknown,
}

/// The version a counted transaction installed.
struct Final {
    txn: TxnIdx,
    value: u64,
    parent: Parent,
}

/// A snapshot read that passed the per-transaction checks.
struct Read {
    txn: TxnIdx,
    value: Option<u64>,
}

#[derive(Default)]
struct KeyData {
    finals: Vec<Final>,
    reads: Vec<Read>,
}

/// What one transaction knows of one key so far.
struct KeyState {
    key: Key,
    /// Its snapshot read (the first read before any own write).
    snapshot: Option<Option<u64>>,
    /// Its last own write.
    own: Option<u64>,
    /// What it had read when it first wrote.
    parent: Parent,
}

fn state_of(keys: &mut Vec<KeyState>, key: Key) -> &mut KeyState {
    let pos = match keys.iter().position(|s| s.key == key) {
        Some(p) => p,
        None => {
            keys.push(KeyState {
                key,
                snapshot: None,
                own: None,
                parent: Parent::Unknown,
            });
            keys.len() - 1
        }
    };
    &mut keys[pos]
}

/// Runs every register check and adds the register edges to `graph`.
pub(crate) fn analyse(
    h: &History,
    idx: &RegIndex,
    counted: &[bool],
    opts: &CheckOptions,
    out: &mut Collector,
    graph: &mut Builder,
) {
    let mut data: BTreeMap<Key, KeyData> = BTreeMap::new();
    for (t, txn) in h.txns.iter().enumerate() {
        if !counted[t] {
            continue;
        }
        let mut keys: Vec<KeyState> = Vec::new();
        for op in &txn.ops {
            match *op {
                Op::ReadReg {
                    key,
                    value: Some(v),
                } => {
                    let state = state_of(&mut keys, key);
                    if let Some(w) = state.own {
                        if v != Some(w) {
                            out.add(AnomalyKind::Internal, || {
                                (
                                    vec![t],
                                    format!(
                                        "T{t} read register {key} = {} after writing {w} to it\n{}",
                                        describe::reg(v),
                                        describe::txns(h, &[t])
                                    ),
                                )
                            });
                        }
                    } else if let Some(s) = state.snapshot {
                        if v != s {
                            out.add(AnomalyKind::Internal, || {
                                (
                                    vec![t],
                                    format!(
                                        "T{t} read register {key} twice with no write between: first {}, then {}; snapshot reads must repeat\n{}",
                                        describe::reg(s),
                                        describe::reg(v),
                                        describe::txns(h, &[t])
                                    ),
                                )
                            });
                        }
                    } else {
                        state.snapshot = Some(v);
                        if check_read(h, idx, t, key, v, out) {
                            data.entry(key)
                                .or_default()
                                .reads
                                .push(Read { txn: t, value: v });
                        }
                    }
                }
                Op::Write { key, value } => {
                    let state = state_of(&mut keys, key);
                    if state.own.is_none() {
                        state.parent = state.snapshot.map_or(Parent::Unknown, Parent::Read);
                    }
                    state.own = Some(value);
                }
                _ => {}
            }
        }
        for state in keys {
            if let Some(value) = state.own {
                data.entry(state.key).or_default().finals.push(Final {
                    txn: t,
                    value,
                    parent: state.parent,
                });
            }
        }
    }
    for (key, d) in &data {
        analyse_key(h, *key, d, opts, out, graph);
    }
}

/// The checks of a snapshot read of `key` = `v` by counted `t` that need no version
/// order. Returns whether it passed.
fn check_read(
    h: &History,
    idx: &RegIndex,
    t: TxnIdx,
    key: Key,
    v: Option<u64>,
    out: &mut Collector,
) -> bool {
    let Some(x) = v else {
        return true; // the initial state
    };
    let Some(w) = idx.writer.get(&(key, x)).copied() else {
        out.add(AnomalyKind::GarbageRead, || {
            (
                vec![t],
                format!(
                    "T{t} read register {key} = {x}, a value no transaction wrote to it\n{}",
                    describe::txns(h, &[t])
                ),
            )
        });
        return false;
    };
    if w.txn == t {
        out.add(AnomalyKind::Internal, || {
            (
                vec![t],
                format!(
                    "T{t} read register {key} = {x} before writing that value itself\n{}",
                    describe::txns(h, &[t])
                ),
            )
        });
        return false;
    }
    if h.txns[w.txn].outcome == Outcome::Aborted {
        out.add(AnomalyKind::G1a, || {
            (
                vec![w.txn, t],
                format!(
                    "T{t} read register {key} = {x}, written by T{}, which aborted\n{}",
                    w.txn,
                    describe::txns(h, &[t, w.txn])
                ),
            )
        });
        return false;
    }
    if !w.last {
        out.add(AnomalyKind::G1b, || {
            (
                vec![w.txn, t],
                format!(
                    "T{t} read register {key} = {x}, an intermediate write of T{} (which wrote the key again later)\n{}",
                    w.txn,
                    describe::txns(h, &[t, w.txn])
                ),
            )
        });
        return false;
    }
    true
}

/// One version of a key: the initial state (node 0) or a counted transaction's last
/// write.
struct Node {
    value: Option<u64>,
    writer: Option<TxnIdx>,
}

/// The earlier of two (time, node) candidates.
fn earliest(a: Option<(u64, usize)>, b: Option<(u64, usize)>) -> Option<(u64, usize)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The key's version forest and the checks that need it.
fn analyse_key(
    h: &History,
    key: Key,
    d: &KeyData,
    opts: &CheckOptions,
    out: &mut Collector,
    graph: &mut Builder,
) {
    let mut nodes = vec![Node {
        value: None,
        writer: None,
    }];
    let mut node_of: FastMap<u64, usize> = FastMap::default();
    for f in &d.finals {
        node_of.entry(f.value).or_insert(nodes.len());
        nodes.push(Node {
            value: Some(f.value),
            writer: Some(f.txn),
        });
    }
    let n = nodes.len();
    let node_for = |v: Option<u64>| match v {
        None => Some(0),
        Some(x) => node_of.get(&x).copied(),
    };
    let mut parent: Vec<Option<usize>> = vec![None; n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, f) in d.finals.iter().enumerate() {
        let me = i + 1;
        let p = match f.parent {
            Parent::Read(v) => node_for(v).filter(|&p| p != me),
            Parent::Unknown => None,
        };
        parent[me] = p;
        if let Some(p) = p {
            children[p].push(me);
        }
    }
    let writer = |i: usize| nodes[i].writer;

    // ww: the writer of a version -> the writers of the versions overwriting it.
    for (me, p) in parent.iter().enumerate() {
        let Some(p) = *p else { continue };
        if let (Some(a), Some(b), Some(prev), Some(next)) =
            (writer(p), writer(me), nodes[p].value, nodes[me].value)
        {
            graph.add(a, b, Dep::Ww, key, Fact::RegWw { prev, next });
        }
    }

    // Lost updates: a version overwritten by two or more transactions.
    for (p, kids) in children.iter().enumerate() {
        let mut txns: Vec<TxnIdx> = Vec::new();
        for &c in kids {
            if let Some(w) = writer(c) {
                if !txns.contains(&w) {
                    txns.push(w);
                }
            }
        }
        if txns.len() < 2 {
            continue;
        }
        out.add(AnomalyKind::LostUpdate, || {
            let writes: Vec<String> = kids
                .iter()
                .filter_map(|&c| Some(format!("T{} wrote {}", writer(c)?, nodes[c].value?)))
                .collect();
            (
                txns.clone(),
                format!(
                    "{} transactions read register {key} = {} and all overwrote it ({}); under SI only the first to commit may\n{}",
                    txns.len(),
                    describe::reg(nodes[p].value),
                    writes.join(", "),
                    describe::txns(h, &txns)
                ),
            )
        });
    }

    // wr and rw from each checked snapshot read.
    let read_nodes: Vec<(usize, &Read)> = d
        .reads
        .iter()
        .filter_map(|r| Some((node_for(r.value)?, r)))
        .collect();
    for &(v, r) in &read_nodes {
        if let (Some(w), Some(value)) = (writer(v), nodes[v].value) {
            graph.add(w, r.txn, Dep::Wr, key, Fact::RegWr { value });
        }
        for &c in &children[v] {
            if let (Some(w), Some(next)) = (writer(c), nodes[c].value) {
                let fact = Fact::RegRw {
                    read: nodes[v].value,
                    next,
                };
                graph.add(r.txn, w, Dep::Rw, key, fact);
            }
        }
    }

    if !opts.realtime {
        return;
    }
    let acked = |i: usize| {
        let w = writer(i)?;
        let txn = &h.txns[w];
        (txn.outcome == Outcome::Committed).then_some((txn.end, i))
    };

    // Depth-first numbering of the forest: the tree of the initial state first, then
    // the trees of writes with unknown predecessors, then (malformed histories only)
    // versions caught in predecessor cycles. `sub_min[i]` is the earliest acknowledged
    // write among the strict descendants of `i`.
    const UNSEEN: usize = usize::MAX;
    let mut tin = vec![UNSEEN; n];
    let mut tout = vec![UNSEEN; n];
    let mut rooted = vec![false; n];
    let mut sub_min: Vec<Option<(u64, usize)>> = vec![None; n];
    let mut clock = 0;
    let roots = std::iter::once(0)
        .chain((1..n).filter(|&i| parent[i].is_none()))
        .chain(1..n);
    for root in roots {
        if tin[root] != UNSEEN {
            continue;
        }
        let in_initial_tree = root == 0;
        tin[root] = clock;
        clock += 1;
        rooted[root] = in_initial_tree;
        let mut stack = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut pos)) = stack.last_mut() {
            if let Some(&c) = children[v].get(*pos) {
                *pos += 1;
                if tin[c] == UNSEEN {
                    tin[c] = clock;
                    clock += 1;
                    rooted[c] = in_initial_tree;
                    stack.push((c, 0));
                }
                continue;
            }
            stack.pop();
            tout[v] = clock;
            clock += 1;
            if let Some(&(p, _)) = stack.last() {
                sub_min[p] = earliest(sub_min[p], earliest(acked(v), sub_min[v]));
            }
        }
    }

    // A chain of versions from the root down to `i`, for explanations.
    let history_of = |i: usize| {
        let mut chain = Vec::new();
        let mut at = Some(i);
        while let Some(x) = at {
            if chain.len() == 8 {
                chain.push("…".to_string());
                break;
            }
            chain.push(match writer(x) {
                Some(w) => format!("{} (T{w})", describe::reg(nodes[x].value)),
                None => "absent".to_string(),
            });
            at = parent[x].filter(|&p| tin[p] < tin[x]);
        }
        chain.reverse();
        chain.join(" -> ")
    };

    // StaleRead: a read whose version has an acknowledged later version written
    // before the reader started.
    for &(v, r) in &read_nodes {
        let start = h.txns[r.txn].start;
        let Some((end, m)) = sub_min[v] else { continue };
        let Some(w) = writer(m) else { continue };
        if end >= start || w == r.txn {
            continue;
        }
        out.add(AnomalyKind::StaleRead, || {
            (
                vec![w, r.txn],
                format!(
                    "T{} started at {start} and read register {key} = {}, but T{w} committed {} (a later version: {}) at {end}, before the read began\n{}",
                    r.txn,
                    describe::reg(r.value),
                    describe::reg(nodes[m].value),
                    history_of(m),
                    describe::txns(h, &[r.txn, w])
                ),
            )
        });
    }

    // LostWrite: an acknowledged version of the initial tree that a later reader's
    // version neither equals nor descends from (nor precedes: that is a stale read).
    // With depth-first intervals, that reader's version lies entirely before or after
    // the write's interval; suffix extremes over readers sorted by start find one.
    let mut readers: Vec<(u64, usize, TxnIdx)> = read_nodes
        .iter()
        .filter(|(v, _)| rooted[*v])
        .map(|&(v, r)| (h.txns[r.txn].start, v, r.txn))
        .collect();
    readers.sort_unstable();
    let mut min_tout: Vec<(usize, usize)> = vec![(UNSEEN, 0); readers.len() + 1];
    let mut max_tin: Vec<(usize, usize)> = vec![(0, 0); readers.len() + 1];
    for i in (0..readers.len()).rev() {
        let v = readers[i].1;
        min_tout[i] = min_tout[i + 1].min((tout[v], i));
        max_tin[i] = max_tin[i + 1].max((tin[v], i));
    }
    for m in 1..n {
        let (Some((end, _)), Some(w)) = (acked(m), writer(m)) else {
            continue;
        };
        if !rooted[m] {
            continue;
        }
        let first = readers.partition_point(|r| r.0 <= end);
        if first == readers.len() {
            continue;
        }
        let witness = if min_tout[first].0 < tin[m] {
            min_tout[first].1
        } else if max_tin[first].0 > tout[m] {
            max_tin[first].1
        } else {
            continue;
        };
        let (start, v, reader) = readers[witness];
        out.add(AnomalyKind::LostWrite, || {
            (
                vec![w, reader],
                format!(
                    "T{w} wrote register {key} = {} and committed at {end}, but T{reader}, which started at {start}, read {}, which is neither that write nor a later version of it; versions: {} versus {}\n{}",
                    describe::reg(nodes[m].value),
                    describe::reg(nodes[v].value),
                    history_of(m),
                    history_of(v),
                    describe::txns(h, &[w, reader])
                ),
            )
        });
    }
}
