//! PostgreSQL as a TPC-C target (`--target postgres://...`): the same driver, the same
//! inputs, the same load rules and the same twelve consistency conditions as the
//! engine, so the two tpmC figures compare like for like.
//!
//! * **Schema** ([`DDL`]): the nine tables in schema `tpcc`, primary keys as the
//!   engine's keys (HISTORY keyed by (w, d, origin, seq) like the engine's), the two
//!   secondary indexes (`customer (w, d, last, first)`, `orders (w, d, c, o)`). Money
//!   is BIGINT cents and rates INT in 1/10000 as in the engine's rows, so every sum is
//!   exact; O_CARRIER_ID and OL_DELIVERY_D are real NULLs; C_FIRST and C_LAST sort
//!   with `COLLATE "C"` (bytes, like the engine's keys) so the customer picked by last
//!   name is the same one.
//! * **Load**: the engine loader's jobs, per-job random streams and row rules
//!   ([`crate::load::generate`]), written with binary COPY by `threads` connections,
//!   one transaction per job; keys and indexes are built afterwards, then VACUUM
//!   ANALYZE and a CHECKPOINT so the run starts clean.
//! * **Transactions** ([`STATEMENTS`]): each profile of
//!   [`crate::transactions`] as prepared statements in one transaction.
//!   Read-then-write of one row is one `UPDATE ... RETURNING`, which locks the row
//!   and (at READ COMMITTED) reads its newest version, as the engine's locking read
//!   and write do. With locking reads (the default, [`PgMode`]) the transaction runs
//!   at READ COMMITTED and Delivery takes its NEW-ORDER row with `SELECT … FOR
//!   UPDATE` (a row another Delivery took meanwhile is skipped, the next one locked):
//!   a hot row costs a wait, as kits for PostgreSQL run TPC-C. With plain reads (the
//!   earlier mode) it runs at REPEATABLE READ, PostgreSQL's snapshot isolation: a write
//!   to a row that changed after the snapshot fails with SQLSTATE 40001 (first updater
//!   wins), as in the engine's plain mode; at REPEATABLE READ that holds with locking
//!   too (a locked row that changed after the snapshot still aborts).
//! * **Errors** ([`classify`]): 40001 and 40P01 are retryable, a lost connection or a
//!   server shutting down is "unavailable", anything else ends the run.
//! * **Checks** ([`CHECKS`]): each condition is one or two queries returning the
//!   first offending row, all in one REPEATABLE READ snapshot.

use crate::check::{CheckResult, Verdict, NAMES};
use crate::load::{self, JobPool, RowSink};
use crate::schema::{
    Customer, District, History, Item, Order, OrderLine, Stock, Warehouse, CUSTOMERS_PER_DISTRICT,
    DISTRICTS_PER_WAREHOUSE, ORDERS_PER_DISTRICT,
};
use crate::target::ModeReport;
use crate::target::{AttemptError, LoadRequest, OrderId, Target};
use crate::transactions::{
    stock_order, CustomerSel, DeliveryInput, Input, Locking, NewOrderInput, OrderStatusInput,
    Outcome, PaymentInput, StockLevelInput,
};
use anyhow::{anyhow, bail, Context, Result};
use parking_lot::{Condvar, Mutex};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::config::Host;
use postgres::types::{ToSql, Type};
use postgres::{Client, Config, IsolationLevel, NoTls, Row, Statement, Transaction};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The schema the tables live in (dropped and created again by every load).
pub const SCHEMA: &str = "tpcc";

/// Tables in the order they are created.
pub const TABLES: [&str; 9] = [
    "warehouse",
    "district",
    "customer",
    "history",
    "new_order",
    "orders",
    "order_line",
    "item",
    "stock",
];

/// The tables, without keys (built after the load). Widths follow clause 1.3;
/// fill factors leave room for HOT updates on the rows the transactions update.
pub const DDL: &str = r#"
CREATE TABLE warehouse (
    w_id int NOT NULL, w_name varchar(10), w_street_1 varchar(20), w_street_2 varchar(20),
    w_city varchar(20), w_state varchar(2), w_zip varchar(9),
    w_tax int NOT NULL, w_ytd bigint NOT NULL
) WITH (fillfactor = 10);
CREATE TABLE district (
    d_id int NOT NULL, d_w_id int NOT NULL, d_name varchar(10), d_street_1 varchar(20),
    d_street_2 varchar(20), d_city varchar(20), d_state varchar(2), d_zip varchar(9),
    d_tax int NOT NULL, d_ytd bigint NOT NULL, d_next_o_id int NOT NULL
) WITH (fillfactor = 10);
CREATE TABLE customer (
    c_id int NOT NULL, c_d_id int NOT NULL, c_w_id int NOT NULL,
    c_first varchar(16) COLLATE "C", c_middle varchar(2), c_last varchar(16) COLLATE "C",
    c_street_1 varchar(20), c_street_2 varchar(20), c_city varchar(20), c_state varchar(2),
    c_zip varchar(9), c_phone varchar(16), c_since timestamp, c_credit varchar(2),
    c_credit_lim bigint NOT NULL, c_discount int NOT NULL, c_balance bigint NOT NULL,
    c_ytd_payment bigint NOT NULL, c_payment_cnt int NOT NULL, c_delivery_cnt int NOT NULL,
    c_data varchar(500)
) WITH (fillfactor = 80);
CREATE TABLE history (
    h_c_id int NOT NULL, h_c_d_id int NOT NULL, h_c_w_id int NOT NULL, h_d_id int NOT NULL,
    h_w_id int NOT NULL, h_date timestamp, h_amount bigint NOT NULL, h_data varchar(24),
    h_origin int NOT NULL, h_seq bigint NOT NULL
);
CREATE TABLE new_order (
    no_o_id int NOT NULL, no_d_id int NOT NULL, no_w_id int NOT NULL
);
CREATE TABLE orders (
    o_id int NOT NULL, o_d_id int NOT NULL, o_w_id int NOT NULL, o_c_id int NOT NULL,
    o_entry_d timestamp, o_carrier_id int, o_ol_cnt int NOT NULL, o_all_local int NOT NULL
) WITH (fillfactor = 90);
CREATE TABLE order_line (
    ol_o_id int NOT NULL, ol_d_id int NOT NULL, ol_w_id int NOT NULL, ol_number int NOT NULL,
    ol_i_id int NOT NULL, ol_supply_w_id int NOT NULL, ol_delivery_d timestamp,
    ol_quantity int NOT NULL, ol_amount bigint NOT NULL, ol_dist_info varchar(24)
) WITH (fillfactor = 90);
CREATE TABLE item (
    i_id int NOT NULL, i_im_id int NOT NULL, i_name varchar(24), i_price bigint NOT NULL,
    i_data varchar(50)
);
CREATE TABLE stock (
    s_i_id int NOT NULL, s_w_id int NOT NULL, s_quantity int NOT NULL,
    s_dist_01 varchar(24), s_dist_02 varchar(24), s_dist_03 varchar(24), s_dist_04 varchar(24),
    s_dist_05 varchar(24), s_dist_06 varchar(24), s_dist_07 varchar(24), s_dist_08 varchar(24),
    s_dist_09 varchar(24), s_dist_10 varchar(24), s_ytd bigint NOT NULL,
    s_order_cnt int NOT NULL, s_remote_cnt int NOT NULL, s_data varchar(50)
) WITH (fillfactor = 80);
"#;

/// Keys and secondary indexes, built after the load; one entry per table so the
/// builds can run in parallel. The keys are the engine's keys (`schema::key`).
pub const INDEXES: [&str; 9] = [
    "ALTER TABLE warehouse ADD PRIMARY KEY (w_id)",
    "ALTER TABLE district ADD PRIMARY KEY (d_w_id, d_id)",
    "ALTER TABLE customer ADD PRIMARY KEY (c_w_id, c_d_id, c_id);
     CREATE INDEX customer_by_name ON customer (c_w_id, c_d_id, c_last, c_first)",
    "ALTER TABLE history ADD PRIMARY KEY (h_w_id, h_d_id, h_origin, h_seq)",
    "ALTER TABLE new_order ADD PRIMARY KEY (no_w_id, no_d_id, no_o_id)",
    "ALTER TABLE orders ADD PRIMARY KEY (o_w_id, o_d_id, o_id);
     CREATE INDEX orders_by_customer ON orders (o_w_id, o_d_id, o_c_id, o_id)",
    "ALTER TABLE order_line ADD PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number)",
    "ALTER TABLE item ADD PRIMARY KEY (i_id)",
    "ALTER TABLE stock ADD PRIMARY KEY (s_w_id, s_i_id)",
];

/// What to do about a failed statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Serialization failure or deadlock victim: run it again.
    Retryable,
    /// The connection is gone or the server is going away.
    Unavailable,
    Fatal,
}

