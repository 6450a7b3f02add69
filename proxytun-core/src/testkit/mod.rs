//! The fixtures of the core's tests: a two-node cluster, packet builders
//! and an etherparse checker, and super-packets for the offload helpers.
//!
//! Test tooling, not API: compiled for the core's own tests and, with the
//! `testkit` feature, for the daemon crate's cross-checks of the core
//! against tun-rs (which the core cannot depend on). Panics on bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod frag;
pub mod node_keys;
pub mod superpacket;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader,
};

use crate::dataplane::{Dataplane, NetVerdict, TunVerdict};
use crate::flow::CoreConfig;
use crate::table::{Location, Table, TableBuilder};
use crate::tunnel::{write_header, HEADER_LEN};

pub const A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 50103);
pub const B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 50103);
/// A member node that hosts nothing in these tests.
pub const C: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)), 50103);
pub const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)), 50103);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    A,
    B,
}

impl Node {
    fn index(self) -> u8 {
        match self {
            Node::A => 1,
            Node::B => 2,
        }
    }
    pub fn addr(self) -> SocketAddr {
        match self {
            Node::A => A,
            Node::B => B,
        }
    }
}

/// Services: (name, v4 last octet / v6 last group of the round-robin IP).
pub const SERVICES: [(&str, u8); 3] = [("app/web", 10), ("app/cli", 20), ("app/empty", 30)];
pub const WEB: usize = 0;
pub const CLI: usize = 1;
pub const EMPTY: usize = 2;

/// An instance: name, service index, node, host number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Def {
    pub name: &'static str,
    pub svc: usize,
    pub node: Node,
    pub n: u8,
}

pub const CLI1: Def = Def {
    name: "app/cli/1",
    svc: CLI,
    node: Node::A,
    n: 5,
};
pub const WEB1: Def = Def {
    name: "app/web/1",
    svc: WEB,
    node: Node::A,
    n: 6,
};
pub const WEB2: Def = Def {
    name: "app/web/2",
    svc: WEB,
    node: Node::B,
    n: 7,
};
pub const WEB3: Def = Def {
    name: "app/web/3",
    svc: WEB,
    node: Node::B,
    n: 8,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

impl Def {
    pub fn ns(&self, f: Fam) -> IpAddr {
        let (node, n) = (self.node.index(), self.n);
        match f {
            Fam::V4 => IpAddr::V4(Ipv4Addr::new(10, 18, node, n)),
            Fam::V6 => IpAddr::V6(Ipv6Addr::new(
                0xfdff,
                0x18,
                0,
                0,
                0,
                0,
                0,
                u16::from(node) * 0x100 + u16::from(n),
            )),
        }
    }
    /// Deliberately not a mirror of `ns` (`+ 100`), so that a client-ns ->
    /// instance-IP rewrite paired with the opposite one does not cancel out
    /// in the checksum and hide a missing update.
    pub fn iip(&self, f: Fam) -> IpAddr {
        let (node, n) = (self.node.index(), self.n + 100);
        match f {
            Fam::V4 => IpAddr::V4(Ipv4Addr::new(10, 30, node, n)),
            Fam::V6 => IpAddr::V6(Ipv6Addr::new(
                0xfdff,
                0x30,
                0,
                0,
                0,
                0,
                0,
                u16::from(node) * 0x100 + u16::from(n),
            )),
        }
    }
}

pub fn rr(svc: usize, f: Fam) -> IpAddr {
    let n = SERVICES[svc].1;
    match f {
        Fam::V4 => IpAddr::V4(Ipv4Addr::new(10, 30, 0, n)),
        Fam::V6 => IpAddr::V6(Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, u16::from(n))),
    }
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("not v4"),
    }
}
fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => panic!("not v6"),
    }
}

/// The table node `me` builds for a cluster of `instances`.
pub fn table(me: Node, instances: &[Def]) -> Arc<Table> {
    let services: Vec<(&str, IpAddr, IpAddr)> = SERVICES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, rr(i, Fam::V4), rr(i, Fam::V6)))
        .collect();
    let b = builder(me, &services, instances, &[A, B, C]);
    Arc::new(b.build().unwrap())
}

/// A table builder with `services` (name, v4 and v6 ServiceIP), the
/// `instances` placed as seen from `me`, and every member of `members`
/// but `me` as a peer (like a snapshot's peers).
pub fn builder(
    me: Node,
    services: &[(&str, IpAddr, IpAddr)],
    instances: &[Def],
    members: &[SocketAddr],
) -> TableBuilder {
    let mut b = TableBuilder::new(
        "10.30.0.0/16".parse().unwrap(),
        "fdff:30::/112".parse().unwrap(),
    );
    let ids: Vec<_> = services
        .iter()
        .map(|(name, r4, r6)| b.service(name, v4(*r4), v6(*r6)))
        .collect();
    for d in instances {
        let loc = if d.node == me {
            Location::Local
        } else {
            Location::Remote(d.node.addr())
        };
        b.instance(
            ids[d.svc],
            d.name,
            v4(d.ns(Fam::V4)),
            v6(d.ns(Fam::V6)),
            v4(d.iip(Fam::V4)),
            v6(d.iip(Fam::V6)),
            loc,
        );
    }
    for &p in members {
        if p != me.addr() {
            b.peer(p);
        }
    }
    b
}

