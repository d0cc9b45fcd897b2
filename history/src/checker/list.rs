//! List-append inference: who appended what, the per-transaction checks of list
//! reads, each key's version order (its longest read), the edges it implies, lost
//! updates, intermediate reads and the real-time checks.

use std::collections::BTreeMap;

use super::graph::{Builder, Dep, Fact};
use super::{describe, AnomalyKind, CheckOptions, Collector, FastMap, FastSet};
use crate::model::{Elem, History, Key, Op, Outcome, TxnIdx};

/// Who appended each element.
pub(crate) struct ListIndex {
    /// The (first) appender of each element of each key.
    writer: FastMap<(Key, Elem), TxnIdx>,
    /// Each transaction's appends to each key, in order.
    appends: FastMap<(Key, TxnIdx), Vec<Elem>>,
    /// Each key's appenders, in history order.
    appenders: FastMap<Key, Vec<TxnIdx>>,
}

impl ListIndex {
    pub(crate) fn build(h: &History, out: &mut Collector) -> Self {
        let mut idx = ListIndex {
            writer: FastMap::default(),
            appends: FastMap::default(),
            appenders: FastMap::default(),
        };
        for (t, txn) in h.txns.iter().enumerate() {
            for op in &txn.ops {
                let Op::Append { key, elem } = *op else {
                    continue;
                };
                match idx.writer.get(&(key, elem)) {
                    Some(&first) => out.add(AnomalyKind::DuplicateElement, || {
                        (
                            vec![first, t],
                            format!(
                                "element {elem} was appended to list {key} twice (by T{first} and T{t}); the checker relies on unique elements and attributes it to T{first}\n{}",
                                describe::txns(h, &[first, t])
                            ),
                        )
                    }),
                    None => {
                        idx.writer.insert((key, elem), t);
                    }
                }
                let own = idx.appends.entry((key, t)).or_default();
                if own.is_empty() {
                    idx.appenders.entry(key).or_default().push(t);
                }
                own.push(elem);
            }
        }
        idx
    }

    /// Marks the appenders whose elements another transaction's read returned.
    pub(crate) fn mark_observed(&self, h: &History, observed: &mut [bool]) {
        for (t, txn) in h.txns.iter().enumerate() {
            for op in &txn.ops {
                let Op::ReadList {
                    key,
                    value: Some(v),
                } = op
                else {
                    continue;
                };
                for x in v {
                    if let Some(&w) = self.writer.get(&(*key, *x)) {
                        if w != t {
                            observed[w] = true;
                        }
                    }
                }
            }
        }
    }
}

/// A read that passed the per-transaction checks.
#[derive(Clone, Copy)]
struct Read<'h> {
    txn: TxnIdx,
    /// The whole value, own appends included.
    value: &'h [Elem],
    /// The length of the part read from the snapshot (without own appends).
    ext_len: usize,
}

/// What one transaction knows of one key so far.
struct KeyState<'h> {
    key: Key,
    /// The snapshot part of its first read.
    snapshot: Option<&'h [Elem]>,
    /// Its own appends so far.
    own: Vec<Elem>,
}

/// The state of `key` in `keys` (a transaction touches few keys: a linear search is
/// cheaper than a map).
fn state_of<'a, 'h>(keys: &'a mut Vec<KeyState<'h>>, key: Key) -> &'a mut KeyState<'h> {
    let pos = match keys.iter().position(|s| s.key == key) {
        Some(p) => p,
        None => {
            keys.push(KeyState {
                key,
                snapshot: None,
                own: Vec::new(),
            });
            keys.len() - 1
        }
    };
    &mut keys[pos]
}

/// Runs every list check and adds the list edges to `graph`.
pub(crate) fn analyse(
    h: &History,
    idx: &ListIndex,
    counted: &[bool],
    opts: &CheckOptions,
    out: &mut Collector,
    graph: &mut Builder,
) {
    let mut reads: BTreeMap<Key, Vec<Read>> = BTreeMap::new();
    let mut seen = FastSet::default();
    for (t, txn) in h.txns.iter().enumerate() {
        if !counted[t] {
            continue;
        }
        let mut keys: Vec<KeyState> = Vec::new();
        for op in &txn.ops {
            match op {
                Op::Append { key, elem } => state_of(&mut keys, *key).own.push(*elem),
                Op::ReadList {
                    key,
                    value: Some(v),
                } => {
                    let state = state_of(&mut keys, *key);
                    if let Some(ext_len) = check_read(h, idx, t, state, v, &mut seen, out) {
                        reads.entry(*key).or_default().push(Read {
                            txn: t,
                            value: v,
                            ext_len,
                        });
                    }
                }
                _ => {}
            }
        }
    }
    for (key, key_reads) in reads {
        analyse_key(h, idx, key, &key_reads, opts, out, graph);
    }
}

