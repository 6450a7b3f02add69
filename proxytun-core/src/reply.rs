//! The reply-address cache of a server node.
//!
//! When a remote client's packet arrives through the tunnel for a local
//! instance, the node remembers which peer sent it, keyed by the 5-tuple of
//! the instance's *reply*. Replies then go back to that peer unchanged: the
//! server node needs no table entry for the client at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::CoreConfig;
use super::flow::{Activity, FlowKey};
use super::map::FastMap;
use super::time::{min_opt, serialize_ms};

/// Where a local instance's replies to one remote client go.
#[derive(Debug, Clone)]
pub struct ReplyEntry {
    /// The peer node that sent the client's packets.
    pub peer: SocketAddr,
    /// The local instance (`app/service/n`).
    pub instance: Arc<str>,
    /// Counters and TCP state (forward = from the tunnel, reverse = replies).
    pub activity: Activity,
}

/// Reply entries by the reply's 5-tuple (local ns:port -> remote iip:port).
///
/// Looked up on every packet a server node receives or answers, so it uses
/// the core's fast hasher ([`FastMap`]).
#[derive(Debug, Default)]
pub struct ReplyCache {
    map: FastMap<FlowKey, ReplyEntry>,
}

impl ReplyCache {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entry for a reply key.
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut ReplyEntry> {
        self.map.get_mut(key)
    }

    /// Records a new entry (the caller checked capacity).
    pub fn insert(&mut self, key: FlowKey, entry: ReplyEntry) -> &mut ReplyEntry {
        self.map.entry(key).insert_entry(entry).into_mut()
    }

    /// Drops entries for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&FlowKey, &ReplyEntry) -> bool) {
        self.map.retain(|k, e| keep(k, e));
    }

    /// Removes expired entries; returns the earliest remaining deadline.
    pub fn expire(&mut self, now: Instant, cfg: &CoreConfig) -> Option<Instant> {
        let mut next = None;
        self.map.retain(|_, e| match e.activity.deadline(cfg) {
            Some(d) if d <= now => false,
            d => {
                next = min_opt(next, d);
                true
            }
        });
        next
    }

    /// Entries with their keys.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &ReplyEntry)> {
        self.map.iter()
    }
}

/// A reply-cache entry as the management API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplyView {
    /// `tcp`, `udp` or `icmp`.
    pub proto: &'static str,
    /// The local instance (`app/service/n`).
    pub instance: String,
    /// The local instance's namespace address and port.
    pub instance_addr: SocketAddr,
    /// The remote client's instance IP and port.
    pub client_iip: SocketAddr,
    /// The peer node replies go to.
    pub peer: SocketAddr,
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

impl ReplyView {
    /// Builds the view of one entry.
    pub fn new(key: &FlowKey, e: &ReplyEntry, now: Instant) -> ReplyView {
        ReplyView {
            proto: key.proto.name(),
            instance: e.instance.to_string(),
            instance_addr: SocketAddr::new(key.src, key.sport),
            client_iip: SocketAddr::new(key.dst, key.dport),
            peer: e.peer,
            state: e.activity.state(),
            packets: e.activity.packets,
            bytes: e.activity.bytes,
            idle: e.activity.idle(now),
        }
    }
}
