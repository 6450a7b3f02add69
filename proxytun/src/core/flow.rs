//! Flow keys, per-connection tracking, the flow table and its timeouts.
//!
//! A flow is a client's connection to a VIP after the slow path chose its
//! instance. It is reachable by two exact 5-tuple keys (the client's packets
//! and the instance's replies) that both point at one slot of a slab, so a
//! hit costs one hash lookup and no allocation.
//!
//! The maps of the packet core hash with [`FastMap`]'s foldhash, not std's
//! SipHash; see there for why that is safe enough and what it buys.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::packet::{PacketInfo, Proto, TCP_FIN, TCP_RST};
use super::table::Location;

/// Limits and timeouts of the packet core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Most flows (and, separately, most reply-cache entries) kept at once.
    pub max_flows: usize,
    /// Idle timeout of an established TCP flow.
    pub tcp_idle: Duration,
    /// Idle timeout of a TCP flow that has not seen a reply yet (SYN sent):
    /// short, so unanswered SYNs do not fill the table for hours.
    pub tcp_syn_idle: Duration,
    /// How long a TCP flow lives after FIN was seen in both directions.
    pub tcp_fin_linger: Duration,
    /// How long a TCP flow lives after a RST.
    pub tcp_rst_linger: Duration,
    /// Idle timeout of a UDP flow.
    pub udp_idle: Duration,
    /// Idle timeout of an ICMP echo flow.
    pub icmp_idle: Duration,
    /// How often each peer is sent a keepalive ping (zero: never, and
    /// every peer counts as alive).
    pub keepalive_interval: Duration,
    /// A peer not heard from for this long is down: new flows avoid it.
    pub peer_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_flows: 65_536,
            tcp_idle: Duration::from_secs(2 * 3600),
            tcp_syn_idle: Duration::from_secs(60),
            tcp_fin_linger: Duration::from_secs(10),
            tcp_rst_linger: Duration::from_secs(2),
            udp_idle: Duration::from_secs(60),
            icmp_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(3),
        }
    }
}

/// The hash map of the packet's hot path: std's `HashMap` (hashbrown) with
/// foldhash instead of SipHash-1-3.
///
/// Why: every packet costs at least one lookup keyed by a 5-tuple, and
/// SipHash of a [`FlowKey`] was most of a hit's cost (see
/// `docs/benchmarks.md`). foldhash is several times faster on such small
/// keys. Why it is still safe enough: the keys are partly chosen by
/// containers (ports, and addresses within what a container owns), so a
/// fixed-seed hash would let them craft collisions and turn every lookup
/// into a scan. foldhash's `RandomState` seeds each map from a per-process
/// random seed (plus a per-map one), which keeps it "minimally
/// DoS-resistant": an attacker who cannot observe the process's timing
/// closely cannot predict collisions. It is not a cryptographic hash, and
/// the table sizes are capped by [`CoreConfig::max_flows`] anyway.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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

/// Packet/byte counts, last activity and TCP teardown tracking of one
/// connection; shared by flows and reply-cache entries.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    proto: Proto,
    established: bool,
    fin_fwd: bool,
    fin_rev: bool,
    rst: bool,
    /// Set once the connection is closed (RST or FIN both ways): it lingers until then.
    closing_until: Option<Instant>,
    last_seen: Instant,
    /// Packets in both directions.
    pub packets: u64,
    /// IP bytes in both directions.
    pub bytes: u64,
}

impl Activity {
    /// A fresh connection, not yet counted.
    pub fn new(proto: Proto, now: Instant) -> Activity {
        Activity {
            proto,
            established: false,
            fin_fwd: false,
            fin_rev: false,
            rst: false,
            closing_until: None,
            last_seen: now,
            packets: 0,
            bytes: 0,
        }
    }

    fn closed(&self) -> bool {
        self.rst || (self.fin_fwd && self.fin_rev)
    }

