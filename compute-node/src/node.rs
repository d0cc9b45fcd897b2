//! A compute node: the embedding API's entry point.
//!
//! [`ComputeNode::start`] registers with the GTM (getting this incarnation's epoch),
//! connects to every storage node as `(node, epoch)`, builds the coherent pager and the
//! transaction engine, installs the revocation handlers (lazy lock release), starts
//! lease heartbeats, and opens (or bootstraps) the catalog.
//!
//! Joining a running cluster (the endpoints and key file of its GTM and storage nodes):
//!
//! ```no_run
//! use compute_node::node::{ComputeConfig, ComputeNode};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ComputeConfig {
//!     node_id: 1,
//!     gtm: "tcp://127.0.0.1:7400".into(),
//!     storage: vec!["tcp://127.0.0.1:7100".into()],
//!     key_file: "cluster.key".into(),
//!     ..ComputeConfig::default()
//! };
//! let node = ComputeNode::start(&cfg)?;
//! # Ok(()) }
//! ```
//!
//! A runnable example on an embedded cluster (storage node + GTM in this process, from
//! the `cluster` crate), with two compute nodes writing and reading the same table:
//!
//! ```
//! use cluster::{ClusterOptions, EmbeddedCluster};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = EmbeddedCluster::start(ClusterOptions {
//!     compute_nodes: 2,
//!     storage_memory: 16 << 20,
//!     pages_per_storage_node: 4096,
//!     buffer_frames: 256,
//!     ..ClusterOptions::default()
//! })?;
//! let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
//! let accounts = a.create_table("accounts")?;
//!
//! let mut txn = a.begin()?;
//! txn.put(&accounts, b"alice", b"100")?;
//! assert_eq!(txn.get(&accounts, b"alice")?, Some(b"100".to_vec()));
//! txn.commit()?; // redo forced on the storage node, then the commit record at the GTM
//!
//! // The other node sees the committed row (its pages are validated after its snapshot).
//! let mut txn = b.begin()?;
//! assert_eq!(txn.get(&b.table("accounts")?, b"alice")?, Some(b"100".to_vec()));
//! txn.commit()?;
//! # Ok(()) }
//! ```

use crate::btree::TreeOptions;
use crate::catalog::Catalog;
use crate::coherence::{CoherentPager, LockMode, StorageSet, ValidationMode};
use crate::freeze::FreezeThread;
use crate::mvcc::WaitPolicy;
use crate::txn::{Engine, EngineConfig, Isolation, Resolved, Table, Txn, TxnError};
use common::fabric::{ClientOptions, ClusterKey, Endpoint};
use common::gtm::client::HeartbeatThread;
use common::gtm::{GtmClient, GtmError};
use common::ids::{NodeId, TxnId};
use common::storage::client::StorageClient;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Compute-node settings (the `compute-node` binary reads them from TOML).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// This node's id (unique in the cluster, > 0).
    pub node_id: u32,
    /// GTM endpoint (`tcp://host:port` or `shm:///path`).
    pub gtm: String,
    /// Storage-node endpoints; each owns a page-id range (learned when connecting).
    pub storage: Vec<String>,
    /// File holding the cluster key.
    pub key_file: PathBuf,
    /// Buffer-pool frames (8 KiB each).
    pub buffer_frames: usize,
    /// `batched` (default) or `each_access` (validate every access; the baseline).
    pub validation: ValidationMode,
    /// `lazy` (default: keep page locks until asked) or `eager`.
    pub lock_mode: LockMode,
    /// `snapshot` (default) or `read_committed`.
    pub isolation: Isolation,
    /// Writers and locking readers meeting an uncommitted version: `wound_wait`
    /// (default: the younger waits; the older waits `wound_after_ms`, then wounds),
    /// `wait_die` (the younger aborts) or `no_wait`. The same on every node.
    pub wait_policy: WaitPolicy,
    /// Wound-wait: milliseconds an older transaction waits for a younger holder before
    /// it aborts it (also the longest a deadlock can stall).
    pub wound_after_ms: u64,
    /// Milliseconds between lease heartbeats (keep well below the GTM's lease).
    pub heartbeat_ms: u64,
    /// Seconds a call to a storage node or the GTM may take (lock waits included).
    pub rpc_timeout_s: u64,
    /// Milliseconds between asks whether a freeze sweep is due (the GTM decides how
    /// often one runs: its `freeze_interval_ms`; `crate::freeze`); 0: this node never
    /// sweeps.
    pub freeze_poll_ms: u64,
}

