//! Membership and leases (DESIGN.md invariant 6).
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
//!    (retried until it succeeds).
//! 4. Fencing: every begin/commit of a `(node, epoch)` that is not live is refused. The
//!    client measures its lease from when it *sent* the renewal, so its deadline is never
//!    later than `expires` here, and it stops writing a margin before that deadline.

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

/// The last epoch handed to each node and whether it is still live, kept durable, so
/// a restarted GTM neither reuses an epoch nor forgets a live node (whose locks must be
/// freed if it never comes back) nor revives a fenced one.
///
/// File `epochs` (replaced atomically): `count u32 | (node u32, epoch u32, live u32) *
/// count | crc32c of everything before, u32`, little-endian.
pub struct EpochStore {
    path: PathBuf,
    last: HashMap<NodeId, (Epoch, bool)>,
}

impl EpochStore {
    pub fn open(path: &Path) -> std::io::Result<EpochStore> {
        let mut last = HashMap::new();
        match std::fs::read(path) {
            Ok(b) => {
                let bad =
                    || std::io::Error::other(format!("{}: corrupt epoch file", path.display()));
                if b.len() < 8 {
                    return Err(bad());
                }
                let body = &b[..b.len() - 4];
                let crc = u32::from_le_bytes(b[b.len() - 4..].try_into().expect("4 bytes"));
                let n = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
                if crc32c::crc32c(body) != crc || body.len() != 4 + n * 12 {
                    return Err(bad());
                }
                let w = |c: &[u8], i: usize| {
                    u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
                };
                for c in body[4..].chunks_exact(12) {
                    last.insert(NodeId(w(c, 0)), (Epoch(w(c, 1)), w(c, 2) != 0));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(EpochStore {
            path: path.to_path_buf(),
            last,
        })
    }

    fn save(&self) -> std::io::Result<()> {
        let mut all: Vec<_> = self.last.iter().map(|(n, e)| (*n, *e)).collect();
        all.sort();
        let mut buf = (all.len() as u32).to_le_bytes().to_vec();
        for (n, (e, live)) in &all {
            buf.extend_from_slice(&n.0.to_le_bytes());
            buf.extend_from_slice(&e.0.to_le_bytes());
            buf.extend_from_slice(&(*live as u32).to_le_bytes());
        }
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        crate::tso::replace_file(&self.path, &buf)
    }

    /// Persists and returns the next epoch of `node` (live).
    pub fn next_epoch(&mut self, node: NodeId) -> std::io::Result<Epoch> {
        let prev = self.last.get(&node).copied();
        let next = match prev {
            None => 1,
            Some((e, _)) => e.0.checked_add(1).ok_or_else(|| {
                std::io::Error::other(format!("node {node}: epochs exhausted (at {e})"))
            })?,
        };
        let e = Epoch(next);
        self.last.insert(node, (e, true));
        if let Err(err) = self.save() {
            match prev {
                Some(p) => self.last.insert(node, p),
                None => self.last.remove(&node),
            };
            return Err(err);
        }
        Ok(e)
    }

    /// Persists that `(node, epoch)` is fenced for good.
    pub fn mark_fenced(&mut self, node: NodeId, epoch: Epoch) -> std::io::Result<()> {
        match self.last.get_mut(&node) {
            Some((e, live)) if *e == epoch && *live => *live = false,
            _ => return Ok(()),
        }
        self.save()
    }

    /// Epochs that were live when the store was last written.
    pub fn live(&self) -> Vec<(NodeId, Epoch)> {
        self.last
            .iter()
            .filter(|(_, (_, live))| *live)
            .map(|(n, (e, _))| (*n, *e))
            .collect()
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
            // expires again unless the node (which fences itself) renews it.
            tracing::error!(%node, %epoch, error = %e, "cannot persist a fenced epoch");
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
