//! The stream engine shared by the `tcp` and `shm` backends: handshake, the
//! message-batching outbox, and the client/server frame loops.
//!
//! ## Adaptive batching (the outbox)
//!
//! Senders never wait for a timer. A thread that queues an item while nobody is writing
//! becomes the writer: it takes everything queued, encodes all RPC requests (or replies)
//! as one frame, writes it with one `write` call, and repeats while more arrived during
//! the write. Items queued by other threads during a write therefore leave together in
//! the next message. With batching off every item is its own frame and its own write.
//!
//! A client keeps at most `max_in_flight` RPC messages (default 1) unacknowledged at a
//! time; with batching the server acknowledges a message once its batch has been handed
//! to the service, without batching every message is one call and its reply is the
//! acknowledgement (`usize::MAX` lifts the limit: unbatched calls are then pipelined). Calls that arrive while the window is full wait in the queue
//! and leave together as soon as the acknowledgement comes back — this is what turns a
//! busy connection's requests into large batches. A flusher thread sends them if no
//! caller comes back first.
//!
//! The server "corks" its outbox while it still has unread frames buffered, so replies to
//! back-to-back requests leave together too, and while a batch is in the RPC service, so
//! synchronous replies to one batch leave as one message.

use super::auth::{self, ClusterKey};
use super::region::RegionTable;
use super::server::{PeerInfo, Replier, Request, RpcService};
use super::wire::{self, Frame, MAX_FRAME};
use super::{ClientOptions, FabricError, Op, OpResult, RegionDesc};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters of one connection's outgoing traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Messages written (each one write call; one frame or several coalesced).
    pub messages: u64,
    /// RPC requests sent (or replies, on a server connection).
    pub rpc_requests: u64,
    /// One-sided batches posted and ops in them.
    pub onesided_batches: u64,
    pub onesided_ops: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    rpc_requests: AtomicU64,
    onesided_batches: AtomicU64,
    onesided_ops: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConnStats {
        ConnStats {
            messages: self.messages.load(Ordering::Relaxed),
            rpc_requests: self.rpc_requests.load(Ordering::Relaxed),
            onesided_batches: self.onesided_batches.load(Ordering::Relaxed),
            onesided_ops: self.onesided_ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

pub(crate) enum OutItem {
    Call(u64, Vec<u8>),
    Reply(u64, Result<Vec<u8>, String>),
    /// The server handed message `msg_id`'s batch to its service.
    Ack(u64),
    /// A pre-encoded frame (one-sided batches and their responses).
    Frame(Vec<u8>),
}

#[derive(Default)]
struct OutState {
    calls: Vec<(u64, Vec<u8>)>,
    other: Vec<OutItem>,
    writing: bool,
    corked: bool,
    closed: bool,
    /// RPC messages sent and not yet acknowledged (client side, batching on).
    in_flight: usize,
    next_msg: u64,
}

/// The combining writer of one connection.
pub(crate) struct Outbox {
    state: Mutex<OutState>,
    /// Wakes the flusher when an ack opens the window while calls wait.
    window_opened: Condvar,
    writer: Mutex<Box<dyn Write + Send>>,
    batching: bool,
    /// Most unacknowledged RPC messages; `None` for no limit (servers, batching off).
    window: Option<usize>,
    counters: Counters,
}

impl Outbox {
    pub(crate) fn new(
        writer: Box<dyn Write + Send>,
        batching: bool,
        window: Option<usize>,
    ) -> Outbox {
        Outbox {
            state: Mutex::new(OutState::default()),
            window_opened: Condvar::new(),
            writer: Mutex::new(writer),
            batching,
            window,
            counters: Counters::default(),
        }
    }

    pub(crate) fn stats(&self) -> ConnStats {
        self.counters.snapshot()
    }

    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.window_opened.notify_all();
    }

    fn window_open(&self, st: &OutState) -> bool {
        self.window.is_none_or(|w| st.in_flight < w)
    }

    /// Whether the caller may become the writer now.
    fn can_lead(&self, st: &OutState) -> bool {
        !st.writing
            && !st.corked
            && !st.closed
            && (!st.other.is_empty() || (!st.calls.is_empty() && self.window_open(st)))
    }

    pub(crate) fn push(&self, item: OutItem) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        match item {
            OutItem::Call(id, p) => st.calls.push((id, p)),
            other => st.other.push(other),
        }
        if !self.can_lead(&st) {
            return Ok(());
        }
        self.drain(st)
    }

    /// Holds outgoing items back until [`Outbox::uncork`] (server side, see module doc).
    pub(crate) fn cork(&self) {
        if self.batching {
            self.state.lock().corked = true;
        }
    }

    pub(crate) fn uncork(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        st.corked = false;
        if !self.can_lead(&st) {
            return Ok(());
        }
        self.drain(st)
    }

    /// An RPC message was acknowledged: open the window and hand queued calls to the
    /// flusher (the reader thread that calls this must never block on a write).
    pub(crate) fn ack(&self) {
        let mut st = self.state.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if self.can_lead(&st) {
            self.window_opened.notify_one();
        }
    }

    /// The client's flusher thread: sends calls that queued up behind a full window when
    /// no caller comes back to send them itself.
    pub(crate) fn run_flusher(&self) {
        let mut st = self.state.lock();
        loop {
            while !st.closed && !self.can_lead(&st) {
                self.window_opened.wait(&mut st);
            }
            if st.closed {
                return;
            }
            if self.drain(st).is_err() {
                return;
            }
            st = self.state.lock();
        }
    }

    /// Becomes the writer: sends until nothing more may be sent.
    fn drain<'a>(&'a self, mut st: parking_lot::MutexGuard<'a, OutState>) -> io::Result<()> {
        st.writing = true;
        loop {
            let calls = match self.window {
                _ if !self.window_open(&st) => Vec::new(),
                // One message carries every queued call.
                _ if self.batching => std::mem::take(&mut st.calls),
                None => std::mem::take(&mut st.calls),
                // Without batching each call is a message of its own.
                Some(w) => {
                    let n = (w - st.in_flight).min(st.calls.len());
                    st.calls.drain(..n).collect()
                }
            };
            let msg_id = if calls.is_empty() || self.window.is_none() {
                0
            } else if self.batching {
                st.in_flight += 1;
                st.next_msg += 1;
                st.next_msg
            } else {
                // Acknowledged by their replies.
                st.in_flight += calls.len();
                0
            };
            let other = std::mem::take(&mut st.other);
            drop(st);
            let res = self.write_items(msg_id, calls, other);
            st = self.state.lock();
            if let Err(e) = res {
                st.writing = false;
                st.closed = true;
                self.window_opened.notify_all();
                return Err(e);
            }
            st.writing = false;
            if !self.can_lead(&st) {
                return Ok(());
            }
            st.writing = true;
        }
    }

    fn write_items(
        &self,
        msg_id: u64,
        calls: Vec<(u64, Vec<u8>)>,
        other: Vec<OutItem>,
    ) -> io::Result<()> {
        let mut w = self.writer.lock();
        let c = &self.counters;
        let send = |buf: &[u8], w: &mut Box<dyn Write + Send>| -> io::Result<()> {
            w.write_all(buf)?;
            w.flush()?;
            c.messages.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            Ok(())
        };
        let mut rpc_count = 0u64;
        if !self.batching {
            let frames = calls.into_iter().map(|(id, p)| {
                Frame::RpcReq {
                    msg_id: 0,
                    calls: vec![(id, p)],
                }
                .to_bytes()
            });
            let others = other.into_iter().filter_map(|item| match item {
                OutItem::Reply(id, r) => Some(
                    Frame::RpcResp {
                        replies: vec![(id, r)],
                    }
                    .to_bytes(),
                ),
                OutItem::Frame(f) => Some(f),
                OutItem::Call(..) | OutItem::Ack(_) => None,
            });
            for buf in frames.chain(others) {
                rpc_count += (buf[4] == 20 || buf[4] == 21) as u64;
                send(&buf, &mut w)?;
            }
        } else {
            let mut buf = Vec::new();
            rpc_count += calls.len() as u64;
            if !calls.is_empty() {
                Frame::RpcReq { msg_id, calls }.encode(&mut buf);
            }
            let mut replies = Vec::new();
            let mut reply_bytes = 0usize;
            for item in other {
                match item {
                    OutItem::Reply(id, r) => {
                        reply_bytes += r.as_ref().map_or_else(|e| e.len(), |p| p.len()) + 16;
                        replies.push((id, r));
                        // Keep every frame under the cap: flush a full frame early.
                        if reply_bytes > MAX_FRAME / 2 {
                            rpc_count += replies.len() as u64;
                            Frame::RpcResp {
                                replies: std::mem::take(&mut replies),
                            }
                            .encode(&mut buf);
                            reply_bytes = 0;
                        }
                    }
                    OutItem::Ack(msg_id) => {
                        // Replies to a batch go before its ack.
                        if !replies.is_empty() {
                            rpc_count += replies.len() as u64;
                            Frame::RpcResp {
                                replies: std::mem::take(&mut replies),
                            }
                            .encode(&mut buf);
                            reply_bytes = 0;
                        }
                        Frame::RpcAck { msg_id }.encode(&mut buf);
                    }
                    OutItem::Frame(f) => buf.extend_from_slice(&f),
                    OutItem::Call(..) => unreachable!("calls are queued apart"),
                }
            }
            if !replies.is_empty() {
                rpc_count += replies.len() as u64;
                Frame::RpcResp { replies }.encode(&mut buf);
            }
            send(&buf, &mut w)?;
        }
        c.rpc_requests.fetch_add(rpc_count, Ordering::Relaxed);
        Ok(())
    }
}

