//! The nine TPC-C tables plus two secondary indexes, as B-link trees of the engine.
//!
//! Keys are tuples encoded with [`compute_node::btree::key::KeyBuilder`] (memcmp order =
//! tuple order). Values are compact rows encoded by [`RowWriter`]/[`RowReader`]:
//! little-endian fixed-width integers, strings as a `u16` length then UTF-8 bytes,
//! fields in declaration order, nothing else (no version byte: the harness loads and
//! reads its own data within one process).
//!
//! Money is `i64` cents; rates (tax, discount) are `i64` in units of 1/10000; times are
//! `u64` microseconds since the Unix epoch with 0 meaning NULL; `O_CARRIER_ID` 0 is NULL.
//!
//! | table | key | value |
//! |---|---|---|
//! | `warehouse` | (w) | [`Warehouse`] |
//! | `district` | (w, d) | [`District`] |
//! | `customer` | (w, d, c) | [`Customer`] |
//! | `customer_by_name` | (w, d, C_LAST, C_FIRST, c) | empty |
//! | `history` | (w, d, origin, seq) | [`History`] (origin 0 = loader, else terminal + 1) |
//! | `new_order` | (w, d, o) | empty |
//! | `orders` | (w, d, o) | [`Order`] |
//! | `orders_by_customer` | (w, d, c, o) | empty |
//! | `order_line` | (w, d, o, number) | [`OrderLine`] |
//! | `item` | (i) | [`Item`] |
//! | `stock` | (w, i) | [`Stock`] |

use compute_node::btree::key::{KeyBuilder, KeyReader};
use compute_node::node::ComputeNode;
use compute_node::txn::{Table, TxnError};
use std::ops::Bound;

pub const DISTRICTS_PER_WAREHOUSE: u32 = 10;
pub const CUSTOMERS_PER_DISTRICT: u32 = 3000;
pub const ORDERS_PER_DISTRICT: u32 = 3000;
/// Orders 2101..=3000 of each district start undelivered (900 NEW-ORDER rows).
pub const FIRST_UNDELIVERED_ORDER: u32 = 2101;
pub const SPEC_ITEMS: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("row ends early reading field {field}")]
    Truncated { field: usize },
    #[error("row field {field} is not UTF-8")]
    NotUtf8 { field: usize },
    #[error("{0} bytes left after the last field")]
    Trailing(usize),
}

/// Appends fields to a row.
#[derive(Default)]
pub struct RowWriter(Vec<u8>);

impl RowWriter {
    pub fn with_capacity(n: usize) -> RowWriter {
        RowWriter(Vec::with_capacity(n))
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(mut self, v: &str) -> Self {
        let n = u16::try_from(v.len()).expect("row strings are short");
        self.0.extend_from_slice(&n.to_le_bytes());
        self.0.extend_from_slice(v.as_bytes());
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads fields of a row in order.
pub struct RowReader<'a> {
    buf: &'a [u8],
    field: usize,
}

impl<'a> RowReader<'a> {
    pub fn new(buf: &'a [u8]) -> RowReader<'a> {
        RowReader { buf, field: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], RowError> {
        if self.buf.len() < n {
            return Err(RowError::Truncated { field: self.field });
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        self.field += 1;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, RowError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, RowError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64, RowError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn i64(&mut self) -> Result<i64, RowError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn str(&mut self) -> Result<String, RowError> {
        if self.buf.len() < 2 {
            return Err(RowError::Truncated { field: self.field });
        }
        let n = u16::from_le_bytes([self.buf[0], self.buf[1]]) as usize;
        self.buf = &self.buf[2..];
        let field = self.field;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| RowError::NotUtf8 { field })
    }
    pub fn finish(self) -> Result<(), RowError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(RowError::Trailing(self.buf.len()))
        }
    }
}

/// A row type with a codec.
pub trait RowCodec: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(buf: &[u8]) -> Result<Self, RowError>;
}

/// Declares a row struct and its codec from one field list.
macro_rules! row {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $f: row!(@ty $t)),* }
        impl RowCodec for $name {
            fn encode(&self) -> Vec<u8> {
                RowWriter::with_capacity(64)$(.$t(row!(@arg $t, self.$f)))*.finish()
            }
            fn decode(buf: &[u8]) -> Result<Self, RowError> {
                let mut r = RowReader::new(buf);
                let row = $name { $($f: r.$t()?),* };
                r.finish()?;
                Ok(row)
            }
        }
    };
    (@ty u8) => { u8 };
    (@ty u32) => { u32 };
    (@ty u64) => { u64 };
    (@ty i64) => { i64 };
    (@ty str) => { String };
    (@arg str, $e:expr) => { &$e };
    (@arg $t:ident, $e:expr) => { $e };
}

