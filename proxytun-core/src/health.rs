//! Peer health: keepalive schedule, smoothed RTT and liveness per peer
//! endpoint, fed by [`super::keepalive`] messages.
//!
//! Liveness rule: a peer is alive until it has not been heard from (a
//! pong, or a ping of its own) for `peer_timeout` since the later of our
//! first ping to it and the last time we heard it; then it is down until
//! heard again. A peer never pinged yet counts as alive, so a new node
//! gets traffic at once and is judged after one timeout.
//!
//! State is kept by endpoint, so a new table that still lists a peer keeps
//! its RTT and history. Nothing here allocates except [`Peers::set_endpoints`]
//! (on a table swap).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::counters::DropReason;
use super::keepalive::{self, Keepalive, Kind};
use super::map::FastMap;
use super::table::Location;

/// A pong echoing a send time older than this is no fair RTT sample (a
/// replay, or a datagram stuck in a queue) and is dropped.
pub const MAX_RTT_SAMPLE: Duration = Duration::from_secs(10);

/// Cost of a live peer that has not answered a ping yet: after every
/// measured one.
pub const UNMEASURED: u64 = u64::MAX;

/// What the core knows about one peer endpoint.
#[derive(Debug, Clone)]
struct PeerHealth {
    endpoint: SocketAddr,
    /// Smoothed RTT in ns (RFC 6298's 7/8 + 1/8), once measured.
    srtt_ns: Option<u64>,
    last_heard: Option<Instant>,
    first_ping: Option<Instant>,
    /// `None`: never pinged, due at once.
    next_ping: Option<Instant>,
    /// Sequence number of the next ping.
    seq: u32,
    pings_sent: u64,
    pongs_received: u64,
}

impl PeerHealth {
    fn new(endpoint: SocketAddr) -> Self {
        PeerHealth {
            endpoint,
            srtt_ns: None,
            last_heard: None,
            first_ping: None,
            next_ping: None,
            seq: 0,
            pings_sent: 0,
            pongs_received: 0,
        }
    }

    fn alive(&self, now: Instant, timeout: Duration) -> bool {
        match self.first_ping.max(self.last_heard) {
            None => true,
            Some(since) => now.saturating_duration_since(since) < timeout,
        }
    }
}

/// One peer's health for the API (`proxytun peers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerHealthView {
    /// The peer's tunnel endpoint.
    pub endpoint: SocketAddr,
    /// Whether new flows may go to its instances.
    pub alive: bool,
    /// Smoothed round-trip time, once measured.
    pub rtt_us: Option<u64>,
    /// How long ago it was last heard from, if ever.
    pub last_heard_ms: Option<u64>,
    /// Pings sent to it.
    pub pings_sent: u64,
    /// Pongs received from it.
    pub pongs_received: u64,
}

/// Health of every peer endpoint of the current table.
#[derive(Debug, Default)]
pub struct Peers {
    list: Vec<PeerHealth>,
    by_endpoint: FastMap<SocketAddr, usize>,
    /// The first endpoint of each address, for datagrams from another port.
    by_ip: FastMap<IpAddr, usize>,
    /// Zero of the send times in our pings: the first `now` we were polled at.
    epoch: Option<Instant>,
    /// The latest `now` we were polled at.
    clock: Option<Instant>,
    /// When the next ping is due (`None`: unknown, poll to find out).
    due: Option<Instant>,
}

impl Peers {
    /// Follows a new table's peer list, keeping the state of endpoints
    /// that stay; a new endpoint is due a ping at once.
    pub fn set_endpoints(&mut self, endpoints: &[SocketAddr]) {
        let mut old = std::mem::take(&mut self.list);
        let old_index = std::mem::take(&mut self.by_endpoint);
        self.by_ip.clear();
        let mut fresh = false;
        for &ep in endpoints {
            if self.by_endpoint.contains_key(&ep) {
                continue;
            }
            let state = match old_index.get(&ep) {
                Some(&i) => old[i].clone(),
                None => {
                    fresh = true;
                    PeerHealth::new(ep)
                }
            };
            self.by_endpoint.insert(ep, self.list.len());
            self.by_ip.entry(ep.ip()).or_insert(self.list.len());
            self.list.push(state);
        }
        old.clear();
        if fresh {
            self.due = self.clock;
        } else {
            self.due = self.list.iter().filter_map(|p| p.next_ping).min();
        }
    }

    /// Number of peers tracked.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when there is no peer.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The peer a datagram from `from` belongs to: by exact endpoint, else
    /// by address (a peer sending from another port).
    fn find(&self, from: SocketAddr) -> Option<usize> {
        self.by_endpoint
            .get(&from)
            .or_else(|| self.by_ip.get(&from.ip()))
            .copied()
    }

