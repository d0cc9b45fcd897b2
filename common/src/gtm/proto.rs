//! The GTM's RPC messages and their codec.
//!
//! One RPC payload carries exactly one request or one response; the fabric batches many
//! payloads into one message. Integers are little-endian; every message is
//! `opcode (1 byte) | fields` with a fixed length per opcode, except the error response
//! and the two `Outcomes` messages (length given by their count field).
//! The decoder is total: any byte string yields a message or a [`DecodeError`], never a
//! panic, and trailing bytes are an error.
//!
//! ## Requests (client -> GTM)
//!
//! ```text
//! op  name        bytes  layout after the opcode
//! 1   Register      5    node u32
//! 2   Heartbeat     9    node u32 | epoch u32
//! 3   Begin         9    node u32 | epoch u32
//! 4   Timestamps    5    count u32            (1 ..= MAX_TIMESTAMPS_PER_REQUEST)
//! 5   Commit       17    node u32 | epoch u32 | txn u64
//! 6   Abort        17    node u32 | epoch u32 | txn u64
//! 7   GcWatermark   1    -
//! 8   Leave         9    node u32 | epoch u32
//! 9   Outcomes    3+8n   count u16 (n, 1 ..= MAX_OUTCOMES_PER_REQUEST) |
//!                        n x txn u64
//! 10  FreezeTarget  9    node u32 | epoch u32
//! 11  Frozen       17    node u32 | epoch u32 | below u64
//! 12  FreezeProgress 17+p node u32 | epoch u32 | below u64 | point (p bytes)
//! ```
//!
//! A sweep point (`point`, [`SweepPoint`]) is `tag u8` and, for tag 1 only, a place:
//!
//! ```text
//! 0 Start   nothing swept yet
//! 1 In      table_len u16 | table (UTF-8, 1 ..= MAX_SWEEP_TABLE bytes) |
//!           has_after u8 (0: the table is not started; 1: key_len u16 | key
//!           (0 ..= MAX_SWEEP_KEY bytes): every row up to it is swept)
//! 2 Done    every table is swept
//! ```
//!
//! `Outcomes` asks the GTM itself (not the status-table region) what became of
//! transactions; clients send it for entries whose slot in the ring was reused
//! ([`TxnStatus::Retired`]), see [`GtmClient::txn_status_batch`](super::GtmClient::txn_status_batch).
//!
//! `FreezeTarget` and `Frozen` are the freeze sweep (`gtm::freeze`): a compute node asks
//! for the sweep and its target (the GTM grants one sweep at a time, when one is due;
//! otherwise `Busy`), stamps every row version written by a txn below the target, makes
//! that durable and reports `Frozen`; the GTM may then forget those txns' outcomes.
//! On the way it reports how far it got (`FreezeProgress`, at most about once a
//! second): the GTM keeps that point with the grant, on disk, and hands it out with the
//! target, so a sweep cut short by a fault (of the sweeper, a storage node or the GTM
//! itself) resumes where it stopped, on whichever node asks next.
//!
//! ## Responses (GTM -> client)
//!
//! ```text
//! tag name          bytes  layout after the tag
//! 1   Registered     25    epoch u32 | lease_ms u32 | status_region u32 |
//!                          status_capacity u64 | reserved u32 (must be 0)
//! 2   LeaseRenewed    5    lease_ms u32
//! 3   Begun          17    txn u64 | snapshot u64
//! 4   Timestamps     13    first u64 | count u32   (first, first+1, .., first+count-1)
//! 5   Committed       9    commit_ts u64
//! 6   Aborted         1    -   (the transaction is aborted: by this call or earlier)
//! 7   GcWatermark     9    ts u64
//! 8   Left            1    -
//! 9   Error       4+n      kind u8 | len u16 | message (n = len bytes of UTF-8)
//! 10  Outcomes    3+9n     count u16 (n, 1 ..= MAX_OUTCOMES_PER_REQUEST) |
//!                          n x (status u8 | ts u64), in the order of the request's txns
//! 11  FreezeTarget  9+p    below u64 | point (p bytes: resume the sweep after it)
//!                          (sweep txns below this id; every one has ended)
//! 12  Frozen          1    -   (the report was taken)
//! 13  ProgressNoted   1    -   (the sweep point is kept, durably)
//! ```
//!
//! `Outcomes` status bytes (`ts` must be 0 where no timestamp is listed):
//!
//! ```text
//! 0 Unknown        not begun (yet): no such transaction was issued, or its id was skipped
//! 1 InProgress
//! 2 Committing     ts = commit timestamp; the record is on its way to disk
//! 3 Committed      ts = commit timestamp
//! 4 Aborted        aborted, never committed, or issued before a GTM restart without a
//!                  durable commit record
//! 5 Retired        the GTM no longer knows the outcome: the txn is below the freeze
//!                  floor (every version it wrote was stamped, see `gtm::freeze`)
//! ```
//!
//! Error kinds: 1 Fenced (the node's epoch is not the live one or its lease ran out),
//! 2 UnknownTxn (not in progress at the GTM, or not the caller's), 3 BadRequest,
//! 4 Busy (retryable: e.g. the status table has no free slot), 5 Internal.