/// The checks of one read `v` of `state.key` by counted transaction `t` that need no
/// version order: contents (duplicates, garbage, aborted elements) and internal
/// consistency. Returns the length of its snapshot part if it passed them all.
fn check_read<'h>(
    h: &History,
    idx: &ListIndex,
    t: TxnIdx,
    state: &mut KeyState<'h>,
    v: &'h [Elem],
    seen: &mut FastSet<Elem>,
    out: &mut Collector,
) -> Option<usize> {
    let key = state.key;
    seen.clear();
    let mut duplicates = Vec::new();
    let mut garbage = Vec::new();
    let mut aborted: Vec<(TxnIdx, Elem)> = Vec::new();
    let mut first_own = None;
    for (i, &x) in v.iter().enumerate() {
        if !seen.insert(x) {
            duplicates.push(x);
        }
        match idx.writer.get(&(key, x)) {
            None => garbage.push(x),
            Some(&w) if w == t => {
                first_own.get_or_insert(i);
            }
            Some(&w) => {
                if h.txns[w].outcome == Outcome::Aborted && !aborted.iter().any(|&(a, _)| a == w) {
                    aborted.push((w, x));
                }
            }
        }
    }
    let mut ok = true;
    if !duplicates.is_empty() {
        ok = false;
        out.add(AnomalyKind::DuplicateElement, || {
            (
                vec![t],
                format!(
                    "T{t} read list {key} = {} with duplicate elements {}\n{}",
                    describe::list(v),
                    describe::list(&duplicates),
                    describe::txns(h, &[t])
                ),
            )
        });
    }
    if !garbage.is_empty() {
        ok = false;
        out.add(AnomalyKind::GarbageRead, || {
            (
                vec![t],
                format!(
                    "T{t} read list {key} = {} containing {}, which no transaction appended to list {key}\n{}",
                    describe::list(v),
                    describe::list(&garbage),
                    describe::txns(h, &[t])
                ),
            )
        });
    }
    for &(w, x) in &aborted {
        ok = false;
        out.add(AnomalyKind::G1a, || {
            (
                vec![w, t],
                format!(
                    "T{t} read list {key} = {}, which contains element {x} appended by T{w}, which aborted\n{}",
                    describe::list(v),
                    describe::txns(h, &[t, w])
                ),
            )
        });
    }

    // Internal consistency: the read must be snapshot ++ own appends so far.
    let own = &state.own;
    let ends_with_own = v.len() >= own.len() && v[v.len() - own.len()..] == own[..];
    if !ends_with_own {
        out.add(AnomalyKind::Internal, || {
            (
                vec![t],
                format!(
                    "T{t} read list {key} = {} after appending {} to it: the read does not end with its own appends\n{}",
                    describe::list(v),
                    describe::list(own),
                    describe::txns(h, &[t])
                ),
            )
        });
        return None;
    }
    let ext = &v[..v.len() - own.len()];
    if let Some(i) = first_own.filter(|&i| i < ext.len()) {
        out.add(AnomalyKind::Internal, || {
            (
                vec![t],
                format!(
                    "T{t} read list {key} = {} with its own element {} at position {i}, before (or without) appending it\n{}",
                    describe::list_around(v, i),
                    v[i],
                    describe::txns(h, &[t])
                ),
            )
        });
        return None;
    }
    match state.snapshot {
        None => state.snapshot = Some(ext),
        Some(s) if s == ext => {}
        Some(s) => {
            out.add(AnomalyKind::Internal, || {
                (
                    vec![t],
                    format!(
                        "T{t} read list {key} twice with different snapshot parts: first {}, then {} (own appends stripped); snapshot reads must repeat\n{}",
                        describe::list(s),
                        describe::list(ext),
                        describe::txns(h, &[t])
                    ),
                )
            });
            return None;
        }
    }
    ok.then_some(ext.len())
}

/// Writer and end time of a committed (acknowledged) transaction.
fn acked(h: &History, t: TxnIdx) -> Option<u64> {
    let txn = &h.txns[t];
    (txn.outcome == Outcome::Committed).then_some(txn.end)
}

