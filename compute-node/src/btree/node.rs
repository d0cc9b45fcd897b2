//! The on-page format of B-link tree nodes and of the tree's meta page: codec, total
//! validation, in-place slotted changes and splits. The byte layout is documented in
//! the parent module ([`crate::btree`], "Node format").
//!
//! Reading goes through [`NodeView::parse`], which checks *every* length, offset and
//! ordering rule once; after that the accessors only slice ranges already proven in
//! bounds, so a corrupt body is an error and never a panic.

use super::{BTreeError, MAX_ENTRY_LEN, MAX_KEY_LEN};
use common::ids::PageId;

/// Bytes of the fixed node header.
pub const HEADER_LEN: usize = 24;
/// Bytes per slot (a `u16` entry offset).
pub const SLOT_LEN: usize = 2;
/// Bytes before an entry's key: `u16` key length, `u16` value length.
pub const ENTRY_HEADER_LEN: usize = 4;
/// Bytes of an inner entry's value: the child's page id.
pub const CHILD_LEN: usize = 8;

const KIND_LEAF: u8 = 1;
const KIND_INNER: u8 = 2;
const NODE_FORMAT: u8 = 1;
const FLAG_HIGH_INF: u8 = 0x01;

const OFF_KIND: usize = 0;
const OFF_FORMAT: usize = 1;
const OFF_LEVEL: usize = 2;
const OFF_COUNT: usize = 4;
const OFF_FREE_START: usize = 6;
const OFF_FREE_END: usize = 8;
const OFF_FLAGS: usize = 10;
const OFF_RESERVED: usize = 11;
const OFF_RIGHT: usize = 12;
const OFF_LOW_LEN: usize = 20;
const OFF_HIGH_LEN: usize = 22;

/// Meta page magic.
pub const META_MAGIC: [u8; 4] = *b"BLKT";
const META_FORMAT: u16 = 1;
/// Bytes of the meta record at the start of the meta page's body.
pub const META_LEN: usize = 24;
/// Deeper than any tree of 8 KiB pages can get; a larger stored height is corruption.
const MAX_HEIGHT: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Leaf,
    Inner,
}

fn corrupt(page: PageId, reason: impl Into<String>) -> BTreeError {
    BTreeError::Corrupt {
        page,
        reason: reason.into(),
    }
}

fn rd16(b: &[u8], off: usize) -> usize {
    u16::from_le_bytes([b[off], b[off + 1]]) as usize
}

fn wr16(b: &mut [u8], off: usize, v: usize) {
    debug_assert!(v <= u16::MAX as usize);
    b[off..off + 2].copy_from_slice(&(v as u16).to_le_bytes());
}

fn rd64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Bytes an entry takes in the heap (header + key + value), slot not included.
pub fn entry_len(key_len: usize, val_len: usize) -> usize {
    ENTRY_HEADER_LEN + key_len + val_len
}

/// A validated, read-only view of a node body.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    body: &'a [u8],
    page: PageId,
    kind: Kind,
    level: u16,
    count: usize,
    right: Option<PageId>,
    low: &'a [u8],
    high: Option<&'a [u8]>,
    /// Offset of the slot array.
    slots: usize,
    free_end: usize,
}

