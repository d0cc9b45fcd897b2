//! Race widening: seeded delays at the engine's named injection points.
//!
//! The compute node and the storage node mark the moments where an interleaving
//! matters with `fail_point!("…")` (TiKV's fail-rs; compiled in only with their
//! `failpoints` feature, which this crate's tests and `history-test` turn on). This
//! module attaches a callback to each point that, on its `n`-th hit, sleeps for a time
//! drawn from `hash(seed, point, n)`: the schedule of delays depends on the seed alone,
//! so a seed that found an anomaly replays the same schedule. (The thread interleaving
//! it provokes is likely, not certain, to recur: the OS still schedules threads.)
//!
//! fail-rs keeps one registry per process, so only one schedule can be active at a
//! time; [`install`] serialises callers.

use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The injection points on the coherence, lock and redo paths.
pub const POINTS: &[&str] = &[
    // compute node: coherence (compute-node/src/coherence/)
    "coherence::validate_after_dir_read",
    "coherence::round_after_notices",
    "coherence::fetch_before_read",
    "coherence::after_lock_grant",
    "coherence::before_write_back",
    "coherence::after_write_back",
    "coherence::before_unlock",
    "coherence::after_unlock",
    "coherence::revocation",
    "coherence::revocation_release",
    "coherence::before_redo_force",
    "coherence::after_redo_force",
    // compute node: transactions (compute-node/src/txn.rs)
    "txn::after_snapshot",
    "txn::before_commit_record",
    // storage node (storage-node/src/store/force.rs)
    "storage::before_log_fsync",
];

/// How hard to push.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Intensity {
    Off,
    /// Each point delays 5% of its hits by up to 1 ms.
    Light,
    /// Each point delays 20% of its hits by up to 3 ms.
    Heavy,
}

impl Intensity {
    pub fn parse(s: &str) -> Option<Intensity> {
        match s {
            "off" => Some(Intensity::Off),
            "light" => Some(Intensity::Light),
            "heavy" => Some(Intensity::Heavy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Intensity::Off => "off",
            Intensity::Light => "light",
            Intensity::Heavy => "heavy",
        }
    }

    fn params(self) -> Option<(f64, Duration)> {
        match self {
            Intensity::Off => None,
            Intensity::Light => Some((0.05, Duration::from_millis(1))),
            Intensity::Heavy => Some((0.20, Duration::from_millis(3))),
        }
    }
}

static ACTIVE: Mutex<()> = Mutex::new(());

/// The active schedule; removes its callbacks when dropped.
pub struct Schedule {
    /// Held while callbacks are installed (none for an empty schedule).
    _one: Option<MutexGuard<'static, ()>>,
    points: Vec<&'static str>,
    hits: Arc<AtomicU64>,
    delayed: Arc<AtomicU64>,
}

impl Schedule {
    /// Injection-point hits so far, and how many of them were delayed.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.delayed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Schedule {
    fn drop(&mut self) {
        for p in &self.points {
            fail::remove(*p);
        }
    }
}

/// SplitMix64: a well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A seeded delay at one point: `probability` of its hits sleep between `min` and
/// `max`.
#[derive(Clone, Copy, Debug)]
pub struct Delay {
    pub point: &'static str,
    pub probability: f64,
    pub min: Duration,
    pub max: Duration,
}

/// Installs a seeded delay schedule at every point of [`POINTS`] (nothing for `Off`).
/// Without the engine crates' `failpoints` feature the points do not exist and the
/// schedule never fires (its hit count stays 0).
pub fn install(seed: u64, intensity: Intensity) -> Schedule {
    let delays: Vec<Delay> = match intensity.params() {
        None => Vec::new(),
        Some((probability, max)) => POINTS
            .iter()
            .map(|&point| Delay {
                point,
                probability,
                min: Duration::ZERO,
                max,
            })
            .collect(),
    };
    install_delays(seed, &delays)
}

/// Installs seeded delays at the given points only (a test that widens one race).
pub fn install_delays(seed: u64, delays: &[Delay]) -> Schedule {
    let one = (!delays.is_empty()).then(|| ACTIVE.lock());
    let hits = Arc::new(AtomicU64::new(0));
    let delayed = Arc::new(AtomicU64::new(0));
    for d in delays {
        let threshold = (d.probability.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        let base = mix(seed ^ name_hash(d.point));
        let n = Arc::new(AtomicU64::new(0));
        let (hits, delayed) = (hits.clone(), delayed.clone());
        let min_us = d.min.as_micros() as u64;
        let span_us = (d.max.as_micros() as u64).saturating_sub(min_us).max(1);
        fail::cfg_callback(d.point, move || {
            hits.fetch_add(1, Ordering::Relaxed);
            let h = mix(base ^ n.fetch_add(1, Ordering::Relaxed));
            if h <= threshold {
                delayed.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(min_us + mix(h) % span_us + 1));
            }
        })
        .expect("fail point callback");
    }
    Schedule {
        _one: one,
        points: delays.iter().map(|d| d.point).collect(),
        hits,
        delayed,
    }
}
