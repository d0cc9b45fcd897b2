//! A blocking client of a compute node's gRPC API (`proto/compute.proto`, served by
//! `compute-server`), shaped like the embedding API: for the TPC-C harness's remote
//! mode, tools and tests.
//!
//! [`RemoteNode`] owns a small tokio runtime (one worker) and one HTTP/2 channel; it is
//! `Send + Sync`, and many threads may call it at once (calls multiplex on the channel).
//! Its methods block, so it is for synchronous code: calling (or dropping) it inside an
//! async runtime panics.
//! Connecting ([`RemoteNode::connect_with`], [`ConnectOptions`]) presents a client
//! token and/or speaks TLS (with a client certificate for mutual TLS); a server
//! refuses calls without credentials (`UNAUTHENTICATED`) unless it runs `insecure`.
//! A transaction is a [`RemoteTxn`] (from [`RemoteNode::begin`]: the server's random
//! session handle, and the engine's transaction id for diagnostics); errors are
//! [`RemoteError`]s whose [`RemoteError::is_retryable`] and [`RemoteError::is_unknown`]
//! answer as the engine's `TxnError::is_retryable` and `is_unknown` do. A commit with
//! an unknown outcome — the server said so, or the `Commit` call itself failed without
//! an answer — is resolved with [`RemoteNode::resolve_outcome`] (on any node) before
//! the transaction may run again.
//!
//! ```no_run
//! use common::compute::client::RemoteNode;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use common::compute::client::ConnectOptions;
//! let opts = ConnectOptions::token("0123456789abcdef0123456789abcdef");
//! let node = RemoteNode::connect_with("127.0.0.1:7500", &opts)?;
//! node.ensure_table("accounts")?;
//! let txn = node.begin()?;
//! node.put(txn, "accounts", b"alice", b"100")?;
//! assert_eq!(node.get(txn, "accounts", b"alice")?, Some(b"100".to_vec()));
//! node.commit(txn)?;
//! # Ok(()) }
//! ```

use super::auth::Credentials;
use super::error::{txn_of_status, ErrorKind};
use super::tls::ClientTls;
use crate::ids::{Timestamp, TxnId};
use crate::proto::compute as pb;
use crate::proto::compute::compute_client::ComputeClient;
use crate::txn::{Isolation, Resolved};
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A `(key, value)` pair, as the engine's scans answer.
pub type Row = (Vec<u8>, Vec<u8>);

/// The generated client with this connection's credentials on every call.
pub type Client = ComputeClient<InterceptedService<Channel, Credentials>>;

/// An open transaction on a remote node: the server's session handle (random, bound
/// to this client) and the engine's transaction id (diagnostics, `resolve_outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteTxn {
    pub id: TxnId,
    handle: [u8; 16],
}

impl RemoteTxn {
    /// A transaction with a handle of the caller's choosing (tests of the server's
    /// handle checks).
    pub fn from_parts(id: TxnId, handle: [u8; 16]) -> RemoteTxn {
        RemoteTxn { id, handle }
    }

    pub fn handle(&self) -> [u8; 16] {
        self.handle
    }
}

impl std::fmt::Display for RemoteTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.id)
    }
}

/// How to reach a server: credentials, TLS, connect timeout.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// A client token (sent as `authorization: Bearer ...`).
    pub token: Option<String>,
    /// Speak TLS (`https`), trusting this CA (and presenting a client certificate).
    pub tls: Option<ClientTls>,
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: None,
            tls: None,
            timeout: Duration::from_secs(5),
        }
    }
}

impl ConnectOptions {
    /// A client token, plaintext.
    pub fn token(token: &str) -> ConnectOptions {
        ConnectOptions {
            token: Some(token.to_string()),
            ..ConnectOptions::default()
        }
    }

    /// The first token of a tokens file (the file the server reads, or one with only
    /// the token).
    pub fn token_file(path: &Path) -> Result<ConnectOptions, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the token file {}: {e}", path.display()))?;
        let token = match super::auth::parse_tokens(&text) {
            Ok(v) if !v.is_empty() => v[0].1.clone(),
            _ => text.trim().to_string(),
        };
        if token.is_empty() {
            return Err(format!("{}: no token", path.display()));
        }
        Ok(ConnectOptions::token(&token))
    }

    pub fn with_tls(mut self, tls: ClientTls) -> ConnectOptions {
        self.tls = Some(tls);
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.timeout = timeout;
        self
    }
}

