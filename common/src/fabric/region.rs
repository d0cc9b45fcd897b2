//! Registered memory regions.
//!
//! A region is a memfd mapped `MAP_SHARED`, so the same memory can be served over tcp by
//! the server's responder, mapped by shm clients in other processes, and registered with
//! an RDMA NIC. Any other process may read or write it at any time, so every access here
//! is atomic: 8-byte words through `AtomicU64`, byte ranges through word-wise atomic
//! copies. A copy that races a writer may see a mix of old and new words; callers that
//! need a consistent image validate it afterwards with version words (seqlock style), as
//! the page directory does.
//!
//! Bounds, alignment and rights are checked in [`execute`], the one function through
//! which every one-sided op reaches a region, on every backend.

use super::{Access, Op, OpError, OpOutput, OpResult, RegionDesc};
use crate::ids::RegionId;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// A mapped view of region memory (the server's own or an shm client's).
pub struct Mapping {
    map: MmapRaw,
    len: u64,
    writable: bool,
}

// SAFETY: all access to the mapped memory goes through atomics; the mapping itself is
// owned and unmapped once, on drop.
unsafe impl Send for Mapping {}
// SAFETY: as above: concurrent access is by atomic operations only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file`; read-only mappings are `PROT_READ`, so the kernel
    /// enforces the right even against a buggy client.
    pub fn map(file: &File, len: u64, writable: bool) -> std::io::Result<Mapping> {
        if len == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "cannot map an empty region",
            ));
        }
        let mut opts = MmapOptions::new();
        opts.len(len as usize);
        let map = if writable {
            opts.map_raw(file)?
        } else {
            opts.map_raw_read_only(file)?
        };
        Ok(Mapping { map, len, writable })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the mapping (the rdma backend registers it with the NIC).
    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<usize, OpError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(offset as usize),
            _ => Err(OpError::OutOfBounds),
        }
    }

    fn word(&self, offset: u64) -> Result<&AtomicU64, OpError> {
        if !offset.is_multiple_of(8) {
            return Err(OpError::Misaligned);
        }
        let off = self.check_range(offset, 8)?;
        // SAFETY: in bounds (checked), 8-aligned (page-aligned base + aligned offset), and
        // the memory lives as long as `self`; AtomicU64 has the layout of u64.
        Ok(unsafe { &*(self.base().add(off) as *const AtomicU64) })
    }

    /// Copies `buf.len()` bytes at `offset` out of the region.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OpError> {
        let off = self.check_range(offset, buf.len() as u64)?;
        // SAFETY: the range is in bounds of the live mapping.
        unsafe { atomic_copy_out(self.base().add(off), buf) };
        Ok(())
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), OpError> {
        if !self.writable {
            return Err(OpError::AccessDenied);
        }
        let off = self.check_range(offset, data.len() as u64)?;
        // SAFETY: the range is in bounds of the live, writable mapping.
        unsafe { atomic_copy_in(self.base().add(off), data) };
        Ok(())
    }

    pub fn load_u64(&self, offset: u64) -> Result<u64, OpError> {
        Ok(self.word(offset)?.load(Ordering::Acquire))
    }

    pub fn store_u64(&self, offset: u64, value: u64) -> Result<(), OpError> {
        if !self.writable {
            return Err(OpError::AccessDenied);
        }
        self.word(offset)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Returns the previous value; the swap happened iff it equals `expected`.
    pub fn cas_u64(&self, offset: u64, expected: u64, new: u64) -> Result<u64, OpError> {
        if !self.writable {
            return Err(OpError::AccessDenied);
        }
        let w = self.word(offset)?;
        Ok(
            match w.compare_exchange(expected, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(v) | Err(v) => v,
            },
        )
    }

    pub fn fetch_add_u64(&self, offset: u64, add: u64) -> Result<u64, OpError> {
        if !self.writable {
            return Err(OpError::AccessDenied);
        }
        Ok(self.word(offset)?.fetch_add(add, Ordering::AcqRel))
    }
}

