//! A lazy lock holder cannot pin the redo log. A compute node that keeps updating the
//! same rows holds their leaves' X locks lazily and is never asked for them (nobody
//! else reads them), so the storage node never receives their newest images and could
//! never checkpoint them: every redo segment since the first update would stay. Once
//! a stream keeps more than `redo_retain` bytes, the storage node asks the holder to
//! write those pages back (keeping its locks); the log is then truncated and its size
//! levels off.

use cluster::{ClusterOptions, EmbeddedCluster};
use std::path::Path;
use std::time::{Duration, Instant};
use storage_node::config::{ByteSize, StorageConfig};

const SEGMENT: u64 = 64 << 10;
const RETAIN: u64 = 256 << 10;

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            k.ends_with(name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Row `k` as round `round` writes it: 300 bytes, every one different from the last
/// round's.
fn row(round: u64, k: u64) -> Vec<u8> {
    vec![(round as u8).wrapping_mul(31).wrapping_add(k as u8); 300]
}

#[test]
fn a_lazy_holder_does_not_pin_the_redo_log() {
    common::service::init_tracing("warn");
    let c = EmbeddedCluster::start(ClusterOptions {
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 14,
        buffer_frames: 2048,
        storage: StorageConfig {
            redo_segment: ByteSize(SEGMENT),
            redo_retain: ByteSize(RETAIN),
            checkpoint_interval_ms: 20,
            ..StorageConfig::default()
        },
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let node = &c.nodes[0];
    let t = node.create_table("hot").unwrap();
    let redo = c.dir().join("storage-0").join("redo");

    // About 40x the retained size of redo, all on the same 64 rows.
    let mut samples = Vec::new();
    let mut committed = 0u64;
    for round in 0..120u64 {
        let mut tx = node.begin().unwrap();
        for k in 0..64u64 {
            // Every byte changes each round: an update in place logs only the bytes
            // that differ, and this must write a lot of redo.
            let v = row(round, k);
            tx.put(&t, &k.to_be_bytes(), &v).unwrap();
        }
        tx.commit().unwrap();
        committed += 1;
        if round % 12 == 11 {
            samples.push(dir_bytes(&redo));
        }
    }
    let written = metric(&c.storage(0).store.render_metrics(), "redo_bytes");
    eprintln!("redo appended {written} B; redo on disk every 12 commits: {samples:?}");
    assert!(
        written > 40 * RETAIN,
        "the workload must write far more redo than is retained ({written} B)"
    );

    // Levels off while the node writes: the second half of the run holds no more than
    // a quarter of what was written (without the asks it holds all of it).
    let late = samples[samples.len() / 2..]
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    assert!(
        late < written / 4,
        "redo on disk grows with the run: {samples:?} of {written} B written"
    );

    // Without asks for write-back the log never shrinks: the holder keeps every image.
    // The bound counts the recycled segment kept as the next one (`spare`, at most a
    // segment long: storage-node redo.rs, "Recycled segments").
    let bound = RETAIN + 3 * SEGMENT + SEGMENT;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let on_disk = dir_bytes(&redo);
        if on_disk <= bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redo on disk stays at {on_disk} B (bound {bound} B) after {committed} \
             commits: the lazy holder pins the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = c.storage(0).store.render_metrics();
    assert!(metric(&m, "truncation_write_backs") > 0, "{m}");
    assert!(metric(&m, "segments_truncated") > 0, "{m}");

    // The node kept its locks and the rows are the newest.
    let mut tx = node.begin().unwrap();
    for k in 0..64u64 {
        let v = tx.get(&t, &k.to_be_bytes()).unwrap().expect("row");
        assert_eq!(v, row(119, k));
    }
    tx.commit().unwrap();
    c.shutdown().unwrap();
}
