//! Protobuf definitions of the services' client APIs, generated at build time from
//! `common/proto/*.proto` (feature `grpc`; see `build.rs`).
//!
//! * [`compute`] — the compute node's gRPC API (`proto/compute.proto`): health, status,
//!   tables, and transactions as server-side sessions. The error mapping (gRPC code plus
//!   the `dsb-error-kind` trailer) is documented in the `.proto` file and implemented by
//!   `compute-server`; its client is [`crate::compute`].
//! * [`tpcc`] — the TPC-C stored procedures (`proto/tpcc.proto`), a service of their own
//!   on the same port.

/// The generated modules, nested as their packages are (`tpcc.proto` imports
/// `compute.proto`, and the generated code names its types by relative paths).
mod dsb {
    pub mod compute {
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic, missing_docs)]
            tonic::include_proto!("dsb.compute.v1");
        }
    }
    pub mod tpcc {
        pub mod v1 {
            #![allow(clippy::all, clippy::pedantic, missing_docs)]
            tonic::include_proto!("dsb.tpcc.v1");
        }
    }
}

/// `dsb.compute.v1`: messages, `compute_client::ComputeClient` and
/// `compute_server::{Compute, ComputeServer}`.
pub mod compute {
    pub use super::dsb::compute::v1::*;

    /// Metadata key of a failed call's error kind (see the table in `compute.proto`).
    pub const ERROR_KIND_KEY: &str = "dsb-error-kind";
}

/// `dsb.tpcc.v1`: the TPC-C stored procedures, `tpcc_client::TpccClient` and
/// `tpcc_server::{Tpcc, TpccServer}`.
pub mod tpcc {
    pub use super::dsb::tpcc::v1::*;
}
