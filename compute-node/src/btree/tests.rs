//! Tree-level tests: a model check against `std::collections::BTreeMap`, a concurrency
//! stress over `LocalPager`, and the B-link move-right rule.

use super::key::{KeyBuilder, KeyReader};
use super::*;
use crate::pager::LocalPager;
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

/// A `LocalPager` that yields the CPU after some reads and latches, so that splits
/// land between a reader's read of a parent and of its child (the B-link race).
#[derive(Default)]
struct JitterPager {
    inner: LocalPager,
    calls: AtomicUsize,
}

impl JitterPager {
    fn jitter(&self) {
        if self.calls.fetch_add(1, Ordering::Relaxed) % 3 == 1 {
            thread::yield_now();
        }
    }
}

impl Pager for JitterPager {
    fn read(&self, id: PageId) -> Result<Arc<Page>, PagerError> {
        let page = self.inner.read(id);
        self.jitter();
        page
    }
    fn write(&self, id: PageId) -> Result<PageWrite, PagerError> {
        let w = self.inner.write(id);
        self.jitter();
        w
    }
    fn allocate(&self) -> Result<PageWrite, PagerError> {
        self.inner.allocate()
    }
}

/// A `LocalPager` with one-shot injected faults on a chosen page: the latch fails, or
/// the latch is granted and its publish fails.
#[derive(Default)]
struct FaultPager {
    inner: LocalPager,
    fail_latch: parking_lot::Mutex<Option<PageId>>,
    fail_publish: parking_lot::Mutex<Option<PageId>>,
}

impl Pager for FaultPager {
    fn read(&self, id: PageId) -> Result<Arc<Page>, PagerError> {
        self.inner.read(id)
    }
    fn write(&self, id: PageId) -> Result<PageWrite, PagerError> {
        if self.fail_latch.lock().take_if(|p| *p == id).is_some() {
            return Err(PagerError::Storage("injected latch failure".into()));
        }
        let w = self.inner.write(id)?;
        if self.fail_publish.lock().take_if(|p| *p == id).is_none() {
            return Ok(w);
        }
        let page = (*self.inner.read(id)?).clone();
        Ok(PageWrite::new(
            page,
            Box::new(|_, _| Err(PagerError::Storage("injected publish failure".into()))),
            Box::new(move || drop(w)),
        ))
    }
    fn allocate(&self) -> Result<PageWrite, PagerError> {
        self.inner.allocate()
    }
}

fn new_tree() -> (Arc<LocalPager>, BTree) {
    let pager = Arc::new(LocalPager::new());
    let tree = BTree::create(pager.clone()).unwrap();
    (pager, tree)
}

fn collect(
    tree: &BTree,
    range: KeyRange<'_>,
    reverse: bool,
    limit: Option<usize>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    tree.scan(range, reverse, limit, |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok::<_, BTreeError>(true)
    })
    .unwrap();
    out
}

const ALL: KeyRange<'static> = (Bound::Unbounded, Bound::Unbounded);

