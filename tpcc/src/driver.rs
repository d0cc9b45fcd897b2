//! The terminal driver (clause 5.2): every terminal is bound to a home warehouse and,
//! for Stock-Level, a district; it draws its next transaction from its own shuffled
//! deck (the mix), generates the inputs and runs them on its compute node.
//!
//! Terminals are logical: a small pool of worker threads each loops over its share of
//! terminals, so 10 terminals per warehouse do not need 10 OS threads per warehouse on
//! a 2-core machine. With keying and think times off (the default) a terminal is always
//! ready; with `--keying-think` each terminal waits its keying time before and its
//! (negative-exponential, truncated at 10x mean) think time after every transaction.
//!
//! A transaction that ends in a retryable conflict is re-run with the same inputs
//! after a short randomised back-off; aborts and retries are counted apart from
//! completions, and the recorded latency spans every attempt. New-Order's unused-item
//! rollback is a completed transaction (a business rollback), not an abort.

use crate::load::now_micros;
use crate::metrics::{Live, Stats};
use crate::schema::Tables;
use crate::transactions::{self as tx, Input, Outcome, TxnKind, Workload};
use anyhow::{anyhow, Result};
use compute_node::node::ComputeNode;
use compute_node::txn::TxnError;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How terminals are spread over compute nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// Node i serves a contiguous range of warehouses.
    Partitioned,
    /// Each terminal picks a node at random.
    Random,
}

/// Node index owning warehouse `w` in the partitioned layout.
pub fn partition_of(w: u32, warehouses: u32, nodes: usize) -> usize {
    ((w as u64 - 1) * nodes as u64 / warehouses.max(1) as u64) as usize
}

#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub workload: Workload,
    pub terminals_per_warehouse: u32,
    pub workers: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Cards per transaction type in the deck, in [`TxnKind::ALL`] order.
    pub mix: [u32; 5],
    pub affinity: Affinity,
    pub seed: u64,
    pub keying_think: bool,
    pub progress: bool,
    pub max_retries: u32,
}

/// What a run produced.
pub struct RunResult {
    /// Measurement window only.
    pub stats: Stats,
    pub measured_s: f64,
    /// Whether any Delivery committed (warm-up included): condition 11 then no longer holds.
    pub delivery_ran: bool,
    /// New-Orders per minute for each second of the measurement window.
    pub timeline: Vec<f64>,
    pub terminals: usize,
    pub workers: usize,
}

struct Terminal {
    id: u32,
    w: u32,
    d: u32,
    node: usize,
    deck: Vec<TxnKind>,
    pos: usize,
    next: TxnKind,
    ready_at: Instant,
    history_seq: u64,
    rng: StdRng,
}

impl Terminal {
    fn draw(&mut self) -> TxnKind {
        if self.pos == self.deck.len() {
            let mut deck = std::mem::take(&mut self.deck);
            deck.shuffle(&mut self.rng);
            self.deck = deck;
            self.pos = 0;
        }
        self.pos += 1;
        self.deck[self.pos - 1]
    }
}

fn exp_think<R: Rng>(rng: &mut R, mean_s: f64) -> Duration {
    let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    Duration::from_secs_f64((-u.ln() * mean_s).min(10.0 * mean_s))
}

