//! The `shm` backend: peers on one host.
//!
//! A client connects to the server's Unix socket, runs the usual handshake over it, and
//! receives (SCM_RIGHTS) one memfd with the two RPC rings plus one memfd per region
//! (read-only descriptors for read-only regions). One-sided ops are then atomic copies
//! and atomics on the client's own mappings — no server CPU at all — and RPC frames flow
//! over the rings ([`super::ring`]). The socket stays open only to notice a dead peer.

use super::conn::{self, ClientCore, ConnStats, Outbox};
use super::region::{execute, Mapping};
use super::ring::{Liveness, RingReader, RingWriter, Segment, CLIENT_TO_SERVER, SERVER_TO_CLIENT};
use super::server::{PeerInfo, RpcService, ServerHandle, ServerShared};
use super::{Access, ClientOptions, Endpoint, FabricError, Op, OpError, OpResult, RegionDesc};
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Open connections, so shutdown can close them.
type LiveConns = Arc<Mutex<HashMap<u64, (UnixStream, Arc<Segment>)>>>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Linux accepts at most 253 descriptors in one SCM_RIGHTS message.
const MAX_FDS: usize = 253;

fn liveness(stream: &UnixStream) -> Result<Liveness, FabricError> {
    let s = stream.try_clone()?;
    Ok(Arc::new(move || {
        let mut b = [0u8; 1];
        match socket::recv(
            s.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => matches!(e, nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR),
        }
    }))
}

pub(crate) struct ShmClient {
    pub(crate) core: Arc<ClientCore>,
    maps: Vec<(RegionDesc, Mapping)>,
    /// Whether the server process is still there (its socket end is open).
    alive: Liveness,
    batches: AtomicU64,
    ops: AtomicU64,
}

impl ShmClient {
    pub(crate) fn connect(path: &Path, opts: &ClientOptions) -> Result<ShmClient, FabricError> {
        let mut stream = UnixStream::connect(path).map_err(|e| {
            FabricError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot connect to {}: {e}", path.display()),
            ))
        })?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let (_conn_id, regions) = conn::client_handshake(&mut stream, opts)?;
        let fds = recv_fds(&stream)?;
        stream.set_read_timeout(None)?;
        if fds.len() != regions.len() + 1 {
            return Err(FabricError::Protocol(format!(
                "server sent {} descriptors for {} regions",
                fds.len(),
                regions.len()
            )));
        }
        let mut fds = fds.into_iter();
        let seg = Segment::open(fds.next().expect("checked length"))?;
        let mut maps = Vec::with_capacity(regions.len());
        for (desc, fd) in regions.iter().zip(fds) {
            let writable =
                desc.access.contains(Access::WRITE) || desc.access.contains(Access::ATOMIC);
            let file = File::from(fd);
            if file.metadata()?.len() < desc.len {
                return Err(FabricError::Protocol(format!(
                    "region {} is shorter than announced",
                    desc.id
                )));
            }
            maps.push((*desc, Mapping::map(&file, desc.len, writable)?));
        }
        let alive = liveness(&stream)?;
        let writer = RingWriter::new(seg.clone(), CLIENT_TO_SERVER, alive.clone());
        let reader = RingReader::new(seg.clone(), SERVER_TO_CLIENT, alive.clone());
        let shut_seg = seg.clone();
        let core = Arc::new(ClientCore::new(
            Box::new(writer),
            opts,
            regions,
            Box::new(move || {
                shut_seg.close();
                let _ = stream.shutdown(Shutdown::Both);
            }),
        ));
        core.start(reader, "fabric-shm")?;
        Ok(ShmClient {
            core,
            maps,
            alive,
            batches: AtomicU64::new(0),
            ops: AtomicU64::new(0),
        })
    }

    /// Runs a batch on the client's own mappings: no message, no server CPU.
    pub(crate) fn post_local(&self, ops: &[Op]) -> Vec<OpResult> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
        ops.iter()
            .map(
                |op| match self.maps.iter().find(|(d, _)| d.id == op.region()) {
                    Some((desc, mem)) => execute(mem, desc, op),
                    None => Err(OpError::NoSuchRegion),
                },
            )
            .collect()
    }

    pub(crate) fn stats(&self) -> ConnStats {
        let mut s = self.core.stats();
        s.onesided_batches += self.batches.load(Ordering::Relaxed);
        s.onesided_ops += self.ops.load(Ordering::Relaxed);
        s
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Whether the server is alive now, asked of the kernel (its end of the socket), not
    /// of the reader thread, which may learn of a death later. One-sided reads here are
    /// copies from this process's own mappings, which outlive the server: only this
    /// check says whether what they read was the memory of a live server.
    pub(crate) fn peer_alive_now(&self) -> bool {
        !self.core.is_closed() && (self.alive)()
    }

    pub(crate) fn close(&self) {
        self.core.close();
    }
}