/// Classifies an error by its SQLSTATE (`None`: no server error, e.g. I/O) and
/// whether the connection is closed.
pub fn classify(sqlstate: Option<&str>, connection_closed: bool) -> ErrorClass {
    match sqlstate {
        // serialization_failure, deadlock_detected
        Some("40001") | Some("40P01") => ErrorClass::Retryable,
        // connection_exception (08xxx); admin_shutdown, crash_shutdown,
        // cannot_connect_now; idle_session_timeout
        Some(s) if s.starts_with("08") => ErrorClass::Unavailable,
        Some("57P01") | Some("57P02") | Some("57P03") | Some("57P05") => ErrorClass::Unavailable,
        _ if connection_closed => ErrorClass::Unavailable,
        Some(_) => ErrorClass::Fatal,
        // No SQLSTATE: the client failed to talk to the server.
        None => ErrorClass::Unavailable,
    }
}

/// Why a profile failed.
#[derive(Debug)]
enum TxError {
    Db(postgres::Error),
    /// Data that cannot be (a missing row, a broken invariant) or bad input.
    Bad(String),
}

impl From<postgres::Error> for TxError {
    fn from(e: postgres::Error) -> Self {
        TxError::Db(e)
    }
}

fn attempt_error(e: TxError) -> AttemptError {
    match e {
        TxError::Bad(m) => AttemptError::Fatal(m),
        TxError::Db(e) => {
            let msg = db_message(&e);
            match classify(e.code().map(|c| c.code()), e.is_closed()) {
                ErrorClass::Retryable => AttemptError::Retryable {
                    msg,
                    chain_full: false,
                },
                ErrorClass::Unavailable => AttemptError::Unavailable(msg),
                ErrorClass::Fatal => AttemptError::Fatal(msg),
            }
        }
    }
}

/// The server's message with its SQLSTATE, or the client error.
fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Where a connection string points, without its password.
pub fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!(
        "host {} port {} user {} database {}",
        if hosts.is_empty() {
            "(default)".to_string()
        } else {
            hosts.join(",")
        },
        if config.get_ports().is_empty() {
            "5432".to_string()
        } else {
            config
                .get_ports()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        config.get_user().unwrap_or("(default)"),
        config.get_dbname().unwrap_or("(default)")
    )
}

/// µs since the epoch (0 = NULL) as a timestamp.
fn ts(us: u64) -> Option<SystemTime> {
    (us != 0).then(|| UNIX_EPOCH + Duration::from_micros(us))
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).expect("TPC-C ids fit in int")
}

/// PostgreSQL over SQL: a pool of connections, one per worker thread at most.
pub struct PgTarget {
    config: Config,
    where_: String,
    server_version: String,
    /// Idle sessions.
    pool: Mutex<Vec<Session>>,
    returned: Condvar,
    /// Sessions open (idle or checked out).
    open: AtomicUsize,
    max_open: usize,
    mode: PgMode,
}

/// One connection of the pool with its prepared statements (prepared on first use,
/// after the schema exists).
struct Session {
    client: Client,
    st: Option<Statements>,
}

/// The isolation level and locking the PostgreSQL target's transactions run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgMode {
    /// `true`: READ COMMITTED; `false`: REPEATABLE READ.
    pub read_committed: bool,
    pub locking: Locking,
}

impl PgMode {
    /// The like-for-like counterpart of the engine's default (locking reads at READ
    /// COMMITTED) and of its plain mode (REPEATABLE READ).
    pub fn for_locking(locking: Locking) -> PgMode {
        PgMode {
            read_committed: locking == Locking::ForUpdate,
            locking,
        }
    }

    fn level(&self) -> IsolationLevel {
        if self.read_committed {
            IsolationLevel::ReadCommitted
        } else {
            IsolationLevel::RepeatableRead
        }
    }
}

impl PgTarget {
    /// Parses `url` (`postgres://...` or `key=value ...`), connects once to check the
    /// server is there, and allows up to `terminals` connections.
    pub fn connect(url: &str, terminals: usize, mode: PgMode) -> Result<PgTarget> {
        let mut config: Config = url
            .parse()
            .with_context(|| format!("--target: not a PostgreSQL connection string: {url:?}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("tpcc");
        }
        let where_ = describe(&config);
        let mut client = open_client(&config).with_context(|| {
            format!("cannot connect to PostgreSQL ({where_}): is the server running?")
        })?;
        let server_version: String = client
            .query_one("SHOW server_version", &[])
            .context("asking the server version")?
            .get(0);
        Ok(PgTarget {
            config,
            where_,
            server_version,
            pool: Mutex::new(vec![Session { client, st: None }]),
            returned: Condvar::new(),
            open: AtomicUsize::new(1),
            max_open: terminals.max(1),
            mode,
        })
    }

    /// `SHOW server_version`.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    fn client(&self) -> Result<Client> {
        open_client(&self.config)
            .with_context(|| format!("connecting to PostgreSQL ({})", self.where_))
    }

    /// An idle session, a new one while fewer than `max_open` are open, or the next
    /// one returned.
    fn checkout(&self) -> Result<Session, AttemptError> {
        let mut pool = self.pool.lock();
        loop {
            if let Some(s) = pool.pop() {
                return Ok(s);
            }
            if self.open.load(Ordering::Relaxed) < self.max_open {
                self.open.fetch_add(1, Ordering::Relaxed);
                drop(pool);
                return match open_client(&self.config) {
                    Ok(client) => Ok(Session { client, st: None }),
                    Err(e) => {
                        self.open.fetch_sub(1, Ordering::Relaxed);
                        self.returned.notify_one();
                        Err(AttemptError::Unavailable(format!(
                            "connecting to PostgreSQL ({}): {}",
                            self.where_,
                            db_message(&e)
                        )))
                    }
                };
            }
            self.returned.wait(&mut pool);
        }
    }

    /// Back to the pool, or closed if its connection broke.
    fn checkin(&self, s: Session) {
        if s.client.is_closed() {
            self.open.fetch_sub(1, Ordering::Relaxed);
            drop(s);
        } else {
            self.pool.lock().push(s);
        }
        self.returned.notify_one();
    }
}

fn open_client(config: &Config) -> Result<Client, postgres::Error> {
    let mut c = config.connect(NoTls)?;
    c.batch_execute(&format!("SET search_path TO {SCHEMA}"))?;
    Ok(c)
}

impl Target for PgTarget {
    fn nodes(&self) -> usize {
        1
    }

    fn load(&self, req: &LoadRequest) -> Result<u64> {
        // Statements prepared before a reload would name the old tables.
        for s in self.pool.lock().iter_mut() {
            s.st = None;
        }
        let mut admin = self.client()?;
        admin
            .batch_execute(&format!(
                "SET client_min_messages TO warning;
                 DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
                 CREATE SCHEMA {SCHEMA};
                 SET search_path TO {SCHEMA};
                 {DDL}"
            ))
            .context("creating the schema")?;
        let w = req.scale.warehouses as u64;
        // The engine's total counts its two index tables; here they are indexes.
        let total = req.scale.total_rows()
            - w * DISTRICTS_PER_WAREHOUSE as u64
                * (CUSTOMERS_PER_DISTRICT + ORDERS_PER_DISTRICT) as u64;
        let jobs = load::jobs(req.scale, None);
        let rows = JobPool {
            jobs: &jobs,
            items: req.scale.items,
            c_load: req.c_load,
            seed: req.seed,
            threads: req.threads,
            progress: req.progress,
            total,
        }
        .run(&|| Ok(PgSink::new(self.client()?)))?;

        let t = std::time::Instant::now();
        self.run_parallel(&INDEXES, req.threads, "SET maintenance_work_mem TO '256MB'")
            .context("building keys and indexes")?;
        let vacuum: Vec<String> = TABLES
            .iter()
            .map(|t| format!("VACUUM (ANALYZE) {t}"))
            .collect();
        let vacuum: Vec<&str> = vacuum.iter().map(String::as_str).collect();
        self.run_parallel(&vacuum, req.threads, "")
            .context("VACUUM ANALYZE")?;
        if let Err(e) = admin.batch_execute("CHECKPOINT") {
            eprintln!(
                "warning: CHECKPOINT after the load failed ({}); the run may start with one",
                db_message(&e)
            );
        }
        if req.progress {
            eprintln!(
                "postgres: keys, indexes, VACUUM ANALYZE and CHECKPOINT in {:.1}s",
                t.elapsed().as_secs_f64()
            );
        }
        Ok(rows)
    }