impl ComputeConfig {
    /// Checks what the types cannot, once for every way a node starts (the service's
    /// config file, embedded clusters, embedders); the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.node_id == 0 {
            return Err(("node_id", "must be > 0".into()));
        }
        if let Err(e) = self.gtm.parse::<Endpoint>() {
            return Err(("gtm", e));
        }
        if self.storage.is_empty() {
            return Err(("storage", "at least one endpoint is needed".into()));
        }
        for s in &self.storage {
            if let Err(e) = s.parse::<Endpoint>() {
                return Err(("storage", e));
            }
        }
        if self.key_file.as_os_str().is_empty() {
            return Err(("key_file", "must not be empty".into()));
        }
        if self.buffer_frames < 16 {
            return Err((
                "buffer_frames",
                format!("{} is below the minimum of 16", self.buffer_frames),
            ));
        }
        if self.heartbeat_ms < 10 {
            return Err((
                "heartbeat_ms",
                format!("{} is below the minimum of 10", self.heartbeat_ms),
            ));
        }
        if self.rpc_timeout_s == 0 {
            return Err(("rpc_timeout_s", "must be at least 1".into()));
        }
        Ok(())
    }
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            node_id: 1,
            gtm: "tcp://127.0.0.1:7000".into(),
            storage: vec!["tcp://127.0.0.1:7100".into()],
            key_file: PathBuf::from("cluster.key"),
            buffer_frames: 16_384,
            validation: ValidationMode::Batched,
            lock_mode: LockMode::Lazy,
            isolation: Isolation::Snapshot,
            wait_policy: WaitPolicy::WoundWait,
            wound_after_ms: 200,
            heartbeat_ms: 300,
            rpc_timeout_s: 30,
            freeze_poll_ms: 5000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("config: {0}")]
    Config(String),
    #[error("cannot reach the GTM at {endpoint}: {message}")]
    Gtm { endpoint: String, message: String },
    #[error("cannot reach storage node {endpoint}: {message}")]
    Storage { endpoint: String, message: String },
    #[error(transparent)]
    Txn(#[from] TxnError),
}

/// One incarnation of the node: its registration (epoch), connections, buffer pool,
/// engine and catalog. A rejoin replaces it as a whole.
struct Incarnation {
    engine: Arc<Engine>,
    catalog: Arc<Catalog>,
    /// Dropped (stopped) before the heartbeats.
    _freezer: Option<FreezeThread>,
    _heartbeats: HeartbeatThread,
    generation: u64,
}

impl Incarnation {
    /// Registers with the GTM (a fresh epoch), connects to every storage node, builds
    /// the pager, the engine and the catalog.
    fn start(
        cfg: &ComputeConfig,
        key: &ClusterKey,
        generation: u64,
    ) -> Result<Incarnation, StartError> {
        let opts = ClientOptions::new(key.clone()).timeout(Duration::from_secs(cfg.rpc_timeout_s));
        let gtm_ep: Endpoint = cfg
            .gtm
            .parse()
            .map_err(|e: String| StartError::Config(format!("gtm: {e}")))?;
        let gtm_err = |e: common::gtm::GtmError| StartError::Gtm {
            endpoint: cfg.gtm.clone(),
            message: e.to_string(),
        };
        let gtm = Arc::new(GtmClient::connect(&gtm_ep, &opts).map_err(gtm_err)?);
        let reg = gtm.register(NodeId(cfg.node_id)).map_err(gtm_err)?;
        let heartbeats = gtm.spawn_heartbeats(Duration::from_millis(cfg.heartbeat_ms));
        let mut clients = Vec::with_capacity(cfg.storage.len());
        for s in &cfg.storage {
            let ep: Endpoint = s
                .parse()
                .map_err(|e: String| StartError::Config(format!("storage: {e}")))?;
            let c = StorageClient::connect(&ep, &opts, reg.node, reg.epoch).map_err(|e| {
                StartError::Storage {
                    endpoint: s.clone(),
                    message: e.to_string(),
                }
            })?;
            clients.push(Arc::new(c));
        }
        clients.sort_by_key(|c| c.layout().first_page);
        let pager = CoherentPager::new(
            reg.node,
            cfg.buffer_frames,
            StorageSet::new(clients),
            cfg.validation,
            cfg.lock_mode,
        );
        pager.install_revocation_handlers()?;
        pager.spawn_storage_watch();
        let engine = Engine::new(
            pager.clone(),
            gtm,
            EngineConfig {
                isolation: cfg.isolation,
                wait_policy: cfg.wait_policy,
                wound_after: Duration::from_millis(cfg.wound_after_ms),
                ..EngineConfig::default()
            },
        );
        let catalog = Arc::new(Catalog::open_or_bootstrap(pager)?);
        let freezer = (cfg.freeze_poll_ms > 0).then(|| {
            FreezeThread::spawn(
                engine.clone(),
                catalog.clone(),
                Duration::from_millis(cfg.freeze_poll_ms),
            )
        });
        tracing::info!(node = %reg.node, epoch = %reg.epoch, generation, "compute node ready");
        Ok(Incarnation {
            engine,
            catalog,
            _freezer: freezer,
            _heartbeats: heartbeats,
            generation,
        })
    }

