//! Single-session semantics against a `BTreeMap` model (proptest): what a transaction
//! reads is what the model says, through commits and aborts.

use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::txn::Txn;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::OnceLock;

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    Get(u8),
    Scan(u8, u8, bool, Option<u8>),
    Commit,
    Abort,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..40, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..40).prop_map(Step::Delete),
        2 => (0u8..40).prop_map(Step::Get),
        2 => (0u8..40, 0u8..40, any::<bool>(), proptest::option::of(1u8..10))
            .prop_map(|(a, b, r, l)| Step::Scan(a.min(b), a.max(b), r, l)),
        1 => Just(Step::Commit),
        1 => Just(Step::Abort),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:03}").into_bytes()
}

fn cluster() -> &'static EmbeddedCluster {
    static C: OnceLock<EmbeddedCluster> = OnceLock::new();
    C.get_or_init(|| {
        EmbeddedCluster::start(ClusterOptions {
            compute_nodes: 1,
            storage_memory: 32 << 20,
            pages_per_storage_node: 1 << 16,
            buffer_frames: 4096,
            ..ClusterOptions::default()
        })
        .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn a_session_reads_what_a_btreemap_model_says(steps in proptest::collection::vec(step(), 1..120)) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let node = &cluster().nodes[0];
        let table = node
            .create_table(&format!("model{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
            .unwrap();
        let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut view = committed.clone();
        let mut tx: Option<Txn> = None;
        for s in steps {
            let t = tx.get_or_insert_with(|| node.begin().unwrap());
            match s {
                Step::Put(k, v) => {
                    t.put(&table, &key(k), &[v]).unwrap();
                    view.insert(key(k), vec![v]);
                }
                Step::Delete(k) => {
                    let existed = t.delete(&table, &key(k)).unwrap();
                    prop_assert_eq!(existed, view.remove(&key(k)).is_some());
                }
                Step::Get(k) => {
                    prop_assert_eq!(t.get(&table, &key(k)).unwrap(), view.get(&key(k)).cloned());
                }
                Step::Scan(a, b, reverse, limit) => {
                    let (lo, hi) = (key(a), key(b));
                    let got = t
                        .scan(&table, (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])), reverse, limit.map(usize::from))
                        .unwrap();
                    let mut want: Vec<_> = view.range(lo.clone()..hi.clone()).map(|(k, v)| (k.clone(), v.clone())).collect();
                    if reverse {
                        want.reverse();
                    }
                    if let Some(l) = limit {
                        want.truncate(l as usize);
                    }
                    prop_assert_eq!(got, want);
                }
                Step::Commit => {
                    tx.take().unwrap().commit().unwrap();
                    committed = view.clone();
                }
                Step::Abort => {
                    tx.take().unwrap().abort().unwrap();
                    view = committed.clone();
                }
            }
        }
        if let Some(t) = tx.take() {
            t.commit().unwrap();
            committed = view;
        }
        // A fresh transaction sees exactly the committed state.
        let mut check = node.begin().unwrap();
        let all = check.scan(&table, (Bound::Unbounded, Bound::Unbounded), false, None).unwrap();
        prop_assert_eq!(all, committed.into_iter().collect::<Vec<_>>());
        check.commit().unwrap();
    }
}
