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
//!    one sweep at a time, at most once per `freeze_interval` and once `freeze_after_txns`
//!    txn ids were issued above the floor, to a live node, with the
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
//! ## Resuming a sweep
//!
//! A sweep of a large database takes a while (TPC-C at one warehouse: about a minute
//! on two busy cores), and a long-running cluster has faults more often than that. So
//! a sweep is never started over once it has made progress:
//!
//! * The sweeper reports how far it got (`FreezeProgress`, a [`SweepPoint`]: tables are
//!   swept in name order, each in key order) after forcing the redo of what it rewrote,
//!   at most about once a second. The GTM keeps the point with the grant and writes
//!   both to `freeze.grant` ([`GrantFile`], replaced atomically and fsynced) before it
//!   acknowledges; a report (`Frozen`) is kept there as the point `Done`.
//! * A grant whose holder died, left or rejoined goes, with its target and its point,
//!   to the next asker (any live node), which resumes after the point.
//! * A GTM that restarts reads `freeze.grant` and hands the same target and point to
//!   the first asker (a point `Done` is reported again at once; a file at or below the
//!   floor is stale and ignored).
//!
//! Why handing a point over is sound: the point says that every row before it holds no
//! unstamped version below `T` *in the storage nodes' durable state* (the reporter
//! forced its redo first), which is a fact about the cluster, not about the reporter's
//! cache; every txn below `T` ended before the grant, so none can write such a version
//! again; and rows only move rightwards in key order (see `compute_node::freeze`).
//! Resuming with the same `T` after a GTM restart is sound for the same reason: the
//! txns below `T` stay ended. A point lost (the file not yet written) costs only the
//! work since the last one.
//!
//! A floor is never lowered.

use common::durable::DurableFs;
use common::gtm::SweepPoint;
use common::ids::{Epoch, NodeId, Timestamp, TxnId};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A sweep handed out and not yet reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `None`: nobody holds it (recovered from `freeze.grant` after a restart).
    pub holder: Option<(NodeId, Epoch)>,
    pub below: TxnId,
    /// What the holders so far made durable.
    pub resume: SweepPoint,
}

/// The GTM's side of the freeze sweep (kept under the state lock).
pub struct Freezer {
    fs: Arc<dyn DurableFs>,
    path: PathBuf,
    /// Durable: outcomes of txns below it are forgotten.
    floor: TxnId,
    /// Zero: never grant a sweep.
    interval: Duration,
    /// Txn ids above the floor before a sweep is due (zero: any).
    after_txns: u64,
    granted: Option<Grant>,
    /// A finished sweep, and the timestamp its report was taken at.
    reported: Option<(TxnId, Timestamp)>,
    /// When the last sweep was granted (none before `interval` has passed since).
    last_grant: Instant,
}

impl Freezer {
    /// Reads the floor from `path` on `fs` (none yet: 0), and the grant an earlier run
    /// kept in `grants` (one above the floor is handed to the first asker).
    pub fn open(
        fs: Arc<dyn DurableFs>,
        path: &Path,
        grants: &GrantFile,
        interval: Duration,
        after_txns: u64,
    ) -> std::io::Result<Freezer> {
        let floor = TxnId(crate::tso::read_mark(&*fs, path)?.unwrap_or(0));
        let kept = grants.read().filter(|(below, _)| *below > floor);
        if let Some((below, point)) = &kept {
            tracing::info!(%below, ?point, "freeze sweep resumed from before the restart");
        }
        Ok(Freezer {
            fs,
            path: path.to_path_buf(),
            floor,
            interval,
            after_txns,
            granted: kept.map(|(below, resume)| Grant {
                holder: None,
                below,
                resume,
            }),
            reported: None,
            last_grant: Instant::now(),
        })
    }

