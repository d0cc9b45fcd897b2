//! The initial population of clause 4.3.3.1, loaded in parallel.
//!
//! Work is cut into jobs (a chunk of items, one warehouse with its districts, a chunk
//! of one warehouse's stock, one district's customers with their history and name
//! index, one district's orders with their lines, new orders and customer index). A
//! pool of loader threads takes jobs from a queue; each job writes batches of a few
//! hundred rows per transaction through the compute node that owns the warehouse (so
//! a partitioned run starts with its pages' locks already where they are used).
//!
//! The rows themselves come from [`generate`], which knows nothing of the engine: a
//! job's rows depend only on the seed, the job's index in [`jobs`] ([`job_rng`]) and
//! the scale, and go to a [`RowSink`]. The engine's sink batches them into its
//! B-trees; the harness's PostgreSQL target COPYs the very same rows (`tpcc::pg`).

use super::random::{self, NuRandConstants};
use super::schema::*;
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

/// One unit of the loader's work. The data of a job depends only on the seed, the
/// job's index in the queue of [`jobs`] and the scale, whatever loads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// ITEM rows `from..=to`.
    Items { from: u32, to: u32 },
    /// The WAREHOUSE row and its ten DISTRICT rows.
    Warehouse { w: u32 },
    /// STOCK rows `from..=to` of warehouse `w`.
    Stock { w: u32, from: u32, to: u32 },
    /// One district's CUSTOMER rows with their HISTORY rows.
    Customers { w: u32, d: u32 },
    /// One district's ORDER rows with their ORDER-LINE and NEW-ORDER rows.
    Orders { w: u32, d: u32 },
}

/// A part of the population: warehouses `from_w..=to_w` and, if `items`, the ITEM
/// table. A compute-node service asked to load over gRPC loads the part its client
/// gives it (each node its own warehouses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadPart {
    pub from_w: u32,
    pub to_w: u32,
    pub items: bool,
}

/// The queue of jobs that load `part` (None: everything) of `scale`.
pub fn jobs(scale: Scale, part: Option<LoadPart>) -> Vec<Job> {
    let items = scale.items;
    let part = part.unwrap_or(LoadPart {
        from_w: 1,
        to_w: scale.warehouses,
        items: true,
    });
    let mut jobs = Vec::new();
    let mut i = 1;
    while part.items && i <= items {
        let to = (i + 10_000 - 1).min(items);
        jobs.push(Job::Items { from: i, to });
        i = to + 1;
    }
    for w in part.from_w..=part.to_w.min(scale.warehouses) {
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
    jobs
}

/// The random stream of the job at index `j` of the queue.
pub fn job_rng(seed: u64, j: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Where a loader writes the rows [`generate`] makes: the engine's B-trees, or
/// another database. Each call hands over one logical unit (a customer comes with
/// its HISTORY row, an order with its lines) and returns the rows it made durable,
/// if it wrote any; [`RowSink::finish`] ends a job.
pub trait RowSink {
    fn item(&mut self, i: u32, item: &Item) -> Result<u64>;
    fn warehouse(&mut self, w: u32, wh: &Warehouse) -> Result<u64>;
    fn district(&mut self, w: u32, d: u32, dist: &District) -> Result<u64>;
    fn stock(&mut self, w: u32, i: u32, st: &Stock) -> Result<u64>;
    /// The customer's HISTORY row has key (w, d, origin 0, seq c).
    fn customer(&mut self, w: u32, d: u32, c: u32, cust: &Customer, h: &History) -> Result<u64>;
    /// `new_order`: the order also has a NEW-ORDER row (it is undelivered).
    fn order(
        &mut self,
        w: u32,
        d: u32,
        o: u32,
        order: &Order,
        lines: &[OrderLine],
        new_order: bool,
    ) -> Result<u64>;
    /// Writes whatever the job left buffered.
    fn finish(&mut self) -> Result<u64>;
}

/// Makes the rows of `job` by the rules of clause 4.3.3.1 (`items` items per
/// warehouse, C_LAST drawn with `c_load`) and hands them to `sink`; returns the rows
/// the sink wrote.
pub fn generate(
    job: &Job,
    rng: &mut StdRng,
    items: u32,
    c_load: &NuRandConstants,
    sink: &mut dyn RowSink,
) -> Result<u64> {
    let mut rows = 0;
    match *job {
        Job::Items { from, to } => {
            for i in from..=to {
                let item = Item {
                    im_id: rng.gen_range(1..=10_000),
                    name: random::astring(rng, 14, 24),
                    price: rng.gen_range(100..=10_000),
                    data: random::data_with_original(rng),
                };
                rows += sink.item(i, &item)?;
            }
        }
        Job::Warehouse { w } => {
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
            rows += sink.warehouse(w, &wh)?;
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
                rows += sink.district(w, d, &di)?;
            }
        }
        Job::Stock { w, from, to } => {
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
                rows += sink.stock(w, i, &s)?;
            }
        }
        Job::Customers { w, d } => {
            let since = now_micros();
            for c in 1..=CUSTOMERS_PER_DISTRICT {
                // Clause 4.3.3.1: the first 1,000 customers take their id's name in
                // order, the rest NURand(255, 0, 999) with the load C.
                let num = if c <= 1000 {
                    c - 1
                } else {
                    random::nurand(rng, random::A_C_LAST, c_load.c_last, 0, 999)
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
                rows += sink.customer(w, d, c, &cust, &h)?;
            }
        }
        Job::Orders { w, d } => {
            let mut customers: Vec<u32> = (1..=CUSTOMERS_PER_DISTRICT).collect();
            customers.shuffle(rng);
            let entry_d = now_micros();
            let mut lines = Vec::with_capacity(15);
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
                lines.clear();
                for _ in 1..=ol_cnt {
                    lines.push(OrderLine {
                        i_id: rng.gen_range(1..=items),
                        supply_w_id: w,
                        delivery_d: if delivered { entry_d } else { 0 },
                        quantity: 5,
                        amount: if delivered {
                            0
                        } else {
                            rng.gen_range(1..=999_999)
                        },
                        dist_info: random::astring(rng, 24, 24),
                    });
                }
                rows += sink.order(w, d, o, &order, &lines, !delivered)?;
            }
        }
    }
    Ok(rows + sink.finish()?)
}

