//! The address plan: which subnet and which ServiceIP block a node owns.
//!
//! Every address we hand out has an IPv4 and an IPv6 form. The IPv6 ranges
//! mirror the IPv4 ones: the address at offset `k` in the v4 range has the v6
//! address at offset `k` in the v6 range. So one allocation gives both, and a
//! v6 address reads back to its v4 twin at a glance (`10.30.1.7` <->
//! `fdff:30::107`).
//!
//! Nodes allocate ServiceIPs and instance IPs from their own block of the
//! ServiceIP range (block `index`, the same index that picks their subnet), so
//! nodes of a static cluster never hand out the same address without talking
//! to each other. An orchestrator that wants one ServiceIP for a service on
//! every node passes it explicitly when it attaches or registers.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::model::DualAddr;

/// Why a plan is inconsistent; names the config key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PlanError {
    /// The config key at fault, e.g. `network.cluster6`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// The cluster-wide ranges and this node's index in them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPlan {
    /// The container range, cut into one subnet per node.
    pub cluster: Ipv4Net,
    /// Its IPv6 mirror.
    pub cluster6: Ipv6Net,
    /// The prefix length of one node's subnet and of one allocation block.
    pub node_prefix: u8,
    /// The ServiceIP range, routed into the TUN.
    pub services: Ipv4Net,
    /// Its IPv6 mirror.
    pub services6: Ipv6Net,
    /// This node's index: picks its subnet and its ServiceIP block.
    pub node_index: u32,
}

impl AddressPlan {
    /// The documented default ranges (`10.18.0.0/16` with `fdff:18::/112`,
    /// /24 per node, ServiceIPs `10.30.0.0/16` with `fdff:30::/112`) for
    /// node `node_index`. The config's defaults are these.
    pub fn with_default_ranges(node_index: u32) -> Self {
        Self {
            cluster: Ipv4Net::new(Ipv4Addr::new(10, 18, 0, 0), 16).expect("static prefix"),
            cluster6: Ipv6Net::new(Ipv6Addr::new(0xfdff, 0x18, 0, 0, 0, 0, 0, 0), 112)
                .expect("static prefix"),
            node_prefix: 24,
            services: Ipv4Net::new(Ipv4Addr::new(10, 30, 0, 0), 16).expect("static prefix"),
            services6: Ipv6Net::new(Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0), 112)
                .expect("static prefix"),
            node_index,
        }
    }

    /// Checks that the ranges fit together and the index is in range.
    pub fn validate(&self) -> Result<(), PlanError> {
        let err = |key, message: String| Err(PlanError { key, message });
        if self.node_prefix > 30 || self.node_prefix < self.cluster.prefix_len() {
            return err(
                "network.node_prefix",
                format!(
                    "must be between the cluster prefix /{} and /30, got /{}",
                    self.cluster.prefix_len(),
                    self.node_prefix
                ),
            );
        }
        if self.node_prefix < self.services.prefix_len() {
            return err(
                "network.node_prefix",
                format!(
                    "must not be shorter than the services prefix /{}",
                    self.services.prefix_len()
                ),
            );
        }
        if self.cluster6.prefix_len() > 96 + self.cluster.prefix_len() {
            return err(
                "network.cluster6",
                format!(
                    "must hold at least as many addresses as network.cluster: prefix /{} or shorter",
                    96 + self.cluster.prefix_len()
                ),
            );
        }
        if self.services6.prefix_len() > 96 + self.services.prefix_len() {
            return err(
                "network.services6",
                format!(
                    "must hold at least as many addresses as network.services: prefix /{} or shorter",
                    96 + self.services.prefix_len()
                ),
            );
        }
        if self.cluster.contains(&self.services.network())
            || self.services.contains(&self.cluster.network())
        {
            return err(
                "network.services",
                format!(
                    "{} overlaps network.cluster {}",
                    self.services, self.cluster
                ),
            );
        }
        let max = self.max_nodes();
        if u64::from(self.node_index) >= max {
            return err(
                "node.index",
                format!(
                    "must be below {max} for these ranges, got {}",
                    self.node_index
                ),
            );
        }
        Ok(())
    }

    /// How many node indexes these ranges hold: one subnet of the cluster
    /// range and one block of the ServiceIP range per node. Valid indexes
    /// are `0..max_nodes()`; a cluster store leases them out.
    pub fn max_nodes(&self) -> u64 {
        let bits = |outer: u8| u32::from(self.node_prefix.saturating_sub(outer)).min(63);
        let nodes = 1u64 << bits(self.cluster.prefix_len());
        let blocks = 1u64 << bits(self.services.prefix_len());
        nodes.min(blocks)
    }

    /// This node's IPv4 subnet (containers and the bridge live here).
    pub fn node_subnet(&self) -> Ipv4Net {
        nth_subnet(self.cluster, self.node_prefix, self.node_index)
    }

    /// This node's IPv6 subnet, the mirror of [`Self::node_subnet`].
    pub fn node_subnet6(&self) -> Ipv6Net {
        let s = self.node_subnet();
        let len = self.cluster6.prefix_len() + (self.node_prefix - self.cluster.prefix_len());
        let net = mirror(self.cluster, self.cluster6, s.network());
        Ipv6Net::new(net, len).expect("validated prefix").trunc()
    }

    /// The bridge's (gateway's) addresses: the first host of the subnet.
    pub fn gateway(&self) -> DualAddr {
        gateway_of(self.node_subnet(), self.node_subnet6())
    }

    /// The block of the ServiceIP range this node allocates from.
    pub fn alloc_block(&self) -> Ipv4Net {
        nth_subnet(self.services, self.node_prefix, self.node_index)
    }

    /// The v4 address in the container range with its v6 mirror.
    pub fn cluster_pair(&self, v4: Ipv4Addr) -> DualAddr {
        DualAddr {
            v4,
            v6: mirror(self.cluster, self.cluster6, v4),
        }
    }

    /// The v4 address in the ServiceIP range with its v6 mirror.
    pub fn service_pair(&self, v4: Ipv4Addr) -> DualAddr {
        DualAddr {
            v4,
            v6: mirror(self.services, self.services6, v4),
        }
    }

    /// The v4 twin of a v6 address in the ServiceIP range, if it is one.
    pub fn service_v4_of(&self, v6: Ipv6Addr) -> Option<Ipv4Addr> {
        unmirror(self.services, self.services6, v6)
    }

    /// The v4 twin of a v6 address in the container range, if it is one.
    pub fn cluster_v4_of(&self, v6: Ipv6Addr) -> Option<Ipv4Addr> {
        unmirror(self.cluster, self.cluster6, v6)
    }
}

