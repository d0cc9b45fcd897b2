//! History workloads: client threads on every compute node run small transactions over
//! a few hot keys and record every attempt — its operations, every value a read
//! returned, and its outcome (committed, aborted, unknown) — into a
//! [`history::model::History`], which [`history::checker`] then checks for the
//! anomalies snapshot isolation forbids. Jepsen's Elle does the same for databases
//! over the network; here the same runner drives compute nodes in this process or
//! compute-node processes over gRPC ([`client`]), while a [`nemesis`] injects faults.
//!
//! Workloads ([`Workload`]):
//! * **list-append**: a transaction reads and appends unique elements to lists (an
//!   append reads the list and writes it back one element longer, and records that read
//!   too); every read shows the order of all appends before it. Keys retire after
//!   [`MAX_APPENDS_PER_KEY`] appends (a row holds a whole version chain of its list).
//! * **register**: read-modify-write of unique values, and multi-key read-only
//!   transactions.
//! * **bank**: transfers between accounts (read both, write both) and snapshot readers
//!   of every account; the total never changes. Values are unique too
//!   ([`history::model::bank_value`]), so the register checks apply as well.
//!
//! With [`RunOptions::locking`], every read of a transaction that writes is a locking
//! read (`get_for_update`), held to its end: the writers are then strictly two-phase
//! locked on every key they touch, the read-only transactions read snapshots, and the
//! history must be serializable (the checker's `serializable` option: G2-item
//! forbidden too).
//!
//! After the run (faults healed) every compute node reads every key once more: those
//! final reads are what "lost write" is judged against.

pub mod case;
pub mod client;
pub mod inject;
pub mod nemesis;

use client::{Client, Failure, Session};
use history::model::{bank_balance, bank_value, Elem, History, Key, Op, Outcome, TxnRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Appends a list key takes before it retires (the row's version chain must fit one
/// B-tree entry).
pub const MAX_APPENDS_PER_KEY: u32 = 24;
/// Upper bound on list keys a run may use.
const MAX_LIST_KEYS: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    ListAppend,
    Register,
    Bank,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::ListAppend => "list-append",
            Workload::Register => "register",
            Workload::Bank => "bank",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        [Workload::ListAppend, Workload::Register, Workload::Bank]
            .into_iter()
            .find(|w| w.name() == s)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workload: Workload,
    /// Keys live at once (list-append: the active window; register, bank: all keys).
    pub keys: u64,
    pub threads_per_node: usize,
    pub duration: Duration,
    /// Most operations per transaction (list-append, register).
    pub max_ops: usize,
    /// Share of bank transactions that read every account.
    pub read_fraction: f64,
    /// Transactions that write read with locking reads (see the module doc).
    pub locking: bool,
    pub seed: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workload: Workload::ListAppend,
            keys: 8,
            threads_per_node: 3,
            duration: Duration::from_secs(3),
            max_ops: 4,
            read_fraction: 0.3,
            locking: false,
            seed: 1,
        }
    }
}

/// Starting balance of each bank account.
pub const BANK_START: u32 = 100;

/// The recorded run and what the checker needs to know about it.
pub struct Run {
    pub history: History,
    /// Bank: the accounts and the total they must keep.
    pub bank: Option<(Vec<Key>, u64)>,
    /// Attempts that failed because a node was unavailable (begin refused).
    pub unavailable: u64,
}

fn key_bytes(k: Key) -> Vec<u8> {
    let mut b = b"k".to_vec();
    b.extend_from_slice(&k.to_be_bytes());
    b
}

