//! The initial population of clause 4.3.3.1, loaded in parallel.
//!
//! Work is cut into jobs (a chunk of items, one warehouse with its districts, a chunk
//! of one warehouse's stock, one district's customers with their history and name
//! index, one district's orders with their lines, new orders and customer index). A
//! pool of loader threads takes jobs from a queue; each job writes batches of a few
//! hundred rows per transaction through the compute node that owns the warehouse (so
//! a partitioned run starts with its pages' locks already where they are used).

use crate::random::{self, NuRandConstants};
use crate::schema::*;
use anyhow::{Context, Result};
use compute_node::node::ComputeNode;
use compute_node::txn::{Txn, TxnError};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Rows per loader transaction.
pub const BATCH_ROWS: usize = 400;

/// What to load.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub warehouses: u32,
    /// Items in ITEM and stock rows per warehouse: 100,000 per the spec.
    pub items: u32,
}

impl Scale {
    pub fn is_spec(&self) -> bool {
        self.items == SPEC_ITEMS
    }

    /// Rows the loader writes (for the progress line).
    pub fn total_rows(&self) -> u64 {
        let w = self.warehouses as u64;
        let per_district = CUSTOMERS_PER_DISTRICT as u64 * 3 // customer, history, name index
            + ORDERS_PER_DISTRICT as u64 * 12 // order, index, ~10 lines
            + (ORDERS_PER_DISTRICT - FIRST_UNDELIVERED_ORDER + 1) as u64;
        self.items as u64 + w * (1 + 10 + self.items as u64 + 10 * per_district)
    }
}

/// Microseconds since the Unix epoch (never 0, which means NULL).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        .max(1)
}

/// Runs `body` in a fresh transaction on `node` and commits, retrying retryable aborts.
pub fn with_retries<T>(
    node: &ComputeNode,
    mut body: impl FnMut(&mut Txn) -> Result<T, TxnError>,
) -> Result<T, TxnError> {
    let mut attempt = 0u32;
    loop {
        let mut txn = node.begin()?;
        let res = body(&mut txn).and_then(|v| txn.commit().map(|_| v));
        match res {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < 1000 => {
                attempt += 1;
                std::thread::sleep(Duration::from_micros(100 * attempt.min(50) as u64));
            }
            Err(e) => return Err(e),
        }
    }
}

enum Job {
    Items { from: u32, to: u32 },
    Warehouse { w: u32 },
    Stock { w: u32, from: u32, to: u32 },
    Customers { w: u32, d: u32 },
    Orders { w: u32, d: u32 },
}

/// Everything a loader thread needs.
pub struct Loader<'a> {
    pub nodes: &'a [ComputeNode],
    /// Tables as opened on each node (same index as `nodes`).
    pub tables: &'a [Tables],
    /// Node index that loads warehouse `w` (1-based).
    pub node_of: &'a (dyn Fn(u32) -> usize + Sync),
    pub scale: Scale,
    pub c_load: NuRandConstants,
    pub seed: u64,
    pub threads: usize,
    pub progress: bool,
}

