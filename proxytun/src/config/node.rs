//! `[node]` and `[network]`: this node's name and index, and the address
//! plan its subnet and ServiceIPs are cut from.

use envmgr::plan::AddressPlan;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

/// `[node]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name (a DNS label).
    pub name: String,
    /// Picks the node's subnet and its ServiceIP allocation block. Required
    /// with the local store; with etcd it is leased and must be absent.
    pub index: Option<u32>,
}

/// `[network]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// The container range, one subnet per node.
    pub cluster: Ipv4Net,
    /// Its IPv6 mirror.
    pub cluster6: Ipv6Net,
    /// The prefix length of a node's subnet.
    pub node_prefix: u8,
    /// The ServiceIP range.
    pub services: Ipv4Net,
    /// Its IPv6 mirror.
    pub services6: Ipv6Net,
    /// Containers reach addresses outside the cluster (the underlay, the
    /// internet) with the node's address. Cluster addresses are never
    /// masqueraded.
    pub masquerade: bool,
    /// Apps whose containers are not masqueraded even when `masquerade`
    /// is on (they need a route back to the container subnet).
    pub masquerade_except: Vec<String>,
}

impl Default for NetworkSection {
    fn default() -> Self {
        let p = AddressPlan::with_default_ranges(0);
        Self {
            cluster: p.cluster,
            cluster6: p.cluster6,
            node_prefix: p.node_prefix,
            services: p.services,
            services6: p.services6,
            masquerade: true,
            masquerade_except: Vec::new(),
        }
    }
}
