//! The wire form of the engine's errors: a gRPC code a generic client can act on, plus
//! the exact kind in the `dsb-error-kind` trailer (the table is in `compute.proto`). The
//! server maps each engine error to a kind; the client ([`super::client`]) maps a status
//! back, so a remote caller gets the same `is_retryable()` / `is_unknown()` answers as
//! the embedding API.

use crate::ids::TxnId;
use crate::proto::compute as pb;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key of the transaction an `outcome_unknown` status is about (decimal id).
pub const TXN_ID_KEY: &str = "dsb-txn-id";

/// What a failed call means to its caller; travels as the gRPC code plus the
/// `dsb-error-kind` trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Retryable: write-write conflict, wait-die victim, aborted by the GTM or for
    /// idleness. Abort and run the transaction again.
    Conflict,
    /// The node lost its lease and may not write.
    Fenced,
    /// The transaction already ended.
    Finished,
    NoSuchTable,
    TableExists,
    /// Bad input: unknown txn id, empty table name, oversized key, ...
    BadRequest,
    TooManySessions,
    Storage,
    Gtm,
    Corrupt,
    ShuttingDown,
    /// A bug on the server, or a status without a kind (not from this server).
    Internal,
    /// The call did not reach the engine: connection refused or lost, deadline, ...
    Transport,
    /// Missing or unknown client credentials (the call touched nothing).
    Unauthenticated,
    /// Not retryable: the commit may or may not have happened (the GTM's answer was
    /// lost). Resolve the transaction by its id (`ResolveOutcome`) before running it
    /// again; from `ResolveOutcome` itself: no decision could be reached yet, ask again.
    OutcomeUnknown,
}

impl ErrorKind {
    /// The same answer as the engine's `TxnError::is_unknown`.
    pub fn is_unknown(self) -> bool {
        self == ErrorKind::OutcomeUnknown
    }

    /// The same answer as the engine's `TxnError::is_retryable`.
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Conflict
    }

    pub fn code(self) -> Code {
        match self {
            ErrorKind::Conflict => Code::Aborted,
            ErrorKind::Fenced | ErrorKind::Finished => Code::FailedPrecondition,
            ErrorKind::NoSuchTable => Code::NotFound,
            ErrorKind::TableExists => Code::AlreadyExists,
            ErrorKind::BadRequest => Code::InvalidArgument,
            ErrorKind::TooManySessions => Code::ResourceExhausted,
            ErrorKind::Storage | ErrorKind::Gtm | ErrorKind::ShuttingDown => Code::Unavailable,
            ErrorKind::Transport => Code::Unavailable,
            ErrorKind::Corrupt => Code::DataLoss,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            // Not UNAVAILABLE: generic clients retry that, and a retried commit would
            // not tell them the outcome either.
            ErrorKind::OutcomeUnknown => Code::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Finished => "finished",
            ErrorKind::NoSuchTable => "no_such_table",
            ErrorKind::TableExists => "table_exists",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::TooManySessions => "too_many_sessions",
            ErrorKind::Storage => "storage",
            ErrorKind::Gtm => "gtm",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Internal => "internal",
            ErrorKind::Transport => "transport",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
        }
    }

    /// The kind a status carries (its `dsb-error-kind` trailer, else a guess from its
    /// code: `Transport` when the call may not have been delivered).
    pub fn of_status(s: &Status) -> ErrorKind {
        const ALL: [ErrorKind; 13] = [
            ErrorKind::Conflict,
            ErrorKind::Fenced,
            ErrorKind::Finished,
            ErrorKind::NoSuchTable,
            ErrorKind::TableExists,
            ErrorKind::BadRequest,
            ErrorKind::TooManySessions,
            ErrorKind::Storage,
            ErrorKind::Gtm,
            ErrorKind::Corrupt,
            ErrorKind::ShuttingDown,
            ErrorKind::Internal,
            ErrorKind::OutcomeUnknown,
        ];
        let named = s
            .metadata()
            .get(pb::ERROR_KIND_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ALL.into_iter().find(|k| k.as_str() == v));
        // No kind: not from this server's handlers (tonic itself, a proxy); guess from
        // the code.
        named.unwrap_or(match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                ErrorKind::Transport
            }
            Code::Aborted => ErrorKind::Conflict,
            Code::NotFound => ErrorKind::NoSuchTable,
            Code::AlreadyExists => ErrorKind::TableExists,
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::BadRequest,
            Code::ResourceExhausted => ErrorKind::TooManySessions,
            Code::DataLoss => ErrorKind::Corrupt,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            _ => ErrorKind::Internal,
        })
    }

    /// A status of this kind.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut s = Status::new(self.code(), message);
        s.metadata_mut().insert(
            pb::ERROR_KIND_KEY,
            MetadataValue::from_static(self.as_str()),
        );
        s
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transaction an `outcome_unknown` status names, if any.
pub fn txn_of_status(s: &Status) -> Option<TxnId> {
    s.metadata()
        .get(TXN_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .filter(|&id| id != 0)
        .map(TxnId)
}
