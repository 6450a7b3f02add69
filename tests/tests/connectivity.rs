//! A client reaches services by ServiceIP on its own node and on the other
//! node, over TCP, UDP and ICMP echo, in IPv4 and IPv6; and a bulk transfer
//! across nodes arrives intact.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use testbed::{eventually, Cluster, Container, Instance};

/// Checks TCP, UDP and ping from `client` to `rr` (one family), expecting
/// the server `expect` and the server to see the client's instance IP.
fn check_reach(client: &Container, client_inst: &Instance, rr: IpAddr, expect: &str) {
    let hello = client
        .tcp_hello(rr)
        .unwrap_or_else(|e| panic!("TCP to {rr}: {e:#}"));
    assert_eq!(
        hello.name, expect,
        "TCP to {rr} answered by the wrong server"
    );
    let saw = hello.server_saw.expect("server_saw").ip();
    let want: IpAddr = match rr {
        IpAddr::V4(_) => client_inst.instance_ip.v4.into(),
        IpAddr::V6(_) => client_inst.instance_ip.v6.into(),
    };
    assert_eq!(
        saw, want,
        "the server should see the client's instance IP as the source"
    );

    let udp = client
        .udp_hello(rr)
        .unwrap_or_else(|e| panic!("UDP to {rr}: {e:#}"));
    assert_eq!(udp.name, expect, "UDP to {rr} answered by the wrong server");
    assert_eq!(
        udp.from.expect("from").ip(),
        rr,
        "UDP reply not from the ServiceIP"
    );

    let ping = client
        .ping(rr, 3)
        .unwrap_or_else(|e| panic!("ping {rr}: {e:#}"));
    assert!(
        ping.stdout.contains(&format!("from {rr}")),
        "{}",
        ping.stdout
    );
}

#[test]
fn reaches_service_ips_on_same_and_other_node() {
    let c = Cluster::two_nodes("connect").expect("cluster");
    let mut alpha = c.container("alpha").expect("container");
    alpha.serve("alpha1").expect("serve");
    let mut beta = c.container("beta").expect("container");
    beta.serve("beta1").expect("serve");
    let alpha_d = c
        .deploy("shop/alpha", &[(&c.a, &alpha, 1)])
        .expect("deploy alpha");
    let beta_d = c
        .deploy("shop/beta", &[(&c.b, &beta, 1)])
        .expect("deploy beta");
    let (client_a, inst_a) = c.client(&c.a, "cla", 1).expect("client a");
    let (client_b, inst_b) = c.client(&c.b, "clb", 2).expect("client b");

    // IPv6 addresses may still be tentative (DAD) right after attach: wait
    // for the first v6 exchange, then check everything strictly.
    for (client, rr) in [(&client_a, alpha_d.rr.v6), (&client_b, beta_d.rr.v6)] {
        eventually(Duration::from_secs(10), || client.tcp_hello(rr)).expect("first IPv6 hello");
    }

    let t = Instant::now();
    for (who, client, inst) in [("a", &client_a, &inst_a), ("b", &client_b, &inst_b)] {
        for (svc, d, server) in [("alpha", &alpha_d, "alpha1"), ("beta", &beta_d, "beta1")] {
            let where_ = if (who == "a") == (svc == "alpha") {
                "same node"
            } else {
                "other node"
            };
            eprintln!(
                "client on {who} -> shop/{svc} ({where_}) v4 {} v6 {}",
                d.rr.v4, d.rr.v6
            );
            check_reach(client, inst, d.rr.v4.into(), server);
            check_reach(client, inst, d.rr.v6.into(), server);
        }
    }
    eprintln!("all probes in {:?}", t.elapsed());
}

