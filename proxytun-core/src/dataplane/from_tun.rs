//! A packet from the TUN: the hit path (a flow or a reply entry, then the
//! rewrite) and the slow path that chooses an instance and installs a flow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{opens, parse_supported, Dataplane, TunVerdict};
use crate::access::{policy_port, Side};
use crate::counters::{inc, DropReason};
use crate::flow::{Activity, Dir, Flow, FlowKey};
use crate::frag;
use crate::icmp_error;
use crate::packet::{self, PacketInfo};
use crate::reject::{self, Answer};
use crate::table::{Location, Table, Vip};

impl Dataplane {
    /// `Ok(None)`: to the TUN; `Ok(Some(peer))`: to that peer.
    pub(super) fn tun_input(
        &mut self,
        pkt: &mut [u8],
        now: Instant,
    ) -> Result<Option<SocketAddr>, DropReason> {
        // Fragments first: a later one's data may look like anything.
        if frag::is_v4_fragment(pkt) {
            return self.tun_fragment(pkt, now);
        }
        // ICMP errors (helper B): translated by `icmp_error`, never create state.
        if packet::looks_like_icmp_error(pkt) {
            return icmp_error::from_tun(&self.flows, &mut self.replies, pkt);
        }
        let (info, key) = match parse_supported(pkt) {
            Err(DropReason::Fragment) => return self.tun_fragment(pkt, now),
            r => r?,
        };
        self.tun_route(pkt, &info, key, now)
    }

    /// A parsed packet (or first fragment) from the TUN: its flow or reply
    /// entry, or a new flow; rewritten in place. Returns like `tun_input`.
    pub(super) fn tun_route(
        &mut self,
        pkt: &mut [u8],
        info: &PacketInfo,
        key: FlowKey,
        now: Instant,
    ) -> Result<Option<SocketAddr>, DropReason> {
        if let Some((idx, dir)) = self.flows.lookup(&key) {
            if let Some(flow) = self.flows.get_mut(idx) {
                let routed = match dir {
                    Dir::Forward => Some((flow.client_iip, flow.instance_ns, flow.location.peer())),
                    // Replies of a local instance come back through the TUN;
                    // a remote instance's replies must come through the tunnel.
                    // (To an external client's endpoint when it opened the flow.)
                    Dir::Reverse if flow.location == Location::Local => Some((
                        flow.key.dst,
                        flow.key.src,
                        self.table.clients().endpoint(flow.key.src),
                    )),
                    Dir::Reverse => None,
                };
                if let Some((src, dst, peer)) = routed {
                    let closing = flow.activity.touch(dir, info, now, &self.config);
                    if !packet::rewrite(pkt, info, src, dst) {
                        return Err(DropReason::Malformed);
                    }
                    self.arm(closing);
                    return Ok(peer);
                }
            }
        }
        if let Some(entry) = self.replies.get_mut(&key) {
            let closing = entry.activity.touch(Dir::Reverse, info, now, &self.config);
            let peer = entry.peer;
            self.arm(closing);
            return Ok(Some(peer));
        }
        if self.table.clients().has(info.dst) {
            return self.to_client(info, &key);
        }
        self.new_flow(pkt, info, key, now)
    }

    /// A packet from the TUN that the policy refused (counted already),
    /// `buf[..len]` as its sender sent it: answered in place with a TCP RST
    /// or an ICMP error ([`reject::answer`]), or dropped when it gets none.
    pub(super) fn reject(&mut self, buf: &mut [u8], len: usize) -> TunVerdict {
        let (counter, n) = match reject::answer(buf, len) {
            Some((Answer::TcpRst, n)) => (&self.counters.policy_rejects_tcp_rst, n),
            Some((Answer::Icmp, n)) => (&self.counters.policy_rejects_icmp, n),
            None => return TunVerdict::Drop(DropReason::PolicyDenied),
        };
        inc(counter);
        TunVerdict::Reject(n)
    }

