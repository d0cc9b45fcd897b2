//! The `tcp` backend ("soft-RDMA"): one-sided batches travel as one frame each way and
//! are served by the connection's responder straight from the region table.

use super::conn::{self, ClientCore, Outbox};
use super::server::{PeerInfo, RpcService, ServerHandle, ServerShared};
use super::{ClientOptions, Endpoint, FabricError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reader polls an empty socket before it blocks in the kernel.
const POLL_BEFORE_BLOCK: Duration = Duration::from_micros(20);

/// A socket reader that polls briefly (yielding the core between polls) before it
/// blocks: waking a blocked thread costs far more than a few polls when the answer is
/// already on its way, and yielding keeps a 2-core machine from starving.
struct PollingReader(TcpStream);

impl std::io::Read for PollingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = std::time::Instant::now();
        while start.elapsed() < POLL_BEFORE_BLOCK {
            match nix::sys::socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                    std::thread::yield_now()
                }
                Err(e) => return Err(e.into()),
            }
        }
        std::io::Read::read(&mut self.0, buf)
    }
}

pub(crate) struct TcpClient {
    pub(crate) core: Arc<ClientCore>,
}

impl TcpClient {
    pub(crate) fn connect(addr: &str, opts: &ClientOptions) -> Result<TcpClient, FabricError> {
        let mut last = None;
        let mut stream = None;
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, HANDSHAKE_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e.into()),
            (None, None) => {
                return Err(FabricError::Protocol(format!(
                    "{addr}: no address to connect to"
                )))
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let (_conn_id, regions) = conn::client_handshake(&mut stream, opts)?;
        stream.set_read_timeout(None)?;
        let shut = stream.try_clone()?;
        let core = Arc::new(ClientCore::new(
            Box::new(stream.try_clone()?),
            opts,
            regions,
            Box::new(move || {
                let _ = shut.shutdown(Shutdown::Both);
            }),
        ));
        core.start(PollingReader(stream), "fabric-tcp")?;
        Ok(TcpClient { core })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    pub(crate) fn close(&self) {
        self.core.close();
    }
}

pub(crate) fn serve(
    shared: Arc<ServerShared>,
    addr: &str,
    service: Arc<dyn RpcService>,
) -> Result<ServerHandle, FabricError> {
    listen(
        addr,
        "tcp",
        move |stream, live| serve_conn(stream, shared.clone(), service.clone(), live),
        |local| Endpoint::Tcp(local.to_string()),
    )
}

/// Open connections, so shutdown can close them.
pub(crate) type LiveStreams = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// Accepts TCP connections on `addr` and runs `on_conn` for each on a thread of its own;
/// the returned handle stops accepting and shuts every live connection down. Shared by
/// the `tcp` backend and the `rdma` side channel.
pub(crate) fn listen(
    addr: &str,
    kind: &'static str,
    on_conn: impl Fn(TcpStream, LiveStreams) + Send + Sync + 'static,
    endpoint: impl FnOnce(std::net::SocketAddr) -> Endpoint,
) -> Result<ServerHandle, FabricError> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let live: LiveStreams = Arc::default();
    let on_conn = Arc::new(on_conn);
    {
        let stop = stop.clone();
        let live = live.clone();
        std::thread::Builder::new()
            .name(format!("fabric-{kind}-accept-{}", local.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let on_conn = on_conn.clone();
                    let live = live.clone();
                    let _ = std::thread::Builder::new()
                        .name(format!("fabric-{kind}-conn"))
                        .spawn(move || on_conn(stream, live));
                }
            })?;
    }
    let stopper = {
        let stop = stop.clone();
        Box::new(move || {
            stop.store(true, Ordering::Release);
            // Wake the acceptor so it sees the flag.
            let _ = TcpStream::connect_timeout(&local, Duration::from_millis(200));
            for (_, s) in live.lock().drain() {
                let _ = s.shutdown(Shutdown::Both);
            }
        })
    };
    Ok(ServerHandle {
        endpoint: endpoint(local),
        stop,
        stopper: Some(stopper),
    })
}

fn serve_conn(
    mut stream: TcpStream,
    shared: Arc<ServerShared>,
    service: Arc<dyn RpcService>,
    live: LiveStreams,
) {
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let peer = PeerInfo {
        conn_id,
        addr: stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into()),
    };
    let setup = (|| -> Result<(bool, TcpStream), FabricError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let batching =
            conn::server_handshake(&mut stream, &shared.key, conn_id, &shared.regions.descs())?;
        stream.set_read_timeout(None)?;
        Ok((batching, stream.try_clone()?))
    })();
    let (batching, writer) = match setup {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "handshake failed");
            return;
        }
    };
    if let Ok(s) = stream.try_clone() {
        live.lock().insert(conn_id, s);
    }
    tracing::debug!(peer = %peer, batching, "fabric peer connected");
    let outbox = Arc::new(Outbox::new(Box::new(writer), batching, None));
    conn::serve_frames(
        PollingReader(stream.try_clone().expect("clone")),
        outbox,
        &shared.regions,
        &service,
        &peer,
    );
    let _ = stream.shutdown(Shutdown::Both);
    live.lock().remove(&conn_id);
    service.disconnected(&peer);
}
