//! B-link trees (Lehman & Yao, 1981) over a [`Pager`]: the access method for tables and
//! secondary indexes (docs/design.md). Many threads — and, through a cluster
//! pager, many compute nodes — read and write one tree at the same time.
//!
//! Keys are byte strings ordered by memcmp ([`key`] encodes typed tuples into them);
//! values are opaque byte strings (the MVCC layer keeps row version chains in them).
//!
//! # Shape
//!
//! A tree is named by its **meta page** (its [`PageId`] is the tree's id), which holds
//! the root page id and the height. Every node covers a key range `[low, high)`: `low`
//! is fixed when the node is created and never changes (there are no merges); `high`
//! shrinks when the node splits, and the node's **right link** then points at the new
//! sibling, whose range starts at that high key. The nodes of one level form a chain
//! by right links whose ranges tile the key space from `""` (the smallest key) to
//! +infinity. An inner entry `(key_i, child_i)` sends keys in `[key_i, key_{i+1})` to
//! `child_i`; entry 0's key is the node's low key (`""` on the leftmost node), so a
//! child's low key is the separator that points at it.
//!
//! # Readers take no latches
//!
//! A reader reads page *copies* ([`Pager::read`]) from the root down. If its key is at
//! or above a node's high key, a split overtook it between reading the parent and the
//! node, and the keys it wants are further right: it follows the right link ("move
//! right") until the key is below the high key. Since the split publishes the new right
//! page before the left page shrinks, every copy a reader can see covers its key either
//! itself or via its right chain. A reader never waits for a writer.
//!
//! # Writers: latch order and splits
//!
//! A writer descends like a reader, remembering the node it passed on each level (the
//! *path*), then latches the leaf with [`Pager::write`], moving right under latches
//! (latch the next node after releasing the current one) until the leaf covers the key.
//! It changes the leaf's working copy in place (slotted page) and publishes it. If the
//! entry does not fit, the leaf splits:
//!
//! 1. split the (latched, full) node's entries in two halves by bytes; the separator is
//!    the shortest prefix of the right half's first key above the left half's last key;
//! 2. allocate the right sibling (latched, invisible to everybody until linked);
//! 3. latch the **parent**: the path's node one level up, moving right (by the
//!    separator) past nodes that split meanwhile; when the path has no level above —
//!    the node was the root when we descended — latch the **meta page**: if the node
//!    is still the root, allocate a new root; otherwise the tree grew, so release the
//!    meta page and find the parent by descending from the current root;
//! 4. publish the right sibling (upper half, the old high key and right link), **then**
//!    the left node (lower half, high key = separator, right link = sibling); publishing
//!    releases the child's latch;
//! 5. insert `(separator, sibling)` into the parent (or fill the new root with
//!    `("", left), (separator, right)` and point the meta page at it); if the parent is
//!    full, it splits the same way, one level up.
//!
//! **Latch order** (why there is no deadlock): a thread takes latches only upwards and
//! rightwards — a child before its parent, a node before its right sibling, the meta
//! page after every node — and holds at most: the node being split, its fresh right
//! sibling, and the parent (or the meta page and a fresh root). Nobody waits for a node
//! to the left or below one it holds, so no cycle of waits can form. Holding the child
//! until the parent is latched also serialises two splits of the same root: the second
//! splitter cannot split the old root until the first has installed the new root.
//! The `upsert` callback runs under the leaf's latch and must not touch the tree.
//!
//! A pager error before step 4 fails the operation with nothing visible (a fresh page
//! may leak). After step 4 the change is made and the operation succeeds: the tree is
//! correct without the parent entry (the new node is reachable by its left neighbour's
//! right link), so the error is logged and the entry stays missing; if that was a root
//! split, the next split on the top level finds a level with several nodes and no
//! parent and installs a root listing the level's whole chain
//! (`install_root_over_level`).
//!
//! # Deletes
//!
//! A delete removes the entry from its leaf and nothing else: nodes may become
//! underfull or empty and are never merged or freed (an empty leaf stays in the chain
//! and keeps its range). This is what keeps `low` immutable, which both the move-right
//! rule and reverse scans rely on. Space comes back when keys are inserted again.
//!
//! # Scans
//!
//! Scans read leaf copies, never latches, and each key present for the whole scan is
//! returned exactly once, in order, even across concurrent splits.
//!
//! * **Forward**: descend to the leaf covering the lower bound, then follow right links.
//!   A copy's right link points at the node whose low key is the copy's high key, so
//!   the keys the copy gave (below its high key) and the keys of the next node (at or
//!   above it) never overlap and leave no gap; a split of the next node after we read
//!   our copy only moves keys further right, where we are going.
//! * **Reverse** (no left links): with `x` the exclusive upper limit (the upper bound,
//!   or `bound ++ 0x00` when inclusive), descend with "keys just below `x`" (in inner
//!   nodes take the last child whose key is `< x`; move right while `high < x`), return
//!   the leaf's keys below `x` backwards, then set `x` = the leaf's low key and descend
//!   again, until the low key is `""` or at or below the lower bound. Each round costs
//!   one descent; rounds cover `[low, x)` of one consistent copy and `x` strictly falls.
//!
//! # Node format (page body, 8160 bytes, little-endian)
//!
//! ```text
//! offset  size  field
//!      0     1  kind: 1 = leaf, 2 = inner
//!      1     1  node format version (1)
//!      2     2  level (0 = leaf)
//!      4     2  count: number of entries (slots)
//!      6     2  free_start: end of the slot array (= 24 + low_len + high_len + 2*count)
//!      8     2  free_end: start of the entry heap (entries live in [free_end, 8160))
//!     10     1  flags: bit 0 = high key is +infinity (then high_len = 0, right = 0)
//!     11     1  reserved (0)
//!     12     8  right link: PageId of the right sibling, 0 = none (rightmost)
//!     20     2  low_len
//!     22     2  high_len
//!     24        low key (low_len bytes), then high key (high_len bytes)
//!      .        slot array: count x u16 entry offsets, in key order
//!      .        free space
//! free_end      entry heap, growing down from the page end; each entry:
//!                 u16 key_len, u16 value_len, key, value
//!               (inner nodes: value = the child's PageId, 8 bytes)
//! ```
//!
//! Deleting an entry removes its slot and zeroes its bytes; the hole is reclaimed by
//! compaction when an insert needs it. [`node::NodeView::parse`] validates everything —
//! kind/level agreement, lengths, slot offsets and entry extents inside the body, keys
//! strictly ascending within `[low, high)`, inner entry 0 equal to the low key,
//! non-zero children — so a corrupt body is [`BTreeError::Corrupt`], never a panic.
//!
//! The meta page body: `"BLKT"`, u16 format (1), u16 reserved, u64 root PageId, u32
//! height (levels, root level + 1), u16 most entries per leaf (0: as many as fit),
//! u16 reserved.
//!
//! # Entries per leaf
//!
//! A tree may cap the entries of a leaf ([`TreeOptions::max_leaf_entries`]): an insert
//! into a full leaf splits it even though the entry would fit. A page is the unit of
//! coherence between compute nodes (one X holder at a time), so rows that different
//! nodes update side by side — a handful of hot rows in a small table, such as
//! TPC-C's warehouses and districts — contend for the page although they never
//! conflict as rows; one row per leaf keeps them apart (as Oracle's
//! `MINIMIZE RECORDS_PER_BLOCK` or a high `PCTFREE` does for RAC).
//!
//! # Limits
//!
//! Keys are at most [`MAX_KEY_LEN`] bytes and key + value at most [`MAX_ENTRY_LEN`]
//! (about a quarter of the body), so any overfull node splits into two halves that fit
//! even with maximal low and high keys; larger entries are rejected with
//! [`BTreeError::KeyTooLarge`] / [`BTreeError::EntryTooLarge`].

