//! Order-preserving key encoding: typed values and tuples to byte strings whose
//! lexicographic (memcmp) order is the values' order, so the tree compares keys
//! without knowing their types.
//!
//! | type | encoding |
//! |---|---|
//! | `u32`, `u64` | big-endian, fixed width |
//! | `i64` | big-endian with the sign bit flipped (`i64::MIN` -> `00..`, `-1` -> `7f ff..`, `0` -> `80 00..`) |
//! | bytes, string (UTF-8) | each `0x00` escaped as `0x00 0xFF`, then the terminator `0x00 0x01` |
//! | tuple | the fields' encodings concatenated |
//!
//! Why the escape: a plain concatenation would order `("a", 2)` against `("ab", 1)` by
//! comparing the integer's first byte with `b`. The terminator `00 01` sorts below every
//! byte that can follow inside a field (`00 FF` for an escaped zero, `01..FF` for any
//! other byte), so a field that is a prefix of another sorts first and the next field is
//! only compared when the previous ones are equal. Fixed-width integers need no
//! terminator. Tuples compare field by field as long as both sides follow the same
//! schema (a table's key schema is fixed); fields carry no type tags.

use std::fmt;

/// Why a key could not be decoded with the expected schema.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key ends inside a field at byte {at}")]
    Truncated { at: usize },
    #[error("bad escape 0x00 0x{byte:02x} at byte {at}")]
    BadEscape { at: usize, byte: u8 },
    #[error("string field is not UTF-8")]
    NotUtf8,
    #[error("{left} bytes left after the last field")]
    TrailingBytes { left: usize },
}

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;

pub fn encode_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn encode_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn encode_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

pub fn encode_bytes(out: &mut Vec<u8>, b: &[u8]) {
    for chunk in b.split_inclusive(|&x| x == 0) {
        match chunk.split_last() {
            Some((0, head)) => {
                out.extend_from_slice(head);
                out.extend_from_slice(&[ESCAPE, ESCAPED_ZERO]);
            }
            _ => out.extend_from_slice(chunk),
        }
    }
    out.extend_from_slice(&[ESCAPE, TERMINATOR]);
}

pub fn encode_str(out: &mut Vec<u8>, s: &str) {
    encode_bytes(out, s.as_bytes());
}

/// Builds a tuple key field by field: `KeyBuilder::new().u32(w).u64(d).str(name).finish()`.
#[derive(Clone, Debug, Default)]
pub struct KeyBuilder(Vec<u8>);

impl KeyBuilder {
    pub fn new() -> KeyBuilder {
        KeyBuilder::default()
    }
    pub fn u32(mut self, v: u32) -> Self {
        encode_u32(&mut self.0, v);
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        encode_u64(&mut self.0, v);
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        encode_i64(&mut self.0, v);
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Self {
        encode_bytes(&mut self.0, v);
        self
    }
    pub fn str(mut self, v: &str) -> Self {
        encode_str(&mut self.0, v);
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Decodes the fields of a key in order.
#[derive(Clone, Debug)]
pub struct KeyReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> KeyReader<'a> {
    pub fn new(buf: &'a [u8]) -> KeyReader<'a> {
        KeyReader { buf, pos: 0 }
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], KeyError> {
        let b = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or(KeyError::Truncated { at: self.buf.len() })?;
        self.pos += N;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    pub fn u32(&mut self) -> Result<u32, KeyError> {
        Ok(u32::from_be_bytes(self.fixed()?))
    }

    pub fn u64(&mut self) -> Result<u64, KeyError> {
        Ok(u64::from_be_bytes(self.fixed()?))
    }

    pub fn i64(&mut self) -> Result<i64, KeyError> {
        Ok((u64::from_be_bytes(self.fixed()?) ^ (1 << 63)) as i64)
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, KeyError> {
        let mut out = Vec::new();
        loop {
            let rest = &self.buf[self.pos..];
            let Some(z) = rest.iter().position(|&x| x == ESCAPE) else {
                return Err(KeyError::Truncated { at: self.buf.len() });
            };
            out.extend_from_slice(&rest[..z]);
            let at = self.pos + z;
            match rest.get(z + 1) {
                Some(&ESCAPED_ZERO) => out.push(0),
                Some(&TERMINATOR) => {
                    self.pos = at + 2;
                    return Ok(out);
                }
                Some(&byte) => return Err(KeyError::BadEscape { at, byte }),
                None => return Err(KeyError::Truncated { at: self.buf.len() }),
            }
            self.pos = at + 2;
        }
    }

    pub fn str(&mut self) -> Result<String, KeyError> {
        String::from_utf8(self.bytes()?).map_err(|_| KeyError::NotUtf8)
    }

    /// Checks that every byte was consumed.
    pub fn finish(self) -> Result<(), KeyError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            left => Err(KeyError::TrailingBytes { left }),
        }
    }
}

/// The type of one tuple field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    U32,
    U64,
    I64,
    Bytes,
    Str,
}

/// One typed field of a tuple key. `Ord` between parts of the same type is the value's
/// order, which the encoding preserves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyPart {
    U32(u32),
    U64(u64),
    I64(i64),
    Bytes(Vec<u8>),
    Str(String),
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::U32(v) => write!(f, "{v}"),
            KeyPart::U64(v) => write!(f, "{v}"),
            KeyPart::I64(v) => write!(f, "{v}"),
            KeyPart::Bytes(v) => write!(f, "{v:02x?}"),
            KeyPart::Str(v) => write!(f, "{v:?}"),
        }
    }
}

