//! The dataplane state machine: TUN input, tunnel input, timers.
//!
//! Sans-IO: the shell hands in packets and `now`, and gets back what to do
//! with the (rewritten in place) packet. Nothing here blocks, sleeps, reads
//! a clock or does I/O.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::counters::{add_len, inc, Counters, DropReason};
use super::flow::{min_opt, Activity, CoreConfig, Dir, Flow, FlowKey, FlowTable, FlowView};
use super::health::{PeerHealthView, Peers};
use super::keepalive::{self, Kind};
use super::miss::Misses;
use super::packet::{self, IcmpKind, PacketInfo, L4};
use super::policy::Balancer;
use super::reply::{ReplyCache, ReplyEntry, ReplyView};
use super::table::{Location, Table, Vip};
use super::tunnel::{self, MsgType, HEADER_LEN};

/// Timer expiry is batched: a sweep runs at most this often, so expiry may
/// be up to this late, and thousands of flows with scattered deadlines cost
/// one pass per interval instead of one pass each.
pub const SWEEP_GRANULARITY: Duration = Duration::from_secs(1);

/// What to do with a packet read from the TUN (rewritten in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunVerdict {
    /// Write it back to the TUN (the destination is on this node).
    Tun,
    /// Wrap it in the tunnel header and send it to this peer endpoint.
    Peer(SocketAddr),
    /// Drop it; the reason was counted.
    Drop(DropReason),
}

/// What to do with a datagram received from the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetVerdict {
    /// Write `dgram[HEADER_LEN..]` (rewritten in place) to the TUN.
    Tun,
    /// Send `dgram[..len]` (rewritten in place: a keepalive pong) back to
    /// the sender, `from`.
    Reply(usize),
    /// Consumed by the core (a keepalive pong); nothing to send.
    Done,
    /// Drop it; the reason was counted.
    Drop(DropReason),
}

/// The node's packet core; see the module docs.
#[derive(Debug)]
pub struct Dataplane {
    config: CoreConfig,
    table: Arc<Table>,
    flows: FlowTable,
    replies: ReplyCache,
    balancer: Balancer,
    peers: Peers,
    misses: Misses,
    counters: Arc<Counters>,
    next_sweep: Option<Instant>,
}

/// True when a packet may open a flow or a reply entry.
fn opens(info: &PacketInfo) -> bool {
    match info.l4 {
        L4::Tcp { .. } => info.is_tcp_syn(),
        L4::Udp { .. } => true,
        L4::Icmp { kind } => kind == IcmpKind::EchoRequest,
    }
}

impl Dataplane {
    /// A dataplane with no flows, forwarding according to `table`.
    pub fn new(config: CoreConfig, table: Arc<Table>) -> Self {
        let mut peers = Peers::default();
        peers.set_endpoints(table.peer_endpoints());
        Dataplane {
            config,
            table,
            flows: FlowTable::default(),
            replies: ReplyCache::default(),
            balancer: Balancer::default(),
            peers,
            misses: Misses::default(),
            counters: Arc::new(Counters::default()),
            next_sweep: None,
        }
    }

    /// The counters, to be read from another thread.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The current table.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The configuration in force.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Number of live flows.
    pub fn flows_active(&self) -> usize {
        self.flows.len()
    }

    /// Number of live reply-cache entries.
    pub fn replies_active(&self) -> usize {
        self.replies.len()
    }

