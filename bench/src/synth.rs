//! The synthetic cluster the in-process benches feed: `services` services,
//! each with a round-robin and a closest ServiceIP and `per_service`
//! instances spread over `peers` remote peers, all in one address plan.
//! `bench control` builds its tables from it and `bench dns` its zone, so
//! both derive every address and name the same way.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use envmgr::model::{
    DualAddr, Instance, InstanceKey, NodeInfo, Peer, Placement, Service, ServiceName, Snapshot,
};
use envmgr::plan::AddressPlan;

/// A synthetic cluster, as one node sees it.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// The address plan everything is allocated from.
    pub plan: AddressPlan,
    /// How many services.
    pub services: u32,
    /// Instances per service.
    pub per_service: u32,
    /// Peer nodes the instances run on (numbered from 1).
    pub peers: u32,
    /// The name of the node whose view this is.
    pub node: &'static str,
    /// The name of peer `p`.
    pub peer_name: fn(u32) -> String,
    /// The tunnel endpoint of peer `p`.
    pub peer_endpoint: fn(u32) -> SocketAddr,
}

impl Synthetic {
    fn vip(&self, offset: u64) -> DualAddr {
        let v4 = Ipv4Addr::from(u32::from(self.plan.services.network()) + offset as u32);
        self.plan.service_pair(v4)
    }

    /// The round-robin ServiceIP of service `s`.
    pub fn rr(&self, s: u32) -> DualAddr {
        self.vip(1 + u64::from(s))
    }

    /// The closest ServiceIP of service `s`.
    pub fn closest(&self, s: u32) -> DualAddr {
        self.vip(1 + u64::from(self.services) + u64::from(s))
    }

    /// The instance IP of instance `g` (counted over all services).
    pub fn iip(&self, g: u64) -> DualAddr {
        self.vip(1 + 2 * u64::from(self.services) + g)
    }

    /// The peer instance `g` runs on.
    pub fn peer_of(&self, g: u64) -> u32 {
        (g % u64::from(self.peers)) as u32 + 1
    }

    /// The namespace address of instance `g`, in its peer's subnet.
    pub fn ns(&self, g: u64) -> DualAddr {
        let mut p = self.plan.clone();
        p.node_index = self.peer_of(g);
        let slot = (g / u64::from(self.peers)) as u32 + 2;
        p.cluster_pair(Ipv4Addr::from(
            u32::from(p.node_subnet().network()).wrapping_add(slot),
        ))
    }

    /// The tunnel endpoint of peer `p`.
    pub fn endpoint(&self, p: u32) -> SocketAddr {
        (self.peer_endpoint)(p)
    }

    /// The `app/service` name of service `s`.
    pub fn name(&self, s: u32) -> ServiceName {
        ServiceName {
            app: format!("app{}", s / 10),
            service: format!("svc{s}"),
        }
    }

    /// The node's view with every service, every (remote) instance and
    /// every peer.
    pub fn snapshot(&self) -> Snapshot {
        let mut services = BTreeMap::new();
        let mut instances = BTreeMap::new();
        for s in 0..self.services {
            let name = self.name(s);
            for k in 0..self.per_service {
                let g = u64::from(s) * u64::from(self.per_service) + u64::from(k);
                let key = InstanceKey {
                    name: name.clone(),
                    number: k + 1,
                };
                instances.insert(
                    key.clone(),
                    Instance {
                        key,
                        ns_addr: self.ns(g),
                        instance_ip: self.iip(g),
                        placement: Placement::Remote {
                            node: (self.peer_name)(self.peer_of(g)),
                        },
                    },
                );
            }
            services.insert(
                name.clone(),
                Service {
                    name,
                    rr_ip: self.rr(s),
                    closest_ip: Some(self.closest(s)),
                    affinity: Default::default(),
                },
            );
        }
        let peers = (1..=self.peers)
            .map(|p| {
                let name = (self.peer_name)(p);
                let endpoint = self.endpoint(p);
                (
                    name.clone(),
                    Peer {
                        name,
                        endpoint,
                        public_key: None,
                    },
                )
            })
            .collect();
        Snapshot {
            version: 1,
            node: NodeInfo {
                name: self.node.into(),
                subnet: self.plan.node_subnet(),
                subnet6: self.plan.node_subnet6(),
                service_range: self.plan.services,
                service_range6: self.plan.services6,
            },
            services,
            instances,
            peers,
            policy: Default::default(),
            clients: Default::default(),
        }
    }
}
