//! [`StorageClient`]: how compute nodes and the GTM talk to a storage node.
//!
//! Every method may be called from many threads at once; concurrent RPCs share fabric
//! messages (the fabric's adaptive batching), so e.g. 16 committers' `force_log` calls
//! reach the storage node as one batch and are answered by one fsync.
//!
//! ## Revocations (the callback path to a lazy lock holder)
//!
//! A compute node is a fabric *client*, so the storage node cannot call it. Instead,
//! [`StorageClient::on_revocation`] starts a thread that keeps one long-poll RPC
//! (`NextRevocations`) outstanding; the storage node parks it and answers as soon as
//! another node waits for a page this `(node, epoch)` holds (or after the poll's wait
//! bound, with nothing). The thread hands each [`Revocation`] to the installed handler,
//! which must write the page back if it changed and then, for
//! [`RevocationKind::WriteBackAndRelease`], unlock it. Waiters are answered by the
//! storage node when the holder's `unlock` (or, for a reader, `write_back`) arrives.

use super::dir::{DirEntry, DIR_ENTRY_SIZE};
use super::msg::{decode_response, Envelope, Layout, Request, Response, Revocation, ADMIN_NODE};
use super::notice;
use super::page::{verify_image, Page, PAGE_SIZE};
use super::redo::RedoRecord;
use super::StorageError;
use crate::fabric::{ClientOptions, Connection, Endpoint, FabricError, Op, OpOutput};
use crate::ids::{Epoch, Lsn, NodeId, PageId};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Ring slots read together with the head (one round trip when a round has no more
/// notices to consume than this).
pub const NOTICE_PREFETCH: u64 = 64;

/// What [`StorageClient::poll_notices`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoticePoll {
    /// The newest notice's sequence number: the caller has now consumed up to here.
    pub head: u64,
    /// The pages of the notices after the caller's position, in order (a page may
    /// appear more than once); `None` if the ring no longer holds them all.
    pub pages: Option<Vec<PageId>>,
    /// The incarnation of the storage node process that answered.
    pub incarnation: u64,
}

/// Pages per one-sided batch (about 1 MiB of frames).
const READ_CHUNK: usize = 128;
/// One-sided rounds before a page is read over RPC instead.
const ONESIDED_ROUNDS: usize = 6;
/// How long one revocation long poll may be parked on the storage node.
const POLL_WAIT_MS: u32 = 500;

/// Client of one storage node for one `(node, epoch)`.
pub struct StorageClient {
    /// The connection, replaced by [`StorageClient::reconnect`] (the storage node
    /// restarted).
    link: RwLock<Arc<Link>>,
    endpoint: Endpoint,
    opts: ClientOptions,
    node: NodeId,
    epoch: Epoch,
    layout: Layout,
    /// Frame word each page was last seen in (the one-sided read's guess).
    hints: Mutex<HashMap<PageId, u64>>,
    stop: Arc<AtomicBool>,
}

/// One connection and the incarnation of the storage node process it reached.
struct Link {
    conn: Arc<Connection>,
    incarnation: u64,
}

/// Handler of revocations, installed by the compute node.
pub type RevocationHandler = dyn Fn(&StorageClient, Revocation) + Send + Sync + 'static;

impl StorageClient {
    /// Connects as compute node `node` in incarnation `epoch`.
    pub fn connect(
        endpoint: &Endpoint,
        opts: &ClientOptions,
        node: NodeId,
        epoch: Epoch,
    ) -> Result<StorageClient, StorageError> {
        if node == ADMIN_NODE {
            return Err(StorageError::BadRequest(format!(
                "node id {node} is reserved for the admin identity"
            )));
        }
        if epoch.0 > super::dir::MAX_EPOCH {
            return Err(StorageError::BadRequest(format!(
                "epoch {epoch} does not fit the lock word (max {})",
                super::dir::MAX_EPOCH
            )));
        }
        Self::connect_as(endpoint, opts, node, epoch)
    }

    /// Connects with the admin identity (the GTM: [`StorageClient::release_locks_of`]).
    pub fn connect_admin(
        endpoint: &Endpoint,
        opts: &ClientOptions,
    ) -> Result<StorageClient, StorageError> {
        Self::connect_as(endpoint, opts, ADMIN_NODE, Epoch(0))
    }

