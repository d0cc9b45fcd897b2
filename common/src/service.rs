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

/// How often [`spawn_memory_return`] hands free heap memory back to the kernel.
pub const MEMORY_RETURN_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Starts a thread that returns the allocator's free memory to the kernel every
/// [`MEMORY_RETURN_EVERY`] (glibc's `malloc_trim`, which also releases free pages
/// inside each arena, not only at its top). Without it glibc keeps what a burst
/// allocated (a full validation round after a storage-node restart, a scan, many
/// revocation threads at once) for the life of the process, in up to 8 arenas per
/// core: the RSS is then the high-water mark of every burst, not the memory in use,
/// and a slow leak cannot be told from a step. A trim walks each arena under its lock
/// (milliseconds for a few hundred MiB). A no-op on other C libraries.
pub fn spawn_memory_return() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("memory-return".into())
            .spawn(|| loop {
                std::thread::sleep(MEMORY_RETURN_EVERY);
                // SAFETY: malloc_trim has no preconditions; it takes the arena locks.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the memory-return thread");
        }
    }
}
