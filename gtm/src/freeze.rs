//! The freeze sweep: how the GTM forgets old outcomes without turning a commit into an
//! abort.
//!
//! Compute nodes stamp commit timestamps into row versions lazily (the next time a
//! chain is rewritten), so a version may stay unstamped for ever and its writer's
//! outcome must stay known: the outcome index and the commit log would grow by 16 and
//! 20 bytes per commit without end. PostgreSQL has the same problem with its commit log
//! (`pg_xact`) and the same answer, freezing: a sweep stamps every old version, and then
//! the commit log below the oldest unfrozen transaction can go.
//!
//! ## The protocol
//!
//! 1. A compute node asks `FreezeTarget` (it polls; [`Freezer::grant`]). The GTM grants
//!    one sweep at a time, at most once per `freeze_interval`, to a live node, with the
//!    target `T` = the oldest txn that has not ended (in progress or committing), or the
//!    next txn id if none: every txn below `T` has ended and none will write again.
//! 2. The node visits every row chain of every table and rewrites each chain holding a
//!    version of a txn below `T` that is unstamped (stamps it), aborted (drops it) or a
//!    finished lock (drops it), through the normal page-write path (X lock, redo); then
//!    forces its redo and reports `Frozen { below: T }` ([`Freezer::report`]). A node
//!    fenced meanwhile cannot report (its lease is checked; its unforced writes are
//!    refused by the storage nodes).
//! 3. The GTM notes the report with the timestamp `E` it was taken at. A transaction
//!    that began before `E` may still read a page image from before the sweep's
//!    rewrite (its cache was validated when it began) and ask for an old outcome. So
//!    the GTM applies the report only once the GC watermark (the oldest active
//!    snapshot) passes `E` ([`Freezer::ready`]): every transaction then running began
//!    after the sweep's writes were durable and validates its cache against them
//!    (invariant 2), so it never finds an unstamped version below `T`.
//! 4. Applying: persist `T` as the **freeze floor** (`freeze.floor`, fsynced before
//!    anything is dropped), drop the outcome-index entries below it, and rewrite the
//!    commit log without their records (`commit_log::CommitLog::compact_below`, in the
//!    group-commit thread). From then on an `Outcomes` question about a txn below the
//!    floor that is not in its status slot any more answers `Retired`, never `Aborted`:
//!    a reader that gets it found a version the sweep missed, which is an error.
//!
//! A report lost to a GTM restart is harmless (the next sweep redoes it); a floor is
//! never lowered; a grant whose node died, left or rejoined is given, with the same
//! target, to the next asker — a node that rejoined resumes its sweep where it stopped
//! (`compute_node::freeze::Progress`).

use common::durable::DurableFs;
use common::ids::{Epoch, NodeId, Timestamp, TxnId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A sweep handed out and not yet reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub node: NodeId,
    pub epoch: Epoch,
    pub below: TxnId,
}

/// The GTM's side of the freeze sweep (kept under the state lock).
pub struct Freezer {
    fs: Arc<dyn DurableFs>,
    path: PathBuf,
    /// Durable: outcomes of txns below it are forgotten.
    floor: TxnId,
    /// Zero: never grant a sweep.
    interval: Duration,
    granted: Option<Grant>,
    /// A finished sweep, and the timestamp its report was taken at.
    reported: Option<(TxnId, Timestamp)>,
    /// When the last sweep was granted (none before `interval` has passed since).
    last_grant: Instant,
}

impl Freezer {
    /// Reads the floor from `path` on `fs` (none yet: 0).
    pub fn open(
        fs: Arc<dyn DurableFs>,
        path: &Path,
        interval: Duration,
    ) -> std::io::Result<Freezer> {
        let floor = crate::tso::read_mark(&*fs, path)?.unwrap_or(0);
        Ok(Freezer {
            fs,
            path: path.to_path_buf(),
            floor: TxnId(floor),
            interval,
            granted: None,
            reported: None,
            last_grant: Instant::now(),
        })
    }

    pub fn floor(&self) -> TxnId {
        self.floor
    }

    /// `FreezeTarget` from `(node, epoch)`: the target (`oldest_unended`) if a sweep is
    /// due and nobody else runs one, else why not. `live` says whether a grant's holder
    /// is still a member (a dead holder's grant is void).
    pub fn grant(
        &mut self,
        node: NodeId,
        epoch: Epoch,
        oldest_unended: TxnId,
        now: Instant,
        live: impl Fn(NodeId, Epoch) -> bool,
    ) -> Result<TxnId, String> {
        if self.interval.is_zero() {
            return Err("freeze sweeps are disabled (freeze_interval_ms = 0)".into());
        }
        if let Some(g) = self.granted {
            if g.node == node && g.epoch == epoch {
                // Asked again (an answer was lost, or it restarts its sweep): the same.
                return Ok(g.below);
            }
            if live(g.node, g.epoch) {
                return Err(format!("node {} runs the freeze sweep", g.node));
            }
            // Its holder died or rejoined: the same target goes to this asker (every
            // txn below it still has ended), so a node that rejoined resumes its sweep
            // where it stopped instead of starting over.
            self.granted = Some(Grant {
                node,
                epoch,
                below: g.below,
            });
            return Ok(g.below);
        }
        if self.reported.is_some() {
            return Err("the last freeze sweep waits for old snapshots to end".into());
        }
        if now.duration_since(self.last_grant) < self.interval {
            return Err("no freeze sweep is due yet".into());
        }
        if oldest_unended <= self.floor {
            return Err("no transaction ended since the last freeze".into());
        }
        self.granted = Some(Grant {
            node,
            epoch,
            below: oldest_unended,
        });
        self.last_grant = now;
        Ok(oldest_unended)
    }

