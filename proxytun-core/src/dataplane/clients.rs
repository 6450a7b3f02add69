//! The gateway's side of external clients (docs/join.md): what a client
//! may send, and what may be sent to it.
//!
//! A client's packet, once its source is checked, goes to the TUN
//! unchanged; the kernel hands a ServiceIP packet straight back to the TUN
//! (the ServiceIP range is routed into it), where it takes the path of a
//! local container's packet ([`Dataplane::tun_route`]), and delivers a DNS
//! query to the node's resolver. Packets towards a client leave through the
//! TUN too and are sent to the client only when they answer one of its
//! flows (or are the resolver's answer).

use std::net::{IpAddr, SocketAddr};

use super::Dataplane;
use crate::clients::DNS_PORT;
use crate::counters::DropReason;
use crate::flow::{Dir, FlowKey};
use crate::packet::{self, PacketInfo, L4};

/// Destination port and whether the transport is TCP or UDP.
fn dns_port(info: &PacketInfo, port_of: impl Fn(&PacketInfo) -> u16) -> bool {
    matches!(info.l4, L4::Tcp { .. } | L4::Udp { .. }) && port_of(info) == DNS_PORT
}

impl Dataplane {
    /// The inner packet `pkt` of client `client`'s data datagram: `Ok`
    /// when it may go to the TUN as it came (its source is the client's
    /// address, its destination a ServiceIP or the resolver's port 53).
    pub(super) fn client_input(&mut self, client: IpAddr, pkt: &[u8]) -> Result<(), DropReason> {
        let (src, dst) = crate::frag::addresses(pkt).ok_or(DropReason::Malformed)?;
        if src != client {
            return Err(DropReason::ClientSpoofed);
        }
        if self.table.in_service_range(dst) && !self.table.clients().has(dst) {
            return Ok(());
        }
        if Some(dst) == self.table.clients().resolver() {
            let info = packet::parse(pkt).map_err(|_| DropReason::ClientNotAllowed)?;
            if dns_port(&info, |i| i.dport) {
                return Ok(());
            }
        }
        Err(DropReason::ClientNotAllowed)
    }

    /// A packet from the TUN towards client address `info.dst` that no
    /// flow or reply entry took: the client's endpoint when it answers a
    /// flow the client opened (after that flow's own rewrite) or is the
    /// resolver's answer, else refused.
    pub(super) fn to_client(
        &self,
        info: &PacketInfo,
        key: &FlowKey,
    ) -> Result<Option<SocketAddr>, DropReason> {
        let clients = self.table.clients();
        let endpoint = clients
            .endpoint(info.dst)
            .ok_or(DropReason::ClientUnsolicited)?;
        if Some(info.src) == clients.resolver() && dns_port(info, |i| i.sport) {
            return Ok(Some(endpoint));
        }
        match self.flows.lookup(&key.reversed()) {
            Some((_, Dir::Forward)) => Ok(Some(endpoint)),
            _ => Err(DropReason::ClientUnsolicited),
        }
    }
}
