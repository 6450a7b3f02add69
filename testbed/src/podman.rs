//! podman, isolated in a temporary directory, as the real container runtime
//! for the CNI plugin's test; and the plugin binary itself.
//!
//! Nothing of the machine's podman set-up is used or changed: storage
//! (`--root`, `--runroot`, driver `vfs`), `containers.conf` (through
//! `CONTAINERS_CONF`), the CNI config and plugin directories, the events log
//! and podman's tmp dir all live in the temporary directory. The image is
//! built from Debian's `busybox-static` with `podman import`; nothing is
//! pulled. Drop removes the containers (which runs the plugin's DEL), then
//! unmounts whatever podman left mounted below the directory, then deletes it.
//!
//! Two obstacles of this machine and how they are met (see docs/cni.md):
//! podman 4.3 asks the OCI runtime to raise `RLIMIT_NOFILE`, which needs
//! CAP_SYS_RESOURCE: `default_ulimits = []` keeps the limits podman
//! inherits. crun refuses hybrid cgroups (v1 + a v2 tree with
//! controllers): runc is used when installed.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::cmd::{self, Out};

/// The plugin binary: `$PROXYTUN_CNI_BIN`, else `proxytun-cni` next to the
/// daemon binary (both are workspace binaries of the same build).
pub fn cni_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PROXYTUN_CNI_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("PROXYTUN_CNI_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let daemon = crate::support::proxytun_bin()?;
    let p = daemon
        .parent()
        .map(|d| d.join("proxytun-cni"))
        .ok_or_else(|| anyhow!("{} has no directory", daemon.display()))?;
    if !p.is_file() {
        bail!(
            "cannot find {}: build it first (`cargo build --workspace --bins`) or set PROXYTUN_CNI_BIN",
            p.display()
        );
    }
    Ok(p)
}

/// The applets the image links to busybox.
const APPLETS: &[&str] = &[
    "sh", "ip", "cat", "echo", "sleep", "nc", "wget", "nslookup", "grep", "true", "ls",
];

/// An isolated podman with a local busybox image and our plugin installed.
#[derive(Debug)]
pub struct Podman {
    dir: Option<TempDir>,
    runtime: Option<&'static str>,
    image: String,
    containers: Vec<String>,
    /// Whether podman's shared lock file was absent before us, so ours
    /// to remove at the end.
    owns_lock: bool,
}

/// The lock file rootful podman creates in shared memory on first use.
const LIBPOD_LOCK: &str = "/dev/shm/libpod_lock";

impl Podman {
    /// Why podman cannot be used here at all (not installed, no busybox),
    /// or `None`.
    pub fn missing() -> Option<String> {
        for (bin, pkg) in [("podman", "podman"), ("busybox", "busybox-static")] {
            if !in_path(bin) {
                return Some(format!("`{bin}` is not installed (apt-get install {pkg})"));
            }
        }
        None
    }

    /// Sets up the directory, installs `plugin` as the CNI plugin
    /// `proxytun-cni` and imports the busybox image. `prefix` names things.
    pub fn new(prefix: &str, plugin: &Path) -> Result<Podman> {
        let owns_lock = !Path::new(LIBPOD_LOCK).exists();
        let dir = tempfile::Builder::new()
            .prefix(&format!("proxytun-podman-{prefix}"))
            .tempdir()
            .context("creating podman's temporary directory")?;
        let d = dir.path();
        for sub in [
            "root",
            "runroot",
            "tmp",
            "cni",
            "plugins",
            "rootfs/bin",
            "rootfs/etc",
        ] {
            fs::create_dir_all(d.join(sub)).with_context(|| format!("mkdir {sub}"))?;
        }
        symlink(plugin, d.join("plugins/proxytun-cni")).context("installing the plugin")?;
        // The standard plugins stay reachable for chains (tuning, portmap).
        let mut plugin_dirs = format!("\"{}\"", d.join("plugins").display());
        if Path::new("/usr/lib/cni").is_dir() {
            plugin_dirs.push_str(", \"/usr/lib/cni\"");
        }
        let conf = format!(
            "[containers]\n\
             # podman would ask the runtime to raise RLIMIT_NOFILE (needs CAP_SYS_RESOURCE)\n\
             default_ulimits = []\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{plugin_dirs}]\n\
             network_config_dir = \"{cni}\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = \"{events}\"\n\
             tmp_dir = \"{tmp}\"\n",
            cni = d.join("cni").display(),
            events = d.join("events.log").display(),
            tmp = d.join("tmp").display(),
        );
        fs::write(d.join("containers.conf"), conf).context("writing containers.conf")?;
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d.join("root").display(),
            d.join("runroot").display()
        );
        fs::write(d.join("storage.conf"), storage).context("writing storage.conf")?;

