//! The dependency graph of the counted transactions and the search for its cycles
//! (see the module documentation of [`super`] for what each edge and anomaly means).

use std::collections::VecDeque;

use super::{describe, AnomalyKind, Collector, FastMap};
use crate::model::{Elem, History, Key, TxnIdx};

/// Edge visits allowed to the cycle searches of one strongly connected component.
/// Components of valid histories are tiny; a huge one (a history full of write skew,
/// say) stops being searched when this runs out, and its explanation says so.
pub const SEARCH_BUDGET: usize = 5_000_000;

/// Edges shown of one cycle before the rest are summarised.
const MAX_CYCLE_EDGES: usize = 16;

/// The kind of a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Dep {
    /// The target installed the version right after the source's.
    Ww,
    /// The target read the version the source installed.
    Wr,
    /// The source read a version and the target installed the next one.
    Rw,
}

const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const ALL: u8 = WW | WR | RW;

impl Dep {
    fn bit(self) -> u8 {
        match self {
            Dep::Ww => WW,
            Dep::Wr => WR,
            Dep::Rw => RW,
        }
    }
}

/// The version facts behind an edge, for its explanation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fact {
    ListWw { prev: Elem, next: Elem },
    ListWr { last: Elem, len: usize },
    ListRw { len: usize, next: Elem },
    RegWw { prev: u64, next: u64 },
    RegWr { value: u64 },
    RegRw { read: Option<u64>, next: u64 },
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Edge {
    from: TxnIdx,
    to: TxnIdx,
    dep: Dep,
    key: Key,
    fact: Fact,
}

/// Collects the edges the per-model analyses infer.
#[derive(Default)]
pub(crate) struct Builder {
    edges: Vec<Edge>,
}

impl Builder {
    /// Adds `from -dep-> to` (self edges are dropped: a transaction's dependencies on
    /// itself say nothing about the order of transactions).
    pub(crate) fn add(&mut self, from: TxnIdx, to: TxnIdx, dep: Dep, key: Key, fact: Fact) {
        if from != to {
            self.edges.push(Edge {
                from,
                to,
                dep,
                key,
                fact,
            });
        }
    }
}

fn explain_edge(e: &Edge) -> String {
    let (a, b, k) = (e.from, e.to, e.key);
    match e.fact {
        Fact::ListWw { prev, next } => format!(
            "T{a} -ww-> T{b}: in list {k}'s version order T{b}'s element {next} comes right after T{a}'s {prev}"
        ),
        Fact::ListWr { last, len } => format!(
            "T{a} -wr-> T{b}: T{b} read list {k} at length {len}, ending with T{a}'s element {last}"
        ),
        Fact::ListRw { len, next } => format!(
            "T{a} -rw-> T{b}: T{a} read list {k} at length {len}, without T{b}'s element {next}, the next one in the version order"
        ),
        Fact::RegWw { prev, next } => format!(
            "T{a} -ww-> T{b}: T{b} read register {k} = {prev} (T{a}'s write) and overwrote it with {next}"
        ),
        Fact::RegWr { value } => {
            format!("T{a} -wr-> T{b}: T{b} read register {k} = {value}, written by T{a}")
        }
        Fact::RegRw { read, next } => format!(
            "T{a} -rw-> T{b}: T{a} read register {k} = {}, and T{b} overwrote that version with {next}",
            describe::reg(read)
        ),
    }
}

/// Adjacency lists: `(target, edge index)`.
type Adj = Vec<Vec<(usize, usize)>>;

/// Finds and classifies the cycles of the graph `edges` over the transactions of `h`.
pub(crate) fn find_cycles(h: &History, builder: Builder, out: &mut Collector) {
    let n = h.txns.len();
    let mut edges = builder.edges;
    // One edge per (from, to, kind) is enough: the first found explains it.
    edges.sort_unstable_by_key(|e| (e.from, e.to, e.dep));
    edges.dedup_by_key(|e| (e.from, e.to, e.dep));
    let mut adj: Adj = vec![Vec::new(); n];
    for (i, e) in edges.iter().enumerate() {
        if e.from < n && e.to < n {
            adj[e.from].push((e.to, i));
        }
    }
    for comp in sccs(&adj, &edges, ALL) {
        classify(h, &edges, &adj, &comp, out);
    }
}

/// The strongly connected components with two or more nodes of the graph made of the
/// edges of `adj` whose kind is in `mask` (Tarjan's algorithm, iterative so that long
/// chains do not overflow the stack). Components come in a deterministic order.
fn sccs(adj: &Adj, edges: &[Edge], mask: u8) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = adj.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut call: Vec<(usize, usize)> = Vec::new();
    let mut next_index = 0;
    let mut comps = Vec::new();
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        call.push((root, 0));
        while let Some(&mut (v, ref mut pos)) = call.last_mut() {
            if let Some(&(w, e)) = adj[v].get(*pos) {
                *pos += 1;
                if edges[e].dep.bit() & mask == 0 {
                    continue;
                }
                if index[w] == UNSEEN {
                    index[w] = next_index;
                    low[w] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            call.pop();
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort_unstable();
                    comps.push(comp);
                }
            }
            if let Some(&(parent, _)) = call.last() {
                low[parent] = low[parent].min(low[v]);
            }
        }
    }
    comps
}

