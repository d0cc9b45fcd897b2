//! The timestamp oracle: strictly increasing 64-bit values that never go backwards or
//! repeat, across restarts too (invariant 5 of docs/design.md).
//!
//! A [`Sequence`] hands out values with one `fetch_add` per request batch. A high-water
//! mark `H` is kept durable *ahead* of use: every value ever handed out is below the
//! persisted `H`. On start the sequence resumes at the persisted `H` (values in between
//! are skipped, never reused) and immediately persists `H + window`. When use crosses
//! half a window, a helper thread persists the next mark in the background, so a grant
//! waits for an fsync only if it outruns the helper (a burst larger than half a window).
//!
//! The same type numbers transactions (txn ids), with its own file.
//!
//! ## File format (`<name>.hwm`, 16 bytes, replaced atomically by rename)
//!
//! ```text
//! 0   8  high-water mark, u64 LE
//! 8   4  crc32c of bytes 0..8, u32 LE
//! 12  4  magic "HWM1"
//! ```

use common::durable::{DurableFs, StdFs};
use parking_lot::{Condvar, Mutex};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"HWM1";

/// Why a grant failed.
#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    #[error("cannot persist the high-water mark {path}: {source}")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sequence exhausted (limit {0})")]
    Exhausted(u64),
}

struct Persisted {
    /// The durable high-water mark: every value handed out is below it.
    mark: u64,
    failed: Option<String>,
}

/// A durable, strictly increasing sequence.
pub struct Sequence {
    next: AtomicU64,
    /// Mirror of `Persisted::mark`, for the lock-free fast path.
    limit: AtomicU64,
    window: u64,
    max: u64,
    fs: Arc<dyn DurableFs>,
    path: PathBuf,
    persisted: Mutex<Persisted>,
    extend_wanted: Condvar,
    stop: AtomicBool,
}

impl Sequence {
    /// Opens (or creates, starting at 1) the sequence stored at `path` and makes
    /// `start + window` durable before returning. Values stay `<= max`.
    pub fn open(path: &Path, window: u64, max: u64) -> Result<Arc<Sequence>, SequenceError> {
        Self::open_in(StdFs::shared(), path, window, max)
    }

