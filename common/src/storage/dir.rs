//! The page directory entry: what a compute node reads one-sided to find, validate and
//! coherence-check a page.
//!
//! The directory is a registered region of [`DIR_ENTRY_SIZE`]-byte entries, entry `i`
//! for page `first_page + i`, four 8-byte words, each little-endian and each read and
//! written atomically (the entry as a whole is not atomic; see the read protocol):
//!
//! ```text
//! word  offset  field
//!    0       0  lock word: 0 = free; else bit 63 = mode X (the only mode today),
//!               bits 32..=62 = holder epoch (31 bits), bits 0..=31 = holder node id
//!    1       8  version word: bit 63 = BUSY (the frame is being rewritten),
//!               bits 0..=62 = the page's current version (PageVersion)
//!    2      16  frame word: 0 = not resident; else 1 + index of the frame holding it
//!    3      24  reserved (0)
//! ```
//!
//! ## Why the lock word comes first
//!
//! A reader copies an entry word by word in ascending address order (every fabric
//! backend: the shm copy and the tcp responder copy 8-byte words upwards; an RDMA READ
//! of one entry is assumed to as well), so it sees the lock word at some instant `t1`
//! and the version word at a later `t2`. Validation asks "is my cached image at version
//! `V` still the newest, with no X holder elsewhere?". The reader's `V` was stored in the
//! directory before it issued the read, and versions only grow, so if the read shows a
//! free lock at `t1` and version `V` at `t2`, the version at `t1` was `V` too: the pair
//! (version `V`, free) existed at the instant `t1`. With the version word first the
//! reader could see the old version at `t1` and a lock freed by a holder that wrote a
//! newer image back in between at `t2`: a pair that never existed, confirming a stale
//! image.
//!
//! ## Writer protocol (storage node, seqlock)
//!
//! To put a new image of page `p` into frame `f` the storage node (1) stores word 0 with
//! BUSY set, (2) if `f` previously held another page `q`, stores 0 into `q`'s frame word,
//! (3) copies the image into the frame, (4) stores `p`'s frame word, (5) stores word 0 =
//! new version, BUSY clear. Every store is a release store.
//!
//! ## Reader protocol (compute node, one batch)
//!
//! `[READ entry p, READ frame f, READ entry p]` with `f` the frame the reader believes
//! holds `p` (learned from an earlier entry). The reader accepts the frame iff both
//! entry reads have equal version and frame words, BUSY is clear, the frame word names
//! `f`, and the frame verifies (checksum) with header page id `p` and header version
//! equal to the directory version. Otherwise it retries (with the frame word it just
//! learned) or, for a non-resident page, faults the page in over RPC. A frame reused for
//! another page fails the page-id check, so a reader can never mistake it.

use crate::ids::{Epoch, NodeId, PageVersion};

/// Bytes per directory entry.
pub const DIR_ENTRY_SIZE: usize = 32;
/// Byte offsets of the words inside an entry.
pub const LOCK_WORD: u64 = 0;
pub const VERSION_WORD: u64 = 8;
pub const FRAME_WORD: u64 = 16;

const BUSY: u64 = 1 << 63;
const MODE_X: u64 = 1 << 63;
/// Epochs must fit the lock word's 31 bits.
pub const MAX_EPOCH: u32 = (1 << 31) - 1;

/// Holder of a page lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockHolder {
    pub node: NodeId,
    pub epoch: Epoch,
}

/// Packs a version word.
pub fn version_word(version: PageVersion, busy: bool) -> u64 {
    (version.0 & !BUSY) | if busy { BUSY } else { 0 }
}

/// Packs a lock word (`None` = free). Epochs above [`MAX_EPOCH`] are truncated, so
/// callers refuse them first (the storage node answers `BadRequest`).
pub fn lock_word(holder: Option<LockHolder>) -> u64 {
    match holder {
        None => 0,
        Some(h) => MODE_X | (u64::from(h.epoch.0 & MAX_EPOCH) << 32) | u64::from(h.node.0),
    }
}

/// Unpacks a lock word.
pub fn decode_lock_word(w: u64) -> Option<LockHolder> {
    (w != 0).then_some(LockHolder {
        node: NodeId(w as u32),
        epoch: Epoch(((w >> 32) as u32) & MAX_EPOCH),
    })
}

