//! # compute-node
//!
//! The compute node of DESIGN.md §6: a library first (the embedding API), a binary
//! second.
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
//! * [`tpcc`] — TPC-C schema, loader, transactions and checks: the service's stored
//!   procedures and the `tpcc` harness's engine side.
//! * [`grpc`], [`grpc_client`], [`service_config`] — the `compute-node` service: the same
//!   operations over gRPC with server-side sessions, its blocking client, its config.

pub mod btree;
pub mod buffer_pool;
pub mod catalog;
pub mod coherence;
pub mod grpc;
pub mod grpc_auth;
pub mod grpc_client;
pub mod grpc_tpcc;
pub mod mvcc;
pub mod node;
pub mod pager;
pub mod service_config;
pub mod tls;
pub mod tpcc;
pub mod txn;
