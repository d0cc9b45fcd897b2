//! RPC messages between compute nodes (and the GTM) and a storage node.
//!
//! Each fabric RPC payload is one request or one response, hand-encoded little-endian.
//! Decoders are total: any byte string yields a value or a [`StorageError::Protocol`],
//! never a panic, and no length field can make them allocate more than the input holds.
//!
//! ## Request
//!
//! ```text
//! offset size  field
//!      0    1  opcode (below)
//!      1    4  caller node id     (NodeId; the admin identity is u32::MAX)
//!      5    4  caller epoch       (Epoch)
//!      9       body, by opcode:
//!   1 Describe          -
//!   2 Allocate          u32 count
//!   3 Lock              u64 page                        (exclusive)
//!   4 Unlock            u64 page
//!   5 WriteBack         8192 bytes page image           (version and id in its header)
//!   6 AppendRedo        u32 count, then count encoded records (see `redo`)
//!   7 ForceLog          u64 lsn
//!   8 ReadPages         u32 count, count x u64 page     (RPC read / fault-in)
//!   9 ReleaseLocksOf    u32 node, u32 epoch             (admin: the GTM)
//!  10 NextRevocations   u32 max wait in milliseconds    (long poll)
//!  11 RequestWriteBack  u64 page                        (reader: holder writes back, keeps)
//!  12 Metrics           -
//!  13 AppendForce       as AppendRedo; answered once the records are durable (commit)
//!  14 Reclaim           u8 done, u32 count, count x (u64 page, u64 version)
//!                       (after a restart of this node: the caller's X locks again)
//! ```
//!
//! ## Response
//!
//! ```text
//!      0    1  status: 0 = ok, else an error code
//! ok:  1    1  kind, then:
//!   1 Layout       u64 first page, u64 page count, u32 directory region,
//!                  u32 frame region, u32 frames, u32 notice region,
//!                  u32 notice slots (see `notice`), u64 incarnation
//!   2 Allocated    u64 first page, u32 count   (pages first..first+count)
//!   3 Done         -
//!   4 Lsn          u64 lsn
//!   5 Pages        u32 count, count x (u32 frame word, 8192 bytes image)
//!   6 Revocations  u32 count, count x (u8 kind: 1 = write back and release,
//!                  2 = write back and keep, u64 page)
//!   7 Text         u32 len, UTF-8 bytes
//! error (code, then fields):
//!   1 Fenced        u32 node, u32 epoch
//!   2 NotHolder     u64 page
//!   3 Stale         u64 page, u64 got, u64 stored
//!   4 NotDurable    u64 page, u64 version
//!   5 NotAllocated  u64 page
//!   6 VersionConflict u64 page, u64 expected, u64 got
//!   7 Exhausted     -
//!   8 Corrupt       string        (string = u32 len + UTF-8 bytes)
//!   9 BadRequest    string
//!  10 Io            string
//!  11 Busy          string
//!  12 ShuttingDown  -
//!  13 ReclaimRefused string
//! ```

use super::page::{Page, PAGE_SIZE};
use super::redo::RedoRecord;
use super::StorageError;
use crate::ids::{Epoch, Lsn, NodeId, PageId, PageVersion, RegionId};

/// The identity admin requests (the GTM) carry.
pub const ADMIN_NODE: NodeId = NodeId(u32::MAX);

/// Directory and frame geometry, learned once per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub first_page: PageId,
    pub page_count: u64,
    pub dir_region: RegionId,
    pub frame_region: RegionId,
    pub frames: u32,
    /// The change-notice ring ([`super::notice`]) and its number of slots.
    pub notice_region: RegionId,
    pub notice_capacity: u32,
    /// Drawn at random when the storage node process starts: a new value tells a
    /// compute node that the node restarted (its lock table and notice ring are new).
    pub incarnation: u64,
}

impl Layout {
    /// Index of `page` in the directory, if this node owns it.
    pub fn index_of(&self, page: PageId) -> Option<u64> {
        page.0
            .checked_sub(self.first_page.0)
            .filter(|i| *i < self.page_count)
    }
}

