//! The catalog: table and index names -> the meta page of their B-link tree.
//!
//! The catalog is itself a B-link tree. Its meta page id is kept in the **superblock**,
//! the first page of the first storage node's range, written once when the cluster is
//! bootstrapped (by whichever compute node gets there first, under the page's X lock).
//! Superblock body: magic `"DSBCATLG"` then the catalog tree's meta page id (u64 LE).
//!
//! Catalog changes are not transactional: `create_table` is immediately durable and
//! visible to every node (the new tree's pages and the catalog entry are written back
//! before it returns), and creating an existing name fails.

use crate::btree::{BTree, TreeOptions};
use crate::coherence::CoherentPager;
use crate::pager::Pager;
use crate::txn::{Table, TxnError};
use common::ids::PageId;
use common::storage::StorageError;
use dashmap::DashMap;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"DSBCATLG";

pub struct Catalog {
    pager: Arc<CoherentPager>,
    meta: PageId,
    cache: DashMap<String, Table>,
}

fn catalog_key(name: &str) -> Vec<u8> {
    let mut k = b"table/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

impl Catalog {
    /// Finds the catalog, creating it if this is a fresh cluster.
    pub fn open_or_bootstrap(pager: Arc<CoherentPager>) -> Result<Catalog, TxnError> {
        let storage0 = pager.storage().node(0).clone();
        let superblock = storage0.layout().first_page;
        // A fresh storage node has not allocated its first page yet.
        match storage0.read_pages_rpc(&[superblock]) {
            Ok(_) => {}
            Err(StorageError::NotAllocated(_)) => {
                let got = storage0
                    .allocate_pages(1)
                    .map_err(|e| TxnError::Storage(e.to_string()))?;
                if got[0] != superblock {
                    tracing::debug!("another node allocated the superblock first");
                }
            }
            Err(e) => return Err(TxnError::Storage(e.to_string())),
        }
        let view: Arc<dyn Pager> = Arc::new(pager.view()?);
        let page = view.read(superblock)?;
        let meta = match parse_superblock(page.body()) {
            Some(meta) => meta,
            None => {
                // The catalog tree is durable before the superblock names it (invariant
                // 8). Nodes that bootstrap at once each build one; the loser's two pages
                // stay unused.
                let tree = BTree::create(view.clone())?;
                pager.release_all()?;
                let mut w = view.write(superblock)?;
                match parse_superblock(w.body()) {
                    Some(meta) => meta,
                    None => {
                        let meta = tree.id();
                        w.body_mut()[..8].copy_from_slice(MAGIC);
                        w.body_mut()[8..16].copy_from_slice(&meta.0.to_le_bytes());
                        w.publish()?;
                        pager.release_all()?;
                        meta
                    }
                }
            }
        };
        Ok(Catalog {
            pager,
            meta,
            cache: DashMap::new(),
        })
    }

    fn tree(&self) -> Result<BTree, TxnError> {
        let view: Arc<dyn Pager> = Arc::new(self.pager.view()?);
        Ok(BTree::open(view, self.meta)?)
    }

    pub fn table(&self, name: &str) -> Result<Table, TxnError> {
        if let Some(t) = self.cache.get(name) {
            return Ok(t.clone());
        }
        let raw = self
            .tree()?
            .get(&catalog_key(name))?
            .ok_or_else(|| TxnError::NoSuchTable(name.to_string()))?;
        let meta =
            PageId(u64::from_le_bytes(raw.as_slice().try_into().map_err(
                |_| TxnError::Corrupt(format!("catalog entry of {name}")),
            )?));
        let t = Table {
            name: name.to_string(),
            meta,
        };
        self.cache.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Every table, in name order (read now from the catalog tree).
    pub fn tables(&self) -> Result<Vec<Table>, TxnError> {
        let tree = self.tree()?;
        let mut out = Vec::new();
        let (lo, hi) = (b"table/".as_slice(), b"table0".as_slice());
        tree.scan(
            (std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi)),
            false,
            None,
            |k, v| {
                let name = String::from_utf8_lossy(&k[lo.len()..]).into_owned();
                let meta = v
                    .try_into()
                    .map(|b: [u8; 8]| PageId(u64::from_le_bytes(b)))
                    .map_err(|_| TxnError::Corrupt(format!("catalog entry of {name}")))?;
                out.push(Table { name, meta });
                Ok::<_, TxnError>(true)
            },
        )?;
        Ok(out)
    }

    pub fn create_table(&self, name: &str) -> Result<Table, TxnError> {
        self.create_table_with(name, TreeOptions::default())
    }

    /// Creates a table whose tree is laid out as `options` say (e.g. one row per leaf
    /// for a few hot rows that different nodes update).
    pub fn create_table_with(&self, name: &str, options: TreeOptions) -> Result<Table, TxnError> {
        if name.is_empty() || name.len() > 200 {
            return Err(TxnError::BadRequest(format!("bad table name {name:?}")));
        }
        let view: Arc<dyn Pager> = Arc::new(self.pager.view()?);
        let tree = BTree::create_with(view.clone(), options)?;
        let meta = tree.id();
        // The new tree is durable before the catalog entry that names it (invariant 8).
        self.pager.release_all()?;
        let catalog = BTree::open(view, self.meta)?;
        catalog.upsert(&catalog_key(name), |old| {
            if old.is_some() {
                return Err(TxnError::TableExists(name.to_string()));
            }
            Ok(Some(meta.0.to_le_bytes().to_vec()))
        })?;
        self.pager.release_all()?;
        let t = Table {
            name: name.to_string(),
            meta,
        };
        self.cache.insert(name.to_string(), t.clone());
        Ok(t)
    }
}

fn parse_superblock(body: &[u8]) -> Option<PageId> {
    (body.len() >= 16 && &body[..8] == MAGIC)
        .then(|| PageId(u64::from_le_bytes(body[8..16].try_into().expect("8"))))
}