pub fn dataplane(me: Node, instances: &[Def]) -> Dataplane {
    Dataplane::new(CoreConfig::default(), table(me, instances))
}

/// The cluster key of the tests' authenticated nodes.
pub fn test_key() -> crate::seal::ClusterKey {
    crate::seal::ClusterKey::from_bytes([0x5a; 32])
}

/// A sealer of `protection` with [`test_key`] and `session`.
pub fn sealer(protection: crate::tunnel::Protection, session: u64) -> Arc<crate::seal::Sealer> {
    Arc::new(crate::seal::Sealer::new(protection, Some(&test_key()), session).unwrap())
}

/// A dataplane whose tunnel uses `protection` with [`test_key`].
pub fn dataplane_with(
    me: Node,
    instances: &[Def],
    protection: crate::tunnel::Protection,
) -> Dataplane {
    Dataplane::with_sealer(
        CoreConfig::default(),
        table(me, instances),
        sealer(protection, 0xbeef),
    )
}

/// Seals `pkt` as a data datagram the way the egress thread does.
pub fn seal(s: &crate::seal::Sealer, pkt: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + pkt.len() + s.trailer_len()];
    buf[HEADER_LEN..HEADER_LEN + pkt.len()].copy_from_slice(pkt);
    let n = s
        .seal(&mut buf, crate::tunnel::MsgType::Data, pkt.len())
        .unwrap();
    buf.truncate(n);
    buf
}

/// The default cluster: a client and web/1 on A, web/2 on B.
pub fn cluster() -> Vec<Def> {
    vec![CLI1, WEB1, WEB2]
}

/// What a test packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L {
    Syn,
    SynAck,
    Ack,
    FinAck,
    Rst,
    Udp,
    /// UDP over IPv4 with checksum 0.
    UdpNoCsum,
    Ping,
    Pong,
}

impl L {
    pub fn is_icmp(self) -> bool {
        matches!(self, L::Ping | L::Pong)
    }
}

pub const PAYLOAD: &[u8] = b"hello, proxytun!!";

/// Builds a packet. ICMP: the identifier is the client's port, i.e. `sport`
/// of a request and `dport` of a reply, so replies read like TCP/UDP ones. `opts` adds
/// 8 bytes of IPv4 options (NOPs).
pub fn build(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, l: L, opts: bool) -> Vec<u8> {
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).unwrap();
            if opts {
                h.options = [1u8; 8].into();
            }
            h.identification = 0x1234;
            PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    let tcp = |b: etherparse::PacketBuilderStep<IpHeaders>| b.tcp(sport, dport, 1000, 65000);
    match l {
        L::Syn => tcp(b).syn().write(&mut out, PAYLOAD),
        L::SynAck => tcp(b).syn().ack(1001).write(&mut out, PAYLOAD),
        L::Ack => tcp(b).ack(1001).write(&mut out, PAYLOAD),
        L::FinAck => tcp(b).fin().ack(1001).write(&mut out, PAYLOAD),
        L::Rst => tcp(b).rst().write(&mut out, PAYLOAD),
        L::Udp | L::UdpNoCsum => b.udp(sport, dport).write(&mut out, PAYLOAD),
        L::Ping if src.is_ipv4() => b.icmpv4_echo_request(sport, 7).write(&mut out, PAYLOAD),
        L::Ping => b.icmpv6_echo_request(sport, 7).write(&mut out, PAYLOAD),
        L::Pong if src.is_ipv4() => b.icmpv4_echo_reply(dport, 7).write(&mut out, PAYLOAD),
        L::Pong => b.icmpv6_echo_reply(dport, 7).write(&mut out, PAYLOAD),
    }
    .unwrap();
    if l == L::UdpNoCsum {
        let ihl = usize::from(out[0] & 0xf) * 4;
        out[ihl + 6] = 0;
        out[ihl + 7] = 0;
    }
    out
}

/// What etherparse sees in a packet whose checksums it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    pub udp_checksum: Option<u16>,
}

/// 0x0000 and 0xffff are the two one's-complement zeros.
fn same_csum(stored: u16, computed: u16) -> bool {
    stored == computed || (stored | computed == 0xffff && (stored == 0 || computed == 0))
}