use super::TxnStatus;
use crate::ids::{Epoch, NodeId, RegionId, Timestamp, TxnId};

/// Most timestamps one request may ask for.
pub const MAX_TIMESTAMPS_PER_REQUEST: u32 = 1 << 16;
/// Most transactions one `Outcomes` request may name (request 32 KiB, answer 36 KiB).
pub const MAX_OUTCOMES_PER_REQUEST: usize = 4096;
/// Longest error message carried (longer ones are cut on a char boundary).
pub const MAX_ERROR_MESSAGE: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Register {
        node: NodeId,
    },
    Heartbeat {
        node: NodeId,
        epoch: Epoch,
    },
    Begin {
        node: NodeId,
        epoch: Epoch,
    },
    Timestamps {
        count: u32,
    },
    Commit {
        node: NodeId,
        epoch: Epoch,
        txn: TxnId,
    },
    Abort {
        node: NodeId,
        epoch: Epoch,
        txn: TxnId,
    },
    GcWatermark,
    Leave {
        node: NodeId,
        epoch: Epoch,
    },
    /// What became of these transactions (1 ..= [`MAX_OUTCOMES_PER_REQUEST`] of them).
    Outcomes {
        txns: Vec<TxnId>,
    },
    /// May this node run the freeze sweep now, and below which txn id?
    FreezeTarget {
        node: NodeId,
        epoch: Epoch,
    },
    /// The sweep granted to this node is done: every row version written by a txn below
    /// `below` is stamped (or dropped) and durable.
    Frozen {
        node: NodeId,
        epoch: Epoch,
        below: TxnId,
    },
    /// The sweep granted to this node has made durable everything up to `point`.
    FreezeProgress {
        node: NodeId,
        epoch: Epoch,
        below: TxnId,
        point: SweepPoint,
    },
}

/// Longest table name a sweep point may carry.
pub const MAX_SWEEP_TABLE: usize = 1024;
/// Longest key a sweep point may carry (longer than any B-link entry).
pub const MAX_SWEEP_KEY: usize = 8192;

/// How far a freeze sweep got (tables are swept in name order, each in key order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SweepPoint {
    /// Nothing is swept yet.
    #[default]
    Start,
    /// Every table before `table` (in name order) is swept, and of `table` every row up
    /// to `after` (`None`: none of it).
    In {
        table: String,
        after: Option<Vec<u8>>,
    },
    /// Every table is swept.
    Done,
}

impl SweepPoint {
    /// Appends the wire form (module docs). Fields past their caps are encoded as they
    /// are; the decoder rejects them.
    pub fn encode_into(&self, b: &mut Vec<u8>) {
        match self {
            SweepPoint::Start => b.push(0),
            SweepPoint::Done => b.push(2),
            SweepPoint::In { table, after } => {
                b.push(1);
                b.extend_from_slice(&(table.len() as u16).to_le_bytes());
                b.extend_from_slice(table.as_bytes());
                match after {
                    None => b.push(0),
                    Some(k) => {
                        b.push(1);
                        b.extend_from_slice(&(k.len() as u16).to_le_bytes());
                        b.extend_from_slice(k);
                    }
                }
            }
        }
    }

