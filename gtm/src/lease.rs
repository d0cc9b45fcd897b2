//! Membership and leases (invariant 6 of docs/design.md).
//!
//! ## Protocol
//!
//! 1. `register(node)`: the GTM persists `epoch = last epoch of node + 1` (fsync, so a
//!    restarted GTM never hands out an epoch twice) and starts a lease of `lease`. A
//!    previous live epoch of the same node is fenced at once: its in-progress txns are
//!    aborted and its locks released, as on expiry.
//! 2. `heartbeat(node, epoch)`: extends the lease to `now + lease` while it is live; a
//!    lapsed or superseded epoch gets `Fenced` and can never come back (re-register).
//! 3. Expiry: the reaper (`service`) finds leases with `expires < now`, aborts the
//!    epoch's in-progress txns by the same compare-and-set as commit (one winner), then
//!    asks the storage nodes to free the epoch's page locks through [`LockReleaser`]
//!    (retried until it succeeds). The release is owed durably: the same write that
//!    fences the epoch (expiry, leave) or supersedes it (registration) records it as
//!    unreleased in [`EpochStore`], a write after every storage node answered clears
//!    it, and a restarted GTM queues every release still owed (storage nodes treat a
//!    repeated one as a no-op), so a GTM crash in between cannot leave the epoch's
//!    locks held.
//! 4. Fencing: every begin/commit of a `(node, epoch)` that is not live is refused. The
//!    client measures its lease from when it *sent* the renewal, so its deadline is never
//!    later than `expires` here, and it stops writing a margin before that deadline.

use common::durable::{DurableFs, StdFs};
use common::ids::{Epoch, NodeId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Frees the page locks a dead `(node, epoch)` holds on the storage nodes.
///
/// The real implementation wraps `common::storage::StorageClient::release_locks_of`
/// (issue 3); the GTM calls it from its reaper thread, never under its state lock, and
/// retries on error.
pub trait LockReleaser: Send + Sync + 'static {
    fn release_locks_of(&self, node: NodeId, epoch: Epoch) -> Result<(), String>;
}

/// Frees a dead node's locks on every storage node (the page space is split across
/// them, so each may hold some). Connects lazily as the admin identity and reconnects
/// after a failure; an error leaves the release to the reaper's retry.
pub struct StorageReleaser {
    endpoints: Vec<common::fabric::Endpoint>,
    opts: common::fabric::ClientOptions,
    clients: parking_lot::Mutex<Vec<Option<common::storage::StorageClient>>>,
}

impl StorageReleaser {
    pub fn new(
        endpoints: Vec<common::fabric::Endpoint>,
        opts: common::fabric::ClientOptions,
    ) -> StorageReleaser {
        let n = endpoints.len();
        StorageReleaser {
            endpoints,
            opts,
            clients: parking_lot::Mutex::new((0..n).map(|_| None).collect()),
        }
    }
}

