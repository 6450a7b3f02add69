//! The fixtures the targets share (a small two-node cluster seen from
//! node A, its packets) and the corpus seeds built from them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::fix_checksums;
use super::fix_error_checksums;
use crate::packet;
use crate::table::{Location, Table, TableBuilder};
use crate::tunnel::{self, MsgType, Protection, HEADER_LEN};

/// Node B's tunnel endpoint (a member).
pub(super) const B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 50103);
/// Not a member.
pub(super) const STRANGER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)), 50103);

pub(super) fn fixture_now() -> Instant {
    static NOW: OnceLock<Instant> = OnceLock::new();
    *NOW.get_or_init(|| Instant::now() + Duration::from_secs(3600))
}

/// Services web (10.30.0.10, one instance on A and one on B) and cli (its
/// instance on A). Addresses follow the plan: ns `10.18.<node>.<n>`, instance
/// IP `10.30.<node>.<n + 100>`, and their IPv6 mirrors.
pub(super) fn fixture_table() -> Arc<Table> {
    static TABLE: OnceLock<Arc<Table>> = OnceLock::new();
    Arc::clone(TABLE.get_or_init(|| {
        let net4 = ipnet::Ipv4Net::new(Ipv4Addr::new(10, 30, 0, 0), 16);
        let net6 = ipnet::Ipv6Net::new(Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0), 112);
        let (Ok(net4), Ok(net6)) = (net4, net6) else {
            panic!("fixture prefixes");
        };
        let mut b = TableBuilder::new(net4, net6);
        let web = b.service("app/web", Ipv4Addr::new(10, 30, 0, 10), v6(0x30, 10));
        let cli = b.service("app/cli", Ipv4Addr::new(10, 30, 0, 20), v6(0x30, 20));
        for (svc, name, node, n) in [
            (cli, "app/cli/1", 1u8, 5u8),
            (web, "app/web/1", 1, 6),
            (web, "app/web/2", 2, 7),
        ] {
            let loc = if node == 1 {
                Location::Local
            } else {
                Location::Remote(B)
            };
            b.instance(
                svc,
                name,
                Ipv4Addr::new(10, 18, node, n),
                v6(0x18, u16::from(node) * 0x100 + u16::from(n)),
                Ipv4Addr::new(10, 30, node, n + 100),
                v6(0x30, u16::from(node) * 0x100 + u16::from(n) + 100),
                loc,
            );
        }
        b.peer(B);
        match b.build() {
            Ok(t) => Arc::new(t),
            Err(e) => panic!("fixture table: {e}"),
        }
    }))
}

pub(super) fn v6(group: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfdff, group, 0, 0, 0, 0, 0, last)
}

/// A UDP/IPv4 packet with a valid checksum.
pub(super) fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let payload = b"fuzz";
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = packet::IPPROTO_UDP;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    if let Ok(info) = packet::parse(&p) {
        fix_checksums(&mut p, &info);
    }
    p
}

/// The client's two UDP flows to web's ServiceIP: round robin puts the
/// first on web/1 (local) and the second on web/2 (on B).
pub(super) fn fixture_flows() -> &'static [Vec<u8>] {
    static FLOWS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FLOWS.get_or_init(|| {
        vec![
            udp4([10, 18, 1, 5], 1000, [10, 30, 0, 10], 53),
            udp4([10, 18, 1, 5], 1001, [10, 30, 0, 10], 53),
        ]
    })
}

/// A remote client (on B, instance IP 10.30.2.150) to web/1 on A: creates
/// the reply entry.
pub(super) fn fixture_remote_client() -> Vec<u8> {
    udp4([10, 30, 2, 150], 2000, [10, 18, 1, 6], 53)
}

/// `pkt` behind a plain tunnel header, as a member sends it in plain mode.
pub(super) fn wrap(pkt: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; HEADER_LEN + pkt.len()];
    d[HEADER_LEN..].copy_from_slice(pkt);
    tunnel::write(
        &mut d,
        &tunnel::Header {
            msg: MsgType::Data,
            protection: Protection::Plain,
            session: 0xb0b,
            counter: 1,
            csum_partial: false,
        },
    );
    d
}

/// Seeds for the corpus: real packets of every kind each target wants to
/// see, so a campaign starts deep. Used by `fuzz/seed.rs`-style generation
/// in the replay test and documented in `docs/fuzzing.md`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let flows = fixture_flows();
    let client = fixture_remote_client();
    let sel = [
        0x0a, 0x1e, 0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x0a, 0x12, 0x01, 0x05, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05,
    ];
    for p in flows.iter().chain([&client]) {
        out.push(("parse", p.clone()));
        let mut r = sel.to_vec();
        r.extend_from_slice(p);
        out.push(("rewrite", r));
    }
    // Errors as the fixture's instances would send them: web/1 refuses the
    // local client's datagram (case a) and the remote client's (case b); web/2's
    // refusal of the local client's datagram arrives through B (case c).
    let errors = [
        icmp4_unreachable(
            [10, 18, 1, 6],
            [10, 30, 1, 105],
            &udp4([10, 30, 1, 105], 1000, [10, 18, 1, 6], 53),
        ),
        icmp4_unreachable(
            [10, 18, 1, 6],
            [10, 30, 2, 150],
            &udp4([10, 30, 2, 150], 2000, [10, 18, 1, 6], 53),
        ),
        icmp4_unreachable(
            [10, 18, 2, 7],
            [10, 30, 1, 105],
            &udp4([10, 30, 1, 105], 1001, [10, 18, 2, 7], 53),
        ),
    ];
    for e in errors {
        out.push(("parse", e.clone()));
        let mut r = sel.to_vec();
        r.extend_from_slice(&e);
        out.push(("icmp_error", r));
    }
    let mut d = vec![1u8];
    for p in flows.iter().chain([&client]) {
        for ctl in [0x20u8, 0x40, 0x60, 0x70, 0xa0] {
            d.push(ctl);
            d.push(p.len() as u8);
            d.extend_from_slice(p);
        }
    }
    out.push(("decap", d.clone()));
    d[0] = 0;
    out.push(("decap", d));
    out.push((
        "flow_table",
        (0u8..120).map(|i| i.wrapping_mul(37)).collect(),
    ));
    for d in super::coalesce::seeds() {
        out.push(("coalesce", d));
    }
    out
}

/// An ICMPv4 port unreachable from `src` to `dst` quoting `quote` (its
/// first 28 bytes), with valid checksums.
fn icmp4_unreachable(src: [u8; 4], dst: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let q = &quote[..quote.len().min(28)];
    let total = 20 + 8 + q.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = packet::IPPROTO_ICMP;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20] = packet::ICMP4_DEST_UNREACHABLE;
    p[21] = 3;
    p[28..].copy_from_slice(q);
    if let Ok(e) = packet::parse_icmp_error(&p) {
        fix_error_checksums(&mut p, &e);
    }
    p
}
