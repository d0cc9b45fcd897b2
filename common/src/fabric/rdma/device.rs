//! Opening an RDMA device: the device list, the chosen device's context and protection
//! domain, and what the queue-pair exchange needs to know about its port (`rdma`
//! module doc, "Configuration" and "Resources").
//!
//! Keeps the release order: the protection domain and context outlive every child
//! object, which each hold an `Arc<Device>`. With no device, opening fails with
//! `FabricError::Unsupported`; `connect` and `serve` open the device before they touch
//! the network.

use super::{MAX_RD_ATOMIC, NO_DEVICE};
use crate::fabric::FabricError;
use rdma_sys as ib;
use std::ffi::CStr;
use std::io;
use std::os::raw::c_int;
use std::ptr;
use std::sync::Arc;

const ENV_DEVICE: &str = "DSB_RDMA_DEVICE";
const ENV_PORT: &str = "DSB_RDMA_PORT";
const ENV_GID_INDEX: &str = "DSB_RDMA_GID_INDEX";

/// A verbs call that returned an error code (`rc > 0`) or set errno (`rc <= 0`).
pub(super) fn verbs_failed(what: &str, rc: c_int) -> FabricError {
    let e = if rc > 0 {
        io::Error::from_raw_os_error(rc)
    } else {
        io::Error::last_os_error()
    };
    FabricError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn env_u8(name: &str, default: u8) -> Result<u8, FabricError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().map_err(|_| {
            FabricError::Unsupported(format!("{name}={v:?}: expected a number from 0 to 255"))
        }),
    }
}

/// An opened device: its context, one protection domain for all of this owner's queue
/// pairs and memory regions, and what the QP exchange needs to know about the port.
pub(super) struct Device {
    pub(super) ctx: *mut ib::ibv_context,
    pub(super) pd: *mut ib::ibv_pd,
    pub(super) name: String,
    pub(super) port: u8,
    pub(super) gid_index: u8,
    pub(super) lid: u16,
    pub(super) gid: [u8; 16],
    pub(super) active_mtu: u8,
    pub(super) max_msg_len: u64,
    pub(super) max_qp_wr: u32,
    pub(super) responder_depth: u8,
    pub(super) initiator_depth: u8,
    pub(super) atomic_cap: u8,
}

// SAFETY: verbs contexts and protection domains are thread-safe handles (libibverbs
// serialises internally); the other fields are plain data.
unsafe impl Send for Device {}
// SAFETY: as above; `&Device` only reads plain fields or passes the handles to verbs.
unsafe impl Sync for Device {}

