//! A real etcd (the Debian `/usr/bin/etcd`) running in a host namespace of
//! the test topology, so the cluster tests use the same distributed engine
//! as production and no traffic leaves the namespaces.
//!
//! The server listens on the host's underlay address only (client port 2379,
//! peer port 2380), keeps its data in the test's temporary directory, and is
//! killed by pid on Drop. `kill()` and `start()` simulate an etcd crash and
//! recovery with the same data directory.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::cmd::{self, Out};
use crate::netns::Netns;

/// The etcd client port.
pub const CLIENT_PORT: u16 = 2379;
/// The etcd peer port.
pub const PEER_PORT: u16 = 2380;
/// How long etcd may take to answer `endpoint health` after start.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one `etcdctl` call may take.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(10);

/// The etcd server binary: `$ETCD_BIN`, else `/usr/bin/etcd`.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// The etcd client binary: `$ETCDCTL_BIN`, else `etcdctl` from `PATH`.
pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN").map_or_else(|| PathBuf::from("etcdctl"), PathBuf::from)
}

/// A single-member etcd cluster in its own host namespace.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    ip: Ipv4Addr,
    name: String,
    log: PathBuf,
    data: PathBuf,
    dir: TempDir,
    host: Netns,
}

impl Etcd {
    /// Starts etcd in `host` (which must already have `ip` on an interface
    /// that is up) and waits until it is healthy. `name` is the member name
    /// and the cluster token (the test's prefix makes it unique).
    pub fn start_in(host: Netns, ip: Ipv4Addr, name: &str) -> Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("proxytun-{}-", host.name()))
            .tempdir()
            .context("creating etcd's temporary directory")?;
        let mut e = Etcd {
            child: None,
            ip,
            name: name.to_owned(),
            log: dir.path().join("etcd.log"),
            data: dir.path().join("data"),
            dir,
            host,
        };
        e.start()?;
        Ok(e)
    }

    /// The client URL the nodes use (`http://<ip>:2379`).
    pub fn client_url(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip)
    }

    /// The host namespace etcd runs in.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The data directory, kept across `kill()` and `start()`.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The temporary directory (data and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything etcd logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of etcd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Starts the server (on the existing data directory, if any) and waits
    /// until `etcdctl endpoint health` succeeds.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("etcd is already running");
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("opening the etcd log")?;
        let client = self.client_url();
        let peer = format!("http://{}:{PEER_PORT}", self.ip);
        let initial = format!("{}={peer}", self.name);
        let data = self.data.to_string_lossy().into_owned();
        let bin = etcd_bin();
        let mut c = self.host.command(
            &bin.to_string_lossy(),
            &[
                "--name",
                &self.name,
                "--data-dir",
                &data,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &self.name,
                // A single member elects itself; short timers make a
                // restart quick.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ],
        );
        c.stdin(Stdio::null())
            .stdout(log.try_clone().context("log fd")?)
            .stderr(log);
        let child = c
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::cmdline(&c)))?;
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + ETCD_START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(st) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "etcd exited ({st}) during start-up; log:\n{}",
                        self.log_tail(30)
                    );
                }
            }
            let last = match self.etcdctl_raw(&["endpoint", "health"]) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => out.describe("failed"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "etcd not healthy within {ETCD_START_TIMEOUT:?}: {last}\nlog:\n{}",
                    self.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server with SIGKILL (a crash) and reaps it; the data
    /// directory stays.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("etcd is not running"))?;
        child.kill().context("SIGKILL etcd")?;
        child.wait().context("waitpid etcd")?;
        Ok(())
    }

    /// SIGKILL (if running) and start again on the same data directory.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill()?;
        }
        self.start()
    }

    fn etcdctl_cmd(&self, ns: &Netns, args: &[&str]) -> Command {
        let bin = etcdctl_bin();
        let endpoints = format!("--endpoints={}", self.client_url());
        let mut full = vec![endpoints.as_str(), "--dial-timeout=2s"];
        full.extend_from_slice(args);
        let mut c = ns.command(&bin.to_string_lossy(), &full);
        c.env("ETCDCTL_API", "3");
        c
    }

    fn etcdctl_raw(&self, args: &[&str]) -> Result<Out> {
        cmd::run(&mut self.etcdctl_cmd(&self.host, args), ETCDCTL_TIMEOUT)
    }

    /// `etcdctl args..` (API v3) from etcd's own namespace, required to
    /// succeed.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Out> {
        self.etcdctl_raw(args)?.ok()
    }

    /// `etcdctl args..` from another namespace of the topology (a node's
    /// host), to show the server is reachable over the underlay.
    pub fn etcdctl_from(&self, ns: &Netns, args: &[&str]) -> Result<Out> {
        cmd::run(&mut self.etcdctl_cmd(ns, args), ETCDCTL_TIMEOUT)?.ok()
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let out = self.etcdctl(&["get", "--prefix", prefix])?;
        let lines: Vec<&str> = out.stdout.lines().collect();
        if !lines.len().is_multiple_of(2) {
            bail!(
                "`etcdctl get --prefix {prefix}` printed an odd number of lines:\n{}",
                out.stdout
            );
        }
        Ok(lines
            .chunks(2)
            .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
            .collect())
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.etcdctl(&["get", "--prefix", "--keys-only", prefix])?;
        Ok(out
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- etcd log ({}) -----\n{}\n-----",
                self.log.display(),
                self.log_tail(30)
            );
            if self.child.is_some() {
                if let Ok(out) = self.etcdctl(&["get", "--prefix", "/"]) {
                    eprintln!("----- etcd keys -----\n{}-----", out.stdout);
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