#[test]
fn bulk_transfer_across_nodes_is_intact() {
    let c = Cluster::two_nodes("bulk").expect("cluster");
    let mut sink = c.container("sink").expect("container");
    sink.serve("sink1").expect("serve");
    let d = c.deploy("shop/sink", &[(&c.b, &sink, 1)]).expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");

    const BYTES: u64 = 100_000_000;
    let t = client
        .tcp_send(d.rr.v4, BYTES, Duration::from_secs(50))
        .unwrap_or_else(|e| panic!("100 MB to {}: {e:#}", d.rr.v4));
    assert_eq!(t.name, "sink1");
    eprintln!(
        "100 MB node a -> node b through the tunnel: {:.1} MB/s (sha256 {})",
        t.mbps, t.sha256
    );
    // The server logs right after its reply: the line may come a moment
    // after the client is done.
    let want = format!("sink bytes={BYTES} sha256={}", t.sha256);
    eventually(Duration::from_secs(5), || {
        let log = sink.server_log();
        anyhow::ensure!(log.contains(&want), "the server did not log {want}:\n{log}");
        Ok(())
    })
    .expect("the server's checksum");

    // The packet path is the one asked for, and it was really used: with
    // offloads, the sender's super-packets left in GSO sends; without, none.
    let status = c.a.get("/v1/status").expect("status");
    let path = status["dataplane"]["path"].as_str().unwrap_or_default();
    let gso_sends = c.a.counters().expect("counters")["tunnel_gso_sends"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("path: {path}; GSO sends on node a: {gso_sends}");
    // And the receiver wrote coalesced super-packets into its TUN (its own
    // GRO), or none without offloads.
    let coalesced = c.b.counters().expect("counters")["tun_coalesced_writes"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("coalesced TUN writes on node b: {coalesced}");
    if testbed::offload_wanted() {
        assert!(path.starts_with("offload:"), "status path: {status}");
        assert!(gso_sends > 0, "no GSO send during 100 MB: {status}");
        assert!(coalesced > 0, "no coalesced TUN write during 100 MB");
    } else {
        assert!(path.starts_with("plain:"), "status path: {status}");
        assert_eq!(gso_sends, 0, "GSO used although offload = false");
        assert_eq!(coalesced, 0, "coalesced although offload = false");
    }
}

/// A node with offloads and one without carry bulk data both ways intact.
/// From `a` (offloads) the segments travel with partial checksums, flagged,
/// and `b` (no virtio-net header, so no kernel to finish them) must finish
/// each one or its kernel drops them all; from `b` the full-checksum
/// segments are coalesced by `a` into super-packets.
#[test]
fn nodes_with_and_without_offloads_carry_bulk_data_both_ways() {
    let c = Cluster::two_nodes_with("mixoff", |cfg| cfg.offload = Some(cfg.name == "a"))
        .expect("cluster");
    let mut sink_b = c.container("sb").expect("container");
    sink_b.serve("sink-b").expect("serve");
    let on_b = c
        .deploy("shop/sinkb", &[(&c.b, &sink_b, 1)])
        .expect("deploy");
    let mut sink_a = c.container("sa").expect("container");
    sink_a.serve("sink-a").expect("serve");
    let on_a = c
        .deploy("shop/sinka", &[(&c.a, &sink_a, 1)])
        .expect("deploy");
    let (client_a, _) = c.client(&c.a, "ca", 1).expect("client");
    let (client_b, _) = c.client(&c.b, "cb", 2).expect("client");

    const BYTES: u64 = 20_000_000;
    for (client, sink, to, name) in [
        (&client_a, &sink_b, on_b.rr.v4, "sink-b"),
        (&client_b, &sink_a, on_a.rr.v4, "sink-a"),
    ] {
        let t = client
            .tcp_send(to, BYTES, Duration::from_secs(50))
            .unwrap_or_else(|e| panic!("20 MB to {name} ({to}): {e:#}"));
        assert_eq!(t.name, name);
        // The server logs right after its reply, so the line may come a
        // moment after the client is done.
        let want = format!("sink bytes={BYTES} sha256={}", t.sha256);
        eventually(Duration::from_secs(5), || {
            let log = sink.server_log();
            anyhow::ensure!(log.contains(&want), "{name} did not log {want}:\n{log}");
            Ok(())
        })
        .expect("the server's checksum");
    }
    let path_of = |n: &testbed::Node| {
        let status = n.get("/v1/status").expect("status");
        status["dataplane"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(path_of(&c.a).starts_with("offload:"), "{}", path_of(&c.a));
    assert!(path_of(&c.b).starts_with("plain:"), "{}", path_of(&c.b));
    let coalesced = c.a.counters().expect("counters")["tun_coalesced_writes"]
        .as_u64()
        .unwrap_or(0);
    assert!(coalesced > 0, "a coalesced nothing of b's 20 MB");
    for n in [&c.a, &c.b] {
        let errs = n.counters().expect("counters")["offload_errors"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(errs, 0, "offload errors on a node");
    }
}

/// With `tunnel.busy_poll_us` on, the threads that spin after traffic still
/// carry TCP, UDP and ping both ways, and still stop on SIGTERM (a spinning
/// thread must see the stop signal too), in both thread layouts: node a
/// with one packet thread per direction, node b with one for both.
#[test]
fn busy_polling_nodes_carry_traffic_and_stop_cleanly() {
    let mut c = Cluster::two_nodes_with("busyp", |cfg| {
        cfg.busy_poll_us = Some(300);
        cfg.threads = Some(if cfg.name == "a" { 2 } else { 1 });
    })
    .expect("cluster");
    let mut sink = c.container("sink").expect("container");
    sink.serve("sink1").expect("serve");
    let d = c.deploy("shop/sink", &[(&c.b, &sink, 1)]).expect("deploy");
    let (client, inst) = c.client(&c.a, "cl", 1).expect("client");
    check_reach(&client, &inst, d.rr.v4.into(), "sink1");
    let t = client
        .tcp_send(d.rr.v4, 5_000_000, Duration::from_secs(30))
        .expect("5 MB");
    assert_eq!(t.name, "sink1");
    for (n, want) in [
        (&c.a, "one thread per direction"),
        (&c.b, "one thread for both"),
    ] {
        let status = n.get("/v1/status").expect("status");
        let path = status["dataplane"]["path"].as_str().unwrap_or_default();
        assert!(path.contains(want), "node {}: {path}", n.name);
    }
    for n in [&mut c.a, &mut c.b] {
        let st = n.stop().expect("stop");
        assert!(st.success(), "daemon exited with {st} on SIGTERM");
    }
}