    /// Accounts one packet. Returns the linger deadline when this packet
    /// closed the connection, so the caller can arm its timer.
    pub fn touch(
        &mut self,
        dir: Dir,
        info: &PacketInfo,
        now: Instant,
        cfg: &CoreConfig,
    ) -> Option<Instant> {
        self.packets += 1;
        self.bytes += info.len as u64;
        self.last_seen = self.last_seen.max(now);
        if self.proto != Proto::Tcp {
            return None;
        }
        let flags = info.tcp_flags();
        if dir == Dir::Forward && info.is_tcp_syn() && self.closed() {
            // The client reuses the 5-tuple for a new connection.
            *self = Activity {
                packets: self.packets,
                bytes: self.bytes,
                ..Activity::new(Proto::Tcp, self.last_seen)
            };
        }
        if dir == Dir::Reverse {
            self.established = true;
        }
        let was_closing = self.closing_until;
        if flags & TCP_RST != 0 {
            self.rst = true;
            let until = now.checked_add(cfg.tcp_rst_linger);
            self.closing_until = min_opt(self.closing_until, until);
        }
        if flags & TCP_FIN != 0 {
            match dir {
                Dir::Forward => self.fin_fwd = true,
                Dir::Reverse => self.fin_rev = true,
            }
            if self.fin_fwd && self.fin_rev && !self.rst && self.closing_until.is_none() {
                self.closing_until = now.checked_add(cfg.tcp_fin_linger);
            }
        }
        if self.closing_until != was_closing {
            self.closing_until
        } else {
            None
        }
    }

    /// When the connection expires if nothing else happens (`None`: never,
    /// only with absurd timeouts).
    pub fn deadline(&self, cfg: &CoreConfig) -> Option<Instant> {
        let idle = match self.proto {
            Proto::Tcp if self.established => cfg.tcp_idle,
            Proto::Tcp => cfg.tcp_syn_idle,
            Proto::Udp => cfg.udp_idle,
            Proto::Icmp => cfg.icmp_idle,
        };
        min_opt(self.last_seen.checked_add(idle), self.closing_until)
    }

    /// `syn`/`established`/`fin`/`closed` for TCP, `-` otherwise.
    pub fn state(&self) -> &'static str {
        match self.proto {
            Proto::Tcp if self.closed() => "closed",
            Proto::Tcp if self.fin_fwd || self.fin_rev => "fin",
            Proto::Tcp if self.established => "established",
            Proto::Tcp => "syn",
            _ => "-",
        }
    }

    /// Time since the last packet.
    pub fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }
}

/// The earlier of two optional instants (`None` = never).
pub fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// One client connection through a VIP to a chosen instance.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The client's packets as they arrive: client ns:port -> VIP:port.
    pub key: FlowKey,
    /// The client's instance IP (the source the instance sees).
    pub client_iip: IpAddr,
    /// The chosen instance's name.
    pub instance: Arc<str>,
    /// The chosen instance's namespace address.
    pub instance_ns: IpAddr,
    /// Where the chosen instance runs.
    pub location: Location,
    /// Counters and TCP state.
    pub activity: Activity,
}

impl Flow {
    /// The instance's replies as they arrive: instance ns:port -> client iip:port.
    pub fn reverse_key(&self) -> FlowKey {
        FlowKey {
            proto: self.key.proto,
            src: self.instance_ns,
            dst: self.client_iip,
            sport: self.key.dport,
            dport: self.key.sport,
        }
    }

    /// The plain view the API shows.
    pub fn view(&self, now: Instant) -> FlowView {
        FlowView {
            proto: self.key.proto.name(),
            client: SocketAddr::new(self.key.src, self.key.sport),
            vip: SocketAddr::new(self.key.dst, self.key.dport),
            client_iip: self.client_iip,
            instance: self.instance.to_string(),
            instance_addr: SocketAddr::new(self.instance_ns, self.key.dport),
            peer: self.location.peer(),
            state: self.activity.state(),
            packets: self.activity.packets,
            bytes: self.activity.bytes,
            idle: self.activity.idle(now),
        }
    }
}

/// A flow as the management API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowView {
    /// `tcp`, `udp` or `icmp`.
    pub proto: &'static str,
    /// Client namespace address and port (ICMP: echo identifier).
    pub client: SocketAddr,
    /// The VIP and port the client used.
    pub vip: SocketAddr,
    /// The client's instance IP.
    pub client_iip: IpAddr,
    /// The chosen instance (`app/service/n`).
    pub instance: String,
    /// The instance's namespace address and port.
    pub instance_addr: SocketAddr,
    /// The peer node's endpoint when the instance is remote.
    pub peer: Option<SocketAddr>,
    /// `syn`, `established`, `fin`, `closed`, or `-` for UDP/ICMP.
    pub state: &'static str,
    /// Packets in both directions.
    pub packets: u64,
    /// IP bytes in both directions.
    pub bytes: u64,
    /// Time since the last packet, serialised as milliseconds.
    #[serde(rename = "idle_ms", serialize_with = "serialize_ms")]
    pub idle: Duration,
}

