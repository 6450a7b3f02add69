//! The flow state as records a restarted daemon reads back: what
//! `Dataplane::export_flows` writes and `Dataplane::import_flows` takes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Activity, ActivityRecord, Flow, FlowKey};
use crate::packet::Proto;
use crate::table::Location;

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
