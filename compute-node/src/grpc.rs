//! The gRPC server: the embedding API ([`crate::node`], [`crate::txn`]) over tonic,
//! protocol `common/proto/compute.proto` (DESIGN.md §6 "APIs").
//!
//! ## Clients and sessions
//!
//! Every call is authenticated first ([`crate::grpc_auth`]: a client token or a client
//! certificate; `UNAUTHENTICATED` otherwise, before any handler runs).
//!
//! A transaction lives on the server between calls: `Begin` starts a [`Txn`] and files
//! it under a fresh random 128-bit **session handle** bound to the client that began it;
//! the client names that handle in every later call. Handles reveal nothing (the
//! engine's transaction id, sequential, is only told to the owner in `BeginResponse`
//! for diagnostics) and another client's handle is answered exactly like one that does
//! not exist. A client may hold `max_sessions_per_client` sessions at once.
//!
//! 1. Each session has its own mutex: calls on one transaction run one at a time (a
//!    second call waits for the first), calls on different transactions in parallel.
//! 2. `Commit` and `Abort` first unfile the session (a later call sees "unknown"), then
//!    wait for any call still running on it, then finish the [`Txn`].
//! 3. After a failed call the transaction stays open, as in the embedding API; the
//!    client aborts it (a retryable error says: abort and run again). `Commit` always
//!    ends the session, whatever its outcome.
//! 4. A reaper aborts sessions idle longer than `idle_timeout` (a session whose mutex is
//!    held is busy, not idle). Their handles are remembered for a while, so a late call
//!    hears a retryable ABORTED rather than "unknown".
//! 5. Shutdown ([`ComputeService::close`]) refuses new `Begin`s and aborts every open
//!    session after its running call finishes.
//!
//! The engine is synchronous and its calls block (storage nodes, the GTM, row-lock
//! waits), so every engine call runs on tokio's blocking pool (`spawn_blocking`); the
//! async workers only move bytes. Bad input is answered with INVALID_ARGUMENT and never
//! reaches a panic; a panic in an engine call is answered with INTERNAL and the server
//! keeps serving.
//!
//! ## Errors
//!
//! [`ErrorKind`] is the wire form of [`TxnError`]: a gRPC code a generic client can act
//! on plus the exact kind in the `dsb-error-kind` trailer, so
//! [`crate::grpc_client::RemoteNode`] gives back an error with the same
//! `is_retryable()` and `is_unknown()` answers as the embedding API (table in
//! `compute.proto`). A commit whose outcome is unknown ([`TxnError::Unknown`]) is
//! `UNKNOWN` with kind `outcome_unknown` and the transaction's id in the
//! [`TXN_ID_KEY`] trailer (the TPC-C procedures' callers never saw the id); the
//! `ResolveOutcome` RPC resolves it on any node.

// tonic's handlers answer `Status` by value (176 bytes); the helpers here do the same
// rather than box it at every step.
#![allow(clippy::result_large_err)]

use crate::btree::{MAX_ENTRY_LEN, MAX_KEY_LEN};
use crate::coherence::{LockMode, ValidationMode};
use crate::grpc_auth::{client_of, AuthInterceptor, ClientAuth, ClientId};
use crate::grpc_tpcc;
use crate::node::ComputeNode;
use crate::tpcc::{self, schema::Tables};
use crate::txn::{Isolation, Resolved, Table, Txn, TxnError};
use common::ids::TxnId;
use common::proto::compute as pb;
use common::proto::compute::compute_server::{Compute, ComputeServer};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

/// Longest table name accepted (the catalog's limit).
const MAX_TABLE_NAME: usize = 200;
/// Idle-aborted ids remembered to answer late calls with ABORTED.
const REMEMBERED_REAPED: usize = 4096;

/// Metadata key of the transaction an `outcome_unknown` status is about (decimal id).
pub const TXN_ID_KEY: &str = "dsb-txn-id";

/// What a failed call means to its caller; travels as the gRPC code plus the
/// `dsb-error-kind` trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Retryable: write-write conflict, wait-die victim, aborted by the GTM or for
    /// idleness. Abort and run the transaction again.
    Conflict,
    /// The node lost its lease and may not write.
    Fenced,
    /// The transaction already ended.
    Finished,
    NoSuchTable,
    TableExists,
    /// Bad input: unknown txn id, empty table name, oversized key, ...
    BadRequest,
    TooManySessions,
    Storage,
    Gtm,
    Corrupt,
    ShuttingDown,
    /// A bug on the server, or a status without a kind (not from this server).
    Internal,
    /// The call did not reach the engine: connection refused or lost, deadline, ...
    Transport,
    /// Missing or unknown client credentials (the call touched nothing).
    Unauthenticated,
    /// Not retryable: the commit may or may not have happened (the GTM's answer was
    /// lost). Resolve the transaction by its id (`ResolveOutcome`) before running it
    /// again; from `ResolveOutcome` itself: no decision could be reached yet, ask again.
    OutcomeUnknown,
}

impl ErrorKind {
    pub fn of(e: &TxnError) -> ErrorKind {
        match e {
            TxnError::Conflict(_) => ErrorKind::Conflict,
            TxnError::Fenced(_) => ErrorKind::Fenced,
            TxnError::NoSuchTable(_) => ErrorKind::NoSuchTable,
            TxnError::TableExists(_) => ErrorKind::TableExists,
            TxnError::BadRequest(_) => ErrorKind::BadRequest,
            TxnError::Finished => ErrorKind::Finished,
            TxnError::Storage(_) => ErrorKind::Storage,
            TxnError::Gtm(_) => ErrorKind::Gtm,
            TxnError::Corrupt(_) => ErrorKind::Corrupt,
            TxnError::Unknown { .. } => ErrorKind::OutcomeUnknown,
        }
    }

    /// The same answer as [`TxnError::is_unknown`].
    pub fn is_unknown(self) -> bool {
        self == ErrorKind::OutcomeUnknown
    }