    /// Ranks a location for the closest policy: `None` when its peer is
    /// down, `Some(0)` for this node, `1 + srtt_ns` for a measured peer,
    /// [`UNMEASURED`] for a live peer without a sample (or an endpoint
    /// that is not a listed peer, which the core cannot judge).
    pub fn cost(&self, loc: Location, now: Instant, timeout: Duration) -> Option<u64> {
        let ep = match loc {
            Location::Local => return Some(0),
            Location::Remote(ep) => ep,
        };
        let Some(&i) = self.by_endpoint.get(&ep) else {
            return Some(UNMEASURED);
        };
        let p = &self.list[i];
        if !p.alive(now, timeout) {
            return None;
        }
        Some(
            p.srtt_ns
                .map_or(UNMEASURED, |s| s.saturating_add(1).min(UNMEASURED - 1)),
        )
    }

    /// When the next ping is due; see [`super::Dataplane::next_keepalive`].
    pub fn next_due(&self, interval: Duration) -> Option<Instant> {
        if interval.is_zero() || self.list.is_empty() {
            return None;
        }
        self.due
    }

    /// Writes the next due ping into `buf`; see
    /// [`super::Dataplane::poll_keepalive`].
    pub fn poll(
        &mut self,
        now: Instant,
        interval: Duration,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
        let epoch = *self.epoch.get_or_insert(now);
        if interval.is_zero() || self.due.is_some_and(|d| d > now) {
            return None;
        }
        let Some(p) = self
            .list
            .iter_mut()
            .find(|p| p.next_ping.is_none_or(|t| t <= now))
        else {
            self.due = self.list.iter().filter_map(|p| p.next_ping).min();
            return None;
        };
        let sent_ns = u64::try_from(now.saturating_duration_since(epoch).as_nanos()).ok()?;
        let ping = Keepalive {
            kind: Kind::Ping,
            seq: p.seq,
            sent_ns,
        };
        let len = keepalive::write(buf, &ping)?;
        p.seq = p.seq.wrapping_add(1);
        p.pings_sent += 1;
        p.first_ping.get_or_insert(now);
        p.next_ping = Some(now.checked_add(interval).unwrap_or(now));
        Some((p.endpoint, len))
    }

    /// Makes a ping to `endpoint` due at once (a new session is confirmed
    /// with it).
    pub fn ping_now(&mut self, endpoint: SocketAddr) {
        if let Some(&i) = self.by_endpoint.get(&endpoint) {
            self.list[i].next_ping = None;
            self.due = self.clock;
        }
    }

    /// A ping from `from` (a member): it counts as hearing from that peer.
    pub fn on_ping(&mut self, from: SocketAddr, now: Instant) {
        if let Some(i) = self.find(from) {
            let p = &mut self.list[i];
            p.last_heard = Some(p.last_heard.map_or(now, |t| t.max(now)));
        }
    }

    /// A pong from `from` (a member): checks it answers one of our pings
    /// and takes its RTT sample.
    pub fn on_pong(
        &mut self,
        from: SocketAddr,
        ka: &Keepalive,
        now: Instant,
    ) -> Result<(), DropReason> {
        let i = self.find(from).ok_or(DropReason::KeepaliveUnexpected)?;
        let p = &mut self.list[i];
        if p.pings_sent == 0 || ka.seq >= p.seq {
            return Err(DropReason::KeepaliveUnexpected);
        }
        // Set by the poll that sent the ping.
        let epoch = self.epoch.ok_or(DropReason::KeepaliveUnexpected)?;
        let sent = epoch
            .checked_add(Duration::from_nanos(ka.sent_ns))
            .ok_or(DropReason::KeepaliveBadTime)?;
        let sample = now
            .checked_duration_since(sent)
            .ok_or(DropReason::KeepaliveBadTime)?;
        if sample > MAX_RTT_SAMPLE {
            return Err(DropReason::KeepaliveBadTime);
        }
        let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        p.srtt_ns = Some(match p.srtt_ns {
            None => sample,
            Some(s) => s - s / 8 + sample / 8,
        });
        p.pongs_received += 1;
        p.last_heard = Some(p.last_heard.map_or(now, |t| t.max(now)));
        Ok(())
    }

    /// Every peer's health as of `now`.
    pub fn views(
        &self,
        now: Instant,
        timeout: Duration,
    ) -> impl Iterator<Item = PeerHealthView> + '_ {
        self.list.iter().map(move |p| PeerHealthView {
            endpoint: p.endpoint,
            alive: p.alive(now, timeout),
            rtt_us: p.srtt_ns.map(|s| s / 1000),
            last_heard_ms: p.last_heard.map(|t| {
                u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
            }),
            pings_sent: p.pings_sent,
            pongs_received: p.pongs_received,
        })
    }
}