pub mod key;
pub mod node;
#[cfg(test)]
mod tests;

use crate::pager::{PageWrite, Pager, PagerError, Published};
use common::ids::PageId;
use common::storage::page::Page;
use node::{
    insert_in_place, remove_in_place, replace_in_place, touch_values, Kind, Meta, Node, NodeView,
};
use std::ops::Bound;
use std::sync::Arc;

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest key + value accepted (about a quarter of a page body).
pub const MAX_ENTRY_LEN: usize = 2000;
/// More right moves than any run of concurrent splits can cause: a cycle of links.
const MAX_MOVES_RIGHT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BTreeError {
    #[error("key of {len} bytes exceeds the {max}-byte limit")]
    KeyTooLarge { len: usize, max: usize },
    #[error("entry of {key_len} + {value_len} bytes (key + value) exceeds the {max}-byte limit")]
    EntryTooLarge {
        key_len: usize,
        value_len: usize,
        max: usize,
    },
    #[error("page {page}: corrupt b-tree page: {reason}")]
    Corrupt { page: PageId, reason: String },
    #[error(transparent)]
    Pager(#[from] PagerError),
}

pub type Result<T, E = BTreeError> = std::result::Result<T, E>;

fn corrupt(page: PageId, reason: impl Into<String>) -> BTreeError {
    BTreeError::Corrupt {
        page,
        reason: reason.into(),
    }
}

/// What [`BTree::rewrite_leaf`] does with one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rewrite {
    Keep,
    /// Replace the value.
    Put(Vec<u8>),
    Remove,
}

