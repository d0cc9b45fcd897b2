//! The client: `RdmaClient::connect` (device, side channel, handshake, queue-pair
//! exchange) and the batched one-sided path (`post`: plan, stage, one doorbell per
//! chain, one wait); RPC goes over the side channel's `ClientCore`.
//!
//! Keeps one batch in flight per connection (the send path is behind a mutex), sends a
//! batch with a CAS or FETCH_ADD over the side channel unless the server's device
//! reports `IBV_ATOMIC_GLOB` (NIC atomics atomic against its CPU), and closes the
//! connection after any failed post, completion or timeout.

use super::batch::{build_chain, plan_batch, PlannedWr, WrKind};
use super::device::Device;
use super::mr::Bounce;
use super::msg::{decode_accept, encode_connect, remote_regions, RemoteRegion};
use super::qp::{random_psn, QueuePair};
use super::{HANDSHAKE_TIMEOUT, MAX_RD_ATOMIC, MIN_BOUNCE, SEND_QUEUE_DEPTH};
use crate::fabric::conn::{self, ClientCore, ConnStats};
use crate::fabric::wire::{self, MAX_FRAME};
use crate::fabric::{ClientOptions, FabricError, Op, OpOutput, OpResult, RegionDesc};
use parking_lot::Mutex;
use rdma_sys as ib;
use std::io::Write;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client's queue pair and its staging memory. Fields drop in order: the queue pair
/// (so no work request is left) before the bounce buffer it pointed into.
struct SendPath {
    qp: QueuePair,
    bounce: Option<Bounce>,
    next_wr_id: u64,
}

impl SendPath {
    fn bounce(&mut self, needed: usize) -> Result<&mut Bounce, FabricError> {
        if !matches!(&self.bounce, Some(b) if b.len() >= needed) {
            // Nothing is posted while the path is locked, so the old buffer is free.
            self.bounce = None;
            let len = needed.next_power_of_two().max(MIN_BOUNCE);
            self.bounce = Some(Bounce::new(&self.qp.device, len)?);
        }
        Ok(self.bounce.as_mut().expect("just ensured"))
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    ops: AtomicU64,
    doorbells: AtomicU64,
    bytes: AtomicU64,
}

pub(crate) struct RdmaClient {
    /// The side channel: RPC, and batches the NIC must not run (see "Atomics" in the
    /// `rdma` module doc).
    core: Arc<ClientCore>,
    remotes: Vec<RemoteRegion>,
    path: Mutex<SendPath>,
    nic_atomics: bool,
    max_msg_len: u64,
    timeout: Duration,
    closed: AtomicBool,
    counters: Counters,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<RdmaClient>();
};

fn connect_tcp(addr: &str) -> Result<TcpStream, FabricError> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, HANDSHAKE_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => FabricError::Protocol(format!("{addr}: no address to connect to")),
    })
}

