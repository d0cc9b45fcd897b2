//! `storage-node --config FILE [flags]`: parse config, init tracing, recover, serve,
//! wait for SIGTERM/SIGINT, flush and exit. Prints `READY <endpoint>` on stdout once
//! serving (scripts and tests wait for it).

use clap::Parser;
use common::fabric::Transport;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use storage_node::config::{ByteSize, StorageConfig};
use storage_node::StorageNode;

/// Durable shared page store of the cluster (page directory, global page locks, redo
/// streams, recovery).
///
/// Configuration comes from a TOML file (--config); each key can be overridden by the
/// flag of the same name (`data_dir` -> `--data-dir`). `--print-config` prints a
/// commented example file with every key and its default.
#[derive(Parser, Debug)]
#[command(name = "storage-node", version)]
struct Args {
    /// TOML config file. Keys: transport, listen, data_dir, memory, first_page,
    /// page_count, key_file, checkpoint_interval_ms, redo_segment, redo_retain, metrics_listen,
    /// notice_slots.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print an example config file with every key and its default, then exit.
    #[arg(long)]
    print_config: bool,
    /// [key: transport] tcp | shm | rdma (default tcp).
    #[arg(long)]
    transport: Option<Transport>,
    /// [key: listen] host:port for tcp/rdma (port 0 = any free port), socket path for shm
    /// (default 127.0.0.1:7100).
    #[arg(long)]
    listen: Option<String>,
    /// [key: data_dir] page file, redo streams and metadata; created if missing, must be
    /// writable (default ./storage-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// [key: memory] memory for page frames, e.g. 256MiB (frames = memory / 8 KiB,
    /// at least 64KiB; default 256MiB).
    #[arg(long, value_name = "SIZE")]
    memory: Option<ByteSize>,
    /// [key: first_page] first page id this node owns (default 0).
    #[arg(long)]
    first_page: Option<u64>,
    /// [key: page_count] number of page ids owned, first_page.. (default 1048576).
    #[arg(long)]
    page_count: Option<u64>,
    /// [key: key_file] file holding the cluster key, at least 16 bytes (required).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// [key: checkpoint_interval_ms] milliseconds between checkpoints (default 500).
    #[arg(long, value_name = "MS")]
    checkpoint_interval_ms: Option<u64>,
    /// [key: redo_segment] redo segment size, e.g. 64MiB (default 64MiB, min 64KiB).
    #[arg(long, value_name = "SIZE")]
    redo_segment: Option<ByteSize>,
    /// [key: redo_retain] redo kept per stream before the holders of the pages that hold
    /// its truncation back are asked to write them back (default 1GiB).
    #[arg(long, value_name = "SIZE")]
    redo_retain: Option<ByteSize>,
    /// [key: metrics_listen] host:port of the Prometheus metrics endpoint (port 0 = any
    /// free port, logged; default "" = none).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// [key: notice_slots] slots of the change-notice ring (default 65536, 16 ..= 2^24).
    #[arg(long, value_name = "N")]
    notice_slots: Option<u32>,
    /// [key: reclaim_grace_ms] after a restart, milliseconds to wait for compute nodes
    /// to reclaim their locks (default 5000; 0 = no reclaim).
    #[arg(long, value_name = "MS")]
    reclaim_grace_ms: Option<u64>,
}

impl Args {
    fn apply(&self, c: &mut StorageConfig) {
        if let Some(v) = self.transport {
            c.transport = v;
        }
        if let Some(v) = &self.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.memory {
            c.memory = v;
        }
        if let Some(v) = self.first_page {
            c.first_page = v;
        }
        if let Some(v) = self.page_count {
            c.page_count = v;
        }
        if let Some(v) = &self.key_file {
            c.key_file = v.clone();
        }
        if let Some(v) = self.checkpoint_interval_ms {
            c.checkpoint_interval_ms = v;
        }
        if let Some(v) = self.reclaim_grace_ms {
            c.reclaim_grace_ms = v;
        }
        if let Some(v) = self.redo_segment {
            c.redo_segment = v;
        }
        if let Some(v) = self.redo_retain {
            c.redo_retain = v;
        }
        if let Some(v) = &self.metrics_listen {
            c.metrics_listen = v.clone();
        }
        if let Some(v) = self.notice_slots {
            c.notice_slots = v;
        }
    }
}

fn main() -> ExitCode {
    // Before any thread starts, so every thread inherits the blocked signal mask.
    let signals = match common::service::shutdown_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("storage-node: cannot install signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    let args = Args::parse();
    if args.print_config {
        print!("{}", StorageConfig::example());
        return ExitCode::SUCCESS;
    }
    common::service::init_tracing("info");
    common::service::spawn_memory_return();
    let cfg = match common::config::load_or_exit::<StorageConfig>(
        "storage-node",
        args.config.as_deref(),
        |c| args.apply(c),
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let node = match StorageNode::start(&cfg) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("storage-node: {e}");
            return ExitCode::from(1);
        }
    };
    let stop_metrics = Arc::new(AtomicBool::new(false));
    let metrics_thread = if cfg.metrics_listen.is_empty() {
        None
    } else {
        let store = node.store.clone();
        match common::metrics::serve_http(
            &cfg.metrics_listen,
            "storage-metrics",
            Arc::new(move || store.render_metrics()),
            stop_metrics.clone(),
        ) {
            Ok((addr, h)) => {
                tracing::info!(%addr, "metrics endpoint");
                Some(h)
            }
            Err(e) => {
                tracing::error!(error = %e, metrics_listen = %cfg.metrics_listen, "cannot serve metrics");
                eprintln!("storage-node: metrics_listen {}: {e}", cfg.metrics_listen);
                let _ = node.shutdown();
                return ExitCode::from(1);
            }
        }
    };
    println!("READY {}", node.endpoint());
    let _ = std::io::stdout().flush();
    let sig = signals.recv().unwrap_or("channel closed");
    tracing::info!(
        signal = sig,
        "shutting down: flushing redo and checkpointing"
    );
    let text = node.store.render_metrics();
    let r = node.shutdown();
    stop_metrics.store(true, Ordering::Release);
    if let Some(h) = metrics_thread {
        let _ = h.join();
    }
    match r {
        Ok(()) => {
            tracing::debug!(metrics = %text, "final metrics");
            tracing::info!("clean shutdown");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "shutdown flush failed");
            ExitCode::from(1)
        }
    }
}
