//! A real etcd (the Debian `/usr/bin/etcd`): the one launcher the
//! end-to-end tests, the bench and envmgr's cluster tests share.
//!
//! Two places it can run: in a host namespace of a test topology, on that
//! host's underlay address with the standard ports (client 2379, peer 2380),
//! so the nodes reach it over the underlay and no traffic leaves the
//! namespaces; or on loopback in the root namespace with free ports (the
//! one place tests may talk to without a namespace). Either way it is a
//! single member with its data and log in a temporary (or given) directory,
//! stopped by pid on Drop, which also runs while a failing test unwinds or
//! a bench run is interrupted. `kill()` and `restart()` simulate an etcd
//! crash and recovery with the same data directory and ports.
//!
//! With [`EtcdBuilder::tls`] the client port speaks https only, with the
//! test's [`Pki`]: etcd's certificate from it, and client certificates
//! required (`--client-cert-auth`, trusted CA = the PKI's CA). `/health`
//! and `/metrics` are then read on a plain-http metrics port (2381 in a
//! namespace), and `etcdctl` is given the CA and the client certificate.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::cmd::{self, Bg, Out};
use crate::netns::{self, Netns};
use crate::tls::{CertFiles, Pki};

/// Where the Debian package installs etcd.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// The etcd client port in a namespace.
pub const CLIENT_PORT: u16 = 2379;
/// The etcd peer port in a namespace.
pub const PEER_PORT: u16 = 2380;
/// The plain-http metrics port (`/health`, `/metrics`) of a TLS etcd in a
/// namespace.
pub const METRICS_PORT: u16 = 2381;
/// How long etcd may take to answer `/health` after start.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `etcdctl` call may take.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(10);

/// The etcd server binary: `$ETCD_BIN`, else `/usr/bin/etcd`.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from(ETCD_BIN), PathBuf::from)
}

/// The etcd client binary: `$ETCDCTL_BIN`, else `etcdctl` from `PATH`.
pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN").map_or_else(|| PathBuf::from("etcdctl"), PathBuf::from)
}

/// How an etcd is to be started; [`Etcd::builder`] makes one.
#[derive(Debug)]
pub struct EtcdBuilder {
    bin: PathBuf,
    name: String,
    host: Option<(Netns, Ipv4Addr)>,
    dir: Option<PathBuf>,
    dir_prefix: String,
    log_level: Option<String>,
    quick_election: bool,
    grace: Duration,
    tls: Option<Tls>,
}

/// The files of a TLS etcd: its own certificate, the CA it trusts for
/// clients, and the client certificate `etcdctl` uses.
#[derive(Debug, Clone)]
struct Tls {
    ca: PathBuf,
    server: CertFiles,
    client: CertFiles,
    /// The plain-http address of `/health` and `/metrics`.
    metrics: SocketAddr,
}

impl EtcdBuilder {
    /// The server binary (default [`etcd_bin`]).
    pub fn bin(mut self, bin: &Path) -> Self {
        self.bin = bin.to_owned();
        self
    }

    /// Runs it in `host` (which must already have `ip` on an interface that
    /// is up) on the standard ports, instead of on loopback with free ports.
    pub fn in_netns(mut self, host: Netns, ip: Ipv4Addr) -> Self {
        self.host = Some((host, ip));
        self
    }

    /// Keeps data and log in `dir` (which the caller removes) instead of a
    /// temporary directory of its own.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    /// The prefix of its own temporary directory's name.
    pub fn dir_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.dir_prefix);
        self
    }

    /// `--log-level` (etcd's default, info, when not set).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.to_owned());
        self
    }

    /// Short heartbeat and election timers, so a single member elects
    /// itself quickly after a restart.
    pub fn quick_election(mut self) -> Self {
        self.quick_election = true;
        self
    }

    /// How long Drop waits after SIGTERM before SIGKILL (default: none, a
    /// plain SIGKILL, as the data is thrown away anyway).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves clients on https only, with `pki`'s server certificate, and
    /// requires client certificates signed by `pki`'s CA.
    pub fn tls(mut self, pki: &Pki) -> Self {
        self.tls = Some(Tls {
            ca: pki.ca.clone(),
            server: pki.server.clone(),
            client: pki.client.clone(),
            metrics: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        });
        self
    }

    /// Starts the server and waits until it is healthy.
    pub fn start(mut self) -> Result<Etcd> {
        let (own_dir, dir) = match self.dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&self.dir_prefix)
                    .tempdir()
                    .context("creating etcd's temporary directory")?;
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        let (host, client, peer, metrics) = match self.host {
            Some((ns, ip)) => (
                Some(ns),
                SocketAddr::from((ip, CLIENT_PORT)),
                SocketAddr::from((ip, PEER_PORT)),
                SocketAddr::from((ip, METRICS_PORT)),
            ),
            None => (
                None,
                SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
                SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
                SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
            ),
        };
        if let Some(t) = self.tls.as_mut() {
            t.metrics = metrics;
        }
        let mut e = Etcd {
            proc: None,
            bin: self.bin,
            name: self.name,
            client,
            peer,
            log: dir.join("etcd.log"),
            data: dir.join("data"),
            log_level: self.log_level,
            quick_election: self.quick_election,
            grace: self.grace,
            tls: self.tls,
            host,
            dir,
            _own_dir: own_dir,
        };
        e.launch()?;
        Ok(e)
    }
}

