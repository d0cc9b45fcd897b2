//! The `compute-node` binary over gRPC: a real process joined (over tcp) to an embedded
//! storage node + GTM, driven through `RemoteNode`.

#[path = "../../cluster/tests/support/proxy.rs"]
mod proxy;

use cluster::{ClusterOptions, EmbeddedCluster};
use common::compute::{ConnectOptions, ErrorKind, RemoteError, RemoteNode, RemoteTxn};
use common::fabric::Transport;
use common::ids::TxnId;
use common::proto::compute as pb;
use common::txn::Resolved;
use proxy::{Direction, Proxy};
use std::io::{BufRead, BufReader};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_compute-node");

fn cluster() -> EmbeddedCluster {
    EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 0,
        transport: Transport::Tcp,
        pages_per_storage_node: 1 << 16,
        storage_memory: 64 << 20,
        ..ClusterOptions::default()
    })
    .expect("start storage + GTM")
}

/// A config joining `c` as node `node_id`, plus `extra` top-level keys.
fn write_config(c: &EmbeddedCluster, node_id: u32, extra: &str) -> PathBuf {
    write_config_via(c, node_id, extra, &c.gtm_endpoint().to_string(), "")
}

/// The test clients' tokens.
const ALICE: &str = "alice-0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef00";

