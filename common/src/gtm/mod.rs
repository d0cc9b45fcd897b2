//! GTM protocol types and the client library compute nodes use (issue 4).
//!
//! Everything here crosses the process boundary between the GTM and compute nodes:
//!
//! * [`proto`] — the RPC request/response messages and their byte-exact codec (a total
//!   decoder; random bytes are a property test);
//! * [`layout`] — the byte layout of the transaction status table region that compute
//!   nodes read with batched one-sided READs, and how old entries are retired;
//! * [`client::GtmClient`] — connect, register (node id -> epoch + lease), heartbeats,
//!   begin, timestamps, commit, abort, status lookups (one-sided, waiting out
//!   `Committing`, asking the GTM for transactions whose slot was recycled), GC
//!   watermark, and the **local fence**: the client knows the latest
//!   moment its lease can still be valid and refuses to start a commit (or tell its
//!   caller that writes are allowed) after it;
//! * [`combiner`] — how concurrent `timestamp` calls of one client share one request per
//!   round trip, and how their callers wait for it without a wake-up each.
//!
//! ## Protocol in one paragraph
//!
//! A compute node registers and gets a fresh epoch (never reused, also across GTM
//! restarts) and a lease of `lease_ms`; it renews the lease with heartbeats. Lease time is
//! measured from the moment the client *sent* the heartbeat, so the client's deadline is
//! never later than the GTM's. `begin` returns a txn id and a snapshot timestamp;
//! `commit` returns a commit timestamp after the commit record is durable at the GTM, or
//! `Aborted` if an abort (explicit, or the GTM's on lease expiry) won the
//! compare-and-set on the transaction's state; `Fenced` if the node's epoch is no longer
//! live. A commit whose call fails at the fabric level has an unknown outcome. A status
//! lookup ([`GtmClient::txn_status_batch`]) settles it only if it shows the transaction
//! committed or aborted: `InProgress` is not final (the request may still arrive), so
//! decide it with [`GtmClient::abort`] — a compare-and-set any registered node may
//! send, fenced or not, that answers `AlreadyCommitted(cts)` if the commit won — as the
//! compute node's `Engine::resolve_outcome` does.
//!
//! Invariants (docs/design.md) this side helps keep: 4 — a status read returns what
//! the commit record says, and a `Committing` status is waited out, never guessed;
//! 5 — timestamps come only from the GTM; 6 — [`GtmClient::check_lease`] fences the node
//! before its lease can have run out at the GTM.

pub mod client;
pub mod combiner;
pub mod layout;
pub mod proto;

#[cfg(not(target_endian = "little"))]
compile_error!("the status-table region is read with native-endian words: little-endian only");

pub use client::{GtmClient, HeartbeatThread, Registration};
pub use combiner::CombinerStats;
pub use proto::SweepPoint;

use crate::fabric::FabricError;
use crate::ids::{RegionId, Timestamp};

/// The status table is the first region the GTM registers.
pub const STATUS_REGION: RegionId = RegionId(0);

/// What the status table says about one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    InProgress,
    /// Commit timestamp chosen, commit record not yet durable. Readers wait it out.
    Committing(Timestamp),
    Committed(Timestamp),
    Aborted,
    /// The GTM no longer knows the outcome.
    ///
    /// In the status-table region this is what an entry says when the transaction's slot
    /// was recycled (see [`layout`], "Retirement"); [`GtmClient::txn_status_batch`] and
    /// its `_nowait` variant then ask the GTM with one batched `Outcomes` RPC, which
    /// answers from its durable outcome index, so callers do not see `Retired` for that.
    /// They see it only for a transaction below the GTM's *freeze floor*: a freeze sweep
    /// stamped (or dropped) every row version such transactions wrote, and the GTM then
    /// forgot their outcomes (`gtm::freeze`). A reader never needs one, so a `Retired`
    /// answer to a reader means a version escaped the sweep: an error, never a guess.
    Retired,
    /// No such transaction was begun (yet).
    Unknown,
}

impl TxnStatus {
    pub fn is_resolved(self) -> bool {
        matches!(self, TxnStatus::Committed(_) | TxnStatus::Aborted)
    }
}

/// Errors of the GTM client, with kinds a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum GtmError {
    /// The transaction is aborted (an abort won, or the GTM aborted it on lease expiry).
    #[error("transaction aborted")]
    Aborted,
    /// This node's epoch is no longer live (its lease ran out, or it re-registered);
    /// it must stop writing and register again.
    #[error("fenced: {0}")]
    Fenced(String),
    /// An abort lost: the transaction committed (or its commit is being made durable)
    /// with this timestamp.
    #[error("transaction already committed at {0}")]
    AlreadyCommitted(Timestamp),
    #[error("not registered with the GTM: call register() first")]
    NotRegistered,
    #[error("unknown transaction: {0}")]
    UnknownTxn(String),
    /// Retryable: the GTM cannot serve this now (e.g. no free status-table slot).
    #[error("GTM busy, retry: {0}")]
    Busy(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("GTM internal error: {0}")]
    Internal(String),
    #[error("GTM protocol error: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// Connection-level failure; for a commit the outcome is unknown.
    #[error("fabric: {0}")]
    Fabric(#[from] FabricError),
}

impl GtmError {
    /// Whether retrying the same call (perhaps on a new connection) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            GtmError::Busy(_) | GtmError::Timeout(_) => true,
            GtmError::Fabric(e) => e.is_transient(),
            _ => false,
        }
    }
}