    /// As [`Sequence::open`], with the mark file on `fs`.
    pub fn open_in(
        fs: Arc<dyn DurableFs>,
        path: &Path,
        window: u64,
        max: u64,
    ) -> Result<Arc<Sequence>, SequenceError> {
        let start = read_mark(&*fs, path)
            .map_err(|source| SequenceError::Persist {
                path: path.to_path_buf(),
                source,
            })?
            .unwrap_or(1)
            .max(1);
        let window = window.max(2);
        let seq = Arc::new(Sequence {
            next: AtomicU64::new(start),
            limit: AtomicU64::new(start),
            window,
            max,
            fs,
            path: path.to_path_buf(),
            persisted: Mutex::new(Persisted {
                mark: start,
                failed: None,
            }),
            extend_wanted: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        seq.extend_to(start.saturating_add(window))?;
        Ok(seq)
    }

    /// The first value a fresh start handed out (for recovery: everything below was
    /// issued by an earlier incarnation).
    pub fn current(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Grants `n` consecutive values with one atomic add; returns the first.
    pub fn grant(&self, n: u64) -> Result<u64, SequenceError> {
        let first = self.next.fetch_add(n, Ordering::AcqRel);
        let end = first + n;
        if end > self.max {
            return Err(SequenceError::Exhausted(self.max));
        }
        let limit = self.limit.load(Ordering::Acquire);
        if end > limit {
            // Outran the helper: persist synchronously.
            self.extend_to(end + self.window)?;
        } else if end + self.window / 2 > limit {
            self.extend_wanted.notify_one();
        }
        Ok(first)
    }

    /// Makes `mark` (or more) durable. Serialised by the `persisted` lock.
    fn extend_to(&self, mark: u64) -> Result<(), SequenceError> {
        let mut p = self.persisted.lock();
        if let Some(e) = &p.failed {
            return Err(SequenceError::Persist {
                path: self.path.clone(),
                source: std::io::Error::other(e.clone()),
            });
        }
        if p.mark >= mark {
            return Ok(());
        }
        if let Err(source) = write_mark(&*self.fs, &self.path, mark) {
            // After a failed fsync the file's state is unknown: stop granting.
            p.failed = Some(source.to_string());
            return Err(SequenceError::Persist {
                path: self.path.clone(),
                source,
            });
        }
        p.mark = mark;
        self.limit.store(mark, Ordering::Release);
        Ok(())
    }

    /// The helper loop: keeps the durable mark at least half a window ahead.
    pub fn run_extender(&self) {
        loop {
            {
                let mut p = self.persisted.lock();
                while !self.stop.load(Ordering::Acquire)
                    && self.next.load(Ordering::Acquire) + self.window / 2 <= p.mark
                {
                    self.extend_wanted
                        .wait_for(&mut p, std::time::Duration::from_millis(100));
                }
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let want = self.next.load(Ordering::Acquire) + self.window;
            if let Err(e) = self.extend_to(want) {
                tracing::error!(error = %e, "cannot persist the high-water mark");
                return;
            }
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.extend_wanted.notify_all();
    }
}

/// Reads a mark file; `None` if it does not exist. A corrupt file is an error: starting
/// from scratch could reuse values.
pub fn read_mark(fs: &dyn DurableFs, path: &Path) -> std::io::Result<Option<u64>> {
    let bytes = match fs.read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() != 16 || &bytes[12..16] != MAGIC {
        return Err(std::io::Error::other(format!(
            "{}: not a high-water-mark file",
            path.display()
        )));
    }
    let value = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[0..8]) != crc {
        return Err(std::io::Error::other(format!(
            "{}: checksum mismatch",
            path.display()
        )));
    }
    Ok(Some(value))
}

/// Writes `value` durably: temp file, fsync, rename, fsync of the directory.
pub fn write_mark(fs: &dyn DurableFs, path: &Path, value: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 16];
    buf[0..8].copy_from_slice(&value.to_le_bytes());
    let crc = crc32c::crc32c(&buf[0..8]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf[12..16].copy_from_slice(MAGIC);
    replace_file(fs, path, &buf)
}

/// Atomically replaces `path` with `data` and makes the change durable (through
/// `<path without extension>.tmp`).
pub fn replace_file(fs: &dyn DurableFs, path: &Path, data: &[u8]) -> std::io::Result<()> {
    common::durable::replace_file(fs, &path.with_extension("tmp"), path, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamps_strictly_increase_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tso.hwm");
        let mut last = 0;
        for _ in 0..5 {
            let s = Sequence::open(&path, 100, u64::MAX / 2).unwrap();
            for n in [1u64, 7, 150, 3] {
                let first = s.grant(n).unwrap();
                assert!(first > last, "{first} after {last}");
                last = first + n - 1;
            }
            // Dropped without a clean shutdown: the next start must still be above.
        }
    }

    #[test]
    fn a_corrupt_mark_file_is_an_error_not_a_restart_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tso.hwm");
        write_mark(&StdFs, &path, 77).unwrap();
        assert_eq!(read_mark(&StdFs, &path).unwrap(), Some(77));
        let mut b = std::fs::read(&path).unwrap();
        b[0] ^= 1;
        std::fs::write(&path, b).unwrap();
        assert!(Sequence::open(&path, 10, u64::MAX).is_err());
    }

    #[test]
    fn the_helper_keeps_the_mark_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sequence::open(&dir.path().join("t.hwm"), 1000, u64::MAX).unwrap();
        let h = {
            let s = s.clone();
            std::thread::spawn(move || s.run_extender())
        };
        let mut prev = 0;
        for _ in 0..5000 {
            let v = s.grant(1).unwrap();
            assert!(v > prev);
            prev = v;
        }
        s.stop();
        h.join().unwrap();
        assert!(
            read_mark(&StdFs, &dir.path().join("t.hwm"))
                .unwrap()
                .unwrap()
                > prev
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any file content: the value written, or an error naming the file; never a
        /// panic. A valid mark with one byte changed is an error.
        #[test]
        fn read_mark_of_any_file_never_panics(
            b in proptest::collection::vec(any::<u8>(), 0..32),
            value in any::<u64>(),
            at in 0usize..16,
            x in 1u8..=255,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("mark");
            std::fs::write(&path, &b).unwrap();
            let _ = read_mark(&StdFs, &path);
            write_mark(&StdFs, &path, value).unwrap();
            prop_assert_eq!(read_mark(&StdFs, &path).unwrap(), Some(value));
            let mut good = std::fs::read(&path).unwrap();
            good[at] ^= x;
            std::fs::write(&path, &good).unwrap();
            prop_assert!(read_mark(&StdFs, &path).is_err());
        }
    }
}
