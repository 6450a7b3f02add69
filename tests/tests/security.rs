//! Only member nodes can inject packets through the tunnel, every datagram
//! is authenticated (forgeries, replays and other modes are dropped), the
//! encrypted mode hides the traffic on the underlay, and UDP replies come
//! from the address the client sent to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use proxytun_core::seal::{ClusterKey, Sealer};
use proxytun_core::tunnel::{MsgType, Protection, HEADER_LEN, TAG_LEN};
use testbed::netns::Netns;
use testbed::node::{Node, NodeConfig};
use testbed::udpwire::ipv4_udp;
use testbed::{eventually, Cluster, UDP_PORT};

/// Seals `pkt` as one data datagram with `sealer` (the next counter).
fn seal(sealer: &Sealer, pkt: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + pkt.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + pkt.len()].copy_from_slice(pkt);
    let n = sealer
        .seal(&mut buf, MsgType::Data, pkt.len())
        .expect("seal");
    buf.truncate(n);
    buf
}

/// A sealer of `protection` with the cluster's key and a fresh session.
fn sealer_of(c: &Cluster, protection: Protection, session: u64) -> Sealer {
    let key = ClusterKey::parse_hex(&c.key().hex().expect("key")).expect("key hex");
    Sealer::new(protection, Some(&key), session).expect("sealer")
}

/// Forces the tunnel security of a test cluster's nodes (whatever
/// `PROXYTUN_TEST_SECURITY` says).
fn force_mode(mode: &'static str) -> impl Fn(&mut NodeConfig) {
    move |cfg| {
        if let Some(s) = &mut cfg.security {
            s.mode = mode.into();
        }
    }
}