impl<'a> NodeView<'a> {
    /// Validates `body` completely (see module doc); `page` names the page in errors.
    pub fn parse(body: &'a [u8], page: PageId) -> Result<NodeView<'a>, BTreeError> {
        let len = body.len();
        if !(HEADER_LEN..=u16::MAX as usize).contains(&len) {
            return Err(corrupt(page, format!("node body of {len} bytes")));
        }
        let kind = match body[OFF_KIND] {
            KIND_LEAF => Kind::Leaf,
            KIND_INNER => Kind::Inner,
            0 => return Err(corrupt(page, "not a b-tree node (kind 0: never formatted)")),
            k => return Err(corrupt(page, format!("unknown node kind {k}"))),
        };
        if body[OFF_FORMAT] != NODE_FORMAT {
            return Err(corrupt(
                page,
                format!("unknown node format {}", body[OFF_FORMAT]),
            ));
        }
        let level = rd16(body, OFF_LEVEL) as u16;
        if (kind == Kind::Leaf) != (level == 0) {
            return Err(corrupt(page, format!("{kind:?} node at level {level}")));
        }
        let count = rd16(body, OFF_COUNT);
        let free_start = rd16(body, OFF_FREE_START);
        let free_end = rd16(body, OFF_FREE_END);
        let flags = body[OFF_FLAGS];
        if flags & !FLAG_HIGH_INF != 0 || body[OFF_RESERVED] != 0 {
            return Err(corrupt(page, format!("bad flags {flags:#04x}")));
        }
        let right = match rd64(body, OFF_RIGHT) {
            0 => None,
            r => Some(PageId(r)),
        };
        let low_len = rd16(body, OFF_LOW_LEN);
        let high_len = rd16(body, OFF_HIGH_LEN);
        let high_inf = flags & FLAG_HIGH_INF != 0;
        if low_len > MAX_KEY_LEN || high_len > MAX_KEY_LEN || (high_inf && high_len != 0) {
            return Err(corrupt(
                page,
                format!("bound lengths low {low_len} high {high_len}"),
            ));
        }
        if high_inf != right.is_none() {
            return Err(corrupt(page, "right link and +infinity high key disagree"));
        }
        let slots = HEADER_LEN + low_len + high_len;
        if free_start != slots + count * SLOT_LEN || free_start > free_end || free_end > len {
            return Err(corrupt(
                page,
                format!("free space [{free_start}, {free_end}) with {count} slots after {slots}"),
            ));
        }
        let low = &body[HEADER_LEN..HEADER_LEN + low_len];
        let high = (!high_inf).then(|| &body[HEADER_LEN + low_len..slots]);
        if let Some(h) = high {
            if low >= h {
                return Err(corrupt(page, "low key is not below the high key"));
            }
        }
        if kind == Kind::Inner && count == 0 {
            return Err(corrupt(page, "inner node without children"));
        }
        let view = NodeView {
            body,
            page,
            kind,
            level,
            count,
            right,
            low,
            high,
            slots,
            free_end,
        };
        let mut prev: Option<&[u8]> = None;
        for i in 0..count {
            let off = rd16(body, slots + i * SLOT_LEN);
            if off < free_end || off + ENTRY_HEADER_LEN > len {
                return Err(corrupt(page, format!("slot {i} points at {off}")));
            }
            let k = rd16(body, off);
            let v = rd16(body, off + 2);
            if off + entry_len(k, v) > len || k > MAX_KEY_LEN {
                return Err(corrupt(
                    page,
                    format!("entry {i} at {off} overruns the page"),
                ));
            }
            match kind {
                Kind::Leaf if k + v > MAX_ENTRY_LEN => {
                    return Err(corrupt(page, format!("entry {i} is {} bytes", k + v)))
                }
                Kind::Inner if v != CHILD_LEN || rd64(body, off + 4 + k) == 0 => {
                    return Err(corrupt(page, format!("inner entry {i} has no child")))
                }
                _ => {}
            }
            let key = &body[off + 4..off + 4 + k];
            let ordered = match prev {
                Some(p) => p < key,
                None if kind == Kind::Inner => key == low,
                None => key >= low,
            };
            if !ordered {
                return Err(corrupt(page, format!("entry {i} is out of key order")));
            }
            prev = Some(key);
        }
        if let (Some(last), Some(h)) = (prev, high) {
            if last >= h {
                return Err(corrupt(page, "last key is not below the high key"));
            }
        }
        Ok(view)
    }

    pub fn page(&self) -> PageId {
        self.page
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn level(&self) -> u16 {
        self.level
    }
    pub fn count(&self) -> usize {
        self.count
    }
    /// The right sibling (`None` for the rightmost node of a level).
    pub fn right(&self) -> Option<PageId> {
        self.right
    }
    /// Inclusive lower bound of the node's key range; never changes once written.
    pub fn low(&self) -> &'a [u8] {
        self.low
    }
    /// Exclusive upper bound; `None` is +infinity.
    pub fn high(&self) -> Option<&'a [u8]> {
        self.high
    }

    /// Whether `key` lies at or beyond the high key, i.e. a reader must move right.
    pub fn is_right_of(&self, key: &[u8]) -> bool {
        self.high.is_some_and(|h| key >= h)
    }

