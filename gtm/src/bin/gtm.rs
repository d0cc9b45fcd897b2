//! `gtm --config FILE [flags]`: the GTM service binary.
//!
//! Loads the TOML config (flags override it), recovers from `data_dir`, serves on every
//! `listen` endpoint, prints `READY <endpoint>...` on stdout once serving, and shuts
//! down cleanly on SIGTERM/SIGINT. `--print-example-config` prints a commented config.

use anyhow::{Context, Result};
use clap::Parser;
use common::fabric::ClientOptions;
use common::fabric::{ClusterKey, Endpoint};
use gtm::config::{GtmConfig, EXAMPLE};
use gtm::{Gtm, GtmOptions, StorageReleaser};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Global transaction manager: timestamps, commit records, leases, GC watermark")]
struct Args {
    /// TOML configuration file (see --print-example-config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Endpoint to serve (repeatable; replaces `listen` of the file).
    #[arg(long)]
    listen: Vec<String>,
    /// Overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `cluster_key_file`.
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
    /// Overrides `lease_ms`.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Overrides `status_capacity`.
    #[arg(long)]
    status_capacity: Option<u64>,
    /// Overrides `metrics_listen` (host:port).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Overrides `freeze_interval_ms` (0: no freeze sweeps).
    #[arg(long)]
    freeze_interval_ms: Option<u64>,
    /// Overrides `freeze_after_txns` (0: time alone decides when a sweep is due).
    #[arg(long)]
    freeze_after_txns: Option<u64>,
    /// Print a commented example configuration and exit.
    #[arg(long)]
    print_example_config: bool,
}

impl Args {
    /// The command line's overrides of the file's values.
    fn apply(&self, cfg: &mut GtmConfig) {
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        if let Some(k) = &self.cluster_key_file {
            cfg.cluster_key_file = k.clone();
        }
        if let Some(l) = self.lease_ms {
            cfg.lease_ms = l;
        }
        if let Some(c) = self.status_capacity {
            cfg.status_capacity = c;
        }
        if let Some(m) = &self.metrics_listen {
            cfg.metrics_listen = m.clone();
        }
        if let Some(f) = self.freeze_interval_ms {
            cfg.freeze_interval_ms = f;
        }
        if let Some(n) = self.freeze_after_txns {
            cfg.freeze_after_txns = n;
        }
    }
}

fn main() -> ExitCode {
    let signals = match common::service::shutdown_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gtm: cannot install signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    common::service::init_tracing("info");
    common::service::spawn_memory_return();
    let args = Args::parse();
    if args.print_example_config {
        print!("{EXAMPLE}");
        return ExitCode::SUCCESS;
    }
    let cfg = match common::config::load_or_exit::<GtmConfig>("gtm", args.config.as_deref(), |c| {
        args.apply(c)
    }) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cfg, signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gtm: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cfg: GtmConfig, signals: std::sync::mpsc::Receiver<&'static str>) -> Result<()> {
    let key = ClusterKey::from_file(&cfg.cluster_key_file).map_err(anyhow::Error::msg)?;

    let storage_nodes = cfg
        .storage_nodes
        .iter()
        .map(|s| s.parse::<Endpoint>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("storage_nodes: {e}"))?;
    let releaser = StorageReleaser::new(storage_nodes, ClientOptions::new(key.clone()));
    let mut gtm = Gtm::start(&GtmOptions::from_config(&cfg), key, Box::new(releaser))
        .context("starting the GTM")?;
    let mut bound = Vec::new();
    for l in &cfg.listen {
        let ep: Endpoint = l.parse().map_err(anyhow::Error::msg)?;
        let b = gtm.serve(&ep).with_context(|| format!("serving on {ep}"))?;
        tracing::info!(endpoint = %b, "serving");
        bound.push(b.to_string());
    }
    let stop_metrics = Arc::new(AtomicBool::new(false));
    let metrics_thread = if cfg.metrics_listen.is_empty() {
        None
    } else {
        let (addr, h) =
            gtm::metrics::serve(&cfg.metrics_listen, gtm.metrics(), stop_metrics.clone())
                .with_context(|| format!("metrics_listen {}", cfg.metrics_listen))?;
        tracing::info!(%addr, "metrics endpoint");
        Some(h)
    };
    println!("READY {}", bound.join(" "));
    std::io::stdout().flush()?;

    let code = loop {
        match signals.recv_timeout(Duration::from_millis(200)) {
            Ok(sig) => {
                tracing::info!(signal = sig, "shutting down");
                break 0;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if gtm.failed() {
                    tracing::error!("commit log failed; exiting so recovery can run");
                    break 1;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break 0,
        }
    };
    gtm.shutdown();
    stop_metrics.store(true, std::sync::atomic::Ordering::Release);
    if let Some(h) = metrics_thread {
        let _ = h.join();
    }
    tracing::info!("stopped");
    std::process::exit(code);
}
