//! The Debian package under a real systemd: a Debian system booted with
//! systemd as PID 1 (testbed::nspawn), the .deb installed with apt, and the
//! unit run as an operator runs it: `systemctl enable --now`, the watchdog,
//! containers attached and reached, a restart that keeps them, a clean
//! stop, and a journal free of sandbox denials (the unit's syscall filter
//! and `ProtectSystem=strict` have to let the daemon work).
//!
//! It needs the package: `scripts/test.sh` builds it with
//! `scripts/package.sh` and runs this test with `PROXYTUN_DEB` set.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use testbed::nspawn::Booted;

const SHORT: Duration = Duration::from_secs(30);

/// What must never appear in the daemon's journal: the marks of a call the
/// unit's sandbox refused (the syscall filter answers EPERM, a read-only
/// path EROFS or EACCES) or of a missed watchdog ping.
const DENIALS: [&str; 8] = [
    "Operation not permitted",
    "os error 1)",
    "Permission denied",
    "Read-only file system",
    "EPERM",
    "seccomp",
    "SIGSYS",
    "Watchdog timeout",
];

fn deb() -> PathBuf {
    let path = std::env::var_os("PROXYTUN_DEB").map(PathBuf::from).expect(
        "PROXYTUN_DEB is not set: build the package with scripts/package.sh and set \
         PROXYTUN_DEB to the .deb it prints (scripts/test.sh does both)",
    );
    assert!(
        path.is_file(),
        "PROXYTUN_DEB={} is not a file",
        path.display()
    );
    path
}

/// `systemctl show -p KEY --value proxytun`.
fn show(sys: &Booted, key: &str) -> String {
    sys.exec_ok(
        &["systemctl", "show", "-p", key, "--value", "proxytun"],
        SHORT,
    )
    .expect("systemctl show")
    .stdout
    .trim()
    .to_owned()
}