    /// Why this incarnation can no longer serve, if it cannot: its lease is lost
    /// (fenced: the GTM aborted its transactions and freed its locks), the connection
    /// to the GTM ended (the GTM restarted), or a restarted storage node refused this
    /// node's locks back.
    fn broken(&self) -> Option<String> {
        let gtm = self.engine.gtm();
        if gtm.connection().is_closed() {
            return Some("the GTM connection ended".into());
        }
        // A storage connection that ended is made again by the pager, which takes its
        // locks back from a restarted storage node; only a refusal breaks it.
        if let Some(why) = self.engine.pager().broken() {
            return Some(why);
        }
        match gtm.check_lease() {
            Err(e @ (GtmError::Fenced(_) | GtmError::NotRegistered)) => Some(e.to_string()),
            _ => None,
        }
    }

    /// Ends this incarnation's connections: its threads stop, its open transactions
    /// fail.
    fn close(&self) {
        if let Some(f) = &self._freezer {
            f.stop();
        }
        self.engine.gtm().connection().close();
        self.engine.pager().close();
    }
}

/// A running compute node.
///
/// ## Rejoining
///
/// A node that lost its lease (it was paused or cut off past it: the GTM aborted its
/// transactions and had the storage nodes free its locks and rebuild its pages from its
/// redo), whose connection to the GTM ended (the GTM was restarted), or whose locks a
/// restarted storage node refused to give back (its grace period was over: see
/// `storage_node::store::reclaim`), cannot go on with what it holds: its page locks and
/// cached pages describe a state the cluster no longer has. (A storage connection that
/// ends is made again by the pager, which takes the node's locks back from a
/// restarted storage node; the pool stays.) [`ComputeNode::rejoin`] drops the whole
/// incarnation — buffer pool, held locks, connections — and starts a new one with a
/// fresh registration and epoch, exactly as a restarted process would; registering
/// again supersedes the old epoch at the GTM, which aborts whatever it still had open.
/// Transactions of the old incarnation fail (their errors are `Fenced`, `Storage` or
/// `Gtm`); tables stay valid (the catalog lives in the storage nodes). The
/// `compute-node` service runs a watchdog that rejoins when [`ComputeNode::broken`]
/// says so.
pub struct ComputeNode {
    current: RwLock<Arc<Incarnation>>,
    cfg: ComputeConfig,
    key: ClusterKey,
    rejoin_lock: Mutex<()>,
    rejoins: AtomicU64,
}

impl ComputeNode {
    /// Connects with the key in `cfg.key_file`.
    pub fn start(cfg: &ComputeConfig) -> Result<ComputeNode, StartError> {
        let key = ClusterKey::from_file(&cfg.key_file).map_err(StartError::Config)?;
        ComputeNode::start_with_key(cfg, key)
    }

    /// Connects with a key in hand (embedded clusters).
    pub fn start_with_key(cfg: &ComputeConfig, key: ClusterKey) -> Result<ComputeNode, StartError> {
        cfg.validate()
            .map_err(|(key, why)| StartError::Config(format!("{key}: {why}")))?;
        let first = Incarnation::start(cfg, &key, 0)?;
        Ok(ComputeNode {
            current: RwLock::new(Arc::new(first)),
            cfg: cfg.clone(),
            key,
            rejoin_lock: Mutex::new(()),
            rejoins: AtomicU64::new(0),
        })
    }

