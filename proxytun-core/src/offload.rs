//! Sans-IO helpers for TUN offloads: partial checksums and the split of a
//! TSO/USO super-packet into tunnel datagrams ready for one UDP GSO send.
//!
//! With `IFF_VNET_HDR` one TUN read brings up to 64 KB of one TCP or UDP
//! flow with a single set of headers, and usually a CHECKSUM_PARTIAL
//! transport checksum (the field holds the folded pseudo-header sum, not a
//! checksum). The core rewrites that packet once; these functions then
//! either re-seed the partial value (hairpin back into the TUN, the kernel
//! finishes it), finish the checksum (one packet to a peer), or cut the
//! super-packet into wire-sized segments with full checksums, laid out
//! contiguously at a fixed stride so the shell can hand whole runs of them
//! to `UDP_SEGMENT`.
//!
//! The shell converts `tun_rs::VirtioNetHdr` into [`Offload`]; nothing here
//! knows tun-rs types. Header lengths are always read from the packet
//! itself, never trusted from the vnet header. Nothing allocates, nothing
//! panics on any input: every failure is an [`OffloadError`].

use std::ops::Range;

use super::checksum::{checksum, checksum_with, ones_sum, pseudo_header_sum};
use super::packet::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER_MIN, IPV6_HEADER_LEN,
    TCP_CWR, TCP_FIN, TCP_HEADER_MIN, TCP_PSH, UDP_HEADER_LEN,
};
use super::tunnel::{write_header, HEADER_LEN};

/// Where the transport checksum lives (virtio `csum_start`/`csum_offset`),
/// so the checksum can be completed or re-seeded after a rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CsumAt {
    /// Offset of the transport header from the start of the IP packet.
    pub start: u16,
    /// Offset of the checksum field from `start` (TCP 16, UDP 6, ICMP 2).
    pub offset: u16,
}

/// The segmentation the kernel left to us; the family comes from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Gso {
    /// One ordinary packet.
    #[default]
    None,
    /// TSO (`VIRTIO_NET_HDR_GSO_TCPV4/6`): cut the payload into `mss` bytes.
    Tcp {
        /// Payload bytes per segment (the vnet header's `gso_size`).
        mss: u16,
    },
    /// USO (`VIRTIO_NET_HDR_GSO_UDP_L4`): cut into datagrams of `size` bytes.
    Udp {
        /// Payload bytes per datagram (the vnet header's `gso_size`).
        size: u16,
    },
}

/// The offload metadata of one TUN read, independent of tun-rs, so the core
/// and its tests can reason about it without the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Offload {
    /// Segmentation still to do.
    pub gso: Gso,
    /// `Some` when the transport checksum is partial (`NEEDS_CSUM`).
    pub csum: Option<CsumAt>,
}

/// Why an offloaded packet could not be processed; the shell counts it and
/// drops the packet (one bad packet never stops a batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Shorter than the headers it claims.
    #[error("packet truncated")]
    Truncated,
    /// Neither IPv4 nor IPv6.
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    /// IP header fields disagree with each other or with the buffer.
    #[error("inconsistent IP header: {0}")]
    BadIpHeader(&'static str),
    /// IPv4 fragments cannot carry offloads.
    #[error("IPv4 fragment")]
    Fragment,
    /// A transport (or IPv6 extension header) these helpers do not handle.
    #[error("unsupported transport protocol {0}")]
    UnsupportedProtocol(u8),
    /// The transport header is inconsistent (TCP data offset, ...).
    #[error("inconsistent transport header")]
    BadTransportHeader,
    /// The GSO kind does not match the packet's transport.
    #[error("GSO type does not match protocol {0}")]
    GsoProtocolMismatch(u8),
    /// `gso_size` of zero.
    #[error("GSO size is zero")]
    ZeroGsoSize,
    /// More segments than a `u16` counts.
    #[error("{0} segments, more than 65535")]
    TooManySegments(usize),
    /// `csum_start`/`csum_offset` do not point at this packet's checksum field.
    #[error("checksum position start={start} offset={offset} does not match the packet")]
    BadChecksumPosition {
        /// The given `csum_start`.
        start: u16,
        /// The given `csum_offset`.
        offset: u16,
    },
    /// The output buffer cannot hold all segments.
    #[error("output buffer of {have} bytes, {need} needed")]
    OutTooSmall {
        /// Bytes the segments need.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// The header layout of a packet, read from the packet itself.
///
/// The shell uses `l4_end` as the vnet `hdr_len` when it writes a
/// super-packet back to the TUN, instead of trusting the one it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// Transport protocol number.
    pub proto: u8,
    /// Offset of the transport header (= IP header length).
    pub l4_start: usize,
    /// End of the transport header for TCP and UDP (= `l4_start` for ICMP).
    pub l4_end: usize,
    /// Length of the IP packet as its header states (trailing bytes ignored).
    pub len: usize,
}

impl Layout {
    fn src_dst<'a>(&self, pkt: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        if self.v6 {
            (&pkt[8..24], &pkt[24..40])
        } else {
            (&pkt[12..16], &pkt[16..20])
        }
    }

    /// Where the transport checksum field of this protocol is, from `l4_start`.
    fn csum_offset(&self) -> usize {
        match self.proto {
            IPPROTO_TCP => 16,
            IPPROTO_UDP => 6,
            _ => 2,
        }
    }

    /// Whether the transport checksum covers a pseudo-header (all but ICMPv4).
    fn has_pseudo_header(&self) -> bool {
        self.proto != IPPROTO_ICMP
    }
}