/// Word-wise atomic copy out of shared memory.
///
/// # Safety
/// `src..src+dst.len()` must be inside a live mapping.
pub(crate) unsafe fn atomic_copy_out(src: *const u8, dst: &mut [u8]) {
    let n = dst.len();
    let mut i = 0;
    while i < n && !(src as usize + i).is_multiple_of(8) {
        // SAFETY: in range per the caller's contract; AtomicU8 has u8's layout.
        dst[i] = unsafe { (*(src.add(i) as *const AtomicU8)).load(Ordering::Acquire) };
        i += 1;
    }
    while i + 8 <= n {
        // SAFETY: in range and 8-aligned (loop above).
        let w = unsafe { (*(src.add(i) as *const AtomicU64)).load(Ordering::Acquire) };
        dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: in range per the caller's contract.
        dst[i] = unsafe { (*(src.add(i) as *const AtomicU8)).load(Ordering::Acquire) };
        i += 1;
    }
}

/// Word-wise atomic copy into shared memory.
///
/// # Safety
/// `dst..dst+src.len()` must be inside a live, writable mapping.
pub(crate) unsafe fn atomic_copy_in(dst: *mut u8, src: &[u8]) {
    let n = src.len();
    let mut i = 0;
    while i < n && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: in range per the caller's contract.
        unsafe { (*(dst.add(i) as *const AtomicU8)).store(src[i], Ordering::Release) };
        i += 1;
    }
    while i + 8 <= n {
        let w = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
        // SAFETY: in range and 8-aligned.
        unsafe { (*(dst.add(i) as *const AtomicU64)).store(w, Ordering::Release) };
        i += 8;
    }
    while i < n {
        // SAFETY: in range per the caller's contract.
        unsafe { (*(dst.add(i) as *const AtomicU8)).store(src[i], Ordering::Release) };
        i += 1;
    }
}

/// A region registered on a server: memory plus the rights clients get.
pub struct Region {
    id: RegionId,
    access: Access,
    file: File,
    mapping: Mapping,
}

impl Region {
    /// Creates a zero-filled region backed by a fresh memfd.
    pub(crate) fn create(id: RegionId, len: u64, access: Access) -> std::io::Result<Region> {
        let fd: OwnedFd = nix::sys::memfd::memfd_create(
            c"dsb-region",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len(len)?;
        let mapping = Mapping::map(&file, len, true)?;
        Ok(Region {
            id,
            access,
            file,
            mapping,
        })
    }

    pub fn id(&self) -> RegionId {
        self.id
    }
    pub fn access(&self) -> Access {
        self.access
    }
    pub fn len(&self) -> u64 {
        self.mapping.len
    }
    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }
    pub fn desc(&self) -> RegionDesc {
        RegionDesc {
            id: self.id,
            len: self.len(),
            access: self.access,
        }
    }
    /// The owner's full-rights view (the server itself may always write its regions).
    pub fn mem(&self) -> &Mapping {
        &self.mapping
    }
    /// A descriptor to hand an shm client: read-only unless the region grants writes or
    /// atomics, so a read-only client mapping cannot be upgraded.
    pub(crate) fn client_fd(&self) -> std::io::Result<OwnedFd> {
        if self.access.contains(Access::WRITE) || self.access.contains(Access::ATOMIC) {
            self.file.as_fd().try_clone_to_owned()
        } else {
            let path = format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&self.file)
            );
            Ok(OwnedFd::from(File::open(path)?))
        }
    }
}

