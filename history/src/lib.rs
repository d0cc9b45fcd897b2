//! # history
//!
//! History-checked tests of the engine (the Jepsen way): workloads record every attempt
//! with its outcome and every value read ([`model`]); [`checker`] builds the
//! dependency graph of the committed transactions and reports the anomalies snapshot
//! isolation forbids.

pub mod checker;
pub mod model;
