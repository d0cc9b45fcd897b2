//! SQL sessions on several compute nodes of one embedded cluster: what one node commits
//! the others see, conflicts surface as retryable errors, large rows, clear errors, and
//! a bank in SQL with its invariants checked while it runs.

use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::node::ComputeNode;
use gluesql_core::prelude::{Error, Glue, Payload, Value};
use sql::{is_retryable, SqlStorage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Cluster {
    nodes: Vec<Arc<ComputeNode>>,
    _cluster: EmbeddedCluster,
}

fn cluster(nodes: u32) -> Cluster {
    common::service::init_tracing("warn");
    let c = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 0,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 16,
        buffer_frames: 2048,
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let nodes = (1..=nodes)
        .map(|id| Arc::new(c.start_compute_node(id).expect("compute node")))
        .collect();
    Cluster { nodes, _cluster: c }
}

fn session(node: &Arc<ComputeNode>) -> Glue<SqlStorage> {
    Glue::new(SqlStorage::new(node.clone()).expect("storage"))
}

fn exec(glue: &mut Glue<SqlStorage>, sql: &str) -> Payload {
    let mut p = glue.execute(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    p.pop().expect("a payload")
}

fn rows(glue: &mut Glue<SqlStorage>, sql: &str) -> Vec<Vec<Value>> {
    match exec(glue, sql) {
        Payload::Select { rows, .. } => rows,
        p => panic!("{sql}: not a select: {p:?}"),
    }
}

fn one_i64(glue: &mut Glue<SqlStorage>, sql: &str) -> i64 {
    match rows(glue, sql).as_slice() {
        [row] => match row.as_slice() {
            [Value::I64(v)] => *v,
            r => panic!("{sql}: {r:?}"),
        },
        r => panic!("{sql}: {r:?}"),
    }
}

#[test]
fn each_node_sees_the_others_commits() {
    let c = cluster(2);
    let (mut a, mut b) = (session(&c.nodes[0]), session(&c.nodes[1]));
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
    exec(&mut a, "INSERT INTO t VALUES (1, 'from a')");
    assert_eq!(
        rows(&mut b, "SELECT v FROM t WHERE id = 1"),
        vec![vec![Value::Str("from a".into())]]
    );
    exec(&mut b, "INSERT INTO t VALUES (2, 'from b')");
    exec(&mut b, "UPDATE t SET v = 'b was here' WHERE id = 1");
    assert_eq!(
        rows(&mut a, "SELECT id, v FROM t"),
        vec![
            vec![Value::I64(1), Value::Str("b was here".into())],
            vec![Value::I64(2), Value::Str("from b".into())],
        ]
    );
    // An open transaction keeps its snapshot; a new one sees the commit.
    exec(&mut a, "BEGIN");
    assert_eq!(one_i64(&mut a, "SELECT COUNT(*) FROM t"), 2);
    exec(&mut b, "INSERT INTO t VALUES (3, 'later')");
    assert_eq!(one_i64(&mut a, "SELECT COUNT(*) FROM t"), 2);
    exec(&mut a, "COMMIT");
    assert_eq!(one_i64(&mut a, "SELECT COUNT(*) FROM t"), 3);
    // Uncommitted rows stay invisible to the other node; a rollback drops them.
    exec(&mut b, "BEGIN");
    exec(&mut b, "DELETE FROM t WHERE id = 3");
    exec(&mut b, "CREATE TABLE u (x INTEGER)");
    assert_eq!(one_i64(&mut a, "SELECT COUNT(*) FROM t"), 3);
    assert!(a.execute("SELECT * FROM u").is_err(), "u is not committed");
    exec(&mut b, "ROLLBACK");
    assert_eq!(one_i64(&mut b, "SELECT COUNT(*) FROM t"), 3);
    assert!(b.execute("SELECT * FROM u").is_err(), "u was rolled back");
    // DDL from either node: a dropped table is gone everywhere, and a new one of the
    // same name starts empty.
    exec(&mut b, "DROP TABLE t");
    assert!(a.execute("SELECT * FROM t").is_err());
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY)");
    assert_eq!(one_i64(&mut b, "SELECT COUNT(*) FROM t"), 0);
}

#[test]
fn a_lost_race_is_a_retryable_error_and_the_retry_commits() {
    let c = cluster(2);
    let (mut a, mut b) = (session(&c.nodes[0]), session(&c.nodes[1]));
    exec(
        &mut a,
        "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER)",
    );
    exec(&mut a, "INSERT INTO acct VALUES (1, 100)");
    exec(&mut a, "BEGIN");
    assert_eq!(one_i64(&mut a, "SELECT bal FROM acct WHERE id = 1"), 100);
    // b updates the row and commits after a's snapshot: a's update loses.
    exec(&mut b, "UPDATE acct SET bal = bal + 1 WHERE id = 1");
    let err = a
        .execute("UPDATE acct SET bal = bal + 10 WHERE id = 1")
        .expect_err("first updater wins");
    assert!(is_retryable(&err), "{err:?}");
    let Error::StorageMsg(m) = &err else {
        unreachable!()
    };
    assert!(m.contains("rolled back") && m.contains("retried"), "{m}");
    // The transaction is over: later statements say so until ROLLBACK.
    let later = a
        .execute("SELECT * FROM acct")
        .expect_err("failed transaction");
    assert!(format!("{later:?}").contains("ROLLBACK"), "{later:?}");
    exec(&mut a, "ROLLBACK");
    exec(&mut a, "BEGIN");
    exec(&mut a, "UPDATE acct SET bal = bal + 10 WHERE id = 1");
    exec(&mut a, "COMMIT");
    assert_eq!(one_i64(&mut b, "SELECT bal FROM acct WHERE id = 1"), 111);
    // COMMIT of a failed transaction reports the failure (and ends it).
    exec(&mut a, "BEGIN");
    assert_eq!(one_i64(&mut a, "SELECT bal FROM acct WHERE id = 1"), 111);
    exec(&mut b, "UPDATE acct SET bal = 0 WHERE id = 1");
    assert!(a.execute("DELETE FROM acct WHERE id = 1").is_err());
    let err = a.execute("COMMIT").expect_err("rolled back");
    assert!(is_retryable(&err), "{err:?}");
    assert_eq!(one_i64(&mut a, "SELECT bal FROM acct WHERE id = 1"), 0);
}

#[test]
fn large_rows_are_split_and_reassembled() {
    let c = cluster(2);
    let (mut a, mut b) = (session(&c.nodes[0]), session(&c.nodes[1]));
    exec(
        &mut a,
        "CREATE TABLE doc (id INTEGER PRIMARY KEY, body TEXT)",
    );
    exec(&mut a, "CREATE TABLE log (body TEXT)");
    exec(&mut a, "CREATE INDEX doc_body ON doc (id + 1)");
    let big = "x".repeat(20_000);
    exec(
        &mut a,
        &format!("INSERT INTO doc VALUES (1, '{big}'), (2, 'small')"),
    );
    exec(
        &mut a,
        &format!("INSERT INTO log VALUES ('{big}'), ('tail')"),
    );
    let len = |g: &mut Glue<SqlStorage>, sql: &str| -> Vec<usize> {
        rows(g, sql)
            .into_iter()
            .map(|r| match &r[0] {
                Value::Str(s) => s.len(),
                v => panic!("{v:?}"),
            })
            .collect()
    };
    assert_eq!(len(&mut b, "SELECT body FROM doc"), vec![20_000, 5]);
    assert_eq!(len(&mut b, "SELECT body FROM log"), vec![20_000, 4]);
    // Shrink, grow and delete: no chunk of an old version is left behind.
    exec(&mut b, "UPDATE doc SET body = 'short now' WHERE id = 1");
    exec(
        &mut b,
        &format!("UPDATE doc SET body = '{big}{big}' WHERE id = 2"),
    );
    assert_eq!(len(&mut a, "SELECT body FROM doc"), vec![9, 40_000]);
    assert_eq!(
        len(&mut a, "SELECT body FROM doc WHERE id + 1 = 3"),
        vec![40_000]
    );
    exec(&mut a, "DELETE FROM doc WHERE id = 2");
    assert_eq!(len(&mut b, "SELECT body FROM doc"), vec![9]);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let c = cluster(1);
    let mut a = session(&c.nodes[0]);
    for bad in [
        "SELECT * FROM nowhere",
        "INSERT INTO nowhere VALUES (1)",
        "DROP TABLE nowhere",
        "SELEC 1",
        "COMMIT; ROLLBACK; SELECT 1 FROM nowhere",
    ] {
        assert!(a.execute(bad).is_err(), "{bad}");
    }
    exec(&mut a, "CREATE TABLE k (id TEXT PRIMARY KEY)");
    let long = "k".repeat(5_000);
    let err = a
        .execute(format!("INSERT INTO k VALUES ('{long}')"))
        .expect_err("key too long");
    assert!(format!("{err:?}").contains("too long"), "{err:?}");
    assert!(a.execute("BEGIN; BEGIN").is_err(), "nested BEGIN");
    exec(&mut a, "ROLLBACK");
    // Decimal keys sort as numbers (also fractions of different scales).
    exec(&mut a, "CREATE TABLE d (x DECIMAL PRIMARY KEY)");
    exec(
        &mut a,
        "INSERT INTO d VALUES (0.5), (0.25), (-1.5), (-1.25), (10), (2), (-0.125)",
    );
    let got: Vec<String> = rows(&mut a, "SELECT x FROM d")
        .into_iter()
        .map(|r| match &r[0] {
            Value::Decimal(d) => d.to_string(),
            v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(got, ["-1.5", "-1.25", "-0.125", "0.25", "0.5", "2", "10"]);
}

/// Runs one transfer as a SQL transaction until it commits; `None` when `from` had
/// less than `amount`. Returns the attempts it took.
fn transfer(
    glue: &mut Glue<SqlStorage>,
    id: u64,
    from: i64,
    to: i64,
    amount: i64,
) -> (Option<()>, u64) {
    for attempt in 1.. {
        let body = (|| -> Result<Option<()>, Error> {
            glue.execute("BEGIN")?;
            // Both rows in key order, so two transfers never wait in a cycle (a cycle
            // would end too, by a wound, just later).
            let (first, second) = if from < to {
                (
                    format!(
                        "UPDATE accounts SET balance = balance - {amount} \
                         WHERE id = {from} AND balance >= {amount}"
                    ),
                    format!("UPDATE accounts SET balance = balance + {amount} WHERE id = {to}"),
                )
            } else {
                (
                    format!("UPDATE accounts SET balance = balance + {amount} WHERE id = {to}"),
                    format!(
                        "UPDATE accounts SET balance = balance - {amount} \
                         WHERE id = {from} AND balance >= {amount}"
                    ),
                )
            };
            let mut updated = Vec::new();
            for sql in [first, second] {
                match glue.execute(sql)?.pop() {
                    Some(Payload::Update(n)) => updated.push(n),
                    p => panic!("update answered {p:?}"),
                }
            }
            if updated != [1, 1] {
                glue.execute("ROLLBACK")?;
                return Ok(None);
            }
            glue.execute(format!(
                "INSERT INTO ledger VALUES ({id}, {from}, {to}, {amount})"
            ))?;
            glue.execute("COMMIT")?;
            Ok(Some(()))
        })();
        match body {
            Ok(done) => return (done, attempt),
            Err(e) if is_retryable(&e) => {
                let _ = glue.execute("ROLLBACK");
            }
            Err(e) => panic!("transfer {id}: {e:?}"),
        }
    }
    unreachable!()
}

#[test]
fn a_bank_in_sql_on_three_nodes_conserves_money() {
    const ACCOUNTS: i64 = 8;
    const START: i64 = 1_000;
    const THREADS_PER_NODE: u64 = 2;
    const TRANSFERS: u64 = 40;
    let c = cluster(3);
    let mut setup = session(&c.nodes[0]);
    exec(
        &mut setup,
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
    );
    exec(
        &mut setup,
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER)",
    );
    let values: Vec<String> = (0..ACCOUNTS).map(|i| format!("({i}, {START})")).collect();
    exec(
        &mut setup,
        &format!("INSERT INTO accounts VALUES {}", values.join(", ")),
    );
    let total = ACCOUNTS * START;

    let committed = Mutex::new(Vec::<(i64, i64, i64)>::new());
    let attempts = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let reads = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for (n, node) in c.nodes.iter().enumerate() {
            for t in 0..THREADS_PER_NODE {
                let (committed, attempts, refused) = (&committed, &attempts, &refused);
                workers.push(s.spawn(move || {
                    let mut glue = session(node);
                    let worker = n as u64 * THREADS_PER_NODE + t;
                    for i in 0..TRANSFERS {
                        let id = worker * 1_000 + i;
                        let from = ((worker * 5 + i * 3) % ACCOUNTS as u64) as i64;
                        let to = (from + 1 + (i % (ACCOUNTS as u64 - 1)) as i64) % ACCOUNTS;
                        let amount = 1 + (i as i64 * 37 + worker as i64) % 300;
                        let (outcome, tries) = transfer(&mut glue, id, from, to, amount);
                        attempts.fetch_add(tries, Ordering::Relaxed);
                        match outcome {
                            Some(()) => committed.lock().unwrap().push((from, to, amount)),
                            None => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            // A reader per node: every snapshot (one statement, or a transaction of
            // two statements) sees the conserved total.
            let (done, reads) = (&done, &reads);
            s.spawn(move || {
                let mut glue = session(node);
                while !done.load(Ordering::Relaxed) {
                    let sum = one_i64(&mut glue, "SELECT SUM(balance) FROM accounts");
                    assert_eq!(sum, total, "node {} saw a torn total", n + 1);
                    exec(&mut glue, "BEGIN");
                    let a = one_i64(&mut glue, "SELECT SUM(balance) FROM accounts");
                    let b = one_i64(&mut glue, "SELECT SUM(balance) FROM accounts WHERE id >= 0");
                    exec(&mut glue, "COMMIT");
                    assert_eq!((a, b), (total, total), "node {}", n + 1);
                    reads.fetch_add(3, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        for w in workers {
            w.join().expect("worker");
        }
        done.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();

    let committed = committed.into_inner().unwrap();
    let mut expected: HashMap<i64, i64> = (0..ACCOUNTS).map(|i| (i, START)).collect();
    for (from, to, amount) in &committed {
        *expected.get_mut(from).unwrap() -= amount;
        *expected.get_mut(to).unwrap() += amount;
    }
    for (n, node) in c.nodes.iter().enumerate() {
        let mut glue = session(node);
        let balances = rows(&mut glue, "SELECT id, balance FROM accounts");
        let got: HashMap<i64, i64> = balances
            .iter()
            .map(|r| match r.as_slice() {
                [Value::I64(id), Value::I64(b)] => (*id, *b),
                r => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(got, expected, "node {}: balances", n + 1);
        assert_eq!(got.values().sum::<i64>(), total);
        assert!(got.values().all(|b| *b >= 0), "no overdraft: {got:?}");
        // The ledger committed with the transfers: exactly the recorded ones.
        let ledger = one_i64(&mut glue, "SELECT COUNT(*) FROM ledger");
        assert_eq!(ledger as usize, committed.len(), "node {}: ledger", n + 1);
        let net = rows(
            &mut glue,
            "SELECT src, SUM(amount) FROM ledger GROUP BY src",
        );
        for r in net {
            let [Value::I64(src), Value::I64(out)] = r.as_slice() else {
                panic!("{r:?}")
            };
            let sent: i64 = committed
                .iter()
                .filter(|(f, _, _)| f == src)
                .map(|(_, _, a)| a)
                .sum();
            assert_eq!(*out, sent, "node {}: ledger of account {src}", n + 1);
        }
    }
    let workers = c.nodes.len() as u64 * THREADS_PER_NODE;
    println!(
        "bank: {} transfers by {workers} threads on {} nodes in {elapsed:.2?}: {} committed, \
         {} refused (insufficient funds), {} attempts ({} retried); {} snapshot reads \
         during the run saw the total {total}",
        workers * TRANSFERS,
        c.nodes.len(),
        committed.len(),
        refused.load(Ordering::Relaxed),
        attempts.load(Ordering::Relaxed),
        attempts.load(Ordering::Relaxed) - workers * TRANSFERS,
        reads.load(Ordering::Relaxed),
    );
    assert!(!committed.is_empty());
}
