//! Running TPC-C against compute-node services over gRPC: every transaction is one
//! stored-procedure call (`TpccNewOrder`, `TpccPayment`, ...), so the compute node runs
//! the same code as the embedded harness and the network carries one request and one
//! answer per attempt. Loading is a `TpccLoad` call per node (each node loads its own
//! warehouses, node 1 also the items, all in parallel); the checks are a `TpccCheck`.

use crate::check::CheckResult;
use crate::driver::partition_of;
use crate::schema::key;
use crate::target::{AttemptError, LoadRequest, ModeReport, OrderId, Target};
use crate::transactions::{Input, Mode, Outcome};
use anyhow::{anyhow, bail, Context, Result};
use common::compute::{ConnectOptions, ErrorKind, RemoteError, RemoteNode};
use common::proto::compute as pb;
use std::time::{Duration, Instant};
use tpcc_workload::client::TpccClient;
use tpcc_workload::wire::{self, Call};

/// Compute nodes reached over gRPC.
pub struct RemoteTarget {
    addrs: Vec<String>,
    nodes: Vec<RemoteNode>,
    /// The service processes, when this harness started them (their CPU is known).
    pids: Vec<u32>,
    mode: Mode,
    /// The nodes' wait policy, for the report.
    policy: &'static str,
}

impl From<RemoteError> for AttemptError {
    fn from(e: RemoteError) -> Self {
        let msg = e.to_string();
        match e.kind {
            k if k.is_retryable() => AttemptError::Retryable {
                chain_full: crate::target::is_chain_full(&msg),
                msg,
            },
            ErrorKind::Transport
            | ErrorKind::Storage
            | ErrorKind::Gtm
            | ErrorKind::Fenced
            | ErrorKind::ShuttingDown
            | ErrorKind::TooManySessions
            // Not acknowledged and run again, as before it had a kind of its own (see
            // `AttemptError::from(TxnError)`).
            | ErrorKind::OutcomeUnknown => AttemptError::Unavailable(msg),
            _ => AttemptError::Fatal(msg),
        }
    }
}

impl RemoteTarget {
    /// Connects to every address and waits (up to `wait`) until each node is serving.
    pub fn connect(
        addrs: &[String],
        wait: Duration,
        opts: &ConnectOptions,
    ) -> Result<RemoteTarget> {
        if addrs.is_empty() {
            bail!("no compute-node addresses");
        }
        let deadline = Instant::now() + wait;
        let mut nodes = Vec::new();
        for a in addrs {
            let node = loop {
                let o = opts.clone().with_timeout(Duration::from_secs(2));
                match RemoteNode::connect_with(a, &o) {
                    Ok(n) => break n,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(addr = %a, error = %e, "compute node not reachable yet");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => return Err(anyhow!("connecting to compute node {a}: {e}")),
                }
            };
            loop {
                let h = node.health();
                match &h {
                    Ok(r) if r.status == pb::health_response::Status::Serving as i32 => break,
                    _ if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    Ok(r) => bail!("compute node {a} is not serving: {}", r.message),
                    Err(e) => bail!("compute node {a}: health check failed: {e}"),
                }
            }
            nodes.push(node);
        }
        Ok(RemoteTarget {
            addrs: addrs.to_vec(),
            nodes,
            pids: Vec::new(),
            mode: Mode::default(),
            policy: "the nodes' wait policy",
        })
    }

    /// Counts the CPU of these processes (the services this harness started) in
    /// [`Target::cpu_seconds`].
    pub fn with_pids(mut self, pids: Vec<u32>) -> RemoteTarget {
        self.pids = pids;
        self
    }

    /// Runs the procedures with this isolation and locking; `policy` names the nodes'
    /// wait policy in the report.
    pub fn with_mode(mut self, mode: Mode, policy: &'static str) -> RemoteTarget {
        self.mode = mode;
        self.policy = policy;
        self
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }
}

