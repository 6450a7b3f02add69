//! The systemd unit in `dist/` and the daemon's side of `Type=notify`.
//!
//! There is no systemd as PID 1 here, so the unit is checked with
//! `systemd-analyze verify` and `systemd-analyze security --offline`, and the
//! notify protocol is played by the test: it binds a datagram socket, starts
//! the daemon with `NOTIFY_SOCKET` (and `WATCHDOG_USEC`) pointing at it, and
//! reads what the daemon says.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use testbed::{proxytun_bin, workspace_root, Cluster};

fn unit_text() -> String {
    std::fs::read_to_string(workspace_root().join("dist/proxytun.service")).expect("read the unit")
}

/// The value of `key=` in the unit (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

/// The unit with `ExecStart` pointing at the binary under test.
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let bin = proxytun_bin().expect("proxytun binary");
    let text = unit_text().replace("/usr/local/bin/proxytun", &bin.display().to_string());
    let path = dir.join("proxytun.service");
    std::fs::write(&path, text).expect("write the unit");
    path
}

#[test]
fn unit_file_verifies_and_is_hardened() {
    let unit = unit_text();
    for (key, want) in [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "proxytun"),
        ("RuntimeDirectory", "proxytun"),
        ("NoNewPrivileges", "yes"),
    ] {
        assert_eq!(unit_value(&unit, key).as_deref(), Some(want), "{key}");
    }
    let caps = unit_value(&unit, "CapabilityBoundingSet").expect("CapabilityBoundingSet");
    assert!(caps.contains("CAP_NET_ADMIN"), "{caps}");
    assert!(!caps.contains("CAP_SYS_MODULE"), "{caps}");

    // ExecStart's arguments are ones the daemon accepts: with a missing
    // config it fails on the config, not on its command line.
    let exec = unit_value(&unit, "ExecStart").expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(
        args[..3],
        ["run", "--config", "/etc/proxytun/proxytun.toml"]
    );
    let out = Command::new(proxytun_bin().expect("bin"))
        .args(["run", "--config", "/nonexistent/proxytun.toml"])
        .output()
        .expect("run the daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot read config file"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on some warnings (an unknown value is only "ignored"),
    // so any line about the unit counts as a failure.
    assert!(out.status.success(), "verify failed: {err}");
    assert!(
        !err.lines().any(|l| l.contains("proxytun.service")),
        "verify complained: {err}"
    );

    // The same check must catch a broken unit, or it proves nothing.
    let broken = unit_text().replace("Type=notify", "Type=notifyy");
    let bad = dir.path().join("broken.service");
    std::fs::write(&bad, broken).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&bad)
        .output()
        .expect("systemd-analyze");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("notifyy"),
        "verify missed a bad Type="
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let score: f64 = text
        .split("Overall exposure level for proxytun.service:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    println!("systemd-analyze security: exposure {score}");
    // systemd rates up to 4.9 as "OK"; a root network daemon with no
    // hardening scores 9.6 ("UNSAFE").
    assert!(score < 5.0, "exposure {score}: the hardening regressed");
}

/// What the fake service manager heard.
fn listen(sock: UnixDatagram, api: std::path::PathBuf) -> mpsc::Receiver<(String, bool)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                // At READY=1 the API must already accept connections.
                let api_up = UnixStream::connect(&api).is_ok();
                if tx.send((msg, api_up)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn wait_for(
    rx: &mpsc::Receiver<(String, bool)>,
    what: &str,
    within: Duration,
) -> (String, bool, Vec<String>) {
    let end = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((msg, api_up)) => {
                if msg.lines().any(|l| l == what) {
                    return (msg, api_up, seen);
                }
                seen.push(msg);
            }
            Err(_) => break,
        }
    }
    panic!("no {what} within {within:?}; heard {seen:?}");
}

#[test]
fn daemon_notifies_ready_watchdog_and_stopping() {
    let mut c = Cluster::two_nodes("sdnotify").expect("cluster");
    c.a.stop().expect("stop a");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    let rx = listen(sock, c.a.socket().to_owned());
    c.a.set_env("NOTIFY_SOCKET", &path.display().to_string());
    c.a.set_env("WATCHDOG_USEC", "400000");

    c.a.start().expect("start a under the fake service manager");
    let (ready, api_up, before) = wait_for(&rx, "READY=1", Duration::from_secs(10));
    assert!(api_up, "READY=1 came before the API socket accepted");
    assert!(before.is_empty(), "messages before READY=1: {before:?}");
    assert!(
        ready.contains("STATUS=node a subnet 10.18.1.0/24"),
        "{ready}"
    );
    // The watchdog is pinged at half of WATCHDOG_USEC.
    wait_for(&rx, "WATCHDOG=1", Duration::from_secs(3));
    wait_for(&rx, "WATCHDOG=1", Duration::from_secs(3));

    c.a.stop().expect("stop a");
    wait_for(&rx, "STOPPING=1", Duration::from_secs(5));
}

#[test]
fn install_script_stages_binaries_unit_and_config() {
    let bin = proxytun_bin().expect("proxytun binary");
    let from = bin.parent().expect("bin dir").to_owned();
    if !from.join("proxytun-cni").exists() {
        // The CNI plugin is a workspace binary built with the tests.
        panic!(
            "{} missing: cargo build --workspace --bins",
            from.join("proxytun-cni").display()
        );
    }
    let dest = tempfile::tempdir().expect("tempdir");
    let run = || {
        Command::new("bash")
            .arg(workspace_root().join("scripts/install.sh"))
            .args(["--prefix", "/usr/local", "--from"])
            .arg(&from)
            .env("DESTDIR", dest.path())
            .output()
            .expect("run install.sh")
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dest.path();
    for (path, mode) in [
        ("usr/local/bin/proxytun", 0o755),
        ("opt/cni/bin/proxytun-cni", 0o755),
        ("etc/systemd/system/proxytun.service", 0o644),
        ("etc/proxytun/proxytun.toml", 0o640),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{path}");
    }
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/proxytun.service")).expect("unit");
    assert_eq!(
        unit_value(&unit, "ExecStart").as_deref(),
        Some("/usr/local/bin/proxytun run --config /etc/proxytun/proxytun.toml")
    );
    // The installed binary runs and the installed config is one it accepts.
    let version = Command::new(root.join("usr/local/bin/proxytun"))
        .arg("--version")
        .output()
        .expect("installed binary");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("proxytun "));

    // A second run keeps an operator's config.
    let config = root.join("etc/proxytun/proxytun.toml");
    std::fs::write(&config, "# mine\n").expect("edit config");
    let out = run();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        "# mine\n"
    );
}
