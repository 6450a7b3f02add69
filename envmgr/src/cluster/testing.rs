//! A real etcd for tests: `/usr/bin/etcd` on loopback with free ports.
//!
//! Loopback in the root namespace is the one place tests may talk to
//! without a namespace; the process is killed (by pid) when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where the Debian package installs etcd.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// A running single-member etcd with its data in a test's directory.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a free loopback port")?;
    Ok(l.local_addr()?.port())
}

impl EtcdProcess {
    /// Whether etcd is installed (tests skip with a message when not).
    pub fn available() -> bool {
        Path::new(ETCD_BIN).exists()
    }

    /// Starts etcd on 127.0.0.1 with free client and peer ports and its
    /// data in `dir/etcd-data`; returns once it answers `/health`.
    pub fn start(dir: &Path) -> Result<Self> {
        let mut p = Self {
            child: None,
            dir: dir.to_owned(),
            client_port: free_port()?,
            peer_port: free_port()?,
        };
        p.spawn()?;
        Ok(p)
    }

    /// The client URL, for `EtcdSettings::endpoints`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port))
    }

    /// Kills etcd with SIGKILL (by its pid) and reaps it. Killing a
    /// stopped etcd is a no-op.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("kill etcd")?;
            c.wait().context("reap etcd")?;
        }
        Ok(())
    }

    /// Kills and starts etcd again with the same data dir and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    fn spawn(&mut self) -> Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .context("open etcd.log")?;
        let child = Command::new(ETCD_BIN)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.join("etcd-data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {ETCD_BIN}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "etcd exited with {status}; see {}",
                        self.dir.join("etcd.log").display()
                    );
                }
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill()?;
        bail!("etcd did not become healthy within 15 s")
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.client_addr(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("etcd test process: {e:#}");
        }
    }
}