    fn checks(&self, warehouses: u32, delivery_ran: bool) -> Result<Vec<CheckResult>> {
        let mut client = self.client()?;
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        // Every condition aggregates whole tables; the planner's guess of the number
        // of (w, d, c) groups in HISTORY is far too low and picks a quadratic nested
        // loop for conditions 10 and 12.
        tx.batch_execute("SET LOCAL enable_nestloop = off")?;
        let w = i32_of(warehouses);
        let (nw, nd): (i64, i64) = {
            let r = tx.query_one(
                "SELECT (SELECT count(*) FROM warehouse WHERE w_id BETWEEN 1 AND $1),
                        (SELECT count(*) FROM district WHERE d_w_id BETWEEN 1 AND $1)",
                &[&w],
            )?;
            (r.get(0), r.get(1))
        };
        if nw != warehouses as i64 || nd != warehouses as i64 * DISTRICTS_PER_WAREHOUSE as i64 {
            bail!(
                "the database has {nw} of {warehouses} warehouses and {nd} of their {} districts",
                warehouses * DISTRICTS_PER_WAREHOUSE
            );
        }
        let mut out = Vec::with_capacity(12);
        for check in &CHECKS {
            let mut failure = None;
            for (sql, detail) in check.queries {
                if let Some(row) = tx
                    .query_opt(*sql, &[&w])
                    .with_context(|| format!("condition {}", check.id))?
                {
                    failure = Some(detail(&row));
                    break;
                }
            }
            let verdict = match failure {
                _ if check.id == 11 && delivery_ran => Verdict::NotApplicable(
                    "Delivery ran: the condition only holds before the first Delivery".into(),
                ),
                Some(msg) => Verdict::Failed(msg),
                None => Verdict::Passed,
            };
            out.push(CheckResult {
                id: check.id,
                name: NAMES[check.id as usize - 1],
                verdict,
            });
        }
        tx.commit()?;
        Ok(out)
    }

    fn attempt(
        &self,
        _node: usize,
        input: &Input,
        now: u64,
        history_key: (u32, u64),
    ) -> Result<Outcome, AttemptError> {
        let mut s = self.checkout()?;
        let res = s
            .run(input, now, history_key, self.mode)
            .map_err(attempt_error);
        self.checkin(s);
        res
    }

    fn txn_mode(&self) -> ModeReport {
        ModeReport {
            isolation: if self.mode.read_committed {
                "read committed".into()
            } else {
                "repeatable read".into()
            },
            locking: match self.mode.locking {
                Locking::ForUpdate => {
                    "for-update (UPDATE … RETURNING, Delivery SELECT … FOR UPDATE)".into()
                }
                Locking::Plain => "plain (UPDATE … RETURNING, first updater wins)".into(),
            },
        }
    }

    fn missing_orders(&self, acked: &[OrderId]) -> Result<Vec<OrderId>> {
        let mut client = self.client()?;
        let mut missing = Vec::new();
        for chunk in acked.chunks(10_000) {
            let ws: Vec<i32> = chunk.iter().map(|o| i32_of(o.0)).collect();
            let ds: Vec<i32> = chunk.iter().map(|o| i32_of(o.1)).collect();
            let os: Vec<i32> = chunk.iter().map(|o| i32_of(o.2)).collect();
            for r in client.query(MISSING_ORDERS, &[&ws, &ds, &os])? {
                let (w, d, o): (i32, i32, i32) = (r.get(0), r.get(1), r.get(2));
                missing.push((w as u32, d as u32, o as u32));
            }
        }
        Ok(missing)
    }
}

const MISSING_ORDERS: &str = "SELECT a.w, a.d, a.o
    FROM unnest($1::int4[], $2::int4[], $3::int4[]) AS a(w, d, o)
    WHERE NOT EXISTS (SELECT 1 FROM orders WHERE o_w_id = a.w AND o_d_id = a.d AND o_id = a.o)
    ORDER BY 1, 2, 3";

impl PgTarget {
    /// Runs each of `scripts` on one of up to `threads` connections (each first runs
    /// `setup`).
    fn run_parallel(&self, scripts: &[&str], threads: usize, setup: &str) -> Result<()> {
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.clamp(1, scripts.len()))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        let mut c = self.client()?;
                        c.batch_execute(setup)?;
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(sql) = scripts.get(i) else {
                                return Ok(());
                            };
                            c.batch_execute(sql)
                                .map_err(|e| anyhow!("{sql}: {}", db_message(&e)))?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("thread panicked"))))
                .collect::<Result<Vec<()>>>()
                .map(|_| ())
        })
    }
}

// ---------------------------------------------------------------------------------
// Loading.

/// Buffers one job's rows per table and writes them with binary COPY in one
/// transaction when the job ends.
struct PgSink {
    client: Client,
    items: Vec<(u32, Item)>,
    warehouses: Vec<(u32, Warehouse)>,
    districts: Vec<(u32, u32, District)>,
    stock: Vec<(u32, u32, Stock)>,
    customers: Vec<(u32, u32, u32, Customer)>,
    history: Vec<(u32, u32, u32, History)>,
    orders: Vec<(u32, u32, u32, Order)>,
    lines: Vec<(u32, u32, u32, u32, OrderLine)>,
    new_orders: Vec<(u32, u32, u32)>,
}

impl PgSink {
    fn new(client: Client) -> PgSink {
        PgSink {
            client,
            items: Vec::new(),
            warehouses: Vec::new(),
            districts: Vec::new(),
            stock: Vec::new(),
            customers: Vec::new(),
            history: Vec::new(),
            orders: Vec::new(),
            lines: Vec::new(),
            new_orders: Vec::new(),
        }
    }
}

/// `COPY table (columns) FROM STDIN BINARY` of `rows`, each row as its values.
fn copy_in<T>(
    tx: &mut Transaction<'_>,
    table: &str,
    columns: &[(&str, Type)],
    rows: &[T],
    values: impl Fn(
        &T,
        &mut dyn FnMut(&[&(dyn ToSql + Sync)]) -> Result<(), postgres::Error>,
    ) -> Result<(), postgres::Error>,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let types: Vec<Type> = columns.iter().map(|c| c.1.clone()).collect();
    let sql = format!("COPY {table} ({}) FROM STDIN BINARY", names.join(", "));
    let writer = tx.copy_in(sql.as_str())?;
    let mut w = BinaryCopyInWriter::new(writer, &types);
    for r in rows {
        values(r, &mut |v| w.write(v)).map_err(|e| anyhow!("COPY {table}: {}", db_message(&e)))?;
    }
    w.finish()
        .map_err(|e| anyhow!("COPY {table}: {}", db_message(&e)))
}

impl RowSink for PgSink {
    fn item(&mut self, i: u32, item: &Item) -> Result<u64> {
        self.items.push((i, item.clone()));
        Ok(0)
    }
    fn warehouse(&mut self, w: u32, wh: &Warehouse) -> Result<u64> {
        self.warehouses.push((w, wh.clone()));
        Ok(0)
    }
    fn district(&mut self, w: u32, d: u32, dist: &District) -> Result<u64> {
        self.districts.push((w, d, dist.clone()));
        Ok(0)
    }
    fn stock(&mut self, w: u32, i: u32, st: &Stock) -> Result<u64> {
        self.stock.push((w, i, st.clone()));
        Ok(0)
    }
    fn customer(&mut self, w: u32, d: u32, c: u32, cust: &Customer, h: &History) -> Result<u64> {
        self.customers.push((w, d, c, cust.clone()));
        self.history.push((w, d, c, h.clone()));
        Ok(0)
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
        self.orders.push((w, d, o, order.clone()));
        for (n, l) in lines.iter().enumerate() {
            self.lines.push((w, d, o, n as u32 + 1, l.clone()));
        }
        if new_order {
            self.new_orders.push((w, d, o));
        }
        Ok(0)
    }

