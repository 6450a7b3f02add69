//! Reading a fragment: its datagram's identity, where its data lies, and
//! for the first fragment the transport header.

use std::net::{IpAddr, Ipv4Addr};

use crate::counters::DropReason;
use crate::ipv6_ext;
use crate::packet::{
    self, be16, PacketInfo, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV4_HEADER_MIN, IPV6_HEADER_LEN,
};

/// Largest reassembled IP payload (the 16-bit length fields' limit).
const MAX_DATAGRAM: usize = 65535;

/// A validated fragment. Offsets are in bounds of the buffer it was
/// parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The datagram's protocol (IPv6: the fragment header's next header).
    pub proto: u8,
    /// The datagram's identification (IPv4: 16 bits).
    pub id: u32,
    /// Offset of this fragment's data in the datagram, in bytes.
    pub offset: usize,
    /// Bytes of data this fragment carries.
    pub data_len: usize,
    /// More fragments follow.
    pub more: bool,
    /// The first fragment's transport facts (ports, flags, offsets), as
    /// [`packet::parse`] gives them for a whole packet.
    pub first: Option<PacketInfo>,
    /// Length of the fragment as its header states.
    pub len: usize,
}

impl Fragment {
    /// Where this fragment's data ends in the datagram.
    pub fn end(&self) -> usize {
        self.offset + self.data_len
    }
}

/// Parses an IPv4 fragment or an IPv6 packet with a fragment header.
///
/// Errors: `Malformed` for length inconsistencies (a fragment past 64 KB,
/// a non-last fragment whose data is empty or not a multiple of 8 bytes, a
/// first fragment too short for its transport header), `Fragment` when the
/// packet is no fragment at all, `UnsupportedProtocol` for a transport no
/// flow carries, `Ipv6ExtHeader` for an IPv6 header that is not walked.
pub fn parse(buf: &[u8]) -> Result<Fragment, DropReason> {
    match buf.first().map(|b| b >> 4) {
        Some(4) => parse_v4(buf),
        Some(6) => parse_v6(buf),
        _ => Err(DropReason::Malformed),
    }
}

fn parse_v4(buf: &[u8]) -> Result<Fragment, DropReason> {
    let (ihl, total) = packet::ipv4_lengths(buf)?;
    let word = be16(buf, 6)?;
    let (offset, more) = (usize::from(word & 0x1fff) * 8, word & 0x2000 != 0);
    if offset == 0 && !more {
        return Err(DropReason::Fragment);
    }
    let proto = buf[9];
    if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
        return Err(DropReason::UnsupportedProtocol);
    }
    let src = IpAddr::V4(Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]));
    let pkt = &buf[..total];
    let id = u32::from(be16(buf, 4)?);
    finish(pkt, src, dst, (proto, proto), id, offset, more, (ihl, ihl))
}

fn parse_v6(buf: &[u8]) -> Result<Fragment, DropReason> {
    if buf.len() < IPV6_HEADER_LEN {
        return Err(DropReason::Malformed);
    }
    let total = usize::from(be16(buf, 4)?) + IPV6_HEADER_LEN;
    if total > buf.len() {
        return Err(DropReason::Malformed);
    }
    let pkt = &buf[..total];
    let walk = ipv6_ext::walk(pkt)?;
    let Some(f) = walk.frag else {
        return Err(DropReason::Fragment);
    };
    let proto = walk.next;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {}
        50 | 51 | 135 | 139 | 140 | 253 | 254 => return Err(DropReason::Ipv6ExtHeader),
        // A later fragment may follow headers of the unfragmentable part
        // only; its next header names the datagram's first header.
        ipv6_ext::EXT_DEST_OPTS | ipv6_ext::EXT_ROUTING if f.offset != 0 => {}
        _ => return Err(DropReason::UnsupportedProtocol),
    }
    let (src, dst) = packet::v6_addrs(pkt);
    let protos = (f.next, proto);
    finish(
        pkt,
        src,
        dst,
        protos,
        f.id,
        f.offset,
        f.more,
        (f.data_at, walk.offset),
    )
}

/// The checks both families share, and the first fragment's transport.
/// `protos`: (the datagram's protocol as its key, the transport's);
/// `at`: (where the data starts, where the transport header starts).
#[allow(clippy::too_many_arguments)]
fn finish(
    pkt: &[u8],
    src: IpAddr,
    dst: IpAddr,
    (proto, l4_proto): (u8, u8),
    id: u32,
    offset: usize,
    more: bool,
    (data_at, l4_at): (usize, usize),
) -> Result<Fragment, DropReason> {
    let data_len = pkt.len() - data_at;
    if offset + data_len > MAX_DATAGRAM || (more && (data_len == 0 || !data_len.is_multiple_of(8)))
    {
        return Err(DropReason::Malformed);
    }
    let first = if offset == 0 {
        Some(packet::parse_first_fragment(
            pkt, l4_at, l4_proto, src, dst,
        )?)
    } else {
        None
    };
    Ok(Fragment {
        src,
        dst,
        proto,
        id,
        offset,
        data_len,
        more,
        first,
        len: pkt.len(),
    })
}

/// A cheap look: is this an IPv4 fragment (more fragments, or an offset)?
/// IPv6 fragments are found by [`packet::parse`] walking the headers.
pub fn is_v4_fragment(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b >> 4 == 4)
        && buf
            .get(6..8)
            .is_some_and(|w| u16::from_be_bytes([w[0], w[1]]) & 0x3fff != 0)
}

/// Rewrites only the IP addresses (and the IPv4 header checksum) of a
/// packet of family `v4` at least one header long: a later fragment,
/// whose transport checksum sits in the first fragment. False, untouched,
/// on a family mismatch or a short buffer.
pub fn rewrite_ip(buf: &mut [u8], v4: bool, new_src: IpAddr, new_dst: IpAddr) -> bool {
    let min = if v4 { IPV4_HEADER_MIN } else { IPV6_HEADER_LEN };
    if new_src.is_ipv4() != v4 || new_dst.is_ipv4() != v4 || buf.len() < min {
        return false;
    }
    let (src_at, dst_at) = if v4 { (12, 16) } else { (8, 24) };
    let delta =
        packet::put_addr_at(buf, src_at, new_src).merge(packet::put_addr_at(buf, dst_at, new_dst));
    if v4 {
        packet::adjust_checksum_at(buf, 10, delta, false);
    }
    true
}

/// The source and destination a packet's IP header names now (after a
/// rewrite); `None` when it is too short for its header.
pub fn addresses(buf: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match buf.first().map(|b| b >> 4) {
        Some(4) if buf.len() >= IPV4_HEADER_MIN => Some((
            IpAddr::V4(Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15])),
            IpAddr::V4(Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19])),
        )),
        Some(6) if buf.len() >= IPV6_HEADER_LEN => Some(packet::v6_addrs(buf)),
        _ => None,
    }
}
