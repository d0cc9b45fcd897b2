//! The frame codec shared by the `tcp` and `shm` backends (and the `rdma` side channel).
//!
//! All integers are little-endian. A frame on the wire is
//!
//! ```text
//! +----------------+------+-----------------------------+
//! | body len: u32  | kind | payload (depends on kind)   |
//! +----------------+------+-----------------------------+
//!                  |<------------- body ------------->|
//! ```
//!
//! `body len` is at most [`MAX_FRAME`]; a longer announced length closes the connection
//! before anything is allocated. Payloads by kind:
//!
//! | kind | name | payload |
//! |---|---|---|
//! | 1 | HELLO | magic `"DSBF"`, version u16, batching u8 (0/1), client nonce [32] |
//! | 2 | CHALLENGE | version u16, server nonce [32], server mac [32] |
//! | 3 | AUTH | client mac [32] |
//! | 4 | WELCOME | connection id u64, region count u32, then per region: id u32, len u64, access u8 |
//! | 5 | REFUSED | reason: len u32 + UTF-8 |
//! | 10 | ONESIDED_REQ | batch id u64, op count u32, ops |
//! | 11 | ONESIDED_RESP | batch id u64, result count u32, results |
//! | 20 | RPC_REQ | message id u64 (0: no ack wanted), call count u32, then per call: call id u64, len u32, bytes |
//! | 21 | RPC_RESP | reply count u32, then per reply: call id u64, status u8 (0 ok, 1 error), len u32, bytes |
//! | 22 | RPC_ACK | message id u64: the server has handed that message's batch to its service |
//!
//! An op is `opcode u8, region u32, offset u64` followed by READ(1): len u32;
//! WRITE(2): len u32 + bytes; CAS(3): expected u64, new u64; FETCH_ADD(4): add u64.
//! A result is `status u8` (0 ok, 1 no such region, 2 out of bounds, 3 access denied,
//! 4 misaligned) and, when ok, `kind u8` then READ(1): len u32 + bytes; WRITE(2): nothing;
//! CAS(3)/FETCH_ADD(4): previous u64.
//!
//! Decoding is total: any byte string yields a frame or a [`WireError`], never a panic,
//! and counts are checked against the bytes that remain before anything is allocated.

use super::{Access, Op, OpError, OpOutput, OpResult, RegionDesc};
use crate::ids::RegionId;
use std::io::{self, Read};

pub const MAGIC: [u8; 4] = *b"DSBF";
/// Protocol version spoken by this build.
pub const VERSION: u16 = 2;
/// Largest frame body accepted or produced (16 MiB).
pub const MAX_FRAME: usize = 16 << 20;
/// Most ops in one one-sided batch.
pub const MAX_BATCH_OPS: usize = 65_536;

pub type Nonce = [u8; 32];
pub type Mac = [u8; 32];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello {
        magic: [u8; 4],
        version: u16,
        batching: bool,
        client_nonce: Nonce,
    },
    Challenge {
        version: u16,
        server_nonce: Nonce,
        server_mac: Mac,
    },
    Auth {
        client_mac: Mac,
    },
    Welcome {
        conn_id: u64,
        regions: Vec<RegionDesc>,
    },
    Refused {
        reason: String,
    },
    OneSidedReq {
        batch_id: u64,
        ops: Vec<Op>,
    },
    OneSidedResp {
        batch_id: u64,
        results: Vec<OpResult>,
    },
    RpcReq {
        msg_id: u64,
        calls: Vec<(u64, Vec<u8>)>,
    },
    RpcResp {
        replies: Vec<(u64, Result<Vec<u8>, String>)>,
    },
    RpcAck {
        msg_id: u64,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame truncated")]
    Truncated,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("{0} trailing bytes after frame")]
    Trailing(usize),
}

const HELLO: u8 = 1;
const CHALLENGE: u8 = 2;
const AUTH: u8 = 3;
const WELCOME: u8 = 4;
const REFUSED: u8 = 5;
const ONESIDED_REQ: u8 = 10;
const ONESIDED_RESP: u8 = 11;
const RPC_REQ: u8 = 20;
const RPC_RESP: u8 = 21;
const RPC_ACK: u8 = 22;

