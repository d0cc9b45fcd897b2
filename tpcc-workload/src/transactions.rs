//! The five TPC-C transactions, clauses 2.4 to 2.8: input generation (the terminal's
//! side of each clause's "input data" section) apart from execution (the
//! "transaction profile"), so a retried attempt runs with the same inputs.
//!
//! Execution functions take an open transaction and leave commit or abort to the
//! caller (the TPC-C driver); New-Order returns [`Outcome::RolledBack`] for its
//! unused-item case, which the caller aborts as a business rollback.
//!
//! [`Mode`] says how the rows a transaction updates are read. By default with locking
//! reads — [`Txn::update`], a locking read-modify-write in one step (the engine's
//! `UPDATE … RETURNING`), and [`Txn::get_for_update`] for Delivery's new-order row —
//! where the kits of MVCC engines take row locks
//! (MySQL/InnoDB's current reads, PostgreSQL's `SELECT … FOR UPDATE`): Payment's
//! warehouse, district and customer, New-Order's district and stock rows, Delivery's
//! new-order row and customer. A hot row (W_YTD, D_NEXT_O_ID) then costs a wait, not a
//! first-updater-wins abort. [`Locking::Plain`] keeps the earlier mode: snapshot reads,
//! then writes that lose first-updater-wins to a concurrent commit. New-Order takes its
//! stock rows in (supply warehouse, item) order in both modes, as PostgreSQL kits do, so
//! that two New-Orders never wait for each other's stock rows in a cycle.

use super::random::{self, NuRandConstants};
use super::schema::*;
use compute_node::txn::{Isolation, Row, Table, Txn, TxnError};
use rand::Rng;
use std::collections::BTreeSet;
use std::fmt;

/// How the rows a transaction updates are read (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Locking {
    /// Locking reads of the rows it updates (the default).
    #[default]
    ForUpdate,
    /// Snapshot reads, then first-updater-wins writes (the earlier mode).
    Plain,
}

impl Locking {
    pub fn name(self) -> &'static str {
        match self {
            Locking::ForUpdate => "for-update",
            Locking::Plain => "plain",
        }
    }
}

/// The isolation and locking a TPC-C transaction runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Mode {
    /// `None`: the compute node's default.
    pub isolation: Option<Isolation>,
    pub locking: Locking,
}

