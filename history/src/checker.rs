//! # The history checker
//!
//! [`check`] infers, from a [`History`] alone, the version order of every key and the
//! dependency graph of the transactions that committed, then reports the anomalies that
//! snapshot isolation (as Adya and Elle define it) forbids. Write skew (G2-item) is
//! found too but is allowed. Nothing the engine reports about itself (txn ids,
//! snapshots, commit timestamps) is trusted: they only appear in explanations.
//!
//! ## Which transactions count
//!
//! A transaction counts (is treated as committed) if its outcome is `Committed`, or if
//! it is `Unknown` and some *other* transaction's read returned one of its writes (an
//! appended element or a written register value; a read by any transaction, even an
//! aborted one, is evidence, since no correct engine shows uncommitted data). Unknown
//! transactions nobody observed are left out entirely: with no evidence either way, a
//! history in which they did not commit is as good as one in which they did.
//! `Aborted` transactions never count; a counted transaction reading one of their
//! writes is **G1a**. Only the reads of counted transactions are checked.
//!
//! ## Version orders
//!
//! * **Lists.** Every read of a key by a counted transaction (its own appends included)
//!   must be a prefix of the longest such read (the first longest one is the
//!   reference): a read that is not is **IncompatibleOrder**. The reference read *is*
//!   the version order of the key: version `i` is its prefix of length `i`. Reads with
//!   a duplicate element (**DuplicateElement**), an element no transaction appended to
//!   that key (**GarbageRead**) or an aborted transaction's element (**G1a**), and
//!   reads that fail the internal checks below, are reported and take no part in the
//!   version order or the graph, so one bad read does not cascade. Appends that no
//!   read shows come after the reference in an unknown order and produce no edges
//!   (only the real-time checks below look at them).
//! * **Registers.** A write's predecessor is the value its own transaction read of that
//!   key before its first write of it (`Some(None)` = the initial, absent state); a
//!   write with no earlier read has no known predecessor. Only a transaction's last
//!   write of a key is a version (earlier ones are intermediate). The versions of a key
//!   form a forest rooted at the initial state (plus one tree per write of unknown
//!   predecessor). A read of a value nobody wrote is **GarbageRead**; a read of another
//!   transaction's intermediate write is **G1b**; such reads (and G1a and internally
//!   inconsistent ones) take no part in the forest or the graph. Only a transaction's
//!   first read of a key before writing it (its snapshot read) is used there: later
//!   reads are checked against it and against its own writes.
//!
//! ## Per-transaction checks
//!
//! * **Internal**: a list read after the transaction's own appends must be what it
//!   read before (if it did) followed by exactly its own appends so far, and no own
//!   element may appear anywhere else; a register read after an own write returns the
//!   last own write; two reads of a key with no own write between return the same
//!   value (snapshots are repeatable). A read of a value the transaction writes only
//!   later is Internal too.
//! * **G1b** (lists): a read containing an element of a transaction that appended to
//!   the key more than once, but not its last element there. Counted once per read.
//! * **LostUpdate**: two or more counted transactions read the same version of a key
//!   (same list length, or same register value) and both wrote the key. SI's
//!   first-committer-wins forbids both committing. Counted once per (key, version).
//!   The same pair usually also closes a cycle (G-single for lists; a two-rw cycle for
//!   registers, which is why this is checked on its own).
//!
//! ## The dependency graph
//!
//! Nodes are counted transactions; per key:
//! * **ww** `Ti -> Tj`: Tj installed the version right after Ti's (lists: consecutive
//!   elements of the reference with different writers; registers: Tj's write has Ti's
//!   version as predecessor).
//! * **wr** `Ti -> Tj`: Tj read the version Ti installed (list: the last element of
//!   Tj's read, own appends stripped, is Ti's; register: Tj read Ti's value).
//! * **rw** `Ti -> Tj` (anti-dependency): Ti read a version and Tj installed the next
//!   one (lists: the element right after Ti's read in the reference is Tj's; registers:
//!   Tj's write has the value Ti read as predecessor).
//!
//! Self edges are dropped. Tarjan's algorithm finds the strongly connected components
//! of ww ∪ wr ∪ rw; only non-trivial ones are examined (in a valid history they are
//! rare and small, so the whole check stays near-linear). Inside a component:
//! * **G0**: each non-trivial component of its ww edges alone is one instance.
//! * **G1c**: each non-trivial component of its ww ∪ wr edges that contains a wr edge
//!   is one instance.
//! * **G-single**: each rw edge `a -> b` such that `b` reaches `a` over ww ∪ wr (a
//!   breadth-first search) is one instance: a cycle with exactly one anti-dependency.
//! * **G-nonadjacent**: each remaining rw edge that closes a cycle in which no two rw
//!   edges are adjacent (a search over (node, "last edge was rw") states; the cycle
//!   found may be a closed walk). Cerone and Gotsman show SI histories are exactly
//!   those whose every cycle has two adjacent anti-dependencies, so this is forbidden
//!   too; G-single is its special case with one rw edge.
//! * **G2-item** ([`AnomalyKind::WriteSkew`], allowed): a component with rw edges in
//!   which none of the above was found is one instance.
//!
//! So cycle counts are "number of cycle-closing components" for G0 / G1c / G2-item
//! and "number of cycle-closing anti-dependency edges" for G-single / G-nonadjacent;
//! they are lower bounds on the number of distinct cycles. The searches of one
//! component share a budget of [`SEARCH_BUDGET`] edge visits; once it is spent the
//! remaining rw edges of that component are not examined, and a G2-item reported for
//! it says so (forbidden cycles may then be missed). A register lost update usually
//! shows up as a two-rw cycle as well, so it comes with a G2-item.
//!
//! ## What one instance is
//!
//! | kind | one instance per |
//! |---|---|
//! | G1a | (read, aborted writer it shows) |
//! | G1b, GarbageRead, StaleRead, IncompatibleOrder | offending read (IncompatibleOrder: read that is not a prefix of the reference) |
//! | DuplicateElement | read with repeated elements, or element / value written twice |
//! | Internal | offending read |
//! | LostUpdate | (key, version) overwritten by two or more transactions |
//! | LostWrite | (key, acknowledged writer) |
//! | BankTotal | transaction |
//! | cycles | see above |
//!
//! ## Real time (`CheckOptions::realtime`)
//!
//! The engine promises strong SI: a transaction that starts after another's commit was
//! acknowledged sees it. Only `Committed` writers are used here (an Unknown's end is
//! not an acknowledgement).
//! * **StaleRead**: a counted T2 reads a key at a version lacking the write of a
//!   committed T1 with `T1.end < T2.start`, where T1's write is a *later version* in the
//!   inferred order: its element is in the reference after T2's read, or its register
//!   value descends from the one T2 read. Counted once per read.
//! * **LostWrite**: an acknowledged write that vanished. Lists: a committed element
//!   missing from the reference read of its key although some (checked) read of the
//!   key started after the writer ended. Registers: a committed write, in the tree of
//!   the initial state, that is neither equal to nor an ancestor of (nor a later
//!   version than: that is a StaleRead) the value read by a transaction that started
//!   after the writer ended. Counted once per (key, writer). A read that lacks a lost
//!   write is not also counted as a StaleRead.
//!
//! ## Bank
//!
//! [`check_bank`] runs [`check`] and adds **BankTotal**: a counted transaction whose
//! snapshot reads (the first read of a key before any own write of it) cover every
//! account must see balances ([`crate::model::bank_balance`]; absent = 0) summing to
//! the total. A snapshot in which *every* account is absent is exempt: it is the state
//! before set-up (which the set-up transaction itself reads); one with only some
//! accounts absent is checked (it saw part of the set-up). Counted once per
//! transaction.
//!
//! ## Not checked
//!
//! * Cycles through real-time or process order (e.g. a cycle of a wr edge and a
//!   "T1 ended before T2 started" edge across keys); only the single-key real-time
//!   facts above are checked.
//! * Positions of list appends nobody read, and register writes with no read before
//!   them (no predecessor): they get no ww / rw edges.
//! * Lost writes that no later read could have seen (no read of the key started after
//!   the writer ended).
//! * Reads of transactions that do not count (aborted or unobserved unknown).
//! * Process (session) order: consecutive transactions of one client are related only
//!   through real time, like any others.

