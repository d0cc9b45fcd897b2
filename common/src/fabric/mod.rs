//! The fabric: registered memory regions, batched one-sided ops and a message-batching
//! RPC, with one API over three backends (docs/design.md).
//!
//! ## Model
//!
//! A **server** ([`Server`]) registers memory regions ([`Server::register`]) with access
//! rights ([`Access`]) and serves them on an [`Endpoint`]. A **client** ([`Connection`])
//! authenticates with the cluster key, learns the region descriptors, and then
//!
//! * posts **batches** of one-sided ops ([`Op`]: READ, WRITE, 8-byte CAS, FETCH_ADD) with
//!   [`Connection::post`]: one frame (tcp), one local pass over the mapping (shm) or one
//!   doorbell (rdma) per batch, and one wait for the whole batch;
//! * makes RPC calls ([`Connection::call`]) that the connection batches adaptively: every
//!   request queued while the previous message was being written leaves in the next
//!   message, so an idle connection pays no delay and a busy one amortises its round
//!   trips. The server's [`RpcService`] receives the batch as a batch and may answer each
//!   request at once or later (a lock wait queue, a group commit).
//!
//! ## Backends
//!
//! * [`Transport::Shm`]: peers on one host. Regions live in memfds mapped by the client
//!   (read-only regions are handed out through a read-only descriptor and mapped
//!   `PROT_READ`), so one-sided ops are atomic copies in the client with no server CPU.
//!   RPC frames travel over a pair of shared-memory rings that spin briefly and then
//!   block on a futex ([`ring`]).
//! * [`Transport::Tcp`]: "soft-RDMA". A per-connection responder on the server serves
//!   one-sided batches straight from the regions, never entering the RPC service.
//! * [`Transport::Rdma`] (cargo feature `rdma`): ibverbs RC queue pairs; see `rdma`.
//!
//! ## Security
//!
//! Every connection opens with a versioned handshake in which both sides prove knowledge
//! of the cluster key by HMAC-SHA256 over fresh nonces ([`auth`]); frames are capped at
//! [`wire::MAX_FRAME`]; every op is bounds- and rights-checked on the serving side
//! (on shm, by the client library against the descriptor, and by the kernel for
//! read-only mappings); a malformed frame closes that one connection.

pub mod auth;
mod conn;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod region;
pub mod ring;
mod server;
mod shm;
mod tcp;
pub mod wire;

use crate::ids::RegionId;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use auth::ClusterKey;
pub use conn::ConnStats;
pub use region::Region;
pub use server::{FnService, NoRpc, PeerInfo, Replier, Request, RpcService, Server, ServerHandle};

/// Which backend carries a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Shm,
    Tcp,
    Rdma,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Shm => "shm",
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
        })
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shm" => Ok(Transport::Shm),
            "tcp" => Ok(Transport::Tcp),
            "rdma" => Ok(Transport::Rdma),
            other => Err(format!(
                "unknown transport {other:?} (expected shm, tcp or rdma)"
            )),
        }
    }
}

/// Where a server listens: `tcp://host:port`, `shm:///path/to/socket`, `rdma://host:port`.
/// A bare `host:port` means tcp.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Tcp(String),
    /// Path of the Unix socket used for the handshake and descriptor passing.
    Shm(PathBuf),
    /// Address of the TCP side channel used to exchange queue-pair data.
    Rdma(String),
}

impl Endpoint {
    pub fn transport(&self) -> Transport {
        match self {
            Endpoint::Tcp(_) => Transport::Tcp,
            Endpoint::Shm(_) => Transport::Shm,
            Endpoint::Rdma(_) => Transport::Rdma,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Shm(p) => write!(f, "shm://{}", p.display()),
            Endpoint::Rdma(a) => write!(f, "rdma://{a}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            Ok(Endpoint::Tcp(rest.to_string()))
        } else if let Some(rest) = s.strip_prefix("shm://") {
            if rest.is_empty() {
                return Err(format!("endpoint {s:?}: shm needs a socket path"));
            }
            Ok(Endpoint::Shm(PathBuf::from(rest)))
        } else if let Some(rest) = s.strip_prefix("rdma://") {
            Ok(Endpoint::Rdma(rest.to_string()))
        } else if s.contains("://") {
            Err(format!(
                "endpoint {s:?}: unknown scheme (expected tcp://, shm:// or rdma://)"
            ))
        } else if s.contains(':') {
            Ok(Endpoint::Tcp(s.to_string()))
        } else {
            Err(format!(
                "endpoint {s:?}: expected tcp://host:port, shm:///path or rdma://host:port"
            ))
        }
    }
}

/// Access rights of a registered region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Access(u8);

impl Access {
    pub const READ: Access = Access(1);
    pub const WRITE: Access = Access(2);
    pub const ATOMIC: Access = Access(4);
    pub const READ_ONLY: Access = Access::READ;
    pub const READ_WRITE: Access = Access(1 | 2);
    pub const ALL: Access = Access(1 | 2 | 4);

