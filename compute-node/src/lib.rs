//! # compute-node
//!
//! The compute node of DESIGN.md §6: buffer pool, coherence, B-link tree tables, MVCC
//! transactions and the embedding API. It is being built in stages; what exists so far:
//!
//! * [`pager`] — the page interface the access methods are written against, with an
//!   in-process reference implementation.
//! * [`btree`] — B-link trees over a [`pager::Pager`].

pub mod btree;
pub mod buffer_pool;
pub mod coherence;
pub mod mvcc;
pub mod pager;