/// A failed remote call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} ({code:?}): {message}")]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub code: tonic::Code,
    pub message: String,
    /// For an unknown outcome: the transaction to resolve (from the server's
    /// `dsb-txn-id` trailer, or the id a failed `commit` was called with).
    pub txn: Option<TxnId>,
}

impl RemoteError {
    /// Abort and run the transaction again.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The commit may or may not have happened: resolve the transaction
    /// ([`RemoteError::txn`], [`RemoteNode::resolve_outcome`]) before running it again.
    pub fn is_unknown(&self) -> bool {
        self.kind.is_unknown()
    }

    /// An answer this client cannot decode (a server of another version, a bug).
    pub fn bad_answer(message: String) -> RemoteError {
        RemoteError {
            kind: ErrorKind::Internal,
            code: tonic::Code::Internal,
            message: format!("malformed answer: {message}"),
            txn: None,
        }
    }

    fn transport(message: String) -> RemoteError {
        RemoteError {
            kind: ErrorKind::Transport,
            code: tonic::Code::Unavailable,
            message,
            txn: None,
        }
    }

    /// A failed `Commit` call: a transport failure (no answer from the server: the call
    /// may have been handled) leaves the outcome unknown too.
    fn of_commit(txn: TxnId, e: RemoteError) -> RemoteError {
        match e.kind {
            ErrorKind::Transport => RemoteError {
                kind: ErrorKind::OutcomeUnknown,
                code: e.code,
                message: format!(
                    "outcome of transaction {txn} unknown: the commit call failed without \
                     an answer ({}); resolve it before running it again",
                    e.message
                ),
                txn: Some(txn),
            },
            _ if e.kind.is_unknown() => RemoteError {
                txn: e.txn.or(Some(txn)),
                ..e
            },
            _ => e,
        }
    }
}

impl From<tonic::Status> for RemoteError {
    fn from(s: tonic::Status) -> Self {
        RemoteError {
            kind: ErrorKind::of_status(&s),
            code: s.code(),
            message: s.message().to_string(),
            txn: txn_of_status(&s),
        }
    }
}

/// Largest answer accepted (a Scan of many long rows).
const MAX_ANSWER: usize = 256 << 20;

/// A connection to one compute node's gRPC server.
pub struct RemoteNode {
    client: Client,
    channel: Channel,
    creds: Credentials,
    // Declared after the channel: dropped last, so the channel's tasks stop with it.
    rt: tokio::runtime::Runtime,
}

impl RemoteNode {
    /// Connects to `addr` (`host:port` or `http://host:port`) without credentials (a
    /// server running `insecure`).
    pub fn connect(addr: &str) -> Result<RemoteNode, RemoteError> {
        RemoteNode::connect_with(addr, &ConnectOptions::default())
    }

    pub fn connect_timeout(addr: &str, timeout: Duration) -> Result<RemoteNode, RemoteError> {
        RemoteNode::connect_with(addr, &ConnectOptions::default().with_timeout(timeout))
    }