const OP_READ: u8 = 1;
const OP_WRITE: u8 = 2;
const OP_CAS: u8 = 3;
const OP_FADD: u8 = 4;

fn put_u16(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(o: &mut Vec<u8>, b: &[u8]) {
    put_u32(o, b.len() as u32);
    o.extend_from_slice(b);
}

/// Encodes one op (also used to size batches).
pub fn encode_op(o: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Read {
            region,
            offset,
            len,
        } => {
            o.push(OP_READ);
            put_u32(o, region.0);
            put_u64(o, *offset);
            put_u32(o, *len);
        }
        Op::Write {
            region,
            offset,
            data,
        } => {
            o.push(OP_WRITE);
            put_u32(o, region.0);
            put_u64(o, *offset);
            put_bytes(o, data);
        }
        Op::Cas {
            region,
            offset,
            expected,
            new,
        } => {
            o.push(OP_CAS);
            put_u32(o, region.0);
            put_u64(o, *offset);
            put_u64(o, *expected);
            put_u64(o, *new);
        }
        Op::FetchAdd {
            region,
            offset,
            add,
        } => {
            o.push(OP_FADD);
            put_u32(o, region.0);
            put_u64(o, *offset);
            put_u64(o, *add);
        }
    }
}

fn encode_result(o: &mut Vec<u8>, r: &OpResult) {
    match r {
        Err(e) => o.push(match e {
            OpError::NoSuchRegion => 1,
            OpError::OutOfBounds => 2,
            OpError::AccessDenied => 3,
            OpError::Misaligned => 4,
        }),
        Ok(out) => {
            o.push(0);
            match out {
                OpOutput::Read(b) => {
                    o.push(OP_READ);
                    put_bytes(o, b);
                }
                OpOutput::Written => o.push(OP_WRITE),
                OpOutput::Cas { previous } => {
                    o.push(OP_CAS);
                    put_u64(o, *previous);
                }
                OpOutput::FetchAdd { previous } => {
                    o.push(OP_FADD);
                    put_u64(o, *previous);
                }
            }
        }
    }
}

