//! What every service binary does around its engine: logging and shutdown signals.

use std::sync::mpsc;

/// Initialises `tracing` to stderr (`RUST_LOG` overrides `default_filter`).
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread spawned after
/// it) and returns a channel that receives the signal's name when one arrives. Call it at
/// the top of `main`, before any thread is started.
pub fn shutdown_signals() -> std::io::Result<mpsc::Receiver<&'static str>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(std::io::Error::from)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(sig) => {
                    if tx.send(sig.as_str()).is_err() {
                        return;
                    }
                }
                Err(_) => continue,
            }
        })?;
    Ok(rx)
}