/// A key range for [`BTree::scan`].
pub type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// What a descent looks for.
#[derive(Clone, Copy, Debug)]
enum Probe<'k> {
    /// The node covering this key.
    At(&'k [u8]),
    /// The node covering the keys just below this exclusive limit (`None`: +infinity).
    Below(Option<&'k [u8]>),
}

impl Probe<'_> {
    fn must_move_right(&self, v: &NodeView<'_>) -> bool {
        match (self, v.high()) {
            (_, None) => false,
            (Probe::At(k), Some(h)) => *k >= h,
            (Probe::Below(None), Some(_)) => true,
            (Probe::Below(Some(x)), Some(h)) => *x > h,
        }
    }

    fn child(&self, v: &NodeView<'_>) -> Option<PageId> {
        let n = match self {
            Probe::At(k) => v.partition_point(|e| e <= *k),
            Probe::Below(None) => v.count(),
            Probe::Below(Some(x)) => v.partition_point(|e| e < *x),
        };
        n.checked_sub(1).map(|i| v.child(i))
    }
}

/// The latch a split holds one level up.
enum Parent {
    Node(PageWrite),
    NewRoot { meta: PageWrite, root: PageWrite },
}

/// Shape of a tree, from [`BTree::check_structure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeShape {
    pub height: u32,
    /// Nodes per level, leaves first.
    pub nodes_per_level: Vec<usize>,
    pub entries: usize,
}

/// A B-link tree (see module doc). Cheap to clone; all methods take `&self`.
#[derive(Clone)]
pub struct BTree {
    pager: Arc<dyn Pager>,
    meta: PageId,
    /// From the meta page (fixed at creation).
    max_leaf_entries: u16,
}

/// How a tree is laid out (fixed when it is created).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeOptions {
    /// Most entries per leaf (0: as many as fit); see the module doc.
    pub max_leaf_entries: u16,
}

impl std::fmt::Debug for BTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BTree {{ meta: {} }}", self.meta)
    }
}

impl BTree {
    /// Creates an empty tree: a meta page and an empty root leaf.
    pub fn create(pager: Arc<dyn Pager>) -> Result<BTree> {
        BTree::create_with(pager, TreeOptions::default())
    }

    /// Creates an empty tree laid out as `options` say.
    pub fn create_with(pager: Arc<dyn Pager>, options: TreeOptions) -> Result<BTree> {
        let mut meta = pager.allocate()?;
        let mut root = pager.allocate()?;
        Node::empty_leaf().encode(root.body_mut());
        let root_id = root.id();
        let root_done = root.publish()?;
        Meta {
            root: root_id,
            height: 1,
            max_leaf_entries: options.max_leaf_entries,
        }
        .encode(meta.body_mut());
        let id = meta.id();
        meta.after(root_done);
        meta.publish()?;
        Ok(BTree {
            pager,
            meta: id,
            max_leaf_entries: options.max_leaf_entries,
        })
    }

    /// Opens the tree whose meta page is `meta`.
    pub fn open(pager: Arc<dyn Pager>, meta: PageId) -> Result<BTree> {
        let mut tree = BTree {
            pager,
            meta,
            max_leaf_entries: 0,
        };
        tree.max_leaf_entries = tree.read_meta()?.max_leaf_entries;
        Ok(tree)
    }

    /// The tree's id: its meta page.
    pub fn id(&self) -> PageId {
        self.meta
    }

    /// Number of levels (1 = the root is a leaf).
    pub fn height(&self) -> Result<u32> {
        Ok(self.read_meta()?.height)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.descend(Probe::At(key), 0, None, |_, v| {
            Ok::<_, BTreeError>(v.search(key).ok().map(|i| v.value(i).to_vec()))
        })
    }

    /// Read-modify-write of one key under its leaf's latch: `f` gets the current value
    /// and returns the new one (`None` deletes the entry) or an error, which aborts with
    /// nothing changed. `f` runs exactly once unless the key is too long, and must not
    /// call into this tree (it holds the leaf latch).
    pub fn upsert<E, F>(&self, key: &[u8], f: F) -> Result<(), E>
    where
        E: From<BTreeError>,
        F: FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    {
        self.upsert_touching(key, f, |_| false)
    }

