//! Receive-side coalescing, our own GRO: the inner packets of one receive
//! batch, opened in place in the receive buffer, are grouped by flow into
//! TUN super-packets without being copied.
//!
//! A frame is the first packet of a run (its headers become the
//! super-packet's, patched by [`Coalescer::finish`]) followed by the
//! payloads of the packets that continue it. The shell writes each frame
//! with one vectored write: a virtio-net header made from [`FrameMeta`],
//! the head packet, and every payload where it lies in the receive buffer.
//! The kernel's copy into its socket buffer is the only copy.
//!
//! No checksum is read or verified. Every TCP and UDP frame leaves as
//! CHECKSUM_PARTIAL with the pseudo-header seed written here, so the
//! kernel that receives it from the TUN computes nothing either (a local
//! socket takes a partial checksum as good). The bytes were covered on the
//! wire by the tunnel tag, or in plain mode by the outer UDP checksum, so
//! re-validating each segment's own checksum would catch nothing; that is
//! also why the sender may leave them partial
//! ([`super::tunnel::FLAG_CSUM_PARTIAL`]).
//!
//! The rules are Linux's TCP GRO rules: the same addresses, ports, IP
//! header fields (TOS, TTL, DF; IPv6 traffic class, flow label and hop
//! limit), TCP header length, options, ACK number and window; flags ACK
//! only (PSH allowed on the last segment, which closes the frame); each
//! segment starts where the previous one ended; all have the head's payload
//! size but the last, which may be shorter and closes the frame; at most
//! [`MAX_SEGMENTS`] and 65535 bytes. UDP datagrams of one flow and one size
//! coalesce the same way (USO), when the TUN takes them. Anything else
//! (pure ACKs, SYN/FIN/RST, IPv4 options, ICMP, fragments) is a frame of
//! its own, in arrival order, so the order within each flow never changes.
//!
//! Nothing allocates after [`Coalescer::new`]; nothing panics on any input.

use std::ops::Range;

use super::checksum::{checksum, ones_sum, pseudo_header_sum};
use super::offload::{fill_checksum, layout, CsumAt, Gso, Layout, OffloadError};
use super::packet::{IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER_MIN, IPV6_HEADER_LEN, TCP_ACK, TCP_PSH};

/// Most packets one frame may hold (the kernel's `UDP_GRO_CNT_MAX` and
/// `MAX_SKB_FRAGS`-sized GSO limits are of this order).
pub const MAX_SEGMENTS: usize = 64;

/// Largest super-packet: an IP total length must fit 16 bits.
const MAX_LEN: usize = 65535;

/// What the virtio-net header of one frame must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// IPv6 rather than IPv4 (picks the TCPV4/TCPV6 GSO type).
    pub v6: bool,
    /// The segmentation the kernel may have to do; `None` for one packet.
    pub gso: Gso,
    /// Where the partial transport checksum is (`NEEDS_CSUM`), if any.
    pub csum: Option<CsumAt>,
    /// IP plus transport header bytes (`hdr_len`).
    pub hdr_len: u16,
}

/// One frame, ready to write: the metadata, the head packet and the
/// payloads that follow it, as ranges of the buffer given to
/// [`Coalescer::push`].
#[derive(Debug, Clone)]
pub struct FrameView<'a> {
    /// The virtio-net header's contents.
    pub meta: FrameMeta,
    /// The head packet (headers patched by [`Coalescer::finish`]).
    pub head: Range<usize>,
    /// `(start, len)` of each payload after the head, in order.
    pub tails: &'a [(usize, usize)],
}

/// What [`Coalescer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended to an open frame of its flow.
    Appended,
    /// Started a frame of its own.
    Opened,
    /// Every frame is taken: write them ([`Coalescer::finish`], then
    /// [`Coalescer::frames`]), [`Coalescer::clear`], and push it again.
    Full,
}

/// How a frame may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A TCP run.
    Tcp,
    /// A UDP run (only when the TUN takes USO).
    Udp,
    /// One TCP or UDP packet that cannot be coalesced: seeded, not grown.
    Seeded,
    /// Anything else: written as it came.
    AsIs,
}

#[derive(Debug, Clone)]
struct Frame {
    head: (usize, usize),
    tails: Vec<(usize, usize)>,
    kind: Kind,
    lay: Layout,
    /// A cheap fingerprint of addresses and ports, checked before bytes.
    hash: u64,
    /// Payload bytes per segment (the head's).
    size: usize,
    total: usize,
    next_seq: u32,
    closed: bool,
    psh: bool,
    meta: FrameMeta,
}

impl Frame {
    fn empty() -> Frame {
        Frame {
            head: (0, 0),
            tails: Vec::with_capacity(MAX_SEGMENTS - 1),
            kind: Kind::AsIs,
            lay: Layout {
                v6: false,
                proto: 0,
                l4_start: 0,
                l4_end: 0,
                len: 0,
            },
            hash: 0,
            size: 0,
            total: 0,
            next_seq: 0,
            closed: true,
            psh: false,
            meta: FrameMeta::default(),
        }
    }
}

