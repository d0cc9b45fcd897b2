//! The TPC-C stored procedures (`common/proto/tpcc.proto`), served beside the client
//! API on the same port: each call runs one whole transaction of the `tpcc-workload`
//! crate on the blocking pool, retries nothing itself and answers a retryable ABORTED
//! like any other call; the loader and the consistency checks too.

// tonic's handlers answer `Status` by value; the helpers here do the same.
#![allow(clippy::result_large_err)]

use crate::auth::AuthInterceptor;
use crate::errors::{anyhow_status, bad_request, status_of};
use crate::service::ComputeService;
use common::compute::ErrorKind;
use common::proto::tpcc as pb;
use common::proto::tpcc::tpcc_server::{Tpcc, TpccServer};
use compute_node::node::ComputeNode;
use compute_node::txn::TxnError;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tpcc_workload::schema::Tables;
use tpcc_workload::wire::{self, Call};
use tpcc_workload::{check, load, schema, transactions};

/// The TPC-C tables, opened on first use by a procedure.
#[derive(Clone, Default)]
struct OpenTables(Arc<Mutex<Option<Arc<Tables>>>>);

impl OpenTables {
    /// The TPC-C tables (NOT_FOUND until CreateSchema made them).
    fn get(&self, node: &Arc<ComputeNode>) -> Result<Arc<Tables>, Status> {
        let mut t = self.0.lock();
        if let Some(t) = &*t {
            return Ok(t.clone());
        }
        let opened = Arc::new(Tables::open(node).map_err(|e| match e {
            TxnError::NoSuchTable(n) => ErrorKind::NoSuchTable.status(format!(
                "no TPC-C table {n}: call CreateSchema (and Load) first"
            )),
            e => status_of(&e),
        })?);
        *t = Some(opened.clone());
        Ok(opened)
    }
}

/// The procedures of one compute node's service (shares its sessions' shutdown flag,
/// counters and blocking pool).
#[derive(Clone)]
pub struct TpccService {
    compute: ComputeService,
    tables: OpenTables,
}

impl TpccService {
    pub fn new(compute: ComputeService) -> TpccService {
        TpccService {
            compute,
            tables: OpenTables::default(),
        }
    }

    /// The tonic service, behind the same authentication as the client API.
    pub fn server(
        &self,
    ) -> tonic::service::interceptor::InterceptedService<TpccServer<TpccService>, AuthInterceptor>
    {
        TpccServer::with_interceptor(self.clone(), self.compute.auth_interceptor())
    }

    /// Runs one stored-procedure call (one attempt) on the blocking pool.
    async fn procedure(&self, call: Call) -> Result<Response<pb::ProcedureResponse>, Status> {
        self.compute.refuse_if_closed()?;
        let tables = self.tables.clone();
        self.compute
            .blocking(move |inner| {
                let t = tables.get(&inner.node)?;
                let o = transactions::run_once(
                    &inner.node,
                    &t,
                    &call.input,
                    call.now_us,
                    call.history_key,
                    call.mode,
                )
                .map_err(|e| status_of(&e))?;
                inner
                    .sessions
                    .counters
                    .procedures
                    .fetch_add(1, Ordering::Relaxed);
                Ok(wire::response_of(o))
            })
            .await
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl Tpcc for TpccService {
    async fn new_order(
        &self,
        req: Request<pb::NewOrderRequest>,
    ) -> Result<Response<pb::ProcedureResponse>, Status> {
        let call = wire::new_order_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn payment(
        &self,
        req: Request<pb::PaymentRequest>,
    ) -> Result<Response<pb::ProcedureResponse>, Status> {
        let call = wire::payment_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn order_status(
        &self,
        req: Request<pb::OrderStatusRequest>,
    ) -> Result<Response<pb::ProcedureResponse>, Status> {
        let call = wire::order_status_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn delivery(
        &self,
        req: Request<pb::DeliveryRequest>,
    ) -> Result<Response<pb::ProcedureResponse>, Status> {
        let call = wire::delivery_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn stock_level(
        &self,
        req: Request<pb::StockLevelRequest>,
    ) -> Result<Response<pb::ProcedureResponse>, Status> {
        let call = wire::stock_level_call(req.into_inner()).map_err(bad_request)?;
        self.procedure(call).await
    }

    async fn create_schema(
        &self,
        _req: Request<pb::CreateSchemaRequest>,
    ) -> Result<Response<pb::CreateSchemaResponse>, Status> {
        self.compute.refuse_if_closed()?;
        let tables = self.tables.clone();
        self.compute
            .blocking(move |inner| {
                let t = Tables::ensure(&inner.node).map_err(|e| status_of(&e))?;
                *tables.0.lock() = Some(Arc::new(t));
                Ok(pb::CreateSchemaResponse {})
            })
            .await
            .map(Response::new)
    }

    async fn load(
        &self,
        req: Request<pb::LoadRequest>,
    ) -> Result<Response<pb::LoadResponse>, Status> {
        self.compute.refuse_if_closed()?;
        let r = req.into_inner();
        let scale = load::Scale {
            warehouses: r.warehouses,
            items: r.items,
        };
        if r.warehouses == 0 || r.items == 0 || r.items > schema::SPEC_ITEMS {
            return Err(bad_request(format!(
                "warehouses must be at least 1 and items in [1, {}] (got {}, {})",
                schema::SPEC_ITEMS,
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
        let c_load = wire::nurand_from_pb(r.c_load).map_err(bad_request)?;
        let part = load::LoadPart {
            from_w: r.from_warehouse,
            to_w: r.to_warehouse,
            items: r.load_items,
        };
        let threads = match r.threads {
            0 => 2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => (n as usize).min(64),
        };
        let tables = self.tables.clone();
        self.compute
            .blocking(move |inner| {
                let t = tables.get(&inner.node)?;
                let rows = load::Loader {
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
                Ok(pb::LoadResponse { rows })
            })
            .await
            .map(Response::new)
    }

    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        self.compute.refuse_if_closed()?;
        let r = req.into_inner();
        if r.warehouses == 0 {
            return Err(bad_request("warehouses must be at least 1"));
        }
        let tables = self.tables.clone();
        self.compute
            .blocking(move |inner| {
                tables.get(&inner.node)?;
                let checks = check::run_checks(&inner.node, r.warehouses, r.delivery_ran)
                    .map_err(|e| anyhow_status("checking", &e))?;
                Ok(pb::CheckResponse {
                    checks: checks.iter().map(wire::check_to_pb).collect(),
                })
            })
            .await
            .map(Response::new)
    }
}
