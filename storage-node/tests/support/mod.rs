//! Helpers shared by the storage-node integration tests.
#![allow(dead_code)]

use common::fabric::{ClientOptions, ClusterKey, Endpoint};
use common::ids::{Epoch, Lsn, NodeId, PageId, PageVersion};
use common::storage::page::{Page, PAGE_HEADER_LEN, PAGE_SIZE};
use common::storage::redo::{RedoBody, RedoRecord};
use common::storage::StorageClient;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use storage_node::config::{ByteSize, StorageConfig};
use storage_node::StorageNode;

pub const KEY: &str = "storage-test-cluster-key-0123456789";

pub fn key() -> ClusterKey {
    ClusterKey::from_material(KEY.as_bytes()).unwrap()
}

pub fn opts() -> ClientOptions {
    ClientOptions::new(key()).timeout(Duration::from_secs(20))
}

pub fn config(dir: &Path, frames: u32) -> StorageConfig {
    StorageConfig {
        transport: common::fabric::Transport::Shm,
        listen: dir.join("s.sock").display().to_string(),
        data_dir: dir.join("data"),
        memory: ByteSize(u64::from(frames) * 8192),
        first_page: 1000,
        page_count: 100_000,
        key_file: PathBuf::new(),
        checkpoint_interval_ms: 100,
        redo_segment: ByteSize(1 << 20),
        redo_retain: ByteSize(4 << 20),
        metrics_listen: String::new(),
        notice_slots: 64,
        reclaim_grace_ms: 0,
    }
}

/// An in-process node over shm.
pub fn start(cfg: &StorageConfig) -> StorageNode {
    let ep = cfg.endpoint().unwrap();
    let _ = std::fs::remove_file(cfg.dir_sock());
    StorageNode::start_with_key(cfg, key(), &ep).unwrap()
}

pub trait SockPath {
    fn dir_sock(&self) -> PathBuf;
}
impl SockPath for StorageConfig {
    fn dir_sock(&self) -> PathBuf {
        PathBuf::from(&self.listen)
    }
}

pub fn client(ep: &Endpoint, node: u32, epoch: u32) -> StorageClient {
    StorageClient::connect(ep, &opts(), NodeId(node), Epoch(epoch)).unwrap()
}

/// The body byte at `i` of page `p` at version `v` (deterministic test content).
pub fn pattern(p: PageId, v: PageVersion, i: usize) -> u8 {
    (p.0.wrapping_mul(31) ^ v.0.wrapping_mul(7) ^ (i as u64 / 64)) as u8
}

/// Checks that a page's body is the pattern for its own header.
pub fn check_content(page: &Page) {
    let h = page.verify().expect("page verifies");
    if h.version == PageVersion(0) {
        assert!(
            page.body().iter().all(|b| *b == 0),
            "empty page has content"
        );
        return;
    }
    for i in (PAGE_HEADER_LEN..PAGE_SIZE).step_by(61) {
        assert_eq!(
            page.as_bytes()[i],
            pattern(h.id, h.version, i),
            "page {} v{} byte {i}",
            h.id,
            h.version
        );
    }
}

/// The image of `prev`'s page at the next version, and its redo record (alternating
/// full images and diffs).
pub fn next_version(prev: &Page) -> (Page, RedoRecord) {
    let h = prev.header();
    let v = PageVersion(h.version.0 + 1);
    let mut next = prev.clone();
    for i in PAGE_HEADER_LEN..PAGE_SIZE {
        next.as_bytes_mut()[i] = pattern(h.id, v, i);
    }
    next.stamp(v, Lsn(0));
    let rec = if v.0.is_multiple_of(2) {
        RedoRecord::image(&next, h.version)
    } else {
        RedoRecord {
            lsn: Lsn(0),
            page: h.id,
            before: h.version,
            after: v,
            body: RedoBody::Diffs(vec![(PAGE_HEADER_LEN as u16, next.body().to_vec())]),
        }
    };
    (next, rec)
}

/// One full change: (caller holds X) append redo, force, write back. Returns the new
/// image.
pub fn change(c: &StorageClient, prev: &Page) -> Page {
    let (next, rec) = next_version(prev);
    let lsn = c.append_redo(&[rec]).unwrap();
    c.force_log(lsn).unwrap();
    c.write_back(&next).unwrap();
    next
}

/// A `storage-node` child process.
pub struct NodeProc {
    pub child: Child,
    pub endpoint: Endpoint,
}

impl NodeProc {
    pub fn spawn(args: &[&str]) -> NodeProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storage-node"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(ep) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            panic!("storage-node did not start: {line:?}");
        };
        NodeProc {
            endpoint: ep.parse().unwrap(),
            child,
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_key_file(dir: &Path) -> PathBuf {
    let p = dir.join("key");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(KEY.as_bytes()).unwrap();
    p
}

/// Same page, version and body (a replayed page carries its record's LSN in the header
/// where the writer's own copy may not).
pub fn assert_same(got: &Page, want: &Page) {
    assert_eq!((got.id(), got.version()), (want.id(), want.version()));
    assert_eq!(got.body(), want.body(), "page {} body differs", got.id());
}