    /// Decodes a point that must fill `buf` exactly.
    pub fn decode(buf: &[u8]) -> Result<SweepPoint, DecodeError> {
        let short = DecodeError::BadField("sweep point cut short");
        let (&tag, rest) = buf.split_first().ok_or(short.clone())?;
        let point = match tag {
            0 | 2 if rest.is_empty() => {
                if tag == 0 {
                    SweepPoint::Start
                } else {
                    SweepPoint::Done
                }
            }
            0 | 2 => return Err(DecodeError::BadField("bytes after a sweep point")),
            1 => {
                let (len, rest) = split_u16(rest).ok_or(short.clone())?;
                if len == 0 || len > MAX_SWEEP_TABLE {
                    return Err(DecodeError::BadField("sweep table name length"));
                }
                if rest.len() < len {
                    return Err(short);
                }
                let (name, rest) = rest.split_at(len);
                let table = String::from_utf8(name.to_vec())
                    .map_err(|_| DecodeError::BadField("sweep table name is not UTF-8"))?;
                let (&has, rest) = rest.split_first().ok_or(short.clone())?;
                let after = match has {
                    0 if rest.is_empty() => None,
                    1 => {
                        let (len, rest) = split_u16(rest).ok_or(short.clone())?;
                        if len > MAX_SWEEP_KEY {
                            return Err(DecodeError::BadField("sweep key length"));
                        }
                        if rest.len() != len {
                            return Err(DecodeError::BadField("sweep key length"));
                        }
                        Some(rest.to_vec())
                    }
                    0 => return Err(DecodeError::BadField("bytes after a sweep point")),
                    _ => return Err(DecodeError::BadField("sweep key flag")),
                };
                SweepPoint::In { table, after }
            }
            _ => return Err(DecodeError::BadField("sweep point tag")),
        };
        Ok(point)
    }
}

fn split_u16(b: &[u8]) -> Option<(usize, &[u8])> {
    (b.len() >= 2).then(|| (u16::from_le_bytes([b[0], b[1]]) as usize, &b[2..]))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Fenced = 1,
    UnknownTxn = 2,
    BadRequest = 3,
    Busy = 4,
    Internal = 5,
}

impl ErrorKind {
    fn from_u8(b: u8) -> Option<ErrorKind> {
        Some(match b {
            1 => ErrorKind::Fenced,
            2 => ErrorKind::UnknownTxn,
            3 => ErrorKind::BadRequest,
            4 => ErrorKind::Busy,
            5 => ErrorKind::Internal,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Registered {
        epoch: Epoch,
        lease_ms: u32,
        status_region: RegionId,
        status_capacity: u64,
    },
    LeaseRenewed {
        lease_ms: u32,
    },
    Begun {
        txn: TxnId,
        snapshot: Timestamp,
    },
    Timestamps {
        first: Timestamp,
        count: u32,
    },
    Committed {
        commit_ts: Timestamp,
    },
    Aborted,
    GcWatermark {
        ts: Timestamp,
    },
    Left,
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// One status per txn of the `Outcomes` request, in its order.
    Outcomes(Vec<TxnStatus>),
    /// Sweep now: stamp the versions of every txn below `below` (all of them ended),
    /// going on after `resume` (what an earlier holder of the grant made durable).
    FreezeTarget {
        below: TxnId,
        resume: SweepPoint,
    },
    Frozen,
    ProgressNoted,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("message of opcode {op} is {got} bytes, expected {want}")]
    BadLength { op: u8, got: usize, want: usize },
    #[error("bad field: {0}")]
    BadField(&'static str),
}

/// A bounds-checked little-endian reader over one message.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        // Callers check the total length first; slicing here cannot go out of bounds.
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().expect("2 bytes"))
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
}

/// The count field of an `Outcomes` message (bytes 1..3), checked against the cap.
fn outcomes_count(op: u8, buf: &[u8]) -> Result<usize, DecodeError> {
    if buf.len() < 3 {
        return Err(DecodeError::BadLength {
            op,
            got: buf.len(),
            want: 3,
        });
    }
    let n = u16::from_le_bytes([buf[1], buf[2]]) as usize;
    if n == 0 || n > MAX_OUTCOMES_PER_REQUEST {
        return Err(DecodeError::BadField("outcome count out of range"));
    }
    Ok(n)
}

/// `Outcomes` status byte and timestamp word of one status.
fn status_to_wire(s: TxnStatus) -> (u8, u64) {
    match s {
        TxnStatus::Unknown => (0, 0),
        TxnStatus::InProgress => (1, 0),
        TxnStatus::Committing(ts) => (2, ts.0),
        TxnStatus::Committed(ts) => (3, ts.0),
        TxnStatus::Aborted => (4, 0),
        TxnStatus::Retired => (5, 0),
    }
}

fn status_from_wire(code: u8, ts: u64) -> Result<TxnStatus, DecodeError> {
    let s = match code {
        0 => TxnStatus::Unknown,
        1 => TxnStatus::InProgress,
        2 => return Ok(TxnStatus::Committing(Timestamp(ts))),
        3 => return Ok(TxnStatus::Committed(Timestamp(ts))),
        4 => TxnStatus::Aborted,
        5 => TxnStatus::Retired,
        _ => return Err(DecodeError::BadField("outcome status")),
    };
    if ts != 0 {
        return Err(DecodeError::BadField("timestamp of a status that has none"));
    }
    Ok(s)
}

/// A cursor past the opcode of a message that must be at least `want` bytes long.
fn at_least(op: u8, buf: &[u8], want: usize) -> Result<Cursor<'_>, DecodeError> {
    if buf.len() < want {
        return Err(DecodeError::BadLength {
            op,
            got: buf.len(),
            want,
        });
    }
    Ok(Cursor { buf, pos: 1 })
}