/// Runs a queue of jobs on a pool of threads, each thread with its own sink, each
/// job with its own random stream ([`job_rng`]); prints progress once a second if
/// asked. Both the engine's [`Loader`] and other targets' loaders run on this.
pub struct JobPool<'a> {
    pub jobs: &'a [Job],
    pub items: u32,
    pub c_load: NuRandConstants,
    pub seed: u64,
    pub threads: usize,
    pub progress: bool,
    /// Rows expected (for the progress line).
    pub total: u64,
}

impl JobPool<'_> {
    /// Runs every job; `new_sink` is called once per thread. Returns rows written.
    pub fn run<S: RowSink>(&self, new_sink: &(dyn Fn() -> Result<S> + Sync)) -> Result<u64> {
        let next = AtomicUsize::new(0);
        let rows = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let total = self.total;
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
                    s.spawn(|| {
                        let mut sink = match new_sink() {
                            Ok(s) => s,
                            Err(e) => {
                                errors.lock().push(e);
                                return;
                            }
                        };
                        loop {
                            if !errors.lock().is_empty() {
                                return;
                            }
                            let j = next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = self.jobs.get(j) else { return };
                            let mut rng = job_rng(self.seed, j);
                            let mut counted = CountingSink {
                                inner: &mut sink,
                                rows: &rows,
                            };
                            if let Err(e) =
                                generate(job, &mut rng, self.items, &self.c_load, &mut counted)
                            {
                                errors.lock().push(e);
                                return;
                            }
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
}

/// Adds what a sink wrote to the shared counter as it goes (for the progress line).
struct CountingSink<'a, S> {
    inner: &'a mut S,
    rows: &'a AtomicU64,
}

impl<S: RowSink> CountingSink<'_, S> {
    fn count(&self, r: Result<u64>) -> Result<u64> {
        let n = r?;
        self.rows.fetch_add(n, Ordering::Relaxed);
        Ok(0)
    }
}

impl<S: RowSink> RowSink for CountingSink<'_, S> {
    fn item(&mut self, i: u32, item: &Item) -> Result<u64> {
        let r = self.inner.item(i, item);
        self.count(r)
    }
    fn warehouse(&mut self, w: u32, wh: &Warehouse) -> Result<u64> {
        let r = self.inner.warehouse(w, wh);
        self.count(r)
    }
    fn district(&mut self, w: u32, d: u32, dist: &District) -> Result<u64> {
        let r = self.inner.district(w, d, dist);
        self.count(r)
    }
    fn stock(&mut self, w: u32, i: u32, st: &Stock) -> Result<u64> {
        let r = self.inner.stock(w, i, st);
        self.count(r)
    }
    fn customer(&mut self, w: u32, d: u32, c: u32, cust: &Customer, h: &History) -> Result<u64> {
        let r = self.inner.customer(w, d, c, cust, h);
        self.count(r)
    }
    fn order(
        &mut self,
        w: u32,
        d: u32,
        o: u32,
        order: &Order,
        lines: &[OrderLine],
        new_order: bool,
    ) -> Result<u64> {
        let r = self.inner.order(w, d, o, order, lines, new_order);
        self.count(r)
    }
    fn finish(&mut self) -> Result<u64> {
        let r = self.inner.finish();
        self.count(r)
    }
}

/// Everything a loader thread needs.
pub struct Loader<'a> {
    pub nodes: &'a [ComputeNode],
    /// Tables as opened on each node (same index as `nodes`).
    pub tables: &'a [Tables],
    /// Node index that loads warehouse `w` (1-based).
    pub node_of: &'a (dyn Fn(u32) -> usize + Sync),
    pub scale: Scale,
    /// Load only this part (None: everything).
    pub only: Option<LoadPart>,
    pub c_load: NuRandConstants,
    pub seed: u64,
    pub threads: usize,
    pub progress: bool,
}

