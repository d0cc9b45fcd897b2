//! Memory registration: MR access flags from a region's rights, the registered memory
//! region (`MemoryRegion`) and the client's registered staging memory (`Bounce`).
//!
//! Keeps two rules: an MR grants remote access exactly as the region's `Access` says
//! (the NIC's own rights check), and an MR is deregistered before the memory it covers
//! is freed or unmapped.

use super::device::Device;
use crate::fabric::{Access, FabricError};
use rdma_sys as ib;
use std::alloc::Layout;
use std::io;
use std::os::raw::c_int;
use std::ptr;
use std::sync::Arc;

/// MR access flags for a region's rights. Remote writes and atomics need local write
/// too (a verbs rule).
pub(super) fn mr_access(access: Access) -> c_int {
    let mut flags = 0;
    if access.contains(Access::READ) {
        flags |= ib::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
    }
    if access.contains(Access::WRITE) {
        flags |= ib::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0
            | ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    if access.contains(Access::ATOMIC) {
        flags |= ib::ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0
            | ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    flags as c_int
}

/// A registered memory region.
pub(super) struct MemoryRegion {
    mr: *mut ib::ibv_mr,
    device: Arc<Device>,
}

// SAFETY: an MR handle is immutable after registration and may be used and
// deregistered from any thread.
unsafe impl Send for MemoryRegion {}

impl MemoryRegion {
    /// # Safety
    /// `addr..addr + len` must stay mapped until the returned value is dropped.
    pub(super) unsafe fn register(
        device: &Arc<Device>,
        addr: *mut u8,
        len: usize,
        access: c_int,
    ) -> Result<MemoryRegion, FabricError> {
        // SAFETY: open PD; the caller keeps the range mapped for the MR's lifetime.
        let mr = unsafe { ib::ibv_reg_mr(device.pd, addr.cast(), len, access) };
        if mr.is_null() {
            let e = io::Error::last_os_error();
            return Err(FabricError::Io(io::Error::new(
                e.kind(),
                format!(
                    "ibv_reg_mr of {len} bytes on {}: {e} (is `ulimit -l` / RLIMIT_MEMLOCK \
                     large enough to pin the regions?)",
                    device.name
                ),
            )));
        }
        Ok(MemoryRegion {
            mr,
            device: device.clone(),
        })
    }

    fn lkey(&self) -> u32 {
        // SAFETY: a registered MR is readable until deregistered in Drop.
        unsafe { (*self.mr).lkey }
    }

    pub(super) fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).rkey }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once; the memory is still mapped
        // (owners drop the MR before the memory, see `Bounce` and `ExposedRegion`).
        let rc = unsafe { ib::ibv_dereg_mr(self.mr) };
        if rc != 0 {
            tracing::warn!(device = %self.device.name, rc, "ibv_dereg_mr failed");
        }
    }
}

/// A client's registered staging memory: READ targets, WRITE sources, atomic results.
pub(super) struct Bounce {
    base: *mut u8,
    layout: Layout,
    /// Always `Some` until Drop, which deregisters it before freeing `base`.
    mr: Option<MemoryRegion>,
}

// SAFETY: the buffer is owned (freed once, in Drop) and only touched under the send-path
// mutex while no work request refers to it.
unsafe impl Send for Bounce {}

impl Bounce {
    pub(super) fn new(device: &Arc<Device>, len: usize) -> Result<Bounce, FabricError> {
        let layout = Layout::from_size_align(len, 4096)
            .map_err(|_| FabricError::TooLarge(format!("bounce buffer of {len} bytes")))?;
        // SAFETY: the layout has a non-zero size (len >= MIN_BOUNCE).
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        if base.is_null() {
            return Err(FabricError::Io(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate a {len}-byte bounce buffer"),
            )));
        }
        let mut bounce = Bounce {
            base,
            layout,
            mr: None,
        };
        // SAFETY: the allocation lives until Drop, which deregisters the MR first.
        let mr = unsafe {
            MemoryRegion::register(
                device,
                base,
                len,
                ib::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as c_int,
            )
        }?;
        bounce.mr = Some(mr);
        Ok(bounce)
    }

    pub(super) fn len(&self) -> usize {
        self.layout.size()
    }

    pub(super) fn lkey(&self) -> u32 {
        self.mr.as_ref().map_or(0, MemoryRegion::lkey)
    }

    pub(super) fn addr(&self, offset: usize) -> u64 {
        self.base as u64 + offset as u64
    }

    pub(super) fn put(&mut self, offset: usize, data: &[u8]) {
        assert!(
            offset + data.len() <= self.len(),
            "bounce write out of range"
        );
        // SAFETY: in range (asserted); no work request refers to the buffer while the
        // send path is locked and nothing is posted.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(offset), data.len()) };
    }

    pub(super) fn get(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.len(), "bounce read out of range");
        // SAFETY: in range (asserted); the NIC's writes completed (their completion was
        // polled) and nothing is posted.
        unsafe { std::slice::from_raw_parts(self.base.add(offset), len) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        drop(self.mr.take());
        // SAFETY: allocated in `new` with this layout, freed once, after deregistration.
        unsafe { std::alloc::dealloc(self.base, self.layout) };
    }
}