    fn entry_off(&self, i: usize) -> usize {
        rd16(self.body, self.slots + i * SLOT_LEN)
    }

    pub fn key(&self, i: usize) -> &'a [u8] {
        let off = self.entry_off(i);
        let k = rd16(self.body, off);
        &self.body[off + 4..off + 4 + k]
    }

    /// The value of leaf entry `i` (for an inner node: the child id's 8 bytes).
    pub fn value(&self, i: usize) -> &'a [u8] {
        let off = self.entry_off(i);
        let k = rd16(self.body, off);
        let v = rd16(self.body, off + 2);
        &self.body[off + 4 + k..off + 4 + k + v]
    }

    pub fn child(&self, i: usize) -> PageId {
        PageId(rd64(self.value(i), 0))
    }

    fn entry_size(&self, i: usize) -> usize {
        let off = self.entry_off(i);
        entry_len(rd16(self.body, off), rd16(self.body, off + 2))
    }

    /// Number of entries whose key satisfies `pred`, which must hold for a prefix.
    pub fn partition_point(&self, pred: impl Fn(&[u8]) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.key(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// `Ok(index)` of `key`, or `Err(index)` where it would be inserted.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let i = self.partition_point(|k| k < key);
        if i < self.count && self.key(i) == key {
            Ok(i)
        } else {
            Err(i)
        }
    }

    /// Contiguous free bytes between the slot array and the entry heap.
    fn contiguous_free(&self) -> usize {
        self.free_end - (self.slots + self.count * SLOT_LEN)
    }

    /// Free bytes once the heap is compacted.
    pub(crate) fn total_free(&self) -> usize {
        let live: usize = (0..self.count).map(|i| self.entry_size(i)).sum();
        self.body.len() - (self.slots + self.count * SLOT_LEN) - live
    }
}

