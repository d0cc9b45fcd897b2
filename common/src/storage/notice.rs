//! The change-notice ring: how a storage node tells compute nodes which pages may have
//! changed, so a validation round re-checks those pages only instead of every cached
//! one (docs/protocols.md §1).
//!
//! The ring is a registered region that compute nodes read one-sided. Little-endian
//! 8-byte words, each read and written atomically:
//!
//! ```text
//! offset            field
//!      0            head: sequence number of the newest notice (0 = none yet)
//!      8 + 16 * i   slot i = seq % capacity:  u64 seq | u64 page id
//! ```
//!
//! ## Writer (storage node, under its engine lock)
//!
//! A notice is published every time a page's X lock is given to a node: after the
//! directory's lock word names the new holder and *before* the grant is answered, so
//! before the holder can change the page. The writer stores the slot's page word, then
//! its seq word, then the head (release stores).
//!
//! Grants are the only notices needed. A cached image can go stale only through a
//! change by a node holding the page's X lock, which it was granted; a reader confirms
//! an image only while no other node holds the lock, so every change after a
//! confirmation starts with a grant, and that grant's notice is in the ring before the
//! change is made. (Write-backs change the directory's version under a holder's lock;
//! a dead holder's pages are rebuilt under its lock; neither needs a notice of its own.)
//!
//! ## Reader (compute node)
//!
//! Read the head `h`, then the slots of `consumed+1 ..= h` (one or two ranges). A slot
//! whose seq word is not the expected number was overwritten (the reader was lapped) or
//! is mid-write: the reader falls back to a full round over every cached page. What
//! the reader may conclude: every grant whose notice was published before it read `h`
//! is among the pages it read; see `compute_node::coherence` for how that confirms the
//! pages not named.

use crate::ids::PageId;

/// Slots in the ring by default (1 MiB of region; `notice_slots` in the storage
/// node's config).
pub const NOTICE_CAPACITY: u32 = 1 << 16;
/// Bytes per slot.
pub const SLOT_SIZE: u64 = 16;
/// Offset of the head word.
pub const HEAD_OFFSET: u64 = 0;

/// Bytes of a ring region with `capacity` slots.
pub fn region_len(capacity: u32) -> u64 {
    8 + u64::from(capacity) * SLOT_SIZE
}

/// Offset of the slot that holds notice `seq`.
pub fn slot_offset(seq: u64, capacity: u32) -> u64 {
    8 + (seq % u64::from(capacity.max(1))) * SLOT_SIZE
}

/// Decodes the slots read for the notices `first ..= first + n - 1` (in order, `n`
/// slots of [`SLOT_SIZE`] bytes): the pages they name, or `None` if any slot does not
/// hold its expected notice (overwritten or being written: the reader was lapped).
pub fn decode_slots(first: u64, bytes: &[u8]) -> Option<Vec<PageId>> {
    if !bytes.len().is_multiple_of(SLOT_SIZE as usize) {
        return None;
    }
    bytes
        .chunks(SLOT_SIZE as usize)
        .enumerate()
        .map(|(i, s)| {
            let seq = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
            let page = u64::from_le_bytes(s[8..].try_into().expect("8 bytes"));
            (seq == first.wrapping_add(i as u64)).then_some(PageId(page))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(seq: u64, page: u64) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&page.to_le_bytes());
        b
    }

    #[test]
    fn slots_decode_in_order_and_a_lapped_slot_is_refused() {
        let mut b = slot(5, 100);
        b.extend(slot(6, 7));
        assert_eq!(decode_slots(5, &b), Some(vec![PageId(100), PageId(7)]));
        // Slot 6 was overwritten by notice 6 + capacity.
        let mut lapped = slot(5, 100);
        lapped.extend(slot(6 + u64::from(NOTICE_CAPACITY), 9));
        assert_eq!(decode_slots(5, &lapped), None);
        assert_eq!(decode_slots(5, &b[..20]), None, "a torn length");
        assert_eq!(slot_offset(0, 4), 8);
        assert_eq!(slot_offset(5, 4), 8 + 16);
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(first in any::<u64>(), b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_slots(first, &b);
        }
    }
}
