//! The manager's working form of the state: maps keyed like the
//! snapshot's, with the conversions to and from the store's [`State`] and
//! the published [`Snapshot`], and the address books the allocations check.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::settings::Settings;
use crate::error::{Error, Result};
use crate::model::{
    Instance, InstanceKey, NodeInfo, Peer, Placement, Policy, Service, ServiceName, Snapshot,
};
use crate::store::State;

/// The working form of the state: maps keyed like the snapshot's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Table {
    pub(super) version: u64,
    pub(super) services: BTreeMap<ServiceName, Service>,
    pub(super) instances: BTreeMap<InstanceKey, Instance>,
    pub(super) peers: BTreeMap<String, Peer>,
    pub(super) policy: Policy,
    pub(super) clients: BTreeMap<String, crate::model::Client>,
}

impl Table {
    /// Builds the table from a stored state, refusing duplicates and
    /// dangling references rather than guessing.
    pub(super) fn from_state(state: State, location: &str) -> anyhow::Result<Self> {
        let mut t = Table {
            version: state.version,
            services: BTreeMap::new(),
            instances: BTreeMap::new(),
            peers: BTreeMap::new(),
            policy: state.policy,
            clients: BTreeMap::new(),
        };
        let corrupt = |what: String| {
            anyhow::anyhow!(
                "{location} is inconsistent: {what}; fix or move it away to start empty"
            )
        };
        for s in state.services {
            if let Some(old) = t.services.insert(s.name.clone(), s) {
                return Err(corrupt(format!("service {} is listed twice", old.name)));
            }
        }
        for p in state.peers {
            if let Some(old) = t.peers.insert(p.name.clone(), p) {
                return Err(corrupt(format!("peer {} is listed twice", old.name)));
            }
        }
        for c in state.clients {
            if let Some(old) = t.clients.insert(c.name.clone(), c) {
                return Err(corrupt(format!("client {} is listed twice", old.name)));
            }
        }
        for i in state.instances {
            if !t.services.contains_key(&i.key.name) {
                return Err(corrupt(format!(
                    "instance {} has no service {}",
                    i.key, i.key.name
                )));
            }
            if let Placement::Remote { node } = &i.placement {
                if !t.peers.contains_key(node) {
                    return Err(corrupt(format!(
                        "instance {} runs on unknown peer {node}",
                        i.key
                    )));
                }
            }
            if let Some(old) = t.instances.insert(i.key.clone(), i) {
                return Err(corrupt(format!("instance {} is listed twice", old.key)));
            }
        }
        Ok(t)
    }

    /// The store's form of the table, for `settings`' node and plan.
    pub(super) fn to_state(&self, settings: &Settings) -> State {
        let mut s = State::empty(&settings.node_name, &settings.plan);
        s.version = self.version;
        s.services = self.services.values().cloned().collect();
        s.instances = self.instances.values().cloned().collect();
        s.peers = self.peers.values().cloned().collect();
        s.policy = self.policy.clone();
        s.clients = self.clients.values().cloned().collect();
        s
    }

    /// The readers' form of the table: what [`super::Manager`] publishes.
    pub(super) fn snapshot(&self, settings: &Settings) -> Snapshot {
        let plan = &settings.plan;
        Snapshot {
            version: self.version,
            node: NodeInfo {
                name: settings.node_name.clone(),
                subnet: plan.node_subnet(),
                subnet6: plan.node_subnet6(),
                service_range: plan.services,
                service_range6: plan.services6,
            },
            services: self.services.clone(),
            instances: self.instances.clone(),
            peers: self.peers.clone(),
            policy: self.policy.clone(),
            clients: self.clients.clone(),
        }
    }

    /// The instances of one service (keys sort by service, then number).
    pub(super) fn instances_of<'a>(
        &'a self,
        name: &ServiceName,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        crate::model::instances_of(&self.instances, name)
    }

    /// Every address of the ServiceIP range in use, with what uses it.
    pub(super) fn service_addrs(&self) -> BTreeMap<Ipv4Addr, String> {
        let mut used = BTreeMap::new();
        for s in self.services.values() {
            used.insert(s.rr_ip.v4, format!("the ServiceIP of {}", s.name));
            if let Some(c) = s.closest_ip {
                used.insert(c.v4, format!("the closest ServiceIP of {}", s.name));
            }
        }
        for i in self.instances.values() {
            used.insert(i.instance_ip.v4, format!("the instance IP of {}", i.key));
        }
        for c in self.clients.values() {
            used.insert(c.address, format!("the address of client {}", c.name));
        }
        used
    }

    /// Every namespace address in use, with what uses it.
    pub(super) fn ns_addrs(&self) -> BTreeMap<Ipv4Addr, String> {
        self.instances
            .values()
            .map(|i| (i.ns_addr.v4, format!("instance {}", i.key)))
            .collect()
    }

    /// Host veth names of local attachments.
    pub(super) fn host_veths(&self) -> BTreeSet<String> {
        self.instances
            .values()
            .filter_map(|i| match &i.placement {
                Placement::Local { host_veth, .. } => Some(host_veth.clone()),
                Placement::Remote { .. } => None,
            })
            .collect()
    }

    /// A copy of instance `key`, or a 404 naming it.
    pub(super) fn instance(&self, key: &InstanceKey) -> Result<Instance> {
        self.instances
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no instance {key}")))
    }

    /// Removes an instance, and its service when it was the last one.
    pub(super) fn remove_instance(&mut self, key: &InstanceKey) -> Option<Instance> {
        let inst = self.instances.remove(key)?;
        if self.instances_of(&key.name).next().is_none() {
            self.services.remove(&key.name);
        }
        Some(inst)
    }
}