/// An owned node, for building, compacting and splitting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    pub level: u16,
    pub low: Vec<u8>,
    pub high: Option<Vec<u8>>,
    pub right: Option<PageId>,
    /// Sorted by key; an inner entry's value is its child's id (8 bytes, LE).
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Node {
    /// The empty root leaf of a new tree: covers every key.
    pub fn empty_leaf() -> Node {
        Node {
            kind: Kind::Leaf,
            level: 0,
            low: Vec::new(),
            high: None,
            right: None,
            entries: Vec::new(),
        }
    }

    /// A new root over the two halves of the old root.
    pub fn new_root(level: u16, left: PageId, sep: Vec<u8>, right: PageId) -> Node {
        Node {
            kind: Kind::Inner,
            level,
            low: Vec::new(),
            high: None,
            right: None,
            entries: vec![
                (Vec::new(), left.0.to_le_bytes().to_vec()),
                (sep, right.0.to_le_bytes().to_vec()),
            ],
        }
    }

    pub fn from_view(v: &NodeView<'_>) -> Node {
        Node {
            kind: v.kind,
            level: v.level,
            low: v.low.to_vec(),
            high: v.high.map(<[u8]>::to_vec),
            right: v.right,
            entries: (0..v.count)
                .map(|i| (v.key(i).to_vec(), v.value(i).to_vec()))
                .collect(),
        }
    }

    fn bounds_len(&self) -> usize {
        self.low.len() + self.high.as_ref().map_or(0, Vec::len)
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self.bounds_len()
            + self
                .entries
                .iter()
                .map(|(k, v)| SLOT_LEN + entry_len(k.len(), v.len()))
                .sum::<usize>()
    }

    /// Writes the node compactly over `body` (entry 0 at the end of the heap).
    /// The caller has checked `encoded_len() <= body.len()`.
    pub fn encode(&self, body: &mut [u8]) {
        assert!(
            self.encoded_len() <= body.len(),
            "node does not fit its page"
        );
        let high = self.high.as_deref().unwrap_or(&[]);
        body.fill(0);
        body[OFF_KIND] = match self.kind {
            Kind::Leaf => KIND_LEAF,
            Kind::Inner => KIND_INNER,
        };
        body[OFF_FORMAT] = NODE_FORMAT;
        wr16(body, OFF_LEVEL, self.level as usize);
        wr16(body, OFF_COUNT, self.entries.len());
        let slots = HEADER_LEN + self.bounds_len();
        let free_start = slots + self.entries.len() * SLOT_LEN;
        body[OFF_FLAGS] = if self.high.is_none() {
            FLAG_HIGH_INF
        } else {
            0
        };
        body[OFF_RIGHT..OFF_RIGHT + 8]
            .copy_from_slice(&self.right.map_or(0, |p| p.0).to_le_bytes());
        wr16(body, OFF_LOW_LEN, self.low.len());
        wr16(body, OFF_HIGH_LEN, high.len());
        body[HEADER_LEN..HEADER_LEN + self.low.len()].copy_from_slice(&self.low);
        body[HEADER_LEN + self.low.len()..slots].copy_from_slice(high);
        let mut end = body.len();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let off = end - entry_len(k.len(), v.len());
            write_entry(body, off, k, v);
            wr16(body, slots + i * SLOT_LEN, off);
            end = off;
        }
        wr16(body, OFF_FREE_START, free_start);
        wr16(body, OFF_FREE_END, end);
    }

    /// Splits an overfull node into `(left, right, separator)` so that both halves fit
    /// `body_len` bytes: left keeps this node's low key and gets `high = separator`, right
    /// gets `low = separator` and this node's high key and right link (the caller points
    /// `left.right` at the right half's page). Leaf separators are the shortest prefix of
    /// the right half's first key that is above the left half's last key; an inner
    /// node's separator is the right half's first key (which must equal its low key).
    pub fn split(self, body_len: usize, page: PageId) -> Result<(Node, Node, Vec<u8>), BTreeError> {
        let n = self.entries.len();
        if n < 2 {
            return Err(corrupt(page, "split of a node with fewer than two entries"));
        }
        let sizes: Vec<usize> = self
            .entries
            .iter()
            .map(|(k, v)| SLOT_LEN + entry_len(k.len(), v.len()))
            .collect();
        let total: usize = sizes.iter().sum();
        let high_len = self.high.as_ref().map_or(0, Vec::len);
        let mut best: Option<(usize, usize)> = None; // (max half size, split index)
        let mut left_sum = 0;
        for i in 1..n {
            left_sum += sizes[i - 1];
            let sep_len = self.separator_at(i).len();
            let left = HEADER_LEN + self.low.len() + sep_len + left_sum;
            let right = HEADER_LEN + sep_len + high_len + (total - left_sum);
            let worst = left.max(right);
            let better = match best {
                None => true,
                Some((w, _)) => worst < w,
            };
            if left <= body_len && right <= body_len && better {
                best = Some((worst, i));
            }
        }
        let (_, at) = best.ok_or_else(|| corrupt(page, "no split point makes both halves fit"))?;
        let sep = self.separator_at(at).to_vec();
        let mut left = self;
        let right_entries = left.entries.split_off(at);
        let right = Node {
            kind: left.kind,
            level: left.level,
            low: sep.clone(),
            high: left.high.take(),
            right: left.right.take(),
            entries: right_entries,
        };
        left.high = Some(sep.clone());
        Ok((left, right, sep))
    }

    fn separator_at(&self, i: usize) -> &[u8] {
        let b = &self.entries[i].0;
        match self.kind {
            Kind::Inner => b,
            Kind::Leaf => {
                let a = &self.entries[i - 1].0;
                let common = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
                &b[..(common + 1).min(b.len())]
            }
        }
    }
}

fn write_entry(body: &mut [u8], off: usize, k: &[u8], v: &[u8]) {
    wr16(body, off, k.len());
    wr16(body, off + 2, v.len());
    body[off + 4..off + 4 + k.len()].copy_from_slice(k);
    body[off + 4 + k.len()..off + 4 + k.len() + v.len()].copy_from_slice(v);
}