/// Sends `bytes` as one UDP datagram from `from` (bound to `bind`, the
/// tunnel port) to node `to`'s tunnel endpoint.
fn send_from(from: &Netns, bind: Ipv4Addr, to: &Node, bytes: &[u8]) {
    let probe = testbed::ptprobe_bin().expect("ptprobe");
    let bind = format!("{bind}:{}", testbed::TUNNEL_PORT);
    from.exec(
        &probe.to_string_lossy(),
        &[
            "send-udp",
            &to.endpoint().to_string(),
            "--hex",
            &hex(bytes),
            "--bind",
            &bind,
            "--listen",
            "0",
        ],
        Duration::from_secs(10),
    )
    .and_then(|o| o.ok())
    .expect("send-udp");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn forged_datagram_from_non_member_is_dropped() {
    let c = Cluster::two_nodes_with("forged", force_mode("auth")).expect("cluster");
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

    // A well-formed tunnel datagram, even sealed with the cluster key,
    // carrying UDP to the container's server as if from a client instance
    // on node b: membership is checked before anything else.
    let spoofed_src = Ipv4Addr::new(10, 30, 2, 77);
    let forged = seal(
        &sealer_of(&c, Protection::Auth, 0x0123_4567_89ab_cdef),
        &ipv4_udp(spoofed_src, 40000, target.ns_addr.v4, UDP_PORT, b"forged"),
    );
    let garbage = b"this is not a proxytun datagram at all".to_vec();

    let probe = testbed::ptprobe_bin().expect("ptprobe");
    let probe = probe.to_string_lossy();
    let a_ep = c.a.endpoint().to_string();
    let bind = format!("{evil_ip}:{}", testbed::TUNNEL_PORT);
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
    c.a.peer_add(
        "evil",
        SocketAddr::new(evil_ip.into(), testbed::TUNNEL_PORT),
    )
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

#[test]
fn forged_replayed_and_foreign_mode_datagrams_never_reach_the_instance() {
    let c = Cluster::two_nodes_with("authtun", force_mode("auth")).expect("cluster");
    let mut web = c.container("web").expect("container");
    web.serve("web1").expect("serve");
    let d = c.deploy("shop/web", &[(&c.a, &web, 1)]).expect("deploy");
    let target = d.instances[0].ns_addr.v4;
    // A member that the test speaks for: registered as a peer of a.
    let member_ip = Ipv4Addr::new(192, 0, 2, 98);
    let member = c.outsider("mbr", member_ip).expect("member host");
    c.a.peer_add(
        "mbr",
        SocketAddr::new(member_ip.into(), testbed::TUNNEL_PORT),
    )
    .expect("peer add");
    let stranger_ip = Ipv4Addr::new(192, 0, 2, 99);
    let stranger = c.outsider("str", stranger_ip).expect("stranger host");
    let src = Ipv4Addr::new(10, 30, 2, 77);
    let udp = |sport: u16| ipv4_udp(src, sport, target, UDP_PORT, b"sealed-by-test");
    let sealer = sealer_of(&c, Protection::Auth, 0x5eed_0000_0000_0001);
    let count = |reason: &str| c.a.drops(reason).expect("counters");
    let wait_for = |reason: &'static str, want: u64| {
        eventually(Duration::from_secs(5), || {
            let n = c.a.drops(reason)?;
            if n >= want {
                Ok(n)
            } else {
                anyhow::bail!("drops.{reason} = {n}, want {want}")
            }
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let (replay0, auth0, member0, mode0) = (
        count("replay"),
        count("auth_failed"),
        count("not_member"),
        count("protection_mismatch"),
    );

    // 1. Sealed with the cluster key, from a member: delivered once.
    let good = seal(&sealer, &udp(40001));
    send_from(&member, member_ip, &c.a, &good);
    let delivered = format!("udp from={src}:40001");
    eventually(Duration::from_secs(5), || {
        if web.server_log().contains(&delivered) {
            Ok(())
        } else {
            anyhow::bail!("not delivered yet:\n{}", web.server_log())
        }
    })
    .expect("the good datagram was not delivered");
    // 2. The very same bytes again: a replay.
    send_from(&member, member_ip, &c.a, &good);
    assert_eq!(wait_for("replay", replay0 + 1), replay0 + 1);
    // 3. One flipped byte (in the inner packet's payload): forged.
    let mut flipped = seal(&sealer, &udp(40002));
    let at = flipped.len() - TAG_LEN - 3;
    flipped[at] ^= 0x01;
    send_from(&member, member_ip, &c.a, &flipped);
    assert_eq!(wait_for("auth_failed", auth0 + 1), auth0 + 1);
    // 4. Correctly sealed, but from a stranger's address.
    send_from(&stranger, stranger_ip, &c.a, &seal(&sealer, &udp(40003)));
    assert!(wait_for("not_member", member0 + 1) > member0);
    // 5. A plain-mode datagram from the member.
    let plain = Sealer::plain(7);
    let inner = udp(40004);
    let mut buf = vec![0u8; HEADER_LEN + inner.len()];
    buf[HEADER_LEN..].copy_from_slice(&inner);
    let n = plain
        .seal(&mut buf, MsgType::Data, inner.len())
        .expect("plain seal");
    send_from(&member, member_ip, &c.a, &buf[..n]);
    assert_eq!(wait_for("protection_mismatch", mode0 + 1), mode0 + 1);

    // Exactly the one good datagram reached the instance's socket.
    std::thread::sleep(Duration::from_millis(300));
    let log = web.server_log();
    let from_src: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("udp from={src}:")))
        .collect();
    assert_eq!(from_src, [format!("udp from={src}:40001 len=14")], "{log}");
    eprintln!(
        "delivered once; replay {replay0}->{}, auth_failed {auth0}->{}, not_member {member0}->{}, protection_mismatch {mode0}->{}",
        count("replay"),
        count("auth_failed"),
        count("not_member"),
        count("protection_mismatch")
    );
    c.a.cli_ok(&["peer", "remove", "mbr"]).expect("peer remove");
}

/// Runs TCP and UDP from a client on node a to a server on node b named
/// `marker`, capturing the underlay on b's host: returns whether the
/// marker (in every reply) was seen in the captured tunnel datagrams.
fn marker_on_the_wire(test: &str, mode: &'static str, marker: &str) -> bool {
    let c = Cluster::two_nodes_with(test, force_mode(mode)).expect("cluster");
    let mut web = c.container("web").expect("container");
    web.serve(marker).expect("serve");
    let d = c.deploy("shop/web", &[(&c.b, &web, 1)]).expect("deploy");
    let (client, _) = c.client(&c.a, "cl", 1).expect("client");
    let pcap = tempfile::NamedTempFile::new().expect("pcap file");
    let pcap_path = pcap.path().to_string_lossy().into_owned();
    let mut dump =
        c.b.host()
            .spawn(
                "tcpdump",
                &[
                    "-i",
                    "any",
                    "-n",
                    "-U",
                    "-s",
                    "0",
                    "-w",
                    &pcap_path,
                    "udp port 50103",
                ],
            )
            .expect("tcpdump");
    // tcpdump says "listening on ..." once it captures.
    let _ = dump.wait_for("listening", Duration::from_secs(5));
    for ip in [IpAddr::from(d.rr.v4), IpAddr::from(d.rr.v6)] {
        let h = eventually(Duration::from_secs(10), || client.udp_hello(ip))
            .unwrap_or_else(|e| panic!("{mode}: UDP to {ip}: {e:#}"));
        assert_eq!(h.name, marker);
        let h = client
            .tcp_hello(ip)
            .unwrap_or_else(|e| panic!("{mode}: TCP to {ip}: {e:#}"));
        assert_eq!(h.name, marker);
    }
    let moved = client
        .tcp_send(d.rr.v4, 2_000_000, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{mode}: TCP transfer: {e:#}"));
    eprintln!("{mode}: transfer {moved:?}");
    std::thread::sleep(Duration::from_millis(500));
    drop(dump);
    let bytes = std::fs::read(pcap.path()).expect("read pcap");
    assert!(
        bytes.len() > 1000,
        "{mode}: nothing captured ({} bytes)",
        bytes.len()
    );
    let seen = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    eprintln!(
        "{mode}: captured {} bytes, marker seen: {seen}",
        bytes.len()
    );
    seen
}

#[test]
fn encrypted_tunnel_carries_tcp_and_udp_and_hides_the_payload() {
    let marker = "zq7MARKERx3kpt";
    assert!(
        !marker_on_the_wire("encw", "encrypt", marker),
        "encrypt mode: the marker is readable on the underlay"
    );
    // Control: the capture does see the marker when the payload is only
    // authenticated, so its absence above is the encryption's doing.
    assert!(
        marker_on_the_wire("authw", "auth", marker),
        "auth mode: the capture did not see the marker (capture broken?)"
    );
}
