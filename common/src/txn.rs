//! Transaction vocabulary shared by the engine (`compute-node`) and its clients: the
//! isolation levels and a transaction's final outcome.

use crate::ids::Timestamp;

/// Isolation levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    #[default]
    Snapshot,
    ReadCommitted,
}

/// The final outcome of a transaction (what resolving an unknown commit answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    Committed(Timestamp),
    Aborted,
}
