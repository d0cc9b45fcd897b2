//! The `gtm` service configuration: one TOML file, every key optional, CLI flags
//! override. See [`EXAMPLE`] for a commented file (checked against the struct by a test).

use common::config::ConfigError;
use common::fabric::Endpoint;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GtmConfig {
    /// Endpoints to serve: `tcp://host:port` and/or `shm:///path/to/gtm.sock`.
    pub listen: Vec<String>,
    /// Directory of the durable state: high-water marks, epochs, commit log.
    pub data_dir: PathBuf,
    /// File holding the cluster key (at least 16 bytes).
    pub cluster_key_file: PathBuf,
    /// Lease granted per registration or heartbeat, in milliseconds.
    pub lease_ms: u64,
    /// How often the reaper looks for lapsed leases, in milliseconds.
    pub reaper_interval_ms: u64,
    /// How often the GC watermark is published into the status-table header (ms).
    pub gc_publish_interval_ms: u64,
    /// Timestamps reserved per durable high-water-mark step.
    pub tso_window: u64,
    /// Txn ids reserved per durable high-water-mark step.
    pub txn_id_window: u64,
    /// Entries of the status-table region (a ring indexed by txn id).
    pub status_capacity: u64,
    /// Storage-node endpoints told to free the locks of a node whose lease lapsed.
    pub storage_nodes: Vec<String>,
    /// `host:port` of the Prometheus metrics endpoint; empty: none.
    pub metrics_listen: String,
    /// Least time between two freeze sweeps (ms), which bound the commit log and the
    /// outcome index (`crate::freeze`); 0: never (both grow with every commit).
    pub freeze_interval_ms: u64,
    /// A freeze sweep is due only once this many txn ids were issued above the freeze
    /// floor (like PostgreSQL's `autovacuum_freeze_max_age`: the commit log and the
    /// outcome index hold about 36 bytes per transaction until the next sweep, and a
    /// sweep reads every row); 0: time alone decides.
    pub freeze_after_txns: u64,
}

impl Default for GtmConfig {
    fn default() -> Self {
        GtmConfig {
            listen: vec!["tcp://127.0.0.1:7400".into()],
            data_dir: PathBuf::from("gtm-data"),
            cluster_key_file: PathBuf::from("cluster.key"),
            lease_ms: 3000,
            reaper_interval_ms: 100,
            gc_publish_interval_ms: 50,
            tso_window: 1 << 20,
            txn_id_window: 1 << 16,
            status_capacity: 1 << 20,
            storage_nodes: Vec::new(),
            metrics_listen: String::new(),
            freeze_interval_ms: 60_000,
            freeze_after_txns: 1_000_000,
        }
    }
}

/// A commented example configuration with the default values.
pub const EXAMPLE: &str = r#"# gtm configuration (all keys optional; values shown are the defaults)

# Endpoints to serve: tcp://host:port and/or shm:///path/to/gtm.sock
listen = ["tcp://127.0.0.1:7400"]
# Directory of the durable state: high-water marks, epochs, commit log
data_dir = "gtm-data"
# File holding the cluster key (at least 16 bytes)
cluster_key_file = "cluster.key"
# Lease granted per registration or heartbeat (ms)
lease_ms = 3000
# How often the reaper looks for lapsed leases (ms)
reaper_interval_ms = 100
# How often the GC watermark is published into the status-table header (ms)
gc_publish_interval_ms = 50
# Timestamps reserved per durable high-water-mark step
tso_window = 1048576
# Txn ids reserved per durable high-water-mark step
txn_id_window = 65536
# Entries of the status-table region (32 bytes each)
status_capacity = 1048576
# Storage nodes told to free the locks of a node whose lease lapsed
storage_nodes = []
# host:port of the Prometheus metrics endpoint; empty: none
metrics_listen = ""
# Least time between two freeze sweeps, which bound the commit log (ms); 0: never
freeze_interval_ms = 60000
# A freeze sweep is due only once this many txn ids were issued above the freeze floor
# (the commit log and the outcome index keep ~36 bytes per txn until then); 0: time alone
freeze_after_txns = 1000000
"#;

impl common::config::ServiceConfig for GtmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        GtmConfig::validate(self)
    }
}

impl GtmConfig {
    /// Checks values the types cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if self.listen.is_empty() {
            return bad("listen", "at least one endpoint is needed".into());
        }
        for l in &self.listen {
            if let Err(e) = l.parse::<Endpoint>() {
                return bad("listen", e);
            }
        }
        for s in &self.storage_nodes {
            if let Err(e) = s.parse::<Endpoint>() {
                return bad("storage_nodes", e);
            }
        }
        if !(10..=3_600_000).contains(&self.lease_ms) {
            return bad(
                "lease_ms",
                format!("{} is outside 10..=3600000", self.lease_ms),
            );
        }
        if self.reaper_interval_ms == 0 || self.reaper_interval_ms > self.lease_ms {
            return bad(
                "reaper_interval_ms",
                format!("{} must be in 1..=lease_ms", self.reaper_interval_ms),
            );
        }
        if self.gc_publish_interval_ms == 0 {
            return bad("gc_publish_interval_ms", "must be at least 1".into());
        }
        if self.tso_window < 2 || self.txn_id_window < 2 {
            return bad("tso_window/txn_id_window", "must be at least 2".into());
        }
        if !(16..=(1 << 26)).contains(&self.status_capacity) {
            return bad(
                "status_capacity",
                format!("{} is outside 16..=67108864", self.status_capacity),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty".into());
        }
        Ok(())
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_example_is_the_defaults() {
        let c: GtmConfig = common::config::parse(EXAMPLE, Path::new("example.toml")).unwrap();
        assert_eq!(c, GtmConfig::default());
        c.validate().unwrap();
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let e = common::config::parse::<GtmConfig>("lease = 5", Path::new("g.toml")).unwrap_err();
        assert!(e.to_string().contains("lease") && e.to_string().contains("g.toml"));
        let c: GtmConfig = common::config::parse("lease_ms = 1", Path::new("g.toml")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("lease_ms"));
        let c: GtmConfig =
            common::config::parse("listen = [\"udp://x\"]", Path::new("g.toml")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("listen"));
    }
}
