//! The `storage-node` binary as operators meet it: `--help`, bad configs, an unwritable
//! data directory, SIGTERM.

mod support;

use std::process::{Command, Stdio};
use storage_node::config::KEYS;
use support::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn help_documents_every_key() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    for k in KEYS {
        assert!(
            text.contains(&format!("[key: {k}]")),
            "--help lacks {k}:\n{text}"
        );
        assert!(
            text.contains(&format!("--{}", k.replace('_', "-"))),
            "no flag for {k}"
        );
    }
    let (code, example) = run(&["--print-config"]);
    assert_eq!(code, 0);
    for k in KEYS {
        assert!(example.contains(&format!("{k} = ")));
    }
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "memroy = \"1GiB\"\n").unwrap();
    let (code, text) = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        text.contains("memroy") && text.contains("node.toml"),
        "{text}"
    );
    std::fs::write(&cfg, "memory = \"1 bucket\"\n").unwrap();
    let (code, text) = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("memory"), "{text}");
    std::fs::write(&cfg, "page_count = 10\n").unwrap();
    let (code, text) = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("key_file"), "{text}");
    let (code, text) = run(&["--config", "/nonexistent/x.toml"]);
    assert_eq!(code, 2);
    assert!(text.contains("/nonexistent/x.toml"), "{text}");
}

#[test]
fn unwritable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key_file(dir.path());
    // A regular file where the data directory should be.
    let bad = dir.path().join("not-a-dir");
    std::fs::write(&bad, "x").unwrap();
    let (code, text) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        bad.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        text.contains("data directory") && text.contains("not-a-dir"),
        "{text}"
    );
}

#[test]
fn sigterm_flushes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key_file(dir.path());
    let data = dir.path().join("data");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--checkpoint-interval-ms",
        "3600000",
    ];
    let node = NodeProc::spawn(&args);
    let c = client(&node.endpoint, 1, 1);
    let p = c.allocate_pages(1).unwrap()[0];
    c.lock_exclusive(p).unwrap();
    let cur = c.read_pages(&[p]).unwrap().remove(0);
    let next = change(&c, &cur);
    drop(c);
    assert!(node.sigterm().success());
    // Flushed: the page file alone holds the image (redo streams were checkpointed).
    let pf = storage_node::page_file::PageFile::open(&data.join("pages")).unwrap();
    let slots = pf.read_slots(0, p).unwrap();
    assert!(slots.iter().any(|s| s.version() == next.version()));
    let node = NodeProc::spawn(&args);
    let c = client(&node.endpoint, 1, 2);
    assert_same(&c.read_pages(&[p]).unwrap()[0], &next);
}

/// One HTTP GET of `addr`, the whole response as text.
fn http_get(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `name` in Prometheus text `text`.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_listen_serves_the_metrics_rpc_text() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key_file(dir.path());
    let data = dir.path().join("data");
    // A port free a moment ago (the node logs, but does not print, a port-0 address).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let node = NodeProc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--metrics-listen",
        &addr,
    ]);
    let c = client(&node.endpoint, 1, 1);
    c.allocate_pages(3).unwrap();
    let r = http_get(&addr);
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("Content-Type: text/plain; version=0.0.4\r\n"),
        "{r}"
    );
    let body = r.split_once("\r\n\r\n").unwrap().1;
    // Counters and the gauges of the Metrics RPC, with live values.
    assert!(
        body.contains("# TYPE storage_rpc_requests counter\n"),
        "{body}"
    );
    assert!(sample(body, "storage_rpc_requests").unwrap() >= 1, "{body}");
    assert_eq!(sample(body, "storage_pages_allocated"), Some(3), "{body}");
    assert!(sample(body, "storage_frames").unwrap() > 0, "{body}");
    drop(c);
    assert!(node.sigterm().success());
    // The endpoint went away with the node.
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

#[test]
fn metrics_listen_that_is_not_an_address_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key_file(dir.path());
    let (code, text) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--metrics-listen",
        "no-port-here",
    ]);
    assert_eq!(code, 2);
    assert!(text.contains("metrics_listen"), "{text}");
}
