//! # compute-server
//!
//! The `compute-node` service: the engine (`compute-node`, the embedding API) behind
//! gRPC, with its configuration and its binary. Clients use
//! [`common::compute::RemoteNode`]; this crate is the server side.
//!
//! * [`service`] — [`service::ComputeService`]: the client API's handlers, and
//!   [`service::serve`], which serves them and the TPC-C procedures on one port.
//! * [`sessions`] — transactions that live on the server between calls: random handles
//!   bound to their client, limits, the idle reaper, shutdown.
//! * [`errors`] — engine errors as gRPC statuses (the wire kinds of
//!   [`common::compute::ErrorKind`]), input checks.
//! * [`tpcc`] — the TPC-C stored procedures (`proto/tpcc.proto`), running the
//!   `tpcc-workload` crate's transactions server-side.
//! * [`status`] — the ClusterStatus snapshot and its Prometheus rendering.
//! * [`auth`] — who may call: client tokens and mutual-TLS client certificates.
//! * [`tls`] — the server's TLS settings, and a local CA for test clusters.
//! * [`config`] — the service's TOML configuration, checked once.
//!
//! Design: `docs/design.md`; the protocols underneath: `docs/protocols.md`.

pub mod auth;
pub mod config;
pub mod errors;
pub mod service;
pub mod sessions;
pub mod status;
pub mod tls;
pub mod tpcc;
