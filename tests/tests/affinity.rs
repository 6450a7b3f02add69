//! Client affinity (`proxytun affinity APP/SERVICE client`): every new flow
//! from one client to a ServiceIP goes to one instance, so a protocol with
//! several connections works through a ServiceIP balanced over two nodes;
//! the setting survives a restart, bad settings are refused and change
//! nothing, and `none` brings the rotation back.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;
use testbed::{eventually, Cluster, Container, Node};

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

fn distinct(seq: &[String]) -> Vec<String> {
    let mut d = seq.to_vec();
    d.sort();
    d.dedup();
    d
}

/// shop/web's `affinity` as `proxytun services --json` shows it on `node`.
fn affinity_of(node: &Node) -> Value {
    let out = node.cli_ok(&["services", "--json"]).expect("services");
    let list: Value = serde_json::from_str(&out.stdout).expect("JSON");
    list.as_array()
        .and_then(|l| l.iter().find(|s| s["service"] == "web"))
        .map(|s| s["affinity"].clone())
        .unwrap_or_else(|| panic!("no shop/web in {}", out.stdout))
}

/// One bounded iperf3 run from `client` to `ip` (servers on both instances).
fn iperf3(client: &Container, ip: IpAddr) -> Result<String, String> {
    let ip = ip.to_string();
    let args = ["-c", &ip, "-t", "1", "--connect-timeout", "3000", "-J"];
    match client.ns().exec("iperf3", &args, Duration::from_secs(15)) {
        Ok(out) if out.status.success() => Ok(out.stdout),
        Ok(out) => Err(out.describe("failed")),
        Err(e) => Err(format!("{e:#}")),
    }
}

#[test]
fn client_affinity_keeps_a_clients_connections_on_one_instance() {
    let mut c = Cluster::two_nodes("stick").expect("cluster");
    let (w1, w2, d) = c.web_on_both().expect("deploy");
    let (client, _) = c.client(&c.a, "cla", 1).expect("client");
    let (other, _) = c.client(&c.a, "clo", 2).expect("second client");
    eventually(Duration::from_secs(10), || client.tcp_hello(d.rr.v6)).expect("v6 up");
    let (v4, v6) = (IpAddr::from(d.rr.v4), IpAddr::from(d.rr.v6));

    // The default: every new connection rotates.
    let none = serde_json::json!({"mode": "none", "timeout_s": 10800});
    assert_eq!(affinity_of(&c.a), none, "no affinity by default");
    let rr = names(&client, v4, 4);
    assert_eq!(distinct(&rr), ["web1", "web2"], "round robin first: {rr:?}");

    // Bad settings are refused with a message and change nothing.
    let zero =
        c.a.cli(&["affinity", "shop/web", "client", "--timeout", "0"])
            .expect("cli");
    assert!(
        !zero.status.success(),
        "timeout 0 accepted: {}",
        zero.describe("")
    );
    assert!(zero.stderr.contains("1 to 86400"), "{}", zero.stderr);
    let unknown = c.a.cli(&["affinity", "shop/nope", "client"]).expect("cli");
    assert!(
        !unknown.status.success() && unknown.stderr.contains("no service shop/nope"),
        "{}",
        unknown.describe("")
    );
    assert_eq!(
        affinity_of(&c.a),
        none,
        "a refused setting changed something"
    );

    // Client affinity: each client sticks to one instance, per ServiceIP.
    let set =
        c.a.cli_ok(&["affinity", "shop/web", "client", "--timeout", "120"])
            .expect("set");
    assert!(set.stdout.contains("client 120s"), "{}", set.stdout);
    assert_eq!(
        affinity_of(&c.a),
        serde_json::json!({"mode": "client", "timeout_s": 120})
    );
    for ip in [v4, v6] {
        for (who, cl) in [("first", &client), ("second", &other)] {
            let seq = names(cl, ip, 6);
            assert_eq!(distinct(&seq).len(), 1, "{who} client -> {ip}: {seq:?}");
        }
    }

    // A protocol of two connections (iperf3: control, then data) works
    // through the ServiceIP only when both land on the same server.
    let _s1 = w1.ns().spawn("iperf3", &["-s"]).expect("iperf3 server 1");
    let _s2 = w2.ns().spawn("iperf3", &["-s"]).expect("iperf3 server 2");
    eventually(Duration::from_secs(10), || {
        iperf3(&client, v4).map_err(anyhow::Error::msg)
    })
    .expect("iperf3 through the ServiceIP with client affinity");

    // The setting is part of the service's record: it survives a restart.
    c.a.restart().expect("restart");
    assert_eq!(affinity_of(&c.a)["mode"], "client", "after a restart");
    eventually(Duration::from_secs(10), || client.tcp_hello(v4)).expect("up after restart");
    let after = names(&client, v4, 4);
    assert_eq!(distinct(&after).len(), 1, "after a restart: {after:?}");

    // Back to none: the rotation returns, and iperf3's two connections
    // are split over the two servers again, so it fails.
    c.a.cli_ok(&["affinity", "shop/web", "none"]).expect("none");
    assert_eq!(affinity_of(&c.a), none);
    let rr = names(&client, v4, 4);
    assert_eq!(distinct(&rr), ["web1", "web2"], "round robin again: {rr:?}");
    assert!(
        iperf3(&client, v4).is_err(),
        "iperf3 worked with its connections split"
    );
}

