//! Target `rewrite`: address rewriting keeps every checksum valid and
//! is undone by rewriting back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{NetHeaders, PacketHeaders};

use super::{assert_checksums, fix_checksums, pick_addrs, split_selector};
use crate::packet::{self};

/// Target `rewrite`: the first 32 bytes choose new addresses, the rest is
/// a packet. After giving it correct checksums, [`packet::rewrite`] keeps
/// every checksum valid (by full recomputation), etherparse sees the new
/// addresses and the same ports, and rewriting back restores the bytes.
pub fn rewrite(data: &[u8]) {
    let Some((sel, pkt)) = split_selector(data) else {
        return;
    };
    let Ok(info) = packet::parse(pkt) else {
        return;
    };
    let mut buf = pkt.to_vec();
    fix_checksums(&mut buf, &info);
    assert_checksums(&buf, &info, "fixed input");
    let original = buf.clone();
    let (src, dst) = pick_addrs(&sel, info.src);
    assert!(packet::rewrite(&mut buf, &info, src, dst));
    let after = match packet::parse(&buf) {
        Ok(a) => a,
        Err(e) => panic!("rewritten packet no longer parses: {e:?}"),
    };
    assert_eq!((after.src, after.dst), (src, dst));
    assert_eq!(
        (
            after.sport,
            after.dport,
            after.l4,
            after.l4_offset,
            after.len
        ),
        (info.sport, info.dport, info.l4, info.l4_offset, info.len)
    );
    assert_checksums(&buf, &after, "rewritten");
    if let Ok(h) = PacketHeaders::from_ip_slice(&buf) {
        let (s, d) = match &h.net {
            Some(NetHeaders::Ipv4(ip, _)) => {
                (IpAddr::from(ip.source), IpAddr::from(ip.destination))
            }
            Some(NetHeaders::Ipv6(ip, _)) => {
                (IpAddr::from(ip.source), IpAddr::from(ip.destination))
            }
            other => panic!("rewritten packet is not IP to etherparse: {other:?}"),
        };
        assert_eq!((s, d), (src, dst));
    }
    // A wrong family is refused and changes nothing.
    let other = if src.is_ipv4() {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    let snapshot = buf.clone();
    assert!(!packet::rewrite(&mut buf, &after, other, dst));
    assert_eq!(buf, snapshot);
    assert!(packet::rewrite(&mut buf, &after, info.src, info.dst));
    assert_eq!(buf, original, "rewrite back did not restore the packet");
}