fn expect_len(op: u8, buf: &[u8], want: usize) -> Result<Cursor<'_>, DecodeError> {
    if buf.len() != want {
        return Err(DecodeError::BadLength {
            op,
            got: buf.len(),
            want,
        });
    }
    Ok(Cursor { buf, pos: 1 })
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(17);
        match self {
            Request::Register { node } => {
                b.push(1);
                b.extend_from_slice(&node.0.to_le_bytes());
            }
            Request::Heartbeat { node, epoch } => {
                b.push(2);
                b.extend_from_slice(&node.0.to_le_bytes());
                b.extend_from_slice(&epoch.0.to_le_bytes());
            }
            Request::Begin { node, epoch } => {
                b.push(3);
                b.extend_from_slice(&node.0.to_le_bytes());
                b.extend_from_slice(&epoch.0.to_le_bytes());
            }
            Request::Timestamps { count } => {
                b.push(4);
                b.extend_from_slice(&count.to_le_bytes());
            }
            Request::Commit { node, epoch, txn } | Request::Abort { node, epoch, txn } => {
                b.push(if matches!(self, Request::Commit { .. }) {
                    5
                } else {
                    6
                });
                b.extend_from_slice(&node.0.to_le_bytes());
                b.extend_from_slice(&epoch.0.to_le_bytes());
                b.extend_from_slice(&txn.0.to_le_bytes());
            }
            Request::GcWatermark => b.push(7),
            Request::Leave { node, epoch } => {
                b.push(8);
                b.extend_from_slice(&node.0.to_le_bytes());
                b.extend_from_slice(&epoch.0.to_le_bytes());
            }
            Request::FreezeTarget { node, epoch } => {
                b.push(10);
                b.extend_from_slice(&node.0.to_le_bytes());
                b.extend_from_slice(&epoch.0.to_le_bytes());
            }
            Request::Frozen { node, epoch, below } => {
                b.push(11);
                b.extend_from_slice(&node.0.to_le_bytes());
                b.extend_from_slice(&epoch.0.to_le_bytes());
                b.extend_from_slice(&below.0.to_le_bytes());
            }
            Request::FreezeProgress {
                node,
                epoch,
                below,
                point,
            } => {
                b.push(12);
                b.extend_from_slice(&node.0.to_le_bytes());
                b.extend_from_slice(&epoch.0.to_le_bytes());
                b.extend_from_slice(&below.0.to_le_bytes());
                point.encode_into(&mut b);
            }
            Request::Outcomes { txns } => {
                // An out-of-range count is encoded as is; the decoder rejects it.
                b.reserve(3 + 8 * txns.len());
                b.push(9);
                b.extend_from_slice(&(txns.len() as u16).to_le_bytes());
                for t in txns {
                    b.extend_from_slice(&t.0.to_le_bytes());
                }
            }
        }
        b
    }

    pub fn decode(buf: &[u8]) -> Result<Request, DecodeError> {
        let op = *buf.first().ok_or(DecodeError::Empty)?;
        Ok(match op {
            1 => {
                let mut c = expect_len(op, buf, 5)?;
                Request::Register {
                    node: NodeId(c.u32()),
                }
            }
            2 | 3 | 8 | 10 => {
                let mut c = expect_len(op, buf, 9)?;
                let (node, epoch) = (NodeId(c.u32()), Epoch(c.u32()));
                match op {
                    2 => Request::Heartbeat { node, epoch },
                    3 => Request::Begin { node, epoch },
                    8 => Request::Leave { node, epoch },
                    _ => Request::FreezeTarget { node, epoch },
                }
            }
            11 => {
                let mut c = expect_len(op, buf, 17)?;
                Request::Frozen {
                    node: NodeId(c.u32()),
                    epoch: Epoch(c.u32()),
                    below: TxnId(c.u64()),
                }
            }
            12 => {
                let mut c = at_least(op, buf, 18)?;
                Request::FreezeProgress {
                    node: NodeId(c.u32()),
                    epoch: Epoch(c.u32()),
                    below: TxnId(c.u64()),
                    point: SweepPoint::decode(&buf[17..])?,
                }
            }
            4 => {
                let mut c = expect_len(op, buf, 5)?;
                let count = c.u32();
                if count == 0 || count > MAX_TIMESTAMPS_PER_REQUEST {
                    return Err(DecodeError::BadField("timestamp count out of range"));
                }
                Request::Timestamps { count }
            }
            5 | 6 => {
                let mut c = expect_len(op, buf, 17)?;
                let (node, epoch, txn) = (NodeId(c.u32()), Epoch(c.u32()), TxnId(c.u64()));
                if op == 5 {
                    Request::Commit { node, epoch, txn }
                } else {
                    Request::Abort { node, epoch, txn }
                }
            }
            7 => {
                expect_len(op, buf, 1)?;
                Request::GcWatermark
            }
            9 => {
                let n = outcomes_count(op, buf)?;
                let mut c = expect_len(op, buf, 3 + 8 * n)?;
                c.pos = 3;
                Request::Outcomes {
                    txns: (0..n).map(|_| TxnId(c.u64())).collect(),
                }
            }
            other => return Err(DecodeError::UnknownOpcode(other)),
        })
    }
}

