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
use crate::target::{AttemptError, OrderId, Target};
use crate::transactions::{self as tx, Input, Outcome, TxnKind, Workload};
use anyhow::{anyhow, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// How long a terminal keeps retrying a transaction whose node is unavailable
    /// (restarting, fenced, cut off) before the run fails. Zero: fail at once.
    pub unavailable_patience: Duration,
    /// `--events`: a line per second.
    pub events: Option<std::sync::Arc<crate::events::EventLog>>,
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
    /// Every New-Order the driver saw committed (warm-up included), in no order.
    pub acked: Vec<OrderId>,
    /// Attempts that failed because their node was unavailable.
    pub unavailable: u64,
    /// Longest time one transaction spent retrying against an unavailable node.
    pub max_stall: Duration,
    /// Per node, the longest stretch of the measurement window in which no
    /// transaction on it completed: the downtime its clients saw.
    pub max_gap: Vec<Duration>,
    /// Per node, the engine's counters over the measurement window (empty if the target
    /// does not report them).
    pub counters: Vec<crate::target::NodeCounters>,
    /// CPU seconds the target's processes spent in the measurement window, if known.
    pub cpu_s: Option<f64>,
}

/// Per node: when a transaction on it last completed, and the longest gap so far
/// (µs since the start of the measurement window).
struct Gaps {
    last: Vec<AtomicU64>,
    max: Vec<AtomicU64>,
    origin: Instant,
}

impl Gaps {
    fn new(nodes: usize, origin: Instant) -> Gaps {
        Gaps {
            last: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            max: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            origin,
        }
    }

    fn completed(&self, node: usize, at: Instant) {
        if at < self.origin {
            return;
        }
        let us = at.duration_since(self.origin).as_micros() as u64;
        let prev = self.last[node].fetch_max(us, Ordering::AcqRel);
        if us > prev {
            self.max[node].fetch_max(us - prev, Ordering::AcqRel);
        }
    }

