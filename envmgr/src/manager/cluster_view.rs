//! The cluster view: what the cluster's sync task says the other nodes run,
//! merged with this node's own attachments.
//!
//! No kernel change and no refusal: an entry of the view that clashes with
//! what is known is left out with a warning, the rest is persisted (so a
//! restart while the cluster store is down starts with it) and published.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::settings::Settings;
use super::table::Table;
use super::Manager;
use crate::error::Result;
use crate::kernel::Kernel;
use crate::model::Placement;
use crate::registry::ClusterView;

impl<K: Kernel> Manager<K> {
    /// Replaces what this node knows of the rest of the cluster with `view`:
    /// its peers, and the services and remote instances it is interested
    /// in. Local attachments and their services stay as they are.
    ///
    /// An entry of the view that would clash with what is already known (an
    /// address used twice, a container address on this node's own subnet,
    /// an instance on an unknown node) is left out with a warning, so one
    /// bad record in the cluster store cannot stop the node's table from
    /// updating. Returns whether anything changed; an unchanged view
    /// publishes nothing.
    pub async fn set_cluster_view(&self, view: &ClusterView) -> Result<bool> {
        let mut table = self.table.lock().await;
        self.client_clashes.observe(&table.clients, view);
        let mut next = merge_view(&table, view, &self.settings);
        if next == *table {
            return Ok(false);
        }
        next.version += 1;
        self.commit(&mut table, next)?;
        tracing::debug!(
            version = table.version,
            revision = view.revision,
            peers = table.peers.len(),
            "cluster view applied"
        );
        Ok(true)
    }
}

/// The table with the local attachments of `table` and the rest from
/// `view`; see [`Manager::set_cluster_view`].
fn merge_view(table: &Table, view: &ClusterView, settings: &Settings) -> Table {
    let mut next = Table {
        version: table.version,
        services: BTreeMap::new(),
        instances: BTreeMap::new(),
        peers: BTreeMap::new(),
        policy: view.policy.clone().unwrap_or_else(|| table.policy.clone()),
        clients: table.clients.clone(),
    };
    for (name, peer) in &view.peers {
        if name == &settings.node_name {
            continue;
        }
        if let Some(other) = next.peers.values().find(|p| p.endpoint == peer.endpoint) {
            tracing::warn!(peer = %name, other = %other.name, endpoint = %peer.endpoint, "cluster: two nodes share an endpoint; ignoring the second");
            continue;
        }
        next.peers.insert(name.clone(), peer.clone());
    }
    // Local attachments first: they are this node's truth.
    for inst in table.instances.values().filter(|i| i.is_local()) {
        if let Some(svc) = view
            .services
            .get(&inst.key.name)
            .or_else(|| table.services.get(&inst.key.name))
        {
            next.services
                .entry(svc.name.clone())
                .or_insert_with(|| svc.clone());
        }
        next.instances.insert(inst.key.clone(), inst.clone());
    }
    let mut vips = next.service_addrs();
    let mut ns: BTreeSet<Ipv4Addr> = next.ns_addrs().into_keys().collect();
    for (name, svc) in &view.services {
        if next.services.contains_key(name) {
            continue;
        }
        let addrs = std::iter::once(svc.rr_ip.v4).chain(svc.closest_ip.map(|c| c.v4));
        let clash = addrs
            .clone()
            .find_map(|a| vips.get(&a).map(|o| (a, o.clone())));
        if let Some((addr, owner)) = clash {
            tracing::warn!(service = %name, %addr, %owner, "cluster: ServiceIP already used here; service left out");
            continue;
        }
        if !addrs.clone().all(|a| settings.plan.services.contains(&a)) {
            tracing::warn!(service = %name, "cluster: ServiceIP outside network.services; service left out");
            continue;
        }
        for a in addrs {
            vips.insert(a, format!("the ServiceIP of {name}"));
        }
        next.services.insert(name.clone(), svc.clone());
    }
    let own_subnet = settings.plan.node_subnet();
    for (key, inst) in &view.instances {
        let Placement::Remote { node } = &inst.placement else {
            continue;
        };
        let why = if next.instances.contains_key(key) {
            Some("the same instance is attached here".to_owned())
        } else if !next.services.contains_key(&key.name) {
            Some("its service is unknown".to_owned())
        } else if !next.peers.contains_key(node) {
            Some(format!("node {node} is not a known peer"))
        } else if own_subnet.contains(&inst.ns_addr.v4)
            || !settings.plan.cluster.contains(&inst.ns_addr.v4)
        {
            Some(format!(
                "its address {} is not on another node's subnet",
                inst.ns_addr.v4
            ))
        } else if ns.contains(&inst.ns_addr.v4) {
            Some(format!("its address {} is used twice", inst.ns_addr.v4))
        } else if !settings.plan.services.contains(&inst.instance_ip.v4) {
            Some(format!(
                "its instance IP {} is outside network.services",
                inst.instance_ip.v4
            ))
        } else {
            vips.get(&inst.instance_ip.v4).map(|o| {
                format!(
                    "its instance IP {} is already used by {o}",
                    inst.instance_ip.v4
                )
            })
        };
        if let Some(why) = why {
            tracing::warn!(instance = %key, "cluster: instance left out: {why}");
            continue;
        }
        vips.insert(inst.instance_ip.v4, format!("the instance IP of {key}"));
        ns.insert(inst.ns_addr.v4);
        next.instances.insert(key.clone(), inst.clone());
    }
    next
}