impl Loader<'_> {
    /// Loads the whole database; returns rows written.
    pub fn run(&self) -> Result<u64> {
        let part = self.only.unwrap_or(LoadPart {
            from_w: 1,
            to_w: self.scale.warehouses,
            items: true,
        });
        let jobs = jobs(self.scale, Some(part));
        let total = Scale {
            warehouses: (part.to_w.min(self.scale.warehouses) + 1).saturating_sub(part.from_w),
            items: self.scale.items,
        }
        .total_rows()
            - if part.items {
                0
            } else {
                self.scale.items as u64
            };
        JobPool {
            jobs: &jobs,
            items: self.scale.items,
            c_load: self.c_load,
            seed: self.seed,
            threads: self.threads,
            progress: self.progress,
            total,
        }
        .run(&|| {
            Ok(EngineSink {
                loader: self,
                node: 0,
                batch: Vec::with_capacity(BATCH_ROWS + 20),
            })
        })
    }
}

/// Writes rows into the engine's tables in transactions of about [`BATCH_ROWS`]
/// rows, through the compute node that owns the rows' warehouse (items: node 0).
struct EngineSink<'a> {
    loader: &'a Loader<'a>,
    /// Node of the rows in `batch`.
    node: usize,
    batch: Vec<(compute_node::txn::Table, Vec<u8>, Vec<u8>)>,
}

impl EngineSink<'_> {
    fn tables_of(&mut self, w: Option<u32>) -> Tables {
        self.node = w.map_or(0, |w| (self.loader.node_of)(w));
        self.loader.tables[self.node].clone()
    }

    fn flush_if_full(&mut self) -> Result<u64> {
        if self.batch.len() >= BATCH_ROWS {
            self.finish()
        } else {
            Ok(0)
        }
    }
}

impl RowSink for EngineSink<'_> {
    fn item(&mut self, i: u32, item: &Item) -> Result<u64> {
        let t = self.tables_of(None);
        self.batch.push((t.item, key::item(i), item.encode()));
        self.flush_if_full()
    }

    fn warehouse(&mut self, w: u32, wh: &Warehouse) -> Result<u64> {
        let t = self.tables_of(Some(w));
        self.batch
            .push((t.warehouse, key::warehouse(w), wh.encode()));
        Ok(0)
    }

    fn district(&mut self, w: u32, d: u32, dist: &District) -> Result<u64> {
        let t = self.tables_of(Some(w));
        self.batch
            .push((t.district, key::district(w, d), dist.encode()));
        Ok(0)
    }

    fn stock(&mut self, w: u32, i: u32, st: &Stock) -> Result<u64> {
        let t = self.tables_of(Some(w));
        self.batch.push((t.stock, key::stock(w, i), st.encode()));
        self.flush_if_full()
    }

    fn customer(&mut self, w: u32, d: u32, c: u32, cust: &Customer, h: &History) -> Result<u64> {
        let t = self.tables_of(Some(w));
        self.batch.push((
            t.customer_by_name,
            key::customer_by_name(w, d, &cust.last, &cust.first, c),
            Vec::new(),
        ));
        self.batch
            .push((t.customer, key::customer(w, d, c), cust.encode()));
        self.batch
            .push((t.history, key::history(w, d, 0, c as u64), h.encode()));
        self.flush_if_full()
    }

    fn order(
        &mut self,
        w: u32,
        d: u32,
        o: u32,
        order: &Order,
        lines: &[OrderLine],
        new_order: bool,
    ) -> Result<u64> {
        let t = self.tables_of(Some(w));
        self.batch
            .push((t.orders, key::order(w, d, o), order.encode()));
        self.batch.push((
            t.orders_by_customer,
            key::order_by_customer(w, d, order.c_id, o),
            Vec::new(),
        ));
        for (n, ol) in lines.iter().enumerate() {
            self.batch.push((
                t.order_line.clone(),
                key::order_line(w, d, o, n as u32 + 1),
                ol.encode(),
            ));
        }
        if new_order {
            self.batch
                .push((t.new_order, key::order(w, d, o), Vec::new()));
        }
        self.flush_if_full()
    }

    /// Writes the batch in one transaction (retrying conflicts).
    fn finish(&mut self) -> Result<u64> {
        if self.batch.is_empty() {
            return Ok(0);
        }
        let node = &self.loader.nodes[self.node];
        let batch = &self.batch;
        with_retries(node, |txn| {
            for (t, k, v) in batch.iter() {
                txn.put(t, k, v)?;
            }
            Ok(())
        })
        .context("loader batch")?;
        let n = self.batch.len() as u64;
        self.batch.clear();
        Ok(n)
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
    const WIDTH: usize = 30;
    let filled = ((pct / 100.0) * WIDTH as f64).round() as usize;
    let bar: String = "#".repeat(filled.min(WIDTH)) + &"-".repeat(WIDTH - filled.min(WIDTH));
    let line = format!(
        "load [{bar}] {pct:5.1}%  {rows:>9}/{total} rows  {rate:>8.0} rows/s  {secs:>5.0}s elapsed  eta {eta:>4.0}s"
    );
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}   ");
    } else {
        eprintln!("{line}");
    }
}
