//! # tpcc
//!
//! The TPC-C harness (TPC-C standard specification, revision 5.11) for the
//! disaggregated shared-buffer engine: it starts an embedded cluster, loads the nine
//! tables with the spec's cardinalities and data rules, drives the five transactions
//! from logical terminals, reports tpmC, latency percentiles, abort and retry rates and
//! the input-variability figures, and checks the twelve consistency conditions.
//!
//! * [`random`] — NURand (clause 2.1.6) with per-run C constants, last names, strings.
//! * [`schema`] — tables, secondary indexes, order-preserving keys, row codecs.
//! * [`load`] — the initial population (clause 4.3.3.1), in parallel batches.
//! * [`transactions`] — New-Order, Payment, Order-Status, Delivery, Stock-Level
//!   (clauses 2.4-2.8): input generation and transaction profiles.
//! * [`driver`] — terminals, the mix deck, retries, warm-up and measurement windows.
//! * [`events`] — `--events`: the run as JSON lines while it goes (seconds, faults).
//! * [`metrics`] — histograms and counters; [`report`] — table and JSON.
//! * [`check`] — consistency conditions 1-12 (clause 3.3.2).
//! * [`bench`] — one run end to end (what the binary calls).

pub mod bench;
pub mod driver;
pub mod events;
pub mod fault;
pub mod metrics;
pub mod pg;
pub mod plot;
pub mod remote;
pub mod report;
pub use cluster::spawn;
pub mod target;

pub use tpcc_workload::{check, load, random, schema, transactions};