fn send_frame<W: Write>(w: &mut W, f: &Frame) -> io::Result<()> {
    w.write_all(&f.to_bytes())?;
    w.flush()
}

fn recv_frame<R: Read>(r: &mut R) -> Result<Frame, FabricError> {
    let body = wire::read_frame(r, MAX_FRAME)?.ok_or(FabricError::Disconnected)?;
    Frame::decode(&body).map_err(|e| FabricError::Protocol(e.to_string()))
}

/// Client side of the handshake; returns the connection id and the offered regions.
pub(crate) fn client_handshake<S: Read + Write>(
    s: &mut S,
    opts: &ClientOptions,
) -> Result<(u64, Vec<RegionDesc>), FabricError> {
    let client_nonce = auth::nonce();
    send_frame(
        s,
        &Frame::Hello {
            magic: wire::MAGIC,
            version: wire::VERSION,
            batching: opts.batching,
            client_nonce,
        },
    )?;
    let (server_nonce, server_mac) = match recv_frame(s)? {
        Frame::Challenge {
            version,
            server_nonce,
            server_mac,
        } => {
            if version != wire::VERSION {
                return Err(FabricError::Refused(format!(
                    "server speaks protocol version {version}, this client {}",
                    wire::VERSION
                )));
            }
            (server_nonce, server_mac)
        }
        Frame::Refused { reason } => return Err(FabricError::Refused(reason)),
        other => return Err(unexpected("CHALLENGE", &other)),
    };
    if !ClusterKey::verify(
        &opts.key.server_mac(&client_nonce, &server_nonce),
        &server_mac,
    ) {
        return Err(FabricError::Refused(
            "cluster key mismatch: the server's proof does not match this client's cluster key (check the key file on both sides)".into(),
        ));
    }
    send_frame(
        s,
        &Frame::Auth {
            client_mac: opts.key.client_mac(&server_nonce, &client_nonce),
        },
    )?;
    match recv_frame(s)? {
        Frame::Welcome { conn_id, regions } => Ok((conn_id, regions)),
        Frame::Refused { reason } => Err(FabricError::Refused(reason)),
        other => Err(unexpected("WELCOME", &other)),
    }
}