row!(Warehouse {
    name: str,
    street_1: str,
    street_2: str,
    city: str,
    state: str,
    zip: str,
    /// 1/10000 units.
    tax: i64,
    /// Cents.
    ytd: i64,
});

row!(District {
    name: str,
    street_1: str,
    street_2: str,
    city: str,
    state: str,
    zip: str,
    tax: i64,
    ytd: i64,
    next_o_id: u32,
});

row!(Customer {
    first: str,
    middle: str,
    last: str,
    street_1: str,
    street_2: str,
    city: str,
    state: str,
    zip: str,
    phone: str,
    since: u64,
    credit: str,
    credit_lim: i64,
    discount: i64,
    balance: i64,
    ytd_payment: i64,
    payment_cnt: u32,
    delivery_cnt: u32,
    data: str,
});

row!(History {
    c_id: u32,
    c_d_id: u32,
    c_w_id: u32,
    d_id: u32,
    w_id: u32,
    date: u64,
    amount: i64,
    data: str,
});

row!(Order {
    c_id: u32,
    entry_d: u64,
    /// 0 = NULL (not delivered).
    carrier_id: u32,
    ol_cnt: u32,
    all_local: u8,
});

row!(OrderLine {
    i_id: u32,
    supply_w_id: u32,
    /// 0 = NULL.
    delivery_d: u64,
    quantity: u32,
    amount: i64,
    dist_info: str,
});

row!(Item {
    im_id: u32,
    name: str,
    price: i64,
    data: str,
});

row!(Stock {
    quantity: u32,
    d01: str,
    d02: str,
    d03: str,
    d04: str,
    d05: str,
    d06: str,
    d07: str,
    d08: str,
    d09: str,
    d10: str,
    ytd: u64,
    order_cnt: u32,
    remote_cnt: u32,
    data: str,
});

impl Stock {
    /// S_DIST_xx for district `d` (1..=10).
    pub fn dist(&self, d: u32) -> &str {
        match d {
            1 => &self.d01,
            2 => &self.d02,
            3 => &self.d03,
            4 => &self.d04,
            5 => &self.d05,
            6 => &self.d06,
            7 => &self.d07,
            8 => &self.d08,
            9 => &self.d09,
            _ => &self.d10,
        }
    }
}

/// Key constructors, one per table.
pub mod key {
    use super::*;