fn be16(buf: &[u8], at: usize) -> Result<u16, OffloadError> {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(OffloadError::Truncated),
    }
}

/// Reads and checks the IP and transport headers of `pkt`.
///
/// Accepts IPv4 (with options, not fragmented) and IPv6 without extension
/// headers, carrying TCP, UDP or ICMP(v6); rejects anything else.
pub fn layout(pkt: &[u8]) -> Result<Layout, OffloadError> {
    let first = *pkt.first().ok_or(OffloadError::Truncated)?;
    let (v6, proto, l4_start, len) = match first >> 4 {
        4 => {
            if pkt.len() < IPV4_HEADER_MIN {
                return Err(OffloadError::Truncated);
            }
            let ihl = usize::from(first & 0x0f) * 4;
            let total = usize::from(be16(pkt, 2)?);
            if ihl < IPV4_HEADER_MIN {
                return Err(OffloadError::BadIpHeader("IPv4 header length below 20"));
            }
            if total < ihl {
                return Err(OffloadError::BadIpHeader("IPv4 total length below header"));
            }
            if total > pkt.len() {
                return Err(OffloadError::Truncated);
            }
            if be16(pkt, 6)? & 0x3fff != 0 {
                return Err(OffloadError::Fragment);
            }
            let proto = pkt[9];
            if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
                return Err(OffloadError::UnsupportedProtocol(proto));
            }
            (false, proto, ihl, total)
        }
        6 => {
            if pkt.len() < IPV6_HEADER_LEN {
                return Err(OffloadError::Truncated);
            }
            let total = usize::from(be16(pkt, 4)?) + IPV6_HEADER_LEN;
            if total > pkt.len() {
                return Err(OffloadError::Truncated);
            }
            let proto = pkt[6];
            if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
                return Err(OffloadError::UnsupportedProtocol(proto));
            }
            (true, proto, IPV6_HEADER_LEN, total)
        }
        _ => return Err(OffloadError::NotIp),
    };
    let l4_end = match proto {
        IPPROTO_TCP => {
            let doff_at = l4_start + 12;
            let doff = usize::from(*pkt.get(doff_at).ok_or(OffloadError::Truncated)? >> 4) * 4;
            if doff < TCP_HEADER_MIN {
                return Err(OffloadError::BadTransportHeader);
            }
            l4_start + doff
        }
        IPPROTO_UDP => l4_start + UDP_HEADER_LEN,
        // ICMP is never segmented; its checksum field is checked where used.
        _ => l4_start,
    };
    if l4_end > len {
        return Err(OffloadError::Truncated);
    }
    Ok(Layout {
        v6,
        proto,
        l4_start,
        l4_end,
        len,
    })
}