    pub fn bits(self) -> u8 {
        self.0
    }
    /// Unknown bits are rejected so a peer cannot smuggle rights we do not define.
    pub fn from_bits(bits: u8) -> Option<Access> {
        (bits & !7 == 0).then_some(Access(bits))
    }
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// What a client learns about a region in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionDesc {
    pub id: RegionId,
    pub len: u64,
    pub access: Access,
}

/// A one-sided operation on a remote region. Offsets are byte offsets in the region;
/// CAS and FETCH_ADD act on an 8-byte, 8-aligned little-endian word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Read {
        region: RegionId,
        offset: u64,
        len: u32,
    },
    Write {
        region: RegionId,
        offset: u64,
        data: Vec<u8>,
    },
    Cas {
        region: RegionId,
        offset: u64,
        expected: u64,
        new: u64,
    },
    FetchAdd {
        region: RegionId,
        offset: u64,
        add: u64,
    },
}

impl Op {
    pub fn region(&self) -> RegionId {
        match self {
            Op::Read { region, .. }
            | Op::Write { region, .. }
            | Op::Cas { region, .. }
            | Op::FetchAdd { region, .. } => *region,
        }
    }
}

/// The result of one successful op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutput {
    Read(Vec<u8>),
    Written,
    /// The word's value before the op; the swap happened iff it equals `expected`.
    Cas {
        previous: u64,
    },
    FetchAdd {
        previous: u64,
    },
}

impl OpOutput {
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            OpOutput::Read(b) => Some(b),
            _ => None,
        }
    }
    pub fn previous(&self) -> Option<u64> {
        match self {
            OpOutput::Cas { previous } | OpOutput::FetchAdd { previous } => Some(*previous),
            _ => None,
        }
    }
}

/// Why one op of a batch failed; the rest of the batch and the connection are unaffected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("no such region")]
    NoSuchRegion,
    #[error("access outside the region's bounds")]
    OutOfBounds,
    #[error("the region does not grant this access")]
    AccessDenied,
    #[error("atomic ops need an 8-byte aligned offset")]
    Misaligned,
}

pub type OpResult = Result<OpOutput, OpError>;

/// Errors of the fabric as a whole (connection level).
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("refused by peer: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Disconnected,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("remote handler failed: {0}")]
    Remote(String),
    #[error("request too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
}

impl FabricError {
    /// Whether a retry on a fresh connection may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FabricError::Io(_) | FabricError::Disconnected | FabricError::Timeout(_)
        )
    }
}

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub key: ClusterKey,
    /// Adaptive RPC message batching (on by default). Off sends every request in its own
    /// message and is kept as the baseline for benchmarks.
    pub batching: bool,
    /// How long a call or batch waits for its answer.
    pub timeout: Duration,
    /// RPC messages that may await the server's acknowledgement at once (default 1;
    /// `usize::MAX`: no limit). With batching, requests that arrive meanwhile queue up
    /// and leave as one message; without it, each message is one request.
    pub max_in_flight: usize,
}

impl ClientOptions {
    pub fn new(key: ClusterKey) -> Self {
        ClientOptions {
            key,
            batching: true,
            timeout: Duration::from_secs(30),
            max_in_flight: std::env::var("FABRIC_WINDOW")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        }
    }
    pub fn batching(mut self, on: bool) -> Self {
        self.batching = on;
        self
    }
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

/// A client's connection to one server, whatever the backend. Cheap to share between
/// threads (`Arc<Connection>`); every method may be called concurrently.
pub struct Connection {
    inner: Inner,
}

enum Inner {
    Tcp(tcp::TcpClient),
    Shm(shm::ShmClient),
    #[cfg(feature = "rdma")]
    Rdma(rdma::RdmaClient),
}

impl Connection {
    /// Connects and authenticates. Fails with [`FabricError::Refused`] on a wrong cluster
    /// key or protocol version, and with [`FabricError::Unsupported`] for `rdma://` on a
    /// build or machine without RDMA.
    pub fn connect(endpoint: &Endpoint, opts: &ClientOptions) -> Result<Connection, FabricError> {
        let inner = match endpoint {
            Endpoint::Tcp(addr) => Inner::Tcp(tcp::TcpClient::connect(addr, opts)?),
            Endpoint::Shm(path) => Inner::Shm(shm::ShmClient::connect(path, opts)?),
            #[cfg(feature = "rdma")]
            Endpoint::Rdma(addr) => Inner::Rdma(rdma::RdmaClient::connect(addr, opts)?),
            #[cfg(not(feature = "rdma"))]
            Endpoint::Rdma(_) => {
                return Err(FabricError::Unsupported(
                    "this build has no RDMA support: rebuild with `--features rdma`".into(),
                ))
            }
        };
        Ok(Connection { inner })
    }