impl Response {
    /// An error response; long messages are cut so the encoding stays bounded.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Response::Error { kind, message }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(25);
        match self {
            Response::Registered {
                epoch,
                lease_ms,
                status_region,
                status_capacity,
            } => {
                b.push(1);
                b.extend_from_slice(&epoch.0.to_le_bytes());
                b.extend_from_slice(&lease_ms.to_le_bytes());
                b.extend_from_slice(&status_region.0.to_le_bytes());
                b.extend_from_slice(&status_capacity.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
            }
            Response::LeaseRenewed { lease_ms } => {
                b.push(2);
                b.extend_from_slice(&lease_ms.to_le_bytes());
            }
            Response::Begun { txn, snapshot } => {
                b.push(3);
                b.extend_from_slice(&txn.0.to_le_bytes());
                b.extend_from_slice(&snapshot.0.to_le_bytes());
            }
            Response::Timestamps { first, count } => {
                b.push(4);
                b.extend_from_slice(&first.0.to_le_bytes());
                b.extend_from_slice(&count.to_le_bytes());
            }
            Response::Committed { commit_ts } => {
                b.push(5);
                b.extend_from_slice(&commit_ts.0.to_le_bytes());
            }
            Response::Aborted => b.push(6),
            Response::GcWatermark { ts } => {
                b.push(7);
                b.extend_from_slice(&ts.0.to_le_bytes());
            }
            Response::Left => b.push(8),
            Response::Error { kind, message } => {
                b.push(9);
                b.push(*kind as u8);
                let m = &message.as_bytes()[..message.len().min(MAX_ERROR_MESSAGE)];
                b.extend_from_slice(&(m.len() as u16).to_le_bytes());
                b.extend_from_slice(m);
            }
            Response::FreezeTarget { below, resume } => {
                b.push(11);
                b.extend_from_slice(&below.0.to_le_bytes());
                resume.encode_into(&mut b);
            }
            Response::Frozen => b.push(12),
            Response::ProgressNoted => b.push(13),
            Response::Outcomes(statuses) => {
                b.reserve(3 + 9 * statuses.len());
                b.push(10);
                b.extend_from_slice(&(statuses.len() as u16).to_le_bytes());
                for &s in statuses {
                    let (code, ts) = status_to_wire(s);
                    b.push(code);
                    b.extend_from_slice(&ts.to_le_bytes());
                }
            }
        }
        b
    }

