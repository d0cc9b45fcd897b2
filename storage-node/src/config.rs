//! The storage node's configuration: one TOML file, every key overridable by a CLI flag
//! of the same name (`data_dir` -> `--data-dir`).

use common::config::ConfigError;
use common::fabric::{Endpoint, Transport};
use common::ids::PageId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};

/// A size in bytes: an integer, or a string with a unit (`"512KiB"`, `"64MiB"`, `"1GiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (examples: 65536, \"512KiB\", \"64MiB\")"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" | "KiB" => 1 << 10,
            "M" | "MB" | "MiB" => 1 << 20,
            "G" | "GB" | "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "{s:?}: unknown size unit {other:?} (B, KiB, MiB, GiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b > 0 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b > 0 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b > 0 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        b.to_string()
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ByteSize::parse(s)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// `storage-node` configuration. Every key has a default; a key the node does not know
/// is an error that names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Transport clients connect with: "tcp", "shm" (same host; shared-memory regions)
    /// or "rdma" (needs a build with the `rdma` feature and an RDMA device).
    pub transport: Transport,
    /// Where to listen: `host:port` for tcp and rdma (port 0 picks a free port), the Unix
    /// socket path for shm. A full endpoint (`tcp://...`, `shm:///...`) is accepted too
    /// and must agree with `transport`.
    pub listen: String,
    /// Directory of the page file, the redo streams and the node's metadata; created if
    /// missing; must be writable.
    pub data_dir: PathBuf,
    /// Memory for page frames (frames = memory / 8 KiB, at least 8 frames). Data larger
    /// than this is served by faulting pages in and evicting clean frames.
    pub memory: ByteSize,
    /// First page id this storage node owns.
    pub first_page: u64,
    /// Number of page ids this node owns (`first_page .. first_page + page_count`); the
    /// directory region takes 32 bytes per page id.
    pub page_count: u64,
    /// File holding the cluster key (at least 16 bytes; surrounding whitespace ignored).
    pub key_file: PathBuf,
    /// Milliseconds between checkpoints (dirty pages with durable redo to the page
    /// file, then log truncation).
    pub checkpoint_interval_ms: u64,
    /// Size at which a redo segment is sealed and a new one started; whole sealed
    /// segments are deleted once every page they describe is checkpointed.
    pub redo_segment: ByteSize,
    /// Redo a stream keeps before the storage node asks lock holders to write back the
    /// pages that hold its truncation back (a lazy holder that never writes back would
    /// otherwise keep every segment since its first write). At least `redo_segment`.
    pub redo_retain: ByteSize,
    /// `host:port` of the Prometheus metrics endpoint (port 0 picks a free port; the
    /// bound address is logged); empty: none.
    pub metrics_listen: String,
    /// Slots of the change-notice ring (16 bytes each) that compute nodes read to
    /// validate their caches; a node that falls more grants behind checks its whole
    /// cache once. 16 ..= 2^24.
    pub notice_slots: u32,
    /// After a restart, milliseconds the node waits for the compute nodes that held
    /// its locks to reclaim them (no lock is granted meanwhile; the wait ends early
    /// once every compute node recorded in `members` has reclaimed). 0: no reclaim,
    /// every compute node rejoins with an empty pool.
    pub reclaim_grace_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            transport: Transport::Tcp,
            listen: "127.0.0.1:7100".into(),
            data_dir: PathBuf::from("./storage-data"),
            memory: ByteSize(256 << 20),
            first_page: 0,
            page_count: 1 << 20,
            key_file: PathBuf::new(),
            checkpoint_interval_ms: 500,
            redo_segment: ByteSize(64 << 20),
            redo_retain: ByteSize(1 << 30),
            metrics_listen: String::new(),
            notice_slots: common::storage::notice::NOTICE_CAPACITY,
            reclaim_grace_ms: 5000,
        }
    }
}

/// The keys, in file order (the example config and the CLI are checked against it).
pub const KEYS: &[&str] = &[
    "transport",
    "listen",
    "data_dir",
    "memory",
    "first_page",
    "page_count",
    "key_file",
    "checkpoint_interval_ms",
    "redo_segment",
    "redo_retain",
    "metrics_listen",
    "notice_slots",
    "reclaim_grace_ms",
];

impl common::config::ServiceConfig for StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        StorageConfig::validate(self)
    }
}

impl StorageConfig {
    /// Loads `path` (defaults if `None`).
    pub fn load(path: Option<&Path>) -> Result<StorageConfig, ConfigError> {
        common::config::load(path)
    }

    /// A commented example file (`storage-node --print-config`).
    pub fn example() -> String {
        let d = StorageConfig::default();
        format!(
            "# storage-node configuration (every key optional; CLI flags override)\n\
             # transport clients use: tcp | shm | rdma\n\
             transport = \"{}\"\n\
             # host:port (tcp, rdma) or Unix socket path (shm)\n\
             listen = \"{}\"\n\
             # page file, redo streams, metadata\n\
             data_dir = \"{}\"\n\
             # memory for page frames (frames = memory / 8 KiB)\n\
             memory = \"{}\"\n\
             # page-id range owned: first_page .. first_page + page_count\n\
             first_page = {}\n\
             page_count = {}\n\
             # cluster key file (required)\n\
             key_file = \"/etc/dsb/cluster.key\"\n\
             # milliseconds between checkpoints\n\
             checkpoint_interval_ms = {}\n\
             # redo segment size\n\
             redo_segment = \"{}\"\n\
             # redo kept per stream before holders are asked to write back (>= redo_segment)\n\
             redo_retain = \"{}\"\n\
             # host:port of the Prometheus metrics endpoint; empty: none\n\
             metrics_listen = \"{}\"\n\
             # slots of the change-notice ring compute nodes validate their caches with\n\
             notice_slots = {}\n\
             # after a restart, ms to wait for compute nodes to reclaim their locks; 0: none\n\
             reclaim_grace_ms = {}\n",
            d.transport,
            d.listen,
            d.data_dir.display(),
            d.memory,
            d.first_page,
            d.page_count,
            d.checkpoint_interval_ms,
            d.redo_segment,
            d.redo_retain,
            d.metrics_listen,
            d.notice_slots,
            d.reclaim_grace_ms,
        )
    }