    /// The same answer as [`TxnError::is_retryable`].
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Conflict
    }

    pub fn code(self) -> Code {
        match self {
            ErrorKind::Conflict => Code::Aborted,
            ErrorKind::Fenced | ErrorKind::Finished => Code::FailedPrecondition,
            ErrorKind::NoSuchTable => Code::NotFound,
            ErrorKind::TableExists => Code::AlreadyExists,
            ErrorKind::BadRequest => Code::InvalidArgument,
            ErrorKind::TooManySessions => Code::ResourceExhausted,
            ErrorKind::Storage | ErrorKind::Gtm | ErrorKind::ShuttingDown => Code::Unavailable,
            ErrorKind::Transport => Code::Unavailable,
            ErrorKind::Corrupt => Code::DataLoss,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            // Not UNAVAILABLE: generic clients retry that, and a retried commit would
            // not tell them the outcome either.
            ErrorKind::OutcomeUnknown => Code::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Finished => "finished",
            ErrorKind::NoSuchTable => "no_such_table",
            ErrorKind::TableExists => "table_exists",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::TooManySessions => "too_many_sessions",
            ErrorKind::Storage => "storage",
            ErrorKind::Gtm => "gtm",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Internal => "internal",
            ErrorKind::Transport => "transport",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
        }
    }

    /// The kind a status carries (its `dsb-error-kind` trailer, else a guess from its
    /// code: `Transport` when the call may not have been delivered).
    pub fn of_status(s: &Status) -> ErrorKind {
        const ALL: [ErrorKind; 13] = [
            ErrorKind::Conflict,
            ErrorKind::Fenced,
            ErrorKind::Finished,
            ErrorKind::NoSuchTable,
            ErrorKind::TableExists,
            ErrorKind::BadRequest,
            ErrorKind::TooManySessions,
            ErrorKind::Storage,
            ErrorKind::Gtm,
            ErrorKind::Corrupt,
            ErrorKind::ShuttingDown,
            ErrorKind::Internal,
            ErrorKind::OutcomeUnknown,
        ];
        let named = s
            .metadata()
            .get(pb::ERROR_KIND_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ALL.into_iter().find(|k| k.as_str() == v));
        // No kind: not from this server's handlers (tonic itself, a proxy); guess from
        // the code.
        named.unwrap_or(match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                ErrorKind::Transport
            }
            Code::Aborted => ErrorKind::Conflict,
            Code::NotFound => ErrorKind::NoSuchTable,
            Code::AlreadyExists => ErrorKind::TableExists,
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::BadRequest,
            Code::ResourceExhausted => ErrorKind::TooManySessions,
            Code::DataLoss => ErrorKind::Corrupt,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            _ => ErrorKind::Internal,
        })
    }

    /// A status of this kind.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut s = Status::new(self.code(), message);
        s.metadata_mut().insert(
            pb::ERROR_KIND_KEY,
            MetadataValue::from_static(self.as_str()),
        );
        s
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status answering an engine error (with the [`TXN_ID_KEY`] trailer for an
/// unknown outcome).
pub fn status_of(e: &TxnError) -> Status {
    let mut s = ErrorKind::of(e).status(e.to_string());
    if let Some(txn) = e.unknown_txn() {
        if let Ok(v) = MetadataValue::try_from(txn.0.to_string()) {
            s.metadata_mut().insert(TXN_ID_KEY, v);
        }
    }
    s
}

/// The transaction an `outcome_unknown` status names, if any.
pub fn txn_of_status(s: &Status) -> Option<TxnId> {
    s.metadata()
        .get(TXN_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .filter(|&id| id != 0)
        .map(TxnId)
}

fn bad_request(message: impl Into<String>) -> Status {
    ErrorKind::BadRequest.status(message)
}

/// The status for a failed loader or check run: the engine error's own kind when
/// there is one.
fn anyhow_status(what: &str, e: &anyhow::Error) -> Status {
    match e.chain().find_map(|c| c.downcast_ref::<TxnError>()) {
        Some(t) => ErrorKind::of(t).status(format!("{what}: {e:#}")),
        None => ErrorKind::Internal.status(format!("{what}: {e:#}")),
    }
}

/// Session limits (from the service config).
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// A session idle longer than this is aborted.
    pub idle_timeout: Duration,
    /// Open sessions at most.
    pub max_sessions: usize,
    /// Open sessions of one client at most.
    pub max_sessions_per_client: usize,
    /// Rows one Scan answers at most.
    pub max_scan_rows: u32,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            idle_timeout: Duration::from_secs(60),
            max_sessions: 10_000,
            max_sessions_per_client: 1_000,
            max_scan_rows: 10_000,
        }
    }
}

/// A session handle: 128 random bits.
pub type Handle = [u8; 16];

struct Session {
    /// `None` once Commit or Abort took it.
    txn: Option<Txn>,
    last_used: Instant,
}

/// An open session and the client it belongs to (fixed at Begin).
struct Entry {
    owner: ClientId,
    session: Arc<Mutex<Session>>,
}

/// The open sessions by handle, and how many each client holds.
#[derive(Default)]
struct Open {
    by_handle: HashMap<Handle, Entry>,
    per_client: HashMap<ClientId, usize>,
}

impl Open {
    fn remove(&mut self, h: &Handle) -> Option<Entry> {
        let e = self.by_handle.remove(h)?;
        if let Some(n) = self.per_client.get_mut(&e.owner) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&e.owner);
            }
        }
        Some(e)
    }
}

#[derive(Default)]
struct SessionCounters {
    begun: AtomicU64,
    committed: AtomicU64,
    aborted: AtomicU64,
    idle_aborted: AtomicU64,
    /// TPC-C stored-procedure calls that committed (or rolled back as the spec asks).
    procedures: AtomicU64,
}

/// Handles of recently idle-aborted sessions and their owners (bounded, oldest
/// forgotten first).
#[derive(Default)]
struct Reaped {
    order: VecDeque<Handle>,
    owners: HashMap<Handle, ClientId>,
}

