//! Turning envmgr's model snapshot into the packet core's lookup table.
//!
//! Runs on the control path, once per published change, never per packet.

use std::collections::BTreeMap;

use envmgr::model::{Placement, Snapshot};

use crate::core::{Location, Table, TableBuilder, TableError};

/// Builds the dataplane's table from a snapshot of the node's view.
///
/// Instances are added in key order, so the round-robin rotation is the same
/// on every node that knows the same instances.
pub fn build(snapshot: &Snapshot) -> Result<Table, TableError> {
    let node = &snapshot.node;
    let mut b = TableBuilder::new(node.service_range, node.service_range6);
    let mut ids = BTreeMap::new();
    for (name, svc) in &snapshot.services {
        ids.insert(
            name,
            b.service(&name.to_string(), svc.rr_ip.v4, svc.rr_ip.v6),
        );
    }
    for peer in snapshot.peers.values() {
        b.peer(peer.endpoint.ip());
    }
    for inst in snapshot.instances.values() {
        let Some(&svc) = ids.get(&inst.key.name) else {
            tracing::warn!(instance = %inst.key, "instance of an unknown service left out of the table");
            continue;
        };
        let location = match &inst.placement {
            Placement::Local { .. } => Location::Local,
            Placement::Remote { node } => match snapshot.peers.get(node) {
                Some(peer) => Location::Remote(peer.endpoint),
                None => {
                    tracing::warn!(instance = %inst.key, node, "instance on an unknown peer left out of the table");
                    continue;
                }
            },
        };
        b.instance(
            svc,
            &inst.key.to_string(),
            inst.ns_addr.v4,
            inst.ns_addr.v6,
            inst.instance_ip.v4,
            inst.instance_ip.v6,
            location,
        );
    }
    b.build()
}