#[test]
fn put_get_delete_upsert_and_size_limits() {
    let (pager, tree) = new_tree();
    assert_eq!(tree.get(b"a").unwrap(), None);
    tree.put(b"a", b"1").unwrap();
    tree.put(b"", b"empty key").unwrap();
    tree.put(b"a", b"2").unwrap();
    assert_eq!(tree.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(tree.get(b"").unwrap().as_deref(), Some(&b"empty key"[..]));
    assert!(tree.delete(b"a").unwrap());
    assert!(!tree.delete(b"a").unwrap());
    assert_eq!(tree.get(b"a").unwrap(), None);

    // An aborting callback changes nothing, not even the page version.
    tree.put(b"k", b"v").unwrap();
    let root = tree.read_meta().unwrap().root;
    let before = pager.read(root).unwrap();
    #[derive(Debug, thiserror::Error)]
    enum Abort {
        #[error("abort")]
        Abort,
        #[error(transparent)]
        Tree(#[from] BTreeError),
    }
    let r = tree.upsert(b"k", |old| {
        assert_eq!(old, Some(&b"v"[..]));
        Err(Abort::Abort)
    });
    assert!(matches!(r, Err(Abort::Abort)));
    assert_eq!(pager.read(root).unwrap(), before);
    tree.upsert(b"k", |old| {
        Ok::<_, BTreeError>(Some([old.unwrap(), b"+"].concat()))
    })
    .unwrap();
    assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"v+"[..]));

    let big_key = vec![1u8; MAX_KEY_LEN + 1];
    assert!(matches!(
        tree.put(&big_key, b""),
        Err(BTreeError::KeyTooLarge { .. })
    ));
    assert!(matches!(tree.get(&big_key), Ok(None)));
    let big_val = vec![1u8; MAX_ENTRY_LEN];
    assert!(matches!(
        tree.put(b"x", &big_val),
        Err(BTreeError::EntryTooLarge { .. })
    ));
    let r = tree.upsert(b"x", |_| Ok::<_, BTreeError>(Some(big_val.clone())));
    assert!(matches!(r, Err(BTreeError::EntryTooLarge { .. })));
    assert_eq!(tree.get(b"x").unwrap(), None);
    tree.put(b"x", &big_val[1..]).unwrap();

    let reopened = BTree::open(pager.clone(), tree.id()).unwrap();
    assert_eq!(reopened.get(b"k").unwrap().as_deref(), Some(&b"v+"[..]));
    assert!(
        BTree::open(pager.clone(), root).is_err(),
        "a node is not a meta page"
    );
}

/// Keys that share long prefixes, so separators stay long and inner nodes fill up.
fn long_key(i: u32) -> Vec<u8> {
    let mut k = vec![b'p'; 120 + (i % 3) as usize * 40];
    k.extend_from_slice(&i.to_be_bytes());
    k
}

#[test]
fn many_keys_build_a_multi_level_tree() {
    let (_, tree) = new_tree();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut keys: Vec<u32> = (0..6000).collect();
    keys.shuffle(&mut rng);
    let mut model = BTreeMap::new();
    for &i in &keys {
        let v = vec![i as u8; rng.gen_range(0..200)];
        tree.put(&long_key(i), &v).unwrap();
        model.insert(long_key(i), v);
    }
    let shape = tree.check_structure().unwrap();
    assert!(shape.height >= 3, "{shape:?}");
    assert_eq!(shape.entries, model.len());
    let expect: Vec<_> = model.clone().into_iter().collect();
    assert_eq!(collect(&tree, ALL, false, None), expect);
    let mut rev = collect(&tree, ALL, true, None);
    rev.reverse();
    assert_eq!(rev, expect);
    // Deleting most keys leaves empty leaves that both scan directions must cross.
    for &i in &keys[..5900] {
        assert!(tree.delete(&long_key(i)).unwrap());
        model.remove(&long_key(i));
    }
    let expect: Vec<_> = model.into_iter().collect();
    assert_eq!(collect(&tree, ALL, false, None), expect);
    let mut rev = collect(&tree, ALL, true, None);
    rev.reverse();
    assert_eq!(rev, expect);
    assert_eq!(tree.check_structure().unwrap().entries, 100);
}

#[test]
fn maximal_entries_split_into_fitting_halves() {
    let (_, tree) = new_tree();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut model = BTreeMap::new();
    for i in 0..400u32 {
        // Maximal keys that differ only at the end: separators cannot be truncated.
        let mut k = vec![0xAB; MAX_KEY_LEN - 4];
        k.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
        let v = vec![i as u8; MAX_ENTRY_LEN - k.len()];
        tree.put(&k, &v).unwrap();
        let small = i.to_be_bytes();
        tree.put(&small, &vec![1; MAX_ENTRY_LEN - 4]).unwrap();
        model.insert(k, v);
        model.insert(small.to_vec(), vec![1; MAX_ENTRY_LEN - 4]);
    }
    let shape = tree.check_structure().unwrap();
    assert!(shape.height >= 3, "{shape:?}");
    assert_eq!(shape.entries, model.len());
    for (k, v) in &model {
        assert_eq!(tree.get(k).unwrap().as_ref(), Some(v));
    }
}

