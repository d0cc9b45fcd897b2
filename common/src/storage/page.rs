//! The 8 KiB page format shared by storage and compute nodes.
//!
//! ## Layout (little-endian)
//!
//! ```text
//! offset  size  field
//!      0     8  page id                      (PageId)
//!      8     8  version                      (PageVersion; +1 per change, invariant 1)
//!     16     8  LSN                          (end LSN of the redo record that made it)
//!     24     4  crc32c                       over bytes [0, 24) ++ [28, 8192)
//!     28     4  magic  "DSBP"                (tells a formatted page from zeroes)
//!     32  8160  body                         (owned by the compute node)
//! ```
//!
//! A page is *sealed* ([`Page::seal`]) after every change, which recomputes the
//! checksum; [`Page::verify`] checks magic and checksum. The checksum covers the header
//! too, so a page torn anywhere — on disk, or in a one-sided copy that raced a writer —
//! fails verification. Version 0 is the empty page a fresh allocation starts from.

use crate::ids::{Lsn, PageId, PageVersion};
use std::fmt;

/// Bytes per page.
pub const PAGE_SIZE: usize = 8192;
/// Bytes of the header; the body follows.
pub const PAGE_HEADER_LEN: usize = 32;
/// Bytes of the body.
pub const PAGE_BODY_LEN: usize = PAGE_SIZE - PAGE_HEADER_LEN;
/// Magic at offset 28.
pub const PAGE_MAGIC: [u8; 4] = *b"DSBP";

const CRC_OFF: usize = 24;
const MAGIC_OFF: usize = 28;

/// The fields of a page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub id: PageId,
    pub version: PageVersion,
    pub lsn: Lsn,
}

/// Why a page image was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page image is {0} bytes, expected {PAGE_SIZE}")]
    BadLength(usize),
    #[error("page image has no page magic (never written, or garbage)")]
    NoMagic,
    #[error("page {id}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): torn or corrupt")]
    Checksum {
        id: PageId,
        stored: u32,
        computed: u32,
    },
}

/// One page image, heap-allocated.
#[derive(Clone, PartialEq, Eq)]
pub struct Page {
    buf: Box<[u8; PAGE_SIZE]>,
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.header();
        write!(
            f,
            "Page {{ id: {}, version: {}, lsn: {} }}",
            h.id, h.version, h.lsn
        )
    }
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// The checksum of a page image (the stored crc field excluded).
pub fn page_checksum(b: &[u8; PAGE_SIZE]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..CRC_OFF]), &b[MAGIC_OFF..])
}

impl Page {
    /// The empty page `id` at version 0, sealed.
    pub fn empty(id: PageId) -> Page {
        let mut p = Page {
            buf: Box::new([0u8; PAGE_SIZE]),
        };
        p.set_header(PageHeader {
            id,
            version: PageVersion(0),
            lsn: Lsn(0),
        });
        p.seal();
        p
    }