    /// What `freeze.grant` should hold now (the caller writes it with
    /// [`GrantFile::write`] outside the state lock).
    /// The grant and its point, or a report not yet applied as the point `Done`.
    pub fn durable_grant(&self) -> Option<(TxnId, SweepPoint)> {
        match (&self.granted, self.reported) {
            (Some(g), _) => Some((g.below, g.resume.clone())),
            (None, Some((below, _))) => Some((below, SweepPoint::Done)),
            (None, None) => None,
        }
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
    ) -> Result<(TxnId, SweepPoint), String> {
        if self.interval.is_zero() {
            return Err("freeze sweeps are disabled (freeze_interval_ms = 0)".into());
        }
        if let Some(g) = &mut self.granted {
            match g.holder {
                // Asked again (an answer was lost, or its sweep failed and it resumes).
                Some(h) if h == (node, epoch) => {}
                Some((n, e)) if live(n, e) => {
                    return Err(format!("node {n} runs the freeze sweep"))
                }
                // Its holder died or rejoined, or this GTM restarted: the same target
                // and point go to this asker (every txn below the target still has
                // ended), which resumes the sweep instead of starting over.
                _ => g.holder = Some((node, epoch)),
            }
            return Ok((g.below, g.resume.clone()));
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
        let age = oldest_unended.0 - self.floor.0;
        if age < self.after_txns {
            return Err(format!(
                "{age} txn ids above the freeze floor; a sweep is due at {}",
                self.after_txns
            ));
        }
        self.granted = Some(Grant {
            holder: Some((node, epoch)),
            below: oldest_unended,
            resume: SweepPoint::Start,
        });
        self.last_grant = now;
        Ok((oldest_unended, SweepPoint::Start))
    }

    /// `FreezeProgress` from `(node, epoch)`: everything up to `point` of the sweep
    /// below `below` is durable. Refused unless it is the grant's holder and target;
    /// then the caller persists [`Freezer::durable_grant`] before acknowledging.
    pub fn progress(
        &mut self,
        node: NodeId,
        epoch: Epoch,
        below: TxnId,
        point: SweepPoint,
    ) -> Result<(), String> {
        match &mut self.granted {
            Some(g) if g.holder == Some((node, epoch)) && g.below == below => {
                g.resume = point;
                Ok(())
            }
            _ => Err(format!(
                "node {node} epoch {epoch} holds no freeze sweep grant below txn {below}"
            )),
        }
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
        match &self.granted {
            Some(g) if g.holder == Some((node, epoch)) && g.below == below => {
                self.granted = None;
                // Kept as done (`durable_grant`): a restart before the floor is raised
                // reports it again.
                self.reported = Some((below, at));
                Ok(())
            }
            Some(g) if g.holder == Some((node, epoch)) => Err(format!(
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
        // `freeze.grant` is stale from now on (ignored when read); left as it is.
        Ok(())
    }
}

/// `freeze.grant`: the sweep grant and how far it got, kept across GTM restarts.
/// Layout: `below u64 | point ([`SweepPoint`] wire form) | crc32c u32 (of what precedes)
/// | b"FRZG"`. Written whole (temp file, fsync, rename); writers are serialized and
/// each writes the newest state, so an older point never overwrites a newer one.
pub struct GrantFile {
    fs: Arc<dyn DurableFs>,
    path: PathBuf,
    lock: Mutex<()>,
}

const GRANT_MAGIC: &[u8; 4] = b"FRZG";

impl GrantFile {
    pub fn new(fs: Arc<dyn DurableFs>, path: &Path) -> GrantFile {
        GrantFile {
            fs,
            path: path.to_path_buf(),
            lock: Mutex::new(()),
        }
    }

    /// The kept grant; none if there is no file. A file that does not check out is
    /// reported and ignored: it only saves work (a sweep starts over without it).
    pub fn read(&self) -> Option<(TxnId, SweepPoint)> {
        let bytes = match self.fs.read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot read the kept freeze grant; ignored");
                return None;
            }
        };
        match Self::decode(&bytes) {
            Ok(g) => Some(g),
            Err(why) => {
                tracing::warn!(path = %self.path.display(), why,
                    "the kept freeze grant is damaged; ignored");
                None
            }
        }
    }

    fn decode(b: &[u8]) -> Result<(TxnId, SweepPoint), &'static str> {
        if b.len() < 17 || &b[b.len() - 4..] != GRANT_MAGIC {
            return Err("not a freeze grant file");
        }
        let body = &b[..b.len() - 8];
        let crc = u32::from_le_bytes(b[b.len() - 8..b.len() - 4].try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != crc {
            return Err("checksum mismatch");
        }
        let below = TxnId(u64::from_le_bytes(body[..8].try_into().expect("8 bytes")));
        let point = SweepPoint::decode(&body[8..]).map_err(|_| "bad sweep point")?;
        Ok((below, point))
    }

    /// Writes what `current` returns (called under this file's lock, so the newest
    /// state is what lands); nothing if it returns `None`.
    pub fn write(
        &self,
        current: impl FnOnce() -> Option<(TxnId, SweepPoint)>,
    ) -> std::io::Result<()> {
        let _w = self.lock.lock();
        let Some((below, point)) = current() else {
            return Ok(());
        };
        let mut b = below.0.to_le_bytes().to_vec();
        point.encode_into(&mut b);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(GRANT_MAGIC);
        crate::tso::replace_file(&*self.fs, &self.path, &b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);
    const E1: Epoch = Epoch(1);

    fn grants(dir: &Path) -> GrantFile {
        GrantFile::new(common::durable::StdFs::shared(), &dir.join("sweep.grant"))
    }

    fn open(dir: &Path, floor: &str, interval: Duration) -> Freezer {
        Freezer::open(
            common::durable::StdFs::shared(),
            &dir.join(floor),
            &grants(dir),
            interval,
            0,
        )
        .unwrap()
    }

    fn freezer(dir: &Path) -> Freezer {
        let mut f = open(dir, "freeze.floor", Duration::from_millis(1));
        f.last_grant -= Duration::from_secs(1);
        f
    }

    #[test]
    fn one_sweep_at_a_time_and_only_its_holder_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = freezer(dir.path());
        let now = Instant::now();
        let t = f.grant(N1, E1, TxnId(50), now, |_, _| true).unwrap();
        assert_eq!(t, (TxnId(50), SweepPoint::Start));
        assert!(f.grant(N2, E1, TxnId(60), now, |_, _| true).is_err());
        assert_eq!(
            f.grant(N1, E1, TxnId(70), now, |_, _| true),
            Ok((TxnId(50), SweepPoint::Start))
        );
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
        let again = open(dir.path(), "freeze.floor", Duration::ZERO);
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
        let at = SweepPoint::In {
            table: "stock".into(),
            after: Some(b"k17".to_vec()),
        };
        assert!(
            f.progress(N2, E1, TxnId(50), at.clone()).is_err(),
            "not the holder"
        );
        assert!(
            f.progress(N1, E1, TxnId(51), at.clone()).is_err(),
            "not the target"
        );
        f.progress(N1, E1, TxnId(50), at.clone()).unwrap();
        assert_eq!(f.durable_grant(), Some((TxnId(50), at.clone())));
        assert_eq!(
            f.grant(N2, E1, TxnId(55), now, |n, _| n != N1),
            Ok((TxnId(50), at)),
            "the same target and point, so the sweep resumes"
        );
        assert!(f.report(N1, E1, TxnId(50), Timestamp(3)).is_err());
        f.report(N2, E1, TxnId(50), Timestamp(3)).unwrap();
    }

    #[test]
    fn disabled_or_not_due_or_nothing_new_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut off = open(dir.path(), "a", Duration::ZERO);
        assert!(off
            .grant(N1, E1, TxnId(5), Instant::now(), |_, _| true)
            .is_err());
        let mut f = open(dir.path(), "b", Duration::from_secs(3600));
        assert!(f
            .grant(N1, E1, TxnId(5), Instant::now(), |_, _| true)
            .is_err());
        let mut f = freezer(dir.path());
        f.raise_floor(TxnId(5)).unwrap();
        assert!(f
            .grant(N1, E1, TxnId(5), Instant::now(), |_, _| true)
            .is_err());
    }

    #[test]
    fn a_sweep_waits_for_enough_txns_above_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = freezer(dir.path());
        f.after_txns = 100;
        f.raise_floor(TxnId(1_000)).unwrap();
        let e = f
            .grant(N1, E1, TxnId(1_099), Instant::now(), |_, _| true)
            .unwrap_err();
        assert!(e.contains("99 txn ids above the freeze floor"), "{e}");
        assert_eq!(
            f.grant(N1, E1, TxnId(1_100), Instant::now(), |_, _| true),
            Ok((TxnId(1_100), SweepPoint::Start))
        );
    }