impl Frame {
    /// Appends the whole frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello {
                magic,
                version,
                batching,
                client_nonce,
            } => {
                out.push(HELLO);
                out.extend_from_slice(magic);
                put_u16(out, *version);
                out.push(*batching as u8);
                out.extend_from_slice(client_nonce);
            }
            Frame::Challenge {
                version,
                server_nonce,
                server_mac,
            } => {
                out.push(CHALLENGE);
                put_u16(out, *version);
                out.extend_from_slice(server_nonce);
                out.extend_from_slice(server_mac);
            }
            Frame::Auth { client_mac } => {
                out.push(AUTH);
                out.extend_from_slice(client_mac);
            }
            Frame::Welcome { conn_id, regions } => {
                out.push(WELCOME);
                put_u64(out, *conn_id);
                put_u32(out, regions.len() as u32);
                for r in regions {
                    put_u32(out, r.id.0);
                    put_u64(out, r.len);
                    out.push(r.access.bits());
                }
            }
            Frame::Refused { reason } => {
                out.push(REFUSED);
                put_bytes(out, reason.as_bytes());
            }
            Frame::OneSidedReq { batch_id, ops } => {
                out.push(ONESIDED_REQ);
                put_u64(out, *batch_id);
                put_u32(out, ops.len() as u32);
                for op in ops {
                    encode_op(out, op);
                }
            }
            Frame::OneSidedResp { batch_id, results } => {
                out.push(ONESIDED_RESP);
                put_u64(out, *batch_id);
                put_u32(out, results.len() as u32);
                for r in results {
                    encode_result(out, r);
                }
            }
            Frame::RpcReq { msg_id, calls } => {
                out.push(RPC_REQ);
                put_u64(out, *msg_id);
                put_u32(out, calls.len() as u32);
                for (id, p) in calls {
                    put_u64(out, *id);
                    put_bytes(out, p);
                }
            }
            Frame::RpcResp { replies } => {
                out.push(RPC_RESP);
                put_u32(out, replies.len() as u32);
                for (id, r) in replies {
                    put_u64(out, *id);
                    match r {
                        Ok(p) => {
                            out.push(0);
                            put_bytes(out, p);
                        }
                        Err(e) => {
                            out.push(1);
                            put_bytes(out, e.as_bytes());
                        }
                    }
                }
            }
            Frame::RpcAck { msg_id } => {
                out.push(RPC_ACK);
                put_u64(out, *msg_id);
            }
        }
        let body = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&body.to_le_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes one frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, WireError> {
        if body.len() > MAX_FRAME {
            return Err(WireError::TooLarge(body.len()));
        }
        let mut c = Cursor { b: body };
        let kind = c.u8()?;
        let f = match kind {
            HELLO => Frame::Hello {
                magic: c.array()?,
                version: c.u16()?,
                batching: c.bool()?,
                client_nonce: c.array()?,
            },
            CHALLENGE => Frame::Challenge {
                version: c.u16()?,
                server_nonce: c.array()?,
                server_mac: c.array()?,
            },
            AUTH => Frame::Auth {
                client_mac: c.array()?,
            },
            WELCOME => {
                let conn_id = c.u64()?;
                let n = c.count(13)?;
                let mut regions = Vec::with_capacity(n);
                for _ in 0..n {
                    regions.push(RegionDesc {
                        id: RegionId(c.u32()?),
                        len: c.u64()?,
                        access: Access::from_bits(c.u8()?)
                            .ok_or(WireError::Invalid("access bits"))?,
                    });
                }
                Frame::Welcome { conn_id, regions }
            }
            REFUSED => Frame::Refused {
                reason: c.string()?,
            },
            ONESIDED_REQ => {
                let batch_id = c.u64()?;
                let n = c.count(17)?;
                if n > MAX_BATCH_OPS {
                    return Err(WireError::Invalid("too many ops in batch"));
                }
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    let code = c.u8()?;
                    let region = RegionId(c.u32()?);
                    let offset = c.u64()?;
                    ops.push(match code {
                        OP_READ => Op::Read {
                            region,
                            offset,
                            len: c.u32()?,
                        },
                        OP_WRITE => Op::Write {
                            region,
                            offset,
                            data: c.bytes()?.to_vec(),
                        },
                        OP_CAS => Op::Cas {
                            region,
                            offset,
                            expected: c.u64()?,
                            new: c.u64()?,
                        },
                        OP_FADD => Op::FetchAdd {
                            region,
                            offset,
                            add: c.u64()?,
                        },
                        _ => return Err(WireError::Invalid("opcode")),
                    });
                }
                Frame::OneSidedReq { batch_id, ops }
            }
            ONESIDED_RESP => {
                let batch_id = c.u64()?;
                let n = c.count(1)?;
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    results.push(match c.u8()? {
                        0 => Ok(match c.u8()? {
                            OP_READ => OpOutput::Read(c.bytes()?.to_vec()),
                            OP_WRITE => OpOutput::Written,
                            OP_CAS => OpOutput::Cas { previous: c.u64()? },
                            OP_FADD => OpOutput::FetchAdd { previous: c.u64()? },
                            _ => return Err(WireError::Invalid("result kind")),
                        }),
                        1 => Err(OpError::NoSuchRegion),
                        2 => Err(OpError::OutOfBounds),
                        3 => Err(OpError::AccessDenied),
                        4 => Err(OpError::Misaligned),
                        _ => return Err(WireError::Invalid("result status")),
                    });
                }
                Frame::OneSidedResp { batch_id, results }
            }
            RPC_REQ => {
                let msg_id = c.u64()?;
                let n = c.count(12)?;
                let mut calls = Vec::with_capacity(n);
                for _ in 0..n {
                    calls.push((c.u64()?, c.bytes()?.to_vec()));
                }
                Frame::RpcReq { msg_id, calls }
            }
            RPC_RESP => {
                let n = c.count(13)?;
                let mut replies = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = c.u64()?;
                    let r = match c.u8()? {
                        0 => Ok(c.bytes()?.to_vec()),
                        1 => Err(c.string()?),
                        _ => return Err(WireError::Invalid("reply status")),
                    };
                    replies.push((id, r));
                }
                Frame::RpcResp { replies }
            }
            RPC_ACK => Frame::RpcAck { msg_id: c.u64()? },
            k => return Err(WireError::UnknownKind(k)),
        };
        if !c.b.is_empty() {
            return Err(WireError::Trailing(c.b.len()));
        }
        Ok(f)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid("bool")),
        }
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, WireError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| WireError::Invalid("utf-8"))
    }
    /// A count of items each at least `min` bytes long; bounded by what remains.
    fn count(&mut self, min: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.b.len() {
            return Err(WireError::Truncated);
        }
        Ok(n)
    }
}

