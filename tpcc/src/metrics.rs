//! What a run measures: per transaction type an HDR histogram of response times
//! (microseconds, from the first attempt's begin to the final commit or rollback, so
//! retries are inside the latency) and counters, plus the input-variability counts of
//! clause 5.5.1.5. Workers keep their own [`Stats`] and the driver merges them at the
//! end; [`Live`] holds the few atomics the once-a-second progress line reads.

use crate::transactions::TxnKind;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};

/// Latencies are recorded in microseconds up to an hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone, Debug)]
pub struct TxnStats {
    pub hist: Histogram<u64>,
    /// Completed transactions (for New-Order: including business rollbacks).
    pub count: u64,
    /// New-Order business rollbacks (unused item), included in `count`.
    pub rollbacks: u64,
    /// Attempts that ended in a retryable conflict.
    pub aborts: u64,
    /// Of `aborts`, those where the engine refused an over-long row version chain.
    pub chain_full: u64,
    /// Re-executions after such an abort.
    pub retries: u64,
    /// Transactions given up after the retry limit.
    pub failed: u64,
}

impl Default for TxnStats {
    fn default() -> Self {
        TxnStats {
            hist: new_histogram(),
            count: 0,
            rollbacks: 0,
            aborts: 0,
            chain_full: 0,
            retries: 0,
            failed: 0,
        }
    }
}

/// Input-variability counters (clause 5.5.1.5), over the measurement window.
#[derive(Clone, Debug, Default)]
pub struct Variability {
    pub new_orders: u64,
    pub new_order_rollbacks: u64,
    pub order_lines: u64,
    pub remote_order_lines: u64,
    pub payments: u64,
    pub remote_payments: u64,
    pub payments_by_last_name: u64,
    pub order_statuses: u64,
    pub order_statuses_by_last_name: u64,
    pub deliveries: u64,
    pub skipped_delivery_districts: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub txns: [TxnStats; 5],
    pub var: Variability,
}

impl Stats {
    pub fn of(&mut self, k: TxnKind) -> &mut TxnStats {
        &mut self.txns[k.index()]
    }

    pub fn merge(&mut self, o: &Stats) {
        for (a, b) in self.txns.iter_mut().zip(&o.txns) {
            a.hist.add(&b.hist).expect("same histogram bounds");
            a.count += b.count;
            a.rollbacks += b.rollbacks;
            a.aborts += b.aborts;
            a.chain_full += b.chain_full;
            a.retries += b.retries;
            a.failed += b.failed;
        }
        let (v, w) = (&mut self.var, &o.var);
        v.new_orders += w.new_orders;
        v.new_order_rollbacks += w.new_order_rollbacks;
        v.order_lines += w.order_lines;
        v.remote_order_lines += w.remote_order_lines;
        v.payments += w.payments;
        v.remote_payments += w.remote_payments;
        v.payments_by_last_name += w.payments_by_last_name;
        v.order_statuses += w.order_statuses;
        v.order_statuses_by_last_name += w.order_statuses_by_last_name;
        v.deliveries += w.deliveries;
        v.skipped_delivery_districts += w.skipped_delivery_districts;
    }

    pub fn total_count(&self) -> u64 {
        self.txns.iter().map(|t| t.count).sum()
    }
}

/// Counters since the start of the run (warm-up included), for the progress line.
#[derive(Default)]
pub struct Live {
    pub new_orders: AtomicU64,
    pub completed: AtomicU64,
    pub aborts: AtomicU64,
    pub failed: AtomicU64,
    pub unavailable: AtomicU64,
}

impl Live {
    pub fn snapshot(&self) -> [u64; 4] {
        [
            self.new_orders.load(Ordering::Relaxed),
            self.completed.load(Ordering::Relaxed),
            self.aborts.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        ]
    }
}