/// shop/web's round-robin ServiceIP as `node` knows it.
fn rr_of(node: &Node) -> anyhow::Result<IpAddr> {
    let out = node.cli_ok(&["services", "--json"])?;
    let list: Value = serde_json::from_str(&out.stdout)?;
    list.as_array()
        .and_then(|l| l.iter().find(|s| s["service"] == "web"))
        .and_then(|s| s["rr_ip"]["v4"].as_str())
        .ok_or_else(|| anyhow::anyhow!("node {} has no shop/web yet", node.name))?
        .parse()
        .map_err(anyhow::Error::from)
}

#[test]
fn with_etcd_the_setting_reaches_every_node() {
    let c = testbed::Cluster3::start("stketcd").expect("cluster");
    let (_wa, _) = c
        .server(&c.a, "wa", "shop/web", 1, "web-a")
        .expect("server a");
    let (_wb, _) = c
        .server(&c.b, "wb", "shop/web", 2, "web-b")
        .expect("server b");
    let (client, _) = c.client(&c.c, "clc", 1).expect("client on c");
    c.wait_mesh(Duration::from_secs(10)).expect("mesh");
    // The client's node learns the service and both instances from etcd
    // on its first packet to the ServiceIP (a miss, then an interest).
    let rr = rr_of(&c.a).expect("the ServiceIP, from node a");
    eventually(Duration::from_secs(15), || {
        let ip = rr;
        let seq: Vec<String> = (0..4)
            .map(|_| client.tcp_hello(ip).map(|h| h.name))
            .collect::<anyhow::Result<_>>()?;
        if distinct(&seq) == ["web-a", "web-b"] {
            Ok(())
        } else {
            anyhow::bail!("not rotating over both yet: {seq:?}")
        }
    })
    .expect("round robin over a and b from c");

    // Set on node a; node c, where the client is, balances by it.
    c.a.cli_ok(&["affinity", "shop/web", "client", "--timeout", "300"])
        .expect("set on a");
    eventually(Duration::from_secs(10), || {
        match affinity_of(&c.c)["mode"].as_str() {
            Some("client") => Ok(()),
            other => anyhow::bail!("c shows {other:?}"),
        }
    })
    .expect("the setting reaches node c");
    let seq = names(&client, rr, 6);
    assert_eq!(
        distinct(&seq).len(),
        1,
        "client on c with affinity set on a: {seq:?}"
    );
    assert_eq!(
        affinity_of(&c.b)["timeout_s"],
        300,
        "node b has the setting too"
    );
}