fn nth_subnet(range: Ipv4Net, prefix: u8, n: u32) -> Ipv4Net {
    let step = 1u64 << (32 - u32::from(prefix));
    let base = u64::from(u32::from(range.network()));
    let addr = (base + step * u64::from(n)) as u32;
    Ipv4Net::new(Ipv4Addr::from(addr), prefix).expect("prefix <= 32")
}

fn offset4(a: Ipv4Addr, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a).wrapping_add(k))
}

/// The gateway of a node subnet pair: the first address of each (the
/// bridge's), for whoever knows the subnets but not the whole plan (the
/// CNI plugin reads them from `GET /v1/status`).
pub fn gateway_of(subnet: Ipv4Net, subnet6: Ipv6Net) -> DualAddr {
    let v4 = offset4(subnet.network(), 1);
    DualAddr {
        v4,
        v6: mirror(subnet, subnet6, v4),
    }
}

/// The v6 address at the same offset in `r6` as `a` has in `r4`.
pub fn mirror(r4: Ipv4Net, r6: Ipv6Net, a: Ipv4Addr) -> Ipv6Addr {
    let k = u32::from(a) - u32::from(r4.network());
    Ipv6Addr::from(u128::from(r6.network()) + u128::from(k))
}

/// The inverse of [`mirror`]; `None` when `a` is not a mirror of `r4`.
pub fn unmirror(r4: Ipv4Net, r6: Ipv6Net, a: Ipv6Addr) -> Option<Ipv4Addr> {
    if !r6.contains(&a) {
        return None;
    }
    let k = u128::from(a) - u128::from(r6.network());
    let size = 1u128 << (32 - u32::from(r4.prefix_len()));
    (k < size).then(|| offset4(r4.network(), k as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(index: u32) -> AddressPlan {
        AddressPlan::with_default_ranges(index)
    }

    #[test]
    fn default_ranges_are_the_documented_ones() {
        let p = plan(1);
        assert_eq!(p.cluster.to_string(), "10.18.0.0/16");
        assert_eq!(p.cluster6.to_string(), "fdff:18::/112");
        assert_eq!(p.node_prefix, 24);
        assert_eq!(p.services.to_string(), "10.30.0.0/16");
        assert_eq!(p.services6.to_string(), "fdff:30::/112");
    }

    #[test]
    fn node_index_picks_subnet_and_block() {
        let p = plan(3);
        p.validate().expect("valid");
        assert_eq!(p.node_subnet().to_string(), "10.18.3.0/24");
        assert_eq!(p.node_subnet6().to_string(), "fdff:18::300/120");
        assert_eq!(p.alloc_block().to_string(), "10.30.3.0/24");
        assert_eq!(p.gateway().v4, Ipv4Addr::new(10, 18, 3, 1));
        assert_eq!(
            p.gateway().v6,
            "fdff:18::301".parse::<Ipv6Addr>().expect("v6")
        );
    }

    #[test]
    fn mirror_round_trips() {
        let p = plan(1);
        let a = Ipv4Addr::new(10, 30, 1, 7);
        let pair = p.service_pair(a);
        assert_eq!(pair.v6, "fdff:30::107".parse::<Ipv6Addr>().expect("v6"));
        assert_eq!(p.service_v4_of(pair.v6), Some(a));
        assert_eq!(p.service_v4_of("fdff:30::1:0".parse().expect("v6")), None);
        assert_eq!(p.service_v4_of("fdff:31::1".parse().expect("v6")), None);
    }

    #[test]
    fn bad_plans_name_the_key() {
        let mut p = plan(256);
        assert_eq!(p.validate().expect_err("index").key, "node.index");
        p = plan(1);
        p.cluster6 = "fdff:18::/120".parse().expect("net");
        assert_eq!(p.validate().expect_err("small v6").key, "network.cluster6");
        p = plan(1);
        p.services = "10.18.0.0/16".parse().expect("net");
        assert_eq!(p.validate().expect_err("overlap").key, "network.services");
    }
}
