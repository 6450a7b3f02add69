//! Policies under peer health: closest, round robin skipping down peers,
//! and the record of misses.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::keepalive;
use crate::table::{Location, Table, TableBuilder};
use crate::testkit::{build, check, A, B, C, L};
use crate::{CoreConfig, DropReason};

const CLIENT_NS: Ipv4Addr = Ipv4Addr::new(10, 18, 1, 5);
const RR: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 10);
const CLOSEST: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 11);
const CLOSEST6: Ipv6Addr = Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x11);

/// web instances: (name, node, host). Node A is this node.
const W1: (&str, SocketAddr, u8) = ("app/web/1", A, 6);
const W2: (&str, SocketAddr, u8) = ("app/web/2", B, 7);
const W3: (&str, SocketAddr, u8) = ("app/web/3", B, 8);
const W4: (&str, SocketAddr, u8) = ("app/web/4", C, 9);

fn index(node: SocketAddr) -> u8 {
    match node {
        n if n == A => 1,
        n if n == B => 2,
        _ => 3,
    }
}

/// The IPv6 mirror of a test address: 10.30.a.b is fdff:30::ab, 10.18.a.b
/// is fdff:18::ab (a and b as hex bytes).
fn six(v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    let net = if o[1] == 30 { 0x30 } else { 0x18 };
    Ipv6Addr::new(0xfdff, net, 0, 0, 0, 0, 0, u16::from_be_bytes([o[2], o[3]]))
}

fn ns(node: SocketAddr, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 18, index(node), host)
}

/// Node A's table: a client on A, `app/web` with the given instances, a
/// round-robin and a closest ServiceIP; peers B and C.
fn table(web: &[(&str, SocketAddr, u8)]) -> Arc<Table> {
    let mut b = TableBuilder::new(
        "10.30.0.0/16".parse().unwrap(),
        "fdff:30::/112".parse().unwrap(),
    );
    let cli = b.service(
        "app/cli",
        Ipv4Addr::new(10, 30, 0, 20),
        six([10, 30, 0, 20].into()),
    );
    let svc = b.service(
        "app/web",
        RR,
        Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x10),
    );
    b.closest(svc, CLOSEST, CLOSEST6);
    let iip = Ipv4Addr::new(10, 30, 1, 105);
    b.instance(
        cli,
        "app/cli/1",
        CLIENT_NS,
        six(CLIENT_NS),
        iip,
        six(iip),
        Location::Local,
    );
    for &(name, node, host) in web {
        let loc = if node == A {
            Location::Local
        } else {
            Location::Remote(node)
        };
        let iip = Ipv4Addr::new(10, 30, index(node), host + 100);
        b.instance(
            svc,
            name,
            ns(node, host),
            six(ns(node, host)),
            iip,
            six(iip),
            loc,
        );
    }
    b.peer(B).peer(C);
    Arc::new(b.build().unwrap())
}

struct Node {
    dp: Dataplane,
    now: Instant,
    port: u16,
}

impl Node {
    fn new(web: &[(&str, SocketAddr, u8)]) -> Node {
        Node {
            dp: Dataplane::new(CoreConfig::default(), table(web)),
            now: Instant::now(),
            port: 1000,
        }
    }

    /// Runs keepalive rounds for `secs` seconds, each peer in `rtt`
    /// answering after its RTT, the others silent.
    fn rounds(&mut self, secs: u64, rtt: &HashMap<SocketAddr, Duration>) {
        for _ in 0..secs {
            let mut buf = [0u8; 64];
            let mut sent = Vec::new();
            while let Some((to, len)) = self.dp.poll_keepalive(self.now, &mut buf) {
                sent.push((to, buf[..len].to_vec()));
            }
            for (to, mut d) in sent {
                if let Some(r) = rtt.get(&to) {
                    keepalive::ping_to_pong(&mut d).unwrap();
                    let v = self.dp.handle_tunnel(to, &mut d, self.now + *r);
                    assert_eq!(v, NetVerdict::Done);
                }
            }
            self.now += Duration::from_secs(1);
        }
    }

    /// A new UDP flow to `vip`: which instance (by namespace address)
    /// and which verdict.
    fn open(&mut self, vip: IpAddr) -> (TunVerdict, IpAddr) {
        self.port += 1;
        let src = match vip {
            IpAddr::V4(_) => IpAddr::V4(CLIENT_NS),
            IpAddr::V6(_) => IpAddr::V6(six(CLIENT_NS)),
        };
        let mut pkt = build(src, self.port, vip, 53, L::Udp, false);
        let v = self.dp.handle_tun(&mut pkt, self.now);
        (v, check(&pkt).dst)
    }

    /// Where `n` new flows to `vip` go, by instance name.
    fn picks(&mut self, vip: Ipv4Addr, n: usize) -> Vec<&'static str> {
        (0..n)
            .map(|_| {
                let (v, dst) = self.open(IpAddr::V4(vip));
                assert!(!matches!(v, TunVerdict::Drop(_)), "{v:?}");
                [W1, W2, W3, W4]
                    .iter()
                    .find(|w| IpAddr::V4(ns(w.1, w.2)) == dst)
                    .map(|w| w.0)
                    .expect("an instance")
            })
            .collect()
    }
}

fn rtts(list: &[(SocketAddr, u64)]) -> HashMap<SocketAddr, Duration> {
    list.iter()
        .map(|&(p, ms)| (p, Duration::from_millis(ms)))
        .collect()
}

