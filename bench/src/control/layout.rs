//! The simulated cluster: which node runs which instance of which service,
//! at which addresses, as the records of the etcd key schema
//! (`envmgr::cluster::keys`, the same types the daemons write).
//!
//! Pure arithmetic, so the load is reproducible and the tests can check it
//! without an etcd. Every
//! address comes from the owner node's block of the ServiceIP range, as a
//! real node would allocate it (`plan.alloc_block()`), so the records are
//! ones the daemon itself could have written.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{bail, Result};
use envmgr::cluster::keys::{InstanceRecord, NodeRecord};
use envmgr::model::{DualAddr, InstanceKey, Service, ServiceName};
use envmgr::plan::AddressPlan;

/// The tunnel port the simulated nodes advertise.
pub const TUNNEL_PORT: u16 = 50103;

/// One simulated instance and its place in the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimInstance {
    /// `app/service/n`.
    pub key: InstanceKey,
    /// The node index it runs on (1-based, like leased indexes).
    pub node: u32,
    /// Its record as written to etcd.
    pub record: InstanceRecord,
}

/// The shape of the simulated cluster and the address plan it lives in.
///
/// Node `i` (1..=nodes) holds instances `g` with `g / per_node == i - 1`;
/// instance `g` serves service `g % services` and has number
/// `g / services + 1`, so instance numbers are unique per service and the
/// services' instances are spread over many nodes. Service `s` was created
/// by node `s % nodes + 1`, which allocated its two ServiceIPs.
#[derive(Debug, Clone)]
pub struct Layout {
    /// How many simulated nodes.
    pub nodes: u32,
    /// Instances per node.
    pub per_node: u32,
    /// How many services the instances serve.
    pub services: u32,
    /// The ranges (the index in it is unused: each node has its own).
    pub plan: AddressPlan,
}

/// Free offsets a node keeps in its block for instances added later (the
/// changes of the latency measurement).
pub const SPARE_PER_NODE: u32 = 32;

impl Layout {
    /// Checks that the layout fits the plan: node indexes, per-node subnets
    /// and the per-node ServiceIP blocks.
    pub fn new(nodes: u32, per_node: u32, services: u32, plan: AddressPlan) -> Result<Layout> {
        if nodes == 0 || per_node == 0 || services == 0 {
            bail!("--nodes, --per-node and --services must be at least 1");
        }
        let l = Layout {
            nodes,
            per_node,
            services,
            plan,
        };
        // Index 0 is never leased and the watching node needs one more.
        if u64::from(nodes) + 2 > l.plan.max_nodes() {
            bail!(
                "--nodes {nodes}: the address plan holds {} node indexes (0 unused, one for the watcher)",
                l.plan.max_nodes()
            );
        }
        let block = 1u64 << (32 - u32::from(l.plan.node_prefix));
        let need = u64::from(l.first_instance_offset() + per_node + SPARE_PER_NODE);
        if need >= block - 1 {
            bail!(
                "a node's block of the ServiceIP range has {block} addresses, the layout needs {need} \
                 ({} ServiceIPs of its services, {per_node} instance IPs, {SPARE_PER_NODE} spare): \
                 use more --nodes or fewer --services/--per-node",
                2 * l.services_per_node()
            );
        }
        if u64::from(per_node) + 2 >= block {
            bail!("--per-node {per_node} does not fit a node subnet of {block} addresses");
        }
        Ok(l)
    }