    pub fn warehouse(w: u32) -> Vec<u8> {
        KeyBuilder::new().u32(w).finish()
    }
    pub fn district(w: u32, d: u32) -> Vec<u8> {
        KeyBuilder::new().u32(w).u32(d).finish()
    }
    pub fn customer(w: u32, d: u32, c: u32) -> Vec<u8> {
        KeyBuilder::new().u32(w).u32(d).u32(c).finish()
    }
    pub fn customer_by_name(w: u32, d: u32, last: &str, first: &str, c: u32) -> Vec<u8> {
        KeyBuilder::new()
            .u32(w)
            .u32(d)
            .str(last)
            .str(first)
            .u32(c)
            .finish()
    }
    pub fn customer_name_prefix(w: u32, d: u32, last: &str) -> Vec<u8> {
        KeyBuilder::new().u32(w).u32(d).str(last).finish()
    }
    /// The customer id at the end of a `customer_by_name` key.
    pub fn customer_by_name_id(k: &[u8]) -> Result<u32, RowError> {
        let mut r = KeyReader::new(k);
        let bad = |_| RowError::Truncated { field: 0 };
        r.u32().map_err(bad)?;
        r.u32().map_err(bad)?;
        r.str().map_err(bad)?;
        r.str().map_err(bad)?;
        r.u32().map_err(bad)
    }
    pub fn history(w: u32, d: u32, origin: u32, seq: u64) -> Vec<u8> {
        KeyBuilder::new()
            .u32(w)
            .u32(d)
            .u32(origin)
            .u64(seq)
            .finish()
    }
    pub fn order(w: u32, d: u32, o: u32) -> Vec<u8> {
        KeyBuilder::new().u32(w).u32(d).u32(o).finish()
    }
    pub fn order_by_customer(w: u32, d: u32, c: u32, o: u32) -> Vec<u8> {
        KeyBuilder::new().u32(w).u32(d).u32(c).u32(o).finish()
    }
    pub fn order_line(w: u32, d: u32, o: u32, n: u32) -> Vec<u8> {
        KeyBuilder::new().u32(w).u32(d).u32(o).u32(n).finish()
    }
    pub fn item(i: u32) -> Vec<u8> {
        KeyBuilder::new().u32(i).finish()
    }
    pub fn stock(w: u32, i: u32) -> Vec<u8> {
        KeyBuilder::new().u32(w).u32(i).finish()
    }
    /// Fixed-width u32 fields of a key made only of u32s (positions 0, 1, ...).
    pub fn u32_at(k: &[u8], pos: usize) -> u32 {
        u32::from_be_bytes(k[pos * 4..pos * 4 + 4].try_into().unwrap())
    }
    /// Prefix of u32 fields.
    pub fn prefix(fields: &[u32]) -> Vec<u8> {
        fields
            .iter()
            .fold(KeyBuilder::new(), |b, &f| b.u32(f))
            .finish()
    }
}