/// What a storage node asks of a lock holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// A writer waits: write the page back (if changed), then unlock it.
    WriteBackAndRelease,
    /// A reader waits: write the page back (if changed); the holder may keep the lock
    /// or give it up (the compute node gives it up, see `compute_node::coherence`),
    /// either answers the reader.
    WriteBackAndKeep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Revocation {
    pub page: PageId,
    pub kind: RevocationKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Describe,
    Allocate {
        count: u32,
    },
    Lock {
        page: PageId,
    },
    Unlock {
        page: PageId,
    },
    WriteBack {
        page: Page,
    },
    AppendRedo {
        records: Vec<RedoRecord>,
    },
    /// Append, then answer once durable: a commit in one round trip.
    AppendForce {
        records: Vec<RedoRecord>,
    },
    ForceLog {
        lsn: Lsn,
    },
    ReadPages {
        pages: Vec<PageId>,
    },
    ReleaseLocksOf {
        node: NodeId,
        epoch: Epoch,
    },
    NextRevocations {
        max_wait_ms: u32,
    },
    RequestWriteBack {
        page: PageId,
    },
    Metrics,
    /// After a restart of the storage node: the caller held these pages' X locks in
    /// the node's previous incarnation and asks for them again, each with the version
    /// of its cached image (`docs/protocols.md`, "Storage-node restart: reclaim").
    /// `done` on the caller's last batch.
    Reclaim {
        pages: Vec<(PageId, PageVersion)>,
        done: bool,
    },
}

/// A request with the caller's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub node: NodeId,
    pub epoch: Epoch,
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Layout(Layout),
    Allocated {
        first: PageId,
        count: u32,
    },
    Done,
    Lsn(Lsn),
    /// Images with the frame word each came from (0 = served from outside a frame).
    Pages(Vec<(u64, Page)>),
    Revocations(Vec<Revocation>),
    Text(String),
}

/// A bounds-checked cursor: every read either succeeds or returns a protocol error.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

