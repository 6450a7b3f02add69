//! A Debian system booted with systemd as PID 1, for the package test: the
//! root file system made by `mmdebstrap` from Debian's packages, booted by
//! `systemd-nspawn --boot` in a network namespace of its own, commands run
//! inside it with `nsenter`.
//!
//! The host needs no systemd: nspawn runs with `--register=no
//! --keep-unit` (no machined, no scope unit) inside a private mount
//! namespace whose `/run/systemd` is a fresh tmpfs, so nothing it mounts
//! or leaves behind reaches the host. The system has `--private-network`:
//! only its own loopback, no route out, so whatever runs inside keeps its
//! traffic there. Drop powers it off (SIGTERM to nspawn, which halts the
//! system cleanly), kills it if that takes too long, and removes the root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::{run, run_ok, Bg, Out};
use crate::support::workspace_root;

/// The packages of the booted system besides Debian's minimal base:
/// systemd as init, and the tools the package test runs inside.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,iputils-ping,nftables";

/// How long a boot may take to reach `running` (or `degraded`).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// A booted system; see the module doc.
#[derive(Debug)]
pub struct Booted {
    nspawn: Bg,
    root: PathBuf,
    leader: u32,
    /// The boot's console output (nspawn's stdout and stderr).
    console: PathBuf,
}

impl Booted {
    /// Makes a root file system of the host's Debian release (cached as a
    /// tarball under target/ptboot, made by mmdebstrap on first use),
    /// copies `files` into it (host path, path inside), boots it and waits
    /// until systemd says the boot is over. `name` is the machine name
    /// (a hostname: letters, digits and dashes).
    pub fn boot(name: &str, files: &[(&Path, &str)]) -> Result<Booted> {
        for tool in ["mmdebstrap", "systemd-nspawn", "nsenter", "unshare"] {
            if run_ok(
                "sh",
                &["-c", &format!("command -v {tool}")],
                Duration::from_secs(5),
            )
            .is_err()
            {
                bail!(
                    "{tool} is missing: install mmdebstrap and systemd-container \
                     (scripts/test.sh does)"
                );
            }
        }
        let dir = workspace_root().join("target/ptboot");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let tarball = base_tarball(&dir)?;
        let root = dir.join(format!("{name}-{}", std::process::id()));
        if root.exists() {
            std::fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
        }
        std::fs::create_dir_all(&root)?;
        run_ok(
            "tar",
            &[
                "-C",
                &root.display().to_string(),
                "-xf",
                &tarball.display().to_string(),
            ],
            Duration::from_secs(120),
        )?;
        for (from, to) in files {
            let dest = root.join(to.trim_start_matches('/'));
            std::fs::copy(from, &dest)
                .with_context(|| format!("copy {} to {}", from.display(), dest.display()))?;
        }
        let console = dir.join(format!("{name}-{}.console", std::process::id()));
        let script = format!(
            "mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && \
             exec systemd-nspawn --quiet --directory={root} --machine={name} --boot \
             --private-network --register=no --keep-unit --console=read-only",
            root = root.display()
        );
        let nspawn = Bg::spawn_logged(
            Command::new("unshare").args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ]),
            &console,
            Duration::from_secs(30),
        )?;
        let mut booted = Booted {
            nspawn,
            root,
            leader: 0,
            console,
        };
        booted.leader = booted.find_leader()?;
        // Until PID 1 listens, systemctl fails at once; then `--wait`
        // returns when the boot is over.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let out = booted.exec(&["systemctl", "is-system-running", "--wait"], BOOT_TIMEOUT)?;
            match out.stdout.trim() {
                "running" | "degraded" => return Ok(booted),
                _ if Instant::now() >= deadline => bail!(
                    "{}\n--- console ---\n{}",
                    out.describe("did not report a finished boot"),
                    booted.console_text()
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Runs `args` inside the system (all its namespaces, its root, a clean
    /// environment), with a deadline; the caller decides what the exit
    /// status means.
    pub fn exec(&self, args: &[&str], timeout: Duration) -> Result<Out> {
        let target = self.leader.to_string();
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &target, "--all", "--root", "--wd", "--"])
            .args([
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
            ])
            .args([
                "LANG=C.UTF-8",
                "SYSTEMD_PAGER=",
                "DEBIAN_FRONTEND=noninteractive",
            ])
            .args(args);
        run(&mut cmd, timeout)
    }

    /// [`Booted::exec`] that fails unless the command succeeds.
    pub fn exec_ok(&self, args: &[&str], timeout: Duration) -> Result<Out> {
        self.exec(args, timeout)?.ok()
    }

    /// A shell command line inside the system, which must succeed.
    pub fn sh(&self, script: &str, timeout: Duration) -> Result<Out> {
        self.exec_ok(&["sh", "-c", script], timeout)
    }

    /// What the boot printed so far (for failure messages).
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The system's PID 1 as the host sees it: the first `systemd` among
    /// nspawn's descendants.
    fn find_leader(&mut self) -> Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let Some(top) = self.nspawn.pid() else {
                bail!("nspawn is gone");
            };
            if let Some(pid) = descendants(top).into_iter().find(|p| comm(*p) == "systemd") {
                return Ok(pid);
            }
            if let Some(status) = self.nspawn.exited()? {
                bail!("systemd-nspawn exited ({status}):\n{}", self.console_text());
            }
            if Instant::now() >= deadline {
                bail!("no systemd started within 30 s:\n{}", self.console_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // SIGTERM makes nspawn halt the system; the grace period covers a
        // clean shutdown, then SIGKILL.
        self.nspawn.stop();
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("nspawn: cannot remove {}: {e}", self.root.display());
        }
        // The console is kept for the post-mortem of a failed test.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.console);
        }
    }
}

/// The tarball of the base system for the host's release, made once.
fn base_tarball(dir: &Path) -> Result<PathBuf> {
    let release = std::fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .context("no VERSION_CODENAME in /etc/os-release: the package test needs a Debian host")?;
    let tarball = dir.join(format!("{codename}-{}.tar", PACKAGES.replace(',', "+")));
    if tarball.exists() {
        return Ok(tarball);
    }
    let partial = tarball.with_extension("partial.tar");
    let include = format!("--include={PACKAGES}");
    run(
        Command::new("mmdebstrap").args([
            "--quiet",
            "--variant=minbase",
            &include,
            &codename,
            &partial.display().to_string(),
        ]),
        Duration::from_secs(600),
    )?
    .ok()
    .context("mmdebstrap (needs Debian's package mirror)")?;
    std::fs::rename(&partial, &tarball)?;
    Ok(tarball)
}

/// Every descendant of `pid`, breadth first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(c);
                queue.push(c);
            }
        }
    }
    out
}

/// The command name of `pid`, or "" once it is gone.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}
