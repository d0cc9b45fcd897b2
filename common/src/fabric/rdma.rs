//! The `rdma` backend (cargo feature `rdma`): ibverbs RC queue pairs through `rdma-sys`.
//!
//! One-sided ops travel as real RDMA READ / WRITE / ATOMIC work requests that the
//! server's NIC executes against the region memory without any server CPU. RPC travels
//! over the TCP side channel that also carried the handshake, through the same
//! `ClientCore` / `conn::serve_frames` machinery as the `tcp` backend, so RPC keeps
//! its adaptive message batching and servers need no second RPC path. (SEND/RECV with a
//! posted receive ring would save the kernel on the RPC path, but would need its own
//! credit-based flow control; the side channel is simple and honest, and the one-sided
//! path is where RDMA pays.)
//!
//! ## Connection setup
//!
//! ```text
//! client                                         server (serve: device opened, every
//!   ibv_get_device_list / open / alloc_pd          region registered as an MR)
//!   TCP connect to the side channel ------------>
//!   HELLO / CHALLENGE / AUTH / WELCOME  (conn::client_handshake / conn::server_handshake,
//!                                        the cluster key is checked exactly as on tcp)
//!   create CQ + RC QP, RESET -> INIT
//!   RDMA_CONNECT(qp info)  --------------------->
//!                                                create CQ + RC QP, INIT -> RTR -> RTS
//!                          <---------------------  RDMA_ACCEPT(qp info, atomic cap,
//!                                                  per region: id, addr, len, rkey)
//!                                                  or REFUSED(reason)
//!   INIT -> RTR -> RTS
//!   RPC_REQ / RPC_RESP (and fallback ONESIDED_REQ / RESP) frames on the side channel
//! ```
//!
//! Nothing about a queue pair or a region key is disclosed before the handshake has
//! authenticated both sides.
//!
//! ## Side-channel messages
//!
//! Both are ordinary frames of [`super::wire`] (`body len u32`, then the body), with frame
//! kinds 30 and 31 reserved for this backend. All integers little-endian.
//!
//! | kind | name | body after the kind byte |
//! |---|---|---|
//! | 30 | RDMA_CONNECT | qp info (28 bytes) |
//! | 31 | RDMA_ACCEPT | qp info (28 bytes), atomic cap u8, region count u32, then per region: id u32, addr u64, len u64, rkey u32 |
//!
//! where *qp info* is `qpn u32, psn u32, lid u16, gid [16], mtu u8, rd_atomic u8`: the
//! queue pair number and initial packet sequence number (both < 2^24), the port LID,
//! the port GID at the configured index (all zero: no GRH), the active path MTU as an
//! `ibv_mtu` value (1..=5), and the RDMA READ/atomic depth (the client's initiator depth
//! in CONNECT, the server's responder depth in ACCEPT). The atomic cap is the server
//! device's `ibv_atomic_cap`. ACCEPT lists exactly the regions of WELCOME, in order, and
//! the client refuses it otherwise. A server that cannot set the queue pair up answers
//! with the usual REFUSED frame (kind 5).
//!
//! ## One-sided batches (`RdmaClient::post`)
//!
//! 1. Every op is checked against the region's descriptor before anything is posted, by
//!    the same rules and in the same order as [`super::region::execute`] (rights, then
//!    alignment, then bounds), so a batch gets the same per-op errors as on tcp and shm.
//!    The NIC enforces the rights once more: each region's MR grants only
//!    `REMOTE_READ` / `REMOTE_WRITE` / `REMOTE_ATOMIC` as its [`Access`] says, and the
//!    client's own queue pair grants no remote access at all.
//! 2. The ops that passed become one chained work-request list: RDMA READs into, and
//!    WRITE payloads and atomic results out of, one registered bounce buffer per
//!    connection. The list is posted with ONE `ibv_post_send` (one doorbell) and only
//!    its last work request is signalled; RC completes in order, so that one completion
//!    covers the batch. Batches longer than the send queue go as several such chains.
//! 3. Ops of a batch take effect in order, as on tcp. The one place where RC does not
//!    give that for free is a WRITE or atomic behind a READ: a READ that is retried
//!    after packet loss re-reads memory and could observe the later write. Such a work
//!    request carries `IBV_SEND_FENCE`; batches of reads (page validation) never do.
//! 4. The caller spins on the CQ for [`SPIN`], then arms the CQ and sleeps on its
//!    completion channel (this runs on 2-core boxes; a long spin would steal the core
//!    the server needs), waking at least every [`WAIT_SLICE`] to honour the timeout and
//!    `close`.
//!
//! One batch is in flight per connection (the send path is behind a mutex); callers
//! that need more parallelism open more connections. A failed completion, a failed post
//! or a timeout leaves the queue pair in an unknown state: it is moved to ERR, the
//! connection is closed and later calls fail with `Disconnected`.
//!
//! ## Atomics
//!
//! NIC atomics are atomic with respect to the server's CPU only if the server's device
//! reports `IBV_ATOMIC_GLOB`; with `IBV_ATOMIC_HCA` (most NICs) they are atomic only
//! against other NIC atomics, while the server's own code, and tcp and shm peers, use
//! CPU atomics on the same words. So unless the server reports `GLOB`, a batch that
//! contains a CAS or FETCH_ADD is sent whole over the side channel and executed by the
//! server's responder ([`super::region::RegionTable::serve_batch`]); order within the
//! batch is kept because the whole batch takes one path. NIC atomics use the standard
//! (host-order) reply format.
//!
//! ## Resources
//!
//! Every verbs object is owned by one RAII wrapper and released in `Drop`, children
//! before parents: queue pair, then CQ, then completion channel; memory regions before
//! the memory they cover; everything before the protection domain and the device
//! context, which every child keeps alive through an `Arc<Device>`. No device, no
//! resources: `connect` and `serve` look for a device before touching the network and
//! fail with [`FabricError::Unsupported`] when `ibv_get_device_list` finds none.
//!
//! ## Configuration
//!
//! Until the services' config structs grow an `[rdma]` section, the device is chosen by
//! environment: `DSB_RDMA_DEVICE` (device name, default: the first device),
//! `DSB_RDMA_PORT` (default 1) and `DSB_RDMA_GID_INDEX` (default 0; RoCE v2 usually
//! needs the index of the port's RoCE v2 GID, see `show_gids`).
//!
//! ## Building
//!
//! Needs `libibverbs-dev librdmacm-dev libclang-dev pkg-config`. `rdma-sys` 0.3 runs
//! bindgen 0.59, which fails with clang >= 16; Debian 12's clang 14 works. Where several
//! clang versions are installed, point bindgen at 14 with
//! `LIBCLANG_PATH=/usr/lib/llvm-14/lib`.

use super::conn::{self, ClientCore, ConnStats, Outbox};
use super::region::Region;
use super::server::{PeerInfo, RpcService, ServerHandle, ServerShared};
use super::wire::{self, Frame, MAX_FRAME};
use super::RegionDesc;
use super::{Access, ClientOptions, Endpoint, FabricError, Op, OpError, OpOutput, OpResult};
use crate::ids::RegionId;
use parking_lot::Mutex;
use rdma_sys as ib;
use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::CStr;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::raw::c_int;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a poster spins on the CQ before it sleeps on the completion channel.
pub const SPIN: Duration = Duration::from_micros(20);
/// Longest single sleep on the completion channel (bounds the reaction to `close`).
pub const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Send-queue depth asked for; a batch longer than the granted depth goes as several
/// chains.
const SEND_QUEUE_DEPTH: u32 = 1024;
/// Cap on the RDMA READ / atomic depth negotiated per queue pair.
const MAX_RD_ATOMIC: u8 = 16;
/// Smallest bounce buffer; it grows to the next power of two a batch needs.
const MIN_BOUNCE: usize = 64 << 10;