/// Breadth-first searches inside one component, sharing its budget.
struct Search {
    stamp: Vec<u32>,
    current: u32,
    pred: Vec<(usize, usize)>,
    queue: VecDeque<usize>,
    budget: usize,
}

impl Search {
    fn new(nodes: usize) -> Self {
        Search {
            stamp: vec![0; 2 * nodes],
            current: 0,
            pred: vec![(0, 0); 2 * nodes],
            queue: VecDeque::new(),
            budget: SEARCH_BUDGET,
        }
    }

    fn exhausted(&self) -> bool {
        self.budget == 0
    }

    fn reset(&mut self) {
        self.current += 1;
        self.queue.clear();
    }

    /// The edges of a state path ending at `goal`, from the predecessors just recorded.
    fn trace(&self, start: usize, goal: usize) -> Vec<usize> {
        let mut path = Vec::new();
        let mut s = goal;
        while s != start {
            let (prev, e) = self.pred[s];
            path.push(e);
            s = prev;
        }
        path.reverse();
        path
    }

    /// A shortest path from `from` to `to` (distinct) over edges whose kind is in
    /// `mask`, through nodes of `members` if given.
    fn path(
        &mut self,
        adj: &Adj,
        edges: &[Edge],
        (from, to): (usize, usize),
        mask: u8,
        members: Option<&[bool]>,
    ) -> Option<Vec<usize>> {
        self.reset();
        self.stamp[from] = self.current;
        self.queue.push_back(from);
        while let Some(x) = self.queue.pop_front() {
            for &(y, e) in &adj[x] {
                if self.budget == 0 {
                    return None;
                }
                self.budget -= 1;
                if edges[e].dep.bit() & mask == 0
                    || members.is_some_and(|m| !m[y])
                    || self.stamp[y] == self.current
                {
                    continue;
                }
                self.stamp[y] = self.current;
                self.pred[y] = (x, e);
                if y == to {
                    return Some(self.trace(from, to));
                }
                self.queue.push_back(y);
            }
        }
        None
    }

    /// A walk from `from` to `to` that, closed by an rw edge `to -> from`, has no two
    /// adjacent rw edges: it must leave `from` and enter `to` by non-rw edges and
    /// never take two rw edges in a row. States are `2 * node + (last edge was rw)`.
    fn nonadjacent(
        &mut self,
        adj: &Adj,
        edges: &[Edge],
        (from, to): (usize, usize),
    ) -> Option<Vec<usize>> {
        self.reset();
        let start = 2 * from + 1;
        let goal = 2 * to;
        self.stamp[start] = self.current;
        self.queue.push_back(start);
        while let Some(s) = self.queue.pop_front() {
            let (x, last_rw) = (s / 2, s % 2 == 1);
            for &(y, e) in &adj[x] {
                if self.budget == 0 {
                    return None;
                }
                self.budget -= 1;
                let rw = edges[e].dep == Dep::Rw;
                if rw && last_rw {
                    continue;
                }
                let next = 2 * y + usize::from(rw);
                if self.stamp[next] == self.current {
                    continue;
                }
                self.stamp[next] = self.current;
                self.pred[next] = (s, e);
                if next == goal {
                    return Some(self.trace(start, goal));
                }
                self.queue.push_back(next);
            }
        }
        None
    }
}

/// Text for a cycle given as global edge indices, and its transactions in order.
fn explain_cycle(
    h: &History,
    edges: &[Edge],
    cycle: &[usize],
    what: &str,
    note: &str,
) -> (Vec<TxnIdx>, String) {
    let txns: Vec<TxnIdx> = cycle.iter().map(|&e| edges[e].from).collect();
    let mut chain: Vec<String> = txns
        .iter()
        .take(MAX_CYCLE_EDGES)
        .map(|t| format!("T{t}"))
        .collect();
    if txns.len() > MAX_CYCLE_EDGES {
        chain.push(format!("… ({} more)", txns.len() - MAX_CYCLE_EDGES));
    }
    if let Some(&first) = txns.first() {
        chain.push(format!("T{first}"));
    }
    let mut lines: Vec<String> = cycle
        .iter()
        .take(MAX_CYCLE_EDGES)
        .map(|&e| format!("  {}", explain_edge(&edges[e])))
        .collect();
    if cycle.len() > MAX_CYCLE_EDGES {
        lines.push(format!("  … {} more edges", cycle.len() - MAX_CYCLE_EDGES));
    }
    let text = format!(
        "{what}{note}: {}\n{}\n{}",
        chain.join(" -> "),
        lines.join("\n"),
        describe::txns(h, &txns)
    );
    (txns, text)
}