/// Serialises a duration as whole milliseconds.
pub(crate) fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Flows in a slab, reachable by both of their keys.
#[derive(Debug, Default)]
pub struct FlowTable {
    slots: Vec<Option<Flow>>,
    free: Vec<usize>,
    map: FastMap<FlowKey, (usize, Dir)>,
    len: usize,
}

impl FlowTable {
    /// A table with room for `flows` flows before it first grows.
    ///
    /// Growing is amortised and costs no more per flow than a pre-sized
    /// table (bench `flow_insert`), so the dataplane does not pre-size; this
    /// is for a caller that cannot afford the one long pause of rehashing a
    /// large table on the packet path.
    pub fn with_capacity(flows: usize) -> Self {
        FlowTable {
            slots: Vec::with_capacity(flows),
            free: Vec::new(),
            map: FastMap::with_capacity_and_hasher(flows.saturating_mul(2), Default::default()),
            len: 0,
        }
    }

    /// Number of live flows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no flows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Which flow (and which direction of it) a packet's key belongs to.
    pub fn lookup(&self, key: &FlowKey) -> Option<(usize, Dir)> {
        self.map.get(key).copied()
    }

    /// The flow in slot `idx`.
    pub fn get(&self, idx: usize) -> Option<&Flow> {
        self.slots.get(idx)?.as_ref()
    }

    /// The flow in slot `idx`, mutable.
    pub fn get_mut(&mut self, idx: usize) -> Option<&mut Flow> {
        self.slots.get_mut(idx)?.as_mut()
    }

    /// Installs a flow under both keys. A flow already holding either key is
    /// evicted first (it is necessarily older). Returns the slot.
    pub fn insert(&mut self, flow: Flow) -> usize {
        let fwd = flow.key;
        let rev = flow.reverse_key();
        for k in [fwd, rev] {
            if let Some((old, _)) = self.lookup(&k) {
                self.remove(old);
            }
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[idx] = Some(flow);
        self.map.insert(fwd, (idx, Dir::Forward));
        self.map.insert(rev, (idx, Dir::Reverse));
        self.len += 1;
        idx
    }

    /// Removes the flow in slot `idx` and both of its keys.
    pub fn remove(&mut self, idx: usize) -> Option<Flow> {
        let flow = self.slots.get_mut(idx)?.take()?;
        self.map.remove(&flow.key);
        self.map.remove(&flow.reverse_key());
        self.free.push(idx);
        self.len -= 1;
        Some(flow)
    }

    /// Removes every flow for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Flow) -> bool) {
        for idx in 0..self.slots.len() {
            if matches!(&self.slots[idx], Some(f) if !keep(f)) {
                self.remove(idx);
            }
        }
    }

    /// All live flows.
    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.slots.iter().flatten()
    }
}

/// The persistent form of an [`Activity`]: what a restarted daemon needs
/// to go on tracking a connection (TCP state, counters, idle age).
///
/// Why not the `Activity` itself: it holds `Instant`s, which mean nothing
/// in another process; the record holds the idle age instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityRecord {
    /// A reply was seen (TCP).
    pub established: bool,
    /// The opener sent a FIN (TCP).
    pub fin_fwd: bool,
    /// The other side sent a FIN (TCP).
    pub fin_rev: bool,
    /// Time since the last packet, in milliseconds.
    pub idle_ms: u64,
    /// Packets in both directions.
    pub packets: u64,
    /// IP bytes in both directions.
    pub bytes: u64,
}

impl Activity {
    /// True once the connection is closed (RST, or FIN both ways) and only
    /// lingers: such a connection is not worth saving.
    pub fn is_closed(&self) -> bool {
        self.closed()
    }

    /// The record of this connection as of `now`.
    pub fn record(&self, now: Instant) -> ActivityRecord {
        ActivityRecord {
            established: self.established,
            fin_fwd: self.fin_fwd,
            fin_rev: self.fin_rev,
            idle_ms: u64::try_from(self.idle(now).as_millis()).unwrap_or(u64::MAX),
            packets: self.packets,
            bytes: self.bytes,
        }
    }

