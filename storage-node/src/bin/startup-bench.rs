//! `startup-bench`: storage-node start-up time against the size of the page file, with
//! and without the slot map.
//!
//! ```text
//! cargo run --release -p storage-node --bin startup-bench -- --gib 1,8 --json
//! cargo run --release -p storage-node --bin startup-bench -- --quick --json
//! ```
//!
//! For each size the bench writes a data directory whose page file holds that many GiB
//! (two 8 KiB slots per page, every page allocated with a valid image), then starts an
//! in-process storage node on it twice: first with no slot map (start-up scans the
//! whole page file, as every start did before the slot map; the scan writes the map),
//! then with the map that start wrote. Before each start the page cache is dropped
//! (`/proc/sys/vm/drop_caches`, when writable: `cold` in the output), so the figures
//! are those of a machine that just rebooted. One line per start (`--json`: one JSON
//! object per line): `gib`, `pages`, `slot_map` (whether the map was there),
//! `seconds` (from `StorageNode::start` to serving), `pages_read` (pages whose slots
//! start-up read from the page file), `cold`; and per size `speedup` (scan / map).

use anyhow::{Context, Result};
use clap::Parser;
use common::fabric::{ClusterKey, Transport};
use common::ids::{Lsn, PageId, PageVersion};
use common::storage::page::{Page, PAGE_SIZE};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;
use storage_node::config::ByteSize;
use storage_node::config::StorageConfig;
use storage_node::StorageNode;

#[derive(Parser)]
#[command(about = "Storage-node start-up time: page-file scan vs slot map, by page-file size")]
struct Args {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Small sizes (0.125 and 0.5 GiB; the whole run ends within 30 s).
    #[arg(long)]
    quick: bool,
    /// Page-file sizes in GiB (comma separated).
    #[arg(long, value_delimiter = ',')]
    gib: Option<Vec<f64>>,
    /// Directory for the data directories (default: a fresh temp dir on the machine's
    /// disk).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const FIRST_PAGE: u64 = 1;

/// Writes a page file of `pages` pages (slot 0 valid at version 1, slot 1 empty) and the
/// metadata file that marks them allocated.
fn write_data_dir(dir: &Path, pages: u64) -> Result<()> {
    std::fs::create_dir_all(dir.join("redo"))?;
    let mut f = std::io::BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(dir.join("pages")).context("creating the page file")?,
    );
    let zero = vec![0u8; PAGE_SIZE];
    for i in 0..pages {
        let mut p = Page::empty(PageId(FIRST_PAGE + i));
        p.stamp(PageVersion(1), Lsn(1));
        f.write_all(p.as_bytes())?;
        f.write_all(&zero)?;
    }
    f.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .context("syncing the page file")?;
    std::fs::write(
        dir.join("meta"),
        format!("first_page {FIRST_PAGE}\nallocated {pages}\n"),
    )?;
    Ok(())
}

/// Drops the page cache if this process may; whether it did.
fn drop_caches() -> bool {
    // The files are synced (`write_data_dir`, shutdown), so every cached page is clean.
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

struct Start {
    seconds: f64,
    pages_read: u64,
    cold: bool,
}

fn start_once(cfg: &StorageConfig, key: &ClusterKey) -> Result<Start> {
    let cold = drop_caches();
    let ep = cfg.endpoint()?;
    let t = Instant::now();
    let node = StorageNode::start_with_key(cfg, key.clone(), &ep).context("starting")?;
    let seconds = t.elapsed().as_secs_f64();
    let pages_read = node
        .store
        .metrics
        .recovery_pages_read
        .load(Ordering::Relaxed);
    node.shutdown()
        .map_err(|e| anyhow::anyhow!("shutdown: {e}"))?;
    Ok(Start {
        seconds,
        pages_read,
        cold,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let sizes = args.gib.clone().unwrap_or(if args.quick {
        vec![0.125, 0.5]
    } else {
        vec![1.0, 8.0]
    });
    let tmp = tempfile::Builder::new()
        .prefix("startup-bench")
        .tempdir_in(args.dir.clone().unwrap_or_else(|| "/var/tmp".into()))
        .context("creating the bench directory")?;
    let key = ClusterKey::from_material(b"startup-bench-cluster-key-0123456789")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !args.json {
        println!(
            "{:>6} {:>9} {:>8} {:>9} {:>11} {:>5}",
            "GiB", "pages", "slot map", "seconds", "pages read", "cold"
        );
    }
    for gib in sizes {
        let pages = ((gib * (1u64 << 30) as f64) as u64 / (2 * PAGE_SIZE as u64)).max(1);
        let dir = tmp.path().join(format!("{gib}"));
        write_data_dir(&dir.join("data"), pages)?;
        let cfg = StorageConfig {
            transport: Transport::Shm,
            listen: dir.join("s.sock").display().to_string(),
            data_dir: dir.join("data"),
            memory: ByteSize(64 << 20),
            first_page: FIRST_PAGE,
            page_count: pages,
            key_file: Default::default(),
            checkpoint_interval_ms: 1000,
            redo_segment: ByteSize(64 << 20),
            redo_retain: ByteSize(256 << 20),
            metrics_listen: String::new(),
            notice_slots: 1024,
            reclaim_grace_ms: 5000,
        };
        let mut secs = Vec::new();
        for slot_map in [false, true] {
            assert_eq!(dir.join("data/slots").exists(), slot_map);
            let s = start_once(&cfg, &key)?;
            secs.push(s.seconds);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "bench": "startup", "gib": gib, "pages": pages, "slot_map": slot_map,
                        "seconds": s.seconds, "pages_read": s.pages_read, "cold": s.cold,
                    })
                );
            } else {
                println!(
                    "{gib:>6} {pages:>9} {:>8} {:>9.3} {:>11} {:>5}",
                    slot_map, s.seconds, s.pages_read, s.cold
                );
            }
        }
        let speedup = secs[0] / secs[1];
        if args.json {
            println!(
                "{}",
                serde_json::json!({"bench": "startup", "gib": gib, "speedup": speedup})
            );
        } else {
            println!("{gib:>6} GiB: the slot map starts {speedup:.0}x faster than the scan");
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
