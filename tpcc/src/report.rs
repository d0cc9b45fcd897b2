//! The run report: a table on stdout and one JSON object (`--json FILE`).
//!
//! JSON fields: `tpmC` (New-Orders completed per minute of the measurement window,
//! business rollbacks included as clause 5.4.1 counts them), `txn_per_s`, `duration_s`,
//! `warehouses`, `nodes`, `spec_compliant` (false when `--scale-items` shrank the
//! database), `transactions` keyed by name (`count`, `aborts`, `retries`, `failed`,
//! `rollbacks`, `p50_ms` .. `max_ms`, and `distribution`: 20 equal buckets up to 4x the
//! p90, clause 5.6.1), `input_variability` (clause 5.5.1.5), `checks` (after the run)
//! and `checks_after_load`, each `{id, name, passed}` with `passed` true, false or
//! "not_applicable".

use crate::check::CheckResult;
use crate::metrics::{Stats, TxnStats};
use crate::transactions::TxnKind;
use serde_json::{json, Value};
use std::fmt::Write;

pub const DISTRIBUTION_BUCKETS: usize = 20;

/// One clause 5.5.1.5 figure and its allowed range.
#[derive(Clone, Debug)]
pub struct VariabilityFigure {
    pub name: &'static str,
    pub value: Option<f64>,
    pub min: f64,
    pub max: f64,
    pub samples: u64,
}

impl VariabilityFigure {
    pub fn passed(&self) -> Option<bool> {
        self.value.map(|v| v >= self.min && v <= self.max)
    }
}

pub fn variability(stats: &Stats, warehouses: u32) -> Vec<VariabilityFigure> {
    let v = &stats.var;
    let pct = |a: u64, b: u64| (b > 0).then(|| a as f64 * 100.0 / b as f64);
    let remote_ok = warehouses > 1;
    vec![
        VariabilityFigure {
            name: "new_order_rollback_pct",
            value: pct(v.new_order_rollbacks, v.new_orders),
            min: 0.9,
            max: 1.1,
            samples: v.new_orders,
        },
        VariabilityFigure {
            name: "avg_order_lines",
            value: (v.new_orders > 0).then(|| v.order_lines as f64 / v.new_orders as f64),
            min: 9.5,
            max: 10.5,
            samples: v.new_orders,
        },
        VariabilityFigure {
            name: "remote_order_lines_pct",
            value: if remote_ok {
                pct(v.remote_order_lines, v.order_lines)
            } else {
                None
            },
            min: 0.95,
            max: 1.05,
            samples: v.order_lines,
        },
        VariabilityFigure {
            name: "remote_payments_pct",
            value: if remote_ok {
                pct(v.remote_payments, v.payments)
            } else {
                None
            },
            min: 14.0,
            max: 16.0,
            samples: v.payments,
        },
        VariabilityFigure {
            name: "payment_by_last_name_pct",
            value: pct(v.payments_by_last_name, v.payments),
            min: 57.0,
            max: 63.0,
            samples: v.payments,
        },
        VariabilityFigure {
            name: "order_status_by_last_name_pct",
            value: pct(v.order_statuses_by_last_name, v.order_statuses),
            min: 57.0,
            max: 63.0,
            samples: v.order_statuses,
        },
        VariabilityFigure {
            name: "skipped_deliveries_pct",
            value: pct(v.skipped_delivery_districts, v.deliveries * 10),
            min: 0.0,
            max: 1.0,
            samples: v.deliveries,
        },
    ]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// 20 equal buckets from 0 to 4x p90 (ms), and how many fell beyond.
pub fn distribution(t: &TxnStats) -> (f64, Vec<u64>, u64) {
    let p90 = t.hist.value_at_quantile(0.90).max(1);
    let upper = 4 * p90;
    let width = (upper as f64 / DISTRIBUTION_BUCKETS as f64).max(1.0);
    let mut counts = vec![0u64; DISTRIBUTION_BUCKETS];
    let mut over = 0;
    for v in t.hist.iter_recorded() {
        let val = v.value_iterated_to();
        let b = (val as f64 / width) as usize;
        if val > upper || b >= DISTRIBUTION_BUCKETS {
            over += v.count_at_value();
        } else {
            counts[b] += v.count_at_value();
        }
    }
    (width / 1000.0, counts, over)
}

/// Everything the report shows.
pub struct Report<'a> {
    pub stats: &'a Stats,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub warehouses: u32,
    pub nodes: usize,
    pub items: u32,
    pub affinity: &'a str,
    pub terminals: usize,
    pub workers: usize,
    pub load_rows: u64,
    pub load_s: f64,
    pub checks_after_load: &'a [CheckResult],
    pub checks_after_run: &'a [CheckResult],
    pub timeline: &'a [f64],
    /// Per compute node, the engine's counters over the window (empty if unknown).
    pub counters: &'a [crate::target::NodeCounters],
    /// CPU seconds the target spent in the window, if known.
    pub cpu_s: Option<f64>,
    /// The isolation level and row locking the target's transactions ran with.
    pub mode: &'a crate::target::ModeReport,
    pub extra: Value,
}