    fn current(&self) -> Arc<Incarnation> {
        self.current.read().clone()
    }

    /// The current incarnation's engine (a rejoin replaces it).
    pub fn engine(&self) -> Arc<Engine> {
        self.current().engine.clone()
    }

    /// Why the node cannot serve until it rejoins (lease lost, a service connection
    /// ended), or `None`.
    pub fn broken(&self) -> Option<String> {
        self.current().broken()
    }

    /// How many times this node rejoined.
    pub fn rejoins(&self) -> u64 {
        self.rejoins.load(Ordering::Relaxed)
    }

    /// Drops the current incarnation and joins again with a new epoch (see the type's
    /// docs). Concurrent callers share one rejoin. On error the old (broken)
    /// incarnation stays; call again later.
    pub fn rejoin(&self, why: &str) -> Result<(), StartError> {
        let seen = self.current().generation;
        let _one = self.rejoin_lock.lock();
        let old = self.current();
        if old.generation != seen {
            return Ok(()); // someone else rejoined meanwhile
        }
        tracing::warn!(
            node = self.cfg.node_id,
            why,
            "rejoining the cluster with a new epoch"
        );
        old.close();
        let next = Incarnation::start(&self.cfg, &self.key, seen + 1)?;
        *self.current.write() = Arc::new(next);
        self.rejoins.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn begin(&self) -> Result<Txn, TxnError> {
        self.current().engine.begin()
    }

    pub fn begin_with(&self, isolation: Isolation) -> Result<Txn, TxnError> {
        self.current().engine.begin_with(isolation)
    }

    /// The final outcome of a transaction whose commit ended with
    /// [`TxnError::Unknown`] — begun on this node or any other, by this incarnation or
    /// an earlier one ([`Engine::resolve_outcome`]). Needs no lease, so it works while
    /// the node is fenced; after the GTM restarted (the node is
    /// [`broken`](ComputeNode::broken)) it answers `Unknown` until the node rejoined.
    pub fn resolve_outcome(&self, txn: TxnId) -> Result<Resolved, TxnError> {
        self.current().engine.resolve_outcome(txn)
    }

    /// The current incarnation's catalog (a rejoin replaces it).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.current().catalog.clone()
    }

    pub fn create_table(&self, name: &str) -> Result<Table, TxnError> {
        self.current().catalog.create_table(name)
    }

    pub fn table(&self, name: &str) -> Result<Table, TxnError> {
        self.current().catalog.table(name)
    }

    /// Creates the table unless it exists; returns it either way.
    pub fn ensure_table(&self, name: &str) -> Result<Table, TxnError> {
        self.ensure_table_with(name, TreeOptions::default())
    }

    /// As [`ComputeNode::ensure_table`]; a table it creates is laid out as `options`
    /// say (`max_leaf_entries: 1` puts every row on a page of its own: for a few hot
    /// rows that different compute nodes update, see `btree`, "Entries per leaf").
    pub fn ensure_table_with(&self, name: &str, options: TreeOptions) -> Result<Table, TxnError> {
        let cur = self.current();
        match cur.catalog.table(name) {
            Ok(t) => Ok(t),
            Err(TxnError::NoSuchTable(_)) => match cur.catalog.create_table_with(name, options) {
                Err(TxnError::TableExists(_)) => cur.catalog.table(name),
                other => other,
            },
            Err(e) => Err(e),
        }
    }

    /// Writes back every change and releases every page lock this node holds (locks are
    /// kept lazily after the transactions that took them). For a node about to go idle,
    /// or after a bulk load: until then every other node's first read of a loaded page
    /// must ask this node for it, and a page still dirty from the load costs two asks
    /// (one to write it back, one to release it).
    pub fn release_page_locks(&self) -> Result<(), TxnError> {
        Ok(self.current().engine.pager().release_all()?)
    }

    /// Writes back every change and releases every page lock (clean shutdown).
    pub fn shutdown(&self) -> Result<(), TxnError> {
        let cur = self.current();
        cur.engine.pager().release_all()?;
        let _ = cur.engine.gtm().leave();
        Ok(())
    }
}

impl From<crate::pager::PagerError> for StartError {
    fn from(e: crate::pager::PagerError) -> Self {
        StartError::Txn(e.into())
    }
}
