//! A real MQTT broker (the Debian `mosquitto`), the one Oakestra's cluster
//! manager and its workers talk through.
//!
//! Two places it can run, like [`crate::etcd`]: in a host namespace of a
//! test topology, listening on that host's underlay address (Oakestra's
//! cluster MQTT port 10003 by default), so the nodes reach it over the
//! underlay and no traffic leaves the namespaces; or on 127.0.0.1 with a
//! free port for the fixture's own unit tests. The generated config allows
//! anonymous clients and keeps nothing on disk; the broker is stopped by
//! pid on Drop, which also runs while a failing test unwinds.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::cmd::{self, Bg};
use crate::netns::{self, Netns};

/// Where the Debian package installs the broker.
pub const MOSQUITTO_BIN: &str = "/usr/sbin/mosquitto";
/// Oakestra's cluster MQTT port (`ClusterMqttPort`).
pub const OAKESTRA_MQTT_PORT: u16 = 10003;
/// How long the broker may take to accept connections after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The broker binary: `$MOSQUITTO_BIN`, else `/usr/sbin/mosquitto`.
pub fn mosquitto_bin() -> PathBuf {
    std::env::var_os("MOSQUITTO_BIN").map_or_else(|| PathBuf::from(MOSQUITTO_BIN), PathBuf::from)
}

/// A running mosquitto.
#[derive(Debug)]
pub struct Mosquitto {
    proc: Option<Bg>,
    addr: SocketAddr,
    host: Option<PathBuf>,
    log: PathBuf,
    _dir: TempDir,
}

impl Mosquitto {
    /// Whether mosquitto is installed (tests skip with a message when not).
    pub fn available() -> bool {
        mosquitto_bin().exists()
    }

    /// In `host` (which must already have `ip` up) on `port`.
    pub fn start_in(host: &Netns, ip: Ipv4Addr, port: u16) -> Result<Mosquitto> {
        Mosquitto::launch(Some(host), SocketAddr::from((ip, port)))
    }

    /// On 127.0.0.1 with a free port, in the caller's namespace (unit tests).
    pub fn start_local() -> Result<Mosquitto> {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
        let addr = l.local_addr().context("local_addr")?;
        drop(l);
        Mosquitto::launch(None, addr)
    }

    fn launch(host: Option<&Netns>, addr: SocketAddr) -> Result<Mosquitto> {
        let dir = tempfile::Builder::new()
            .prefix(&format!(
                "proxytun-{}-mqtt-",
                host.map_or("local", Netns::name)
            ))
            .tempdir()
            .context("creating mosquitto's temporary directory")?;
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        fs::write(
            &conf,
            format!(
                "listener {} {}\nallow_anonymous true\npersistence false\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
                 log_type information\nconnection_messages true\nlog_timestamp true\n",
                addr.port(),
                addr.ip()
            ),
        )
        .context("writing mosquitto.conf")?;
        let bin = mosquitto_bin();
        let bin = bin.to_string_lossy();
        let conf_s = conf.to_string_lossy();
        let mut c = match host {
            Some(ns) => ns.command(&bin, &["-c", &conf_s]),
            None => {
                let mut c = Command::new(&*bin);
                c.args(["-c", &conf_s]);
                c
            }
        };
        let proc = Bg::spawn_logged(&mut c, &log, Duration::from_secs(2))?;
        let mut m = Mosquitto {
            proc: Some(proc),
            addr,
            host: host.map(Netns::path),
            log,
            _dir: dir,
        };
        m.wait_accepting()?;
        Ok(m)
    }

    /// Waits (at most [`START_TIMEOUT`]) until a TCP connect succeeds.
    fn wait_accepting(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(p) = self.proc.as_mut() {
                if let Some(st) = p.exited()? {
                    self.proc = None;
                    bail!(
                        "mosquitto exited ({st}) at start; log:\n{}",
                        self.log_tail(20)
                    );
                }
            }
            let last = match self.connect_once() {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "mosquitto not accepting on {} within {START_TIMEOUT:?}: {last}; log:\n{}",
                    self.addr,
                    self.log_tail(20)
                );
            }
            cmd::sleep(Duration::from_millis(50))?;
        }
    }

    /// One TCP connect to the listener, from the broker's namespace.
    fn connect_once(&self) -> Result<()> {
        let addr = self.addr;
        let connect = move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                .map(drop)
                .with_context(|| format!("connecting {addr}"))
        };
        let Some(ns) = self.host.clone() else {
            return connect();
        };
        thread::spawn(move || {
            netns::enter(&ns)?;
            connect()
        })
        .join()
        .map_err(|_| anyhow!("the connect thread panicked"))?
    }

    /// The listener's address (what clients connect to).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The namespace file of the host it runs in (`None` on loopback), for
    /// clients that must connect from there.
    pub fn netns(&self) -> Option<&PathBuf> {
        self.host.as_ref()
    }

    /// The broker's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Bg::pid)
    }

    /// Everything mosquitto logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        cmd::tail(&self.log(), n)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- mosquitto log -----\n{}\n-----", self.log_tail(40));
        }
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}