    pub fn decode(buf: &[u8]) -> Result<Response, DecodeError> {
        let tag = *buf.first().ok_or(DecodeError::Empty)?;
        Ok(match tag {
            1 => {
                let mut c = expect_len(tag, buf, 25)?;
                let r = Response::Registered {
                    epoch: Epoch(c.u32()),
                    lease_ms: c.u32(),
                    status_region: RegionId(c.u32()),
                    status_capacity: c.u64(),
                };
                if c.u32() != 0 {
                    return Err(DecodeError::BadField("reserved bytes must be zero"));
                }
                if let Response::Registered {
                    status_capacity: 0, ..
                } = r
                {
                    return Err(DecodeError::BadField("status capacity is zero"));
                }
                r
            }
            2 => {
                let mut c = expect_len(tag, buf, 5)?;
                Response::LeaseRenewed { lease_ms: c.u32() }
            }
            3 => {
                let mut c = expect_len(tag, buf, 17)?;
                Response::Begun {
                    txn: TxnId(c.u64()),
                    snapshot: Timestamp(c.u64()),
                }
            }
            4 => {
                let mut c = expect_len(tag, buf, 13)?;
                let first = Timestamp(c.u64());
                let count = c.u32();
                if count == 0 || first.0.checked_add(count as u64).is_none() {
                    return Err(DecodeError::BadField("timestamp range"));
                }
                Response::Timestamps { first, count }
            }
            5 => {
                let mut c = expect_len(tag, buf, 9)?;
                Response::Committed {
                    commit_ts: Timestamp(c.u64()),
                }
            }
            6 => {
                expect_len(tag, buf, 1)?;
                Response::Aborted
            }
            7 => {
                let mut c = expect_len(tag, buf, 9)?;
                Response::GcWatermark {
                    ts: Timestamp(c.u64()),
                }
            }
            8 => {
                expect_len(tag, buf, 1)?;
                Response::Left
            }
            9 => {
                let mut c = at_least(tag, buf, 4)?;
                let kind = ErrorKind::from_u8(c.u8()).ok_or(DecodeError::BadField("error kind"))?;
                let len = c.u16() as usize;
                if len > MAX_ERROR_MESSAGE {
                    return Err(DecodeError::BadField("error message too long"));
                }
                let mut c = expect_len(tag, buf, 4 + len)?;
                c.pos = 4;
                let message = String::from_utf8(c.take(len).to_vec())
                    .map_err(|_| DecodeError::BadField("error message is not UTF-8"))?;
                Response::Error { kind, message }
            }
            10 => {
                let n = outcomes_count(tag, buf)?;
                let mut c = expect_len(tag, buf, 3 + 9 * n)?;
                c.pos = 3;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let code = c.u8();
                    out.push(status_from_wire(code, c.u64())?);
                }
                Response::Outcomes(out)
            }
            11 => {
                let mut c = at_least(tag, buf, 10)?;
                Response::FreezeTarget {
                    below: TxnId(c.u64()),
                    resume: SweepPoint::decode(&buf[9..])?,
                }
            }
            12 => {
                expect_len(tag, buf, 1)?;
                Response::Frozen
            }
            13 => {
                expect_len(tag, buf, 1)?;
                Response::ProgressNoted
            }
            other => return Err(DecodeError::UnknownOpcode(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_request() -> impl Strategy<Value = Request> {
        let ne = (any::<u32>(), any::<u32>()).prop_map(|(n, e)| (NodeId(n), Epoch(e)));
        prop_oneof![
            any::<u32>().prop_map(|n| Request::Register { node: NodeId(n) }),
            ne.clone()
                .prop_map(|(node, epoch)| Request::Heartbeat { node, epoch }),
            ne.clone()
                .prop_map(|(node, epoch)| Request::Begin { node, epoch }),
            (1..=MAX_TIMESTAMPS_PER_REQUEST).prop_map(|count| Request::Timestamps { count }),
            (ne.clone(), any::<u64>()).prop_map(|((node, epoch), t)| Request::Commit {
                node,
                epoch,
                txn: TxnId(t)
            }),
            (ne.clone(), any::<u64>()).prop_map(|((node, epoch), t)| Request::Abort {
                node,
                epoch,
                txn: TxnId(t)
            }),
            ne.clone()
                .prop_map(|(node, epoch)| Request::FreezeTarget { node, epoch }),
            (ne.clone(), any::<u64>()).prop_map(|((node, epoch), t)| Request::Frozen {
                node,
                epoch,
                below: TxnId(t)
            }),
            (ne.clone(), any::<u64>(), any_point()).prop_map(|((node, epoch), t, point)| {
                Request::FreezeProgress {
                    node,
                    epoch,
                    below: TxnId(t),
                    point,
                }
            }),
            Just(Request::GcWatermark),
            ne.prop_map(|(node, epoch)| Request::Leave { node, epoch }),
            proptest::collection::vec(any::<u64>().prop_map(TxnId), 1..=64)
                .prop_map(|txns| Request::Outcomes { txns }),
        ]
    }

    fn any_point() -> impl Strategy<Value = SweepPoint> {
        prop_oneof![
            Just(SweepPoint::Start),
            Just(SweepPoint::Done),
            (
                "[a-z_]{1,12}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
            )
                .prop_map(|(table, after)| SweepPoint::In { table, after }),
        ]
    }

    fn any_status() -> impl Strategy<Value = TxnStatus> {
        prop_oneof![
            Just(TxnStatus::Unknown),
            Just(TxnStatus::InProgress),
            any::<u64>().prop_map(|t| TxnStatus::Committing(Timestamp(t))),
            any::<u64>().prop_map(|t| TxnStatus::Committed(Timestamp(t))),
            Just(TxnStatus::Aborted),
            Just(TxnStatus::Retired),
        ]
    }

    fn any_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<u32>(), any::<u32>(), any::<u32>(), 1..u64::MAX).prop_map(|(e, l, r, c)| {
                Response::Registered {
                    epoch: Epoch(e),
                    lease_ms: l,
                    status_region: RegionId(r),
                    status_capacity: c,
                }
            }),
            any::<u32>().prop_map(|lease_ms| Response::LeaseRenewed { lease_ms }),
            (any::<u64>(), any_point()).prop_map(|(t, resume)| Response::FreezeTarget {
                below: TxnId(t),
                resume
            }),
            Just(Response::Frozen),
            Just(Response::ProgressNoted),
            (any::<u64>(), any::<u64>()).prop_map(|(t, s)| Response::Begun {
                txn: TxnId(t),
                snapshot: Timestamp(s)
            }),
            (0..u64::MAX / 2, 1..u32::MAX).prop_map(|(f, count)| Response::Timestamps {
                first: Timestamp(f),
                count
            }),
            any::<u64>().prop_map(|t| Response::Committed {
                commit_ts: Timestamp(t)
            }),
            Just(Response::Aborted),
            any::<u64>().prop_map(|t| Response::GcWatermark { ts: Timestamp(t) }),
            Just(Response::Left),
            (1u8..=5, ".{0,40}")
                .prop_map(|(k, m)| Response::error(ErrorKind::from_u8(k).expect("valid kind"), m)),
            proptest::collection::vec(any_status(), 1..=64).prop_map(Response::Outcomes),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        /// Random bodies behind the `Outcomes` opcodes (whose length depends on a field):
        /// the decoders answer without panicking, and whatever they accept re-encodes to
        /// the same bytes (the encoding is canonical).
        #[test]
        fn random_outcomes_messages_decode_totally_and_canonically(
            op in prop_oneof![Just(9u8), Just(10u8)],
            n in 0u16..6,
            body in proptest::collection::vec(prop_oneof![Just(0u8), 0u8..=6, any::<u8>()], 0..64),
        ) {
            let mut b = vec![op];
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&body);
            if let Ok(r) = Request::decode(&b) {
                prop_assert_eq!(r.encode(), b.clone());
            }
            if let Ok(r) = Response::decode(&b) {
                prop_assert_eq!(r.encode(), b);
            }
        }

        /// Random bodies behind the opcodes that end in a sweep point (whose length
        /// depends on its fields): total and canonical, as above.
        #[test]
        fn random_sweep_point_messages_decode_totally_and_canonically(
            op in prop_oneof![Just(11u8), Just(12u8)],
            head in proptest::collection::vec(any::<u8>(), 8..=16),
            tag in prop_oneof![Just(0u8), Just(1u8), Just(2u8), any::<u8>()],
            tlen in prop_oneof![Just(1u16), Just(3u16), 0u16..8, any::<u16>()],
            body in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(2u8), any::<u8>()], 0..24),
        ) {
            let mut b = vec![op];
            b.extend_from_slice(&head);
            b.push(tag);
            b.extend_from_slice(&tlen.to_le_bytes());
            b.extend_from_slice(&body);
            if let Ok(r) = Request::decode(&b) {
                prop_assert_eq!(r.encode(), b.clone());
            }
            if let Ok(r) = Response::decode(&b) {
                prop_assert_eq!(r.encode(), b);
            }
        }