fn proto(msg: impl Into<String>) -> StorageError {
    StorageError::Protocol(msg.into())
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Cursor { b, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| proto(format!("message truncated at byte {}", self.at)))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn rest(&self) -> usize {
        self.b.len() - self.at
    }
    /// A count of items of at least `min_item` bytes each, capped by what is left.
    fn count(&mut self, min_item: usize) -> Result<usize, StorageError> {
        let n = self.u32()? as usize;
        if n > self.rest() / min_item.max(1) {
            return Err(proto(format!("count {n} exceeds the message")));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String, StorageError> {
        let n = self.count(1)?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn page(&mut self) -> Result<Page, StorageError> {
        Page::from_bytes(self.take(PAGE_SIZE)?).map_err(|e| proto(e.to_string()))
    }
    fn end(&self) -> Result<(), StorageError> {
        if self.rest() != 0 {
            return Err(proto(format!("{} trailing bytes", self.rest())));
        }
        Ok(())
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        let op: u8 = match &self.request {
            Request::Describe => 1,
            Request::Allocate { .. } => 2,
            Request::Lock { .. } => 3,
            Request::Unlock { .. } => 4,
            Request::WriteBack { .. } => 5,
            Request::AppendRedo { .. } => 6,
            Request::ForceLog { .. } => 7,
            Request::ReadPages { .. } => 8,
            Request::ReleaseLocksOf { .. } => 9,
            Request::NextRevocations { .. } => 10,
            Request::RequestWriteBack { .. } => 11,
            Request::Metrics => 12,
            Request::AppendForce { .. } => 13,
            Request::Reclaim { .. } => 14,
        };
        out.push(op);
        out.extend_from_slice(&self.node.0.to_le_bytes());
        out.extend_from_slice(&self.epoch.0.to_le_bytes());
        match &self.request {
            Request::Describe | Request::Metrics => {}
            Request::Allocate { count } => out.extend_from_slice(&count.to_le_bytes()),
            Request::Lock { page }
            | Request::Unlock { page }
            | Request::RequestWriteBack { page } => out.extend_from_slice(&page.0.to_le_bytes()),
            Request::WriteBack { page } => out.extend_from_slice(page.as_bytes()),
            Request::AppendRedo { records } | Request::AppendForce { records } => {
                out.extend_from_slice(&(records.len() as u32).to_le_bytes());
                for r in records {
                    r.encode(&mut out);
                }
            }
            Request::ForceLog { lsn } => out.extend_from_slice(&lsn.0.to_le_bytes()),
            Request::ReadPages { pages } => {
                out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                for p in pages {
                    out.extend_from_slice(&p.0.to_le_bytes());
                }
            }
            Request::ReleaseLocksOf { node, epoch } => {
                out.extend_from_slice(&node.0.to_le_bytes());
                out.extend_from_slice(&epoch.0.to_le_bytes());
            }
            Request::NextRevocations { max_wait_ms } => {
                out.extend_from_slice(&max_wait_ms.to_le_bytes())
            }
            Request::Reclaim { pages, done } => {
                out.push(u8::from(*done));
                out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                for (p, v) in pages {
                    out.extend_from_slice(&p.0.to_le_bytes());
                    out.extend_from_slice(&v.0.to_le_bytes());
                }
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Envelope, StorageError> {
        let mut c = Cursor::new(b);
        let op = c.u8()?;
        let node = NodeId(c.u32()?);
        let epoch = Epoch(c.u32()?);
        let request = match op {
            1 => Request::Describe,
            2 => Request::Allocate { count: c.u32()? },
            3 => Request::Lock {
                page: PageId(c.u64()?),
            },
            4 => Request::Unlock {
                page: PageId(c.u64()?),
            },
            5 => Request::WriteBack { page: c.page()? },
            6 | 13 => {
                let n = c.count(super::redo::REDO_HEADER_LEN)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    let (r, len) = RedoRecord::decode(&c.b[c.at..])
                        .map_err(|e| proto(format!("redo record: {e}")))?;
                    c.take(len)?;
                    records.push(r);
                }
                if op == 6 {
                    Request::AppendRedo { records }
                } else {
                    Request::AppendForce { records }
                }
            }
            7 => Request::ForceLog { lsn: Lsn(c.u64()?) },
            8 => {
                let n = c.count(8)?;
                let mut pages = Vec::with_capacity(n);
                for _ in 0..n {
                    pages.push(PageId(c.u64()?));
                }
                Request::ReadPages { pages }
            }
            9 => Request::ReleaseLocksOf {
                node: NodeId(c.u32()?),
                epoch: Epoch(c.u32()?),
            },
            10 => Request::NextRevocations {
                max_wait_ms: c.u32()?,
            },
            11 => Request::RequestWriteBack {
                page: PageId(c.u64()?),
            },
            12 => Request::Metrics,
            14 => {
                let done = match c.u8()? {
                    0 => false,
                    1 => true,
                    d => return Err(proto(format!("reclaim: done flag {d}"))),
                };
                let n = c.count(16)?;
                let mut pages = Vec::with_capacity(n);
                for _ in 0..n {
                    pages.push((PageId(c.u64()?), PageVersion(c.u64()?)));
                }
                Request::Reclaim { pages, done }
            }
            other => return Err(proto(format!("unknown opcode {other}"))),
        };
        c.end()?;
        Ok(Envelope {
            node,
            epoch,
            request,
        })
    }
}

/// Encodes a response or an error.
pub fn encode_response(r: &Result<Response, StorageError>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    match r {
        Ok(resp) => {
            out.push(0);
            match resp {
                Response::Layout(l) => {
                    out.push(1);
                    out.extend_from_slice(&l.first_page.0.to_le_bytes());
                    out.extend_from_slice(&l.page_count.to_le_bytes());
                    out.extend_from_slice(&l.dir_region.0.to_le_bytes());
                    out.extend_from_slice(&l.frame_region.0.to_le_bytes());
                    out.extend_from_slice(&l.frames.to_le_bytes());
                    out.extend_from_slice(&l.notice_region.0.to_le_bytes());
                    out.extend_from_slice(&l.notice_capacity.to_le_bytes());
                    out.extend_from_slice(&l.incarnation.to_le_bytes());
                }
                Response::Allocated { first, count } => {
                    out.push(2);
                    out.extend_from_slice(&first.0.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
                Response::Done => out.push(3),
                Response::Lsn(l) => {
                    out.push(4);
                    out.extend_from_slice(&l.0.to_le_bytes());
                }
                Response::Pages(pages) => {
                    out.push(5);
                    out.reserve(4 + pages.len() * (PAGE_SIZE + 4));
                    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                    for (fw, p) in pages {
                        out.extend_from_slice(&(*fw as u32).to_le_bytes());
                        out.extend_from_slice(p.as_bytes());
                    }
                }
                Response::Revocations(rs) => {
                    out.push(6);
                    out.extend_from_slice(&(rs.len() as u32).to_le_bytes());
                    for r in rs {
                        out.push(match r.kind {
                            RevocationKind::WriteBackAndRelease => 1,
                            RevocationKind::WriteBackAndKeep => 2,
                        });
                        out.extend_from_slice(&r.page.0.to_le_bytes());
                    }
                }
                Response::Text(s) => {
                    out.push(7);
                    put_str(&mut out, s);
                }
            }
        }
        Err(e) => {
            let u64s = |out: &mut Vec<u8>, vs: &[u64]| {
                for v in vs {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            };
            match e {
                StorageError::Fenced { node, epoch } => {
                    out.push(1);
                    out.extend_from_slice(&node.0.to_le_bytes());
                    out.extend_from_slice(&epoch.0.to_le_bytes());
                }
                StorageError::NotHolder(p) => {
                    out.push(2);
                    u64s(&mut out, &[p.0]);
                }
                StorageError::Stale { page, got, stored } => {
                    out.push(3);
                    u64s(&mut out, &[page.0, got.0, stored.0]);
                }
                StorageError::NotDurable { page, version } => {
                    out.push(4);
                    u64s(&mut out, &[page.0, version.0]);
                }
                StorageError::NotAllocated(p) => {
                    out.push(5);
                    u64s(&mut out, &[p.0]);
                }
                StorageError::VersionConflict {
                    page,
                    expected,
                    got,
                } => {
                    out.push(6);
                    u64s(&mut out, &[page.0, expected.0, got.0]);
                }
                StorageError::Exhausted => out.push(7),
                StorageError::Corrupt(s) => {
                    out.push(8);
                    put_str(&mut out, s);
                }
                StorageError::BadRequest(s) | StorageError::Protocol(s) => {
                    out.push(9);
                    put_str(&mut out, s);
                }
                StorageError::Io(s) => {
                    out.push(10);
                    put_str(&mut out, s);
                }
                StorageError::Busy(s) => {
                    out.push(11);
                    put_str(&mut out, s);
                }
                StorageError::ShuttingDown => out.push(12),
                StorageError::ReclaimRefused(s) => {
                    out.push(13);
                    put_str(&mut out, s);
                }
                StorageError::Fabric(f) => {
                    out.push(10);
                    put_str(&mut out, &f.to_string());
                }
            }
        }
    }
    out
}

/// Decodes a response; a decoded error comes back as `Ok(Err(..))`.
pub fn decode_response(b: &[u8]) -> Result<Result<Response, StorageError>, StorageError> {
    let mut c = Cursor::new(b);
    let status = c.u8()?;
    let out = if status == 0 {
        Ok(match c.u8()? {
            1 => Response::Layout(Layout {
                first_page: PageId(c.u64()?),
                page_count: c.u64()?,
                dir_region: RegionId(c.u32()?),
                frame_region: RegionId(c.u32()?),
                frames: c.u32()?,
                notice_region: RegionId(c.u32()?),
                notice_capacity: c.u32()?,
                incarnation: c.u64()?,
            }),
            2 => Response::Allocated {
                first: PageId(c.u64()?),
                count: c.u32()?,
            },
            3 => Response::Done,
            4 => Response::Lsn(Lsn(c.u64()?)),
            5 => {
                let n = c.count(4 + PAGE_SIZE)?;
                let mut pages = Vec::with_capacity(n);
                for _ in 0..n {
                    let fw = u64::from(c.u32()?);
                    pages.push((fw, c.page()?));
                }
                Response::Pages(pages)
            }
            6 => {
                let n = c.count(9)?;
                let mut rs = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = match c.u8()? {
                        1 => RevocationKind::WriteBackAndRelease,
                        2 => RevocationKind::WriteBackAndKeep,
                        k => return Err(proto(format!("unknown revocation kind {k}"))),
                    };
                    rs.push(Revocation {
                        page: PageId(c.u64()?),
                        kind,
                    });
                }
                Response::Revocations(rs)
            }
            7 => Response::Text(c.string()?),
            k => return Err(proto(format!("unknown response kind {k}"))),
        })
    } else {
        Err(match status {
            1 => StorageError::Fenced {
                node: NodeId(c.u32()?),
                epoch: Epoch(c.u32()?),
            },
            2 => StorageError::NotHolder(PageId(c.u64()?)),
            3 => StorageError::Stale {
                page: PageId(c.u64()?),
                got: PageVersion(c.u64()?),
                stored: PageVersion(c.u64()?),
            },
            4 => StorageError::NotDurable {
                page: PageId(c.u64()?),
                version: PageVersion(c.u64()?),
            },
            5 => StorageError::NotAllocated(PageId(c.u64()?)),
            6 => StorageError::VersionConflict {
                page: PageId(c.u64()?),
                expected: PageVersion(c.u64()?),
                got: PageVersion(c.u64()?),
            },
            7 => StorageError::Exhausted,
            8 => StorageError::Corrupt(c.string()?),
            9 => StorageError::BadRequest(c.string()?),
            10 => StorageError::Io(c.string()?),
            11 => StorageError::Busy(c.string()?),
            12 => StorageError::ShuttingDown,
            13 => StorageError::ReclaimRefused(c.string()?),
            k => return Err(proto(format!("unknown error code {k}"))),
        })
    };
    c.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::redo::RedoBody;
    use proptest::prelude::*;

    fn env(request: Request) -> Envelope {
        Envelope {
            node: NodeId(3),
            epoch: Epoch(9),
            request,
        }
    }

    /// One request of every kind.
    fn sample_requests() -> Vec<Request> {
        let mut page = Page::empty(PageId(12));
        page.stamp(PageVersion(4), Lsn(100));
        vec![
            Request::Describe,
            Request::Allocate { count: 7 },
            Request::Lock { page: PageId(1) },
            Request::Unlock { page: PageId(2) },
            Request::WriteBack { page: page.clone() },
            Request::AppendRedo {
                records: vec![
                    RedoRecord::image(&page, PageVersion(3)),
                    RedoRecord {
                        lsn: Lsn(0),
                        page: PageId(12),
                        before: PageVersion(4),
                        after: PageVersion(5),
                        body: RedoBody::Diffs(vec![(40, vec![7; 3])]),
                    },
                ],
            },
            Request::ForceLog { lsn: Lsn(77) },
            Request::ReadPages {
                pages: vec![PageId(1), PageId(2)],
            },
            Request::ReleaseLocksOf {
                node: NodeId(5),
                epoch: Epoch(6),
            },
            Request::NextRevocations { max_wait_ms: 1000 },
            Request::RequestWriteBack { page: PageId(8) },
            Request::Metrics,
            Request::AppendForce {
                records: vec![RedoRecord::image(&page, PageVersion(3))],
            },
            Request::Reclaim {
                pages: vec![(PageId(3), PageVersion(9)), (PageId(4), PageVersion(0))],
                done: true,
            },
        ]
    }

    #[test]
    fn requests_round_trip() {
        let reqs = sample_requests();
        for r in reqs {
            let e = env(r);
            let b = e.encode();
            assert_eq!(Envelope::decode(&b).unwrap(), e);
            for cut in 0..b.len() {
                assert!(Envelope::decode(&b[..cut]).is_err());
            }
        }
    }

    /// One response of every kind and one error of every kind.
    fn sample_responses() -> Vec<Result<Response, StorageError>> {
        let page = Page::empty(PageId(1));
        vec![
            Ok(Response::Layout(Layout {
                first_page: PageId(100),
                page_count: 5,
                dir_region: RegionId(0),
                frame_region: RegionId(1),
                frames: 64,
                notice_region: RegionId(2),
                notice_capacity: 1024,
                incarnation: 0xdead_beef_0123,
            })),
            Ok(Response::Allocated {
                first: PageId(3),
                count: 2,
            }),
            Ok(Response::Done),
            Ok(Response::Lsn(Lsn(5))),
            Ok(Response::Pages(vec![(3, page)])),
            Ok(Response::Revocations(vec![Revocation {
                page: PageId(4),
                kind: RevocationKind::WriteBackAndKeep,
            }])),
            Ok(Response::Text("m 1".into())),
            Err(StorageError::Fenced {
                node: NodeId(1),
                epoch: Epoch(2),
            }),
            Err(StorageError::NotHolder(PageId(4))),
            Err(StorageError::Stale {
                page: PageId(1),
                got: PageVersion(2),
                stored: PageVersion(3),
            }),
            Err(StorageError::NotDurable {
                page: PageId(1),
                version: PageVersion(2),
            }),
            Err(StorageError::NotAllocated(PageId(9))),
            Err(StorageError::VersionConflict {
                page: PageId(1),
                expected: PageVersion(2),
                got: PageVersion(3),
            }),
            Err(StorageError::Exhausted),
            Err(StorageError::Corrupt("x".into())),
            Err(StorageError::BadRequest("y".into())),
            Err(StorageError::Io("z".into())),
            Err(StorageError::Busy("w".into())),
            Err(StorageError::ShuttingDown),
            Err(StorageError::ReclaimRefused("grace over".into())),
        ]
    }

    #[test]
    fn responses_round_trip() {
        let rs = sample_responses();
        for r in rs {
            let b = encode_response(&r);
            let back = decode_response(&b).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }

    proptest! {
        #[test]
        fn request_decoder_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn response_decoder_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_response(&bytes);
        }

        #[test]
        fn request_decoder_total_after_valid_prefix(op in 1u8..14, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = vec![op, 1, 0, 0, 0, 2, 0, 0, 0];
            b.extend_from_slice(&tail);
            let _ = Envelope::decode(&b);
        }

        /// A valid request or response with one byte changed or cut short: an error or a
        /// message that survives its own round trip, never a panic.
        #[test]
        fn damaged_messages_never_panic(
            which in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let reqs = sample_requests();
            let e = env(reqs[which.index(reqs.len())].clone());
            let mut b = e.encode();
            let cut_at = cut.index(b.len());
            prop_assert!(Envelope::decode(&b[..cut_at]).is_err());
            let i = at.index(b.len());
            b[i] ^= x;
            if let Ok(d) = Envelope::decode(&b) {
                prop_assert_eq!(Envelope::decode(&d.encode()).ok(), Some(d));
            }
            let rs = sample_responses();
            let mut b = encode_response(&rs[which.index(rs.len())]);
            let _ = decode_response(&b[..cut.index(b.len())]);
            let i = at.index(b.len());
            b[i] ^= x;
            if let Ok(d) = decode_response(&b) {
                let again = decode_response(&encode_response(&d)).unwrap();
                prop_assert_eq!(format!("{again:?}"), format!("{d:?}"));
            }
        }
    }
}