impl Reaped {
    fn remember(&mut self, h: Handle, owner: ClientId) {
        if self.owners.insert(h, owner).is_none() {
            self.order.push_back(h);
        }
        while self.order.len() > REMEMBERED_REAPED {
            if let Some(old) = self.order.pop_front() {
                self.owners.remove(&old);
            }
        }
    }
}

/// The open transactions of this server (see module doc).
struct Sessions {
    open: Mutex<Open>,
    reaped: Mutex<Reaped>,
    closed: AtomicBool,
    opts: SessionOptions,
    counters: SessionCounters,
}

impl Sessions {
    fn parse_handle(raw: &[u8]) -> Result<Handle, Status> {
        raw.try_into().map_err(|_| {
            bad_request(format!(
                "session: {} bytes; a session is the 16-byte handle Begin answered",
                raw.len()
            ))
        })
    }

    /// The answer for a handle that is not `client`'s open session: the same whether it
    /// never existed, ended, or belongs to another client.
    fn unknown(&self, h: &Handle, client: &ClientId) -> Status {
        if self.reaped.lock().owners.get(h) == Some(client) {
            ErrorKind::Conflict.status(format!(
                "the session was aborted after being idle for more than {} ms",
                self.opts.idle_timeout.as_millis()
            ))
        } else if self.closed.load(Ordering::Acquire) {
            ErrorKind::ShuttingDown.status("the server is shutting down")
        } else {
            bad_request("unknown session (not begun on this node, or already finished)")
        }
    }

    fn lookup(&self, h: &Handle, client: &ClientId) -> Result<Arc<Mutex<Session>>, Status> {
        match self.open.lock().by_handle.get(h) {
            Some(e) if &e.owner == client => Ok(e.session.clone()),
            _ => Err(self.unknown(h, client)),
        }
    }

    /// Runs `f` on `client`'s open transaction `raw` (one call at a time per session).
    fn with_txn<R>(
        &self,
        client: &ClientId,
        raw: &[u8],
        f: impl FnOnce(&mut Txn) -> Result<R, TxnError>,
    ) -> Result<R, Status> {
        let h = Self::parse_handle(raw)?;
        let session = self.lookup(&h, client)?;
        let mut s = session.lock();
        let Some(txn) = s.txn.as_mut() else {
            return Err(self.unknown(&h, client));
        };
        let id = txn.id();
        let r = f(txn);
        s.last_used = Instant::now();
        r.map_err(|e| {
            tracing::debug!(txn = %id, error = %e, "call failed");
            status_of(&e)
        })
    }

    /// Unfiles `client`'s session `raw` and takes its transaction once no call runs on
    /// it.
    fn take(&self, client: &ClientId, raw: &[u8]) -> Result<Txn, Status> {
        let h = Self::parse_handle(raw)?;
        // Waits for a running call (its lock) before unfiling, so the owner check and
        // the removal see the same session.
        let session = self.lookup(&h, client)?;
        let mut s = session.lock();
        match self.open.lock().by_handle.get(&h) {
            Some(e) if Arc::ptr_eq(&e.session, &session) => {}
            _ => return Err(self.unknown(&h, client)),
        }
        self.open.lock().remove(&h);
        s.txn.take().ok_or_else(|| self.unknown(&h, client))
    }

    /// Files `txn` for `owner` under a fresh random handle.
    fn insert(&self, txn: Txn, owner: ClientId) -> Result<Handle, Status> {
        use rand::RngCore;
        let mut open = self.open.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(ErrorKind::ShuttingDown.status("the server is shutting down"));
        }
        if open.by_handle.len() >= self.opts.max_sessions {
            return Err(ErrorKind::TooManySessions.status(format!(
                "{} transactions are open (max_sessions)",
                open.by_handle.len()
            )));
        }
        let mine = open.per_client.get(&owner).copied().unwrap_or(0);
        if mine >= self.opts.max_sessions_per_client {
            return Err(ErrorKind::TooManySessions.status(format!(
                "this client has {mine} transactions open (max_sessions_per_client)"
            )));
        }
        let mut h = [0u8; 16];
        loop {
            rand::rngs::OsRng.fill_bytes(&mut h);
            if !open.by_handle.contains_key(&h) {
                break;
            }
        }
        *open.per_client.entry(owner.clone()).or_insert(0) += 1;
        open.by_handle.insert(
            h,
            Entry {
                owner,
                session: Arc::new(Mutex::new(Session {
                    txn: Some(txn),
                    last_used: Instant::now(),
                })),
            },
        );
        Ok(h)
    }

    /// Unfiles the sessions idle longer than the timeout and returns their transactions.
    fn take_idle(&self, now: Instant) -> Vec<Txn> {
        let mut out = Vec::new();
        let mut reaped = Vec::new();
        let mut open = self.open.lock();
        // A session whose lock is held is busy (a call runs), not idle; an idle one's
        // transaction is taken under its lock, so a call that comes later finds none.
        let mut idle = Vec::new();
        for (h, e) in &open.by_handle {
            if let Some(mut s) = e.session.try_lock() {
                if now.saturating_duration_since(s.last_used) > self.opts.idle_timeout {
                    out.extend(s.txn.take());
                    idle.push(*h);
                }
            }
        }
        for h in idle {
            if let Some(e) = open.remove(&h) {
                reaped.push((h, e.owner));
            }
        }
        drop(open);
        let mut r = self.reaped.lock();
        for (h, owner) in reaped {
            r.remember(h, owner);
        }
        out
    }

    /// Refuses new sessions and takes every open transaction (waiting for running calls).
    fn take_all(&self) -> Vec<Txn> {
        self.closed.store(true, Ordering::Release);
        let sessions: Vec<_> = {
            let mut open = self.open.lock();
            open.per_client.clear();
            open.by_handle.drain().map(|(_, e)| e.session).collect()
        };
        sessions
            .into_iter()
            .filter_map(|s| s.lock().txn.take())
            .collect()
    }

    fn abort_all(&self, txns: Vec<Txn>, why: &str) {
        for t in txns {
            let id = t.id();
            self.counters.aborted.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = t.abort() {
                tracing::warn!(txn = %id, error = %e, "aborting a {why} session failed");
            } else {
                tracing::debug!(txn = %id, "aborted a {why} session");
            }
        }
    }
}