    /// [`BTree::upsert`], and when the leaf changes, `touch` gets every value of the
    /// leaf to rewrite in place, keeping its length (the MVCC layer stamps the commit
    /// timestamps it knows: the page is being written anyway, so this costs a few
    /// bytes of the same redo record, not a write of its own later). Like `f`, `touch`
    /// runs under the latch and must not call into this tree.
    pub fn upsert_touching<E, F, T>(&self, key: &[u8], f: F, mut touch: T) -> Result<(), E>
    where
        E: From<BTreeError>,
        F: FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
        T: FnMut(&mut [u8]) -> bool,
    {
        check_key(key)?;
        let (path, mut w) = self.latch_leaf(key)?;
        let id = w.id();
        let (found, new) = {
            let v = NodeView::parse(w.body(), id)?;
            let found = v.search(key);
            (found, f(found.ok().map(|i| v.value(i)))?)
        };
        match (found, new) {
            // Nothing to delete: drop the latch unpublished.
            (Err(_), None) => Ok(()),
            (Ok(i), None) => {
                remove_in_place(w.body_mut(), id, i)?;
                touch_values(w.body_mut(), id, &mut touch)?;
                w.publish().map_err(BTreeError::from)?;
                Ok(())
            }
            (found, Some(value)) => {
                check_entry(key, &value)?;
                let (idx, new_key) = match found {
                    Ok(i) => {
                        if replace_in_place(w.body_mut(), id, i, &value)? {
                            touch_values(w.body_mut(), id, &mut touch)?;
                            w.publish().map_err(BTreeError::from)?;
                            return Ok(());
                        }
                        remove_in_place(w.body_mut(), id, i)?;
                        (i, false)
                    }
                    Err(i) => (i, true),
                };
                let leaf_full = new_key
                    && self.max_leaf_entries > 0
                    && NodeView::parse(w.body(), id)?.count() >= usize::from(self.max_leaf_entries);
                if !leaf_full && insert_in_place(w.body_mut(), id, idx, key, &value)? {
                    touch_values(w.body_mut(), id, &mut touch)?;
                    w.publish().map_err(BTreeError::from)?;
                    return Ok(());
                }
                let mut node = Node::from_view(&NodeView::parse(w.body(), id)?);
                node.entries.insert(idx, (key.to_vec(), value));
                for (_, v) in &mut node.entries {
                    touch(v);
                }
                self.split_upward(&path, w, node)?;
                Ok(())
            }
        }
    }

    /// Rewrites the entries at or above `key` of the leaf covering it, under its latch
    /// and in one publish (so one redo record for many entries, not one each):
    /// `f(key, value)` is called for each, in key order, and says what becomes of it;
    /// an error from `f` aborts with nothing changed. `f` must not call into this tree
    /// (it runs under the latch).
    ///
    /// Returns where to go on (`None`: the tree's last entry was visited): the leaf's
    /// high key, or the next unvisited entry's key when the rewrite stopped early. It
    /// stops after the first entry whose new value would overflow the leaf: the leaf
    /// is then split, which always works for one grown entry (as for an insert into a
    /// full leaf), never for any number of them. `f` is called exactly once per entry
    /// it is given. Values that fit where they are are overwritten in place (a small
    /// redo diff); otherwise the leaf is rebuilt compactly.
    pub fn rewrite_leaf<E, F>(&self, key: &[u8], mut f: F) -> Result<Option<Vec<u8>>, E>
    where
        E: From<BTreeError>,
        F: FnMut(&[u8], &[u8]) -> Result<Rewrite, E>,
    {
        check_key(key)?;
        let (path, mut w) = self.latch_leaf(key)?;
        let id = w.id();
        let (changes, next, in_place, overflow) = {
            let v = NodeView::parse(w.body(), id)?;
            let body_len = w.body().len();
            let mut size = body_len - v.total_free();
            let mut changes = Vec::new();
            let mut in_place = true;
            let mut next = v.high().map(<[u8]>::to_vec);
            let mut overflow = false;
            for i in v.partition_point(|k| k < key)..v.count() {
                let (k, old) = (v.key(i), v.value(i));
                match f(k, old)? {
                    Rewrite::Keep => {}
                    Rewrite::Put(new) => {
                        check_entry(k, &new)?;
                        in_place &= new.len() <= old.len();
                        size = (size + new.len()).saturating_sub(old.len());
                        changes.push((i, Some(new)));
                    }
                    Rewrite::Remove => {
                        size -= node::SLOT_LEN + node::entry_len(k.len(), old.len());
                        changes.push((i, None));
                    }
                }
                if size > body_len {
                    overflow = true;
                    if i + 1 < v.count() {
                        next = Some(v.key(i + 1).to_vec());
                    }
                    break;
                }
            }
            (changes, next, in_place, overflow)
        };
        if changes.is_empty() {
            return Ok(next);
        }
        if in_place {
            // From the last entry down, so a removal never moves an entry still to do.
            for (i, new) in changes.iter().rev() {
                match new {
                    Some(val) => {
                        if !replace_in_place(w.body_mut(), id, *i, val)? {
                            return Err(corrupt(id, "in-place rewrite did not fit").into());
                        }
                    }
                    None => remove_in_place(w.body_mut(), id, *i)?,
                }
            }
            w.publish().map_err(BTreeError::from)?;
            return Ok(next);
        }
        let mut node = Node::from_view(&NodeView::parse(w.body(), id)?);
        for (i, new) in changes.into_iter().rev() {
            match new {
                Some(val) => node.entries[i].1 = val,
                None => {
                    node.entries.remove(i);
                }
            }
        }
        if overflow {
            self.split_upward(&path, w, node)?;
        } else {
            node.encode(w.body_mut());
            w.publish().map_err(BTreeError::from)?;
        }
        Ok(next)
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        check_entry(key, value)?;
        self.upsert(key, |_| Ok::<_, BTreeError>(Some(value.to_vec())))
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let mut existed = false;
        self.upsert(key, |old| {
            existed = old.is_some();
            Ok::<_, BTreeError>(None)
        })?;
        Ok(existed)
    }