/// The checks of one key that need its version order, from its checked reads.
fn analyse_key(
    h: &History,
    idx: &ListIndex,
    key: Key,
    reads: &[Read],
    opts: &CheckOptions,
    out: &mut Collector,
    graph: &mut Builder,
) {
    // The reference read (the version order): the first longest one.
    let Some(reference) = reads.iter().copied().reduce(|best, r| {
        if r.value.len() > best.value.len() {
            r
        } else {
            best
        }
    }) else {
        return;
    };
    let order = reference.value;
    let mut consistent: Vec<Read> = Vec::with_capacity(reads.len());
    for &r in reads {
        if order.starts_with(r.value) {
            consistent.push(r);
            continue;
        }
        out.add(AnomalyKind::IncompatibleOrder, || {
            let at = r
                .value
                .iter()
                .zip(order)
                .position(|(a, b)| a != b)
                .unwrap_or(order.len());
            (
                vec![r.txn, reference.txn],
                format!(
                    "list {key}: T{}'s read {} is not a prefix of T{}'s read {} (they differ at position {at})\n{}",
                    r.txn,
                    describe::list_around(r.value, at),
                    reference.txn,
                    describe::list_around(order, at),
                    describe::txns(h, &[r.txn, reference.txn])
                ),
            )
        });
    }

    // Every element of the reference passed the garbage check, so has a writer.
    let writers: Vec<TxnIdx> = order
        .iter()
        .filter_map(|x| idx.writer.get(&(key, *x)).copied())
        .collect();
    if writers.len() != order.len() {
        return;
    }
    let position: FastMap<Elem, usize> = order.iter().enumerate().map(|(i, &x)| (x, i)).collect();

    for i in 1..order.len() {
        graph.add(
            writers[i - 1],
            writers[i],
            Dep::Ww,
            key,
            Fact::ListWw {
                prev: order[i - 1],
                next: order[i],
            },
        );
    }
    for r in &consistent {
        let e = r.ext_len;
        if e > 0 {
            let fact = Fact::ListWr {
                last: order[e - 1],
                len: e,
            };
            graph.add(writers[e - 1], r.txn, Dep::Wr, key, fact);
        }
        if e < order.len() {
            let fact = Fact::ListRw {
                len: e,
                next: order[e],
            };
            graph.add(r.txn, writers[e], Dep::Rw, key, fact);
        }
    }

    intermediate_reads(h, idx, key, order, &writers, &position, &consistent, out);
    lost_updates(h, idx, key, order, &consistent, out);
    if opts.realtime {
        stale_reads(h, key, order, &writers, &consistent, out);
        lost_writes(h, idx, key, order, &position, &consistent, out);
    }
}

/// G1b: a read that shows some but not the last of another transaction's appends to
/// the key. With reads prefixes of the order, a read of snapshot length `e` is
/// intermediate iff some writer of `order[..e]` with several appends has its last one
/// at position `e` or later (or nowhere in the order): a prefix maximum answers it.
#[allow(clippy::too_many_arguments)]
fn intermediate_reads(
    h: &History,
    idx: &ListIndex,
    key: Key,
    order: &[Elem],
    writers: &[TxnIdx],
    position: &FastMap<Elem, usize>,
    reads: &[Read],
    out: &mut Collector,
) {
    // last_pos[i]: where the last append of the writer of order[i] is, if it appended
    // more than once (usize::MAX if its last element is not in the order).
    let last_pos: Vec<Option<usize>> = writers
        .iter()
        .map(|w| {
            let own = idx.appends.get(&(key, *w))?;
            if own.len() < 2 {
                return None;
            }
            let last = own.last()?;
            Some(position.get(last).copied().unwrap_or(usize::MAX))
        })
        .collect();
    // prefix_max[e] = max of last_pos[..e].
    let mut prefix_max = Vec::with_capacity(order.len() + 1);
    prefix_max.push(None);
    for lp in &last_pos {
        let prev = prefix_max.last().copied().flatten();
        prefix_max.push(prev.max(*lp));
    }
    for r in reads {
        let Some(max) = prefix_max[r.ext_len] else {
            continue;
        };
        if max < r.value.len() {
            continue;
        }
        out.add(AnomalyKind::G1b, || {
            let len = r.value.len();
            let mut partial: Vec<TxnIdx> = Vec::new();
            for i in 0..r.ext_len {
                if last_pos[i].is_some_and(|p| p >= len) && !partial.contains(&writers[i]) {
                    partial.push(writers[i]);
                }
            }
            let facts: Vec<String> = partial
                .iter()
                .map(|w| {
                    let own = idx.appends.get(&(key, *w)).map_or(&[][..], |v| v.as_slice());
                    format!("T{w} appended {} to it", describe::list(own))
                })
                .collect();
            let mut txns = vec![r.txn];
            txns.extend(&partial);
            (
                txns.clone(),
                format!(
                    "T{} read list {key} = {}, an intermediate state: {}, but the read lacks the last of those\n{}",
                    r.txn,
                    describe::list(r.value),
                    facts.join("; "),
                    describe::txns(h, &txns)
                ),
            )
        });
    }
}

