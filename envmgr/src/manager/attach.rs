//! Attach: a local container (by netns path or pid) becomes an instance.
//!
//! Validate the request and the namespace, allocate its addresses (from
//! this node's block, or claimed through the cluster registry), create the
//! veth and its published ports (nat.rs), persist, publish, then write its
//! resolv.conf. A failed kernel step
//! or store write undoes the veth and the cluster claim, so a refused attach
//! changes nothing. A runtime repeating its ADD gets the instance it has.
//! One netns may be attached several times: one instance per interface
//! name, of different services (`shared_netns.rs`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::netns::{NsId, NsProblem};
use super::table::Table;
use super::{
    describe_problem, kernel_error, service_name, shared_netns, veth_spec, write_resolv, Manager,
};
use crate::alloc;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{check_runtime_id, valid_ifname, Instance, Placement};
use crate::registry::Claim;
use crate::requests::AttachRequest;

/// The default interface name inside the container.
const DEFAULT_IFNAME: &str = "eth0";

impl<K: Kernel> Manager<K> {
    /// Attaches a container (by netns path or pid) as an instance of
    /// `app/service`: allocates its addresses, creates the veth, persists.
    pub async fn attach(&self, req: AttachRequest) -> Result<Instance> {
        let name = service_name(&req.app, &req.service)?;
        let ifname = req.ifname.as_deref().unwrap_or(DEFAULT_IFNAME);
        check_ifname(ifname)?;
        let (netns, pid) = match (req.netns, req.pid) {
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "give either netns or pid, not both".to_owned(),
                ))
            }
            (None, None) => {
                return Err(Error::Invalid(
                    "give the container's netns (a path such as /run/netns/c1) or its pid"
                        .to_owned(),
                ))
            }
            (Some(path), None) => {
                if !path.is_absolute() {
                    return Err(Error::Invalid(format!(
                        "netns {} must be an absolute path, e.g. /run/netns/c1",
                        path.display()
                    )));
                }
                (path, None)
            }
            (None, Some(0)) => return Err(Error::Invalid("pid must not be 0".to_owned())),
            (None, Some(pid)) => (PathBuf::from(format!("/proc/{pid}/ns/net")), Some(pid)),
        };
        if let Some(id) = &req.container_id {
            check_runtime_id("container_id", id).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        let ns_id = self.identify(&netns, pid)?;
        self.check_pinned_range("service_ip", req.service_ip)?;
        self.check_pinned_range("instance_ip", req.instance_ip)?;

        let mut table = self.table.lock().await;
        // A runtime may repeat an ADD (after a timeout, or a restart of its
        // own): the same container and interface for the same service is
        // the instance it already has.
        if let Some(id) = &req.container_id {
            if let Some(existing) = find_container(&table, id, ifname) {
                if existing.key.name == name {
                    return Ok(existing.clone());
                }
                return Err(Error::Conflict(format!(
                    "container {id} interface {ifname} is already attached as instance {}, of another service",
                    existing.key
                )));
            }
        }
        // A netns may be attached several times, keyed by interface name,
        // each time as an instance of another service.
        let sharing = shared_netns::sharing(&table, self.probe.as_ref(), &netns, Some(ns_id), None);
        for other in &sharing {
            let Placement::Local { ifname: theirs, .. } = &other.placement else {
                continue;
            };
            if other.key.name == name {
                return Err(Error::Conflict(format!(
                    "network namespace {} is already attached as instance {} (interface {theirs}) of the same service {name}; a netns is one instance per service",
                    netns.display(),
                    other.key
                )));
            }
            if theirs == ifname {
                return Err(Error::Conflict(format!(
                    "network namespace {} already has interface {ifname}, attached as instance {}; give another ifname",
                    netns.display(),
                    other.key
                )));
            }
        }
        self.check_ports(&table, &req.ports).await?;
        // The first interface of a netns gets the default routes; a
        // further one only its addresses (the routes exist already).
        let default_route = sharing.is_empty();
        let ns_v4 = {
            let used: BTreeSet<Ipv4Addr> = table.ns_addrs().into_keys().collect();
            alloc::lowest_free_ns_addr(self.settings.plan.node_subnet(), &used).ok_or_else(
                || {
                    Error::Exhausted(format!(
                        "no free address left on this node's subnet {}; detach a container first",
                        self.settings.plan.node_subnet()
                    ))
                },
            )?
        };
        let ns_addr = self.settings.plan.cluster_pair(ns_v4);
        let mut next = table.clone();
        next.version += 1;
        let (key, instance_ip) = match &self.registry {
            None => {
                let key = self.instance_key(&table, name, req.instance)?;
                let ip =
                    self.service_and_instance_ip(&mut next, &key, req.service_ip, req.instance_ip)?;
                (key, ip)
            }
            Some(registry) => {
                // The cluster store decides: the same ServiceIPs on every
                // node, a number and an instance IP unique in the cluster.
                let service = registry.service(&name, req.service_ip).await?;
                let claim = Claim {
                    name: name.clone(),
                    number: req.instance,
                    instance_ip: req.instance_ip,
                    ns_addr,
                };
                let (key, ip) = registry.claim(claim).await?;
                next.services.insert(name, service);
                (key, ip)
            }
        };
        let host_veth = alloc::host_veth_name(&key, &table.host_veths());
        let inst = Instance {
            key: key.clone(),
            ns_addr,
            instance_ip,
            placement: Placement::Local {
                netns,
                pid,
                host_veth: host_veth.clone(),
                ifname: ifname.to_owned(),
                container_id: req.container_id.clone(),
                ports: req.ports.clone(),
                default_route,
            },
        };
        next.instances.insert(key, inst.clone());

        let spec = veth_spec(&self.settings, &inst)
            .ok_or_else(|| Error::Kernel("internal: local instance without a veth".to_owned()))?;
        if let Err(e) = self.kernel.attach(&spec).await {
            self.release_claim(&inst.key).await;
            return Err(kernel_error(e));
        }
        if let Err(e) = self.apply_nat(&next).await {
            self.undo_attach(&inst, &host_veth).await;
            return Err(e);
        }
        if let Err(e) = self.commit(&mut table, next) {
            self.undo_nat(&table).await;
            self.undo_attach(&inst, &host_veth).await;
            return Err(e);
        }
        if default_route {
            // The holder of the default routes owns the resolv.conf (its
            // app's search list); a further attachment leaves it.
            write_resolv(&self.settings, &inst);
        }
        tracing::info!(instance = %inst.key, ns_addr = %inst.ns_addr.v4, instance_ip = %inst.instance_ip.v4, "attached");
        Ok(inst)
    }

    /// Removes the veth and the cluster claim of an attach that failed.
    async fn undo_attach(&self, inst: &Instance, host_veth: &str) {
        if let Err(undo) = self.kernel.detach(host_veth).await {
            tracing::error!(instance = %inst.key, "undo attach: {undo}");
        }
        self.release_claim(&inst.key).await;
    }

    /// The local instance a runtime attached as container `container_id`
    /// with interface `ifname`: how CNI's DEL and CHECK, and CNM's Leave,
    /// find what they attached without knowing the instance number.
    pub async fn find_container(&self, container_id: &str, ifname: &str) -> Option<Instance> {
        let table = self.table.lock().await;
        find_container(&table, container_id, ifname).cloned()
    }

    /// Checks the netns path; the message says what is wrong with it.
    fn identify(&self, path: &Path, pid: Option<u32>) -> Result<NsId> {
        self.probe
            .identify(path)
            .map_err(|problem| match (problem, pid) {
                (NsProblem::Missing, Some(pid)) => Error::Unprocessable(format!(
                    "no process with pid {pid} ({} does not exist)",
                    path.display()
                )),
                (NsProblem::Own, Some(pid)) => Error::Unprocessable(format!(
                    "pid {pid} runs in the daemon's own network namespace; give a container's pid"
                )),
                (problem, _) => Error::Unprocessable(format!(
                    "netns {}: {}",
                    path.display(),
                    describe_problem(&problem)
                )),
            })
    }
}

/// The local instance a runtime attached as `container_id` on `ifname`.
fn find_container<'t>(table: &'t Table, container_id: &str, ifname: &str) -> Option<&'t Instance> {
    table
        .instances
        .values()
        .find(|i| i.placement.runtime_attachment() == Some((container_id, ifname)))
}

/// Linux interface names: 1..=15 bytes; we also keep to a safe charset.
fn check_ifname(name: &str) -> Result<()> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "ifname {name:?} must be 1 to 15 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        )))
    }
}