/// Checks that `csum` points at the checksum field of the packet `lay`
/// describes and returns the field's absolute offset.
fn checksum_field(lay: &Layout, csum: CsumAt) -> Result<usize, OffloadError> {
    if usize::from(csum.start) != lay.l4_start || usize::from(csum.offset) != lay.csum_offset() {
        return Err(OffloadError::BadChecksumPosition {
            start: csum.start,
            offset: csum.offset,
        });
    }
    let at = lay.l4_start + lay.csum_offset();
    if at + 2 > lay.len {
        return Err(OffloadError::Truncated);
    }
    Ok(at)
}

/// The pseudo-header sum of the packet as it is now (0 for ICMPv4).
fn pseudo_sum(pkt: &[u8], lay: &Layout) -> u32 {
    if !lay.has_pseudo_header() {
        return 0;
    }
    let (src, dst) = lay.src_dst(pkt);
    // `len` comes from a 16-bit field, so the transport length fits.
    pseudo_header_sum(src, dst, lay.proto, (lay.len - lay.l4_start) as u32)
}

/// Writes the CHECKSUM_PARTIAL seed into a rewritten packet: the folded,
/// uncomplemented pseudo-header sum over its current addresses, protocol
/// and transport length (IP length - `csum.start`); 0 for ICMPv4, which has
/// no pseudo-header.
///
/// Why: the core's rewrite adjusts checksums as if they were complete, which
/// is wrong for a partial one; re-seeding lets a packet go back into the TUN
/// (hairpin) still marked `NEEDS_CSUM` and the kernel finishes it.
pub fn seed_partial_checksum(pkt: &mut [u8], csum: CsumAt) -> Result<(), OffloadError> {
    let lay = layout(pkt)?;
    let at = checksum_field(&lay, csum)?;
    let seed = if lay.has_pseudo_header() {
        ones_sum(pseudo_sum(pkt, &lay), &[])
    } else {
        0
    };
    pkt[at..at + 2].copy_from_slice(&seed.to_be_bytes());
    Ok(())
}

/// Computes the full transport checksum from scratch (pseudo-header from the
/// packet's current header, then the transport header and data), whatever
/// the field holds; UDP's 0 is sent as 0xffff.
///
/// Why: a non-GSO `NEEDS_CSUM` packet leaving for a peer crosses a real
/// network, where nobody will finish a partial checksum.
pub fn finish_checksum(pkt: &mut [u8], csum: CsumAt) -> Result<(), OffloadError> {
    let lay = layout(pkt)?;
    let at = checksum_field(&lay, csum)?;
    pkt[at..at + 2].copy_from_slice(&[0, 0]);
    let mut sum = checksum_with(pseudo_sum(pkt, &lay), &pkt[lay.l4_start..lay.len]);
    if sum == 0 && lay.proto == IPPROTO_UDP {
        sum = 0xffff;
    }
    pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Computes the full TCP or UDP checksum of `pkt` from scratch, wherever
/// its layout puts the field; other protocols are left alone.
///
/// Why: a datagram that came with [`super::tunnel::FLAG_CSUM_PARTIAL`]
/// carries only a seed, and a receiver whose TUN takes no virtio-net header
/// cannot ask its kernel to finish it.
pub fn fill_checksum(pkt: &mut [u8]) -> Result<(), OffloadError> {
    let lay = layout(pkt)?;
    if !matches!(lay.proto, IPPROTO_TCP | IPPROTO_UDP) {
        return Ok(());
    }
    let at = CsumAt {
        start: lay.l4_start as u16,
        offset: lay.csum_offset() as u16,
    };
    finish_checksum(pkt, at)
}

/// Where [`segment`] put its output: `count` tunnel datagrams, each starting
/// at a multiple of `stride` in the output buffer, all `stride` bytes long
/// but the last, `len` bytes in all.
///
/// This is the layout a `UDP_SEGMENT` send wants: a run of whole strides,
/// optionally ending with one shorter datagram, sent with segment size
/// `stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segments {
    /// Number of datagrams (at least 1 after a successful [`segment`]).
    pub count: usize,
    /// Bytes from one datagram's start to the next (the GSO segment size).
    pub stride: usize,
    /// Total bytes used in the output buffer.
    pub len: usize,
}

