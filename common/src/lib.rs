//! # common
//!
//! Everything that crosses a process boundary in the cluster lives here:
//!
//! * [`ids`] — newtypes for the domain values (`PageId`, `NodeId`, `Epoch`, `TxnId`,
//!   `Timestamp`, `RegionId`, ...). No bare `u64` crosses a function boundary.
//! * [`fabric`] — the communication layer (docs/design.md): registered memory
//!   regions, batched one-sided ops (READ, WRITE, CAS, FETCH_ADD) and an RPC path with
//!   adaptive message batching, over three backends (`shm`, `tcp`, `rdma`).
//! * [`proto`] (feature `grpc`) — protobuf definitions of the client APIs (the compute
//!   node's gRPC service and the TPC-C stored procedures), generated from `proto/*.proto`.
//! * [`compute`] (feature `grpc`) — the compute node's client: a blocking gRPC client,
//!   the wire error kinds, client tokens and TLS; beside the storage-node and GTM
//!   clients ([`storage::client`], [`gtm::client`]).
//! * [`txn`] — isolation levels and outcomes, shared by the engine and its clients.
//! * [`durable`] — the file trait every durable file of the storage node and the GTM
//!   goes through: `StdFs` (the real filesystem) and `SimFs` (in memory, loses what was
//!   not synced at a simulated power cut; the power-loss tests).
//!
//! Invariants kept here: every frame that enters a process is length-capped and decoded
//! by a total decoder ([`fabric::wire`]) that returns an error on any malformed input;
//! every one-sided op is bounds- and rights-checked before it touches a region
//! ([`fabric::region::RegionTable::check`]); no connection carries data before the
//! cluster-key handshake ([`fabric::auth`]) succeeded on both sides.

#[cfg(feature = "grpc")]
pub mod compute;
pub mod config;
pub mod durable;
pub mod fabric;
pub mod gtm;
pub mod ids;
pub mod metrics;
#[cfg(feature = "grpc")]
pub mod proto;
pub mod service;
pub mod storage;
pub mod txn;