impl Mode {
    /// Refuses read committed with plain reads: a read and the write after it are two
    /// statements with two snapshots, so Payment's W_YTD update would lose concurrent
    /// ones (the consistency checks fail).
    pub fn check(isolation: Isolation, locking: Locking) -> Result<(), TxnError> {
        if isolation == Isolation::ReadCommitted && locking == Locking::Plain {
            return Err(TxnError::BadRequest(
                "TPC-C at read committed needs locking reads: with plain reads each \
                 read-then-write loses concurrent updates"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Transaction types, in mix order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxnKind {
    NewOrder,
    Payment,
    OrderStatus,
    Delivery,
    StockLevel,
}

impl TxnKind {
    pub const ALL: [TxnKind; 5] = [
        TxnKind::NewOrder,
        TxnKind::Payment,
        TxnKind::OrderStatus,
        TxnKind::Delivery,
        TxnKind::StockLevel,
    ];
    pub fn name(self) -> &'static str {
        match self {
            TxnKind::NewOrder => "new_order",
            TxnKind::Payment => "payment",
            TxnKind::OrderStatus => "order_status",
            TxnKind::Delivery => "delivery",
            TxnKind::StockLevel => "stock_level",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    /// Keying time and mean think time in seconds (clause 5.2.5.7).
    pub fn keying_think_s(self) -> (f64, f64) {
        match self {
            TxnKind::NewOrder => (18.0, 12.0),
            TxnKind::Payment => (3.0, 12.0),
            TxnKind::OrderStatus => (2.0, 10.0),
            TxnKind::Delivery => (2.0, 5.0),
            TxnKind::StockLevel => (2.0, 5.0),
        }
    }
}

impl fmt::Display for TxnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a terminal's inputs depend on.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub warehouses: u32,
    pub items: u32,
    pub c_run: NuRandConstants,
}

/// How a customer is selected (clauses 2.5.1.2, 2.6.1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerSel {
    Id(u32),
    LastName(String),
}

#[derive(Clone, Debug)]
pub struct OrderLineInput {
    pub i_id: u32,
    pub supply_w_id: u32,
    pub quantity: u32,
}

#[derive(Clone, Debug)]
pub struct NewOrderInput {
    pub w: u32,
    pub d: u32,
    pub c: u32,
    pub lines: Vec<OrderLineInput>,
    /// The last line names an unused item: the transaction must roll back.
    pub rollback: bool,
}

#[derive(Clone, Debug)]
pub struct PaymentInput {
    pub w: u32,
    pub d: u32,
    pub c_w: u32,
    pub c_d: u32,
    pub customer: CustomerSel,
    /// Cents.
    pub amount: i64,
}

#[derive(Clone, Debug)]
pub struct OrderStatusInput {
    pub w: u32,
    pub d: u32,
    pub customer: CustomerSel,
}

#[derive(Clone, Debug)]
pub struct DeliveryInput {
    pub w: u32,
    pub carrier: u32,
}

#[derive(Clone, Debug)]
pub struct StockLevelInput {
    pub w: u32,
    pub d: u32,
    pub threshold: u32,
}

#[derive(Clone, Debug)]
pub enum Input {
    NewOrder(NewOrderInput),
    Payment(PaymentInput),
    OrderStatus(OrderStatusInput),
    Delivery(DeliveryInput),
    StockLevel(StockLevelInput),
}

impl Input {
    pub fn kind(&self) -> TxnKind {
        match self {
            Input::NewOrder(_) => TxnKind::NewOrder,
            Input::Payment(_) => TxnKind::Payment,
            Input::OrderStatus(_) => TxnKind::OrderStatus,
            Input::Delivery(_) => TxnKind::Delivery,
            Input::StockLevel(_) => TxnKind::StockLevel,
        }
    }
}

impl Input {
    /// Checks the inputs against the domains of clauses 2.4.1-2.8.1 (what a terminal
    /// could have sent); a stored procedure refuses anything else as bad input.
    pub fn validate(&self) -> Result<(), String> {
        fn range(what: &str, v: u32, lo: u32, hi: u32) -> Result<(), String> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what} {v} is out of range [{lo}, {hi}]"))
            }
        }
        let wd = |w: u32, d: u32| {
            range("warehouse", w, 1, u32::MAX)?;
            range("district", d, 1, DISTRICTS_PER_WAREHOUSE)
        };
        let customer = |c: &CustomerSel| match c {
            CustomerSel::Id(c) => range("customer", *c, 1, CUSTOMERS_PER_DISTRICT),
            CustomerSel::LastName(n) if n.is_empty() || n.len() > 16 => {
                Err(format!("last name {n:?} must have 1 to 16 characters"))
            }
            CustomerSel::LastName(_) => Ok(()),
        };
        match self {
            Input::NewOrder(i) => {
                wd(i.w, i.d)?;
                range("customer", i.c, 1, CUSTOMERS_PER_DISTRICT)?;
                range("order lines", i.lines.len() as u32, 5, 15)?;
                for l in &i.lines {
                    range("item", l.i_id, 1, u32::MAX)?;
                    range("supply warehouse", l.supply_w_id, 1, u32::MAX)?;
                    range("quantity", l.quantity, 1, 10)?;
                }
                Ok(())
            }
            Input::Payment(i) => {
                wd(i.w, i.d)?;
                wd(i.c_w, i.c_d)?;
                customer(&i.customer)?;
                if !(100..=500_000).contains(&i.amount) {
                    return Err(format!("amount {} is out of range [100, 500000]", i.amount));
                }
                Ok(())
            }
            Input::OrderStatus(i) => {
                wd(i.w, i.d)?;
                customer(&i.customer)
            }
            Input::Delivery(i) => {
                range("warehouse", i.w, 1, u32::MAX)?;
                range("carrier", i.carrier, 1, 10)
            }
            Input::StockLevel(i) => {
                wd(i.w, i.d)?;
                range("threshold", i.threshold, 10, 20)
            }
        }
    }
}

/// How an execution ended (before commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Commit it.
    Done,
    /// New-Order: commit it; the order's id in its district.
    Ordered { o_id: u32 },
    /// New-Order's unused item: abort it (a business rollback, clause 2.4.2.3).
    RolledBack,
    /// Delivery: commit it; `skipped` districts had no undelivered order.
    Delivered { skipped: u32 },
    /// Stock-Level (read-only): `low` distinct items are below the threshold.
    LowStock { low: u32 },
}