impl Segments {
    /// Byte ranges of whole datagrams for successive GSO sends, each at most
    /// `max_segments` datagrams and `max_bytes` bytes (the kernel allows 64
    /// segments and about 65000 bytes per `UDP_SEGMENT` send).
    ///
    /// Every range is made of full strides, except that the very last one
    /// ends with the shorter final datagram. A datagram larger than
    /// `max_bytes` on its own still gets a range of one (it cannot be cut).
    pub fn groups(
        &self,
        max_segments: usize,
        max_bytes: usize,
    ) -> impl Iterator<Item = Range<usize>> {
        let per = max_segments.min(max_bytes / self.stride.max(1)).max(1);
        let step = per.saturating_mul(self.stride);
        let len = self.len;
        let groups = self.count.div_ceil(per);
        (0..groups).map(move |g| {
            let start = g.saturating_mul(step);
            start..start.saturating_add(step).min(len)
        })
    }

    /// The byte range of datagram `i`, for sending one at a time
    /// (`sendmmsg`) where GSO is not available.
    pub fn datagram(&self, i: usize) -> Option<Range<usize>> {
        if i >= self.count {
            return None;
        }
        let start = i * self.stride;
        Some(start..(start + self.stride).min(self.len))
    }
}

/// Plans the split of `pkt` without writing: what [`segment`] would
/// produce, so the shell can check or size its buffer.
pub fn plan(pkt: &[u8], off: &Offload) -> Result<Segments, OffloadError> {
    plan_layout(pkt, off, 0).map(|(_, s, _)| s)
}

/// Like [`plan`], with `trailer` bytes left after each datagram (see
/// [`segment_with_trailer`]).
pub fn plan_with_trailer(
    pkt: &[u8],
    off: &Offload,
    trailer: usize,
) -> Result<Segments, OffloadError> {
    plan_layout(pkt, off, trailer).map(|(_, s, _)| s)
}

/// Validates a GSO packet and computes its split: (layout, segments, gso
/// size), with `trailer` bytes reserved after each datagram's packet.
fn plan_layout(
    pkt: &[u8],
    off: &Offload,
    trailer: usize,
) -> Result<(Layout, Segments, usize), OffloadError> {
    let lay = layout(pkt)?;
    if let Some(csum) = off.csum {
        checksum_field(&lay, csum)?;
    }
    let (want, size) = match off.gso {
        Gso::None => (None, 0),
        Gso::Tcp { mss } => (Some(IPPROTO_TCP), mss),
        Gso::Udp { size } => (Some(IPPROTO_UDP), size),
    };
    let Some(want) = want else {
        // One packet: one datagram, header included.
        let stride = HEADER_LEN + lay.len + trailer;
        return Ok((
            lay,
            Segments {
                count: 1,
                stride,
                len: stride,
            },
            0,
        ));
    };
    if lay.proto != want {
        return Err(OffloadError::GsoProtocolMismatch(lay.proto));
    }
    if size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let size = usize::from(size);
    let payload = lay.len - lay.l4_end;
    let count = payload.div_ceil(size).max(1);
    // Every segment is a piece of a packet whose length came from a 16-bit
    // field, so its own lengths fit 16 bits and the count fits a u16; the
    // check keeps that true should a jumbo (BIG TCP) path ever feed this.
    if count > usize::from(u16::MAX) {
        return Err(OffloadError::TooManySegments(count));
    }
    let stride = HEADER_LEN + lay.l4_end + size + trailer;
    let last = payload - (count - 1) * size;
    let len = (count - 1) * stride + HEADER_LEN + lay.l4_end + last + trailer;
    Ok((lay, Segments { count, stride, len }, size))
}

/// Splits a rewritten TSO/USO super-packet into tunnel datagrams in `out`:
/// each is `[tunnel header][IP header][TCP/UDP header][payload chunk]` at a
/// fixed stride, only the last shorter, with IPv4 total length, id + i and
/// header checksum, IPv6 payload length, TCP sequence number (FIN/PSH only
/// on the last, CWR only on the first) or UDP length, and a full transport
/// checksum (UDP 0 sent as 0xffff) set per datagram.
///
/// Why: this is one pass that turns one TUN read into the exact buffer a
/// single `UDP_SEGMENT` send takes; the segments are what the kernel's own
/// GSO would have produced (checked against `tun_rs::gso_split`).
///
/// With [`Gso::None`] the result is one datagram: the packet behind a
/// tunnel header, its checksum finished if `off.csum` says it is partial.
/// On the GSO path the incoming transport checksum (partial or full) is
/// never read.
pub fn segment(pkt: &[u8], off: &Offload, out: &mut [u8]) -> Result<Segments, OffloadError> {
    segment_with_trailer(pkt, off, 0, Sums::Full, out)
}

