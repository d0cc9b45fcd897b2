//! What a history is: every transaction a workload attempted, the operations it ran
//! with the values its reads returned, and how it ended.
//!
//! Two data models, as in Jepsen's Elle:
//!
//! * **list-append**: each key holds a list; a transaction appends unique elements and
//!   reads whole lists. A read shows the order of every append before it, so the
//!   version order of a key is read straight off the longest read.
//! * **read-write registers** with read-modify-write: each key holds one value, every
//!   write is of a value unique in the history and (in the workloads here) follows a
//!   read of the same key in the same transaction, so a committed write names its
//!   predecessor and the versions of a key form a chain from the initial (absent) state.
//!   The bank workload is registers whose value also carries a balance: see
//!   [`bank_value`].

use serde::{Deserialize, Serialize};

/// A key of either model.
pub type Key = u64;
/// An element appended to a list, unique in the history.
pub type Elem = u64;

/// One operation of a transaction, with what it observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Append `elem` to the list at `key`.
    Append { key: Key, elem: Elem },
    /// Read the list at `key`: `None` if the read never returned (the transaction failed
    /// first), `Some(vec![])` for an absent or empty list.
    ReadList { key: Key, value: Option<Vec<Elem>> },
    /// Write `value` (unique in the history) to the register at `key`.
    Write { key: Key, value: u64 },
    /// Read the register at `key`: `None` if the read never returned, `Some(None)` if
    /// the key was absent (its initial state).
    ReadReg {
        key: Key,
        value: Option<Option<u64>>,
    },
}

/// How an attempt ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The commit was acknowledged.
    Committed,
    /// The engine said it did not commit (a conflict, a refusal, an explicit abort).
    Aborted,
    /// The client cannot tell (a timeout or lost connection during commit): it may have
    /// committed or not.
    Unknown,
}

/// One attempted transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// Client thread that ran it (its attempts are in real-time order).
    pub process: u32,
    /// Compute node it ran on.
    pub node: u32,
    pub ops: Vec<Op>,
    pub outcome: Outcome,
    /// Nanoseconds since the run started: `start` just before `begin` was called, `end`
    /// just after the outcome was known.
    pub start: u64,
    pub end: u64,
    /// The engine's transaction id, snapshot and commit timestamps, for diagnostics only
    /// (the checker never trusts them).
    pub txn_id: Option<u64>,
    pub snapshot: Option<u64>,
    pub commit_ts: Option<u64>,
}

/// A whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub txns: Vec<TxnRecord>,
}

/// Index of a transaction in [`History::txns`].
pub type TxnIdx = usize;

/// Bits of a bank register value that hold the balance; the bits above hold a tag that
/// makes the value unique.
pub const BALANCE_BITS: u32 = 32;

/// A bank register value: a unique `tag` and a balance (`0..2^32`).
pub fn bank_value(tag: u64, balance: u32) -> u64 {
    (tag << BALANCE_BITS) | u64::from(balance)
}

/// The balance of a bank register value.
pub fn bank_balance(value: u64) -> u32 {
    value as u32
}
