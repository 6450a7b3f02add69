//! The dataplane state machine: TUN input, tunnel input, timers.
//!
//! Sans-IO: the shell hands in packets and `now`, and gets back what to do
//! with the (rewritten in place) packet. Nothing here blocks, sleeps, reads
//! a clock or does I/O.

mod clients;
mod fragments;
mod from_tun;
mod from_tunnel;
mod handshakes;
mod records;
mod too_big;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access::{DenialView, Denials};
use crate::affinity::Affinity;
use crate::config::CoreConfig;
use crate::counters::{add_len, inc, Counters, DropReason};
use crate::flow::{FlowKey, FlowTable, FlowView};
use crate::frag::FragTable;
use crate::health::{PeerHealthView, Peers};
use crate::keepalive::{self};
use crate::map::FastMap;
use crate::miss::Misses;
use crate::packet::{self, IcmpKind, PacketInfo, L4};
use crate::policy::Balancer;
use crate::reply::{ReplyCache, ReplyView};
use crate::seal::{OpenError, Opener, Sealer};
use crate::table::{Table, Vip};
use crate::time::min_opt;
use crate::tunnel::{self, MsgType, HEADER_LEN};

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
    /// Drop it; the reason was counted (or, for a packet to a multicast or
    /// link-local address, `tun_not_for_us`).
    Drop(DropReason),
    /// It was too big for the tunnel to its peer (counted as `too_big`):
    /// write `pkt[..n]`, now the ICMP error that says so, back to the TUN.
    Icmp(usize),
    /// The isolation policy refused it (counted as `policy_denied`):
    /// write `pkt[..n]`, now the TCP RST or ICMP "administratively
    /// prohibited" error answering it, back to the TUN ([`crate::reject`]).
    /// `n` may exceed the packet's length when the buffer had room after it
    /// ([`Dataplane::handle_tun_buf`]).
    Reject(usize),
}

