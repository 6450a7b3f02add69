//! Only member nodes can inject packets through the tunnel, and UDP replies
//! come from the address the client sent to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tests::{eventually, Cluster, UDP_PORT};

/// An IPv4/UDP packet `src:sport -> dst:dport` with a valid header checksum
/// (UDP checksum 0, which IPv4 allows).
fn ipv4_udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + 8 + payload.len()).expect("small packet");
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut sum: u32 = p
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    let ulen = u16::try_from(8 + payload.len()).expect("small payload");
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&ulen.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn forged_datagram_from_non_member_is_dropped() {
    let c = Cluster::two_nodes("forged").expect("cluster");
    let mut web = c.container("web").expect("container");
    web.serve("web1").expect("serve");
    let d = c.deploy("shop/web", &[(&c.a, &web, 1)]).expect("deploy");
    let target = &d.instances[0];
    let (client_b, _) = c.client(&c.b, "clb", 2).expect("client");
    // The path works for members.
    assert_eq!(
        client_b.udp_hello(d.rr.v4).expect("member traffic").name,
        "web1"
    );

    let evil_ip = Ipv4Addr::new(192, 0, 2, 99);
    let evil = c.outsider("evil", evil_ip).expect("outsider");
    let not_member0 = c.a.drops("not_member").expect("counters");
    let total0 = c.a.drops_total().expect("counters");
    let log0 = web.server_log();

    // A well-formed tunnel datagram (magic "PT", version 1, type 1) carrying
    // UDP to the container's server, as if from a client instance on node b.
    let spoofed_src = Ipv4Addr::new(10, 30, 2, 77);
    let mut forged = b"PT\x01\x01\0\0\0\0".to_vec();
    forged.extend(ipv4_udp(
        spoofed_src,
        40000,
        target.ns_addr.v4,
        UDP_PORT,
        b"forged",
    ));
    let garbage = b"this is not a proxytun datagram at all".to_vec();

    let probe = tests::ptprobe_bin().expect("ptprobe");
    let probe = probe.to_string_lossy();
    let a_ep = c.a.endpoint().to_string();
    let bind = format!("{evil_ip}:{}", tests::TUNNEL_PORT);
    for (what, bytes, listen) in [("forged", &forged, "0"), ("garbage", &garbage, "2")] {
        // Sent from the tunnel port, where a reply of a fooled node would go.
        let out = evil
            .exec(
                &probe,
                &[
                    "send-udp",
                    &a_ep,
                    "--hex",
                    &hex(bytes),
                    "--bind",
                    &bind,
                    "--listen",
                    listen,
                ],
                Duration::from_secs(10),
            )
            .and_then(|o| o.ok())
            .unwrap_or_else(|e| panic!("sending {what}: {e:#}"));
        if listen != "0" {
            assert!(
                out.stdout.contains("replies=0"),
                "the outsider got an answer through the tunnel:\n{}",
                out.stdout
            );
        }
    }

    let counted = eventually(Duration::from_secs(5), || {
        let n = c.a.drops("not_member")?;
        let t = c.a.drops_total()?;
        if n > not_member0 && t >= total0 + 2 {
            Ok((n, t))
        } else {
            anyhow::bail!("drops.not_member {not_member0} -> {n}, total {total0} -> {t}")
        }
    })
    .expect("the datagrams were not counted as drops");
    eprintln!(
        "drops.not_member {not_member0} -> {}, all drops {total0} -> {}",
        counted.0, counted.1
    );
    let log = web.server_log();
    assert_eq!(
        log, log0,
        "the forged packet reached the container's server"
    );
    assert!(!log.contains(&spoofed_src.to_string()));
    // Members are unaffected.
    assert_eq!(
        client_b.udp_hello(d.rr.v4).expect("member traffic").name,
        "web1"
    );

    // Control: the very same bytes from a registered peer are delivered, so
    // the drop above is the membership check and not a malformed packet.
    c.a.peer_add("evil", SocketAddr::new(evil_ip.into(), tests::TUNNEL_PORT))
        .expect("peer add");
    let out = evil
        .exec(
            &probe,
            &[
                "send-udp",
                &a_ep,
                "--hex",
                &hex(&forged),
                "--bind",
                &bind,
                "--listen",
                "2",
            ],
            Duration::from_secs(10),
        )
        .and_then(|o| o.ok())
        .expect("sending as a member");
    let needle = format!("udp from={spoofed_src}:40000");
    assert!(
        web.server_log().contains(&needle),
        "control failed: the datagram from a member did not reach the server:\n{}\nsender: {}",
        web.server_log(),
        out.stdout
    );
    eprintln!(
        "control (sender registered as a peer): delivered; sender saw: {}",
        out.stdout.trim().replace('\n', "; ")
    );
    c.a.cli_ok(&["peer", "remove", "evil"])
        .expect("peer remove");
}

#[test]
fn udp_replies_come_from_the_address_the_client_used() {
    let c = Cluster::two_nodes("udpsrc").expect("cluster");
    let (_w1, _w2, d) = c.web_on_both().expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");
    let started = Instant::now();
    eventually(Duration::from_secs(10), || client.udp_hello(d.rr.v6)).expect("v6 up");

    let mut seen = Vec::new();
    for ip in [IpAddr::from(d.rr.v4), IpAddr::from(d.rr.v6)] {
        for _ in 0..4 {
            // udp_hello itself fails unless the reply comes from exactly ip:port.
            let h = client
                .udp_hello(ip)
                .unwrap_or_else(|e| panic!("UDP to {ip}: {e:#}"));
            assert_eq!(h.from.expect("from").ip(), ip);
            seen.push(h.name);
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["web1", "web2"], "both instances should answer");

    // An instance IP pins its instance, and replies come from it too.
    for inst in &d.instances {
        let want = if inst.number == 1 { "web1" } else { "web2" };
        for ip in [
            IpAddr::from(inst.instance_ip.v4),
            IpAddr::from(inst.instance_ip.v6),
        ] {
            for _ in 0..2 {
                let h = client
                    .udp_hello(ip)
                    .unwrap_or_else(|e| panic!("UDP to instance IP {ip}: {e:#}"));
                assert_eq!(h.name, want, "instance IP {ip} must pin {}", inst.key());
            }
        }
    }
    eprintln!("done in {:?}", started.elapsed());
}