impl LockReleaser for StorageReleaser {
    fn release_locks_of(&self, node: NodeId, epoch: Epoch) -> Result<(), String> {
        // Fault tests: `return(k)` delivers this release to the first `k` storage nodes
        // only (`return`: to none) and fails the rest as if they were unreachable, so a
        // test can stop the GTM between "fenced" and "released on every storage node".
        #[cfg(feature = "failpoints")]
        let deliver_to = fail::eval("gtm::release_locks_of", |arg| {
            arg.and_then(|a| a.parse::<usize>().ok()).unwrap_or(0)
        });
        #[cfg(not(feature = "failpoints"))]
        let deliver_to: Option<usize> = None;
        let mut clients = self.clients.lock();
        let mut failed = Vec::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            if deliver_to.is_some_and(|k| i >= k) {
                failed.push(format!("{ep}: failpoint gtm::release_locks_of"));
                continue;
            }
            if clients[i].is_none() {
                match common::storage::StorageClient::connect_admin(ep, &self.opts) {
                    Ok(c) => clients[i] = Some(c),
                    Err(e) => {
                        failed.push(format!("{ep}: {e}"));
                        continue;
                    }
                }
            }
            let c = clients[i].as_ref().expect("connected above");
            if let Err(e) = c.release_locks_of(node, epoch) {
                clients[i] = None;
                failed.push(format!("{ep}: {e}"));
            }
        }
        if failed.is_empty() {
            tracing::info!(%node, %epoch, "page locks of the dead node released");
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// Records every release (tests).
#[derive(Default)]
pub struct RecordingReleaser {
    pub released: parking_lot::Mutex<Vec<(NodeId, Epoch)>>,
}

impl LockReleaser for RecordingReleaser {
    fn release_locks_of(&self, node: NodeId, epoch: Epoch) -> Result<(), String> {
        self.released.lock().push((node, epoch));
        Ok(())
    }
}

impl<T: LockReleaser> LockReleaser for Arc<T> {
    fn release_locks_of(&self, node: NodeId, epoch: Epoch) -> Result<(), String> {
        (**self).release_locks_of(node, epoch)
    }
}

/// What the store keeps about one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeEpochs {
    /// The last epoch handed to the node.
    last: Epoch,
    /// Whether `last` is still live.
    live: bool,
    /// The highest fenced epoch of the node whose lock release not every storage node
    /// has acknowledged yet. One release covers every older epoch too (a storage node
    /// fences `node` up to and including the epoch it is given), so one is enough. Set
    /// in the same write that fences the epoch (expiry, leave) or supersedes it (a new
    /// registration), cleared in a later one once the release succeeded everywhere.
    unreleased: Option<Epoch>,
}

/// The last epoch handed to each node, whether it is still live, and which fenced
/// epoch still owes a lock release, kept durable, so a restarted GTM neither reuses an
/// epoch nor forgets a live node (whose locks must be freed if it never comes back) nor
/// revives a fenced one, nor forgets a release it owes the storage nodes.
///
/// File `epochs` (replaced atomically), little-endian:
///
/// * version 2: `"DSBE" | 2 u32 | count u32 | (node u32, epoch u32, live u32,
///   unreleased u32) * count | crc32c of everything before, u32` — `unreleased` is 0
///   for none (epochs start at 1);
/// * version 1 (no header; read, and replaced by version 2 at the next write): `count
///   u32 | (node u32, epoch u32, live u32) * count | crc32c`. It cannot say whether a
///   fenced epoch's release was acknowledged, so every fenced epoch in it is taken as
///   still owing one (releases are idempotent on the storage nodes).
pub struct EpochStore {
    fs: Arc<dyn DurableFs>,
    path: PathBuf,
    last: HashMap<NodeId, NodeEpochs>,
}

const EPOCHS_MAGIC: &[u8; 4] = b"DSBE";
const EPOCHS_VERSION: u32 = 2;

impl EpochStore {
    pub fn open(path: &Path) -> std::io::Result<EpochStore> {
        Self::open_in(StdFs::shared(), path)
    }

    /// As [`EpochStore::open`], with the file on `fs`.
    pub fn open_in(fs: Arc<dyn DurableFs>, path: &Path) -> std::io::Result<EpochStore> {
        let last = match fs.read(path) {
            Ok(b) => match Self::decode(&b) {
                Some(Ok(last)) => last,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!("{}: {e}", path.display())))
                }
                None => {
                    return Err(std::io::Error::other(format!(
                        "{}: corrupt epoch file",
                        path.display()
                    )))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(EpochStore {
            fs,
            path: path.to_path_buf(),
            last,
        })
    }