fn other_warehouse<R: Rng>(rng: &mut R, w: u32, warehouses: u32) -> u32 {
    let o = rng.gen_range(1..warehouses);
    if o >= w {
        o + 1
    } else {
        o
    }
}

fn customer_sel<R: Rng>(rng: &mut R, wl: &Workload) -> CustomerSel {
    if rng.gen_range(1..=100) <= 60 {
        let n = random::nurand(rng, random::A_C_LAST, wl.c_run.c_last, 0, 999);
        CustomerSel::LastName(random::last_name(n))
    } else {
        CustomerSel::Id(random::nurand(
            rng,
            random::A_C_ID,
            wl.c_run.c_id,
            1,
            CUSTOMERS_PER_DISTRICT,
        ))
    }
}

/// Clause 2.4.1.
pub fn gen_new_order<R: Rng>(rng: &mut R, wl: &Workload, w: u32) -> NewOrderInput {
    let d = rng.gen_range(1..=DISTRICTS_PER_WAREHOUSE);
    let c = random::nurand(
        rng,
        random::A_C_ID,
        wl.c_run.c_id,
        1,
        CUSTOMERS_PER_DISTRICT,
    );
    let ol_cnt = rng.gen_range(5..=15);
    let rollback = rng.gen_range(1..=100) == 1;
    let lines = (1..=ol_cnt)
        .map(|n| {
            let i_id = if rollback && n == ol_cnt {
                wl.items + 1
            } else {
                random::nurand(rng, random::A_OL_I_ID, wl.c_run.ol_i_id, 1, wl.items)
            };
            let supply_w_id = if wl.warehouses > 1 && rng.gen_range(1..=100) == 1 {
                other_warehouse(rng, w, wl.warehouses)
            } else {
                w
            };
            OrderLineInput {
                i_id,
                supply_w_id,
                quantity: rng.gen_range(1..=10),
            }
        })
        .collect();
    NewOrderInput {
        w,
        d,
        c,
        lines,
        rollback,
    }
}

/// Clause 2.5.1.
pub fn gen_payment<R: Rng>(rng: &mut R, wl: &Workload, w: u32) -> PaymentInput {
    let d = rng.gen_range(1..=DISTRICTS_PER_WAREHOUSE);
    let (c_w, c_d) = if wl.warehouses == 1 || rng.gen_range(1..=100) <= 85 {
        (w, d)
    } else {
        (
            other_warehouse(rng, w, wl.warehouses),
            rng.gen_range(1..=DISTRICTS_PER_WAREHOUSE),
        )
    };
    PaymentInput {
        w,
        d,
        c_w,
        c_d,
        customer: customer_sel(rng, wl),
        amount: rng.gen_range(100..=500_000),
    }
}

/// Clause 2.6.1.
pub fn gen_order_status<R: Rng>(rng: &mut R, wl: &Workload, w: u32) -> OrderStatusInput {
    OrderStatusInput {
        w,
        d: rng.gen_range(1..=DISTRICTS_PER_WAREHOUSE),
        customer: customer_sel(rng, wl),
    }
}

/// Clause 2.7.1.
pub fn gen_delivery<R: Rng>(rng: &mut R, w: u32) -> DeliveryInput {
    DeliveryInput {
        w,
        carrier: rng.gen_range(1..=10),
    }
}

/// Clause 2.8.1: the terminal's own (w, d), threshold in [10, 20].
pub fn gen_stock_level<R: Rng>(rng: &mut R, w: u32, d: u32) -> StockLevelInput {
    StockLevelInput {
        w,
        d,
        threshold: rng.gen_range(10..=20),
    }
}

fn corrupt(what: &str, e: impl fmt::Display) -> TxnError {
    TxnError::Corrupt(format!("{what}: {e}"))
}

fn read<R: RowCodec>(txn: &mut Txn, t: &Table, k: &[u8], what: &str) -> Result<R, TxnError> {
    let v = txn
        .get(t, k)?
        .ok_or_else(|| TxnError::Corrupt(format!("missing {what} row (key {k:02x?})")))?;
    R::decode(&v).map_err(|e| corrupt(what, e))
}

