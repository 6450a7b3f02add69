//! Table answers in, a [`ClusterView`] out. No I/O.
//!
//! [`check`] reads one answer against the address plan and this node's
//! own endpoint and either accepts it whole or names the [`Drop`] reason
//! (a bad answer changes nothing). [`Tables`] keeps the accepted answers,
//! one per job, and builds the view: the services, the instances on other
//! nodes (`Placement::Remote` on a peer) and one peer per distinct
//! `host_ip:host_port`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::wire::{Drop, InstanceEntry, TableAnswer};
use super::Worker;
use crate::model::{Affinity, Instance, InstanceKey, Peer, Placement, Service, ServiceName};
use crate::oakestra::JobName;
use crate::plan::AddressPlan;
use crate::registry::ClusterView;

/// What an answer is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    /// The plan (with this node's index).
    pub plan: AddressPlan,
    /// This node's underlay address and tunnel port, as it publishes them.
    pub me: SocketAddr,
}

/// An instance of a job on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// Its namespace address (v4).
    pub ns: Ipv4Addr,
    /// Its instance IP (v4).
    pub ip: Ipv4Addr,
    /// The node it runs on.
    pub host: SocketAddr,
}

/// One accepted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTable {
    /// The job as the cluster spells it.
    pub job: JobName,
    /// Its ServiceIPs; `None` while the answer lists no instance with them.
    pub service: Option<Service>,
    /// Its deployed instances on other nodes, by number.
    pub remote: BTreeMap<u32, Remote>,
    /// Its instances' instance IPs, by number (this node's too): what a
    /// claim reads.
    pub instance_ips: BTreeMap<u32, Ipv4Addr>,
}

/// A v4 address of the answer, parsed and checked to lie in `range`.
fn addr_in(text: &str, range: ipnet::Ipv4Net) -> Result<Ipv4Addr, Drop> {
    let a: Ipv4Addr = text.trim().parse().map_err(|_| Drop::BadAddress)?;
    if range.contains(&a) {
        Ok(a)
    } else {
        Err(Drop::BadAddress)
    }
}

/// Checks an answer. `Ok(None)`: the cluster knows no such job (no
/// `app_name`). A job name that does not parse is `BadJson`.
pub fn check(ctx: &Ctx, answer: &TableAnswer) -> Result<Option<JobTable>, Drop> {
    let Some(app) = &answer.app_name else {
        return Ok(None);
    };
    let job = JobName::parse(app).map_err(|_| Drop::BadJson)?;
    let plan = &ctx.plan;
    let mut service = None;
    let mut remote = BTreeMap::new();
    let mut instance_ips = BTreeMap::new();
    for e in &answer.instance_list {
        if service.is_none() {
            if let Some(rr) = e.sip("RR") {
                let rr = addr_in(rr, plan.services)?;
                let closest = match e.sip("Closest") {
                    Some(c) => Some(plan.service_pair(addr_in(c, plan.services)?)),
                    None => None,
                };
                service = Some(Service {
                    name: job.service().clone(),
                    rr_ip: plan.service_pair(rr),
                    closest_ip: closest,
                    affinity: Affinity::default(),
                });
            }
        }
        if let Some(ip) = instance_ip(e) {
            instance_ips.insert(e.instance_number, addr_in(ip, plan.services)?);
        }
        if let Some(r) = check_instance(ctx, e)? {
            remote.insert(e.instance_number, r);
        }
    }
    Ok(Some(JobTable {
        job,
        service,
        remote,
        instance_ips,
    }))
}

/// The instance IP of an entry: its `instance_ip` ServiceIP entry (the
/// Go NetManager also knows the type as `InstanceNumber`), else its
/// `instance_ip` field.
fn instance_ip(e: &InstanceEntry) -> Option<&str> {
    e.sip("instance_ip")
        .or_else(|| e.sip("InstanceNumber"))
        .or(e.instance_ip.as_deref())
}