    fn finish(&mut self) -> Result<u64> {
        use Type as T;
        let mut tx = self.client.transaction()?;
        let mut n = 0;
        n += copy_in(
            &mut tx,
            "item",
            &[
                ("i_id", T::INT4),
                ("i_im_id", T::INT4),
                ("i_name", T::VARCHAR),
                ("i_price", T::INT8),
                ("i_data", T::VARCHAR),
            ],
            &self.items,
            |(i, r), w| w(&[&i32_of(*i), &i32_of(r.im_id), &r.name, &r.price, &r.data]),
        )?;
        n += copy_in(
            &mut tx,
            "warehouse",
            &[
                ("w_id", T::INT4),
                ("w_name", T::VARCHAR),
                ("w_street_1", T::VARCHAR),
                ("w_street_2", T::VARCHAR),
                ("w_city", T::VARCHAR),
                ("w_state", T::VARCHAR),
                ("w_zip", T::VARCHAR),
                ("w_tax", T::INT4),
                ("w_ytd", T::INT8),
            ],
            &self.warehouses,
            |(wid, r), w| {
                w(&[
                    &i32_of(*wid),
                    &r.name,
                    &r.street_1,
                    &r.street_2,
                    &r.city,
                    &r.state,
                    &r.zip,
                    &(r.tax as i32),
                    &r.ytd,
                ])
            },
        )?;
        n += copy_in(
            &mut tx,
            "district",
            &[
                ("d_id", T::INT4),
                ("d_w_id", T::INT4),
                ("d_name", T::VARCHAR),
                ("d_street_1", T::VARCHAR),
                ("d_street_2", T::VARCHAR),
                ("d_city", T::VARCHAR),
                ("d_state", T::VARCHAR),
                ("d_zip", T::VARCHAR),
                ("d_tax", T::INT4),
                ("d_ytd", T::INT8),
                ("d_next_o_id", T::INT4),
            ],
            &self.districts,
            |(wid, d, r), w| {
                w(&[
                    &i32_of(*d),
                    &i32_of(*wid),
                    &r.name,
                    &r.street_1,
                    &r.street_2,
                    &r.city,
                    &r.state,
                    &r.zip,
                    &(r.tax as i32),
                    &r.ytd,
                    &i32_of(r.next_o_id),
                ])
            },
        )?;
        let mut stock_cols = vec![
            ("s_i_id", T::INT4),
            ("s_w_id", T::INT4),
            ("s_quantity", T::INT4),
        ];
        const DISTS: [&str; 10] = [
            "s_dist_01",
            "s_dist_02",
            "s_dist_03",
            "s_dist_04",
            "s_dist_05",
            "s_dist_06",
            "s_dist_07",
            "s_dist_08",
            "s_dist_09",
            "s_dist_10",
        ];
        stock_cols.extend(DISTS.iter().map(|d| (*d, T::VARCHAR)));
        stock_cols.extend([
            ("s_ytd", T::INT8),
            ("s_order_cnt", T::INT4),
            ("s_remote_cnt", T::INT4),
            ("s_data", T::VARCHAR),
        ]);
        n += copy_in(
            &mut tx,
            "stock",
            &stock_cols,
            &self.stock,
            |(wid, i, r), w| {
                w(&[
                    &i32_of(*i),
                    &i32_of(*wid),
                    &i32_of(r.quantity),
                    &r.d01,
                    &r.d02,
                    &r.d03,
                    &r.d04,
                    &r.d05,
                    &r.d06,
                    &r.d07,
                    &r.d08,
                    &r.d09,
                    &r.d10,
                    &(r.ytd as i64),
                    &i32_of(r.order_cnt),
                    &i32_of(r.remote_cnt),
                    &r.data,
                ])
            },
        )?;
        n += copy_in(
            &mut tx,
            "customer",
            &[
                ("c_id", T::INT4),
                ("c_d_id", T::INT4),
                ("c_w_id", T::INT4),
                ("c_first", T::VARCHAR),
                ("c_middle", T::VARCHAR),
                ("c_last", T::VARCHAR),
                ("c_street_1", T::VARCHAR),
                ("c_street_2", T::VARCHAR),
                ("c_city", T::VARCHAR),
                ("c_state", T::VARCHAR),
                ("c_zip", T::VARCHAR),
                ("c_phone", T::VARCHAR),
                ("c_since", T::TIMESTAMP),
                ("c_credit", T::VARCHAR),
                ("c_credit_lim", T::INT8),
                ("c_discount", T::INT4),
                ("c_balance", T::INT8),
                ("c_ytd_payment", T::INT8),
                ("c_payment_cnt", T::INT4),
                ("c_delivery_cnt", T::INT4),
                ("c_data", T::VARCHAR),
            ],
            &self.customers,
            |(wid, d, c, r), w| {
                w(&[
                    &i32_of(*c),
                    &i32_of(*d),
                    &i32_of(*wid),
                    &r.first,
                    &r.middle,
                    &r.last,
                    &r.street_1,
                    &r.street_2,
                    &r.city,
                    &r.state,
                    &r.zip,
                    &r.phone,
                    &ts(r.since),
                    &r.credit,
                    &r.credit_lim,
                    &(r.discount as i32),
                    &r.balance,
                    &r.ytd_payment,
                    &i32_of(r.payment_cnt),
                    &i32_of(r.delivery_cnt),
                    &r.data,
                ])
            },
        )?;
        n += copy_in(
            &mut tx,
            "history",
            &HISTORY_COLUMNS,
            &self.history,
            |(_, _, c, h), w| {
                // The loader's HISTORY rows have origin 0 and the customer id as seq.
                w(&[
                    &i32_of(h.c_id),
                    &i32_of(h.c_d_id),
                    &i32_of(h.c_w_id),
                    &i32_of(h.d_id),
                    &i32_of(h.w_id),
                    &ts(h.date),
                    &h.amount,
                    &h.data,
                    &0i32,
                    &(*c as i64),
                ])
            },
        )?;
        n += copy_in(
            &mut tx,
            "orders",
            &[
                ("o_id", T::INT4),
                ("o_d_id", T::INT4),
                ("o_w_id", T::INT4),
                ("o_c_id", T::INT4),
                ("o_entry_d", T::TIMESTAMP),
                ("o_carrier_id", T::INT4),
                ("o_ol_cnt", T::INT4),
                ("o_all_local", T::INT4),
            ],
            &self.orders,
            |(wid, d, o, r), w| {
                w(&[
                    &i32_of(*o),
                    &i32_of(*d),
                    &i32_of(*wid),
                    &i32_of(r.c_id),
                    &ts(r.entry_d),
                    &(r.carrier_id != 0).then(|| i32_of(r.carrier_id)),
                    &i32_of(r.ol_cnt),
                    &(r.all_local as i32),
                ])
            },
        )?;
        n += copy_in(
            &mut tx,
            "order_line",
            &[
                ("ol_o_id", T::INT4),
                ("ol_d_id", T::INT4),
                ("ol_w_id", T::INT4),
                ("ol_number", T::INT4),
                ("ol_i_id", T::INT4),
                ("ol_supply_w_id", T::INT4),
                ("ol_delivery_d", T::TIMESTAMP),
                ("ol_quantity", T::INT4),
                ("ol_amount", T::INT8),
                ("ol_dist_info", T::VARCHAR),
            ],
            &self.lines,
            |(wid, d, o, num, r), w| {
                w(&[
                    &i32_of(*o),
                    &i32_of(*d),
                    &i32_of(*wid),
                    &i32_of(*num),
                    &i32_of(r.i_id),
                    &i32_of(r.supply_w_id),
                    &ts(r.delivery_d),
                    &i32_of(r.quantity),
                    &r.amount,
                    &r.dist_info,
                ])
            },
        )?;
        n += copy_in(
            &mut tx,
            "new_order",
            &[
                ("no_o_id", T::INT4),
                ("no_d_id", T::INT4),
                ("no_w_id", T::INT4),
            ],
            &self.new_orders,
            |(wid, d, o), w| w(&[&i32_of(*o), &i32_of(*d), &i32_of(*wid)]),
        )?;
        tx.commit().context("committing a load job")?;
        self.items.clear();
        self.warehouses.clear();
        self.districts.clear();
        self.stock.clear();
        self.customers.clear();
        self.history.clear();
        self.orders.clear();
        self.lines.clear();
        self.new_orders.clear();
        Ok(n)
    }
}

const HISTORY_COLUMNS: [(&str, Type); 10] = [
    ("h_c_id", Type::INT4),
    ("h_c_d_id", Type::INT4),
    ("h_c_w_id", Type::INT4),
    ("h_d_id", Type::INT4),
    ("h_w_id", Type::INT4),
    ("h_date", Type::TIMESTAMP),
    ("h_amount", Type::INT8),
    ("h_data", Type::VARCHAR),
    ("h_origin", Type::INT4),
    ("h_seq", Type::INT8),
];

// ---------------------------------------------------------------------------------
// The five transactions.

/// Declares the prepared statements of a session from one list of (field, SQL).
macro_rules! statements {
    ($($name:ident = $sql:expr;)*) => {
        /// The statements of the five profiles, prepared once per connection.
        struct Statements { $($name: Statement),* }
        /// Every statement's SQL, by name (for tests and for preparing).
        pub const STATEMENTS: &[(&str, &str)] = &[$((stringify!($name), $sql)),*];
        impl Statements {
            fn prepare(c: &mut Client) -> Result<Statements, postgres::Error> {
                Ok(Statements { $($name: c.prepare($sql)?),* })
            }
        }
    };
}