    /// Calls `visit(key, value)` for the keys in `range`, ascending (or descending if
    /// `reverse`), until it returns `false`, `limit` keys were visited, or the range
    /// ends; returns the number visited. Takes no latches (see module doc), so `visit`
    /// may use the tree.
    pub fn scan<E, F>(
        &self,
        range: KeyRange<'_>,
        reverse: bool,
        limit: Option<usize>,
        visit: F,
    ) -> Result<usize, E>
    where
        E: From<BTreeError>,
        F: FnMut(&[u8], &[u8]) -> Result<bool, E>,
    {
        let limit = limit.unwrap_or(usize::MAX);
        if limit == 0 || range_is_empty(range) {
            return Ok(0);
        }
        if reverse {
            self.scan_reverse(range, limit, visit)
        } else {
            self.scan_forward(range, limit, visit)
        }
    }

    fn scan_forward<E, F>(
        &self,
        (lo, hi): KeyRange<'_>,
        limit: usize,
        mut visit: F,
    ) -> Result<usize, E>
    where
        E: From<BTreeError>,
        F: FnMut(&[u8], &[u8]) -> Result<bool, E>,
    {
        let start = match lo {
            Bound::Unbounded => &[][..],
            Bound::Included(k) | Bound::Excluded(k) => k,
        };
        let mut page = self.descend(Probe::At(start), 0, None, |p, _| {
            Ok::<_, BTreeError>(p.clone())
        })?;
        let mut expected_low: Option<Vec<u8>> = None;
        let mut visited = 0;
        loop {
            let v = NodeView::parse(page.body(), page.id())?;
            if v.level() != 0 || expected_low.as_deref().is_some_and(|l| l != v.low()) {
                return Err(corrupt(v.page(), "right link leads off the leaf chain").into());
            }
            let first = v.partition_point(|k| !above_lo(k, lo));
            for i in first..v.count() {
                let k = v.key(i);
                if !below_hi(k, hi) {
                    return Ok(visited);
                }
                visited += 1;
                if !visit(k, v.value(i))? || visited == limit {
                    return Ok(visited);
                }
            }
            match (v.high(), v.right()) {
                (Some(h), Some(next)) if below_hi(h, hi) => {
                    expected_low = Some(h.to_vec());
                    page = self.read_page(next)?;
                }
                _ => return Ok(visited),
            }
        }
    }

    fn scan_reverse<E, F>(
        &self,
        (lo, hi): KeyRange<'_>,
        limit: usize,
        mut visit: F,
    ) -> Result<usize, E>
    where
        E: From<BTreeError>,
        F: FnMut(&[u8], &[u8]) -> Result<bool, E>,
    {
        let mut x: Option<Vec<u8>> = match hi {
            Bound::Unbounded => None,
            Bound::Excluded(e) => Some(e.to_vec()),
            Bound::Included(e) => Some([e, &[0][..]].concat()),
        };
        let mut visited = 0;
        loop {
            if x.as_deref().is_some_and(<[u8]>::is_empty) {
                return Ok(visited);
            }
            let limit_x = x.as_deref();
            let next = self.descend(Probe::Below(limit_x), 0, None, |_, v| {
                let end = match limit_x {
                    None => v.count(),
                    Some(x) => v.partition_point(|k| k < x),
                };
                for i in (0..end).rev() {
                    let k = v.key(i);
                    if !above_lo(k, lo) {
                        return Ok(None);
                    }
                    visited += 1;
                    if !visit(k, v.value(i))? || visited == limit {
                        return Ok(None);
                    }
                }
                let low = v.low();
                let more = match lo {
                    Bound::Unbounded => !low.is_empty(),
                    Bound::Included(s) | Bound::Excluded(s) => s < low,
                };
                Ok::<_, E>(more.then(|| low.to_vec()))
            })?;
            match next {
                // Rounds must make progress: a low key below the limit (module doc).
                Some(low) if x.as_deref().is_some_and(|x| low.as_slice() >= x) => {
                    return Err(corrupt(self.meta, "reverse scan does not move left").into());
                }
                Some(low) => x = Some(low),
                None => return Ok(visited),
            }
        }
    }

