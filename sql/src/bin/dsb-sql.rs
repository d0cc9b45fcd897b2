//! `dsb-sql`: a SQL shell (GlueSQL over the engine).
//!
//! ```text
//! dsb-sql [--embedded] [--data-dir DIR]                     # a cluster in this process
//! dsb-sql --config compute.toml [--node-id N]               # join a running cluster
//! dsb-sql --gtm tcp://H:P --storage tcp://H:P --key-file F --node-id N
//!         [-c "SQL; …"]... [-f FILE.sql]...                 # else statements from stdin
//! ```
//!
//! Joining a running cluster, `dsb-sql` is a compute node itself (the embedding model:
//! its own buffer pool, page locks and GTM lease), so it needs a node id no other
//! compute node of the cluster uses. `--config` takes the `compute-node` service's TOML
//! (its `[node]` table; the service keys are ignored; `--node-id` is then required, the
//! file's id being the service's) or a bare `[node]`-style table; flags override it.
//! Embedded (the default without `--config`/`--gtm`): a storage node, the GTM and the
//! compute node run in this process, in `--data-dir` (kept, and recovered the next
//! time) or in a temporary directory.
//!
//! `-c` and `-f` run their statements in order (every `-c`, then every `-f`) and stop
//! at the first error (exit status 1). Otherwise statements are read from stdin, each
//! ending with `;` (`\q` quits, `\dt` lists tables); a prompt is shown when stdin is a
//! terminal.

use clap::Parser;
use cluster::{ClusterOptions, EmbeddedCluster};
use compute_node::node::{ComputeConfig, ComputeNode};
use sql::shell::{split_statements, Session};
use sql::SqlStorage;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "dsb-sql",
    version,
    about = "SQL shell over the engine (GlueSQL)"
)]
struct Args {
    /// Start a cluster (storage node, GTM, compute node) in this process: the default
    /// when neither --config nor --gtm is given.
    #[arg(long)]
    embedded: bool,
    /// Embedded: the cluster's directory (kept; a later run recovers it). Default: a
    /// temporary directory, removed at exit.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Join a running cluster: a compute-node TOML config (its [node] table is used).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// [node.node_id] this compute node's id (> 0, unused by the cluster's other nodes).
    #[arg(long)]
    node_id: Option<u32>,
    /// [node.gtm] GTM endpoint (tcp://host:port or shm:///path).
    #[arg(long)]
    gtm: Option<String>,
    /// [node.storage] storage-node endpoint (repeatable; replaces the file's list).
    #[arg(long)]
    storage: Vec<String>,
    /// [node.key_file] file holding the cluster key.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// [node.buffer_frames] buffer-pool frames (8 KiB each).
    #[arg(long)]
    buffer_frames: Option<usize>,
    /// Tables of this namespace only (a prefix of the engine's table names).
    #[arg(long, default_value = "")]
    namespace: String,
    /// Run these statements (repeatable), then exit.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    command: Vec<String>,
    /// Run the statements of this file (repeatable), then exit.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Vec<PathBuf>,
}

/// A compute-node config: the `[node]` table of a service config (`true`), or the
/// whole file (`false`).
fn load_config(path: &PathBuf) -> Result<(ComputeConfig, bool), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let (node, service) = match table.remove("node") {
        Some(toml::Value::Table(t)) => (t, true),
        Some(_) => return Err(format!("{}: [node] must be a table", path.display())),
        None => (table, false),
    };
    let cfg = node
        .try_into()
        .map_err(|e| format!("{}: [node]: {e}", path.display()))?;
    Ok((cfg, service))
}

enum Cluster {
    Embedded(Box<EmbeddedCluster>),
    Joined,
}

