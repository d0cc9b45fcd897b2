//! A TCP proxy that can hold the traffic of one direction: a network fault between a
//! compute node and a service (the GTM), for tests of lost requests and lost answers.
//!
//! Every connection accepted on the proxy's port is forwarded to the current target. A
//! held direction stops forwarding: bytes already read are kept and later bytes stay in
//! the kernel's socket buffers, so nothing is lost — [`Proxy::release`] delivers all of
//! it, in order, as a network that came back would (a "late" request). Connections whose
//! other end closed are closed on both sides, so a restarted service looks restarted.
//!
//! Shared by `cluster/tests` and `compute-node/tests` (included with `#[path]`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to service: requests.
    ToServer,
    /// Service to client: answers.
    ToClient,
}

#[derive(Default)]
struct Gate {
    held: Mutex<bool>,
    opened: Condvar,
    /// Bytes a pump read while this gate was closed (waiting at the gate).
    waiting: AtomicU64,
}

impl Gate {
    fn set(&self, held: bool) {
        *self.held.lock().unwrap() = held;
        self.opened.notify_all();
    }

    fn pass(&self, n: usize, stop: &AtomicBool) {
        let mut held = self.held.lock().unwrap();
        if *held {
            self.waiting.fetch_add(n as u64, Ordering::Relaxed);
        }
        while *held && !stop.load(Ordering::Acquire) {
            held = self
                .opened
                .wait_timeout(held, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }
}

struct Shared {
    target: Mutex<String>,
    to_server: Gate,
    to_client: Gate,
    forwarded_to_server: AtomicU64,
    forwarded_to_client: AtomicU64,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A running proxy; dropping it closes every connection.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`, or a
    /// `tcp://host:port` endpoint).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target: Mutex::new(strip(target)),
            to_server: Gate::default(),
            to_client: Gate::default(),
            forwarded_to_server: AtomicU64::new(0),
            forwarded_to_client: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("test-proxy-accept".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if s.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let target = s.target.lock().unwrap().clone();
                    let Ok(server) = TcpStream::connect(&target) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    {
                        let mut conns = s.conns.lock().unwrap();
                        conns.push(client.try_clone().unwrap());
                        conns.push(server.try_clone().unwrap());
                    }
                    pump(
                        s.clone(),
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        Direction::ToServer,
                    );
                    pump(s.clone(), server, client, Direction::ToClient);
                }
            })
            .expect("spawn the proxy");
        Proxy { port, shared }
    }

    /// `tcp://127.0.0.1:<port>`: the endpoint to give a client instead of the target's.
    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding one direction (bytes are kept, see the module docs).
    pub fn hold(&self, d: Direction) {
        self.gate(d).set(true);
    }

    /// Forwards one direction again, starting with everything held.
    pub fn release(&self, d: Direction) {
        self.gate(d).set(false);
    }

    /// Bytes that reached the proxy while `d` was held (they wait at, or passed, the
    /// gate).
    pub fn held_bytes(&self, d: Direction) -> u64 {
        self.gate(d).waiting.load(Ordering::Relaxed)
    }

    /// Bytes forwarded in direction `d` so far.
    pub fn forwarded(&self, d: Direction) -> u64 {
        match d {
            Direction::ToServer => self.shared.forwarded_to_server.load(Ordering::Relaxed),
            Direction::ToClient => self.shared.forwarded_to_client.load(Ordering::Relaxed),
        }
    }

    /// Where new connections go from now on.
    pub fn set_target(&self, target: &str) {
        *self.shared.target.lock().unwrap() = strip(target);
    }

    fn gate(&self, d: Direction) -> &Gate {
        match d {
            Direction::ToServer => &self.shared.to_server,
            Direction::ToClient => &self.shared.to_client,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.to_server.set(false);
        self.shared.to_client.set(false);
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the acceptor so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn strip(target: &str) -> String {
    target.strip_prefix("tcp://").unwrap_or(target).to_string()
}

/// Copies `from` to `to` through the gate of `d`; when either side ends, both end.
fn pump(s: Arc<Shared>, mut from: TcpStream, mut to: TcpStream, d: Direction) {
    std::thread::Builder::new()
        .name(format!("test-proxy-{d:?}"))
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (gate, count) = match d {
                    Direction::ToServer => (&s.to_server, &s.forwarded_to_server),
                    Direction::ToClient => (&s.to_client, &s.forwarded_to_client),
                };
                gate.pass(n, &s.stop);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        })
        .expect("spawn a proxy pump");
}
