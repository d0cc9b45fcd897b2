//! `cluster-probe`: a compute node in its own process, joined to a running cluster, that
//! runs a small scripted workload and reports every acknowledged commit on stdout. Fault
//! tests kill -9 or SIGSTOP it while it works.
//!
//! ```text
//! cluster-probe --node-id 2 --gtm shm:///.../gtm.sock --storage shm:///.../storage-0.sock \
//!     --key-file .../cluster.key increments --table counters --keys 4 --count 300
//! cluster-probe ... hold --table t --key k     # write k, print HOLDING, commit on "commit\n"
//! cluster-probe ... snapshot --table t --first a --then b   # read a, then b on "read\n"
//! ```
//!
//! Output lines: `READY`, `ACK <key> <new value>`, `HOLDING <txn id>`, `COMMITTED <ts>`,
//! `READ <key> <value>|NONE`, `ERR <kind> <message>`. Exit code 0, or 3 when fenced, 4 on any other error.

use anyhow::Result;
use clap::{Parser, Subcommand};
use compute_node::node::{ComputeConfig, ComputeNode};
use compute_node::txn::TxnError;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    node_id: u32,
    #[arg(long)]
    gtm: String,
    #[arg(long, value_delimiter = ',')]
    storage: Vec<String>,
    #[arg(long)]
    key_file: PathBuf,
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Increment `keys` shared counters `count` times in total, one transaction each.
    Increments {
        #[arg(long)]
        table: String,
        #[arg(long)]
        keys: u64,
        #[arg(long)]
        count: u64,
    },
    /// Write `key` in a transaction and keep it open until stdin says "commit".
    Hold {
        #[arg(long)]
        table: String,
        #[arg(long)]
        key: String,
        /// Take the row with a locking read first (`get_for_update`), then write it.
        #[arg(long)]
        for_update: bool,
    },
    /// In one snapshot transaction read `first`, then `then` when stdin says "read",
    /// then commit. (A snapshot held across a pause: the second read comes after the
    /// lease may have lapsed.)
    Snapshot {
        #[arg(long)]
        table: String,
        #[arg(long)]
        first: String,
        #[arg(long)]
        then: String,
    },
}

fn say_read(key: &str, v: Option<Vec<u8>>) {
    let shown = v.map_or_else(
        || "NONE".to_string(),
        |b| String::from_utf8_lossy(&b).into_owned(),
    );
    say(format!("READ {key} {shown}"));
}

fn wait_for_line(word: &str) -> Result<()> {
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? > 0 {
        if line.trim() == word {
            break;
        }
        line.clear();
    }
    Ok(())
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(e: &TxnError) -> ! {
    let kind = match e {
        TxnError::Fenced(_) => "fenced",
        TxnError::Conflict(_) => "conflict",
        _ => "other",
    };
    say(format!("ERR {kind} {e}"));
    std::process::exit(if matches!(e, TxnError::Fenced(_)) {
        3
    } else {
        4
    });
}

fn main() -> Result<()> {
    common::service::init_tracing("warn");
    let args = Args::parse();
    let cfg = ComputeConfig {
        node_id: args.node_id,
        gtm: args.gtm.clone(),
        storage: args.storage.clone(),
        key_file: args.key_file.clone(),
        buffer_frames: 2048,
        heartbeat_ms: args.heartbeat_ms,
        rpc_timeout_s: 20,
        ..ComputeConfig::default()
    };
    let node = ComputeNode::start(&cfg)?;
    say("READY".into());
    match args.cmd {
        Cmd::Increments { table, keys, count } => {
            let t = node.ensure_table(&table).unwrap_or_else(|e| fail(&e));
            for i in 0..count {
                let key = format!("c{}", (i + u64::from(args.node_id)) % keys);
                loop {
                    let mut tx = node.begin().unwrap_or_else(|e| fail(&e));
                    let res = tx.get(&t, key.as_bytes()).and_then(|v| {
                        let n = v.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                        tx.put(&t, key.as_bytes(), &(n + 1).to_le_bytes())
                            .map(|_| n + 1)
                    });
                    match res.and_then(|n| tx.commit().map(|_| n)) {
                        Ok(n) => {
                            say(format!("ACK {key} {n}"));
                            break;
                        }
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => fail(&e),
                    }
                }
            }
        }
        Cmd::Hold {
            table,
            key,
            for_update,
        } => {
            let t = node.ensure_table(&table).unwrap_or_else(|e| fail(&e));
            let mut tx = node.begin().unwrap_or_else(|e| fail(&e));
            if for_update {
                tx.get_for_update(&t, key.as_bytes())
                    .unwrap_or_else(|e| fail(&e));
            }
            tx.put(&t, key.as_bytes(), b"probe")
                .unwrap_or_else(|e| fail(&e));
            say(format!("HOLDING {}", tx.id()));
            wait_for_line("commit")?;
            match tx.commit() {
                Ok(ts) => say(format!("COMMITTED {ts}")),
                Err(e) => fail(&e),
            }
        }
        Cmd::Snapshot { table, first, then } => {
            let t = node.table(&table).unwrap_or_else(|e| fail(&e));
            let mut tx = node.begin().unwrap_or_else(|e| fail(&e));
            say_read(
                &first,
                tx.get(&t, first.as_bytes()).unwrap_or_else(|e| fail(&e)),
            );
            wait_for_line("read")?;
            say_read(
                &then,
                tx.get(&t, then.as_bytes()).unwrap_or_else(|e| fail(&e)),
            );
            match tx.commit() {
                Ok(ts) => say(format!("COMMITTED {ts}")),
                Err(e) => fail(&e),
            }
        }
    }
    let _ = node.shutdown();
    Ok(())
}
