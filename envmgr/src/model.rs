//! The node's view of the cluster: plain data, no I/O.
//!
//! Everything here is serialisable because the same types are the store's
//! on-disk records and the API's JSON. A [`Snapshot`] is an immutable copy of
//! the whole view; readers (the dataplane, the resolver) never lock it.

//!
//! Names live in `names.rs` and the isolation policy in `policy.rs`; both
//! are re-exported here, so `model::ServiceName` and `model::Policy` read
//! as before.

mod affinity;
mod client;
mod names;
mod policy;
mod ports;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub use affinity::{Affinity, AffinityMode, DEFAULT_AFFINITY_TIMEOUT_S, MAX_AFFINITY_TIMEOUT_S};
pub use client::Client;
pub use names::{check_label, check_runtime_id, valid_ifname, InstanceKey, NameError, ServiceName};
pub use policy::{
    AllowRule, Policy, PolicyError, PortRange, RuleTarget, StaleVersion, MAX_ALLOW_RULES,
    MAX_RULE_PORTS,
};
pub use ports::{check_mappings, PortError, PortMapping, Protocol};

/// A pair of addresses, one per family: every address we hand out has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DualAddr {
    /// The IPv4 address.
    pub v4: Ipv4Addr,
    /// The IPv6 address.
    pub v6: Ipv6Addr,
}

/// A service and its ServiceIPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its name.
    pub name: ServiceName,
    /// The round-robin ServiceIP: flows to it rotate over all instances.
    pub rr_ip: DualAddr,
    /// The closest ServiceIP: flows to it go to an instance on the node with
    /// the lowest measured round-trip time (this node counts as 0).
    ///
    /// `None` only in a state written before closest existed; the manager
    /// allocates one when it opens such a state, so a published snapshot
    /// always has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip: Option<DualAddr>,
    /// Client affinity (docs/api.md): absent in records written before it
    /// existed or that keep the default.
    #[serde(default, skip_serializing_if = "Affinity::is_default")]
    pub affinity: Affinity,
}

/// Where an instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// Attached on this node, in the network namespace `netns`.
    Local {
        /// The namespace the container runs in (a bind-mounted path or `/proc/<pid>/ns/net`).
        netns: PathBuf,
        /// The pid the caller named, if it attached by pid.
        pid: Option<u32>,
        /// The host end of the veth pair, enslaved to the bridge.
        host_veth: String,
        /// The interface name inside the container.
        ifname: String,
        /// The runtime's id for the container, when a runtime (CNI, CNM)
        /// attached it; what DEL and GC find it by.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_id: Option<String>,
        /// The node ports published to this container.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ports: Vec<PortMapping>,
        /// True for the one attachment of its netns whose interface holds
        /// the default routes (a netns may be attached several times, by
        /// interface name; the kernel allows one default route). States
        /// written before several attachments per netns lack it: true.
        #[serde(default = "yes")]
        default_route: bool,
    },
    /// Registered by an orchestrator; runs on the named peer node.
    Remote {
        /// The peer's node name; it must be a registered peer.
        node: String,
    },
}

/// Serde's default for [`Placement::Local`]'s `default_route`.
fn yes() -> bool {
    true
}

impl Placement {
    /// The node ports published to a local instance (none for a remote one).
    pub fn ports(&self) -> &[PortMapping] {
        match self {
            Placement::Local { ports, .. } => ports,
            Placement::Remote { .. } => &[],
        }
    }

    /// The runtime's container id and the interface, for a local
    /// attachment a runtime (CNI, CNM) made: what DEL, GC and Leave find
    /// it by.
    pub fn runtime_attachment(&self) -> Option<(&str, &str)> {
        match self {
            Placement::Local {
                container_id: Some(c),
                ifname,
                ..
            } => Some((c, ifname)),
            _ => None,
        }
    }
}

/// One instance of a service: a container somewhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Which instance of which service.
    pub key: InstanceKey,
    /// Its address inside its namespace, on its node's subnet; changes if it moves.
    pub ns_addr: DualAddr,
    /// Its instance IP in the ServiceIP range: stable, pins this instance.
    pub instance_ip: DualAddr,
    /// Where it runs.
    pub placement: Placement,
}

impl Instance {
    /// True when the instance is attached on this node.
    pub fn is_local(&self) -> bool {
        matches!(self.placement, Placement::Local { .. })
    }
}

/// A member node that tunnel datagrams may come from and go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The node's name, as instances refer to it.
    pub name: String,
    /// Its underlay address and tunnel port.
    pub endpoint: SocketAddr,
    /// Its public key (64 lowercase hex characters) with per-node tunnel
    /// keys: its handshakes must prove it; absent with the cluster key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// Checks a node public key's text (64 hex characters) and returns it in
/// lowercase; the message says what is wrong.
pub fn check_public_key(key: &str) -> Result<String, String> {
    let k = key.trim();
    if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "public_key {key:?} is not 64 hex characters (`proxytun pubkey` on that node prints it)"
        ));
    }
    Ok(k.to_ascii_lowercase())
}

/// This node's identity and address plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// The IPv4 subnet its containers get addresses from.
    pub subnet: Ipv4Net,
    /// The IPv6 subnet its containers get addresses from.
    pub subnet6: Ipv6Net,
    /// The whole ServiceIP range (v4), routed into the TUN.
    pub service_range: Ipv4Net,
    /// The whole ServiceIP range (v6), routed into the TUN.
    pub service_range6: Ipv6Net,
}

/// An immutable copy of the node's view, published on every change.
///
/// The dataplane and the resolver hold an `Arc<Snapshot>` and never lock it;
/// the control plane builds a new one and swaps it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Increases by one on every published change.
    pub version: u64,
    /// This node.
    pub node: NodeInfo,
    /// Every known service by name.
    pub services: BTreeMap<ServiceName, Service>,
    /// Every known instance, local and remote.
    pub instances: BTreeMap<InstanceKey, Instance>,
    /// Every member node but this one, by name.
    pub peers: BTreeMap<String, Peer>,
    /// The cluster's isolation policy; the default lets everything reach
    /// everything, as before policies existed.
    #[serde(default)]
    pub policy: Policy,
    /// The external clients this node is the gateway of (docs/join.md).
    #[serde(default)]
    pub clients: BTreeMap<String, Client>,
}

/// The instances of one service in number order: keys sort by service
/// first, so they are one contiguous range of the map.
pub fn instances_of<'a>(
    instances: &'a BTreeMap<InstanceKey, Instance>,
    name: &ServiceName,
) -> impl Iterator<Item = &'a Instance> + 'a {
    let lo = InstanceKey {
        name: name.clone(),
        number: 0,
    };
    let hi = InstanceKey {
        name: name.clone(),
        number: u32::MAX,
    };
    instances.range(lo..=hi).map(|(_, i)| i)
}

impl Snapshot {
    /// The instances of one service, in number order.
    pub fn instances_of<'a>(
        &'a self,
        name: &ServiceName,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        instances_of(&self.instances, name)
    }
}