    /// `Frozen` from `(node, epoch)`, taken at timestamp `at`. Refused unless it is the
    /// grant's holder reporting the grant's target.
    pub fn report(
        &mut self,
        node: NodeId,
        epoch: Epoch,
        below: TxnId,
        at: Timestamp,
    ) -> Result<(), String> {
        match self.granted {
            Some(g) if g == (Grant { node, epoch, below }) => {
                self.granted = None;
                self.reported = Some((below, at));
                Ok(())
            }
            Some(g) if g.node == node && g.epoch == epoch => Err(format!(
                "the freeze sweep granted to node {node} was below txn {}, not {below}",
                g.below
            )),
            _ => Err(format!(
                "node {node} epoch {epoch} holds no freeze sweep grant"
            )),
        }
    }

    /// The reported target, once the GC watermark has passed the report's timestamp:
    /// the caller persists it with [`Freezer::raise_floor`] and then drops what is
    /// below it.
    pub fn ready(&self, watermark: Timestamp) -> Option<TxnId> {
        self.reported
            .filter(|(_, at)| watermark > *at)
            .map(|(below, _)| below)
    }

    /// Makes `below` the floor, durably (before anything below it is dropped).
    pub fn raise_floor(&mut self, below: TxnId) -> std::io::Result<()> {
        self.reported = None;
        if below <= self.floor {
            return Ok(());
        }
        crate::tso::write_mark(&*self.fs, &self.path, below.0)?;
        self.floor = below;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);
    const E1: Epoch = Epoch(1);

    fn freezer(dir: &Path) -> Freezer {
        let mut f = Freezer::open(
            common::durable::StdFs::shared(),
            &dir.join("freeze.floor"),
            Duration::from_millis(1),
        )
        .unwrap();
        f.last_grant -= Duration::from_secs(1);
        f
    }

    #[test]
    fn one_sweep_at_a_time_and_only_its_holder_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = freezer(dir.path());
        let now = Instant::now();
        let t = f.grant(N1, E1, TxnId(50), now, |_, _| true).unwrap();
        assert_eq!(t, TxnId(50));
        assert!(f.grant(N2, E1, TxnId(60), now, |_, _| true).is_err());
        assert_eq!(f.grant(N1, E1, TxnId(70), now, |_, _| true), Ok(TxnId(50)));
        assert!(f.report(N2, E1, TxnId(50), Timestamp(9)).is_err());
        assert!(f.report(N1, E1, TxnId(49), Timestamp(9)).is_err());
        f.report(N1, E1, TxnId(50), Timestamp(9)).unwrap();
        assert_eq!(
            f.ready(Timestamp(9)),
            None,
            "snapshots from before the report"
        );
        assert_eq!(f.ready(Timestamp(10)), Some(TxnId(50)));
        f.raise_floor(TxnId(50)).unwrap();
        assert_eq!(f.floor(), TxnId(50));
        let again = Freezer::open(
            common::durable::StdFs::shared(),
            &dir.path().join("freeze.floor"),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(again.floor(), TxnId(50), "the floor is durable");
        assert!(f.raise_floor(TxnId(40)).is_ok());
        assert_eq!(f.floor(), TxnId(50), "never lowered");
    }

    #[test]
    fn a_dead_holders_grant_goes_to_the_next_asker() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = freezer(dir.path());
        let now = Instant::now();
        f.grant(N1, E1, TxnId(50), now, |_, _| true).unwrap();
        assert_eq!(
            f.grant(N2, E1, TxnId(55), now, |n, _| n != N1),
            Ok(TxnId(50)),
            "the same target, so a sweep can resume"
        );
        assert!(f.report(N1, E1, TxnId(50), Timestamp(3)).is_err());
        f.report(N2, E1, TxnId(50), Timestamp(3)).unwrap();
    }

    #[test]
    fn disabled_or_not_due_or_nothing_new_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut off = Freezer::open(
            common::durable::StdFs::shared(),
            &dir.path().join("a"),
            Duration::ZERO,
        )
        .unwrap();
        assert!(off
            .grant(N1, E1, TxnId(5), Instant::now(), |_, _| true)
            .is_err());
        let mut f = Freezer::open(
            common::durable::StdFs::shared(),
            &dir.path().join("b"),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(f
            .grant(N1, E1, TxnId(5), Instant::now(), |_, _| true)
            .is_err());
        let mut f = freezer(dir.path());
        f.raise_floor(TxnId(5)).unwrap();
        assert!(f
            .grant(N1, E1, TxnId(5), Instant::now(), |_, _| true)
            .is_err());
    }
}
