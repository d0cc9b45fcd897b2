//! Durable file I/O behind one narrow trait, so that a test can cut the power.
//!
//! Every file the storage node and the GTM keep across a restart (page file, redo
//! segments, metadata and fence files, commit log, high-water marks, the epoch store) is
//! opened, written, synced, renamed and removed through a [`DurableFs`]. The services
//! use [`StdFs`] (plain `std::fs`, one virtual call in front of each syscall, nothing
//! else); the power-loss tests use [`SimFs`] (`sim.rs`), an in-memory filesystem that
//! keeps what was synced apart from what was not and, at a simulated power cut, keeps
//! only what the guarantees below promise — a kill -9 cannot show a missing fsync, since
//! the kernel's page cache outlives the process.
//!
//! The trait is what the call sites need and no more: open a file (five modes, as
//! [`OpenMode`]), positional reads and writes, appends, length, `set_len`, `sync_data`
//! and `sync_all`; read a whole file, test for a path, create directories, list one,
//! rename, remove a file, and fsync a directory. Paths are the callers' own (the data
//! directory joined with a name); a `SimFs` is a namespace of its own keyed by them.
//! Two helpers hold the sequences that make names durable: [`create_dir_all_durably`]
//! (each new directory's parent fsynced) and [`replace_file`] (tmp, fsync, rename,
//! directory fsync).
//!
//! ## What durability rests on (Linux, ext4/xfs), and what is not assumed
//!
//! Relied on:
//! * `fsync`/`fdatasync` of a file that returned success makes every byte written to it
//!   before the call, and its length, durable (`fdatasync` covers the length: it is
//!   needed to read the data back).
//! * `fsync` of a directory that returned success makes every entry created, renamed
//!   or removed in that directory before the call durable.
//! * `rename` within a directory is atomic: after a crash the name refers to the old
//!   file or the new one, never to neither or to a mix.
//!
//! Not assumed (and so modelled as lost or torn by [`SimFs`]):
//! * that anything not yet synced survives: unsynced writes to a file may be lost, or a
//!   prefix of them may survive with the last one torn at a 512-byte sector;
//! * that a file's `fsync` makes its *name* durable: a new file, a rename or a removal
//!   is durable only after the fsync of the directory holding it (and a new directory
//!   only after the fsync of its parent);
//! * that a failed fsync can be retried: after an error the state of the file is
//!   unknown (PostgreSQL's "fsyncgate"); callers fail the file rather than retry.
//!
//! Not modelled: reordering of unsynced writes *within* one file (a survivor is a
//! prefix of them), sector corruption of synced data, and a failing disk returning
//! stale data. Both the redo log and the commit log verify every record by crc32c and
//! the page file by checksum per slot, so reordered or torn unsynced bytes look the same
//! to them as a torn tail.

mod sim;

pub use sim::{SimFs, SimStats};

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How [`DurableFs::open`] opens a file (the `std::fs::OpenOptions` the call sites use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; created empty if missing, kept as it is otherwise.
    Create,
    /// Read and write; created if missing, cut to length 0 otherwise.
    Truncate,
    /// Appends only (`O_APPEND`); created if missing.
    Append,
}

