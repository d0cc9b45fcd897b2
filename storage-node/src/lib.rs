//! # storage-node
//!
//! The durable shared page store of docs/design.md: page directory and frames as
//! fabric regions that compute nodes read one-sided, global page locks with wait queues,
//! one redo stream per compute node with group-committed forces, checkpoints into a
//! ping-pong page file, restart recovery, and rebuild of a dead node's pages.
//! The wire protocol, page/redo formats and the client library live in
//! `common::storage`; this crate is the server.
//!
//! ## Modules
//!
//! * [`config`] — `StorageConfig` (TOML + CLI flags).
//! * [`store`] — the engine (`store/`): the `Store`, its state and request dispatch
//!   (`mod.rs`); page locks (`locks.rs`); redo append, force and the log forcer
//!   (`force.rs`); frames, write-back, fault-in and checkpoints (`pages.rs`); the worker
//!   thread (`worker.rs`); dead-node rebuild (`rebuild.rs`).
//! * [`page_dir`] — writer side of the directory/frame seqlock.
//! * [`frames`] — frame table and CLOCK eviction (larger-than-memory data).
//! * [`locks`] — X page locks, FIFO wait queues, revocations.
//! * [`redo`] — per-node redo streams: segments, durability, truncation.
//! * [`page_file`] — two slots per page, so a torn write never loses the last image.
//! * [`slot_map`] — the versions each slot holds, so start-up does not read the pages.
//! * [`recovery`] — restart recovery and metadata files.
//! * `page_meta` — `PageMeta`, per-page state: built by `recovery`, kept by `store`
//!   (re-exported as [`store::PageMeta`]), so that `recovery` does not import `store`.
//! * [`service`] — the fabric `RpcService`.
//! * [`metrics`] — counters in Prometheus text format.
//!
//! ## Protocol
//!
//! Byte layouts are in `common::storage::{page, redo, dir, msg}`. A compute node reads
//! pages one-sided (directory entry, frame, directory entry in one batch; accepted iff
//! the frame header's page id and version match a stable directory entry), takes X locks
//! over RPC, appends redo to its stream, forces it, and writes images back. Lazy holders
//! are asked to write back (and release) through a long-poll RPC.
//!
//! ## Invariants (docs/design.md)
//!
//! * **1** (versions totally ordered, changes under X): `store::Store::append_redo`
//!   accepts a record only from the page's X holder and only if it continues the page's
//!   version chain; `write_back` only from the holder with a newer version; the lock
//!   table has one holder per page (`locks`). Tests:
//!   `tests/locks.rs::invariant_1_one_exclusive_holder_under_contention`.
//! * **3** (WAL): `write_back` is refused above the durable redo version; checkpoints
//!   write only such images; rebuilds replay only fsynced redo. Tests:
//!   `tests/durability.rs::invariant_3_write_back_needs_durable_redo`.
//! * **6** (a dead node writes nothing): `release_locks_of` fences the identity (persisted)
//!   before rebuilding and freeing its pages. Tests:
//!   `tests/locks.rs::invariant_6_release_locks_of_fences_and_rebuilds`.
//! * **7** (acknowledged changes survive a crash): `force_log` answers after fsync; restart
//!   recovery replays all durable redo over the page file and repairs torn pages. Tests:
//!   `tests/crash.rs::invariant_7_kill9_loop_keeps_every_acknowledged_change`,
//!   `tests/durability.rs::invariant_7_torn_page_is_rebuilt_from_the_log`. Only the log
//!   forcer writes and seals redo, and a failed redo write or fsync fails the stream
//!   until a restart (`redo`). Tests (`--features failpoints`): `tests/redo_faults.rs`.
//!
//! Every durable file (page file, redo segments, `meta`, `fences`) is opened through a
//! `common::durable::DurableFs`: `StdFs` in the service, a `SimFs` in
//! `tests/power_loss.rs` ([`StorageNode::start_with_fs`]), which cuts the power at
//! random file operations and checks invariants 3, 6 and 7 on what survives.

