//! DESIGN.md invariant 6 across GTM restarts: a lock release the GTM owes the storage
//! nodes (a lease expired, a node left, a registration superseded an epoch) is owed
//! until every storage node acknowledged it — a restart in between does it again — and
//! only then: an acknowledged release is not repeated at the next start.

mod support;

use common::fabric::{ClusterKey, Endpoint};
use common::gtm::GtmClient;
use common::ids::{Epoch, NodeId};
use gtm::{Gtm, GtmOptions, LockReleaser};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{opts, KEY};

/// Fails every release while `down` (the storage nodes unreachable); records the
/// releases that succeeded.
#[derive(Default)]
struct Releaser {
    down: AtomicBool,
    attempts: AtomicU64,
    done: Mutex<Vec<(NodeId, Epoch)>>,
}

impl LockReleaser for Releaser {
    fn release_locks_of(&self, node: NodeId, epoch: Epoch) -> Result<(), String> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Err("storage nodes unreachable".into());
        }
        self.done.lock().push((node, epoch));
        Ok(())
    }
}

fn start(dir: &Path, lease: Duration, releaser: &Arc<Releaser>) -> (Gtm, Endpoint) {
    let mut o = GtmOptions::new(dir.join("data"));
    o.lease = lease;
    o.reaper_interval = Duration::from_millis(10);
    let mut gtm = Gtm::start(
        &o,
        ClusterKey::from_material(KEY.as_bytes()).unwrap(),
        Box::new(releaser.clone()),
    )
    .unwrap();
    let ep = gtm
        .serve(&format!("shm://{}/gtm.sock", dir.display()).parse().unwrap())
        .unwrap();
    (gtm, ep)
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `owe` against a GTM whose releases fail, stops it once it tried, and checks
/// that the restarted GTM releases `expected` (and, after one more restart, nothing).
fn owed_release_survives_a_restart(
    lease: Duration,
    owe: impl FnOnce(&Endpoint) -> (NodeId, Epoch),
) {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(Releaser::default());
    down.down.store(true, Ordering::Relaxed);
    let (mut gtm, ep) = start(dir.path(), lease, &down);
    let expected = owe(&ep);
    wait_until("a release attempt", Duration::from_secs(10), || {
        down.attempts.load(Ordering::Relaxed) >= 1
    });
    // The GTM stops (as a crash would: its release queue lives in memory only).
    gtm.shutdown();
    drop(gtm);
    assert!(down.done.lock().is_empty());

    let up = Arc::new(Releaser::default());
    let (gtm, _) = start(dir.path(), lease, &up);
    wait_until(
        &format!("the owed release of {expected:?} after the restart"),
        Duration::from_secs(5),
        || up.done.lock().contains(&expected),
    );
    drop(gtm);

    // Acknowledged: not owed any more.
    let again = Arc::new(Releaser::default());
    let (gtm, _) = start(dir.path(), lease, &again);
    std::thread::sleep(Duration::from_millis(200));
    drop(gtm);
    assert!(
        !again.done.lock().contains(&expected),
        "an acknowledged release was owed again: {:?}",
        again.done.lock()
    );
}

#[test]
fn a_release_owed_for_an_expired_lease_survives_a_gtm_restart() {
    owed_release_survives_a_restart(Duration::from_millis(100), |ep| {
        let c = GtmClient::connect(ep, &opts()).unwrap();
        // Registered, then never renewed: the lease runs out.
        (NodeId(7), c.register(NodeId(7)).unwrap().epoch)
    });
}

#[test]
fn a_release_owed_for_a_node_that_left_survives_a_gtm_restart() {
    owed_release_survives_a_restart(Duration::from_secs(60), |ep| {
        let c = GtmClient::connect(ep, &opts()).unwrap();
        let epoch = c.register(NodeId(8)).unwrap().epoch;
        c.leave().unwrap();
        (NodeId(8), epoch)
    });
}

#[test]
fn a_release_owed_for_a_superseded_epoch_survives_a_gtm_restart() {
    // The newer epoch stays live across the restarts (the lease is long): nothing but
    // the owed release frees the superseded epoch's locks.
    owed_release_survives_a_restart(Duration::from_secs(60), |ep| {
        let a = GtmClient::connect(ep, &opts()).unwrap();
        let old = a.register(NodeId(9)).unwrap().epoch;
        let b = GtmClient::connect(ep, &opts()).unwrap();
        let new = b.register(NodeId(9)).unwrap().epoch;
        assert!(new > old);
        (NodeId(9), old)
    });
}

/// A release that keeps failing (storage nodes down, e.g. a whole cluster restarting
/// with the GTM first and its owed releases queued) is retried at the housekeeper's
/// pace, not in a busy loop; a new release still goes out at once.
#[test]
fn a_failing_release_is_retried_at_the_housekeeper_pace() {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(Releaser::default());
    down.down.store(true, Ordering::Relaxed);
    let (gtm, ep) = start(dir.path(), Duration::from_secs(60), &down);
    let c = GtmClient::connect(&ep, &opts()).unwrap();
    c.register(NodeId(1)).unwrap();
    c.leave().unwrap();
    wait_until("a release attempt", Duration::from_secs(10), || {
        down.attempts.load(Ordering::Relaxed) >= 1
    });
    let from = down.attempts.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let retries = down.attempts.load(Ordering::Relaxed) - from;
    // The reaper interval is 10 ms: about 50 retries in 500 ms.
    assert!(
        (5..=150).contains(&retries),
        "{retries} retries of one failing release in 500 ms"
    );
    down.down.store(false, Ordering::Relaxed);
    wait_until(
        "the release once the storage nodes are back",
        Duration::from_secs(5),
        || down.done.lock().contains(&(NodeId(1), Epoch(1))),
    );
    drop(gtm);
}
