//! Super-packets for the offload tests: TCP or UDP of any size, with
//! options, flags and sequence numbers close to wrapping, and where their
//! checksum sits.

use std::net::IpAddr;

use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, TcpHeader};

use super::{Fam, CLI1, WEB2};
use crate::offload::{layout, CsumAt, Gso};
use crate::packet;

/// A small deterministic PRNG (xorshift64) for test shapes.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits (a plain method, not an iterator: it never ends).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `len` bytes of noise, the same for the same seed.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

/// The shape of a test super-packet.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub fam: Fam,
    pub tcp: bool,
    /// IPv4 options (8 bytes) and TCP options (12 bytes).
    pub opts: bool,
    /// TCP flags byte.
    pub flags: u8,
    /// Payload bytes.
    pub len: usize,
}

/// TCP flag bits, as in the header's flags byte.
pub const ACK: u8 = 0x10;
/// See [`ACK`].
pub const PSH: u8 = 0x08;
/// See [`ACK`].
pub const FIN: u8 = 0x01;
/// See [`ACK`].
pub const CWR: u8 = 0x80;
/// See [`ACK`].
pub const ECE: u8 = 0x40;

/// Builds a packet with valid full checksums (etherparse), sequence number
/// and IPv4 id close to wrapping so the per-segment increments wrap too.
pub fn build_super(s: Shape) -> Vec<u8> {
    let (src, dst) = (CLI1.iip(s.fam), WEB2.ns(s.fam));
    let b = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, a.octets(), d.octets()).unwrap();
            if s.opts {
                h.options = [1u8; 8].into();
            }
            h.identification = 0xfffe;
            h.dont_fragment = true;
            PacketBuilder::ip(IpHeaders::Ipv4(h, Default::default()))
        }
        (IpAddr::V6(a), IpAddr::V6(d)) => PacketBuilder::ipv6(a.octets(), d.octets(), 64),
        _ => unreachable!(),
    };
    let data = payload(s.len, s.len as u64 * 31 + u64::from(s.flags));
    let mut out = Vec::new();
    if s.tcp {
        let mut t = TcpHeader::new(40000, 80, u32::MAX - 3000, 64000);
        t.acknowledgment_number = 77;
        t.fin = s.flags & FIN != 0;
        t.psh = s.flags & PSH != 0;
        t.ack = s.flags & ACK != 0;
        t.cwr = s.flags & CWR != 0;
        t.ece = s.flags & ECE != 0;
        if s.opts {
            // NOP NOP timestamp: what Linux sends on every segment.
            t.set_options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
                .unwrap();
        }
        b.tcp_header(t).write(&mut out, &data).unwrap();
    } else {
        b.udp(40000, 53).write(&mut out, &data).unwrap();
    }
    out
}

/// TSO with segment size `size` for TCP shapes, USO for UDP ones.
pub fn gso_of(s: Shape, size: u16) -> Gso {
    if s.tcp {
        Gso::Tcp { mss: size }
    } else {
        Gso::Udp { size }
    }
}

/// Where the transport checksum of `pkt` sits, as a `NEEDS_CSUM` header
/// gives it.
pub fn csum_at(pkt: &[u8]) -> CsumAt {
    let lay = layout(pkt).unwrap();
    let offset = match lay.proto {
        packet::IPPROTO_TCP => 16,
        packet::IPPROTO_UDP => 6,
        _ => 2,
    };
    CsumAt {
        start: lay.l4_start as u16,
        offset,
    }
}