const KIND_RDMA_CONNECT: u8 = 30;
const KIND_RDMA_ACCEPT: u8 = 31;
const KIND_REFUSED: u8 = 5;

const ENV_DEVICE: &str = "DSB_RDMA_DEVICE";
const ENV_PORT: &str = "DSB_RDMA_PORT";
const ENV_GID_INDEX: &str = "DSB_RDMA_GID_INDEX";

/// What `connect` and `serve` say on a machine without an RDMA device.
pub const NO_DEVICE: &str = "no RDMA device found (ibv_get_device_list returned no devices); \
     use the tcp or shm transport (tcp://host:port, shm:///path/to/socket) instead";

// ---------------------------------------------------------------------------------------
// Side-channel messages (pure; see the module doc for the byte layout).

/// What one side tells the other about its queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QpInfo {
    qpn: u32,
    psn: u32,
    lid: u16,
    gid: [u8; 16],
    mtu: u8,
    rd_atomic: u8,
}

/// A server region as the client's NIC addresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RemoteRegion {
    desc: RegionDesc,
    addr: u64,
    rkey: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Accept {
    qp: QpInfo,
    atomic_cap: u8,
    regions: Vec<(RegionId, u64, u64, u32)>,
}

const QP_INFO_LEN: usize = 28;
const ACCEPT_REGION_LEN: usize = 24;

fn put_qp_info(out: &mut Vec<u8>, qp: &QpInfo) {
    out.extend_from_slice(&qp.qpn.to_le_bytes());
    out.extend_from_slice(&qp.psn.to_le_bytes());
    out.extend_from_slice(&qp.lid.to_le_bytes());
    out.extend_from_slice(&qp.gid);
    out.push(qp.mtu);
    out.push(qp.rd_atomic);
}

/// Prefixes `body` with its length, as every side-channel frame.
fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn encode_connect(qp: &QpInfo) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + QP_INFO_LEN);
    body.push(KIND_RDMA_CONNECT);
    put_qp_info(&mut body, qp);
    framed(body)
}

fn encode_accept(a: &Accept) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + QP_INFO_LEN + 5 + a.regions.len() * ACCEPT_REGION_LEN);
    body.push(KIND_RDMA_ACCEPT);
    put_qp_info(&mut body, &a.qp);
    body.push(a.atomic_cap);
    body.extend_from_slice(&(a.regions.len() as u32).to_le_bytes());
    for (id, addr, len, rkey) in &a.regions {
        body.extend_from_slice(&id.0.to_le_bytes());
        body.extend_from_slice(&addr.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(&rkey.to_le_bytes());
    }
    framed(body)
}

/// A total reader over a message body: every short read is a protocol error.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FabricError> {
        if self.0.len() < N {
            return Err(FabricError::Protocol(
                "rdma side-channel message truncated".into(),
            ));
        }
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        Ok(head.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8, FabricError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FabricError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FabricError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FabricError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn finish(self) -> Result<(), FabricError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FabricError::Protocol(format!(
                "{} trailing bytes after an rdma side-channel message",
                self.0.len()
            )))
        }
    }
    fn qp_info(&mut self) -> Result<QpInfo, FabricError> {
        let qp = QpInfo {
            qpn: self.u32()?,
            psn: self.u32()?,
            lid: self.u16()?,
            gid: self.array()?,
            mtu: self.u8()?,
            rd_atomic: self.u8()?,
        };
        if qp.qpn >= 1 << 24 || qp.psn >= 1 << 24 {
            return Err(FabricError::Protocol(
                "queue pair number or PSN over 24 bits".into(),
            ));
        }
        if !(1..=5).contains(&qp.mtu) {
            return Err(FabricError::Protocol(format!(
                "invalid path MTU code {}",
                qp.mtu
            )));
        }
        Ok(qp)
    }
}

fn decode_connect(body: &[u8]) -> Result<QpInfo, FabricError> {
    let mut r = Reader(body);
    match r.u8()? {
        KIND_RDMA_CONNECT => {}
        k => {
            return Err(FabricError::Protocol(format!(
                "expected RDMA_CONNECT, got frame kind {k}"
            )))
        }
    }
    let qp = r.qp_info()?;
    r.finish()?;
    Ok(qp)
}

fn decode_accept(body: &[u8]) -> Result<Accept, FabricError> {
    let mut r = Reader(body);
    match r.u8()? {
        KIND_RDMA_ACCEPT => {}
        KIND_REFUSED => {
            return Err(match Frame::decode(body) {
                Ok(Frame::Refused { reason }) => FabricError::Refused(reason),
                _ => FabricError::Protocol("malformed REFUSED frame".into()),
            })
        }
        k => {
            return Err(FabricError::Protocol(format!(
                "expected RDMA_ACCEPT, got frame kind {k}"
            )))
        }
    }
    let qp = r.qp_info()?;
    let atomic_cap = r.u8()?;
    let n = r.u32()? as usize;
    if n.saturating_mul(ACCEPT_REGION_LEN) > r.0.len() {
        return Err(FabricError::Protocol(
            "rdma side-channel message truncated".into(),
        ));
    }
    let mut regions = Vec::with_capacity(n);
    for _ in 0..n {
        regions.push((RegionId(r.u32()?), r.u64()?, r.u64()?, r.u32()?));
    }
    r.finish()?;
    Ok(Accept {
        qp,
        atomic_cap,
        regions,
    })
}