mod describe;
mod graph;
mod list;
mod register;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::{bank_balance, History, Key, Op, Outcome, TxnIdx};

pub use graph::SEARCH_BUDGET;

/// A multiply-rotate hasher for the checker's integer-keyed maps: SipHash's DoS
/// resistance buys nothing here and costs most of a debug-build check.
#[derive(Clone, Copy, Default)]
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;
/// A `HashSet` with [`FastHasher`].
pub(crate) type FastSet<T> =
    std::collections::HashSet<T, std::hash::BuildHasherDefault<FastHasher>>;

/// What to check and how much to keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Check the real-time facts (StaleRead, LostWrite) of strong SI.
    pub realtime: bool,
    /// Examples kept per anomaly kind (every instance is still counted).
    pub max_examples: usize,
    /// Judge against serializability: write skew (G2-item) is forbidden too. For
    /// histories whose writing transactions take a lock on every key they read (locking
    /// reads held to the end, strict two-phase locking) and whose read-only ones read
    /// a snapshot: every such history is serializable.
    pub serializable: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            realtime: true,
            max_examples: 5,
            serializable: false,
        }
    }
}

/// The kinds of anomaly the checker reports. See the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AnomalyKind {
    /// A cycle of write-write dependencies.
    G0,
    /// A read of an aborted transaction's write.
    G1a,
    /// A read of an intermediate state of another transaction.
    G1b,
    /// A cycle of ww and wr dependencies with at least one wr.
    G1c,
    /// Two committed transactions wrote a key after reading the same version of it.
    LostUpdate,
    /// A cycle with exactly one anti-dependency (rw) edge.
    GSingle,
    /// A cycle with two or more anti-dependency edges, no two of them adjacent.
    GNonadjacent,
    /// A read that misses a write acknowledged before the reader started.
    StaleRead,
    /// An acknowledged write missing from the state later reads show.
    LostWrite,
    /// A transaction's reads disagree with its own writes or with each other.
    Internal,
    /// Two list reads of one key that are not prefixes of one another.
    IncompatibleOrder,
    /// An element twice in one list read (or a value written twice).
    DuplicateElement,
    /// A read of something nobody wrote.
    GarbageRead,
    /// G2-item: a cycle with two adjacent anti-dependencies. Allowed under SI.
    WriteSkew,
    /// A bank snapshot whose balances do not sum to the total.
    BankTotal,
}

