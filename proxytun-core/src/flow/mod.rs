//! Flow keys, per-connection tracking, the flow table and its timeouts.
//!
//! A flow is a client's connection to a VIP after the slow path chose its
//! instance. It is reachable by two exact 5-tuple keys (the client's packets
//! and the instance's replies) that both point at one slot of a slab, so a
//! hit costs one hash lookup and no allocation.
//!
//! The maps of the packet core hash with [`FastMap`]'s foldhash, not std's
//! SipHash; see there for why that is safe enough and what it buys.

mod activity;
mod key;
mod record;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::map::FastMap;
use crate::table::Location;
use crate::time::serialize_ms;

/// Re-exported from [`crate::config`], where the limits moved.
pub use crate::config::CoreConfig;
/// Re-exported from [`crate::time`], where it moved.
pub use crate::time::min_opt;
pub use activity::{Activity, ActivityRecord};
pub use key::{Dir, FlowKey};
pub use record::{FlowRecord, FlowRecords, ImportReport, KeyRecord, ReplyRecord};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