/// Runs the workload until the warm-up and measurement windows have passed.
pub fn run(nodes: &[ComputeNode], tables: &[Tables], cfg: &DriverConfig) -> Result<RunResult> {
    let wl = cfg.workload;
    let deck: Vec<TxnKind> = TxnKind::ALL
        .iter()
        .zip(cfg.mix)
        .flat_map(|(&k, n)| std::iter::repeat_n(k, n as usize))
        .collect();
    if deck.is_empty() {
        return Err(anyhow!("the mix has no cards"));
    }
    let mut seed_rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let mut terminals = Vec::new();
    for w in 1..=wl.warehouses {
        for i in 0..cfg.terminals_per_warehouse {
            let id = terminals.len() as u32;
            let node = match cfg.affinity {
                Affinity::Partitioned => partition_of(w, wl.warehouses, nodes.len()),
                Affinity::Random => seed_rng.gen_range(0..nodes.len()),
            };
            let mut t = Terminal {
                id,
                w,
                d: i % crate::schema::DISTRICTS_PER_WAREHOUSE + 1,
                node,
                deck: deck.clone(),
                pos: deck.len(),
                next: TxnKind::NewOrder,
                ready_at: start,
                history_seq: 0,
                rng: StdRng::seed_from_u64(seed_rng.gen()),
            };
            t.next = t.draw();
            if cfg.keying_think {
                t.ready_at = start + Duration::from_secs_f64(t.next.keying_think_s().0);
            }
            terminals.push(t);
        }
    }
    let n_terms = terminals.len();
    let workers = cfg.workers.clamp(1, n_terms.max(1));
    let mut shares: Vec<Vec<Terminal>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, t) in terminals.into_iter().enumerate() {
        shares[i % workers].push(t);
    }
    let measure_start = start + cfg.warmup;
    let end = measure_start + cfg.duration;
    let live = Live::default();
    let stop = AtomicBool::new(false);
    let delivery_ran = AtomicBool::new(false);
    let mut timeline = Vec::new();
    let results: Vec<Result<Stats>> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let (live, stop, delivery_ran) = (&live, &stop, &delivery_ran);
                s.spawn(move || {
                    let r = worker(
                        nodes,
                        tables,
                        cfg,
                        share,
                        measure_start,
                        end,
                        live,
                        delivery_ran,
                        stop,
                    );
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        // Progress line, once a second, from this thread.
        let mut at_measure: Option<[u64; 4]> = if cfg.warmup.is_zero() {
            Some([0; 4])
        } else {
            None
        };
        let mut prev = live.snapshot();
        let mut tick = start;
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            tick += Duration::from_secs(1);
            let now = Instant::now();
            if tick > now {
                std::thread::sleep((tick.min(end)) - now);
            }
            let cur = live.snapshot();
            let now = Instant::now();
            let crossing = at_measure.is_none() && now >= measure_start;
            let per_s_no = (cur[0] - prev[0]) as f64;
            if now > measure_start {
                timeline.push(per_s_no * 60.0);
            }
            if cfg.progress {
                let (phase, base, secs) = match at_measure {
                    Some(b) if !crossing => {
                        ("run", b, now.duration_since(measure_start).as_secs_f64())
                    }
                    _ => ("warmup", [0; 4], now.duration_since(start).as_secs_f64()),
                };
                let tpmc = (cur[0] - base[0]) as f64 * 60.0 / secs.max(1e-3);
                let done = cur[1] - base[1];
                let aborts = cur[2] - base[2];
                eprintln!(
                    "[{phase:>6} {secs:5.0}s] tpmC {tpmc:9.0}  txn/s {:7.0}  now {:6.0} tpmC  aborts {aborts} ({:.2}%)  failed {}",
                    done as f64 / secs.max(1e-3),
                    per_s_no * 60.0,
                    aborts as f64 * 100.0 / (done + aborts).max(1) as f64,
                    cur[3] - base[3],
                );
            }
            if crossing {
                at_measure = Some(cur);
            }
            prev = cur;
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("worker panicked"))))
            .collect()
    });
    let mut stats = Stats::default();
    for r in results {
        stats.merge(&r?);
    }
    Ok(RunResult {
        stats,
        measured_s: cfg.duration.as_secs_f64(),
        delivery_ran: delivery_ran.load(Ordering::Relaxed),
        timeline,
        terminals: n_terms,
        workers,
    })
}