fn recv_fds(stream: &UnixStream) -> Result<Vec<OwnedFd>, FabricError> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = socket::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor for us; we own it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.bytes == 0 {
        return Err(FabricError::Disconnected);
    }
    Ok(fds)
}

pub(crate) fn serve(
    shared: Arc<ServerShared>,
    path: &Path,
    service: Arc<dyn RpcService>,
) -> Result<ServerHandle, FabricError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(FabricError::Io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another server is listening on {}", path.display()),
            )));
        }
        // A stale socket of a dead server.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        FabricError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        ))
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let live: LiveConns = Arc::default();
    {
        let stop = stop.clone();
        let live = live.clone();
        std::thread::Builder::new()
            .name("fabric-shm-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    let service = service.clone();
                    let live = live.clone();
                    let _ = std::thread::Builder::new()
                        .name("fabric-shm-conn".into())
                        .spawn(move || serve_conn(stream, shared, service, live));
                }
            })?;
    }
    let stopper = {
        let stop = stop.clone();
        let path = path.to_path_buf();
        Box::new(move || {
            stop.store(true, Ordering::Release);
            let _ = UnixStream::connect(&path);
            for (_, (s, seg)) in live.lock().drain() {
                seg.close();
                let _ = s.shutdown(Shutdown::Both);
            }
            let _ = std::fs::remove_file(&path);
        })
    };
    Ok(ServerHandle {
        endpoint: Endpoint::Shm(path.to_path_buf()),
        stop,
        stopper: Some(stopper),
    })
}

fn serve_conn(
    mut stream: UnixStream,
    shared: Arc<ServerShared>,
    service: Arc<dyn RpcService>,
    live: LiveConns,
) {
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let peer = PeerInfo {
        conn_id,
        addr: "shm".into(),
    };
    let regions = shared.regions.all();
    let setup = (|| -> Result<(bool, Arc<Segment>, Liveness), FabricError> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let descs: Vec<_> = regions.iter().map(|r| r.desc()).collect();
        let batching = conn::server_handshake(&mut stream, &shared.key, conn_id, &descs)?;
        stream.set_read_timeout(None)?;
        let seg = Segment::create()?;
        let region_fds = regions
            .iter()
            .map(|r| r.client_fd())
            .collect::<Result<Vec<_>, _>>()?;
        let mut raw: Vec<RawFd> = vec![seg.fd()];
        raw.extend(region_fds.iter().map(|f| f.as_raw_fd()));
        if raw.len() > MAX_FDS {
            return Err(FabricError::TooLarge(format!(
                "{} regions exceed the {MAX_FDS}-descriptor limit",
                regions.len()
            )));
        }
        socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(b"F")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .map_err(std::io::Error::from)?;
        Ok((batching, seg, liveness(&stream)?))
    })();
    let (batching, seg, alive) = match setup {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "shm handshake failed");
            return;
        }
    };
    if let Ok(s) = stream.try_clone() {
        live.lock().insert(conn_id, (s, seg.clone()));
    }
    let reader = RingReader::new(seg.clone(), CLIENT_TO_SERVER, alive.clone());
    let writer = RingWriter::new(seg.clone(), SERVER_TO_CLIENT, alive);
    let outbox = Arc::new(Outbox::new(Box::new(writer), batching, None));
    conn::serve_frames(reader, outbox, &shared.regions, &service, &peer);
    seg.close();
    let _ = stream.shutdown(Shutdown::Both);
    live.lock().remove(&conn_id);
    service.disconnected(&peer);
}