fn decode_list(v: Option<Vec<u8>>) -> Result<Vec<Elem>, Failure> {
    let v = v.unwrap_or_default();
    if !v.len().is_multiple_of(8) {
        return Err(Failure::Aborted(format!("list of {} bytes", v.len())));
    }
    Ok(v.chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn encode_list(l: &[Elem]) -> Vec<u8> {
    l.iter().flat_map(|e| e.to_le_bytes()).collect()
}

fn decode_reg(v: Option<Vec<u8>>) -> Result<Option<u64>, Failure> {
    match v {
        None => Ok(None),
        Some(b) => Ok(Some(u64::from_le_bytes(b.as_slice().try_into().map_err(
            |_| Failure::Aborted(format!("register of {} bytes", b.len())),
        )?))),
    }
}

/// List keys: a window of `width` live keys that moves up as keys fill.
struct ListKeys {
    base: AtomicU64,
    width: u64,
    appends: Vec<AtomicU32>,
}

impl ListKeys {
    fn new(width: u64) -> ListKeys {
        ListKeys {
            base: AtomicU64::new(0),
            width: width.max(1),
            appends: (0..MAX_LIST_KEYS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// A live key, hot keys more often (half the picks go to a quarter of the window).
    fn pick(&self, rng: &mut StdRng) -> Key {
        let base = self.base.load(Ordering::Acquire);
        let hot = (self.width / 4).max(1);
        let off = if rng.gen_bool(0.5) {
            rng.gen_range(0..hot)
        } else {
            rng.gen_range(0..self.width)
        };
        (base + off).min(MAX_LIST_KEYS as u64 - 1)
    }

    /// Takes one of the key's appends; false once it is full (the window moves past it).
    fn take_append(&self, k: Key) -> bool {
        let n = self.appends[k as usize].fetch_add(1, Ordering::AcqRel);
        if n >= MAX_APPENDS_PER_KEY {
            self.base.fetch_max(k + 1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Every key used so far.
    fn used(&self) -> Vec<Key> {
        let top = (self.base.load(Ordering::Acquire) + self.width).min(MAX_LIST_KEYS as u64);
        (0..top).collect()
    }
}

/// Per-process unique values: process in the high bits, a counter below (below 2^32
/// for up to 255 processes and 2^24 values each, as bank tags need).
struct Uniq {
    process: u64,
    next: u64,
}

impl Uniq {
    fn next(&mut self) -> u64 {
        self.next += 1;
        (self.process << 24) | self.next
    }
}

/// Runs `o` against `client` for `o.duration` (the nemesis, if any, runs alongside and
/// is healed before the final reads), and returns the history.
pub fn run(
    client: &dyn Client,
    o: &RunOptions,
    nemesis: Option<&mut dyn nemesis::Nemesis>,
) -> Result<Run, String> {
    let t0 = Instant::now();
    let nanos = move || t0.elapsed().as_nanos() as u64;
    let mut txns: Vec<TxnRecord> = Vec::new();
    let mut bank = None;
    if o.workload == Workload::Bank {
        let accounts: Vec<Key> = (0..o.keys).collect();
        txns.push(setup_bank(client, &accounts, nanos)?);
        bank = Some((accounts, o.keys * u64::from(BANK_START)));
    }
    let lists = ListKeys::new(o.keys);
    let stop = AtomicBool::new(false);
    let unavailable = AtomicU64::new(0);
    let deadline = Instant::now() + o.duration;
    let recorded: Vec<Vec<TxnRecord>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..client.nodes() * o.threads_per_node)
            .map(|p| {
                let (lists, stop, unavailable) = (&lists, &stop, &unavailable);
                s.spawn(move || {
                    let node = p % client.nodes();
                    let mut rng = StdRng::seed_from_u64(o.seed.wrapping_mul(1_000_003) ^ p as u64);
                    let mut uniq = Uniq {
                        process: p as u64 + 1,
                        next: 0,
                    };
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                        let plan = Plan::draw(o, lists, &mut rng, &mut uniq);
                        let locking = o.locking && plan.writes();
                        match attempt(client, node, p as u32, &plan, locking, nanos) {
                            Some(rec) => {
                                if rec.outcome == Outcome::Aborted {
                                    // Back off a little so a hot key's losers spread out.
                                    std::thread::sleep(Duration::from_micros(
                                        rng.gen_range(0..500),
                                    ));
                                }
                                out.push(rec);
                            }
                            None => {
                                unavailable.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        if let Some(n) = nemesis {
            n.run(deadline, &stop);
        }
        let out = workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect();
        stop.store(true, Ordering::Release);
        out
    });
    for r in recorded {
        txns.extend(r);
    }
    let keys: Vec<Key> = match o.workload {
        Workload::ListAppend => lists.used(),
        _ => (0..o.keys).collect(),
    };
    for node in 0..client.nodes() {
        txns.push(final_read(client, node, o.workload, &keys, nanos)?);
    }
    Ok(Run {
        history: History { txns },
        bank,
        unavailable: unavailable.into_inner(),
    })
}

/// One transaction to attempt.
enum Plan {
    /// list-append / register: a sequence of reads and writes.
    Ops(Vec<Step>),
    /// bank: move `amount` (at most what `from` has) from one account to another; the
    /// new values carry `tags` (unique, below 2^32).
    Transfer {
        from: Key,
        to: Key,
        amount: u32,
        tags: (u64, u64),
    },
    /// bank: read every account.
    ReadAll(Vec<Key>),
}

enum Step {
    ReadList(Key),
    Append(Key, Elem),
    ReadReg(Key),
    /// Read the register, then write this unique value.
    Rmw(Key, u64),
}

impl Plan {
    /// Whether the plan writes anything.
    fn writes(&self) -> bool {
        match self {
            Plan::Ops(steps) => steps
                .iter()
                .any(|s| matches!(s, Step::Append(..) | Step::Rmw(..))),
            Plan::Transfer { .. } => true,
            Plan::ReadAll(_) => false,
        }
    }

    fn draw(o: &RunOptions, lists: &ListKeys, rng: &mut StdRng, uniq: &mut Uniq) -> Plan {
        match o.workload {
            Workload::ListAppend => {
                let n = rng.gen_range(1..=o.max_ops.max(1));
                Plan::Ops(
                    (0..n)
                        .map(|_| {
                            let k = lists.pick(rng);
                            if rng.gen_bool(0.5) && lists.take_append(k) {
                                Step::Append(k, uniq.next())
                            } else {
                                Step::ReadList(k)
                            }
                        })
                        .collect(),
                )
            }
            Workload::Register => {
                let n = rng.gen_range(1..=o.max_ops.max(1));
                let read_only = rng.gen_bool(0.25);
                Plan::Ops(
                    (0..n)
                        .map(|_| {
                            let k = rng.gen_range(0..o.keys.max(1));
                            if !read_only && rng.gen_bool(0.5) {
                                Step::Rmw(k, uniq.next())
                            } else {
                                Step::ReadReg(k)
                            }
                        })
                        .collect(),
                )
            }
            Workload::Bank => {
                if rng.gen_bool(o.read_fraction.clamp(0.0, 1.0)) || o.keys < 2 {
                    Plan::ReadAll((0..o.keys).collect())
                } else {
                    let from = rng.gen_range(0..o.keys);
                    let to = (from + rng.gen_range(1..o.keys)) % o.keys;
                    Plan::Transfer {
                        from,
                        to,
                        amount: rng.gen_range(1..=5),
                        tags: (uniq.next(), uniq.next()),
                    }
                }
            }
        }
    }
}

/// Runs one attempt and records it; `None` if the node would not begin (not an
/// attempt: nothing was sent).
fn attempt(
    client: &dyn Client,
    node: usize,
    process: u32,
    plan: &Plan,
    locking: bool,
    nanos: impl Fn() -> u64,
) -> Option<TxnRecord> {
    let start = nanos();
    let mut s = client.begin(node).ok()?;
    let mut rec = TxnRecord {
        process,
        node: node as u32 + 1,
        ops: Vec::new(),
        outcome: Outcome::Aborted,
        start,
        end: 0,
        txn_id: s.txn_id(),
        snapshot: s.snapshot(),
        commit_ts: None,
    };
    let body = run_plan(&mut *s, plan, locking, &mut rec.ops);
    rec.outcome = match body {
        Err(_) => {
            s.abort();
            Outcome::Aborted
        }
        Ok(()) => match s.commit() {
            Ok(ts) => {
                rec.commit_ts = ts;
                Outcome::Committed
            }
            Err(Failure::Aborted(_)) => Outcome::Aborted,
            Err(Failure::Unknown(_)) => Outcome::Unknown,
        },
    };
    rec.end = nanos();
    Some(rec)
}

/// Runs the plan's operations, recording each as it completes (a failed read is
/// recorded without a value); with `locking`, every read is a locking read.
fn run_plan(
    s: &mut dyn Session,
    plan: &Plan,
    locking: bool,
    ops: &mut Vec<Op>,
) -> Result<(), Failure> {
    let get = |s: &mut dyn Session, key: Key| {
        if locking {
            s.get_for_update(&key_bytes(key))
        } else {
            s.get(&key_bytes(key))
        }
    };
    let read_list = |s: &mut dyn Session, ops: &mut Vec<Op>, key: Key| {
        let r = get(s, key).and_then(decode_list);
        ops.push(Op::ReadList {
            key,
            value: r.as_ref().ok().cloned(),
        });
        r
    };
    let read_reg = |s: &mut dyn Session, ops: &mut Vec<Op>, key: Key| {
        let r = get(s, key).and_then(decode_reg);
        ops.push(Op::ReadReg {
            key,
            value: r.as_ref().ok().copied(),
        });
        r
    };
    match plan {
        Plan::Ops(steps) => {
            for step in steps {
                match *step {
                    Step::ReadList(k) => {
                        read_list(s, ops, k)?;
                    }
                    Step::Append(k, e) => {
                        let mut l = read_list(s, ops, k)?;
                        l.push(e);
                        s.put(&key_bytes(k), &encode_list(&l))?;
                        ops.push(Op::Append { key: k, elem: e });
                    }
                    Step::ReadReg(k) => {
                        read_reg(s, ops, k)?;
                    }
                    Step::Rmw(k, v) => {
                        read_reg(s, ops, k)?;
                        s.put(&key_bytes(k), &v.to_le_bytes())?;
                        ops.push(Op::Write { key: k, value: v });
                    }
                }
            }
        }
        Plan::ReadAll(keys) => {
            for &k in keys {
                read_reg(s, ops, k)?;
            }
        }
        Plan::Transfer {
            from,
            to,
            amount,
            tags,
        } => {
            let a = read_reg(s, ops, *from)?.map_or(0, bank_balance);
            let b = read_reg(s, ops, *to)?.map_or(0, bank_balance);
            let amount = (*amount).min(a);
            let va = bank_value(tags.0, a - amount);
            s.put(&key_bytes(*from), &va.to_le_bytes())?;
            ops.push(Op::Write {
                key: *from,
                value: va,
            });
            let vb = bank_value(tags.1, b + amount);
            s.put(&key_bytes(*to), &vb.to_le_bytes())?;
            ops.push(Op::Write {
                key: *to,
                value: vb,
            });
        }
    }
    Ok(())
}

/// Bank set-up: every account read (absent) and written with the starting balance.
fn setup_bank(
    client: &dyn Client,
    accounts: &[Key],
    nanos: impl Fn() -> u64 + Copy,
) -> Result<TxnRecord, String> {
    for _ in 0..100 {
        let start = nanos();
        let mut s = client.begin(0).map_err(|e| e.message().to_string())?;
        let mut ops = Vec::new();
        let body = (|| {
            for &k in accounts {
                let cur = s.get(&key_bytes(k)).and_then(decode_reg)?;
                ops.push(Op::ReadReg {
                    key: k,
                    value: Some(cur),
                });
                let v = bank_value(k + 1, BANK_START);
                s.put(&key_bytes(k), &v.to_le_bytes())?;
                ops.push(Op::Write { key: k, value: v });
            }
            Ok::<(), Failure>(())
        })();
        let (txn_id, snapshot) = (s.txn_id(), s.snapshot());
        match body {
            Ok(()) => match s.commit() {
                Ok(ts) => {
                    return Ok(TxnRecord {
                        process: 0,
                        node: 1,
                        ops,
                        outcome: Outcome::Committed,
                        start,
                        end: nanos(),
                        txn_id,
                        snapshot,
                        commit_ts: ts,
                    })
                }
                Err(Failure::Unknown(m)) => return Err(format!("bank set-up: {m}")),
                Err(Failure::Aborted(_)) => {}
            },
            Err(_) => s.abort(),
        }
    }
    Err("bank set-up never committed".into())
}

/// One read-only transaction on `node` that reads every key (retried until it commits).
fn final_read(
    client: &dyn Client,
    node: usize,
    workload: Workload,
    keys: &[Key],
    nanos: impl Fn() -> u64 + Copy,
) -> Result<TxnRecord, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let start = nanos();
        let plan = match workload {
            Workload::ListAppend => Plan::Ops(keys.iter().map(|&k| Step::ReadList(k)).collect()),
            _ => Plan::ReadAll(keys.to_vec()),
        };
        let mut s = match client.begin(node) {
            Ok(s) => s,
            Err(e) => {
                last = e.message().to_string();
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (txn_id, snapshot) = (s.txn_id(), s.snapshot());
        let mut ops = Vec::new();
        match run_plan(&mut *s, &plan, false, &mut ops) {
            Ok(()) => match s.commit() {
                Ok(ts) => {
                    return Ok(TxnRecord {
                        process: u32::MAX - node as u32,
                        node: node as u32 + 1,
                        ops,
                        outcome: Outcome::Committed,
                        start,
                        end: nanos(),
                        txn_id,
                        snapshot,
                        commit_ts: ts,
                    })
                }
                Err(e) => last = e.message().to_string(),
            },
            Err(e) => {
                last = e.message().to_string();
                s.abort();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "final read on node {} never committed: {last}",
        node + 1
    ))
}

/// Compute nodes of this process, shared by the client and a nemesis.
pub type Nodes = Arc<Vec<Arc<compute_node::node::ComputeNode>>>;