/// The round-robin ServiceIP of shop/web, from `proxytun services --json`.
fn web_service_ip(sys: &Booted) -> String {
    let out = sys
        .exec_ok(&["proxytun", "services", "--json"], SHORT)
        .expect("services");
    let services: Value = serde_json::from_str(&out.stdout).expect("services JSON");
    services
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "web"))
        .and_then(|s| s["rr_ip"]["v4"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no shop/web in {}", out.stdout))
}

/// The daemon's journal since boot, checked for denials.
fn assert_journal_clean(sys: &Booted, when: &str) {
    let journal = sys
        .exec_ok(
            &[
                "journalctl",
                "-u",
                "proxytun",
                "-b",
                "--no-pager",
                "-o",
                "cat",
            ],
            SHORT,
        )
        .expect("journalctl")
        .stdout;
    for denial in DENIALS {
        assert!(
            !journal.contains(denial),
            "{when}: the journal has {denial:?}:\n{journal}"
        );
    }
}

#[test]
#[ignore = "needs the .deb and a Debian mirror: scripts/test.sh builds the package and runs this"]
fn the_package_installs_and_its_unit_runs_under_systemd() {
    testbed::require_root().expect("root");
    let deb = deb();
    let sys = Booted::boot("ptpkg", &[(&deb, "/root/proxytun.deb")]).expect("boot");

    // Installed as an operator installs it; the unit is there, not enabled.
    sys.exec_ok(
        &["apt-get", "install", "-y", "-q", "/root/proxytun.deb"],
        Duration::from_secs(120),
    )
    .expect("apt install ./proxytun.deb");
    let listed = sys
        .exec_ok(&["dpkg", "-L", "proxytun"], SHORT)
        .expect("dpkg -L")
        .stdout;
    for path in [
        "/usr/bin/proxytun",
        "/usr/lib/cni/proxytun-cni",
        "/opt/cni/bin/proxytun-cni",
        "/etc/proxytun/proxytun.toml",
        "/usr/share/man/man1/proxytun.1.gz",
        "/usr/share/man/man1/proxytun-attach.1.gz",
        "/usr/share/bash-completion/completions/proxytun",
        "/usr/share/zsh/vendor-completions/_proxytun",
        "/usr/share/fish/vendor_completions.d/proxytun.fish",
        "/usr/share/proxytun/grafana/proxytun.json",
        "/usr/share/proxytun/prometheus/alerts.yml",
    ] {
        assert!(
            listed.lines().any(|l| l == path),
            "{path} is not in the package:\n{listed}"
        );
    }
    assert!(
        listed
            .lines()
            .any(|l| l.ends_with("/systemd/system/proxytun.service")),
        "no unit in the package:\n{listed}"
    );
    let enabled = sys
        .exec(&["systemctl", "is-enabled", "proxytun"], SHORT)
        .expect("is-enabled");
    assert_eq!(
        enabled.stdout.trim(),
        "disabled",
        "installed enabled: {}",
        enabled.describe("")
    );
    let unit = sys
        .exec_ok(&["systemctl", "cat", "proxytun"], SHORT)
        .expect("cat")
        .stdout;
    for line in [
        "ExecStart=/usr/bin/proxytun run",
        "WatchdogSec=30s",
        "ProtectSystem=strict",
    ] {
        assert!(
            unit.contains(line),
            "the installed unit has no {line:?}:\n{unit}"
        );
    }

    // The operator's two steps: a cluster key, then enable --now. A short
    // watchdog (a drop-in, as an operator would add) shows the daemon pings it.
    sys.exec_ok(
        &["proxytun", "keygen", "--out", "/etc/proxytun/cluster.key"],
        SHORT,
    )
    .expect("keygen");
    sys.sh(
        "mkdir -p /etc/systemd/system/proxytun.service.d && \
         printf '[Service]\\nWatchdogSec=2s\\n' > /etc/systemd/system/proxytun.service.d/watchdog.conf && \
         systemctl daemon-reload",
        SHORT,
    )
    .expect("watchdog drop-in");
    // Type=notify: this returns once the daemon has sent READY=1.
    let started = sys.exec(
        &["systemctl", "enable", "--now", "proxytun"],
        Duration::from_secs(90),
    );
    let started = started.expect("systemctl enable --now");
    assert!(
        started.status.success(),
        "{}\n{}",
        started.describe("failed"),
        sys.exec(&["journalctl", "-u", "proxytun", "--no-pager"], SHORT)
            .map(|o| o.stdout)
            .unwrap_or_default()
    );
    assert_eq!(show(&sys, "ActiveState"), "active");
    assert_eq!(show(&sys, "SubState"), "running");
    assert_eq!(
        show(&sys, "WatchdogUSec"),
        "2s",
        "the drop-in's watchdog in effect"
    );

    // Two containers, one a service instance, reached by ServiceIP.
    sys.sh("ip netns add web && ip netns add client", SHORT)
        .expect("netns");
    sys.exec_ok(
        &[
            "proxytun",
            "attach",
            "shop/web",
            "--netns",
            "/run/netns/web",
        ],
        SHORT,
    )
    .expect("attach web");
    sys.exec_ok(
        &[
            "proxytun",
            "attach",
            "shop/client",
            "--netns",
            "/run/netns/client",
        ],
        SHORT,
    )
    .expect("attach client");
    let sip = web_service_ip(&sys);
    let ping = [
        "ip", "netns", "exec", "client", "ping", "-c", "2", "-W", "2", &sip,
    ];
    sys.exec_ok(&ping, SHORT).expect("ping the ServiceIP");

    // Several watchdog periods: still running, never restarted.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        show(&sys, "ActiveState"),
        "active",
        "after 3 watchdog periods"
    );
    assert_eq!(show(&sys, "NRestarts"), "0", "restarted by the watchdog?");

    // A restart keeps the attachments (state in the StateDirectory).
    let before = sys
        .exec_ok(&["proxytun", "instances", "--json"], SHORT)
        .expect("instances");
    sys.exec_ok(
        &["systemctl", "restart", "proxytun"],
        Duration::from_secs(90),
    )
    .expect("restart");
    let after = sys
        .exec_ok(&["proxytun", "instances", "--json"], SHORT)
        .expect("instances");
    let parse = |s: &str| serde_json::from_str::<Value>(s).expect("instances JSON");
    assert_eq!(
        parse(&before.stdout),
        parse(&after.stdout),
        "attachments after a restart"
    );
    assert_eq!(web_service_ip(&sys), sip, "the ServiceIP after a restart");
    testbed::eventually(SHORT, || sys.exec_ok(&ping, SHORT).map(drop)).expect("ping after restart");
    assert_journal_clean(&sys, "after start and restart");

    // A clean stop: inactive, not failed, and the TUN is gone.
    sys.exec_ok(&["systemctl", "stop", "proxytun"], Duration::from_secs(60))
        .expect("stop");
    assert_eq!(show(&sys, "ActiveState"), "inactive");
    assert_eq!(show(&sys, "Result"), "success");
    let tun = sys
        .exec(&["ip", "link", "show", "ptun0"], SHORT)
        .expect("ip link");
    assert!(!tun.status.success(), "ptun0 is still there after stop");
    assert_journal_clean(&sys, "after stop");
}