    /// `None` if the content is corrupt; an error for a version this build cannot read.
    #[allow(clippy::type_complexity)]
    fn decode(b: &[u8]) -> Option<Result<HashMap<NodeId, NodeEpochs>, String>> {
        if b.len() < 8 {
            return None;
        }
        let body = &b[..b.len() - 4];
        let crc = u32::from_le_bytes(b[b.len() - 4..].try_into().ok()?);
        if crc32c::crc32c(body) != crc {
            return None;
        }
        let w = |c: &[u8], i: usize| -> u32 {
            u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
        };
        let (version, records) = if body.starts_with(EPOCHS_MAGIC) {
            if body.len() < 12 {
                return None;
            }
            (w(body, 1), &body[8..])
        } else {
            // Version 1 has no header: its first word is the count. (One whose count
            // spelled the magic would be a 14 GB file.)
            (1, body)
        };
        let width = match version {
            1 => 12,
            EPOCHS_VERSION => 16,
            v => {
                return Some(Err(format!(
                    "epoch file version {v}: this build reads versions 1 and {EPOCHS_VERSION}"
                )))
            }
        };
        let n = w(records, 0) as usize;
        if records.len() != 4 + n.checked_mul(width)? {
            return None;
        }
        let mut last = HashMap::new();
        for c in records[4..].chunks_exact(width) {
            let (epoch, live) = (Epoch(w(c, 1)), w(c, 2) != 0);
            let unreleased = if version == 1 {
                (!live).then_some(epoch)
            } else {
                Some(Epoch(w(c, 3))).filter(|e| e.0 != 0)
            };
            let rec = NodeEpochs {
                last: epoch,
                live,
                unreleased,
            };
            // A release owed for the live epoch, or for one never handed out, is a
            // file this build did not write.
            if unreleased.is_some_and(|u| u > epoch || (u == epoch && live)) {
                return None;
            }
            if last.insert(NodeId(w(c, 0)), rec).is_some() {
                return None;
            }
        }
        Some(Ok(last))
    }

    fn encode(&self) -> Vec<u8> {
        let mut all: Vec<_> = self.last.iter().map(|(n, r)| (*n, *r)).collect();
        all.sort_by_key(|(n, _)| *n);
        let mut buf = EPOCHS_MAGIC.to_vec();
        buf.extend_from_slice(&EPOCHS_VERSION.to_le_bytes());
        buf.extend_from_slice(&(all.len() as u32).to_le_bytes());
        for (n, r) in &all {
            buf.extend_from_slice(&n.0.to_le_bytes());
            buf.extend_from_slice(&r.last.0.to_le_bytes());
            buf.extend_from_slice(&(r.live as u32).to_le_bytes());
            buf.extend_from_slice(&r.unreleased.map_or(0, |e| e.0).to_le_bytes());
        }
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    }

    fn save(&self) -> std::io::Result<()> {
        crate::tso::replace_file(&*self.fs, &self.path, &self.encode())
    }

    /// Persists and returns the next epoch of `node` (live). A live epoch it supersedes
    /// owes a lock release from the same write on.
    pub fn next_epoch(&mut self, node: NodeId) -> std::io::Result<Epoch> {
        let prev = self.last.get(&node).copied();
        let next = match prev {
            None => 1,
            Some(p) => p.last.0.checked_add(1).ok_or_else(|| {
                std::io::Error::other(format!("node {node}: epochs exhausted (at {})", p.last))
            })?,
        };
        let e = Epoch(next);
        let unreleased = prev.and_then(|p| if p.live { Some(p.last) } else { p.unreleased });
        self.last.insert(
            node,
            NodeEpochs {
                last: e,
                live: true,
                unreleased,
            },
        );
        if let Err(err) = self.save() {
            match prev {
                Some(p) => self.last.insert(node, p),
                None => self.last.remove(&node),
            };
            return Err(err);
        }
        Ok(e)
    }

    /// Persists that `(node, epoch)` is fenced for good and owes a lock release.
    pub fn mark_fenced(&mut self, node: NodeId, epoch: Epoch) -> std::io::Result<()> {
        match self.last.get_mut(&node) {
            Some(r) if r.last == epoch && r.live => {
                r.live = false;
                r.unreleased = Some(epoch);
            }
            _ => return Ok(()),
        }
        self.save()
    }