impl AnomalyKind {
    /// Every kind, in report order.
    pub const ALL: [AnomalyKind; 15] = [
        AnomalyKind::G0,
        AnomalyKind::G1a,
        AnomalyKind::G1b,
        AnomalyKind::G1c,
        AnomalyKind::LostUpdate,
        AnomalyKind::GSingle,
        AnomalyKind::GNonadjacent,
        AnomalyKind::StaleRead,
        AnomalyKind::LostWrite,
        AnomalyKind::Internal,
        AnomalyKind::IncompatibleOrder,
        AnomalyKind::DuplicateElement,
        AnomalyKind::GarbageRead,
        AnomalyKind::WriteSkew,
        AnomalyKind::BankTotal,
    ];

    /// Whether snapshot isolation forbids it (everything but write skew).
    pub fn forbidden_under_si(self) -> bool {
        self != AnomalyKind::WriteSkew
    }

    /// The usual (Elle) name.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::G0 => "G0",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::G1b => "G1b",
            AnomalyKind::G1c => "G1c",
            AnomalyKind::LostUpdate => "lost-update",
            AnomalyKind::GSingle => "G-single",
            AnomalyKind::GNonadjacent => "G-nonadjacent",
            AnomalyKind::StaleRead => "stale-read",
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::Internal => "internal",
            AnomalyKind::IncompatibleOrder => "incompatible-order",
            AnomalyKind::DuplicateElement => "duplicate",
            AnomalyKind::GarbageRead => "garbage-read",
            AnomalyKind::WriteSkew => "G2-item",
            AnomalyKind::BankTotal => "bank-total",
        }
    }
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One instance of an anomaly, explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// The transactions involved (for a cycle: in cycle order).
    pub txns: Vec<TxnIdx>,
    /// The facts that make it an anomaly and a description of every transaction named.
    pub explanation: String,
}

