//! `GtmClient`: what a compute node uses to talk to the GTM.
//!
//! Every call is one RPC over a shared fabric [`Connection`]; concurrent callers on many
//! threads share messages through the fabric's adaptive batching, and the GTM handles
//! each message's requests as one batch (one timestamp grant, one fsync). With batching
//! on, concurrent `timestamp(s)` calls are also combined into one request per round trip
//! (see [`combiner`](super::combiner)).

use super::combiner::{Combiner, CombinerStats};
use super::layout::{self, EntryState};
use super::proto::{
    ErrorKind, Request, Response, SweepPoint, MAX_OUTCOMES_PER_REQUEST, MAX_TIMESTAMPS_PER_REQUEST,
};
use super::{GtmError, TxnStatus, STATUS_REGION};
use crate::fabric::{ClientOptions, Connection, Endpoint, Op};
use crate::ids::{Epoch, NodeId, RegionId, Timestamp, TxnId};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most entries read in one one-sided batch.
const MAX_READS_PER_POST: usize = 4096;

/// This node's membership as the GTM granted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    pub node: NodeId,
    pub epoch: Epoch,
    /// Lease length granted per renewal.
    pub lease: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Membership {
    reg: Registration,
    /// The latest instant the GTM can still consider the lease valid, measured from
    /// when the last successful renewal was *sent*; never later than the GTM's expiry.
    deadline: Instant,
    fenced: bool,
}

/// A compute node's handle on the GTM. Share it between threads (`Arc<GtmClient>`).
pub struct GtmClient {
    conn: Connection,
    region: RegionId,
    capacity: u64,
    member: Mutex<Option<Membership>>,
    /// Safety margin before the lease deadline within which no new commit (or write)
    /// may start: covers the time a commit takes to reach the GTM.
    margin: Mutex<Duration>,
    timeout: Duration,
    /// With batching on, concurrent `timestamps` callers are combined into one request
    /// (as TiDB PD's TSO client does): one RPC, one range, split among the callers.
    combiner: Option<Combiner>,
    /// Set by [`GtmClient::leave`]: the end of the lease is expected, not an alarm.
    left: AtomicBool,
}

impl GtmClient {
    /// Connects and reads the status table's header (checking its magic and version).
    pub fn connect(endpoint: &Endpoint, opts: &ClientOptions) -> Result<GtmClient, GtmError> {
        let conn = Connection::connect(endpoint, opts)?;
        let desc = conn.region(STATUS_REGION).ok_or_else(|| {
            GtmError::Protocol(format!("{endpoint} offers no status-table region"))
        })?;
        let header = read_one(&conn, STATUS_REGION, 0, layout::HEADER_LEN as u32)?;
        if header.len() != layout::HEADER_LEN as usize {
            return Err(GtmError::Protocol(format!(
                "{endpoint}: status-table header read returned {} bytes",
                header.len()
            )));
        }
        let word = |off: u64| {
            let o = off as usize;
            u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"))
        };
        if word(layout::OFF_MAGIC) != layout::MAGIC {
            return Err(GtmError::Protocol(format!(
                "{endpoint}: region {STATUS_REGION} is not a GTM status table"
            )));
        }
        if word(layout::OFF_VERSION) != layout::LAYOUT_VERSION {
            return Err(GtmError::Protocol(format!(
                "{endpoint}: status table layout {} (this client reads {})",
                word(layout::OFF_VERSION),
                layout::LAYOUT_VERSION
            )));
        }
        let capacity = word(layout::OFF_CAPACITY);
        let fits = capacity
            .checked_mul(layout::ENTRY_LEN)
            .and_then(|b| b.checked_add(layout::HEADER_LEN))
            .is_some_and(|len| len <= desc.len);
        if capacity == 0 || !fits {
            return Err(GtmError::Protocol(format!(
                "{endpoint}: status table of {capacity} entries does not fit its region"
            )));
        }
        Ok(GtmClient {
            conn,
            region: STATUS_REGION,
            capacity,
            member: Mutex::new(None),
            margin: Mutex::new(Duration::ZERO),
            timeout: opts.timeout,
            combiner: opts
                .batching
                .then(|| Combiner::new(MAX_TIMESTAMPS_PER_REQUEST)),
            left: AtomicBool::new(false),
        })
    }

