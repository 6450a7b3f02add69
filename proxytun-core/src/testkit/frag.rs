//! Fragmenting and reassembling packets the way a host's kernel does, for
//! the fragment tests: an independent model of RFC 791 and RFC 8200.

use std::net::IpAddr;

use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder};

use crate::checksum::checksum;

/// A UDP datagram of `payload` with checksum, IPv4 id (or later IPv6
/// fragment id) `id`, the "don't fragment" bit clear.
pub fn udp_datagram(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::UDP, s.octets(), d.octets()).unwrap();
            h.identification = 0x4242;
            h.dont_fragment = false;
            PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    b.udp(sport, dport).write(&mut out, payload).unwrap();
    out
}

/// A payload whose every byte depends on its position, so a misplaced or
/// lost fragment shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Cuts `pkt` into fragments of at most `mtu` bytes (IPv6: with a
/// fragment header of identification `id`; IPv4 keeps its own).
pub fn fragment(pkt: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
    if pkt[0] >> 4 == 4 {
        let ihl = usize::from(pkt[0] & 0xf) * 4;
        let data = &pkt[ihl..];
        let step = (mtu - ihl) / 8 * 8;
        data.chunks(step)
            .enumerate()
            .map(|(i, chunk)| {
                let mut f = pkt[..ihl].to_vec();
                f.extend_from_slice(chunk);
                let more = (i + 1) * step < data.len();
                let word = ((i * step / 8) as u16) | if more { 0x2000 } else { 0 };
                let n = f.len() as u16;
                f[2..4].copy_from_slice(&n.to_be_bytes());
                f[6..8].copy_from_slice(&word.to_be_bytes());
                f[10..12].fill(0);
                let c = checksum(&f[..ihl]);
                f[10..12].copy_from_slice(&c.to_be_bytes());
                f
            })
            .collect()
    } else {
        let next = pkt[6];
        let data = &pkt[40..];
        let step = (mtu - 48) / 8 * 8;
        data.chunks(step)
            .enumerate()
            .map(|(i, chunk)| {
                let mut f = pkt[..40].to_vec();
                f[6] = 44;
                let more = (i + 1) * step < data.len();
                let word = ((i * step) as u16) | u16::from(more);
                f.extend_from_slice(&[next, 0]);
                f.extend_from_slice(&word.to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
                f.extend_from_slice(chunk);
                let n = (f.len() - 40) as u16;
                f[4..6].copy_from_slice(&n.to_be_bytes());
                f
            })
            .collect()
    }
}

/// Puts fragments (any order) back together as the receiving kernel
/// would; panics on a gap or a mix of datagrams.
pub fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let v4 = frags[0][0] >> 4 == 4;
    let mut parts: Vec<(usize, bool, &[u8], &[u8])> = frags
        .iter()
        .map(|f| {
            if v4 {
                let ihl = usize::from(f[0] & 0xf) * 4;
                let word = u16::from_be_bytes([f[6], f[7]]);
                let off = usize::from(word & 0x1fff) * 8;
                (off, word & 0x2000 != 0, &f[..ihl], &f[ihl..])
            } else {
                let word = u16::from_be_bytes([f[42], f[43]]);
                (
                    usize::from(word & 0xfff8),
                    word & 1 != 0,
                    &f[..48],
                    &f[48..],
                )
            }
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut data = Vec::new();
    for (off, _, _, d) in &parts {
        assert_eq!(*off, data.len(), "gap or overlap at {off}");
        data.extend_from_slice(d);
    }
    assert!(!parts.last().unwrap().1, "last fragment missing");
    let head = parts[0].2;
    let mut pkt;
    if v4 {
        pkt = head.to_vec();
        pkt[2..4].copy_from_slice(&((head.len() + data.len()) as u16).to_be_bytes());
        pkt[6..8].fill(0);
        pkt[10..12].fill(0);
        let c = checksum(&pkt[..head.len()]);
        pkt[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        pkt = head[..40].to_vec();
        pkt[6] = head[40];
        pkt[4..6].copy_from_slice(&(data.len() as u16).to_be_bytes());
    }
    pkt.extend_from_slice(&data);
    pkt
}