fn connect(args: &Args) -> Result<(Arc<ComputeNode>, Cluster), String> {
    let join = args.config.is_some() || args.gtm.is_some();
    if join && args.embedded {
        return Err("--embedded cannot be combined with --config / --gtm".into());
    }
    if !join {
        let options = ClusterOptions {
            compute_nodes: 0,
            buffer_frames: args.buffer_frames.unwrap_or(4096),
            ..ClusterOptions::default()
        };
        let cluster = match &args.data_dir {
            Some(dir) => EmbeddedCluster::start_in(dir, options),
            None => EmbeddedCluster::start(options),
        }
        .map_err(|e| format!("embedded cluster: {e}"))?;
        let node = cluster
            .start_compute_node(args.node_id.unwrap_or(1))
            .map_err(|e| format!("embedded cluster: {e}"))?;
        return Ok((Arc::new(node), Cluster::Embedded(Box::new(cluster))));
    }
    let mut cfg = match &args.config {
        Some(path) => {
            let (cfg, service) = load_config(path)?;
            if service && args.node_id.is_none() {
                // Its node id belongs to the compute-node service it configures: joining
                // with it would fence that service.
                return Err(format!(
                    "{} configures a compute-node service whose node id is {}: pass \
                     --node-id with an id no compute node of the cluster uses",
                    path.display(),
                    cfg.node_id
                ));
            }
            cfg
        }
        None => ComputeConfig::default(),
    };
    if let Some(v) = args.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = &args.gtm {
        cfg.gtm = v.clone();
    }
    if !args.storage.is_empty() {
        cfg.storage = args.storage.clone();
    }
    if let Some(v) = &args.key_file {
        cfg.key_file = v.clone();
    }
    if let Some(v) = args.buffer_frames {
        cfg.buffer_frames = v;
    }
    let node = ComputeNode::start(&cfg).map_err(|e| format!("joining the cluster: {e}"))?;
    Ok((Arc::new(node), Cluster::Joined))
}

fn run_script(session: &mut Session, text: &str) -> bool {
    let (mut statements, rest) = split_statements(text);
    if !rest.trim().is_empty() && !split_statements(&format!("{rest};")).0.is_empty() {
        statements.push(rest.trim().to_string());
    }
    for s in statements {
        match session.run(&s) {
            Ok(out) => println!("{out}"),
            Err(e) => {
                eprintln!("{e}");
                return false;
            }
        }
    }
    true
}

fn interactive(session: &mut Session) {
    let stdin = std::io::stdin();
    let prompt = stdin.is_terminal();
    let mut pending = String::new();
    let show = |p: &str| {
        if prompt {
            print!("{p}");
            let _ = std::io::stdout().flush();
        }
    };
    show("dsb-sql> ");
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if pending.trim().is_empty() {
            match line.trim() {
                "\\q" | "quit" | "exit" => break,
                "\\dt" => {
                    match session.run("SHOW TABLES") {
                        Ok(out) => println!("{out}"),
                        Err(e) => eprintln!("{e}"),
                    }
                    show("dsb-sql> ");
                    continue;
                }
                _ => {}
            }
        }
        pending.push_str(&line);
        pending.push('\n');
        let (statements, rest) = split_statements(&pending);
        for s in statements {
            match session.run(&s) {
                Ok(out) => println!("{out}"),
                Err(e) => eprintln!("{e}"),
            }
        }
        pending = rest;
        show(if pending.trim().is_empty() {
            "dsb-sql> "
        } else {
            "     -> "
        });
    }
    let (statements, _) = split_statements(&format!("{pending};"));
    for s in statements {
        match session.run(&s) {
            Ok(out) => println!("{out}"),
            Err(e) => eprintln!("{e}"),
        }
    }
}

fn main() -> ExitCode {
    common::service::init_tracing("warn");
    let args = Args::parse();
    let (node, cluster) = match connect(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dsb-sql: {e}");
            return ExitCode::from(2);
        }
    };
    let storage = match SqlStorage::with_namespace(node.clone(), &args.namespace) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dsb-sql: {e}");
            return ExitCode::from(2);
        }
    };
    let mut session = Session::new(storage);
    let mut ok = true;
    if args.command.is_empty() && args.file.is_empty() {
        if std::io::stdin().is_terminal() {
            match &cluster {
                Cluster::Embedded(c) => eprintln!(
                    "dsb-sql: embedded cluster in {} (statements end with ';', \\q quits)",
                    c.dir().display()
                ),
                Cluster::Joined => eprintln!(
                    "dsb-sql: joined the cluster as compute node {} (statements end with ';', \\q quits)",
                    args.node_id.map_or("from the config".to_string(), |n| n.to_string())
                ),
            }
        }
        interactive(&mut session);
    } else {
        for c in &args.command {
            ok = ok && run_script(&mut session, c);
        }
        for f in &args.file {
            if !ok {
                break;
            }
            match std::fs::read_to_string(f) {
                Ok(text) => ok = run_script(&mut session, &text),
                Err(e) => {
                    eprintln!("dsb-sql: {}: {e}", f.display());
                    ok = false;
                }
            }
        }
    }
    // An open transaction is rolled back (dropping it aborts it), then the node writes
    // back and leaves.
    drop(session);
    if let Err(e) = node.shutdown() {
        eprintln!("dsb-sql: shutdown: {e}");
    }
    drop(node);
    if let Cluster::Embedded(c) = cluster {
        if let Err(e) = c.shutdown() {
            eprintln!("dsb-sql: shutdown: {e}");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