/// Inserts `(key, val)` as entry `idx` of the validated node in `body`, compacting the
/// heap if the free space is fragmented. `Ok(false)`: it does not fit, split instead.
/// The caller keeps key order (idx from [`NodeView::search`]) and the size limits.
pub fn insert_in_place(
    body: &mut [u8],
    page: PageId,
    idx: usize,
    key: &[u8],
    val: &[u8],
) -> Result<bool, BTreeError> {
    let need = SLOT_LEN + entry_len(key.len(), val.len());
    let v = NodeView::parse(body, page)?;
    if idx > v.count {
        return Err(corrupt(page, "insert position past the last entry"));
    }
    if v.contiguous_free() < need {
        if v.total_free() < need {
            return Ok(false);
        }
        Node::from_view(&v).encode(body);
    }
    let v = NodeView::parse(body, page)?;
    let (slots, count, free_end) = (v.slots, v.count, v.free_end);
    let off = free_end - entry_len(key.len(), val.len());
    write_entry(body, off, key, val);
    let at = slots + idx * SLOT_LEN;
    body.copy_within(at..slots + count * SLOT_LEN, at + SLOT_LEN);
    wr16(body, at, off);
    wr16(body, OFF_COUNT, count + 1);
    wr16(body, OFF_FREE_START, slots + (count + 1) * SLOT_LEN);
    wr16(body, OFF_FREE_END, off);
    Ok(true)
}

/// Calls `touch` on the value of every entry of the validated leaf in `body`, which may
/// change the value's bytes but not its length.
pub fn touch_values(
    body: &mut [u8],
    page: PageId,
    mut touch: impl FnMut(&mut [u8]) -> bool,
) -> Result<(), BTreeError> {
    let (slots, count) = {
        let v = NodeView::parse(body, page)?;
        (v.slots, v.count)
    };
    for i in 0..count {
        // Validated by the parse: every entry lies inside the body.
        let off = rd16(body, slots + i * SLOT_LEN);
        let (k, v) = (rd16(body, off), rd16(body, off + 2));
        touch(&mut body[off + 4 + k..off + 4 + k + v]);
    }
    Ok(())
}

/// Overwrites the value of entry `idx` of the validated node in `body` where it lies,
/// if `val` is no longer than the value there (the bytes it no longer uses are zeroed
/// and come back at the next compaction, like a removed entry's). `Ok(false)`: longer,
/// nothing changed (remove and insert instead). An update that keeps the entry in place
/// changes only the bytes that differ, so its redo is a small diff, not the shifted
/// heap or the compacted page an insert elsewhere can cause.
pub fn replace_in_place(
    body: &mut [u8],
    page: PageId,
    idx: usize,
    val: &[u8],
) -> Result<bool, BTreeError> {
    let v = NodeView::parse(body, page)?;
    if idx >= v.count {
        return Err(corrupt(page, "replace position past the last entry"));
    }
    let off = v.entry_off(idx);
    let key_len = rd16(body, off);
    let old_len = rd16(body, off + 2);
    if val.len() > old_len {
        return Ok(false);
    }
    let start = off + 4 + key_len;
    body[start..start + val.len()].copy_from_slice(val);
    body[start + val.len()..start + old_len].fill(0);
    wr16(body, off + 2, val.len());
    Ok(true)
}

/// Removes entry `idx` of the validated node in `body`; its bytes are zeroed.
pub fn remove_in_place(body: &mut [u8], page: PageId, idx: usize) -> Result<(), BTreeError> {
    let v = NodeView::parse(body, page)?;
    if idx >= v.count {
        return Err(corrupt(page, "remove position past the last entry"));
    }
    let (slots, count, mut free_end) = (v.slots, v.count, v.free_end);
    let off = v.entry_off(idx);
    let size = v.entry_size(idx);
    body[off..off + size].fill(0);
    if off == free_end {
        free_end += size;
    }
    let at = slots + idx * SLOT_LEN;
    body.copy_within(at + SLOT_LEN..slots + count * SLOT_LEN, at);
    body[slots + (count - 1) * SLOT_LEN..slots + count * SLOT_LEN].fill(0);
    wr16(body, OFF_COUNT, count - 1);
    wr16(body, OFF_FREE_START, slots + (count - 1) * SLOT_LEN);
    wr16(body, OFF_FREE_END, free_end);
    Ok(())
}

/// The tree's meta page record (the tree's identity is the meta page's id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub root: PageId,
    /// Number of levels: the root's level + 1.
    pub height: u32,
    /// Most entries a leaf holds before it splits (0: as many as fit). Fixed when the
    /// tree is created.
    pub max_leaf_entries: u16,
}

