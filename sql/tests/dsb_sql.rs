//! The `dsb-sql` binary: embedded mode with `-c`, and two shells joined to one running
//! cluster as compute nodes 11 and 12 at the same time, each seeing the other's
//! commits.

use cluster::{ClusterOptions, EmbeddedCluster};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dsb-sql");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("dsb-sql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn embedded_mode_runs_statements_and_keeps_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let data = data.to_str().unwrap();
    let (ok, out, err) = run(&[
        "--data-dir",
        data,
        "-c",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); \
         INSERT INTO t VALUES (1, 'a;b'), (2, 'c')",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "CREATE TABLE\nINSERT 2\n");
    let (ok, out, err) = run(&["--data-dir", data, "-c", "SELECT * FROM t ORDER BY id DESC"]);
    assert!(ok, "{err}");
    assert_eq!(out, "id | name\n---+-----\n2  | c\n1  | a;b\n(2 rows)\n");
    // The first error stops the script and sets the exit status.
    let (ok, out, err) = run(&["--data-dir", data, "-c", "SELECT * FROM nope; SELECT 1"]);
    assert!(!ok);
    assert_eq!(out, "");
    assert!(err.contains("ERROR") && err.contains("nope"), "{err}");
}

/// Reads lines from a shell's stdout until one equals `last`.
fn read_until(lines: &mut impl Iterator<Item = std::io::Result<String>>, last: &str) -> String {
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in lines.by_ref() {
        let line = line.expect("stdout");
        out.push_str(&line);
        out.push('\n');
        if line == last || Instant::now() > deadline {
            break;
        }
    }
    out
}

#[test]
fn two_shells_on_two_compute_nodes_see_each_others_commits() {
    let cluster = EmbeddedCluster::start(ClusterOptions {
        compute_nodes: 0,
        storage_memory: 64 << 20,
        pages_per_storage_node: 1 << 16,
        buffer_frames: 1024,
        ..ClusterOptions::default()
    })
    .unwrap();
    let config = cluster.dir().join("sql-node.toml");
    let storage: Vec<String> = cluster
        .storage_endpoints()
        .iter()
        .map(|e| format!("{:?}", e.to_string()))
        .collect();
    std::fs::write(
        &config,
        format!(
            "[node]\ngtm = {:?}\nstorage = [{}]\nkey_file = {:?}\nbuffer_frames = 1024\n",
            cluster.gtm_endpoint().to_string(),
            storage.join(", "),
            cluster.key_file(),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // Shell A stays connected (compute node 11) while shell B (node 12) comes and goes.
    let mut a = Command::new(BIN)
        .args(["--config", config, "--node-id", "11"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut a_in = a.stdin.take().unwrap();
    let mut a_out = BufReader::new(a.stdout.take().unwrap()).lines();
    writeln!(
        a_in,
        "CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER);\n\
         INSERT INTO counters VALUES ('a', 1), ('b', 1);"
    )
    .unwrap();
    assert_eq!(
        read_until(&mut a_out, "INSERT 2"),
        "CREATE TABLE\nINSERT 2\n"
    );

    let (ok, out, err) = run(&[
        "--config",
        config,
        "--node-id",
        "12",
        "-c",
        "UPDATE counters SET n = n + 10 WHERE name = 'b'; SELECT * FROM counters",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "UPDATE 1\nname | n\n-----+---\na    | 1\nb    | 11\n(2 rows)\n"
    );

    writeln!(a_in, "SELECT * FROM counters;").unwrap();
    assert_eq!(
        read_until(&mut a_out, "(2 rows)"),
        "name | n\n-----+---\na    | 1\nb    | 11\n(2 rows)\n"
    );
    writeln!(a_in, "UPDATE counters SET n = n * 100 WHERE name = 'a';").unwrap();
    assert_eq!(read_until(&mut a_out, "UPDATE 1"), "UPDATE 1\n");
    let (ok, out, err) = run(&[
        "--config",
        config,
        "--node-id",
        "12",
        "-c",
        "SELECT n FROM counters WHERE name = 'a'",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "n\n---\n100\n(1 row)\n");
    drop(a_in);
    assert!(a.wait().unwrap().success());
}