fn device_name(dev: *mut ib::ibv_device) -> String {
    // SAFETY: `dev` comes from a live device list; the name is a NUL-terminated string
    // owned by the device entry, copied here before the list is freed.
    let name = unsafe { ib::ibv_get_device_name(dev) };
    if name.is_null() {
        return "?".into();
    }
    // SAFETY: non-null, NUL-terminated, valid while the list is (see above).
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

impl Device {
    /// Opens the configured (or first) device; [`FabricError::Unsupported`] when there
    /// is none.
    pub(super) fn open() -> Result<Arc<Device>, FabricError> {
        let wanted = std::env::var(ENV_DEVICE).ok().filter(|s| !s.is_empty());
        let port = env_u8(ENV_PORT, 1)?;
        let gid_index = env_u8(ENV_GID_INDEX, 0)?;

        let mut count: c_int = 0;
        // SAFETY: `count` is a valid out-pointer; the list is freed below, once.
        let list = unsafe { ib::ibv_get_device_list(&mut count) };
        let list_err = io::Error::last_os_error();
        if list.is_null() || count <= 0 {
            if !list.is_null() {
                // SAFETY: returned by ibv_get_device_list above, freed once.
                unsafe { ib::ibv_free_device_list(list) };
            }
            return Err(FabricError::Unsupported(if list.is_null() {
                format!("{NO_DEVICE} [libibverbs: {list_err}]")
            } else {
                NO_DEVICE.to_string()
            }));
        }
        // SAFETY: a non-null list holds `count` device pointers (and a NULL after them).
        let devices = unsafe { std::slice::from_raw_parts(list, count as usize) }.to_vec();
        let names: Vec<String> = devices.iter().map(|&d| device_name(d)).collect();
        let pick = match &wanted {
            Some(w) => names.iter().position(|n| n == w),
            None => Some(0),
        };
        let ctx = match pick {
            // SAFETY: the device pointer is valid until the list is freed, which happens
            // only after this call; an opened context outlives the list.
            Some(i) => unsafe { ib::ibv_open_device(devices[i]) },
            None => ptr::null_mut(),
        };
        let open_err = io::Error::last_os_error();
        // SAFETY: freed once; only the opened context is used from here on.
        unsafe { ib::ibv_free_device_list(list) };
        let Some(i) = pick else {
            return Err(FabricError::Unsupported(format!(
                "RDMA device {:?} (from {ENV_DEVICE}) not found; this machine has: {}",
                wanted.unwrap_or_default(),
                names.join(", ")
            )));
        };
        if ctx.is_null() {
            return Err(FabricError::Io(io::Error::new(
                open_err.kind(),
                format!("ibv_open_device({}): {open_err}", names[i]),
            )));
        }
        let mut dev = Device {
            ctx,
            pd: ptr::null_mut(),
            name: names[i].clone(),
            port,
            gid_index,
            lid: 0,
            gid: [0; 16],
            active_mtu: 0,
            max_msg_len: 0,
            max_qp_wr: 0,
            responder_depth: 0,
            initiator_depth: 0,
            atomic_cap: 0,
        };
        // From here on, dropping `dev` closes whatever was opened.
        dev.query()?;
        // SAFETY: `ctx` is an open context.
        dev.pd = unsafe { ib::ibv_alloc_pd(dev.ctx) };
        if dev.pd.is_null() {
            return Err(verbs_failed("ibv_alloc_pd", 0));
        }
        Ok(Arc::new(dev))
    }

    fn query(&mut self) -> Result<(), FabricError> {
        // SAFETY: ibv_device_attr is plain integers; all-zero is a valid value.
        let mut attr: ib::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: open context, valid out-pointer.
        let rc = unsafe { ib::ibv_query_device(self.ctx, &mut attr) };
        if rc != 0 {
            return Err(verbs_failed("ibv_query_device", rc));
        }
        if self.port == 0 || self.port > attr.phys_port_cnt {
            return Err(FabricError::Unsupported(format!(
                "RDMA device {} has ports 1..={}; {ENV_PORT}={} does not exist",
                self.name, attr.phys_port_cnt, self.port
            )));
        }
        // SAFETY: ibv_port_attr is plain integers; all-zero is a valid value.
        let mut port: ib::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: open context, existing port, valid out-pointer (the inline wrapper
        // passes its size to the provider).
        let rc = unsafe { ib::___ibv_query_port(self.ctx, self.port, &mut port) };
        if rc != 0 {
            return Err(verbs_failed("ibv_query_port", rc));
        }
        if port.state != ib::ibv_port_state::IBV_PORT_ACTIVE {
            return Err(FabricError::Unsupported(format!(
                "RDMA device {} port {} is not active (port state {})",
                self.name, self.port, port.state
            )));
        }
        // SAFETY: ibv_gid is 16 plain bytes.
        let mut gid: ib::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: open context, existing port, valid out-pointer.
        let rc = unsafe {
            ib::ibv_query_gid(self.ctx, self.port, c_int::from(self.gid_index), &mut gid)
        };
        if rc != 0 {
            return Err(verbs_failed(
                &format!(
                    "ibv_query_gid(port {}, {ENV_GID_INDEX}={})",
                    self.port, self.gid_index
                ),
                rc,
            ));
        }
        // SAFETY: every bit pattern of the union is a valid byte array.
        self.gid = unsafe { gid.raw };
        self.lid = port.lid;
        self.active_mtu = port.active_mtu as u8;
        self.max_msg_len = u64::from(port.max_msg_sz);
        self.max_qp_wr = attr.max_qp_wr.max(1) as u32;
        self.responder_depth = attr.max_qp_rd_atom.clamp(0, i32::from(MAX_RD_ATOMIC)) as u8;
        self.initiator_depth = attr.max_qp_init_rd_atom.clamp(0, i32::from(MAX_RD_ATOMIC)) as u8;
        self.atomic_cap = attr.atomic_cap as u8;
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Every QP, CQ and MR holds an `Arc<Device>`, so none is left when this runs.
        if !self.pd.is_null() {
            // SAFETY: allocated in `open`, no child objects remain, released once.
            let rc = unsafe { ib::ibv_dealloc_pd(self.pd) };
            if rc != 0 {
                tracing::warn!(device = %self.name, rc, "ibv_dealloc_pd failed");
            }
        }
        if !self.ctx.is_null() {
            // SAFETY: opened in `open`, released once, after the PD.
            let rc = unsafe { ib::ibv_close_device(self.ctx) };
            if rc != 0 {
                tracing::warn!(device = %self.name, rc, "ibv_close_device failed");
            }
        }
    }
}