    /// Persists that every storage node released the locks of `(node, <= epoch)`: the
    /// releases owed for those epochs are done. One write for the whole list.
    pub fn mark_released(&mut self, done: &[(NodeId, Epoch)]) -> std::io::Result<()> {
        let mut changed = false;
        for &(node, epoch) in done {
            if let Some(r) = self.last.get_mut(&node) {
                if r.unreleased.is_some_and(|u| u <= epoch) {
                    r.unreleased = None;
                    changed = true;
                }
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Epochs that were live when the store was last written.
    pub fn live(&self) -> Vec<(NodeId, Epoch)> {
        self.last
            .iter()
            .filter(|(_, r)| r.live)
            .map(|(n, r)| (*n, r.last))
            .collect()
    }

    /// Fenced epochs whose lock release is not acknowledged by every storage node.
    pub fn unreleased(&self) -> Vec<(NodeId, Epoch)> {
        let mut v: Vec<_> = self
            .last
            .iter()
            .filter_map(|(n, r)| r.unreleased.map(|e| (*n, e)))
            .collect();
        v.sort();
        v
    }
}

#[derive(Clone, Copy, Debug)]
struct Member {
    epoch: Epoch,
    expires: Instant,
}

/// Live members and their leases (kept under the GTM's state lock).
pub struct Members {
    live: HashMap<NodeId, Member>,
    epochs: EpochStore,
    lease: Duration,
}

impl Members {
    /// Starts with every epoch the store says is live, each with a fresh lease from
    /// `now`: a node that survived a GTM restart keeps renewing its epoch; one that
    /// died meanwhile expires and has its locks freed as usual.
    pub fn new(epochs: EpochStore, lease: Duration, now: Instant) -> Members {
        let live = epochs
            .live()
            .into_iter()
            .map(|(n, epoch)| {
                (
                    n,
                    Member {
                        epoch,
                        expires: now + lease,
                    },
                )
            })
            .collect();
        Members {
            live,
            epochs,
            lease,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// A new epoch for `node`; also returns the epoch it supersedes, if one was live.
    pub fn register(
        &mut self,
        node: NodeId,
        now: Instant,
    ) -> std::io::Result<(Epoch, Option<Epoch>)> {
        let epoch = self.epochs.next_epoch(node)?;
        let old = self.live.insert(
            node,
            Member {
                epoch,
                expires: now + self.lease,
            },
        );
        Ok((epoch, old.map(|m| m.epoch)))
    }

    /// Whether `(node, epoch)` holds a valid lease at `now`.
    pub fn is_live(&self, node: NodeId, epoch: Epoch, now: Instant) -> bool {
        self.live
            .get(&node)
            .is_some_and(|m| m.epoch == epoch && now <= m.expires)
    }

    /// Extends a live lease; `false` if the epoch is not live (fenced).
    pub fn renew(&mut self, node: NodeId, epoch: Epoch, now: Instant) -> bool {
        match self.live.get_mut(&node) {
            Some(m) if m.epoch == epoch && now <= m.expires => {
                m.expires = m.expires.max(now + self.lease);
                true
            }
            _ => false,
        }
    }

    fn persist_fenced(&mut self, node: NodeId, epoch: Epoch) {
        if let Err(e) = self.epochs.mark_fenced(node, epoch) {
            // Not fatal: a restart would revive the epoch with a fresh lease, and it
            // expires again (and is released) unless the node (which fences itself)
            // renews it.
            tracing::error!(%node, %epoch, error = %e, "cannot persist a fenced epoch");
        }
    }

    /// Fenced epochs whose lock release is still owed (persisted when they were fenced
    /// or superseded, not yet acknowledged by every storage node): a (re)started GTM
    /// queues them.
    pub fn unreleased(&self) -> Vec<(NodeId, Epoch)> {
        self.epochs.unreleased()
    }

    /// Records that every storage node released the locks of these `(node, epoch)`s.
    pub fn released(&mut self, done: &[(NodeId, Epoch)]) {
        if let Err(e) = self.epochs.mark_released(done) {
            // Not fatal: the releases stay owed on disk and are done again (idempotent)
            // after a restart.
            tracing::error!(error = %e, "cannot persist acknowledged lock releases");
        }
    }

    /// Removes `(node, epoch)` (a graceful leave); `false` if it was not live.
    pub fn remove(&mut self, node: NodeId, epoch: Epoch) -> bool {
        if self.live.get(&node).is_some_and(|m| m.epoch == epoch) {
            self.live.remove(&node);
            self.persist_fenced(node, epoch);
            true
        } else {
            false
        }
    }

    /// Removes and returns every member whose lease ran out before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(NodeId, Epoch)> {
        let dead: Vec<_> = self
            .live
            .iter()
            .filter(|(_, m)| m.expires < now)
            .map(|(n, m)| (*n, m.epoch))
            .collect();
        for &(n, e) in &dead {
            self.live.remove(&n);
            self.persist_fenced(n, e);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn epochs_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epochs");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut s = EpochStore::open(&p).unwrap();
            seen.push(s.next_epoch(NodeId(7)).unwrap());
            s.next_epoch(NodeId(9)).unwrap();
        }
        assert_eq!(seen, vec![Epoch(1), Epoch(2), Epoch(3)]);
    }

    #[test]
    fn a_lapsed_lease_cannot_be_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut m = Members::new(
            EpochStore::open(&dir.path().join("e")).unwrap(),
            Duration::from_millis(100),
            t0,
        );
        let (e, old) = m.register(NodeId(1), t0).unwrap();
        assert_eq!(old, None);
        assert!(m.renew(NodeId(1), e, t0 + Duration::from_millis(50)));
        assert!(m.is_live(NodeId(1), e, t0 + Duration::from_millis(140)));
        assert_eq!(
            m.expire(t0 + Duration::from_millis(200)),
            vec![(NodeId(1), e)]
        );
        assert!(!m.renew(NodeId(1), e, t0 + Duration::from_millis(201)));
        let (e2, _) = m.register(NodeId(1), t0).unwrap();
        assert!(e2 > e);
        assert!(!m.is_live(NodeId(1), e, t0));
        // A restarted GTM revives the live epoch e2 only, with a fresh lease.
        let m2 = Members::new(
            EpochStore::open(&dir.path().join("e")).unwrap(),
            Duration::from_millis(100),
            t0,
        );
        assert!(m2.is_live(NodeId(1), e2, t0));
        assert!(!m2.is_live(NodeId(1), e, t0));
        drop(m);
        let mut m3 = m2;
        m3.expire(t0 + Duration::from_secs(1));
        let m4 = Members::new(
            EpochStore::open(&dir.path().join("e")).unwrap(),
            Duration::from_millis(100),
            t0,
        );
        assert_eq!(m4.live_count(), 0, "a fenced epoch is never revived");
    }

    fn members(path: &Path, t0: Instant) -> Members {
        Members::new(
            EpochStore::open(path).unwrap(),
            Duration::from_millis(100),
            t0,
        )
    }

    #[test]
    fn an_expired_epoch_owes_its_release_until_it_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epochs");
        let t0 = Instant::now();
        let mut m = members(&p, t0);
        let (e, _) = m.register(NodeId(1), t0).unwrap();
        assert!(m.unreleased().is_empty(), "a live epoch owes nothing");
        assert_eq!(m.expire(t0 + Duration::from_secs(1)), vec![(NodeId(1), e)]);
        // Owed from the write that fenced it on: a restart finds it (and does not
        // revive the epoch).
        let mut m2 = members(&p, t0);
        assert_eq!(m2.unreleased(), vec![(NodeId(1), e)]);
        assert_eq!(m2.live_count(), 0);
        m2.released(&[(NodeId(1), e)]);
        assert!(m2.unreleased().is_empty());
        let m3 = members(&p, t0);
        assert!(
            m3.unreleased().is_empty(),
            "an acknowledged release is not owed"
        );
        assert_eq!(m3.live_count(), 0);
    }

    #[test]
    fn a_node_that_left_owes_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epochs");
        let t0 = Instant::now();
        let mut m = members(&p, t0);
        let (e, _) = m.register(NodeId(4), t0).unwrap();
        assert!(!m.remove(NodeId(4), Epoch(e.0 + 1)), "not its epoch");
        assert!(members(&p, t0).unreleased().is_empty());
        assert!(m.remove(NodeId(4), e));
        assert_eq!(members(&p, t0).unreleased(), vec![(NodeId(4), e)]);
        // Acknowledging a release twice, or one that is not owed, changes nothing.
        m.released(&[(NodeId(4), e), (NodeId(4), e), (NodeId(5), Epoch(3))]);
        assert!(members(&p, t0).unreleased().is_empty());
    }

    #[test]
    fn a_superseded_epoch_owes_its_release_while_the_new_one_lives() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epochs");
        let t0 = Instant::now();
        let mut m = members(&p, t0);
        let (e1, _) = m.register(NodeId(2), t0).unwrap();
        let (e2, old) = m.register(NodeId(2), t0).unwrap();
        assert_eq!(old, Some(e1));
        // The new epoch and the release the old one owes are in the same write.
        let mut r = members(&p, t0);
        assert!(r.is_live(NodeId(2), e2, t0));
        assert!(!r.is_live(NodeId(2), e1, t0));
        assert_eq!(r.unreleased(), vec![(NodeId(2), e1)]);
        // A third registration before the release: still owed (the newest superseded
        // epoch is released; that covers every older one on the storage nodes).
        let (e3, old) = r.register(NodeId(2), t0).unwrap();
        assert_eq!(old, Some(e2));
        assert_eq!(members(&p, t0).unreleased(), vec![(NodeId(2), e2)]);
        // The release of e1 (queued earlier) does not pay for e2.
        r.released(&[(NodeId(2), e1)]);
        assert_eq!(members(&p, t0).unreleased(), vec![(NodeId(2), e2)]);
        // Then e3 expires: e3's release covers e2 too.
        assert_eq!(r.expire(t0 + Duration::from_secs(1)), vec![(NodeId(2), e3)]);
        assert_eq!(members(&p, t0).unreleased(), vec![(NodeId(2), e3)]);
        r.released(&[(NodeId(2), e2)]);
        assert_eq!(members(&p, t0).unreleased(), vec![(NodeId(2), e3)]);
        r.released(&[(NodeId(2), e3)]);
        let last = members(&p, t0);
        assert!(last.unreleased().is_empty());
        assert_eq!(last.live_count(), 0);
    }

