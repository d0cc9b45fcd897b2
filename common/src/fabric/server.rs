//! The serving side: registered regions, the RPC service trait, and listeners.

use super::auth::ClusterKey;
use super::conn::{OutItem, Outbox};
use super::region::{Region, RegionTable};
use super::{Access, Endpoint, FabricError};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Who sent a batch.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Unique per connection for the lifetime of the server.
    pub conn_id: u64,
    pub addr: String,
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {} ({})", self.conn_id, self.addr)
    }
}

/// One RPC request of a batch, with the means to answer it (now or later, from any
/// thread).
pub struct Request {
    pub payload: Vec<u8>,
    pub replier: Replier,
}

/// Answers one request. Dropping it unanswered sends an error to the caller, so a
/// forgotten reply can never hang a client.
pub struct Replier {
    outbox: Option<Arc<Outbox>>,
    call_id: u64,
}

impl Replier {
    pub(crate) fn new(outbox: Arc<Outbox>, call_id: u64) -> Replier {
        Replier {
            outbox: Some(outbox),
            call_id,
        }
    }

    /// Sends the answer; an `Err` reaches the caller as [`FabricError::Remote`].
    pub fn reply(mut self, result: Result<Vec<u8>, String>) {
        if let Some(outbox) = self.outbox.take() {
            // A closed connection has nobody to answer; nothing else to do.
            let _ = outbox.push(OutItem::Reply(self.call_id, result));
        }
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if let Some(outbox) = self.outbox.take() {
            let _ = outbox.push(OutItem::Reply(
                self.call_id,
                Err("request dropped by the server without an answer".into()),
            ));
        }
    }
}

/// An RPC service. It receives whole message batches so it can amortise work (one
/// atomic add, one fsync) over all of a batch's requests, and it must not block for
/// long: a request that has to wait (for a lock, a log force) keeps its [`Replier`] and
/// is answered later from another thread.
pub trait RpcService: Send + Sync + 'static {
    fn handle_batch(&self, peer: &PeerInfo, batch: Vec<Request>);

    /// Called once when a peer's connection ends (for cleanup of per-peer state).
    fn disconnected(&self, _peer: &PeerInfo) {}
}

/// A service that only serves one-sided ops and refuses RPC.
pub struct NoRpc;

impl RpcService for NoRpc {
    fn handle_batch(&self, _peer: &PeerInfo, batch: Vec<Request>) {
        for r in batch {
            r.replier
                .reply(Err("this server offers no RPC service".into()));
        }
    }
}

/// Adapts a per-request function into a service (answers synchronously, in order).
pub struct FnService<F>(pub F);

impl<F> RpcService for FnService<F>
where
    F: Fn(&PeerInfo, &[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
{
    fn handle_batch(&self, peer: &PeerInfo, batch: Vec<Request>) {
        for r in batch {
            let out = (self.0)(peer, &r.payload);
            r.replier.reply(out);
        }
    }
}

pub(crate) struct ServerShared {
    pub(crate) key: ClusterKey,
    pub(crate) regions: RegionTable,
    pub(crate) next_conn: AtomicU64,
}

/// A fabric server: owns regions and serves them (and an RPC service) on endpoints.
#[derive(Clone)]
pub struct Server {
    pub(crate) shared: Arc<ServerShared>,
}

impl Server {
    pub fn new(key: ClusterKey) -> Server {
        Server {
            shared: Arc::new(ServerShared {
                key,
                regions: RegionTable::default(),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// Registers a zero-filled region of `len` bytes. Register regions before serving:
    /// clients learn the region list in the handshake.
    pub fn register(&self, len: u64, access: Access) -> Result<Arc<Region>, FabricError> {
        Ok(self.shared.regions.register(len, access)?)
    }

    pub fn regions(&self) -> Vec<Arc<Region>> {
        self.shared.regions.all()
    }

    /// Starts serving on `endpoint` (tcp port 0 picks a free port; see
    /// [`ServerHandle::endpoint`]).
    pub fn serve(
        &self,
        endpoint: &Endpoint,
        service: Arc<dyn RpcService>,
    ) -> Result<ServerHandle, FabricError> {
        match endpoint {
            Endpoint::Tcp(addr) => super::tcp::serve(self.shared.clone(), addr, service),
            Endpoint::Shm(path) => super::shm::serve(self.shared.clone(), path, service),
            #[cfg(feature = "rdma")]
            Endpoint::Rdma(addr) => super::rdma::serve(self.shared.clone(), addr, service),
            #[cfg(not(feature = "rdma"))]
            Endpoint::Rdma(_) => Err(FabricError::Unsupported(
                "this build has no RDMA support: rebuild with `--features rdma`".into(),
            )),
        }
    }
}

/// A running listener. Dropping it stops accepting and closes its connections.
pub struct ServerHandle {
    pub(crate) endpoint: Endpoint,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) stopper: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ServerHandle {
    /// The endpoint actually bound (with the real port for `tcp://...:0`).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(f) = self.stopper.take() {
            f();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
