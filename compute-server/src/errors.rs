//! Errors: the engine's errors as gRPC statuses, and the checks of a request's input.
//!
//! [`ErrorKind`] is the wire form of [`TxnError`]: a gRPC code a generic client can act
//! on plus the exact kind in the `dsb-error-kind` trailer, so
//! [`common::compute::RemoteNode`] gives back an error with the same
//! `is_retryable()` and `is_unknown()` answers as the embedding API (table in
//! `compute.proto`). A commit whose outcome is unknown ([`TxnError::Unknown`]) is
//! `UNKNOWN` with kind `outcome_unknown` and the transaction's id in the
//! [`TXN_ID_KEY`] trailer (the TPC-C procedures' callers never saw the id); the
//! `ResolveOutcome` RPC resolves it on any node.

// tonic's handlers answer `Status` by value; the helpers here do the same.
#![allow(clippy::result_large_err)]

use anyhow::Error as AnyError;
use common::compute::error::TXN_ID_KEY;
use common::compute::ErrorKind;
use common::proto::compute as pb;
use compute_node::btree::MAX_KEY_LEN;
use compute_node::txn::TxnError;
use std::ops::Bound;
use tonic::metadata::MetadataValue;
use tonic::Status;

/// Longest table name accepted (the catalog's limit).
const MAX_TABLE_NAME: usize = 200;

/// The wire kind of an engine error.
pub fn kind_of(e: &TxnError) -> ErrorKind {
    match e {
        TxnError::Conflict(_) => ErrorKind::Conflict,
        TxnError::Fenced(_) => ErrorKind::Fenced,
        TxnError::NoSuchTable(_) => ErrorKind::NoSuchTable,
        TxnError::TableExists(_) => ErrorKind::TableExists,
        TxnError::BadRequest(_) => ErrorKind::BadRequest,
        TxnError::Finished => ErrorKind::Finished,
        TxnError::Storage(_) => ErrorKind::Storage,
        TxnError::Gtm(_) => ErrorKind::Gtm,
        TxnError::Corrupt(_) => ErrorKind::Corrupt,
        TxnError::Unknown { .. } => ErrorKind::OutcomeUnknown,
    }
}

/// The status answering an engine error (with the [`TXN_ID_KEY`] trailer for an
/// unknown outcome).
pub fn status_of(e: &TxnError) -> Status {
    let mut s = kind_of(e).status(e.to_string());
    if let Some(txn) = e.unknown_txn() {
        if let Ok(v) = MetadataValue::try_from(txn.0.to_string()) {
            s.metadata_mut().insert(TXN_ID_KEY, v);
        }
    }
    s
}

pub(crate) fn bad_request(message: impl Into<String>) -> Status {
    ErrorKind::BadRequest.status(message)
}

/// The status for a failed loader or check run: the engine error's own kind when
/// there is one.
pub(crate) fn anyhow_status(what: &str, e: &AnyError) -> Status {
    match e.chain().find_map(|c| c.downcast_ref::<TxnError>()) {
        Some(t) => kind_of(t).status(format!("{what}: {e:#}")),
        None => ErrorKind::Internal.status(format!("{what}: {e:#}")),
    }
}

pub(crate) fn check_table_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(bad_request("table name is empty"));
    }
    if name.len() > MAX_TABLE_NAME {
        return Err(bad_request(format!(
            "table name of {} bytes exceeds {MAX_TABLE_NAME}",
            name.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.len() > MAX_KEY_LEN {
        return Err(bad_request(format!(
            "key of {} bytes exceeds the {MAX_KEY_LEN}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn bound(b: Option<pb::KeyBound>) -> Result<Bound<Vec<u8>>, Status> {
    Ok(match b {
        None => Bound::Unbounded,
        Some(b) => {
            check_key(&b.key)?;
            if b.inclusive {
                Bound::Included(b.key)
            } else {
                Bound::Excluded(b.key)
            }
        }
    })
}

pub(crate) fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::compute::error::txn_of_status;
    use common::ids::TxnId;
    use tonic::Code;

    #[test]
    fn every_engine_error_keeps_its_kind_and_retryability() {
        let errors = [
            TxnError::Conflict("c".into()),
            TxnError::Fenced("f".into()),
            TxnError::NoSuchTable("t".into()),
            TxnError::TableExists("t".into()),
            TxnError::BadRequest("b".into()),
            TxnError::Finished,
            TxnError::Storage("s".into()),
            TxnError::Gtm("g".into()),
            TxnError::Corrupt("x".into()),
            TxnError::Unknown {
                txn: TxnId(42),
                message: "GTM timed out".into(),
            },
        ];
        for e in &errors {
            let s = status_of(e);
            let k = ErrorKind::of_status(&s);
            assert_eq!(k, kind_of(e), "{e}");
            assert_eq!(k.is_retryable(), e.is_retryable(), "{e}");
            assert_eq!(k.is_unknown(), e.is_unknown(), "{e}");
            assert_eq!(s.code(), k.code());
            assert_eq!(txn_of_status(&s), e.unknown_txn(), "{e}");
        }
        // An unknown outcome is neither retryable nor one of the "unavailable" kinds,
        // and names its transaction.
        let unknown = status_of(&errors[9]);
        assert_eq!(unknown.code(), Code::Unknown);
        assert_eq!(ErrorKind::of_status(&unknown), ErrorKind::OutcomeUnknown);
        assert!(!ErrorKind::OutcomeUnknown.is_retryable());
        assert_eq!(txn_of_status(&unknown), Some(TxnId(42)));
        assert!(
            unknown.message().contains("transaction 42"),
            "{}",
            unknown.message()
        );
        assert_eq!(status_of(&errors[0]).code(), Code::Aborted);
        assert_eq!(status_of(&errors[1]).code(), Code::FailedPrecondition);
        assert_eq!(status_of(&errors[2]).code(), Code::NotFound);
        assert_eq!(status_of(&errors[3]).code(), Code::AlreadyExists);
        assert_eq!(status_of(&errors[4]).code(), Code::InvalidArgument);
        assert_eq!(status_of(&errors[6]).code(), Code::Unavailable);
    }

    #[test]
    fn statuses_without_a_kind_are_guessed_from_the_code() {
        assert_eq!(
            ErrorKind::of_status(&Status::unavailable("connection refused")),
            ErrorKind::Transport
        );
        assert!(ErrorKind::of_status(&Status::aborted("x")).is_retryable());
        assert_eq!(
            ErrorKind::of_status(&Status::internal("x")),
            ErrorKind::Internal
        );
    }
}
