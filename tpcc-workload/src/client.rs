//! The TPC-C stored procedures called over a compute node's connection: the `Tpcc`
//! service of `proto/tpcc.proto`, on the same channel and with the same credentials as
//! the client API ([`RemoteNode`]).

use crate::check::CheckResult;
use crate::transactions::Outcome;
use crate::wire::{self, Call};
use common::compute::auth::Credentials;
use common::compute::{RemoteError, RemoteNode};
use common::proto::tpcc as pb;
use common::proto::tpcc::tpcc_client;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = tpcc_client::TpccClient<InterceptedService<Channel, Credentials>>;

/// The procedures of one compute node, over `node`'s connection.
pub struct TpccClient<'a> {
    node: &'a RemoteNode,
    client: Client,
}

impl<'a> TpccClient<'a> {
    pub fn new(node: &'a RemoteNode) -> TpccClient<'a> {
        TpccClient {
            node,
            client: tpcc_client::TpccClient::new(node.channel()),
        }
    }

    fn call<F, R>(&self, f: impl FnOnce(Client) -> F) -> Result<R, RemoteError>
    where
        F: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.node
            .block_on(f(self.client.clone()))
            .map(|r| r.into_inner())
            .map_err(Into::into)
    }

    /// Creates the TPC-C tables if missing.
    pub fn create_schema(&self) -> Result<(), RemoteError> {
        self.call(|mut c| async move { c.create_schema(pb::CreateSchemaRequest {}).await })
            .map(|_| ())
    }

    /// Loads a part of the TPC-C population through this node; returns rows written.
    pub fn load(&self, req: pb::LoadRequest) -> Result<u64, RemoteError> {
        self.call(|mut c| async move { c.load(req).await })
            .map(|r| r.rows)
    }

    /// The twelve consistency conditions, run on this node.
    pub fn check(
        &self,
        warehouses: u32,
        delivery_ran: bool,
    ) -> Result<Vec<CheckResult>, RemoteError> {
        let req = pb::CheckRequest {
            warehouses,
            delivery_ran,
        };
        let r = self.call(|mut c| async move { c.check(req).await })?;
        r.checks
            .iter()
            .map(wire::check_from_pb)
            .collect::<Result<_, _>>()
            .map_err(RemoteError::bad_answer)
    }

    /// Runs one whole TPC-C transaction server-side (one attempt: a retryable error
    /// means it was aborted; run the same call again).
    pub fn run(&self, call: &Call) -> Result<Outcome, RemoteError> {
        use wire::Request as R;
        let r = self.call(|mut c| async move {
            match wire::request_of(call) {
                R::NewOrder(r) => c.new_order(r).await,
                R::Payment(r) => c.payment(r).await,
                R::OrderStatus(r) => c.order_status(r).await,
                R::Delivery(r) => c.delivery(r).await,
                R::StockLevel(r) => c.stock_level(r).await,
            }
        })?;
        wire::outcome_of(&call.input, &r).map_err(RemoteError::bad_answer)
    }
}