/// Reads the row of the warehouse or district a transaction names: a missing one is
/// bad input (a warehouse that was never loaded), not corruption.
fn read_home<R: RowCodec>(
    txn: &mut Txn,
    t: &Table,
    k: &[u8],
    what: &str,
    w: u32,
) -> Result<R, TxnError> {
    let v = txn
        .get(t, k)?
        .ok_or_else(|| TxnError::BadRequest(format!("no {what} row for warehouse {w}")))?;
    R::decode(&v).map_err(|e| corrupt(what, e))
}

/// Reads, changes and writes back a row the transaction updates, returning it as
/// written: with locking reads one locking read-modify-write ([`Txn::update`], the
/// engine's `UPDATE … RETURNING`), with plain reads a snapshot read and then a write.
/// `missing` is the error for a row that is not there.
fn update_row<R: RowCodec>(
    txn: &mut Txn,
    lk: Locking,
    t: &Table,
    k: &[u8],
    what: &str,
    missing: impl Fn() -> TxnError,
    mut change: impl FnMut(&mut R),
) -> Result<R, TxnError> {
    match lk {
        Locking::ForUpdate => {
            let mut out = None;
            txn.update(t, k, |old| {
                let mut r = R::decode(old.ok_or_else(&missing)?).map_err(|e| corrupt(what, e))?;
                change(&mut r);
                let bytes = r.encode();
                out = Some(r);
                Ok(Some(bytes))
            })?;
            out.ok_or_else(|| TxnError::Corrupt(format!("{what}: update wrote nothing")))
        }
        Locking::Plain => {
            let v = txn.get(t, k)?.ok_or_else(&missing)?;
            let mut r = R::decode(&v).map_err(|e| corrupt(what, e))?;
            change(&mut r);
            write(txn, t, k, &r)?;
            Ok(r)
        }
    }
}

fn missing_row(what: &str, k: &[u8]) -> TxnError {
    TxnError::Corrupt(format!("missing {what} row (key {k:02x?})"))
}

fn missing_home(what: &str, w: u32) -> TxnError {
    TxnError::BadRequest(format!("no {what} row for warehouse {w}"))
}

fn write<R: RowCodec>(txn: &mut Txn, t: &Table, k: &[u8], row: &R) -> Result<(), TxnError> {
    txn.put(t, k, &row.encode())
}

/// All keys with a u32 prefix, ascending or descending, at most `limit`.
fn scan_prefix(
    txn: &mut Txn,
    t: &Table,
    prefix: &[u8],
    reverse: bool,
    limit: Option<usize>,
) -> Result<Vec<Row>, TxnError> {
    let succ = prefix_successor(prefix);
    let b = prefix_bounds(prefix, &succ);
    txn.scan(t, as_ref(&b), reverse, limit)
}

/// Resolves a customer selection to (c_id, row): by last name, the customer at
/// position ceil(n/2) of those with that name sorted by C_FIRST (clause 2.5.2.2).
fn select_customer(
    txn: &mut Txn,
    t: &Tables,
    w: u32,
    d: u32,
    sel: &CustomerSel,
) -> Result<(u32, Customer), TxnError> {
    let c = customer_id(txn, t, w, d, sel)?;
    let row = read(txn, &t.customer, &key::customer(w, d, c), "customer")?;
    Ok((c, row))
}

/// The customer a selection names (clause 2.5.2.2).
fn customer_id(
    txn: &mut Txn,
    t: &Tables,
    w: u32,
    d: u32,
    sel: &CustomerSel,
) -> Result<u32, TxnError> {
    Ok(match sel {
        CustomerSel::Id(c) => *c,
        CustomerSel::LastName(last) => {
            let p = key::customer_name_prefix(w, d, last);
            let rows = scan_prefix(txn, &t.customer_by_name, &p, false, None)?;
            if rows.is_empty() {
                return Err(TxnError::Corrupt(format!(
                    "no customer named {last} in warehouse {w} district {d}"
                )));
            }
            let (k, _) = &rows[(rows.len() - 1) / 2];
            key::customer_by_name_id(k).map_err(|e| corrupt("customer_by_name key", e))?
        }
    })
}

