//! Path MTU: what fits the tunnel to each peer, and the ICMP error for a
//! packet that does not; and the packets the kernel sends on every
//! interface, which are not for us.

use std::net::{IpAddr, SocketAddr};

use super::{Dataplane, TunVerdict};
use crate::counters::{inc, DropReason};
use crate::frag;
use crate::icmp_error;
use crate::packet;
use crate::tunnel::HEADER_LEN;

/// The UDP header of a tunnel datagram.
const UDP_LEN: usize = 8;

impl Dataplane {
    /// Sets the underlay path MTU to each peer address (the largest IP
    /// packet the underlay carries to it), replacing what was set before;
    /// peers left out are not checked. The shell learns them from the
    /// kernel or `tunnel.mtu` (see `docs/fragments.md`), on the control
    /// path.
    pub fn set_path_mtus(&mut self, mtus: impl IntoIterator<Item = (IpAddr, u16)>) {
        self.path_mtu.clear();
        self.path_mtu.extend(mtus);
        let floor = self
            .path_mtu
            .iter()
            .map(|(&ip, &m)| self.inner_of(ip, m))
            .min();
        self.mtu_floor = floor.unwrap_or(usize::MAX);
    }

    /// The largest inner packet the tunnel carries to `peer`, if its path
    /// MTU is known.
    pub fn inner_mtu(&self, peer: SocketAddr) -> Option<usize> {
        let mtu = *self.path_mtu.get(&peer.ip())?;
        Some(self.inner_of(peer.ip(), mtu))
    }

    fn inner_of(&self, ip: IpAddr, mtu: u16) -> usize {
        let ip_len = if ip.is_ipv4() {
            packet::IPV4_HEADER_MIN
        } else {
            packet::IPV6_HEADER_LEN
        };
        let overhead = ip_len + UDP_LEN + HEADER_LEN + self.sealer.trailer_len();
        usize::from(mtu).saturating_sub(overhead)
    }

    /// Turns a packet too big for the tunnel (already rewritten by its
    /// flow) back into what its sender sent, `orig` (source, destination),
    /// and then into the ICMP error announcing `mtu`.
    pub(super) fn too_big(
        &mut self,
        pkt: &mut [u8],
        orig: (IpAddr, IpAddr),
        mtu: usize,
    ) -> TunVerdict {
        let restored = match packet::parse(pkt) {
            Ok(info) => packet::rewrite(pkt, &info, orig.0, orig.1),
            Err(_) => match frag::parse(pkt) {
                Ok(f) => match f.first {
                    Some(info) => packet::rewrite(pkt, &info, orig.0, orig.1),
                    None => frag::rewrite_ip(pkt, orig.0.is_ipv4(), orig.0, orig.1),
                },
                Err(_) => false,
            },
        };
        self.counters.count_drop(DropReason::TooBig);
        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
        let len = pkt.len();
        match restored
            .then(|| icmp_error::too_big(pkt, len, mtu))
            .flatten()
        {
            Some(n) => {
                inc(&self.counters.icmp_too_big_tx);
                TunVerdict::Icmp(n)
            }
            None => TunVerdict::Drop(DropReason::TooBig),
        }
    }
}

/// True for a packet to a multicast or link-local address: MLD reports,
/// router and neighbour solicitations and the like, which the kernel
/// sends on the TUN as on any interface. Nothing we could forward, and no
/// sign of trouble, so they are counted apart from the drops.
pub(super) fn not_for_us(pkt: &[u8]) -> bool {
    match frag::addresses(pkt) {
        Some((_, IpAddr::V4(d))) => d.is_multicast() || d.is_broadcast() || d.is_link_local(),
        Some((_, IpAddr::V6(d))) => {
            let o = d.octets();
            o[0] == 0xff || (o[0] == 0xfe && o[1] & 0xc0 == 0x80)
        }
        None => false,
    }
}