    /// Walks every level from its leftmost node along the right links and checks that
    /// the chains tile the key space, that the top level is the root alone, that every
    /// inner entry's key is its child's low
    /// key, and that each inner level's children are exactly the chain below (true once
    /// no split is in flight). Reads copies only; meant for tests and offline checks.
    pub fn check_structure(&self) -> Result<TreeShape> {
        let meta = self.read_meta()?;
        let mut first = meta.root;
        let mut nodes_per_level = Vec::new();
        let mut entries = 0;
        let mut children_above: Option<Vec<(Vec<u8>, PageId)>> = None;
        for level in (0..meta.height as u16).rev() {
            let mut chain = Vec::new();
            let mut id = Some(first);
            let mut prev_high: Option<Vec<u8>> = Some(Vec::new());
            let mut children = Vec::new();
            while let Some(pid) = id {
                let page = self.read_page(pid)?;
                let v = NodeView::parse(page.body(), pid)?;
                if v.level() != level || prev_high.as_deref() != Some(v.low()) {
                    return Err(corrupt(pid, format!("breaks the chain of level {level}")));
                }
                chain.push((v.low().to_vec(), pid));
                if v.kind() == Kind::Inner {
                    children.extend((0..v.count()).map(|i| (v.key(i).to_vec(), v.child(i))));
                } else {
                    entries += v.count();
                }
                prev_high = v.high().map(<[u8]>::to_vec);
                id = v.right();
                if chain.len() > MAX_MOVES_RIGHT {
                    return Err(corrupt(pid, "right links loop"));
                }
            }
            if prev_high.is_some() {
                return Err(corrupt(
                    first,
                    format!("level {level} does not reach +infinity"),
                ));
            }
            if let Some(above) = children_above.take() {
                if above != chain {
                    return Err(corrupt(
                        first,
                        format!("level {level}'s chain differs from its parents' entries"),
                    ));
                }
            }
            if level + 1 == meta.height as u16 && chain.len() != 1 {
                return Err(corrupt(
                    first,
                    format!(
                        "top level has {} nodes (a root split was cut short)",
                        chain.len()
                    ),
                ));
            }
            nodes_per_level.push(chain.len());
            if level > 0 {
                first = children[0].1;
                children_above = Some(children);
            }
        }
        nodes_per_level.reverse();
        Ok(TreeShape {
            height: meta.height,
            nodes_per_level,
            entries,
        })
    }

    // ---- internals ----

    fn read_page(&self, id: PageId) -> Result<Arc<Page>> {
        let page = self.pager.read(id)?;
        if page.id() != id {
            return Err(corrupt(id, format!("page carries id {}", page.id())));
        }
        Ok(page)
    }

    fn read_meta(&self) -> Result<Meta> {
        Meta::decode(self.read_page(self.meta)?.body(), self.meta)
    }