/// Clause 2.4.2.
pub fn new_order(
    txn: &mut Txn,
    t: &Tables,
    inp: &NewOrderInput,
    now: u64,
    lk: Locking,
) -> Result<Outcome, TxnError> {
    let (w, d) = (inp.w, inp.d);
    let wh: Warehouse = read_home(txn, &t.warehouse, &key::warehouse(w), "warehouse", w)?;
    let dk = key::district(w, d);
    let dist: District = update_row(
        txn,
        lk,
        &t.district,
        &dk,
        "district",
        || missing_home("district", w),
        |dist: &mut District| dist.next_o_id += 1,
    )?;
    let o = dist.next_o_id - 1;
    let cust: Customer = read(txn, &t.customer, &key::customer(w, d, inp.c), "customer")?;
    let all_local = inp.lines.iter().all(|l| l.supply_w_id == w);
    let order = Order {
        c_id: inp.c,
        entry_d: now,
        carrier_id: 0,
        ol_cnt: inp.lines.len() as u32,
        all_local: all_local as u8,
    };
    write(txn, &t.orders, &key::order(w, d, o), &order)?;
    txn.put(&t.new_order, &key::order(w, d, o), &[])?;
    txn.put(
        &t.orders_by_customer,
        &key::order_by_customer(w, d, inp.c, o),
        &[],
    )?;
    let mut total = 0i64;
    for (n, line) in stock_order(&inp.lines) {
        let Some(iv) = txn.get(&t.item, &key::item(line.i_id))? else {
            // "Item number is not valid": the whole transaction rolls back.
            return Ok(Outcome::RolledBack);
        };
        let item = Item::decode(&iv).map_err(|e| corrupt("item", e))?;
        let sk = key::stock(line.supply_w_id, line.i_id);
        let st: Stock = update_row(
            txn,
            lk,
            &t.stock,
            &sk,
            "stock",
            || missing_row("stock", &sk),
            |st: &mut Stock| {
                st.quantity = if st.quantity >= line.quantity + 10 {
                    st.quantity - line.quantity
                } else {
                    st.quantity + 91 - line.quantity
                };
                st.ytd += line.quantity as u64;
                st.order_cnt += 1;
                if line.supply_w_id != w {
                    st.remote_cnt += 1;
                }
            },
        )?;
        let amount = line.quantity as i64 * item.price;
        total += amount;
        // Brand/generic (displayed, not stored): 'B' when both carry "ORIGINAL".
        let _brand = item.data.contains("ORIGINAL") && st.data.contains("ORIGINAL");
        let ol = OrderLine {
            i_id: line.i_id,
            supply_w_id: line.supply_w_id,
            delivery_d: 0,
            quantity: line.quantity,
            amount,
            dist_info: st.dist(d).to_string(),
        };
        write(
            txn,
            &t.order_line,
            &key::order_line(w, d, o, n as u32 + 1),
            &ol,
        )?;
    }
    // Displayed total: sum * (1 - C_DISCOUNT) * (1 + W_TAX + D_TAX).
    let _total = total as f64
        * (1.0 - cust.discount as f64 / 1e4)
        * (1.0 + (wh.tax + dist.tax) as f64 / 1e4);
    Ok(Outcome::Ordered { o_id: o })
}

/// The order lines in the order their STOCK rows are taken: by (supply warehouse,
/// item), each with its position in the input (its OL_NUMBER - 1). Two New-Orders that
/// lock the same two stock rows in opposite orders would wait for each other; with
/// one order they cannot (wound-wait would break such a cycle, at the price of an
/// abort and a stall of `wound_after`).
pub fn stock_order(lines: &[OrderLineInput]) -> Vec<(usize, &OrderLineInput)> {
    let mut v: Vec<_> = lines.iter().enumerate().collect();
    v.sort_by_key(|(n, l)| (l.supply_w_id, l.i_id, *n));
    v
}

