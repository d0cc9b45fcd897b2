//! How a history workload reaches the engine: through the embedding API of compute nodes
//! in this process, or through the gRPC API of compute-node processes. Both answer the
//! same three ways, which is all a history records: a value, a definite failure (the
//! transaction did not commit), or an unknown commit outcome.

use common::compute::ErrorKind;
use common::compute::{ConnectOptions, RemoteError, RemoteNode, RemoteTxn};
use compute_node::node::ComputeNode;
use compute_node::txn::{Table, Txn, TxnError};
use std::sync::Arc;

/// Why an operation did not give a value.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The transaction did not commit and never will (a conflict, a refusal, a node
    /// that is down before the commit was sent).
    Aborted(String),
    /// The commit may or may not have happened.
    Unknown(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Aborted(m) | Failure::Unknown(m) => m,
        }
    }
}

/// The compute nodes a workload runs on.
pub trait Client: Send + Sync {
    fn nodes(&self) -> usize;
    /// Begins a transaction on compute node `node` (0-based).
    fn begin(&self, node: usize) -> Result<Box<dyn Session + '_>, Failure>;
}

/// One open transaction.
pub trait Session {
    fn txn_id(&self) -> Option<u64>;
    fn snapshot(&self) -> Option<u64>;
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Failure>;
    /// A locking read (`Txn::get_for_update`).
    fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Failure>;
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Failure>;
    /// Commits; the commit timestamp if the engine gives one.
    fn commit(self: Box<Self>) -> Result<Option<u64>, Failure>;
    fn abort(self: Box<Self>);
}

/// Compute nodes in this process (an embedded cluster), one table.
pub struct EmbeddedClient {
    nodes: Vec<Arc<ComputeNode>>,
    table: Table,
}

impl EmbeddedClient {
    /// Uses (creating if needed) table `table` on the first node.
    pub fn new(nodes: Vec<Arc<ComputeNode>>, table: &str) -> Result<EmbeddedClient, String> {
        let first = nodes.first().ok_or("no compute nodes")?;
        let table = first.ensure_table(table).map_err(|e| e.to_string())?;
        Ok(EmbeddedClient { nodes, table })
    }

    pub fn node(&self, i: usize) -> &Arc<ComputeNode> {
        &self.nodes[i]
    }
}

/// A definite failure, except where the error says the outcome is open.
fn embedded_failure(e: TxnError) -> Failure {
    if e.is_unknown() {
        Failure::Unknown(e.to_string())
    } else {
        Failure::Aborted(e.to_string())
    }
}

impl Client for EmbeddedClient {
    fn nodes(&self) -> usize {
        self.nodes.len()
    }

    fn begin(&self, node: usize) -> Result<Box<dyn Session + '_>, Failure> {
        let txn = self.nodes[node].begin().map_err(|e| {
            // A node that cannot begin is broken (lost lease, lost connection): the
            // nemesis or the next attempt rejoins it.
            Failure::Aborted(e.to_string())
        })?;
        Ok(Box::new(EmbeddedSession {
            txn: Some(txn),
            table: &self.table,
        }))
    }
}

struct EmbeddedSession<'a> {
    txn: Option<Txn>,
    table: &'a Table,
}

impl EmbeddedSession<'_> {
    fn txn(&mut self) -> &mut Txn {
        self.txn.as_mut().expect("open until commit or abort")
    }
}

impl Session for EmbeddedSession<'_> {
    fn txn_id(&self) -> Option<u64> {
        self.txn.as_ref().map(|t| t.id().0)
    }

    fn snapshot(&self) -> Option<u64> {
        self.txn.as_ref().map(|t| t.snapshot().0)
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        let table = self.table;
        self.txn()
            .get(table, key)
            .map_err(|e| Failure::Aborted(e.to_string()))
    }

    fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        let table = self.table;
        self.txn()
            .get_for_update(table, key)
            .map_err(|e| Failure::Aborted(e.to_string()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Failure> {
        let table = self.table;
        self.txn()
            .put(table, key, value)
            .map_err(|e| Failure::Aborted(e.to_string()))
    }

    fn commit(mut self: Box<Self>) -> Result<Option<u64>, Failure> {
        let txn = self.txn.take().expect("open");
        txn.commit().map(|ts| Some(ts.0)).map_err(embedded_failure)
    }

    fn abort(mut self: Box<Self>) {
        if let Some(t) = self.txn.take() {
            let _ = t.abort();
        }
    }
}

/// Compute-node processes over gRPC, one table.
pub struct RemoteClient {
    nodes: Vec<RemoteNode>,
    table: String,
}

impl RemoteClient {
    pub fn connect(
        addrs: &[String],
        table: &str,
        opts: &ConnectOptions,
    ) -> Result<RemoteClient, String> {
        let nodes = addrs
            .iter()
            .map(|a| RemoteNode::connect_with(a, opts).map_err(|e| format!("{a}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        nodes
            .first()
            .ok_or("no compute nodes")?
            .ensure_table(table)
            .map_err(|e| e.to_string())?;
        Ok(RemoteClient {
            nodes,
            table: table.to_string(),
        })
    }
}

/// After a commit call: which errors prove the commit did not happen.
fn remote_commit_failure(e: RemoteError) -> Failure {
    match e.kind {
        ErrorKind::Conflict
        | ErrorKind::Fenced
        | ErrorKind::Finished
        | ErrorKind::BadRequest
        | ErrorKind::NoSuchTable
        | ErrorKind::TableExists
        | ErrorKind::TooManySessions
        | ErrorKind::Storage
        | ErrorKind::Corrupt
        // Refused before any handler ran.
        | ErrorKind::Unauthenticated => Failure::Aborted(e.to_string()),
        // The request may have reached the GTM: the client cannot tell.
        ErrorKind::OutcomeUnknown
        | ErrorKind::Transport
        | ErrorKind::Internal
        | ErrorKind::Gtm
        | ErrorKind::ShuttingDown => Failure::Unknown(e.to_string()),
    }
}

impl Client for RemoteClient {
    fn nodes(&self) -> usize {
        self.nodes.len()
    }

    fn begin(&self, node: usize) -> Result<Box<dyn Session + '_>, Failure> {
        let n = &self.nodes[node];
        let txn = n.begin().map_err(|e| Failure::Aborted(e.to_string()))?;
        Ok(Box::new(RemoteSession {
            node: n,
            table: &self.table,
            txn,
            open: true,
        }))
    }
}

struct RemoteSession<'a> {
    node: &'a RemoteNode,
    table: &'a str,
    txn: RemoteTxn,
    open: bool,
}

impl Session for RemoteSession<'_> {
    fn txn_id(&self) -> Option<u64> {
        Some(self.txn.id.0)
    }

    fn snapshot(&self) -> Option<u64> {
        None
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        self.node
            .get(self.txn, self.table, key)
            .map_err(|e| Failure::Aborted(e.to_string()))
    }

    fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        self.node
            .get_for_update(self.txn, self.table, key)
            .map_err(|e| Failure::Aborted(e.to_string()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Failure> {
        self.node
            .put(self.txn, self.table, key, value)
            .map_err(|e| Failure::Aborted(e.to_string()))
    }

    fn commit(mut self: Box<Self>) -> Result<Option<u64>, Failure> {
        self.open = false;
        self.node
            .commit(self.txn)
            .map(|ts| Some(ts.0))
            .map_err(remote_commit_failure)
    }

    fn abort(mut self: Box<Self>) {
        self.open = false;
        let _ = self.node.abort(self.txn);
    }
}

impl Drop for RemoteSession<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.node.abort(self.txn);
        }
    }
}