/// A frame word (`None` = not resident).
pub fn frame_word(frame: Option<u32>) -> u64 {
    frame.map_or(0, |f| u64::from(f) + 1)
}

/// One decoded directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub version: PageVersion,
    /// The storage node is rewriting the frame: retry.
    pub busy: bool,
    pub holder: Option<LockHolder>,
    /// Frame index holding the page, if resident.
    pub frame: Option<u32>,
}

impl DirEntry {
    /// Decodes the 32 bytes of an entry; `None` if `b` is not 32 bytes long.
    pub fn decode(b: &[u8]) -> Option<DirEntry> {
        if b.len() != DIR_ENTRY_SIZE {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8"));
        let (l, v, f) = (w(0), w(1), w(2));
        Some(DirEntry {
            version: PageVersion(v & !BUSY),
            busy: v & BUSY != 0,
            holder: decode_lock_word(l),
            frame: (f != 0 && f <= u64::from(u32::MAX)).then(|| (f - 1) as u32),
        })
    }

    /// Same version and frame, ignoring the lock word (the seqlock comparison).
    pub fn same_image(&self, other: &DirEntry) -> bool {
        self.version == other.version && self.busy == other.busy && self.frame == other.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn words_round_trip() {
        let h = LockHolder {
            node: NodeId(u32::MAX),
            epoch: Epoch(MAX_EPOCH),
        };
        assert_eq!(decode_lock_word(lock_word(Some(h))), Some(h));
        assert_eq!(decode_lock_word(lock_word(None)), None);
        let h0 = LockHolder {
            node: NodeId(0),
            epoch: Epoch(0),
        };
        assert_eq!(decode_lock_word(lock_word(Some(h0))), Some(h0));
        let mut b = Vec::new();
        b.extend_from_slice(&lock_word(Some(h)).to_le_bytes());
        b.extend_from_slice(&version_word(PageVersion(77), true).to_le_bytes());
        b.extend_from_slice(&frame_word(Some(5)).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let e = DirEntry::decode(&b).unwrap();
        assert_eq!(e.version, PageVersion(77));
        assert!(e.busy);
        assert_eq!(e.holder, Some(h));
        assert_eq!(e.frame, Some(5));
        assert!(DirEntry::decode(&b[..31]).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any bytes (a torn or hostile read): an entry iff exactly 32 bytes, never a
        /// panic; a decoded entry's words re-encode to the same entry.
        #[test]
        fn decode_of_random_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            match DirEntry::decode(&b) {
                Some(e) => {
                    prop_assert_eq!(b.len(), DIR_ENTRY_SIZE);
                    let mut again = Vec::new();
                    again.extend_from_slice(&lock_word(e.holder).to_le_bytes());
                    again.extend_from_slice(&version_word(e.version, e.busy).to_le_bytes());
                    again.extend_from_slice(&frame_word(e.frame).to_le_bytes());
                    again.extend_from_slice(&[0; 8]);
                    prop_assert_eq!(DirEntry::decode(&again), Some(e));
                }
                None => prop_assert_ne!(b.len(), DIR_ENTRY_SIZE),
            }
        }

        /// Entries the storage node writes decode to what it meant (frame indexes stay
        /// below u32::MAX: at most u32::MAX - 1 frames, see the storage config).
        #[test]
        fn entries_round_trip(
            version in 0..(1u64 << 63),
            busy in any::<bool>(),
            holder in proptest::option::of((any::<u32>(), 0..=MAX_EPOCH)),
            frame in proptest::option::of(0..u32::MAX),
            reserved in any::<u64>(),
        ) {
            let holder = holder.map(|(n, e)| LockHolder { node: NodeId(n), epoch: Epoch(e) });
            let mut b = Vec::new();
            b.extend_from_slice(&lock_word(holder).to_le_bytes());
            b.extend_from_slice(&version_word(PageVersion(version), busy).to_le_bytes());
            b.extend_from_slice(&frame_word(frame).to_le_bytes());
            b.extend_from_slice(&reserved.to_le_bytes());
            prop_assert_eq!(
                DirEntry::decode(&b),
                Some(DirEntry { version: PageVersion(version), busy, holder, frame })
            );
        }
    }
}
