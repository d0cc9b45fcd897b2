//! The batched one-sided path, pure part (`rdma` module doc, "One-sided batches"):
//! client-side checks of each op against its region's descriptor, the bounce-buffer
//! layout, the fence flags, and linking one chain of work requests for one doorbell.
//!
//! Keeps two rules: an op gets exactly the error the serving side would give on tcp and
//! shm (same checks, same order), and a WRITE or atomic behind a READ in one chain
//! carries `IBV_SEND_FENCE`, so the ops of a batch take effect in order.

use super::msg::RemoteRegion;
use crate::fabric::{Access, Op, OpError, OpOutput, OpResult, RegionDesc};
use rdma_sys as ib;
use std::ptr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WrKind {
    Read,
    Write,
    Cas { expected: u64, new: u64 },
    FetchAdd { add: u64 },
}

/// One work request to post: op `op` of the batch, `len` bytes at `remote_addr`, with
/// its local side at byte `local` of the bounce buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PlannedWr {
    pub(super) op: usize,
    pub(super) kind: WrKind,
    pub(super) remote_addr: u64,
    pub(super) rkey: u32,
    pub(super) local: usize,
    pub(super) len: u32,
}

pub(super) struct Plan {
    /// `Some` for ops settled without the NIC (refused, or empty), `None` for posted ones.
    pub(super) results: Vec<Option<OpResult>>,
    pub(super) wrs: Vec<PlannedWr>,
    pub(super) bounce_len: usize,
}

/// The checks of [`crate::fabric::region::execute`], in its order, against a descriptor.
fn check_op(op: &Op, desc: &RegionDesc) -> Result<(), OpError> {
    let need = match op {
        Op::Read { .. } => Access::READ,
        Op::Write { .. } => Access::WRITE,
        Op::Cas { .. } | Op::FetchAdd { .. } => Access::ATOMIC,
    };
    if !desc.access.contains(need) {
        return Err(OpError::AccessDenied);
    }
    let (offset, len) = match op {
        Op::Read { offset, len, .. } => (*offset, u64::from(*len)),
        Op::Write { offset, data, .. } => (*offset, data.len() as u64),
        Op::Cas { offset, .. } | Op::FetchAdd { offset, .. } => {
            if offset % 8 != 0 {
                return Err(OpError::Misaligned);
            }
            (*offset, 8)
        }
    };
    match offset.checked_add(len) {
        Some(end) if end <= desc.len => Ok(()),
        _ => Err(OpError::OutOfBounds),
    }
}

pub(super) fn plan_batch(ops: &[Op], remotes: &[RemoteRegion]) -> Plan {
    let mut results = Vec::with_capacity(ops.len());
    let mut wrs = Vec::with_capacity(ops.len());
    let mut bounce_len = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let Some(remote) = remotes.iter().find(|r| r.desc.id == op.region()) else {
            results.push(Some(Err(OpError::NoSuchRegion)));
            continue;
        };
        if let Err(e) = check_op(op, &remote.desc) {
            results.push(Some(Err(e)));
            continue;
        }
        let (offset, kind, len) = match op {
            Op::Read { len: 0, .. } => {
                results.push(Some(Ok(OpOutput::Read(Vec::new()))));
                continue;
            }
            Op::Write { data, .. } if data.is_empty() => {
                results.push(Some(Ok(OpOutput::Written)));
                continue;
            }
            Op::Read { offset, len, .. } => (*offset, WrKind::Read, *len),
            Op::Write { offset, data, .. } => (*offset, WrKind::Write, data.len() as u32),
            Op::Cas {
                offset,
                expected,
                new,
                ..
            } => (
                *offset,
                WrKind::Cas {
                    expected: *expected,
                    new: *new,
                },
                8,
            ),
            Op::FetchAdd { offset, add, .. } => (*offset, WrKind::FetchAdd { add: *add }, 8),
        };
        wrs.push(PlannedWr {
            op: i,
            kind,
            // No overflow: offset + len <= desc.len and addr + desc.len was checked.
            remote_addr: remote.addr + offset,
            rkey: remote.rkey,
            local: bounce_len,
            len,
        });
        // 8-aligned slots keep atomic results aligned, as the NIC requires.
        bounce_len += (len as usize).next_multiple_of(8);
        results.push(None);
    }
    Plan {
        results,
        wrs,
        bounce_len,
    }
}

/// Which work requests of one posted chain carry `IBV_SEND_FENCE`: a WRITE or atomic
/// behind a not yet fenced READ (see the `rdma` module doc, "One-sided batches",
/// step 3).
pub(super) fn fence_flags(chain: &[PlannedWr]) -> Vec<bool> {
    let mut reads_unfenced = false;
    chain
        .iter()
        .map(|w| {
            if w.kind == WrKind::Read {
                reads_unfenced = true;
                false
            } else {
                std::mem::take(&mut reads_unfenced)
            }
        })
        .collect()
}

/// Links one chain of work requests; only the last is signalled and carries `wr_id`.
/// The result points into `sges`, which must outlive its posting.
pub(super) fn build_chain(
    chain: &[PlannedWr],
    sges: &mut [ib::ibv_sge],
    wr_id: u64,
) -> Vec<ib::ibv_send_wr> {
    use ib::ibv_send_flags as sf;
    use ib::ibv_wr_opcode as opc;
    let fences = fence_flags(chain);
    let last = chain.len() - 1;
    let mut list: Vec<ib::ibv_send_wr> = Vec::with_capacity(chain.len());
    for (i, w) in chain.iter().enumerate() {
        // SAFETY: ibv_send_wr is integers, raw pointers and unions of those; all-zero is
        // a valid value (null pointers, no flags).
        let mut wr: ib::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = if i == last { wr_id } else { 0 };
        wr.sg_list = &mut sges[i];
        wr.num_sge = 1;
        let mut flags = sf(0);
        if fences[i] {
            flags |= sf::IBV_SEND_FENCE;
        }
        if i == last {
            flags |= sf::IBV_SEND_SIGNALED;
        }
        wr.send_flags = flags.0;
        match w.kind {
            WrKind::Read | WrKind::Write => {
                wr.opcode = if w.kind == WrKind::Read {
                    opc::IBV_WR_RDMA_READ
                } else {
                    opc::IBV_WR_RDMA_WRITE
                };
                wr.wr.rdma = ib::rdma_t {
                    remote_addr: w.remote_addr,
                    rkey: w.rkey,
                };
            }
            WrKind::Cas { expected, new } => {
                wr.opcode = opc::IBV_WR_ATOMIC_CMP_AND_SWP;
                wr.wr.atomic = ib::atomic_t {
                    remote_addr: w.remote_addr,
                    compare_add: expected,
                    swap: new,
                    rkey: w.rkey,
                };
            }
            WrKind::FetchAdd { add } => {
                wr.opcode = opc::IBV_WR_ATOMIC_FETCH_AND_ADD;
                wr.wr.atomic = ib::atomic_t {
                    remote_addr: w.remote_addr,
                    compare_add: add,
                    swap: 0,
                    rkey: w.rkey,
                };
            }
        }
        list.push(wr);
    }
    for i in 0..last {
        let next = ptr::addr_of_mut!(list[i + 1]);
        list[i].next = next;
    }
    list
}
