//! The testbed proxytun's end-to-end tests, the bench harness and the demo
//! share: network namespaces as hosts and containers, the real `proxytun`
//! daemon in each host, `ptprobe` as the application in each container, a
//! real etcd, commands with deadlines and interrupt handling, and a DNS wire
//! codec independent of the resolver's.
//!
//! It depends on neither `proxytun` nor `envmgr` (it drives the daemon as a
//! program), so both can use it as a dev-dependency.
//!
//! Everything is cleaned up by Drop (daemons stopped by pid, servers killed,
//! namespaces deleted), which also runs while a failing test unwinds. No
//! traffic is ever sent from, and no address or route is ever added to, the
//! root namespace; the CLI and API calls use the daemons' unix sockets only.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let c = testbed::Cluster::two_nodes("example")?;
//! let mut web = c.container("web")?;
//! web.serve("web1")?;
//! let client = c.container("cli")?;
//! let d = c.deploy("shop/web", &[(&c.b, &web, 1)])?;
//! c.a.attach("shop/client", &client.path(), Some(1), None)?;
//! assert_eq!(client.tcp_hello(d.rr.v4)?.name, "web1");
//! # Ok(()) }
//! ```

pub mod api;
pub mod churn;
pub mod cluster;
pub mod cluster3;
pub mod cmd;
pub mod dig;
pub mod dnswire;
pub mod etcd;
pub mod linkdelay;
pub mod model;
pub mod netns;
pub mod node;
pub mod podman;

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub use cluster::{Cluster, Container, Deployment, Hello, Transfer, TCP_PORT, UDP_PORT};
pub use cluster3::Cluster3;
pub use etcd::Etcd;
pub use model::{Dual, Instance, Service};
pub use netns::Netns;
pub use node::{
    offload_wanted, DnsConfig, EtcdStore, Keepalive, Node, NodeConfig, PeerState, TUNNEL_PORT,
};

/// Fails with a clear message unless we run as root: namespaces, veths
/// and TUN devices need it.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the end-to-end tests create network namespaces and need root: \
             run `sudo ./scripts/test.sh` (or `sudo -E cargo test -p tests`)"
        );
    }
    Ok(())
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The profile directories to look in, the one this test binary was built
/// with first (`target/debug/deps/x` -> `target/debug`).
fn target_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile) = exe.parent().and_then(|d| d.parent()) {
            dirs.push(profile.to_path_buf());
        }
        if let Some(dir) = exe.parent() {
            dirs.push(dir.to_path_buf());
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    dirs.push(target.join("debug"));
    dirs.push(target.join("release"));
    dirs
}

fn find_bin(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let dirs = target_dirs();
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "cannot find the `{name}` binary in {:?}: build it first (`cargo build --workspace --bins`) \
         or set {env}",
        dirs
    )
}

/// The daemon binary: `$PROXYTUN_BIN`, else `target/{debug,release}/proxytun`.
pub fn proxytun_bin() -> Result<PathBuf> {
    find_bin("PROXYTUN_BIN", "proxytun")
}

/// The probe binary: `$PTPROBE_BIN`, else next to the test binary.
pub fn ptprobe_bin() -> Result<PathBuf> {
    find_bin("PTPROBE_BIN", "ptprobe")
}

/// The fake upstream DNS server: `$FAKEDNS_BIN`, else next to the test binary.
pub fn fakedns_bin() -> Result<PathBuf> {
    find_bin("FAKEDNS_BIN", "fakedns")
}

/// Retries `f` until it succeeds or `timeout` passes; returns the last
/// error. For things that become true asynchronously (a route appearing,
/// IPv6 duplicate address detection finishing), never to paper over a
/// wrong answer.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")))
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The name and endpoint of every peer in a `/v1/peers` answer: what was
/// registered, without the liveness and RTT the dataplane measures (those
/// change from one call to the next).
pub fn registered_peers(peers: &serde_json::Value) -> serde_json::Value {
    let list = peers.as_array().map(|a| {
        a.iter()
            .map(|p| serde_json::json!({"name": p["name"], "endpoint": p["endpoint"]}))
            .collect::<Vec<_>>()
    });
    serde_json::Value::Array(list.unwrap_or_default())
}
