//! The `compute-node` service configuration: one TOML file, every key optional, CLI flags
//! override. The gRPC server's keys sit at the top level; the engine's
//! ([`ComputeConfig`]) under `[node]`. See [`EXAMPLE`] (checked against the defaults by a
//! test).

use crate::sessions::SessionOptions;
use common::config::ConfigError;
use compute_node::node::ComputeConfig;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// `host:port` the gRPC server listens on (port 0: any free port; the bound address
    /// is printed in the `READY` line).
    pub listen: String,
    /// `host:port` of the Prometheus metrics endpoint; empty: none.
    pub metrics_listen: String,
    /// Milliseconds a transaction may sit idle between calls before the server aborts it.
    pub session_idle_timeout_ms: u64,
    /// Transactions open at once over gRPC, at most (`Begin` beyond: RESOURCE_EXHAUSTED).
    pub max_sessions: usize,
    /// Transactions one client may have open at once.
    pub max_sessions_per_client: usize,
    /// Client tokens: a file of `name token` lines (`#` comments); a client sends
    /// `authorization: Bearer <token>`. Several lines let a token be rotated.
    pub client_tokens_file: String,
    /// Accept every call without credentials: for local development only (logged
    /// loudly). Exclusive with tokens and a client CA.
    pub insecure: bool,
    /// TLS for the client API: the server's certificate chain and key (PEM); empty:
    /// plaintext.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Mutual TLS: clients presenting a certificate this CA (PEM) signed are let in
    /// (required of every client when there are no tokens).
    pub tls_client_ca_file: String,
    /// Rows one `Scan` answers at most (more: `truncated`, continue from the last key).
    pub max_scan_rows: u32,
    /// Async worker threads (gRPC I/O only; engine calls run on the blocking pool).
    pub worker_threads: usize,
    /// Threads running engine calls at once; they block on storage nodes, the GTM and
    /// row-lock waits, so more than cores, but bounded.
    pub max_blocking_threads: usize,
    /// The engine: cluster endpoints, buffer pool, isolation, ... (`[node]` table).
    pub node: ComputeConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            listen: "127.0.0.1:7500".into(),
            metrics_listen: String::new(),
            session_idle_timeout_ms: 60_000,
            max_sessions: 10_000,
            max_sessions_per_client: 1_000,
            client_tokens_file: String::new(),
            insecure: false,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            max_scan_rows: 10_000,
            worker_threads: 2,
            max_blocking_threads: 64,
            node: ComputeConfig::default(),
        }
    }
}

/// A commented example configuration with the default values.
pub const EXAMPLE: &str = r#"# compute-node configuration (all keys optional; values shown are the defaults)

# host:port the gRPC server listens on (port 0: any free port, printed in the READY line)
listen = "127.0.0.1:7500"
# host:port of the Prometheus metrics endpoint; empty: none
metrics_listen = ""
# Milliseconds a transaction may sit idle between calls before the server aborts it
session_idle_timeout_ms = 60000
# Transactions open at once over gRPC, at most (Begin beyond: RESOURCE_EXHAUSTED)
max_sessions = 10000
# Transactions one client may have open at once
max_sessions_per_client = 1000
# Client authentication (one of these is required):
# a file of `name token` lines; clients send `authorization: Bearer <token>`
client_tokens_file = ""
# or mutual TLS: clients present a certificate this CA signed (needs tls_cert_file)
tls_client_ca_file = ""
# or, for local development only, no authentication at all (logged loudly)
insecure = false
# TLS for the client API: certificate chain and key (PEM); empty: plaintext
# (`dsb-certs --dir DIR` makes a CA and certificates for a test cluster)
tls_cert_file = ""
tls_key_file = ""
# Rows one Scan answers at most (more: the answer is marked truncated)
max_scan_rows = 10000
# Async worker threads (gRPC I/O only)
worker_threads = 2
# Threads running engine calls at once (they block on storage, the GTM, lock waits)
max_blocking_threads = 64

