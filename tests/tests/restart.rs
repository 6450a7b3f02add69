//! A daemon restart, clean (SIGTERM) or a crash (SIGKILL), keeps the
//! attachments, the allocated addresses and the peers, and traffic flows
//! again afterwards.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{eventually, model::instances_from_json, registered_peers, Cluster, Node};

/// What must survive a restart, as `proxytun instances --json`,
/// `services --json` and `peers --json` show it.
fn state(node: &Node) -> (BTreeSet<String>, BTreeSet<String>, Value) {
    let instances = instances_from_json(&node.cli_json(&["instances"]).expect("instances"))
        .expect("instances JSON")
        .into_iter()
        .map(|i| i.summary())
        .collect();
    let services =
        testbed::model::services_from_json(&node.cli_json(&["services"]).expect("services"))
            .expect("services JSON")
            .into_iter()
            .map(|s| format!("{} rr={:?}", s.name(), s.rr_ip))
            .collect();
    // Only the registration: liveness and RTT are measurements that move.
    let peers = registered_peers(&node.cli_json(&["peers"]).expect("peers"));
    (instances, services, peers)
}

fn restart_keeps_state(test: &str, crash: bool) {
    let mut c = Cluster::two_nodes(test).expect("cluster");
    let (_w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    let (client_b, _) = c.client(&c.b, "clb", 2).expect("client b");
    eventually(Duration::from_secs(10), || client_a.tcp_hello(d.rr.v6)).expect("v6 up");

    let before_a = state(&c.a);
    let before_b = state(&c.b);
    assert_eq!(
        before_a.0.len(),
        3,
        "a: web/1, web/2, client/1: {:?}",
        before_a.0
    );

    let t = Instant::now();
    if crash {
        c.a.kill().expect("SIGKILL");
        c.a.start().expect("start after SIGKILL");
    } else {
        c.a.restart().expect("restart after SIGTERM");
    }
    eprintln!(
        "node a {} and back in {:?}",
        if crash { "killed" } else { "stopped" },
        t.elapsed()
    );

    let after_a = state(&c.a);
    assert_eq!(
        after_a, before_a,
        "node a's state changed across the restart"
    );
    assert_eq!(state(&c.b), before_b, "node b's state changed");

    // Traffic works again: both instances from the restarted node's client,
    // and node b's client reaches the instance on the restarted node.
    let seen: BTreeSet<String> = [IpAddr::from(d.rr.v4), IpAddr::from(d.rr.v6)]
        .into_iter()
        .flat_map(|ip| (0..2).map(move |_| ip))
        .map(|ip| {
            client_a
                .tcp_hello(ip)
                .unwrap_or_else(|e| panic!("after restart, a -> {ip}: {e:#}"))
                .name
        })
        .collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["web1", "web2"]);
    let pinned = d.instances[0].instance_ip;
    for ip in [IpAddr::from(pinned.v4), IpAddr::from(pinned.v6)] {
        assert_eq!(
            client_b
                .tcp_hello(ip)
                .unwrap_or_else(|e| panic!("after restart, b -> web/1 at {ip}: {e:#}"))
                .name,
            "web1"
        );
        client_b
            .ping(ip, 3)
            .unwrap_or_else(|e| panic!("after restart, ping {ip}: {e:#}"));
    }
}

#[test]
fn restart_after_sigterm_keeps_attachments() {
    restart_keeps_state("sigterm", false);
}

#[test]
fn restart_after_sigkill_keeps_attachments() {
    restart_keeps_state("sigkill", true);
}