#[allow(clippy::too_many_arguments)]
fn worker(
    nodes: &[ComputeNode],
    tables: &[Tables],
    cfg: &DriverConfig,
    mut terms: Vec<Terminal>,
    measure_start: Instant,
    end: Instant,
    live: &Live,
    delivery_ran: &AtomicBool,
    stop: &AtomicBool,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let wl = cfg.workload;
    let mut rr = 0usize;
    let mut backoff_rng =
        StdRng::seed_from_u64(cfg.seed ^ terms.first().map_or(0, |t| t.id as u64 + 77));
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let i = if cfg.keying_think {
            let (i, t) = terms
                .iter()
                .enumerate()
                .min_by_key(|(_, t)| t.ready_at)
                .expect("a worker has terminals");
            if t.ready_at > now {
                std::thread::sleep((t.ready_at.min(end) - now).min(Duration::from_millis(100)));
                continue;
            }
            i
        } else {
            rr = (rr + 1) % terms.len();
            rr
        };
        let term = &mut terms[i];
        let kind = term.next;
        let input = match kind {
            TxnKind::NewOrder => Input::NewOrder(tx::gen_new_order(&mut term.rng, &wl, term.w)),
            TxnKind::Payment => Input::Payment(tx::gen_payment(&mut term.rng, &wl, term.w)),
            TxnKind::OrderStatus => {
                Input::OrderStatus(tx::gen_order_status(&mut term.rng, &wl, term.w))
            }
            TxnKind::Delivery => Input::Delivery(tx::gen_delivery(&mut term.rng, term.w)),
            TxnKind::StockLevel => {
                Input::StockLevel(tx::gen_stock_level(&mut term.rng, term.w, term.d))
            }
        };
        let node = &nodes[term.node];
        let t = &tables[term.node];
        let began = Instant::now();
        let mut aborts = 0u64;
        let mut chain_full = 0u64;
        let outcome = loop {
            let now_us = now_micros();
            term.history_seq += 1;
            let hkey = (term.id + 1, term.history_seq);
            match attempt(node, t, &input, now_us, hkey) {
                Ok(o) => break Some(o),
                Err(e) if e.is_retryable() || is_chain_full(&e) => {
                    aborts += 1;
                    if is_chain_full(&e) {
                        chain_full += 1;
                    }
                    live.aborts.fetch_add(1, Ordering::Relaxed);
                    if aborts > cfg.max_retries as u64
                        || Instant::now() >= end
                        || stop.load(Ordering::Relaxed)
                    {
                        break None;
                    }
                    // A full version chain empties only when the GC watermark moves
                    // (published every ~50 ms, read every 200 ms): wait for that.
                    let cap = if chain_full > 0 {
                        250_000
                    } else {
                        200u64 << aborts.min(6)
                    };
                    std::thread::sleep(Duration::from_micros(backoff_rng.gen_range(0..cap)));
                }
                Err(e) => {
                    return Err(anyhow!(
                        "{kind} on node {} (terminal {}, warehouse {}): {e}",
                        term.node + 1,
                        term.id,
                        term.w
                    ))
                }
            }
        };
        let done_at = Instant::now();
        let measured = done_at >= measure_start && done_at < end;
        let ts = stats.of(kind);
        if measured {
            ts.aborts += aborts;
            ts.chain_full += chain_full;
            ts.retries += aborts.min(cfg.max_retries as u64);
        }
        let Some(outcome) = outcome else {
            live.failed.fetch_add(1, Ordering::Relaxed);
            if measured {
                ts.failed += 1;
            }
            continue;
        };
        live.completed.fetch_add(1, Ordering::Relaxed);
        if kind == TxnKind::NewOrder {
            live.new_orders.fetch_add(1, Ordering::Relaxed);
        }
        if let Outcome::Delivered { .. } = outcome {
            delivery_ran.store(true, Ordering::Relaxed);
        }
        if measured {
            ts.count += 1;
            let us = done_at.duration_since(began).as_micros().max(1) as u64;
            ts.hist.saturating_record(us);
            let v = &mut stats.var;
            match (&input, outcome) {
                (Input::NewOrder(n), o) => {
                    v.new_orders += 1;
                    v.order_lines += n.lines.len() as u64;
                    v.remote_order_lines +=
                        n.lines.iter().filter(|l| l.supply_w_id != n.w).count() as u64;
                    if o == Outcome::RolledBack {
                        v.new_order_rollbacks += 1;
                        stats.txns[TxnKind::NewOrder.index()].rollbacks += 1;
                    }
                }
                (Input::Payment(p), _) => {
                    v.payments += 1;
                    v.remote_payments += (p.c_w != p.w) as u64;
                    v.payments_by_last_name +=
                        matches!(p.customer, tx::CustomerSel::LastName(_)) as u64;
                }
                (Input::OrderStatus(p), _) => {
                    v.order_statuses += 1;
                    v.order_statuses_by_last_name +=
                        matches!(p.customer, tx::CustomerSel::LastName(_)) as u64;
                }
                (Input::Delivery(_), Outcome::Delivered { skipped }) => {
                    v.deliveries += 1;
                    v.skipped_delivery_districts += skipped as u64;
                }
                _ => {}
            }
        }
        let term = &mut terms[i];
        term.next = term.draw();
        if cfg.keying_think {
            let think = exp_think(&mut term.rng, kind.keying_think_s().1);
            let keying = Duration::from_secs_f64(term.next.keying_think_s().0);
            term.ready_at = Instant::now() + think + keying;
        }
    }
    Ok(stats)
}

/// A hot row's version chain outgrew a B-tree entry while the GC watermark lagged, so
/// the engine dropped its oldest versions and this snapshot needed one of them
/// ("snapshot too old", a retryable conflict). Retrying at once would likely hit it
/// again, so the harness waits for the watermark to move (counted in `aborts` and,
/// apart, in `chain_full`).
pub fn is_chain_full(e: &TxnError) -> bool {
    matches!(e, TxnError::Conflict(m) if m.contains("snapshot too old"))
}

/// One attempt: begin, run the profile, commit (or abort a business rollback).
fn attempt(
    node: &ComputeNode,
    t: &Tables,
    input: &Input,
    now: u64,
    history_key: (u32, u64),
) -> Result<Outcome, TxnError> {
    let mut txn = node.begin()?;
    let res = match input {
        Input::NewOrder(i) => tx::new_order(&mut txn, t, i, now),
        Input::Payment(i) => tx::payment(&mut txn, t, i, now, history_key),
        Input::OrderStatus(i) => tx::order_status(&mut txn, t, i),
        Input::Delivery(i) => tx::delivery(&mut txn, t, i, now),
        Input::StockLevel(i) => tx::stock_level(&mut txn, t, i).map(|(o, _)| o),
    };
    match res {
        Ok(Outcome::RolledBack) => {
            txn.abort()?;
            Ok(Outcome::RolledBack)
        }
        Ok(o) => {
            txn.commit()?;
            Ok(o)
        }
        Err(e) => {
            let _ = txn.abort();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_contiguous_and_cover_all_nodes() {
        let owners: Vec<usize> = (1..=4).map(|w| partition_of(w, 4, 2)).collect();
        assert_eq!(owners, [0, 0, 1, 1]);
        assert_eq!(partition_of(1, 1, 3), 0);
        let owners: Vec<usize> = (1..=3).map(|w| partition_of(w, 3, 3)).collect();
        assert_eq!(owners, [0, 1, 2]);
    }
}
