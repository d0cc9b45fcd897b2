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
//!
//! ## Files
//!
//! * `mod.rs` — this description, the tuning constants, and the two entry points
//!   (`RdmaClient`, `serve`) the rest of the fabric uses;
//! * `msg.rs` — the side-channel messages RDMA_CONNECT / RDMA_ACCEPT (pure);
//! * `batch.rs` — batch planning (client-side checks, bounce-buffer layout, fences)
//!   and linking a plan into one work-request chain (pure);
//! * `device.rs` — opening a device and its protection domain;
//! * `mr.rs` — memory registration: MR access flags, registered regions, the
//!   client's bounce buffer;
//! * `qp.rs` — RC queue pairs: creation, state transitions, posting, completions;
//! * `client.rs` — `RdmaClient`: connection setup and the one-sided batch path;
//! * `server.rs` — `serve`: the listener, region exposure and per-connection setup;
//! * `tests.rs` — unit tests (the device-free ones run everywhere).
//!
//! [`Access`]: super::Access
//! [`FabricError::Unsupported`]: super::FabricError::Unsupported

mod batch;
mod client;
mod device;
mod mr;
mod msg;
mod qp;
mod server;
#[cfg(test)]
mod tests;

pub(crate) use client::RdmaClient;
pub(crate) use server::serve;

use std::time::Duration;

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

/// What `connect` and `serve` say on a machine without an RDMA device.
pub const NO_DEVICE: &str = "no RDMA device found (ibv_get_device_list returned no devices); \
     use the tcp or shm transport (tcp://host:port, shm:///path/to/socket) instead";