/// What transport checksums [`segment_with_trailer`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sums {
    /// A full checksum per datagram, as the kernel's GSO would write.
    Full,
    /// Only the CHECKSUM_PARTIAL seed (the folded pseudo-header sum) per
    /// datagram, and for one packet its partial checksum re-seeded for the
    /// rewritten addresses: no pass over the payload. The datagrams must then travel with
    /// [`super::tunnel::FLAG_CSUM_PARTIAL`] so the receiver finishes them.
    Partial,
}

/// [`segment`], leaving `trailer` bytes (the tunnel tag, see
/// [`super::seal`]) after each datagram's packet: the stride includes
/// them, so after sealing each datagram in place the buffer is still one
/// `UDP_SEGMENT` run. The trailer bytes are left as they were; the
/// headers written are plain placeholders the sealer overwrites.
pub fn segment_with_trailer(
    pkt: &[u8],
    off: &Offload,
    trailer: usize,
    sums: Sums,
    out: &mut [u8],
) -> Result<Segments, OffloadError> {
    let (lay, segs, size) = plan_layout(pkt, off, trailer)?;
    if out.len() < segs.len {
        return Err(OffloadError::OutTooSmall {
            need: segs.len,
            have: out.len(),
        });
    }
    if size == 0 {
        let end = HEADER_LEN + lay.len;
        write_header(out);
        out[HEADER_LEN..end].copy_from_slice(&pkt[..lay.len]);
        if let Some(csum) = off.csum {
            match sums {
                Sums::Full => finish_checksum(&mut out[HEADER_LEN..end], csum)?,
                Sums::Partial => seed_partial_checksum(&mut out[HEADER_LEN..end], csum)?,
            }
        }
        return Ok(segs);
    }
    let hdr = lay.l4_end;
    let (src, dst) = lay.src_dst(pkt);
    let base_sum = pseudo_header_sum(src, dst, lay.proto, 0);
    let csum_at = lay.l4_start + lay.csum_offset();
    let tcp = lay.proto == IPPROTO_TCP;
    let seq0 = if tcp {
        let s = lay.l4_start + 4;
        u32::from_be_bytes([pkt[s], pkt[s + 1], pkt[s + 2], pkt[s + 3]])
    } else {
        0
    };
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let payload = &pkt[hdr..lay.len];
    let mut chunks = payload.chunks(size);
    for i in 0..segs.count {
        // A header-only packet still makes one datagram.
        let chunk = chunks.next().unwrap_or(&[]);
        let start = i * segs.stride;
        let end = start + HEADER_LEN + hdr + chunk.len();
        let seg = &mut out[start..end];
        write_header(seg);
        let p = &mut seg[HEADER_LEN..];
        p[..hdr].copy_from_slice(&pkt[..hdr]);
        p[hdr..].copy_from_slice(chunk);
        let ip_total = hdr + chunk.len();
        let l4_len = ip_total - lay.l4_start;
        if lay.v6 {
            // The plan checked these fit 16 bits.
            p[4..6].copy_from_slice(&((ip_total - IPV6_HEADER_LEN) as u16).to_be_bytes());
        } else {
            p[2..4].copy_from_slice(&(ip_total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&p[..lay.l4_start]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = lay.l4_start;
        if tcp {
            let seq = seq0.wrapping_add((size as u32).wrapping_mul(i as u32));
            p[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if i > 0 {
                p[l4 + 13] &= !TCP_CWR;
            }
            if i + 1 < segs.count {
                p[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
        } else {
            p[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let c = match sums {
            Sums::Partial => ones_sum(base_sum + l4_len as u32, &[]),
            Sums::Full => {
                p[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
                let c = checksum_with(base_sum + l4_len as u32, &p[l4..ip_total]);
                if c == 0 && !tcp {
                    0xffff
                } else {
                    c
                }
            }
        };
        p[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    Ok(segs)
}