/// Clause 2.5.2. `history_key` makes the HISTORY row's key unique.
pub fn payment(
    txn: &mut Txn,
    t: &Tables,
    inp: &PaymentInput,
    now: u64,
    history_key: (u32, u64),
    lk: Locking,
) -> Result<Outcome, TxnError> {
    let (w, d) = (inp.w, inp.d);
    let wk = key::warehouse(w);
    let wh: Warehouse = update_row(
        txn,
        lk,
        &t.warehouse,
        &wk,
        "warehouse",
        || missing_home("warehouse", w),
        |wh: &mut Warehouse| wh.ytd += inp.amount,
    )?;
    let dk = key::district(w, d);
    let dist: District = update_row(
        txn,
        lk,
        &t.district,
        &dk,
        "district",
        || missing_home("district", w),
        |dist: &mut District| dist.ytd += inp.amount,
    )?;
    let c = customer_id(txn, t, inp.c_w, inp.c_d, &inp.customer)?;
    let ck = key::customer(inp.c_w, inp.c_d, c);
    update_row(
        txn,
        lk,
        &t.customer,
        &ck,
        "customer",
        || missing_row("customer", &ck),
        |cust: &mut Customer| {
            cust.balance -= inp.amount;
            cust.ytd_payment += inp.amount;
            cust.payment_cnt += 1;
            if cust.credit == "BC" {
                let mut data = format!(
                    "{c} {} {} {d} {w} {}.{:02}|",
                    inp.c_d,
                    inp.c_w,
                    inp.amount / 100,
                    inp.amount % 100
                );
                data.push_str(&cust.data);
                data.truncate(500);
                cust.data = data;
            }
        },
    )?;
    let h = History {
        c_id: c,
        c_d_id: inp.c_d,
        c_w_id: inp.c_w,
        d_id: d,
        w_id: w,
        date: now,
        amount: inp.amount,
        data: format!("{}    {}", wh.name, dist.name),
    };
    write(
        txn,
        &t.history,
        &key::history(w, d, history_key.0, history_key.1),
        &h,
    )?;
    Ok(Outcome::Done)
}

/// Clause 2.6.2 (read-only).
pub fn order_status(
    txn: &mut Txn,
    t: &Tables,
    inp: &OrderStatusInput,
) -> Result<Outcome, TxnError> {
    let (w, d) = (inp.w, inp.d);
    let (c, _cust) = select_customer(txn, t, w, d, &inp.customer)?;
    let latest = scan_prefix(
        txn,
        &t.orders_by_customer,
        &key::prefix(&[w, d, c]),
        true,
        Some(1),
    )?;
    let Some((k, _)) = latest.first() else {
        // Every customer has an order from the load; none means a broken index.
        return Err(TxnError::Corrupt(format!(
            "customer {w}/{d}/{c} has no order"
        )));
    };
    let o = key::u32_at(k, 3);
    let order: Order = read(txn, &t.orders, &key::order(w, d, o), "orders")?;
    let lines = scan_prefix(txn, &t.order_line, &key::prefix(&[w, d, o]), false, None)?;
    if lines.len() != order.ol_cnt as usize {
        return Err(TxnError::Corrupt(format!(
            "order {w}/{d}/{o} has {} lines, O_OL_CNT {}",
            lines.len(),
            order.ol_cnt
        )));
    }
    for (_, v) in &lines {
        OrderLine::decode(v).map_err(|e| corrupt("order_line", e))?;
    }
    Ok(Outcome::Done)
}

/// Clause 2.7.4: one transaction over the warehouse's ten districts.
pub fn delivery(
    txn: &mut Txn,
    t: &Tables,
    inp: &DeliveryInput,
    now: u64,
    lk: Locking,
) -> Result<Outcome, TxnError> {
    let w = inp.w;
    let mut skipped = 0;
    for d in 1..=DISTRICTS_PER_WAREHOUSE {
        let Some(nk) = oldest_new_order(txn, t, w, d, lk)? else {
            skipped += 1;
            continue;
        };
        let o = key::u32_at(&nk, 2);
        txn.delete(&t.new_order, &nk)?;
        let ok = key::order(w, d, o);
        let mut order: Order = read(txn, &t.orders, &ok, "orders")?;
        order.carrier_id = inp.carrier;
        write(txn, &t.orders, &ok, &order)?;
        let mut sum = 0i64;
        for (olk, olv) in scan_prefix(txn, &t.order_line, &key::prefix(&[w, d, o]), false, None)? {
            let mut ol = OrderLine::decode(&olv).map_err(|e| corrupt("order_line", e))?;
            sum += ol.amount;
            ol.delivery_d = now;
            write(txn, &t.order_line, &olk, &ol)?;
        }
        let ck = key::customer(w, d, order.c_id);
        update_row(
            txn,
            lk,
            &t.customer,
            &ck,
            "customer",
            || missing_row("customer", &ck),
            |cust: &mut Customer| {
                cust.balance += sum;
                cust.delivery_cnt += 1;
            },
        )?;
    }
    Ok(Outcome::Delivered { skipped })
}

