//! The compute node's client side (feature `grpc`), beside the storage-node and GTM
//! clients: what a program needs to call a compute node's gRPC API without linking the
//! engine.
//!
//! * [`client`] — [`RemoteNode`]: a blocking client shaped like the embedding API.
//! * [`error`] — [`ErrorKind`]: the wire form of the engine's errors (gRPC code plus the
//!   `dsb-error-kind` trailer) and the trailer naming an unknown outcome's transaction.
//! * [`auth`] — client tokens: the tokens file format, fresh tokens, the interceptor.
//! * [`tls`] — [`ClientTls`]: the CA, server name and client certificate to connect with.

pub mod auth;
pub mod client;
pub mod error;
pub mod tls;

pub use client::{ConnectOptions, RemoteError, RemoteNode, RemoteTxn};
pub use error::ErrorKind;
pub use tls::ClientTls;
