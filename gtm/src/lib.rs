//! # gtm — the global transaction manager
//!
//! The GTM orders the transactions of a share-disk, multi-master cluster
//! (docs/design.md). It is a fabric [`Server`](common::fabric::Server) with one registered
//! region — the transaction status table, read by compute nodes with batched one-sided
//! READs — and an RPC service that handles whole message batches at once. Compute nodes
//! use [`common::gtm::GtmClient`]; the wire messages are in [`common::gtm::proto`], the
//! region layout in [`common::gtm::layout`].
//!
//! ## Protocol
//!
//! ```text
//! compute node                          GTM
//!   Register(node)              ->  epoch = last+1 (fsync), lease starts
//!   Heartbeat(node, epoch)      ->  lease = now + lease_ms, or Fenced
//!   Begin(node, epoch)          ->  txn id, snapshot ts       (status: InProgress)
//!   Timestamps(n)               ->  n fresh timestamps
//!   Commit(node, epoch, txn)    ->  CAS InProgress -> Committing(cts); record appended;
//!                                   one fsync per group; Committing -> Committed(cts);
//!                                   answer Committed(cts)      (or Aborted / Fenced)
//!   Abort(node, epoch, txn)     ->  CAS InProgress -> Aborted
//!   READ status entries         ->  (one-sided; no GTM CPU on shm)
//!   Outcomes(txns)              ->  statuses from the table and the outcome index, for
//!                                   txns whose slot was reused (Committed(cts)/Aborted)
//!   GcWatermark                 ->  oldest active snapshot
//! lease lapses                  ->  reaper: CAS InProgress -> Aborted for the epoch's txns,
//!                                   epoch persisted fenced and unreleased,
//!                                   LockReleaser::release_locks_of(node, epoch) until it
//!                                   succeeds, then persisted released (a restart sends
//!                                   every release still owed)
//! ```
//!
//! A message batch of N requests costs one timestamp `fetch_add`, one txn-id
//! `fetch_add`, one lock acquisition, and for its commits one share of a group fsync.
//!
//! ## Invariants kept here (docs/design.md)
//!
//! * **4** — a transaction is committed iff its commit record says so: commit and abort
//!   are one compare-and-set each on the same state ([`status_table`]); the region shows
//!   `Committing` from the moment the commit timestamp exists until the record is
//!   durable, so a reader never mistakes a committing transaction for an in-progress one.
//! * **5** — timestamps strictly increase, across restarts too: [`tso::Sequence`] keeps
//!   a durable high-water mark ahead of every value handed out, and restarts above it.
//! * **6** — after a lease expires the node writes nothing: the GTM refuses its begins,
//!   commits and heartbeats (`Fenced`), aborts its in-progress transactions and has its
//!   locks freed ([`lease`], the housekeeper in [`service`]) — a release is owed in the
//!   epoch store until every storage node acknowledged it, across restarts; the client
//!   fences itself earlier (`GtmClient::check_lease`).
//! * **7** — an acknowledged commit survives a GTM crash: the answer leaves only after
//!   the group fsync of its record ([`commit_log`], the group-commit thread in
//!   [`service`]); recovery rebuilds the status table and the outcome index of retired
//!   transactions ([`status_table::OutcomeIndex`]) from the log, so a commit stays
//!   readable however long ago its slot was reused.
//!
//! Tests named after the invariants: `tests/kill9.rs` (4, 5, 7 under `kill -9` of the
//! real binary, also for transactions whose slot was reused), `tests/lease_fencing.rs`
//! (6, with a SIGSTOPped client process), `tests/release_restart.rs` (6, releases owed
//! across restarts),
//! `tests/engine.rs` (batching, watermark, Committing waits), `tests/power_loss.rs` (5, 6,
//! 7 after power cuts at random file operations: the GTM over a `common::durable::SimFs`,
//! injected through [`GtmOptions::fs`]; every durable file goes through that trait).

pub mod commit_log;
pub mod config;
pub mod freeze;
pub mod lease;
pub mod metrics;
pub mod service;
pub mod status_table;
pub mod tso;
pub mod watermark;

pub use config::GtmConfig;
pub use lease::{LockReleaser, RecordingReleaser, StorageReleaser};
pub use service::{Gtm, GtmOptions, StartError};
