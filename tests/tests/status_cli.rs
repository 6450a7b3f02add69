//! The people-facing CLI against real daemons: `status` reads like
//! `wg show` (peers with RTT and liveness, the packet path, counters),
//! `services` and `flows` print tables or `--json`, and `log-level`
//! changes the daemon's log filter while it runs.

use std::time::Duration;

use testbed::{eventually, Cluster};

#[test]
fn status_services_flows_and_log_level() {
    let c = Cluster::two_nodes("statuscli").expect("cluster");
    let (_w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");
    for _ in 0..4 {
        client
            .tcp_hello(d.rr.v4)
            .expect("hello through the ServiceIP");
    }

    // Node b shows up, with a measured RTT, once a keepalive came back.
    let status = eventually(Duration::from_secs(10), || {
        let out = c.a.cli_ok(&["status"])?.stdout;
        anyhow::ensure!(
            out.lines().any(|l| l.trim_start().starts_with("b ")
                && l.contains(" up ")
                && l.contains(" ms")),
            "no live peer b with an RTT yet:\n{out}"
        );
        Ok(out)
    })
    .expect("status with peer b up");
    for want in [
        "node ",
        "subnet ",
        "10.18.1.0/24",
        "peers:",
        "192.0.2.2:50103",
        "path ",
        "counters:",
        "flows ",
    ] {
        assert!(status.contains(want), "{want:?} missing from:\n{status}");
    }
    let packets = status
        .lines()
        .find(|l| l.trim_start().starts_with("packets"))
        .expect("packets line");
    assert!(!packets.contains("from containers 0,"), "{packets}");

    let json = c.a.cli_json(&["status"]).expect("status --json");
    let peer = &json["peer_table"][0];
    assert_eq!(peer["name"], "b", "{json}");
    assert_eq!(peer["alive"], true, "{json}");
    assert!(peer["rtt_us"].as_u64().is_some_and(|us| us > 0), "{json}");
    assert!(
        json["counters"]["flows_created"].as_u64().unwrap_or(0) >= 4,
        "{json}"
    );

    let services = c.a.cli_ok(&["services"]).expect("services").stdout;
    assert!(services.starts_with("SERVICE "), "{services}");
    assert!(services.contains(&d.rr.v4.to_string()), "{services}");
    let sj = c.a.cli_json(&["services"]).expect("services --json");
    assert!(sj.as_array().is_some_and(|a| a
        .iter()
        .any(|s| s["app"] == "shop" && s["service"] == "web")));

    let flows = c.a.cli_ok(&["flows"]).expect("flows").stdout;
    assert!(flows.starts_with("flows ("), "{flows}");
    assert!(flows.contains(&d.rr.v4.to_string()), "{flows}");
    let fj = c.a.cli_json(&["flows"]).expect("flows --json");
    assert!(
        fj["flows"].as_array().is_some_and(|f| !f.is_empty()),
        "{fj}"
    );

    // The log filter changes without a restart, and a bad one changes nothing.
    let before = c.a.cli_ok(&["log-level"]).expect("log-level").stdout;
    let set =
        c.a.cli_ok(&["log-level", "debug"])
            .expect("set debug")
            .stdout;
    assert_eq!(set.trim(), "log level set to debug");
    assert_eq!(
        c.a.cli_ok(&["log-level"]).expect("get").stdout.trim(),
        "debug"
    );
    let bad = c.a.cli(&["log-level", "proxytun=loud"]).expect("bad level");
    assert!(!bad.status.success(), "{bad:?}");
    assert!(bad.stderr.starts_with("error: "), "{}", bad.stderr);
    assert_eq!(
        c.a.cli_ok(&["log-level"]).expect("get").stdout.trim(),
        "debug"
    );
    assert_ne!(
        before.trim(),
        "",
        "the daemon reports the filter it started with"
    );
}
