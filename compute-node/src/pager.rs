//! The page interface the access methods (B-link trees) are written against.
//!
//! A [`Pager`] hands out
//!
//! * **reads**: an immutable copy of a page ([`Arc<Page>`]) that is at least as new as
//!   the reading transaction requires (the coherence protocol's job, docs/protocols.md §1); no
//!   lock is held afterwards, so a tree must validate what it reads the B-link way
//!   (high key + right link) and move right when a split overtook it;
//! * **writes**: a [`PageWrite`] latch — on a cluster, the global X page lock plus this
//!   node's local latch — over a working copy. [`PageWrite::publish`] installs the new
//!   image (version + 1, redo logged); dropping the latch unpublished discards the
//!   changes. A thread holds at most a few latches at a time and takes them in the
//!   order the tree documents (child before parent on splits, left before right).
//! * **ordering** of multi-page changes: publishing answers a [`Published`] token;
//!   [`PageWrite::after`] makes a later change durable only after the earlier one
//!   (invariant 8: a structure change whose pages live on several storage nodes must
//!   never be durable on one and not the other; a split publishes the new right page,
//!   then the left page, then the parent, each `after` the one before, so whatever a
//!   crash leaves durable is a prefix of that order, and every prefix is a valid tree).
//!
//! [`LocalPager`] keeps pages in this process's memory: the reference implementation
//! used by the tree's unit tests and by property tests as the simple model; the
//! cluster pager (buffer pool + coherence over storage nodes) implements the same trait.

use common::ids::{Lsn, PageId, PageVersion};
use common::storage::page::Page;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    #[error("page {0} does not exist")]
    NoSuchPage(PageId),
    /// This node lost its lease or its storage connection: it must stop writing.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("storage error: {0}")]
    Storage(String),
}

/// Page access for trees. Implementations are shared by many threads.
pub trait Pager: Send + Sync {
    /// A copy of the page, new enough for the caller (see module doc).
    fn read(&self, id: PageId) -> Result<Arc<Page>, PagerError>;
    /// Latches the page for writing (blocks while another thread or node holds it).
    fn write(&self, id: PageId) -> Result<PageWrite, PagerError>;
    /// A fresh zeroed page, already latched for writing.
    fn allocate(&self) -> Result<PageWrite, PagerError>;
}

/// Where a published change's redo went: a later change may be ordered after it with
/// [`PageWrite::after`]. Pagers without a log (the local pager) answer the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Storage node index and the change's sequence number in this node's redo queue
    /// for it (see `coherence`).
    pub(crate) redo: Option<(usize, u64)>,
}

type Publish = Box<dyn FnOnce(Page, Vec<Published>) -> Result<Published, PagerError> + Send>;
type Release = Box<dyn FnOnce() + Send>;

/// An exclusive latch over a page's working copy.
pub struct PageWrite {
    page: Page,
    publish: Option<Publish>,
    release: Option<Release>,
    after: Vec<Published>,
}

impl PageWrite {
    /// For pager implementations: `publish` installs the image (its header already
    /// carries version + 1), `release` drops the latch; it runs after `publish` or, if
    /// the latch is dropped unpublished, alone.
    pub fn new(page: Page, publish: Publish, release: Release) -> PageWrite {
        PageWrite {
            page,
            publish: Some(publish),
            release: Some(release),
            after: Vec::new(),
        }
    }

    /// This change must not become durable before `earlier` has (see module doc).
    pub fn after(&mut self, earlier: Published) {
        if earlier.redo.is_some() {
            self.after.push(earlier);
        }
    }

    pub fn id(&self) -> PageId {
        self.page.id()
    }

    /// The version the page will have once published.
    pub fn base_version(&self) -> PageVersion {
        self.page.version()
    }

    pub fn body(&self) -> &[u8] {
        self.page.body()
    }

    pub fn body_mut(&mut self) -> &mut [u8] {
        self.page.body_mut()
    }

    /// Installs the changed page (version + 1) and releases the latch.
    pub fn publish(mut self) -> Result<Published, PagerError> {
        let mut page = self.page.clone();
        let next = PageVersion(page.version().0 + 1);
        page.stamp(next, Lsn(page.header().lsn.0));
        page.seal();
        let publish = self.publish.take().expect("published once");
        publish(page, std::mem::take(&mut self.after))
        // `release` runs in Drop.
    }
}

impl Drop for PageWrite {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Pages in this process's memory (see module doc).
#[derive(Default)]
pub struct LocalPager {
    inner: Arc<LocalInner>,
}

#[derive(Default)]
struct LocalInner {
    pages: Mutex<HashMap<PageId, Arc<Page>>>,
    latched: Mutex<HashSet<PageId>>,
    unlatched: Condvar,
    next: Mutex<u64>,
}

impl LocalPager {
    pub fn new() -> LocalPager {
        LocalPager::default()
    }

    fn latch(&self, id: PageId) -> Release {
        let mut l = self.inner.latched.lock();
        while l.contains(&id) {
            self.inner.unlatched.wait(&mut l);
        }
        l.insert(id);
        let inner = self.inner.clone();
        Box::new(move || {
            inner.latched.lock().remove(&id);
            inner.unlatched.notify_all();
        })
    }

    fn latched_write(&self, id: PageId, page: Page) -> PageWrite {
        let release = self.latch(id);
        let inner = self.inner.clone();
        // Re-read under the latch: the copy passed in may be stale.
        let page = inner
            .pages
            .lock()
            .get(&id)
            .map(|p| (**p).clone())
            .unwrap_or(page);
        PageWrite::new(
            page,
            Box::new(move |p, _after| {
                inner.pages.lock().insert(id, Arc::new(p));
                Ok(Published::default())
            }),
            release,
        )
    }
}

impl Pager for LocalPager {
    fn read(&self, id: PageId) -> Result<Arc<Page>, PagerError> {
        self.inner
            .pages
            .lock()
            .get(&id)
            .cloned()
            .ok_or(PagerError::NoSuchPage(id))
    }

    fn write(&self, id: PageId) -> Result<PageWrite, PagerError> {
        let page = (*self.read(id)?).clone();
        Ok(self.latched_write(id, page))
    }

    fn allocate(&self) -> Result<PageWrite, PagerError> {
        let id = {
            let mut n = self.inner.next.lock();
            *n += 1;
            PageId(*n)
        };
        let page = Page::empty(id);
        self.inner.pages.lock().insert(id, Arc::new(page.clone()));
        Ok(self.latched_write(id, page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bumps_the_version_and_drop_discards() {
        let p = LocalPager::new();
        let mut w = p.allocate().unwrap();
        let id = w.id();
        w.body_mut()[0] = 7;
        w.publish().unwrap();
        let r = p.read(id).unwrap();
        assert_eq!(r.body()[0], 7);
        assert_eq!(r.version(), PageVersion(1));
        let mut w = p.write(id).unwrap();
        w.body_mut()[0] = 9;
        drop(w);
        assert_eq!(p.read(id).unwrap().body()[0], 7);
        assert_eq!(p.read(id).unwrap().version(), PageVersion(1));
    }
}
