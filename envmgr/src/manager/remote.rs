//! Remote instances: containers on a peer node, registered by hand on a
//! node with the local store (a clustered node learns them from the cluster
//! view instead).
//!
//! No kernel change: validate (addresses on another node's subnet, a known
//! peer, nothing used twice), allocate the service if it is new, persist,
//! publish.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{service_name, Manager};
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{Instance, InstanceKey, Placement};
use crate::requests::RemoteInstanceRequest;

impl<K: Kernel> Manager<K> {
    /// Registers an instance that runs on a peer node.
    pub async fn add_remote(&self, req: RemoteInstanceRequest) -> Result<Instance> {
        self.refuse_when_clustered("remote instances")?;
        let name = service_name(&req.app, &req.service)?;
        let plan = &self.settings.plan;
        if !plan.cluster.contains(&req.ns_addr) {
            return Err(Error::Invalid(format!(
                "ns_addr {} is outside the cluster range {} (network.cluster)",
                req.ns_addr, plan.cluster
            )));
        }
        if plan.node_subnet().contains(&req.ns_addr) {
            return Err(Error::Invalid(format!(
                "ns_addr {} is on this node's own subnet {}; containers on this node are attached, not registered",
                req.ns_addr,
                plan.node_subnet()
            )));
        }
        let their_subnet = Ipv4Net::new(req.ns_addr, plan.node_prefix)
            .map_err(|e| Error::Invalid(format!("ns_addr {}: {e}", req.ns_addr)))?
            .trunc();
        let gateway = Ipv4Addr::from(u32::from(their_subnet.network()) + 1);
        if req.ns_addr == their_subnet.network()
            || req.ns_addr == their_subnet.broadcast()
            || req.ns_addr == gateway
        {
            return Err(Error::Invalid(format!(
                "ns_addr {} is the network, gateway or broadcast address of subnet {their_subnet}, not a container's",
                req.ns_addr
            )));
        }
        self.check_pinned_range("service_ip", req.service_ip)?;
        self.check_pinned_range("instance_ip", Some(req.instance_ip))?;

        let mut table = self.table.lock().await;
        if !table.peers.contains_key(&req.node) {
            return Err(Error::Unprocessable(
                if req.node == self.settings.node_name {
                    format!(
                        "node {} is this node; attach local containers instead of registering them",
                        req.node
                    )
                } else {
                    format!("unknown node {0}: register peer {0} first", req.node)
                },
            ));
        }
        let key = InstanceKey {
            name,
            number: req.instance,
        };
        if table.instances.contains_key(&key) {
            return Err(Error::Conflict(format!("instance {key} already exists")));
        }
        if let Some(user) = table.ns_addrs().get(&req.ns_addr) {
            return Err(Error::Conflict(format!(
                "ns_addr {} is already used by {user}",
                req.ns_addr
            )));
        }
        let mut next = table.clone();
        next.version += 1;
        let instance_ip =
            self.service_and_instance_ip(&mut next, &key, req.service_ip, Some(req.instance_ip))?;
        let inst = Instance {
            key: key.clone(),
            ns_addr: plan.cluster_pair(req.ns_addr),
            instance_ip,
            placement: Placement::Remote {
                node: req.node.clone(),
            },
        };
        next.instances.insert(key, inst.clone());
        self.commit(&mut table, next)?;
        tracing::info!(instance = %inst.key, node = %req.node, "registered remote instance");
        Ok(inst)
    }

    /// Unregisters a remote instance (and its service when it was the last
    /// instance).
    pub async fn remove_remote(&self, key: &InstanceKey) -> Result<Instance> {
        self.refuse_when_clustered("remote instances")?;
        let mut table = self.table.lock().await;
        let inst = table.instance(key)?;
        if inst.is_local() {
            return Err(Error::Conflict(format!(
                "instance {key} is attached on this node; detach it instead"
            )));
        }
        let mut next = table.clone();
        next.version += 1;
        next.remove_instance(key);
        self.commit(&mut table, next)?;
        tracing::info!(instance = %key, "unregistered remote instance");
        Ok(inst)
    }
}