    /// Lock-free descent from the root to the node at `stop_level` that `probe` is
    /// after, moving right where splits overtook us; records the node passed on each
    /// level in `path` (indexed by level) and hands the final copy to `at`.
    fn descend<R, E: From<BTreeError>>(
        &self,
        probe: Probe<'_>,
        stop_level: u16,
        path: Option<&mut Vec<PageId>>,
        at: impl FnOnce(&Arc<Page>, &NodeView<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let meta = self.read_meta()?;
        let top = (meta.height - 1) as u16;
        if stop_level > top {
            return Err(corrupt(
                self.meta,
                format!("no level {stop_level} in a tree of height {}", meta.height),
            )
            .into());
        }
        if let Some(p) = path {
            p.clear();
            p.resize(top as usize + 1, PageId(0));
            return self.descend_from(meta.root, top, probe, stop_level, Some(p), at);
        }
        self.descend_from(meta.root, top, probe, stop_level, None, at)
    }

    /// [`BTree::descend`] from node `id`, expected at `level`.
    fn descend_from<R, E: From<BTreeError>>(
        &self,
        mut id: PageId,
        mut level: u16,
        probe: Probe<'_>,
        stop_level: u16,
        mut path: Option<&mut Vec<PageId>>,
        at: impl FnOnce(&Arc<Page>, &NodeView<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut moves = 0;
        loop {
            let page = self.read_page(id)?;
            let v = NodeView::parse(page.body(), id)?;
            if v.level() != level {
                return Err(corrupt(
                    id,
                    format!("at level {} where {level} was expected", v.level()),
                )
                .into());
            }
            if probe.must_move_right(&v) {
                moves += 1;
                if moves > MAX_MOVES_RIGHT {
                    return Err(corrupt(id, "right links loop").into());
                }
                id = v
                    .right()
                    .ok_or_else(|| corrupt(id, "finite high key, no right link"))?;
                continue;
            }
            if let Some(p) = path.as_deref_mut() {
                if let Some(slot) = p.get_mut(level as usize) {
                    *slot = id;
                }
            }
            if level == stop_level {
                return at(&page, &v);
            }
            id = probe
                .child(&v)
                .ok_or_else(|| corrupt(id, "no child covers the key"))?;
            level -= 1;
        }
    }

    /// Descends to the leaf covering `key` and latches it (moving right under latches);
    /// also returns the path of the descent, which a split of the leaf needs.
    ///
    /// The descent stops at the leaf's parent and latches the child it names without
    /// reading it first: the latch fetches the newest image with the X lock anyway, and
    /// a read of a leaf X-held by another node would first ask that node to write it
    /// back (and give the lock up), so that the latch must then take the lock in a
    /// second hand-over. (A child that split meanwhile is left by its right link, as
    /// any stale pointer is.)
    fn latch_leaf(&self, key: &[u8]) -> Result<(Vec<PageId>, PageWrite)> {
        let probe = Probe::At(key);
        let meta = self.read_meta()?;
        let top = (meta.height - 1) as u16;
        let mut path = vec![PageId(0); top as usize + 1];
        let leaf = if top == 0 {
            // The root is the leaf (if it split since, its right link leads on).
            meta.root
        } else {
            self.descend_from(meta.root, top, probe, 1, Some(&mut path), |_, v| {
                probe
                    .child(v)
                    .ok_or_else(|| corrupt(v.page(), "no child covers the key"))
            })?
        };
        let w = self.latch_covering(leaf, key, 0)?;
        path[0] = w.id();
        Ok((path, w))
    }

    /// Latches the node at `level` covering `key`, starting at `id` and moving right.
    fn latch_covering(&self, mut id: PageId, key: &[u8], level: u16) -> Result<PageWrite> {
        for _ in 0..MAX_MOVES_RIGHT {
            let w = self.pager.write(id)?;
            if w.id() != id {
                return Err(corrupt(id, format!("latched page carries id {}", w.id())));
            }
            let v = NodeView::parse(w.body(), id)?;
            if v.level() != level {
                return Err(corrupt(
                    id,
                    format!("at level {} where {level} was expected", v.level()),
                ));
            }
            let next = if v.is_right_of(key) { v.right() } else { None };
            match next {
                None => return Ok(w),
                Some(r) => id = r,
            }
        }
        Err(corrupt(id, "right links loop"))
    }

    /// Splits the latched, overfull `node` (the new contents of `w`) and inserts the
    /// separator one level up, repeating while parents overflow (module doc, steps 1-5).
    /// Once the leaf is published the change is made: a later error only leaves a
    /// parent entry missing, which readers do not need, so it is logged, not returned.
    fn split_upward(&self, path: &[PageId], w: PageWrite, node: Node) -> Result<()> {
        let mut applied = false;
        match self.split_and_link(path, w, node, &mut applied) {
            Err(e) if applied => {
                tracing::warn!(tree = %self.meta, error = %e,
                    "b-tree split left without its parent entry (reachable by right link)");
                Ok(())
            }
            r => r,
        }
    }

    fn split_and_link(
        &self,
        path: &[PageId],
        mut w: PageWrite,
        mut node: Node,
        applied: &mut bool,
    ) -> Result<()> {
        // Every publish of the structure change is ordered after the one before it
        // (invariant 8): whatever prefix a crash leaves durable is a valid tree — a new
        // right page nobody links to yet, then a left page linking it, then the parent.
        let mut prev = Published::default();
        loop {
            let child = w.id();
            let level = node.level;
            let (mut left, right, sep) = node.split(w.body().len(), child)?;
            let mut rw = self.pager.allocate()?;
            let right_id = rw.id();
            left.right = Some(right_id);
            let had_right = right.right.is_some();
            let parent = self.latch_parent(path, child, level, had_right, &sep)?;
            right.encode(rw.body_mut());
            rw.after(prev);
            prev = rw.publish()?;
            left.encode(w.body_mut());
            w.after(prev);
            prev = w.publish()?;
            *applied = true;
            match parent {
                Parent::NewRoot { mut meta, mut root } => {
                    Node::new_root(level + 1, child, sep, right_id).encode(root.body_mut());
                    let root_id = root.id();
                    root.after(prev);
                    prev = root.publish()?;
                    Meta {
                        root: root_id,
                        height: level as u32 + 2,
                        max_leaf_entries: self.max_leaf_entries,
                    }
                    .encode(meta.body_mut());
                    meta.after(prev);
                    meta.publish()?;
                    tracing::debug!(tree = %self.meta, root = %root_id, height = level + 2, "b-tree root split");
                    return Ok(());
                }
                Parent::Node(mut pw) => {
                    let pid = pw.id();
                    let idx = {
                        let v = NodeView::parse(pw.body(), pid)?;
                        match v.search(&sep) {
                            // Already linked by a root installed over an incomplete level.
                            Ok(i) if v.child(i) == right_id => return Ok(()),
                            Ok(_) => {
                                return Err(corrupt(pid, "separator already points elsewhere"))
                            }
                            Err(i) => i,
                        }
                    };
                    let child_ref = right_id.0.to_le_bytes();
                    if insert_in_place(pw.body_mut(), pid, idx, &sep, &child_ref)? {
                        pw.after(prev);
                        pw.publish()?;
                        return Ok(());
                    }
                    let mut up = Node::from_view(&NodeView::parse(pw.body(), pid)?);
                    up.entries.insert(idx, (sep, child_ref.to_vec()));
                    node = up;
                    w = pw;
                }
            }
        }
    }

    /// Latches the parent level of `child` (at `child_level`) for inserting `sep`;
    /// `child` is latched by the caller (child before parent). `had_right`: the child
    /// had a right sibling before this split.
    fn latch_parent(
        &self,
        path: &[PageId],
        child: PageId,
        child_level: u16,
        had_right: bool,
        sep: &[u8],
    ) -> Result<Parent> {
        let level = child_level + 1;
        let start = match path.get(level as usize) {
            Some(&p) => p,
            None => loop {
                let meta_w = self.pager.write(self.meta)?;
                let meta = Meta::decode(meta_w.body(), self.meta)?;
                if meta.root == child && !had_right {
                    if meta.height != level as u32 {
                        return Err(corrupt(self.meta, "root level disagrees with the height"));
                    }
                    let root = self.pager.allocate()?;
                    return Ok(Parent::NewRoot { meta: meta_w, root });
                }
                if meta.height > level as u32 {
                    drop(meta_w);
                    break self.descend(Probe::At(sep), level, None, |_, v| {
                        Ok::<_, BTreeError>(v.page())
                    })?;
                }
                // The top level has several nodes but no parent: an earlier root split was
                // cut short before installing the new root (see module doc).
                self.install_root_over_level(meta_w, meta)?;
            },
        };
        Ok(Parent::Node(self.latch_covering(start, sep, level)?))
    }

    /// Under the meta latch: a new root listing every node of the current top level's
    /// chain (repairs a root split that a pager error cut short).
    fn install_root_over_level(&self, mut meta_w: PageWrite, meta: Meta) -> Result<()> {
        let level = (meta.height - 1) as u16;
        let mut entries = Vec::new();
        let mut id = Some(meta.root);
        while let Some(pid) = id {
            let page = self.read_page(pid)?;
            let v = NodeView::parse(page.body(), pid)?;
            if v.level() != level || entries.len() > MAX_MOVES_RIGHT {
                return Err(corrupt(pid, "bad top-level chain"));
            }
            entries.push((v.low().to_vec(), pid.0.to_le_bytes().to_vec()));
            id = v.right();
        }
        let root = Node {
            kind: Kind::Inner,
            level: level + 1,
            low: Vec::new(),
            high: None,
            right: None,
            entries,
        };
        let mut rw = self.pager.allocate()?;
        if root.encoded_len() > rw.body().len() {
            return Err(corrupt(
                meta.root,
                "top level too long to repair under one root",
            ));
        }
        root.encode(rw.body_mut());
        let root_id = rw.id();
        let root_done = rw.publish()?;
        Meta {
            root: root_id,
            height: meta.height + 1,
            ..meta
        }
        .encode(meta_w.body_mut());
        meta_w.after(root_done);
        meta_w.publish()?;
        tracing::warn!(tree = %self.meta, root = %root_id, "b-tree: installed a root over an incomplete top level");
        Ok(())
    }
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(BTreeError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

fn check_entry(key: &[u8], value: &[u8]) -> Result<()> {
    check_key(key)?;
    if key.len() + value.len() > MAX_ENTRY_LEN {
        return Err(BTreeError::EntryTooLarge {
            key_len: key.len(),
            value_len: value.len(),
            max: MAX_ENTRY_LEN,
        });
    }
    Ok(())
}

fn above_lo(key: &[u8], lo: Bound<&[u8]>) -> bool {
    match lo {
        Bound::Unbounded => true,
        Bound::Included(s) => key >= s,
        Bound::Excluded(s) => key > s,
    }
}

fn below_hi(key: &[u8], hi: Bound<&[u8]>) -> bool {
    match hi {
        Bound::Unbounded => true,
        Bound::Included(e) => key <= e,
        Bound::Excluded(e) => key < e,
    }
}

fn range_is_empty((lo, hi): KeyRange<'_>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
        (Bound::Unbounded, Bound::Excluded(b)) => b.is_empty(),
        _ => false,
    }
}
