//! Layout of the transaction status table region (the commit records compute nodes read
//! with one-sided READs).
//!
//! The GTM registers the region read-only for clients; only the GTM writes it. All
//! integers are little-endian 64-bit words (the fabric's 8-byte atomic unit).
//!
//! ```text
//! offset  size  field
//! 0       8     magic            "DSBGTMST" (0x5453_4d54_4742_5344 as a LE u64)
//! 8       8     layout version   1
//! 16      8     capacity         number of entries (C)
//! 24      8     retired_below    txn id R: every txn id < R is resolved and may have
//!                                lost its slot (see "Retirement")
//! 32      8     gc_watermark     oldest active snapshot timestamp (docs/design.md)
//! 40      8     boot_txn_floor   txn ids < this were issued before the GTM's last start;
//!                                ones without a durable commit record are Aborted
//! 48      8     last_granted     the highest timestamp granted so far (0: none yet),
//!                                stored after the batch that granted it marked its
//!                                commits committing and before it answers; S =
//!                                last_granted + 1 is a snapshot that sees every commit
//!                                acknowledged before it was read
//! 56      8     reserved (zero)
//! 64      32*C  entries; txn t lives in entry t % C
//! ```
//!
//! One entry (32 bytes, a seqlock so a reader never mixes two transactions):
//!
//! ```text
//! +0   seq_head   u64   writer stores it LAST
//! +8   txn        u64   txn id held by the slot (0 = never used)
//! +16  state      u64   bits 63..62: 0 InProgress, 1 Committing, 2 Committed, 3 Aborted
//!                       bits 61..0 : commit timestamp (Committing/Committed), else 0
//! +24  seq_tail   u64   writer stores it FIRST
//! ```
//!
//! The writer (one thread at a time per entry, inside the GTM) stores `seq_tail = n`,
//! then `txn` and `state`, then `seq_head = n`, for a fresh `n` per write. A reader copies
//! the 32 bytes in ascending address order with acquire loads (which is what a fabric
//! READ does on every backend) and accepts the entry only if `seq_head == seq_tail`;
//! otherwise it reads again. Timestamps therefore must stay below 2^62, which the TSO
//! enforces.
//!
//! ## Retirement
//!
//! The table is a ring: txn `t + C` reuses the slot of txn `t`. The GTM hands out txn
//! id `n` only if the slot's previous occupant is resolved — Aborted, or Committed with a
//! commit timestamp below the GC watermark, so every active and future snapshot already
//! sees it as committed — or was issued before the GTM's last start; otherwise `begin`
//! answers `Busy` and the id is skipped. `retired_below` is published as
//! `newest txn id - C`.
//!
//! A reader that finds a *newer* txn in the slot of `t` (or, for `t < boot_txn_floor -
//! C`, any other txn: such slots were not refilled from the commit log at the GTM's
//! start) cannot tell `t`'s outcome from the region: it reads
//! [`TxnStatus::Retired`](super::TxnStatus::Retired) and asks the GTM with the
//! `Outcomes` RPC ([`proto`](super::proto)). The GTM answers from its outcome index
//! (txn -> commit ts of every committed txn whose slot was reused, rebuilt from the
//! commit log on start; a retired txn not in it is Aborted). The client does that
//! transparently ([`GtmClient::txn_status_batch`](super::GtmClient::txn_status_batch)),
//! so compute nodes may stamp commit timestamps into row versions as lazily as they like:
//! a one-sided READ answers for the last `C` or so transactions, one RPC for older ones.

/// "DSBGTMST" as a little-endian word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"DSBGTMST");
pub const LAYOUT_VERSION: u64 = 1;

pub const OFF_MAGIC: u64 = 0;
pub const OFF_VERSION: u64 = 8;
pub const OFF_CAPACITY: u64 = 16;
pub const OFF_RETIRED_BELOW: u64 = 24;
pub const OFF_GC_WATERMARK: u64 = 32;
pub const OFF_BOOT_TXN_FLOOR: u64 = 40;
pub const OFF_LAST_GRANTED: u64 = 48;
/// Bytes before the first entry.
pub const HEADER_LEN: u64 = 64;
/// Bytes per entry.
pub const ENTRY_LEN: u64 = 32;

/// Largest timestamp that fits an entry's state word.
pub const MAX_TIMESTAMP: u64 = (1 << 62) - 1;

const STATE_SHIFT: u32 = 62;
const TS_MASK: u64 = MAX_TIMESTAMP;