fn unexpected(wanted: &str, got: &Frame) -> FabricError {
    let name = format!("{got:?}");
    let name = name
        .split([' ', '{', '('])
        .next()
        .unwrap_or("?")
        .to_string();
    FabricError::Protocol(format!("expected {wanted}, got {name}"))
}

/// Server side of the handshake; returns whether the client wants batching. On failure a
/// REFUSED frame with the reason has been sent (where the peer spoke our framing).
pub(crate) fn server_handshake<S: Read + Write>(
    s: &mut S,
    key: &ClusterKey,
    conn_id: u64,
    regions: &[RegionDesc],
) -> Result<bool, FabricError> {
    let refuse = |s: &mut S, reason: String| -> FabricError {
        let _ = send_frame(
            s,
            &Frame::Refused {
                reason: reason.clone(),
            },
        );
        FabricError::Refused(reason)
    };
    let (batching, client_nonce) = match recv_frame(s) {
        Ok(Frame::Hello {
            magic,
            version,
            batching,
            client_nonce,
        }) => {
            if magic != wire::MAGIC {
                return Err(refuse(s, "bad magic: not a fabric client".into()));
            }
            if version != wire::VERSION {
                return Err(refuse(
                    s,
                    format!(
                        "unsupported protocol version {version}; this server speaks {}",
                        wire::VERSION
                    ),
                ));
            }
            (batching, client_nonce)
        }
        Ok(other) => return Err(refuse(s, format!("{}", unexpected("HELLO", &other)))),
        Err(e) => return Err(refuse(s, format!("bad handshake: {e}"))),
    };
    let server_nonce = auth::nonce();
    send_frame(
        s,
        &Frame::Challenge {
            version: wire::VERSION,
            server_nonce,
            server_mac: key.server_mac(&client_nonce, &server_nonce),
        },
    )?;
    match recv_frame(s)? {
        Frame::Auth { client_mac } => {
            if !ClusterKey::verify(&key.client_mac(&server_nonce, &client_nonce), &client_mac) {
                return Err(refuse(s, "authentication failed: wrong cluster key".into()));
            }
        }
        other => return Err(refuse(s, format!("{}", unexpected("AUTH", &other)))),
    }
    send_frame(
        s,
        &Frame::Welcome {
            conn_id,
            regions: regions.to_vec(),
        },
    )?;
    Ok(batching)
}

