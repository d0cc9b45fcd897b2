//! Embedding the engine: an embedded cluster (storage node, GTM and two compute nodes in
//! this process), a table, and concurrent transfers between accounts from both nodes.
//! Each transfer takes both rows with locking reads (`get_for_update`, SQL's `SELECT …
//! FOR UPDATE`) in key order, so a busy account makes transfers wait rather than
//! abort; a retryable error (a wound, a lock-wait timeout) is aborted and run again.
//!
//! ```text
//! cargo run --release -p cluster --example embedding
//! ```

use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::node::ComputeNode;
use compute_node::txn::{Table, TxnError};
use std::sync::atomic::{AtomicU64, Ordering};

const ACCOUNTS: u64 = 10;
const START: u64 = 1_000;

fn key(i: u64) -> Vec<u8> {
    format!("acct{i:04}").into_bytes()
}

fn balance(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Moves `amount` from `from` to `to` (at most what `from` has); retries conflicts.
fn transfer(
    node: &ComputeNode,
    accounts: &Table,
    from: u64,
    to: u64,
    amount: u64,
    retries: &AtomicU64,
) -> Result<(), TxnError> {
    loop {
        let mut txn = node.begin()?;
        let body = (|| {
            // Lock both rows in one order, so two transfers never wait in a cycle.
            let (lo, hi) = (from.min(to), from.max(to));
            let a = balance(txn.get_for_update(accounts, &key(lo))?);
            let b = balance(txn.get_for_update(accounts, &key(hi))?);
            let (have_from, have_to) = if from == lo { (a, b) } else { (b, a) };
            let moved = amount.min(have_from);
            txn.put(
                accounts,
                &key(from),
                (have_from - moved).to_string().as_bytes(),
            )?;
            txn.put(accounts, &key(to), (have_to + moved).to_string().as_bytes())?;
            Ok::<_, TxnError>(())
        })();
        match body.and_then(|()| txn.commit().map(|_| ())) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                retries.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 2,
        storage_memory: 64 << 20,
        buffer_frames: 2048,
        ..ClusterOptions::default()
    })?;
    let accounts = cluster.nodes[0].ensure_table("accounts")?;
    let mut txn = cluster.nodes[0].begin()?;
    for i in 0..ACCOUNTS {
        txn.put(&accounts, &key(i), START.to_string().as_bytes())?;
    }
    txn.commit()?;

    let retries = AtomicU64::new(0);
    let per_thread = 200u64;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (node, accounts, retries) = (&cluster.nodes[(t % 2) as usize], &accounts, &retries);
            s.spawn(move || {
                for i in 0..per_thread {
                    let from = (t * 7 + i * 3) % ACCOUNTS;
                    let to = (from + 1 + i % (ACCOUNTS - 1)) % ACCOUNTS;
                    transfer(node, accounts, from, to, 1 + i % 50, retries).expect("transfer");
                }
            });
        }
    });

    // Any node sees the same committed state; the total never changed.
    let mut txn = cluster.nodes[1].begin()?;
    let mut total = 0;
    for i in 0..ACCOUNTS {
        total += balance(txn.get(&accounts, &key(i))?);
    }
    txn.commit()?;
    println!(
        "{} transfers from 2 compute nodes, {} retried; total {total} (expected {})",
        4 * per_thread,
        retries.load(Ordering::Relaxed),
        ACCOUNTS * START
    );
    assert_eq!(total, ACCOUNTS * START);
    cluster.shutdown()?;
    Ok(())
}
