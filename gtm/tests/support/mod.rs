//! Helpers shared by the integration tests: key files, spawning the real `gtm` binary.
#![allow(dead_code)]

use common::fabric::{ClientOptions, ClusterKey, Endpoint};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

pub const KEY: &str = "gtm-test-cluster-key-0123456789";

pub fn key_file(dir: &Path) -> PathBuf {
    let p = dir.join("cluster.key");
    std::fs::write(&p, KEY).unwrap();
    p
}

pub fn opts() -> ClientOptions {
    ClientOptions::new(ClusterKey::from_material(KEY.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
}

/// A `gtm` process; killed (SIGKILL) on drop.
pub struct GtmProc {
    pub child: Child,
    pub endpoints: Vec<Endpoint>,
    pub stdout: BufReader<ChildStdout>,
}

impl GtmProc {
    /// Starts `gtm` serving `listen` with state in `data`; waits for READY.
    pub fn start(dir: &Path, data: &Path, listen: &[String], extra: &[&str]) -> GtmProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gtm"));
        for l in listen {
            cmd.arg("--listen").arg(l);
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(data)
            .arg("--cluster-key-file")
            .arg(key_file(dir))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let eps = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("gtm did not start: {line:?}"));
        let endpoints = eps.split_whitespace().map(|e| e.parse().unwrap()).collect();
        GtmProc {
            child,
            endpoints,
            stdout,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GtmProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The txn id now occupying `txn`'s slot in the status-table region (one-sided READ):
/// a value above `txn` proves its slot was reused (the region alone says `Retired`).
pub fn slot_occupant(
    client: &common::gtm::GtmClient,
    txn: common::ids::TxnId,
    capacity: u64,
) -> u64 {
    use common::gtm::{layout, STATUS_REGION};
    let r = client
        .connection()
        .post(&[common::fabric::Op::Read {
            region: STATUS_REGION,
            offset: layout::entry_offset(txn.0, capacity),
            len: layout::ENTRY_LEN as u32,
        }])
        .unwrap();
    let bytes = r.into_iter().next().unwrap().unwrap().into_bytes().unwrap();
    layout::decode_entry(&bytes)
        .expect("GTM idle: entry not torn")
        .txn
}
