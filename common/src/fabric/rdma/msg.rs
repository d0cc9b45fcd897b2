//! Side-channel messages (pure; the byte layout is in the `rdma` module doc, "Side-channel
//! messages"): RDMA_CONNECT and RDMA_ACCEPT, their encoders and total decoders, and
//! the pairing of ACCEPT's keys with WELCOME's region descriptors.
//!
//! Keeps the decoders total: a short, long or out-of-range message is a protocol error,
//! never a panic, and ACCEPT's regions must match WELCOME's one to one, in order.

use crate::fabric::wire::Frame;
use crate::fabric::{FabricError, RegionDesc};
use crate::ids::RegionId;

pub(super) const KIND_RDMA_CONNECT: u8 = 30;
pub(super) const KIND_RDMA_ACCEPT: u8 = 31;
pub(super) const KIND_REFUSED: u8 = 5;

/// What one side tells the other about its queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct QpInfo {
    pub(super) qpn: u32,
    pub(super) psn: u32,
    pub(super) lid: u16,
    pub(super) gid: [u8; 16],
    pub(super) mtu: u8,
    pub(super) rd_atomic: u8,
}

/// A server region as the client's NIC addresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RemoteRegion {
    pub(super) desc: RegionDesc,
    pub(super) addr: u64,
    pub(super) rkey: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Accept {
    pub(super) qp: QpInfo,
    pub(super) atomic_cap: u8,
    pub(super) regions: Vec<(RegionId, u64, u64, u32)>,
}

pub(super) const QP_INFO_LEN: usize = 28;
pub(super) const ACCEPT_REGION_LEN: usize = 24;

fn put_qp_info(out: &mut Vec<u8>, qp: &QpInfo) {
    out.extend_from_slice(&qp.qpn.to_le_bytes());
    out.extend_from_slice(&qp.psn.to_le_bytes());
    out.extend_from_slice(&qp.lid.to_le_bytes());
    out.extend_from_slice(&qp.gid);
    out.push(qp.mtu);
    out.push(qp.rd_atomic);
}

/// Prefixes `body` with its length, as every side-channel frame.
fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub(super) fn encode_connect(qp: &QpInfo) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + QP_INFO_LEN);
    body.push(KIND_RDMA_CONNECT);
    put_qp_info(&mut body, qp);
    framed(body)
}

pub(super) fn encode_accept(a: &Accept) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + QP_INFO_LEN + 5 + a.regions.len() * ACCEPT_REGION_LEN);
    body.push(KIND_RDMA_ACCEPT);
    put_qp_info(&mut body, &a.qp);
    body.push(a.atomic_cap);
    body.extend_from_slice(&(a.regions.len() as u32).to_le_bytes());
    for (id, addr, len, rkey) in &a.regions {
        body.extend_from_slice(&id.0.to_le_bytes());
        body.extend_from_slice(&addr.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(&rkey.to_le_bytes());
    }
    framed(body)
}

/// A total reader over a message body: every short read is a protocol error.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FabricError> {
        if self.0.len() < N {
            return Err(FabricError::Protocol(
                "rdma side-channel message truncated".into(),
            ));
        }
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        Ok(head.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8, FabricError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, FabricError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FabricError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FabricError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn finish(self) -> Result<(), FabricError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FabricError::Protocol(format!(
                "{} trailing bytes after an rdma side-channel message",
                self.0.len()
            )))
        }
    }
    fn qp_info(&mut self) -> Result<QpInfo, FabricError> {
        let qp = QpInfo {
            qpn: self.u32()?,
            psn: self.u32()?,
            lid: self.u16()?,
            gid: self.array()?,
            mtu: self.u8()?,
            rd_atomic: self.u8()?,
        };
        if qp.qpn >= 1 << 24 || qp.psn >= 1 << 24 {
            return Err(FabricError::Protocol(
                "queue pair number or PSN over 24 bits".into(),
            ));
        }
        if !(1..=5).contains(&qp.mtu) {
            return Err(FabricError::Protocol(format!(
                "invalid path MTU code {}",
                qp.mtu
            )));
        }
        Ok(qp)
    }
}

pub(super) fn decode_connect(body: &[u8]) -> Result<QpInfo, FabricError> {
    let mut r = Reader(body);
    match r.u8()? {
        KIND_RDMA_CONNECT => {}
        k => {
            return Err(FabricError::Protocol(format!(
                "expected RDMA_CONNECT, got frame kind {k}"
            )))
        }
    }
    let qp = r.qp_info()?;
    r.finish()?;
    Ok(qp)
}

pub(super) fn decode_accept(body: &[u8]) -> Result<Accept, FabricError> {
    let mut r = Reader(body);
    match r.u8()? {
        KIND_RDMA_ACCEPT => {}
        KIND_REFUSED => {
            return Err(match Frame::decode(body) {
                Ok(Frame::Refused { reason }) => FabricError::Refused(reason),
                _ => FabricError::Protocol("malformed REFUSED frame".into()),
            })
        }
        k => {
            return Err(FabricError::Protocol(format!(
                "expected RDMA_ACCEPT, got frame kind {k}"
            )))
        }
    }
    let qp = r.qp_info()?;
    let atomic_cap = r.u8()?;
    let n = r.u32()? as usize;
    if n.saturating_mul(ACCEPT_REGION_LEN) > r.0.len() {
        return Err(FabricError::Protocol(
            "rdma side-channel message truncated".into(),
        ));
    }
    let mut regions = Vec::with_capacity(n);
    for _ in 0..n {
        regions.push((RegionId(r.u32()?), r.u64()?, r.u64()?, r.u32()?));
    }
    r.finish()?;
    Ok(Accept {
        qp,
        atomic_cap,
        regions,
    })
}

/// Pairs WELCOME's descriptors with ACCEPT's keys; anything but a one-to-one match in
/// order is a protocol error.
pub(super) fn remote_regions(
    descs: &[RegionDesc],
    keys: &[(RegionId, u64, u64, u32)],
) -> Result<Vec<RemoteRegion>, FabricError> {
    if descs.len() != keys.len() {
        return Err(FabricError::Protocol(format!(
            "server offered {} regions but sent keys for {}",
            descs.len(),
            keys.len()
        )));
    }
    descs
        .iter()
        .zip(keys)
        .map(|(desc, &(id, addr, len, rkey))| {
            if id != desc.id || len != desc.len || addr.checked_add(len).is_none() {
                return Err(FabricError::Protocol(format!(
                    "rdma keys for region {id} ({len} bytes at {addr:#x}) do not match \
                     the offered region {} ({} bytes)",
                    desc.id, desc.len
                )));
            }
            Ok(RemoteRegion {
                desc: *desc,
                addr,
                rkey,
            })
        })
        .collect()
}