    pub fn transport(&self) -> Transport {
        match &self.inner {
            Inner::Tcp(_) => Transport::Tcp,
            Inner::Shm(_) => Transport::Shm,
            #[cfg(feature = "rdma")]
            Inner::Rdma(_) => Transport::Rdma,
        }
    }

    /// The regions the server offered in the handshake.
    pub fn regions(&self) -> &[RegionDesc] {
        match &self.inner {
            Inner::Tcp(c) => c.core.regions(),
            Inner::Shm(c) => c.core.regions(),
            #[cfg(feature = "rdma")]
            Inner::Rdma(c) => c.regions(),
        }
    }

    pub fn region(&self, id: RegionId) -> Option<RegionDesc> {
        self.regions().iter().find(|r| r.id == id).copied()
    }

    /// Posts a batch of one-sided ops and waits once for all of them. Results come back
    /// in op order; a failing op does not fail the others.
    pub fn post(&self, ops: &[Op]) -> Result<Vec<OpResult>, FabricError> {
        match &self.inner {
            Inner::Tcp(c) => c.core.post_remote(ops),
            Inner::Shm(c) => Ok(c.post_local(ops)),
            #[cfg(feature = "rdma")]
            Inner::Rdma(c) => c.post(ops),
        }
    }

    /// One RPC call; concurrent calls share messages when batching is on.
    pub fn call(&self, request: &[u8]) -> Result<Vec<u8>, FabricError> {
        match &self.inner {
            Inner::Tcp(c) => c.core.call(request),
            Inner::Shm(c) => c.core.call(request),
            #[cfg(feature = "rdma")]
            Inner::Rdma(c) => c.call(request),
        }
    }

    /// Counters of what this connection sent (for metrics and benchmarks).
    pub fn stats(&self) -> ConnStats {
        match &self.inner {
            Inner::Tcp(c) => c.core.stats(),
            Inner::Shm(c) => c.stats(),
            #[cfg(feature = "rdma")]
            Inner::Rdma(c) => c.stats(),
        }
    }

    /// Whether the connection ended: closed here, or the peer closed it or died (its
    /// calls fail with `Disconnected`; a new connection is needed).
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Tcp(c) => c.is_closed(),
            Inner::Shm(c) => c.is_closed(),
            #[cfg(feature = "rdma")]
            Inner::Rdma(c) => c.is_closed(),
        }
    }

    /// Proves the peer alive at an instant after this call began, or fails with
    /// `Disconnected`. Over tcp and rdma a completed one-sided op already proves it (the
    /// peer's memory answered, through its live connection): call this after one. Over
    /// shm one-sided ops read this process's mappings of the peer's memory, which stay
    /// readable after the peer died; this asks the kernel whether the peer's socket is
    /// still open. So "a one-sided read, then this" means: the read saw the memory of
    /// the peer process this connection was made to, alive after the read began.
    pub fn confirm_peer_alive(&self) -> Result<(), FabricError> {
        let alive = match &self.inner {
            Inner::Tcp(c) => !c.is_closed(),
            Inner::Shm(c) => c.peer_alive_now(),
            #[cfg(feature = "rdma")]
            Inner::Rdma(c) => !c.is_closed(),
        };
        if alive {
            Ok(())
        } else {
            Err(FabricError::Disconnected)
        }
    }

    /// Closes the connection; pending and later calls fail with `Disconnected`.
    pub fn close(&self) {
        match &self.inner {
            Inner::Tcp(c) => c.close(),
            Inner::Shm(c) => c.close(),
            #[cfg(feature = "rdma")]
            Inner::Rdma(c) => c.close(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

/// Shared so that callers can hold a connection in many places.
pub type SharedConnection = Arc<Connection>;
