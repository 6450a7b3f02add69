//! The 5-tuple a flow is found by, hashed by hand, and the direction a
//! packet travels in.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use crate::packet::{PacketInfo, Proto};

/// An exact 5-tuple as seen on the wire (ICMP: identifier in both ports).
///
/// `Hash` is written by hand (see the impl) so a key costs one or three
/// hasher rounds instead of a dozen small writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    /// Transport protocol.
    pub proto: Proto,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl FlowKey {
    /// The key of a parsed packet.
    pub fn of(info: &PacketInfo) -> FlowKey {
        FlowKey {
            proto: info.proto(),
            src: info.src,
            dst: info.dst,
            sport: info.sport,
            dport: info.dport,
        }
    }

    /// The key of the packets going the other way.
    pub fn reversed(self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// Hashes exactly the fields `Eq` compares, packed into as few words as
/// possible: an IPv4 key is one 128-bit word (addresses, ports, protocol),
/// anything else three. Keys that are equal always pack equally; unequal
/// keys of different families may share a word but still compare unequal.
impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let proto: u8 = match self.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
        };
        // sport | dport | family | protocol.
        let tail = |family: u8| {
            (u64::from(self.sport) << 32)
                | (u64::from(self.dport) << 16)
                | (u64::from(family) << 8)
                | u64::from(proto)
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => h.write_u128(
                (u128::from(s.to_bits()) << 96)
                    | (u128::from(d.to_bits()) << 64)
                    | u128::from(tail(4)),
            ),
            (s, d) => {
                h.write_u128(bits(s));
                h.write_u128(bits(d));
                h.write_u64(tail(6));
            }
        }
    }
}

/// An address as 128 bits (IPv4 in the low 32).
fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

/// Which way a packet travels relative to the flow's opener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to instance.
    Forward,
    /// Instance to client.
    Reverse,
}
