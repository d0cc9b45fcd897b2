//! The storage node's metrics (Prometheus text format, served by the `Metrics` RPC and
//! logged at shutdown).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($name:ident: $help:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Metrics { $(pub $name: AtomicU64,)* }

        impl Metrics {
            /// Prometheus text exposition of every counter, plus `gauges`.
            pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
                let mut s = String::new();
                $(
                    let _ = writeln!(s, "# HELP storage_{} {}", stringify!($name), $help);
                    let _ = writeln!(s, "# TYPE storage_{} counter", stringify!($name));
                    let _ = writeln!(s, "storage_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )*
                for (name, help, v) in gauges {
                    let _ = writeln!(s, "# HELP storage_{name} {help}");
                    let _ = writeln!(s, "# TYPE storage_{name} gauge");
                    let _ = writeln!(s, "storage_{name} {v}");
                }
                s
            }
        }
    };
}

metrics! {
    rpc_requests: "RPC requests handled",
    pages_read_rpc: "pages served over RPC",
    fault_ins: "pages read from the page file into a frame",
    evictions: "frames reused for another page",
    write_backs: "page images written back",
    lock_grants: "exclusive page locks granted",
    lock_waits: "lock requests that had to queue",
    revocations: "revocation requests queued for lazy holders",
    redo_records: "redo records appended",
    redo_resent: "redo records received again after a lost answer (skipped)",
    redo_bytes: "redo bytes appended",
    force_requests: "log force requests",
    log_fsyncs: "fsyncs of redo streams (group commits)",
    redo_stream_failures: "redo streams failed by a write or fsync error (refuse until restart)",
    checkpoints: "checkpoints run",
    pages_checkpointed: "page images written to the page file",
    segments_truncated: "redo segments deleted after checkpoint",
    truncation_write_backs: "write-backs asked of lock holders whose pages held redo truncation back",
    fenced: "release_locks_of calls (dead node epochs fenced)",
    pages_rebuilt: "pages rebuilt from redo for a dead holder",
    locks_reclaimed: "X locks compute nodes took again after a restart of this node",
    reclaims: "compute nodes that reclaimed their locks after a restart of this node",
    reclaims_refused: "reclaim requests refused (grace period over, page held or changed): those nodes rejoin",
    lock_requests_parked: "lock requests that waited for the end of the reclaim grace period",
    recovery_pages_read: "pages whose slots start-up read from the page file (pages with redo, or without a slot-map entry)",
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