/// What a check found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Instances found of each kind (kinds with none are absent). See the module
    /// documentation for what one instance of each kind is.
    pub counts: BTreeMap<AnomalyKind, usize>,
    /// At most `max_examples` instances of each kind, in the order found.
    pub examples: Vec<Anomaly>,
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    /// Unknown transactions counted as committed because their writes were observed.
    pub unknown_committed: usize,
    /// Judged against serializability ([`CheckOptions::serializable`]).
    #[serde(default)]
    pub serializable: bool,
}

impl Report {
    /// Instances of kinds snapshot isolation forbids (serializability, if judged so).
    pub fn forbidden(&self) -> usize {
        self.counts
            .iter()
            .filter(|(kind, _)| self.is_forbidden(**kind))
            .map(|(_, n)| n)
            .sum()
    }

    /// Whether this report's standard forbids `kind`.
    pub fn is_forbidden(&self, kind: AnomalyKind) -> bool {
        self.serializable || kind.forbidden_under_si()
    }

    /// No forbidden anomaly.
    pub fn is_valid(&self) -> bool {
        self.forbidden() == 0
    }

    /// Instances of one kind.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// A human-readable account: verdict, counts, then every example's explanation.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let verdict = if self.is_valid() { "VALID" } else { "INVALID" };
        let _ = writeln!(
            s,
            "history check: {verdict} ({} forbidden anomalies)",
            self.forbidden()
        );
        let _ = writeln!(
            s,
            "transactions: {} committed, {} aborted, {} unknown ({} counted as committed: their writes were observed)",
            self.committed, self.aborted, self.unknown, self.unknown_committed
        );
        for (kind, n) in &self.counts {
            let allowed = if self.is_forbidden(*kind) {
                ""
            } else {
                " (allowed under SI)"
            };
            let _ = writeln!(s, "  {}: {n}{allowed}", kind.name());
        }
        if !self.examples.is_empty() {
            let _ = writeln!(s, "examples:");
            for a in &self.examples {
                let _ = writeln!(s, "[{}] {}", a.kind.name(), a.explanation);
            }
        }
        s
    }
}

/// Counts every instance and keeps the first few of each kind; explanations are built
/// only for kept examples, so a history with millions of instances stays cheap.
pub(crate) struct Collector {
    counts: BTreeMap<AnomalyKind, usize>,
    examples: Vec<Anomaly>,
    max_examples: usize,
}

impl Collector {
    fn new(max_examples: usize) -> Self {
        Collector {
            counts: BTreeMap::new(),
            examples: Vec::new(),
            max_examples,
        }
    }

    /// Records one instance of `kind`; `explain` returns the transactions involved and
    /// the explanation, and is called only if the example is kept.
    pub(crate) fn add(
        &mut self,
        kind: AnomalyKind,
        explain: impl FnOnce() -> (Vec<TxnIdx>, String),
    ) {
        let n = self.counts.entry(kind).or_insert(0);
        *n += 1;
        if *n <= self.max_examples {
            let (txns, explanation) = explain();
            self.examples.push(Anomaly {
                kind,
                txns,
                explanation,
            });
        }
    }
}

/// Which transactions count as committed (see the module documentation).
pub(crate) struct Counted {
    pub(crate) counted: Vec<bool>,
    unknown_committed: usize,
}

/// One check in progress: the shared state of [`check`] and [`check_bank`].
struct Run<'h> {
    h: &'h History,
    out: Collector,
    counted: Counted,
    serializable: bool,
}