/// The frames of one batch; see the module docs.
#[derive(Debug)]
pub struct Coalescer {
    frames: Vec<Frame>,
    used: usize,
    udp: bool,
}

/// What one packet looks like to the coalescer.
struct Probe {
    kind: Kind,
    lay: Layout,
    hash: u64,
    payload: usize,
    seq: u32,
    flags: u8,
}

impl Coalescer {
    /// Room for `frames` frames per batch (at least one); `udp` when the
    /// TUN was granted USO and takes UDP super-packets.
    pub fn new(frames: usize, udp: bool) -> Coalescer {
        Coalescer {
            frames: (0..frames.max(1)).map(|_| Frame::empty()).collect(),
            used: 0,
            udp,
        }
    }

    /// Forgets every frame (after they were written).
    pub fn clear(&mut self) {
        self.used = 0;
    }

    /// True when no frame is held.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Adds the packet `buf[start..start + len]`. `partial` says its sender
    /// left the transport checksum as a seed: a packet that cannot be
    /// seeded here (one `layout` refuses) then gets its checksum finished
    /// in place, or is refused with the reason if it has none to finish.
    pub fn push(
        &mut self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        partial: bool,
    ) -> Result<Pushed, OffloadError> {
        let pkt = buf
            .get_mut(start..start.saturating_add(len))
            .ok_or(OffloadError::Truncated)?;
        let probe = match self.probe(pkt) {
            Some(p) => p,
            None => {
                if partial {
                    // Not a layout we seed: finish it here or refuse it.
                    fill_checksum(pkt)?;
                }
                Probe {
                    kind: Kind::AsIs,
                    lay: Frame::empty().lay,
                    hash: 0,
                    payload: 0,
                    seq: 0,
                    flags: 0,
                }
            }
        };
        let pkt = &buf[start..start + len];
        if matches!(probe.kind, Kind::Tcp | Kind::Udp) {
            if let Some(i) = self.candidate(pkt, buf, &probe) {
                if self.appends(i, buf, pkt, &probe) {
                    let f = &mut self.frames[i];
                    f.tails.push((start + probe.lay.l4_end, probe.payload));
                    f.total += probe.payload;
                    f.next_seq = f.next_seq.wrapping_add(probe.payload as u32);
                    if probe.payload < f.size || probe.flags & TCP_PSH != 0 {
                        f.closed = true;
                        f.psh |= probe.flags & TCP_PSH != 0;
                    }
                    return Ok(Pushed::Appended);
                }
            }
        }
        if self.used == self.frames.len() {
            return Ok(Pushed::Full);
        }
        let f = &mut self.frames[self.used];
        self.used += 1;
        f.head = (start, len);
        f.tails.clear();
        f.kind = probe.kind;
        f.lay = probe.lay;
        f.hash = probe.hash;
        f.size = probe.payload;
        f.total = len;
        f.next_seq = probe.seq.wrapping_add(probe.payload as u32);
        f.psh = false;
        f.closed = match probe.kind {
            Kind::Tcp => probe.flags != TCP_ACK,
            Kind::Udp => false,
            Kind::Seeded | Kind::AsIs => true,
        };
        Ok(Pushed::Opened)
    }

    /// How a packet may take part: `None` when `layout` refuses it.
    fn probe(&self, pkt: &[u8]) -> Option<Probe> {
        let lay = layout(pkt).ok()?;
        let tcp = lay.proto == IPPROTO_TCP;
        if !tcp && lay.proto != IPPROTO_UDP {
            return Some(Probe {
                kind: Kind::AsIs,
                lay,
                hash: 0,
                payload: 0,
                seq: 0,
                flags: 0,
            });
        }
        let payload = lay.len - lay.l4_end;
        let l4 = lay.l4_start;
        let (seq, flags) = if tcp {
            (be32(pkt, l4 + 4), pkt[l4 + 13])
        } else {
            (0, 0)
        };
        // Coalescing wants the plain header shapes and no trailing bytes.
        let plain_ip = lay.v6 || l4 == IPV4_HEADER_MIN;
        let runs = if tcp {
            flags & !TCP_PSH == TCP_ACK
        } else {
            self.udp
        };
        let kind = if plain_ip && runs && payload > 0 && lay.len == pkt.len() {
            if tcp {
                Kind::Tcp
            } else {
                Kind::Udp
            }
        } else {
            Kind::Seeded
        };
        Some(Probe {
            kind,
            lay,
            hash: flow_hash(pkt, &lay),
            payload,
            seq,
            flags,
        })
    }

    /// The newest frame of the packet's flow, if it is still open.
    fn candidate(&self, pkt: &[u8], buf: &[u8], p: &Probe) -> Option<usize> {
        // The newest frame of the flow, whatever its kind: a packet that
        // joined an older one would overtake what came between.
        let i = (0..self.used).rev().find(|&i| {
            let f = &self.frames[i];
            f.hash == p.hash
                && f.lay.proto == p.lay.proto
                && f.lay.v6 == p.lay.v6
                && same_flow(&buf[f.head.0..f.head.0 + f.head.1], pkt, &f.lay)
        })?;
        let f = &self.frames[i];
        (f.kind == p.kind && !f.closed).then_some(i)
    }