pub mod config;
pub mod frames;
pub mod locks;
pub mod metrics;
pub mod page_dir;
pub mod page_file;
mod page_meta;
pub mod recovery;
pub mod redo;
pub mod service;
pub mod slot_map;
pub mod store;

use common::durable::{create_dir_all_durably, DurableFs, OpenMode, StdFs};
use common::fabric::{Access, ClusterKey, Endpoint, FabricError, Server, ServerHandle};
use common::storage::dir::DIR_ENTRY_SIZE;
use common::storage::notice;
use common::storage::page::PAGE_SIZE;
use config::StorageConfig;
use page_dir::Regions;
use page_file::PageFile;
use slot_map::SlotMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use store::{Core, Store, StoreOptions};

/// Why a storage node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] common::config::ConfigError),
    #[error("data directory {path}: {message}")]
    DataDir { path: PathBuf, message: String },
    #[error("cluster key: {0}")]
    Key(String),
    #[error("recovery failed: {0}")]
    Recovery(#[from] recovery::RecoveryError),
    #[error("fabric: {0}")]
    Fabric(#[from] FabricError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks that `dir` exists (creating it) and that a file can be written and synced.
pub fn check_data_dir(fs: &dyn DurableFs, dir: &Path) -> Result<(), NodeError> {
    let fail = |message: String| NodeError::DataDir {
        path: dir.to_path_buf(),
        message,
    };
    // Durably: a directory whose entry is lost to a power cut takes every file in it.
    create_dir_all_durably(fs, dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
    create_dir_all_durably(fs, &dir.join("redo"))
        .map_err(|e| fail(format!("cannot create redo/: {e}")))?;
    let probe = dir.join(".write-probe");
    let r = fs.open(&probe, OpenMode::Truncate).and_then(|f| {
        f.write_all_at(b"probe", 0)?;
        f.sync_all()
    });
    let _ = fs.remove_file(&probe);
    r.map_err(|e| fail(format!("not writable: {e}")))
}

/// A running storage node: regions registered, recovery done, serving.
pub struct StorageNode {
    pub store: Arc<Store>,
    server: Server,
    handle: Option<ServerHandle>,
    threads: Vec<JoinHandle<()>>,
}

impl StorageNode {
    /// Validates the config, recovers the data directory and starts serving.
    pub fn start(cfg: &StorageConfig) -> Result<StorageNode, NodeError> {
        cfg.validate()?;
        let key = ClusterKey::from_file(&cfg.key_file).map_err(NodeError::Key)?;
        let endpoint = cfg.endpoint()?;
        Self::start_with_key(cfg, key, &endpoint)
    }

    /// As [`StorageNode::start`], with a key in hand (embedded clusters, tests).
    pub fn start_with_key(
        cfg: &StorageConfig,
        key: ClusterKey,
        endpoint: &Endpoint,
    ) -> Result<StorageNode, NodeError> {
        Self::start_with_fs(cfg, key, endpoint, StdFs::shared())
    }

    /// As [`StorageNode::start_with_key`], with every durable file on `fs` (the
    /// power-loss tests pass a `common::durable::SimFs`).
    pub fn start_with_fs(
        cfg: &StorageConfig,
        key: ClusterKey,
        endpoint: &Endpoint,
        fs: Arc<dyn DurableFs>,
    ) -> Result<StorageNode, NodeError> {
        cfg.validate_without_key()?;
        check_data_dir(&*fs, &cfg.data_dir)?;
        let server = Server::new(key);
        let dir = server.register(cfg.page_count * DIR_ENTRY_SIZE as u64, Access::READ_ONLY)?;
        let frames = server.register(
            u64::from(cfg.frames()) * PAGE_SIZE as u64,
            Access::READ_ONLY,
        )?;
        let page_file = PageFile::open_in(&*fs, &cfg.data_dir.join("pages"))?;
        let slot_map = SlotMap::open_in(&*fs, &cfg.data_dir.join("slots"))?;
        // The names of the page file and the slot map are durable before any checkpoint
        // relies on them (files created just now, or by a start that died before this
        // fsync).
        fs.sync_dir(&cfg.data_dir)?;
        let rec = recovery::recover(
            &fs,
            &cfg.data_dir,
            cfg.first_page_id(),
            cfg.page_count,
            &page_file,
            &slot_map,
            cfg.redo_segment.0,
        )?;
        tracing::info!(
            pages = rec.pages.len(),
            streams = rec.streams.len(),
            records = rec.records_scanned,
            redone = rec.pages_redone,
            torn = rec.torn_pages,
            pages_read = rec.pages_read,
            "recovery done"
        );
        let notices = server.register(notice::region_len(cfg.notice_slots), Access::READ_ONLY)?;
        let regions = Regions {
            dir,
            frames,
            first_page: cfg.first_page_id(),
            notices,
            notice_capacity: cfg.notice_slots,
            notice_head: std::sync::atomic::AtomicU64::new(0),
        };
        for (i, m) in rec.pages.iter().enumerate() {
            regions.set_version(i as u64, m.version);
        }
        let pages_read = rec.pages_read as u64;
        let mut core = Core::new(rec.pages, cfg.frames());
        core.fenced = rec.fenced;
        core.members = rec.members;
        core.start_grace(Duration::from_millis(cfg.reclaim_grace_ms));
        for s in rec.streams {
            core.streams.insert(s.node, s);
        }
        let store = Arc::new(Store::new(
            StoreOptions {
                fs,
                data_dir: cfg.data_dir.clone(),
                first_page: cfg.first_page_id(),
                page_count: cfg.page_count,
                checkpoint_interval: Duration::from_millis(cfg.checkpoint_interval_ms),
                redo_segment: cfg.redo_segment.0,
                redo_retain: cfg.redo_retain.0,
                incarnation: rand::random::<u64>() | 1,
            },
            regions,
            page_file,
            slot_map,
            core,
        ));
        store
            .metrics
            .recovery_pages_read
            .store(pages_read, std::sync::atomic::Ordering::Relaxed);
        let mut threads = Vec::new();
        let s = store.clone();
        threads.push(
            std::thread::Builder::new()
                .name("log-forcer".into())
                .spawn(move || s.run_forcer())?,
        );
        let s = store.clone();
        threads.push(
            std::thread::Builder::new()
                .name("page-worker".into())
                .spawn(move || s.run_worker())?,
        );
        let handle = server.serve(
            endpoint,
            Arc::new(service::StorageService {
                store: store.clone(),
            }),
        )?;
        tracing::info!(endpoint = %handle.endpoint(), frames = cfg.frames(),
            first_page = cfg.first_page, page_count = cfg.page_count, "storage node serving");
        Ok(StorageNode {
            store,
            server,
            handle: Some(handle),
            threads,
        })
    }

    /// The endpoint actually bound.
    pub fn endpoint(&self) -> Endpoint {
        self.handle
            .as_ref()
            .map(|h| h.endpoint().clone())
            .expect("serving until shutdown")
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Clean shutdown: stop serving, make every stream durable, checkpoint every page.
    pub fn shutdown(mut self) -> Result<(), common::storage::StorageError> {
        if let Some(mut h) = self.handle.take() {
            h.shutdown();
        }
        let r = self.store.flush_for_shutdown();
        self.store.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        r
    }
}

impl StorageNode {
    /// Stops at once, as a kill -9 would: no flush, no checkpoint; what is durable (and,
    /// as after a process crash, what reached the OS) is what the next start recovers.
    pub fn crash(mut self) {
        self.store.stop();
        if let Some(mut h) = self.handle.take() {
            h.shutdown();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        self.store.stop();
    }
}
