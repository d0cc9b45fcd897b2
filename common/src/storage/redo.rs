//! Redo records: the physical description of one page change, as a compute node sends it
//! and as the storage node keeps it in the node's log stream.
//!
//! A record says "page `page` went from version `before` to version `after`" and carries
//! what the storage node needs to redo it without the compute node: either the full new
//! body ([`RedoBody::Image`]) or byte-range diffs of the body ([`RedoBody::Diffs`], each
//! range absolute within the 8 KiB page and entirely inside the body, offsets >= 32).
//! Applying a record to the page image at `before` writes the ranges (or body), stamps
//! `after` and the record's LSN into the header and reseals the page. Logical redo
//! (e.g. "insert key k") is not accepted: the storage node must be able to replay every
//! record on its own (recovery, dead-node rebuild).
//!
//! ## Encoding (little-endian; the same bytes on the wire and in the stream file)
//!
//! ```text
//! offset size  field
//!      0    4  total length n of the record, this field included (44 <= n <= 65536)
//!      4    4  crc32c of bytes [8, n)
//!      8    8  LSN: end offset of this record in its stream (0 when sent by a client;
//!              the storage node assigns it on append)
//!     16    8  page id
//!     24    8  version before
//!     32    8  version after (> before)
//!     40    1  kind: 1 = full body image, 2 = byte-range diffs
//!     41    3  reserved, 0
//! kind 1:
//!     44 8160  the new body (bytes 32..8192 of the page)
//! kind 2:
//!     44    4  number of ranges r
//!     48       r times: u16 offset in the page, u16 length, `length` bytes
//! ```
//!
//! The decoder is total: any byte string gives a record or a [`RedoError`], never a
//! panic; a stream's torn tail shows up as a length or checksum error.

use super::page::{Page, PAGE_BODY_LEN, PAGE_HEADER_LEN, PAGE_SIZE};
use crate::ids::{Lsn, PageId, PageVersion};

/// Bytes before the payload.
pub const REDO_HEADER_LEN: usize = 44;

/// crc32c of an encoded record from its page id on (bytes `[16, n)`): the same for the
/// record as a client sends it and as the stream stores it (the LSN differs).
pub fn content_digest(encoded: &[u8]) -> u32 {
    crc32c::crc32c(encoded.get(16..).unwrap_or(&[]))
}
/// Largest encoded record.
pub const MAX_RECORD_LEN: usize = 64 << 10;

const KIND_IMAGE: u8 = 1;
const KIND_DIFFS: u8 = 2;

/// What a record changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedoBody {
    /// The whole new body (8160 bytes).
    Image(Vec<u8>),
    /// `(offset in page, bytes)` ranges inside the body.
    Diffs(Vec<(u16, Vec<u8>)>),
}

/// One redo record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedoRecord {
    /// Assigned by the storage node; ignored on append.
    pub lsn: Lsn,
    pub page: PageId,
    pub before: PageVersion,
    pub after: PageVersion,
    pub body: RedoBody,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedoError {
    #[error("redo record truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("redo record length {0} out of range")]
    BadLength(usize),
    #[error("redo record checksum mismatch")]
    Checksum,
    #[error("redo record: {0}")]
    Invalid(String),
}

/// Diff ranges of a body smaller than this are merged across equal gaps.
const DIFF_GAP: usize = 16;
/// Above this many changed bytes a full image is logged instead of diffs.
const DIFF_MAX: usize = 4096;

impl RedoRecord {
    /// The record for `old -> new`: byte-range diffs when the change is small (a row
    /// insert touches the header, a slot and one entry), the full body otherwise.
    pub fn diff(old: &Page, new: &Page) -> RedoRecord {
        let (a, b) = (old.as_bytes(), new.as_bytes());
        let mut ranges: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut total = 0;
        let mut i = PAGE_HEADER_LEN;
        let n = a.len();
        while i < n {
            // Skip equal bytes a word at a time (most of a page is unchanged).
            while i + 8 <= n && a[i..i + 8] == b[i..i + 8] {
                i += 8;
            }
            while i < n && a[i] == b[i] {
                i += 1;
            }
            if i == n {
                break;
            }
            let start = i;
            let mut end = i + 1;
            let mut j = end;
            while j < n && j - end < DIFF_GAP {
                if a[j] != b[j] {
                    end = j + 1;
                }
                j += 1;
            }
            total += end - start;
            if total > DIFF_MAX {
                return RedoRecord::image(new, old.version());
            }
            ranges.push((start as u16, b[start..end].to_vec()));
            i = end;
        }
        let mut r = RedoRecord::image(new, old.version());
        r.body = RedoBody::Diffs(ranges);
        r
    }

    /// A full-image record for the change that produced `page` (its header's version is
    /// `after`).
    pub fn image(page: &Page, before: PageVersion) -> RedoRecord {
        RedoRecord {
            lsn: Lsn(0),
            page: page.id(),
            before,
            after: page.version(),
            body: RedoBody::Image(page.body().to_vec()),
        }
    }

