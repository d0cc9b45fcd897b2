//! `SimFs`: an in-memory [`DurableFs`] that can lose power.
//!
//! ## What it keeps
//!
//! Per file: the content as of its last successful `sync_data`/`sync_all` (*durable*),
//! the content the running process sees (*current*), and the writes and `set_len`s in
//! between, in order. Per directory: the entries as of its last `sync_dir`, the current
//! entries, and the creates, renames and removes in between, in order. A new directory
//! is an entry of its parent like a new file: reachable after a crash only if its
//! parent's entry survived.
//!
//! ## A power cut ([`SimFs::power_cut`])
//!
//! Everything durable survives. Of each file's unsynced writes, either none survive or a
//! random prefix does, the write after the prefix possibly torn: its first sectors (512
//! bytes, aligned to the file offset) reach the disk, the rest not. Of each directory's
//! unsynced entry changes, either none survive or a random prefix does (renames stay
//! atomic). Files no surviving entry names are gone. The result is a fresh `SimFs`
//! (the old one stays powered off: every call on it or its open files fails), as a
//! restarted machine sees the disk.
//!
//! ## Crash points and faults
//!
//! Calls that change something — create, write, append, `set_len`, syncs, `mkdir`,
//! rename, remove, `sync_dir` — are numbered from 1 ([`SimStats::ops`]). With
//! [`SimFs::crash_after`]`(n)` the power goes off just before the `n+1`-th such call:
//! it and every later call fail with an I/O error and change nothing, so nothing the
//! process does afterwards can become durable. [`SimFs::fail_op`]`(k)` makes the `k`-th
//! call fail once with `EIO` without effect (a transient fault; the process goes on);
//! [`SimFs::fail_op_of`] the `k`-th call of one kind.
//! Reads are not numbered.
//!
//! ## Determinism
//!
//! Every random choice (what survives a cut) comes from one generator seeded by
//! [`SimFs::new`]; state is kept in ordered maps, so the same seed and the same
//! sequence of calls give the same disk after a cut. (A multi-threaded process may
//! order its calls differently from run to run; the crash point is then the same
//! number on a slightly different call.)

use super::{DurableFile, DurableFs, OpenMode};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

const SECTOR: u64 = 512;
const ROOT: u64 = 0;

/// Counters of one power cycle of a [`SimFs`].
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Numbered calls made (the ones that change something).
    pub ops: u64,
    /// Of those, per kind ("write", "sync_data", "rename", ...), the ones that ran.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// The call the power went off before: (its number, kind, path).
    pub crashed_at: Option<(u64, &'static str, PathBuf)>,
    /// The call failed by [`SimFs::fail_op`]: (its number, kind, path).
    pub injected: Option<(u64, &'static str, PathBuf)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir(u64),
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(String, Node),
    Unlink(String),
    Rename(String, String),
}

#[derive(Clone, Debug, Default)]
struct SimDir {
    cur: BTreeMap<String, Node>,
    dur: BTreeMap<String, Node>,
    pending: Vec<DirOp>,
}

#[derive(Clone, Debug)]
enum DataOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    cur: Vec<u8>,
    dur: Vec<u8>,
    pending: Vec<DataOp>,
}

#[derive(Clone, Debug)]
struct Sim {
    rng: StdRng,
    dirs: BTreeMap<u64, SimDir>,
    inodes: BTreeMap<u64, Inode>,
    next_id: u64,
    crash_after: Option<u64>,
    /// A fault to inject: (only calls of this kind, or any; how many more to let pass + 1).
    fault: Option<(Option<&'static str>, u64)>,
    off: bool,
    stats: SimStats,
}

/// The in-memory filesystem of the power-loss tests (see the module docs). Clones
/// share one filesystem.
#[derive(Clone)]
pub struct SimFs {
    sim: Arc<Mutex<Sim>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.sim.lock();
        f.debug_struct("SimFs")
            .field("files", &s.inodes.len())
            .field("ops", &s.stats.ops)
            .field("off", &s.off)
            .finish()
    }
}

fn power_off() -> io::Error {
    io::Error::other("SimFs: the power is off (simulated power loss)")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("SimFs: {} not found", path.display()),
    )
}

fn apply(buf: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write(off, data) => {
            let off = *off as usize;
            let end = off + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[off..end].copy_from_slice(data);
        }
        DataOp::SetLen(n) => buf.resize(*n as usize, 0),
    }
}

