//! The consistency conditions of clause 3.3.2, checked in one read-only snapshot.
//!
//! HISTORY is aggregated first (a payment's row lives under the paying warehouse while
//! conditions 10 and 12 need it per customer, who may belong to another warehouse);
//! then each warehouse's districts, orders, new orders, order lines and customers are
//! scanned once. Each condition reports the first offending row it meets.
//!
//! Condition 11 (orders minus new orders = 2,100 per district) holds only until the
//! first Delivery; after a run that delivered it is reported `not_applicable`.

use super::schema::*;
use anyhow::{anyhow, Result};
use compute_node::node::ComputeNode;
use compute_node::txn::{Row, Table, Txn};
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

/// A condition's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed(String),
    NotApplicable(String),
}

#[derive(Clone, Debug)]
pub struct CheckResult {
    pub id: u32,
    pub name: &'static str,
    pub verdict: Verdict,
}

impl CheckResult {
    pub fn failed(&self) -> bool {
        matches!(self.verdict, Verdict::Failed(_))
    }

    /// `{id, name, passed}` with `passed` true, false or "not_applicable", plus `detail`.
    pub fn to_json(&self) -> serde_json::Value {
        let (passed, detail) = match &self.verdict {
            Verdict::Passed => (serde_json::json!(true), None),
            Verdict::Failed(d) => (serde_json::json!(false), Some(d.clone())),
            Verdict::NotApplicable(d) => (serde_json::json!("not_applicable"), Some(d.clone())),
        };
        let mut v = serde_json::json!({"id": self.id, "name": self.name, "passed": passed});
        if let Some(d) = detail {
            v["detail"] = serde_json::json!(d);
        }
        v
    }
}

pub const NAMES: [&str; 12] = [
    "W_YTD = sum(D_YTD)",
    "D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID)",
    "max(NO_O_ID) - min(NO_O_ID) + 1 = count(NEW_ORDER)",
    "sum(O_OL_CNT) = count(ORDER_LINE)",
    "O_CARRIER_ID is null iff a NEW_ORDER row exists",
    "O_OL_CNT = count(ORDER_LINE) per order",
    "OL_DELIVERY_D is null iff O_CARRIER_ID is null",
    "W_YTD = sum(H_AMOUNT)",
    "D_YTD = sum(H_AMOUNT)",
    "C_BALANCE = sum(delivered OL_AMOUNT) - sum(H_AMOUNT)",
    "count(ORDER) - count(NEW_ORDER) = 2100",
    "C_BALANCE + C_YTD_PAYMENT = sum(delivered OL_AMOUNT)",
];

/// Collects the first failure of each condition.
struct Verdicts([Option<String>; 12]);

impl Verdicts {
    fn fail(&mut self, id: usize, msg: impl FnOnce() -> String) {
        if self.0[id - 1].is_none() {
            self.0[id - 1] = Some(msg());
        }
    }
}

fn scan_all(txn: &mut Txn, t: &Table, prefix: &[u8]) -> Result<Vec<Row>> {
    let succ = prefix_successor(prefix);
    let b = prefix_bounds(prefix, &succ);
    Ok(txn.scan(t, as_ref(&b), false, None)?)
}

fn money(c: i64) -> String {
    format!(
        "{}{}.{:02}",
        if c < 0 { "-" } else { "" },
        c.abs() / 100,
        c.abs() % 100
    )
}