    /// Whether packet `pkt` continues frame `i` (same flow, checked).
    fn appends(&self, i: usize, buf: &[u8], pkt: &[u8], p: &Probe) -> bool {
        let f = &self.frames[i];
        let head = &buf[f.head.0..f.head.0 + f.head.1];
        if f.tails.len() + 1 >= MAX_SEGMENTS
            || f.total + p.payload > MAX_LEN
            || p.payload > f.size
            || p.lay.l4_end != f.lay.l4_end
        {
            return false;
        }
        let same_ip = if f.lay.v6 {
            head[..4] == pkt[..4] && head[7] == pkt[7]
        } else {
            head[1] == pkt[1] && head[6] & 0x40 == pkt[6] & 0x40 && head[8] == pkt[8]
        };
        if !same_ip {
            return false;
        }
        if p.kind == Kind::Udp {
            return true;
        }
        let l4 = f.lay.l4_start;
        p.seq == f.next_seq
            // ACK number, then (skipping flags) window.
            && head[l4 + 8..l4 + 12] == pkt[l4 + 8..l4 + 12]
            && head[l4 + 14..l4 + 16] == pkt[l4 + 14..l4 + 16]
            // Options, timestamps included (one TSO burst shares them).
            && head[l4 + 20..f.lay.l4_end] == pkt[l4 + 20..p.lay.l4_end]
    }

    /// Patches each frame's head for what it now holds (lengths, IPv4
    /// header checksum, PSH, the checksum seed) and fills in its
    /// [`FrameMeta`]. Call once, after the last push, before [`Self::frames`].
    pub fn finish(&mut self, buf: &mut [u8]) {
        for f in &mut self.frames[..self.used] {
            f.meta = FrameMeta::default();
            if matches!(f.kind, Kind::AsIs) {
                continue;
            }
            let Some(pkt) = buf.get_mut(f.head.0..f.head.0 + f.head.1) else {
                continue;
            };
            let lay = f.lay;
            let l4 = lay.l4_start;
            let tcp = lay.proto == IPPROTO_TCP;
            // A seeded packet keeps its own (IP-stated) length.
            let total = if f.tails.is_empty() { lay.len } else { f.total };
            if !f.tails.is_empty() {
                if lay.v6 {
                    put16(pkt, 4, (total - IPV6_HEADER_LEN) as u16);
                } else {
                    put16(pkt, 2, total as u16);
                    put16(pkt, 10, 0);
                    let c = checksum(&pkt[..l4]);
                    put16(pkt, 10, c);
                }
                if tcp && f.psh {
                    pkt[l4 + 13] |= TCP_PSH;
                }
                if !tcp {
                    put16(pkt, l4 + 4, (total - l4) as u16);
                }
            }
            let (src, dst) = if lay.v6 {
                (&pkt[8..24], &pkt[24..40])
            } else {
                (&pkt[12..16], &pkt[16..20])
            };
            let seed = ones_sum(
                pseudo_header_sum(src, dst, lay.proto, (total - l4) as u32),
                &[],
            );
            let offset: u16 = if tcp { 16 } else { 6 };
            put16(pkt, l4 + usize::from(offset), seed);
            let gso = match (f.tails.is_empty(), tcp) {
                (true, _) => Gso::None,
                (false, true) => Gso::Tcp { mss: f.size as u16 },
                (false, false) => Gso::Udp {
                    size: f.size as u16,
                },
            };
            f.meta = FrameMeta {
                v6: lay.v6,
                gso,
                csum: Some(CsumAt {
                    start: l4 as u16,
                    offset,
                }),
                hdr_len: lay.l4_end as u16,
            };
        }
    }

    /// The frames of this batch in the order they were opened.
    pub fn frames(&self) -> impl Iterator<Item = FrameView<'_>> + '_ {
        self.frames[..self.used].iter().map(|f| FrameView {
            meta: f.meta,
            head: f.head.0..f.head.0 + f.head.1,
            tails: &f.tails,
        })
    }
}

/// Addresses and ports equal (the protocol is the caller's `kind`).
fn same_flow(head: &[u8], pkt: &[u8], lay: &Layout) -> bool {
    let addrs = if lay.v6 { 8..40 } else { 12..20 };
    let l4 = lay.l4_start;
    head.len() >= l4 + 4
        && pkt.len() >= l4 + 4
        && head[addrs.clone()] == pkt[addrs]
        && head[l4..l4 + 4] == pkt[l4..l4 + 4]
}

/// A fingerprint of addresses and ports (collisions are resolved by
/// [`same_flow`]).
fn flow_hash(pkt: &[u8], lay: &Layout) -> u64 {
    let addrs = if lay.v6 { &pkt[8..40] } else { &pkt[12..20] };
    let l4 = lay.l4_start;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for c in addrs.chunks(8).chain(std::iter::once(&pkt[l4..l4 + 4])) {
        let mut a = [0u8; 8];
        a[..c.len()].copy_from_slice(c);
        h = (h ^ u64::from_ne_bytes(a)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ u64::from(lay.proto)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests;