statements! {
    // New-Order (clause 2.4.2).
    no_warehouse = "SELECT w_tax FROM warehouse WHERE w_id = $1";
    no_district = "UPDATE district SET d_next_o_id = d_next_o_id + 1
        WHERE d_w_id = $1 AND d_id = $2 RETURNING d_next_o_id - 1, d_tax";
    no_customer = "SELECT c_discount, c_last, c_credit FROM customer
        WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3";
    no_order = "INSERT INTO orders (o_id, o_d_id, o_w_id, o_c_id, o_entry_d, o_carrier_id,
        o_ol_cnt, o_all_local) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7)";
    no_new_order = "INSERT INTO new_order (no_o_id, no_d_id, no_w_id) VALUES ($1, $2, $3)";
    no_item = "SELECT i_price, i_name, i_data FROM item WHERE i_id = $1";
    no_stock = "UPDATE stock SET
        s_quantity = CASE WHEN s_quantity >= $3::int + 10 THEN s_quantity - $3::int
                          ELSE s_quantity + 91 - $3::int END,
        s_ytd = s_ytd + $3::int, s_order_cnt = s_order_cnt + 1,
        s_remote_cnt = s_remote_cnt + $4::int
        WHERE s_w_id = $1 AND s_i_id = $2
        RETURNING s_data, CASE $5::int WHEN 1 THEN s_dist_01 WHEN 2 THEN s_dist_02
            WHEN 3 THEN s_dist_03 WHEN 4 THEN s_dist_04 WHEN 5 THEN s_dist_05
            WHEN 6 THEN s_dist_06 WHEN 7 THEN s_dist_07 WHEN 8 THEN s_dist_08
            WHEN 9 THEN s_dist_09 ELSE s_dist_10 END";
    no_line = "INSERT INTO order_line (ol_o_id, ol_d_id, ol_w_id, ol_number, ol_i_id,
        ol_supply_w_id, ol_delivery_d, ol_quantity, ol_amount, ol_dist_info)
        VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, $9)";
    // Payment (clause 2.5.2).
    pay_warehouse = "UPDATE warehouse SET w_ytd = w_ytd + $2 WHERE w_id = $1
        RETURNING w_name, w_street_1, w_street_2, w_city, w_state, w_zip";
    pay_district = "UPDATE district SET d_ytd = d_ytd + $3 WHERE d_w_id = $1 AND d_id = $2
        RETURNING d_name, d_street_1, d_street_2, d_city, d_state, d_zip";
    pay_customer = "UPDATE customer SET c_balance = c_balance - $4,
        c_ytd_payment = c_ytd_payment + $4, c_payment_cnt = c_payment_cnt + 1,
        c_data = CASE WHEN c_credit = 'BC' THEN left($5::text || c_data, 500) ELSE c_data END
        WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3
        RETURNING c_first, c_middle, c_last, c_street_1, c_street_2, c_city, c_state, c_zip,
            c_phone, c_since, c_credit, c_credit_lim, c_discount, c_balance";
    pay_history = "INSERT INTO history (h_c_id, h_c_d_id, h_c_w_id, h_d_id, h_w_id, h_date,
        h_amount, h_data, h_origin, h_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    // Customer by last name: all of them in C_FIRST order (clause 2.5.2.2).
    customer_by_name = "SELECT c_id FROM customer
        WHERE c_w_id = $1 AND c_d_id = $2 AND c_last = $3 ORDER BY c_first, c_id";
    // Order-Status (clause 2.6.2).
    os_customer = "SELECT c_balance, c_first, c_middle, c_last FROM customer
        WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3";
    os_last_order = "SELECT o_id, o_entry_d, o_carrier_id, o_ol_cnt FROM orders
        WHERE o_w_id = $1 AND o_d_id = $2 AND o_c_id = $3 ORDER BY o_id DESC LIMIT 1";
    os_lines = "SELECT ol_i_id, ol_supply_w_id, ol_quantity, ol_amount, ol_delivery_d
        FROM order_line WHERE ol_w_id = $1 AND ol_d_id = $2 AND ol_o_id = $3";
    // Delivery (clause 2.7.4): the district's oldest NEW-ORDER row.
    dl_new_order = "DELETE FROM new_order WHERE no_w_id = $1 AND no_d_id = $2
        AND no_o_id = (SELECT min(no_o_id) FROM new_order WHERE no_w_id = $1 AND no_d_id = $2)
        RETURNING no_o_id";
    // The same with a locking read: the oldest row nobody else holds; one a concurrent
    // Delivery deleted while this one waited for it is skipped and the next one locked
    // (LockRows sits below the LIMIT), then deleted.
    dl_new_order_for_update = "SELECT no_o_id FROM new_order WHERE no_w_id = $1 AND no_d_id = $2
        ORDER BY no_o_id LIMIT 1 FOR UPDATE";
    dl_delete_new_order = "DELETE FROM new_order WHERE no_w_id = $1 AND no_d_id = $2 AND no_o_id = $3";
    dl_order = "UPDATE orders SET o_carrier_id = $4
        WHERE o_w_id = $1 AND o_d_id = $2 AND o_id = $3 RETURNING o_c_id";
    dl_lines = "UPDATE order_line SET ol_delivery_d = $4
        WHERE ol_w_id = $1 AND ol_d_id = $2 AND ol_o_id = $3 RETURNING ol_amount";
    dl_customer = "UPDATE customer SET c_balance = c_balance + $4,
        c_delivery_cnt = c_delivery_cnt + 1 WHERE c_w_id = $1 AND c_d_id = $2 AND c_id = $3";
    // Stock-Level (clause 2.8.2).
    sl_district = "SELECT d_next_o_id FROM district WHERE d_w_id = $1 AND d_id = $2";
    sl_low = "SELECT count(DISTINCT s_i_id) FROM order_line JOIN stock
        ON s_w_id = ol_w_id AND s_i_id = ol_i_id
        WHERE ol_w_id = $1 AND ol_d_id = $2 AND ol_o_id >= $3 AND ol_o_id < $4
        AND s_quantity < $5";
}

impl Session {
    /// One attempt: begin at the mode's isolation level, run the profile, commit (or
    /// roll back New-Order's unused item). An error drops the transaction, which rolls
    /// it back.
    fn run(
        &mut self,
        input: &Input,
        now: u64,
        history_key: (u32, u64),
        mode: PgMode,
    ) -> Result<Outcome, TxError> {
        if self.st.is_none() {
            self.st = Some(Statements::prepare(&mut self.client)?);
        }
        let st = self.st.as_ref().expect("prepared above");
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(mode.level())
            .start()?;
        let now = ts(now).unwrap_or(UNIX_EPOCH);
        let out = match input {
            Input::NewOrder(i) => new_order(&mut tx, st, i, now)?,
            Input::Payment(i) => payment(&mut tx, st, i, now, history_key)?,
            Input::OrderStatus(i) => order_status(&mut tx, st, i)?,
            Input::Delivery(i) => delivery(&mut tx, st, i, now, mode.locking)?,
            Input::StockLevel(i) => stock_level(&mut tx, st, i)?,
        };
        if out == Outcome::RolledBack {
            tx.rollback()?;
        } else {
            tx.commit()?;
        }
        Ok(out)
    }
}

fn bad_home(what: &str, w: u32) -> TxError {
    TxError::Bad(format!("no {what} row for warehouse {w}"))
}

/// Clause 2.4.2, as `transactions::new_order`.
fn new_order(
    tx: &mut Transaction<'_>,
    st: &Statements,
    inp: &NewOrderInput,
    now: SystemTime,
) -> Result<Outcome, TxError> {
    let (w, d) = (i32_of(inp.w), i32_of(inp.d));
    let wh = tx
        .query_opt(&st.no_warehouse, &[&w])?
        .ok_or_else(|| bad_home("warehouse", inp.w))?;
    let w_tax: i32 = wh.get(0);
    let dist = tx
        .query_opt(&st.no_district, &[&w, &d])?
        .ok_or_else(|| bad_home("district", inp.w))?;
    let (o, d_tax): (i32, i32) = (dist.get(0), dist.get(1));
    let c = i32_of(inp.c);
    let cust = tx
        .query_opt(&st.no_customer, &[&w, &d, &c])?
        .ok_or_else(|| TxError::Bad(format!("missing customer {}/{}/{}", inp.w, inp.d, inp.c)))?;
    let c_discount: i32 = cust.get(0);
    let all_local = inp.lines.iter().all(|l| l.supply_w_id == inp.w);
    let ol_cnt = inp.lines.len() as i32;
    tx.execute(
        &st.no_order,
        &[&o, &d, &w, &c, &now, &ol_cnt, &(all_local as i32)],
    )?;
    tx.execute(&st.no_new_order, &[&o, &d, &w])?;
    let mut total = 0i64;
    for (n, line) in stock_order(&inp.lines) {
        let i_id = i32_of(line.i_id);
        let Some(item) = tx.query_opt(&st.no_item, &[&i_id])? else {
            // "Item number is not valid": the whole transaction rolls back.
            return Ok(Outcome::RolledBack);
        };
        let (price, i_data): (i64, &str) = (item.get(0), item.get(2));
        let supply = i32_of(line.supply_w_id);
        let qty = i32_of(line.quantity);
        let remote = (line.supply_w_id != inp.w) as i32;
        let stock = tx
            .query_opt(&st.no_stock, &[&supply, &i_id, &qty, &remote, &d])?
            .ok_or_else(|| {
                TxError::Bad(format!("missing stock {}/{}", line.supply_w_id, line.i_id))
            })?;
        let (s_data, dist_info): (&str, &str) = (stock.get(0), stock.get(1));
        let amount = qty as i64 * price;
        total += amount;
        // Brand/generic (displayed, not stored).
        let _brand = i_data.contains("ORIGINAL") && s_data.contains("ORIGINAL");
        tx.execute(
            &st.no_line,
            &[
                &o,
                &d,
                &w,
                &(n as i32 + 1),
                &i_id,
                &supply,
                &qty,
                &amount,
                &dist_info,
            ],
        )?;
    }
    // Displayed total: sum * (1 - C_DISCOUNT) * (1 + W_TAX + D_TAX).
    let _total =
        total as f64 * (1.0 - c_discount as f64 / 1e4) * (1.0 + (w_tax + d_tax) as f64 / 1e4);
    Ok(Outcome::Ordered { o_id: o as u32 })
}