    /// Closes the window at `end` (a node silent until the end counts too).
    fn result(&self, end: Instant) -> Vec<Duration> {
        let end_us = end.saturating_duration_since(self.origin).as_micros() as u64;
        self.last
            .iter()
            .zip(&self.max)
            .map(|(l, m)| {
                let tail = end_us.saturating_sub(l.load(Ordering::Acquire));
                Duration::from_micros(m.load(Ordering::Acquire).max(tail))
            })
            .collect()
    }
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
pub fn run(target: &dyn Target, cfg: &DriverConfig) -> Result<RunResult> {
    let nodes = target.nodes();
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
    let history_base = now_micros() << 12;
    let start = Instant::now();
    let mut terminals = Vec::new();
    for w in 1..=wl.warehouses {
        for i in 0..cfg.terminals_per_warehouse {
            let id = terminals.len() as u32;
            let node = match cfg.affinity {
                Affinity::Partitioned => partition_of(w, wl.warehouses, nodes),
                Affinity::Random => seed_rng.gen_range(0..nodes),
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
                // HISTORY keys must not repeat across runs on one database
                // (`--skip-load`): each run's sequence starts at its start time in
                // µs x 4096, beyond anything an earlier run can have reached.
                history_seq: history_base,
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
    let gaps = Gaps::new(nodes, measure_start);
    let stop = AtomicBool::new(false);
    let delivery_ran = AtomicBool::new(false);
    let mut timeline = Vec::new();
    let mut counters = Vec::new();
    let mut cpu_s = None;
    let results: Vec<Result<WorkerResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let (live, stop, delivery_ran, gaps) = (&live, &stop, &delivery_ran, &gaps);
                s.spawn(move || {
                    let r = worker(
                        target,
                        cfg,
                        share,
                        measure_start,
                        end,
                        live,
                        gaps,
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
        // `pool` event lines every 5 s, from a thread of their own (a node that is down
        // or paused can hold the call for its RPC timeout).
        if let Some(ev) = &cfg.events {
            let stop = &stop;
            s.spawn(move || {
                let mut next = Instant::now();
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    for p in target.pools() {
                        ev.write("pool", serde_json::to_value(p).unwrap_or_default());
                    }
                    next += Duration::from_secs(5);
                    while Instant::now() < next.min(end) && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        }
        // Progress line, once a second, from this thread.
        let mut at_measure: Option<[u64; 4]> = if cfg.warmup.is_zero() {
            Some([0; 4])
        } else {
            None
        };
        let mut prev = live.snapshot();
        let mut window_start = cfg
            .warmup
            .is_zero()
            .then(|| (target.counters(), target.cpu_seconds()));
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
            if let Some(ev) = &cfg.events {
                let (phase, since) = if now > measure_start {
                    ("run", measure_start)
                } else {
                    ("warmup", start)
                };
                ev.write(
                    "second",
                    serde_json::json!({
                        "phase": phase,
                        "elapsed_s": now.duration_since(since).as_secs_f64(),
                        "new_orders": cur[0] - prev[0],
                        "txns": cur[1] - prev[1],
                        "aborts": cur[2] - prev[2],
                        "tpmC": per_s_no * 60.0,
                    }),
                );
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
                window_start = Some((target.counters(), target.cpu_seconds()));
            }
            prev = cur;
        }
        let window_end = (target.counters(), target.cpu_seconds());
        if let Some((c0, cpu0)) = window_start {
            counters = window_end
                .0
                .iter()
                .zip(&c0)
                .map(|(e, s)| e.since(s))
                .collect();
            cpu_s = cpu0.zip(window_end.1).map(|(a, b)| b - a);
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("worker panicked"))))
            .collect()
    });
    let mut stats = Stats::default();
    let (mut acked, mut unavailable, mut max_stall) = (Vec::new(), 0, Duration::ZERO);
    for r in results {
        let r = r?;
        stats.merge(&r.stats);
        acked.extend(r.acked);
        unavailable += r.unavailable;
        max_stall = max_stall.max(r.max_stall);
    }
    Ok(RunResult {
        max_gap: gaps.result(end.min(Instant::now())),
        acked,
        unavailable,
        max_stall,
        stats,
        measured_s: cfg.duration.as_secs_f64(),
        delivery_ran: delivery_ran.load(Ordering::Relaxed),
        timeline,
        terminals: n_terms,
        workers,
        counters,
        cpu_s,
    })
}

struct WorkerResult {
    stats: Stats,
    acked: Vec<OrderId>,
    unavailable: u64,
    max_stall: Duration,
}

#[allow(clippy::too_many_arguments)]
fn worker(
    target: &dyn Target,
    cfg: &DriverConfig,
    mut terms: Vec<Terminal>,
    measure_start: Instant,
    end: Instant,
    live: &Live,
    gaps: &Gaps,
    delivery_ran: &AtomicBool,
    stop: &AtomicBool,
) -> Result<WorkerResult> {
    let mut stats = Stats::default();
    let mut acked = Vec::new();
    let (mut unavailable, mut max_stall) = (0u64, Duration::ZERO);
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
        let began = Instant::now();
        let mut aborts = 0u64;
        let mut chain_full = 0u64;
        let mut stalled_since: Option<Instant> = None;
        let outcome = loop {
            let now_us = now_micros();
            term.history_seq += 1;
            let hkey = (term.id + 1, term.history_seq);
            match target.attempt(term.node, &input, now_us, hkey) {
                Ok(o) => break Some(o),
                Err(AttemptError::Unavailable(m)) => {
                    unavailable += 1;
                    live.unavailable.fetch_add(1, Ordering::Relaxed);
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= cfg.unavailable_patience {
                        return Err(anyhow!(
                            "{kind} on node {} (terminal {}, warehouse {}): unavailable for {:.1}s: {m}",
                            term.node + 1,
                            term.id,
                            term.w,
                            since.elapsed().as_secs_f64()
                        ));
                    }
                    if stop.load(Ordering::Relaxed) {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(backoff_rng.gen_range(20..100)));
                }
                Err(AttemptError::Retryable {
                    chain_full: full, ..
                }) => {
                    aborts += 1;
                    if full {
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
                Err(AttemptError::Fatal(e)) => {
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
        if outcome.is_some() {
            gaps.completed(term.node, done_at);
        }
        if let Some(since) = stalled_since {
            max_stall = max_stall.max(done_at.duration_since(since));
        }
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
        match (&input, outcome) {
            (_, Outcome::Delivered { .. }) => delivery_ran.store(true, Ordering::Relaxed),
            (Input::NewOrder(n), Outcome::Ordered { o_id }) => acked.push((n.w, n.d, o_id)),
            _ => {}
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
    Ok(WorkerResult {
        stats,
        acked,
        unavailable,
        max_stall,
    })
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