/// Reads one frame body from a byte stream. `Ok(None)` is a clean end of stream at a
/// frame boundary.
pub fn read_frame<R: Read + ?Sized>(r: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            WireError::TooLarge(len),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(f: Frame) {
        let bytes = f.to_bytes();
        assert_eq!(Frame::decode(&bytes[4..]).unwrap(), f);
    }

    #[test]
    fn frames_round_trip() {
        roundtrip(Frame::Hello {
            magic: MAGIC,
            version: 1,
            batching: true,
            client_nonce: [7; 32],
        });
        roundtrip(Frame::Welcome {
            conn_id: 9,
            regions: vec![RegionDesc {
                id: RegionId(1),
                len: 4096,
                access: Access::ALL,
            }],
        });
        roundtrip(Frame::OneSidedReq {
            batch_id: 3,
            ops: vec![
                Op::Read {
                    region: RegionId(0),
                    offset: 8,
                    len: 16,
                },
                Op::Write {
                    region: RegionId(1),
                    offset: 0,
                    data: vec![1, 2, 3],
                },
                Op::Cas {
                    region: RegionId(2),
                    offset: 16,
                    expected: 1,
                    new: 2,
                },
                Op::FetchAdd {
                    region: RegionId(2),
                    offset: 24,
                    add: 5,
                },
            ],
        });
        roundtrip(Frame::OneSidedResp {
            batch_id: 3,
            results: vec![
                Ok(OpOutput::Read(vec![9; 16])),
                Ok(OpOutput::Written),
                Ok(OpOutput::Cas { previous: 1 }),
                Err(OpError::OutOfBounds),
            ],
        });
        roundtrip(Frame::RpcReq {
            msg_id: 4,
            calls: vec![(1, vec![1, 2]), (2, vec![])],
        });
        roundtrip(Frame::RpcAck { msg_id: 4 });
        roundtrip(Frame::RpcResp {
            replies: vec![(1, Ok(vec![1])), (2, Err("boom".into()))],
        });
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut stream: &[u8] = &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3];
        let err = read_frame(&mut stream, MAX_FRAME).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// The decoder is total: random bytes give an error or a frame that re-encodes
        /// to the same bytes.
        #[test]
        fn decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(f) = Frame::decode(&body) {
                prop_assert_eq!(&f.to_bytes()[4..], &body[..]);
            }
        }

        /// Random bodies that start with a valid kind byte exercise deeper paths.
        #[test]
        fn decoder_never_panics_on_typed_garbage(
            kind in prop::sample::select(vec![1u8, 2, 3, 4, 5, 10, 11, 20, 21, 22]),
            rest in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut body = vec![kind];
            body.extend(rest);
            let _ = Frame::decode(&body);
        }
    }

    fn any_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn any_op() -> impl Strategy<Value = Op> {
        let at = (any::<u32>().prop_map(RegionId), any::<u64>());
        prop_oneof![
            (at.clone(), any::<u32>()).prop_map(|((region, offset), len)| Op::Read {
                region,
                offset,
                len
            }),
            (at.clone(), any_bytes(24)).prop_map(|((region, offset), data)| Op::Write {
                region,
                offset,
                data
            }),
            (at.clone(), any::<u64>(), any::<u64>()).prop_map(
                |((region, offset), expected, new)| {
                    Op::Cas {
                        region,
                        offset,
                        expected,
                        new,
                    }
                }
            ),
            (at, any::<u64>()).prop_map(|((region, offset), add)| Op::FetchAdd {
                region,
                offset,
                add
            }),
        ]
    }

    fn any_result() -> impl Strategy<Value = OpResult> {
        prop_oneof![
            any_bytes(24).prop_map(|b| Ok(OpOutput::Read(b))),
            Just(Ok(OpOutput::Written)),
            any::<u64>().prop_map(|previous| Ok(OpOutput::Cas { previous })),
            any::<u64>().prop_map(|previous| Ok(OpOutput::FetchAdd { previous })),
            Just(Err(OpError::NoSuchRegion)),
            Just(Err(OpError::OutOfBounds)),
            Just(Err(OpError::AccessDenied)),
            Just(Err(OpError::Misaligned)),
        ]
    }

    /// Every kind of frame, with the field values the encoder can produce.
    fn any_frame() -> impl Strategy<Value = Frame> {
        let nonce = any::<[u8; 32]>();
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>(), any::<bool>(), nonce).prop_map(
                |(magic, version, batching, client_nonce)| Frame::Hello {
                    magic,
                    version,
                    batching,
                    client_nonce
                }
            ),
            (any::<u16>(), nonce, nonce).prop_map(|(version, server_nonce, server_mac)| {
                Frame::Challenge {
                    version,
                    server_nonce,
                    server_mac,
                }
            }),
            nonce.prop_map(|client_mac| Frame::Auth { client_mac }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u32>(), any::<u64>(), 0u8..8), 0..4)
            )
                .prop_map(|(conn_id, rs)| Frame::Welcome {
                    conn_id,
                    regions: rs
                        .into_iter()
                        .map(|(id, len, a)| RegionDesc {
                            id: RegionId(id),
                            len,
                            access: Access::from_bits(a).expect("3 bits"),
                        })
                        .collect(),
                }),
            ".{0,16}".prop_map(|reason| Frame::Refused { reason }),
            (any::<u64>(), proptest::collection::vec(any_op(), 0..5))
                .prop_map(|(batch_id, ops)| Frame::OneSidedReq { batch_id, ops }),
            (any::<u64>(), proptest::collection::vec(any_result(), 0..5))
                .prop_map(|(batch_id, results)| Frame::OneSidedResp { batch_id, results }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), any_bytes(16)), 0..4)
            )
                .prop_map(|(msg_id, calls)| Frame::RpcReq { msg_id, calls }),
            proptest::collection::vec(
                (
                    any::<u64>(),
                    prop_oneof![any_bytes(16).prop_map(Ok), ".{0,8}".prop_map(Err)]
                ),
                0..4
            )
            .prop_map(|replies| Frame::RpcResp { replies }),
            any::<u64>().prop_map(|msg_id| Frame::RpcAck { msg_id }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn any_frame_round_trips(f in any_frame()) {
            let bytes = f.to_bytes();
            prop_assert_eq!(bytes.len() - 4, u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize);
            prop_assert_eq!(Frame::decode(&bytes[4..]), Ok(f));
        }

        /// A valid frame with one byte changed, or cut short, or extended: an error or
        /// a frame that re-encodes to exactly those bytes (the encoding is canonical).
        #[test]
        fn damaged_frames_never_panic(
            f in any_frame(),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
            cut in any::<prop::sample::Index>(),
            extra in any::<u8>(),
        ) {
            let bytes = f.to_bytes();
            let body = &bytes[4..];
            let mut flipped = body.to_vec();
            flipped[at.index(body.len())] ^= x;
            if let Ok(g) = Frame::decode(&flipped) {
                prop_assert_eq!(&g.to_bytes()[4..], &flipped[..]);
            }
            prop_assert!(Frame::decode(&body[..cut.index(body.len())]).is_err());
            let mut longer = body.to_vec();
            longer.push(extra);
            prop_assert!(Frame::decode(&longer).is_err());
        }

        /// The stream reader, fed any bytes: a body no longer than the cap, a clean
        /// end, or an error.
        #[test]
        fn read_frame_never_panics(stream in any_bytes(64), max in 0usize..32) {
            let mut r = &stream[..];
            while let Ok(Some(body)) = read_frame(&mut r, max) {
                prop_assert!(body.len() <= max);
            }
        }
    }
}