/// Parses with etherparse and asserts every checksum is valid.
pub fn check(pkt: &[u8]) -> Seen {
    let h = PacketHeaders::from_ip_slice(pkt).expect("etherparse parses the packet");
    let payload = h.payload.slice().to_vec();
    let (src, dst) = match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            assert!(
                same_csum(ip.header_checksum, ip.calc_header_checksum()),
                "IPv4 header checksum"
            );
            (IpAddr::from(ip.source), IpAddr::from(ip.destination))
        }
        Some(NetHeaders::Ipv6(ip, _)) => (IpAddr::from(ip.source), IpAddr::from(ip.destination)),
        other => panic!("not IP: {other:?}"),
    };
    let mut udp_checksum = None;
    let (sport, dport) = match (&h.transport, &h.net) {
        (Some(TransportHeader::Tcp(t)), Some(NetHeaders::Ipv4(ip, _))) => {
            assert!(
                same_csum(t.checksum, t.calc_checksum_ipv4(ip, &payload).unwrap()),
                "TCP/IPv4 checksum"
            );
            (t.source_port, t.destination_port)
        }
        (Some(TransportHeader::Tcp(t)), Some(NetHeaders::Ipv6(ip, _))) => {
            assert!(
                same_csum(t.checksum, t.calc_checksum_ipv6(ip, &payload).unwrap()),
                "TCP/IPv6 checksum"
            );
            (t.source_port, t.destination_port)
        }
        (Some(TransportHeader::Udp(u)), Some(NetHeaders::Ipv4(ip, _))) => {
            udp_checksum = Some(u.checksum);
            if u.checksum != 0 {
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(ip, &payload).unwrap(),
                    "UDP/IPv4 checksum"
                );
            }
            (u.source_port, u.destination_port)
        }
        (Some(TransportHeader::Udp(u)), Some(NetHeaders::Ipv6(ip, _))) => {
            udp_checksum = Some(u.checksum);
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv6(ip, &payload).unwrap(),
                "UDP/IPv6 checksum"
            );
            (u.source_port, u.destination_port)
        }
        (Some(TransportHeader::Icmpv4(i)), _) => {
            assert!(
                same_csum(i.checksum, i.icmp_type.calc_checksum(&payload)),
                "ICMPv4 checksum"
            );
            let id = u16::from_be_bytes([i.to_bytes()[4], i.to_bytes()[5]]);
            (id, id)
        }
        (Some(TransportHeader::Icmpv6(i)), Some(NetHeaders::Ipv6(ip, _))) => {
            let c = i
                .icmp_type
                .calc_checksum(ip.source, ip.destination, &payload)
                .unwrap();
            assert!(same_csum(i.checksum, c), "ICMPv6 checksum");
            let id = u16::from_be_bytes([i.to_bytes()[4], i.to_bytes()[5]]);
            (id, id)
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Seen {
        src,
        dst,
        sport,
        dport,
        payload,
        udp_checksum,
    }
}

/// Wraps a packet the way the shell does: header then packet.
pub fn wrap(pkt: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + pkt.len()];
    buf[HEADER_LEN..].copy_from_slice(pkt);
    write_header(&mut buf);
    buf
}

/// Room the shell leaves after a packet, as far as the core's answers need
/// it (an ICMPv6 error's headers in front of a whole quote).
pub const ROOM: usize = 64;

/// TUN input; returns the verdict and the rewritten packet, or for
/// [`TunVerdict::Reject`] the answer (written with [`ROOM`] after the
/// packet, as the shell gives it).
pub fn tun(dp: &mut Dataplane, mut pkt: Vec<u8>, now: Instant) -> (TunVerdict, Vec<u8>) {
    let len = pkt.len();
    pkt.resize(len + ROOM, 0);
    let v = dp.handle_tun_buf(&mut pkt, len, len, now);
    pkt.truncate(match v {
        TunVerdict::Reject(n) => n,
        _ => len,
    });
    (v, pkt)
}

/// Tunnel input; returns the verdict and the inner packet.
pub fn net(
    dp: &mut Dataplane,
    from: SocketAddr,
    pkt: &[u8],
    now: Instant,
) -> (NetVerdict, Vec<u8>) {
    let mut d = wrap(pkt);
    let v = dp.handle_tunnel(from, &mut d, now);
    (v, d[HEADER_LEN..].to_vec())
}

/// Every packet in is accounted for exactly once.
pub fn assert_balanced(dp: &Dataplane) {
    let s = dp.counters().snapshot();
    let drops: u64 = s.drops.values().sum();
    assert_eq!(
        s.tun_rx + s.tunnel_rx,
        s.tun_tx_tun
            + s.tun_tx_peer
            + s.keepalive_pings_rx
            + s.keepalive_pongs_rx
            + s.tun_not_for_us
            + drops,
        "{s:?}"
    );
}