    /// Connects to `addr` (`host:port`, `http://...` or `https://...`; TLS settings make
    /// it `https`) with `opts`' credentials.
    pub fn connect_with(addr: &str, opts: &ConnectOptions) -> Result<RemoteNode, RemoteError> {
        let bad = |message: String| RemoteError {
            kind: ErrorKind::BadRequest,
            code: tonic::Code::InvalidArgument,
            message,
            txn: None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("compute-client")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::transport(format!("starting the client runtime: {e}")))?;
        let bare = addr
            .strip_prefix("http://")
            .or_else(|| addr.strip_prefix("https://"))
            .unwrap_or(addr);
        let scheme = if opts.tls.is_some() || addr.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{bare}"))
            .map_err(|e| bad(format!("bad address {addr:?}: {e}")))?
            .connect_timeout(opts.timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &opts.tls {
            let host = bare.rsplit_once(':').map_or(bare, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let cfg = tls.config(host).map_err(bad)?;
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| bad(format!("TLS settings: {e}")))?;
        }
        let creds = match &opts.token {
            Some(t) => Credentials::token(t).map_err(bad)?,
            None => Credentials::none(),
        };
        let channel = rt
            .block_on(endpoint.connect())
            .map_err(|e| RemoteError::transport(format!("connecting to {addr}: {e:?}")))?;
        let client = ComputeClient::with_interceptor(channel.clone(), creds.clone())
            .max_decoding_message_size(MAX_ANSWER);
        Ok(RemoteNode {
            client,
            channel,
            creds,
            rt,
        })
    }

    /// Runs `fut` on this connection's runtime (with [`RemoteNode::channel`], for other
    /// services on the same connection, e.g. the TPC-C stored procedures).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// The connection's channel with its credentials on every call, to build the client
    /// of another service served on the same port.
    pub fn channel(&self) -> InterceptedService<Channel, Credentials> {
        let (channel, creds) = (self.channel.clone(), self.creds.clone());
        InterceptedService::new(channel, creds)
    }

    /// Runs `f` with a client on this node's runtime (for calls this wrapper does not
    /// cover, e.g. raw requests in tests).
    pub fn call<F, R>(&self, f: impl FnOnce(Client) -> F) -> R
    where
        F: Future<Output = R>,
    {
        self.rt.block_on(f(self.client.clone()))
    }

    pub fn health(&self) -> Result<pb::HealthResponse, RemoteError> {
        self.call(|mut c| async move { c.health(pb::HealthRequest {}).await })
            .map(|r| r.into_inner())
            .map_err(Into::into)
    }

    pub fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, RemoteError> {
        self.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
            .map(|r| r.into_inner())
            .map_err(Into::into)
    }

    /// Creates a table (ALREADY_EXISTS if it exists).
    pub fn create_table(&self, name: &str) -> Result<(), RemoteError> {
        self.create(name, false).map(|_| ())
    }

    /// Creates the table unless it exists; returns whether it was created.
    pub fn ensure_table(&self, name: &str) -> Result<bool, RemoteError> {
        self.create(name, true)
    }

    fn create(&self, name: &str, if_not_exists: bool) -> Result<bool, RemoteError> {
        let req = pb::CreateTableRequest {
            name: name.to_string(),
            if_not_exists,
        };
        self.call(|mut c| async move { c.create_table(req).await })
            .map(|r| r.into_inner().created)
            .map_err(Into::into)
    }

    /// Begins a transaction with the node's default isolation.
    pub fn begin(&self) -> Result<RemoteTxn, RemoteError> {
        self.begin_isolation(pb::Isolation::Default)
    }

    pub fn begin_with(&self, isolation: Isolation) -> Result<RemoteTxn, RemoteError> {
        self.begin_isolation(match isolation {
            Isolation::Snapshot => pb::Isolation::Snapshot,
            Isolation::ReadCommitted => pb::Isolation::ReadCommitted,
        })
    }

    fn begin_isolation(&self, isolation: pb::Isolation) -> Result<RemoteTxn, RemoteError> {
        let req = pb::BeginRequest {
            isolation: isolation as i32,
        };
        let r = self
            .call(|mut c| async move { c.begin(req).await })?
            .into_inner();
        let handle = r.session.as_slice().try_into().map_err(|_| {
            RemoteError::bad_answer(format!("a session handle of {} bytes", r.session.len()))
        })?;
        Ok(RemoteTxn {
            id: TxnId(r.txn_id),
            handle,
        })
    }

    pub fn get(
        &self,
        txn: RemoteTxn,
        table: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        let req = pb::GetRequest {
            session: txn.handle.to_vec(),
            table: table.to_string(),
            key: key.to_vec(),
        };
        self.call(|mut c| async move { c.get(req).await })
            .map(|r| r.into_inner().value)
            .map_err(Into::into)
    }

    /// A locking read (`Txn::get_for_update`): the newest committed row, locked for
    /// this transaction until it ends.
    pub fn get_for_update(
        &self,
        txn: RemoteTxn,
        table: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        let req = pb::GetForUpdateRequest {
            session: txn.handle.to_vec(),
            table: table.to_string(),
            key: key.to_vec(),
        };
        self.call(|mut c| async move { c.get_for_update(req).await })
            .map(|r| r.into_inner().value)
            .map_err(Into::into)
    }

    pub fn put(
        &self,
        txn: RemoteTxn,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), RemoteError> {
        let req = pb::PutRequest {
            session: txn.handle.to_vec(),
            table: table.to_string(),
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.call(|mut c| async move { c.put(req).await })
            .map(|_| ())
            .map_err(Into::into)
    }

    /// Deletes the row; returns whether a visible row was there.
    pub fn delete(&self, txn: RemoteTxn, table: &str, key: &[u8]) -> Result<bool, RemoteError> {
        let req = pb::DeleteRequest {
            session: txn.handle.to_vec(),
            table: table.to_string(),
            key: key.to_vec(),
        };
        self.call(|mut c| async move { c.delete(req).await })
            .map(|r| r.into_inner().existed)
            .map_err(Into::into)
    }

    /// Rows with keys in `range`, ascending (or descending with `reverse`), at most
    /// `limit` of them — as the engine's `Txn::scan`. Answers the server cut short
    /// (`max_scan_rows`) are continued from the last key.
    pub fn scan(
        &self,
        txn: RemoteTxn,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        limit: Option<usize>,
    ) -> Result<Vec<Row>, RemoteError> {
        let to_pb = |b: Bound<&[u8]>| match b {
            Bound::Included(k) => Some(pb::KeyBound {
                key: k.to_vec(),
                inclusive: true,
            }),
            Bound::Excluded(k) => Some(pb::KeyBound {
                key: k.to_vec(),
                inclusive: false,
            }),
            Bound::Unbounded => None,
        };
        let (mut start, mut end) = (to_pb(range.0), to_pb(range.1));
        let mut out: Vec<Row> = Vec::new();
        loop {
            let left = limit.map(|l| l - out.len());
            if left == Some(0) {
                return Ok(out);
            }
            let req = pb::ScanRequest {
                session: txn.handle.to_vec(),
                table: table.to_string(),
                start: start.clone(),
                end: end.clone(),
                reverse,
                // A limit above u32::MAX is as good as none: the server caps anyway.
                limit: left.map_or(0, |l| u32::try_from(l).unwrap_or(0)),
            };
            let answer = self
                .call(|mut c| async move { c.scan(req).await })?
                .into_inner();
            out.extend(answer.rows.into_iter().map(|r| (r.key, r.value)));
            let Some((last, _)) = out.last() else {
                return Ok(out);
            };
            if !answer.truncated {
                return Ok(out);
            }
            let rest = Some(pb::KeyBound {
                key: last.clone(),
                inclusive: false,
            });
            if reverse {
                end = rest;
            } else {
                start = rest;
            }
        }
    }

    /// Commits; the session ends whatever the outcome. An error with
    /// [`RemoteError::is_unknown`] (the server lost the GTM's answer, or this call got
    /// no answer at all) must be resolved ([`RemoteNode::resolve_outcome`]) before the
    /// transaction runs again.
    pub fn commit(&self, txn: RemoteTxn) -> Result<Timestamp, RemoteError> {
        let req = pb::CommitRequest {
            session: txn.handle.to_vec(),
        };
        self.call(|mut c| async move { c.commit(req).await })
            .map(|r| Timestamp(r.into_inner().commit_ts))
            .map_err(|s| RemoteError::of_commit(txn.id, s.into()))
    }

    /// The final outcome of `txn` (any node's; see the engine's `Engine::resolve_outcome`).
    /// An error with [`RemoteError::is_unknown`] means no decision could be reached
    /// yet (the GTM or this node unreachable): call again later.
    pub fn resolve_outcome(&self, txn: TxnId) -> Result<Resolved, RemoteError> {
        let req = pb::ResolveOutcomeRequest { txn_id: txn.0 };
        let r = self
            .call(|mut c| async move { c.resolve_outcome(req).await })
            .map_err(|s| {
                let e = RemoteError::from(s);
                // No answer: nothing was decided by this call either.
                match e.kind {
                    ErrorKind::Transport => RemoteError {
                        kind: ErrorKind::OutcomeUnknown,
                        txn: Some(txn),
                        ..e
                    },
                    _ => e,
                }
            })?
            .into_inner();
        Ok(if r.committed {
            Resolved::Committed(Timestamp(r.commit_ts))
        } else {
            Resolved::Aborted
        })
    }

    pub fn abort(&self, txn: RemoteTxn) -> Result<(), RemoteError> {
        let req = pb::AbortRequest {
            session: txn.handle.to_vec(),
        };
        self.call(|mut c| async move { c.abort(req).await })
            .map(|_| ())
            .map_err(Into::into)
    }
}