/// What to do with a datagram received from the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetVerdict {
    /// Write `dgram[HEADER_LEN..HEADER_LEN + n]` (opened and rewritten in
    /// place) to the TUN: the inner packet ends before the tag.
    Tun(usize),
    /// Send `dgram[..len]` (rewritten in place: a keepalive pong, or a
    /// handshake answer) back to the sender, `from`.
    Reply(usize),
    /// Consumed by the core (a keepalive pong, a handshake answer); nothing to send.
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
    affinity: Affinity,
    peers: Peers,
    misses: Misses,
    counters: Arc<Counters>,
    next_sweep: Option<Instant>,
    sealer: Arc<Sealer>,
    opener: Opener,
    /// Per-node keys: the handshakes (`None` with the cluster key).
    handshaker: Option<crate::handshake::Handshaker>,
    denials: Denials,
    frags: FragTable,
    /// The underlay path MTU to each peer address, as the shell learned it.
    path_mtu: FastMap<IpAddr, u16>,
    /// The smallest inner MTU of any peer: packets up to it skip the check.
    mtu_floor: usize,
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
        // As many pins as flows: one per client and ServiceIP at most.
        let max_pins = config.max_flows;
        let mut peers = Peers::default();
        peers.set_endpoints(table.peer_endpoints());
        Dataplane {
            config,
            table,
            flows: FlowTable::default(),
            replies: ReplyCache::default(),
            balancer: Balancer::default(),
            affinity: Affinity::new(max_pins),
            peers,
            misses: Misses::default(),
            denials: Denials::default(),
            counters: Arc::new(Counters::default()),
            next_sweep: None,
            sealer,
            opener,
            handshaker: None,
            frags: FragTable::default(),
            path_mtu: FastMap::default(),
            mtu_floor: usize::MAX,
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

    /// Fragmented datagrams whose later fragments are awaited, as of `now`
    /// (a scan of the fragment table: for tests and the API).
    pub fn fragments_active(&self, now: Instant) -> usize {
        self.frags.live(now)
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
    /// packets from the TUN are then refused as `policy_denied` and
    /// answered with a TCP RST or an ICMP error ([`TunVerdict::Reject`]).
    pub fn set_table(&mut self, table: Arc<Table>) {
        let port = |proto: packet::Proto, port: u16| (proto != packet::Proto::Icmp).then_some(port);
        let mut cut = 0u64;
        self.flows.retain(|f| {
            let instance = table.instance_by_name(&f.instance);
            let instance_ok = instance.is_some_and(|i| {
                i.ns_for(f.instance_ns) == f.instance_ns && i.location == f.location
            });
            // An external client's flow: no service, so no policy allows it.
            if table.clients().has(f.key.src) {
                let allowed = !table.access().isolate();
                cut += u64::from(instance_ok && !allowed);
                return instance_ok && allowed;
            }
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
        self.follow_members();
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
        let ka = self.peers.next_due(self.config.keepalive_interval);
        match &self.handshaker {
            Some(h) => min_opt(ka, h.next_due()),
            None => ka,
        }
    }

    /// Writes the next due keepalive ping into `buf` and says where to send
    /// it: `(peer endpoint, length)`. Call repeatedly until `None`; each
    /// due peer gets one ping, sealed like every datagram. Also `None` when
    /// `buf` cannot hold a sealed keepalive ([`keepalive::KEEPALIVE_MAX`]
    /// bytes is always enough).
    pub fn poll_keepalive(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        if let Some(out) = self.poll_handshake(now, buf) {
            return Some(out);
        }
        if buf.len() < keepalive::KEEPALIVE_LEN + self.sealer.trailer_len() {
            return None;
        }
        loop {
            let (to, len) = self.peers.poll(now, self.config.keepalive_interval, buf)?;
            // Fails once the session's counter is exhausted (then nothing
            // is sent at all), and with per-node keys before a handshake
            // (that peer is skipped: the handshake comes first).
            match self
                .sealer
                .seal_for(to.ip(), buf, MsgType::Keepalive, len - HEADER_LEN, false)
            {
                Ok(len) => {
                    inc(&self.counters.keepalive_pings_tx);
                    return Some((to, len));
                }
                Err(crate::seal::SealError::NoSession) => continue,
                Err(_) => return None,
            }
        }
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
        self.affinity.purge(now);
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
        let len = pkt.len();
        self.handle_tun_segmented(pkt, len, now)
    }

    /// [`Dataplane::handle_tun`] for a packet that leaves as IP packets of
    /// at most `wire` bytes: its own length, or for a super-packet its
    /// headers plus the segment size. A packet for a peer whose `wire`
    /// exceeds the tunnel's inner MTU to that peer becomes an ICMP error
    /// ([`TunVerdict::Icmp`]).
    pub fn handle_tun_segmented(
        &mut self,
        pkt: &mut [u8],
        wire: usize,
        now: Instant,
    ) -> TunVerdict {
        let len = pkt.len();
        self.handle_tun_buf(pkt, len, wire, now)
    }

    /// [`Dataplane::handle_tun_segmented`] for the packet `buf[..len]` in a
    /// buffer that may be longer: the room after the packet lets the ICMP
    /// error answering a small refused packet quote it whole
    /// ([`TunVerdict::Reject`]).
    pub fn handle_tun_buf(
        &mut self,
        buf: &mut [u8],
        len: usize,
        wire: usize,
        now: Instant,
    ) -> TunVerdict {
        let len = len.min(buf.len());
        let pkt = &mut buf[..len];
        inc(&self.counters.tun_rx);
        // The rewrite changes no length, so the length read is the length written.
        add_len(&self.counters.tun_rx_bytes, len);
        // Only a packet that may be too big pays for keeping its addresses.
        let sent_as = (wire > self.mtu_floor)
            .then(|| crate::frag::addresses(pkt))
            .flatten();
        let result = self.tun_input(pkt, now);
        if let (Ok(Some(peer)), Some(orig)) = (result, sent_as) {
            if let Some(mtu) = self.inner_mtu(peer).filter(|&m| wire > m) {
                return self.too_big(pkt, orig, mtu);
            }
        }
        match result {
            Ok(None) => {
                inc(&self.counters.tun_tx_tun);
                add_len(&self.counters.tun_tx_tun_bytes, len);
                TunVerdict::Tun
            }
            Ok(Some(peer)) if !self.can_send(peer.ip()) => {
                self.counters.count_drop(DropReason::NoSession);
                TunVerdict::Drop(DropReason::NoSession)
            }
            Ok(Some(peer)) => {
                inc(&self.counters.tun_tx_peer);
                add_len(&self.counters.tun_tx_peer_bytes, len);
                TunVerdict::Peer(peer)
            }
            Err(reason) => {
                if too_big::not_for_us(pkt) {
                    inc(&self.counters.tun_not_for_us);
                } else {
                    self.counters.count_drop(reason);
                }
                if reason == DropReason::PolicyDenied {
                    return self.reject(buf, len);
                }
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
                if matches!(h.msg, MsgType::HandshakeInit | MsgType::HandshakeResp) {
                    return Ok((h, None));
                }
                match self.opener.open(from.ip(), dgram, &h) {
                    Ok(n) => {
                        self.confirm_session(from.ip());
                        Ok((h, Some(n)))
                    }
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
            .and_then(|(h, opened)| match (h.msg, opened) {
                (MsgType::Data, Some(n)) => {
                    let pkt = dgram
                        .get_mut(HEADER_LEN..HEADER_LEN + n)
                        .ok_or(DropReason::TunnelTooShort)?;
                    self.tunnel_input(from, pkt, now)
                        .map(|()| NetVerdict::Tun(n))
                }
                (MsgType::Keepalive, Some(n)) => self.keepalive_input(from, dgram, n, now),
                (_, _) => self.handshake_input(from, dgram, &h, now),
            });
        match result {
            Ok(v) => {
                match v {
                    NetVerdict::Tun(n) => {
                        inc(&self.counters.tun_tx_tun);
                        add_len(&self.counters.tun_tx_tun_bytes, n);
                    }
                    NetVerdict::Reply(_) | NetVerdict::Done | NetVerdict::Drop(_) => {}
                }
                v
            }
            Err(reason) => {
                self.counters.count_drop(reason);
                NetVerdict::Drop(reason)
            }
        }
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
