//! Protobuf definitions of the services' client APIs, generated at build time from
//! `common/proto/*.proto` (feature `grpc`; see `build.rs`).
//!
//! * [`compute`] — the compute node's gRPC API (`proto/compute.proto`): health, status,
//!   tables, and transactions as server-side sessions. The error mapping (gRPC code plus
//!   the `dsb-error-kind` trailer) is documented in the `.proto` file and implemented by
//!   `compute_node::grpc`.

/// `dsb.compute.v1`: messages, `compute_client::ComputeClient` and
/// `compute_server::{Compute, ComputeServer}`.
pub mod compute {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("dsb.compute.v1");

    /// Metadata key of a failed call's error kind (see the table in `compute.proto`).
    pub const ERROR_KIND_KEY: &str = "dsb-error-kind";
}