    #[test]
    fn a_superseded_epoch_that_had_expired_owes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epochs");
        let t0 = Instant::now();
        let mut m = members(&p, t0);
        let (e1, _) = m.register(NodeId(3), t0).unwrap();
        m.expire(t0 + Duration::from_secs(1));
        m.released(&[(NodeId(3), e1)]);
        // Registering again after the release: the dead epoch owes nothing. (Its
        // lease outlasts the expiry below.)
        let (_, old) = m.register(NodeId(3), t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(old, None);
        assert!(members(&p, t0).unreleased().is_empty());
        // Expired but not yet released when the node registers again: still owed.
        let (e6, _) = m.register(NodeId(6), t0).unwrap();
        m.expire(t0 + Duration::from_secs(2));
        let (_, old) = m.register(NodeId(6), t0).unwrap();
        assert_eq!(old, None);
        assert_eq!(members(&p, t0).unreleased(), vec![(NodeId(6), e6)]);
    }

    /// A version-1 file (no header, no release state) of an existing data directory:
    /// read, its fenced epochs owed a release (it cannot say whether theirs was
    /// acknowledged), and replaced by version 2 at the next write.
    #[test]
    fn a_version_1_epoch_file_is_read_and_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epochs");
        let mut v1 = 2u32.to_le_bytes().to_vec();
        for (n, e, live) in [(1u32, 3u32, 1u32), (2, 5, 0)] {
            for w in [n, e, live] {
                v1.extend_from_slice(&w.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&p, &v1).unwrap();
        let t0 = Instant::now();
        let mut m = members(&p, t0);
        assert!(m.is_live(NodeId(1), Epoch(3), t0));
        assert!(!m.is_live(NodeId(2), Epoch(5), t0));
        assert_eq!(m.unreleased(), vec![(NodeId(2), Epoch(5))]);
        m.released(&[(NodeId(2), Epoch(5))]);
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..4], EPOCHS_MAGIC, "rewritten as version 2");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 2);
        let m2 = members(&p, t0);
        assert!(m2.unreleased().is_empty());
        assert!(m2.is_live(NodeId(1), Epoch(3), t0));
        let mut s = EpochStore::open(&p).unwrap();
        assert_eq!(
            s.next_epoch(NodeId(2)).unwrap(),
            Epoch(6),
            "no epoch reused"
        );
    }

    #[test]
    fn an_epoch_file_of_an_unknown_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("epochs");
        let mut b = EPOCHS_MAGIC.to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = EpochStore::open(&p).err().expect("refused").to_string();
        assert!(e.contains("version 3") && e.contains("epochs"), "{e}");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Register(u32),
        Fence(u32),
        /// Acknowledge the release of the `k`-th most recent epoch of the node.
        Ack(u32, u32),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..3).prop_map(Op::Register),
            2 => (0u32..3).prop_map(Op::Fence),
            2 => (0u32..3, 0u32..3).prop_map(|(n, k)| Op::Ack(n, k)),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Against a model of every dead epoch whose locks no acknowledged release
        /// covered yet: the store owes, across any reopening, the newest of them (which
        /// covers the rest), and nothing once they are all covered; the live epoch is
        /// never owed a release.
        #[test]
        fn no_dead_epoch_is_forgotten_before_a_release_covers_it(
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("epochs");
            let mut s = EpochStore::open(&p).unwrap();
            // Per node: last epoch, live, dead epochs not covered by an acknowledgement.
            let mut model: HashMap<u32, (u32, bool, std::collections::BTreeSet<u32>)> =
                HashMap::new();
            for op in ops {
                match op {
                    Op::Register(n) => {
                        let e = s.next_epoch(NodeId(n)).unwrap();
                        let m = model.entry(n).or_default();
                        if m.1 {
                            m.2.insert(m.0);
                        }
                        prop_assert_eq!(e.0, m.0 + 1);
                        m.0 = e.0;
                        m.1 = true;
                    }
                    Op::Fence(n) => {
                        let Some(m) = model.get_mut(&n) else { continue };
                        s.mark_fenced(NodeId(n), Epoch(m.0)).unwrap();
                        if m.1 {
                            m.2.insert(m.0);
                            m.1 = false;
                        }
                    }
                    Op::Ack(n, k) => {
                        let Some(m) = model.get_mut(&n) else { continue };
                        let Some(e) = m.0.checked_sub(k).filter(|e| *e > 0) else { continue };
                        if m.1 && e == m.0 {
                            continue; // a live epoch is never released
                        }
                        s.mark_released(&[(NodeId(n), Epoch(e))]).unwrap();
                        m.2.retain(|d| *d > e);
                    }
                    Op::Reopen => s = EpochStore::open(&p).unwrap(),
                }
                let mut want: Vec<_> = model
                    .iter()
                    .filter_map(|(n, m)| m.2.last().map(|e| (NodeId(*n), Epoch(*e))))
                    .collect();
                want.sort();
                prop_assert_eq!(s.unreleased(), want);
                let mut live = s.live();
                live.sort();
                let mut want_live: Vec<_> = model
                    .iter()
                    .filter(|(_, m)| m.1)
                    .map(|(n, m)| (NodeId(*n), Epoch(m.0)))
                    .collect();
                want_live.sort();
                prop_assert_eq!(live, want_live);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any `epochs` file: a store or an error naming the file, never a panic; a
        /// saved store with one byte changed or cut short is an error.
        #[test]
        fn epoch_file_of_any_content_never_panics(
            b in proptest::collection::vec(any::<u8>(), 0..64),
            nodes in proptest::collection::btree_set(any::<u32>(), 1..4),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("epochs");
            std::fs::write(&path, &b).unwrap();
            let _ = EpochStore::open(&path);
            std::fs::remove_file(&path).unwrap();
            let mut s = EpochStore::open(&path).unwrap();
            for n in &nodes {
                s.next_epoch(NodeId(*n)).unwrap();
            }
            let again = EpochStore::open(&path).unwrap();
            prop_assert_eq!(&again.last, &s.last);
            let good = std::fs::read(&path).unwrap();
            let mut bad = good.clone();
            bad[at.index(good.len())] ^= x;
            std::fs::write(&path, &bad).unwrap();
            prop_assert!(EpochStore::open(&path).is_err());
            std::fs::write(&path, &good[..cut.index(good.len())]).unwrap();
            prop_assert!(EpochStore::open(&path).is_err());
        }
    }
}
