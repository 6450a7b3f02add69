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
    /// Where external clients' addresses come from (`proxytun client add`,
    /// docs/join.md): a block of `services` the cluster never hands out.
    /// Absent: this node's ServiceIP block, which only the local store
    /// allows (with etcd or Oakestra `client add` then asks for this key).
    pub client_range: Option<Ipv4Net>,
}

impl NetworkSection {
    /// `client_range` must be a network (no host bits) inside `services`
    /// with room for a client: at most a /30 (its network and broadcast
    /// addresses are never given out).
    pub fn check_client_range(&self) -> Result<(), (&'static str, String)> {
        const KEY: &str = "network.client_range";
        let Some(r) = self.client_range else {
            return Ok(());
        };
        if r.addr() != r.network() {
            return Err((
                KEY,
                format!(
                    "{r} is not a network address (host bits set); did you mean {}?",
                    r.trunc()
                ),
            ));
        }
        if r.prefix_len() > 30 {
            return Err((
                KEY,
                format!("{r} is too small: a client range needs at least a /30 (its network and broadcast addresses are never given out)"),
            ));
        }
        if !self.services.contains(&r) {
            return Err((
                KEY,
                format!(
                    "{r} is outside network.services {}: clients get ServiceIP-range addresses; pick a block inside it, e.g. its top /24",
                    self.services
                ),
            ));
        }
        Ok(())
    }
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
            client_range: None,
        }
    }
}
