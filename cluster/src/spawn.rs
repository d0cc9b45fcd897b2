//! `--cluster spawn`: the three service binaries as separate local processes — one
//! `storage-node`, one `gtm`, `--nodes N` `compute-node`s — over loopback `tcp` or
//! `shm`, configured from TOML files this module writes into a run directory, stopped
//! (SIGTERM, clean shutdown) when the run ends. The harness then drives the compute
//! nodes through their gRPC stored procedures ([`crate::remote::RemoteTarget`]).
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
use std::net::TcpListener;
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
    /// GTM lease in milliseconds (heartbeats go every lease/10).
    pub lease_ms: u64,
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
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the service binaries are; builds them first under `cargo run`.
fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("DSB_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the tpcc executable")?;
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
                 -p gtm -p compute-node) or set DSB_BIN_DIR",
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
        let (storage_listen, storage_ep, gtm_ep) = match o.transport {
            SpawnTransport::Tcp => {
                let sp = free_port()?;
                let gp = free_port()?;
                (
                    format!("127.0.0.1:{sp}"),
                    format!("tcp://127.0.0.1:{sp}"),
                    format!("tcp://127.0.0.1:{gp}"),
                )
            }
            SpawnTransport::Shm => {
                let s = dir.join("storage.sock");
                (
                    s.display().to_string(),
                    format!("shm://{}", s.display()),
                    format!("shm://{}", dir.join("gtm.sock").display()),
                )
            }
        };
        let transport = match o.transport {
            SpawnTransport::Tcp => "tcp",
            SpawnTransport::Shm => "shm",
        };
        let mut services = Vec::new();
        let mut add = |name: &str, bin: &str, config: String| -> Result<()> {
            let path = dir.join(format!("{name}.toml"));
            fs::write(&path, config)?;
            services.push(Service {
                name: name.into(),
                bin: bins.join(bin),
                config: path,
                child: None,
                out: dir.join(format!("{name}.out")),
                log: dir.join(format!("{name}.log")),
            });
            Ok(())
        };
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        add(
            "storage-0",
            "storage-node",
            format!(
                "transport = \"{transport}\"\nlisten = {:?}\ndata_dir = {}\nmemory = \"{}MiB\"\n\
                 first_page = 1\npage_count = 4194304\nkey_file = {}\n",
                storage_listen,
                q(&dir.join("storage-0")),
                o.storage_memory_mb,
                q(&key)
            ),
        )?;
        add(
            "gtm",
            "gtm",
            format!(
                "listen = [{gtm_ep:?}]\ndata_dir = {}\ncluster_key_file = {}\nlease_ms = {}\n\
                 storage_nodes = [{storage_ep:?}]\n",
                q(&dir.join("gtm")),
                q(&key),
                o.lease_ms
            ),
        )?;
        let mut compute_addrs = Vec::new();
        for i in 1..=o.compute_nodes {
            let addr = format!("127.0.0.1:{}", free_port()?);
            add(
                &format!("compute-{i}"),
                "compute-node",
                format!(
                    "listen = {addr:?}\n\n[node]\nnode_id = {i}\ngtm = {gtm_ep:?}\n\
                     storage = [{storage_ep:?}]\nkey_file = {}\nbuffer_frames = {}\n\
                     lock_mode = {:?}\nheartbeat_ms = {}\n",
                    q(&key),
                    o.buffer_frames,
                    o.lock_mode,
                    (o.lease_ms / 10).max(10)
                ),
            )?;
            compute_addrs.push(addr);
        }
        let mut c = ProcessCluster {
            dir,
            remove_dir,
            services,
            compute_addrs,
        };
        for i in 0..c.services.len() {
            let name = c.services[i].name.clone();
            c.start_service(&name)?;
        }
        Ok(c)
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
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "{name} exited during start-up ({st}); last log lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
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