        #[test]
        fn truncated_or_extended_responses_are_rejected(r in any_response(), extra in any::<u8>()) {
            let mut b = r.encode();
            b.push(extra);
            prop_assert!(Response::decode(&b).is_err());
            b.truncate(b.len() - 2);
            prop_assert!(Response::decode(&b).is_err());
        }

        #[test]
        fn requests_round_trip(r in any_request()) {
            prop_assert_eq!(Request::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn responses_round_trip(r in any_response()) {
            prop_assert_eq!(Response::decode(&r.encode()), Ok(r));
        }

        /// A valid message with one byte changed: an error or a message that re-encodes
        /// to exactly those bytes (the encoding is canonical).
        #[test]
        fn messages_with_a_changed_byte_never_panic(
            q in any_request(),
            r in any_response(),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
        ) {
            let mut b = q.encode();
            let i = at.index(b.len());
            b[i] ^= x;
            if let Ok(d) = Request::decode(&b) {
                prop_assert_eq!(d.encode(), b);
            }
            let mut b = r.encode();
            let i = at.index(b.len());
            b[i] ^= x;
            if let Ok(d) = Response::decode(&b) {
                prop_assert_eq!(d.encode(), b);
            }
        }

        #[test]
        fn truncated_or_extended_messages_are_rejected(r in any_request(), extra in any::<u8>()) {
            let mut b = r.encode();
            b.push(extra);
            prop_assert!(Request::decode(&b).is_err());
            b.truncate(b.len() - 2);
            prop_assert!(Request::decode(&b).is_err());
        }
    }

    #[test]
    fn outcomes_are_encoded_byte_by_byte_as_documented() {
        let q = Request::Outcomes {
            txns: vec![TxnId(1), TxnId(0x0102_0304_0506_0708)],
        };
        assert_eq!(
            q.encode(),
            [
                &[9u8, 2, 0][..],
                &1u64.to_le_bytes(),
                &[8, 7, 6, 5, 4, 3, 2, 1]
            ]
            .concat()
        );
        let r = Response::Outcomes(vec![
            TxnStatus::Committed(Timestamp(0x11)),
            TxnStatus::Aborted,
        ]);
        let mut want = vec![10u8, 2, 0, 3, 0x11, 0, 0, 0, 0, 0, 0, 0, 4];
        want.extend_from_slice(&[0; 8]);
        assert_eq!(r.encode(), want);
        // A timestamp on a status that has none, an unknown status, counts out of range.
        want[13] = 1;
        assert!(Response::decode(&want).is_err());
        want[13] = 0;
        want[12] = 6;
        assert!(Response::decode(&want).is_err());
        assert!(Request::decode(&[9, 0, 0]).is_err());
        let too_many = Request::Outcomes {
            txns: vec![TxnId(1); MAX_OUTCOMES_PER_REQUEST + 1],
        };
        assert!(Request::decode(&too_many.encode()).is_err());
        let most = Request::Outcomes {
            txns: vec![TxnId(1); MAX_OUTCOMES_PER_REQUEST],
        };
        assert_eq!(Request::decode(&most.encode()), Ok(most));
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let r = Response::error(ErrorKind::Internal, "é".repeat(1000));
        let back = Response::decode(&r.encode()).unwrap();
        match back {
            Response::Error { message, .. } => assert!(message.len() <= MAX_ERROR_MESSAGE),
            other => panic!("{other:?}"),
        }
    }
}