    #[test]
    fn a_kept_grant_outlives_a_restart_until_the_floor_passes_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = grants(dir.path());
        let mut f = freezer(dir.path());
        let now = Instant::now();
        f.grant(N1, E1, TxnId(50), now, |_, _| true).unwrap();
        let at = SweepPoint::In {
            table: "orders".into(),
            after: None,
        };
        f.progress(N1, E1, TxnId(50), at.clone()).unwrap();
        file.write(|| f.durable_grant()).unwrap();

        // Restarted: the first asker (any node) gets the same target and point, even
        // before an interval has passed.
        let mut g = open(dir.path(), "freeze.floor", Duration::from_secs(3600));
        assert_eq!(
            g.grant(N2, E1, TxnId(90), now, |_, _| true),
            Ok((TxnId(50), at))
        );
        g.report(N2, E1, TxnId(50), Timestamp(7)).unwrap();
        file.write(|| g.durable_grant()).unwrap();

        // Restarted after the report, before the floor was raised: done, report again.
        let mut h = open(dir.path(), "freeze.floor", Duration::from_secs(3600));
        assert_eq!(
            h.grant(N1, E1, TxnId(90), now, |_, _| true),
            Ok((TxnId(50), SweepPoint::Done))
        );
        h.report(N1, E1, TxnId(50), Timestamp(8)).unwrap();
        h.raise_floor(TxnId(50)).unwrap();
        assert_eq!(h.durable_grant(), None);

        // The file still says 50, at the floor: stale, ignored.
        let mut k = open(dir.path(), "freeze.floor", Duration::from_secs(3600));
        assert!(
            k.grant(N1, E1, TxnId(90), now, |_, _| true).is_err(),
            "not due"
        );
    }

    #[test]
    fn a_damaged_grant_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = grants(dir.path());
        file.write(|| Some((TxnId(9), SweepPoint::Done))).unwrap();
        assert_eq!(file.read(), Some((TxnId(9), SweepPoint::Done)));
        let path = dir.path().join("sweep.grant");
        let mut b = std::fs::read(&path).unwrap();
        b[3] ^= 1;
        std::fs::write(&path, &b).unwrap();
        assert_eq!(file.read(), None);
        std::fs::write(&path, b"FRZG").unwrap();
        assert_eq!(file.read(), None);
    }
}