impl<'h> Run<'h> {
    fn check(h: &'h History, opts: &CheckOptions) -> Self {
        let mut out = Collector::new(opts.max_examples);
        let lists = list::ListIndex::build(h, &mut out);
        let regs = register::RegIndex::build(h, &mut out);
        let mut observed = vec![false; h.txns.len()];
        lists.mark_observed(h, &mut observed);
        regs.mark_observed(h, &mut observed);
        let mut counted = Vec::with_capacity(h.txns.len());
        let mut unknown_committed = 0;
        for (t, txn) in h.txns.iter().enumerate() {
            let c = match txn.outcome {
                Outcome::Committed => true,
                Outcome::Aborted => false,
                Outcome::Unknown => observed[t],
            };
            if c && txn.outcome == Outcome::Unknown {
                unknown_committed += 1;
            }
            counted.push(c);
        }
        let counted = Counted {
            counted,
            unknown_committed,
        };
        let mut edges = graph::Builder::default();
        list::analyse(h, &lists, &counted.counted, opts, &mut out, &mut edges);
        register::analyse(h, &regs, &counted.counted, opts, &mut out, &mut edges);
        graph::find_cycles(h, edges, &mut out);
        Run {
            h,
            out,
            counted,
            serializable: opts.serializable,
        }
    }

    fn bank(&mut self, accounts: &[Key], total: u64) {
        let accounts: BTreeSet<Key> = accounts.iter().copied().collect();
        if accounts.is_empty() {
            return;
        }
        for (t, txn) in self.h.txns.iter().enumerate() {
            if !self.counted.counted[t] {
                continue;
            }
            let snapshot = snapshot_reads(&txn.ops, &accounts);
            // A snapshot of every account absent is the state before the accounts
            // were set up (the set-up transaction itself reads it), not a torn view.
            if snapshot.len() != accounts.len() || snapshot.values().all(Option::is_none) {
                continue;
            }
            let sum: u64 = snapshot
                .values()
                .map(|v| v.map_or(0, |v| u64::from(bank_balance(v))))
                .sum();
            if sum != total {
                let h = self.h;
                self.out.add(AnomalyKind::BankTotal, || {
                    let balances: Vec<String> = snapshot
                        .iter()
                        .map(|(k, v)| match v {
                            Some(v) => format!("{k}={v} (balance {})", bank_balance(*v)),
                            None => format!("{k}=absent (balance 0)"),
                        })
                        .collect();
                    (
                        vec![t],
                        format!(
                            "T{t}'s snapshot reads of the {} accounts sum to {sum}, not {total}: {}\n{}",
                            accounts.len(),
                            balances.join(", "),
                            describe::txns(h, &[t])
                        ),
                    )
                });
            }
        }
    }

    fn finish(self) -> Report {
        let mut committed = 0;
        let mut aborted = 0;
        let mut unknown = 0;
        for txn in &self.h.txns {
            match txn.outcome {
                Outcome::Committed => committed += 1,
                Outcome::Aborted => aborted += 1,
                Outcome::Unknown => unknown += 1,
            }
        }
        Report {
            counts: self.out.counts,
            examples: self.out.examples,
            committed,
            aborted,
            unknown,
            unknown_committed: self.counted.unknown_committed,
            serializable: self.serializable,
        }
    }
}

/// The first read of each of `keys` made before any own write of that key (a
/// transaction's view of its snapshot). Reads that never returned are skipped.
fn snapshot_reads(ops: &[Op], keys: &BTreeSet<Key>) -> BTreeMap<Key, Option<u64>> {
    let mut written: HashSet<Key> = HashSet::new();
    let mut snapshot = BTreeMap::new();
    for op in ops {
        match op {
            Op::Write { key, .. } => {
                written.insert(*key);
            }
            Op::ReadReg {
                key,
                value: Some(v),
            } if keys.contains(key) && !written.contains(key) => {
                snapshot.entry(*key).or_insert(*v);
            }
            _ => {}
        }
    }
    snapshot
}

/// Checks a history against snapshot isolation (and, with `opts.realtime`, strong SI's
/// real-time promise). Never panics on malformed histories: what cannot be made sense
/// of is reported as an anomaly.
pub fn check(h: &History, opts: &CheckOptions) -> Report {
    Run::check(h, opts).finish()
}

/// [`check`] plus the bank invariant: every counted transaction whose snapshot reads
/// cover all of `accounts` must see balances ([`bank_balance`] of each value; an absent
/// account is 0) summing to `total`; a snapshot of every account absent (before
/// set-up) is exempt. The returned report holds both, so the caller needs only this
/// call.
pub fn check_bank(h: &History, accounts: &[Key], total: u64, opts: &CheckOptions) -> Report {
    let mut run = Run::check(h, opts);
    run.bank(accounts, total);
    run.finish()
}
