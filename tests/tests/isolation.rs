//! Tenant isolation end to end (docs/isolation.md): two apps, `shop` and
//! `bank`, with instances on both nodes of a local-store cluster (each node
//! keeps its own policy, set through its own CLI).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testbed::{eventually, Cluster, Container, Node, TCP_PORT, UDP_PORT};

/// How long a refused probe may take: refused packets are answered (a
/// RST, an ICMP error: tests/tests/policy_reset.rs), so TCP connect and
/// UDP fail at once; on the receiving node they are only dropped and time
/// out.
const REFUSED: Duration = Duration::from_secs(2);

/// `tcp-hello` and `udp-hello` that must both fail.
fn refused(c: &Container, ip: IpAddr, what: &str) {
    let secs = format!("{}", REFUSED.as_secs_f64());
    let tcp = SocketAddr::new(ip, TCP_PORT).to_string();
    let out = c
        .probe(&["tcp-hello", &tcp, "--timeout", &secs], REFUSED * 3)
        .expect("probe runs");
    assert!(
        !out.status.success(),
        "{what}: TCP to {tcp} passed: {}",
        out.stdout
    );
    let udp = SocketAddr::new(ip, UDP_PORT).to_string();
    let out = c
        .probe(&["udp-hello", &udp, "--timeout", &secs], REFUSED * 3)
        .expect("probe runs");
    assert!(
        !out.status.success(),
        "{what}: UDP to {udp} passed: {}",
        out.stdout
    );
}

fn both(c: &Cluster, args: &[&str]) {
    for n in c.nodes() {
        n.cli_ok(args).expect("policy command");
    }
}

fn cut(n: &Node) -> u64 {
    n.counters().expect("counters")["flows_cut_by_policy"]
        .as_u64()
        .unwrap_or(0)
}

/// A long-lived TCP connection: a python client in `c` that opens one
/// connection to the echo server at `ip:TCP_PORT` and writes one line
/// every 100 ms, counting the echoes it gets back into `file`.
struct Stream {
    _bg: testbed::cmd::Bg,
    file: PathBuf,
}

const ECHO: &str = r#"
import socket, sys, time
ip, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((ip, port), timeout=3)
f = s.makefile("rb")
f.readline()
s.sendall(b"echo\n")
s.settimeout(0.5)
n = 0
while True:
    try:
        s.sendall(b"ping\n")
        if f.readline():
            n += 1
    except OSError:
        pass
    with open(path + ".tmp", "w") as out:
        out.write(str(n))
    import os
    os.replace(path + ".tmp", path)
    time.sleep(0.1)
"#;

impl Stream {
    fn start(c: &Container, ip: IpAddr, file: PathBuf) -> Stream {
        let bg = c
            .ns()
            .spawn(
                "python3",
                &[
                    "-c",
                    ECHO,
                    &ip.to_string(),
                    &TCP_PORT.to_string(),
                    &file.to_string_lossy(),
                ],
            )
            .expect("python client");
        Stream { _bg: bg, file }
    }