[node]
# This node's id (unique in the cluster, > 0)
node_id = 1
# GTM endpoint: tcp://host:port or shm:///path/to/gtm.sock
gtm = "tcp://127.0.0.1:7000"
# Storage-node endpoints; each owns a page-id range (learned when connecting)
storage = ["tcp://127.0.0.1:7100"]
# File holding the cluster key (at least 16 bytes)
key_file = "cluster.key"
# Buffer-pool frames (8 KiB each)
buffer_frames = 16384
# batched (a validation round per transaction start re-checks the pages named by
# change notices since the last one), full_rounds (every round checks every cached
# page: the older design, a baseline) or each_access (validate every access)
validation = "batched"
# lazy (keep page locks until another node asks) or eager
lock_mode = "lazy"
# Default isolation: snapshot or read_committed
isolation = "snapshot"
# Writers and locking readers meeting an uncommitted version: wound_wait (the younger
# waits; the older waits wound_after_ms, then aborts the younger), wait_die or no_wait.
# The same on every node.
wait_policy = "wound_wait"
wound_after_ms = 200
# Milliseconds between lease heartbeats (keep well below the GTM's lease)
heartbeat_ms = 300
# Seconds a call to a storage node or the GTM may take (lock waits included)
rpc_timeout_s = 30
# Milliseconds between asks whether a freeze sweep is due (the GTM's
# freeze_interval_ms decides how often one runs); 0: this node never sweeps
freeze_poll_ms = 5000
"#;

impl common::config::ServiceConfig for ServiceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ServiceConfig::validate(self)
    }
}

impl ServiceConfig {
    /// Loads `path` (or the defaults when `None`); errors name the file and the key.
    pub fn load(path: Option<&Path>) -> Result<ServiceConfig, ConfigError> {
        common::config::load(path)
    }

    /// Checks values the types cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if let Err(e) = self.listen_addr() {
            return bad("listen", e);
        }
        if !self.metrics_listen.is_empty() {
            if let Err(e) = resolve(&self.metrics_listen) {
                return bad("metrics_listen", e);
            }
        }
        if !(100..=86_400_000).contains(&self.session_idle_timeout_ms) {
            return bad(
                "session_idle_timeout_ms",
                format!("{} is outside 100..=86400000", self.session_idle_timeout_ms),
            );
        }
        if self.max_sessions == 0 {
            return bad("max_sessions", "must be at least 1".into());
        }
        if self.max_sessions_per_client == 0 {
            return bad("max_sessions_per_client", "must be at least 1".into());
        }
        if !(1..=64).contains(&self.worker_threads) {
            return bad(
                "worker_threads",
                format!("{} is outside 1..=64", self.worker_threads),
            );
        }
        if !(1..=4096).contains(&self.max_blocking_threads) {
            return bad(
                "max_blocking_threads",
                format!("{} is outside 1..=4096", self.max_blocking_threads),
            );
        }
        if let Err((key, why)) = self.node.validate() {
            return bad(&format!("node.{key}"), why);
        }
        // Last: every other mistake is named first.
        let credentials =
            !self.client_tokens_file.is_empty() || !self.tls_client_ca_file.is_empty();
        if self.insecure && credentials {
            return bad(
                "insecure",
                "true while client_tokens_file or tls_client_ca_file is set: choose one".into(),
            );
        }
        if !self.insecure && !credentials {
            return bad(
                "client_tokens_file",
                "no client authentication configured: set client_tokens_file, \
                 tls_client_ca_file (mutual TLS), or insecure = true (local development only)"
                    .into(),
            );
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return bad(
                "tls_key_file",
                "tls_cert_file and tls_key_file go together".into(),
            );
        }
        if !self.tls_client_ca_file.is_empty() && self.tls_cert_file.is_empty() {
            return bad(
                "tls_client_ca_file",
                "mutual TLS needs the server's tls_cert_file and tls_key_file".into(),
            );
        }
        if self.max_scan_rows == 0 {
            return bad("max_scan_rows", "must be at least 1".into());
        }
        Ok(())
    }

    /// The gRPC listen address, resolved.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        resolve(&self.listen)
    }

    /// The gRPC server's session settings.
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            idle_timeout: Duration::from_millis(self.session_idle_timeout_ms),
            max_sessions: self.max_sessions,
            max_sessions_per_client: self.max_sessions_per_client,
            max_scan_rows: self.max_scan_rows,
        }
    }
}

