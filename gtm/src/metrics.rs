//! The GTM's metrics, exported in Prometheus text format (`metrics_listen`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// Counters since start (monotonic).
        #[derive(Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
            /// Gauges, refreshed by the housekeeper.
            pub active_txns: AtomicU64,
            pub live_members: AtomicU64,
            pub gc_watermark: AtomicU64,
            pub retired_commits: AtomicU64,
            pub freeze_floor: AtomicU64,
            pub commit_log_records: AtomicU64,
        }

        impl Metrics {
            /// Prometheus text exposition.
            pub fn render(&self) -> String {
                let mut s = String::new();
                $(
                    s.push_str(&format!(
                        "# HELP gtm_{0} {1}\n# TYPE gtm_{0} counter\ngtm_{0} {2}\n",
                        stringify!($name), $help, self.$name.load(Ordering::Relaxed)
                    ));
                )*
                for (name, help, v) in [
                    ("active_txns", "Transactions in progress or committing.", &self.active_txns),
                    ("live_members", "Compute nodes holding a live lease.", &self.live_members),
                    ("gc_watermark", "Oldest active snapshot (published).", &self.gc_watermark),
                    ("retired_commits", "Entries of the outcome index (16 bytes each): committed transactions whose status slot was reused.", &self.retired_commits),
                    ("freeze_floor", "Txns below this id are frozen: their outcomes are forgotten.", &self.freeze_floor),
                    ("commit_log_records", "Records in the commit log (20 bytes each) after the last compaction, plus those written since.", &self.commit_log_records),
                ] {
                    s.push_str(&format!(
                        "# HELP gtm_{name} {help}\n# TYPE gtm_{name} gauge\ngtm_{name} {}\n",
                        v.load(Ordering::Relaxed)
                    ));
                }
                s
            }
        }
    };
}

counters! {
    rpc_batches: "RPC message batches handled.",
    rpc_requests: "RPC requests handled.",
    timestamps_granted: "Timestamps handed out (snapshots and commit timestamps included).",
    tso_grants: "Atomic timestamp grants (one per batch).",
    begins: "Transactions begun.",
    commits: "Transactions committed (record durable, acknowledged).",
    aborts: "Transactions aborted (explicitly, by a lost race, or by lease expiry).",
    fenced_requests: "Requests refused because the node's epoch is not live.",
    busy_begins: "Begins refused because the status-table slot was still needed.",
    log_syncs: "Commit-log fsyncs (one per commit group).",
    log_records: "Commit records written.",
    registrations: "Node registrations (new epochs).",
    lease_expiries: "Leases that ran out.",
    lock_releases: "Successful lock releases on the storage nodes.",
    lock_release_failures: "Failed lock-release attempts (retried).",
    bad_requests: "Malformed requests.",
    outcome_requests: "Outcomes requests (statuses of retired transactions).",
    outcome_lookups: "Transactions looked up by Outcomes requests.",
    freeze_grants: "Freeze sweeps granted to compute nodes.",
    freezes: "Freeze sweeps applied (floor raised, outcomes below it forgotten).",
    log_compactions: "Commit-log rewrites without the records below the freeze floor.",
    log_records_dropped: "Commit records dropped by compactions.",
}

/// Serves `GET /metrics` (any path, in fact) on `addr` until `stop` is set; see
/// [`common::metrics::serve_http`].
pub fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(std::net::SocketAddr, std::thread::JoinHandle<()>)> {
    common::metrics::serve_http(
        addr,
        "gtm-metrics",
        Arc::new(move || metrics.render()),
        stop,
    )
}