#[test]
fn closest_prefers_local_then_the_nearest_peer_and_rotates_ties() {
    let mut n = Node::new(&[W1, W2, W3, W4]);
    n.rounds(2, &rtts(&[(B, 5), (C, 20)]));
    assert_eq!(n.picks(CLOSEST, 3), ["app/web/1"; 3], "local counts as 0");

    let mut n = Node::new(&[W2, W4, W3]);
    n.rounds(2, &rtts(&[(B, 20), (C, 5)]));
    assert_eq!(n.picks(CLOSEST, 3), ["app/web/4"; 3], "nearest peer");
    // IPv6 closest ServiceIP, same choice.
    let (v, dst) = n.open(IpAddr::V6(CLOSEST6));
    assert_eq!(v, TunVerdict::Peer(C));
    assert_eq!(dst, "fdff:18::309".parse::<IpAddr>().unwrap());

    let mut n = Node::new(&[W2, W4, W3]);
    n.rounds(2, &rtts(&[(B, 5), (C, 20)]));
    assert_eq!(
        n.picks(CLOSEST, 4),
        ["app/web/2", "app/web/3", "app/web/2", "app/web/3"],
        "two instances on the nearest node take turns"
    );
}

#[test]
fn closest_puts_unmeasured_peers_last_and_skips_down_ones() {
    // C measured, B alive but not measured yet (no pong): C first.
    let mut n = Node::new(&[W2, W4]);
    n.rounds(1, &rtts(&[(C, 50)]));
    assert_eq!(n.picks(CLOSEST, 2), ["app/web/4"; 2]);
    // Before any measurement every live peer ties.
    let mut n = Node::new(&[W2, W4]);
    assert_eq!(n.picks(CLOSEST, 2), ["app/web/2", "app/web/4"]);

    // B is nearest, then stops answering: down after 3 s, C takes over.
    let mut n = Node::new(&[W2, W3, W4]);
    n.rounds(2, &rtts(&[(B, 5), (C, 20)]));
    assert_eq!(n.picks(CLOSEST, 1), ["app/web/2"]);
    n.rounds(4, &rtts(&[(C, 20)]));
    assert_eq!(n.picks(CLOSEST, 3), ["app/web/4"; 3]);
    // ... and comes back when it answers again.
    n.rounds(1, &rtts(&[(B, 5), (C, 20)]));
    assert_eq!(n.picks(CLOSEST, 2), ["app/web/2", "app/web/3"]);

    // Everyone down: fall back to all of them, in turn.
    let mut n = Node::new(&[W2, W4]);
    n.rounds(4, &rtts(&[]));
    let mut got = n.picks(CLOSEST, 4);
    got.sort_unstable();
    assert_eq!(got, ["app/web/2", "app/web/2", "app/web/4", "app/web/4"]);
}

#[test]
fn round_robin_skips_down_peers_but_keeps_their_flows() {
    let mut n = Node::new(&[W2, W4, W3]);
    n.rounds(1, &rtts(&[(B, 5), (C, 5)]));
    assert_eq!(n.picks(RR, 3), ["app/web/2", "app/web/4", "app/web/3"]);

    // A flow to web/4 on C, then C goes silent.
    let mut pkt = build(
        IpAddr::V4(CLIENT_NS),
        7777,
        IpAddr::V4(RR),
        53,
        L::Udp,
        false,
    );
    assert_eq!(
        n.dp.handle_tun(&mut pkt.clone(), n.now),
        TunVerdict::Peer(B),
        "the rotation is at web/2"
    );
    let mut second = build(
        IpAddr::V4(CLIENT_NS),
        7778,
        IpAddr::V4(RR),
        53,
        L::Udp,
        false,
    );
    assert_eq!(
        n.dp.handle_tun(&mut second.clone(), n.now),
        TunVerdict::Peer(C)
    );
    n.rounds(4, &rtts(&[(B, 5)]));
    assert_eq!(
        n.picks(RR, 4),
        ["app/web/3", "app/web/2", "app/web/3", "app/web/2"],
        "web/4 on the down peer is skipped"
    );
    assert_eq!(
        n.dp.handle_tun(&mut second, n.now),
        TunVerdict::Peer(C),
        "an existing flow is never cut by liveness"
    );
    assert_eq!(n.dp.handle_tun(&mut pkt, n.now), TunVerdict::Peer(B));

    // Everyone down: plain rotation over all.
    n.rounds(4, &rtts(&[]));
    let mut got = n.picks(RR, 3);
    got.sort_unstable();
    assert_eq!(got, ["app/web/2", "app/web/3", "app/web/4"]);
}

#[test]
fn misses_are_recorded_deduplicated_and_drained() {
    let mut n = Node::new(&[W2]);
    assert!(!n.dp.has_misses());
    let unknown4: IpAddr = "10.30.99.99".parse().unwrap();
    let unknown6: IpAddr = "fdff:30::9999".parse().unwrap();
    for (vip, times) in [(unknown4, 3), (unknown6, 2)] {
        for _ in 0..times {
            let (v, _) = n.open(vip);
            assert_eq!(v, TunVerdict::Drop(DropReason::NoService));
        }
    }
    // Outside the ServiceIP range: no service either, but no miss.
    let mut pkt = build(
        IpAddr::V4(CLIENT_NS),
        1,
        "10.18.9.9".parse().unwrap(),
        53,
        L::Udp,
        false,
    );
    assert_eq!(
        n.dp.handle_tun(&mut pkt, n.now),
        TunVerdict::Drop(DropReason::NoService)
    );
    assert!(n.dp.has_misses());
    let mut got = Vec::new();
    n.dp.drain_misses(|a| got.push(a));
    assert_eq!(got, [unknown4, unknown6]);
    assert!(!n.dp.has_misses());
    n.dp.drain_misses(|_| panic!("drained twice"));
    // A known ServiceIP is no miss.
    n.picks(RR, 1);
    assert!(!n.dp.has_misses());
}
