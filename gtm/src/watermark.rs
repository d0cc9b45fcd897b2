//! The GC watermark: the oldest snapshot any active transaction in the cluster holds,
//! published for version pruning (docs/design.md).
//!
//! `watermark = oldest active snapshot`, or the TSO's next value when nothing is active.
//! It never decreases: a new snapshot is granted under the same lock that computes the
//! watermark, so it is at least the TSO value the last computation saw. The housekeeper
//! publishes it into the status-table header every `gc_publish_interval` (a one-sided
//! read for compute nodes); the `GcWatermark` RPC computes it fresh.
//!
//! A version may be pruned once a newer version of the same row committed below the
//! watermark: no active or future snapshot can see the older one.

use common::ids::Timestamp;

/// Computes the watermark from the oldest active snapshot and the TSO's next value,
/// never going below `previous`.
pub fn compute(
    oldest_active: Option<Timestamp>,
    tso_next: Timestamp,
    previous: Timestamp,
) -> Timestamp {
    oldest_active.unwrap_or(tso_next).max(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_oldest_snapshot_and_never_goes_back() {
        let w = compute(Some(Timestamp(5)), Timestamp(9), Timestamp(0));
        assert_eq!(w, Timestamp(5));
        assert_eq!(compute(None, Timestamp(9), w), Timestamp(9));
        assert_eq!(
            compute(Some(Timestamp(4)), Timestamp(9), Timestamp(9)),
            Timestamp(9)
        );
    }
}