fn apply_dir(map: &mut BTreeMap<String, Node>, op: &DirOp) {
    match op {
        DirOp::Link(name, n) => {
            map.insert(name.clone(), *n);
        }
        DirOp::Unlink(name) => {
            map.remove(name);
        }
        DirOp::Rename(from, to) => {
            if let Some(n) = map.remove(from) {
                map.insert(to.clone(), n);
            }
        }
    }
}

/// The names along `path` (the root for an empty or `.` path).
fn components(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(
                s.to_str()
                    .ok_or_else(|| {
                        io::Error::other(format!("SimFs: non-UTF-8 name in {}", path.display()))
                    })?
                    .to_string(),
            ),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(io::Error::other(format!(
                    "SimFs: `..` in {} is not modelled",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut dirs = BTreeMap::new();
        dirs.insert(ROOT, SimDir::default());
        Sim {
            rng: StdRng::seed_from_u64(seed),
            dirs,
            inodes: BTreeMap::new(),
            next_id: 1,
            crash_after: None,
            fault: None,
            off: false,
            stats: SimStats::default(),
        }
    }

    /// Admits one numbered call: fails it if the power is (now) off or a fault is due.
    fn gate(&mut self, kind: &'static str, path: &Path) -> io::Result<()> {
        if self.off {
            return Err(power_off());
        }
        let n = self.stats.ops + 1;
        if self.crash_after.is_some_and(|c| n > c) {
            self.off = true;
            self.stats.crashed_at = Some((n, kind, path.to_path_buf()));
            return Err(power_off());
        }
        self.stats.ops = n;
        if let Some((only, left)) = &mut self.fault {
            if only.is_none_or(|k| k == kind) {
                *left -= 1;
                if *left == 0 {
                    self.fault = None;
                    self.stats.injected = Some((n, kind, path.to_path_buf()));
                    return Err(io::Error::from_raw_os_error(5)); // EIO
                }
            }
        }
        *self.stats.by_kind.entry(kind).or_default() += 1;
        Ok(())
    }

    fn live(&self) -> io::Result<()> {
        if self.off {
            Err(power_off())
        } else {
            Ok(())
        }
    }

    fn dir_of(&self, names: &[String], path: &Path) -> io::Result<u64> {
        let mut d = ROOT;
        for n in names {
            match self.dirs[&d].cur.get(n) {
                Some(Node::Dir(id)) => d = *id,
                Some(Node::File(_)) => {
                    return Err(io::Error::other(format!(
                        "SimFs: {} is not a directory",
                        path.display()
                    )))
                }
                None => return Err(not_found(path)),
            }
        }
        Ok(d)
    }

    /// (parent directory, last name) of `path`.
    fn parent_and_name(&self, path: &Path) -> io::Result<(u64, String)> {
        let mut names = components(path)?;
        let name = names
            .pop()
            .ok_or_else(|| io::Error::other("SimFs: the root is not a file"))?;
        Ok((self.dir_of(&names, path)?, name))
    }

    fn lookup(&self, path: &Path) -> io::Result<Node> {
        let names = components(path)?;
        if names.is_empty() {
            return Ok(Node::Dir(ROOT));
        }
        let (d, name) = self.parent_and_name(path)?;
        self.dirs[&d]
            .cur
            .get(&name)
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path)? {
            Node::File(i) => Ok(i),
            Node::Dir(_) => Err(io::Error::other(format!(
                "SimFs: {} is a directory",
                path.display()
            ))),
        }
    }

    fn dir_change(&mut self, d: u64, op: DirOp) {
        let dir = self.dirs.get_mut(&d).expect("resolved");
        apply_dir(&mut dir.cur, &op);
        dir.pending.push(op);
    }

    fn data_change(&mut self, ino: u64, op: DataOp) {
        let f = self
            .inodes
            .get_mut(&ino)
            .expect("open files keep their inode");
        apply(&mut f.cur, &op);
        f.pending.push(op);
    }

    fn sync_file(&mut self, ino: u64) {
        let f = self
            .inodes
            .get_mut(&ino)
            .expect("open files keep their inode");
        for op in std::mem::take(&mut f.pending) {
            apply(&mut f.dur, &op);
        }
    }

    /// How many of `n` unsynced changes survive (none, or a random prefix), and
    /// whether the one after them is torn.
    fn survivors(&mut self, n: usize) -> (usize, bool) {
        if n == 0 || self.rng.gen_bool(0.5) {
            (0, false)
        } else {
            let keep = self.rng.gen_range(0..=n);
            (keep, keep < n)
        }
    }

    /// The disk a restarted machine finds (see the module docs).
    fn after_power_cut(&mut self) -> Sim {
        let mut dirs = BTreeMap::new();
        let ids: Vec<u64> = self.dirs.keys().copied().collect();
        for id in ids {
            let n = self.dirs[&id].pending.len();
            let (keep, _) = self.survivors(n);
            let d = &self.dirs[&id];
            let mut map = d.dur.clone();
            for op in &d.pending[..keep] {
                apply_dir(&mut map, op);
            }
            dirs.insert(id, map);
        }
        let mut inodes = BTreeMap::new();
        let ids: Vec<u64> = self.inodes.keys().copied().collect();
        for id in ids {
            let n = self.inodes[&id].pending.len();
            let (keep, tear) = self.survivors(n);
            let torn = if tear {
                match &self.inodes[&id].pending[keep] {
                    DataOp::Write(off, data) => {
                        let first = off / SECTOR;
                        let last = (off + data.len() as u64).div_ceil(SECTOR);
                        let sectors = self.rng.gen_range(0..last.saturating_sub(first).max(1));
                        let end = ((first + sectors) * SECTOR).max(*off) - off;
                        Some(DataOp::Write(*off, data[..end as usize].to_vec()))
                    }
                    DataOp::SetLen(_) => None,
                }
            } else {
                None
            };
            let f = &self.inodes[&id];
            let mut content = f.dur.clone();
            for op in f.pending[..keep].iter().chain(torn.iter()) {
                apply(&mut content, op);
            }
            inodes.insert(id, content);
        }
        // Only what a surviving entry reaches is there.
        let mut next = Sim::new(self.rng.gen());
        next.next_id = self.next_id;
        next.dirs.clear();
        let mut todo = vec![ROOT];
        while let Some(d) = todo.pop() {
            let map = dirs.remove(&d).unwrap_or_default();
            for n in map.values() {
                match n {
                    Node::Dir(id) => todo.push(*id),
                    Node::File(id) => {
                        let content = inodes.get(id).cloned().unwrap_or_default();
                        next.inodes.insert(
                            *id,
                            Inode {
                                cur: content.clone(),
                                dur: content,
                                pending: Vec::new(),
                            },
                        );
                    }
                }
            }
            next.dirs.insert(
                d,
                SimDir {
                    cur: map.clone(),
                    dur: map,
                    pending: Vec::new(),
                },
            );
        }
        next
    }
}

impl SimFs {
    /// An empty filesystem whose every random choice comes from `seed`.
    pub fn new(seed: u64) -> SimFs {
        SimFs {
            sim: Arc::new(Mutex::new(Sim::new(seed))),
        }
    }

    /// As a shared [`DurableFs`] for the services.
    pub fn shared(&self) -> Arc<dyn DurableFs> {
        Arc::new(self.clone())
    }

    /// The power goes off just before the `n+1`-th numbered call from now.
    pub fn crash_after(&self, n: u64) {
        let mut s = self.sim.lock();
        s.crash_after = Some(s.stats.ops + n);
    }

    /// No crash point (one set earlier is forgotten).
    pub fn disarm(&self) {
        self.sim.lock().crash_after = None;
    }

    /// The `k`-th numbered call from now fails once with `EIO`, changing nothing.
    pub fn fail_op(&self, k: u64) {
        self.sim.lock().fault = Some((None, k.max(1)));
    }

    /// The `k`-th numbered call of `kind` ("sync_dir", "write", ...) from now fails once
    /// with `EIO`, changing nothing.
    pub fn fail_op_of(&self, kind: &'static str, k: u64) {
        self.sim.lock().fault = Some((Some(kind), k.max(1)));
    }

    /// Whether the power is off (a crash point was reached or the power was cut).
    pub fn is_off(&self) -> bool {
        self.sim.lock().off
    }

    pub fn stats(&self) -> SimStats {
        self.sim.lock().stats.clone()
    }

    /// Cuts the power: this filesystem (and every file open on it) fails from now on;
    /// returns the disk a restart finds.
    pub fn power_cut(&self) -> SimFs {
        let mut s = self.sim.lock();
        s.off = true;
        let next = s.after_power_cut();
        SimFs {
            sim: Arc::new(Mutex::new(next)),
        }
    }

    /// An independent copy, for inspecting a disk without changing it.
    pub fn fork(&self) -> SimFs {
        let s = self.sim.lock();
        let mut copy = s.clone();
        copy.rng = StdRng::seed_from_u64(0);
        copy.crash_after = None;
        copy.fault = None;
        SimFs {
            sim: Arc::new(Mutex::new(copy)),
        }
    }
}

struct SimFile {
    sim: Arc<Mutex<Sim>>,
    ino: u64,
    mode: OpenMode,
    path: PathBuf,
}

impl SimFile {
    fn writable(&self) -> io::Result<()> {
        if self.mode == OpenMode::Read {
            Err(io::Error::from_raw_os_error(9)) // EBADF
        } else {
            Ok(())
        }
    }
}

impl DurableFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let s = self.sim.lock();
        s.live()?;
        let cur = &s.inodes[&self.ino].cur;
        let start = (offset as usize).min(cur.len());
        let n = buf.len().min(cur.len() - start);
        buf[..n].copy_from_slice(&cur[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        let mut s = self.sim.lock();
        s.gate("write", &self.path)?;
        s.data_change(self.ino, DataOp::Write(offset, buf.to_vec()));
        Ok(())
    }
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        self.writable()?;
        let mut s = self.sim.lock();
        s.gate("append", &self.path)?;
        let end = s.inodes[&self.ino].cur.len() as u64;
        s.data_change(self.ino, DataOp::Write(end, buf.to_vec()));
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let s = self.sim.lock();
        s.live()?;
        Ok(s.inodes[&self.ino].cur.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut s = self.sim.lock();
        s.gate("set_len", &self.path)?;
        s.data_change(self.ino, DataOp::SetLen(len));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.gate("sync_data", &self.path)?;
        s.sync_file(self.ino);
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.gate("sync_all", &self.path)?;
        s.sync_file(self.ino);
        Ok(())
    }
}

impl DurableFs for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DurableFile>> {
        let mut s = self.sim.lock();
        s.live()?;
        let ino = match (s.lookup(path), mode) {
            (Ok(_), _) => {
                let ino = s.file(path)?;
                if mode == OpenMode::Truncate {
                    s.gate("truncate", path)?;
                    s.data_change(ino, DataOp::SetLen(0));
                }
                ino
            }
            (Err(e), OpenMode::Read | OpenMode::ReadWrite) => return Err(e),
            (Err(e), _) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            (Err(_), _) => {
                let (d, name) = s.parent_and_name(path)?;
                s.gate("create", path)?;
                let ino = s.next_id;
                s.next_id += 1;
                s.inodes.insert(ino, Inode::default());
                s.dir_change(d, DirOp::Link(name, Node::File(ino)));
                ino
            }
        };
        Ok(Box::new(SimFile {
            sim: self.sim.clone(),
            ino,
            mode,
            path: path.to_path_buf(),
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.sim.lock();
        s.live()?;
        let ino = s.file(path)?;
        Ok(s.inodes[&ino].cur.clone())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.sim.lock();
        !s.off && s.lookup(path).is_ok()
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.live()?;
        let mut d = ROOT;
        for name in components(path)? {
            d = match s.dirs[&d].cur.get(&name).copied() {
                Some(Node::Dir(id)) => id,
                Some(Node::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("SimFs: a file is in the way of {}", path.display()),
                    ))
                }
                None => {
                    s.gate("mkdir", path)?;
                    let id = s.next_id;
                    s.next_id += 1;
                    s.dirs.insert(id, SimDir::default());
                    s.dir_change(d, DirOp::Link(name, Node::Dir(id)));
                    id
                }
            };
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let s = self.sim.lock();
        s.live()?;
        let d = s.dir_of(&components(path)?, path)?;
        Ok(s.dirs[&d].cur.keys().map(OsString::from).collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.live()?;
        let (d, a) = s.parent_and_name(from)?;
        let (d2, b) = s.parent_and_name(to)?;
        if d != d2 {
            return Err(io::Error::other(
                "SimFs: a rename across directories is not modelled",
            ));
        }
        if !s.dirs[&d].cur.contains_key(&a) {
            return Err(not_found(from));
        }
        s.gate("rename", to)?;
        s.dir_change(d, DirOp::Rename(a, b));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.live()?;
        s.file(path)?;
        let (d, name) = s.parent_and_name(path)?;
        s.gate("remove", path)?;
        s.dir_change(d, DirOp::Unlink(name));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.sim.lock();
        s.live()?;
        let d = s.dir_of(&components(path)?, path)?;
        s.gate("sync_dir", path)?;
        let dir = s.dirs.get_mut(&d).expect("resolved");
        dir.dur = dir.cur.clone();
        dir.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(fs: &SimFs, p: &str) -> Option<Vec<u8>> {
        fs.read(Path::new(p)).ok()
    }

    /// Synced data and synced names survive every cut; unsynced ones do not always.
    #[test]
    fn only_what_was_synced_is_sure_to_survive() {
        let mut lost_write = false;
        let mut lost_name = false;
        let mut torn = false;
        for seed in 0..200 {
            let fs = SimFs::new(seed);
            fs.create_dir_all(Path::new("/d")).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            let f = fs.open(Path::new("/d/a"), OpenMode::Create).unwrap();
            f.write_all_at(&[1; 1000], 0).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            f.write_all_at(&[2; 1500], 1000).unwrap();
            let g = fs.open(Path::new("/d/b"), OpenMode::Create).unwrap();
            g.write_all_at(b"x", 0).unwrap();
            g.sync_all().unwrap(); // data synced, name not
            let after = fs.power_cut();
            assert!(f.write_all_at(b"late", 0).is_err(), "the old disk is off");
            let a = content(&after, "/d/a").expect("a synced file survives");
            assert_eq!(&a[..1000], &[1; 1000][..]);
            match a.len() {
                1000 => lost_write = true,
                2500 => {}
                n => {
                    // Torn at a sector: what survived ends on a 512-byte boundary.
                    assert_eq!(n % 512, 0, "torn at {n}");
                    assert!(a[1000..].iter().all(|b| *b == 2));
                    torn = true;
                }
            }
            if content(&after, "/d/b").is_none() {
                lost_name = true;
            }
        }
        assert!(lost_write && lost_name && torn);
    }

    /// A cut before a rename's directory fsync keeps the old content or the new one,
    /// never neither; a removal is undone unless its directory was synced.
    #[test]
    fn renames_are_atomic_and_removals_need_a_directory_fsync() {
        let mut undone = false;
        for seed in 0..100 {
            let fs = SimFs::new(seed);
            super::super::replace_file(&fs, Path::new("m.tmp"), Path::new("m"), b"old").unwrap();
            let f = fs.open(Path::new("m.tmp"), OpenMode::Truncate).unwrap();
            f.write_all_at(b"new", 0).unwrap();
            f.sync_all().unwrap();
            fs.rename(Path::new("m.tmp"), Path::new("m")).unwrap();
            fs.open(Path::new("gone"), OpenMode::Create).unwrap();
            fs.sync_dir(Path::new(".")).unwrap();
            fs.remove_file(Path::new("gone")).unwrap();
            let after = fs.power_cut();
            let m = content(&after, "m").unwrap();
            assert!(m == b"old" || m == b"new");
            undone |= after.exists(Path::new("gone"));
        }
        assert!(undone);
    }

    /// The crash point stops every numbered call from the chosen one on; the same seed
    /// and calls give the same disk.
    #[test]
    fn crash_points_and_seeds_replay() {
        let run = |seed: u64| {
            let fs = SimFs::new(seed);
            fs.crash_after(5);
            let f = fs.open(Path::new("f"), OpenMode::Create).unwrap(); // 1
            let mut ok = 1;
            for i in 0..10u8 {
                if f.write_all_at(&[i; 700], u64::from(i) * 700).is_ok() {
                    ok += 1;
                }
            }
            assert_eq!(ok, 5);
            let st = fs.stats();
            assert_eq!(
                st.crashed_at.as_ref().map(|c| (c.0, c.1)),
                Some((6, "write"))
            );
            fs.power_cut().fork().read(Path::new("f")).ok()
        };
        for seed in 0..20 {
            assert_eq!(run(seed), run(seed));
        }
    }

    #[test]
    fn an_injected_fault_fails_one_call() {
        let fs = SimFs::new(3);
        fs.fail_op(2);
        let f = fs.open(Path::new("f"), OpenMode::Create).unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
        f.sync_data().unwrap();
        assert_eq!(fs.stats().injected.map(|i| i.1), Some("sync_data"));
        fs.fail_op_of("sync_dir", 2);
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        f.sync_data().unwrap();
        assert!(fs.sync_dir(Path::new("/")).is_err());
        fs.sync_dir(Path::new("/")).unwrap();
    }
}
