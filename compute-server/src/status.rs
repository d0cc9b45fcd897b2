//! The node's status (the ClusterStatus answer) and its Prometheus rendering (the
//! `metrics_listen` endpoint).

use crate::service::Inner;
use common::proto::compute as pb;
use compute_node::coherence::{LockMode, ValidationMode};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A snapshot of the node's state and counters (the ClusterStatus answer).
pub(crate) fn snapshot(inner: &Inner) -> pb::ClusterStatusResponse {
    let engine = inner.node.engine();
    let pager = engine.pager();
    let gtm = engine.gtm();
    let reg = gtm.registration();
    let lease_remaining_ms = gtm.write_deadline().map_or(0, |d| {
        let now = Instant::now();
        if d >= now {
            (d - now).as_millis() as i64
        } else {
            -((now - d).as_millis() as i64)
        }
    });
    let storage = (0..pager.storage().len())
        .map(|i| {
            let l = pager.storage().node(i).layout();
            pb::StorageNodeStatus {
                first_page: l.first_page.0,
                page_count: l.page_count,
                frames: l.frames,
            }
        })
        .collect();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let pool = pager.pool();
    let c = &pager.stats;
    let e = &engine.stats;
    let s = &inner.sessions.counters;
    pb::ClusterStatusResponse {
        node_id: pager.node.0,
        epoch: reg.map_or(0, |r| u64::from(r.epoch.0)),
        lease_ms: reg.map_or(0, |r| r.lease.as_millis() as u64),
        lease_remaining_ms,
        // The config spellings.
        validation: match pager.validation {
            ValidationMode::Batched => "batched",
            ValidationMode::FullRounds => "full_rounds",
            ValidationMode::EachAccess => "each_access",
        }
        .into(),
        lock_mode: match pager.lock_mode {
            LockMode::Lazy => "lazy",
            LockMode::Eager => "eager",
        }
        .into(),
        storage,
        buffer_pool: Some(pb::BufferPoolStats {
            capacity: pool.capacity() as u64,
            hits: load(&pool.stats.hits),
            misses: load(&pool.stats.misses),
            evictions: load(&pool.stats.evictions),
            resident: pool.resident() as u64,
        }),
        coherence: Some(pb::CoherenceStats {
            validation_rounds: load(&c.validation_rounds),
            pages_validated: load(&c.pages_validated),
            single_validations: load(&c.single_validations),
            fetches: load(&c.fetches),
            round_trips: load(&c.round_trips),
            lock_acquires: load(&c.lock_acquires),
            write_backs: load(&c.write_backs),
            revocations: load(&c.revocations),
            storage_reconnects: load(&c.storage_reconnects),
            locks_reclaimed: load(&c.locks_reclaimed),
        }),
        engine: Some(pb::EngineStats {
            begun: load(&e.begun),
            committed: load(&e.committed),
            aborted: load(&e.aborted),
            conflicts: load(&e.conflicts),
            lock_waits: load(&e.lock_waits),
        }),
        sessions: Some(pb::SessionStats {
            open: inner.sessions.open.lock().by_handle.len() as u64,
            begun: load(&s.begun),
            committed: load(&s.committed),
            aborted: load(&s.aborted),
            idle_aborted: load(&s.idle_aborted),
            procedures: load(&s.procedures),
            auth_failures: inner.auth.failures(),
        }),
    }
}

/// Prometheus text exposition of a status snapshot.
pub fn render_metrics(st: &pb::ClusterStatusResponse) -> String {
    const G: &str = "gauge";
    const C: &str = "counter";
    let p = st.buffer_pool.unwrap_or_default();
    let c = st.coherence.unwrap_or_default();
    let e = st.engine.unwrap_or_default();
    let s = st.sessions.unwrap_or_default();
    #[rustfmt::skip]
    let metrics: [(&str, &str, i128, &str); 30] = [
        ("node_id", G, st.node_id.into(), "This node's id."),
        ("epoch", G, st.epoch.into(), "This incarnation's epoch."),
        ("lease_remaining_ms", G, st.lease_remaining_ms.into(), "Milliseconds until writes must stop."),
        ("pool_frames", G, p.capacity.into(), "Buffer-pool frames."),
        ("pool_frames_resident", G, p.resident.into(), "Buffer-pool frames holding a page."),
        ("pool_hits_total", C, p.hits.into(), "Buffer-pool hits."),
        ("pool_misses_total", C, p.misses.into(), "Buffer-pool misses."),
        ("pool_evictions_total", C, p.evictions.into(), "Pages evicted."),
        ("validation_rounds_total", C, c.validation_rounds.into(), "Batched validation rounds."),
        ("pages_validated_total", C, c.pages_validated.into(), "Pages confirmed by batched validation."),
        ("single_validations_total", C, c.single_validations.into(), "Pages validated one at a time."),
        ("page_fetches_total", C, c.fetches.into(), "Pages fetched from storage."),
        ("round_trips_total", C, c.round_trips.into(), "Round trips to storage nodes."),
        ("lock_acquires_total", C, c.lock_acquires.into(), "Global X page locks acquired."),
        ("write_backs_total", C, c.write_backs.into(), "Pages written back."),
        ("revocations_total", C, c.revocations.into(), "Page-lock revocations handled."),
        ("storage_reconnects_total", C, c.storage_reconnects.into(), "Storage connections made again (a storage node restarted or a link broke)."),
        ("locks_reclaimed_total", C, c.locks_reclaimed.into(), "X page locks taken back from restarted storage nodes."),
        ("txns_begun_total", C, e.begun.into(), "Transactions begun."),
        ("txns_committed_total", C, e.committed.into(), "Transactions committed."),
        ("txns_aborted_total", C, e.aborted.into(), "Transactions aborted."),
        ("txn_conflicts_total", C, e.conflicts.into(), "Write-write conflicts and wait-die victims."),
        ("lock_waits_total", C, e.lock_waits.into(), "Waits for an older row writer."),
        ("grpc_sessions_open", G, s.open.into(), "Transactions open over gRPC."),
        ("grpc_sessions_begun_total", C, s.begun.into(), "gRPC transactions begun."),
        ("grpc_sessions_committed_total", C, s.committed.into(), "gRPC transactions committed."),
        ("grpc_sessions_aborted_total", C, s.aborted.into(), "gRPC transactions aborted."),
        ("grpc_sessions_idle_aborted_total", C, s.idle_aborted.into(), "gRPC transactions aborted for idleness."),
        ("grpc_auth_failures_total", C, s.auth_failures.into(), "gRPC calls refused for missing or unknown client credentials."),
        ("tpcc_procedures_total", C, s.procedures.into(), "TPC-C stored-procedure calls completed."),
    ];
    let mut out = String::new();
    for (name, kind, v, help) in metrics {
        out.push_str(&format!(
            "# HELP compute_{name} {help}\n# TYPE compute_{name} {kind}\ncompute_{name} {v}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_every_counter() {
        let text = render_metrics(&pb::ClusterStatusResponse {
            node_id: 3,
            ..Default::default()
        });
        assert!(text.contains("compute_node_id 3\n"));
        assert!(text.contains("compute_grpc_sessions_open 0\n"));
        assert!(text.contains("compute_txn_conflicts_total 0\n"));
    }
}