    /// The total number of instances.
    pub fn instances(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.per_node)
    }

    /// How many services each node created (rounded up).
    pub fn services_per_node(&self) -> u32 {
        self.services.div_ceil(self.nodes)
    }

    fn first_instance_offset(&self) -> u32 {
        1 + 2 * self.services_per_node()
    }

    fn plan_of(&self, index: u32) -> AddressPlan {
        let mut p = self.plan.clone();
        p.node_index = index;
        p
    }

    fn block_addr(&self, index: u32, offset: u32) -> DualAddr {
        let p = self.plan_of(index);
        let v4 = Ipv4Addr::from(u32::from(p.alloc_block().network()) + offset);
        p.service_pair(v4)
    }

    /// The name of simulated node `i`.
    pub fn node_name(&self, i: u32) -> String {
        format!("sim{i:04}")
    }

    /// The record of simulated node `i`; its endpoint is a made-up
    /// underlay address that no traffic is ever sent to.
    pub fn node_record(&self, i: u32) -> NodeRecord {
        NodeRecord {
            name: self.node_name(i),
            index: i,
            endpoint: SocketAddr::from((
                Ipv4Addr::new(10, 77, (i >> 8) as u8, (i & 0xff) as u8),
                TUNNEL_PORT,
            )),
            public_key: None,
        }
    }

    /// The name of service `s`: ten services per app.
    pub fn service_name(&self, s: u32) -> ServiceName {
        ServiceName {
            app: format!("app{}", s / 10),
            service: format!("svc{s}"),
        }
    }

    /// Service `s` with the ServiceIPs its creator node allocated.
    pub fn service(&self, s: u32) -> Service {
        let creator = s % self.nodes + 1;
        let k = s / self.nodes;
        Service {
            name: self.service_name(s),
            rr_ip: self.block_addr(creator, 1 + 2 * k),
            closest_ip: Some(self.block_addr(creator, 2 + 2 * k)),
            affinity: Default::default(),
        }
    }

    /// Instance `g` of the initial load (0-based over the whole cluster).
    pub fn instance(&self, g: u64) -> SimInstance {
        let node = (g / u64::from(self.per_node)) as u32 + 1;
        let slot = (g % u64::from(self.per_node)) as u32;
        let s = (g % u64::from(self.services)) as u32;
        let number = (g / u64::from(self.services)) as u32 + 1;
        self.instance_at(s, number, node, slot)
    }

    /// The number the initial load leaves free first in service `s`.
    pub fn next_number(&self, s: u32) -> u32 {
        let total = self.instances();
        let below = total / u64::from(self.services)
            + u64::from(u64::from(s) < total % u64::from(self.services));
        below as u32 + 1
    }

    /// An instance of service `s` numbered `number` on node `node`, in slot
    /// `slot` of that node (slots `per_node..per_node + SPARE_PER_NODE` are
    /// the spare ones for later additions).
    pub fn instance_at(&self, s: u32, number: u32, node: u32, slot: u32) -> SimInstance {
        let p = self.plan_of(node);
        let ns4 = Ipv4Addr::from(u32::from(p.node_subnet().network()) + 2 + slot);
        SimInstance {
            key: InstanceKey {
                name: self.service_name(s),
                number,
            },
            node,
            record: InstanceRecord {
                node: self.node_name(node),
                ns_addr: p.cluster_pair(ns4),
                instance_ip: self.block_addr(node, self.first_instance_offset() + slot),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use std::collections::HashSet;

    use envmgr::cluster::keys::Keys;

    use super::*;

    fn layout() -> Layout {
        Layout::new(200, 50, 1000, AddressPlan::with_default_ranges(0)).unwrap()
    }

    #[test]
    fn every_address_and_instance_key_is_unique() {
        let l = layout();
        let mut vips = HashSet::new();
        let mut keys = HashSet::new();
        let mut ns = HashSet::new();
        for s in 0..l.services {
            let svc = l.service(s);
            assert!(vips.insert(svc.rr_ip.v4), "rr of {s}");
            assert!(vips.insert(svc.closest_ip.unwrap().v4), "closest of {s}");
        }
        for g in 0..l.instances() {
            let i = l.instance(g);
            assert!(vips.insert(i.record.instance_ip.v4), "iip of {g}");
            assert!(ns.insert(i.record.ns_addr.v4), "ns of {g}");
            assert!(keys.insert(i.key.clone()), "key of {g}");
            assert!(l.plan.services.contains(&i.record.instance_ip.v4));
            assert!(l.plan.cluster.contains(&i.record.ns_addr.v4));
        }
        assert_eq!(keys.len(), 10_000);
        // The spare slots do not collide with the load either.
        let extra = l.instance_at(3, l.next_number(3), 7, l.per_node + SPARE_PER_NODE - 1);
        assert!(!vips.contains(&extra.record.instance_ip.v4));
        assert!(!keys.contains(&extra.key));
    }

    #[test]
    fn next_number_follows_the_load() {
        let l = Layout::new(3, 5, 4, AddressPlan::with_default_ranges(0)).unwrap();
        // 15 instances over 4 services: services 0..3 get 4,4,4,3.
        let mut max = [0u32; 4];
        for g in 0..l.instances() {
            let i = l.instance(g);
            let s: usize = i.key.name.service[3..].parse().unwrap();
            max[s] = max[s].max(i.key.number);
        }
        for (s, m) in max.iter().enumerate() {
            assert_eq!(l.next_number(s as u32), m + 1, "service {s}");
        }
    }

    #[test]
    fn layouts_that_do_not_fit_are_refused() {
        let p = AddressPlan::with_default_ranges(0);
        assert!(Layout::new(255, 1, 1, p.clone()).is_err(), "too many nodes");
        assert!(
            Layout::new(2, 50, 1000, p.clone()).is_err(),
            "block too small"
        );
        assert!(Layout::new(0, 1, 1, p).is_err());
    }

    #[test]
    fn keys_and_values_follow_the_schema() {
        let l = layout();
        let k = Keys::new("/proxytun/");
        let i = l.instance(0);
        assert_eq!(k.instance(&i.key), "/proxytun/instances/app0/svc0/1");
        assert_eq!(k.service(&i.key.name), "/proxytun/services/app0/svc0");
        assert_eq!(k.subnet(3), "/proxytun/subnets/3");
        assert_eq!(k.node("sim0001"), "/proxytun/nodes/sim0001");
        assert_eq!(
            k.vip(Ipv4Addr::new(10, 30, 1, 1)),
            "/proxytun/vips/10.30.1.1"
        );
        let v = serde_json::to_value(&i.record).unwrap();
        assert_eq!(v["node"], "sim0001");
        assert_eq!(v["ns_addr"]["v4"], "10.18.1.2");
        assert!(v["instance_ip"]["v6"].is_string());
        let n = serde_json::to_value(l.node_record(1)).unwrap();
        assert_eq!(n["endpoint"], "10.77.0.1:50103");
        assert_eq!(n["index"], 1);
        // Service 0 was created by node 1: its first two block addresses.
        let s = l.service(0);
        assert_eq!(s.rr_ip.v4, Ipv4Addr::new(10, 30, 1, 1));
        assert_eq!(s.closest_ip.unwrap().v4, Ipv4Addr::new(10, 30, 1, 2));
    }
}
