//! RC queue pairs: creation with their completion queue (and, on clients, completion
//! channel), the RESET -> INIT -> RTR -> RTS (and ERR) transitions, posting a chain with
//! one doorbell, and waiting for its completion (spin, then sleep on the channel).
//!
//! Keeps the release order (queue pair, then CQ, then channel) and moves a failed queue
//! pair to ERR so that no outstanding work request can still touch the bounce buffer.

use super::device::{verbs_failed, Device};
use super::msg::QpInfo;
use super::{SPIN, WAIT_SLICE};
use crate::fabric::FabricError;
use rdma_sys as ib;
use std::ffi::CStr;
use std::io;
use std::os::raw::c_int;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An RC queue pair with its completion queue (and, on clients, completion channel).
pub(super) struct QueuePair {
    qp: *mut ib::ibv_qp,
    cq: *mut ib::ibv_cq,
    channel: *mut ib::ibv_comp_channel,
    /// Send-queue depth granted by the device.
    pub(super) depth: usize,
    pub(super) device: Arc<Device>,
}

// SAFETY: verbs QP/CQ/channel handles may be used from any thread; posting and polling
// are serialised by the owner (the client's send-path mutex, or one server thread).
unsafe impl Send for QueuePair {}

impl QueuePair {
    pub(super) fn create(
        device: &Arc<Device>,
        depth: u32,
        with_channel: bool,
    ) -> Result<QueuePair, FabricError> {
        let depth = depth.min(device.max_qp_wr).max(1);
        let mut qp = QueuePair {
            qp: ptr::null_mut(),
            cq: ptr::null_mut(),
            channel: ptr::null_mut(),
            depth: depth as usize,
            device: device.clone(),
        };
        // From here on, dropping `qp` releases whatever was created.
        if with_channel {
            // SAFETY: open context.
            qp.channel = unsafe { ib::ibv_create_comp_channel(device.ctx) };
            if qp.channel.is_null() {
                return Err(verbs_failed("ibv_create_comp_channel", 0));
            }
        }
        // Room for one completion per chain plus the flush errors of a dying queue pair.
        let cqe = depth as c_int + 1;
        // SAFETY: open context; the channel is null or was created on it.
        qp.cq = unsafe { ib::ibv_create_cq(device.ctx, cqe, ptr::null_mut(), qp.channel, 0) };
        if qp.cq.is_null() {
            return Err(verbs_failed("ibv_create_cq", 0));
        }
        let mut init = ib::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: qp.cq,
            recv_cq: qp.cq,
            srq: ptr::null_mut(),
            cap: ib::ibv_qp_cap {
                max_send_wr: depth,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ib::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: open PD and CQ of the same context; `init` is fully initialised.
        qp.qp = unsafe { ib::ibv_create_qp(device.pd, &mut init) };
        if qp.qp.is_null() {
            return Err(verbs_failed("ibv_create_qp", 0));
        }
        qp.depth = init.cap.max_send_wr.clamp(1, depth) as usize;
        Ok(qp)
    }

    pub(super) fn qpn(&self) -> u32 {
        // SAFETY: a created QP is readable until destroyed in Drop.
        unsafe { (*self.qp).qp_num }
    }

    /// This side's half of the exchange.
    pub(super) fn info(&self, psn: u32, rd_atomic: u8) -> QpInfo {
        QpInfo {
            qpn: self.qpn(),
            psn,
            lid: self.device.lid,
            gid: self.device.gid,
            mtu: self.device.active_mtu,
            rd_atomic,
        }
    }

    fn modify(
        &self,
        attr: &mut ib::ibv_qp_attr,
        mask: ib::ibv_qp_attr_mask,
        what: &str,
    ) -> Result<(), FabricError> {
        // SAFETY: live QP; `attr` is initialised for every field `mask` names.
        let rc = unsafe { ib::ibv_modify_qp(self.qp, attr, mask.0 as c_int) };
        if rc != 0 {
            return Err(verbs_failed(what, rc));
        }
        Ok(())
    }

    fn blank_attr() -> ib::ibv_qp_attr {
        // SAFETY: ibv_qp_attr is plain integers (and an address vector of integers);
        // all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }

    /// RESET -> INIT. Only the server's queue pairs grant remote access; what a peer may
    /// actually touch is then decided by each MR's flags.
    pub(super) fn to_init(&self, remote_access: bool) -> Result<(), FabricError> {
        use ib::ibv_access_flags as f;
        use ib::ibv_qp_attr_mask as m;
        let mut a = Self::blank_attr();
        a.qp_state = ib::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.device.port;
        a.qp_access_flags = if remote_access {
            (f::IBV_ACCESS_REMOTE_READ | f::IBV_ACCESS_REMOTE_WRITE | f::IBV_ACCESS_REMOTE_ATOMIC).0
        } else {
            0
        };
        self.modify(
            &mut a,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
            "ibv_modify_qp(INIT)",
        )
    }

    /// INIT -> RTR towards `remote`.
    pub(super) fn to_rtr(&self, remote: &QpInfo, responder_depth: u8) -> Result<(), FabricError> {
        use ib::ibv_qp_attr_mask as m;
        let mut a = Self::blank_attr();
        a.qp_state = ib::ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = ib::ibv_mtu::Type::from(self.device.active_mtu.min(remote.mtu));
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = responder_depth;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = self.device.port;
        if remote.gid != [0; 16] {
            // Needed on RoCE, harmless within an InfiniBand subnet.
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid = ib::ibv_gid { raw: remote.gid };
            a.ah_attr.grh.sgid_index = self.device.gid_index;
            a.ah_attr.grh.hop_limit = 64;
        }
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
            "ibv_modify_qp(RTR)",
        )
    }

    /// RTR -> RTS.
    pub(super) fn to_rts(&self, psn: u32, initiator_depth: u8) -> Result<(), FabricError> {
        use ib::ibv_qp_attr_mask as m;
        let mut a = Self::blank_attr();
        a.qp_state = ib::ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 14; // 4.096 us * 2^14 = 67 ms per try
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.sq_psn = psn;
        a.max_rd_atomic = initiator_depth;
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
            "ibv_modify_qp(RTS)",
        )
    }