/// Pairs WELCOME's descriptors with ACCEPT's keys; anything but a one-to-one match in
/// order is a protocol error.
fn remote_regions(
    descs: &[RegionDesc],
    keys: &[(RegionId, u64, u64, u32)],
) -> Result<Vec<RemoteRegion>, FabricError> {
    if descs.len() != keys.len() {
        return Err(FabricError::Protocol(format!(
            "server offered {} regions but sent keys for {}",
            descs.len(),
            keys.len()
        )));
    }
    descs
        .iter()
        .zip(keys)
        .map(|(desc, &(id, addr, len, rkey))| {
            if id != desc.id || len != desc.len || addr.checked_add(len).is_none() {
                return Err(FabricError::Protocol(format!(
                    "rdma keys for region {id} ({len} bytes at {addr:#x}) do not match \
                     the offered region {} ({} bytes)",
                    desc.id, desc.len
                )));
            }
            Ok(RemoteRegion {
                desc: *desc,
                addr,
                rkey,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Batch planning (pure): client-side checks and the bounce-buffer layout.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WrKind {
    Read,
    Write,
    Cas { expected: u64, new: u64 },
    FetchAdd { add: u64 },
}

/// One work request to post: op `op` of the batch, `len` bytes at `remote_addr`, with
/// its local side at byte `local` of the bounce buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PlannedWr {
    op: usize,
    kind: WrKind,
    remote_addr: u64,
    rkey: u32,
    local: usize,
    len: u32,
}

struct Plan {
    /// `Some` for ops settled without the NIC (refused, or empty), `None` for posted ones.
    results: Vec<Option<OpResult>>,
    wrs: Vec<PlannedWr>,
    bounce_len: usize,
}

/// The checks of [`super::region::execute`], in its order, against a descriptor.
fn check_op(op: &Op, desc: &RegionDesc) -> Result<(), OpError> {
    let need = match op {
        Op::Read { .. } => Access::READ,
        Op::Write { .. } => Access::WRITE,
        Op::Cas { .. } | Op::FetchAdd { .. } => Access::ATOMIC,
    };
    if !desc.access.contains(need) {
        return Err(OpError::AccessDenied);
    }
    let (offset, len) = match op {
        Op::Read { offset, len, .. } => (*offset, u64::from(*len)),
        Op::Write { offset, data, .. } => (*offset, data.len() as u64),
        Op::Cas { offset, .. } | Op::FetchAdd { offset, .. } => {
            if offset % 8 != 0 {
                return Err(OpError::Misaligned);
            }
            (*offset, 8)
        }
    };
    match offset.checked_add(len) {
        Some(end) if end <= desc.len => Ok(()),
        _ => Err(OpError::OutOfBounds),
    }
}

fn plan_batch(ops: &[Op], remotes: &[RemoteRegion]) -> Plan {
    let mut results = Vec::with_capacity(ops.len());
    let mut wrs = Vec::with_capacity(ops.len());
    let mut bounce_len = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let Some(remote) = remotes.iter().find(|r| r.desc.id == op.region()) else {
            results.push(Some(Err(OpError::NoSuchRegion)));
            continue;
        };
        if let Err(e) = check_op(op, &remote.desc) {
            results.push(Some(Err(e)));
            continue;
        }
        let (offset, kind, len) = match op {
            Op::Read { len: 0, .. } => {
                results.push(Some(Ok(OpOutput::Read(Vec::new()))));
                continue;
            }
            Op::Write { data, .. } if data.is_empty() => {
                results.push(Some(Ok(OpOutput::Written)));
                continue;
            }
            Op::Read { offset, len, .. } => (*offset, WrKind::Read, *len),
            Op::Write { offset, data, .. } => (*offset, WrKind::Write, data.len() as u32),
            Op::Cas {
                offset,
                expected,
                new,
                ..
            } => (
                *offset,
                WrKind::Cas {
                    expected: *expected,
                    new: *new,
                },
                8,
            ),
            Op::FetchAdd { offset, add, .. } => (*offset, WrKind::FetchAdd { add: *add }, 8),
        };
        wrs.push(PlannedWr {
            op: i,
            kind,
            // No overflow: offset + len <= desc.len and addr + desc.len was checked.
            remote_addr: remote.addr + offset,
            rkey: remote.rkey,
            local: bounce_len,
            len,
        });
        // 8-aligned slots keep atomic results aligned, as the NIC requires.
        bounce_len += (len as usize).next_multiple_of(8);
        results.push(None);
    }
    Plan {
        results,
        wrs,
        bounce_len,
    }
}

/// Which work requests of one posted chain carry `IBV_SEND_FENCE`: a WRITE or atomic
/// behind a not yet fenced READ (see the module doc, "One-sided batches", step 3).
fn fence_flags(chain: &[PlannedWr]) -> Vec<bool> {
    let mut reads_unfenced = false;
    chain
        .iter()
        .map(|w| {
            if w.kind == WrKind::Read {
                reads_unfenced = true;
                false
            } else {
                std::mem::take(&mut reads_unfenced)
            }
        })
        .collect()
}

/// MR access flags for a region's rights. Remote writes and atomics need local write
/// too (a verbs rule).
fn mr_access(access: Access) -> c_int {
    let mut flags = 0;
    if access.contains(Access::READ) {
        flags |= ib::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
    }
    if access.contains(Access::WRITE) {
        flags |= ib::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0
            | ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    if access.contains(Access::ATOMIC) {
        flags |= ib::ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0
            | ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    flags as c_int
}

// ---------------------------------------------------------------------------------------
// Verbs resources.

/// A verbs call that returned an error code (`rc > 0`) or set errno (`rc <= 0`).
fn verbs_failed(what: &str, rc: c_int) -> FabricError {
    let e = if rc > 0 {
        io::Error::from_raw_os_error(rc)
    } else {
        io::Error::last_os_error()
    };
    FabricError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn env_u8(name: &str, default: u8) -> Result<u8, FabricError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().map_err(|_| {
            FabricError::Unsupported(format!("{name}={v:?}: expected a number from 0 to 255"))
        }),
    }
}

/// An opened device: its context, one protection domain for all of this owner's queue
/// pairs and memory regions, and what the QP exchange needs to know about the port.
struct Device {
    ctx: *mut ib::ibv_context,
    pd: *mut ib::ibv_pd,
    name: String,
    port: u8,
    gid_index: u8,
    lid: u16,
    gid: [u8; 16],
    active_mtu: u8,
    max_msg_len: u64,
    max_qp_wr: u32,
    responder_depth: u8,
    initiator_depth: u8,
    atomic_cap: u8,
}

// SAFETY: verbs contexts and protection domains are thread-safe handles (libibverbs
// serialises internally); the other fields are plain data.
unsafe impl Send for Device {}
// SAFETY: as above; `&Device` only reads plain fields or passes the handles to verbs.
unsafe impl Sync for Device {}

fn device_name(dev: *mut ib::ibv_device) -> String {
    // SAFETY: `dev` comes from a live device list; the name is a NUL-terminated string
    // owned by the device entry, copied here before the list is freed.
    let name = unsafe { ib::ibv_get_device_name(dev) };
    if name.is_null() {
        return "?".into();
    }
    // SAFETY: non-null, NUL-terminated, valid while the list is (see above).
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

impl Device {
    /// Opens the configured (or first) device; [`FabricError::Unsupported`] when there
    /// is none.
    fn open() -> Result<Arc<Device>, FabricError> {
        let wanted = std::env::var(ENV_DEVICE).ok().filter(|s| !s.is_empty());
        let port = env_u8(ENV_PORT, 1)?;
        let gid_index = env_u8(ENV_GID_INDEX, 0)?;

        let mut count: c_int = 0;
        // SAFETY: `count` is a valid out-pointer; the list is freed below, once.
        let list = unsafe { ib::ibv_get_device_list(&mut count) };
        let list_err = io::Error::last_os_error();
        if list.is_null() || count <= 0 {
            if !list.is_null() {
                // SAFETY: returned by ibv_get_device_list above, freed once.
                unsafe { ib::ibv_free_device_list(list) };
            }
            return Err(FabricError::Unsupported(if list.is_null() {
                format!("{NO_DEVICE} [libibverbs: {list_err}]")
            } else {
                NO_DEVICE.to_string()
            }));
        }
        // SAFETY: a non-null list holds `count` device pointers (and a NULL after them).
        let devices = unsafe { std::slice::from_raw_parts(list, count as usize) }.to_vec();
        let names: Vec<String> = devices.iter().map(|&d| device_name(d)).collect();
        let pick = match &wanted {
            Some(w) => names.iter().position(|n| n == w),
            None => Some(0),
        };
        let ctx = match pick {
            // SAFETY: the device pointer is valid until the list is freed, which happens
            // only after this call; an opened context outlives the list.
            Some(i) => unsafe { ib::ibv_open_device(devices[i]) },
            None => ptr::null_mut(),
        };
        let open_err = io::Error::last_os_error();
        // SAFETY: freed once; only the opened context is used from here on.
        unsafe { ib::ibv_free_device_list(list) };
        let Some(i) = pick else {
            return Err(FabricError::Unsupported(format!(
                "RDMA device {:?} (from {ENV_DEVICE}) not found; this machine has: {}",
                wanted.unwrap_or_default(),
                names.join(", ")
            )));
        };
        if ctx.is_null() {
            return Err(FabricError::Io(io::Error::new(
                open_err.kind(),
                format!("ibv_open_device({}): {open_err}", names[i]),
            )));
        }
        let mut dev = Device {
            ctx,
            pd: ptr::null_mut(),
            name: names[i].clone(),
            port,
            gid_index,
            lid: 0,
            gid: [0; 16],
            active_mtu: 0,
            max_msg_len: 0,
            max_qp_wr: 0,
            responder_depth: 0,
            initiator_depth: 0,
            atomic_cap: 0,
        };
        // From here on, dropping `dev` closes whatever was opened.
        dev.query()?;
        // SAFETY: `ctx` is an open context.
        dev.pd = unsafe { ib::ibv_alloc_pd(dev.ctx) };
        if dev.pd.is_null() {
            return Err(verbs_failed("ibv_alloc_pd", 0));
        }
        Ok(Arc::new(dev))
    }

    fn query(&mut self) -> Result<(), FabricError> {
        // SAFETY: ibv_device_attr is plain integers; all-zero is a valid value.
        let mut attr: ib::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: open context, valid out-pointer.
        let rc = unsafe { ib::ibv_query_device(self.ctx, &mut attr) };
        if rc != 0 {
            return Err(verbs_failed("ibv_query_device", rc));
        }
        if self.port == 0 || self.port > attr.phys_port_cnt {
            return Err(FabricError::Unsupported(format!(
                "RDMA device {} has ports 1..={}; {ENV_PORT}={} does not exist",
                self.name, attr.phys_port_cnt, self.port
            )));
        }
        // SAFETY: ibv_port_attr is plain integers; all-zero is a valid value.
        let mut port: ib::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: open context, existing port, valid out-pointer (the inline wrapper
        // passes its size to the provider).
        let rc = unsafe { ib::___ibv_query_port(self.ctx, self.port, &mut port) };
        if rc != 0 {
            return Err(verbs_failed("ibv_query_port", rc));
        }
        if port.state != ib::ibv_port_state::IBV_PORT_ACTIVE {
            return Err(FabricError::Unsupported(format!(
                "RDMA device {} port {} is not active (port state {})",
                self.name, self.port, port.state
            )));
        }
        // SAFETY: ibv_gid is 16 plain bytes.
        let mut gid: ib::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: open context, existing port, valid out-pointer.
        let rc = unsafe {
            ib::ibv_query_gid(self.ctx, self.port, c_int::from(self.gid_index), &mut gid)
        };
        if rc != 0 {
            return Err(verbs_failed(
                &format!(
                    "ibv_query_gid(port {}, {ENV_GID_INDEX}={})",
                    self.port, self.gid_index
                ),
                rc,
            ));
        }
        // SAFETY: every bit pattern of the union is a valid byte array.
        self.gid = unsafe { gid.raw };
        self.lid = port.lid;
        self.active_mtu = port.active_mtu as u8;
        self.max_msg_len = u64::from(port.max_msg_sz);
        self.max_qp_wr = attr.max_qp_wr.max(1) as u32;
        self.responder_depth = attr.max_qp_rd_atom.clamp(0, i32::from(MAX_RD_ATOMIC)) as u8;
        self.initiator_depth = attr.max_qp_init_rd_atom.clamp(0, i32::from(MAX_RD_ATOMIC)) as u8;
        self.atomic_cap = attr.atomic_cap as u8;
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Every QP, CQ and MR holds an `Arc<Device>`, so none is left when this runs.
        if !self.pd.is_null() {
            // SAFETY: allocated in `open`, no child objects remain, released once.
            let rc = unsafe { ib::ibv_dealloc_pd(self.pd) };
            if rc != 0 {
                tracing::warn!(device = %self.name, rc, "ibv_dealloc_pd failed");
            }
        }
        if !self.ctx.is_null() {
            // SAFETY: opened in `open`, released once, after the PD.
            let rc = unsafe { ib::ibv_close_device(self.ctx) };
            if rc != 0 {
                tracing::warn!(device = %self.name, rc, "ibv_close_device failed");
            }
        }
    }
}

/// A registered memory region.
struct MemoryRegion {
    mr: *mut ib::ibv_mr,
    device: Arc<Device>,
}

// SAFETY: an MR handle is immutable after registration and may be used and
// deregistered from any thread.
unsafe impl Send for MemoryRegion {}

impl MemoryRegion {
    /// # Safety
    /// `addr..addr + len` must stay mapped until the returned value is dropped.
    unsafe fn register(
        device: &Arc<Device>,
        addr: *mut u8,
        len: usize,
        access: c_int,
    ) -> Result<MemoryRegion, FabricError> {
        // SAFETY: open PD; the caller keeps the range mapped for the MR's lifetime.
        let mr = unsafe { ib::ibv_reg_mr(device.pd, addr.cast(), len, access) };
        if mr.is_null() {
            let e = io::Error::last_os_error();
            return Err(FabricError::Io(io::Error::new(
                e.kind(),
                format!(
                    "ibv_reg_mr of {len} bytes on {}: {e} (is `ulimit -l` / RLIMIT_MEMLOCK \
                     large enough to pin the regions?)",
                    device.name
                ),
            )));
        }
        Ok(MemoryRegion {
            mr,
            device: device.clone(),
        })
    }

    fn lkey(&self) -> u32 {
        // SAFETY: a registered MR is readable until deregistered in Drop.
        unsafe { (*self.mr).lkey }
    }

    fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).rkey }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once; the memory is still mapped
        // (owners drop the MR before the memory, see `Bounce` and `ExposedRegion`).
        let rc = unsafe { ib::ibv_dereg_mr(self.mr) };
        if rc != 0 {
            tracing::warn!(device = %self.device.name, rc, "ibv_dereg_mr failed");
        }
    }
}

/// A client's registered staging memory: READ targets, WRITE sources, atomic results.
struct Bounce {
    base: *mut u8,
    layout: Layout,
    /// Always `Some` until Drop, which deregisters it before freeing `base`.
    mr: Option<MemoryRegion>,
}

// SAFETY: the buffer is owned (freed once, in Drop) and only touched under the send-path
// mutex while no work request refers to it.
unsafe impl Send for Bounce {}

impl Bounce {
    fn new(device: &Arc<Device>, len: usize) -> Result<Bounce, FabricError> {
        let layout = Layout::from_size_align(len, 4096)
            .map_err(|_| FabricError::TooLarge(format!("bounce buffer of {len} bytes")))?;
        // SAFETY: the layout has a non-zero size (len >= MIN_BOUNCE).
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        if base.is_null() {
            return Err(FabricError::Io(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate a {len}-byte bounce buffer"),
            )));
        }
        let mut bounce = Bounce {
            base,
            layout,
            mr: None,
        };
        // SAFETY: the allocation lives until Drop, which deregisters the MR first.
        let mr = unsafe {
            MemoryRegion::register(
                device,
                base,
                len,
                ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as c_int,
            )
        }?;
        bounce.mr = Some(mr);
        Ok(bounce)
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn lkey(&self) -> u32 {
        self.mr.as_ref().map_or(0, MemoryRegion::lkey)
    }

    fn addr(&self, offset: usize) -> u64 {
        self.base as u64 + offset as u64
    }

    fn put(&mut self, offset: usize, data: &[u8]) {
        assert!(
            offset + data.len() <= self.len(),
            "bounce write out of range"
        );
        // SAFETY: in range (asserted); no work request refers to the buffer while the
        // send path is locked and nothing is posted.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(offset), data.len()) };
    }

    fn get(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.len(), "bounce read out of range");
        // SAFETY: in range (asserted); the NIC's writes completed (their completion was
        // polled) and nothing is posted.
        unsafe { std::slice::from_raw_parts(self.base.add(offset), len) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        drop(self.mr.take());
        // SAFETY: allocated in `new` with this layout, freed once, after deregistration.
        unsafe { std::alloc::dealloc(self.base, self.layout) };
    }
}

/// An RC queue pair with its completion queue (and, on clients, completion channel).
struct QueuePair {
    qp: *mut ib::ibv_qp,
    cq: *mut ib::ibv_cq,
    channel: *mut ib::ibv_comp_channel,
    /// Send-queue depth granted by the device.
    depth: usize,
    device: Arc<Device>,
}

// SAFETY: verbs QP/CQ/channel handles may be used from any thread; posting and polling
// are serialised by the owner (the client's send-path mutex, or one server thread).
unsafe impl Send for QueuePair {}

impl QueuePair {
    fn create(
        device: &Arc<Device>,
        depth: u32,
        with_channel: bool,
    ) -> Result<QueuePair, FabricError> {
        let depth = depth.min(device.max_qp_wr).max(1);
        let mut qp = QueuePair {
            qp: ptr::null_mut(),
            cq: ptr::null_mut(),
            channel: ptr::null_mut(),
            depth: depth as usize,
            device: device.clone(),
        };
        // From here on, dropping `qp` releases whatever was created.
        if with_channel {
            // SAFETY: open context.
            qp.channel = unsafe { ib::ibv_create_comp_channel(device.ctx) };
            if qp.channel.is_null() {
                return Err(verbs_failed("ibv_create_comp_channel", 0));
            }
        }
        // Room for one completion per chain plus the flush errors of a dying queue pair.
        let cqe = depth as c_int + 1;
        // SAFETY: open context; the channel is null or was created on it.
        qp.cq = unsafe { ib::ibv_create_cq(device.ctx, cqe, ptr::null_mut(), qp.channel, 0) };
        if qp.cq.is_null() {
            return Err(verbs_failed("ibv_create_cq", 0));
        }
        let mut init = ib::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: qp.cq,
            recv_cq: qp.cq,
            srq: ptr::null_mut(),
            cap: ib::ibv_qp_cap {
                max_send_wr: depth,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ib::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: open PD and CQ of the same context; `init` is fully initialised.
        qp.qp = unsafe { ib::ibv_create_qp(device.pd, &mut init) };
        if qp.qp.is_null() {
            return Err(verbs_failed("ibv_create_qp", 0));
        }
        qp.depth = init.cap.max_send_wr.clamp(1, depth) as usize;
        Ok(qp)
    }

    fn qpn(&self) -> u32 {
        // SAFETY: a created QP is readable until destroyed in Drop.
        unsafe { (*self.qp).qp_num }
    }

    /// This side's half of the exchange.
    fn info(&self, psn: u32, rd_atomic: u8) -> QpInfo {
        QpInfo {
            qpn: self.qpn(),
            psn,
            lid: self.device.lid,
            gid: self.device.gid,
            mtu: self.device.active_mtu,
            rd_atomic,
        }
    }

    fn modify(
        &self,
        attr: &mut ib::ibv_qp_attr,
        mask: ib::ibv_qp_attr_mask,
        what: &str,
    ) -> Result<(), FabricError> {
        // SAFETY: live QP; `attr` is initialised for every field `mask` names.
        let rc = unsafe { ib::ibv_modify_qp(self.qp, attr, mask.0 as c_int) };
        if rc != 0 {
            return Err(verbs_failed(what, rc));
        }
        Ok(())
    }

    fn blank_attr() -> ib::ibv_qp_attr {
        // SAFETY: ibv_qp_attr is plain integers (and an address vector of integers);
        // all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }

    /// RESET -> INIT. Only the server's queue pairs grant remote access; what a peer may
    /// actually touch is then decided by each MR's flags.
    fn to_init(&self, remote_access: bool) -> Result<(), FabricError> {
        use ib::ibv_access_flags as f;
        use ib::ibv_qp_attr_mask as m;
        let mut a = Self::blank_attr();
        a.qp_state = ib::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.device.port;
        a.qp_access_flags = if remote_access {
            (f::IBV_ACCESS_REMOTE_READ | f::IBV_ACCESS_REMOTE_WRITE | f::IBV_ACCESS_REMOTE_ATOMIC).0
        } else {
            0
        };
        self.modify(
            &mut a,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
            "ibv_modify_qp(INIT)",
        )
    }

    /// INIT -> RTR towards `remote`.
    fn to_rtr(&self, remote: &QpInfo, responder_depth: u8) -> Result<(), FabricError> {
        use ib::ibv_qp_attr_mask as m;
        let mut a = Self::blank_attr();
        a.qp_state = ib::ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = ib::ibv_mtu::Type::from(self.device.active_mtu.min(remote.mtu));
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = responder_depth;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = self.device.port;
        if remote.gid != [0; 16] {
            // Needed on RoCE, harmless within an InfiniBand subnet.
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid = ib::ibv_gid { raw: remote.gid };
            a.ah_attr.grh.sgid_index = self.device.gid_index;
            a.ah_attr.grh.hop_limit = 64;
        }
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
            "ibv_modify_qp(RTR)",
        )
    }

    /// RTR -> RTS.
    fn to_rts(&self, psn: u32, initiator_depth: u8) -> Result<(), FabricError> {
        use ib::ibv_qp_attr_mask as m;
        let mut a = Self::blank_attr();
        a.qp_state = ib::ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 14; // 4.096 us * 2^14 = 67 ms per try
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.sq_psn = psn;
        a.max_rd_atomic = initiator_depth;
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
            "ibv_modify_qp(RTS)",
        )
    }

    /// Any state -> ERR: flushes outstanding work requests so none can still touch the
    /// bounce buffer.
    fn to_error(&self) {
        let mut a = Self::blank_attr();
        a.qp_state = ib::ibv_qp_state::IBV_QPS_ERR;
        if let Err(e) = self.modify(
            &mut a,
            ib::ibv_qp_attr_mask::IBV_QP_STATE,
            "ibv_modify_qp(ERR)",
        ) {
            tracing::warn!(error = %e, "cannot move a failed queue pair to ERR");
        }
    }

    /// Posts `chain` (already linked) with one doorbell.
    fn post_send(&self, chain: &mut [ib::ibv_send_wr]) -> Result<(), FabricError> {
        let mut bad: *mut ib::ibv_send_wr = ptr::null_mut();
        // SAFETY: live QP in RTS; `chain` is a well-formed list whose SGEs point into the
        // registered bounce buffer, and it stays alive for the duration of the call
        // (verbs copies work requests into the send queue).
        let rc = unsafe { ib::ibv_post_send(self.qp, chain.as_mut_ptr(), &mut bad) };
        if rc != 0 {
            return Err(verbs_failed("ibv_post_send", rc));
        }
        Ok(())
    }

    /// Drains the CQ; `Ok(true)` once the completion of `wr_id` was seen.
    fn poll(&self, wr_id: u64) -> Result<bool, FabricError> {
        const BATCH: usize = 16;
        // SAFETY: ibv_wc is plain integers (and a union of integers); all-zero is valid.
        let mut wcs: [ib::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let mut found = false;
        loop {
            // SAFETY: live CQ; room for BATCH completions.
            let n = unsafe { ib::ibv_poll_cq(self.cq, BATCH as c_int, wcs.as_mut_ptr()) };
            if n < 0 {
                return Err(verbs_failed("ibv_poll_cq", 0));
            }
            for wc in &wcs[..n as usize] {
                if wc.status != ib::ibv_wc_status::IBV_WC_SUCCESS {
                    return Err(completion_error(wc));
                }
                found |= wc.wr_id == wr_id;
            }
            if (n as usize) < BATCH {
                return Ok(found);
            }
        }
    }

    /// Asks for an event on the channel at the next completion.
    fn arm(&self) -> Result<(), FabricError> {
        // SAFETY: live CQ with a completion channel.
        let rc = unsafe { ib::ibv_req_notify_cq(self.cq, 0) };
        if rc != 0 {
            return Err(verbs_failed("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    /// Sleeps until the armed CQ signals or `timeout` passes; consumes and acknowledges
    /// the event. `Ok(true)` if there was one.
    fn sleep(&self, timeout: Duration) -> Result<bool, FabricError> {
        // SAFETY: the channel was created with this QP and lives until Drop.
        let fd = unsafe { (*self.channel).fd };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, c_int::MAX as u128) as c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e.into())
            };
        }
        if rc == 0 {
            return Ok(false);
        }
        let mut cq: *mut ib::ibv_cq = ptr::null_mut();
        let mut ctx: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: the channel is readable, so this does not block; valid out-pointers.
        let rc = unsafe { ib::ibv_get_cq_event(self.channel, &mut cq, &mut ctx) };
        if rc != 0 {
            return Err(verbs_failed("ibv_get_cq_event", 0));
        }
        // SAFETY: `cq` is our CQ (the only one on this channel); every event is acked so
        // that ibv_destroy_cq does not wait.
        unsafe { ib::ibv_ack_cq_events(cq, 1) };
        Ok(true)
    }

    /// Waits for the completion of `wr_id`: spin, then sleep on the channel.
    fn wait_for(
        &self,
        wr_id: u64,
        deadline: Instant,
        closed: &AtomicBool,
        timeout: Duration,
    ) -> Result<(), FabricError> {
        let spin_until = Instant::now() + SPIN;
        let mut armed = false;
        loop {
            if self.poll(wr_id)? {
                return Ok(());
            }
            if closed.load(Ordering::Acquire) {
                return Err(FabricError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FabricError::Timeout(timeout));
            }
            if now < spin_until {
                std::hint::spin_loop();
            } else if !armed {
                // Poll once more after arming: a completion that landed in between
                // raises no event.
                self.arm()?;
                armed = true;
            } else if self.sleep((deadline - now).min(WAIT_SLICE))? {
                armed = false;
            }
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // Children first: the QP uses the CQ, the CQ uses the channel.
        if !self.qp.is_null() {
            // SAFETY: created in `create`, destroyed once.
            let rc = unsafe { ib::ibv_destroy_qp(self.qp) };
            if rc != 0 {
                tracing::warn!(device = %self.device.name, rc, "ibv_destroy_qp failed");
            }
        }
        if !self.cq.is_null() {
            // SAFETY: created in `create`, its QP is gone, every event was acked.
            let rc = unsafe { ib::ibv_destroy_cq(self.cq) };
            if rc != 0 {
                tracing::warn!(device = %self.device.name, rc, "ibv_destroy_cq failed");
            }
        }
        if !self.channel.is_null() {
            // SAFETY: created in `create`, its CQ is gone.
            let rc = unsafe { ib::ibv_destroy_comp_channel(self.channel) };
            if rc != 0 {
                tracing::warn!(device = %self.device.name, rc, "ibv_destroy_comp_channel failed");
            }
        }
    }
}

fn completion_error(wc: &ib::ibv_wc) -> FabricError {
    // SAFETY: ibv_wc_status_str returns a static string for any status value.
    let what = unsafe { CStr::from_ptr(ib::ibv_wc_status_str(wc.status)) }.to_string_lossy();
    let msg = format!(
        "RDMA work request failed: {what} (status {}, vendor error {:#x})",
        wc.status, wc.vendor_err
    );
    use ib::ibv_wc_status as s;
    match wc.status {
        // The peer or the path is gone: a fresh connection may work.
        s::IBV_WC_RETRY_EXC_ERR | s::IBV_WC_RNR_RETRY_EXC_ERR | s::IBV_WC_WR_FLUSH_ERR => {
            FabricError::Io(io::Error::new(io::ErrorKind::ConnectionReset, msg))
        }
        _ => FabricError::Protocol(msg),
    }
}

fn random_psn() -> u32 {
    rand::random::<u32>() & 0x00ff_ffff
}

// ---------------------------------------------------------------------------------------
// Client.

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
    /// The side channel: RPC, and batches the NIC must not run (see "Atomics").
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
    /// module doc, "One-sided batches").
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
    /// close the connection (module doc, "One-sided batches").
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
    pub(crate) fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.core.close();
    }
}

/// Links one chain of work requests; only the last is signalled and carries `wr_id`.
/// The result points into `sges`, which must outlive its posting.
fn build_chain(chain: &[PlannedWr], sges: &mut [ib::ibv_sge], wr_id: u64) -> Vec<ib::ibv_send_wr> {
    use ib::ibv_send_flags as sf;
    use ib::ibv_wr_opcode as opc;
    let fences = fence_flags(chain);
    let last = chain.len() - 1;
    let mut list: Vec<ib::ibv_send_wr> = Vec::with_capacity(chain.len());
    for (i, w) in chain.iter().enumerate() {
        // SAFETY: ibv_send_wr is integers, raw pointers and unions of those; all-zero is
        // a valid value (null pointers, no flags).
        let mut wr: ib::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = if i == last { wr_id } else { 0 };
        wr.sg_list = &mut sges[i];
        wr.num_sge = 1;
        let mut flags = sf(0);
        if fences[i] {
            flags |= sf::IBV_SEND_FENCE;
        }
        if i == last {
            flags |= sf::IBV_SEND_SIGNALED;
        }
        wr.send_flags = flags.0;
        match w.kind {
            WrKind::Read | WrKind::Write => {
                wr.opcode = if w.kind == WrKind::Read {
                    opc::IBV_WR_RDMA_READ
                } else {
                    opc::IBV_WR_RDMA_WRITE
                };
                wr.wr.rdma = ib::rdma_t {
                    remote_addr: w.remote_addr,
                    rkey: w.rkey,
                };
            }
            WrKind::Cas { expected, new } => {
                wr.opcode = opc::IBV_WR_ATOMIC_CMP_AND_SWP;
                wr.wr.atomic = ib::atomic_t {
                    remote_addr: w.remote_addr,
                    compare_add: expected,
                    swap: new,
                    rkey: w.rkey,
                };
            }
            WrKind::FetchAdd { add } => {
                wr.opcode = opc::IBV_WR_ATOMIC_FETCH_AND_ADD;
                wr.wr.atomic = ib::atomic_t {
                    remote_addr: w.remote_addr,
                    compare_add: add,
                    swap: 0,
                    rkey: w.rkey,
                };
            }
        }
        list.push(wr);
    }
    for i in 0..last {
        let next = ptr::addr_of_mut!(list[i + 1]);
        list[i].next = next;
    }
    list
}

// ---------------------------------------------------------------------------------------
// Server.

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
    super::tcp::listen(
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
    live: super::tcp::LiveStreams,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::region::RegionTable;
    use crate::fabric::{ClusterKey, Connection, FnService, Server};
    use proptest::prelude::*;

    fn key() -> ClusterKey {
        ClusterKey::from_material(b"rdma-test-cluster-key-0123456789").unwrap()
    }

    /// Whether this machine has an RDMA device (asked the same way the backend asks).
    fn rdma_device_present() -> bool {
        let mut n: c_int = 0;
        // SAFETY: valid out-pointer; the list is freed right away.
        let list = unsafe { ib::ibv_get_device_list(&mut n) };
        if !list.is_null() {
            // SAFETY: returned above, freed once.
            unsafe { ib::ibv_free_device_list(list) };
        }
        !list.is_null() && n > 0
    }

    #[test]
    fn rdma_without_device_connect_and_serve_are_unsupported() {
        if rdma_device_present() {
            eprintln!("this machine has an RDMA device; see rdma_loopback_round_trip");
            return;
        }
        let opts = ClientOptions::new(key());
        // Nothing listens there: the device check must come before the network.
        match Connection::connect(&Endpoint::Rdma("127.0.0.1:9".into()), &opts) {
            Err(FabricError::Unsupported(m)) => {
                assert!(m.starts_with(NO_DEVICE), "unexpected message: {m}");
                assert!(m.contains("use the tcp or shm transport"), "{m}");
            }
            Err(e) => panic!("expected Unsupported, got {e:?}"),
            Ok(_) => panic!("connected over rdma without an RDMA device"),
        }
        let server = Server::new(key());
        server.register(4096, Access::ALL).unwrap();
        match server.serve(
            &Endpoint::Rdma("127.0.0.1:0".into()),
            Arc::new(crate::fabric::NoRpc),
        ) {
            Err(FabricError::Unsupported(m)) => assert!(m.starts_with(NO_DEVICE), "{m}"),
            Err(e) => panic!("expected Unsupported, got {e:?}"),
            Ok(_) => panic!("served rdma without an RDMA device"),
        }
    }

    #[test]
    fn rdma_side_channel_messages_round_trip() {
        let qp = QpInfo {
            qpn: 0x12_3456,
            psn: 0xab_cdef,
            lid: 7,
            gid: [9; 16],
            mtu: 3,
            rd_atomic: 16,
        };
        let bytes = encode_connect(&qp);
        let body = wire::read_frame(&mut &bytes[..], 256).unwrap().unwrap();
        assert_eq!(body.len(), 1 + QP_INFO_LEN);
        assert_eq!(decode_connect(&body).unwrap(), qp);

        let accept = Accept {
            qp,
            atomic_cap: 2,
            regions: vec![
                (RegionId(0), 0x7f00_0000_0000, 4096, 0x1234),
                (RegionId(1), 0x1000, 64, 9),
            ],
        };
        let bytes = encode_accept(&accept);
        let body = wire::read_frame(&mut &bytes[..], MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(body.len(), 1 + QP_INFO_LEN + 1 + 4 + 2 * ACCEPT_REGION_LEN);
        assert_eq!(decode_accept(&body).unwrap(), accept);

        let refused = Frame::Refused {
            reason: "no".into(),
        }
        .to_bytes();
        assert!(matches!(decode_accept(&refused[4..]), Err(FabricError::Refused(r)) if r == "no"));
        // Truncation, trailing bytes and out-of-range fields are protocol errors.
        assert!(matches!(
            decode_accept(&body[..body.len() - 1]),
            Err(FabricError::Protocol(_))
        ));
        let mut long = body.clone();
        long.push(0);
        assert!(matches!(
            decode_accept(&long),
            Err(FabricError::Protocol(_))
        ));
        let mut bad_mtu = encode_connect(&qp)[4..].to_vec();
        bad_mtu[1 + 26] = 9;
        assert!(matches!(
            decode_connect(&bad_mtu),
            Err(FabricError::Protocol(_))
        ));
    }

    #[test]
    fn rdma_accept_must_match_the_welcome_regions() {
        let descs = [
            RegionDesc {
                id: RegionId(0),
                len: 4096,
                access: Access::ALL,
            },
            RegionDesc {
                id: RegionId(1),
                len: 64,
                access: Access::READ_ONLY,
            },
        ];
        let good = [(RegionId(0), 0x1000, 4096, 1), (RegionId(1), 0x9000, 64, 2)];
        assert_eq!(remote_regions(&descs, &good).unwrap()[1].rkey, 2);
        assert!(remote_regions(&descs, &good[..1]).is_err());
        assert!(remote_regions(&descs, &[good[0], (RegionId(1), 0x9000, 65, 2)]).is_err());
        assert!(remote_regions(&descs, &[good[1], good[0]]).is_err());
        assert!(remote_regions(&descs, &[good[0], (RegionId(1), u64::MAX - 8, 64, 2)]).is_err());
    }

    #[test]
    fn rdma_mr_access_follows_region_rights() {
        use ib::ibv_access_flags as f;
        let has = |a: Access, flag: f| mr_access(a) as u32 & flag.0 != 0;
        assert!(has(Access::READ_ONLY, f::IBV_ACCESS_REMOTE_READ));
        assert!(!has(Access::READ_ONLY, f::IBV_ACCESS_REMOTE_WRITE));
        assert!(!has(Access::READ_ONLY, f::IBV_ACCESS_REMOTE_ATOMIC));
        assert!(!has(Access::READ_ONLY, f::IBV_ACCESS_LOCAL_WRITE));
        assert!(has(Access::READ_WRITE, f::IBV_ACCESS_REMOTE_WRITE));
        assert!(!has(Access::READ_WRITE, f::IBV_ACCESS_REMOTE_ATOMIC));
        assert!(has(Access::ALL, f::IBV_ACCESS_REMOTE_ATOMIC));
        assert!(has(Access::ALL, f::IBV_ACCESS_LOCAL_WRITE));
        assert_eq!(mr_access(Access::default()), 0);
    }

    #[test]
    fn rdma_chain_is_linked_signalled_once_and_fenced_after_reads() {
        let wr = |kind, local| PlannedWr {
            op: 0,
            kind,
            remote_addr: 0x1000,
            rkey: 5,
            local,
            len: 8,
        };
        let chain = [
            wr(WrKind::Read, 0),
            wr(WrKind::Read, 8),
            wr(WrKind::Write, 16),
            wr(WrKind::FetchAdd { add: 1 }, 24),
            wr(WrKind::Read, 32),
            wr(
                WrKind::Cas {
                    expected: 1,
                    new: 2,
                },
                40,
            ),
        ];
        assert_eq!(
            fence_flags(&chain),
            [false, false, true, false, false, true]
        );
        let mut sges: Vec<ib::ibv_sge> = chain
            .iter()
            .map(|w| ib::ibv_sge {
                addr: w.local as u64,
                length: w.len,
                lkey: 1,
            })
            .collect();
        let list = build_chain(&chain, &mut sges, 77);
        let signalled = ib::ibv_send_flags::IBV_SEND_SIGNALED.0;
        for (i, wr) in list.iter().enumerate() {
            let last = i == list.len() - 1;
            assert_eq!(wr.send_flags & signalled != 0, last);
            assert_eq!(wr.next.is_null(), last);
            if !last {
                assert!(ptr::eq(wr.next, &list[i + 1]));
            }
            assert!(ptr::eq(wr.sg_list, &sges[i]));
        }
        assert_eq!(list[5].wr_id, 77);
        assert_eq!(
            list[3].opcode,
            ib::ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD
        );
        // SAFETY: the test just wrote the atomic variant of this work request.
        let atomic = unsafe { list[5].wr.atomic };
        assert_eq!((atomic.compare_add, atomic.swap, atomic.rkey), (1, 2, 5));
    }

    fn qp_strategy() -> impl Strategy<Value = QpInfo> {
        (
            0u32..1 << 24,
            0u32..1 << 24,
            any::<u16>(),
            any::<[u8; 16]>(),
            1u8..=5,
            any::<u8>(),
        )
            .prop_map(|(qpn, psn, lid, gid, mtu, rd_atomic)| QpInfo {
                qpn,
                psn,
                lid,
                gid,
                mtu,
                rd_atomic,
            })
    }

    fn accept_strategy() -> impl Strategy<Value = Accept> {
        (
            qp_strategy(),
            any::<u8>(),
            proptest::collection::vec(
                (
                    any::<u32>().prop_map(RegionId),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u32>(),
                ),
                0..4,
            ),
        )
            .prop_map(|(qp, atomic_cap, regions)| Accept {
                qp,
                atomic_cap,
                regions,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The side-channel decoders are total: random bodies (behind either kind byte
        /// or none) give a message or an error, never a panic.
        #[test]
        fn rdma_side_channel_decoders_never_panic(
            kind in prop_oneof![Just(KIND_RDMA_CONNECT), Just(KIND_RDMA_ACCEPT), Just(KIND_REFUSED), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..2 * (QP_INFO_LEN + 5 + 2 * ACCEPT_REGION_LEN)),
        ) {
            let _ = decode_connect(&rest);
            let _ = decode_accept(&rest);
            let mut body = vec![kind];
            body.extend_from_slice(&rest);
            let _ = decode_connect(&body);
            let _ = decode_accept(&body);
        }

        /// Both messages round-trip; one changed byte or a cut gives an error or a
        /// message, never a panic.
        #[test]
        fn rdma_side_channel_messages_survive_damage(
            qp in qp_strategy(),
            accept in accept_strategy(),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let c = encode_connect(&qp)[4..].to_vec();
            prop_assert_eq!(decode_connect(&c).unwrap(), qp);
            let a = encode_accept(&accept)[4..].to_vec();
            prop_assert_eq!(decode_accept(&a).unwrap(), accept);
            for mut body in [c, a] {
                prop_assert!(decode_connect(&body[..cut.index(body.len())]).is_err());
                prop_assert!(decode_accept(&body[..cut.index(body.len())]).is_err());
                let i = at.index(body.len());
                body[i] ^= x;
                let _ = decode_connect(&body);
                let _ = decode_accept(&body);
            }
        }
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let region = (0u32..4).prop_map(RegionId);
        let offset = prop_oneof![0u64..80, Just(u64::MAX - 3)];
        prop_oneof![
            (region.clone(), offset.clone(), 0u32..40).prop_map(|(region, offset, len)| Op::Read {
                region,
                offset,
                len
            }),
            (
                region.clone(),
                offset.clone(),
                proptest::collection::vec(any::<u8>(), 0..20)
            )
                .prop_map(|(region, offset, data)| Op::Write {
                    region,
                    offset,
                    data
                }),
            (region.clone(), offset.clone(), any::<u64>(), any::<u64>()).prop_map(
                |(region, offset, expected, new)| Op::Cas {
                    region,
                    offset,
                    expected,
                    new
                }
            ),
            (region, offset, any::<u64>()).prop_map(|(region, offset, add)| Op::FetchAdd {
                region,
                offset,
                add
            }),
        ]
    }

    proptest! {
        /// The client-side checks give exactly the per-op errors the serving side gives
        /// on tcp and shm, and every op that passes is posted at an 8-aligned slot.
        #[test]
        fn rdma_client_checks_match_the_server(ops in proptest::collection::vec(op_strategy(), 0..24)) {
            let table = RegionTable::default();
            for access in [Access::READ_ONLY, Access::READ_WRITE, Access::ALL] {
                table.register(64, access).unwrap();
            }
            let remotes: Vec<RemoteRegion> = table
                .descs()
                .into_iter()
                .map(|desc| RemoteRegion { desc, addr: 0x10_0000 * (u64::from(desc.id.0) + 1), rkey: desc.id.0 })
                .collect();
            let plan = plan_batch(&ops, &remotes);
            let served = table.serve_batch(&ops);
            prop_assert_eq!(plan.results.len(), ops.len());
            for (i, (planned, served)) in plan.results.iter().zip(&served).enumerate() {
                match planned {
                    Some(r) => prop_assert_eq!(r, served, "op {} {:?}", i, &ops[i]),
                    None => prop_assert!(served.is_ok(), "op {} {:?} posted but refused: {:?}", i, &ops[i], served),
                }
            }
            let mut end = 0;
            for w in &plan.wrs {
                prop_assert!(plan.results[w.op].is_none());
                prop_assert_eq!(w.local % 8, 0);
                prop_assert!(w.local >= end);
                end = w.local + w.len as usize;
                let r = &remotes[ops[w.op].region().0 as usize];
                prop_assert!(w.remote_addr >= r.addr && w.remote_addr + u64::from(w.len) <= r.addr + r.desc.len);
            }
            prop_assert!(end <= plan.bounce_len);
        }
    }

    /// A real round trip; runs only where a device exists (e.g. a CI runner with
    /// `rdma link add rxe0 type rxe netdev eth0`).
    #[test]
    fn rdma_loopback_round_trip() {
        if !rdma_device_present() {
            eprintln!("no RDMA device: skipping the loopback round trip");
            return;
        }
        let server = Server::new(key());
        let data = server.register(1 << 16, Access::ALL).unwrap();
        let ro = server.register(4096, Access::READ_ONLY).unwrap();
        data.mem().store_u64(8, 40).unwrap();
        ro.mem().write(0, b"read-only").unwrap();
        let echo = FnService(|_: &PeerInfo, req: &[u8]| Ok(req.to_vec()));
        let handle = server
            .serve(&Endpoint::Rdma("127.0.0.1:0".into()), Arc::new(echo))
            .expect("serve over rdma");
        let conn = Connection::connect(handle.endpoint(), &ClientOptions::new(key()))
            .expect("connect over rdma");
        let (d, r) = (data.id(), ro.id());
        let res = conn
            .post(&[
                Op::Write {
                    region: d,
                    offset: 100,
                    data: b"hello".to_vec(),
                },
                Op::Read {
                    region: d,
                    offset: 100,
                    len: 5,
                },
                Op::Cas {
                    region: d,
                    offset: 8,
                    expected: 40,
                    new: 41,
                },
                Op::FetchAdd {
                    region: d,
                    offset: 8,
                    add: 1,
                },
                Op::Read {
                    region: r,
                    offset: 0,
                    len: 9,
                },
                Op::Write {
                    region: r,
                    offset: 0,
                    data: vec![1],
                },
                Op::Read {
                    region: r,
                    offset: 4090,
                    len: 8,
                },
            ])
            .unwrap();
        assert_eq!(res[0], Ok(OpOutput::Written));
        assert_eq!(res[1], Ok(OpOutput::Read(b"hello".to_vec())));
        assert_eq!(res[2], Ok(OpOutput::Cas { previous: 40 }));
        assert_eq!(res[3], Ok(OpOutput::FetchAdd { previous: 41 }));
        assert_eq!(res[4], Ok(OpOutput::Read(b"read-only".to_vec())));
        assert_eq!(res[5], Err(OpError::AccessDenied));
        assert_eq!(res[6], Err(OpError::OutOfBounds));
        assert_eq!(data.mem().load_u64(8).unwrap(), 42);
        let reads: Vec<Op> = (0..3000)
            .map(|i| Op::Read {
                region: d,
                offset: i * 8 % 4096,
                len: 8,
            })
            .collect();
        assert_eq!(conn.post(&reads).unwrap().len(), 3000);
        assert_eq!(conn.call(b"ping").unwrap(), b"ping");
        assert!(conn.stats().onesided_batches >= 2);
    }
}