    /// The underlying connection (for its statistics).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn rpc(&self, req: &Request) -> Result<Response, GtmError> {
        let out = self.conn.call(&req.encode())?;
        match Response::decode(&out).map_err(|e| GtmError::Protocol(e.to_string()))? {
            Response::Error { kind, message } => Err(match kind {
                ErrorKind::Fenced => GtmError::Fenced(message),
                ErrorKind::UnknownTxn => GtmError::UnknownTxn(message),
                ErrorKind::BadRequest => GtmError::BadRequest(message),
                ErrorKind::Busy => GtmError::Busy(message),
                ErrorKind::Internal => GtmError::Internal(message),
            }),
            r => Ok(r),
        }
    }

    fn unexpected(r: Response) -> GtmError {
        GtmError::Protocol(format!("unexpected response {r:?}"))
    }

    /// Registers `node`; the GTM answers with a new epoch (larger than any this node had)
    /// and a lease that starts now. A previous incarnation of the node is fenced.
    pub fn register(&self, node: NodeId) -> Result<Registration, GtmError> {
        let sent = Instant::now();
        match self.rpc(&Request::Register { node })? {
            Response::Registered {
                epoch,
                lease_ms,
                status_region,
                status_capacity,
            } => {
                if status_region != self.region || status_capacity != self.capacity {
                    return Err(GtmError::Protocol(
                        "registration names another status table than the handshake".into(),
                    ));
                }
                let lease = Duration::from_millis(lease_ms as u64);
                let reg = Registration { node, epoch, lease };
                *self.margin.lock() = lease / 10;
                *self.member.lock() = Some(Membership {
                    reg,
                    deadline: sent + lease,
                    fenced: false,
                });
                Ok(reg)
            }
            r => Err(Self::unexpected(r)),
        }
    }

    /// Sets the safety margin before the lease deadline (default: a tenth of the lease).
    pub fn set_fence_margin(&self, margin: Duration) {
        *self.margin.lock() = margin;
    }

    pub fn registration(&self) -> Option<Registration> {
        self.member.lock().map(|m| m.reg)
    }

    /// The instant after which this node must not write (lease deadline minus margin).
    pub fn write_deadline(&self) -> Option<Instant> {
        let margin = *self.margin.lock();
        self.member
            .lock()
            .map(|m| m.deadline.checked_sub(margin).unwrap_or(m.deadline))
    }

    /// The local fence: `Ok` while this node's lease is certainly valid at the GTM with
    /// the safety margin to spare. Compute nodes call it before every write and commit.
    pub fn check_lease(&self) -> Result<Registration, GtmError> {
        let margin = *self.margin.lock();
        let m = (*self.member.lock()).ok_or(GtmError::NotRegistered)?;
        if m.fenced {
            return Err(GtmError::Fenced(format!(
                "node {} epoch {} was fenced by the GTM",
                m.reg.node, m.reg.epoch
            )));
        }
        if Instant::now() + margin >= m.deadline {
            return Err(GtmError::Fenced(format!(
                "node {} epoch {}: lease may have run out (no renewal in time)",
                m.reg.node, m.reg.epoch
            )));
        }
        Ok(m.reg)
    }

    fn mark_fenced(&self) {
        if let Some(m) = self.member.lock().as_mut() {
            m.fenced = true;
        }
    }

    fn fenced<T>(&self, r: Result<T, GtmError>) -> Result<T, GtmError> {
        if let Err(GtmError::Fenced(_)) = &r {
            self.mark_fenced();
        }
        r
    }

    /// Renews the lease. `Fenced` means the lease already ran out at the GTM: the node
    /// must stop writing and register again (getting a new epoch).
    pub fn heartbeat(&self) -> Result<Registration, GtmError> {
        let m = (*self.member.lock()).ok_or(GtmError::NotRegistered)?;
        if m.fenced {
            return Err(GtmError::Fenced("node was fenced".into()));
        }
        let sent = Instant::now();
        if sent >= m.deadline {
            // The lease may have lapsed at the GTM already: whatever the GTM answers
            // now, this epoch may have been declared dead, so it never comes back.
            self.mark_fenced();
            return Err(GtmError::Fenced(format!(
                "node {} epoch {}: lease ran out before it was renewed",
                m.reg.node, m.reg.epoch
            )));
        }
        let r = self.rpc(&Request::Heartbeat {
            node: m.reg.node,
            epoch: m.reg.epoch,
        });
        match self.fenced(r)? {
            Response::LeaseRenewed { lease_ms } => {
                let mut g = self.member.lock();
                let Some(cur) = g.as_mut().filter(|c| c.reg.epoch == m.reg.epoch) else {
                    return Err(GtmError::Fenced("re-registered meanwhile".into()));
                };
                let until = sent + Duration::from_millis(lease_ms as u64);
                cur.deadline = cur.deadline.max(until);
                Ok(cur.reg)
            }
            r => Err(Self::unexpected(r)),
        }
    }

    /// Renews the lease every `every` on a background thread until the handle drops or
    /// the node is fenced.
    pub fn spawn_heartbeats(self: &Arc<Self>, every: Duration) -> HeartbeatThread {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, stop2) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("gtm-heartbeat".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    match client.heartbeat() {
                        Ok(_) => {}
                        Err(e @ (GtmError::Fenced(_) | GtmError::NotRegistered)) => {
                            if client.left.load(Ordering::Acquire) {
                                tracing::debug!("left the cluster; heartbeats stop");
                            } else {
                                tracing::warn!(error = %e, "lease lost; heartbeats stop");
                            }
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
                    }
                    // Sleep the full interval: park may return early (spurious wake-ups),
                    // and only `stop` should cut the wait short.
                    let next = Instant::now() + every;
                    while !stop2.load(Ordering::Acquire) {
                        let now = Instant::now();
                        if now >= next {
                            break;
                        }
                        std::thread::park_timeout(next - now);
                    }
                }
            })
            .expect("spawn heartbeat thread");
        HeartbeatThread {
            stop,
            thread: Some(thread),
        }
    }

    /// Starts a transaction: its id and its snapshot timestamp.
    pub fn begin(&self) -> Result<(TxnId, Timestamp), GtmError> {
        let reg = self.check_lease()?;
        let r = self.rpc(&Request::Begin {
            node: reg.node,
            epoch: reg.epoch,
        });
        match self.fenced(r)? {
            Response::Begun { txn, snapshot } => Ok((txn, snapshot)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// One fresh timestamp.
    pub fn timestamp(&self) -> Result<Timestamp, GtmError> {
        Ok(self.timestamps(1)?.0)
    }

    /// `count` consecutive fresh timestamps: `(first, count)`.
    pub fn timestamps(&self, count: u32) -> Result<(Timestamp, u32), GtmError> {
        if count == 0 || count > MAX_TIMESTAMPS_PER_REQUEST {
            return Err(GtmError::BadRequest(format!(
                "{count} timestamps: 1..={MAX_TIMESTAMPS_PER_REQUEST} per call"
            )));
        }
        match &self.combiner {
            None => self.timestamps_rpc(count),
            Some(comb) => {
                let first = comb.timestamps(count, self.timeout, |n| {
                    self.timestamps_rpc(n).map(|(first, _)| first)
                })?;
                Ok((first, count))
            }
        }
    }

    /// Timestamp callers served per combined request so far (1.0 without batching).
    pub fn timestamp_callers_per_request(&self) -> f64 {
        self.combiner.as_ref().map_or(1.0, |c| {
            let s = c.stats();
            s.callers as f64 / s.requests.max(1) as f64
        })
    }

    /// Counters of the timestamp combiner (`None` without batching): requests, callers
    /// served, and how often a caller had to park and be woken.
    pub fn timestamp_combining(&self) -> Option<CombinerStats> {
        self.combiner.as_ref().map(Combiner::stats)
    }

    fn timestamps_rpc(&self, count: u32) -> Result<(Timestamp, u32), GtmError> {
        match self.rpc(&Request::Timestamps { count })? {
            Response::Timestamps { first, count: n } if n == count => Ok((first, n)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Commits `txn`: its commit timestamp once the commit record is durable. Refused
    /// locally with `Fenced` if the lease could run out before the GTM decides.
    pub fn commit(&self, txn: TxnId) -> Result<Timestamp, GtmError> {
        let reg = self.check_lease()?;
        self.commit_as(reg.node, reg.epoch, txn)
    }

    /// Commit without the local fence check (the GTM still checks the lease): for tests
    /// that show the GTM's own refusal.
    pub fn commit_as(&self, node: NodeId, epoch: Epoch, txn: TxnId) -> Result<Timestamp, GtmError> {
        let r = self.rpc(&Request::Commit { node, epoch, txn });
        match self.fenced(r)? {
            Response::Committed { commit_ts } => Ok(commit_ts),
            Response::Aborted => Err(GtmError::Aborted),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Aborts `txn` (any node's: a wound). `Ok` if it is aborted now (by this call or
    /// before); `AlreadyCommitted` if a commit won and is durable; `Busy` if a commit
    /// won and its record is still on its way to disk (its outcome will be a commit).
    pub fn abort(&self, txn: TxnId) -> Result<(), GtmError> {
        let m = (*self.member.lock()).ok_or(GtmError::NotRegistered)?;
        let r = self.rpc(&Request::Abort {
            node: m.reg.node,
            epoch: m.reg.epoch,
            txn,
        });
        match self.fenced(r)? {
            Response::Aborted => Ok(()),
            Response::Committed { commit_ts } => Err(GtmError::AlreadyCommitted(commit_ts)),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Leaves the cluster: the GTM aborts this node's open transactions and frees its
    /// locks now instead of at lease expiry.
    pub fn leave(&self) -> Result<(), GtmError> {
        let m = (*self.member.lock()).ok_or(GtmError::NotRegistered)?;
        self.left.store(true, Ordering::Release);
        self.mark_fenced();
        match self.rpc(&Request::Leave {
            node: m.reg.node,
            epoch: m.reg.epoch,
        })? {
            Response::Left => Ok(()),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Asks for the freeze sweep: `Some((below, resume))` if this node may sweep now
    /// (stamp every row version of the txns below `below`, all of which have ended,
    /// going on after `resume`: what was made durable under this grant before), `None`
    /// if no sweep is due or another node runs one (`gtm::freeze`).
    pub fn freeze_target(&self) -> Result<Option<(TxnId, SweepPoint)>, GtmError> {
        let reg = self.check_lease()?;
        let r = self.rpc(&Request::FreezeTarget {
            node: reg.node,
            epoch: reg.epoch,
        });
        match self.fenced(r) {
            Ok(Response::FreezeTarget { below, resume }) => Ok(Some((below, resume))),
            Ok(r) => Err(Self::unexpected(r)),
            Err(GtmError::Busy(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reports the sweep granted by [`GtmClient::freeze_target`] done: every version
    /// written below `below` is stamped or dropped, and durable.
    pub fn frozen(&self, below: TxnId) -> Result<(), GtmError> {
        let reg = self.check_lease()?;
        let r = self.rpc(&Request::Frozen {
            node: reg.node,
            epoch: reg.epoch,
            below,
        });
        match self.fenced(r)? {
            Response::Frozen => Ok(()),
            r => Err(Self::unexpected(r)),
        }
    }

    /// Reports how far the sweep granted below `below` got: everything up to `point` is
    /// stamped and durable. The GTM keeps it (durably) and hands it to whoever resumes.
    pub fn freeze_progress(&self, below: TxnId, point: &SweepPoint) -> Result<(), GtmError> {
        let reg = self.check_lease()?;
        let r = self.rpc(&Request::FreezeProgress {
            node: reg.node,
            epoch: reg.epoch,
            below,
            point: point.clone(),
        });
        match self.fenced(r)? {
            Response::ProgressNoted => Ok(()),
            r => Err(Self::unexpected(r)),
        }
    }

    /// The oldest active snapshot in the cluster, computed now by the GTM.
    pub fn gc_watermark(&self) -> Result<Timestamp, GtmError> {
        match self.rpc(&Request::GcWatermark)? {
            Response::GcWatermark { ts } => Ok(ts),
            r => Err(Self::unexpected(r)),
        }
    }

    /// A snapshot timestamp without a round trip to the GTM's CPU: one more than the
    /// highest timestamp the GTM has granted, read one-sided from the status table
    /// header. It sees every commit acknowledged before the read (the GTM publishes a
    /// batch's grants before answering it, after marking its commits committing; a
    /// commit still committing is waited out by readers, as for any snapshot). Not
    /// registered with the GTM, so it does not hold back the GC watermark: only for
    /// statements of a transaction whose registered snapshot is older (read
    /// committed). Falls back to a granted timestamp if the GTM publishes none.
    pub fn published_timestamp(&self) -> Result<Timestamp, GtmError> {
        let b = read_one(&self.conn, self.region, layout::OFF_LAST_GRANTED, 8)?;
        match u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) {
            0 => self.timestamp(),
            last => Ok(Timestamp(last + 1)),
        }
    }

    /// The GC watermark as last published in the status table header (one-sided read).
    pub fn published_gc_watermark(&self) -> Result<Timestamp, GtmError> {
        let b = read_one(&self.conn, self.region, layout::OFF_GC_WATERMARK, 8)?;
        Ok(Timestamp(u64::from_le_bytes(
            b[..8].try_into().expect("8 bytes"),
        )))
    }

    /// Statuses of `txns` by batched one-sided reads of the status table, waiting until
    /// none is `Committing` (a commit record on its way to disk).
    ///
    /// Transactions whose slot in the ring was reused are resolved with one batched
    /// `Outcomes` RPC (see [`GtmClient::txn_status_batch_nowait`]), so the answer is
    /// `Committed(cts)` / `Aborted` for them too; `Retired` only if the GTM lost it.
    pub fn txn_status_batch(&self, txns: &[TxnId]) -> Result<Vec<TxnStatus>, GtmError> {
        let deadline = Instant::now() + self.timeout;
        let mut out = self.txn_status_batch_nowait(txns)?;
        let mut backoff = Duration::from_micros(50);
        loop {
            let waiting: Vec<usize> = (0..txns.len())
                .filter(|&i| matches!(out[i], TxnStatus::Committing(_)))
                .collect();
            if waiting.is_empty() {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Err(GtmError::Timeout(format!(
                    "{} transactions still committing after {:?}",
                    waiting.len(),
                    self.timeout
                )));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(2));
            let again: Vec<TxnId> = waiting.iter().map(|&i| txns[i]).collect();
            for (i, s) in waiting
                .into_iter()
                .zip(self.txn_status_batch_nowait(&again)?)
            {
                out[i] = s;
            }
        }
    }

    /// Statuses as the table shows them right now (`Committing` included).
    ///
    /// One batch of one-sided READs per `MAX_READS_PER_POST` (4096) txns; every entry the
    /// region can no longer answer for (its slot was reused: `Retired` in the region) is
    /// then asked of the GTM, all of them in one `Outcomes` RPC per
    /// [`MAX_OUTCOMES_PER_REQUEST`] txns. `Retired` stays only where the GTM answers it
    /// (it lost the outcome; see [`TxnStatus::Retired`]).
    pub fn txn_status_batch_nowait(&self, txns: &[TxnId]) -> Result<Vec<TxnStatus>, GtmError> {
        let mut out = self.read_statuses(txns)?;
        let retired: Vec<usize> = (0..txns.len())
            .filter(|&i| out[i] == TxnStatus::Retired)
            .collect();
        if !retired.is_empty() {
            let ask: Vec<TxnId> = retired.iter().map(|&i| txns[i]).collect();
            for (i, s) in retired.into_iter().zip(self.outcomes(&ask)?) {
                out[i] = s;
            }
        }
        Ok(out)
    }

    /// Asks the GTM (by RPC, not the region) what became of `txns`: one `Outcomes`
    /// request per [`MAX_OUTCOMES_PER_REQUEST`] of them, sent together so the fabric
    /// batches them into one message. Answers are `Committed(cts)`, `Committing(cts)`,
    /// `Aborted`, `InProgress`, `Unknown` (not begun), or `Retired` (the GTM lost it).
    pub fn outcomes(&self, txns: &[TxnId]) -> Result<Vec<TxnStatus>, GtmError> {
        let chunks: Vec<&[TxnId]> = txns.chunks(MAX_OUTCOMES_PER_REQUEST).collect();
        let ask = |chunk: &[TxnId]| -> Result<Vec<TxnStatus>, GtmError> {
            match self.rpc(&Request::Outcomes {
                txns: chunk.to_vec(),
            })? {
                Response::Outcomes(v) if v.len() == chunk.len() => Ok(v),
                r => Err(Self::unexpected(r)),
            }
        };
        match chunks.len() {
            0 => Ok(Vec::new()),
            1 => ask(chunks[0]),
            // Concurrent calls share fabric messages: one round trip for all chunks.
            _ => std::thread::scope(|s| {
                let hs: Vec<_> = chunks.iter().map(|c| s.spawn(move || ask(c))).collect();
                let mut out = Vec::with_capacity(txns.len());
                for h in hs {
                    out.extend(h.join().expect("outcomes thread panicked")?);
                }
                Ok(out)
            }),
        }
    }

    /// Statuses as the region shows them (`Retired` for recycled slots).
    fn read_statuses(&self, txns: &[TxnId]) -> Result<Vec<TxnStatus>, GtmError> {
        let mut out = Vec::with_capacity(txns.len());
        for chunk in txns.chunks(MAX_READS_PER_POST) {
            let mut todo: Vec<usize> = (0..chunk.len()).collect();
            let mut got = vec![TxnStatus::Unknown; chunk.len()];
            // Torn reads (a concurrent write) are retried; each retry is a fresh batch.
            for _attempt in 0..1000 {
                let mut ops = Vec::with_capacity(todo.len() + 1);
                ops.push(Op::Read {
                    region: self.region,
                    offset: layout::OFF_BOOT_TXN_FLOOR,
                    len: 8,
                });
                ops.extend(todo.iter().map(|&i| Op::Read {
                    region: self.region,
                    offset: layout::entry_offset(chunk[i].0, self.capacity),
                    len: layout::ENTRY_LEN as u32,
                }));
                let res = self.conn.post(&ops)?;
                let mut res = res.into_iter().map(|r| {
                    r.map_err(|e| GtmError::Protocol(format!("status read: {e}")))
                        .and_then(|o| {
                            o.into_bytes()
                                .ok_or_else(|| GtmError::Protocol("read gave no bytes".into()))
                        })
                });
                let floor_bytes = res.next().expect("one result per op")?;
                let floor = u64::from_le_bytes(floor_bytes[..8].try_into().expect("8 bytes"));
                let mut torn = Vec::new();
                for (&i, r) in todo.iter().zip(res) {
                    let bytes = r?;
                    match layout::decode_entry(&bytes) {
                        None => torn.push(i),
                        Some(e) => got[i] = interpret(chunk[i], e, floor, self.capacity),
                    }
                }
                todo = torn;
                if todo.is_empty() {
                    break;
                }
                std::thread::yield_now();
            }
            if !todo.is_empty() {
                return Err(GtmError::Timeout("status entries kept changing".into()));
            }
            out.extend(got);
        }
        Ok(out)
    }
}

/// What an entry says about `txn` (which may not be the slot's current occupant);
/// `Retired` where only the GTM can tell.
fn interpret(txn: TxnId, e: layout::Entry, boot_floor: u64, capacity: u64) -> TxnStatus {
    use std::cmp::Ordering::*;
    match e.txn.cmp(&txn.0) {
        Equal => match e.state {
            EntryState::InProgress => TxnStatus::InProgress,
            EntryState::Committing(ts) => TxnStatus::Committing(Timestamp(ts)),
            EntryState::Committed(ts) => TxnStatus::Committed(Timestamp(ts)),
            EntryState::Aborted => TxnStatus::Aborted,
        },
        // The slot was reused: the outcome is in the GTM's outcome index.
        Greater => TxnStatus::Retired,
        // At its start the GTM refilled the slots of txns in `boot_floor - C ..
        // boot_floor` from its commit log; older commits are only in its outcome index.
        Less if txn.0 < boot_floor.saturating_sub(capacity) => TxnStatus::Retired,
        // Issued before the GTM's last restart and never committed durably.
        Less if txn.0 < boot_floor => TxnStatus::Aborted,
        Less => TxnStatus::Unknown,
    }
}

fn read_one(
    conn: &Connection,
    region: RegionId,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, GtmError> {
    let mut r = conn.post(&[Op::Read {
        region,
        offset,
        len,
    }])?;
    match r.pop() {
        Some(Ok(o)) => o
            .into_bytes()
            .ok_or_else(|| GtmError::Protocol("read gave no bytes".into())),
        Some(Err(e)) => Err(GtmError::Protocol(format!("status-table read: {e}"))),
        None => Err(GtmError::Protocol("no result for a read".into())),
    }
}

/// A background lease renewer; stops (and joins) on drop.
pub struct HeartbeatThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HeartbeatThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_the_region_cannot_answer_for_are_left_to_the_gtm() {
        let e = |txn, state| layout::Entry { txn, state };
        let (floor, cap) = (100, 16);
        let at = |t: u64, entry| interpret(TxnId(t), entry, floor, cap);
        let committed = EntryState::Committed(7);
        assert_eq!(at(90, e(90, committed)), TxnStatus::Committed(Timestamp(7)));
        // Slot reused by a newer txn: only the GTM knows.
        assert_eq!(at(90, e(106, committed)), TxnStatus::Retired);
        // Older than the slots refilled at the GTM's start: only the GTM knows.
        assert_eq!(at(83, e(0, committed)), TxnStatus::Retired);
        // Refilled range without a commit record: aborted by the restart.
        assert_eq!(at(84, e(0, committed)), TxnStatus::Aborted);
        // Not begun yet.
        assert_eq!(at(120, e(104, committed)), TxnStatus::Unknown);
    }
}