    fn count(&self) -> u64 {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn grows(s: &Stream, within: Duration) -> bool {
    let before = s.count();
    std::thread::sleep(within);
    s.count() > before
}

fn tmp(c: &Cluster, name: &str) -> PathBuf {
    Path::new("/tmp").join(format!("{}{name}", c.prefix()))
}

#[test]
fn isolation_between_apps_on_two_nodes() {
    testbed::require_root().expect("root");
    let c = Cluster::two_nodes("iso").expect("cluster");
    let (_w1, _w2, shop) = c.web_on_both().expect("shop/web");
    let mut b1 = c.container("b1").expect("container");
    b1.serve("bank1").expect("serve");
    let mut b2 = c.container("b2").expect("container");
    b2.serve("bank2").expect("serve");
    let bank = c
        .deploy("bank/api", &[(&c.a, &b1, 1), (&c.b, &b2, 2)])
        .expect("bank/api");
    // The client is a shop instance registered on both nodes, so the
    // receiving node knows its app.
    let sc = c.container("sc").expect("container");
    let client = c
        .deploy("shop/client", &[(&c.a, &sc, 1)])
        .expect("shop/client");
    let _ = client;

    // Isolation off: everything reaches everything.
    eventually(Duration::from_secs(10), || sc.tcp_hello(shop.rr.v6)).expect("first IPv6 hello");
    sc.tcp_hello(bank.rr.v4)
        .expect("isolation off: shop -> bank");
    sc.udp_hello(bank.rr.v4)
        .expect("isolation off: shop -> bank UDP");

    both(&c, &["policy", "isolate", "on"]);
    // shop -> shop: both instances (same node and other node), v4 and v6.
    for rr in [IpAddr::from(shop.rr.v4), IpAddr::from(shop.rr.v6)] {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..4 {
            names.insert(sc.tcp_hello(rr).expect("shop -> shop").name);
            names.insert(sc.udp_hello(rr).expect("shop -> shop UDP").name);
        }
        assert_eq!(
            names.len(),
            2,
            "{rr}: both shop instances answer: {names:?}"
        );
    }
    // shop -> bank: the ServiceIP and each instance IP, v4 and v6.
    refused(&sc, bank.rr.v4.into(), "bank ServiceIP");
    refused(&sc, bank.rr.v6.into(), "bank ServiceIP v6");
    for i in &bank.instances {
        refused(&sc, i.instance_ip.v4.into(), "bank instance IP");
    }
    let denied = c.a.drops("policy_denied").expect("drops");
    assert!(denied >= 4, "node a counted {denied} policy denials");

    // Visible in `proxytun flows` and `status`, as text and as JSON.
    let flows = c.a.cli_ok(&["flows"]).expect("flows").stdout;
    assert!(
        flows.contains("denied (") && flows.contains("bank/api"),
        "{flows}"
    );
    let fj = c.a.cli_json(&["flows"]).expect("flows json");
    let list = fj["denied"].as_array().expect("denied list");
    assert!(
        list.iter().any(|d| d["service"] == "bank/api"
            && d["side"] == "client"
            && d["count"].as_u64() >= Some(1)),
        "{fj}"
    );
    let status = c.a.cli_ok(&["status"]).expect("status").stdout;
    assert!(status.contains("isolate on, 0 rules"), "{status}");
    let sj = c.a.cli_json(&["status"]).expect("status json");
    assert_eq!(sj["policy"]["isolate"], Value::Bool(true), "{sj}");
    assert!(
        sj["dataplane"]["policy_denied"].as_u64() >= Some(denied),
        "{sj}"
    );
    let pj = c.a.cli_json(&["policy"]).expect("policy json");
    assert_eq!(pj["isolate"], Value::Bool(true));

    // An allow rule on one port: that port works, another does not.
    both(
        &c,
        &[
            "policy",
            "allow",
            "shop",
            "bank/api",
            "--port",
            &TCP_PORT.to_string(),
        ],
    );
    let text = c.a.cli_ok(&["policy"]).expect("policy").stdout;
    assert!(
        text.contains("bank/api") && text.contains(&TCP_PORT.to_string()),
        "{text}"
    );
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..4 {
        names.insert(sc.tcp_hello(bank.rr.v4).expect("allowed port").name);
    }
    assert_eq!(names.len(), 2, "both bank instances: {names:?}");
    let udp = SocketAddr::new(bank.rr.v4.into(), UDP_PORT).to_string();
    let out = sc
        .probe(&["udp-hello", &udp, "--timeout", "2"], REFUSED * 3)
        .expect("probe");
    assert!(
        !out.status.success(),
        "port {UDP_PORT} is not allowed: {}",
        out.stdout
    );

    // Long-lived connections: the revoke cuts shop -> bank, not shop -> shop.
    let to_bank = Stream::start(
        &sc,
        bank.instances[1].instance_ip.v4.into(),
        tmp(&c, "bank"),
    );
    let to_shop = Stream::start(
        &sc,
        shop.instances[1].instance_ip.v4.into(),
        tmp(&c, "shop"),
    );
    eventually(Duration::from_secs(10), || {
        if to_bank.count() > 5 && to_shop.count() > 5 {
            Ok(())
        } else {
            anyhow::bail!(
                "streams not flowing: bank {} shop {}",
                to_bank.count(),
                to_shop.count()
            )
        }
    })
    .expect("both streams flow");
    let cut_before = cut(&c.a) + cut(&c.b);
    both(&c, &["policy", "revoke", "shop", "bank/api"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !grows(&to_bank, Duration::from_secs(2)),
        "shop -> bank still passes data after the revoke"
    );
    assert!(
        grows(&to_shop, Duration::from_secs(2)),
        "shop -> shop stopped"
    );
    let cut_after = cut(&c.a) + cut(&c.b);
    assert!(
        cut_after > cut_before,
        "flows_cut_by_policy did not grow ({cut_before} -> {cut_after})"
    );
    drop(to_bank);
    drop(to_shop);
    let _ = std::fs::remove_file(tmp(&c, "bank"));
    let _ = std::fs::remove_file(tmp(&c, "shop"));
    let _ = std::fs::remove_file(tmp(&c, "bank.tmp"));
    let _ = std::fs::remove_file(tmp(&c, "shop.tmp"));

    // Receiving-node check: node a lets everything out, node b refuses.
    c.a.cli_ok(&["policy", "isolate", "off"]).expect("off on a");
    let before = c.b.drops("policy_denied").expect("drops");
    let remote_bank = &bank.instances[1];
    refused(
        &sc,
        remote_bank.instance_ip.v4.into(),
        "bank/api/2 refused by node b",
    );
    let after = c.b.drops("policy_denied").expect("drops");
    assert!(
        after > before,
        "node b counted no policy denial ({before} -> {after})"
    );
    let bj = c.b.cli_json(&["flows"]).expect("flows json");
    assert!(
        bj["denied"]
            .as_array()
            .is_some_and(|l| l.iter().any(|d| d["side"] == "server")),
        "{bj}"
    );
    // The local bank instance on node a is reachable again.
    sc.tcp_hello(bank.instances[0].instance_ip.v4)
        .expect("isolation off on a");
}
