//! # tpcc-workload
//!
//! TPC-C (standard specification, revision 5.11) over the engine's embedding API.
//!
//! The schema, the initial population, the five transaction profiles and the twelve
//! consistency conditions live here, apart from the engine and from the harness, so
//! that the compute server (`compute-server`) can run them as stored procedures (one
//! gRPC call per whole transaction, like the stored procedures of a TPC-C result) and
//! the `tpcc` harness can run the very same code in-process against an embedded
//! cluster. The harness (terminals, the mix, metrics, report) is the `tpcc` crate.
//!
//! * [`random`] — NURand (clause 2.1.6) with per-run C constants, last names, strings.
//! * [`schema`] — tables, secondary indexes, order-preserving keys, row codecs.
//! * [`load`] — the initial population (clause 4.3.3.1), in parallel batches.
//! * [`transactions`] — New-Order, Payment, Order-Status, Delivery, Stock-Level
//!   (clauses 2.4-2.8): input generation and transaction profiles;
//!   [`transactions::run_once`] runs one attempt end to end.
//! * [`check`] — consistency conditions 1-12 (clause 3.3.2).
//! * [`wire`] — the procedures' wire forms (`proto/tpcc.proto`), both ways;
//!   [`client`] — [`client::TpccClient`], the procedures called over a
//!   [`common::compute::RemoteNode`] connection.

pub mod check;
pub mod client;
pub mod load;
pub mod random;
pub mod schema;
pub mod transactions;
pub mod wire;