impl Meta {
    pub fn encode(&self, body: &mut [u8]) {
        body[..META_LEN].fill(0);
        body[0..4].copy_from_slice(&META_MAGIC);
        body[4..6].copy_from_slice(&META_FORMAT.to_le_bytes());
        body[8..16].copy_from_slice(&self.root.0.to_le_bytes());
        body[16..20].copy_from_slice(&self.height.to_le_bytes());
        body[20..22].copy_from_slice(&self.max_leaf_entries.to_le_bytes());
    }

    pub fn decode(body: &[u8], page: PageId) -> Result<Meta, BTreeError> {
        if body.len() < META_LEN || body[0..4] != META_MAGIC || body[22..24] != [0, 0] {
            return Err(corrupt(page, "not a b-tree meta page"));
        }
        let format = u16::from_le_bytes([body[4], body[5]]);
        if format != META_FORMAT || body[6..8] != [0, 0] {
            return Err(corrupt(page, format!("unknown meta format {format}")));
        }
        let root = PageId(rd64(body, 8));
        let height = u32::from_le_bytes([body[16], body[17], body[18], body[19]]);
        if root.0 == 0 || root == page || height == 0 || height > MAX_HEIGHT {
            return Err(corrupt(
                page,
                format!("meta names root {root} at height {height}"),
            ));
        }
        let max_leaf_entries = u16::from_le_bytes([body[20], body[21]]);
        Ok(Meta {
            root,
            height,
            max_leaf_entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::storage::page::PAGE_BODY_LEN;
    use proptest::prelude::*;

    const P: PageId = PageId(9);

    fn leaf(entries: &[(&str, &str)]) -> Node {
        Node {
            kind: Kind::Leaf,
            level: 0,
            low: b"a".to_vec(),
            high: Some(b"z".to_vec()),
            right: Some(PageId(77)),
            entries: entries
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn encoded(n: &Node) -> Vec<u8> {
        let mut body = vec![0u8; PAGE_BODY_LEN];
        n.encode(&mut body);
        body
    }

    #[test]
    fn encode_then_parse_round_trips_every_field() {
        let n = leaf(&[("apple", "1"), ("b", ""), ("kiwi", "three")]);
        let body = encoded(&n);
        let v = NodeView::parse(&body, P).unwrap();
        assert_eq!(v.kind(), Kind::Leaf);
        assert_eq!(v.level(), 0);
        assert_eq!(v.count(), 3);
        assert_eq!(v.low(), b"a");
        assert_eq!(v.high(), Some(&b"z"[..]));
        assert_eq!(v.right(), Some(PageId(77)));
        assert_eq!(v.key(2), b"kiwi");
        assert_eq!(v.value(2), b"three");
        assert_eq!(v.search(b"b"), Ok(1));
        assert_eq!(v.search(b"c"), Err(2));
        assert!(v.is_right_of(b"z") && !v.is_right_of(b"yy"));
        assert_eq!(Node::from_view(&v), n);

        let root = Node::new_root(3, PageId(5), b"m".to_vec(), PageId(6));
        let body = encoded(&root);
        let v = NodeView::parse(&body, P).unwrap();
        assert_eq!(
            (v.kind(), v.level(), v.high(), v.right()),
            (Kind::Inner, 3, None, None)
        );
        assert_eq!((v.child(0), v.child(1)), (PageId(5), PageId(6)));
        assert_eq!(Node::from_view(&v), root);
    }

    #[test]
    fn in_place_insert_remove_and_compaction() {
        let mut body = encoded(&leaf(&[("b", "x"), ("d", "y")]));
        assert!(insert_in_place(&mut body, P, 1, b"c", b"zz").unwrap());
        remove_in_place(&mut body, P, 0).unwrap();
        let v = NodeView::parse(&body, P).unwrap();
        let got: Vec<_> = (0..v.count()).map(|i| (v.key(i), v.value(i))).collect();
        assert_eq!(got, vec![(&b"c"[..], &b"zz"[..]), (&b"d"[..], &b"y"[..])]);

        // Fill with fragments: insert big entries, delete every other one, then an insert
        // that needs the fragmented space must compact rather than report "full".
        let mut body = encoded(&leaf(&[]));
        let val = vec![7u8; 900];
        let mut n = 0;
        while insert_in_place(&mut body, P, n, format!("k{n:02}").as_bytes(), &val).unwrap() {
            n += 1;
        }
        assert!(n >= 8);
        for i in (0..n).step_by(2).rev() {
            remove_in_place(&mut body, P, i).unwrap();
        }
        let v = NodeView::parse(&body, P).unwrap();
        assert!(v.contiguous_free() < 900 + 6, "test needs fragmented space");
        assert!(insert_in_place(&mut body, P, 0, b"b", &val).unwrap());
        let v = NodeView::parse(&body, P).unwrap();
        assert_eq!(v.key(0), b"b");
        assert_eq!(v.count(), n - n.div_ceil(2) + 1);
    }

    #[test]
    fn replace_in_place_changes_only_the_value_bytes_and_refuses_to_grow() {
        let mut body = encoded(&leaf(&[("b", "xxxx"), ("d", "yyyy"), ("f", "zz")]));
        let before = body.clone();
        assert!(replace_in_place(&mut body, P, 1, b"YYYY").unwrap());
        let changed = (0..body.len()).filter(|&i| body[i] != before[i]).count();
        assert_eq!(changed, 4, "only the value's bytes");
        // Shorter: the length word and the value change, the tail is zeroed, and the
        // space counts as free (a later insert that needs it compacts).
        let free_before = NodeView::parse(&body, P).unwrap().total_free();
        assert!(replace_in_place(&mut body, P, 0, b"q").unwrap());
        let v = NodeView::parse(&body, P).unwrap();
        assert_eq!(v.total_free(), free_before + 3);
        let got: Vec<_> = (0..v.count()).map(|i| (v.key(i), v.value(i))).collect();
        assert_eq!(
            got,
            vec![
                (&b"b"[..], &b"q"[..]),
                (&b"d"[..], &b"YYYY"[..]),
                (&b"f"[..], &b"zz"[..])
            ]
        );
        let longer = body.clone();
        assert!(!replace_in_place(&mut body, P, 2, b"zzz").unwrap());
        assert_eq!(body, longer, "a refused replace changes nothing");
        assert!(replace_in_place(&mut body, P, 3, b"").is_err());
    }

    #[test]
    fn split_halves_fit_and_cover_the_range() {
        let mut n = leaf(&[]);
        for i in 0..40 {
            n.entries.push((
                format!("key-{i:03}-long-common").into_bytes(),
                vec![1u8; 300],
            ));
        }
        let original = n.clone();
        let (l, r, sep) = n.split(PAGE_BODY_LEN, P).unwrap();
        assert!(l.encoded_len() <= PAGE_BODY_LEN && r.encoded_len() <= PAGE_BODY_LEN);
        assert!(l.entries.last().unwrap().0 < sep && sep <= r.entries[0].0);
        assert!(sep.len() < r.entries[0].0.len(), "separator is truncated");
        assert_eq!(l.high.as_deref(), Some(&sep[..]));
        assert_eq!(
            (r.low.clone(), r.high.clone(), r.right),
            (sep, original.high, original.right)
        );
        assert_eq!(l.entries.len() + r.entries.len(), 40);
        assert!(l.entries.len().abs_diff(r.entries.len()) <= 1);
    }

    #[test]
    fn corrupt_bodies_are_errors() {
        let good = encoded(&leaf(&[("b", "x"), ("d", "y")]));
        let zero = vec![0u8; PAGE_BODY_LEN];
        assert!(NodeView::parse(&zero, P).is_err());
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut b = good.clone();
        b[OFF_KIND] = 9;
        cases.push(("kind", b));
        let mut b = good.clone();
        wr16(&mut b, OFF_COUNT, 5000);
        cases.push(("count", b));
        let mut b = good.clone();
        let slots = HEADER_LEN + 2;
        wr16(&mut b, slots, PAGE_BODY_LEN - 1);
        cases.push(("slot", b));
        let mut b = good.clone();
        let (s0, s1) = (rd16(&b, slots), rd16(&b, slots + 2));
        wr16(&mut b, slots, s1);
        wr16(&mut b, slots + 2, s0);
        cases.push(("order", b));
        let mut b = good.clone();
        b[OFF_RIGHT..OFF_RIGHT + 8].fill(0);
        cases.push(("right link", b));
        let mut b = good.clone();
        wr16(&mut b, OFF_LEVEL, 2);
        cases.push(("level", b));
        for (what, b) in cases {
            assert!(
                matches!(
                    NodeView::parse(&b, P),
                    Err(BTreeError::Corrupt { page: P, .. })
                ),
                "{what}"
            );
        }
        assert!(NodeView::parse(&good[..10], P).is_err());
        assert!(Meta::decode(&zero, P).is_err());
        let mut m = vec![0u8; 64];
        Meta {
            root: PageId(3),
            height: 2,
            max_leaf_entries: 7,
        }
        .encode(&mut m);
        assert_eq!(
            Meta::decode(&m, P).unwrap(),
            Meta {
                root: PageId(3),
                height: 2,
                max_leaf_entries: 7,
            }
        );
    }

    fn read_everything(v: &NodeView<'_>) -> usize {
        let mut n = v.low().len() + v.high().map_or(0, <[u8]>::len);
        for i in 0..v.count() {
            n += v.key(i).len() + v.value(i).len();
            if v.kind() == Kind::Inner {
                n += v.child(i).0 as usize & 1;
            }
        }
        n + v.search(b"m").unwrap_or_else(|e| e)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The decoder is total: flipped bytes in a valid node give an error or a node
        /// whose every accessor stays in bounds.
        #[test]
        fn parse_of_damaged_nodes_never_panics(
            flips in proptest::collection::vec((0usize..512, any::<u8>()), 1..6),
            tail in any::<bool>(),
        ) {
            let mut body = encoded(&leaf(&[("b", "x"), ("dd", "yyy"), ("q", "")]));
            for (pos, x) in flips {
                let pos = if tail { PAGE_BODY_LEN - 1 - pos % 40 } else { pos % 64 };
                body[pos] ^= x;
            }
            if let Ok(v) = NodeView::parse(&body, P) {
                read_everything(&v);
                let mut b2 = body.clone();
                let _ = insert_in_place(&mut b2, P, 0, b"", b"v");
                let mut b3 = body.clone();
                if v.count() > 0 {
                    let _ = remove_in_place(&mut b3, P, v.count() - 1);
                }
            }
            let _ = Meta::decode(&body, P);
        }

        /// Any sorted leaf round-trips; the same body cut short gives an error or a
        /// node whose accessors stay in bounds.
        #[test]
        fn leaves_round_trip_and_cut_bodies_never_panic(
            keys in proptest::collection::btree_set("[b-y][a-z\\x00]{0,6}", 0..40),
            val in proptest::collection::vec(any::<u8>(), 0..20),
            cut in 0..PAGE_BODY_LEN,
        ) {
            let n = Node {
                kind: Kind::Leaf,
                level: 0,
                low: b"a".to_vec(),
                high: Some(b"z".to_vec()),
                right: Some(PageId(77)),
                entries: keys.into_iter().map(|k| (k.into_bytes(), val.clone())).collect(),
            };
            let body = encoded(&n);
            prop_assert_eq!(Node::from_view(&NodeView::parse(&body, P).unwrap()), n);
            if let Ok(v) = NodeView::parse(&body[..cut], P) {
                read_everything(&v);
            }
        }

        /// The meta record: round trip, and any bytes give a meta or an error.
        #[test]
        fn meta_decode_never_panics(
            root in 1u64..,
            height in 1..=MAX_HEIGHT,
            b in proptest::collection::vec(any::<u8>(), 0..2 * META_LEN),
        ) {
            let mut m = vec![0u8; META_LEN];
            Meta { root: PageId(root), height, max_leaf_entries: 0 }.encode(&mut m);
            if root != P.0 {
                prop_assert_eq!(Meta::decode(&m, P).ok(), Some(Meta { root: PageId(root), height, max_leaf_entries: 0 }));
            }
            let _ = Meta::decode(&b, P);
            let mut b = b;
            if b.len() >= 8 {
                b[..4].copy_from_slice(&META_MAGIC);
                b[4..8].fill(0);
                b[4] = 1;
            }
            let _ = Meta::decode(&b, P);
        }

        #[test]
        fn parse_of_random_bodies_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            kind in 1u8..=2,
        ) {
            let mut body = body;
            if body.len() > 2 {
                body[0] = kind;
                body[1] = NODE_FORMAT;
            }
            if let Ok(v) = NodeView::parse(&body, P) {
                read_everything(&v);
            }
        }
    }
}
