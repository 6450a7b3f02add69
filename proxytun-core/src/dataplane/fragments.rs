//! Fragments on both inputs, forwarded by flow (see [`crate::frag`]): the
//! first fragment takes the ordinary path and its outcome is remembered;
//! a later one gets the same addresses and route from the table.

use std::net::SocketAddr;
use std::time::Instant;

use super::Dataplane;
use crate::counters::{inc, DropReason};
use crate::flow::FlowKey;
use crate::frag::{self, FragKey, Input, Route, Translation};
use crate::packet::{IcmpKind, PacketInfo, L4};

/// The first fragment's flow key, refusing what no flow carries (as
/// `parse_supported` does for whole packets).
fn first_key(info: &PacketInfo) -> Result<FlowKey, DropReason> {
    if matches!(
        info.l4,
        L4::Icmp {
            kind: IcmpKind::Other
        }
    ) {
        return Err(DropReason::IcmpUnsupported);
    }
    Ok(FlowKey::of(info))
}

impl Dataplane {
    /// A fragment read from the TUN. Returns like `tun_input`.
    pub(super) fn tun_fragment(
        &mut self,
        pkt: &mut [u8],
        now: Instant,
    ) -> Result<Option<SocketAddr>, DropReason> {
        let f = frag::parse(pkt)?;
        let key = FragKey {
            input: Input::Tun,
            src: f.src,
            dst: f.dst,
            proto: f.proto,
            id: f.id,
        };
        let peer = match f.first {
            Some(info) => {
                let flow_key = first_key(&info)?;
                let peer = self.tun_route(pkt, &info, flow_key, now)?;
                let (src, dst) = frag::addresses(pkt).ok_or(DropReason::Malformed)?;
                let to = peer.map_or(Route::Tun, Route::Peer);
                let tr = Translation { src, dst, to };
                self.frags.insert(key, tr, f.end(), !f.more, now)?;
                peer
            }
            None => {
                let tr = self.frags.follow(&key, f.offset, f.end(), !f.more, now)?;
                if !frag::rewrite_ip(pkt, f.src.is_ipv4(), tr.src, tr.dst) {
                    return Err(DropReason::Malformed);
                }
                match tr.to {
                    Route::Tun => None,
                    Route::Peer(p) => Some(p),
                }
            }
        };
        inc(&self.counters.fragments_forwarded);
        Ok(peer)
    }

    /// A fragment inside a data datagram from member `from`. `Ok(())`: to
    /// the TUN, like `tunnel_input`.
    pub(super) fn tunnel_fragment(
        &mut self,
        from: SocketAddr,
        pkt: &mut [u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let f = frag::parse(pkt)?;
        let key = FragKey {
            input: Input::Tunnel(from.ip()),
            src: f.src,
            dst: f.dst,
            proto: f.proto,
            id: f.id,
        };
        match f.first {
            Some(info) => {
                let flow_key = first_key(&info)?;
                self.tunnel_route(from, pkt, &info, flow_key, now)?;
                let (src, dst) = frag::addresses(pkt).ok_or(DropReason::Malformed)?;
                let tr = Translation {
                    src,
                    dst,
                    to: Route::Tun,
                };
                self.frags.insert(key, tr, f.end(), !f.more, now)?;
            }
            None => {
                let tr = self.frags.follow(&key, f.offset, f.end(), !f.more, now)?;
                if !frag::rewrite_ip(pkt, f.src.is_ipv4(), tr.src, tr.dst) {
                    return Err(DropReason::Malformed);
                }
            }
        }
        inc(&self.counters.fragments_forwarded);
        Ok(())
    }
}
