//! Fragments and path MTU, end to end.
//!
//! A container's interface MTU is `tun.mtu` (1400), so a UDP datagram
//! bigger than that leaves it as IP fragments. Sent through a ServiceIP to
//! the instance on the other node, every one of 1400, 4000 and 60000 bytes
//! must arrive whole: the receiver (a Python server in the instance's
//! container) answers with the length and SHA-256 of what its socket got,
//! and the sender compares them with what it sent. Before fragments were
//! forwarded by flow, every fragment was dropped and the sender timed out.
//!
//! With an underlay of a smaller MTU than the tunnel needs, a container
//! that pings with "don't fragment" gets "fragmentation needed" / "packet
//! too big" with the inner MTU that fits, its kernel remembers it (a UDP
//! socket's `IP_MTU`, as `tracepath` reads it), and TCP finds the path MTU
//! on its own: a bulk transfer completes. Without the ICMP errors the big
//! packets vanish on the underlay and the ping and the transfer time out.
//! And the MLD reports and router solicitations every node's kernel sends
//! into the TUN are not drops.

use std::net::IpAddr;
use std::time::Duration;

use testbed::{eventually, Cluster, Container};

/// The port the datagram server listens on (not the ptprobe servers').
const PORT: u16 = 7011;

/// Answers every datagram with `<length> <sha256 hex>` of what arrived.
const SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()), peer)
"#;