    /// All flows, for the API.
    pub fn flows(&self, now: Instant) -> impl Iterator<Item = FlowView> + '_ {
        self.flows.iter().map(move |f| f.view(now))
    }

    /// All reply-cache entries, for the API.
    pub fn replies(&self, now: Instant) -> impl Iterator<Item = ReplyView> + '_ {
        self.replies
            .iter()
            .map(move |(k, e)| ReplyView::new(k, e, now))
    }

    /// Swaps in a new table. Flows whose instance is gone (by name, or it
    /// moved: other namespace address or location) or whose client is no
    /// longer attached here are removed, as are reply entries whose local
    /// instance is gone. Round-robin positions survive, and so does the
    /// health of every peer endpoint the new table still lists.
    pub fn set_table(&mut self, table: Arc<Table>) {
        self.flows.retain(|f| {
            let instance_ok = table.instance_by_name(&f.instance).is_some_and(|i| {
                i.ns_for(f.instance_ns) == f.instance_ns && i.location == f.location
            });
            let client_ok = table
                .local_by_ns(f.key.src)
                .is_some_and(|(_, c)| c.iip_for(f.client_iip) == f.client_iip);
            instance_ok && client_ok
        });
        self.replies.retain(|k, e| {
            table
                .local_by_ns(k.src)
                .is_some_and(|(_, i)| i.name == e.instance)
        });
        self.balancer.follow(&table);
        self.peers.set_endpoints(table.peer_endpoints());
        self.table = table;
    }

    /// When [`Dataplane::poll_keepalive`] should next be called. `None`:
    /// no peer to ping (or keepalives are off), or the schedule is not
    /// known yet because the core has not been polled since a peer
    /// appeared; a shell polls at its next wake-up then, which costs
    /// nothing when there is no peer.
    pub fn next_keepalive(&self) -> Option<Instant> {
        self.peers.next_due(self.config.keepalive_interval)
    }

    /// Writes the next due keepalive ping into `buf` and says where to send
    /// it: `(peer endpoint, length)`. Call repeatedly until `None`; each
    /// due peer gets one ping. Also `None` when `buf` cannot hold a
    /// keepalive ([`keepalive::KEEPALIVE_LEN`] bytes).
    pub fn poll_keepalive(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        let out = self.peers.poll(now, self.config.keepalive_interval, buf)?;
        inc(&self.counters.keepalive_pings_tx);
        Some(out)
    }

    /// Each peer endpoint's liveness and smoothed RTT as of `now`, for the API.
    pub fn peer_health(&self, now: Instant) -> impl Iterator<Item = PeerHealthView> + '_ {
        self.peers.views(now, self.config.peer_timeout)
    }

    /// True when misses wait to be drained (a cheap check for every batch).
    pub fn has_misses(&self) -> bool {
        !self.misses.is_empty()
    }

    /// Hands each recorded miss (a ServiceIP-range destination without a
    /// table entry, deduplicated, at most [`super::miss::MISS_RING`]) to
    /// `f` and forgets them.
    pub fn drain_misses(&mut self, f: impl FnMut(IpAddr)) {
        self.misses.drain(f);
    }

    /// When [`Dataplane::handle_timeout`] should next be called (`None`:
    /// nothing to expire).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Expires idle and closed flows and reply entries.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| t > now) {
            return;
        }
        let cfg = &self.config;
        let mut next = None;
        self.flows.retain(|f| match f.activity.deadline(cfg) {
            Some(d) if d <= now => false,
            d => {
                next = min_opt(next, d);
                true
            }
        });
        next = min_opt(next, self.replies.expire(now, cfg));
        let earliest = now.checked_add(SWEEP_GRANULARITY).unwrap_or(now);
        self.next_sweep = next.map(|n| n.max(earliest));
    }

    fn arm(&mut self, at: Option<Instant>) {
        if at.is_some() {
            self.next_sweep = min_opt(self.next_sweep, at);
        }
    }

    /// Handles a packet read from the TUN; see [`TunVerdict`].
    pub fn handle_tun(&mut self, pkt: &mut [u8], now: Instant) -> TunVerdict {
        inc(&self.counters.tun_rx);
        // The rewrite changes no length, so the length read is the length written.
        let len = pkt.len();
        add_len(&self.counters.tun_rx_bytes, len);
        match self.tun_input(pkt, now) {
            Ok(None) => {
                inc(&self.counters.tun_tx_tun);
                add_len(&self.counters.tun_tx_tun_bytes, len);
                TunVerdict::Tun
            }
            Ok(Some(peer)) => {
                inc(&self.counters.tun_tx_peer);
                add_len(&self.counters.tun_tx_peer_bytes, len);
                TunVerdict::Peer(peer)
            }
            Err(reason) => {
                self.counters.count_drop(reason);
                TunVerdict::Drop(reason)
            }
        }
    }

    /// Handles a datagram from peer endpoint `from`; see [`NetVerdict`].
    pub fn handle_tunnel(
        &mut self,
        from: SocketAddr,
        dgram: &mut [u8],
        now: Instant,
    ) -> NetVerdict {
        inc(&self.counters.tunnel_rx);
        add_len(&self.counters.tunnel_rx_bytes, dgram.len());
        let result = match tunnel::parse_header(dgram) {
            Ok(MsgType::Data) => self
                .tunnel_input(from, dgram, now)
                .map(|()| NetVerdict::Tun),
            Ok(MsgType::Keepalive) => self.keepalive_input(from, dgram, now),
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(v) => {
                match v {
                    NetVerdict::Tun => {
                        inc(&self.counters.tun_tx_tun);
                        add_len(
                            &self.counters.tun_tx_tun_bytes,
                            dgram.len().saturating_sub(HEADER_LEN),
                        );
                    }
                    NetVerdict::Reply(_) => inc(&self.counters.keepalive_pings_rx),
                    NetVerdict::Done => inc(&self.counters.keepalive_pongs_rx),
                    NetVerdict::Drop(_) => {}
                }
                v
            }
            Err(reason) => {
                self.counters.count_drop(reason);
                NetVerdict::Drop(reason)
            }
        }
    }

    /// A keepalive from `from`: a member's ping is answered in place, a
    /// member's pong feeds that peer's health.
    fn keepalive_input(
        &mut self,
        from: SocketAddr,
        dgram: &mut [u8],
        now: Instant,
    ) -> Result<NetVerdict, DropReason> {
        if !self.table.is_peer(from.ip()) {
            return Err(DropReason::NotMember);
        }
        let ka = keepalive::parse(dgram)?;
        match ka.kind {
            Kind::Ping => {
                let len = keepalive::ping_to_pong(dgram).ok_or(DropReason::KeepaliveMalformed)?;
                self.peers.on_ping(from, now);
                Ok(NetVerdict::Reply(len))
            }
            Kind::Pong => {
                self.peers.on_pong(from, &ka, now)?;
                Ok(NetVerdict::Done)
            }
        }
    }

    /// `Ok(None)`: to the TUN; `Ok(Some(peer))`: to that peer.
    fn tun_input(
        &mut self,
        pkt: &mut [u8],
        now: Instant,
    ) -> Result<Option<SocketAddr>, DropReason> {
        let (info, key) = parse_supported(pkt)?;
        if let Some((idx, dir)) = self.flows.lookup(&key) {
            if let Some(flow) = self.flows.get_mut(idx) {
                let routed = match dir {
                    Dir::Forward => Some((flow.client_iip, flow.instance_ns, flow.location.peer())),
                    // Replies of a local instance come back through the TUN;
                    // a remote instance's replies must come through the tunnel.
                    Dir::Reverse if flow.location == Location::Local => {
                        Some((flow.key.dst, flow.key.src, None))
                    }
                    Dir::Reverse => None,
                };
                if let Some((src, dst, peer)) = routed {
                    let closing = flow.activity.touch(dir, &info, now, &self.config);
                    if !packet::rewrite(pkt, &info, src, dst) {
                        return Err(DropReason::Malformed);
                    }
                    self.arm(closing);
                    return Ok(peer);
                }
            }
        }
        if let Some(entry) = self.replies.get_mut(&key) {
            let closing = entry.activity.touch(Dir::Reverse, &info, now, &self.config);
            let peer = entry.peer;
            self.arm(closing);
            return Ok(Some(peer));
        }
        self.new_flow(pkt, &info, key, now)
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
        let (_, client) = table
            .local_by_ns(info.src)
            .ok_or(DropReason::SourceNotInstance)?;
        if !opens(info) {
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
        let chosen = match (vip, service) {
            (Vip::Instance(i), _) => i,
            (Vip::RoundRobin(_), Some(svc)) => balancer
                .round_robin(svc, table, cost)
                .ok_or(DropReason::NoInstance)?,
            (Vip::Closest(_), Some(svc)) => balancer
                .closest(svc, table, cost)
                .ok_or(DropReason::NoInstance)?,
            (_, None) => return Err(DropReason::NoInstance),
        };
        let instance = table.instance(chosen).ok_or(DropReason::NoInstance)?;
        let mut flow = Flow {
            key,
            client_iip: client.iip_for(info.src),
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

    fn tunnel_input(
        &mut self,
        from: SocketAddr,
        dgram: &mut [u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        if !self.table.is_peer(from.ip()) {
            return Err(DropReason::NotMember);
        }
        let pkt = dgram
            .get_mut(HEADER_LEN..)
            .ok_or(DropReason::TunnelTooShort)?;
        let (info, key) = parse_supported(pkt)?;
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
        if self.table.local_by_iip(info.dst).is_none() {
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

/// Parses a packet from either input and refuses what no flow can carry
/// (ICMP other than echo): the first step both inputs share.
fn parse_supported(pkt: &[u8]) -> Result<(PacketInfo, FlowKey), DropReason> {
    let info = packet::parse(pkt)?;
    if matches!(
        info.l4,
        L4::Icmp {
            kind: IcmpKind::Other
        }
    ) {
        return Err(DropReason::IcmpUnsupported);
    }
    let key = FlowKey::of(&info);
    Ok((info, key))
}
