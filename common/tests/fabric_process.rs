//! Fabric tests against a real server process (`fabric-bench serve`), over every
//! backend that runs on this machine, including the bad-input cases of docs/design.md.

use common::fabric::{
    wire, Access, ClientOptions, ClusterKey, Connection, Endpoint, FabricError, Op, OpError,
    OpOutput,
};
use common::ids::RegionId;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

const KEY: &str = "fabric-test-cluster-key-0123456789";
const DATA: RegionId = RegionId(0);
const RO: RegionId = RegionId(1);

struct ServerProc {
    child: Child,
    endpoint: Endpoint,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key_file(dir: &Path) -> PathBuf {
    let p = dir.join("key");
    std::fs::write(&p, KEY).unwrap();
    p
}

fn start(transport: &str) -> ServerProc {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = match transport {
        "tcp" => "tcp://127.0.0.1:0".to_string(),
        _ => format!("shm://{}/s.sock", dir.path().display()),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_fabric-bench"))
        .args(["serve", "--endpoint", &endpoint, "--key-file"])
        .arg(key_file(dir.path()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ep = line
        .trim()
        .strip_prefix("READY ")
        .expect("server ready")
        .parse()
        .unwrap();
    ServerProc {
        child,
        endpoint: ep,
        _dir: dir,
    }
}

fn opts() -> ClientOptions {
    ClientOptions::new(ClusterKey::from_material(KEY.as_bytes()).unwrap())
}

fn each_transport(f: impl Fn(&ServerProc)) {
    for t in ["tcp", "shm"] {
        let s = start(t);
        f(&s);
    }
}

#[test]
fn one_sided_ops_and_rpc_work_over_each_transport() {
    each_transport(|s| {
        let c = Connection::connect(&s.endpoint, &opts()).unwrap();
        let regions = c.regions();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[1].access, Access::READ_ONLY);
        // The server wrote word i = i into both regions.
        let r = c
            .post(&[
                Op::Read {
                    region: RO,
                    offset: 8 * 5,
                    len: 8,
                },
                Op::Write {
                    region: DATA,
                    offset: 1 << 20,
                    data: b"hello".to_vec(),
                },
                Op::Read {
                    region: DATA,
                    offset: 1 << 20,
                    len: 5,
                },
                Op::Cas {
                    region: DATA,
                    offset: 16,
                    expected: 2,
                    new: 100,
                },
                Op::Cas {
                    region: DATA,
                    offset: 16,
                    expected: 2,
                    new: 200,
                },
                Op::FetchAdd {
                    region: DATA,
                    offset: 16,
                    add: 5,
                },
                Op::Read {
                    region: DATA,
                    offset: 16,
                    len: 8,
                },
            ])
            .unwrap();
        assert_eq!(r[0], Ok(OpOutput::Read(5u64.to_le_bytes().to_vec())));
        assert_eq!(r[1], Ok(OpOutput::Written));
        assert_eq!(r[2], Ok(OpOutput::Read(b"hello".to_vec())));
        assert_eq!(r[3], Ok(OpOutput::Cas { previous: 2 }));
        assert_eq!(r[4], Ok(OpOutput::Cas { previous: 100 }));
        assert_eq!(r[5], Ok(OpOutput::FetchAdd { previous: 100 }));
        assert_eq!(r[6], Ok(OpOutput::Read(105u64.to_le_bytes().to_vec())));
        assert_eq!(c.call(b"ping").unwrap(), b"ping");
        match c.call(b"fail") {
            Err(FabricError::Remote(m)) => assert!(m.contains("asked to fail")),
            other => panic!("expected a remote error, got {other:?}"),
        }
    });
}

#[test]
fn out_of_range_and_forbidden_ops_fail_alone() {
    each_transport(|s| {
        let c = Connection::connect(&s.endpoint, &opts()).unwrap();
        let len = c.region(DATA).unwrap().len;
        let r = c
            .post(&[
                Op::Read {
                    region: DATA,
                    offset: len - 4,
                    len: 8,
                },
                Op::Write {
                    region: RO,
                    offset: 0,
                    data: vec![1],
                },
                Op::Cas {
                    region: RO,
                    offset: 0,
                    expected: 0,
                    new: 1,
                },
                Op::FetchAdd {
                    region: DATA,
                    offset: 3,
                    add: 1,
                },
                Op::Read {
                    region: RegionId(77),
                    offset: 0,
                    len: 1,
                },
                Op::Read {
                    region: DATA,
                    offset: 0,
                    len: 8,
                },
            ])
            .unwrap();
        assert_eq!(r[0], Err(OpError::OutOfBounds));
        assert_eq!(r[1], Err(OpError::AccessDenied));
        assert_eq!(r[2], Err(OpError::AccessDenied));
        assert_eq!(r[3], Err(OpError::Misaligned));
        assert_eq!(r[4], Err(OpError::NoSuchRegion));
        assert!(r[5].is_ok());
        // The connection lives on.
        assert_eq!(c.call(b"still here").unwrap(), b"still here");
    });
}

#[test]
fn wrong_cluster_key_is_refused_clearly() {
    each_transport(|s| {
        let bad = ClientOptions::new(ClusterKey::from_material(b"not-the-cluster-key!").unwrap());
        match Connection::connect(&s.endpoint, &bad) {
            Err(FabricError::Refused(m)) => {
                assert!(
                    m.contains("cluster key"),
                    "message should name the key: {m}"
                )
            }
            Err(e) => panic!("expected Refused, got {e}"),
            Ok(_) => panic!("a wrong key was accepted"),
        }
        // The server is unharmed.
        let c = Connection::connect(&s.endpoint, &opts()).unwrap();
        assert_eq!(c.call(b"ok").unwrap(), b"ok");
    });
}

/// A raw byte pipe to the server, for speaking bad protocol on purpose.
fn raw(s: &ServerProc) -> Box<dyn ReadWrite> {
    match &s.endpoint {
        Endpoint::Tcp(a) => Box::new(std::net::TcpStream::connect(a).unwrap()),
        Endpoint::Shm(p) => Box::new(std::os::unix::net::UnixStream::connect(p).unwrap()),
        Endpoint::Rdma(_) => unreachable!(),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn read_reply(r: &mut dyn ReadWrite) -> Option<wire::Frame> {
    let body = wire::read_frame(r, wire::MAX_FRAME).ok()??;
    wire::Frame::decode(&body).ok()
}

#[test]
fn wrong_protocol_version_is_refused_with_both_versions() {
    each_transport(|s| {
        let mut c = raw(s);
        let hello = wire::Frame::Hello {
            magic: wire::MAGIC,
            version: 99,
            batching: true,
            client_nonce: [0; 32],
        };
        c.write_all(&hello.to_bytes()).unwrap();
        match read_reply(&mut *c) {
            Some(wire::Frame::Refused { reason }) => {
                assert!(
                    reason.contains("99") && reason.contains(&wire::VERSION.to_string()),
                    "{reason}"
                )
            }
            other => panic!("expected REFUSED, got {other:?}"),
        }
    });
}

#[test]
fn garbage_and_oversized_frames_close_only_that_connection() {
    each_transport(|s| {
        let good = Arc::new(Connection::connect(&s.endpoint, &opts()).unwrap());
        // Garbage before the handshake.
        let mut g = raw(s);
        g.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = g.read(&mut buf); // REFUSED or EOF; either way the server carries on
                                  // An announced frame far over the cap.
        let mut big = raw(s);
        big.write_all(&(u32::MAX).to_le_bytes()).unwrap();
        let _ = big.read(&mut buf);
        // Garbage after a successful handshake: authenticate by hand, then send junk.
        let mut h = raw(s);
        let nonce = [3u8; 32];
        h.write_all(
            &wire::Frame::Hello {
                magic: wire::MAGIC,
                version: wire::VERSION,
                batching: true,
                client_nonce: nonce,
            }
            .to_bytes(),
        )
        .unwrap();
        let Some(wire::Frame::Challenge { server_nonce, .. }) = read_reply(&mut *h) else {
            panic!("no challenge")
        };
        let key = ClusterKey::from_material(KEY.as_bytes()).unwrap();
        h.write_all(
            &wire::Frame::Auth {
                client_mac: key.client_mac(&server_nonce, &nonce),
            }
            .to_bytes(),
        )
        .unwrap();
        assert!(matches!(
            read_reply(&mut *h),
            Some(wire::Frame::Welcome { .. })
        ));
        if matches!(s.endpoint, Endpoint::Tcp(_)) {
            // (On shm the data path moves to the rings; the socket is only a liveness probe.)
            h.write_all(&[5, 0, 0, 0, 200, 1, 2, 3, 4]).unwrap();
            assert_eq!(
                h.read(&mut buf).unwrap_or(0),
                0,
                "server should close this connection"
            );
        }
        // The well-behaved client never noticed.
        assert_eq!(good.call(b"fine").unwrap(), b"fine");
        assert!(good
            .post(&[Op::Read {
                region: DATA,
                offset: 0,
                len: 8
            }])
            .unwrap()[0]
            .is_ok());
        let again = Connection::connect(&s.endpoint, &opts()).unwrap();
        assert_eq!(again.call(b"new").unwrap(), b"new");
    });
}

#[test]
fn concurrent_callers_get_their_own_answers() {
    each_transport(|s| {
        for batching in [true, false] {
            let c = Arc::new(Connection::connect(&s.endpoint, &opts().batching(batching)).unwrap());
            let threads: Vec<_> = (0..8u32)
                .map(|t| {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        for i in 0..300u32 {
                            let req = format!("{t}:{i}");
                            assert_eq!(c.call(req.as_bytes()).unwrap(), req.as_bytes());
                            let r = c
                                .post(&[Op::FetchAdd {
                                    region: DATA,
                                    offset: 4096,
                                    add: 1,
                                }])
                                .unwrap();
                            assert!(r[0].is_ok());
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            if batching {
                let st = c.stats();
                assert!(st.rpc_requests >= 2400);
            }
        }
        // Every FETCH_ADD landed exactly once: 2 runs x 8 threads x 300.
        let c = Connection::connect(&s.endpoint, &opts()).unwrap();
        let r = c
            .post(&[Op::Read {
                region: DATA,
                offset: 4096,
                len: 8,
            }])
            .unwrap();
        let v = u64::from_le_bytes(
            r[0].clone()
                .unwrap()
                .into_bytes()
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(v, 512 + 4800, "word 512 starts at 512");
    });
}

#[test]
fn a_dead_server_fails_calls_instead_of_hanging() {
    for t in ["tcp", "shm"] {
        let mut s = start(t);
        let c = Connection::connect(
            &s.endpoint,
            &opts().timeout(std::time::Duration::from_secs(20)),
        )
        .unwrap();
        assert_eq!(c.call(b"x").unwrap(), b"x");
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        let started = std::time::Instant::now();
        match c.call(b"y") {
            Err(e) => assert!(e.is_transient(), "{e}"),
            Ok(_) => panic!("a dead server answered"),
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{t}: noticed too late"
        );
    }
}

#[test]
fn rdma_without_support_is_a_clear_error() {
    let e = Connection::connect(&"rdma://127.0.0.1:1".parse().unwrap(), &opts())
        .err()
        .expect("must fail");
    assert!(
        matches!(e, FabricError::Unsupported(_) | FabricError::Io(_)),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("RDMA") || msg.contains("rdma"), "{msg}");
}
