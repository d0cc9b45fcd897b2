//! Byte encodings: GlueSQL keys as order-preserving, prefix-free B-tree keys; rows and
//! schema entries as bincode records, split into chunks that fit a tree entry.
//!
//! ## Keys
//!
//! A key is one tag byte (the type) and the value's order-preserving bytes (the engine's
//! [`compute_node::btree::key`] codec for strings and byte strings: escaped zeros and a
//! terminator, so no encoded key is a prefix of another). The memcmp order of the
//! encodings is GlueSQL's [`Key`] order: within a type the value order (floats by
//! `total_cmp`, as `Key` compares them), between types the order of
//! `Key::cmp` (a lower type rank sorts *after* a higher one, `NULL` last).
//!
//! GlueSQL's own `Key::to_cmp_be_bytes` is not used: it refuses floats, its decimal
//! encoding does not keep the order of fractions with different scales (`0.5` vs
//! `0.25`), and its encodings are neither tagged nor prefix-free.

use compute_node::btree::key::{encode_bytes, encode_str};
use gluesql_core::chrono::{Datelike, Timelike};
use gluesql_core::data::{Interval, Key};
use std::net::IpAddr;

/// `Key::cmp` ranks types 1 (I8) … 22 (Inet) and orders a lower rank *after* a higher
/// one; `None` is last.
fn tag(key: &Key) -> u8 {
    let rank: u8 = match key {
        Key::I8(_) => 1,
        Key::I16(_) => 2,
        Key::I32(_) => 3,
        Key::I64(_) => 4,
        Key::I128(_) => 5,
        Key::U8(_) => 6,
        Key::U16(_) => 7,
        Key::U32(_) => 8,
        Key::U64(_) => 9,
        Key::U128(_) => 10,
        Key::F32(_) => 11,
        Key::F64(_) => 12,
        Key::Decimal(_) => 13,
        Key::Bool(_) => 14,
        Key::Str(_) => 15,
        Key::Bytea(_) => 16,
        Key::Date(_) => 17,
        Key::Timestamp(_) => 18,
        Key::Time(_) => 19,
        Key::Interval(_) => 20,
        Key::Uuid(_) => 21,
        Key::Inet(_) => 22,
        Key::None => return 0xFF,
    };
    0x80 - rank
}

fn f64_bits(v: f64) -> u64 {
    let b = v.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b ^ (1 << 63)
    }
}

fn f32_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b ^ (1 << 31)
    }
}

fn i128_bytes(out: &mut Vec<u8>, v: i128) {
    out.extend_from_slice(&((v as u128) ^ (1 << 127)).to_be_bytes());
}

fn i64_bytes(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

fn i32_bytes(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&((v as u32) ^ (1 << 31)).to_be_bytes());
}

/// Appends the order-preserving, prefix-free encoding of `key`.
pub fn encode_key(out: &mut Vec<u8>, key: &Key) {
    out.push(tag(key));
    match key {
        Key::I8(v) => out.push((*v as u8) ^ 0x80),
        Key::I16(v) => out.extend_from_slice(&((*v as u16) ^ (1 << 15)).to_be_bytes()),
        Key::I32(v) => i32_bytes(out, *v),
        Key::I64(v) => i64_bytes(out, *v),
        Key::I128(v) => i128_bytes(out, *v),
        Key::U8(v) => out.push(*v),
        Key::U16(v) => out.extend_from_slice(&v.to_be_bytes()),
        Key::U32(v) => out.extend_from_slice(&v.to_be_bytes()),
        Key::U64(v) => out.extend_from_slice(&v.to_be_bytes()),
        Key::U128(v) | Key::Uuid(v) => out.extend_from_slice(&v.to_be_bytes()),
        Key::F32(v) => out.extend_from_slice(&f32_bits(v.0).to_be_bytes()),
        Key::F64(v) => out.extend_from_slice(&f64_bits(v.0).to_be_bytes()),
        Key::Decimal(d) => {
            // value = integer part + fraction, both of the value's sign and |fraction| < 1:
            // (integer part, fraction scaled to 10^-28) compares as the value does.
            let int = d.trunc();
            let frac = d.fract();
            let int_part = int.mantissa() / 10i128.pow(int.scale());
            let frac_part = frac.mantissa() * 10i128.pow(28 - frac.scale().min(28));
            i128_bytes(out, int_part);
            i128_bytes(out, frac_part);
        }
        Key::Bool(v) => out.push(u8::from(*v)),
        Key::Str(s) => encode_str(out, s),
        Key::Bytea(b) => encode_bytes(out, b),
        Key::Date(d) => i32_bytes(out, d.num_days_from_ce()),
        Key::Timestamp(t) => {
            i32_bytes(out, t.num_days_from_ce());
            out.extend_from_slice(&t.num_seconds_from_midnight().to_be_bytes());
            out.extend_from_slice(&t.nanosecond().to_be_bytes());
        }
        Key::Time(t) => {
            out.extend_from_slice(&t.num_seconds_from_midnight().to_be_bytes());
            out.extend_from_slice(&t.nanosecond().to_be_bytes());
        }
        Key::Interval(i) => match i {
            // Key::cmp: a month interval sorts after a microsecond one.
            Interval::Microsecond(us) => {
                out.push(0);
                i64_bytes(out, *us);
            }
            Interval::Month(m) => {
                out.push(1);
                i32_bytes(out, *m);
            }
        },
        Key::Inet(ip) => match ip {
            IpAddr::V4(v) => {
                out.push(4);
                out.extend_from_slice(&v.octets());
            }
            IpAddr::V6(v) => {
                out.push(6);
                out.extend_from_slice(&v.octets());
            }
        },
        Key::None => {}
    }
}

