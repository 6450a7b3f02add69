//! The benches' cluster: two nodes, a client and two web instances, and
//! full-size packets built by etherparse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;
use proxytun_core::flow::{Activity, Flow, FlowKey};
use proxytun_core::packet::Proto;
use proxytun_core::tunnel::{write_header, HEADER_LEN};
use proxytun_core::{Location, Table, TableBuilder};

/// Node A's tunnel endpoint (hosts the client and web/1).
pub const A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 50103);
/// Node B's tunnel endpoint (hosts web/2).
pub const B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 50103);

/// TCP payload of a full-size packet: 1500 - 20 (IPv4) - 32 (TCP + timestamps).
pub const PAYLOAD_LEN: usize = 1448;
/// Client port of the established flows.
pub const CLIENT_PORT: u16 = 40_000;
/// Service port.
pub const SERVICE_PORT: u16 = 80;

/// One instance: namespace and instance addresses of both families.
#[derive(Clone, Copy)]
pub struct Inst {
    pub name: &'static str,
    pub node: SocketAddr,
    pub host: u8,
}

pub const CLI1: Inst = Inst {
    name: "app/cli/1",
    node: A,
    host: 5,
};
pub const WEB1: Inst = Inst {
    name: "app/web/1",
    node: A,
    host: 6,
};
pub const WEB2: Inst = Inst {
    name: "app/web/2",
    node: B,
    host: 7,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

fn node_index(node: SocketAddr) -> u8 {
    if node == A {
        1
    } else {
        2
    }
}

impl Inst {
    pub fn ns4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 18, node_index(self.node), self.host)
    }
    pub fn ns6(self) -> Ipv6Addr {
        let n = u16::from(node_index(self.node)) * 0x100 + u16::from(self.host);
        Ipv6Addr::new(0xfdff, 0x18, 0, 0, 0, 0, 0, n)
    }
    pub fn iip4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 30, node_index(self.node), self.host + 100)
    }
    pub fn iip6(self) -> Ipv6Addr {
        let n = u16::from(node_index(self.node)) * 0x100 + u16::from(self.host + 100);
        Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, n)
    }
    pub fn ns(self, f: Fam) -> IpAddr {
        match f {
            Fam::V4 => self.ns4().into(),
            Fam::V6 => self.ns6().into(),
        }
    }
    pub fn iip(self, f: Fam) -> IpAddr {
        match f {
            Fam::V4 => self.iip4().into(),
            Fam::V6 => self.iip6().into(),
        }
    }
}

/// The table node `me` builds: service `app/web` (web/1 on A, web/2 on B)
/// and `app/cli` (cli/1 on A), both nodes as peers.
pub fn table(me: SocketAddr) -> Arc<Table> {
    let mut b = TableBuilder::new(
        "10.30.0.0/16".parse().expect("v4 net"),
        "fdff:30::/112".parse().expect("v6 net"),
    );
    let web = b.service(
        "app/web",
        Ipv4Addr::new(10, 30, 0, 10),
        Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x10),
    );
    let cli = b.service(
        "app/cli",
        Ipv4Addr::new(10, 30, 0, 20),
        Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x20),
    );
    for (svc, i) in [(cli, CLI1), (web, WEB1), (web, WEB2)] {
        let loc = if i.node == me {
            Location::Local
        } else {
            Location::Remote(i.node)
        };
        b.instance(svc, i.name, i.ns4(), i.ns6(), i.iip4(), i.iip6(), loc);
    }
    // Like a snapshot: every other node is a peer.
    for node in [A, B] {
        if node != me {
            b.peer(node);
        }
    }
    Arc::new(b.build().expect("consistent table"))
}

#[derive(Clone, Copy)]
pub enum Seg {
    Syn,
    SynAck,
    /// An ACK carrying a full-size payload.
    Data,
}

/// A TCP/IP packet with valid checksums.
pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, seg: Seg) -> Vec<u8> {
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    // 12 bytes of options (NOP, NOP, timestamp) as Linux sends them.
    let b = b
        .tcp(sport, dport, 1000, 64_000)
        .options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
        .expect("tcp options");
    let mut out = Vec::new();
    let payload = vec![0x5a; PAYLOAD_LEN];
    match seg {
        Seg::Syn => b.syn().write(&mut out, &[]),
        Seg::SynAck => b.syn().ack(1001).write(&mut out, &[]),
        Seg::Data => b.ack(1001).write(&mut out, &payload),
    }
    .expect("packet builds");
    out
}

/// Bytes of IP + TCP header of the packets [`tcp`] builds.
pub fn header_len(f: Fam) -> usize {
    match f {
        Fam::V4 => 20 + 32,
        Fam::V6 => 40 + 32,
    }
}

/// `pkt` behind a tunnel header, as the shell sends it.
pub fn wrap(pkt: &[u8]) -> Vec<u8> {
    let mut d = vec![0; HEADER_LEN + pkt.len()];
    d[HEADER_LEN..].copy_from_slice(pkt);
    write_header(&mut d);
    d
}

/// The flow `CLI1:sport -> web/2 instance IP:80` as the dataplane installs it.
pub fn flow_for(f: Fam, sport: u16, now: Instant) -> Flow {
    Flow {
        key: FlowKey {
            proto: Proto::Tcp,
            src: CLI1.ns(f),
            dst: WEB2.iip(f),
            sport,
            dport: SERVICE_PORT,
        },
        client_iip: CLI1.iip(f),
        instance: Arc::from(WEB2.name),
        instance_ns: WEB2.ns(f),
        location: Location::Remote(B),
        activity: Activity::new(Proto::Tcp, now),
    }
}