impl Target for RemoteTarget {
    fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The service processes' CPU plus this process's (the driver, as in the embedded
    /// target); unknown for a cluster this harness did not start, or once one of its
    /// processes was replaced (a restart in a fault run).
    fn cpu_seconds(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        let mut total = crate::target::process_cpu_seconds()?;
        for &pid in &self.pids {
            total += crate::target::pid_cpu_seconds(pid)?;
        }
        Some(total)
    }

    fn pools(&self) -> Vec<crate::target::PoolSample> {
        self.nodes
            .iter()
            .filter_map(|n| n.cluster_status().ok())
            .map(|st| {
                let p = st.buffer_pool.unwrap_or_default();
                crate::target::PoolSample {
                    node_id: st.node_id,
                    epoch: st.epoch,
                    resident: p.resident,
                    capacity: p.capacity,
                    page_bytes: common::storage::page::PAGE_SIZE as u64,
                }
            })
            .collect()
    }

    fn load(&self, req: &LoadRequest) -> Result<u64> {
        let n = self.nodes.len();
        let w = req.scale.warehouses;
        for (node, a) in self.nodes.iter().zip(&self.addrs) {
            TpccClient::new(node)
                .create_schema()
                .with_context(|| format!("creating the TPC-C schema on {a}"))?;
        }
        let start = Instant::now();
        if req.progress {
            eprintln!(
                "loading through {n} compute node(s), each its own warehouses (server-side \
                 TpccLoad; progress is logged per node when it finishes)"
            );
        }
        let results: Vec<Result<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let mine: Vec<u32> = (1..=w).filter(|&x| partition_of(x, w, n) == i).collect();
                    let (node, addr) = (&self.nodes[i], &self.addrs[i]);
                    s.spawn(move || -> Result<u64> {
                        // Node 1 always owns warehouse 1; a node beyond the
                        // warehouse count has nothing to load.
                        let (Some(&from), Some(&to)) = (mine.first(), mine.last()) else {
                            return Ok(0);
                        };
                        let r = common::proto::tpcc::LoadRequest {
                            warehouses: w,
                            items: req.scale.items,
                            from_warehouse: from,
                            to_warehouse: to,
                            load_items: i == 0,
                            c_load: Some(wire::nurand_to_pb(&req.c_load)),
                            seed: req.seed,
                            threads: req.threads as u32,
                        };
                        let rows = TpccClient::new(node).load(r)
                            .with_context(|| format!("loading warehouses {from}..={to} on {addr}"))?;
                        if req.progress {
                            eprintln!(
                                "  node {} ({addr}): warehouses {from}..={to}{}: {rows} rows in {:.1}s",
                                i + 1,
                                if i == 0 { " + items" } else { "" },
                                start.elapsed().as_secs_f64()
                            );
                        }
                        Ok(rows)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("loader thread panicked")))
                })
                .collect()
        });
        let mut rows = 0;
        for r in results {
            rows += r?;
        }
        Ok(rows)
    }

    fn checks(&self, warehouses: u32, delivery_ran: bool) -> Result<Vec<CheckResult>> {
        TpccClient::new(&self.nodes[0])
            .check(warehouses, delivery_ran)
            .with_context(|| format!("consistency checks on {}", self.addrs[0]))
    }

    fn attempt(
        &self,
        node: usize,
        input: &Input,
        now: u64,
        history_key: (u32, u64),
    ) -> Result<Outcome, AttemptError> {
        let call = Call {
            input: input.clone(),
            now_us: now,
            history_key,
            mode: self.mode,
        };
        TpccClient::new(&self.nodes[node])
            .run(&call)
            .map_err(AttemptError::from)
    }

    fn txn_mode(&self) -> ModeReport {
        ModeReport::of_engine(&self.mode, self.policy)
    }

    fn missing_orders(&self, acked: &[OrderId]) -> Result<Vec<OrderId>> {
        let node = &self.nodes[0];
        let mut missing = Vec::new();
        for chunk in acked.chunks(1000) {
            let txn = node.begin()?;
            for &(w, d, o) in chunk {
                if node.get(txn, "orders", &key::order(w, d, o))?.is_none() {
                    missing.push((w, d, o));
                }
            }
            node.abort(txn)?;
        }
        Ok(missing)
    }
}