    /// Any state -> ERR: flushes outstanding work requests so none can still touch the
    /// bounce buffer.
    pub(super) fn to_error(&self) {
        let mut a = Self::blank_attr();
        a.qp_state = ib::ibv_qp_state::IBV_QPS_ERR;
        if let Err(e) = self.modify(
            &mut a,
            ib::ibv_qp_attr_mask::IBV_QP_STATE,
            "ibv_modify_qp(ERR)",
        ) {
            tracing::warn!(error = %e, "cannot move a failed queue pair to ERR");
        }
    }

    /// Posts `chain` (already linked) with one doorbell.
    pub(super) fn post_send(&self, chain: &mut [ib::ibv_send_wr]) -> Result<(), FabricError> {
        let mut bad: *mut ib::ibv_send_wr = ptr::null_mut();
        // SAFETY: live QP in RTS; `chain` is a well-formed list whose SGEs point into the
        // registered bounce buffer, and it stays alive for the duration of the call
        // (verbs copies work requests into the send queue).
        let rc = unsafe { ib::ibv_post_send(self.qp, chain.as_mut_ptr(), &mut bad) };
        if rc != 0 {
            return Err(verbs_failed("ibv_post_send", rc));
        }
        Ok(())
    }

    /// Drains the CQ; `Ok(true)` once the completion of `wr_id` was seen.
    fn poll(&self, wr_id: u64) -> Result<bool, FabricError> {
        const BATCH: usize = 16;
        // SAFETY: ibv_wc is plain integers (and a union of integers); all-zero is valid.
        let mut wcs: [ib::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let mut found = false;
        loop {
            // SAFETY: live CQ; room for BATCH completions.
            let n = unsafe { ib::ibv_poll_cq(self.cq, BATCH as c_int, wcs.as_mut_ptr()) };
            if n < 0 {
                return Err(verbs_failed("ibv_poll_cq", 0));
            }
            for wc in &wcs[..n as usize] {
                if wc.status != ib::ibv_wc_status::IBV_WC_SUCCESS {
                    return Err(completion_error(wc));
                }
                found |= wc.wr_id == wr_id;
            }
            if (n as usize) < BATCH {
                return Ok(found);
            }
        }
    }

    /// Asks for an event on the channel at the next completion.
    fn arm(&self) -> Result<(), FabricError> {
        // SAFETY: live CQ with a completion channel.
        let rc = unsafe { ib::ibv_req_notify_cq(self.cq, 0) };
        if rc != 0 {
            return Err(verbs_failed("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    /// Sleeps until the armed CQ signals or `timeout` passes; consumes and acknowledges
    /// the event. `Ok(true)` if there was one.
    fn sleep(&self, timeout: Duration) -> Result<bool, FabricError> {
        // SAFETY: the channel was created with this QP and lives until Drop.
        let fd = unsafe { (*self.channel).fd };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, c_int::MAX as u128) as c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e.into())
            };
        }
        if rc == 0 {
            return Ok(false);
        }
        let mut cq: *mut ib::ibv_cq = ptr::null_mut();
        let mut ctx: *mut std::ffi::c_void = ptr::null_mut();
        // SAFETY: the channel is readable, so this does not block; valid out-pointers.
        let rc = unsafe { ib::ibv_get_cq_event(self.channel, &mut cq, &mut ctx) };
        if rc != 0 {
            return Err(verbs_failed("ibv_get_cq_event", 0));
        }
        // SAFETY: `cq` is our CQ (the only one on this channel); every event is acked so
        // that ibv_destroy_cq does not wait.
        unsafe { ib::ibv_ack_cq_events(cq, 1) };
        Ok(true)
    }

    /// Waits for the completion of `wr_id`: spin, then sleep on the channel.
    pub(super) fn wait_for(
        &self,
        wr_id: u64,
        deadline: Instant,
        closed: &AtomicBool,
        timeout: Duration,
    ) -> Result<(), FabricError> {
        let spin_until = Instant::now() + SPIN;
        let mut armed = false;
        loop {
            if self.poll(wr_id)? {
                return Ok(());
            }
            if closed.load(Ordering::Acquire) {
                return Err(FabricError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FabricError::Timeout(timeout));
            }
            if now < spin_until {
                std::hint::spin_loop();
            } else if !armed {
                // Poll once more after arming: a completion that landed in between
                // raises no event.
                self.arm()?;
                armed = true;
            } else if self.sleep((deadline - now).min(WAIT_SLICE))? {
                armed = false;
            }
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // Children first: the QP uses the CQ, the CQ uses the channel.
        if !self.qp.is_null() {
            // SAFETY: created in `create`, destroyed once.
            let rc = unsafe { ib::ibv_destroy_qp(self.qp) };
            if rc != 0 {
                tracing::warn!(device = %self.device.name, rc, "ibv_destroy_qp failed");
            }
        }
        if !self.cq.is_null() {
            // SAFETY: created in `create`, its QP is gone, every event was acked.
            let rc = unsafe { ib::ibv_destroy_cq(self.cq) };
            if rc != 0 {
                tracing::warn!(device = %self.device.name, rc, "ibv_destroy_cq failed");
            }
        }
        if !self.channel.is_null() {
            // SAFETY: created in `create`, its CQ is gone.
            let rc = unsafe { ib::ibv_destroy_comp_channel(self.channel) };
            if rc != 0 {
                tracing::warn!(device = %self.device.name, rc, "ibv_destroy_comp_channel failed");
            }
        }
    }
}

fn completion_error(wc: &ib::ibv_wc) -> FabricError {
    // SAFETY: ibv_wc_status_str returns a static string for any status value.
    let what = unsafe { CStr::from_ptr(ib::ibv_wc_status_str(wc.status)) }.to_string_lossy();
    let msg = format!(
        "RDMA work request failed: {what} (status {}, vendor error {:#x})",
        wc.status, wc.vendor_err
    );
    use ib::ibv_wc_status as s;
    match wc.status {
        // The peer or the path is gone: a fresh connection may work.
        s::IBV_WC_RETRY_EXC_ERR | s::IBV_WC_RNR_RETRY_EXC_ERR | s::IBV_WC_WR_FLUSH_ERR => {
            FabricError::Io(io::Error::new(io::ErrorKind::ConnectionReset, msg))
        }
        _ => FabricError::Protocol(msg),
    }
}

pub(super) fn random_psn() -> u32 {
    rand::random::<u32>() & 0x00ff_ffff
}