/// As [`write_config`], reaching the GTM at `gtm`, plus `node_extra` keys of `[node]`.
fn write_config_via(
    c: &EmbeddedCluster,
    node_id: u32,
    extra: &str,
    gtm: &str,
    node_extra: &str,
) -> PathBuf {
    let storage: Vec<String> = c
        .storage_endpoints()
        .iter()
        .map(|e| format!("{:?}", e.to_string()))
        .collect();
    // Clients authenticate with a token of `client-tokens` (alice's unless a test asks
    // otherwise), unless `extra` configures authentication itself.
    let tokens = c.dir().join("client-tokens");
    std::fs::write(&tokens, format!("alice {ALICE}\nbob {BOB}\n")).unwrap();
    let auth = if extra.contains("insecure") || extra.contains("client_tokens_file") {
        String::new()
    } else {
        format!("client_tokens_file = {:?}\n", tokens.display().to_string())
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{auth}{extra}\n\n[node]\nnode_id = {node_id}\ngtm = {gtm:?}\nstorage = [{}]\nkey_file = {:?}\nbuffer_frames = 1024\nheartbeat_ms = 100\n{node_extra}\n",
        storage.join(", "),
        c.key_file().display().to_string(),
    );
    let path = c.dir().join(format!("compute-{node_id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `compute-node` process.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    fn start(config: &Path) -> Server {
        let log = config.with_extension("log");
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn compute-node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("READY ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "compute-node did not print READY; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Server { child, addr, log }
    }

    /// Connects as alice.
    fn connect(&self) -> RemoteNode {
        self.connect_with(&ConnectOptions::token(ALICE))
    }

    fn connect_with(&self, opts: &ConnectOptions) -> RemoteNode {
        RemoteNode::connect_with(&self.addr, opts).expect("connect to compute-node")
    }

    fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("compute-node did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn expect_kind<T: std::fmt::Debug>(r: Result<T, RemoteError>, kind: ErrorKind) -> RemoteError {
    let e = r.expect_err("call should fail");
    assert_eq!(e.kind, kind, "{e}");
    assert_eq!(e.code, kind.code(), "{e}");
    e
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn keys(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    rows.iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect()
}

#[test]
fn tables_and_transactions_over_grpc() {
    let c = cluster();
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = Server::start(&write_config(
        &c,
        1,
        &format!("max_scan_rows = 5\nmetrics_listen = \"127.0.0.1:{metrics_port}\""),
    ));
    let node = server.connect();

    let health = node.health().unwrap();
    assert_eq!(health.status(), pb::health_response::Status::Serving);
    assert_eq!(health.node_id, 1);

    node.create_table("accounts").unwrap();
    assert!(!node.ensure_table("accounts").unwrap());
    assert!(node.ensure_table("other").unwrap());
    expect_kind(node.create_table("accounts"), ErrorKind::TableExists);

    let t = node.begin().unwrap();
    for i in 0..23u32 {
        node.put(
            t,
            "accounts",
            format!("k{i:02}").as_bytes(),
            format!("v{i}").as_bytes(),
        )
        .unwrap();
    }
    assert_eq!(
        node.get(t, "accounts", b"k07").unwrap(),
        Some(b"v7".to_vec())
    );
    assert_eq!(node.get(t, "accounts", b"nope").unwrap(), None);
    let cts = node.commit(t).unwrap();
    assert!(cts.0 > 0);
    // The session is gone after commit.
    expect_kind(node.get(t, "accounts", b"k07"), ErrorKind::BadRequest);

    let t = node.begin().unwrap();
    let all = node.scan(
        t,
        "accounts",
        (Bound::Unbounded, Bound::Unbounded),
        false,
        None,
    );
    let all = all.unwrap();
    assert_eq!(
        all.len(),
        23,
        "the client continues scans the server cut at 5 rows"
    );
    assert_eq!(all[22], (b"k22".to_vec(), b"v22".to_vec()));
    let range = node
        .scan(
            t,
            "accounts",
            (Bound::Excluded(b"k03"), Bound::Included(b"k06")),
            false,
            None,
        )
        .unwrap();
    assert_eq!(keys(&range), ["k04", "k05", "k06"]);
    let rev = node
        .scan(
            t,
            "accounts",
            (Bound::Unbounded, Bound::Excluded(b"k20")),
            true,
            Some(7),
        )
        .unwrap();
    assert_eq!(
        keys(&rev),
        ["k19", "k18", "k17", "k16", "k15", "k14", "k13"]
    );
    // One raw call shows the server's cap.
    let raw = node
        .call(|mut cl| async move {
            cl.scan(pb::ScanRequest {
                session: t.handle().to_vec(),
                table: "accounts".into(),
                ..Default::default()
            })
            .await
        })
        .unwrap()
        .into_inner();
    assert_eq!(raw.rows.len(), 5);
    assert!(raw.truncated);

    assert!(node.delete(t, "accounts", b"k00").unwrap());
    assert!(!node.delete(t, "accounts", b"k00").unwrap());
    node.put(t, "accounts", b"k01", b"changed").unwrap();
    node.commit(t).unwrap();

    let t = node.begin().unwrap();
    assert_eq!(node.get(t, "accounts", b"k00").unwrap(), None);
    assert_eq!(
        node.get(t, "accounts", b"k01").unwrap(),
        Some(b"changed".to_vec())
    );
    node.put(t, "accounts", b"k02", b"never").unwrap();
    node.abort(t).unwrap();
    let t = node
        .begin_with(compute_node::txn::Isolation::ReadCommitted)
        .unwrap();
    assert_eq!(
        node.get(t, "accounts", b"k02").unwrap(),
        Some(b"v2".to_vec())
    );
    node.commit(t).unwrap();

    let st = node.cluster_status().unwrap();
    assert_eq!(st.node_id, 1);
    assert!(st.epoch > 0);
    assert!(st.lease_ms > 0 && st.lease_remaining_ms > 0, "{st:?}");
    assert_eq!(st.validation, "batched");
    assert_eq!(st.lock_mode, "lazy");
    assert_eq!(st.storage.len(), 1);
    assert_eq!(st.buffer_pool.unwrap().capacity, 1024);
    let engine = st.engine.unwrap();
    assert!(engine.committed >= 3, "{engine:?}");
    let sessions = st.sessions.unwrap();
    assert_eq!(sessions.open, 0);
    assert_eq!(sessions.begun, 4);
    assert_eq!(sessions.committed, 3);
    assert_eq!(sessions.aborted, 1);
    assert!(st.coherence.unwrap().round_trips > 0);

    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains("compute_grpc_sessions_committed_total 3\n"),
        "{metrics}"
    );
    assert!(metrics.contains("compute_pool_frames 1024\n"), "{metrics}");
}

#[test]
fn conflicts_are_retryable() {
    let c = cluster();
    let gtm = c.gtm_endpoint().to_string();
    let server = Server::start(&write_config_via(
        &c,
        1,
        "",
        &gtm,
        "wait_policy = \"wait_die\"",
    ));
    let node = server.connect();
    node.create_table("t").unwrap();

    // Wait-die: the younger writer of a row an older one holds dies.
    let older = node.begin().unwrap();
    let younger = node.begin().unwrap();
    node.put(older, "t", b"row", b"older").unwrap();
    let e = expect_kind(
        node.put(younger, "t", b"row", b"younger"),
        ErrorKind::Conflict,
    );
    assert!(e.is_retryable());
    assert_eq!(e.code, tonic::Code::Aborted);
    // The failed transaction stays open until the client aborts it, but is good for
    // nothing else: its later calls fail with a retryable conflict too.
    expect_kind(node.get(younger, "t", b"row"), ErrorKind::Conflict);
    node.abort(younger).unwrap();
    node.commit(older).unwrap();

    // First updater wins: a write to a row committed after the snapshot conflicts.
    let stale = node.begin().unwrap();
    let fresh = node.begin().unwrap();
    node.put(fresh, "t", b"row", b"fresh").unwrap();
    node.commit(fresh).unwrap();
    let e = expect_kind(node.put(stale, "t", b"row", b"stale"), ErrorKind::Conflict);
    assert!(e.is_retryable());
    node.abort(stale).unwrap();

    // Clients that retry on retryable errors serialize: concurrent increments add up.
    let node = Arc::new(node);
    let t = node.begin().unwrap();
    node.put(t, "t", b"counter", b"0").unwrap();
    node.commit(t).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let node = node.clone();
            std::thread::spawn(move || {
                let mut retries = 0;
                for _ in 0..10 {
                    loop {
                        let t = node.begin().unwrap();
                        let r = (|| {
                            let v = node.get(t, "t", b"counter")?.unwrap();
                            let n: u64 = String::from_utf8(v).unwrap().parse().unwrap();
                            node.put(t, "t", b"counter", (n + 1).to_string().as_bytes())?;
                            node.commit(t)
                        })();
                        match r {
                            Ok(_) => break,
                            Err(e) if e.is_retryable() => {
                                retries += 1;
                                let _ = node.abort(t);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                retries
            })
        })
        .collect();
    let retries: u32 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!("{retries} retries");
    let t = node.begin().unwrap();
    assert_eq!(node.get(t, "t", b"counter").unwrap(), Some(b"40".to_vec()));
    node.commit(t).unwrap();
    let st = node.cluster_status().unwrap();
    assert!(st.engine.unwrap().conflicts >= 2);
    assert_eq!(st.sessions.unwrap().open, 0);
}

/// `GetForUpdate`: a current read that waits for the row's writer and whose write after
/// it never loses first-updater-wins; the same interleaving with `Get` conflicts.
#[test]
fn locking_reads_over_grpc() {
    let c = cluster();
    let server = Server::start(&write_config(&c, 1, ""));
    let node = Arc::new(server.connect());
    node.create_table("t").unwrap();
    let t = node.begin().unwrap();
    node.put(t, "t", b"row", b"v1").unwrap();
    node.commit(t).unwrap();

    let stale = node.begin().unwrap();
    let fresh = node.begin().unwrap();
    node.put(fresh, "t", b"row", b"v2").unwrap();
    node.commit(fresh).unwrap();
    assert_eq!(node.get(stale, "t", b"row").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(
        node.get_for_update(stale, "t", b"row").unwrap(),
        Some(b"v2".to_vec()),
        "the newest commit, newer than the snapshot"
    );
    node.put(stale, "t", b"row", b"v3").unwrap();
    node.commit(stale).unwrap();

    // A holder makes a locking reader wait, then hands it its commit.
    let holder = node.begin().unwrap();
    assert_eq!(
        node.get_for_update(holder, "t", b"row").unwrap(),
        Some(b"v3".to_vec())
    );
    let waiter = node.begin().unwrap();
    let n = node.clone();
    let h = std::thread::spawn(move || n.get_for_update(waiter, "t", b"row"));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!h.is_finished(), "the locking read waits for the holder");
    node.put(holder, "t", b"row", b"v4").unwrap();
    node.commit(holder).unwrap();
    assert_eq!(h.join().unwrap().unwrap(), Some(b"v4".to_vec()));
    node.put(waiter, "t", b"row", b"v5").unwrap();
    node.commit(waiter).unwrap();
    let t = node.begin().unwrap();
    assert_eq!(node.get(t, "t", b"row").unwrap(), Some(b"v5".to_vec()));
    node.commit(t).unwrap();

    // Bad input: an unknown table, a session that does not exist.
    let t = node.begin().unwrap();
    expect_kind(
        node.get_for_update(t, "nope", b"row"),
        ErrorKind::NoSuchTable,
    );
    node.abort(t).unwrap();
    let e = node
        .get_for_update(RemoteTxn::from_parts(TxnId(u64::MAX), [7; 16]), "t", b"row")
        .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
}

#[test]
fn bad_input_is_invalid_argument_and_the_server_keeps_serving() {
    let c = cluster();
    let server = Server::start(&write_config(&c, 1, ""));
    let node = server.connect();
    node.create_table("t").unwrap();
    let unknown = RemoteTxn::from_parts(TxnId(0xdead_beef_0000), [0xab; 16]);
    let zero = RemoteTxn::from_parts(TxnId(0), [0; 16]);
    // The kind travels in a trailer, beside the code.
    let raw = node
        .call(|mut cl| async move {
            cl.get(pb::GetRequest {
                session: unknown.handle().to_vec(),
                table: "t".into(),
                key: b"k".to_vec(),
            })
            .await
        })
        .unwrap_err();
    assert_eq!(raw.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        raw.metadata()
            .get(pb::ERROR_KIND_KEY)
            .unwrap()
            .to_str()
            .unwrap(),
        "bad_request"
    );
    assert!(raw.message().contains("unknown session"), "{raw:?}");
    // A handle of the wrong length is bad input too.
    let short = node
        .call(|mut cl| async move {
            cl.commit(pb::CommitRequest {
                session: vec![1, 2, 3],
            })
            .await
        })
        .map_err(RemoteError::from);
    expect_kind(short, ErrorKind::BadRequest);
    expect_kind(node.get(unknown, "t", b"k"), ErrorKind::BadRequest);
    expect_kind(node.put(zero, "t", b"k", b"v"), ErrorKind::BadRequest);
    expect_kind(node.delete(unknown, "t", b"k"), ErrorKind::BadRequest);
    expect_kind(
        node.scan(
            unknown,
            "t",
            (Bound::Unbounded, Bound::Unbounded),
            false,
            None,
        ),
        ErrorKind::BadRequest,
    );
    expect_kind(node.commit(unknown), ErrorKind::BadRequest);
    expect_kind(node.abort(zero), ErrorKind::BadRequest);
    expect_kind(node.create_table(""), ErrorKind::BadRequest);
    expect_kind(node.create_table(&"x".repeat(300)), ErrorKind::BadRequest);
    let bad_isolation = node
        .call(|mut cl| async move { cl.begin(pb::BeginRequest { isolation: 99 }).await })
        .map_err(RemoteError::from);
    expect_kind(bad_isolation, ErrorKind::BadRequest);

    let t = node.begin().unwrap();
    expect_kind(node.get(t, "", b"k"), ErrorKind::BadRequest);
    expect_kind(node.get(t, "missing", b"k"), ErrorKind::NoSuchTable);
    expect_kind(node.put(t, "t", &[7u8; 5000], b"v"), ErrorKind::BadRequest);
    expect_kind(
        node.put(t, "t", b"k", &[7u8; 100_000]),
        ErrorKind::BadRequest,
    );
    expect_kind(
        node.scan(
            t,
            "t",
            (Bound::Included(&[1u8; 5000][..]), Bound::Unbounded),
            false,
            None,
        ),
        ErrorKind::BadRequest,
    );
    // None of that hurt the transaction or the server.
    node.put(t, "t", b"k", b"v").unwrap();
    node.commit(t).unwrap();
    expect_kind(node.commit(t), ErrorKind::BadRequest);
    expect_kind(node.abort(t), ErrorKind::BadRequest);

    // Garbage bytes on the gRPC port do not take the server down either.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        let _ = s.write_all(b"\x00\x01garbage that is not HTTP/2\r\n\r\n");
    }
    let node2 = server.connect();
    let t = node2.begin().unwrap();
    assert_eq!(node2.get(t, "t", b"k").unwrap(), Some(b"v".to_vec()));
    node2.commit(t).unwrap();
    assert_eq!(
        node2.health().unwrap().status(),
        pb::health_response::Status::Serving
    );
}

#[test]
fn idle_sessions_are_aborted() {
    let c = cluster();
    let server = Server::start(&write_config(&c, 1, "session_idle_timeout_ms = 300"));
    let node = server.connect();
    node.create_table("t").unwrap();
    let idle = node.begin().unwrap();
    node.put(idle, "t", b"row", b"idle").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let e = expect_kind(node.get(idle, "t", b"row"), ErrorKind::Conflict);
    assert!(e.is_retryable() && e.message.contains("idle"), "{e}");
    // Its write intent no longer blocks anyone (an open older writer would make this
    // younger one die).
    let t = node.begin().unwrap();
    assert_eq!(node.get(t, "t", b"row").unwrap(), None);
    node.put(t, "t", b"row", b"busy").unwrap();
    node.commit(t).unwrap();
    let st = node.cluster_status().unwrap().sessions.unwrap();
    assert_eq!(st.idle_aborted, 1);
    assert_eq!(st.open, 0);
}

#[test]
fn sigterm_aborts_open_sessions_and_exits_zero() {
    let c = cluster();
    let config = write_config(&c, 1, "");
    let mut server = Server::start(&config);
    let node = server.connect();
    node.create_table("t").unwrap();
    let t = node.begin().unwrap();
    node.put(t, "t", b"committed", b"yes").unwrap();
    node.commit(t).unwrap();
    let open = node.begin().unwrap();
    node.put(open, "t", b"open", b"never committed").unwrap();

    server.sigterm();
    let status = server.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}; log:\n{}", server.log_text());
    let log = strip_ansi(&server.log_text());
    assert!(log.contains("open transactions aborted aborted=1"), "{log}");
    assert!(log.contains("clean shutdown"), "{log}");
    // Calls after the shutdown fail as transport errors, not hangs.
    expect_kind(node.get(open, "t", b"open"), ErrorKind::Transport);
    drop(node);

    // A new incarnation of the node sees the committed row and not the aborted one, and
    // may write that row (wait-die would kill this younger writer if the old one were
    // still in progress).
    let server = Server::start(&config);
    let node = server.connect();
    let t = node.begin().unwrap();
    assert_eq!(
        node.get(t, "t", b"committed").unwrap(),
        Some(b"yes".to_vec())
    );
    assert_eq!(node.get(t, "t", b"open").unwrap(), None);
    node.put(t, "t", b"open", b"now").unwrap();
    node.commit(t).unwrap();
}

#[test]
fn bad_config_exits_nonzero_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let path = dir.path().join("compute.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).to_string(),
            path,
        )
    };
    let (st, err, path) = run("listen = \"127.0.0.1:0\"\nbogus_key = 1\n");
    assert!(!st.success());
    assert!(err.contains("bogus_key"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");

    let (st, err, _) = run("[node]\nbuffer_framez = 16\n");
    assert!(!st.success());
    assert!(err.contains("buffer_framez"), "{err}");

    let (st, err, path) = run("[node]\nnode_id = 0\n");
    assert!(!st.success());
    assert!(
        err.contains("node.node_id") && err.contains(&path.display().to_string()),
        "{err}"
    );

    let (st, err, _) = run("session_idle_timeout_ms = \"soon\"\n");
    assert!(!st.success());
    assert!(err.contains("session_idle_timeout_ms"), "{err}");

    // The example config is what the binary prints, and it loads.
    let out = Command::new(BIN)
        .arg("--print-example-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, compute_server::config::EXAMPLE);
    let mut cfg: compute_server::config::ServiceConfig =
        common::config::parse(&text, Path::new("example.toml")).unwrap();
    // It names no client authentication: the one choice an operator must make.
    assert!(cfg.validate().is_err());
    cfg.insecure = true;
    cfg.validate().unwrap();
    let (st, err, _) = run("listen = \"127.0.0.1:0\"\n");
    assert!(!st.success());
    assert!(err.contains("no client authentication"), "{err}");

    // A cluster that is not there: a clear error, non-zero exit.
    let (st, err, _) = run(&format!(
        "listen = \"127.0.0.1:0\"\ninsecure = true\n[node]\ngtm = \"tcp://127.0.0.1:1\"\nkey_file = {:?}\n",
        dir.path().join("missing.key").display().to_string()
    ));
    assert!(!st.success());
    assert!(err.contains("missing.key"), "{err}");
}

/// The TPC-C stored procedures: refused before the schema exists, then a load through
/// the service (a NOT SPEC item count), one call per transaction type, the consistency
/// checks, and bad input refused as INVALID_ARGUMENT while the server keeps serving.
#[test]
fn tpcc_stored_procedures_over_grpc() {
    use tpcc_workload::client::TpccClient;
    use tpcc_workload::random::NuRandConstants;
    use tpcc_workload::transactions::*;
    use tpcc_workload::wire::Call;

    let c = cluster();
    let server = Server::start(&write_config(&c, 1, ""));
    let node = server.connect();
    let procs = TpccClient::new(&node);
    let call = |input: Input| Call {
        input,
        now_us: 0,
        history_key: (1, 1),
        mode: Mode::default(),
    };
    let stock_level = || {
        call(Input::StockLevel(StockLevelInput {
            w: 1,
            d: 1,
            threshold: 15,
        }))
    };
    expect_kind(procs.run(&stock_level()), ErrorKind::NoSuchTable);

    procs.create_schema().unwrap();
    procs.create_schema().unwrap(); // idempotent
    let c_load = NuRandConstants {
        c_last: 100,
        c_id: 200,
        ol_i_id: 300,
    };
    let rows = procs
        .load(common::proto::tpcc::LoadRequest {
            warehouses: 1,
            items: 200,
            from_warehouse: 1,
            to_warehouse: 1,
            load_items: true,
            c_load: Some(tpcc_workload::wire::nurand_to_pb(&c_load)),
            seed: 5,
            threads: 2,
        })
        .unwrap();
    assert!(rows > 400_000, "{rows} rows");
    let checks = procs.check(1, false).unwrap();
    assert_eq!(checks.len(), 12);
    assert!(checks.iter().all(|c| !c.failed()), "{checks:?}");

    let lines = |last: u32| -> Vec<OrderLineInput> {
        (1..=5)
            .map(|i| OrderLineInput {
                i_id: if i == 5 { last } else { i * 10 },
                supply_w_id: 1,
                quantity: 3,
            })
            .collect()
    };
    let order = |last| {
        call(Input::NewOrder(NewOrderInput {
            w: 1,
            d: 2,
            c: 7,
            lines: lines(last),
            rollback: false,
        }))
    };
    let Outcome::Ordered { o_id } = procs.run(&order(50)).unwrap() else {
        panic!("New-Order should answer its order id")
    };
    assert_eq!(o_id, 3001, "the first order after the initial 3,000");
    // An unused item rolls the whole transaction back (clause 2.4.2.3).
    assert_eq!(procs.run(&order(201)).unwrap(), Outcome::RolledBack);
    let pay = procs.run(&call(Input::Payment(PaymentInput {
        w: 1,
        d: 2,
        c_w: 1,
        c_d: 2,
        customer: CustomerSel::Id(7),
        amount: 12_345,
    })));
    assert_eq!(pay.unwrap(), Outcome::Done);
    let status = procs.run(&call(Input::OrderStatus(OrderStatusInput {
        w: 1,
        d: 2,
        customer: CustomerSel::Id(7),
    })));
    assert_eq!(status.unwrap(), Outcome::Done);
    let delivered = procs.run(&call(Input::Delivery(DeliveryInput { w: 1, carrier: 3 })));
    assert_eq!(delivered.unwrap(), Outcome::Delivered { skipped: 0 });
    assert!(matches!(
        procs.run(&stock_level()).unwrap(),
        Outcome::LowStock { .. }
    ));
    let checks = procs.check(1, true).unwrap();
    assert!(checks.iter().all(|c| !c.failed()), "{checks:?}");

    // Out-of-domain input and a warehouse that was never loaded.
    let bad = call(Input::Delivery(DeliveryInput { w: 1, carrier: 11 }));
    expect_kind(procs.run(&bad), ErrorKind::BadRequest);
    let nowhere = call(Input::StockLevel(StockLevelInput {
        w: 9,
        d: 1,
        threshold: 15,
    }));
    expect_kind(procs.run(&nowhere), ErrorKind::BadRequest);
    let bad_load = common::proto::tpcc::LoadRequest {
        warehouses: 1,
        items: 10,
        from_warehouse: 2,
        to_warehouse: 1,
        ..Default::default()
    };
    expect_kind(procs.load(bad_load), ErrorKind::BadRequest);
    // Still serving.
    assert!(matches!(
        procs.run(&stock_level()).unwrap(),
        Outcome::LowStock { .. }
    ));
}

#[test]
fn resolve_outcome_answers_committed_aborted_and_unknown_ids_over_grpc() {
    let c = cluster();
    let server = Server::start(&write_config(&c, 1, ""));
    let node = server.connect();
    node.create_table("t").unwrap();

    let t = node.begin().unwrap();
    node.put(t, "t", b"c", b"1").unwrap();
    let cts = node.commit(t).unwrap();
    assert_eq!(
        node.resolve_outcome(t.id).unwrap(),
        Resolved::Committed(cts)
    );

    let t = node.begin().unwrap();
    node.put(t, "t", b"a", b"1").unwrap();
    node.abort(t).unwrap();
    assert_eq!(node.resolve_outcome(t.id).unwrap(), Resolved::Aborted);

    // Another node's transaction, still open there: decided (aborted) by resolving.
    let other = c.start_compute_node(2).unwrap();
    let tt = other.table("t").unwrap();
    let mut open = other.begin().unwrap();
    open.put(&tt, b"o", b"1").unwrap();
    assert_eq!(node.resolve_outcome(open.id()).unwrap(), Resolved::Aborted);
    assert!(open.commit().unwrap_err().is_retryable());

    expect_kind(node.resolve_outcome(TxnId(0)), ErrorKind::BadRequest);
    expect_kind(node.resolve_outcome(TxnId(1 << 50)), ErrorKind::BadRequest);
}

#[test]
fn an_unknown_commit_outcome_is_its_own_status_and_resolve_outcome_decides_it() {
    // A long lease: holding the node's requests for a few seconds must not expire it.
    let c = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 0,
        transport: Transport::Tcp,
        pages_per_storage_node: 1 << 16,
        storage_memory: 64 << 20,
        lease: Duration::from_secs(60),
        ..ClusterOptions::default()
    })
    .expect("start storage + GTM");
    let gtm = Proxy::start(&c.gtm_endpoint().to_string());
    let server = Server::start(&write_config_via(
        &c,
        1,
        "",
        &gtm.endpoint(),
        "rpc_timeout_s = 1",
    ));
    let node = server.connect();
    node.create_table("t").unwrap();
    let direct = c.start_compute_node(2).unwrap();

    // 1. The commit request is held in the network: no answer within the GTM client's
    // timeout. Resolving from the same server cannot reach the GTM either: still
    // unknown. When the network comes back the request arrives (late) and commits.
    let t1 = node.begin().unwrap();
    node.put(t1, "t", b"late", b"1").unwrap();
    gtm.hold(Direction::ToServer);
    let e = expect_kind(node.commit(t1), ErrorKind::OutcomeUnknown);
    assert_eq!(e.code, tonic::Code::Unknown);
    assert!(e.is_unknown() && !e.is_retryable(), "{e}");
    assert_eq!(e.txn, Some(t1.id), "{e}");
    let e = expect_kind(node.resolve_outcome(t1.id), ErrorKind::OutcomeUnknown);
    assert!(e.is_unknown(), "{e}");
    gtm.release(Direction::ToServer);
    let cts = match node.resolve_outcome(t1.id).unwrap() {
        Resolved::Committed(cts) => cts,
        Resolved::Aborted => panic!("the late commit arrived first on its connection"),
    };
    assert_eq!(
        direct.resolve_outcome(t1.id).unwrap(),
        Resolved::Committed(cts)
    );
    let r = node.begin().unwrap();
    assert_eq!(node.get(r, "t", b"late").unwrap(), Some(b"1".to_vec()));
    node.commit(r).unwrap();

    // 2. Held again, but another node resolves it before the request arrives: aborted,
    // and the late commit loses.
    let t2 = node.begin().unwrap();
    node.put(t2, "t", b"lost", b"1").unwrap();
    gtm.hold(Direction::ToServer);
    let e = expect_kind(node.commit(t2), ErrorKind::OutcomeUnknown);
    assert_eq!(e.txn, Some(t2.id));
    assert_eq!(direct.resolve_outcome(t2.id).unwrap(), Resolved::Aborted);
    gtm.release(Direction::ToServer);
    assert_eq!(node.resolve_outcome(t2.id).unwrap(), Resolved::Aborted);
    let r = node.begin().unwrap();
    assert_eq!(node.get(r, "t", b"lost").unwrap(), None);
    node.commit(r).unwrap();
    drop(direct);
}

// ---- Client security -----------------------------------------------------------------

/// An outsider without credentials, or with a wrong token, is refused with
/// UNAUTHENTICATED before anything runs: no session opens, nothing is written, and the
/// refusals are counted.
#[test]
fn calls_without_credentials_or_with_a_wrong_token_are_refused() {
    let c = cluster();
    let server = Server::start(&write_config(&c, 1, ""));
    let alice = server.connect();
    alice.create_table("t").unwrap();
    for outsider in [
        server.connect_with(&ConnectOptions::default()),
        server.connect_with(&ConnectOptions::token("not-a-token-of-this-server")),
    ] {
        let e = expect_kind(outsider.begin(), ErrorKind::Unauthenticated);
        assert_eq!(e.code, tonic::Code::Unauthenticated);
        assert!(e.message.contains("credentials"), "{e}");
        assert!(!e.is_retryable());
        expect_kind(outsider.health(), ErrorKind::Unauthenticated);
        expect_kind(outsider.create_table("evil"), ErrorKind::Unauthenticated);
        // Even with a real handle of alice's.
        let t = alice.begin().unwrap();
        expect_kind(outsider.abort(t), ErrorKind::Unauthenticated);
        alice.put(t, "t", b"k", b"alice").unwrap();
        alice.commit(t).unwrap();
    }
    let st = alice.cluster_status().unwrap();
    let sessions = st.sessions.unwrap();
    assert_eq!(sessions.open, 0);
    assert!(sessions.auth_failures >= 8, "{sessions:?}");
    alice
        .create_table("evil")
        .expect("the outsiders created nothing");
    let t = alice.begin().unwrap();
    assert_eq!(alice.get(t, "t", b"k").unwrap(), Some(b"alice".to_vec()));
    alice.commit(t).unwrap();
    assert!(
        server
            .log_text()
            .contains("unauthenticated gRPC calls refused"),
        "refusals are logged"
    );
}

/// Handles are random and bound to their client: bob naming alice's handle hears what
/// a handle that never existed hears, and cannot touch her transaction. Each client has
/// its own session cap.
#[test]
fn a_client_cannot_use_another_clients_session() {
    let c = cluster();
    let server = Server::start(&write_config(&c, 1, "max_sessions_per_client = 2"));
    let alice = server.connect();
    let bob = server.connect_with(&ConnectOptions::token(BOB));
    alice.create_table("t").unwrap();
    let a = alice.begin().unwrap();
    let a2 = alice.begin().unwrap();
    assert_ne!(a.handle(), a2.handle());
    assert_ne!(
        a.handle()[..8],
        a.id.0.to_le_bytes(),
        "the handle is not the txn id"
    );
    alice.put(a, "t", b"k", b"alice").unwrap();
    let never = RemoteTxn::from_parts(a.id, [0x5a; 16]);
    let theirs = expect_kind(bob.get(a, "t", b"k"), ErrorKind::BadRequest);
    let nobodys = expect_kind(bob.get(never, "t", b"k"), ErrorKind::BadRequest);
    assert_eq!(
        theirs.message, nobodys.message,
        "indistinguishable from unknown"
    );
    expect_kind(bob.put(a, "t", b"k", b"bob"), ErrorKind::BadRequest);
    expect_kind(bob.commit(a), ErrorKind::BadRequest);
    expect_kind(bob.abort(a), ErrorKind::BadRequest);
    // Per-client cap: alice has two; bob still gets his.
    expect_kind(alice.begin(), ErrorKind::TooManySessions);
    let b = bob.begin().unwrap();
    bob.abort(b).unwrap();
    // Alice's transaction is untouched.
    assert_eq!(alice.get(a, "t", b"k").unwrap(), Some(b"alice".to_vec()));
    alice.commit(a).unwrap();
    alice.abort(a2).unwrap();
    let t = bob.begin().unwrap();
    assert_eq!(bob.get(t, "t", b"k").unwrap(), Some(b"alice".to_vec()));
    bob.commit(t).unwrap();
}

/// The client API over TLS with a test CA, token-authenticated; a plaintext client gets
/// nowhere. Mutual TLS without tokens: a certificate from the CA lets a client in, none
/// or one from another CA does not.
#[test]
fn tls_and_mutual_tls() {
    let c = cluster();
    let pki = c.dir().join("pki");
    let other = c.dir().join("other-pki");
    compute_server::tls::make_test_pki(&pki, &["localhost".into()], &["harness".into()]).unwrap();
    compute_server::tls::make_test_pki(&other, &["localhost".into()], &["intruder".into()])
        .unwrap();
    let p = |name: &str| pki.join(name).display().to_string();
    let tls_keys = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}",
        p("server.pem"),
        p("server.key")
    );
    let tls = |identity: Option<(PathBuf, PathBuf)>| common::compute::ClientTls {
        ca: pki.join("ca.pem"),
        domain: Some("localhost".into()),
        identity,
    };

    // TLS + tokens.
    let server = Server::start(&write_config(&c, 1, &tls_keys));
    let node = server.connect_with(&ConnectOptions::token(ALICE).with_tls(tls(None)));
    node.create_table("t").unwrap();
    let t = node.begin().unwrap();
    node.put(t, "t", b"k", b"over tls").unwrap();
    node.commit(t).unwrap();
    let refused = |r: Result<RemoteTxn, RemoteError>| {
        let e = r.expect_err("refused");
        assert!(
            matches!(e.kind, ErrorKind::Transport | ErrorKind::Unauthenticated),
            "{e}"
        );
    };
    refused(
        RemoteNode::connect_with(&server.addr, &ConnectOptions::token(ALICE))
            .and_then(|n| n.begin()),
    );
    // A TLS client that does not trust the server's CA.
    let wrong_ca = common::compute::ClientTls {
        ca: other.join("ca.pem"),
        ..tls(None)
    };
    refused(
        RemoteNode::connect_with(
            &server.addr,
            &ConnectOptions::token(ALICE).with_tls(wrong_ca),
        )
        .and_then(|n| n.begin()),
    );
    drop(node);
    drop(server);

    // Mutual TLS, no tokens.
    let mtls = format!("{tls_keys}\ntls_client_ca_file = {:?}", p("ca.pem"));
    let server = Server::start(&write_config(
        &c,
        2,
        &format!("{mtls}\nclient_tokens_file = \"\""),
    ));
    let cert = Some((
        pki.join("client-harness.pem"),
        pki.join("client-harness.key"),
    ));
    let node = server.connect_with(&ConnectOptions::default().with_tls(tls(cert)));
    let t = node.begin().unwrap();
    assert_eq!(node.get(t, "t", b"k").unwrap(), Some(b"over tls".to_vec()));
    node.commit(t).unwrap();
    for identity in [
        None,
        Some((
            other.join("client-intruder.pem"),
            other.join("client-intruder.key"),
        )),
    ] {
        refused(
            RemoteNode::connect_with(
                &server.addr,
                &ConnectOptions::default().with_tls(tls(identity.clone())),
            )
            .and_then(|n| n.begin()),
        );
    }
}