/// One instance: `None` when it is not deployed yet or runs here.
fn check_instance(ctx: &Ctx, e: &InstanceEntry) -> Result<Option<Remote>, Drop> {
    let (Some(ns), Some(host_ip), Some(port)) = (&e.namespace_ip, &e.host_ip, e.host_port) else {
        return Ok(None);
    };
    let plan = &ctx.plan;
    let ns = addr_in(ns, plan.cluster)?;
    let host_ip: IpAddr = host_ip.trim().parse().map_err(|_| Drop::BadAddress)?;
    if host_ip.is_unspecified() || host_ip.is_multicast() {
        return Err(Drop::BadAddress);
    }
    let ip = addr_in(instance_ip(e).ok_or(Drop::BadAddress)?, plan.services)?;
    let host = SocketAddr::new(host_ip, port);
    let here = host == ctx.me;
    let on_my_subnet = plan.node_subnet().contains(&ns);
    match (here, on_my_subnet) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(Remote { ns, ip, host })),
        _ => Err(Drop::OwnSubnet),
    }
}

/// The peer name of a worker endpoint: `oak-10-77-0-2-50103`.
pub fn peer_name(host: SocketAddr) -> String {
    let ip = host.ip().to_string().replace(['.', ':'], "-");
    format!("oak-{ip}-{}", host.port())
}

/// Adds the other proxytun workers as peers, those the answers did not
/// already name (by endpoint), and gives every peer the public key its
/// worker published (answers carry none).
pub fn add_workers(view: &mut ClusterView, workers: impl IntoIterator<Item = Worker>) {
    for w in workers {
        if let Some(p) = view.peers.values_mut().find(|p| p.endpoint == w.endpoint) {
            p.public_key = w.public_key;
            continue;
        }
        let name = peer_name(w.endpoint);
        view.peers.insert(
            name.clone(),
            Peer {
                name,
                endpoint: w.endpoint,
                public_key: w.public_key,
            },
        );
    }
}

/// The accepted answers, one per job.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    jobs: BTreeMap<ServiceName, JobTable>,
    revision: i64,
}

impl Tables {
    /// Replaces the job's entries with a newer answer.
    pub fn replace(&mut self, t: JobTable) {
        self.jobs.insert(t.job.service().clone(), t);
        self.revision += 1;
    }

    /// Forgets a job (its interest ended).
    pub fn remove(&mut self, name: &ServiceName) {
        if self.jobs.remove(name).is_some() {
            self.revision += 1;
        }
    }

    /// The accepted answer of a job.
    pub fn get(&self, name: &ServiceName) -> Option<&JobTable> {
        self.jobs.get(name)
    }

    /// True when `a` is a ServiceIP or instance IP of a known job.
    pub fn knows_addr(&self, a: Ipv4Addr) -> bool {
        self.jobs.values().any(|t| {
            t.service
                .as_ref()
                .is_some_and(|s| s.rr_ip.v4 == a || s.closest_ip.is_some_and(|c| c.v4 == a))
                || t.instance_ips.values().any(|i| *i == a)
        })
    }

    /// The view: services, the instances on other nodes, their peers.
    pub fn view(&self, plan: &AddressPlan) -> ClusterView {
        let mut v = ClusterView {
            revision: self.revision,
            ..ClusterView::default()
        };
        for (name, t) in &self.jobs {
            let Some(svc) = &t.service else { continue };
            v.services.insert(name.clone(), svc.clone());
            for (n, r) in &t.remote {
                let node = peer_name(r.host);
                v.peers.entry(node.clone()).or_insert_with(|| Peer {
                    name: node.clone(),
                    endpoint: r.host,
                    public_key: None,
                });
                let key = InstanceKey {
                    name: name.clone(),
                    number: *n,
                };
                let inst = Instance {
                    key: key.clone(),
                    ns_addr: plan.cluster_pair(r.ns),
                    instance_ip: plan.service_pair(r.ip),
                    placement: Placement::Remote { node },
                };
                v.instances.insert(key, inst);
            }
        }
        v
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
