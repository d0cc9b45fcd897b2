//! The Prometheus scrape endpoint every service shares (`metrics_listen`).
//!
//! A deliberately tiny blocking HTTP/1.1 server: one thread accepts, reads at most
//! [`MAX_REQUEST_LINE`] bytes of the request line (with a timeout), and answers every
//! request, whatever its path, with the text of `render` as
//! `Content-Type: text/plain; version=0.0.4`, then closes the connection. One scrape at
//! a time is all Prometheus needs; a client that stalls holds the thread for at most
//! [`CLIENT_TIMEOUT`], and nothing a client sends can make it panic.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of the request line read at most; the rest of a longer line is ignored.
pub const MAX_REQUEST_LINE: u64 = 8 << 10;

/// How long one client may take to send its request line or to take the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the accept loop looks at `stop` while no client connects.
const POLL: Duration = Duration::from_millis(50);

/// Produces the exposition text, once per request.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the text of `render` on `addr` (`host:port`; port 0 picks a free port) from a
/// thread named `thread_name` until `stop` is set. Returns the bound address and the
/// thread, which exits within [`POLL`] of `stop` (or [`CLIENT_TIMEOUT`] mid-request).
pub fn serve_http(
    addr: &str,
    thread_name: &str,
    render: Render,
    stop: Arc<AtomicBool>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)?;
    // Non-blocking accept so the loop notices `stop` without a wake-up connection.
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let h = std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        if let Err(e) = answer(s, &*render) {
                            tracing::debug!(%peer, error = %e, "metrics client");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener failed");
                        std::thread::sleep(POLL * 4);
                    }
                }
            }
        })?;
    Ok((local, h))
}

/// Reads (part of) one request line and writes the response.
fn answer(mut s: TcpStream, render: &(dyn Fn() -> String + Send + Sync)) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    // Bytes, not a String: a request line that is not UTF-8 is still answered.
    let mut line = Vec::new();
    BufReader::new((&s).take(MAX_REQUEST_LINE)).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(()); // connected and closed without a request
    }
    let body = render();
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    )?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;
    use std::sync::atomic::AtomicU64;

    fn start() -> (SocketAddr, JoinHandle<()>, Arc<AtomicBool>, Arc<AtomicU64>) {
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let render: Render = Arc::new(move || {
            let v = n2.fetch_add(1, Ordering::Relaxed) + 1;
            format!("# TYPE test_scrapes counter\ntest_scrapes {v}\n")
        });
        let (addr, h) = serve_http("127.0.0.1:0", "test-metrics", render, stop.clone()).unwrap();
        (addr, h, stop, n)
    }

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(request);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_any_get_with_the_rendered_text() {
        let (addr, h, stop, _) = start();
        for path in ["/metrics", "/", "/anything?x=1"] {
            let r = get(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
            assert!(
                r.contains("Content-Type: text/plain; version=0.0.4\r\n"),
                "{r}"
            );
            let (head, body) = r.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{r}"
            );
            assert!(body.starts_with("# TYPE test_scrapes counter\ntest_scrapes "));
        }
        stop.store(true, Ordering::Release);
        h.join().unwrap();
    }

    #[test]
    fn bad_clients_do_not_stop_the_server() {
        let (addr, h, stop, scrapes) = start();
        // Connects and leaves without a byte.
        drop(TcpStream::connect(addr).unwrap());
        // Half a request line, then closes its side.
        let s = TcpStream::connect(addr).unwrap();
        (&s).write_all(b"GET /met").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        drop(s);
        // Not UTF-8.
        let r = get(addr, b"\xff\xfe\x00garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r:?}");
        // A request line far over the cap: cut off, answered or reset, never fatal.
        let mut long = b"GET /".to_vec();
        long.resize(64 << 10, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let _ = get(addr, &long);
        // Still serving.
        let before = scrapes.load(Ordering::Relaxed);
        let r = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.contains(&format!("test_scrapes {}", before + 1)), "{r}");
        stop.store(true, Ordering::Release);
        h.join().unwrap();
    }

    #[test]
    fn a_silent_client_is_timed_out() {
        let (addr, h, stop, _) = start();
        let silent = TcpStream::connect(addr).unwrap();
        let t0 = std::time::Instant::now();
        let r = get(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(t0.elapsed() < CLIENT_TIMEOUT * 3, "{:?}", t0.elapsed());
        drop(silent);
        stop.store(true, Ordering::Release);
        h.join().unwrap();
    }

    #[test]
    fn bind_errors_are_returned() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let render: Render = Arc::new(String::new);
        assert!(serve_http(&addr, "t", render.clone(), stop.clone()).is_err());
        assert!(serve_http("not an address", "t", render, stop).is_err());
    }
}