/// The smallest key greater than every key starting with `p` (None: no such key).
pub fn prefix_successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut s = p.to_vec();
    while let Some(last) = s.pop() {
        if last != 0xFF {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

/// Bounds covering every key that starts with `p`.
pub fn prefix_bounds(p: &[u8], succ: &Option<Vec<u8>>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (
        Bound::Included(p.to_vec()),
        match succ {
            Some(s) => Bound::Excluded(s.clone()),
            None => Bound::Unbounded,
        },
    )
}

/// Borrowed view of owned bounds, the form `Txn::scan` takes.
pub fn as_ref(b: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> (Bound<&[u8]>, Bound<&[u8]>) {
    fn one(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        match b {
            Bound::Included(v) => Bound::Included(v.as_slice()),
            Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        }
    }
    (one(&b.0), one(&b.1))
}

/// Every table the harness uses, opened on one compute node.
#[derive(Clone, Debug)]
pub struct Tables {
    pub warehouse: Table,
    pub district: Table,
    pub customer: Table,
    pub customer_by_name: Table,
    pub history: Table,
    pub new_order: Table,
    pub orders: Table,
    pub orders_by_customer: Table,
    pub order_line: Table,
    pub item: Table,
    pub stock: Table,
}

pub const TABLE_NAMES: [&str; 11] = [
    "warehouse",
    "district",
    "customer",
    "customer_by_name",
    "history",
    "new_order",
    "orders",
    "orders_by_customer",
    "order_line",
    "item",
    "stock",
];

impl Tables {
    /// Opens every table on `node`; `NoSuchTable` if the schema was not created.
    pub fn open(node: &ComputeNode) -> Result<Tables, TxnError> {
        Tables::each(|n| node.table(n))
    }

    /// Creates (if missing) and opens every table on `node`. WAREHOUSE and DISTRICT
    /// keep one row per page: every Payment and New-Order updates one of their few rows,
    /// and with several rows to a page, compute nodes serving different warehouses
    /// would pass the page back and forth for rows that never conflict (the layout
    /// choice TPC-C leaves to the implementation, clause 1.4).
    pub fn ensure(node: &ComputeNode) -> Result<Tables, TxnError> {
        Tables::each(|n| {
            let one_row_per_page = matches!(n, "warehouse" | "district");
            node.ensure_table_with(
                n,
                compute_node::btree::TreeOptions {
                    max_leaf_entries: if one_row_per_page { 1 } else { 0 },
                },
            )
        })
    }

    fn each(t: impl Fn(&str) -> Result<Table, TxnError>) -> Result<Tables, TxnError> {
        Ok(Tables {
            warehouse: t("warehouse")?,
            district: t("district")?,
            customer: t("customer")?,
            customer_by_name: t("customer_by_name")?,
            history: t("history")?,
            new_order: t("new_order")?,
            orders: t("orders")?,
            orders_by_customer: t("orders_by_customer")?,
            order_line: t("order_line")?,
            item: t("item")?,
            stock: t("stock")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let c = Customer {
            first: "abcdefgh".into(),
            middle: "OE".into(),
            last: "BARBARBAR".into(),
            street_1: "s1".into(),
            street_2: String::new(),
            city: "c".into(),
            state: "CA".into(),
            zip: "123411111".into(),
            phone: "0123456789012345".into(),
            since: 17,
            credit: "BC".into(),
            credit_lim: 5_000_000,
            discount: 4999,
            balance: -1000,
            ytd_payment: 1000,
            payment_cnt: 1,
            delivery_cnt: 0,
            data: "x".repeat(500),
        };
        assert_eq!(Customer::decode(&c.encode()).unwrap(), c);
        let ol = OrderLine {
            i_id: 100_000,
            supply_w_id: 2,
            delivery_d: 0,
            quantity: 5,
            amount: 999_999,
            dist_info: "d".repeat(24),
        };
        assert_eq!(OrderLine::decode(&ol.encode()).unwrap(), ol);
        let mut bytes = ol.encode();
        bytes.pop();
        assert!(OrderLine::decode(&bytes).is_err());
        bytes.extend_from_slice(b"xy");
        assert!(matches!(
            OrderLine::decode(&bytes),
            Err(RowError::Trailing(1))
        ));
    }

    #[test]
    fn keys_sort_like_tuples() {
        assert!(key::order(1, 2, 3) < key::order(1, 2, 10));
        assert!(key::order(1, 2, 3000) < key::order(1, 3, 1));
        assert!(key::order_line(1, 1, 5, 15) < key::order_line(1, 1, 6, 1));
        // A last name that is a prefix of another sorts first and stays grouped.
        let a = key::customer_by_name(1, 1, "BARBAR", "zzz", 9);
        let b = key::customer_by_name(1, 1, "BARBARBAR", "aaa", 1);
        assert!(a < b);
        let p = key::customer_name_prefix(1, 1, "BARBAR");
        let succ = prefix_successor(&p).unwrap();
        assert!(a.starts_with(&p) && a < succ);
        assert!(!b.starts_with(&p) && b > succ);
        assert_eq!(key::customer_by_name_id(&b).unwrap(), 1);
        // Sorted by C_FIRST within a last name.
        assert!(
            key::customer_by_name(1, 1, "X", "ab", 900) < key::customer_by_name(1, 1, "X", "b", 1)
        );
        assert_eq!(key::u32_at(&key::order_line(7, 8, 9, 10), 2), 9);
        assert_eq!(key::prefix(&[7, 8]), key::district(7, 8));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF]), None);
    }
}