    /// Checks what the decoder cannot: version order and ranges.
    pub fn validate(&self) -> Result<(), RedoError> {
        if self.after <= self.before {
            return Err(RedoError::Invalid(format!(
                "page {}: version after {} is not above before {}",
                self.page, self.after, self.before
            )));
        }
        match &self.body {
            RedoBody::Image(b) if b.len() != PAGE_BODY_LEN => Err(RedoError::Invalid(format!(
                "image of {} bytes, expected {PAGE_BODY_LEN}",
                b.len()
            ))),
            RedoBody::Diffs(ranges) => {
                for (off, bytes) in ranges {
                    let start = usize::from(*off);
                    if start < PAGE_HEADER_LEN || start + bytes.len() > PAGE_SIZE {
                        return Err(RedoError::Invalid(format!(
                            "range at {start} of {} bytes leaves the page body",
                            bytes.len()
                        )));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub fn encoded_len(&self) -> usize {
        REDO_HEADER_LEN
            + match &self.body {
                RedoBody::Image(b) => b.len(),
                RedoBody::Diffs(r) => 4 + r.iter().map(|(_, b)| 4 + b.len()).sum::<usize>(),
            }
    }

    /// A checksum of what the record says — page, versions and change, not its LSN —
    /// to tell a resent record from a different one (see [`content_digest`]).
    pub fn digest(&self) -> u32 {
        let mut b = Vec::with_capacity(self.encoded_len());
        self.encode(&mut b);
        content_digest(&b)
    }

    /// Appends the encoding (with `self.lsn`) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let n = self.encoded_len();
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.lsn.0.to_le_bytes());
        out.extend_from_slice(&self.page.0.to_le_bytes());
        out.extend_from_slice(&self.before.0.to_le_bytes());
        out.extend_from_slice(&self.after.0.to_le_bytes());
        match &self.body {
            RedoBody::Image(b) => {
                out.extend_from_slice(&[KIND_IMAGE, 0, 0, 0]);
                out.extend_from_slice(b);
            }
            RedoBody::Diffs(ranges) => {
                out.extend_from_slice(&[KIND_DIFFS, 0, 0, 0]);
                out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
                for (off, b) in ranges {
                    out.extend_from_slice(&off.to_le_bytes());
                    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one record at the start of `b`; returns it and its length.
    pub fn decode(b: &[u8]) -> Result<(RedoRecord, usize), RedoError> {
        if b.len() < 4 {
            return Err(RedoError::Truncated {
                need: 4,
                have: b.len(),
            });
        }
        let n = u32::from_le_bytes(b[0..4].try_into().expect("4")) as usize;
        if !(REDO_HEADER_LEN..=MAX_RECORD_LEN).contains(&n) {
            return Err(RedoError::BadLength(n));
        }
        if b.len() < n {
            return Err(RedoError::Truncated {
                need: n,
                have: b.len(),
            });
        }
        let rec = &b[..n];
        let crc = u32::from_le_bytes(rec[4..8].try_into().expect("4"));
        if crc32c::crc32c(&rec[8..]) != crc {
            return Err(RedoError::Checksum);
        }
        let w = |o: usize| u64::from_le_bytes(rec[o..o + 8].try_into().expect("8"));
        let payload = &rec[REDO_HEADER_LEN..];
        let body = match rec[40] {
            KIND_IMAGE => RedoBody::Image(payload.to_vec()),
            KIND_DIFFS => {
                if payload.len() < 4 {
                    return Err(RedoError::Invalid("diff count missing".into()));
                }
                let count = u32::from_le_bytes(payload[0..4].try_into().expect("4")) as usize;
                let mut at = 4;
                // Each range needs at least 4 bytes, which caps the allocation.
                if count > (payload.len() - 4) / 4 {
                    return Err(RedoError::Invalid(format!("{count} ranges cannot fit")));
                }
                let mut ranges = Vec::with_capacity(count);
                for _ in 0..count {
                    if payload.len() < at + 4 {
                        return Err(RedoError::Invalid("range header truncated".into()));
                    }
                    let off = u16::from_le_bytes([payload[at], payload[at + 1]]);
                    let len = usize::from(u16::from_le_bytes([payload[at + 2], payload[at + 3]]));
                    at += 4;
                    if payload.len() < at + len {
                        return Err(RedoError::Invalid("range bytes truncated".into()));
                    }
                    ranges.push((off, payload[at..at + len].to_vec()));
                    at += len;
                }
                if at != payload.len() {
                    return Err(RedoError::Invalid("trailing bytes after ranges".into()));
                }
                RedoBody::Diffs(ranges)
            }
            k => return Err(RedoError::Invalid(format!("unknown kind {k}"))),
        };
        let r = RedoRecord {
            lsn: Lsn(w(8)),
            page: PageId(w(16)),
            before: PageVersion(w(24)),
            after: PageVersion(w(32)),
            body,
        };
        r.validate()?;
        Ok((r, n))
    }

    /// Redoes this record on `page`, which must be at `before`.
    pub fn apply(&self, page: &mut Page) -> Result<(), RedoError> {
        let h = page.header();
        if h.id != self.page || h.version != self.before {
            return Err(RedoError::Invalid(format!(
                "record for page {} v{} applied to page {} v{}",
                self.page, self.before, h.id, h.version
            )));
        }
        self.validate()?;
        match &self.body {
            RedoBody::Image(b) => page.body_mut().copy_from_slice(b),
            RedoBody::Diffs(ranges) => {
                for (off, bytes) in ranges {
                    let o = usize::from(*off);
                    page.as_bytes_mut()[o..o + bytes.len()].copy_from_slice(bytes);
                }
            }
        }
        page.stamp(self.after, self.lsn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn diff_record() -> RedoRecord {
        RedoRecord {
            lsn: Lsn(99),
            page: PageId(3),
            before: PageVersion(0),
            after: PageVersion(1),
            body: RedoBody::Diffs(vec![(32, vec![1, 2, 3]), (8000, vec![9; 192])]),
        }
    }

    #[test]
    fn encode_decode_apply() {
        let r = diff_record();
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(buf.len(), r.encoded_len());
        let (back, n) = RedoRecord::decode(&buf).unwrap();
        assert_eq!((back.clone(), n), (r, buf.len()));
        let mut p = Page::empty(PageId(3));
        back.apply(&mut p).unwrap();
        assert_eq!(p.verify().unwrap().version, PageVersion(1));
        assert_eq!(&p.as_bytes()[32..35], &[1, 2, 3]);
        assert_eq!(p.as_bytes()[8191], 9);
        // Applying to the wrong version is refused.
        assert!(back.apply(&mut p).is_err());
        // A torn tail is an error, not a panic.
        for cut in 0..buf.len() {
            assert!(RedoRecord::decode(&buf[..cut]).is_err());
        }
        let mut bad = buf.clone();
        bad[50] ^= 1;
        assert_eq!(RedoRecord::decode(&bad).unwrap_err(), RedoError::Checksum);
    }

    proptest! {
        #[test]
        fn decoder_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = RedoRecord::decode(&bytes);
        }

        #[test]
        fn decoder_is_total_on_valid_crc(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Random bodies behind a correct length and checksum reach the field checks.
            let n = REDO_HEADER_LEN + body.len();
            let mut b = vec![0u8; 8];
            b[0..4].copy_from_slice(&(n as u32).to_le_bytes());
            b.extend_from_slice(&[0; 32]);
            b.push(2);
            b.extend_from_slice(&[0; 3]);
            b.extend_from_slice(&body);
            let crc = crc32c::crc32c(&b[8..]);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            let _ = RedoRecord::decode(&b);
        }
    }

    /// Records the encoder is given: ordered versions, ranges inside the body.
    fn any_record() -> impl Strategy<Value = RedoRecord> {
        let range = (PAGE_HEADER_LEN..PAGE_SIZE).prop_flat_map(|off| {
            (
                Just(off as u16),
                proptest::collection::vec(any::<u8>(), 0..=(PAGE_SIZE - off).min(64)),
            )
        });
        let body = prop_oneof![
            1 => proptest::collection::vec(any::<u8>(), PAGE_BODY_LEN).prop_map(RedoBody::Image),
            4 => proptest::collection::vec(range, 0..6).prop_map(RedoBody::Diffs),
        ];
        (any::<u64>(), any::<u64>(), 0..u64::MAX - 1, 1u64..4, body).prop_map(
            |(lsn, page, before, step, body)| RedoRecord {
                lsn: Lsn(lsn),
                page: PageId(page),
                before: PageVersion(before),
                after: PageVersion(before.saturating_add(step)),
                body,
            },
        )
    }

    /// `b` with its checksum recomputed, so a change reaches the field checks.
    fn resealed(mut b: Vec<u8>) -> Vec<u8> {
        if b.len() >= 8 {
            let crc = crc32c::crc32c(&b[8..]);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_record_round_trips(r in any_record(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut b = Vec::new();
            r.encode(&mut b);
            let n = b.len();
            b.extend_from_slice(&tail); // the next record of a stream
            prop_assert_eq!(RedoRecord::decode(&b), Ok((r, n)));
        }

        /// One byte changed (checksum recomputed or not) or the record cut short: an
        /// error or a valid record that survives its own round trip and applies to a
        /// page at its `before` version.
        #[test]
        fn damaged_records_never_panic(
            r in any_record(),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut b = Vec::new();
            r.encode(&mut b);
            prop_assert!(RedoRecord::decode(&b[..cut.index(b.len())]).is_err());
            let i = at.index(b.len());
            b[i] ^= x;
            prop_assert!(RedoRecord::decode(&b).is_err(), "checksum missed a change at {}", i);
            let b = resealed(b);
            if let Ok((d, _)) = RedoRecord::decode(&b) {
                // Not byte-canonical: the decoder ignores the reserved bytes 41..44.
                let mut again = Vec::new();
                d.encode(&mut again);
                prop_assert_eq!(RedoRecord::decode(&again), Ok((d.clone(), again.len())));
                let mut page = Page::empty(d.page);
                page.stamp(d.before, Lsn(0));
                prop_assert!(d.apply(&mut page).is_ok());
            }
        }
    }
}