/// The key of district `d`'s oldest undelivered NEW-ORDER row, locked for this
/// transaction with locking reads. Its snapshot may still show rows a concurrent
/// Delivery has taken since: the locking read of such a row answers that it is gone
/// (the newest commit deleted it), and the next one is tried. The ORDER and
/// ORDER-LINE rows of the order need no lock then: only the holder of its NEW-ORDER
/// row's lock delivers it.
fn oldest_new_order(
    txn: &mut Txn,
    t: &Tables,
    w: u32,
    d: u32,
    lk: Locking,
) -> Result<Option<Vec<u8>>, TxnError> {
    const BATCH: usize = 4;
    let prefix = key::prefix(&[w, d]);
    let succ = prefix_successor(&prefix);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let b = (
            match &after {
                Some(k) => std::ops::Bound::Excluded(k.clone()),
                None => std::ops::Bound::Included(prefix.clone()),
            },
            prefix_bounds(&prefix, &succ).1,
        );
        let rows = txn.scan(&t.new_order, as_ref(&b), false, Some(BATCH))?;
        for (k, _) in &rows {
            if lk == Locking::Plain || txn.get_for_update(&t.new_order, k)?.is_some() {
                return Ok(Some(k.clone()));
            }
        }
        match rows.last() {
            Some((k, _)) if rows.len() == BATCH => after = Some(k.clone()),
            _ => return Ok(None),
        }
    }
}

/// Clause 2.8.2 (read-only): distinct items of the district's last 20 orders whose
/// stock at the home warehouse is below the threshold.
pub fn stock_level(txn: &mut Txn, t: &Tables, inp: &StockLevelInput) -> Result<Outcome, TxnError> {
    let (w, d) = (inp.w, inp.d);
    let dist: District = read_home(txn, &t.district, &key::district(w, d), "district", w)?;
    let next = dist.next_o_id;
    let lo = key::prefix(&[w, d, next.saturating_sub(20)]);
    let hi = key::prefix(&[w, d, next]);
    let lines = txn.scan(
        &t.order_line,
        (
            std::ops::Bound::Included(lo.as_slice()),
            std::ops::Bound::Excluded(hi.as_slice()),
        ),
        false,
        None,
    )?;
    let mut items = BTreeSet::new();
    for (_, v) in &lines {
        items.insert(
            OrderLine::decode(v)
                .map_err(|e| corrupt("order_line", e))?
                .i_id,
        );
    }
    let mut low = 0;
    for i in items {
        let st: Stock = read(txn, &t.stock, &key::stock(w, i), "stock")?;
        if st.quantity < inp.threshold {
            low += 1;
        }
    }
    Ok(Outcome::LowStock { low })
}

/// How long a failed attempt waits for the writer it died on before reporting.
const BLOCKER_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// One attempt of a whole transaction on `node`: begin, run the profile, then commit
/// (or abort New-Order's business rollback). A failed attempt is aborted; the caller
/// retries retryable errors with the same input. `history_key` is the (origin, seq)
/// of the HISTORY row a Payment inserts; `now` the transaction's timestamp (µs).
///
/// This is the server-side stored procedure of the `compute-node` service as well as
/// what the embedded driver runs.
pub fn run_once(
    node: &compute_node::node::ComputeNode,
    t: &Tables,
    input: &Input,
    now: u64,
    history_key: (u32, u64),
    mode: Mode,
) -> Result<Outcome, TxnError> {
    let isolation = mode.isolation.unwrap_or(node.engine().config().isolation);
    Mode::check(isolation, mode.locking)?;
    let mut txn = node.begin_with(isolation)?;
    let lk = mode.locking;
    let res = match input {
        Input::NewOrder(i) => new_order(&mut txn, t, i, now, lk),
        Input::Payment(i) => payment(&mut txn, t, i, now, history_key, lk),
        Input::OrderStatus(i) => order_status(&mut txn, t, i),
        Input::Delivery(i) => delivery(&mut txn, t, i, now, lk),
        Input::StockLevel(i) => stock_level(&mut txn, t, i),
    };
    match res {
        Ok(Outcome::RolledBack) => {
            txn.abort()?;
            Ok(Outcome::RolledBack)
        }
        Ok(o) => {
            txn.commit()?;
            Ok(o)
        }
        Err(e) => {
            // A wait-die victim retries only once the row's writer has finished.
            let _ = txn.abort_and_wait(BLOCKER_WAIT);
            Err(e)
        }
    }
}