impl RdmaClient {
    pub(crate) fn connect(addr: &str, opts: &ClientOptions) -> Result<RdmaClient, FabricError> {
        // The device first: without one, fail before touching the network.
        let device = Device::open()?;
        let mut stream = connect_tcp(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let (conn_id, regions) = conn::client_handshake(&mut stream, opts)?;

        let qp = QueuePair::create(&device, SEND_QUEUE_DEPTH, true)?;
        qp.to_init(false)?;
        let local = qp.info(random_psn(), device.initiator_depth);
        stream.write_all(&encode_connect(&local))?;
        stream.flush()?;
        let body = wire::read_frame(&mut stream, MAX_FRAME)?.ok_or(FabricError::Disconnected)?;
        let accept = decode_accept(&body)?;
        let remotes = remote_regions(&regions, &accept.regions)?;
        // The client is never a responder, but some devices refuse a zero depth.
        qp.to_rtr(&accept.qp, device.responder_depth.clamp(1, MAX_RD_ATOMIC))?;
        let initiator_depth = local.rd_atomic.min(accept.qp.rd_atomic);
        if initiator_depth == 0 {
            return Err(FabricError::Unsupported(format!(
                "RDMA READ/atomic depth negotiated to 0 (device {}: {}, server: {})",
                device.name, local.rd_atomic, accept.qp.rd_atomic
            )));
        }
        qp.to_rts(local.psn, initiator_depth)?;
        stream.set_read_timeout(None)?;

        let nic_atomics = u32::from(accept.atomic_cap) == ib::ibv_atomic_cap::IBV_ATOMIC_GLOB
            && u32::from(device.atomic_cap) != ib::ibv_atomic_cap::IBV_ATOMIC_NONE;
        tracing::debug!(
            conn_id,
            device = %device.name,
            qpn = local.qpn,
            remote_qpn = accept.qp.qpn,
            nic_atomics,
            "rdma connection established"
        );
        let shut = stream.try_clone()?;
        let core = Arc::new(ClientCore::new(
            Box::new(stream.try_clone()?),
            opts,
            regions,
            Box::new(move || {
                let _ = shut.shutdown(Shutdown::Both);
            }),
        ));
        core.start(stream, "fabric-rdma")?;
        Ok(RdmaClient {
            core,
            remotes,
            max_msg_len: device.max_msg_len,
            path: Mutex::new(SendPath {
                qp,
                bounce: None,
                next_wr_id: 1,
            }),
            nic_atomics,
            timeout: opts.timeout,
            closed: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    pub(crate) fn regions(&self) -> &[RegionDesc] {
        self.core.regions()
    }

    /// Runs a batch as one chained work-request list per send-queue load (see the
    /// `rdma` module doc, "One-sided batches").
    pub(crate) fn post(&self, ops: &[Op]) -> Result<Vec<OpResult>, FabricError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(FabricError::Disconnected);
        }
        conn::check_batch(ops)?;
        if !self.nic_atomics
            && ops
                .iter()
                .any(|op| matches!(op, Op::Cas { .. } | Op::FetchAdd { .. }))
        {
            return self.core.post_remote(ops);
        }
        let plan = plan_batch(ops, &self.remotes);
        if let Some(w) = plan
            .wrs
            .iter()
            .find(|w| u64::from(w.len) > self.max_msg_len)
        {
            return Err(FabricError::TooLarge(format!(
                "op of {} bytes exceeds the port's largest message ({} bytes)",
                w.len, self.max_msg_len
            )));
        }
        let mut path = self.path.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(FabricError::Disconnected);
        }
        let mut results = plan.results;
        if !plan.wrs.is_empty() {
            // Before anything is posted, a failure here leaves the connection usable.
            path.bounce(plan.bounce_len)?;
            if let Err(e) = self.run_plan(&mut path, ops, &plan.wrs) {
                return Err(self.fail(&path, e));
            }
            let bounce = path
                .bounce
                .as_ref()
                .expect("run_plan ensured the bounce buffer");
            for w in &plan.wrs {
                let word =
                    || u64::from_ne_bytes(bounce.get(w.local, 8).try_into().expect("8 bytes"));
                results[w.op] = Some(Ok(match w.kind {
                    WrKind::Read => OpOutput::Read(bounce.get(w.local, w.len as usize).to_vec()),
                    WrKind::Write => OpOutput::Written,
                    WrKind::Cas { .. } => OpOutput::Cas { previous: word() },
                    WrKind::FetchAdd { .. } => OpOutput::FetchAdd { previous: word() },
                }));
            }
        }
        drop(path);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .ops
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        Ok(results
            .into_iter()
            .map(|r| r.expect("every op is settled or posted"))
            .collect())
    }

    fn run_plan(
        &self,
        path: &mut SendPath,
        ops: &[Op],
        wrs: &[PlannedWr],
    ) -> Result<(), FabricError> {
        let bounce = path.bounce.as_mut().expect("post sized the bounce buffer");
        let mut written = 0u64;
        for w in wrs {
            if let Op::Write { data, .. } = &ops[w.op] {
                bounce.put(w.local, data);
                written += data.len() as u64;
            }
        }
        let lkey = bounce.lkey();
        let sges_of = |chain: &[PlannedWr], bounce: &Bounce| -> Vec<ib::ibv_sge> {
            chain
                .iter()
                .map(|w| ib::ibv_sge {
                    addr: bounce.addr(w.local),
                    length: w.len,
                    lkey,
                })
                .collect()
        };
        let deadline = Instant::now() + self.timeout;
        for chain in wrs.chunks(path.qp.depth) {
            let bounce = path.bounce.as_ref().expect("ensured above");
            let mut sges = sges_of(chain, bounce);
            let wr_id = path.next_wr_id;
            path.next_wr_id += 1;
            let mut list = build_chain(chain, &mut sges, wr_id);
            path.qp.post_send(&mut list)?;
            self.counters.doorbells.fetch_add(1, Ordering::Relaxed);
            path.qp
                .wait_for(wr_id, deadline, &self.closed, self.timeout)?;
        }
        self.counters.bytes.fetch_add(written, Ordering::Relaxed);
        Ok(())
    }

    /// A batch failed with work requests possibly outstanding: stop the queue pair and
    /// close the connection (`rdma` module doc, "One-sided batches").
    fn fail(&self, path: &SendPath, e: FabricError) -> FabricError {
        path.qp.to_error();
        self.close();
        tracing::warn!(error = %e, "rdma batch failed; connection closed");
        e
    }

    pub(crate) fn call(&self, request: &[u8]) -> Result<Vec<u8>, FabricError> {
        self.core.call(request)
    }

    pub(crate) fn stats(&self) -> ConnStats {
        let c = &self.counters;
        let mut s = self.core.stats();
        s.messages += c.doorbells.load(Ordering::Relaxed);
        s.onesided_batches += c.batches.load(Ordering::Relaxed);
        s.onesided_ops += c.ops.load(Ordering::Relaxed);
        s.bytes += c.bytes.load(Ordering::Relaxed);
        s
    }

    /// Stops new batches and closes the side channel; a waiting batch notices within
    /// [`WAIT_SLICE`]. Verbs resources are released when the client is dropped.
    ///
    /// [`WAIT_SLICE`]: super::WAIT_SLICE
    pub(crate) fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.core.close();
    }
}