pub fn key_bytes(key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    encode_key(&mut out, key);
    out
}

/// The smallest byte string greater than every string that starts with `prefix`
/// (`None`: there is none, the prefix is all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Bytes of a record one tree entry holds at most. A B-tree entry (key + version chain)
/// is at most [`compute_node::btree::MAX_ENTRY_LEN`] (2000) bytes, and an update keeps
/// two versions of the row in the chain (the new one and the newest committed one,
/// which older snapshots still read), so a chunk must fit twice with room for the key.
pub const CHUNK: usize = 800;

/// Longest encoded row key (the tree's key limit, less the 2-byte chunk suffix).
pub const MAX_KEY: usize = compute_node::btree::MAX_KEY_LEN - 2;

/// The tree key of chunk `i` of the record stored under `key`.
pub fn chunk_key(key: &[u8], i: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 2);
    k.extend_from_slice(key);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// Splits a record into chunks: chunk 0 starts with the chunk count (u16 LE).
pub fn split(record: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let parts: Vec<&[u8]> = if record.is_empty() {
        vec![&[][..]]
    } else {
        record.chunks(CHUNK).collect()
    };
    let n = u16::try_from(parts.len())
        .map_err(|_| format!("row of {} bytes is too large", record.len()))?;
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 0 {
                let mut c = Vec::with_capacity(p.len() + 2);
                c.extend_from_slice(&n.to_le_bytes());
                c.extend_from_slice(p);
                c
            } else {
                p.to_vec()
            }
        })
        .collect())
}

/// The chunk count chunk 0 announces.
pub fn chunk_count(chunk0: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes(chunk0.get(..2)?.try_into().ok()?))
}

/// A tree entry (or a reassembled record): key and bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Reassembles the records of a scan over chunk entries (ascending key order): each
/// record's entries are `key ++ 0000`, `key ++ 0001`, ….
pub fn join_chunks(entries: Vec<Entry>) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    let mut expect: Option<(Vec<u8>, u16, u16)> = None; // (key, next index, count)
    for (k, v) in entries {
        if k.len() < 2 {
            return Err("row entry without a chunk suffix".into());
        }
        let (base, idx) = k.split_at(k.len() - 2);
        let idx = u16::from_be_bytes([idx[0], idx[1]]);
        match &mut expect {
            Some((key, next, count)) if key.as_slice() == base && *next == idx && idx < *count => {
                out.last_mut().expect("a record").1.extend_from_slice(&v);
                *next += 1;
                if *next == *count {
                    expect = None;
                }
            }
            _ if idx == 0 => {
                if let Some((key, next, count)) = &expect {
                    return Err(format!("row {key:02x?} has {next} of its {count} chunks"));
                }
                let count = chunk_count(&v).ok_or("short chunk 0")?;
                out.push((base.to_vec(), v[2..].to_vec()));
                if count > 1 {
                    expect = Some((base.to_vec(), 1, count));
                }
            }
            _ => return Err(format!("stray chunk {idx} of row {base:02x?}")),
        }
    }
    if let Some((key, next, count)) = expect {
        return Err(format!("row {key:02x?} has {next} of its {count} chunks"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gluesql_core::chrono::NaiveDate;
    use gluesql_core::data::Key;
    use std::str::FromStr;

    fn dec(s: &str) -> Key {
        Key::Decimal(FromStr::from_str(s).unwrap())
    }

    #[test]
    fn encodings_sort_as_keys_do() {
        use ordered_float::OrderedFloat as F;
        let mut keys = vec![
            Key::I64(-5),
            Key::I64(i64::MIN),
            Key::I64(0),
            Key::I64(7),
            Key::I64(i64::MAX),
            Key::Str("".into()),
            Key::Str("a".into()),
            Key::Str("a\0b".into()),
            Key::Str("ab".into()),
            Key::Str("b".into()),
            Key::F64(F(-1.5)),
            Key::F64(F(-0.0)),
            Key::F64(F(0.0)),
            Key::F64(F(2.25)),
            Key::F64(F(f64::INFINITY)),
            dec("-1.5"),
            dec("-1.25"),
            dec("-0.5"),
            dec("0"),
            dec("0.25"),
            dec("0.5"),
            dec("1.123456789"),
            dec("12"),
            Key::Bool(false),
            Key::Bool(true),
            Key::Date(NaiveDate::from_ymd_opt(-3, 1, 1).unwrap()),
            Key::Date(NaiveDate::from_ymd_opt(2024, 1, 1).unwrap()),
            Key::Interval(Interval::Month(-2)),
            Key::Interval(Interval::Month(3)),
            Key::Interval(Interval::Microsecond(-10)),
            Key::Interval(Interval::Microsecond(10)),
            Key::I8(-3),
            Key::I8(3),
            Key::U8(1),
            Key::None,
        ];
        let mut by_bytes = keys.clone();
        keys.sort();
        by_bytes.sort_by_key(key_bytes);
        assert_eq!(keys, by_bytes);
    }

    #[test]
    fn chunks_round_trip() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3] {
            let record: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut entries = Vec::new();
            for key in [b"k1".to_vec(), b"k2".to_vec()] {
                for (i, c) in split(&record).unwrap().into_iter().enumerate() {
                    entries.push((chunk_key(&key, i as u16), c));
                }
            }
            let rows = join_chunks(entries).unwrap();
            assert_eq!(rows.len(), 2);
            assert!(rows.iter().all(|(_, r)| r == &record));
        }
    }
}