/// Runs one op against a mapping after checking it against the region's descriptor.
/// Every backend funnels its one-sided ops through here.
pub fn execute(mem: &Mapping, desc: &RegionDesc, op: &Op) -> OpResult {
    let need = match op {
        Op::Read { .. } => Access::READ,
        Op::Write { .. } => Access::WRITE,
        Op::Cas { .. } | Op::FetchAdd { .. } => Access::ATOMIC,
    };
    if !desc.access.contains(need) {
        return Err(OpError::AccessDenied);
    }
    match op {
        Op::Read { offset, len, .. } => {
            mem.check_range(*offset, *len as u64)?;
            let mut buf = vec![0u8; *len as usize];
            mem.read(*offset, &mut buf)?;
            Ok(OpOutput::Read(buf))
        }
        Op::Write { offset, data, .. } => {
            mem.write(*offset, data)?;
            Ok(OpOutput::Written)
        }
        Op::Cas {
            offset,
            expected,
            new,
            ..
        } => Ok(OpOutput::Cas {
            previous: mem.cas_u64(*offset, *expected, *new)?,
        }),
        Op::FetchAdd { offset, add, .. } => Ok(OpOutput::FetchAdd {
            previous: mem.fetch_add_u64(*offset, *add)?,
        }),
    }
}

/// The regions a server has registered, looked up by id on every op.
#[derive(Default)]
pub struct RegionTable {
    regions: parking_lot::RwLock<Vec<Arc<Region>>>,
}

impl RegionTable {
    pub fn register(&self, len: u64, access: Access) -> std::io::Result<Arc<Region>> {
        let mut regions = self.regions.write();
        let id = RegionId(regions.len() as u32);
        let region = Arc::new(Region::create(id, len, access)?);
        regions.push(region.clone());
        Ok(region)
    }

    pub fn get(&self, id: RegionId) -> Option<Arc<Region>> {
        self.regions.read().get(id.0 as usize).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Region>> {
        self.regions.read().clone()
    }

    pub fn descs(&self) -> Vec<RegionDesc> {
        self.regions.read().iter().map(|r| r.desc()).collect()
    }

    /// Serves a batch on the server side (the tcp responder).
    pub fn serve_batch(&self, ops: &[Op]) -> Vec<OpResult> {
        let regions = self.regions.read();
        ops.iter()
            .map(|op| match regions.get(op.region().0 as usize) {
                Some(r) => execute(&r.mapping, &r.desc(), op),
                None => Err(OpError::NoSuchRegion),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_rights_and_alignment_are_checked() {
        let t = RegionTable::default();
        let ro = t.register(64, Access::READ_ONLY).unwrap();
        let rw = t.register(64, Access::ALL).unwrap();
        rw.mem().store_u64(8, 42).unwrap();
        let res = t.serve_batch(&[
            Op::Read {
                region: ro.id(),
                offset: 60,
                len: 8,
            },
            Op::Write {
                region: ro.id(),
                offset: 0,
                data: vec![1],
            },
            Op::Cas {
                region: rw.id(),
                offset: 4,
                expected: 0,
                new: 1,
            },
            Op::Cas {
                region: rw.id(),
                offset: 8,
                expected: 42,
                new: 7,
            },
            Op::FetchAdd {
                region: rw.id(),
                offset: 8,
                add: 3,
            },
            Op::Read {
                region: RegionId(9),
                offset: 0,
                len: 1,
            },
            Op::Read {
                region: rw.id(),
                offset: u64::MAX,
                len: 2,
            },
            Op::Read {
                region: rw.id(),
                offset: 8,
                len: 8,
            },
        ]);
        assert_eq!(res[0], Err(OpError::OutOfBounds));
        assert_eq!(res[1], Err(OpError::AccessDenied));
        assert_eq!(res[2], Err(OpError::Misaligned));
        assert_eq!(res[3], Ok(OpOutput::Cas { previous: 42 }));
        assert_eq!(res[4], Ok(OpOutput::FetchAdd { previous: 7 }));
        assert_eq!(res[5], Err(OpError::NoSuchRegion));
        assert_eq!(res[6], Err(OpError::OutOfBounds));
        assert_eq!(res[7], Ok(OpOutput::Read(10u64.to_ne_bytes().to_vec())));
    }

    #[test]
    fn unaligned_copies_round_trip() {
        let t = RegionTable::default();
        let r = t.register(100, Access::ALL).unwrap();
        let data: Vec<u8> = (0..37).collect();
        r.mem().write(3, &data).unwrap();
        let mut back = vec![0; 37];
        r.mem().read(3, &mut back).unwrap();
        assert_eq!(back, data);
    }
}