/// Lost update: two transactions that read the key at the same version and both
/// appended to it.
fn lost_updates(
    h: &History,
    idx: &ListIndex,
    key: Key,
    order: &[Elem],
    reads: &[Read],
    out: &mut Collector,
) {
    let mut by_version: BTreeMap<usize, Vec<TxnIdx>> = BTreeMap::new();
    for r in reads {
        if idx.appends.contains_key(&(key, r.txn)) {
            let txns = by_version.entry(r.ext_len).or_default();
            if !txns.contains(&r.txn) {
                txns.push(r.txn);
            }
        }
    }
    for (len, txns) in by_version {
        if txns.len() < 2 {
            continue;
        }
        out.add(AnomalyKind::LostUpdate, || {
            let facts: Vec<String> = txns
                .iter()
                .map(|w| {
                    let own = idx.appends.get(&(key, *w)).map_or(&[][..], |v| v.as_slice());
                    format!("T{w} appended {}", describe::list(own))
                })
                .collect();
            (
                txns.clone(),
                format!(
                    "{} transactions read list {key} at the same version (length {len}: {}) and all appended to it ({}); under SI only the first to commit may\n{}",
                    txns.len(),
                    describe::list(&order[..len.min(order.len())]),
                    facts.join("; "),
                    describe::txns(h, &txns)
                ),
            )
        });
    }
}

/// StaleRead: a read lacking an element of the order whose writer committed before
/// the reader started. `suffix_min[i]` is the earliest acknowledged commit among the
/// writers of `order[i..]`.
fn stale_reads(
    h: &History,
    key: Key,
    order: &[Elem],
    writers: &[TxnIdx],
    reads: &[Read],
    out: &mut Collector,
) {
    let mut suffix_min: Vec<Option<(u64, usize)>> = vec![None; order.len() + 1];
    for i in (0..order.len()).rev() {
        let here = acked(h, writers[i]).map(|end| (end, i));
        suffix_min[i] = match (here, suffix_min[i + 1]) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    for r in reads {
        let start = h.txns[r.txn].start;
        let Some((end, i)) = suffix_min[r.value.len()] else {
            continue;
        };
        if end >= start || writers[i] == r.txn {
            continue;
        }
        let w = writers[i];
        out.add(AnomalyKind::StaleRead, || {
            (
                vec![w, r.txn],
                format!(
                    "T{} started at {start} and read list {key} = {}, without element {} that T{w} appended and committed at {end} (acknowledged before the read began; the element is at position {i} of the version order)\n{}",
                    r.txn,
                    describe::list(r.value),
                    order[i],
                    describe::txns(h, &[r.txn, w])
                ),
            )
        });
    }
}

/// LostWrite: an acknowledged element missing from the order although a checked read
/// of the key started after its writer's commit was acknowledged.
fn lost_writes(
    h: &History,
    idx: &ListIndex,
    key: Key,
    order: &[Elem],
    position: &FastMap<Elem, usize>,
    reads: &[Read],
    out: &mut Collector,
) {
    let Some(latest) = reads.iter().max_by_key(|r| h.txns[r.txn].start) else {
        return;
    };
    let latest_start = h.txns[latest.txn].start;
    let Some(appenders) = idx.appenders.get(&key) else {
        return;
    };
    for &w in appenders {
        let Some(end) = acked(h, w) else {
            continue;
        };
        if end >= latest_start {
            continue;
        }
        let own = idx.appends.get(&(key, w)).map_or(&[][..], |v| v.as_slice());
        let missing: Vec<Elem> = own
            .iter()
            .copied()
            .filter(|x| !position.contains_key(x))
            .collect();
        if missing.is_empty() {
            continue;
        }
        out.add(AnomalyKind::LostWrite, || {
            (
                vec![w, latest.txn],
                format!(
                    "T{w} appended {} to list {key} and committed at {end}, but no read shows it although T{} started at {latest_start} and read {}; the longest read of the key is {}\n{}",
                    describe::list(&missing),
                    latest.txn,
                    describe::list(latest.value),
                    describe::list(order),
                    describe::txns(h, &[w, latest.txn])
                ),
            )
        });
    }
}