    /// Checks values the types cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.key_file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "key_file is required (a file with the cluster key)".into(),
            ));
        }
        self.validate_without_key()
    }

    /// [`StorageConfig::validate`] minus the key file (for a key passed in memory).
    pub fn validate_without_key(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.memory.0 < 8 * 8192 {
            return bad(format!(
                "memory = {}: at least 64KiB (8 frames) is needed",
                self.memory
            ));
        }
        if self.memory.0 / 8192 > u64::from(u32::MAX - 1) {
            return bad(format!("memory = {}: too many frames", self.memory));
        }
        if self.page_count == 0 {
            return bad("page_count = 0: the node must own at least one page".into());
        }
        if self.page_count > (1 << 32) {
            return bad(format!(
                "page_count = {}: at most 2^32 pages per storage node",
                self.page_count
            ));
        }
        if self.first_page.checked_add(self.page_count).is_none() {
            return bad("first_page + page_count overflows".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir is empty".into());
        }
        if self.redo_segment.0 < 64 << 10 {
            return bad(format!(
                "redo_segment = {}: at least 64KiB",
                self.redo_segment
            ));
        }
        if self.redo_retain.0 < self.redo_segment.0 {
            return bad(format!(
                "redo_retain = {}: at least redo_segment ({})",
                self.redo_retain, self.redo_segment
            ));
        }
        if self.checkpoint_interval_ms == 0 {
            return bad("checkpoint_interval_ms must be positive".into());
        }
        if self.reclaim_grace_ms > 600_000 {
            return bad(format!(
                "reclaim_grace_ms = {}: at most 600000 (ten minutes)",
                self.reclaim_grace_ms
            ));
        }
        if !(16..=1 << 24).contains(&self.notice_slots) {
            return bad(format!(
                "notice_slots = {}: between 16 and 16777216",
                self.notice_slots
            ));
        }
        if !self.metrics_listen.is_empty() {
            if let Err(e) = self.metrics_listen.to_socket_addrs() {
                return bad(format!(
                    "metrics_listen = {:?}: not a host:port address ({e})",
                    self.metrics_listen
                ));
            }
        }
        self.endpoint().map(|_| ())
    }

    pub fn frames(&self) -> u32 {
        (self.memory.0 / 8192) as u32
    }

    pub fn first_page_id(&self) -> PageId {
        PageId(self.first_page)
    }

    /// The endpoint to listen on, from `transport` and `listen`.
    pub fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        if self.listen.contains("://") {
            let ep: Endpoint = self
                .listen
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("listen: {e}")))?;
            if ep.transport() != self.transport {
                return Err(ConfigError::Invalid(format!(
                    "listen = {:?} is a {} endpoint but transport = \"{}\"",
                    self.listen,
                    ep.transport(),
                    self.transport
                )));
            }
            return Ok(ep);
        }
        if self.listen.is_empty() {
            return Err(ConfigError::Invalid("listen is empty".into()));
        }
        Ok(match self.transport {
            Transport::Tcp => Endpoint::Tcp(self.listen.clone()),
            Transport::Shm => Endpoint::Shm(PathBuf::from(&self.listen)),
            Transport::Rdma => Endpoint::Rdma(self.listen.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_names_every_key() {
        let ex = StorageConfig::example();
        let c: StorageConfig = common::config::parse(&ex, Path::new("example.toml")).unwrap();
        assert_eq!(c.memory, StorageConfig::default().memory);
        for k in KEYS {
            assert!(ex.contains(&format!("\n{k} = ")), "example lacks {k}");
        }
        let v = toml::Value::try_from(StorageConfig::default()).unwrap();
        let table = v.as_table().unwrap();
        assert_eq!(table.len(), KEYS.len());
        for k in KEYS {
            assert!(
                table.contains_key(*k),
                "KEYS lists {k} but the struct lacks it"
            );
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = common::config::parse::<StorageConfig>("memory = \"lots\"", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory") && e.contains("s.toml"), "{e}");
        let e = common::config::parse::<StorageConfig>("memroy = 1", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("memroy"), "{e}");
        let c = StorageConfig {
            key_file: "k".into(),
            memory: ByteSize(100),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("memory"));
        let c = StorageConfig {
            key_file: "k".into(),
            listen: "shm:///tmp/x".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("transport"));
        let c = StorageConfig {
            key_file: "k".into(),
            metrics_listen: "no-port".into(),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("metrics_listen"));
        let c = StorageConfig {
            key_file: "k".into(),
            metrics_listen: "127.0.0.1:0".into(),
            ..Default::default()
        };
        c.validate().unwrap();
        assert_eq!(ByteSize::parse("64MiB").unwrap(), ByteSize(64 << 20));
        assert_eq!(ByteSize::parse("4096").unwrap(), ByteSize(4096));
    }
}