/// The customer a selection names: by last name, the one at position ceil(n/2) in
/// C_FIRST order (clause 2.5.2.2), as `transactions::select_customer`.
fn customer_id(
    tx: &mut Transaction<'_>,
    st: &Statements,
    w: i32,
    d: i32,
    sel: &CustomerSel,
) -> Result<i32, TxError> {
    match sel {
        CustomerSel::Id(c) => Ok(i32_of(*c)),
        CustomerSel::LastName(last) => {
            let rows = tx.query(&st.customer_by_name, &[&w, &d, last])?;
            if rows.is_empty() {
                return Err(TxError::Bad(format!(
                    "no customer named {last} in warehouse {w} district {d}"
                )));
            }
            Ok(rows[(rows.len() - 1) / 2].get(0))
        }
    }
}

/// The text Payment puts in front of a bad-credit customer's C_DATA.
pub fn bad_credit_prefix(c: u32, c_d: u32, c_w: u32, d: u32, w: u32, amount: i64) -> String {
    format!(
        "{c} {c_d} {c_w} {d} {w} {}.{:02}|",
        amount / 100,
        amount % 100
    )
}

/// Clause 2.5.2, as `transactions::payment`.
fn payment(
    tx: &mut Transaction<'_>,
    st: &Statements,
    inp: &PaymentInput,
    now: SystemTime,
    history_key: (u32, u64),
) -> Result<Outcome, TxError> {
    let (w, d) = (i32_of(inp.w), i32_of(inp.d));
    let wh = tx
        .query_opt(&st.pay_warehouse, &[&w, &inp.amount])?
        .ok_or_else(|| bad_home("warehouse", inp.w))?;
    let dist = tx
        .query_opt(&st.pay_district, &[&w, &d, &inp.amount])?
        .ok_or_else(|| bad_home("district", inp.w))?;
    let (c_w, c_d) = (i32_of(inp.c_w), i32_of(inp.c_d));
    let c = customer_id(tx, st, c_w, c_d, &inp.customer)?;
    let prefix = bad_credit_prefix(c as u32, inp.c_d, inp.c_w, inp.d, inp.w, inp.amount);
    tx.query_opt(&st.pay_customer, &[&c_w, &c_d, &c, &inp.amount, &prefix])?
        .ok_or_else(|| TxError::Bad(format!("missing customer {c_w}/{c_d}/{c}")))?;
    let (w_name, d_name): (&str, &str) = (wh.get(0), dist.get(0));
    let h_data = format!("{w_name}    {d_name}");
    tx.execute(
        &st.pay_history,
        &[
            &c,
            &c_d,
            &c_w,
            &d,
            &w,
            &now,
            &inp.amount,
            &h_data,
            &i32_of(history_key.0),
            &(history_key.1 as i64),
        ],
    )?;
    Ok(Outcome::Done)
}

/// Clause 2.6.2 (read-only), as `transactions::order_status`.
fn order_status(
    tx: &mut Transaction<'_>,
    st: &Statements,
    inp: &OrderStatusInput,
) -> Result<Outcome, TxError> {
    let (w, d) = (i32_of(inp.w), i32_of(inp.d));
    let c = customer_id(tx, st, w, d, &inp.customer)?;
    tx.query_opt(&st.os_customer, &[&w, &d, &c])?
        .ok_or_else(|| TxError::Bad(format!("missing customer {w}/{d}/{c}")))?;
    let order = tx
        .query_opt(&st.os_last_order, &[&w, &d, &c])?
        .ok_or_else(|| TxError::Bad(format!("customer {w}/{d}/{c} has no order")))?;
    let (o, ol_cnt): (i32, i32) = (order.get(0), order.get(3));
    let lines = tx.query(&st.os_lines, &[&w, &d, &o])?;
    if lines.len() != ol_cnt as usize {
        return Err(TxError::Bad(format!(
            "order {w}/{d}/{o} has {} lines, O_OL_CNT {ol_cnt}",
            lines.len()
        )));
    }
    Ok(Outcome::Done)
}

/// Clause 2.7.4: one transaction over the warehouse's ten districts, as
/// `transactions::delivery`.
fn delivery(
    tx: &mut Transaction<'_>,
    st: &Statements,
    inp: &DeliveryInput,
    now: SystemTime,
    locking: Locking,
) -> Result<Outcome, TxError> {
    let w = i32_of(inp.w);
    let carrier = i32_of(inp.carrier);
    let mut skipped = 0;
    for d in 1..=DISTRICTS_PER_WAREHOUSE as i32 {
        let o: i32 = match locking {
            Locking::Plain => match tx.query_opt(&st.dl_new_order, &[&w, &d])? {
                Some(no) => no.get(0),
                None => {
                    skipped += 1;
                    continue;
                }
            },
            Locking::ForUpdate => {
                let Some(no) = tx.query_opt(&st.dl_new_order_for_update, &[&w, &d])? else {
                    skipped += 1;
                    continue;
                };
                let o: i32 = no.get(0);
                tx.execute(&st.dl_delete_new_order, &[&w, &d, &o])?;
                o
            }
        };
        let c: i32 = tx
            .query_opt(&st.dl_order, &[&w, &d, &o, &carrier])?
            .ok_or_else(|| TxError::Bad(format!("NEW_ORDER {w}/{d}/{o} has no ORDER row")))?
            .get(0);
        let sum: i64 = tx
            .query(&st.dl_lines, &[&w, &d, &o, &now])?
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .sum();
        if tx.execute(&st.dl_customer, &[&w, &d, &c, &sum])? != 1 {
            return Err(TxError::Bad(format!("missing customer {w}/{d}/{c}")));
        }
    }
    Ok(Outcome::Delivered { skipped })
}

/// Clause 2.8.2 (read-only), as `transactions::stock_level`.
fn stock_level(
    tx: &mut Transaction<'_>,
    st: &Statements,
    inp: &StockLevelInput,
) -> Result<Outcome, TxError> {
    let (w, d) = (i32_of(inp.w), i32_of(inp.d));
    let next: i32 = tx
        .query_opt(&st.sl_district, &[&w, &d])?
        .ok_or_else(|| bad_home("district", inp.w))?
        .get(0);
    let lo = (next - 20).max(0);
    let low: i64 = tx
        .query_one(&st.sl_low, &[&w, &d, &lo, &next, &i32_of(inp.threshold)])?
        .get(0);
    Ok(Outcome::LowStock { low: low as u32 })
}

// ---------------------------------------------------------------------------------
// The consistency conditions.

/// Describes an offending row.
pub type Describe = fn(&Row) -> String;

/// One condition: queries (with `$1` = warehouses) each returning the first
/// offending row if there is one, and how to describe it.
pub struct Check {
    pub id: u32,
    pub queries: &'static [(&'static str, Describe)],
}

fn money(c: i64) -> String {
    format!(
        "{}{}.{:02}",
        if c < 0 { "-" } else { "" },
        c.abs() / 100,
        c.abs() % 100
    )
}

fn null_or<T: ToString>(v: Option<T>) -> String {
    v.map_or("null".to_string(), |v| v.to_string())
}

/// Per customer: balance, YTD payment, delivered OL_AMOUNT and paid H_AMOUNT, then
/// the given filter (conditions 10 and 12).
macro_rules! concat_customer_sums {
    ($filter:literal) => {
        concat!(
            "SELECT * FROM (
                SELECT c_w_id, c_d_id, c_id, c_balance, c_ytd_payment,
                  coalesce(del.s, 0)::bigint AS delivered, coalesce(paid.s, 0)::bigint AS paid
                FROM customer
                LEFT JOIN (SELECT o_w_id, o_d_id, o_c_id, sum(ol_amount) AS s
                           FROM orders JOIN order_line
                             ON ol_w_id = o_w_id AND ol_d_id = o_d_id AND ol_o_id = o_id
                           WHERE o_w_id BETWEEN 1 AND $1 AND ol_delivery_d IS NOT NULL
                           GROUP BY 1, 2, 3) del
                  ON del.o_w_id = c_w_id AND del.o_d_id = c_d_id AND del.o_c_id = c_id
                LEFT JOIN (SELECT h_c_w_id, h_c_d_id, h_c_id, sum(h_amount) AS s FROM history
                           GROUP BY 1, 2, 3) paid
                  ON paid.h_c_w_id = c_w_id AND paid.h_c_d_id = c_d_id AND paid.h_c_id = c_id
                WHERE c_w_id BETWEEN 1 AND $1) x ",
            $filter
        )
    };
}

