//! A small snapshot-isolation engine simulator that records Jepsen-style histories:
//! each transaction takes a snapshot of the committed state when it starts, reads from
//! it and its own writes, and at its end commits with first-committer-wins (or aborts,
//! or ends with an unknown outcome that may or may not have been applied). Processes
//! interleave starts and ends at random, so the histories are strong-SI histories with
//! real concurrency. Optionally one conflicting writer is let through (a mutation that
//! breaks SI).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use history::model::{Elem, History, Key, Op, Outcome, TxnIdx, TxnRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    List,
    Register,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub model: Model,
    pub processes: usize,
    pub txns: usize,
    pub keys: u64,
    pub max_ops: usize,
    /// Registers: allow writes with no read of the key before them.
    pub blind_writes: bool,
    /// Add a last committed transaction that reads every key after everything ended.
    pub final_observer: bool,
    /// Let the first qualifying transaction that fails first-committer-wins commit.
    pub force_conflict: bool,
    pub p_abort: f64,
    pub p_unknown: f64,
}

impl Config {
    pub fn new(model: Model) -> Self {
        Config {
            model,
            processes: 3,
            txns: 30,
            keys: 3,
            max_ops: 4,
            blind_writes: false,
            final_observer: false,
            force_conflict: false,
            p_abort: 0.08,
            p_unknown: 0.1,
        }
    }
}

pub struct Sim {
    pub history: History,
    /// Registers: the committed values of each key in commit order, with their writer.
    pub reg_chain: HashMap<Key, Vec<(TxnIdx, u64)>>,
    /// The transaction let through by `force_conflict`, if one qualified.
    pub forced: Option<TxnIdx>,
}

struct InFlight {
    idx: TxnIdx,
    snapshot: u64,
    appends: Vec<(Key, Vec<Elem>)>,
    writes: Vec<(Key, u64)>,
    /// Keys it read before writing them (or read at all, for lists).
    read_keys: HashSet<Key>,
}

#[derive(Default)]
struct Store {
    seq: u64,
    /// Versions of each list: (commit seq, value), in commit order.
    lists: HashMap<Key, Vec<(u64, Vec<Elem>)>>,
    regs: HashMap<Key, Vec<(u64, u64)>>,
    /// Who committed each key, in commit order.
    commits: HashMap<Key, Vec<(u64, TxnIdx)>>,
}

impl Store {
    fn list_at(&self, key: Key, snapshot: u64) -> &[Elem] {
        let Some(versions) = self.lists.get(&key) else {
            return &[];
        };
        let n = versions.partition_point(|(s, _)| *s <= snapshot);
        if n == 0 {
            &[]
        } else {
            &versions[n - 1].1
        }
    }

    fn reg_at(&self, key: Key, snapshot: u64) -> Option<u64> {
        let versions = self.regs.get(&key)?;
        let n = versions.partition_point(|(s, _)| *s <= snapshot);
        (n > 0).then(|| versions[n - 1].1)
    }

    fn last_commit(&self, key: Key) -> u64 {
        self.commits
            .get(&key)
            .and_then(|c| c.last())
            .map_or(0, |c| c.0)
    }
}

pub fn run(cfg: &Config, seed: u64) -> Sim {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut store = Store::default();
    let mut history = History::default();
    let mut reg_chain: HashMap<Key, Vec<(TxnIdx, u64)>> = HashMap::new();
    let mut read_keys_of: Vec<HashSet<Key>> = Vec::new();
    let mut forced = None;
    let mut next_unique = 1u64;
    let mut clock = 0u64;
    let mut left = cfg.txns;
    let mut flight: Vec<Option<InFlight>> = (0..cfg.processes).map(|_| None).collect();

    loop {
        let busy: Vec<usize> = (0..cfg.processes)
            .filter(|&p| flight[p].is_some() || left > 0)
            .collect();
        if busy.is_empty() {
            break;
        }
        let p = busy[rng.gen_range(0..busy.len())];
        clock += rng.gen_range(1..4);
        match flight[p].take() {
            None => {
                left -= 1;
                let f = start(
                    cfg,
                    &mut rng,
                    &store,
                    &mut history,
                    p,
                    clock,
                    &mut next_unique,
                );
                read_keys_of.push(f.read_keys.clone());
                flight[p] = Some(f);
            }
            Some(f) => {
                let txn = &mut history.txns[f.idx];
                txn.end = clock;
                let write_keys: Vec<Key> = f
                    .appends
                    .iter()
                    .map(|a| a.0)
                    .chain(f.writes.iter().map(|w| w.0))
                    .collect();
                let conflicts: Vec<Key> = write_keys
                    .iter()
                    .copied()
                    .filter(|&k| store.last_commit(k) > f.snapshot)
                    .collect();
                let (outcome, apply) = if !conflicts.is_empty() {
                    if cfg.force_conflict
                        && forced.is_none()
                        && qualifies(cfg, &store, &history, &read_keys_of, &f, &conflicts)
                    {
                        forced = Some(f.idx);
                        (Outcome::Committed, true)
                    } else if rng.gen_bool(0.2) {
                        (Outcome::Unknown, false)
                    } else {
                        (Outcome::Aborted, false)
                    }
                } else {
                    let roll: f64 = rng.gen();
                    if roll < cfg.p_abort {
                        (Outcome::Aborted, false)
                    } else if roll < cfg.p_abort + cfg.p_unknown {
                        (Outcome::Unknown, rng.gen_bool(0.5))
                    } else {
                        (Outcome::Committed, true)
                    }
                };
                let txn = &mut history.txns[f.idx];
                txn.outcome = outcome;
                if outcome == Outcome::Aborted && rng.gen_bool(0.3) && !txn.ops.is_empty() {
                    // The client failed part-way: the last op it ran never returned.
                    let cut = rng.gen_range(0..txn.ops.len());
                    txn.ops.truncate(cut + 1);
                    match &mut txn.ops[cut] {
                        Op::ReadList { value, .. } => *value = None,
                        Op::ReadReg { value, .. } => *value = None,
                        _ => {}
                    }
                }
                if apply {
                    store.seq += 1;
                    let seq = store.seq;
                    txn.commit_ts = Some(seq);
                    for (key, elems) in &f.appends {
                        let versions = store.lists.entry(*key).or_default();
                        let mut value = versions.last().map(|v| v.1.clone()).unwrap_or_default();
                        value.extend(elems);
                        versions.push((seq, value));
                        store.commits.entry(*key).or_default().push((seq, f.idx));
                    }
                    for &(key, value) in &f.writes {
                        store.regs.entry(key).or_default().push((seq, value));
                        store.commits.entry(key).or_default().push((seq, f.idx));
                        reg_chain.entry(key).or_default().push((f.idx, value));
                    }
                }
            }
        }
    }

    if cfg.final_observer {
        clock += 1;
        let snapshot = store.seq;
        let ops = (0..cfg.keys)
            .map(|key| match cfg.model {
                Model::List => Op::ReadList {
                    key,
                    value: Some(store.list_at(key, snapshot).to_vec()),
                },
                Model::Register => Op::ReadReg {
                    key,
                    value: Some(store.reg_at(key, snapshot)),
                },
            })
            .collect();
        history.txns.push(TxnRecord {
            process: cfg.processes as u32,
            node: 0,
            ops,
            outcome: Outcome::Committed,
            start: clock,
            end: clock + 1,
            txn_id: Some(history.txns.len() as u64),
            snapshot: Some(snapshot),
            commit_ts: None,
        });
    }

    Sim {
        history,
        reg_chain,
        forced,
    }
}