    /// The slow path: choose an instance, install the flow, rewrite.
    fn new_flow(
        &mut self,
        pkt: &mut [u8],
        info: &PacketInfo,
        key: FlowKey,
        now: Instant,
    ) -> Result<Option<SocketAddr>, DropReason> {
        let Dataplane {
            table,
            balancer,
            affinity,
            peers,
            config,
            ..
        } = self;
        let table: &Table = table;
        let Some(vip) = table.vip(info.dst) else {
            if table.in_service_range(info.dst) {
                self.misses.record(info.dst);
            }
            return Err(DropReason::NoService);
        };
        // `None`: an external client's packet, handed back by the kernel
        // (docs/join.md); it has no service, so isolation refuses it.
        let client = match table.local_by_ns(info.src) {
            Some((_, c)) => Some(c),
            None if table.clients().has(info.src) && !table.access().isolate() => None,
            None if table.clients().has(info.src) => return Err(DropReason::PolicyDenied),
            None => return Err(DropReason::SourceNotInstance),
        };
        // Before `opens`: the next packets of a flow a policy change cut
        // are counted as policy denials, not as flowless.
        if let Some(client) = client.filter(|_| table.access().isolate()) {
            let dst = table.service_of_vip(vip);
            let allowed = dst.is_some_and(|d| table.allows(client.service, d, policy_port(info)));
            if !allowed {
                let svc = dst
                    .and_then(|d| table.service(d))
                    .map(|s| Arc::clone(&s.name))
                    .unwrap_or_else(|| Arc::from("?"));
                self.denials.record(
                    Side::Client,
                    info.src,
                    Some(&client.name),
                    &svc,
                    info.proto(),
                    policy_port(info),
                    now,
                );
                return Err(DropReason::PolicyDenied);
            }
        }
        if !opens(info) {
            // A mid-flow packet of a local instance to a client's instance
            // IP whose reply entry (or flow) the policy forbids: a cut
            // connection's server side, refused like its client side.
            if let (Vip::Instance(peer), Some(client)) = (vip, client) {
                let reply_port = policy_port(info).map(|_| info.sport);
                let forbidden = table
                    .instance(peer)
                    .is_some_and(|p| !table.allows(p.service, client.service, reply_port));
                if forbidden {
                    return Err(DropReason::PolicyDenied);
                }
            }
            return Err(DropReason::NoFlow);
        }
        let service = match vip {
            Vip::RoundRobin(s) | Vip::Closest(s) => {
                let svc = table.service(s).ok_or(DropReason::NoService)?;
                if table.members(svc).is_empty() {
                    return Err(DropReason::NoInstance);
                }
                Some(svc)
            }
            Vip::Instance(_) => None,
        };
        if self.flows.len() >= config.max_flows {
            return Err(DropReason::FlowTableFull);
        }
        let timeout = config.peer_timeout;
        let cost = |loc: Location| peers.cost(loc, now, timeout);
        let mut pick = |svc| match vip {
            Vip::RoundRobin(_) => balancer.round_robin(svc, table, cost),
            Vip::Closest(_) => balancer.closest(svc, table, cost),
            Vip::Instance(i) => Some(i),
        };
        let chosen = match (vip, service) {
            (Vip::Instance(i), _) => i,
            (_, Some(svc)) => match svc.affinity {
                None => pick(svc),
                Some(ttl) => affinity
                    .choose(info.dst, info.src, ttl, now, table, svc, cost, || pick(svc))
                    .map(|c| c.instance()),
            }
            .ok_or(DropReason::NoInstance)?,
            (_, None) => return Err(DropReason::NoInstance),
        };
        let instance = table.instance(chosen).ok_or(DropReason::NoInstance)?;
        let mut flow = Flow {
            key,
            client_iip: client.map_or(info.src, |c| c.iip_for(info.src)),
            instance: Arc::clone(&instance.name),
            instance_ns: instance.ns_for(info.dst),
            location: instance.location,
            activity: Activity::new(key.proto, now),
        };
        flow.activity.touch(Dir::Forward, info, now, &self.config);
        let (src, dst, peer) = (flow.client_iip, flow.instance_ns, flow.location.peer());
        let deadline = flow.activity.deadline(&self.config);
        if !packet::rewrite(pkt, info, src, dst) {
            return Err(DropReason::Malformed);
        }
        self.flows.insert(flow);
        inc(&self.counters.flows_created);
        self.arm(deadline);
        Ok(peer)
    }
}
