//! The storage-node protocol (docs/design.md): everything a compute node or the GTM
//! shares with a storage node.
//!
//! * [`page`] — the 8 KiB page format (header with page id, version, LSN, crc32c).
//! * [`redo`] — redo records `(page, version before -> after, body)` as sent and logged.
//! * [`dir`] — the page directory entry (version word, lock word, frame word) and the
//!   seqlock protocol by which one-sided readers validate frames.
//! * [`msg`] — the RPC messages, hand-encoded, with total decoders.
//! * [`client`] — [`StorageClient`], the library compute nodes and the GTM use.
//!
//! ## Protocol in one page
//!
//! A compute node `(node, epoch)` connects with [`StorageClient::connect`] and learns the
//! directory and frame regions ([`msg::Layout`]). It reads pages one-sided
//! ([`StorageClient::read_pages`]: directory entry, frame, directory entry in one batch,
//! accepted only when the frame's header version equals the directory version) and
//! faults non-resident pages in over RPC. To change a page it takes the page's X lock
//! ([`StorageClient::lock_exclusive`]; the storage node queues waiters and never spins),
//! changes its copy (version + 1), appends redo to its own stream
//! ([`StorageClient::append_redo`]) and, before it releases the lock, forces the redo
//! ([`StorageClient::force_log`], group-committed) and writes the image back
//! ([`StorageClient::write_back`], refused unless the version is newer than the stored
//! one and its redo is durable). Locks are kept lazily: when another node wants the page
//! the storage node sends the holder a [`msg::Revocation`] through a long poll the
//! client keeps outstanding ([`StorageClient::on_revocation`]). When the GTM declares a
//! `(node, epoch)` dead it calls [`StorageClient::release_locks_of`]: from then on every
//! request of that identity fails with [`StorageError::Fenced`], and each page it held
//! is rebuilt from its last written-back image plus its durable redo before the lock is
//! freed.
//!
//! Invariants served here (docs/design.md): 1 — redo records carry `before -> after`
//! and [`redo::RedoRecord::apply`] refuses a record that does not start at the page's
//! version; 3 — `write_back` carries the version the storage node checks against durable
//! redo; 7 — a commit is acknowledged only after `force_log` returned.

pub mod client;
pub mod dir;
pub mod msg;
pub mod notice;
pub mod page;
pub mod redo;

pub use client::StorageClient;
pub use dir::{DirEntry, LockHolder};
pub use msg::{Layout, Revocation, RevocationKind};
pub use page::{Page, PAGE_SIZE};
pub use redo::{RedoBody, RedoRecord};

use crate::fabric::FabricError;
use crate::ids::{Epoch, NodeId, PageId, PageVersion};

/// Errors of the storage protocol, with kinds a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// This `(node, epoch)` was declared dead; it must stop writing (invariant 6).
    #[error("node {node} epoch {epoch} is fenced: its locks were released")]
    Fenced { node: NodeId, epoch: Epoch },
    /// The caller does not hold the page's X lock.
    #[error("page {0}: the caller does not hold its exclusive lock")]
    NotHolder(PageId),
    /// A written-back image is not newer than the stored one.
    #[error("page {page}: version {got} is not newer than the stored version {stored}")]
    Stale {
        page: PageId,
        got: PageVersion,
        stored: PageVersion,
    },
    /// A written-back image is ahead of the durable redo (WAL, invariant 3).
    #[error("page {page}: redo up to version {version} is not durable yet")]
    NotDurable { page: PageId, version: PageVersion },
    #[error("page {0} is not allocated on this storage node")]
    NotAllocated(PageId),
    /// A redo record does not continue the page's version chain (invariant 1).
    #[error("page {page}: redo expected to start at version {expected}, got {got}")]
    VersionConflict {
        page: PageId,
        expected: PageVersion,
        got: PageVersion,
    },
    #[error("the storage node's page-id range is exhausted")]
    Exhausted,
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("storage I/O error: {0}")]
    Io(String),
    /// Retryable: no frame could be freed right now.
    #[error("busy: {0}")]
    Busy(String),
    #[error("the storage node is shutting down")]
    ShuttingDown,
    /// After a restart of the storage node, the caller's locks could not be taken
    /// again (the grace period was over, or another node holds one): the caller must
    /// rejoin with a new epoch.
    #[error("lock reclaim refused: {0}")]
    ReclaimRefused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Fabric(#[from] FabricError),
}

impl StorageError {
    /// Whether the same request may succeed later (or on a fresh connection).
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Busy(_) | StorageError::ShuttingDown => true,
            StorageError::Fabric(f) => f.is_transient(),
            _ => false,
        }
    }
}
