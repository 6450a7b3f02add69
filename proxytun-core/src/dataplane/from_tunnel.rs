//! A datagram from a peer, once opened: a keepalive (ping answered in place,
//! pong fed to the peer's health) or a data packet for a flow or a new
//! reply entry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{opens, parse_supported, Dataplane, NetVerdict};
use crate::access::{policy_port, Side};
use crate::counters::DropReason;
use crate::flow::{Activity, Dir, FlowKey};
use crate::frag;
use crate::icmp_error;
use crate::keepalive::{self, Kind};
use crate::packet::{self, PacketInfo};
use crate::reply::ReplyEntry;
use crate::table::{Location, Vip};
use crate::tunnel::{MsgType, HEADER_LEN};

impl Dataplane {
    /// An opened keepalive from member `from` (`n` payload bytes after the
    /// header): a ping is answered in place with a sealed pong, a pong
    /// feeds that peer's health.
    pub(super) fn keepalive_input(
        &mut self,
        from: SocketAddr,
        dgram: &mut [u8],
        n: usize,
        now: Instant,
    ) -> Result<NetVerdict, DropReason> {
        let msg = dgram
            .get_mut(..HEADER_LEN + n)
            .ok_or(DropReason::KeepaliveMalformed)?;
        let ka = keepalive::parse(msg)?;
        match ka.kind {
            Kind::Ping => {
                let len = keepalive::ping_to_pong(msg).ok_or(DropReason::KeepaliveMalformed)?;
                // The received datagram had room for our tag: same mode.
                let len = self
                    .sealer
                    .seal_for(
                        from.ip(),
                        dgram,
                        MsgType::Keepalive,
                        len - HEADER_LEN,
                        false,
                    )
                    .map_err(|e| match e {
                        crate::seal::SealError::NoSession => DropReason::NoSession,
                        _ => DropReason::KeepaliveMalformed,
                    })?;
                self.peers.on_ping(from, now);
                crate::counters::inc(&self.counters.keepalive_pings_rx);
                Ok(NetVerdict::Reply(len))
            }
            Kind::Pong => {
                self.peers.on_pong(from, &ka, now)?;
                crate::counters::inc(&self.counters.keepalive_pongs_rx);
                Ok(NetVerdict::Done)
            }
        }
    }

    /// The inner packet `pkt` of a data datagram from member `from`, already
    /// opened (tag and replay checked) by [`Dataplane::handle_tunnel`].
    pub(super) fn tunnel_input(
        &mut self,
        from: SocketAddr,
        pkt: &mut [u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        // An external client's packet goes to the TUN as it came (docs/join.md).
        if let Some(client) = self.table.clients().by_endpoint(from.ip()) {
            return self.client_input(client, pkt);
        }
        // Fragments first: a later one's data may look like anything.
        if frag::is_v4_fragment(pkt) {
            return self.tunnel_fragment(from, pkt, now);
        }
        // ICMP errors (helper B): translated by `icmp_error`, never create state.
        if packet::looks_like_icmp_error(pkt) {
            return icmp_error::from_tunnel(&self.table, &self.flows, &mut self.replies, from, pkt);
        }
        let (info, key) = match parse_supported(pkt) {
            Err(DropReason::Fragment) => return self.tunnel_fragment(from, pkt, now),
            r => r?,
        };
        self.tunnel_route(from, pkt, &info, key, now)
    }

    /// A parsed inner packet (or first fragment) from member `from`: a
    /// reply entry (new or known) for a local instance, or a reply on a
    /// local client's flow, rewritten in place.
    pub(super) fn tunnel_route(
        &mut self,
        from: SocketAddr,
        pkt: &mut [u8],
        info: &PacketInfo,
        key: FlowKey,
        now: Instant,
    ) -> Result<(), DropReason> {
        let info = *info;
        if let Some((_, instance)) = self.table.local_by_ns(info.dst) {
            // A remote client's packet for a local instance.
            if !self.table.in_service_range(info.src) {
                return Err(DropReason::InnerSrcNotService);
            }
            let reply_key = key.reversed();
            if let Some(entry) = self.replies.get_mut(&reply_key) {
                entry.peer = from;
                let closing = entry.activity.touch(Dir::Forward, &info, now, &self.config);
                self.arm(closing);
                return Ok(());
            }
            // The receiving node's own policy check, before any entry is
            // (re-)created: the inner source must be a known instance IP
            // whose app may reach this instance's service. An unknown one
            // is reported as a miss, so a cluster store can fill it in.
            if self.table.access().isolate() {
                let table = &self.table;
                let client = match table.vip(info.src) {
                    Some(Vip::Instance(i)) => table.instance(i),
                    _ => None,
                };
                let port = policy_port(&info);
                if !client.is_some_and(|c| table.allows(c.service, instance.service, port)) {
                    if client.is_none() {
                        self.misses.record(info.src);
                    }
                    let svc = table.service(instance.service).map(|s| Arc::clone(&s.name));
                    let svc = svc.unwrap_or_else(|| Arc::clone(&instance.name));
                    let name = client.map(|c| &c.name);
                    self.denials.record(
                        Side::Server,
                        info.src,
                        name,
                        &svc,
                        info.proto(),
                        port,
                        now,
                    );
                    return Err(DropReason::PolicyDenied);
                }
            }
            if !opens(&info) {
                return Err(DropReason::NoFlow);
            }
            if self.replies.len() >= self.config.max_flows {
                return Err(DropReason::ReplyTableFull);
            }
            let mut activity = Activity::new(key.proto, now);
            activity.touch(Dir::Forward, &info, now, &self.config);
            let deadline = activity.deadline(&self.config);
            let instance = Arc::clone(&instance.name);
            self.replies.insert(
                reply_key,
                ReplyEntry {
                    peer: from,
                    instance,
                    activity,
                },
            );
            self.arm(deadline);
            return Ok(());
        }
        if self.table.local_by_iip(info.dst).is_none() && !self.table.clients().has(info.dst) {
            return Err(DropReason::InnerDstNotLocal);
        }
        // A reply to a local client from a remote instance.
        let Some((idx, Dir::Reverse)) = self.flows.lookup(&key) else {
            return Err(DropReason::ReplyNoFlow);
        };
        let flow = self.flows.get_mut(idx).ok_or(DropReason::ReplyNoFlow)?;
        match flow.location {
            Location::Remote(p) if p.ip() == from.ip() => {}
            _ => return Err(DropReason::ReplyWrongPeer),
        }
        let closing = flow.activity.touch(Dir::Reverse, &info, now, &self.config);
        let (src, dst) = (flow.key.dst, flow.key.src);
        if !packet::rewrite(pkt, &info, src, dst) {
            return Err(DropReason::Malformed);
        }
        self.arm(closing);
        Ok(())
    }
}
