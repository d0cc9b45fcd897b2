//! # compute-node
//!
//! The engine of a compute node: the embedding API, the buffer pool kept coherent with
//! the storage nodes, B-link trees of MVCC rows, and transactions. The gRPC service and
//! the `compute-node` binary are the `compute-server` crate; its client is
//! `common::compute`; TPC-C over this API is the `tpcc-workload` crate. The design is
//! `docs/design.md`, the protocols step by step `docs/protocols.md`.
//!
//! * [`node`] — [`node::ComputeNode`]: join a cluster, create tables, run transactions.
//! * [`txn`] — transactions: snapshot isolation or read committed over MVCC rows,
//!   commit = redo forced on every storage node touched, then the commit record at the
//!   GTM (invariants 2, 3, 4, 6).
//! * [`mvcc`] — row version chains, visibility, first-updater-wins, wait-die.
//! * [`catalog`] — table names -> B-link tree meta pages, bootstrapped in the superblock.
//! * [`btree`] — B-link trees over a [`pager::Pager`], with the order-preserving key
//!   codec [`btree::key`].
//! * [`coherence`] — this node's coherent view of the shared pages: coherence ticks,
//!   batched validation, lazy X page locks with revocation (invariants 1, 2).
//! * [`buffer_pool`] — frames, page table, pins, CLOCK, epoch-based reclamation.
//! * [`pager`] — the page interface trees are written against.

pub mod btree;
pub mod buffer_pool;
pub mod catalog;
pub mod coherence;
pub mod freeze;
pub mod mvcc;
pub mod node;
pub mod pager;
pub mod txn;