/// Sends one datagram of N patterned bytes and prints `ok` when the answer
/// names its length and digest, else what it got (up to three tries, each
/// a new datagram on the same flow).
const CLIENT: &str = r#"
import hashlib, socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytes((i * 7 + i // 251) % 256 for i in range(n))
want = b"%d %s" % (n, hashlib.sha256(data).hexdigest().encode())
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((ip, port))
got = b"nothing"
for _ in range(3):
    s.send(data)
    try:
        got = s.recv(200)
        break
    except socket.timeout:
        got = b"timeout"
print("ok" if got == want else "got " + got.decode(errors="replace"))
"#;

/// What a UDP socket connected to `ip` learns as the path MTU after one
/// datagram too big for it, the way `tracepath` probes: `IP_MTU` /
/// `IPV6_MTU` with "don't fragment".
const PMTU: &str = r#"
import socket, sys, time
ip, size = sys.argv[1], int(sys.argv[2])
v6 = ":" in ip
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, 23, 2)  # IPV6_MTU_DISCOVER = IPV6_PMTUDISC_DO
else:
    s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.connect((ip, 7001))
for _ in range(10):
    try:
        s.send(b"x" * size)
    except OSError:
        pass
    time.sleep(0.3)
    mtu = s.getsockopt(socket.IPPROTO_IPV6, 24) if v6 else s.getsockopt(socket.IPPROTO_IP, 14)
    if mtu < size:
        break
print(mtu)
"#;

fn python(c: &Container, script: &str, args: &[&str], timeout: Duration) -> String {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    c.ns()
        .exec_ok("python3", &all, timeout)
        .expect("python3 probe")
        .stdout
        .trim()
        .to_owned()
}

/// The auth mode's tag, so the expected MTU does not depend on the
/// suite's security switch.
fn auth(cfg: &mut testbed::NodeConfig) {
    if let Some(s) = cfg.security.as_mut() {
        s.mode = "auth".into();
    }
}

#[test]
fn big_udp_datagrams_arrive_whole_through_a_service_ip() {
    let c = Cluster::two_nodes("frag").expect("cluster");
    let server = c.container("srv").expect("server container");
    let d = c.deploy("shop/big", &[(&c.b, &server, 1)]).expect("deploy");
    let mut srv = server
        .ns()
        .spawn("python3", &["-c", SERVER, &PORT.to_string()])
        .expect("datagram server");
    srv.wait_for("ready", Duration::from_secs(10))
        .expect("server ready");
    let (client, _) = c.client(&c.a, "cla", 1).expect("client");
    // Let IPv6 DAD finish on both sides.
    let small = |ip: IpAddr| {
        python(
            &client,
            CLIENT,
            &[&ip.to_string(), &PORT.to_string(), "100"],
            Duration::from_secs(15),
        )
    };
    eventually(Duration::from_secs(15), || {
        match small(d.rr.v6.into()).as_str() {
            "ok" => Ok(()),
            other => Err(anyhow::anyhow!("{other}")),
        }
    })
    .expect("small v6 datagram");

    let before = c.a.counters().expect("counters a");
    for ip in [IpAddr::from(d.rr.v4), IpAddr::from(d.rr.v6)] {
        for size in [1400, 4000, 60000] {
            let got = python(
                &client,
                CLIENT,
                &[&ip.to_string(), &PORT.to_string(), &size.to_string()],
                Duration::from_secs(20),
            );
            assert_eq!(
                got,
                "ok",
                "{size} bytes to {ip}\na: {}\nb: {}",
                c.a.log_tail(20),
                c.b.log_tail(20)
            );
        }
    }
    let after = c.a.counters().expect("counters a");
    let n = |v: &serde_json::Value| v["fragments_forwarded"].as_u64().unwrap_or(0);
    // 1400 + 4000 + 60000 bytes over both families: well over 40 fragments.
    assert!(n(&after) - n(&before) > 40, "{after}");
    // Nothing dropped on the way, and the MLD reports and router
    // solicitations the kernel sends into the TUN at start-up are no drops.
    for node in c.nodes() {
        for reason in [
            "fragment",
            "fragment_no_first",
            "fragment_overlap",
            "fragment_table_full",
            "too_big",
            "ipv6_ext_header",
            "icmp_unsupported",
        ] {
            assert_eq!(
                node.drops(reason).expect("drops"),
                0,
                "{reason} on {}",
                node.name
            );
        }
    }
    assert!(after["tun_not_for_us"].as_u64().unwrap_or(0) > 0, "{after}");
}

/// The underlay of both nodes gets `mtu`; the inner MTU that fits is what
/// the tunnel's IPv4, UDP, header and tag leave of it.
fn lower_underlay(c: &Cluster, mtu: u32) -> usize {
    for node in c.nodes() {
        node.host()
            .ip(&["link", "set", "ul0", "mtu", &mtu.to_string()])
            .expect("set the underlay MTU");
    }
    mtu as usize - 20 - 8 - proxytun_core::HEADER_LEN - proxytun_core::tunnel::TAG_LEN
}

#[test]
fn a_smaller_underlay_is_announced_and_found_by_ping_and_tcp() {
    let c = Cluster::two_nodes_with("pmtu", auth).expect("cluster");
    let inner = lower_underlay(&c, 1400);
    assert_eq!(inner, 1336);
    let mut w2 = c.container("w2").expect("w2");
    w2.serve("web2").expect("serve");
    let d = c.deploy("shop/web", &[(&c.b, &w2, 2)]).expect("deploy");
    let (client, _) = c.client(&c.a, "cla", 1).expect("client");
    eventually(Duration::from_secs(10), || client.udp_hello(d.rr.v6)).expect("v6 up");

    for (ip, ip_hdr) in [(IpAddr::from(d.rr.v4), 20), (IpAddr::from(d.rr.v6), 40)] {
        let ping = |size: usize| {
            client
                .ns()
                .exec(
                    "ping",
                    &[
                        "-n",
                        "-M",
                        "do",
                        "-c",
                        "3",
                        "-i",
                        "0.3",
                        "-W",
                        "2",
                        "-s",
                        &size.to_string(),
                        &ip.to_string(),
                    ],
                    Duration::from_secs(15),
                )
                .expect("ping")
        };
        // TCP first, before ping teaches the kernel: its segments are too
        // big, the ICMP errors lower its MSS, the transfer completes.
        let t = client
            .tcp_send(ip, 2_000_000, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{ip}: {e:#}\na: {}", c.a.log_tail(20)));
        assert_eq!(t.name, "web2");
        // The largest echo that fits goes through, DF and all.
        let fits = ping(inner - ip_hdr - 8);
        assert!(
            fits.stdout.contains("3 received"),
            "{ip}: {}",
            fits.describe("ping that fits")
        );
        // One byte more: the error names the MTU, and the kernel keeps it.
        let big = ping(inner - ip_hdr - 8 + 1);
        let text = format!("{}{}", big.stdout, big.stderr);
        // iputils says "mtu = N" (v4 error), "mtu=N" or "mtu: N" (local).
        let named = ["mtu = ", "mtu=", "mtu: "]
            .iter()
            .any(|p| text.contains(&format!("{p}{inner}")));
        assert!(named, "{ip}: {}", big.describe("ping one byte too big"));
        let learned = python(
            &client,
            PMTU,
            &[&ip.to_string(), "1400"],
            Duration::from_secs(15),
        );
        assert_eq!(
            learned,
            inner.to_string(),
            "{ip}: path MTU the socket learned"
        );
    }
    assert!(c.a.drops("too_big").expect("drops") > 0);
    let counters = c.a.counters().expect("counters");
    assert!(
        counters["icmp_too_big_tx"].as_u64().unwrap_or(0) > 0,
        "{counters}"
    );
}