/// Conditions 1-12 of clause 3.3.2; details read like the engine's.
pub const CHECKS: [Check; 12] = [
    Check {
        id: 1,
        queries: &[(
            "SELECT w_id, w_ytd, coalesce(s, 0)::bigint FROM warehouse
             LEFT JOIN (SELECT d_w_id, sum(d_ytd) AS s FROM district GROUP BY d_w_id) d
               ON d_w_id = w_id
             WHERE w_id BETWEEN 1 AND $1 AND w_ytd <> coalesce(s, 0)
             ORDER BY w_id LIMIT 1",
            |r| {
                format!(
                    "warehouse {}: W_YTD {} != sum(D_YTD) {}",
                    r.get::<_, i32>(0),
                    money(r.get(1)),
                    money(r.get(2))
                )
            },
        )],
    },
    Check {
        id: 2,
        queries: &[(
            "SELECT * FROM (
                SELECT d_w_id, d_id, d_next_o_id - 1 AS next,
                  coalesce((SELECT max(o_id) FROM orders
                            WHERE o_w_id = d_w_id AND o_d_id = d_id), 0) AS max_o,
                  (SELECT max(no_o_id) FROM new_order
                   WHERE no_w_id = d_w_id AND no_d_id = d_id) AS max_no
                FROM district WHERE d_w_id BETWEEN 1 AND $1) x
             WHERE next <> max_o OR max_no <> max_o
             ORDER BY d_w_id, d_id LIMIT 1",
            |r| {
                format!(
                    "district {}/{}: D_NEXT_O_ID - 1 = {}, max(O_ID) = {}, max(NO_O_ID) = {:?}",
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i32>(2),
                    r.get::<_, i32>(3),
                    r.get::<_, Option<i32>>(4)
                )
            },
        )],
    },
    Check {
        id: 3,
        queries: &[(
            "SELECT no_w_id, no_d_id, max(no_o_id), min(no_o_id), count(*) FROM new_order
             WHERE no_w_id BETWEEN 1 AND $1 GROUP BY no_w_id, no_d_id
             HAVING max(no_o_id) - min(no_o_id) + 1 <> count(*)
             ORDER BY 1, 2 LIMIT 1",
            |r| {
                format!(
                    "district {}/{}: max(NO_O_ID) {} - min(NO_O_ID) {} + 1 != {} rows",
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i32>(2),
                    r.get::<_, i32>(3),
                    r.get::<_, i64>(4)
                )
            },
        )],
    },
    Check {
        id: 4,
        queries: &[(
            "SELECT w, d, coalesce(s, 0)::bigint, coalesce(n, 0) FROM
               (SELECT o_w_id AS w, o_d_id AS d, sum(o_ol_cnt) AS s FROM orders
                WHERE o_w_id BETWEEN 1 AND $1 GROUP BY 1, 2) o
             FULL JOIN
               (SELECT ol_w_id AS w, ol_d_id AS d, count(*) AS n FROM order_line
                WHERE ol_w_id BETWEEN 1 AND $1 GROUP BY 1, 2) l USING (w, d)
             WHERE coalesce(s, 0) <> coalesce(n, 0) ORDER BY 1, 2 LIMIT 1",
            |r| {
                format!(
                    "district {}/{}: sum(O_OL_CNT) = {}, ORDER_LINE rows = {}",
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, i64>(3)
                )
            },
        )],
    },
    Check {
        id: 5,
        queries: &[
            (
                "SELECT o_w_id, o_d_id, o_id, o_carrier_id, no_o_id IS NOT NULL FROM orders
                 LEFT JOIN new_order ON no_w_id = o_w_id AND no_d_id = o_d_id AND no_o_id = o_id
                 WHERE o_w_id BETWEEN 1 AND $1
                   AND (o_carrier_id IS NULL) <> (no_o_id IS NOT NULL)
                 ORDER BY 1, 2, 3 LIMIT 1",
                |r| {
                    format!(
                        "order {}/{}/{}: O_CARRIER_ID {} but NEW_ORDER row {}",
                        r.get::<_, i32>(0),
                        r.get::<_, i32>(1),
                        r.get::<_, i32>(2),
                        null_or(r.get::<_, Option<i32>>(3)),
                        if r.get::<_, bool>(4) {
                            "exists"
                        } else {
                            "missing"
                        }
                    )
                },
            ),
            (
                "SELECT no_w_id, no_d_id, no_o_id FROM new_order
                 WHERE no_w_id BETWEEN 1 AND $1 AND NOT EXISTS (SELECT 1 FROM orders
                   WHERE o_w_id = no_w_id AND o_d_id = no_d_id AND o_id = no_o_id)
                 ORDER BY 1, 2, 3 LIMIT 1",
                |r| {
                    format!(
                        "NEW_ORDER {}/{}/{} has no ORDER row",
                        r.get::<_, i32>(0),
                        r.get::<_, i32>(1),
                        r.get::<_, i32>(2)
                    )
                },
            ),
        ],
    },
    Check {
        id: 6,
        queries: &[
            (
                "SELECT o_w_id, o_d_id, o_id, o_ol_cnt, count(ol_number) FROM orders
                 LEFT JOIN order_line ON ol_w_id = o_w_id AND ol_d_id = o_d_id AND ol_o_id = o_id
                 WHERE o_w_id BETWEEN 1 AND $1
                 GROUP BY o_w_id, o_d_id, o_id, o_ol_cnt HAVING o_ol_cnt <> count(ol_number)
                 ORDER BY 1, 2, 3 LIMIT 1",
                |r| {
                    format!(
                        "order {}/{}/{}: O_OL_CNT {} but {} ORDER_LINE rows",
                        r.get::<_, i32>(0),
                        r.get::<_, i32>(1),
                        r.get::<_, i32>(2),
                        r.get::<_, i32>(3),
                        r.get::<_, i64>(4)
                    )
                },
            ),
            (
                "SELECT ol_w_id, ol_d_id, ol_o_id, ol_number FROM order_line
                 WHERE ol_w_id BETWEEN 1 AND $1 AND NOT EXISTS (SELECT 1 FROM orders
                   WHERE o_w_id = ol_w_id AND o_d_id = ol_d_id AND o_id = ol_o_id)
                 ORDER BY 1, 2, 3, 4 LIMIT 1",
                |r| {
                    format!(
                        "ORDER_LINE {}/{}/{}/{} has no ORDER row",
                        r.get::<_, i32>(0),
                        r.get::<_, i32>(1),
                        r.get::<_, i32>(2),
                        r.get::<_, i32>(3)
                    )
                },
            ),
        ],
    },
    Check {
        id: 7,
        queries: &[(
            "SELECT ol_w_id, ol_d_id, ol_o_id, ol_number, ol_delivery_d::text, o_carrier_id
             FROM order_line JOIN orders
               ON o_w_id = ol_w_id AND o_d_id = ol_d_id AND o_id = ol_o_id
             WHERE ol_w_id BETWEEN 1 AND $1
               AND (ol_delivery_d IS NULL) <> (o_carrier_id IS NULL)
             ORDER BY 1, 2, 3, 4 LIMIT 1",
            |r| {
                format!(
                    "ORDER_LINE {}/{}/{}/{}: OL_DELIVERY_D {} but O_CARRIER_ID {}",
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i32>(2),
                    r.get::<_, i32>(3),
                    null_or(r.get::<_, Option<String>>(4)),
                    null_or(r.get::<_, Option<i32>>(5))
                )
            },
        )],
    },
    Check {
        id: 8,
        queries: &[(
            "SELECT w_id, w_ytd, coalesce(h, 0)::bigint FROM warehouse
             LEFT JOIN (SELECT h_w_id, sum(h_amount) AS h FROM history GROUP BY h_w_id) x
               ON h_w_id = w_id
             WHERE w_id BETWEEN 1 AND $1 AND w_ytd <> coalesce(h, 0)
             ORDER BY w_id LIMIT 1",
            |r| {
                format!(
                    "warehouse {}: W_YTD {} != sum(H_AMOUNT) {}",
                    r.get::<_, i32>(0),
                    money(r.get(1)),
                    money(r.get(2))
                )
            },
        )],
    },
    Check {
        id: 9,
        queries: &[(
            "SELECT d_w_id, d_id, d_ytd, coalesce(h, 0)::bigint FROM district
             LEFT JOIN (SELECT h_w_id, h_d_id, sum(h_amount) AS h FROM history
                        GROUP BY h_w_id, h_d_id) x ON h_w_id = d_w_id AND h_d_id = d_id
             WHERE d_w_id BETWEEN 1 AND $1 AND d_ytd <> coalesce(h, 0)
             ORDER BY 1, 2 LIMIT 1",
            |r| {
                format!(
                    "district {}/{}: D_YTD {} != sum(H_AMOUNT) {}",
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    money(r.get(2)),
                    money(r.get(3))
                )
            },
        )],
    },
    Check {
        id: 10,
        queries: &[(
            // $1 is used inside CUSTOMER_SUMS.
            concat_customer_sums!("WHERE c_balance <> delivered - paid ORDER BY 1, 2, 3 LIMIT 1"),
            |r| {
                format!(
                    "customer {}/{}/{}: C_BALANCE {} != delivered {} - paid {}",
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i32>(2),
                    money(r.get(3)),
                    money(r.get(5)),
                    money(r.get(6))
                )
            },
        )],
    },
    Check {
        id: 11,
        queries: &[(
            "SELECT * FROM (
                SELECT d_w_id, d_id,
                  (SELECT count(*) FROM orders WHERE o_w_id = d_w_id AND o_d_id = d_id) AS o,
                  (SELECT count(*) FROM new_order
                   WHERE no_w_id = d_w_id AND no_d_id = d_id) AS n
                FROM district WHERE d_w_id BETWEEN 1 AND $1) x
             WHERE o - n <> 2100 ORDER BY 1, 2 LIMIT 1",
            |r| {
                let (o, n): (i64, i64) = (r.get(2), r.get(3));
                format!(
                    "district {}/{}: {o} orders - {n} new orders = {}",
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    o - n
                )
            },
        )],
    },
    Check {
        id: 12,
        queries: &[(
            concat_customer_sums!(
                "WHERE c_balance + c_ytd_payment <> delivered ORDER BY 1, 2, 3 LIMIT 1"
            ),
            |r| {
                format!(
                    "customer {}/{}/{}: C_BALANCE {} + C_YTD_PAYMENT {} != delivered {}",
                    r.get::<_, i32>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, i32>(2),
                    money(r.get(3)),
                    money(r.get(4)),
                    money(r.get(5))
                )
            },
        )],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_attempt_errors() {
        assert_eq!(classify(Some("40001"), false), ErrorClass::Retryable);
        assert_eq!(classify(Some("40P01"), false), ErrorClass::Retryable);
        assert_eq!(classify(Some("08006"), false), ErrorClass::Unavailable);
        assert_eq!(classify(Some("08003"), true), ErrorClass::Unavailable);
        assert_eq!(classify(Some("57P01"), false), ErrorClass::Unavailable);
        assert_eq!(classify(Some("57P03"), false), ErrorClass::Unavailable);
        assert_eq!(classify(None, true), ErrorClass::Unavailable);
        assert_eq!(classify(None, false), ErrorClass::Unavailable);
        // A constraint violation or a syntax error ends the run...
        assert_eq!(classify(Some("23505"), false), ErrorClass::Fatal);
        assert_eq!(classify(Some("42601"), false), ErrorClass::Fatal);
        // ...unless the connection died with it.
        assert_eq!(classify(Some("XX000"), true), ErrorClass::Unavailable);
        assert!(matches!(
            attempt_error(TxError::Bad("x".into())),
            AttemptError::Fatal(_)
        ));
    }

    #[test]
    fn keys_mirror_the_engine_keys() {
        let keys = INDEXES.join("\n");
        for k in [
            "warehouse ADD PRIMARY KEY (w_id)",
            "district ADD PRIMARY KEY (d_w_id, d_id)",
            "customer ADD PRIMARY KEY (c_w_id, c_d_id, c_id)",
            "customer (c_w_id, c_d_id, c_last, c_first)",
            "history ADD PRIMARY KEY (h_w_id, h_d_id, h_origin, h_seq)",
            "new_order ADD PRIMARY KEY (no_w_id, no_d_id, no_o_id)",
            "orders ADD PRIMARY KEY (o_w_id, o_d_id, o_id)",
            "orders (o_w_id, o_d_id, o_c_id, o_id)",
            "order_line ADD PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number)",
            "item ADD PRIMARY KEY (i_id)",
            "stock ADD PRIMARY KEY (s_w_id, s_i_id)",
        ] {
            assert!(keys.contains(k), "missing {k}");
        }
        for t in TABLES {
            assert!(DDL.contains(&format!("CREATE TABLE {t} (")), "no table {t}");
            assert!(INDEXES.iter().any(|i| i.contains(&format!("TABLE {t} "))));
        }
        // Names sort by bytes, as in the engine's customer_by_name keys.
        assert!(DDL.contains(r#"c_first varchar(16) COLLATE "C""#));
        assert!(DDL.contains(r#"c_last varchar(16) COLLATE "C""#));
    }

    #[test]
    fn statements_are_well_formed() {
        let mut names = std::collections::HashSet::new();
        for (name, sql) in STATEMENTS {
            assert!(names.insert(*name), "{name} twice");
            // Parameters are numbered from $1 without gaps.
            let max = (1..=12).filter(|i| sql.contains(&format!("${i}"))).max();
            if let Some(max) = max {
                for i in 1..=max {
                    assert!(sql.contains(&format!("${i}")), "{name}: no ${i}");
                }
            }
            assert!(!sql.contains(';'), "{name}: one statement only");
        }
        // Every profile reads and writes what the engine's does.
        let sql = |n: &str| STATEMENTS.iter().find(|s| s.0 == n).unwrap().1;
        assert!(sql("no_district").starts_with("UPDATE district"));
        assert!(sql("no_stock").contains("s_quantity + 91 - $3::int"));
        assert!(sql("pay_customer").contains("left($5::text || c_data, 500)"));
        assert!(sql("customer_by_name").contains("ORDER BY c_first"));
        assert!(sql("os_last_order").contains("ORDER BY o_id DESC LIMIT 1"));
        assert!(sql("dl_new_order").contains("min(no_o_id)"));
        assert!(sql("sl_low").contains("count(DISTINCT s_i_id)"));
    }

    #[test]
    fn checks_cover_the_twelve_conditions() {
        for (i, c) in CHECKS.iter().enumerate() {
            assert_eq!(c.id as usize, i + 1);
            assert!(!c.queries.is_empty());
            for (sql, _) in c.queries {
                assert!(sql.contains("$1"), "condition {} ignores the scale", c.id);
                assert!(sql.contains("LIMIT 1"), "condition {}", c.id);
            }
        }
        assert_eq!(NAMES.len(), CHECKS.len());
    }

    #[test]
    fn stock_rows_are_locked_in_key_order() {
        let l = |i_id, supply_w_id| crate::transactions::OrderLineInput {
            i_id,
            supply_w_id,
            quantity: 1,
        };
        let lines = [l(50, 1), l(7, 2), l(7, 1), l(50, 1), l(3, 1)];
        let order: Vec<usize> = stock_order(&lines).iter().map(|(n, _)| *n).collect();
        assert_eq!(order, [4, 2, 0, 3, 1]);
    }

    #[test]
    fn payment_data_prefix_matches_the_engine() {
        assert_eq!(
            bad_credit_prefix(7, 3, 2, 4, 1, 123_405),
            "7 3 2 4 1 1234.05|"
        );
        assert_eq!(bad_credit_prefix(1, 1, 1, 1, 1, 100), "1 1 1 1 1 1.00|");
    }

    #[test]
    fn times_and_descriptions() {
        assert_eq!(ts(0), None);
        assert_eq!(
            ts(1_500_000).unwrap(),
            UNIX_EPOCH + Duration::from_millis(1500)
        );
        let c: Config = "postgres://u:secret@/db?host=/tmp/sock".parse().unwrap();
        let d = describe(&c);
        assert!(d.contains("/tmp/sock") && d.contains("db") && d.contains("user u"));
        assert!(!d.contains("secret"));
        assert_eq!(money(-1000), "-10.00");
        assert_eq!(money(5), "0.05");
    }

    /// Records what a loader job hands to its sink.
    #[derive(Default)]
    struct Record(Vec<String>);

    impl RowSink for Record {
        fn item(&mut self, i: u32, item: &Item) -> Result<u64> {
            self.0.push(format!("{i} {item:?}"));
            Ok(0)
        }
        fn warehouse(&mut self, w: u32, wh: &Warehouse) -> Result<u64> {
            self.0.push(format!("{w} {wh:?}"));
            Ok(0)
        }
        fn district(&mut self, w: u32, d: u32, dist: &District) -> Result<u64> {
            self.0.push(format!("{w} {d} {dist:?}"));
            Ok(0)
        }
        fn stock(&mut self, w: u32, i: u32, st: &Stock) -> Result<u64> {
            self.0.push(format!("{w} {i} {st:?}"));
            Ok(0)
        }
        fn customer(&mut self, w: u32, d: u32, c: u32, cu: &Customer, h: &History) -> Result<u64> {
            let (cu, h) = (
                Customer {
                    since: 0,
                    ..cu.clone()
                },
                History {
                    date: 0,
                    ..h.clone()
                },
            );
            self.0.push(format!("{w} {d} {c} {cu:?} {h:?}"));
            Ok(0)
        }
        fn order(
            &mut self,
            w: u32,
            d: u32,
            o: u32,
            order: &Order,
            lines: &[OrderLine],
            no: bool,
        ) -> Result<u64> {
            self.0
                .push(format!("{w} {d} {o} {} {} {no}", order.c_id, lines.len()));
            Ok(0)
        }
        fn finish(&mut self) -> Result<u64> {
            Ok(0)
        }
    }

    /// The PostgreSQL loader draws the same rows as the engine's: same jobs, same
    /// per-job streams, same rules.
    #[test]
    fn load_jobs_are_deterministic() {
        let scale = crate::load::Scale {
            warehouses: 2,
            items: 100,
        };
        let c_load = crate::random::NuRandConstants::for_load(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1),
        );
        let run = || {
            let mut rec = Record::default();
            for (j, job) in crate::load::jobs(scale, None).iter().enumerate() {
                let mut rng = crate::load::job_rng(7, j);
                crate::load::generate(job, &mut rng, scale.items, &c_load, &mut rec).unwrap();
            }
            rec.0
        };
        let a = run();
        assert_eq!(a, run());
        // 100 items, then per warehouse 1 + 10 districts, 100 stock, 30,000 customers
        // and 30,000 orders.
        assert_eq!(a.len(), 100 + 2 * (11 + 100 + 30_000 + 30_000));
    }
}
