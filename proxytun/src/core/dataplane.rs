//! The dataplane state machine: TUN input, tunnel input, timers.
//!
//! Sans-IO: the shell hands in packets and `now`, and gets back what to do
//! with the (rewritten in place) packet. Nothing here blocks, sleeps, reads
//! a clock or does I/O.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::access::{policy_port, DenialView, Denials, Side};
use super::counters::{add_len, inc, Counters, DropReason};
use super::flow::{min_opt, Activity, CoreConfig, Dir, Flow, FlowKey, FlowTable, FlowView};
use super::flow::{FlowRecord, FlowRecords, ImportReport, ReplyRecord};
use super::health::{PeerHealthView, Peers};
use super::icmp_error;
use super::keepalive::{self, Kind};
use super::miss::Misses;
use super::packet::{self, IcmpKind, PacketInfo, L4};
use super::policy::Balancer;
use super::reply::{ReplyCache, ReplyEntry, ReplyView};
use super::seal::{OpenError, Opener, Sealer};
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
    /// Write `dgram[HEADER_LEN..HEADER_LEN + n]` (opened and rewritten in
    /// place) to the TUN: the inner packet ends before the tag.
    Tun(usize),
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
    sealer: Arc<Sealer>,
    opener: Opener,
    denials: Denials,
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
    /// A plain-mode dataplane (no tunnel authentication) with no flows,
    /// forwarding according to `table`: for tests and tools; the daemon
    /// uses [`Dataplane::with_sealer`].
    pub fn new(config: CoreConfig, table: Arc<Table>) -> Self {
        Self::with_sealer(config, table, Arc::new(Sealer::plain(0)))
    }

    /// A dataplane whose tunnel datagrams are protected by `sealer`'s mode
    /// and key: it seals its keepalives with it (the egress thread shares
    /// it for data) and accepts only datagrams that open with the same key.
    pub fn with_sealer(config: CoreConfig, table: Arc<Table>, sealer: Arc<Sealer>) -> Self {
        let opener = sealer.opener();
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
            denials: Denials::default(),
            counters: Arc::new(Counters::default()),
            next_sweep: None,
            sealer,
            opener,
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
    ///
    /// Flows and reply entries the new table's isolation policy forbids
    /// are cut too, and counted in `flows_cut_by_policy`; their next
    /// packets are then refused as `policy_denied` (no TCP RST is sent).
    pub fn set_table(&mut self, table: Arc<Table>) {
        let port = |proto: packet::Proto, port: u16| (proto != packet::Proto::Icmp).then_some(port);
        let mut cut = 0u64;
        self.flows.retain(|f| {
            let instance = table.instance_by_name(&f.instance);
            let instance_ok = instance.is_some_and(|i| {
                i.ns_for(f.instance_ns) == f.instance_ns && i.location == f.location
            });
            let client = table
                .local_by_ns(f.key.src)
                .filter(|(_, c)| c.iip_for(f.client_iip) == f.client_iip);
            if !(instance_ok && client.is_some()) {
                return false;
            }
            let allowed = match (client, instance) {
                (Some((_, c)), Some(i)) => {
                    table.allows(c.service, i.service, port(f.key.proto, f.key.dport))
                }
                _ => false,
            };
            cut += u64::from(!allowed);
            allowed
        });
        self.replies.retain(|k, e| {
            let Some((_, local)) = table
                .local_by_ns(k.src)
                .filter(|(_, i)| i.name == e.instance)
            else {
                return false;
            };
            if !table.access().isolate() {
                return true;
            }
            // The reply key runs instance -> client: the client is its
            // destination, the service port its source port.
            let client = match table.vip(k.dst) {
                Some(Vip::Instance(i)) => table.instance(i),
                _ => None,
            };
            let allowed = client
                .is_some_and(|c| table.allows(c.service, local.service, port(k.proto, k.sport)));
            cut += u64::from(!allowed);
            allowed
        });
        if cut > 0 {
            self.counters
                .flows_cut_by_policy
                .fetch_add(cut, std::sync::atomic::Ordering::Relaxed);
        }
        self.balancer.follow(&table);
        self.peers.set_endpoints(table.peer_endpoints());
        self.table = table;
    }

    /// The most recent policy denials (at most
    /// [`super::access::DENIAL_RECORD`] keys), most recent first, for the API.
    pub fn denials(&self, now: Instant) -> Vec<DenialView> {
        self.denials.views(now)
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
    /// due peer gets one ping, sealed like every datagram. Also `None` when
    /// `buf` cannot hold a sealed keepalive ([`keepalive::KEEPALIVE_MAX`]
    /// bytes is always enough).
    pub fn poll_keepalive(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        if buf.len() < keepalive::KEEPALIVE_LEN + self.sealer.trailer_len() {
            return None;
        }
        let (to, len) = self.peers.poll(now, self.config.keepalive_interval, buf)?;
        // Only fails once the session's counter is exhausted: then nothing
        // is sent at all.
        let len = self
            .sealer
            .seal(buf, MsgType::Keepalive, len - HEADER_LEN)
            .ok()?;
        inc(&self.counters.keepalive_pings_tx);
        Some((to, len))
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
        // Order matters: header, membership (before any crypto, so strangers
        // cost nothing), protection, tag and replay window, then dispatch.
        let result = tunnel::parse(dgram)
            .map_err(DropReason::from)
            .and_then(|h| {
                if !self.table.is_peer(from.ip()) {
                    return Err(DropReason::NotMember);
                }
                match self.opener.open(from.ip(), dgram, &h) {
                    Ok(n) => Ok((h.msg, n)),
                    Err(e) => {
                        if let OpenError::ProtectionMismatch(theirs) = e {
                            tracing::debug!(
                                peer = %from,
                                theirs = theirs.name(),
                                ours = self.opener.protection().name(),
                                "tunnel datagram of another protection mode dropped"
                            );
                        }
                        Err(e.into())
                    }
                }
            })
            .and_then(|(msg, n)| match msg {
                MsgType::Data => {
                    let pkt = dgram
                        .get_mut(HEADER_LEN..HEADER_LEN + n)
                        .ok_or(DropReason::TunnelTooShort)?;
                    self.tunnel_input(from, pkt, now)
                        .map(|()| NetVerdict::Tun(n))
                }
                MsgType::Keepalive => self.keepalive_input(from, dgram, n, now),
            });
        match result {
            Ok(v) => {
                match v {
                    NetVerdict::Tun(n) => {
                        inc(&self.counters.tun_tx_tun);
                        add_len(&self.counters.tun_tx_tun_bytes, n);
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

    /// An opened keepalive from member `from` (`n` payload bytes after the
    /// header): a ping is answered in place with a sealed pong, a pong
    /// feeds that peer's health.
    fn keepalive_input(
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
                    .seal(dgram, MsgType::Keepalive, len - HEADER_LEN)
                    .map_err(|_| DropReason::KeepaliveMalformed)?;
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
        // ICMP errors (helper B): translated by `icmp_error`, never create state.
        if packet::looks_like_icmp_error(pkt) {
            return icmp_error::from_tun(&self.flows, &mut self.replies, pkt);
        }
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
        // Before `opens`: the next packets of a flow a policy change cut
        // are counted as policy denials, not as flowless.
        if table.access().isolate() {
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

    /// The inner packet `pkt` of a data datagram from member `from`, already
    /// opened (tag and replay checked) by [`Dataplane::handle_tunnel`].
    fn tunnel_input(
        &mut self,
        from: SocketAddr,
        pkt: &mut [u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        // ICMP errors (helper B): translated by `icmp_error`, never create state.
        if packet::looks_like_icmp_error(pkt) {
            return icmp_error::from_tunnel(&self.table, &self.flows, &mut self.replies, from, pkt);
        }
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

    /// The flow table and reply cache as plain records, for the state file
    /// that lets established connections survive a restart. Closed
    /// connections (only lingering) are left out. Costs one pass and one
    /// allocation per entry: callers hold the core's lock only for this copy.
    pub fn export_flows(&self, now: Instant) -> FlowRecords {
        FlowRecords {
            flows: self
                .flows
                .iter()
                .filter(|f| !f.activity.is_closed())
                .map(|f| FlowRecord::of(f, now))
                .collect(),
            replies: self
                .replies
                .iter()
                .filter(|(_, e)| !e.activity.is_closed())
                .map(|(k, e)| ReplyRecord {
                    key: (*k).into(),
                    peer: e.peer,
                    instance: Arc::clone(&e.instance),
                    activity: e.activity.record(now),
                })
                .collect(),
        }
    }

    /// Installs saved records (from [`Dataplane::export_flows`] of an
    /// earlier run), validated against the current table exactly like
    /// [`Dataplane::set_table`]: a flow whose instance is gone or moved or
    /// whose client is no longer attached here is dropped, as is a reply
    /// entry whose local instance is gone or whose peer is not a member.
    /// Records already expired as of `now`, and those beyond `max_flows`,
    /// are dropped too. Existing entries with the same keys are replaced.
    pub fn import_flows(&mut self, records: FlowRecords, now: Instant) -> ImportReport {
        let mut report = ImportReport::default();
        let table = Arc::clone(&self.table);
        for r in &records.flows {
            let f = r.to_flow(now);
            let instance_ok = table.instance_by_name(&f.instance).is_some_and(|i| {
                i.ns_for(f.instance_ns) == f.instance_ns && i.location == f.location
            });
            let client_ok = table
                .local_by_ns(f.key.src)
                .is_some_and(|(_, c)| c.iip_for(f.client_iip) == f.client_iip);
            let deadline = f.activity.deadline(&self.config);
            let live = deadline.is_none_or(|d| d > now);
            let room =
                self.flows.len() < self.config.max_flows || self.flows.lookup(&f.key).is_some();
            if !(instance_ok && client_ok && live && room) {
                report.flows_dropped += 1;
                continue;
            }
            // Share the table's name rather than one copy per flow.
            let f = match table.instance_by_name(&f.instance) {
                Some(i) => Flow {
                    instance: Arc::clone(&i.name),
                    ..f
                },
                None => f,
            };
            self.flows.insert(f);
            self.arm(deadline);
            report.flows += 1;
        }
        for r in &records.replies {
            let key = FlowKey::from(r.key);
            let activity = Activity::from_record(key.proto, &r.activity, now);
            let instance = table
                .local_by_ns(key.src)
                .filter(|(_, i)| *i.name == *r.instance)
                .map(|(_, i)| Arc::clone(&i.name));
            let deadline = activity.deadline(&self.config);
            let live = deadline.is_none_or(|d| d > now);
            let peer_ok = table.is_peer(r.peer.ip()) && table.in_service_range(key.dst);
            let room =
                self.replies.len() < self.config.max_flows || self.replies.get_mut(&key).is_some();
            match instance {
                Some(instance) if live && peer_ok && room => {
                    self.replies.insert(
                        key,
                        ReplyEntry {
                            peer: r.peer,
                            instance,
                            activity,
                        },
                    );
                    self.arm(deadline);
                    report.replies += 1;
                }
                _ => report.replies_dropped += 1,
            }
        }
        report
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