/// Whether letting `f` commit despite its conflicts surely leaves evidence: for some
/// conflicting key, the first transaction that committed it after `f`'s snapshot was
/// acknowledged, and both read the key before writing it (lists: `f` read it; the
/// final observer then shows the order).
fn qualifies(
    cfg: &Config,
    store: &Store,
    history: &History,
    read_keys_of: &[HashSet<Key>],
    f: &InFlight,
    conflicts: &[Key],
) -> bool {
    conflicts.iter().any(|&k| {
        let Some(&(_, first)) = store
            .commits
            .get(&k)
            .and_then(|c| c.iter().find(|(s, _)| *s > f.snapshot))
        else {
            return false;
        };
        history.txns[first].outcome == Outcome::Committed
            && f.read_keys.contains(&k)
            && (cfg.model == Model::List || read_keys_of[first].contains(&k))
    })
}

fn start(
    cfg: &Config,
    rng: &mut StdRng,
    store: &Store,
    history: &mut History,
    process: usize,
    clock: u64,
    next_unique: &mut u64,
) -> InFlight {
    let idx = history.txns.len();
    let snapshot = store.seq;
    let mut ops = Vec::new();
    let mut f = InFlight {
        idx,
        snapshot,
        appends: Vec::new(),
        writes: Vec::new(),
        read_keys: HashSet::new(),
    };
    let n_ops = rng.gen_range(1..=cfg.max_ops);
    for _ in 0..n_ops {
        let key = rng.gen_range(0..cfg.keys);
        match cfg.model {
            Model::List => {
                let own = f
                    .appends
                    .iter()
                    .find(|a| a.0 == key)
                    .map(|a| a.1.as_slice());
                if rng.gen_bool(0.5) {
                    let mut value = store.list_at(key, snapshot).to_vec();
                    value.extend(own.unwrap_or(&[]));
                    ops.push(Op::ReadList {
                        key,
                        value: Some(value),
                    });
                    f.read_keys.insert(key);
                } else {
                    let elem = *next_unique;
                    *next_unique += 1;
                    ops.push(Op::Append { key, elem });
                    match f.appends.iter_mut().find(|a| a.0 == key) {
                        Some(a) => a.1.push(elem),
                        None => f.appends.push((key, vec![elem])),
                    }
                }
            }
            Model::Register => {
                let roll: f64 = rng.gen();
                let (read, write) = if roll < 0.4 {
                    (true, false)
                } else if roll < 0.9 || !cfg.blind_writes {
                    (true, true) // read-modify-write
                } else {
                    (false, true) // blind write
                };
                let written = f.writes.iter().any(|w| w.0 == key);
                if read {
                    let value = match f.writes.iter().find(|w| w.0 == key) {
                        Some(w) => Some(w.1),
                        None => store.reg_at(key, snapshot),
                    };
                    ops.push(Op::ReadReg {
                        key,
                        value: Some(value),
                    });
                    if !written {
                        f.read_keys.insert(key);
                    }
                }
                if write {
                    let value = *next_unique;
                    *next_unique += 1;
                    ops.push(Op::Write { key, value });
                    match f.writes.iter_mut().find(|w| w.0 == key) {
                        Some(w) => w.1 = value,
                        None => f.writes.push((key, value)),
                    }
                }
            }
        }
    }
    history.txns.push(TxnRecord {
        process: process as u32,
        node: (process % 2) as u32,
        ops,
        outcome: Outcome::Unknown,
        start: clock,
        end: clock,
        txn_id: Some(idx as u64),
        snapshot: Some(snapshot),
        commit_ts: None,
    });
    f
}