/// Random requests — real and garbage handles, odd table names, oversized keys, every
/// call — answer errors, never take the server down, and leak no session.
#[test]
fn random_requests_harm_nothing_and_leak_no_session() {
    use rand::{Rng, SeedableRng};
    let c = cluster();
    let server = Server::start(&write_config(&c, 1, ""));
    let node = server.connect();
    node.create_table("t").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xF022);
    let mut open: Vec<RemoteTxn> = Vec::new();
    let mut commits = 0;
    for _ in 0..1500 {
        let txn = match rng.gen_range(0..4) {
            0 if !open.is_empty() => open[rng.gen_range(0..open.len())],
            1 => RemoteTxn::from_parts(TxnId(rng.gen()), rng.gen()),
            _ if !open.is_empty() => open[rng.gen_range(0..open.len())],
            _ => RemoteTxn::from_parts(TxnId(0), [0; 16]),
        };
        let table = match rng.gen_range(0..4) {
            0 => String::new(),
            1 => "x".repeat(rng.gen_range(1..400)),
            _ => "t".into(),
        };
        let key: Vec<u8> = (0..[0, 1, 8, 3000, 5000][rng.gen_range(0..5)])
            .map(|_| rng.gen())
            .collect();
        match rng.gen_range(0..9) {
            0 => {
                let iso = rng.gen_range(0..4);
                let r = node.call(|mut cl| async move {
                    cl.begin(pb::BeginRequest { isolation: iso }).await
                });
                if let Ok(r) = r {
                    let r = r.into_inner();
                    open.push(RemoteTxn::from_parts(
                        TxnId(r.txn_id),
                        r.session.try_into().unwrap(),
                    ));
                }
            }
            1 => drop(node.get(txn, &table, &key)),
            2 => drop(node.get_for_update(txn, &table, &key)),
            3 => drop(node.put(txn, &table, &key, &key)),
            4 => drop(node.delete(txn, &table, &key)),
            5 => drop(node.scan(
                txn,
                &table,
                (Bound::Included(&key[..]), Bound::Unbounded),
                rng.gen(),
                Some(rng.gen_range(0..50)),
            )),
            6 => {
                if node.commit(txn).is_ok() {
                    commits += 1;
                }
                open.retain(|t| *t != txn);
            }
            7 => {
                let _ = node.abort(txn);
                open.retain(|t| *t != txn);
            }
            _ => {
                let garbage: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
                let _ = node.call(|mut cl| async move {
                    cl.commit(pb::CommitRequest { session: garbage }).await
                });
            }
        }
    }
    for t in open.drain(..) {
        // A session may have ended already (a failed commit ends it).
        let _ = node.abort(t);
    }
    let st = node.cluster_status().unwrap();
    assert_eq!(st.sessions.unwrap().open, 0, "no session leaked");
    assert_eq!(
        node.health().unwrap().status,
        pb::health_response::Status::Serving as i32
    );
    eprintln!("{commits} random transactions committed");
}