    fn connect_as(
        endpoint: &Endpoint,
        opts: &ClientOptions,
        node: NodeId,
        epoch: Epoch,
    ) -> Result<StorageClient, StorageError> {
        let conn = Connection::connect(endpoint, opts)?;
        let mut c = StorageClient {
            link: RwLock::new(Arc::new(Link {
                conn: Arc::new(conn),
                incarnation: 0,
            })),
            endpoint: endpoint.clone(),
            opts: opts.clone(),
            node,
            epoch,
            layout: Layout {
                first_page: PageId(0),
                page_count: 0,
                dir_region: crate::ids::RegionId(0),
                frame_region: crate::ids::RegionId(0),
                frames: 0,
                notice_region: crate::ids::RegionId(0),
                notice_capacity: 0,
                incarnation: 0,
            },
            hints: Mutex::new(HashMap::new()),
            stop: Arc::new(AtomicBool::new(false)),
        };
        match c.call(Request::Describe)? {
            Response::Layout(l) => {
                c.layout = l;
                let conn = c.conn();
                *c.link.get_mut() = Arc::new(Link {
                    conn,
                    incarnation: l.incarnation,
                });
            }
            other => return Err(unexpected(&other)),
        }
        Ok(c)
    }

    /// Connects to the storage node again, as the same `(node, epoch)`, and makes the
    /// new connection the one every later call uses (calls in flight on the old one
    /// fail). Returns the incarnation of the storage node process reached: a new one
    /// means it restarted (its locks and notices are new; see `Request::Reclaim`).
    /// Refuses a node whose geometry changed, and a closed client.
    pub fn reconnect(&self) -> Result<u64, StorageError> {
        if self.stop.load(Ordering::Acquire) {
            return Err(StorageError::Fabric(FabricError::Disconnected));
        }
        let conn = Arc::new(Connection::connect(&self.endpoint, &self.opts)?);
        let env = Envelope {
            node: self.node,
            epoch: self.epoch,
            request: Request::Describe,
        };
        let l = match decode_response(&conn.call(&env.encode())?)?? {
            Response::Layout(l) => l,
            other => return Err(unexpected(&other)),
        };
        let same = |a: Layout| Layout {
            frames: 0,
            incarnation: 0,
            ..a
        };
        if same(l) != same(self.layout) {
            return Err(StorageError::Protocol(format!(
                "the storage node came back with another layout ({l:?}, was {:?})",
                self.layout
            )));
        }
        self.hints.lock().clear();
        let old = std::mem::replace(
            &mut *self.link.write(),
            Arc::new(Link {
                conn,
                incarnation: l.incarnation,
            }),
        );
        old.conn.close();
        Ok(l.incarnation)
    }

    /// The incarnation of the storage node process the current connection reached.
    pub fn incarnation(&self) -> u64 {
        self.link.read().incarnation
    }

