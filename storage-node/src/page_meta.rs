//! Per-page state ([`PageMeta`]): what restart recovery produces for every allocated
//! page and the store keeps in memory from then on.
//!
//! A leaf module, so that the dependency between the two runs one way: `recovery`
//! builds `PageMeta`s (and writes the metadata files), `store` consumes them and calls
//! `recovery`'s metadata writers; `recovery` never imports `store`.
//!
//! Carries invariant 3's bookkeeping (WAL): `durable` is the version up to which a
//! page's redo is fsynced, and the store writes back or checkpoints an image only if
//! its version is at or below it; the checks themselves live in `store`.

use common::ids::PageVersion;

/// Per-page state.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageMeta {
    /// Version of the stored (written-back) image.
    pub version: PageVersion,
    /// Highest version whose redo is durable (in any stream).
    pub durable: PageVersion,
    /// Highest version whose redo was appended (the chain head for the next record).
    pub logged: PageVersion,
    pub frame: Option<u32>,
    /// Versions of the valid images in the two page-file slots (0 = none).
    pub disk: [PageVersion; 2],
}