impl Report<'_> {
    pub fn tpmc(&self) -> f64 {
        self.stats.txns[TxnKind::NewOrder.index()].count as f64 * 60.0 / self.duration_s.max(1e-9)
    }

    pub fn txn_per_s(&self) -> f64 {
        self.stats.total_count() as f64 / self.duration_s.max(1e-9)
    }

    pub fn spec_compliant(&self) -> bool {
        self.items == crate::schema::SPEC_ITEMS
    }

    /// Committed transactions over the window, all nodes (from the engine's counters,
    /// read-only ones included), or the driver's count where the target has none.
    fn committed(&self) -> u64 {
        let c: u64 = self.counters.iter().map(|c| c.committed).sum();
        if c > 0 {
            c
        } else {
            self.stats.total_count()
        }
    }

    /// CPU µs per committed transaction.
    pub fn cpu_us_per_txn(&self) -> Option<f64> {
        self.cpu_s.map(|s| s * 1e6 / self.committed().max(1) as f64)
    }

    /// Per node: each counter per committed transaction of that node.
    fn counters_json(&self) -> Value {
        self.counters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut m = serde_json::Map::new();
                m.insert("node".into(), json!(i + 1));
                m.insert("committed".into(), json!(c.committed));
                for (name, n) in c.fields() {
                    m.insert(
                        format!("{name}_per_txn"),
                        json!(n as f64 / c.committed.max(1) as f64),
                    );
                }
                Value::Object(m)
            })
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let mut txns = serde_json::Map::new();
        let total = self.stats.total_count().max(1);
        for k in TxnKind::ALL {
            let t = &self.stats.txns[k.index()];
            let q = |p: f64| {
                if t.count == 0 {
                    0.0
                } else {
                    ms(t.hist.value_at_quantile(p))
                }
            };
            let (width, counts, over) = distribution(t);
            txns.insert(
                k.name().into(),
                json!({
                    "count": t.count,
                    "mix_pct": t.count as f64 * 100.0 / total as f64,
                    "aborts": t.aborts,
                    "chain_full_aborts": t.chain_full,
                    "retries": t.retries,
                    "failed": t.failed,
                    "rollbacks": t.rollbacks,
                    "abort_rate": t.aborts as f64 / (t.count + t.aborts).max(1) as f64,
                    "aborts_per_commit": t.aborts as f64 / t.count.max(1) as f64,
                    "p50_ms": q(0.50),
                    "p90_ms": q(0.90),
                    "p95_ms": q(0.95),
                    "p99_ms": q(0.99),
                    "max_ms": if t.count == 0 { 0.0 } else { ms(t.hist.max()) },
                    "mean_ms": if t.count == 0 { 0.0 } else { t.hist.mean() / 1000.0 },
                    "distribution": {"bucket_ms": width, "counts": counts, "over_4x_p90": over},
                }),
            );
        }
        let var: Vec<Value> = variability(self.stats, self.warehouses)
            .iter()
            .map(|f| {
                json!({
                    "name": f.name, "value": f.value, "min": f.min, "max": f.max,
                    "samples": f.samples,
                    "passed": match f.passed() { Some(b) => json!(b), None => json!("not_applicable") },
                })
            })
            .collect();
        json!({
            "tpmC": self.tpmc(),
            "txn_per_s": self.txn_per_s(),
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "warehouses": self.warehouses,
            "nodes": self.nodes,
            "affinity": self.affinity,
            "terminals": self.terminals,
            "workers": self.workers,
            "items": self.items,
            "spec_compliant": self.spec_compliant(),
            "isolation": self.mode.isolation,
            "locking": self.mode.locking,
            "load": {"rows": self.load_rows, "seconds": self.load_s},
            "transactions": txns,
            "input_variability": var,
            "checks": self.checks_after_run.iter().map(CheckResult::to_json).collect::<Vec<_>>(),
            "checks_after_load": self.checks_after_load.iter().map(CheckResult::to_json).collect::<Vec<_>>(),
            "timeline_tpmC": self.timeline,
            "cpu_us_per_txn": self.cpu_us_per_txn(),
            "coherence_per_txn": self.counters_json(),
            "run": self.extra,
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nTPC-C: {} warehouses, {} compute node(s) ({}), {} terminals on {} workers, {:.0}s measured after {:.0}s warm-up{}",
            self.warehouses,
            self.nodes,
            self.affinity,
            self.terminals,
            self.workers,
            self.duration_s,
            self.warmup_s,
            if self.spec_compliant() { String::new() } else { format!("  [NOT SPEC: {} items]", self.items) }
        );
        let _ = writeln!(
            s,
            "isolation: {}   locking: {}",
            self.mode.isolation, self.mode.locking
        );
        let _ = writeln!(
            s,
            "tpmC {:.0}   txn/s {:.1}\n",
            self.tpmc(),
            self.txn_per_s()
        );
        let _ = writeln!(
            s,
            "{:<13} {:>8} {:>6} {:>7} {:>7} {:>7} {:>9} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "transaction",
            "count",
            "mix%",
            "rollbk",
            "aborts",
            "ab/com",
            "chainfull",
            "retry",
            "failed",
            "p50 ms",
            "p90 ms",
            "p95 ms",
            "p99 ms",
            "max ms"
        );
        let total = self.stats.total_count().max(1);
        for k in TxnKind::ALL {
            let t = &self.stats.txns[k.index()];
            let q = |p: f64| {
                if t.count == 0 {
                    0.0
                } else {
                    ms(t.hist.value_at_quantile(p))
                }
            };
            let _ = writeln!(
                s,
                "{:<13} {:>8} {:>6.2} {:>7} {:>7} {:>7.3} {:>9} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                k.name(),
                t.count,
                t.count as f64 * 100.0 / total as f64,
                t.rollbacks,
                t.aborts,
                t.aborts as f64 / t.count.max(1) as f64,
                t.chain_full,
                t.retries,
                t.failed,
                q(0.5),
                q(0.9),
                q(0.95),
                q(0.99),
                if t.count == 0 { 0.0 } else { ms(t.hist.max()) }
            );
        }
        if !self.counters.is_empty() {
            let _ = writeln!(
                s,
                "\nEngine work per committed transaction (measurement window){}:",
                self.cpu_us_per_txn()
                    .map(|us| format!(
                        ", CPU {us:.0} us per transaction (all processes of the target)"
                    ))
                    .unwrap_or_default()
            );
            let _ = write!(s, "  {:<20}", "node");
            for (i, _) in self.counters.iter().enumerate() {
                let _ = write!(s, " {:>10}", format!("node {}", i + 1));
            }
            let _ = writeln!(s);
            let _ = write!(s, "  {:<20}", "committed");
            for c in self.counters {
                let _ = write!(s, " {:>10}", c.committed);
            }
            let _ = writeln!(s);
            let fields = self.counters[0].fields();
            for (k, (name, _)) in fields.iter().enumerate() {
                let _ = write!(s, "  {name:<20}");
                for c in self.counters {
                    let n = c.fields()[k].1;
                    let _ = write!(s, " {:>10.3}", n as f64 / c.committed.max(1) as f64);
                }
                let _ = writeln!(s);
            }
        } else if let Some(us) = self.cpu_us_per_txn() {
            // A target whose engine counters are not visible from here (remote nodes)
            // may still have known processes.
            let _ = writeln!(
                s,
                "\nCPU {us:.0} us per committed transaction (measurement window; the \
                 service processes and this driver)"
            );
        }
        let _ = writeln!(
            s,
            "\nResponse-time distribution (20 buckets up to 4x p90, clause 5.6.1):"
        );
        for k in TxnKind::ALL {
            let t = &self.stats.txns[k.index()];
            if t.count == 0 {
                continue;
            }
            let (w, counts, over) = distribution(t);
            let c: Vec<String> = counts.iter().map(u64::to_string).collect();
            let _ = writeln!(
                s,
                "  {:<13} bucket {w:.2} ms: {} | >4xp90: {over}",
                k.name(),
                c.join(" ")
            );
        }
        let _ = writeln!(s, "\nInput variability (clause 5.5.1.5):");
        for f in variability(self.stats, self.warehouses) {
            let verdict = match f.passed() {
                Some(true) => "ok",
                Some(false) => "OUT OF RANGE",
                None => "n/a",
            };
            let val = f.value.map_or("-".to_string(), |v| format!("{v:.3}"));
            let _ = writeln!(
                s,
                "  {:<32} {:>8}  [{} .. {}]  {verdict} ({} samples)",
                f.name, val, f.min, f.max, f.samples
            );
        }
        for (title, checks) in [
            ("after load", self.checks_after_load),
            ("after run", self.checks_after_run),
        ] {
            if checks.is_empty() {
                continue;
            }
            let _ = writeln!(s, "\nConsistency checks {title} (clause 3.3.2):");
            s.push_str(&format_checks(checks));
        }
        s
    }
}

pub fn format_checks(checks: &[CheckResult]) -> String {
    use crate::check::Verdict;
    let mut s = String::new();
    for c in checks {
        let (v, d) = match &c.verdict {
            Verdict::Passed => ("PASS", String::new()),
            Verdict::Failed(d) => ("FAIL", format!(": {d}")),
            Verdict::NotApplicable(d) => ("N/A ", format!(": {d}")),
        };
        let _ = writeln!(s, "  {v}  {:>2}. {}{d}", c.id, c.name);
    }
    s
}