/// Classifies the cycles of one strongly connected component `comp` (global indices).
fn classify(h: &History, edges: &[Edge], global: &Adj, comp: &[usize], out: &mut Collector) {
    let local_of: FastMap<usize, usize> = comp.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    // The component's own edges, with targets as local indices (sources are local by
    // position); edge indices stay global.
    let adj: Adj = comp
        .iter()
        .map(|&t| {
            global[t]
                .iter()
                .filter_map(|&(to, e)| local_of.get(&to).map(|&l| (l, e)))
                .collect()
        })
        .collect();
    let mut search = Search::new(comp.len());
    let mut forbidden = false;
    let members_of = |sub: &[usize]| {
        let mut m = vec![false; comp.len()];
        for &x in sub {
            m[x] = true;
        }
        m
    };
    // Local edge `(source, target, edge)` inside `members` of a kind in `mask`.
    let inner_edge = |members: &[bool], mask: u8| {
        adj.iter().enumerate().find_map(|(x, out)| {
            if !members[x] {
                return None;
            }
            out.iter()
                .find(|&&(y, e)| members[y] && edges[e].dep.bit() & mask != 0)
                .map(|&(y, e)| (x, y, e))
        })
    };
    let budget_note = |search: &Search| {
        if search.exhausted() {
            format!(" (search budget of {SEARCH_BUDGET} edge visits exhausted in a component of {} transactions: this cycle may be incomplete and instances may be missed)", comp.len())
        } else {
            String::new()
        }
    };

    for sub in sccs(&adj, edges, WW) {
        forbidden = true;
        out.add(AnomalyKind::G0, || {
            let members = members_of(&sub);
            let mut cycle = Vec::new();
            if let Some((x, y, e)) = inner_edge(&members, WW) {
                cycle.push(e);
                cycle.extend(
                    search
                        .path(&adj, edges, (y, x), WW, Some(&members))
                        .unwrap_or_default(),
                );
            }
            let note = budget_note(&search);
            explain_cycle(
                h,
                edges,
                &cycle,
                &format!(
                    "G0: {} transactions ordered in a cycle by their writes alone",
                    sub.len()
                ),
                &note,
            )
        });
    }

    for sub in sccs(&adj, edges, WW | WR) {
        let members = members_of(&sub);
        let Some((x, y, e)) = inner_edge(&members, WR) else {
            continue; // a ww-only component: already G0
        };
        forbidden = true;
        out.add(AnomalyKind::G1c, || {
            let mut cycle = vec![e];
            cycle.extend(
                search
                    .path(&adj, edges, (y, x), WW | WR, Some(&members))
                    .unwrap_or_default(),
            );
            let note = budget_note(&search);
            explain_cycle(
                h,
                edges,
                &cycle,
                "G1c: a cycle of write and read dependencies (circular information flow)",
                &note,
            )
        });
    }

    let rw_edges: Vec<(usize, usize, usize)> = adj
        .iter()
        .enumerate()
        .flat_map(|(x, out)| {
            out.iter()
                .filter(|&&(_, e)| edges[e].dep == Dep::Rw)
                .map(move |&(y, e)| (x, y, e))
        })
        .collect();
    let mut examined = 0;
    for &(x, y, e) in &rw_edges {
        if search.exhausted() {
            break;
        }
        if let Some(path) = search.path(&adj, edges, (y, x), WW | WR, None) {
            forbidden = true;
            out.add(AnomalyKind::GSingle, || {
                let mut cycle = vec![e];
                cycle.extend(path);
                explain_cycle(
                    h,
                    edges,
                    &cycle,
                    "G-single: a cycle with exactly one anti-dependency (a read that missed a write it must have seen)",
                    "",
                )
            });
        } else if let Some(walk) = search.nonadjacent(&adj, edges, (y, x)) {
            forbidden = true;
            out.add(AnomalyKind::GNonadjacent, || {
                let mut cycle = vec![e];
                cycle.extend(walk);
                explain_cycle(
                    h,
                    edges,
                    &cycle,
                    "G-nonadjacent: a cycle whose anti-dependencies are never adjacent (SI requires two in a row)",
                    "",
                )
            });
        }
        if !search.exhausted() {
            examined += 1;
        }
    }

    if !forbidden {
        if let Some(&(x, y, e)) = rw_edges.first() {
            out.add(AnomalyKind::WriteSkew, || {
                let mut cycle = vec![e];
                // A fresh budget for the example: the component's may be spent.
                search.budget = SEARCH_BUDGET;
                cycle.extend(
                    search
                        .path(&adj, edges, (y, x), ALL, None)
                        .unwrap_or_default(),
                );
                let note = if examined < rw_edges.len() {
                    format!(
                        " (search budget exhausted: only {examined} of {} anti-dependency edges of this component of {} transactions were examined, so forbidden cycles may be missed)",
                        rw_edges.len(),
                        comp.len()
                    )
                } else {
                    String::new()
                };
                explain_cycle(
                    h,
                    edges,
                    &cycle,
                    &format!(
                        "G2-item (write skew, allowed under SI): a component of {} transactions whose cycles all have two adjacent anti-dependencies",
                        comp.len()
                    ),
                    &note,
                )
            });
        }
    }
}