enum Reply {
    Rpc(Result<Vec<u8>, String>),
    OneSided(Vec<OpResult>),
}

/// Where one caller waits for its answer. A condition variable rather than thread
/// park/unpark: an unpark that races a caller which already saw its answer would leave a
/// token behind and make the caller's next, unrelated `park` return at once.
struct Slot {
    value: Mutex<Option<Option<Reply>>>,
    ready: Condvar,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            value: Mutex::new(None),
            ready: Condvar::new(),
        }
    }

    /// `None` means the connection died before the answer came.
    fn fill(&self, v: Option<Reply>) {
        *self.value.lock() = Some(v);
        self.ready.notify_one();
    }

    fn take(&self) -> Option<Option<Reply>> {
        self.value.lock().take()
    }

    /// Waits until filled or `deadline`; the answer, or `None` on timeout.
    fn wait_until(&self, deadline: Instant) -> Option<Option<Reply>> {
        let mut v = self.value.lock();
        while v.is_none() {
            if self.ready.wait_until(&mut v, deadline).timed_out() {
                break;
            }
        }
        v.take()
    }
}

const PENDING_SHARDS: usize = 16;
/// How long a caller polls for its answer before it parks.
const CALLER_POLL: Duration = Duration::from_micros(50);

/// [`CALLER_POLL`], or `DSB_CALLER_POLL_US` from the environment (read once): a knob for
/// machines where a park/unpark pair is cheaper or dearer than on the 2-vCPU VM this
/// default was tuned on.
fn caller_poll() -> Duration {
    static POLL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *POLL.get_or_init(|| {
        std::env::var("DSB_CALLER_POLL_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_micros)
            .unwrap_or(CALLER_POLL)
    })
}

/// Calls awaiting answers, sharded so that callers woken together do not queue on one
/// lock.
struct Pending {
    shards: [Mutex<HashMap<u64, Arc<Slot>>>; PENDING_SHARDS],
}

impl Pending {
    fn new() -> Pending {
        Pending {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Arc<Slot>>> {
        &self.shards[id as usize % PENDING_SHARDS]
    }
    fn insert(&self, id: u64, slot: Arc<Slot>) {
        self.shard(id).lock().insert(id, slot);
    }
    fn remove(&self, id: u64) -> Option<Arc<Slot>> {
        self.shard(id).lock().remove(&id)
    }
    fn drain(&self) -> Vec<Arc<Slot>> {
        self.shards
            .iter()
            .flat_map(|s| std::mem::take(&mut *s.lock()).into_values())
            .collect()
    }
}

/// The client half of a stream connection: calls, one-sided batches, pending answers.
pub(crate) struct ClientCore {
    outbox: Outbox,
    pending: Pending,
    /// Unbatched calls under a window: each reply acknowledges its one-call message.
    acked_by_replies: bool,
    next_id: AtomicU64,
    closed: AtomicBool,
    regions: Vec<RegionDesc>,
    timeout: Duration,
    shutdown: Box<dyn Fn() + Send + Sync>,
}

impl ClientCore {
    pub(crate) fn new(
        writer: Box<dyn Write + Send>,
        opts: &ClientOptions,
        regions: Vec<RegionDesc>,
        shutdown: Box<dyn Fn() + Send + Sync>,
    ) -> ClientCore {
        ClientCore {
            outbox: Outbox::new(
                writer,
                opts.batching,
                (opts.max_in_flight != usize::MAX).then_some(opts.max_in_flight.max(1)),
            ),
            acked_by_replies: !opts.batching && opts.max_in_flight != usize::MAX,
            pending: Pending::new(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            regions,
            timeout: opts.timeout,
            shutdown,
        }
    }

    pub(crate) fn regions(&self) -> &[RegionDesc] {
        &self.regions
    }

    pub(crate) fn stats(&self) -> ConnStats {
        self.outbox.stats()
    }

    fn submit(&self, item: impl FnOnce(u64) -> OutItem) -> Result<Reply, FabricError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(FabricError::Disconnected);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new());
        self.pending.insert(id, slot.clone());
        if self.outbox.push(item(id)).is_err() {
            self.pending.remove(id);
            self.close();
            return Err(FabricError::Disconnected);
        }
        let start = Instant::now();
        // Answers usually come within tens of microseconds; checking (and yielding the
        // core) for a moment saves the far costlier park/unpark pair.
        let poll = caller_poll();
        while start.elapsed() < poll {
            if let Some(v) = slot.take() {
                return v.ok_or(FabricError::Disconnected);
            }
            std::thread::yield_now();
        }
        let deadline = start + self.timeout;
        if let Some(v) = slot.wait_until(deadline) {
            return v.ok_or(FabricError::Disconnected);
        }
        self.pending.remove(id);
        // The answer may have landed between the timeout and the removal.
        match slot.take() {
            Some(v) => v.ok_or(FabricError::Disconnected),
            None => Err(FabricError::Timeout(self.timeout)),
        }
    }

    pub(crate) fn call(&self, request: &[u8]) -> Result<Vec<u8>, FabricError> {
        if request.len() > MAX_FRAME / 2 {
            return Err(FabricError::TooLarge(format!(
                "request of {} bytes exceeds {}",
                request.len(),
                MAX_FRAME / 2
            )));
        }
        match self.submit(|id| OutItem::Call(id, request.to_vec()))? {
            Reply::Rpc(r) => r.map_err(FabricError::Remote),
            Reply::OneSided(_) => Err(FabricError::Protocol("one-sided answer to a call".into())),
        }
    }

    pub(crate) fn post_remote(&self, ops: &[Op]) -> Result<Vec<OpResult>, FabricError> {
        check_batch(ops)?;
        let n = ops.len();
        let reply = self.submit(|id| {
            let mut buf = Vec::new();
            Frame::OneSidedReq {
                batch_id: id,
                ops: ops.to_vec(),
            }
            .encode(&mut buf);
            OutItem::Frame(buf)
        })?;
        self.outbox
            .counters
            .onesided_batches
            .fetch_add(1, Ordering::Relaxed);
        self.outbox
            .counters
            .onesided_ops
            .fetch_add(n as u64, Ordering::Relaxed);
        match reply {
            Reply::OneSided(r) if r.len() == n => Ok(r),
            Reply::OneSided(r) => Err(FabricError::Protocol(format!(
                "{} results for {n} ops",
                r.len()
            ))),
            Reply::Rpc(_) => Err(FabricError::Protocol(
                "call answer to a one-sided batch".into(),
            )),
        }
    }

    /// Starts the connection's reader and flusher threads.
    pub(crate) fn start<R: Read + Send + 'static>(
        self: &Arc<Self>,
        reader: R,
        name: &str,
    ) -> io::Result<()> {
        let rx = self.clone();
        std::thread::Builder::new()
            .name(format!("{name}-rx"))
            .spawn(move || rx.run_reader(reader))?;
        let flusher = self.clone();
        std::thread::Builder::new()
            .name(format!("{name}-flush"))
            .spawn(move || flusher.outbox.run_flusher())?;
        Ok(())
    }

    /// Whether the connection ended (closed here, or the peer went away).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.outbox.close();
        (self.shutdown)();
        self.fail_pending();
    }

    fn fail_pending(&self) {
        for slot in self.pending.drain() {
            slot.fill(None);
        }
    }

    /// The client's reader loop: routes every answer to its waiting caller.
    pub(crate) fn run_reader<R: Read>(self: Arc<Self>, reader: R) {
        let mut reader = BufReader::with_capacity(256 << 10, reader);
        loop {
            let frame = match recv_frame(&mut reader) {
                Ok(f) => f,
                Err(e) => {
                    if !self.closed.load(Ordering::Acquire) {
                        tracing::debug!(error = %e, "fabric connection ended");
                    }
                    break;
                }
            };
            match frame {
                Frame::RpcResp { replies } => {
                    if self.acked_by_replies {
                        for _ in 0..replies.len() {
                            self.outbox.ack();
                        }
                    }
                    for (id, r) in replies {
                        if let Some(slot) = self.pending.remove(id) {
                            slot.fill(Some(Reply::Rpc(r)));
                        }
                    }
                }
                Frame::OneSidedResp { batch_id, results } => {
                    if let Some(slot) = self.pending.remove(batch_id) {
                        slot.fill(Some(Reply::OneSided(results)));
                    }
                }
                Frame::RpcAck { .. } => self.outbox.ack(),
                other => {
                    tracing::warn!(frame = ?unexpected("a response", &other), "closing connection");
                    break;
                }
            }
        }
        self.close();
    }
}

