//! The client API's service: the embedding API ([`compute_node::node`],
//! [`compute_node::txn`]) over tonic, protocol `common/proto/compute.proto`. Sessions
//! are [`crate::sessions`], the error mapping [`crate::errors`], the status and metrics
//! [`crate::status`], the TPC-C procedures served beside it [`crate::tpcc`].
//!
//! The engine is synchronous and its calls block (storage nodes, the GTM, row-lock
//! waits), so every engine call runs on tokio's blocking pool (`spawn_blocking`); the
//! async workers only move bytes. Bad input is answered with INVALID_ARGUMENT and never
//! reaches a panic; a panic in an engine call is answered with INTERNAL and the server
//! keeps serving.

// tonic's handlers answer `Status` by value (176 bytes); the helpers here do the same
// rather than box it at every step.
#![allow(clippy::result_large_err)]

use crate::auth::{client_of, AuthInterceptor, ClientAuth};
use crate::errors::{as_slice, bad_request, bound, check_key, check_table_name, status_of};
use crate::sessions::{Open, Reaped, SessionCounters, SessionOptions, Sessions};
use crate::tpcc::TpccService;
use common::compute::ErrorKind;
use common::ids::TxnId;
use common::proto::compute as pb;
use common::proto::compute::compute_server::{Compute, ComputeServer};
use common::txn::{Isolation, Resolved};
use compute_node::btree::MAX_ENTRY_LEN;
use compute_node::node::ComputeNode;
use compute_node::txn::{Table, TxnError};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

pub(crate) struct Inner {
    pub(crate) node: Arc<ComputeNode>,
    pub(crate) auth: Arc<ClientAuth>,
    pub(crate) sessions: Sessions,
}

impl Inner {
    fn table(&self, name: &str) -> Result<Table, Status> {
        check_table_name(name)?;
        self.node.table(name).map_err(|e| status_of(&e))
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
    /// authenticated first ([`crate::auth`]).
    pub fn server(
        &self,
    ) -> tonic::service::interceptor::InterceptedService<
        ComputeServer<ComputeService>,
        AuthInterceptor,
    > {
        ComputeServer::with_interceptor(self.clone(), self.auth_interceptor())
    }

    /// The interceptor that authenticates every call (shared by the services on this
    /// port).
    pub fn auth_interceptor(&self) -> AuthInterceptor {
        AuthInterceptor(self.inner.auth.clone())
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
        crate::status::snapshot(&self.inner)
    }

    /// The status in Prometheus text format (the `metrics_listen` endpoint).
    pub fn render_metrics(&self) -> String {
        crate::status::render_metrics(&self.status())
    }

    pub(crate) fn refuse_if_closed(&self) -> Result<(), Status> {
        if self.inner.sessions.closed.load(Ordering::Acquire) {
            return Err(ErrorKind::ShuttingDown.status("the server is shutting down"));
        }
        Ok(())
    }

    /// Runs `f` on the blocking pool; a panic becomes INTERNAL.
    pub(crate) async fn blocking<R, F>(&self, f: F) -> Result<R, Status>
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
        .add_service(TpccService::new(service.clone()).server())
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
}