/// One open file. Shared between threads as `&self`: positional I/O needs no cursor.
pub trait DurableFile: Send + Sync {
    /// Reads at `offset`; returns how many bytes were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset` (the file grows, with zeroes in any gap).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at the end of the file ([`OpenMode::Append`] files).
    fn append(&self, buf: &[u8]) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data (and length) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: data and metadata durable (not the file's name: see [`DurableFs::sync_dir`]).
    fn sync_all(&self) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `offset`; an early end is `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A filesystem: files by path, and the directory operations that make names durable.
pub trait DurableFs: fmt::Debug + Send + Sync {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DurableFile>>;
    /// The whole content of a file (`NotFound` if it does not exist).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> bool;
    /// Creates `path` and any missing parents (not durable until each parent's
    /// [`DurableFs::sync_dir`]).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names in directory `path`, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Renames `from` to `to` atomically (replacing `to`); durable after `sync_dir`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; durable after `sync_dir` of its directory.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Fsyncs directory `path`: the entries created, renamed or removed in it durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates directory `path` and any missing parents, durably: the parent of every
/// directory it creates is fsynced, and so is the parent of `path` even when `path`
/// already existed (an earlier attempt may have created it and failed before its
/// fsync, or the process may have died in between; the entry is in the page cache
/// then, not necessarily on disk).
pub fn create_dir_all_durably(fs: &dyn DurableFs, path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while !fs.exists(p) {
        missing.push(p);
        match p.parent().filter(|q| !q.as_os_str().is_empty()) {
            Some(q) => p = q,
            None => break,
        }
    }
    fs.create_dir_all(path)?;
    if missing.is_empty() {
        missing.push(path);
    }
    // Top down: a directory's entry is durable before anything inside it relies on it.
    for dir in missing.iter().rev() {
        fs.sync_dir(parent_dir(dir))?;
    }
    Ok(())
}

/// Atomically replaces `path` with `data`, durably: write `tmp`, fsync it, rename it
/// over `path`, fsync the directory. After a crash `path` holds the old content or the
/// new one (a stale `tmp` may be left behind; the next replace overwrites it).
pub fn replace_file(fs: &dyn DurableFs, tmp: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    {
        let f = fs.open(tmp, OpenMode::Truncate)?;
        f.write_all_at(data, 0)?;
        f.sync_all()?;
    }
    fs.rename(tmp, path)?;
    fs.sync_dir(parent_dir(path))
}

/// The real filesystem (`std::fs`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl StdFs {
    /// The real filesystem as the services hold it.
    pub fn shared() -> Arc<dyn DurableFs> {
        Arc::new(StdFs)
    }
}

/// A `std::fs::File` behind [`DurableFile`].
#[derive(Debug)]
pub struct StdFile(File);

impl DurableFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        (&self.0).write_all(buf)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }
}

impl DurableFs for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DurableFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::Create => o.read(true).write(true).create(true).truncate(false),
            OpenMode::Truncate => o.read(true).write(true).create(true).truncate(true),
            OpenMode::Append => o.create(true).append(true),
        };
        Ok(Box::new(StdFile(o.open(path)?)))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same sequence of calls on the real filesystem and on a `SimFs` (no crash)
    /// reads back the same bytes and names.
    #[test]
    fn std_fs_and_sim_fs_agree_without_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimFs::new(1);
        let fss: [(&dyn DurableFs, &Path); 2] = [(&StdFs, dir.path()), (&sim, Path::new("/d"))];
        let mut seen = Vec::new();
        for (fs, root) in fss {
            fs.create_dir_all(&root.join("a/b")).unwrap();
            let f = fs.open(&root.join("a/f"), OpenMode::Create).unwrap();
            f.write_all_at(b"hello", 3).unwrap();
            f.sync_data().unwrap();
            let g = fs.open(&root.join("a/log"), OpenMode::Append).unwrap();
            g.append(b"xy").unwrap();
            g.append(b"z").unwrap();
            f.set_len(6).unwrap();
            replace_file(fs, &root.join("a/m.tmp"), &root.join("a/m"), b"meta").unwrap();
            fs.sync_dir(&root.join("a")).unwrap();
            let mut names = fs.list_dir(&root.join("a")).unwrap();
            names.sort();
            let mut buf = [9u8; 8];
            let n = f.read_at(&mut buf, 0).unwrap();
            assert!(fs.open(&root.join("nope"), OpenMode::Read).is_err());
            assert_eq!(
                fs.read(&root.join("nope")).unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
            fs.remove_file(&root.join("a/log")).unwrap();
            seen.push((
                names,
                buf[..n].to_vec(),
                fs.read(&root.join("a/m")).unwrap(),
                g.len().unwrap(),
                fs.exists(&root.join("a/log")),
                fs.exists(&root.join("a/b")),
            ));
        }
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[0].1, b"\0\0\0hel");
    }
}
