//! Named network namespaces that delete themselves.
//!
//! Every host and container of a test or a bench run is a namespace whose
//! name starts with the test's (or run's) unique prefix. The handle deletes
//! it on Drop, which also runs while a failing test unwinds and on a bench
//! error or interrupt, so a red test or a failed run leaves nothing behind.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, Bg, Out};

/// How long plain `ip` configuration commands may take.
pub const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace created with `ip netns add`, deleted on Drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (replacing a stale one of the same name left
    /// by a killed earlier run) and brings its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        if PathBuf::from("/run/netns").join(name).exists() {
            delete(name);
        }
        remove_etc_dir(name);
        cmd::run_ok("ip", &["netns", "add", name], IP_TIMEOUT)
            .with_context(|| format!("creating netns {name}"))?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, what `proxytun attach --netns` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A `Command` that runs `prog args..` inside this namespace
    /// (`ip netns exec` execs, so the child's pid is `prog`'s).
    pub fn command(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]).args(args);
        c
    }

    /// Runs `prog args..` inside the namespace with a deadline; the exit
    /// status is left to the caller.
    pub fn exec(&self, prog: &str, args: &[&str], timeout: Duration) -> Result<Out> {
        cmd::run(&mut self.command(prog, args), timeout)
    }

    /// Runs `prog args..` inside the namespace and requires success.
    pub fn exec_ok(&self, prog: &str, args: &[&str], timeout: Duration) -> Result<Out> {
        self.exec(prog, args, timeout)?.ok()
    }

    /// Starts `prog args..` in the background inside the namespace.
    pub fn spawn(&self, prog: &str, args: &[&str]) -> Result<Bg> {
        Bg::spawn(&mut self.command(prog, args))
    }

    /// `ip -n <ns> args..`, required to succeed.
    pub fn ip(&self, args: &[&str]) -> Result<Out> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        cmd::run_ok("ip", &full, IP_TIMEOUT)
            .with_context(|| format!("ip {} (in netns {})", args.join(" "), self.name))
    }

    /// Creates a veth pair: `name` here, `peer_name` in `peer`, both ends
    /// with `mtu` when given (the kernel's default otherwise). How hosts are
    /// cabled to a switch or to each other, and containers to their host.
    pub fn add_veth(
        &self,
        name: &str,
        peer: &Netns,
        peer_name: &str,
        mtu: Option<u32>,
    ) -> Result<Out> {
        let mtu = mtu.map(|m| m.to_string());
        let mut args = vec!["link", "add", name];
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        args.extend(["type", "veth", "peer", "name", peer_name]);
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        args.extend(["netns", peer.name()]);
        self.ip(&args)
    }

    /// `/etc/netns/<name>`, where the container's `resolv.conf` goes.
    pub fn etc_dir(&self) -> PathBuf {
        etc_dir(&self.name)
    }

    /// Sets a sysctl inside the namespace (`key` like `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec_ok("sysctl", &["-qw", &format!("{key}={value}")], IP_TIMEOUT)
            .with_context(|| format!("sysctl {key}={value} in {}", self.name))?;
        Ok(())
    }

    /// Whether something listens on TCP `port` in this namespace (from
    /// `ss`, so no traffic is needed to find out).
    pub fn listens_tcp(&self, port: u16) -> Result<bool> {
        let out = self.exec_ok("ss", &["-Hltn", &format!("sport = :{port}")], IP_TIMEOUT)?;
        Ok(!out.stdout.trim().is_empty())
    }
}

/// Moves the calling thread into the network namespace at `path`, for
/// threads that do their traffic from inside a container (one setns(2); it
/// changes only the calling thread).
pub fn enter(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns(2) on a namespace fd we hold open; it only changes the
    // calling thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `/etc/netns/<name>`: files `ip netns exec` bind-mounts over `/etc` (the
/// daemon writes the container's `resolv.conf` there).
pub fn etc_dir(name: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(name)
}

/// Removes `/etc/netns/<name>` if present, so a failed test (or a daemon
/// killed before it detached) leaves no resolv.conf behind.
fn remove_etc_dir(name: &str) {
    let dir = etc_dir(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("warning: could not remove {}: {e}", dir.display());
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_etc_dir(&self.name);
        delete(&self.name);
    }
}

/// Deletes namespace `name`, warning (not failing) if that does not work:
/// the teardown must go on, interrupted or not.
fn delete(name: &str) {
    let r = cmd::run_uninterruptible(Command::new("ip").args(["netns", "del", name]), IP_TIMEOUT)
        .and_then(Out::ok);
    if let Err(e) = r {
        eprintln!("warning: could not delete netns {name}: {e:#}");
    }
}

/// The namespaces whose names start with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let out = cmd::run_ok("ip", &["netns", "list"], IP_TIMEOUT)?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Removes the namespaces starting with `prefix` (and their `/etc/netns`
/// directories) that a killed earlier run left; `who` names the program in
/// the message it prints for each.
pub fn remove_stale(prefix: &str, who: &str) -> Result<()> {
    for n in list_with_prefix(prefix)? {
        eprintln!("{who}: removing stale namespace {n} from an earlier run");
        remove_etc_dir(&n);
        delete(&n);
    }
    Ok(())
}