    /// Ends this client: the connection closes and no reconnect is made.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        self.conn().close();
    }

    /// Takes the X locks of `pages` again after a restart of the storage node (each
    /// with the version of the caller's cached image), in batches; `done` after the
    /// last.
    pub fn reclaim(&self, pages: &[(PageId, crate::ids::PageVersion)]) -> Result<(), StorageError> {
        const BATCH: usize = 4096;
        let mut chunks = pages.chunks(BATCH).peekable();
        if chunks.peek().is_none() {
            return self.call_done(Request::Reclaim {
                pages: Vec::new(),
                done: true,
            });
        }
        while let Some(c) = chunks.next() {
            self.call_done(Request::Reclaim {
                pages: c.to_vec(),
                done: chunks.peek().is_none(),
            })?;
        }
        Ok(())
    }

    fn conn(&self) -> Arc<Connection> {
        self.link.read().conn.clone()
    }

    pub fn node(&self) -> NodeId {
        self.node
    }
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// The current fabric connection (for its counters and state).
    pub fn connection(&self) -> Arc<Connection> {
        self.conn()
    }

    fn call(&self, request: Request) -> Result<Response, StorageError> {
        let env = Envelope {
            node: self.node,
            epoch: self.epoch,
            request,
        };
        let bytes = self.conn().call(&env.encode())?;
        decode_response(&bytes)?
    }

    fn call_done(&self, request: Request) -> Result<(), StorageError> {
        match self.call(request)? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    fn check_page(&self, page: PageId) -> Result<u64, StorageError> {
        self.layout
            .index_of(page)
            .ok_or(StorageError::NotAllocated(page))
    }

    /// Allocates `n` fresh pages (contiguous ids), each at version 0 (empty).
    pub fn allocate_pages(&self, n: u32) -> Result<Vec<PageId>, StorageError> {
        match self.call(Request::Allocate { count: n })? {
            Response::Allocated { first, count } => {
                Ok((0..u64::from(count)).map(|i| PageId(first.0 + i)).collect())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Takes the page's exclusive lock, waiting in the storage node's queue (bounded by
    /// the connection's timeout). Re-locking a page this identity holds succeeds at once.
    pub fn lock_exclusive(&self, page: PageId) -> Result<(), StorageError> {
        self.call_done(Request::Lock { page })
    }

    pub fn unlock(&self, page: PageId) -> Result<(), StorageError> {
        self.call_done(Request::Unlock { page })
    }

    /// Publishes a page image (sealed; its header names page and version). Needs the X
    /// lock, a version above the stored one, and durable redo up to that version.
    pub fn write_back(&self, page: &Page) -> Result<(), StorageError> {
        self.call_done(Request::WriteBack { page: page.clone() })
    }

    /// Appends records to this node's redo stream; returns the LSN just past them.
    pub fn append_redo(&self, records: &[RedoRecord]) -> Result<Lsn, StorageError> {
        match self.call(Request::AppendRedo {
            records: records.to_vec(),
        })? {
            Response::Lsn(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }

    /// Appends records and waits until they are durable, in one round trip (the commit
    /// path: group-committed with every other force). Returns the durable LSN.
    pub fn append_and_force(&self, records: &[RedoRecord]) -> Result<Lsn, StorageError> {
        match self.call(Request::AppendForce {
            records: records.to_vec(),
        })? {
            Response::Lsn(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits until this node's stream is durable up to `lsn` (group-committed); returns
    /// the durable LSN (>= `lsn`).
    pub fn force_log(&self, lsn: Lsn) -> Result<Lsn, StorageError> {
        match self.call(Request::ForceLog { lsn })? {
            Response::Lsn(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }

    /// The GTM's call when a lease expired: fences `(node, epoch)`, rebuilds every page
    /// it held X from the last written-back image plus its durable redo, frees the locks.
    pub fn release_locks_of(&self, node: NodeId, epoch: Epoch) -> Result<(), StorageError> {
        self.call_done(Request::ReleaseLocksOf { node, epoch })
    }

    /// Asks the X holder of `page` (if any) to write its image back (it may keep the
    /// lock or give it up); returns once it did either (or once there is no holder).
    pub fn request_write_back(&self, page: PageId) -> Result<(), StorageError> {
        self.call_done(Request::RequestWriteBack { page })
    }

    /// The storage node's metrics in Prometheus text format.
    pub fn metrics(&self) -> Result<String, StorageError> {
        match self.call(Request::Metrics)? {
            Response::Text(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads pages over RPC (faulting non-resident ones in on the storage node).
    pub fn read_pages_rpc(&self, pages: &[PageId]) -> Result<Vec<Page>, StorageError> {
        for p in pages {
            self.check_page(*p)?;
        }
        let mut out = Vec::with_capacity(pages.len());
        for chunk in pages.chunks(READ_CHUNK) {
            match self.call(Request::ReadPages {
                pages: chunk.to_vec(),
            })? {
                Response::Pages(got) if got.len() == chunk.len() => {
                    let mut hints = self.hints.lock();
                    for ((fw, page), id) in got.into_iter().zip(chunk) {
                        let h = page
                            .verify()
                            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                        if h.id != *id {
                            return Err(StorageError::Protocol(format!(
                                "asked for page {id}, got page {}",
                                h.id
                            )));
                        }
                        if fw != 0 {
                            hints.insert(*id, fw);
                        }
                        out.push(page);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(out)
    }

    /// Reads pages with batched one-sided reads (directory entry, frame, directory entry
    /// per page, one batch per 128 pages), validated by the seqlock rule of
    /// [`super::dir`]; pages that are not resident, or keep changing, are read over RPC.
    /// Returns the pages in the order asked.
    pub fn read_pages(&self, pages: &[PageId]) -> Result<Vec<Page>, StorageError> {
        let mut out: Vec<Option<Page>> = vec![None; pages.len()];
        for p in pages {
            self.check_page(*p)?;
        }
        let mut pending: Vec<usize> = (0..pages.len()).collect();
        let mut rpc: Vec<usize> = Vec::new();
        for round in 0..ONESIDED_ROUNDS {
            if pending.is_empty() {
                break;
            }
            if round >= 2 {
                std::thread::sleep(Duration::from_micros(20 << round));
            }
            let mut next = Vec::new();
            for chunk in pending.chunks(READ_CHUNK) {
                self.read_round(pages, chunk, &mut out, &mut next, &mut rpc)?;
            }
            pending = next;
        }
        rpc.extend(pending);
        if !rpc.is_empty() {
            rpc.sort_unstable();
            let ids: Vec<PageId> = rpc.iter().map(|i| pages[*i]).collect();
            for (i, page) in rpc.iter().zip(self.read_pages_rpc(&ids)?) {
                out[*i] = Some(page);
            }
        }
        Ok(out
            .into_iter()
            .map(|p| p.expect("every page read"))
            .collect())
    }

    /// One one-sided batch for `idx`; accepted pages land in `out`, pages to retry in
    /// `retry`, non-resident ones in `rpc`.
    fn read_round(
        &self,
        pages: &[PageId],
        idx: &[usize],
        out: &mut [Option<Page>],
        retry: &mut Vec<usize>,
        rpc: &mut Vec<usize>,
    ) -> Result<(), StorageError> {
        let hints: Vec<Option<u64>> = {
            let h = self.hints.lock();
            idx.iter().map(|i| h.get(&pages[*i]).copied()).collect()
        };
        let mut ops = Vec::with_capacity(idx.len() * 3);
        for (k, i) in idx.iter().enumerate() {
            let entry = self.dir_offset(pages[*i]);
            ops.push(self.dir_read(entry));
            if let Some(fw) = hints[k] {
                ops.push(Op::Read {
                    region: self.layout.frame_region,
                    offset: (fw - 1) * PAGE_SIZE as u64,
                    len: PAGE_SIZE as u32,
                });
                ops.push(self.dir_read(entry));
            }
        }
        let mut results = self.conn().post(&ops)?.into_iter();
        let mut next = || -> Result<Vec<u8>, StorageError> {
            match results.next() {
                Some(Ok(OpOutput::Read(b))) => Ok(b),
                Some(Err(e)) => Err(StorageError::Protocol(format!("one-sided read: {e}"))),
                _ => Err(StorageError::Protocol(
                    "one-sided read: short answer".into(),
                )),
            }
        };
        let mut new_hints = Vec::new();
        for (k, i) in idx.iter().enumerate() {
            let page = pages[*i];
            let first = decode_entry(&next()?)?;
            let Some(fw) = hints[k] else {
                match first.frame {
                    Some(f) if !first.busy => {
                        new_hints.push((page, u64::from(f) + 1));
                        retry.push(*i);
                    }
                    Some(_) => retry.push(*i),
                    None => rpc.push(*i),
                }
                continue;
            };
            let frame = next()?;
            let second = decode_entry(&next()?)?;
            let valid = !first.busy
                && first.same_image(&second)
                && first.frame.map(|f| u64::from(f) + 1) == Some(fw);
            if valid {
                let img: &[u8; PAGE_SIZE] = frame
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Protocol("short frame read".into()))?;
                if let Ok(h) = verify_image(img) {
                    if h.id == page && h.version == first.version {
                        out[*i] = Some(Page::from_bytes(&frame).expect("8 KiB"));
                        continue;
                    }
                }
            }
            match second.frame {
                None if !second.busy => rpc.push(*i),
                Some(f) => {
                    new_hints.push((page, u64::from(f) + 1));
                    retry.push(*i);
                }
                None => retry.push(*i),
            }
        }
        if !new_hints.is_empty() {
            let mut h = self.hints.lock();
            for (p, fw) in new_hints {
                h.insert(p, fw);
            }
        }
        Ok(())
    }

    fn dir_offset(&self, page: PageId) -> u64 {
        (page.0 - self.layout.first_page.0) * DIR_ENTRY_SIZE as u64
    }

    /// The change notices published since notice `consumed` (see [`super::notice`]):
    /// one batch that reads the ring's head and, speculatively, the next
    /// [`NOTICE_PREFETCH`] slots, then one more for the rest if there are more. The
    /// slots are read after the head, so every notice up to the head is there unless
    /// the ring has overwritten it since (`pages: None`: the caller was lapped).
    ///
    /// The answer comes from this storage node alive after the call began (see
    /// [`Connection::confirm_peer_alive`]): a round that trusts this node's X locks and
    /// the images it read uses that (invariant 9 across a restart of this node).
    pub fn poll_notices(&self, consumed: u64) -> Result<NoticePoll, StorageError> {
        let link = self.link.read().clone();
        let poll = self.read_notices(&link, consumed)?;
        link.conn.confirm_peer_alive()?;
        Ok(poll)
    }

    /// Proves this storage node alive after the call began: a one-sided read of its
    /// memory (the notice-ring head), then [`Connection::confirm_peer_alive`].
    pub fn confirm_alive(&self) -> Result<(), StorageError> {
        let op = Op::Read {
            region: self.layout.notice_region,
            offset: notice::HEAD_OFFSET,
            len: 8,
        };
        let conn = self.conn();
        match conn.post(&[op])?.pop() {
            Some(Ok(OpOutput::Read(_))) => {}
            other => {
                return Err(StorageError::Protocol(format!(
                    "notice head read: {other:?}"
                )))
            }
        }
        conn.confirm_peer_alive()?;
        Ok(())
    }

    fn read_notices(&self, link: &Link, consumed: u64) -> Result<NoticePoll, StorageError> {
        let incarnation = link.incarnation;
        let cap = self.layout.notice_capacity;
        let region = self.layout.notice_region;
        if cap == 0 {
            return Err(StorageError::Protocol(
                "the storage node has no notice ring".into(),
            ));
        }
        let slots = |first: u64, n: u64| -> Vec<Op> {
            // Notices `first .. first + n`, as at most two contiguous ranges of the ring.
            let start = first % u64::from(cap);
            let head_part = n.min(u64::from(cap) - start);
            let mut ops = vec![Op::Read {
                region,
                offset: notice::slot_offset(first, cap),
                len: (head_part * notice::SLOT_SIZE) as u32,
            }];
            if n > head_part {
                ops.push(Op::Read {
                    region,
                    offset: notice::slot_offset(0, cap),
                    len: ((n - head_part) * notice::SLOT_SIZE) as u32,
                });
            }
            ops
        };
        let read_bytes = |ops: &[Op]| -> Result<Vec<Vec<u8>>, StorageError> {
            link.conn
                .post(ops)?
                .into_iter()
                .map(|r| match r {
                    Ok(OpOutput::Read(b)) => Ok(b),
                    other => Err(StorageError::Protocol(format!("notice read: {other:?}"))),
                })
                .collect()
        };
        let first = consumed + 1;
        let ahead = NOTICE_PREFETCH.min(u64::from(cap));
        let mut ops = vec![Op::Read {
            region,
            offset: notice::HEAD_OFFSET,
            len: 8,
        }];
        ops.extend(slots(first, ahead));
        let mut got = read_bytes(&ops)?.into_iter();
        let head_bytes = got.next().unwrap_or_default();
        let head = u64::from_le_bytes(
            head_bytes
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::Protocol("short notice head".into()))?,
        );
        if head < consumed {
            // The ring started over (a restarted storage node): nothing it says relates
            // to what the caller consumed.
            return Ok(NoticePoll {
                head,
                pages: None,
                incarnation,
            });
        }
        let n = head - consumed;
        if n == 0 {
            return Ok(NoticePoll {
                head,
                pages: Some(Vec::new()),
                incarnation,
            });
        }
        if n > u64::from(cap) {
            return Ok(NoticePoll {
                head,
                pages: None,
                incarnation,
            });
        }
        let mut bytes: Vec<u8> = got.flatten().collect();
        if n > ahead {
            for b in read_bytes(&slots(first + ahead, n - ahead))? {
                bytes.extend(b);
            }
        }
        bytes.truncate((n * notice::SLOT_SIZE) as usize);
        Ok(NoticePoll {
            head,
            pages: notice::decode_slots(first, &bytes),
            incarnation,
        })
    }

    fn dir_read(&self, offset: u64) -> Op {
        Op::Read {
            region: self.layout.dir_region,
            offset,
            len: DIR_ENTRY_SIZE as u32,
        }
    }

    /// Reads the directory entries of `count` consecutive pages from `first` with large
    /// sequential one-sided reads (up to 1 MiB each, all in one batch): the bulk
    /// validation path. Entries caught mid-rewrite come back with `busy` set; the caller
    /// treats those pages as unconfirmed.
    pub fn read_dir_range(&self, first: PageId, count: u64) -> Result<Vec<DirEntry>, StorageError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let start = self.check_page(first)?;
        self.check_page(PageId(first.0 + count - 1))?;
        const PER_OP: u64 = (1 << 20) / DIR_ENTRY_SIZE as u64;
        let ops: Vec<Op> = (0..count)
            .step_by(PER_OP as usize)
            .map(|i| Op::Read {
                region: self.layout.dir_region,
                offset: (start + i) * DIR_ENTRY_SIZE as u64,
                len: (PER_OP.min(count - i) * DIR_ENTRY_SIZE as u64) as u32,
            })
            .collect();
        let mut out = Vec::with_capacity(count as usize);
        for r in self.conn().post(&ops)? {
            match r {
                Ok(OpOutput::Read(b)) => {
                    for e in b.chunks(DIR_ENTRY_SIZE) {
                        out.push(decode_entry(e)?);
                    }
                }
                other => return Err(StorageError::Protocol(format!("directory read: {other:?}"))),
            }
        }
        Ok(out)
    }

    /// Reads directory entries one-sided, one batch (for coherence validation: version
    /// and X holder). Entries caught mid-rewrite (BUSY) are reread a few times.
    pub fn read_dir_entries(&self, pages: &[PageId]) -> Result<Vec<DirEntry>, StorageError> {
        let offsets = pages
            .iter()
            .map(|p| self.check_page(*p).map(|i| i * DIR_ENTRY_SIZE as u64))
            .collect::<Result<Vec<u64>, _>>()?;
        let mut out: Vec<Option<DirEntry>> = vec![None; pages.len()];
        let mut pending: Vec<usize> = (0..pages.len()).collect();
        for round in 0..50 {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
            let mut next = Vec::new();
            for chunk in pending.chunks(8192) {
                let ops: Vec<Op> = chunk.iter().map(|i| self.dir_read(offsets[*i])).collect();
                for (i, r) in chunk.iter().zip(self.conn().post(&ops)?) {
                    let b = match r {
                        Ok(OpOutput::Read(b)) => b,
                        other => {
                            return Err(StorageError::Protocol(format!(
                                "directory read: {other:?}"
                            )))
                        }
                    };
                    let e = decode_entry(&b)?;
                    if e.busy && round < 49 {
                        next.push(*i);
                    } else {
                        out[*i] = Some(e);
                    }
                }
            }
            pending = next;
        }
        Ok(out.into_iter().map(|e| e.expect("read")).collect())
    }

    /// Installs the revocation handler and starts the long-poll thread (once; a second
    /// call replaces nothing and returns an error).
    pub fn on_revocation<F>(self: &Arc<Self>, handler: F) -> Result<(), StorageError>
    where
        F: Fn(&StorageClient, Revocation) + Send + Sync + 'static,
    {
        let weak: Weak<StorageClient> = Arc::downgrade(self);
        let stop = self.stop.clone();
        std::thread::Builder::new()
            .name(format!("revocations-{}", self.node))
            .spawn(move || loop {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Some(client) = weak.upgrade() else { return };
                match client.call(Request::NextRevocations {
                    max_wait_ms: POLL_WAIT_MS,
                }) {
                    Ok(Response::Revocations(rs)) => {
                        for r in rs {
                            handler(&client, r);
                        }
                    }
                    Ok(other) => {
                        tracing::warn!(response = ?other, "unexpected revocation answer");
                    }
                    Err(StorageError::Fenced { .. }) => return,
                    // The storage node went away: the compute node reconnects
                    // (`reconnect`) or closes this client; poll the new connection.
                    Err(StorageError::Fabric(FabricError::Disconnected)) => {
                        drop(client);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "revocation poll failed; retrying");
                        drop(client);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|e| StorageError::Io(e.to_string()))?;
        Ok(())
    }
}

impl Drop for StorageClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn decode_entry(b: &[u8]) -> Result<DirEntry, StorageError> {
    DirEntry::decode(b).ok_or_else(|| StorageError::Protocol("short directory read".into()))
}

fn unexpected(r: &Response) -> StorageError {
    let kind = match r {
        Response::Layout(_) => "Layout",
        Response::Allocated { .. } => "Allocated",
        Response::Done => "Done",
        Response::Lsn(_) => "Lsn",
        Response::Pages(_) => "Pages",
        Response::Revocations(_) => "Revocations",
        Response::Text(_) => "Text",
    };
    StorageError::Protocol(format!("unexpected response {kind}"))
}