struct Inner {
    node: Arc<ComputeNode>,
    auth: Arc<ClientAuth>,
    sessions: Sessions,
    /// The TPC-C tables, opened on first use by a stored procedure.
    tpcc: Mutex<Option<Arc<Tables>>>,
}

impl Inner {
    /// The TPC-C tables (NOT_FOUND until TpccCreateSchema made them).
    fn tpcc_tables(&self) -> Result<Arc<Tables>, Status> {
        let mut t = self.tpcc.lock();
        if let Some(t) = &*t {
            return Ok(t.clone());
        }
        let opened = Arc::new(Tables::open(&self.node).map_err(|e| match e {
            TxnError::NoSuchTable(n) => ErrorKind::NoSuchTable.status(format!(
                "no TPC-C table {n}: call TpccCreateSchema (and TpccLoad) first"
            )),
            e => status_of(&e),
        })?);
        *t = Some(opened.clone());
        Ok(opened)
    }

    /// One attempt of a TPC-C transaction (a stored procedure call).
    fn tpcc_run(&self, call: grpc_tpcc::Call) -> Result<pb::TpccResponse, Status> {
        let t = self.tpcc_tables()?;
        let o = tpcc::transactions::run_once(
            &self.node,
            &t,
            &call.input,
            call.now_us,
            call.history_key,
            call.mode,
        )
        .map_err(|e| status_of(&e))?;
        self.sessions
            .counters
            .procedures
            .fetch_add(1, Ordering::Relaxed);
        Ok(grpc_tpcc::response_of(o))
    }

    fn table(&self, name: &str) -> Result<Table, Status> {
        check_table_name(name)?;
        self.node.table(name).map_err(|e| status_of(&e))
    }
}

fn check_table_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(bad_request("table name is empty"));
    }
    if name.len() > MAX_TABLE_NAME {
        return Err(bad_request(format!(
            "table name of {} bytes exceeds {MAX_TABLE_NAME}",
            name.len()
        )));
    }
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.len() > MAX_KEY_LEN {
        return Err(bad_request(format!(
            "key of {} bytes exceeds the {MAX_KEY_LEN}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

fn bound(b: Option<pb::KeyBound>) -> Result<Bound<Vec<u8>>, Status> {
    Ok(match b {
        None => Bound::Unbounded,
        Some(b) => {
            check_key(&b.key)?;
            if b.inclusive {
                Bound::Included(b.key)
            } else {
                Bound::Excluded(b.key)
            }
        }
    })
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The compute node's gRPC service. Cheap to clone (all clones share the sessions).
#[derive(Clone)]
pub struct ComputeService {
    inner: Arc<Inner>,
}

impl ComputeService {
    /// A service for `node` that lets in the clients `auth` accepts.
    pub fn new(node: Arc<ComputeNode>, opts: SessionOptions, auth: ClientAuth) -> ComputeService {
        if auth.is_insecure() {
            tracing::warn!(
                "INSECURE: the client API accepts every call without credentials \
                 (`insecure = true`); for local development only"
            );
        }
        ComputeService {
            inner: Arc::new(Inner {
                node,
                auth: Arc::new(auth),
                tpcc: Mutex::new(None),
                sessions: Sessions {
                    open: Mutex::new(Open::default()),
                    reaped: Mutex::new(Reaped::default()),
                    closed: AtomicBool::new(false),
                    opts,
                    counters: SessionCounters::default(),
                },
            }),
        }
    }

    /// The tonic service to add to a `tonic::transport::Server`: every call is
    /// authenticated first ([`crate::grpc_auth`]).
    pub fn server(
        &self,
    ) -> tonic::service::interceptor::InterceptedService<
        ComputeServer<ComputeService>,
        AuthInterceptor,
    > {
        ComputeServer::with_interceptor(self.clone(), AuthInterceptor(self.inner.auth.clone()))
    }

    /// Calls refused for missing or unknown credentials so far.
    pub fn auth_failures(&self) -> u64 {
        self.inner.auth.failures()
    }

    /// Transactions open now.
    pub fn open_sessions(&self) -> usize {
        self.inner.sessions.open.lock().by_handle.len()
    }

    /// Starts the idle-session reaper on the current tokio runtime; it ends after
    /// [`ComputeService::close`].
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        let every = (inner.sessions.opts.idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if inner.sessions.closed.load(Ordering::Acquire) {
                    return;
                }
                let idle = inner.sessions.take_idle(Instant::now());
                if idle.is_empty() {
                    continue;
                }
                let n = idle.len() as u64;
                tracing::info!(sessions = n, "aborting idle sessions");
                inner
                    .sessions
                    .counters
                    .idle_aborted
                    .fetch_add(n, Ordering::Relaxed);
                let inner = inner.clone();
                let _ = tokio::task::spawn_blocking(move || inner.sessions.abort_all(idle, "idle"))
                    .await;
            }
        })
    }

    /// Starts the rejoin watchdog on the current tokio runtime: every `every` it asks
    /// the node whether it is broken (lease lost, a GTM or storage connection ended)
    /// and, if so, rejoins with a new epoch ([`ComputeNode::rejoin`]), retrying until
    /// that works. Ends after [`ComputeService::close`].
    pub fn spawn_watchdog(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if inner.sessions.closed.load(Ordering::Acquire) {
                    return;
                }
                let inner = inner.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let Some(why) = inner.node.broken() else {
                        return;
                    };
                    match inner.node.rejoin(&why) {
                        Ok(()) => {
                            tracing::info!(rejoins = inner.node.rejoins(), "rejoined the cluster")
                        }
                        Err(e) => tracing::warn!(error = %e, "rejoin failed; retrying"),
                    }
                })
                .await;
            }
        })
    }

    /// Refuses new transactions and aborts every open one (after its running call);
    /// returns how many were aborted. Call after the server stopped accepting calls.
    pub async fn close(&self) -> usize {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let open = inner.sessions.take_all();
            let n = open.len();
            inner.sessions.abort_all(open, "open");
            n
        })
        .await
        .unwrap_or(0)
    }

    /// A snapshot of the node's state and counters (the ClusterStatus answer).
    pub fn status(&self) -> pb::ClusterStatusResponse {
        status_snapshot(&self.inner)
    }

    /// The status in Prometheus text format (the `metrics_listen` endpoint).
    pub fn render_metrics(&self) -> String {
        render_metrics(&self.status())
    }

    fn refuse_if_closed(&self) -> Result<(), Status> {
        if self.inner.sessions.closed.load(Ordering::Acquire) {
            return Err(ErrorKind::ShuttingDown.status("the server is shutting down"));
        }
        Ok(())
    }

    /// Runs one TPC-C stored-procedure call on the blocking pool.
    async fn procedure(&self, call: grpc_tpcc::Call) -> Result<Response<pb::TpccResponse>, Status> {
        self.refuse_if_closed()?;
        self.blocking(move |inner| inner.tpcc_run(call))
            .await
            .map(Response::new)
    }

    /// Runs `f` on the blocking pool; a panic becomes INTERNAL.
    async fn blocking<R, F>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: FnOnce(&Inner) -> Result<R, Status> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "engine call panicked");
                Err(ErrorKind::Internal.status(format!("engine call failed: {e}")))
            }
        }
    }
}