    /// The connection a record describes, as of `now` (its last packet
    /// `idle_ms` before `now`, or at the earliest instant `now` can go back
    /// to).
    pub fn from_record(proto: Proto, r: &ActivityRecord, now: Instant) -> Activity {
        let tcp = proto == Proto::Tcp;
        Activity {
            proto,
            established: tcp && r.established,
            fin_fwd: tcp && r.fin_fwd,
            fin_rev: tcp && r.fin_rev,
            rst: false,
            closing_until: None,
            last_seen: now
                .checked_sub(Duration::from_millis(r.idle_ms))
                .unwrap_or(now),
            packets: r.packets,
            bytes: r.bytes,
        }
    }
}

/// Serde of [`Proto`] as its API name (`tcp`, `udp`, `icmp`).
mod proto_name {
    use super::Proto;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Proto, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Proto, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["tcp", "udp", "icmp"],
            )),
        }
    }
}

/// Serde of an `Arc<str>` as a plain string: records share the table's
/// instance names, so copying them out under the core's lock allocates no
/// string.
mod arc_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        Ok(Arc::from(String::deserialize(d)?))
    }
}

/// A [`FlowKey`] in a form serde can write: the protocol by name and two
/// socket addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// `tcp`, `udp` or `icmp`.
    #[serde(with = "proto_name")]
    pub proto: Proto,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

impl From<FlowKey> for KeyRecord {
    fn from(k: FlowKey) -> Self {
        KeyRecord {
            proto: k.proto,
            src: SocketAddr::new(k.src, k.sport),
            dst: SocketAddr::new(k.dst, k.dport),
        }
    }
}

impl From<KeyRecord> for FlowKey {
    fn from(k: KeyRecord) -> Self {
        FlowKey {
            proto: k.proto,
            src: k.src.ip(),
            dst: k.dst.ip(),
            sport: k.src.port(),
            dport: k.dst.port(),
        }
    }
}

/// A client-side flow as a restarted daemon needs it back: the choice of
/// instance cannot be re-derived (round-robin moved on), so it is saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The client's packets: client ns:port -> VIP:port.
    pub key: KeyRecord,
    /// The client's instance IP.
    pub client_iip: IpAddr,
    /// The chosen instance (`app/service/n`).
    #[serde(with = "arc_str")]
    pub instance: Arc<str>,
    /// The chosen instance's namespace address.
    pub instance_ns: IpAddr,
    /// The peer endpoint when the instance is remote (`None`: local).
    pub peer: Option<SocketAddr>,
    /// TCP state, counters, idle age.
    pub activity: ActivityRecord,
}

impl FlowRecord {
    /// The record of a live flow as of `now`.
    pub fn of(f: &Flow, now: Instant) -> FlowRecord {
        FlowRecord {
            key: f.key.into(),
            client_iip: f.client_iip,
            instance: Arc::clone(&f.instance),
            instance_ns: f.instance_ns,
            peer: f.location.peer(),
            activity: f.activity.record(now),
        }
    }

    /// The flow this record describes, as of `now` (the caller validates
    /// it against its table).
    pub fn to_flow(&self, now: Instant) -> Flow {
        let key = FlowKey::from(self.key);
        Flow {
            key,
            client_iip: self.client_iip,
            instance: Arc::clone(&self.instance),
            instance_ns: self.instance_ns,
            location: match self.peer {
                Some(p) => Location::Remote(p),
                None => Location::Local,
            },
            activity: Activity::from_record(key.proto, &self.activity, now),
        }
    }
}

/// A server-side reply-cache entry as a restarted daemon needs it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRecord {
    /// The reply's key: local instance ns:port -> remote client iip:port.
    pub key: KeyRecord,
    /// The peer node replies go to.
    pub peer: SocketAddr,
    /// The local instance (`app/service/n`).
    #[serde(with = "arc_str")]
    pub instance: Arc<str>,
    /// TCP state, counters, idle age.
    pub activity: ActivityRecord,
}

/// Everything of the flow state that survives a restart: what
/// `Dataplane::export_flows` hands out and `Dataplane::import_flows` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecords {
    /// Client-side flows.
    pub flows: Vec<FlowRecord>,
    /// Server-side reply-cache entries.
    pub replies: Vec<ReplyRecord>,
}

