//! The client-side timestamp combiner: many caller threads, one TSO request at a time.
//!
//! Compute nodes ask for timestamps from many transaction threads at once. Instead of one
//! RPC per caller, concurrent callers join the *open batch*; one of them (the leader)
//! sends a single `Timestamps { count }` request for the whole batch, the GTM grants the
//! range with one atomic step, and every caller takes `first + offset`. Like TiDB PD's
//! TSO client, at most one request is in flight: callers that arrive meanwhile form the
//! next batch, so a busy client sends one request per round trip however many threads
//! it has.
//!
//! ## Protocol
//!
//! 1. A caller joins the open batch under the combiner lock: its offset is the number of
//!    timestamps requested in the batch so far.
//! 2. If no request is in flight, the caller that finds this out (at join time, or later
//!    while waiting) closes the open batch (a new empty one takes its place) and sends
//!    it. When the answer comes it clears `in_flight` first (so that a member of the
//!    batch that filled up meanwhile sends it at once), then publishes the answer in the
//!    batch: one store serves every member.
//! 3. Everybody else waits for its batch's answer, checking one atomic and yielding the
//!    core in between, for up to a few round trips ([`Combiner::spin_budget`]); then it
//!    parks on a futex in the batch. The leader wakes parked members with one
//!    `FUTEX_WAKE` for all of them, and only if one parked at all.
//!
//! Why spin: on a busy client the cost of a timestamp is not the round trip (shared by
//! the whole batch) but waking its caller. A parked caller costs the leader a wake-up and
//! the caller a trip through the scheduler (on a VM an idle core's wake-up is an IPI and
//! an exit); a caller that yields stays runnable, sees the answer the next time it runs,
//! and costs nobody a system call. Yielding gives the core to any other runnable thread,
//! so spinning waiters do not starve the threads that do the work.
//!
//! ## Invariants
//!
//! * A batch is sent only after it was closed, and only callers that joined before it
//!   closed share it: every timestamp is granted after its caller asked, so a timestamp
//!   is larger than any timestamp or commit timestamp the GTM granted before the call
//!   began (strictly increasing per caller and in real-time order; docs/design.md
//!   invariant 5). A range is never split between requests or handed out twice.
//! * One request is in flight at a time; a batch is closed only when none is, which is
//!   what lets batches grow while the previous request travels.
//! * Leadership is never owned by a thread that may give up: any member may send its
//!   batch once nothing is in flight, a member that times out checks for that first, and
//!   a caller joining a batch whose members all left sends it.

use super::GtmError;
use crate::fabric::FabricError;
use crate::ids::Timestamp;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Shortest time a waiter spins before it parks.
const MIN_SPIN: Duration = Duration::from_micros(300);
/// Longest time a waiter spins before it parks.
const MAX_SPIN: Duration = Duration::from_millis(2);
/// A waiter spins for this many recent request times (a caller waits for at most the
/// request in flight and then its own).
const SPIN_ROUND_TRIPS: u32 = 3;

/// A fixed spin time from `DSB_TSO_SPIN_US` (read once), instead of the adaptive one: a
/// knob for machines where yielding or parking costs differ from the 2-vCPU VM the
/// defaults were tuned on (0 parks at once).
fn spin_override() -> Option<Duration> {
    static SPIN: OnceLock<Option<Duration>> = OnceLock::new();
    *SPIN.get_or_init(|| {
        std::env::var("DSB_TSO_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_micros)
    })
}

/// Counters of a client's timestamp combining.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CombinerStats {
    /// Requests sent to the GTM.
    pub requests: u64,
    /// Calls served (each by one of the requests).
    pub callers: u64,
    /// Times a waiting caller parked (and so had to be woken) instead of finding its
    /// answer while spinning.
    pub parks: u64,
}

/// Combines concurrent timestamp requests into one request per round trip.
pub(crate) struct Combiner {
    state: Mutex<Open>,
    /// Mirror of `Open::in_flight` for waiters that poll without the lock.
    in_flight: AtomicBool,
    /// Most timestamps in one request.
    max_per_request: u32,
    /// Moving average of the time a request takes, in nanoseconds.
    request_ns: AtomicU64,
    requests: AtomicU64,
    callers: AtomicU64,
    parks: AtomicU64,
}

struct Open {
    batch: Arc<Batch>,
    in_flight: bool,
}