impl ServiceConfig {
    /// The client authentication these settings ask for (reads the tokens file).
    pub fn client_auth(&self) -> Result<crate::auth::ClientAuth, String> {
        use crate::auth::ClientAuth;
        if self.insecure {
            return Ok(ClientAuth::insecure());
        }
        let tokens = if self.client_tokens_file.is_empty() {
            Vec::new()
        } else {
            ClientAuth::read_tokens_file(Path::new(&self.client_tokens_file))?
        };
        ClientAuth::new(tokens, !self.tls_client_ca_file.is_empty())
            .map_err(|e| format!("client_tokens_file {}: {e}", self.client_tokens_file))
    }

    /// The server's TLS settings, if it speaks TLS.
    pub fn server_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        if self.tls_cert_file.is_empty() {
            return Ok(None);
        }
        crate::tls::server_config(
            Path::new(&self.tls_cert_file),
            Path::new(&self.tls_key_file),
            (!self.tls_client_ca_file.is_empty()).then(|| Path::new(&self.tls_client_ca_file)),
            !self.client_tokens_file.is_empty(),
        )
        .map(Some)
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr:?} is not a host:port address ({e})"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_the_defaults() {
        let c: ServiceConfig = common::config::parse(EXAMPLE, Path::new("example.toml")).unwrap();
        assert_eq!(
            toml::to_string(&c).unwrap(),
            toml::to_string(&ServiceConfig::default()).unwrap()
        );
        // The defaults name no client authentication: refused until one is chosen.
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("no client authentication"), "{e}");
        for ok in [
            "insecure = true",
            "client_tokens_file = \"tokens\"",
            "tls_cert_file = \"c\"\ntls_key_file = \"k\"\ntls_client_ca_file = \"ca\"",
        ] {
            let c: ServiceConfig = common::config::parse(ok, Path::new("c.toml")).unwrap();
            c.validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, key) in [
            ("insecure = true\nclient_tokens_file = \"t\"", "insecure"),
            (
                "client_tokens_file = \"t\"\ntls_cert_file = \"c\"",
                "tls_key_file",
            ),
            ("tls_client_ca_file = \"ca\"", "tls_client_ca_file"),
            (
                "insecure = true\nmax_sessions_per_client = 0",
                "max_sessions_per_client",
            ),
        ] {
            let c: ServiceConfig = common::config::parse(bad, Path::new("c.toml")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn every_key_is_in_the_example() {
        let defaults = toml::to_string(&ServiceConfig::default()).unwrap();
        for line in defaults.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    EXAMPLE.lines().any(|l| l.starts_with(&format!("{key} = "))),
                    "key {key} is missing from EXAMPLE"
                );
            }
        }
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let e = common::config::parse::<ServiceConfig>("lisen = \"x\"", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen") && e.contains("c.toml"), "{e}");
        let e =
            common::config::parse::<ServiceConfig>("[node]\nbuffer_frame = 3", Path::new("c.toml"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("buffer_frame"), "{e}");
        let c: ServiceConfig =
            common::config::parse("[node]\nnode_id = 0", Path::new("c.toml")).unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("node.node_id"));
        let c: ServiceConfig =
            common::config::parse("listen = \"nowhere\"", Path::new("c.toml")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("listen"));
        let c: ServiceConfig =
            common::config::parse("[node]\nstorage = [\"udp://x\"]", Path::new("c.toml")).unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("node.storage"));
    }
}