#[test]
fn reader_with_an_old_copy_moves_right_to_the_split_off_half() {
    let (pager, tree) = new_tree();
    let key = |i: u32| KeyBuilder::new().str("k").u32(i).finish();
    for i in 0..40 {
        tree.put(&key(i * 10), &[7; 100]).unwrap();
    }
    assert_eq!(tree.height().unwrap(), 1);
    let leaf = tree.read_meta().unwrap().root;
    // A reader has read the old root leaf (it covers everything)...
    let old_copy = pager.read(leaf).unwrap();
    let v = NodeView::parse(old_copy.body(), leaf).unwrap();
    assert_eq!(v.high(), None);
    assert!(v.search(&key(390)).is_ok());
    // ...then the leaf splits (twice: enough to push key 390 two nodes to the right).
    for i in 0..120 {
        tree.put(&key(i * 10 + 5), &[8; 100]).unwrap();
    }
    assert!(tree.height().unwrap() >= 2);
    // The same page id now holds only the low keys: without moving right the reader
    // that still has the leaf's id (from an old parent copy, or the old meta) misses 390.
    let now = pager.read(leaf).unwrap();
    let v = NodeView::parse(now.body(), leaf).unwrap();
    assert!(v.search(&key(390)).is_err() && v.is_right_of(&key(390)));
    let first_right = v.right().unwrap();
    let right_copy = pager.read(first_right).unwrap();
    let v2 = NodeView::parse(right_copy.body(), first_right).unwrap();
    assert!(v2.is_right_of(&key(390)), "key must be two moves away");
    let found = tree
        .descend_from(leaf, 0, Probe::At(&key(390)), 0, None, |_, v| {
            Ok::<_, BTreeError>(v.search(&key(390)).ok().map(|i| v.value(i).to_vec()))
        })
        .unwrap();
    assert_eq!(found, Some(vec![7; 100]));
    // A reverse probe from the old id moves right as well.
    let got = tree
        .descend_from(leaf, 0, Probe::Below(None), 0, None, |_, v| {
            Ok::<_, BTreeError>(v.high().is_none())
        })
        .unwrap();
    assert!(got, "reverse probe must reach the rightmost leaf");
}

/// A root split that fails at the meta page: before the halves are published (latch
/// fails: nothing changes) and after (publish fails: the put succeeded, the new root is
/// lost, and the next split on the parentless top level repairs it), with the next
/// split hitting the old root (`low_first`) or its orphaned right sibling.
#[test]
fn root_split_cut_short_by_pager_errors_keeps_the_tree_correct() {
    for low_first in [true, false] {
        let pager = Arc::new(FaultPager::default());
        let tree = BTree::create(pager.clone()).unwrap();
        let key = |i: u32| KeyBuilder::new().u32(i).finish();
        let mut model = BTreeMap::new();
        let mut i = 1000;
        while tree.height().unwrap() == 1 && model.len() < 60 {
            tree.put(&key(i), &[1; 150]).unwrap();
            model.insert(key(i), vec![1; 150]);
            i += 1;
        }
        assert!(model.len() < 60, "test needs a full root leaf");
        // Undo the root split's effect by starting over one key short.
        let pager = Arc::new(FaultPager::default());
        let tree = BTree::create(pager.clone()).unwrap();
        let n = model.len() - 1;
        model = (1000..1000 + n as u32)
            .map(|i| (key(i), vec![1; 150]))
            .collect();
        for (k, v) in &model {
            tree.put(k, v).unwrap();
        }
        assert_eq!(tree.height().unwrap(), 1);
        let root = tree.read_meta().unwrap().root;

        *pager.fail_latch.lock() = Some(tree.id());
        let r = tree.put(&key(5000), &[2; 150]);
        assert!(matches!(r, Err(BTreeError::Pager(_))), "{r:?}");
        assert_eq!(tree.get(&key(5000)).unwrap(), None);
        assert_eq!(tree.check_structure().unwrap().entries, n);

        *pager.fail_publish.lock() = Some(tree.id());
        tree.put(&key(5000), &[2; 150]).unwrap();
        model.insert(key(5000), vec![2; 150]);
        assert_eq!(tree.height().unwrap(), 1, "meta update was lost");
        let old_root = pager.read(root).unwrap();
        assert!(NodeView::parse(old_root.body(), root)
            .unwrap()
            .right()
            .is_some());
        assert!(
            tree.check_structure().is_err(),
            "top level has two nodes, no parent"
        );
        for (k, v) in &model {
            assert_eq!(tree.get(k).unwrap().as_ref(), Some(v));
        }

        let more: Vec<u32> = if low_first {
            (0..1000).collect()
        } else {
            (6000..7000).collect()
        };
        for i in more {
            tree.put(&key(i), &[3; 150]).unwrap();
            model.insert(key(i), vec![3; 150]);
        }
        let shape = tree.check_structure().unwrap();
        assert!(shape.height >= 2, "{shape:?}");
        assert_eq!(shape.entries, model.len());
        let all: Vec<_> = model.into_iter().collect();
        assert_eq!(collect(&tree, ALL, false, None), all);
    }
}