/// One request's worth of callers.
struct Batch {
    /// Timestamps asked for by the callers that joined (under the combiner lock).
    requested: AtomicU32,
    /// Set (under the combiner lock) when a leader takes the batch to send it.
    closed: AtomicBool,
    /// The first timestamp of the granted range, or why there is none.
    result: OnceLock<Result<Timestamp, GtmError>>,
    /// Members parked on `signal` (or about to); the leader wakes only if there are any.
    sleepers: AtomicU32,
    /// Bumped when `result` is set, or when this (open) batch may now be sent: the
    /// futex word parked members sleep on.
    signal: AtomicU32,
}

impl Batch {
    fn new() -> Arc<Batch> {
        Arc::new(Batch {
            requested: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            result: OnceLock::new(),
            sleepers: AtomicU32::new(0),
            signal: AtomicU32::new(0),
        })
    }

    /// Wakes parked members: all of them for a result, one for a chance to lead.
    fn wake(&self, all: bool) {
        // Pairs with `park`: either the parker sees the change made before this call,
        // or we see it counted (and its futex wait fails or is woken).
        self.signal.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake(&self.signal, if all { i32::MAX } else { 1 });
        }
    }
}

impl Combiner {
    pub(crate) fn new(max_per_request: u32) -> Combiner {
        Combiner {
            state: Mutex::new(Open {
                batch: Batch::new(),
                in_flight: false,
            }),
            in_flight: AtomicBool::new(false),
            max_per_request,
            request_ns: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            callers: AtomicU64::new(0),
            parks: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> CombinerStats {
        CombinerStats {
            requests: self.requests.load(Ordering::Relaxed),
            callers: self.callers.load(Ordering::Relaxed),
            parks: self.parks.load(Ordering::Relaxed),
        }
    }

    /// `count` (1..=max) consecutive fresh timestamps, fetched together with those of
    /// concurrent callers; `fetch(n)` asks the GTM for `n` and returns the first.
    pub(crate) fn timestamps(
        &self,
        count: u32,
        timeout: Duration,
        fetch: impl Fn(u32) -> Result<Timestamp, GtmError>,
    ) -> Result<Timestamp, GtmError> {
        debug_assert!(count >= 1 && count <= self.max_per_request);
        let deadline = Instant::now() + timeout;
        let (batch, offset) = self.join(count, deadline)?;
        let first = self.await_batch(&batch, deadline, &fetch)?;
        Ok(Timestamp(first.0 + offset as u64))
    }

    /// Joins the open batch; the batch and this caller's offset in it.
    fn join(&self, count: u32, deadline: Instant) -> Result<(Arc<Batch>, u32), GtmError> {
        loop {
            let st = self.state.lock();
            let offset = st.batch.requested.load(Ordering::Relaxed);
            if offset == 0 || offset + count <= self.max_per_request {
                st.batch.requested.store(offset + count, Ordering::Relaxed);
                self.callers.fetch_add(1, Ordering::Relaxed);
                return Ok((st.batch.clone(), offset));
            }
            // Full: wait for it to leave (rare: only callers asking for many at once).
            drop(st);
            if Instant::now() >= deadline {
                return Err(GtmError::Timeout("timestamp batch stayed full".into()));
            }
            std::thread::yield_now();
        }
    }

    /// Takes `batch` to send if it is still open and no request is in flight; the
    /// number of timestamps it asks for.
    fn try_close(&self, batch: &Arc<Batch>) -> Option<u32> {
        if self.in_flight.load(Ordering::Acquire) || batch.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut st = self.state.lock();
        if st.in_flight || !Arc::ptr_eq(&st.batch, batch) {
            return None;
        }
        st.in_flight = true;
        self.in_flight.store(true, Ordering::SeqCst);
        st.batch = Batch::new();
        batch.closed.store(true, Ordering::SeqCst);
        Some(batch.requested.load(Ordering::Relaxed))
    }

    /// Sends `batch` (closed by us, `total` timestamps), lets the batch that filled up
    /// meanwhile go, and publishes the answer.
    fn lead(&self, batch: &Batch, total: u32, fetch: &impl Fn(u32) -> Result<Timestamp, GtmError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let r = fetch(total);
        let took = sent.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let avg = self.request_ns.load(Ordering::Relaxed);
        let avg = if avg == 0 {
            took
        } else {
            avg - avg / 8 + took / 8
        };
        self.request_ns.store(avg, Ordering::Relaxed);
        // The next batch first: its request travels while this one's members collect.
        let next = {
            let mut st = self.state.lock();
            st.in_flight = false;
            self.in_flight.store(false, Ordering::SeqCst);
            (st.batch.requested.load(Ordering::Relaxed) > 0).then(|| st.batch.clone())
        };
        if let Some(next) = next {
            next.wake(false);
        }
        let _ = batch.result.set(r);
        batch.wake(true);
    }

    /// How long a waiter spins before it parks: a few recent request times, bounded.
    fn spin_budget(&self) -> Duration {
        spin_override().unwrap_or_else(|| {
            (Duration::from_nanos(self.request_ns.load(Ordering::Relaxed)) * SPIN_ROUND_TRIPS)
                .clamp(MIN_SPIN, MAX_SPIN)
        })
    }

    /// Waits for `batch`'s answer, leading it when it may be sent.
    fn await_batch(
        &self,
        batch: &Arc<Batch>,
        deadline: Instant,
        fetch: &impl Fn(u32) -> Result<Timestamp, GtmError>,
    ) -> Result<Timestamp, GtmError> {
        let start = Instant::now();
        let spin = self.spin_budget();
        loop {
            if let Some(r) = batch.result.get() {
                return r.as_ref().copied().map_err(duplicate);
            }
            if let Some(total) = self.try_close(batch) {
                self.lead(batch, total, fetch);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(GtmError::Timeout("combined timestamp request".into()));
            }
            if now.duration_since(start) < spin {
                std::thread::yield_now();
            } else {
                self.parks.fetch_add(1, Ordering::Relaxed);
                self.park(batch, deadline);
            }
        }
    }

    /// Sleeps until `batch` has its answer or may be sent (or a while has passed).
    fn park(&self, batch: &Batch, deadline: Instant) {
        let seen = batch.signal.load(Ordering::SeqCst);
        batch.sleepers.fetch_add(1, Ordering::SeqCst);
        let sendable =
            !self.in_flight.load(Ordering::SeqCst) && !batch.closed.load(Ordering::SeqCst);
        if batch.result.get().is_none() && !sendable {
            // Bounded so that a missed chance to lead costs latency, never liveness.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(10));
            futex::wait(&batch.signal, seen, wait);
        }
        batch.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Process-private futex wait and wake: a wake-up of every parked member of a batch in
/// one system call, without a mutex they would have to take again one after another
/// (which is what a condition variable makes them do).
mod futex {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    /// Sleeps while `*word == expected`, at most `timeout` (or until woken).
    pub(super) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT_PRIVATE on a valid, aligned u32 that outlives the call;
        // the kernel only reads `ts`. Any result (woken, timeout, EAGAIN, EINTR) is fine:
        // the caller re-checks its condition.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    /// Wakes up to `n` threads sleeping on `word`.
    pub(super) fn wake(word: &AtomicU32, n: i32) {
        // SAFETY: FUTEX_WAKE_PRIVATE on a valid, aligned u32; no memory is touched.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                n,
                0usize,
                0usize,
                0usize,
            );
        }
    }
}

/// A copy of `e` for each caller that shared the failed request.
fn duplicate(e: &GtmError) -> GtmError {
    match e {
        GtmError::Aborted => GtmError::Aborted,
        GtmError::Fenced(m) => GtmError::Fenced(m.clone()),
        GtmError::AlreadyCommitted(ts) => GtmError::AlreadyCommitted(*ts),
        GtmError::NotRegistered => GtmError::NotRegistered,
        GtmError::UnknownTxn(m) => GtmError::UnknownTxn(m.clone()),
        GtmError::Busy(m) => GtmError::Busy(m.clone()),
        GtmError::BadRequest(m) => GtmError::BadRequest(m.clone()),
        GtmError::Internal(m) => GtmError::Internal(m.clone()),
        GtmError::Protocol(m) => GtmError::Protocol(m.clone()),
        GtmError::Timeout(m) => GtmError::Timeout(m.clone()),
        GtmError::Fabric(f) => GtmError::Fabric(match f {
            FabricError::Io(e) => FabricError::Io(std::io::Error::new(e.kind(), e.to_string())),
            FabricError::Refused(m) => FabricError::Refused(m.clone()),
            FabricError::Protocol(m) => FabricError::Protocol(m.clone()),
            FabricError::Disconnected => FabricError::Disconnected,
            FabricError::Timeout(d) => FabricError::Timeout(*d),
            FabricError::Remote(m) => FabricError::Remote(m.clone()),
            FabricError::TooLarge(m) => FabricError::TooLarge(m.clone()),
            FabricError::Unsupported(m) => FabricError::Unsupported(m.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A fake GTM: grants ranges from one counter, after a short "round trip".
    struct FakeGtm {
        next: AtomicU64,
        requests: AtomicU64,
        delay: Duration,
    }

    impl FakeGtm {
        fn grant(&self, n: u32) -> Result<Timestamp, GtmError> {
            self.requests.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(self.delay);
            Ok(Timestamp(self.next.fetch_add(n as u64, Ordering::SeqCst)))
        }
    }

    /// Many callers: timestamps unique, strictly increasing per thread, ranges intact,
    /// and requests shared.
    #[test]
    fn combined_timestamps_are_unique_and_increase_per_caller() {
        let comb = Combiner::new(1 << 16);
        let gtm = FakeGtm {
            next: AtomicU64::new(1),
            requests: AtomicU64::new(0),
            delay: Duration::from_micros(200),
        };
        let per_thread: Vec<Vec<(u64, u32)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..32u32)
                .map(|t| {
                    let (comb, gtm) = (&comb, &gtm);
                    s.spawn(move || {
                        let mut got = Vec::new();
                        for i in 0..300u32 {
                            let count = 1 + (t + i) % 3;
                            let first = comb
                                .timestamps(count, Duration::from_secs(10), |n| gtm.grant(n))
                                .unwrap();
                            got.push((first.0, count));
                        }
                        got
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seen = HashSet::new();
        for got in &per_thread {
            for w in got.windows(2) {
                assert!(w[1].0 >= w[0].0 + w[0].1 as u64, "went backwards: {w:?}");
            }
            for &(first, count) in got {
                for ts in first..first + count as u64 {
                    assert!(seen.insert(ts), "timestamp {ts} handed out twice");
                }
            }
        }
        let requests = gtm.requests.load(Ordering::Relaxed);
        assert!(
            requests < 32 * 300 / 2,
            "{requests} requests for {} callers: not combined",
            32 * 300
        );
    }

    /// A timestamp is granted after its caller asked: never from a request already sent.
    #[test]
    fn a_caller_never_shares_a_request_sent_before_it_asked() {
        let comb = Combiner::new(1 << 16);
        let clock = AtomicU64::new(1);
        let fetch = |n: u32| {
            std::thread::sleep(Duration::from_micros(100));
            Ok(Timestamp(clock.fetch_add(n as u64, Ordering::SeqCst)))
        };
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let before = clock.load(Ordering::SeqCst);
                        let ts = comb.timestamps(1, Duration::from_secs(10), fetch).unwrap();
                        assert!(ts.0 >= before, "stale timestamp {ts} (clock was {before})");
                    }
                });
            }
        });
    }

    /// A failed request fails every caller that shared it, and the next one goes out.
    #[test]
    fn an_error_reaches_every_member_and_the_combiner_recovers() {
        let comb = Combiner::new(1 << 16);
        let fail = AtomicBool::new(true);
        let fetch = |_n: u32| {
            std::thread::sleep(Duration::from_millis(20));
            if fail.swap(false, Ordering::SeqCst) {
                Err(GtmError::Fabric(FabricError::Disconnected))
            } else {
                Ok(Timestamp(7))
            }
        };
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| comb.timestamps(1, Duration::from_secs(10), fetch)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(GtmError::Fabric(FabricError::Disconnected)))));
        assert!(comb.timestamps(1, Duration::from_secs(10), fetch).is_ok());
    }

    /// A caller that times out leaves; callers after it are still served.
    #[test]
    fn a_timed_out_caller_does_not_stall_the_combiner() {
        let comb = Combiner::new(1 << 16);
        let slow = AtomicBool::new(true);
        let fetch = |_n: u32| {
            if slow.swap(false, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(Timestamp(1))
        };
        std::thread::scope(|s| {
            let leader = s.spawn(|| comb.timestamps(1, Duration::from_secs(10), fetch));
            std::thread::sleep(Duration::from_millis(20));
            let r = comb.timestamps(1, Duration::from_millis(50), fetch);
            assert!(matches!(r, Err(GtmError::Timeout(_))), "{r:?}");
            assert!(leader.join().unwrap().is_ok());
        });
        assert!(comb.timestamps(1, Duration::from_secs(10), fetch).is_ok());
    }
}
