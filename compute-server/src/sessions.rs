//! Sessions: transactions that live on the server between calls.
//!
//! Every call is authenticated first ([`crate::auth`]: a client token or a client
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
//! 5. Shutdown ([`crate::service::ComputeService::close`]) refuses new `Begin`s and aborts every open
//!    session after its running call finishes.

// tonic's handlers answer `Status` by value; the helpers here do the same.
#![allow(clippy::result_large_err)]

use crate::auth::ClientId;
use crate::errors::{bad_request, status_of};
use common::compute::ErrorKind;
use compute_node::txn::{Txn, TxnError};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;

/// Idle-aborted ids remembered to answer late calls with ABORTED.
const REMEMBERED_REAPED: usize = 4096;

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

pub(crate) struct Session {
    /// `None` once Commit or Abort took it.
    pub(crate) txn: Option<Txn>,
    pub(crate) last_used: Instant,
}

/// An open session and the client it belongs to (fixed at Begin).
pub(crate) struct Entry {
    pub(crate) owner: ClientId,
    pub(crate) session: Arc<Mutex<Session>>,
}

/// The open sessions by handle, and how many each client holds.
#[derive(Default)]
pub(crate) struct Open {
    pub(crate) by_handle: HashMap<Handle, Entry>,
    pub(crate) per_client: HashMap<ClientId, usize>,
}

impl Open {
    pub(crate) fn remove(&mut self, h: &Handle) -> Option<Entry> {
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
pub(crate) struct SessionCounters {
    pub(crate) begun: AtomicU64,
    pub(crate) committed: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) idle_aborted: AtomicU64,
    /// TPC-C stored-procedure calls that committed (or rolled back as the spec asks).
    pub(crate) procedures: AtomicU64,
}

/// Handles of recently idle-aborted sessions and their owners (bounded, oldest
/// forgotten first).
#[derive(Default)]
pub(crate) struct Reaped {
    pub(crate) order: VecDeque<Handle>,
    pub(crate) owners: HashMap<Handle, ClientId>,
}

impl Reaped {
    pub(crate) fn remember(&mut self, h: Handle, owner: ClientId) {
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
pub(crate) struct Sessions {
    pub(crate) open: Mutex<Open>,
    pub(crate) reaped: Mutex<Reaped>,
    pub(crate) closed: AtomicBool,
    pub(crate) opts: SessionOptions,
    pub(crate) counters: SessionCounters,
}

impl Sessions {
    pub(crate) fn parse_handle(raw: &[u8]) -> Result<Handle, Status> {
        raw.try_into().map_err(|_| {
            bad_request(format!(
                "session: {} bytes; a session is the 16-byte handle Begin answered",
                raw.len()
            ))
        })
    }

    /// The answer for a handle that is not `client`'s open session: the same whether it
    /// never existed, ended, or belongs to another client.
    pub(crate) fn unknown(&self, h: &Handle, client: &ClientId) -> Status {
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

    pub(crate) fn lookup(
        &self,
        h: &Handle,
        client: &ClientId,
    ) -> Result<Arc<Mutex<Session>>, Status> {
        match self.open.lock().by_handle.get(h) {
            Some(e) if &e.owner == client => Ok(e.session.clone()),
            _ => Err(self.unknown(h, client)),
        }
    }

    /// Runs `f` on `client`'s open transaction `raw` (one call at a time per session).
    pub(crate) fn with_txn<R>(
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
    pub(crate) fn take(&self, client: &ClientId, raw: &[u8]) -> Result<Txn, Status> {
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
    pub(crate) fn insert(&self, txn: Txn, owner: ClientId) -> Result<Handle, Status> {
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
    pub(crate) fn take_idle(&self, now: Instant) -> Vec<Txn> {
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
    pub(crate) fn take_all(&self) -> Vec<Txn> {
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

    pub(crate) fn abort_all(&self, txns: Vec<Txn>, why: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn reaped_handles_are_bounded() {
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
}