#[test]
fn corrupt_node_is_an_error_not_a_panic() {
    let (pager, tree) = new_tree();
    for i in 0..500u32 {
        tree.put(&i.to_be_bytes(), &[1; 60]).unwrap();
    }
    let root = tree.read_meta().unwrap().root;
    let mut w = pager.write(root).unwrap();
    let body = w.body_mut();
    for (i, b) in body.iter_mut().enumerate().skip(2).take(40) {
        *b = (i * 37) as u8;
    }
    w.publish().unwrap();
    assert!(matches!(
        tree.get(&7u32.to_be_bytes()),
        Err(BTreeError::Corrupt { .. })
    ));
    assert!(matches!(
        tree.put(&7u32.to_be_bytes(), b"x"),
        Err(BTreeError::Corrupt { .. })
    ));
    let r = tree.scan(ALL, true, None, |_, _| Ok::<_, BTreeError>(true));
    assert!(matches!(r, Err(BTreeError::Corrupt { .. })));
    assert!(tree.check_structure().is_err());
}

#[test]
fn scan_bounds_limits_and_early_stop() {
    let (_, tree) = new_tree();
    for i in 0..2000u32 {
        tree.put(&KeyBuilder::new().u32(i).finish(), &[0; 40])
            .unwrap();
    }
    let k = |i: u32| KeyBuilder::new().u32(i).finish();
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let (a, b) = (k(500), k(1500));
    let fwd = keys(collect(
        &tree,
        (Bound::Excluded(&a), Bound::Included(&b)),
        false,
        Some(7),
    ));
    assert_eq!(fwd, (501..508).map(k).collect::<Vec<_>>());
    let rev = keys(collect(
        &tree,
        (Bound::Excluded(&a), Bound::Included(&b)),
        true,
        None,
    ));
    assert_eq!(rev, (501..=1500).rev().map(k).collect::<Vec<_>>());
    let rev = keys(collect(
        &tree,
        (Bound::Included(&a), Bound::Excluded(&b)),
        true,
        Some(3),
    ));
    assert_eq!(rev, vec![k(1499), k(1498), k(1497)]);
    assert!(collect(
        &tree,
        (Bound::Included(&b), Bound::Excluded(&a)),
        false,
        None
    )
    .is_empty());
    assert!(collect(&tree, (Bound::Unbounded, Bound::Excluded(b"")), true, None).is_empty());
    let mut n = 0;
    let visited = tree
        .scan(ALL, true, None, |_, _| {
            n += 1;
            Ok::<_, BTreeError>(n < 10)
        })
        .unwrap();
    assert_eq!(visited, 10);
}

