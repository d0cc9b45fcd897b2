//! The server: `serve` opens the device, registers every region as an MR and listens
//! on the side channel; each connection is authenticated, gets its own queue pair and
//! the ACCEPT answer, and is then served like a tcp connection (RPC and fallback
//! one-sided batches on the side channel).
//!
//! Keeps two rules: nothing about a queue pair or a region key is sent before the
//! handshake authenticated the peer, and a region's MR is deregistered before the
//! region reference that keeps its memory mapped is dropped.

use super::device::Device;
use super::mr::{mr_access, MemoryRegion};
use super::msg::{decode_connect, encode_accept, Accept, QpInfo};
use super::qp::{random_psn, QueuePair};
use super::HANDSHAKE_TIMEOUT;
use crate::fabric::conn::{self, Outbox};
use crate::fabric::region::Region;
use crate::fabric::server::{PeerInfo, RpcService, ServerHandle, ServerShared};
use crate::fabric::wire::{self, Frame};
use crate::fabric::{Endpoint, FabricError, RegionDesc};
use crate::ids::RegionId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A region registered with the NIC. The MR is dropped (deregistered) before the region
/// reference that keeps its memory mapped.
struct ExposedRegion {
    mr: MemoryRegion,
    region: Arc<Region>,
}

/// What every connection of one rdma listener shares: the device and the region MRs.
struct RdmaServer {
    device: Arc<Device>,
    exposed: Mutex<HashMap<RegionId, ExposedRegion>>,
}

impl RdmaServer {
    /// The region's NIC address and key, registering it on first use (regions added
    /// after `serve` are registered by the first connection that is offered them).
    fn expose(&self, region: &Arc<Region>) -> Result<(RegionId, u64, u64, u32), FabricError> {
        let mut exposed = self.exposed.lock();
        let entry = match exposed.entry(region.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mem = region.mem();
                // SAFETY: the mapping lives as long as `region`, which the entry holds
                // beside the MR and drops after it.
                let mr = unsafe {
                    MemoryRegion::register(
                        &self.device,
                        mem.base(),
                        mem.len() as usize,
                        mr_access(region.access()),
                    )
                }?;
                v.insert(ExposedRegion {
                    mr,
                    region: region.clone(),
                })
            }
        };
        Ok((
            region.id(),
            entry.region.mem().base() as u64,
            region.len(),
            entry.mr.rkey(),
        ))
    }

    /// Creates this connection's queue pair towards `client` and the ACCEPT answer.
    fn accept(
        &self,
        regions: &[Arc<Region>],
        client: &QpInfo,
    ) -> Result<(QueuePair, Accept), FabricError> {
        let keys = regions
            .iter()
            .map(|r| self.expose(r))
            .collect::<Result<Vec<_>, _>>()?;
        // The server never posts: a minimal send queue and no completion channel.
        let qp = QueuePair::create(&self.device, 1, false)?;
        let psn = random_psn();
        let responder_depth = self.device.responder_depth.max(1);
        qp.to_init(true)?;
        qp.to_rtr(client, responder_depth)?;
        qp.to_rts(psn, self.device.initiator_depth.min(1))?;
        let accept = Accept {
            qp: qp.info(psn, responder_depth),
            atomic_cap: self.device.atomic_cap,
            regions: keys,
        };
        Ok((qp, accept))
    }
}

pub(crate) fn serve(
    shared: Arc<ServerShared>,
    addr: &str,
    service: Arc<dyn RpcService>,
) -> Result<ServerHandle, FabricError> {
    // The device first: without one, fail before binding anything.
    let rdma = Arc::new(RdmaServer {
        device: Device::open()?,
        exposed: Mutex::default(),
    });
    // Register what exists now, so that a pinning failure shows at startup.
    for region in shared.regions.all() {
        rdma.expose(&region)?;
    }
    crate::fabric::tcp::listen(
        addr,
        "rdma",
        move |stream, live| serve_conn(stream, shared.clone(), rdma.clone(), service.clone(), live),
        |local| Endpoint::Rdma(local.to_string()),
    )
}

fn serve_conn(
    mut stream: TcpStream,
    shared: Arc<ServerShared>,
    rdma: Arc<RdmaServer>,
    service: Arc<dyn RpcService>,
    live: crate::fabric::tcp::LiveStreams,
) {
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let peer = PeerInfo {
        conn_id,
        addr: stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into()),
    };
    let regions = shared.regions.all();
    let setup = (|| -> Result<(bool, QueuePair, TcpStream), FabricError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let descs: Vec<RegionDesc> = regions.iter().map(|r| r.desc()).collect();
        let batching = conn::server_handshake(&mut stream, &shared.key, conn_id, &descs)?;
        let answer = wire::read_frame(&mut stream, 256)
            .map_err(FabricError::from)
            .and_then(|body| body.ok_or(FabricError::Disconnected))
            .and_then(|body| decode_connect(&body))
            .and_then(|client| rdma.accept(&regions, &client));
        let (qp, accept) = match answer {
            Ok(x) => x,
            Err(e) => {
                let _ = stream.write_all(
                    &Frame::Refused {
                        reason: format!("rdma setup failed: {e}"),
                    }
                    .to_bytes(),
                );
                return Err(e);
            }
        };
        stream.write_all(&encode_accept(&accept))?;
        stream.flush()?;
        stream.set_read_timeout(None)?;
        Ok((batching, qp, stream.try_clone()?))
    })();
    let (batching, qp, writer) = match setup {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "rdma connection setup failed");
            return;
        }
    };
    if let Ok(s) = stream.try_clone() {
        live.lock().insert(conn_id, s);
    }
    tracing::debug!(peer = %peer, batching, qpn = qp.qpn(), "rdma peer connected");
    let outbox = Arc::new(Outbox::new(Box::new(writer), batching, None));
    conn::serve_frames(&stream, outbox, &shared.regions, &service, &peer);
    let _ = stream.shutdown(Shutdown::Both);
    live.lock().remove(&conn_id);
    // The peer is gone: its queue pair goes before anything else of the connection.
    drop(qp);
    service.disconnected(&peer);
}
