//! A cluster of spawned processes: the three service binaries as separate local
//! processes — one `storage-node`, one `gtm`, N `compute-node`s — over loopback `tcp`
//! or `shm`, configured from TOML files this module writes into a run directory,
//! stopped (SIGTERM, clean shutdown) when the run ends. Clients reach the compute nodes
//! over gRPC (`ProcessCluster::compute_addrs`): the TPC-C harness's `--cluster spawn`
//! and the history tests' process mode.
//!
//! The same [`ProcessCluster`] serves the fault-injection runs: it can `kill -9` a
//! service and start it again from the same config, data directory and ports.
//!
//! Binaries are taken from the directory of the running `tpcc` executable (override:
//! `DSB_BIN_DIR`). Under `cargo run` (the `CARGO` variable is set) they are first
//! built with the same profile and target directory, so `cargo run --release -p tpcc
//! -- --cluster spawn` works on a fresh clone.

use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How services talk to each other (compute nodes always serve gRPC on loopback TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SpawnTransport {
    Tcp,
    Shm,
}

#[derive(Clone, Debug)]
pub struct SpawnOptions {
    pub transport: SpawnTransport,
    pub compute_nodes: usize,
    pub buffer_frames: usize,
    pub storage_memory_mb: u64,
    /// `lazy` or `eager`.
    pub lock_mode: &'static str,
    /// `wound_wait`, `wait_die` or `no_wait` (the compute nodes' `wait_policy`).
    pub wait_policy: &'static str,
    /// The client API over TLS (a test CA and server certificate in `certs/`);
    /// clients authenticate with a token (`client-tokens`) either way.
    pub client_tls: bool,
    /// GTM lease in milliseconds (heartbeats go every lease/10).
    pub lease_ms: u64,
    /// The storage node's redo segment size in MiB (default: the storage node's, 64).
    pub redo_segment_mb: Option<u64>,
    /// The storage node's `redo_retain` in MiB (default: 4 segments with
    /// `redo_segment_mb`, else the storage node's own).
    pub redo_retain_mb: Option<u64>,
    /// The GTM's `freeze_after_txns` (default: the GTM's own).
    pub freeze_after_txns: Option<u64>,
    /// Run directory (configs, data, logs); default: a fresh one under the temp dir,
    /// removed after a clean stop.
    pub dir: Option<PathBuf>,
}

/// One service process.
pub struct Service {
    pub name: String,
    bin: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    out: PathBuf,
    log: PathBuf,
}

impl Service {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running local cluster of service processes.
pub struct ProcessCluster {
    pub dir: PathBuf,
    remove_dir: bool,
    services: Vec<Service>,
    /// gRPC `host:port` of each compute node.
    pub compute_addrs: Vec<String>,
    /// How a client reaches the compute nodes: the token of `client-tokens` (and the
    /// test CA, with `client_tls`).
    pub client: common::compute::ConnectOptions,
}

/// Where the service binaries are; builds them first under `cargo run` / `cargo test`.
fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("DSB_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .to_path_buf();
    // Under `cargo run` (or `cargo test`: then the exe is in deps/), build the services
    // with the same profile into the same target directory.
    let dir = if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    };
    if let Some(cargo) = std::env::var_os("CARGO") {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if workspace.join("Cargo.toml").exists() {
            let target_dir = dir
                .parent()
                .ok_or_else(|| anyhow!("{} has no parent directory", dir.display()))?;
            let mut cmd = Command::new(cargo);
            cmd.current_dir(&workspace)
                .args([
                    "build",
                    "-q",
                    "-p",
                    "storage-node",
                    "-p",
                    "gtm",
                    "-p",
                    "compute-node",
                ])
                .arg("--target-dir")
                .arg(target_dir);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = cmd
                .status()
                .context("running cargo build for the service binaries")?;
            if !st.success() {
                bail!("building the service binaries failed ({st})");
            }
        }
    }
    for b in ["storage-node", "gtm", "compute-node"] {
        if !dir.join(b).exists() {
            bail!(
                "{} not found: build the services first (cargo build --release -p storage-node \
                 -p gtm -p compute-server) or set DSB_BIN_DIR",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

impl ProcessCluster {
    /// Writes the configs, starts storage node, GTM and compute nodes in that order and
    /// waits until each prints its `READY` line.
    pub fn start(o: &SpawnOptions) -> Result<ProcessCluster> {
        if o.compute_nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        let bins = bin_dir()?;
        let (dir, remove_dir) = match &o.dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!("tpcc-spawn-{}", std::process::id())),
                true,
            ),
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let key = dir.join("cluster.key");
        if !key.exists() {
            let k: [u8; 32] = rand::random();
            let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
            fs::write(&key, hex)?;
        }
        // Client credentials: a token for the harness, and a test CA with a server
        // certificate for TLS.
        let tokens = dir.join("client-tokens");
        if !tokens.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            let line = format!("harness {}\n", common::compute::auth::random_token());
            fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&tokens)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
                .with_context(|| format!("writing {}", tokens.display()))?;
        }
        let mut client =
            common::compute::ConnectOptions::token_file(&tokens).map_err(anyhow::Error::msg)?;
        let certs = dir.join("certs");
        let mut tls_keys = String::new();
        if o.client_tls {
            if !certs.join("server.pem").exists() {
                compute_server::tls::make_test_pki(
                    &certs,
                    &["localhost".into(), "127.0.0.1".into()],
                    &[],
                )
                .map_err(anyhow::Error::msg)?;
            }
            tls_keys = format!(
                "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
                certs.join("server.pem").display().to_string(),
                certs.join("server.key").display().to_string()
            );
            client = client.with_tls(common::compute::ClientTls {
                ca: certs.join("ca.pem"),
                domain: Some("localhost".into()),
                identity: None,
            });
        }
        let transport = match o.transport {
            SpawnTransport::Tcp => "tcp",
            SpawnTransport::Shm => "shm",
        };
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        // Over tcp every service binds port 0 at its first start and reports the port
        // it got in its READY line; its config is then rewritten with that port, so a
        // restart binds the same one. (Picking free ports beforehand raced with every
        // other socket on the machine.)
        let storage_listen = match o.transport {
            SpawnTransport::Tcp => "127.0.0.1:0".to_string(),
            SpawnTransport::Shm => dir.join("storage.sock").display().to_string(),
        };
        // Keep 4 segments before lazy holders are asked for write-backs (the storage
        // node's default, 256 MiB, would outlast a short run with small segments).
        let retain = o.redo_retain_mb.or(o.redo_segment_mb.map(|m| 4 * m));
        let redo_segment = o
            .redo_segment_mb
            .map(|m| format!("redo_segment = \"{m}MiB\"\n"))
            .unwrap_or_default()
            + &retain
                .map(|m| format!("redo_retain = \"{m}MiB\"\n"))
                .unwrap_or_default();
        let storage_config = |listen: &str| {
            format!(
                "transport = \"{transport}\"\nlisten = {listen:?}\ndata_dir = {}\nmemory = \"{}MiB\"\n\
                 first_page = 1\npage_count = 4194304\nkey_file = {}\n{redo_segment}",
                q(&dir.join("storage-0")),
                o.storage_memory_mb,
                q(&key)
            )
        };
        let mut c = ProcessCluster {
            dir: dir.clone(),
            remove_dir,
            services: Vec::new(),
            compute_addrs: Vec::new(),
            client,
        };
        c.add(
            "storage-0",
            bins.join("storage-node"),
            storage_config(&storage_listen),
        )?;
        c.start_service("storage-0")?;
        let storage_ep = c.ready_endpoint("storage-0")?;
        if o.transport == SpawnTransport::Tcp {
            let port = storage_ep.rsplit(':').next().unwrap_or_default();
            c.rewrite_config("storage-0", storage_config(&format!("127.0.0.1:{port}")))?;
        }
        let gtm_listen = match o.transport {
            SpawnTransport::Tcp => "tcp://127.0.0.1:0".to_string(),
            SpawnTransport::Shm => format!("shm://{}", dir.join("gtm.sock").display()),
        };
        let gtm_config = |listen: &str| {
            format!(
                "listen = [{listen:?}]\ndata_dir = {}\ncluster_key_file = {}\nlease_ms = {}\n\
                 storage_nodes = [{storage_ep:?}]\n{}",
                q(&dir.join("gtm")),
                q(&key),
                o.lease_ms,
                o.freeze_after_txns
                    .map(|n| format!("freeze_after_txns = {n}\n"))
                    .unwrap_or_default()
            )
        };
        c.add("gtm", bins.join("gtm"), gtm_config(&gtm_listen))?;
        c.start_service("gtm")?;
        let gtm_ep = c.ready_endpoint("gtm")?;
        if o.transport == SpawnTransport::Tcp {
            c.rewrite_config("gtm", gtm_config(&gtm_ep))?;
        }
        for i in 1..=o.compute_nodes {
            let name = format!("compute-{i}");
            let compute_config = |listen: &str| {
                format!(
                    "listen = {listen:?}\nclient_tokens_file = {}\n{tls_keys}\n[node]\nnode_id = {i}\ngtm = {gtm_ep:?}\n\
                     storage = [{storage_ep:?}]\nkey_file = {}\nbuffer_frames = {}\n\
                     lock_mode = {:?}\nwait_policy = {:?}\nheartbeat_ms = {}\n",
                    q(&tokens),
                    q(&key),
                    o.buffer_frames,
                    o.lock_mode,
                    o.wait_policy,
                    (o.lease_ms / 10).max(10)
                )
            };
            c.add(
                &name,
                bins.join("compute-node"),
                compute_config("127.0.0.1:0"),
            )?;
            c.start_service(&name)?;
            let addr = c.ready_endpoint(&name)?;
            c.rewrite_config(&name, compute_config(&addr))?;
            c.compute_addrs.push(addr);
        }
        Ok(c)
    }

    /// Registers a service and writes its config (not started).
    fn add(&mut self, name: &str, bin: PathBuf, config: String) -> Result<()> {
        let path = self.dir.join(format!("{name}.toml"));
        fs::write(&path, config)?;
        self.services.push(Service {
            name: name.into(),
            bin,
            config: path,
            child: None,
            out: self.dir.join(format!("{name}.out")),
            log: self.dir.join(format!("{name}.log")),
        });
        Ok(())
    }

    fn rewrite_config(&mut self, name: &str, config: String) -> Result<()> {
        let path = self.find(name)?.config.clone();
        fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
    }

    /// The first endpoint a started service printed in its `READY` line.
    fn ready_endpoint(&mut self, name: &str) -> Result<String> {
        let out = self.find(name)?.out.clone();
        let text = fs::read_to_string(&out)?;
        text.lines()
            .find_map(|l| l.strip_prefix("READY "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{name} printed no endpoint in its READY line"))
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    fn find(&mut self, name: &str) -> Result<&mut Service> {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow!("no service named {name}"))
    }

    /// Starts `name` (again) and waits for its READY line; returns how long that took.
    pub fn start_service(&mut self, name: &str) -> Result<Duration> {
        let s = self.find(name)?;
        if s.child.is_some() {
            bail!("{name} is already running");
        }
        let t0 = Instant::now();
        let out = fs::File::create(&s.out)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)?;
        let child = Command::new(&s.bin)
            .arg("--config")
            .arg(&s.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", s.bin.display()))?;
        s.child = Some(child);
        let deadline = t0 + Duration::from_secs(120);
        loop {
            if fs::read_to_string(&s.out)
                .map(|o| o.lines().any(|l| l.starts_with("READY")))
                .unwrap_or(false)
            {
                return Ok(t0.elapsed());
            }
            let child = s.child.as_mut().expect("just started");
            if let Some(st) = child.try_wait()? {
                s.child = None;
                let log = fs::read_to_string(&s.log).unwrap_or_default();
                // The log's last lines, without a panic's backtrace frames.
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        let t = l.trim_start();
                        !t.starts_with("at ")
                            && !t.split(':').next().is_some_and(|n| {
                                !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
                            })
                    })
                    .collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                bail!(
                    "{name} exited during start-up ({st}); last log lines ({}):\n{}",
                    s.log.display(),
                    tail.join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!("{name} not ready after 120 s; see {}", s.log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of `name`.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let s = self.find(name)?;
        let mut child = s
            .child
            .take()
            .ok_or_else(|| anyhow!("{name} is not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGSTOP / SIGCONT of `name` (a paused process: a node whose lease lapses).
    pub fn signal(&mut self, name: &str, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = self
            .find(name)?
            .pid()
            .ok_or_else(|| anyhow!("{name} is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
        Ok(())
    }

    /// SIGTERM to every service (compute nodes first, storage last), waiting for each
    /// to exit; a service that fails to stop in 30 s is killed and reported.
    pub fn stop(mut self) -> Result<()> {
        let mut errors = Vec::new();
        for s in self.services.iter_mut().rev() {
            let Some(mut child) = s.child.take() else {
                continue;
            };
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match child.try_wait()? {
                    Some(st) if st.success() => break,
                    Some(st) => {
                        errors.push(format!(
                            "{} exited with {st} (log: {})",
                            s.name,
                            s.log.display()
                        ));
                        break;
                    }
                    None if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        errors.push(format!("{} did not stop in 30 s; killed", s.name));
                        break;
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if !errors.is_empty() {
            self.remove_dir = false;
            bail!(
                "stopping the cluster: {} (run directory {} kept)",
                errors.join("; "),
                self.dir.display()
            );
        }
        Ok(())
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for s in &mut self.services {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if self.remove_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