        let rootfs = d.join("rootfs");
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying /bin/busybox")?;
        for a in APPLETS {
            symlink("busybox", rootfs.join("bin").join(a))
                .with_context(|| format!("applet {a}"))?;
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        let tar = d.join("rootfs.tar");
        cmd::run(
            Command::new("tar")
                .args(["-C"])
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            Duration::from_secs(30),
        )?
        .ok()?;

        let runtime = in_path("runc").then_some("runc");
        let p = Podman {
            dir: Some(dir),
            runtime,
            image: format!("localhost/{}busybox:test", prefix.to_ascii_lowercase()),
            containers: Vec::new(),
            owns_lock,
        };
        let image = p.image.clone();
        p.podman(
            &["import", &tar.to_string_lossy(), &image],
            Duration::from_secs(60),
        )?
        .ok()
        .context("importing the busybox image")?;
        Ok(p)
    }

    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), TempDir::path)
    }

    /// The image name.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The OCI runtime `run` uses (`None`: podman's default).
    pub fn runtime(&self) -> Option<&str> {
        self.runtime
    }

    /// Writes a network config list `<name>.conflist`.
    pub fn add_network(&self, name: &str, conflist: &serde_json::Value) -> Result<PathBuf> {
        let path = self.dir().join("cni").join(format!("{name}.conflist"));
        fs::write(&path, format!("{conflist:#}\n")).context("writing the conflist")?;
        Ok(path)
    }

    /// `podman ARGS`, isolated.
    pub fn podman(&self, args: &[&str], timeout: Duration) -> Result<Out> {
        let d = self.dir();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env_remove("CONTAINERS_REGISTRIES_CONF")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        cmd::run(&mut c, timeout)
    }

    /// `podman run ARGS` with the runtime chosen for this machine; a
    /// detached container (`-d`) is remembered by its name for removal.
    pub fn run(&mut self, args: &[&str], timeout: Duration) -> Result<Out> {
        let mut full: Vec<&str> = vec!["run"];
        if let Some(r) = self.runtime {
            full.extend(["--runtime", r]);
        }
        full.extend(args);
        if let Some(i) = args.iter().position(|a| *a == "--name") {
            if let Some(name) = args.get(i + 1) {
                self.containers.push((*name).to_owned());
            }
        }
        self.podman(&full, timeout)
    }

    /// Proves podman can start a container at all here (no network): the
    /// error, when it cannot.
    pub fn smoke(&mut self) -> Result<(), String> {
        let image = self.image.clone();
        match self.run(
            &["--rm", "--network", "none", &image, "/bin/true"],
            Duration::from_secs(60),
        ) {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(out.describe("failed")),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// `podman exec NAME ARGS`.
    pub fn exec(&self, name: &str, args: &[&str], timeout: Duration) -> Result<Out> {
        let mut full = vec!["exec", name];
        full.extend(args);
        self.podman(&full, timeout)
    }

    /// `podman rm -f -t 0 NAME` (stops it, which runs the plugin's DEL).
    pub fn rm(&mut self, name: &str) -> Result<Out> {
        self.containers.retain(|c| c != name);
        self.podman(&["rm", "-f", "-t", "0", name], Duration::from_secs(60))?
            .ok()
    }

    /// podman's own event log (container and network events), for failures.
    pub fn events(&self) -> String {
        fs::read_to_string(self.dir().join("events.log")).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.containers) {
            if let Err(e) = self.podman(&["rm", "-f", "-t", "0", &name], Duration::from_secs(60)) {
                eprintln!("podman rm {name}: {e:#}");
            }
        }
        if self.owns_lock {
            let _ = fs::remove_file(LIBPOD_LOCK);
        }
        let Some(dir) = self.dir.take() else { return };
        // podman keeps the image's and containers' mounts (shm, vfs) until
        // reset; unmount everything below our directory, deepest first.
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| Path::new(m).starts_with(dir.path()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = cmd::run(
                Command::new("umount").args(["-l", &m]),
                Duration::from_secs(10),
            );
        }
        let path = dir.path().to_owned();
        if let Err(e) = dir.close() {
            let mut msg = String::new();
            let _ = write!(msg, "removing {}: {e}", path.display());
            eprintln!("{msg}");
        }
    }
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}
