//! The round-robin ServiceIP rotates new connections over the instances on
//! both nodes, and a detached instance gets no new connections.

use std::net::IpAddr;
use std::time::Duration;

use testbed::{eventually, Cluster, Container};

/// `n` new TCP connections to `ip`; the names of the servers that answered.
fn names(client: &Container, ip: IpAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            client
                .tcp_hello(ip)
                .unwrap_or_else(|e| panic!("connection {i} to {ip}: {e:#}"))
                .name
        })
        .collect()
}

fn assert_alternates(seq: &[String], what: &str) {
    assert!(
        seq.windows(2).all(|w| w[0] != w[1]),
        "{what}: not a strict rotation: {seq:?}"
    );
    let mut distinct = seq.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, ["web1", "web2"], "{what}: {seq:?}");
}

#[test]
fn round_robin_alternates_across_nodes() {
    let c = Cluster::two_nodes("rr").expect("cluster");
    let (_w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    let (client_b, _) = c.client(&c.b, "clb", 2).expect("client b");
    // Let IPv6 DAD finish before counting.
    eventually(Duration::from_secs(10), || client_a.tcp_hello(d.rr.v6)).expect("v6 up on a");
    eventually(Duration::from_secs(10), || client_b.tcp_hello(d.rr.v6)).expect("v6 up on b");

    for (who, client) in [("a", &client_a), ("b", &client_b)] {
        for ip in [IpAddr::from(d.rr.v4), IpAddr::from(d.rr.v6)] {
            let seq = names(client, ip, 6);
            eprintln!("client on {who} -> {ip}: {}", seq.join(" "));
            assert_alternates(&seq, &format!("client on node {who} -> {ip}"));
        }
    }
}

#[test]
fn detached_instance_gets_no_new_flows() {
    let c = Cluster::two_nodes("detach").expect("cluster");
    let (w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client_a, _) = c.client(&c.a, "cla", 1).expect("client a");
    let (client_b, _) = c.client(&c.b, "clb", 2).expect("client b");
    eventually(Duration::from_secs(10), || client_a.tcp_hello(d.rr.v6)).expect("v6 up on a");
    eventually(Duration::from_secs(10), || client_b.tcp_hello(d.rr.v6)).expect("v6 up on b");
    let before = names(&client_a, d.rr.v4.into(), 4);
    assert_alternates(&before, "before detach");
    // Everything web1 answered before the detach, warm-ups included.
    let served_before = w1
        .server_log()
        .lines()
        .filter(|l| l.starts_with("tcp from="))
        .count();

    // The orchestrator detaches web/1 on its node and withdraws it elsewhere.
    let gateway_mac = c.a.bridge_mac().expect("bridge MAC");
    let out = c.a.cli_ok(&["detach", "shop/web/1"]).expect("detach");
    // Containers cache the gateway's MAC: if the bridge changed its address
    // with its ports, the other containers on the node would be cut off.
    assert_eq!(
        c.a.bridge_mac().expect("bridge MAC"),
        gateway_mac,
        "the bridge (the containers' gateway) changed its MAC address when a port left"
    );
    eprintln!("{}", out.stdout.trim());
    c.b.cli_ok(&["remote", "remove", "shop/web/1"])
        .expect("remote remove");

    for node in c.nodes() {
        let keys: Vec<String> = node
            .instances()
            .expect("instances")
            .iter()
            .map(|i| i.key())
            .collect();
        assert!(
            !keys.contains(&"shop/web/1".to_owned()),
            "node {} still lists shop/web/1: {keys:?}",
            node.name
        );
    }
    let links = w1.ns().ip(&["-o", "link", "show"]).expect("ip link");
    assert!(
        !links.stdout.contains("eth0"),
        "the detached container still has its interface:\n{}",
        links.stdout
    );

    for (who, client) in [("a", &client_a), ("b", &client_b)] {
        for ip in [IpAddr::from(d.rr.v4), IpAddr::from(d.rr.v6)] {
            let seq = names(client, ip, 6);
            eprintln!("after detach, client on {who} -> {ip}: {}", seq.join(" "));
            assert!(
                seq.iter().all(|n| n == "web2"),
                "client on {who}: a detached instance got new flows: {seq:?}"
            );
        }
    }
    let log = w1.server_log();
    let after_detach = log.lines().filter(|l| l.starts_with("tcp from=")).count();
    assert_eq!(
        after_detach, served_before,
        "web1 saw connections after it was detached:\n{log}"
    );
}