/// Serves `service` on `listener` (over TLS with `tls`) until `shutdown` resolves,
/// then stops accepting and lets running calls finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: &ComputeService,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .expect("TcpIncoming::from_listener cannot fail");
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(service.server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[tonic::async_trait]
impl Compute for ComputeService {
    async fn health(
        &self,
        _req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let node_id = self.inner.node.engine().pager().node.0;
        let broken = self.inner.node.broken();
        let (status, message) = match self.inner.node.engine().gtm().check_lease() {
            _ if broken.is_some() => (
                pb::health_response::Status::NotServing,
                format!("rejoining: {}", broken.unwrap_or_default()),
            ),
            Ok(_) if !self.inner.sessions.closed.load(Ordering::Acquire) => {
                (pb::health_response::Status::Serving, String::new())
            }
            Ok(_) => (
                pb::health_response::Status::NotServing,
                "shutting down".into(),
            ),
            Err(e) => (pb::health_response::Status::NotServing, e.to_string()),
        };
        Ok(Response::new(pb::HealthResponse {
            status: status as i32,
            node_id,
            message,
        }))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn create_table(
        &self,
        req: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::CreateTableResponse>, Status> {
        let req = req.into_inner();
        check_table_name(&req.name)?;
        self.blocking(move |inner| {
            let created = match inner.node.create_table(&req.name) {
                Ok(t) => return Ok((true, t)),
                Err(TxnError::TableExists(_)) if req.if_not_exists => false,
                Err(e) => return Err(status_of(&e)),
            };
            let t = inner.node.table(&req.name).map_err(|e| status_of(&e))?;
            Ok((created, t))
        })
        .await
        .map(|(created, t)| {
            Response::new(pb::CreateTableResponse {
                created,
                meta_page: t.meta.0,
            })
        })
    }

    async fn begin(
        &self,
        req: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        let client = client_of(&req)?;
        let isolation = match pb::Isolation::try_from(req.into_inner().isolation) {
            Ok(pb::Isolation::Default) => None,
            Ok(pb::Isolation::Snapshot) => Some(Isolation::Snapshot),
            Ok(pb::Isolation::ReadCommitted) => Some(Isolation::ReadCommitted),
            Err(e) => return Err(bad_request(format!("isolation: {e}"))),
        };
        let sessions = &self.inner.sessions;
        if sessions.closed.load(Ordering::Acquire) {
            return Err(ErrorKind::ShuttingDown.status("the server is shutting down"));
        }
        if sessions.open.lock().by_handle.len() >= sessions.opts.max_sessions {
            return Err(ErrorKind::TooManySessions.status("max_sessions transactions are open"));
        }
        self.blocking(move |inner| {
            let txn = match isolation {
                None => inner.node.begin(),
                Some(i) => inner.node.begin_with(i),
            }
            .map_err(|e| status_of(&e))?;
            let (id, snapshot) = (txn.id(), txn.snapshot());
            // A refused insert drops the transaction, which aborts it.
            let session = inner.sessions.insert(txn, client)?;
            inner
                .sessions
                .counters
                .begun
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(txn = %id, snapshot = %snapshot, "begin");
            Ok(pb::BeginResponse {
                txn_id: id.0,
                snapshot: snapshot.0,
                session: session.to_vec(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let client = client_of(&req)?;
        let req = req.into_inner();
        check_key(&req.key)?;
        self.blocking(move |inner| {
            let table = inner.table(&req.table)?;
            inner
                .sessions
                .with_txn(&client, &req.session, |t| t.get(&table, &req.key))
        })
        .await
        .map(|value| Response::new(pb::GetResponse { value }))
    }

    async fn get_for_update(
        &self,
        req: Request<pb::GetForUpdateRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let client = client_of(&req)?;
        let req = req.into_inner();
        check_key(&req.key)?;
        self.blocking(move |inner| {
            let table = inner.table(&req.table)?;
            inner.sessions.with_txn(&client, &req.session, |t| {
                t.get_for_update(&table, &req.key)
            })
        })
        .await
        .map(|value| Response::new(pb::GetResponse { value }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let client = client_of(&req)?;
        let req = req.into_inner();
        check_key(&req.key)?;
        if req.key.len() + req.value.len() > MAX_ENTRY_LEN {
            return Err(bad_request(format!(
                "row of {} + {} bytes (key + value) exceeds the {MAX_ENTRY_LEN}-byte limit",
                req.key.len(),
                req.value.len()
            )));
        }
        self.blocking(move |inner| {
            let table = inner.table(&req.table)?;
            inner.sessions.with_txn(&client, &req.session, |t| {
                t.put(&table, &req.key, &req.value)
            })
        })
        .await
        .map(|()| Response::new(pb::PutResponse {}))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let client = client_of(&req)?;
        let req = req.into_inner();
        check_key(&req.key)?;
        self.blocking(move |inner| {
            let table = inner.table(&req.table)?;
            inner
                .sessions
                .with_txn(&client, &req.session, |t| t.delete(&table, &req.key))
        })
        .await
        .map(|existed| Response::new(pb::DeleteResponse { existed }))
    }

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let client = client_of(&req)?;
        let req = req.into_inner();
        let start = bound(req.start)?;
        let end = bound(req.end)?;
        let cap = self.inner.sessions.opts.max_scan_rows as usize;
        let wanted = match req.limit {
            0 => None,
            l => Some(l as usize),
        };
        // One row past the cap tells whether the cap cut the answer short.
        let fetch = wanted.unwrap_or(usize::MAX).min(cap + 1);
        self.blocking(move |inner| {
            let table = inner.table(&req.table)?;
            inner.sessions.with_txn(&client, &req.session, |t| {
                t.scan(
                    &table,
                    (as_slice(&start), as_slice(&end)),
                    req.reverse,
                    Some(fetch),
                )
            })
        })
        .await
        .map(|mut rows| {
            let truncated = rows.len() > cap;
            rows.truncate(cap);
            Response::new(pb::ScanResponse {
                rows: rows
                    .into_iter()
                    .map(|(key, value)| pb::Row { key, value })
                    .collect(),
                truncated,
            })
        })
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let client = client_of(&req)?;
        let raw = req.into_inner().session;
        self.blocking(move |inner| {
            let txn = inner.sessions.take(&client, &raw)?;
            let id = txn.id();
            let counters = &inner.sessions.counters;
            match txn.commit() {
                Ok(cts) => {
                    counters.committed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(txn = %id, commit_ts = %cts, "commit");
                    Ok(pb::CommitResponse { commit_ts: cts.0 })
                }
                Err(e) => {
                    if !e.is_unknown() {
                        counters.aborted.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(txn = %id, error = %e, "commit failed");
                    Err(status_of(&e))
                }
            }
        })
        .await
        .map(Response::new)
    }

    async fn resolve_outcome(
        &self,
        req: Request<pb::ResolveOutcomeRequest>,
    ) -> Result<Response<pb::ResolveOutcomeResponse>, Status> {
        // Any transaction of the cluster, not only this server's sessions: an open
        // session named here is aborted at the GTM (its later calls fail), which is
        // what makes the answer final.
        let raw = req.into_inner().txn_id;
        if raw == 0 {
            return Err(bad_request("txn_id 0 is not a transaction"));
        }
        let id = TxnId(raw);
        self.blocking(move |inner| {
            let r = inner.node.resolve_outcome(id).map_err(|e| {
                tracing::debug!(txn = %id, error = %e, "resolve failed");
                status_of(&e)
            })?;
            tracing::debug!(txn = %id, outcome = ?r, "resolved");
            Ok(match r {
                Resolved::Committed(ts) => pb::ResolveOutcomeResponse {
                    committed: true,
                    commit_ts: ts.0,
                },
                Resolved::Aborted => pb::ResolveOutcomeResponse {
                    committed: false,
                    commit_ts: 0,
                },
            })
        })
        .await
        .map(Response::new)
    }

    async fn abort(
        &self,
        req: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let client = client_of(&req)?;
        let raw = req.into_inner().session;
        self.blocking(move |inner| {
            let txn = inner.sessions.take(&client, &raw)?;
            inner
                .sessions
                .counters
                .aborted
                .fetch_add(1, Ordering::Relaxed);
            txn.abort().map_err(|e| status_of(&e))
        })
        .await
        .map(|()| Response::new(pb::AbortResponse {}))
    }

    // TPC-C stored procedures: each runs one whole transaction on the blocking pool
    // (`Inner::tpcc_run`), retries nothing itself and answers a retryable ABORTED like
    // any other call.

    async fn tpcc_new_order(
        &self,
        req: Request<pb::TpccNewOrderRequest>,
    ) -> Result<Response<pb::TpccResponse>, Status> {
        let call = grpc_tpcc::new_order_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn tpcc_payment(
        &self,
        req: Request<pb::TpccPaymentRequest>,
    ) -> Result<Response<pb::TpccResponse>, Status> {
        let call = grpc_tpcc::payment_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn tpcc_order_status(
        &self,
        req: Request<pb::TpccOrderStatusRequest>,
    ) -> Result<Response<pb::TpccResponse>, Status> {
        let call = grpc_tpcc::order_status_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn tpcc_delivery(
        &self,
        req: Request<pb::TpccDeliveryRequest>,
    ) -> Result<Response<pb::TpccResponse>, Status> {
        let call = grpc_tpcc::delivery_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn tpcc_stock_level(
        &self,
        req: Request<pb::TpccStockLevelRequest>,
    ) -> Result<Response<pb::TpccResponse>, Status> {
        let call = grpc_tpcc::stock_level_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn tpcc_create_schema(
        &self,
        _req: Request<pb::TpccCreateSchemaRequest>,
    ) -> Result<Response<pb::TpccCreateSchemaResponse>, Status> {
        self.refuse_if_closed()?;
        self.blocking(|inner| {
            let t = Tables::ensure(&inner.node).map_err(|e| status_of(&e))?;
            *inner.tpcc.lock() = Some(Arc::new(t));
            Ok(pb::TpccCreateSchemaResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn tpcc_load(
        &self,
        req: Request<pb::TpccLoadRequest>,
    ) -> Result<Response<pb::TpccLoadResponse>, Status> {
        self.refuse_if_closed()?;
        let r = req.into_inner();
        let scale = tpcc::load::Scale {
            warehouses: r.warehouses,
            items: r.items,
        };
        if r.warehouses == 0 || r.items == 0 || r.items > tpcc::schema::SPEC_ITEMS {
            return Err(bad_request(format!(
                "warehouses must be at least 1 and items in [1, {}] (got {}, {})",
                tpcc::schema::SPEC_ITEMS,
                r.warehouses,
                r.items
            )));
        }
        if r.from_warehouse == 0
            || r.from_warehouse > r.to_warehouse
            || r.to_warehouse > r.warehouses
        {
            return Err(bad_request(format!(
                "warehouses [{}, {}] are not a part of [1, {}]",
                r.from_warehouse, r.to_warehouse, r.warehouses
            )));
        }
        let c_load = grpc_tpcc::nurand_from_pb(r.c_load).map_err(bad_request)?;
        let part = tpcc::load::LoadPart {
            from_w: r.from_warehouse,
            to_w: r.to_warehouse,
            items: r.load_items,
        };
        let threads = match r.threads {
            0 => 2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => (n as usize).min(64),
        };
        self.blocking(move |inner| {
            let t = inner.tpcc_tables()?;
            let rows = tpcc::load::Loader {
                nodes: std::slice::from_ref(&*inner.node),
                tables: std::slice::from_ref(&*t),
                node_of: &|_| 0,
                scale,
                only: Some(part),
                c_load,
                seed: r.seed,
                threads,
                progress: false,
            }
            .run()
            .map_err(|e| anyhow_status("loading", &e))?;
            // As a load long finished would be: its pages written back and their locks
            // given up, so other nodes' first reads need not go through this one.
            inner.node.release_page_locks().map_err(|e| status_of(&e))?;
            tracing::info!(rows, ?part, "TPC-C load done");
            Ok(pb::TpccLoadResponse { rows })
        })
        .await
        .map(Response::new)
    }

    async fn tpcc_check(
        &self,
        req: Request<pb::TpccCheckRequest>,
    ) -> Result<Response<pb::TpccCheckResponse>, Status> {
        self.refuse_if_closed()?;
        let r = req.into_inner();
        if r.warehouses == 0 {
            return Err(bad_request("warehouses must be at least 1"));
        }
        self.blocking(move |inner| {
            inner.tpcc_tables()?;
            let checks = tpcc::check::run_checks(&inner.node, r.warehouses, r.delivery_ran)
                .map_err(|e| anyhow_status("checking", &e))?;
            Ok(pb::TpccCheckResponse {
                checks: checks.iter().map(grpc_tpcc::check_to_pb).collect(),
            })
        })
        .await
        .map(Response::new)
    }
}

fn status_snapshot(inner: &Inner) -> pb::ClusterStatusResponse {
    let engine = inner.node.engine();
    let pager = engine.pager();
    let gtm = engine.gtm();
    let reg = gtm.registration();
    let lease_remaining_ms = gtm.write_deadline().map_or(0, |d| {
        let now = Instant::now();
        if d >= now {
            (d - now).as_millis() as i64
        } else {
            -((now - d).as_millis() as i64)
        }
    });
    let storage = (0..pager.storage().len())
        .map(|i| {
            let l = pager.storage().node(i).layout();
            pb::StorageNodeStatus {
                first_page: l.first_page.0,
                page_count: l.page_count,
                frames: l.frames,
            }
        })
        .collect();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let pool = pager.pool();
    let c = &pager.stats;
    let e = &engine.stats;
    let s = &inner.sessions.counters;
    pb::ClusterStatusResponse {
        node_id: pager.node.0,
        epoch: reg.map_or(0, |r| u64::from(r.epoch.0)),
        lease_ms: reg.map_or(0, |r| r.lease.as_millis() as u64),
        lease_remaining_ms,
        // The config spellings.
        validation: match pager.validation {
            ValidationMode::Batched => "batched",
            ValidationMode::FullRounds => "full_rounds",
            ValidationMode::EachAccess => "each_access",
        }
        .into(),
        lock_mode: match pager.lock_mode {
            LockMode::Lazy => "lazy",
            LockMode::Eager => "eager",
        }
        .into(),
        storage,
        buffer_pool: Some(pb::BufferPoolStats {
            capacity: pool.capacity() as u64,
            hits: load(&pool.stats.hits),
            misses: load(&pool.stats.misses),
            evictions: load(&pool.stats.evictions),
        }),
        coherence: Some(pb::CoherenceStats {
            validation_rounds: load(&c.validation_rounds),
            pages_validated: load(&c.pages_validated),
            single_validations: load(&c.single_validations),
            fetches: load(&c.fetches),
            round_trips: load(&c.round_trips),
            lock_acquires: load(&c.lock_acquires),
            write_backs: load(&c.write_backs),
            revocations: load(&c.revocations),
        }),
        engine: Some(pb::EngineStats {
            begun: load(&e.begun),
            committed: load(&e.committed),
            aborted: load(&e.aborted),
            conflicts: load(&e.conflicts),
            lock_waits: load(&e.lock_waits),
        }),
        sessions: Some(pb::SessionStats {
            open: inner.sessions.open.lock().by_handle.len() as u64,
            begun: load(&s.begun),
            committed: load(&s.committed),
            aborted: load(&s.aborted),
            idle_aborted: load(&s.idle_aborted),
            procedures: load(&s.procedures),
            auth_failures: inner.auth.failures(),
        }),
    }
}

/// Prometheus text exposition of a status snapshot.
pub fn render_metrics(st: &pb::ClusterStatusResponse) -> String {
    const G: &str = "gauge";
    const C: &str = "counter";
    let p = st.buffer_pool.unwrap_or_default();
    let c = st.coherence.unwrap_or_default();
    let e = st.engine.unwrap_or_default();
    let s = st.sessions.unwrap_or_default();
    #[rustfmt::skip]
    let metrics: [(&str, &str, i128, &str); 27] = [
        ("node_id", G, st.node_id.into(), "This node's id."),
        ("epoch", G, st.epoch.into(), "This incarnation's epoch."),
        ("lease_remaining_ms", G, st.lease_remaining_ms.into(), "Milliseconds until writes must stop."),
        ("pool_frames", G, p.capacity.into(), "Buffer-pool frames."),
        ("pool_hits_total", C, p.hits.into(), "Buffer-pool hits."),
        ("pool_misses_total", C, p.misses.into(), "Buffer-pool misses."),
        ("pool_evictions_total", C, p.evictions.into(), "Pages evicted."),
        ("validation_rounds_total", C, c.validation_rounds.into(), "Batched validation rounds."),
        ("pages_validated_total", C, c.pages_validated.into(), "Pages confirmed by batched validation."),
        ("single_validations_total", C, c.single_validations.into(), "Pages validated one at a time."),
        ("page_fetches_total", C, c.fetches.into(), "Pages fetched from storage."),
        ("round_trips_total", C, c.round_trips.into(), "Round trips to storage nodes."),
        ("lock_acquires_total", C, c.lock_acquires.into(), "Global X page locks acquired."),
        ("write_backs_total", C, c.write_backs.into(), "Pages written back."),
        ("revocations_total", C, c.revocations.into(), "Page-lock revocations handled."),
        ("txns_begun_total", C, e.begun.into(), "Transactions begun."),
        ("txns_committed_total", C, e.committed.into(), "Transactions committed."),
        ("txns_aborted_total", C, e.aborted.into(), "Transactions aborted."),
        ("txn_conflicts_total", C, e.conflicts.into(), "Write-write conflicts and wait-die victims."),
        ("lock_waits_total", C, e.lock_waits.into(), "Waits for an older row writer."),
        ("grpc_sessions_open", G, s.open.into(), "Transactions open over gRPC."),
        ("grpc_sessions_begun_total", C, s.begun.into(), "gRPC transactions begun."),
        ("grpc_sessions_committed_total", C, s.committed.into(), "gRPC transactions committed."),
        ("grpc_sessions_aborted_total", C, s.aborted.into(), "gRPC transactions aborted."),
        ("grpc_sessions_idle_aborted_total", C, s.idle_aborted.into(), "gRPC transactions aborted for idleness."),
        ("grpc_auth_failures_total", C, s.auth_failures.into(), "gRPC calls refused for missing or unknown client credentials."),
        ("tpcc_procedures_total", C, s.procedures.into(), "TPC-C stored-procedure calls completed."),
    ];
    let mut out = String::new();
    for (name, kind, v, help) in metrics {
        out.push_str(&format!(
            "# HELP compute_{name} {help}\n# TYPE compute_{name} {kind}\ncompute_{name} {v}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_error_keeps_its_kind_and_retryability() {
        let errors = [
            TxnError::Conflict("c".into()),
            TxnError::Fenced("f".into()),
            TxnError::NoSuchTable("t".into()),
            TxnError::TableExists("t".into()),
            TxnError::BadRequest("b".into()),
            TxnError::Finished,
            TxnError::Storage("s".into()),
            TxnError::Gtm("g".into()),
            TxnError::Corrupt("x".into()),
            TxnError::Unknown {
                txn: TxnId(42),
                message: "GTM timed out".into(),
            },
        ];
        for e in &errors {
            let s = status_of(e);
            let k = ErrorKind::of_status(&s);
            assert_eq!(k, ErrorKind::of(e), "{e}");
            assert_eq!(k.is_retryable(), e.is_retryable(), "{e}");
            assert_eq!(k.is_unknown(), e.is_unknown(), "{e}");
            assert_eq!(s.code(), k.code());
            assert_eq!(txn_of_status(&s), e.unknown_txn(), "{e}");
        }
        // An unknown outcome is neither retryable nor one of the "unavailable" kinds,
        // and names its transaction.
        let unknown = status_of(&errors[9]);
        assert_eq!(unknown.code(), Code::Unknown);
        assert_eq!(ErrorKind::of_status(&unknown), ErrorKind::OutcomeUnknown);
        assert!(!ErrorKind::OutcomeUnknown.is_retryable());
        assert_eq!(txn_of_status(&unknown), Some(TxnId(42)));
        assert!(
            unknown.message().contains("transaction 42"),
            "{}",
            unknown.message()
        );
        assert_eq!(status_of(&errors[0]).code(), Code::Aborted);
        assert_eq!(status_of(&errors[1]).code(), Code::FailedPrecondition);
        assert_eq!(status_of(&errors[2]).code(), Code::NotFound);
        assert_eq!(status_of(&errors[3]).code(), Code::AlreadyExists);
        assert_eq!(status_of(&errors[4]).code(), Code::InvalidArgument);
        assert_eq!(status_of(&errors[6]).code(), Code::Unavailable);
    }

    #[test]
    fn statuses_without_a_kind_are_guessed_from_the_code() {
        assert_eq!(
            ErrorKind::of_status(&Status::unavailable("connection refused")),
            ErrorKind::Transport
        );
        assert!(ErrorKind::of_status(&Status::aborted("x")).is_retryable());
        assert_eq!(
            ErrorKind::of_status(&Status::internal("x")),
            ErrorKind::Internal
        );
    }

    #[test]
    fn reaped_handles_are_bounded() {
        let mut r = Reaped::default();
        let h = |i: u64| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&i.to_le_bytes());
            b
        };
        let who = ClientId("alice".into());
        for i in 0..(REMEMBERED_REAPED as u64 + 10) {
            r.remember(h(i + 1), who.clone());
        }
        assert_eq!(r.order.len(), REMEMBERED_REAPED);
        assert_eq!(r.owners.len(), REMEMBERED_REAPED);
        assert!(!r.owners.contains_key(&h(1)));
        assert_eq!(r.owners.get(&h(REMEMBERED_REAPED as u64 + 10)), Some(&who));
    }

    #[test]
    fn metrics_render_every_counter() {
        let text = render_metrics(&pb::ClusterStatusResponse {
            node_id: 3,
            ..Default::default()
        });
        assert!(text.contains("compute_node_id 3\n"));
        assert!(text.contains("compute_grpc_sessions_open 0\n"));
        assert!(text.contains("compute_txn_conflicts_total 0\n"));
    }
}