/// Client-side sanity limits, so a batch that the server would refuse fails here with a
/// clear error instead of closing the connection.
pub(crate) fn check_batch(ops: &[Op]) -> Result<(), FabricError> {
    if ops.len() > wire::MAX_BATCH_OPS {
        return Err(FabricError::TooLarge(format!(
            "{} ops in one batch; the limit is {}",
            ops.len(),
            wire::MAX_BATCH_OPS
        )));
    }
    let mut req = 0usize;
    let mut resp = 0usize;
    for op in ops {
        match op {
            Op::Read { len, .. } => {
                req += 17;
                resp += 6 + *len as usize;
            }
            Op::Write { data, .. } => {
                req += 17 + data.len();
                resp += 2;
            }
            _ => {
                req += 29;
                resp += 10;
            }
        }
    }
    if req.max(resp) + 16 > MAX_FRAME {
        return Err(FabricError::TooLarge(format!(
            "batch needs a {}-byte frame; the limit is {MAX_FRAME}",
            req.max(resp)
        )));
    }
    Ok(())
}

/// A server connection's frame loop: one-sided batches are answered here from the
/// region table (the "responder"); RPC batches go to the service.
pub(crate) fn serve_frames<R: Read>(
    reader: R,
    outbox: Arc<Outbox>,
    regions: &RegionTable,
    service: &Arc<dyn RpcService>,
    peer: &PeerInfo,
) {
    let mut reader = BufReader::with_capacity(256 << 10, reader);
    loop {
        if reader.buffer().is_empty() && outbox.uncork().is_err() {
            break;
        }
        let frame = match recv_frame(&mut reader) {
            Ok(f) => f,
            Err(FabricError::Disconnected) => break,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "bad frame; closing this connection");
                break;
            }
        };
        outbox.cork();
        match frame {
            Frame::OneSidedReq { batch_id, ops } => {
                let results = regions.serve_batch(&ops);
                let mut buf = Vec::new();
                let resp = Frame::OneSidedResp { batch_id, results };
                resp.encode(&mut buf);
                if buf.len() - 4 > MAX_FRAME {
                    tracing::warn!(peer = %peer, "one-sided answer over the frame cap; closing");
                    break;
                }
                if outbox.push(OutItem::Frame(buf)).is_err() {
                    break;
                }
            }
            Frame::RpcReq { msg_id, calls } => {
                let batch = calls
                    .into_iter()
                    .map(|(id, payload)| Request {
                        payload,
                        replier: Replier::new(outbox.clone(), id),
                    })
                    .collect();
                service.handle_batch(peer, batch);
                if msg_id != 0 && outbox.push(OutItem::Ack(msg_id)).is_err() {
                    break;
                }
            }
            other => {
                tracing::warn!(peer = %peer, error = %unexpected("a request", &other), "closing connection");
                break;
            }
        }
    }
    outbox.close();
}