/// A running single-member etcd cluster.
#[derive(Debug)]
pub struct Etcd {
    proc: Option<Bg>,
    bin: PathBuf,
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    log: PathBuf,
    data: PathBuf,
    log_level: Option<String>,
    quick_election: bool,
    grace: Duration,
    tls: Option<Tls>,
    host: Option<Netns>,
    dir: PathBuf,
    _own_dir: Option<TempDir>,
}

impl Etcd {
    /// A builder: loopback, free ports, member name `etcd`, its own
    /// temporary directory, etcd's default log level.
    pub fn builder(name: &str) -> EtcdBuilder {
        EtcdBuilder {
            bin: etcd_bin(),
            name: name.to_owned(),
            host: None,
            dir: None,
            dir_prefix: format!("proxytun-{name}-"),
            log_level: None,
            quick_election: false,
            grace: Duration::ZERO,
            tls: None,
        }
    }

    /// Whether etcd is installed (tests skip with a message when not).
    pub fn available() -> bool {
        etcd_bin().exists()
    }

    /// The unit tests' etcd: loopback with free ports, data and log in
    /// `dir`, quiet.
    pub fn start(dir: &Path) -> Result<Etcd> {
        Etcd::builder("test").dir(dir).log_level("warn").start()
    }

    /// The end-to-end tests' etcd: in `host` on `ip`, with quick elections.
    /// `name` is the member name and the cluster token (the test's prefix
    /// makes it unique).
    pub fn start_in(host: Netns, ip: Ipv4Addr, name: &str) -> Result<Etcd> {
        let prefix = format!("proxytun-{}-", host.name());
        Etcd::builder(name)
            .in_netns(host, ip)
            .dir_prefix(&prefix)
            .quick_election()
            .start()
    }

    /// [`Etcd::start_in`] with TLS ([`EtcdBuilder::tls`]) and a quiet log
    /// (warnings and errors only, which include rejected TLS handshakes).
    pub fn start_in_tls(host: Netns, ip: Ipv4Addr, name: &str, pki: &Pki) -> Result<Etcd> {
        let prefix = format!("proxytun-{}-", host.name());
        Etcd::builder(name)
            .in_netns(host, ip)
            .dir_prefix(&prefix)
            .quick_election()
            .log_level("warn")
            .tls(pki)
            .start()
    }

    /// The client URL (`http://<ip>:<port>`, `https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// The host namespace etcd runs in (`None` on loopback).
    pub fn host(&self) -> Option<&Netns> {
        self.host.as_ref()
    }