pub fn encode_tuple(parts: &[KeyPart]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        match p {
            KeyPart::U32(v) => encode_u32(&mut out, *v),
            KeyPart::U64(v) => encode_u64(&mut out, *v),
            KeyPart::I64(v) => encode_i64(&mut out, *v),
            KeyPart::Bytes(v) => encode_bytes(&mut out, v),
            KeyPart::Str(v) => encode_str(&mut out, v),
        }
    }
    out
}

pub fn decode_tuple(key: &[u8], schema: &[KeyType]) -> Result<Vec<KeyPart>, KeyError> {
    let mut r = KeyReader::new(key);
    let parts = schema
        .iter()
        .map(|t| {
            Ok(match t {
                KeyType::U32 => KeyPart::U32(r.u32()?),
                KeyType::U64 => KeyPart::U64(r.u64()?),
                KeyType::I64 => KeyPart::I64(r.i64()?),
                KeyType::Bytes => KeyPart::Bytes(r.bytes()?),
                KeyType::Str => KeyPart::Str(r.str()?),
            })
        })
        .collect::<Result<Vec<_>, KeyError>>()?;
    r.finish()?;
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut b = Vec::new();
        encode_bytes(&mut b, &[b'a', 0, b'b']);
        assert_eq!(b, [b'a', 0, 0xFF, b'b', 0, 1]);
        let mut i = Vec::new();
        encode_i64(&mut i, -1);
        assert_eq!(i, [0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        // A string that is a prefix of another sorts first, whatever follows it.
        let a = KeyBuilder::new().str("a").u32(u32::MAX).finish();
        let ab = KeyBuilder::new().str("ab").u32(0).finish();
        let a0 = KeyBuilder::new().str("a\0").u32(0).finish();
        assert!(a < a0 && a0 < ab);
        assert_eq!(
            decode_tuple(&a0, &[KeyType::Str, KeyType::U32]).unwrap(),
            vec![KeyPart::Str("a\0".into()), KeyPart::U32(0)]
        );
    }

    #[test]
    fn malformed_keys_are_errors() {
        let s = &[KeyType::Bytes];
        assert_eq!(decode_tuple(b"ab", s), Err(KeyError::Truncated { at: 2 }));
        assert_eq!(
            decode_tuple(&[b'a', 0], s),
            Err(KeyError::Truncated { at: 2 })
        );
        assert_eq!(
            decode_tuple(&[0, 7], s),
            Err(KeyError::BadEscape { at: 0, byte: 7 })
        );
        assert_eq!(
            decode_tuple(&[0, 1, 9], s),
            Err(KeyError::TrailingBytes { left: 1 })
        );
        assert_eq!(
            decode_tuple(&[0xFF, 0, 1], &[KeyType::Str]),
            Err(KeyError::NotUtf8)
        );
        assert_eq!(
            decode_tuple(&[1, 2, 3], &[KeyType::U32]),
            Err(KeyError::Truncated { at: 3 })
        );
    }

    const SCHEMA: [KeyType; 5] = [
        KeyType::Bytes,
        KeyType::I64,
        KeyType::Str,
        KeyType::U32,
        KeyType::U64,
    ];

    /// Small alphabets so that equal prefixes, embedded zeros and 0xFF bytes are common.
    fn tuple() -> impl Strategy<Value = Vec<KeyPart>> {
        (
            proptest::collection::vec(
                prop_oneof![Just(0u8), Just(1), Just(0xFF), any::<u8>()],
                0..5,
            ),
            prop_oneof![
                Just(i64::MIN),
                Just(-1i64),
                Just(0),
                Just(i64::MAX),
                any::<i64>()
            ],
            "[a\\x00\\x01é]{0,3}",
            prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            prop_oneof![Just(0u64), Just(1 << 63), any::<u64>()],
        )
            .prop_map(|(b, i, s, u, w)| {
                vec![
                    KeyPart::Bytes(b),
                    KeyPart::I64(i),
                    KeyPart::Str(s),
                    KeyPart::U32(u),
                    KeyPart::U64(w),
                ]
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn encoding_preserves_order_and_round_trips(a in tuple(), b in tuple()) {
            let (ea, eb) = (encode_tuple(&a), encode_tuple(&b));
            prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
            prop_assert_eq!(decode_tuple(&ea, &SCHEMA).unwrap(), a);
            prop_assert_eq!(decode_tuple(&eb, &SCHEMA).unwrap(), b);
        }

        /// A valid key with one byte changed or cut short: an error or a tuple that
        /// round-trips, never a panic.
        #[test]
        fn damaged_keys_never_panic(
            t in tuple(),
            at in any::<prop::sample::Index>(),
            x in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut k = encode_tuple(&t);
            prop_assert!(decode_tuple(&k[..cut.index(k.len())], &SCHEMA).is_err());
            let i = at.index(k.len());
            k[i] ^= x;
            if let Ok(d) = decode_tuple(&k, &SCHEMA) {
                prop_assert_eq!(decode_tuple(&encode_tuple(&d), &SCHEMA).unwrap(), d);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode_tuple(&bytes, &SCHEMA);
        }
    }
}