// ---- model check ----

fn model_key(i: u16) -> Vec<u8> {
    if i == 0 {
        return Vec::new();
    }
    let mut k = vec![b'm'; 60 + (i % 4) as usize * 30];
    k.extend_from_slice(&i.to_be_bytes());
    k
}

fn model_bound(b: Bound<u16>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(i) => Bound::Included(model_key(i)),
        Bound::Excluded(i) => Bound::Excluded(model_key(i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn as_ref_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(u16, usize),
    Delete(u16),
    DeleteRun(u16, u16),
    Get(u16),
    Scan(Bound<u16>, Bound<u16>, bool, Option<usize>),
    /// Rewrite the leaf covering this key; the seed picks each entry's fate.
    RewriteLeaf(u16, u64),
}

const KEYS: u16 = 4000;

fn bound() -> impl Strategy<Value = Bound<u16>> {
    prop_oneof![
        (0..KEYS).prop_map(Bound::Included),
        (0..KEYS).prop_map(Bound::Excluded),
        Just(Bound::Unbounded),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS, 0usize..400).prop_map(|(k, l)| Op::Put(k, l)),
        2 => (0..KEYS).prop_map(Op::Delete),
        1 => (0..KEYS, 1u16..600).prop_map(|(k, n)| Op::DeleteRun(k, n)),
        2 => (0..KEYS).prop_map(Op::Get),
        2 => (0..KEYS, any::<u64>()).prop_map(|(k, s)| Op::RewriteLeaf(k, s)),
        3 => (bound(), bound(), any::<bool>(), proptest::option::of(0usize..300))
            .prop_map(|(a, b, r, l)| Op::Scan(a, b, r, l)),
    ]
}

fn value_for(k: u16, len: usize, step: usize) -> Vec<u8> {
    (0..len).map(|j| (k as usize + j + step) as u8).collect()
}

/// What `Op::RewriteLeaf` does to an entry: keep it, shrink it, grow it or remove it.
fn rewrite_fate(seed: u64, key: &[u8], old: &[u8], step: usize) -> Rewrite {
    let h = key.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    match h >> 60 & 3 {
        0 => Rewrite::Keep,
        1 => Rewrite::Put(value_for(old.len() as u16, old.len() / 2, step)),
        2 => Rewrite::Put(value_for(old.len() as u16, 400, step)),
        _ => Rewrite::Remove,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random put/delete/get/scan sequences agree with a `BTreeMap` (thousands of keys,
    /// several levels, empty leaves after delete runs).
    #[test]
    fn operations_match_a_btreemap_model(
        load in proptest::collection::vec((0..KEYS, 0usize..300), 800..2500),
        ops in proptest::collection::vec(op(), 50..250),
    ) {
        let (_, tree) = new_tree();
        let mut model = BTreeMap::new();
        for (step, (k, len)) in load.into_iter().enumerate() {
            let v = value_for(k, len, step);
            tree.put(&model_key(k), &v).unwrap();
            model.insert(model_key(k), v);
        }
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Put(k, len) => {
                    let v = value_for(k, len, step);
                    tree.put(&model_key(k), &v).unwrap();
                    model.insert(model_key(k), v);
                }
                Op::Delete(k) => {
                    prop_assert_eq!(tree.delete(&model_key(k)).unwrap(), model.remove(&model_key(k)).is_some());
                }
                Op::DeleteRun(k, n) => {
                    for i in k..k.saturating_add(n).min(KEYS) {
                        prop_assert_eq!(tree.delete(&model_key(i)).unwrap(), model.remove(&model_key(i)).is_some());
                    }
                }
                Op::RewriteLeaf(k, seed) => {
                    // Three rounds from `k`, each going on where the last said: every
                    // key in [k, where the last round ends) is visited once, in order.
                    let mut fates = Vec::new();
                    let mut from = Some(model_key(k));
                    for _ in 0..3 {
                        let Some(f) = from.take() else { break };
                        let before = fates.len();
                        from = tree
                            .rewrite_leaf(&f, |key, old| {
                                let fate = rewrite_fate(seed, key, old, step);
                                fates.push((key.to_vec(), fate.clone()));
                                Ok::<_, BTreeError>(fate)
                            })
                            .unwrap();
                        prop_assert!(fates[before..].iter().all(|(key, _)| *key >= f));
                        if let Some(n) = &from {
                            prop_assert!(f < *n, "a rewrite must make progress");
                        }
                    }
                    let end = from.map_or(Bound::Unbounded, Bound::Excluded);
                    let expect: Vec<Vec<u8>> = model
                        .range((Bound::Included(model_key(k)), end))
                        .map(|(key, _)| key.clone())
                        .collect();
                    let visited: Vec<Vec<u8>> = fates.iter().map(|(key, _)| key.clone()).collect();
                    prop_assert_eq!(visited, expect);
                    for (key, fate) in fates {
                        match fate {
                            Rewrite::Keep => {}
                            Rewrite::Put(v) => {
                                model.insert(key, v);
                            }
                            Rewrite::Remove => {
                                model.remove(&key);
                            }
                        }
                    }
                }
                Op::Get(k) => {
                    let got = tree.get(&model_key(k)).unwrap();
                    prop_assert_eq!(got.as_ref(), model.get(&model_key(k)));
                }
                Op::Scan(lo, hi, reverse, limit) => {
                    let (lo, hi) = (model_bound(lo), model_bound(hi));
                    let (lo_r, hi_r) = (as_ref_bound(&lo), as_ref_bound(&hi));
                    let mut expect: Vec<(Vec<u8>, Vec<u8>)> = model
                        .iter()
                        .filter(|(k, _)| above_lo(k, lo_r) && below_hi(k, hi_r))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if reverse {
                        expect.reverse();
                    }
                    expect.truncate(limit.unwrap_or(usize::MAX));
                    prop_assert_eq!(collect(&tree, (lo_r, hi_r), reverse, limit), expect);
                }
            }
        }
        let shape = tree.check_structure().unwrap();
        prop_assert_eq!(shape.entries, model.len());
        prop_assert!(shape.height >= 2);
        let all: Vec<_> = model.into_iter().collect();
        prop_assert_eq!(collect(&tree, ALL, false, None), all);
    }
}

// ---- concurrency ----

const WRITERS: usize = 4;
const ROWS: u32 = 5000;
const COUNTERS: u32 = 64;

/// Long keys (long separators: low fan-out, so inner nodes and the root split too).
fn row_key(i: u32, t: u32) -> Vec<u8> {
    KeyBuilder::new()
        .str("row")
        .u32(i)
        .bytes(&[b'.'; 120])
        .u32(t)
        .finish()
}

/// Row `i` of a writer is deleted again two steps later when `i % 5 == 2`.
fn row_deleted(i: u32) -> bool {
    i % 5 == 2 && i + 2 < ROWS
}

/// Checks one scan of the `row` keys: strictly ordered (so nothing duplicated) and
/// containing every row that was inserted before the scan started and is never deleted.
fn check_rows(keys: &[Vec<u8>], reverse: bool, progress_before: &[u32]) {
    for w in keys.windows(2) {
        let ordered = if reverse { w[0] > w[1] } else { w[0] < w[1] };
        assert!(
            ordered,
            "scan out of order or duplicated: {:?} then {:?}",
            w[0], w[1]
        );
    }
    let mut seen = vec![vec![false; ROWS as usize]; WRITERS];
    for k in keys {
        let mut r = KeyReader::new(k);
        assert_eq!(r.str().unwrap(), "row");
        let i = r.u32().unwrap();
        assert_eq!(r.bytes().unwrap().len(), 120);
        let t = r.u32().unwrap();
        seen[t as usize][i as usize] = true;
    }
    for (t, &p) in progress_before.iter().enumerate() {
        for i in 0..p {
            assert!(
                row_deleted(i) || seen[t][i as usize],
                "scan lost row {i} of writer {t}"
            );
        }
    }
}

#[test]
fn concurrent_writers_and_readers_lose_and_duplicate_nothing() {
    let tree = BTree::create(Arc::new(JitterPager::default())).unwrap();
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WRITERS).map(|_| AtomicUsize::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let (lo, hi) = (
        KeyBuilder::new().str("row").finish(),
        KeyBuilder::new().str("rox").finish(),
    );
    let counter_key = |j: u32| KeyBuilder::new().str("ctr").u32(j).finish();
    let shared_key = |i: u32| KeyBuilder::new().str("shared").u32(i).finish();

    let mut writers = Vec::new();
    for t in 0..WRITERS as u32 {
        let (tree, progress) = (tree.clone(), progress.clone());
        writers.push(thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            for i in 0..ROWS {
                // Disjoint keys, interleaved so all writers hit the same leaves.
                tree.put(&row_key(i, t), &vec![t as u8; rng.gen_range(20..160)])
                    .unwrap();
                if i >= 2 && row_deleted(i - 2) {
                    assert!(tree.delete(&row_key(i - 2, t)).unwrap());
                }
                // Overlapping keys: read-modify-write counters must not lose increments.
                tree.upsert(&counter_key(i % COUNTERS), |old| {
                    let n = old.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
                    Ok::<_, BTreeError>(Some((n + 1).to_le_bytes().to_vec()))
                })
                .unwrap();
                tree.put(&shared_key(i), &[t as u8; 64]).unwrap();
                progress[t as usize].store(i as usize + 1, Ordering::Release);
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..2u64 {
        let (tree, progress, done) = (tree.clone(), progress.clone(), done.clone());
        let (lo, hi) = (lo.clone(), hi.clone());
        readers.push(thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + r);
            let mut scans = 0;
            while !done.load(Ordering::Acquire) {
                let before: Vec<u32> = progress
                    .iter()
                    .map(|p| p.load(Ordering::Acquire) as u32)
                    .collect();
                let reverse = scans % 2 == 1;
                let mut keys = Vec::new();
                tree.scan(
                    (Bound::Included(&lo), Bound::Excluded(&hi)),
                    reverse,
                    None,
                    |k, _| {
                        keys.push(k.to_vec());
                        Ok::<_, BTreeError>(true)
                    },
                )
                .unwrap();
                check_rows(&keys, reverse, &before);
                scans += 1;
                for _ in 0..200 {
                    let t = rng.gen_range(0..WRITERS);
                    let p = progress[t].load(Ordering::Acquire) as u32;
                    if p == 0 {
                        continue;
                    }
                    let i = rng.gen_range(0..p);
                    let got = tree.get(&row_key(i, t as u32)).unwrap();
                    assert!(
                        row_deleted(i) || got.is_some(),
                        "get lost row {i} of writer {t}"
                    );
                }
            }
            scans
        }));
    }
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }

    let shape = tree.check_structure().unwrap();
    assert!(shape.height >= 3, "{shape:?}");
    let rows = collect(
        &tree,
        (Bound::Included(&lo), Bound::Excluded(&hi)),
        false,
        None,
    );
    let live = (0..ROWS).filter(|&i| !row_deleted(i)).count() * WRITERS;
    assert_eq!(rows.len(), live);
    check_rows(
        &rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        false,
        &[ROWS; WRITERS],
    );
    let total: u64 = (0..COUNTERS)
        .map(|j| {
            u64::from_le_bytes(
                tree.get(&counter_key(j))
                    .unwrap()
                    .unwrap()
                    .try_into()
                    .unwrap(),
            )
        })
        .sum();
    assert_eq!(
        total,
        ROWS as u64 * WRITERS as u64,
        "lost counter increments"
    );
    let shared = collect(
        &tree,
        (Bound::Included(&shared_key(0)), Bound::Unbounded),
        false,
        None,
    );
    assert_eq!(shared.len(), ROWS as usize);
    assert_eq!(shape.entries, live + COUNTERS as usize + ROWS as usize);
}