    /// Takes a raw image without checking it (see [`Page::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Page, PageError> {
        let arr: [u8; PAGE_SIZE] = bytes
            .try_into()
            .map_err(|_| PageError::BadLength(bytes.len()))?;
        Ok(Page { buf: Box::new(arr) })
    }

    /// Takes a raw image and verifies it.
    pub fn from_verified(bytes: &[u8]) -> Result<Page, PageError> {
        let p = Page::from_bytes(bytes)?;
        p.verify()?;
        Ok(p)
    }

    pub fn as_bytes(&self) -> &[u8; PAGE_SIZE] {
        &self.buf
    }

    /// Whole image, header included; call [`Page::seal`] after changing it.
    pub fn as_bytes_mut(&mut self) -> &mut [u8; PAGE_SIZE] {
        &mut self.buf
    }

    pub fn body(&self) -> &[u8] {
        &self.buf[PAGE_HEADER_LEN..]
    }

    /// The body; call [`Page::seal`] after changing it.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buf[PAGE_HEADER_LEN..]
    }

    pub fn header(&self) -> PageHeader {
        PageHeader {
            id: PageId(le64(&self.buf[..], 0)),
            version: PageVersion(le64(&self.buf[..], 8)),
            lsn: Lsn(le64(&self.buf[..], 16)),
        }
    }

    pub fn id(&self) -> PageId {
        self.header().id
    }

    pub fn version(&self) -> PageVersion {
        self.header().version
    }

    /// Writes the header fields (not the checksum: [`Page::seal`] does that).
    pub fn set_header(&mut self, h: PageHeader) {
        self.buf[0..8].copy_from_slice(&h.id.0.to_le_bytes());
        self.buf[8..16].copy_from_slice(&h.version.0.to_le_bytes());
        self.buf[16..24].copy_from_slice(&h.lsn.0.to_le_bytes());
        self.buf[MAGIC_OFF..MAGIC_OFF + 4].copy_from_slice(&PAGE_MAGIC);
    }

    /// Sets version and LSN and reseals: the usual last step of a change.
    pub fn stamp(&mut self, version: PageVersion, lsn: Lsn) {
        let id = self.id();
        self.set_header(PageHeader { id, version, lsn });
        self.seal();
    }

    /// Recomputes the checksum over the current contents.
    pub fn seal(&mut self) {
        self.buf[MAGIC_OFF..MAGIC_OFF + 4].copy_from_slice(&PAGE_MAGIC);
        let crc = page_checksum(&self.buf);
        self.buf[CRC_OFF..CRC_OFF + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Checks magic and checksum; returns the header of a good page.
    pub fn verify(&self) -> Result<PageHeader, PageError> {
        verify_image(&self.buf)
    }
}

/// Verifies a raw image in place (no copy).
pub fn verify_image(b: &[u8; PAGE_SIZE]) -> Result<PageHeader, PageError> {
    if b[MAGIC_OFF..MAGIC_OFF + 4] != PAGE_MAGIC {
        return Err(PageError::NoMagic);
    }
    let stored = u32::from_le_bytes(b[CRC_OFF..CRC_OFF + 4].try_into().expect("4 bytes"));
    let computed = page_checksum(b);
    let id = PageId(le64(b, 0));
    if stored != computed {
        return Err(PageError::Checksum {
            id,
            stored,
            computed,
        });
    }
    Ok(PageHeader {
        id,
        version: PageVersion(le64(b, 8)),
        lsn: Lsn(le64(b, 16)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seal_then_verify_and_any_flip_is_detected() {
        let mut p = Page::empty(PageId(7));
        p.body_mut()[100] = 9;
        p.stamp(PageVersion(3), Lsn(44));
        let h = p.verify().unwrap();
        assert_eq!(
            h,
            PageHeader {
                id: PageId(7),
                version: PageVersion(3),
                lsn: Lsn(44)
            }
        );
        for off in [0usize, 9, 17, 25, 31, 32, 4000, PAGE_SIZE - 1] {
            let mut q = p.clone();
            q.as_bytes_mut()[off] ^= 0x10;
            assert!(q.verify().is_err(), "flip at {off} not detected");
        }
        assert_eq!(
            verify_image(&[0u8; PAGE_SIZE]).unwrap_err(),
            PageError::NoMagic
        );
        assert!(Page::from_bytes(&[0u8; 10]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes of any length up to two pages: a page or an error, never a panic.
        #[test]
        fn from_bytes_of_random_images_never_panics(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..2 * PAGE_SIZE),
                proptest::collection::vec(any::<u8>(), PAGE_SIZE),
            ],
        ) {
            let len = bytes.len();
            match Page::from_bytes(&bytes) {
                Ok(p) => {
                    prop_assert_eq!(len, PAGE_SIZE);
                    let _ = p.verify();
                    let _ = Page::from_verified(&bytes);
                }
                Err(e) => prop_assert_eq!(e, PageError::BadLength(len)),
            }
        }

        /// A sealed page round-trips; any one changed byte fails verification (crc32c
        /// detects every burst of up to 32 bits) and a short image is refused.
        #[test]
        fn damaged_pages_are_detected(
            id in any::<u64>(),
            version in any::<u64>(),
            lsn in any::<u64>(),
            fill in proptest::collection::vec((PAGE_HEADER_LEN..PAGE_SIZE, any::<u8>()), 0..16),
            at in 0..PAGE_SIZE,
            x in 1u8..=255,
            cut in 0..PAGE_SIZE,
        ) {
            let mut p = Page::empty(PageId(id));
            for (o, b) in fill {
                p.as_bytes_mut()[o] = b;
            }
            p.stamp(PageVersion(version), Lsn(lsn));
            prop_assert_eq!(&Page::from_verified(p.as_bytes()).unwrap(), &p);
            prop_assert_eq!(
                p.verify().unwrap(),
                PageHeader { id: PageId(id), version: PageVersion(version), lsn: Lsn(lsn) }
            );
            let mut q = p.clone();
            q.as_bytes_mut()[at] ^= x;
            prop_assert!(q.verify().is_err(), "change at {} not detected", at);
            prop_assert!(Page::from_verified(&p.as_bytes()[..cut]).is_err());
        }
    }
}