/// Region length for `capacity` entries.
pub const fn region_len(capacity: u64) -> u64 {
    HEADER_LEN + capacity * ENTRY_LEN
}

/// Byte offset of the entry holding `txn`.
pub const fn entry_offset(txn: u64, capacity: u64) -> u64 {
    HEADER_LEN + (txn % capacity) * ENTRY_LEN
}

/// The state kept in an entry's state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    InProgress,
    Committing(u64),
    Committed(u64),
    Aborted,
}

impl EntryState {
    pub fn encode(self) -> u64 {
        match self {
            EntryState::InProgress => 0,
            EntryState::Committing(ts) => (1 << STATE_SHIFT) | (ts & TS_MASK),
            EntryState::Committed(ts) => (2 << STATE_SHIFT) | (ts & TS_MASK),
            EntryState::Aborted => 3 << STATE_SHIFT,
        }
    }

    pub fn decode(word: u64) -> EntryState {
        let ts = word & TS_MASK;
        match word >> STATE_SHIFT {
            0 => EntryState::InProgress,
            1 => EntryState::Committing(ts),
            2 => EntryState::Committed(ts),
            _ => EntryState::Aborted,
        }
    }
}

/// A consistent snapshot of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub txn: u64,
    pub state: EntryState,
}

/// Decodes a 32-byte entry image; `None` if it was torn by a concurrent write (retry).
pub fn decode_entry(bytes: &[u8]) -> Option<Entry> {
    if bytes.len() != ENTRY_LEN as usize {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8"));
    let (head, txn, state, tail) = (word(0), word(1), word(2), word(3));
    (head == tail).then_some(Entry {
        txn,
        state: EntryState::decode(state),
    })
}

/// Encodes an entry image as the writer leaves it (for tests and tools).
pub fn encode_entry(seq: u64, entry: Entry) -> [u8; ENTRY_LEN as usize] {
    let mut out = [0u8; ENTRY_LEN as usize];
    out[0..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&entry.txn.to_le_bytes());
    out[16..24].copy_from_slice(&entry.state.encode().to_le_bytes());
    out[24..32].copy_from_slice(&seq.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn state_words_round_trip() {
        for s in [
            EntryState::InProgress,
            EntryState::Committing(7),
            EntryState::Committed(MAX_TIMESTAMP),
            EntryState::Aborted,
        ] {
            assert_eq!(EntryState::decode(s.encode()), s);
        }
    }

    #[test]
    fn torn_entries_are_rejected() {
        let e = Entry {
            txn: 9,
            state: EntryState::Committed(5),
        };
        let mut img = encode_entry(3, e);
        assert_eq!(decode_entry(&img), Some(e));
        img[24] = 4;
        assert_eq!(decode_entry(&img), None);
        assert_eq!(decode_entry(&img[..31]), None);
    }

    fn any_state() -> impl Strategy<Value = EntryState> {
        prop_oneof![
            Just(EntryState::InProgress),
            (0..=MAX_TIMESTAMP).prop_map(EntryState::Committing),
            (0..=MAX_TIMESTAMP).prop_map(EntryState::Committed),
            Just(EntryState::Aborted),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any bytes a one-sided READ may return: an entry (32 bytes, head == tail) or
        /// `None`, never a panic; any state word decodes.
        #[test]
        fn decode_of_random_bytes_never_panics(
            b in proptest::collection::vec(any::<u8>(), 0..64),
            word in any::<u64>(),
        ) {
            if decode_entry(&b).is_some() {
                prop_assert_eq!(b.len(), ENTRY_LEN as usize);
                prop_assert_eq!(&b[0..8], &b[24..32]);
            }
            let _ = EntryState::decode(word);
        }

        /// What the writer stores is what a reader decodes; a torn copy (head or tail
        /// from another write) is refused, a changed middle byte is not a panic.
        #[test]
        fn entries_round_trip_and_torn_ones_are_refused(
            seq in any::<u64>(),
            txn in any::<u64>(),
            state in any_state(),
            at in 0..ENTRY_LEN as usize,
            x in 1u8..=255,
        ) {
            let e = Entry { txn, state };
            prop_assert_eq!(EntryState::decode(state.encode()), state);
            let mut img = encode_entry(seq, e);
            prop_assert_eq!(decode_entry(&img), Some(e));
            img[at] ^= x;
            let d = decode_entry(&img);
            if !(8..24).contains(&at) {
                prop_assert_eq!(d, None);
            }
            prop_assert_eq!(decode_entry(&img[..at]), None);
        }
    }
}
