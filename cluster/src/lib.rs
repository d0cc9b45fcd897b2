//! # cluster
//!
//! An **embedded cluster**: storage nodes, the GTM and compute nodes started in one
//! process, talking over the fabric (`shm` by default, `tcp` on request) exactly as
//! separate processes do. Tests, `compute-bench` and the TPC-C harness's default mode
//! use it.
//!
//! This crate exists because the design (docs/design.md) forbids service crates from
//! depending on each other: `compute-node` cannot start a storage node or a GTM, so the
//! code that starts all three lives here, above them. [`spawn`] starts the same services as separate
//! processes instead.

pub mod history_run;
pub mod spawn;

use common::fabric::{ClientOptions, ClusterKey, Endpoint, Transport};
use common::ids::PageId;
use compute_node::node::{ComputeConfig, ComputeNode};
use gtm::{Gtm, GtmOptions, StorageReleaser};
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use storage_node::config::{ByteSize, StorageConfig};
use storage_node::StorageNode;

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub compute_nodes: usize,
    pub storage_nodes: usize,
    /// Page ids each storage node owns.
    pub pages_per_storage_node: u64,
    /// Frame memory per storage node.
    pub storage_memory: u64,
    /// Buffer-pool frames per compute node.
    pub buffer_frames: usize,
    pub transport: Transport,
    /// The GTM lease (compute nodes heartbeat at a tenth of it).
    pub lease: Duration,
    /// Template for every compute node's settings (ids and endpoints are filled in).
    pub compute: ComputeConfig,
    /// Slots of each storage node's change-notice ring.
    pub notice_slots: u32,
    /// Template for every storage node's settings (transport, endpoint, data directory,
    /// memory, page range and notice slots come from the fields above).
    pub storage: StorageConfig,
    /// Template for the GTM's settings (data directory and lease come from the fields
    /// above).
    pub gtm: gtm::config::GtmConfig,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            compute_nodes: 1,
            storage_nodes: 1,
            pages_per_storage_node: 1 << 20,
            storage_memory: 256 << 20,
            buffer_frames: 16_384,
            transport: Transport::Shm,
            lease: Duration::from_secs(3),
            compute: ComputeConfig::default(),
            notice_slots: common::storage::notice::NOTICE_CAPACITY,
            storage: StorageConfig::default(),
            gtm: gtm::config::GtmConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("storage node {index}: {message}")]
    Storage { index: usize, message: String },
    #[error("GTM: {0}")]
    Gtm(String),
    #[error("compute node {index}: {message}")]
    Compute { index: usize, message: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A running embedded cluster. Dropping it shuts everything down.
pub struct EmbeddedCluster {
    /// Compute nodes, index `i` has node id `i + 1`.
    pub nodes: Vec<ComputeNode>,
    storages: Vec<StorageNode>,
    gtm: Gtm,
    key: ClusterKey,
    storage_endpoints: Vec<Endpoint>,
    gtm_endpoint: Endpoint,
    options: ClusterOptions,
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
}

/// Starts (recovering from its data directory) storage node `i` on `ep`.
fn start_storage_node(
    options: &ClusterOptions,
    dir: &Path,
    i: usize,
    key: &ClusterKey,
    ep: &Endpoint,
) -> Result<StorageNode, ClusterError> {
    let cfg = StorageConfig {
        transport: options.transport,
        listen: ep.to_string(),
        data_dir: dir.join(format!("storage-{i}")),
        memory: ByteSize(options.storage_memory),
        // Page 0 is never a valid page (trees use 0 as "no page").
        first_page: 1 + i as u64 * options.pages_per_storage_node,
        page_count: options.pages_per_storage_node,
        notice_slots: options.notice_slots,
        ..options.storage.clone()
    };
    StorageNode::start_with_key(&cfg, key.clone(), ep).map_err(|e| ClusterError::Storage {
        index: i,
        message: e.to_string(),
    })
}

fn endpoint(transport: Transport, dir: &Path, name: &str) -> Endpoint {
    match transport {
        Transport::Shm => Endpoint::Shm(dir.join(format!("{name}.sock"))),
        _ => Endpoint::Tcp("127.0.0.1:0".into()),
    }
}

/// Starts the GTM with its state in `dir/gtm`, serving `listen`.
fn start_gtm(
    dir: &Path,
    options: &ClusterOptions,
    key: &ClusterKey,
    storage_endpoints: &[Endpoint],
    listen: &Endpoint,
) -> Result<(Gtm, Endpoint), ClusterError> {
    let gtm_opts = GtmOptions {
        data_dir: dir.join("gtm"),
        lease: options.lease,
        ..GtmOptions::from_config(&options.gtm)
    };
    let releaser =
        StorageReleaser::new(storage_endpoints.to_vec(), ClientOptions::new(key.clone()));
    let mut gtm = Gtm::start(&gtm_opts, key.clone(), Box::new(releaser))
        .map_err(|e| ClusterError::Gtm(e.to_string()))?;
    let ep = gtm
        .serve(listen)
        .map_err(|e| ClusterError::Gtm(e.to_string()))?;
    Ok((gtm, ep))
}

impl EmbeddedCluster {
    /// Starts a fresh cluster in a temporary directory.
    pub fn start(options: ClusterOptions) -> Result<EmbeddedCluster, ClusterError> {
        let tmp = tempfile::Builder::new().prefix("dsb-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut c = EmbeddedCluster::start_in(&dir, options)?;
        c._tmp = Some(tmp);
        Ok(c)
    }

    /// Starts (or restarts, recovering) a cluster whose state lives in `dir`.
    pub fn start_in(dir: &Path, options: ClusterOptions) -> Result<EmbeddedCluster, ClusterError> {
        std::fs::create_dir_all(dir)?;
        // Processes that join the cluster (compute-node binaries, test probes) read the
        // key from this file; a restart in the same directory keeps the key.
        let key_file = dir.join("cluster.key");
        if !key_file.exists() {
            let material: String = (0..48)
                .map(|_| char::from(b"0123456789abcdef"[rand::random::<usize>() % 16]))
                .collect();
            std::fs::write(&key_file, material)?;
        }
        let key = ClusterKey::from_file(&key_file).map_err(|e| ClusterError::Gtm(e.to_string()))?;
        let mut storages = Vec::new();
        let mut storage_endpoints = Vec::new();
        for i in 0..options.storage_nodes {
            let ep = endpoint(options.transport, dir, &format!("storage-{i}"));
            let node = start_storage_node(&options, dir, i, &key, &ep)?;
            storage_endpoints.push(node.endpoint());
            storages.push(node);
        }
        let (gtm, gtm_endpoint) = start_gtm(
            dir,
            &options,
            &key,
            &storage_endpoints,
            &endpoint(options.transport, dir, "gtm"),
        )?;
        let mut c = EmbeddedCluster {
            nodes: Vec::new(),
            storages,
            gtm,
            key,
            storage_endpoints,
            gtm_endpoint,
            options: options.clone(),
            _tmp: None,
            dir: dir.to_path_buf(),
        };
        for i in 0..options.compute_nodes {
            let node = c.start_compute_node(i as u32 + 1)?;
            c.nodes.push(node);
        }
        Ok(c)
    }

    /// The settings a compute node with id `node_id` uses to join this cluster.
    pub fn compute_config(&self, node_id: u32) -> ComputeConfig {
        ComputeConfig {
            node_id,
            gtm: self.gtm_endpoint.to_string(),
            storage: self
                .storage_endpoints
                .iter()
                .map(|e| e.to_string())
                .collect(),
            buffer_frames: self.options.buffer_frames,
            heartbeat_ms: (self.options.lease.as_millis() as u64 / 10).max(10),
            ..self.options.compute.clone()
        }
    }

    /// Starts another compute node (in this process) joined to the cluster.
    pub fn start_compute_node(&self, node_id: u32) -> Result<ComputeNode, ClusterError> {
        ComputeNode::start_with_key(&self.compute_config(node_id), self.key.clone()).map_err(|e| {
            ClusterError::Compute {
                index: node_id as usize - 1,
                message: e.to_string(),
            }
        })
    }

    /// The running GTM (its metrics).
    pub fn gtm(&self) -> &Gtm {
        &self.gtm
    }

    /// Stops the GTM as a crash would leave it: what it kept only in memory (leases,
    /// queued lock releases) is gone, its files stay. Compute nodes see the connection
    /// end. [`EmbeddedCluster::restart_gtm`] brings it back.
    pub fn stop_gtm(&mut self) {
        self.gtm.shutdown();
    }

    /// Starts the GTM again from its data directory, on the endpoint it had (stopping
    /// it first if it still runs).
    pub fn restart_gtm(&mut self) -> Result<(), ClusterError> {
        self.gtm.shutdown();
        let (gtm, ep) = start_gtm(
            &self.dir,
            &self.options,
            &self.key,
            &self.storage_endpoints,
            &self.gtm_endpoint,
        )?;
        self.gtm = gtm;
        if ep != self.gtm_endpoint {
            return Err(ClusterError::Gtm(format!(
                "restarted on {ep}, not on {}",
                self.gtm_endpoint
            )));
        }
        Ok(())
    }

    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// The file holding the cluster key (for processes joining the cluster).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }

    pub fn gtm_endpoint(&self) -> &Endpoint {
        &self.gtm_endpoint
    }

    pub fn storage_endpoints(&self) -> &[Endpoint] {
        &self.storage_endpoints
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checkpoints every storage node until no frame is dirty (benchmarks start from a
    /// settled state instead of competing with the checkpoint of what they loaded).
    /// Returns the pages written.
    pub fn checkpoint(&self) -> Result<usize, ClusterError> {
        let mut total = 0;
        for (index, s) in self.storages.iter().enumerate() {
            for _ in 0..16 {
                let n = s.store.checkpoint().map_err(|e| ClusterError::Storage {
                    index,
                    message: e.to_string(),
                })?;
                total += n;
                if n == 0 {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Stops storage node `i` (cleanly: it checkpoints) and starts it again on the same
    /// endpoint, recovering from its data directory. Its lock table starts empty: the
    /// compute nodes connected to it reclaim their locks within its grace period and
    /// keep their pools (`storage_node::store::reclaim`).
    pub fn restart_storage_node(&mut self, i: usize) -> Result<(), ClusterError> {
        let old = self.storages.remove(i);
        let ep = self.storage_endpoints[i].clone();
        old.shutdown().map_err(|e| ClusterError::Storage {
            index: i,
            message: e.to_string(),
        })?;
        let node = start_storage_node(&self.options, &self.dir, i, &self.key, &ep)?;
        self.storages.insert(i, node);
        Ok(())
    }

    /// Crashes storage node `i` (no flush, no checkpoint: as kill -9) and starts it
    /// again on the same endpoint, recovering from its data directory.
    pub fn crash_storage_node(&mut self, i: usize) -> Result<(), ClusterError> {
        self.crash_storage_node_for(i, Duration::ZERO)
    }

    /// As [`EmbeddedCluster::crash_storage_node`], down for `down` before the restart.
    pub fn crash_storage_node_for(&mut self, i: usize, down: Duration) -> Result<(), ClusterError> {
        let old = self.storages.remove(i);
        let ep = self.storage_endpoints[i].clone();
        old.crash();
        std::thread::sleep(down);
        let node = start_storage_node(&self.options, &self.dir, i, &self.key, &ep)?;
        self.storages.insert(i, node);
        Ok(())
    }

    /// Storage node `i` (its store, for metrics and checkpoints in tests).
    pub fn storage(&self, i: usize) -> &StorageNode {
        &self.storages[i]
    }

    /// First page id of storage node `i`.
    pub fn first_page(&self, i: usize) -> PageId {
        PageId(1 + i as u64 * self.options.pages_per_storage_node)
    }

    /// Stops everything cleanly: compute nodes write back, storage nodes checkpoint.
    pub fn shutdown(mut self) -> Result<(), ClusterError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ClusterError> {
        for (i, n) in self.nodes.drain(..).enumerate() {
            n.shutdown().map_err(|e| ClusterError::Compute {
                index: i,
                message: e.to_string(),
            })?;
        }
        self.gtm.shutdown();
        for (i, s) in self.storages.drain(..).enumerate() {
            s.shutdown().map_err(|e| ClusterError::Storage {
                index: i,
                message: e.to_string(),
            })?;
        }
        Ok(())
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "embedded cluster shutdown");
        }
    }
}