impl FlowRecords {
    /// Adds `extra` to every record's idle age: the time that passed
    /// between the export and the import (the daemon was down).
    pub fn age(&mut self, extra: Duration) {
        let ms = u64::try_from(extra.as_millis()).unwrap_or(u64::MAX);
        for a in self
            .flows
            .iter_mut()
            .map(|f| &mut f.activity)
            .chain(self.replies.iter_mut().map(|r| &mut r.activity))
        {
            a.idle_ms = a.idle_ms.saturating_add(ms);
        }
    }
}

/// What `Dataplane::import_flows` did with the records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Flows installed.
    pub flows: usize,
    /// Flows dropped: instance or client gone or moved, expired, or no room.
    pub flows_dropped: usize,
    /// Reply entries installed.
    pub replies: usize,
    /// Reply entries dropped: instance or peer gone, expired, or no room.
    pub replies_dropped: usize,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::packet::{L4, TCP_ACK, TCP_SYN};

    fn tcp(flags: u8) -> PacketInfo {
        PacketInfo {
            src: "10.18.1.5".parse().unwrap(),
            dst: "10.30.0.1".parse().unwrap(),
            sport: 1000,
            dport: 80,
            l4: L4::Tcp { flags },
            l4_offset: 20,
            len: 40,
        }
    }

    #[test]
    fn tcp_lifecycle_and_deadlines() {
        let cfg = CoreConfig::default();
        let t0 = Instant::now();
        let mut a = Activity::new(Proto::Tcp, t0);
        assert_eq!(a.touch(Dir::Forward, &tcp(TCP_SYN), t0, &cfg), None);
        assert_eq!(a.state(), "syn");
        assert_eq!(a.deadline(&cfg), Some(t0 + cfg.tcp_syn_idle));
        a.touch(Dir::Reverse, &tcp(TCP_SYN | TCP_ACK), t0, &cfg);
        assert_eq!(a.state(), "established");
        assert_eq!(a.deadline(&cfg), Some(t0 + cfg.tcp_idle));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            a.touch(Dir::Forward, &tcp(TCP_FIN | TCP_ACK), t1, &cfg),
            None
        );
        assert_eq!(a.state(), "fin");
        let d = a.touch(Dir::Reverse, &tcp(TCP_FIN | TCP_ACK), t1, &cfg);
        assert_eq!(d, Some(t1 + cfg.tcp_fin_linger));
        assert_eq!(a.state(), "closed");
        // The last ACK does not extend the linger.
        a.touch(
            Dir::Forward,
            &tcp(TCP_ACK),
            t1 + Duration::from_secs(1),
            &cfg,
        );
        assert_eq!(a.deadline(&cfg), Some(t1 + cfg.tcp_fin_linger));
        assert_eq!((a.packets, a.bytes), (5, 200));
        // A new SYN on the same tuple reopens it.
        a.touch(
            Dir::Forward,
            &tcp(TCP_SYN),
            t1 + Duration::from_secs(2),
            &cfg,
        );
        assert_eq!(a.state(), "syn");
        let d = a.touch(
            Dir::Reverse,
            &tcp(TCP_RST),
            t1 + Duration::from_secs(2),
            &cfg,
        );
        assert_eq!(d, Some(t1 + Duration::from_secs(2) + cfg.tcp_rst_linger));
    }

    #[test]
    fn key_hash_agrees_with_eq() {
        use std::hash::BuildHasher;
        let st = foldhash::fast::RandomState::default();
        let base = flow(7).key;
        let v6 = FlowKey {
            src: "fdff:18::105".parse().unwrap(),
            dst: "fdff:30::10".parse().unwrap(),
            ..base
        };
        for k in [base, base.reversed(), v6, v6.reversed()] {
            let copy = k;
            assert_eq!(st.hash_one(k), st.hash_one(copy));
        }
        // Every field takes part: changing any one changes the hash (a
        // collision here would be a 1 in 2^64 accident, or a packing bug).
        let mut variants = vec![base, v6];
        for k in [base, v6] {
            variants.push(FlowKey {
                proto: Proto::Tcp,
                ..k
            });
            variants.push(FlowKey {
                sport: k.sport + 1,
                ..k
            });
            variants.push(FlowKey {
                dport: k.dport + 1,
                ..k
            });
            variants.push(k.reversed());
        }
        variants.push(FlowKey {
            src: "10.18.1.6".parse().unwrap(),
            ..base
        });
        variants.push(FlowKey {
            dst: "10.30.0.2".parse().unwrap(),
            ..base
        });
        variants.push(FlowKey {
            src: "fdff:18::106".parse().unwrap(),
            ..v6
        });
        variants.push(FlowKey {
            dst: "fdff:30::11".parse().unwrap(),
            ..v6
        });
        // An IPv4-mapped twin of the v4 key is a different key.
        variants.push(FlowKey {
            src: "::a12:105".parse().unwrap(),
            dst: "::a1e:1".parse().unwrap(),
            ..base
        });
        let hashes: std::collections::HashSet<u64> =
            variants.iter().map(|k| st.hash_one(k)).collect();
        assert_eq!(hashes.len(), variants.len());
    }

    #[test]
    fn with_capacity_behaves_like_default() {
        let mut t = FlowTable::with_capacity(4);
        for p in 0..10 {
            t.insert(flow(p));
        }
        assert_eq!(t.len(), 10);
        assert!((0..10).all(|p| t.lookup(&flow(p).key).is_some()));
        t.remove(0);
        assert_eq!(t.lookup(&flow(0).key), None);
    }

    fn flow(port: u16) -> Flow {
        Flow {
            key: FlowKey {
                proto: Proto::Udp,
                src: "10.18.1.5".parse().unwrap(),
                dst: "10.30.0.1".parse().unwrap(),
                sport: port,
                dport: 53,
            },
            client_iip: "10.30.1.5".parse().unwrap(),
            instance: "a/b/1".into(),
            instance_ns: "10.18.1.9".parse().unwrap(),
            location: Location::Local,
            activity: Activity::new(Proto::Udp, Instant::now()),
        }
    }

    #[test]
    fn slab_keys_and_eviction() {
        let mut t = FlowTable::default();
        let a = t.insert(flow(1));
        let b = t.insert(flow(2));
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(&flow(1).key), Some((a, Dir::Forward)));
        assert_eq!(t.lookup(&flow(2).reverse_key()), Some((b, Dir::Reverse)));
        // Same reverse key through another VIP evicts the older flow.
        let mut c = flow(1);
        c.key.dst = "10.30.0.2".parse().unwrap();
        let ci = t.insert(c.clone());
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(&flow(1).key), None);
        assert_eq!(t.lookup(&c.reverse_key()), Some((ci, Dir::Reverse)));
        t.retain(|f| f.key.sport != 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(&flow(2).key), None);
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn records_round_trip_through_json() {
        let cfg = CoreConfig::default();
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut f = flow(9);
        f.key.proto = Proto::Tcp;
        f.location = Location::Remote("192.0.2.1:50103".parse().unwrap());
        f.activity = Activity::new(Proto::Tcp, t0);
        f.activity.touch(Dir::Forward, &tcp(TCP_SYN), t0, &cfg);
        f.activity
            .touch(Dir::Reverse, &tcp(TCP_SYN | TCP_ACK), t0, &cfg);
        let later = t0 + Duration::from_millis(1500);
        let rec = FlowRecord::of(&f, later);
        assert_eq!(rec.activity.idle_ms, 1500);
        assert!(rec.activity.established);
        let json = serde_json::to_string(&rec).unwrap();
        let back: FlowRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        let g = back.to_flow(later);
        assert_eq!(g.key, f.key);
        assert_eq!(g.reverse_key(), f.reverse_key());
        assert_eq!(g.location, f.location);
        assert_eq!(g.activity.state(), "established");
        assert_eq!(g.activity.idle(later), Duration::from_millis(1500));
        assert_eq!(g.activity.deadline(&cfg), f.activity.deadline(&cfg));
        let mut recs = FlowRecords {
            flows: vec![rec],
            replies: vec![],
        };
        recs.age(Duration::from_secs(2));
        assert_eq!(recs.flows[0].activity.idle_ms, 3500);
        assert!(serde_json::from_str::<KeyRecord>(
            r#"{"proto":"sctp","src":"1.2.3.4:1","dst":"1.2.3.4:2"}"#
        )
        .is_err());
    }
}