    /// The data directory, kept across `kill()` and `restart()`.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory of data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Bg::pid)
    }

    /// Everything etcd logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of etcd's log.
    pub fn log_tail(&self, n: usize) -> String {
        cmd::tail(&self.log(), n)
    }

    /// Starts the server (on the existing data directory, if any) and waits
    /// until it answers `/health`.
    fn launch(&mut self) -> Result<()> {
        if self.proc.is_some() {
            bail!("etcd is already running");
        }
        let client = self.endpoint();
        let peer = format!("http://{}", self.peer);
        let initial = format!("{}={peer}", self.name);
        let data = self.data.to_string_lossy().into_owned();
        let mut args = vec![
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
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ];
        if self.quick_election {
            args.extend(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        }
        if let Some(level) = &self.log_level {
            args.extend(["--log-level", level]);
        }
        let tls_args: Vec<String> = match &self.tls {
            None => Vec::new(),
            Some(t) => vec![
                "--cert-file".into(),
                t.server.cert.to_string_lossy().into_owned(),
                "--key-file".into(),
                t.server.key.to_string_lossy().into_owned(),
                "--trusted-ca-file".into(),
                t.ca.to_string_lossy().into_owned(),
                "--client-cert-auth".into(),
                "--listen-metrics-urls".into(),
                format!("http://{}", t.metrics),
            ],
        };
        args.extend(tls_args.iter().map(String::as_str));
        let bin = self.bin.to_string_lossy();
        let mut c = match &self.host {
            Some(ns) => ns.command(&bin, &args),
            None => {
                let mut c = Command::new(&*bin);
                c.args(&args);
                c
            }
        };
        self.proc = Some(Bg::spawn_logged(&mut c, &self.log, self.grace)?);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + ETCD_START_TIMEOUT;
        loop {
            if let Some(p) = self.proc.as_mut() {
                if let Some(st) = p.exited()? {
                    self.proc = None;
                    bail!(
                        "etcd exited ({st}) during start-up; log:\n{}",
                        self.log_tail(30)
                    );
                }
            }
            let last = match self.get("/health") {
                Ok(body) if body.contains("\"health\":\"true\"") => return Ok(()),
                Ok(body) => format!("/health said {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                self.kill()?;
                bail!(
                    "etcd not healthy within {ETCD_START_TIMEOUT:?}: {last}\nlog:\n{}",
                    self.log_tail(30)
                );
            }
            cmd::sleep(Duration::from_millis(50))?;
        }
    }

    /// An HTTP GET of `path` on the client port (the metrics port with
    /// TLS), from etcd's namespace.
    fn get(&self, path: &str) -> Result<String> {
        let addr = self.tls.as_ref().map_or(self.client, |t| t.metrics);
        let Some(ns) = &self.host else {
            return http_get(addr, path);
        };
        let ns = ns.path();
        let path = path.to_owned();
        thread::scope(|s| {
            s.spawn(move || {
                netns::enter(&ns)?;
                http_get(addr, &path)
            })
            .join()
            .map_err(|_| anyhow!("the HTTP thread panicked"))?
        })
    }

    /// Its `/metrics` text (Prometheus format).
    pub fn metrics(&self) -> Result<String> {
        self.get("/metrics")
    }

    /// Kills the server with SIGKILL (a crash) and reaps it; the data
    /// directory stays. Killing a stopped etcd does nothing.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        Ok(())
    }

    /// SIGKILL (if running) and start again on the same data directory and
    /// ports.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.launch()
    }

    fn etcdctl_cmd(&self, ns: Option<&Netns>, args: &[&str]) -> Command {
        let bin = etcdctl_bin();
        let endpoints = format!("--endpoints={}", self.endpoint());
        let mut owned = vec![endpoints, "--dial-timeout=2s".to_owned()];
        if let Some(t) = &self.tls {
            owned.push(format!("--cacert={}", t.ca.display()));
            owned.push(format!("--cert={}", t.client.cert.display()));
            owned.push(format!("--key={}", t.client.key.display()));
        }
        let mut full: Vec<&str> = owned.iter().map(String::as_str).collect();
        full.extend_from_slice(args);
        let mut c = match ns {
            Some(ns) => ns.command(&bin.to_string_lossy(), &full),
            None => {
                let mut c = Command::new(bin);
                c.args(&full);
                c
            }
        };
        c.env("ETCDCTL_API", "3");
        c
    }

    /// `etcdctl args..` (API v3) from etcd's own namespace, required to
    /// succeed.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Out> {
        cmd::run(&mut self.etcdctl_cmd(self.host(), args), ETCDCTL_TIMEOUT)?.ok()
    }

    /// `etcdctl args..` from another namespace of the topology (a node's
    /// host), to show the server is reachable over the underlay.
    pub fn etcdctl_from(&self, ns: &Netns, args: &[&str]) -> Result<Out> {
        cmd::run(&mut self.etcdctl_cmd(Some(ns), args), ETCDCTL_TIMEOUT)?.ok()
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
            if self.proc.is_some() {
                if let Ok(out) = self.etcdctl(&["get", "--prefix", "/"]) {
                    eprintln!("----- etcd keys -----\n{}-----", out.stdout);
                }
            }
        }
        // The process stops before its data directory and namespace go.
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}

/// A TCP port free on 127.0.0.1 right now (the kernel picks it; it is
/// released at once, and etcd binds it a moment later).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// A minimal HTTP/1.0 GET: the body, or an error for a non-200.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .with_context(|| format!("connecting {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading {path}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    Ok(body.to_owned())
}