/// Checks the twelve conditions over `warehouses` warehouses. `delivery_ran` makes
/// condition 11 not applicable.
pub fn run_checks(
    node: &ComputeNode,
    warehouses: u32,
    delivery_ran: bool,
) -> Result<Vec<CheckResult>> {
    let t = Tables::ensure(node)?;
    let mut txn = node.begin()?;
    let mut v = Verdicts(Default::default());

    // HISTORY, aggregated three ways.
    let mut h_w: HashMap<u32, i64> = HashMap::new();
    let mut h_wd: HashMap<(u32, u32), i64> = HashMap::new();
    let mut h_c: HashMap<(u32, u32, u32), i64> = HashMap::new();
    for (_, val) in txn.scan(
        &t.history,
        (Bound::Unbounded, Bound::Unbounded),
        false,
        None,
    )? {
        let h = History::decode(&val)?;
        *h_w.entry(h.w_id).or_default() += h.amount;
        *h_wd.entry((h.w_id, h.d_id)).or_default() += h.amount;
        *h_c.entry((h.c_w_id, h.c_d_id, h.c_id)).or_default() += h.amount;
    }

    for w in 1..=warehouses {
        let wrow = txn
            .get(&t.warehouse, &key::warehouse(w))?
            .ok_or_else(|| anyhow!("warehouse {w} is missing"))?;
        let wh = Warehouse::decode(&wrow)?;
        let mut d_ytd_sum = 0i64;
        // Delivered OL_AMOUNT per customer of this warehouse: (d, c) -> sum.
        let mut delivered: HashMap<(u32, u32), i64> = HashMap::new();
        for d in 1..=DISTRICTS_PER_WAREHOUSE {
            let drow = txn
                .get(&t.district, &key::district(w, d))?
                .ok_or_else(|| anyhow!("district {w}/{d} is missing"))?;
            let dist = District::decode(&drow)?;
            d_ytd_sum += dist.ytd;
            let p = key::prefix(&[w, d]);
            let mut orders: HashMap<u32, Order> = HashMap::new();
            let mut max_o = 0;
            let mut sum_ol_cnt = 0u64;
            for (k, val) in scan_all(&mut txn, &t.orders, &p)? {
                let o = key::u32_at(&k, 2);
                let order = Order::decode(&val)?;
                max_o = max_o.max(o);
                sum_ol_cnt += order.ol_cnt as u64;
                orders.insert(o, order);
            }
            let new_orders: BTreeSet<u32> = scan_all(&mut txn, &t.new_order, &p)?
                .iter()
                .map(|(k, _)| key::u32_at(k, 2))
                .collect();
            // 2
            let max_no = new_orders.last().copied();
            if dist.next_o_id - 1 != max_o || max_no.is_some_and(|m| m != max_o) {
                v.fail(2, || {
                    format!(
                        "district {w}/{d}: D_NEXT_O_ID - 1 = {}, max(O_ID) = {max_o}, max(NO_O_ID) = {max_no:?}",
                        dist.next_o_id - 1
                    )
                });
            }
            // 3
            if let (Some(&lo), Some(&hi)) = (new_orders.first(), new_orders.last()) {
                if (hi - lo + 1) as usize != new_orders.len() {
                    v.fail(3, || {
                        format!(
                            "district {w}/{d}: max(NO_O_ID) {hi} - min(NO_O_ID) {lo} + 1 != {} rows",
                            new_orders.len()
                        )
                    });
                }
            }
            // 11
            if orders.len() - new_orders.len() != (FIRST_UNDELIVERED_ORDER - 1) as usize {
                v.fail(11, || {
                    format!(
                        "district {w}/{d}: {} orders - {} new orders = {}",
                        orders.len(),
                        new_orders.len(),
                        orders.len() as i64 - new_orders.len() as i64
                    )
                });
            }
            // 5
            for (&o, order) in &orders {
                if (order.carrier_id == 0) != new_orders.contains(&o) {
                    v.fail(5, || {
                        format!(
                            "order {w}/{d}/{o}: O_CARRIER_ID {} but NEW_ORDER row {}",
                            if order.carrier_id == 0 {
                                "null".to_string()
                            } else {
                                order.carrier_id.to_string()
                            },
                            if new_orders.contains(&o) {
                                "exists"
                            } else {
                                "missing"
                            }
                        )
                    });
                }
            }
            for &o in &new_orders {
                if !orders.contains_key(&o) {
                    v.fail(5, || format!("NEW_ORDER {w}/{d}/{o} has no ORDER row"));
                }
            }
            // Order lines: 4, 6, 7, and delivered amounts for 10 and 12.
            let mut lines_per_order: HashMap<u32, u32> = HashMap::new();
            let mut n_lines = 0u64;
            for (k, val) in scan_all(&mut txn, &t.order_line, &p)? {
                let o = key::u32_at(&k, 2);
                let n = key::u32_at(&k, 3);
                let ol = OrderLine::decode(&val)?;
                n_lines += 1;
                *lines_per_order.entry(o).or_default() += 1;
                match orders.get(&o) {
                    None => v.fail(6, || format!("ORDER_LINE {w}/{d}/{o}/{n} has no ORDER row")),
                    Some(order) => {
                        if (ol.delivery_d == 0) != (order.carrier_id == 0) {
                            v.fail(7, || {
                                format!(
                                    "ORDER_LINE {w}/{d}/{o}/{n}: OL_DELIVERY_D {} but O_CARRIER_ID {}",
                                    if ol.delivery_d == 0 { "null".into() } else { ol.delivery_d.to_string() },
                                    if order.carrier_id == 0 { "null".into() } else { order.carrier_id.to_string() }
                                )
                            });
                        }
                        if ol.delivery_d != 0 {
                            *delivered.entry((d, order.c_id)).or_default() += ol.amount;
                        }
                    }
                }
            }
            // 4
            if sum_ol_cnt != n_lines {
                v.fail(4, || {
                    format!("district {w}/{d}: sum(O_OL_CNT) = {sum_ol_cnt}, ORDER_LINE rows = {n_lines}")
                });
            }
            // 6
            for (&o, order) in &orders {
                let n = lines_per_order.get(&o).copied().unwrap_or(0);
                if n != order.ol_cnt {
                    v.fail(6, || {
                        format!(
                            "order {w}/{d}/{o}: O_OL_CNT {} but {n} ORDER_LINE rows",
                            order.ol_cnt
                        )
                    });
                }
            }
            // 9
            let hd = h_wd.get(&(w, d)).copied().unwrap_or(0);
            if dist.ytd != hd {
                v.fail(9, || {
                    format!(
                        "district {w}/{d}: D_YTD {} != sum(H_AMOUNT) {}",
                        money(dist.ytd),
                        money(hd)
                    )
                });
            }
        }
        // 1
        if wh.ytd != d_ytd_sum {
            v.fail(1, || {
                format!(
                    "warehouse {w}: W_YTD {} != sum(D_YTD) {}",
                    money(wh.ytd),
                    money(d_ytd_sum)
                )
            });
        }
        // 8
        let hw = h_w.get(&w).copied().unwrap_or(0);
        if wh.ytd != hw {
            v.fail(8, || {
                format!(
                    "warehouse {w}: W_YTD {} != sum(H_AMOUNT) {}",
                    money(wh.ytd),
                    money(hw)
                )
            });
        }
        // 10, 12
        for (k, val) in scan_all(&mut txn, &t.customer, &key::prefix(&[w]))? {
            let (d, c) = (key::u32_at(&k, 1), key::u32_at(&k, 2));
            let cust = Customer::decode(&val)?;
            let del = delivered.get(&(d, c)).copied().unwrap_or(0);
            let paid = h_c.get(&(w, d, c)).copied().unwrap_or(0);
            if cust.balance != del - paid {
                v.fail(10, || {
                    format!(
                        "customer {w}/{d}/{c}: C_BALANCE {} != delivered {} - paid {}",
                        money(cust.balance),
                        money(del),
                        money(paid)
                    )
                });
            }
            if cust.balance + cust.ytd_payment != del {
                v.fail(12, || {
                    format!(
                        "customer {w}/{d}/{c}: C_BALANCE {} + C_YTD_PAYMENT {} != delivered {}",
                        money(cust.balance),
                        money(cust.ytd_payment),
                        money(del)
                    )
                });
            }
        }
    }
    txn.commit()?;
    Ok(v.0
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let id = i as u32 + 1;
            let verdict = match f {
                Some(_) if id == 11 && delivery_ran => Verdict::NotApplicable(
                    "Delivery ran: orders minus new orders no longer equals 2,100".into(),
                ),
                None if id == 11 && delivery_ran => Verdict::NotApplicable(
                    "Delivery ran: the condition only holds before the first Delivery".into(),
                ),
                Some(msg) => Verdict::Failed(msg),
                None => Verdict::Passed,
            };
            CheckResult {
                id,
                name: NAMES[i],
                verdict,
            }
        })
        .collect())
}
