//! Small things every fixture needs: the root check, where the workspace
//! and its binaries are, retrying until something becomes true, and the
//! registration part of a peer list. Kept out of the crate root so the
//! fixtures import them from here and the root only re-exports.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

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
