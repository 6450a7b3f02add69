//! A throwaway etcd for one bench run: loopback only, free ports, data in a
//! temporary directory; stopped by pid and its data removed on Drop (also
//! on an error or a Ctrl-C, which unwind through the guard).

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, Bg};

/// A running etcd member on 127.0.0.1.
#[derive(Debug)]
pub struct Etcd {
    // Field order is drop order: the process stops before its data goes.
    proc: Bg,
    client_url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `bin` as a single-member cluster on two free loopback ports
    /// and waits until it serves clients.
    pub fn start(bin: &Path) -> Result<Etcd> {
        if !bin.exists() {
            bail!(
                "{} not found: install it with `apt-get install etcd-server` or pass --etcd",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("ptbench-etcd.")
            .tempdir()
            .context("creating the etcd data directory")?;
        let client_url = format!("http://127.0.0.1:{}", free_port()?);
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let data = dir.path().join("data");
        let mut c = Command::new(bin);
        c.arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn"]);
        let proc = Bg::spawn(&mut c)?;
        let mut etcd = Etcd {
            proc,
            client_url,
            _dir: dir,
        };
        etcd.wait_healthy(Duration::from_secs(30))?;
        Ok(etcd)
    }

    /// Polls `/health` until etcd says it is healthy; fails if it exits,
    /// the deadline passes or the run is interrupted.
    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(body) = self.get("/health") {
                if body.contains("\"health\":\"true\"") {
                    return Ok(());
                }
            }
            if let Some(st) = self.proc.exited()? {
                bail!(
                    "etcd exited ({st}) while starting:\n{}",
                    cmd::tail(&self.proc.output(), 30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd was not healthy within {timeout:?}:\n{}",
                    cmd::tail(&self.proc.output(), 30)
                );
            }
            cmd::sleep(Duration::from_millis(100))?;
        }
    }

    fn get(&self, path: &str) -> Result<String> {
        let addr = self
            .client_url
            .strip_prefix("http://")
            .context("client URL is not http://")?;
        http_get(addr, path)
    }

    /// The URL clients connect to.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Its pid, for the report.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Its `/metrics` text (Prometheus format), read over loopback.
    pub fn metrics(&self) -> Result<String> {
        self.get("/metrics")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.proc.stop();
    }
}

/// A TCP port free on 127.0.0.1 right now (the kernel picks it; it is
/// released at once, and etcd binds it a moment later).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// A minimal HTTP/1.0 GET on loopback: the body, or an error for a non-200.
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
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

/// The sum of a Prometheus counter over all its label sets, from the text
/// format; `None` when the metric is absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `foo` must not match `foo_bucket`.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let Some(value) = rest.rsplit(' ').next() else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_over_labels_and_ignores_look_alikes() {
        let text = "# HELP x\n# TYPE x counter\n\
            etcd_network_client_grpc_sent_bytes_total 1234\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\"} 5\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\"} 7\n\
            grpc_server_handled_total_bucket{le=\"1\"} 100\n\
            etcd_x 1e3\n";
        assert_eq!(
            metric_sum(text, "etcd_network_client_grpc_sent_bytes_total"),
            Some(1234.0)
        );
        assert_eq!(metric_sum(text, "grpc_server_handled_total"), Some(12.0));
        assert_eq!(metric_sum(text, "etcd_x"), Some(1000.0));
        assert_eq!(metric_sum(text, "nothing"), None);
    }
}
