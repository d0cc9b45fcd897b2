//! `compute-node --config FILE [flags]`: the compute-node service binary.
//!
//! Loads the TOML config (flags override it), joins the cluster (GTM registration,
//! storage connections, catalog), serves the gRPC API ([`compute_server::service`]) on
//! `listen`, prints `READY <host:port>` on stdout once serving, and on SIGTERM/SIGINT
//! stops accepting calls, lets running ones finish, aborts open transactions and writes
//! back every change (`ComputeNode::shutdown`). `--print-example-config` prints a
//! commented config.

use clap::Parser;
use compute_node::node::ComputeNode;
use compute_server::config::{ServiceConfig, EXAMPLE};
use compute_server::service::ComputeService;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Compute node of the cluster: buffer pool, page coherence, MVCC transactions, served
/// over gRPC.
///
/// Configuration comes from a TOML file (--config); flags override its keys.
#[derive(Parser, Debug)]
#[command(name = "compute-node", version)]
struct Args {
    /// TOML config file (see --print-example-config).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print a commented example config with every key and its default, then exit.
    #[arg(long)]
    print_example_config: bool,
    /// [key: listen] gRPC host:port (port 0: any free port).
    #[arg(long)]
    listen: Option<String>,
    /// [key: metrics_listen] Prometheus endpoint host:port ("" for none).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// [key: session_idle_timeout_ms] idle transactions are aborted after this.
    #[arg(long, value_name = "MS")]
    session_idle_timeout_ms: Option<u64>,
    /// [key: node.node_id] this node's id (> 0, unique in the cluster).
    #[arg(long)]
    node_id: Option<u32>,
    /// [key: node.gtm] GTM endpoint (tcp://host:port or shm:///path).
    #[arg(long)]
    gtm: Option<String>,
    /// [key: node.storage] storage-node endpoint (repeatable; replaces the file's list).
    #[arg(long)]
    storage: Vec<String>,
    /// [key: node.key_file] file holding the cluster key.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// [key: node.buffer_frames] buffer-pool frames (8 KiB each).
    #[arg(long)]
    buffer_frames: Option<usize>,
}

impl Args {
    fn apply(&self, c: &mut ServiceConfig) {
        if let Some(v) = &self.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &self.metrics_listen {
            c.metrics_listen = v.clone();
        }
        if let Some(v) = self.session_idle_timeout_ms {
            c.session_idle_timeout_ms = v;
        }
        if let Some(v) = self.node_id {
            c.node.node_id = v;
        }
        if let Some(v) = &self.gtm {
            c.node.gtm = v.clone();
        }
        if !self.storage.is_empty() {
            c.node.storage = self.storage.clone();
        }
        if let Some(v) = &self.key_file {
            c.node.key_file = v.clone();
        }
        if let Some(v) = self.buffer_frames {
            c.node.buffer_frames = v;
        }
    }
}

fn main() -> ExitCode {
    // Before any thread starts, so every thread inherits the blocked signal mask.
    let signals = match common::service::shutdown_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("compute-node: cannot install signal handling: {e}");
            return ExitCode::from(1);
        }
    };
    let args = Args::parse();
    if args.print_example_config {
        print!("{EXAMPLE}");
        return ExitCode::SUCCESS;
    }
    common::service::init_tracing("info");
    common::service::spawn_memory_return();
    let cfg = match common::config::load_or_exit::<ServiceConfig>(
        "compute-node",
        args.config.as_deref(),
        |c| args.apply(c),
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cfg, signals) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("compute-node: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(
    cfg: ServiceConfig,
    signals: std::sync::mpsc::Receiver<&'static str>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        .max_blocking_threads(cfg.max_blocking_threads)
        .thread_name("compute-grpc")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listen = cfg.listen_addr().map_err(anyhow::Error::msg)?;
    // Bind before joining the cluster: a taken port fails fast, without registering.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("listen {listen}"))?;
    let bound = listener.local_addr()?;
    // The metrics endpoint too (common::metrics, as the other services'); it answers
    // empty until the service exists.
    let service_slot: Arc<OnceLock<ComputeService>> = Arc::default();
    let metrics_stop = Arc::new(AtomicBool::new(false));
    let metrics = if cfg.metrics_listen.is_empty() {
        None
    } else {
        let slot = service_slot.clone();
        let render: common::metrics::Render = Arc::new(move || {
            slot.get()
                .map(ComputeService::render_metrics)
                .unwrap_or_default()
        });
        let (addr, thread) = common::metrics::serve_http(
            &cfg.metrics_listen,
            "compute-metrics",
            render,
            metrics_stop.clone(),
        )
        .with_context(|| format!("metrics_listen {}", cfg.metrics_listen))?;
        tracing::info!(%addr, "metrics endpoint");
        Some(thread)
    };

    // Credentials and TLS before joining the cluster: a bad file fails fast.
    let auth = cfg.client_auth().map_err(anyhow::Error::msg)?;
    let tls = cfg.server_tls().map_err(anyhow::Error::msg)?;
    let node = Arc::new(ComputeNode::start(&cfg.node).context("joining the cluster")?);
    let service = ComputeService::new(node.clone(), cfg.session_options(), auth);
    let _ = service_slot.set(service.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let server = {
        let (service, mut stop) = (service.clone(), stop_rx.clone());
        rt.spawn(async move {
            compute_server::service::serve(listener, &service, tls, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let reaper = {
        let _in_runtime = rt.enter();
        service.spawn_reaper()
    };
    let watchdog = {
        let _in_runtime = rt.enter();
        service.spawn_watchdog(Duration::from_millis(100))
    };
    tracing::info!(
        addr = %bound,
        node = cfg.node.node_id,
        tls = !cfg.tls_cert_file.is_empty(),
        "serving gRPC"
    );
    println!("READY {bound}");
    std::io::stdout().flush()?;

    let mut code = ExitCode::SUCCESS;
    loop {
        match signals.recv_timeout(Duration::from_millis(200)) {
            Ok(sig) => {
                tracing::info!(signal = sig, "shutting down");
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if server.is_finished() => {
                tracing::error!("the gRPC server stopped");
                code = ExitCode::from(1);
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    let _ = stop_tx.send(true);
    rt.block_on(async {
        // Running calls finish (a lock wait is bounded); a stuck one does not hold up
        // the shutdown for ever.
        match tokio::time::timeout(Duration::from_secs(15), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "gRPC server failed");
                code = ExitCode::from(1);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
            Err(_) => tracing::warn!("calls still running after 15 s; closing anyway"),
        }
        let aborted = service.close().await;
        tracing::info!(aborted, "open transactions aborted");
        let _ = reaper.await;
        let _ = watchdog.await;
    });
    metrics_stop.store(true, Ordering::Release);
    if let Some(m) = metrics {
        let _ = m.join();
    }
    let node2 = node.clone();
    match rt.block_on(rt.spawn_blocking(move || node2.shutdown())) {
        Ok(Ok(())) => tracing::info!("clean shutdown"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "write-back at shutdown failed");
            code = ExitCode::from(1);
        }
        Err(e) => {
            tracing::error!(error = %e, "shutdown panicked");
            code = ExitCode::from(1);
        }
    }
    drop(service);
    drop(node);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}