impl Loader<'_> {
    /// Loads the whole database; returns rows written.
    pub fn run(&self) -> Result<u64> {
        let mut jobs = Vec::new();
        let items = self.scale.items;
        let mut i = 1;
        while i <= items {
            let to = (i + 10_000 - 1).min(items);
            jobs.push(Job::Items { from: i, to });
            i = to + 1;
        }
        for w in 1..=self.scale.warehouses {
            jobs.push(Job::Warehouse { w });
            for d in 1..=DISTRICTS_PER_WAREHOUSE {
                jobs.push(Job::Customers { w, d });
                jobs.push(Job::Orders { w, d });
            }
            let mut i = 1;
            while i <= items {
                let to = (i + 10_000 - 1).min(items);
                jobs.push(Job::Stock { w, from: i, to });
                i = to + 1;
            }
        }
        let next = AtomicUsize::new(0);
        let rows = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let total = self.scale.total_rows();
        let start = Instant::now();
        let errors: parking_lot::Mutex<Vec<anyhow::Error>> = Default::default();
        std::thread::scope(|s| {
            let progress = s.spawn(|| {
                let mut last = Instant::now();
                while self.progress && !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= Duration::from_secs(1) {
                        last = Instant::now();
                        print_progress(rows.load(Ordering::Relaxed), total, start);
                    }
                }
            });
            let workers: Vec<_> = (0..self.threads.max(1))
                .map(|_| {
                    s.spawn(|| loop {
                        if !errors.lock().is_empty() {
                            return;
                        }
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(j) else { return };
                        let mut rng = StdRng::seed_from_u64(
                            self.seed ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        );
                        if let Err(e) = self.run_job(job, &mut rng, &rows) {
                            errors.lock().push(e);
                            return;
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
            done.store(true, Ordering::Relaxed);
            let _ = progress.join();
        });
        if let Some(e) = errors.into_inner().pop() {
            return Err(e);
        }
        let n = rows.load(Ordering::Relaxed);
        if self.progress {
            print_progress(n, total, start);
            use std::io::IsTerminal;
            if std::io::stderr().is_terminal() {
                eprintln!();
            }
        }
        Ok(n)
    }

    fn node_for(&self, w: u32) -> (&ComputeNode, &Tables) {
        let i = (self.node_of)(w);
        (&self.nodes[i], &self.tables[i])
    }

    fn run_job(&self, job: &Job, rng: &mut StdRng, rows: &AtomicU64) -> Result<()> {
        match *job {
            Job::Items { from, to } => self.load_items(from, to, rng, rows),
            Job::Warehouse { w } => self.load_warehouse(w, rng, rows),
            Job::Stock { w, from, to } => self.load_stock(w, from, to, rng, rows),
            Job::Customers { w, d } => self.load_customers(w, d, rng, rows),
            Job::Orders { w, d } => self.load_orders(w, d, rng, rows),
        }
    }

    /// Writes `batch` (table index into a row list) in one transaction.
    fn write_batch(
        &self,
        node: &ComputeNode,
        batch: &mut Vec<(compute_node::txn::Table, Vec<u8>, Vec<u8>)>,
        rows: &AtomicU64,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        with_retries(node, |txn| {
            for (t, k, v) in batch.iter() {
                txn.put(t, k, v)?;
            }
            Ok(())
        })
        .context("loader batch")?;
        rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
        Ok(())
    }

    fn load_items(&self, from: u32, to: u32, rng: &mut StdRng, rows: &AtomicU64) -> Result<()> {
        let (node, t) = (&self.nodes[0], &self.tables[0]);
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        for i in from..=to {
            let item = Item {
                im_id: rng.gen_range(1..=10_000),
                name: random::astring(rng, 14, 24),
                price: rng.gen_range(100..=10_000),
                data: random::data_with_original(rng),
            };
            batch.push((t.item.clone(), key::item(i), item.encode()));
            if batch.len() >= BATCH_ROWS {
                self.write_batch(node, &mut batch, rows)?;
            }
        }
        self.write_batch(node, &mut batch, rows)
    }

    fn load_warehouse(&self, w: u32, rng: &mut StdRng, rows: &AtomicU64) -> Result<()> {
        let (node, t) = self.node_for(w);
        let wh = Warehouse {
            name: random::astring(rng, 6, 10),
            street_1: random::astring(rng, 10, 20),
            street_2: random::astring(rng, 10, 20),
            city: random::astring(rng, 10, 20),
            state: random::state(rng),
            zip: random::zip(rng),
            tax: rng.gen_range(0..=2000),
            ytd: 30_000_000,
        };
        let mut batch = vec![(t.warehouse.clone(), key::warehouse(w), wh.encode())];
        for d in 1..=DISTRICTS_PER_WAREHOUSE {
            let di = District {
                name: random::astring(rng, 6, 10),
                street_1: random::astring(rng, 10, 20),
                street_2: random::astring(rng, 10, 20),
                city: random::astring(rng, 10, 20),
                state: random::state(rng),
                zip: random::zip(rng),
                tax: rng.gen_range(0..=2000),
                ytd: 3_000_000,
                next_o_id: ORDERS_PER_DISTRICT + 1,
            };
            batch.push((t.district.clone(), key::district(w, d), di.encode()));
        }
        self.write_batch(node, &mut batch, rows)
    }

    fn load_stock(
        &self,
        w: u32,
        from: u32,
        to: u32,
        rng: &mut StdRng,
        rows: &AtomicU64,
    ) -> Result<()> {
        let (node, t) = self.node_for(w);
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        for i in from..=to {
            let mut d = || random::astring(rng, 24, 24);
            let s = Stock {
                quantity: 0,
                d01: d(),
                d02: d(),
                d03: d(),
                d04: d(),
                d05: d(),
                d06: d(),
                d07: d(),
                d08: d(),
                d09: d(),
                d10: d(),
                ytd: 0,
                order_cnt: 0,
                remote_cnt: 0,
                data: String::new(),
            };
            let s = Stock {
                quantity: rng.gen_range(10..=100),
                data: random::data_with_original(rng),
                ..s
            };
            batch.push((t.stock.clone(), key::stock(w, i), s.encode()));
            if batch.len() >= BATCH_ROWS {
                self.write_batch(node, &mut batch, rows)?;
            }
        }
        self.write_batch(node, &mut batch, rows)
    }

    fn load_customers(&self, w: u32, d: u32, rng: &mut StdRng, rows: &AtomicU64) -> Result<()> {
        let (node, t) = self.node_for(w);
        let since = now_micros();
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        for c in 1..=CUSTOMERS_PER_DISTRICT {
            // Clause 4.3.3.1: the first 1,000 customers take their id's name in order,
            // the rest NURand(255, 0, 999) with the load C.
            let num = if c <= 1000 {
                c - 1
            } else {
                random::nurand(rng, random::A_C_LAST, self.c_load.c_last, 0, 999)
            };
            let cust = Customer {
                first: random::astring(rng, 8, 16),
                middle: "OE".into(),
                last: random::last_name(num),
                street_1: random::astring(rng, 10, 20),
                street_2: random::astring(rng, 10, 20),
                city: random::astring(rng, 10, 20),
                state: random::state(rng),
                zip: random::zip(rng),
                phone: random::nstring(rng, 16, 16),
                since,
                credit: if rng.gen_range(0..10) == 0 {
                    "BC"
                } else {
                    "GC"
                }
                .into(),
                credit_lim: 5_000_000,
                discount: rng.gen_range(0..=5000),
                balance: -1000,
                ytd_payment: 1000,
                payment_cnt: 1,
                delivery_cnt: 0,
                data: random::astring(rng, 300, 500),
            };
            let h = History {
                c_id: c,
                c_d_id: d,
                c_w_id: w,
                d_id: d,
                w_id: w,
                date: since,
                amount: 1000,
                data: random::astring(rng, 12, 24),
            };
            batch.push((
                t.customer_by_name.clone(),
                key::customer_by_name(w, d, &cust.last, &cust.first, c),
                Vec::new(),
            ));
            batch.push((t.customer.clone(), key::customer(w, d, c), cust.encode()));
            batch.push((
                t.history.clone(),
                key::history(w, d, 0, c as u64),
                h.encode(),
            ));
            if batch.len() >= BATCH_ROWS {
                self.write_batch(node, &mut batch, rows)?;
            }
        }
        self.write_batch(node, &mut batch, rows)
    }

    fn load_orders(&self, w: u32, d: u32, rng: &mut StdRng, rows: &AtomicU64) -> Result<()> {
        let (node, t) = self.node_for(w);
        let mut customers: Vec<u32> = (1..=CUSTOMERS_PER_DISTRICT).collect();
        customers.shuffle(rng);
        let entry_d = now_micros();
        let mut batch = Vec::with_capacity(BATCH_ROWS + 20);
        for o in 1..=ORDERS_PER_DISTRICT {
            let delivered = o < FIRST_UNDELIVERED_ORDER;
            let c = customers[o as usize - 1];
            let ol_cnt = rng.gen_range(5..=15);
            let order = Order {
                c_id: c,
                entry_d,
                carrier_id: if delivered { rng.gen_range(1..=10) } else { 0 },
                ol_cnt,
                all_local: 1,
            };
            batch.push((t.orders.clone(), key::order(w, d, o), order.encode()));
            batch.push((
                t.orders_by_customer.clone(),
                key::order_by_customer(w, d, c, o),
                Vec::new(),
            ));
            for n in 1..=ol_cnt {
                let ol = OrderLine {
                    i_id: rng.gen_range(1..=self.scale.items),
                    supply_w_id: w,
                    delivery_d: if delivered { entry_d } else { 0 },
                    quantity: 5,
                    amount: if delivered {
                        0
                    } else {
                        rng.gen_range(1..=999_999)
                    },
                    dist_info: random::astring(rng, 24, 24),
                };
                batch.push((
                    t.order_line.clone(),
                    key::order_line(w, d, o, n),
                    ol.encode(),
                ));
            }
            if !delivered {
                batch.push((t.new_order.clone(), key::order(w, d, o), Vec::new()));
            }
            if batch.len() >= BATCH_ROWS {
                self.write_batch(node, &mut batch, rows)?;
            }
        }
        self.write_batch(node, &mut batch, rows)
    }
}

fn print_progress(rows: u64, total: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64().max(1e-3);
    let pct = (rows as f64 * 100.0 / total.max(1) as f64).min(100.0);
    let rate = rows as f64 / secs;
    let eta = if rate > 0.0 {
        (total.saturating_sub(rows)) as f64 / rate
    } else {
        0.0
    };
    use std::io::IsTerminal;
    let line = format!(
        "load: {pct:5.1}%  {rows:>9}/{total} rows  {rate:>8.0} rows/s  {secs:>5.0}s elapsed  eta {eta:>4.0}s"
    );
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}   ");
    } else {
        eprintln!("{line}");
    }
}
