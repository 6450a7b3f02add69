//! The manager: the one writer of the node's view.
//!
//! Every change goes through here, one at a time (a tokio mutex), in the same
//! order: validate everything, compute the new table, apply the kernel
//! change, persist the store, and only then publish a new [`Snapshot`]. A
//! step that fails undoes the steps before it, so a rejected request changes
//! nothing: not the table, not the file, not the kernel.
//!
//! Readers (the dataplane, the resolver, the API's GETs) never take the lock:
//! they hold the latest `Arc<Snapshot>` from the watch channel.

mod netns;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use ipnet::Ipv4Net;
use tokio::sync::{watch, Mutex};

use crate::alloc;
use crate::error::{Error, Result};
use crate::kernel::{BridgeSpec, Kernel, KernelError, VethSpec};
use crate::model::{
    check_label, check_runtime_id, DualAddr, Instance, InstanceKey, NodeInfo, Peer, Placement,
    Policy, Service, ServiceName, Snapshot,
};
use crate::plan::AddressPlan;
use crate::registry::{Claim, ClusterView, Registry};
use crate::requests::{AttachRequest, PeerRequest, RemoteInstanceRequest};
use crate::resolv::ResolvConf;
use crate::store::{LocalStore, State, Store};

use netns::{NetnsProbe, NsId, NsProblem, SysNetns};

/// Static settings the daemon derives from its config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This node's name (how peers and remote instances refer to it).
    pub node_name: String,
    /// The address plan everything is allocated from.
    pub plan: AddressPlan,
    /// The bridge every container veth is enslaved to, e.g. `ptbr0`.
    pub bridge: String,
    /// Container veth and bridge MTU (the TUN's MTU), so TCP's MSS fits the tunnel.
    pub mtu: u32,
    /// The local store's directory.
    pub state_dir: PathBuf,
    /// The tunnel port assumed for peers given without one.
    pub tunnel_port: u16,
    /// Containers' resolv.conf, written on attach and at start, removed on
    /// detach; `None` when the node runs no resolver.
    pub resolv: Option<ResolvConf>,
}

/// The default interface name inside the container.
const DEFAULT_IFNAME: &str = "eth0";

/// The working form of the state: maps keyed like the snapshot's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    version: u64,
    services: BTreeMap<ServiceName, Service>,
    instances: BTreeMap<InstanceKey, Instance>,
    peers: BTreeMap<String, Peer>,
    policy: Policy,
}

impl Table {
    /// Builds the table from a stored state, refusing duplicates and
    /// dangling references rather than guessing.
    fn from_state(state: State, location: &str) -> anyhow::Result<Self> {
        let mut t = Table {
            version: state.version,
            services: BTreeMap::new(),
            instances: BTreeMap::new(),
            peers: BTreeMap::new(),
            policy: state.policy,
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

    fn to_state(&self, settings: &Settings) -> State {
        let mut s = State::empty(&settings.node_name, &settings.plan);
        s.version = self.version;
        s.services = self.services.values().cloned().collect();
        s.instances = self.instances.values().cloned().collect();
        s.peers = self.peers.values().cloned().collect();
        s.policy = self.policy.clone();
        s
    }

    fn snapshot(&self, settings: &Settings) -> Snapshot {
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
        }
    }

    /// The instances of one service (keys sort by service, then number).
    fn instances_of<'a>(&'a self, name: &ServiceName) -> impl Iterator<Item = &'a Instance> + 'a {
        crate::model::instances_of(&self.instances, name)
    }

    /// Every address of the ServiceIP range in use, with what uses it.
    fn service_addrs(&self) -> BTreeMap<Ipv4Addr, String> {
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
        used
    }

    /// Every namespace address in use, with what uses it.
    fn ns_addrs(&self) -> BTreeMap<Ipv4Addr, String> {
        self.instances
            .values()
            .map(|i| (i.ns_addr.v4, format!("instance {}", i.key)))
            .collect()
    }

    /// Host veth names of local attachments.
    fn host_veths(&self) -> BTreeSet<String> {
        self.instances
            .values()
            .filter_map(|i| match &i.placement {
                Placement::Local { host_veth, .. } => Some(host_veth.clone()),
                Placement::Remote { .. } => None,
            })
            .collect()
    }

    /// Removes an instance, and its service when it was the last one.
    fn remove_instance(&mut self, key: &InstanceKey) -> Option<Instance> {
        let inst = self.instances.remove(key)?;
        if self.instances_of(&key.name).next().is_none() {
            self.services.remove(&key.name);
        }
        Some(inst)
    }
}

/// The node's environment manager: owns the table, the store and the
/// kernel side of attachments.
pub struct Manager<K: Kernel> {
    settings: Settings,
    kernel: K,
    store: Box<dyn Store>,
    probe: Box<dyn NetnsProbe>,
    /// The cluster store's allocator; `None` with the local store, where
    /// this node allocates everything from its own block.
    registry: Option<Arc<dyn Registry>>,
    table: Mutex<Table>,
    tx: watch::Sender<Arc<Snapshot>>,
}

impl<K: Kernel> fmt::Debug for Manager<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("settings", &self.settings)
            .field("store", &self.store)
            .field("version", &self.tx.borrow().version)
            .finish_non_exhaustive()
    }
}

impl<K: Kernel> Manager<K> {
    /// Loads the store (or starts empty), checks it matches `settings` (node
    /// name and address plan; a mismatch is an error naming the config key
    /// and the state file), sets up the bridge, and re-applies every local
    /// attachment (re-creating missing veths; an attachment whose netns no
    /// longer exists is released with a warning: the container is gone).
    /// Publishes the first snapshot.
    ///
    /// The state directory stays locked while the manager lives, so a second
    /// daemon with the same directory fails to start.
    pub async fn open(settings: Settings, kernel: K) -> anyhow::Result<Self> {
        let store = LocalStore::open_exclusive(settings.state_dir.clone())?;
        Self::open_with_store(settings, kernel, Box::new(store)).await
    }

    /// [`Self::open`] with another store backend (`settings.state_dir` is
    /// then unused).
    pub async fn open_with_store(
        settings: Settings,
        kernel: K,
        store: Box<dyn Store>,
    ) -> anyhow::Result<Self> {
        Self::open_full(settings, kernel, store, Box::new(SysNetns), None).await
    }

    /// [`Self::open`] for a node of a cluster store: ServiceIPs, instance
    /// numbers and instance IPs are claimed through `registry`, peers and
    /// remote instances arrive through [`Self::set_cluster_view`], and the
    /// API's peer and remote-instance writes are refused. The local store
    /// still keeps the attachments and the last known cluster view, so a
    /// node restarts with a working table while the cluster store is down.
    pub async fn open_clustered(
        settings: Settings,
        kernel: K,
        registry: Arc<dyn Registry>,
    ) -> anyhow::Result<Self> {
        let store = LocalStore::open_exclusive(settings.state_dir.clone())?;
        Self::open_full(
            settings,
            kernel,
            Box::new(store),
            Box::new(SysNetns),
            Some(registry),
        )
        .await
    }

    #[cfg(test)]
    async fn open_inner(
        settings: Settings,
        kernel: K,
        store: Box<dyn Store>,
        probe: Box<dyn NetnsProbe>,
    ) -> anyhow::Result<Self> {
        Self::open_full(settings, kernel, store, probe, None).await
    }

    async fn open_full(
        settings: Settings,
        kernel: K,
        store: Box<dyn Store>,
        probe: Box<dyn NetnsProbe>,
        registry: Option<Arc<dyn Registry>>,
    ) -> anyhow::Result<Self> {
        settings.plan.validate()?;
        check_label("node", &settings.node_name).context("node.name")?;
        let location = store.location();
        let mut table = match store.load()? {
            Some(state) => {
                check_matches(&state, &settings, &location)?;
                Table::from_state(state, &location)?
            }
            None => Table::from_state(State::empty(&settings.node_name, &settings.plan), "")?,
        };
        let plan = &settings.plan;
        let bridge = BridgeSpec {
            name: settings.bridge.clone(),
            gateway: plan.gateway(),
            subnet: plan.node_subnet(),
            subnet6: plan.node_subnet6(),
            mtu: settings.mtu,
        };
        kernel
            .setup_bridge(&bridge)
            .await
            .with_context(|| format!("set up bridge {}", settings.bridge))?;

        let mut released = false;
        let locals: Vec<Instance> = table
            .instances
            .values()
            .filter(|i| i.is_local())
            .cloned()
            .collect();
        for inst in locals {
            let Some(spec) = veth_spec(&settings, &inst) else {
                continue;
            };
            match probe.identify(&spec.netns) {
                Ok(_) => {}
                Err(NsProblem::Io(e)) => {
                    // Not known to be gone: keep it and try the kernel anyway.
                    tracing::warn!(instance = %inst.key, netns = %spec.netns.display(), "cannot inspect netns: {e}");
                }
                Err(problem) => {
                    tracing::warn!(
                        instance = %inst.key,
                        netns = %spec.netns.display(),
                        "releasing instance: its network namespace is gone ({})",
                        describe_problem(&problem)
                    );
                    if let Err(e) = kernel.detach(&spec.host_veth).await {
                        tracing::warn!(instance = %inst.key, "remove leftover veth: {e}");
                    }
                    table.remove_instance(&inst.key);
                    released = true;
                    continue;
                }
            }
            let present = match kernel.attached(&spec).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(instance = %inst.key, "check attachment: {e}");
                    false
                }
            };
            if !present {
                tracing::info!(instance = %inst.key, veth = %spec.host_veth, "re-creating attachment");
                if let Err(e) = kernel.attach(&spec).await {
                    // One broken container must not keep the node down; the
                    // instance stays registered and a later detach cleans up.
                    tracing::warn!(instance = %inst.key, "re-attach failed: {e}");
                }
            }
            // Rewritten at every start, so a changed domain or resolver
            // address reaches containers that were attached before.
            write_resolv(&settings, &inst);
        }
        if registry.is_none() && allocate_missing_closest(&mut table, &settings)? {
            released = true;
        }
        if released {
            table.version += 1;
        }
        // Always write at start: a state directory that cannot be written
        // is found now, not at the first request.
        store
            .save(&table.to_state(&settings))
            .context("write the state at start")?;
        let (tx, _rx) = watch::channel(Arc::new(table.snapshot(&settings)));
        Ok(Self {
            settings,
            kernel,
            store,
            probe,
            registry,
            table: Mutex::new(table),
            tx,
        })
    }

    /// Which store the node uses and how it is doing, for `status`.
    pub fn store_status(&self) -> serde_json::Value {
        match &self.registry {
            None => serde_json::json!({
                "backend": "local",
                "location": self.store.location(),
            }),
            Some(r) => {
                let mut v = r.status();
                if !v.is_object() {
                    v = serde_json::json!({});
                }
                if let Some(o) = v.as_object_mut() {
                    o.entry("backend").or_insert_with(|| "etcd".into());
                    o.insert("cache".into(), self.store.location().into());
                }
                v
            }
        }
    }

    /// True when a cluster store allocates and peers come from it.
    pub fn is_clustered(&self) -> bool {
        self.registry.is_some()
    }

    /// Refuses a manual peer or remote-instance change on a clustered node.
    fn refuse_when_clustered(&self, what: &str) -> Result<()> {
        if self.registry.is_some() {
            return Err(Error::Conflict(format!(
                "{what} come from the cluster store on this node (store.backend = \"etcd\"); \
                 register nodes and instances there instead"
            )));
        }
        Ok(())
    }

    /// The settings the manager was opened with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The kernel backend (the daemon also uses it to route the ServiceIP
    /// range into the TUN once the dataplane has created it).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The current view; cheap, lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every published snapshot (the latest at least).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

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
        for other in table.instances.values() {
            if let Placement::Local { netns: path, .. } = &other.placement {
                let same = path == &netns || self.probe.identify(path).ok() == Some(ns_id);
                if same {
                    return Err(Error::Conflict(format!(
                        "network namespace {} is already attached as instance {}",
                        netns.display(),
                        other.key
                    )));
                }
            }
        }
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
            },
        };
        next.instances.insert(key, inst.clone());

        let spec = veth_spec(&self.settings, &inst)
            .ok_or_else(|| Error::Kernel("internal: local instance without a veth".to_owned()))?;
        if let Err(e) = self.kernel.attach(&spec).await {
            self.release_claim(&inst.key).await;
            return Err(kernel_error(e));
        }
        if let Err(e) = self.persist(&next) {
            if let Err(undo) = self.kernel.detach(&host_veth).await {
                tracing::error!(instance = %inst.key, "undo attach after store failure: {undo}");
            }
            self.release_claim(&inst.key).await;
            return Err(e);
        }
        *table = next;
        self.publish(&table);
        write_resolv(&self.settings, &inst);
        tracing::info!(instance = %inst.key, ns_addr = %inst.ns_addr.v4, instance_ip = %inst.instance_ip.v4, "attached");
        Ok(inst)
    }

    /// The local instance a runtime attached as container `container_id`
    /// with interface `ifname`: how CNI's DEL and CHECK, and CNM's Leave,
    /// find what they attached without knowing the instance number.
    pub async fn find_container(&self, container_id: &str, ifname: &str) -> Option<Instance> {
        let table = self.table.lock().await;
        find_container(&table, container_id, ifname).cloned()
    }

    /// Detaches a local instance: removes its veth, releases its addresses
    /// (and its service's ServiceIP when it was the last instance).
    pub async fn detach(&self, key: &InstanceKey) -> Result<Instance> {
        let mut table = self.table.lock().await;
        let inst = table
            .instances
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no instance {key}")))?;
        let Some(spec) = veth_spec(&self.settings, &inst) else {
            let node = match &inst.placement {
                Placement::Remote { node } => node.as_str(),
                Placement::Local { .. } => "another node",
            };
            return Err(Error::Conflict(format!(
                "instance {key} runs on node {node}, not here; unregister it as a remote instance instead"
            )));
        };
        let mut next = table.clone();
        next.version += 1;
        next.remove_instance(key);
        self.kernel
            .detach(&spec.host_veth)
            .await
            .map_err(kernel_error)?;
        if let Err(e) = self.persist(&next) {
            if let Err(undo) = self.kernel.attach(&spec).await {
                tracing::error!(instance = %key, "undo detach after store failure: {undo}");
            }
            return Err(e);
        }
        *table = next;
        self.publish(&table);
        if let (Some(resolv), Placement::Local { netns, .. }) =
            (&self.settings.resolv, &inst.placement)
        {
            if let Err(e) = resolv.remove(netns) {
                tracing::warn!(instance = %key, "remove the container's resolv.conf: {e}");
            }
        }
        tracing::info!(instance = %key, "detached");
        drop(table);
        self.release_claim(key).await;
        Ok(inst)
    }

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
        self.persist(&next)?;
        *table = next;
        self.publish(&table);
        tracing::info!(instance = %inst.key, node = %req.node, "registered remote instance");
        Ok(inst)
    }

    /// Unregisters a remote instance (and its service when it was the last
    /// instance).
    pub async fn remove_remote(&self, key: &InstanceKey) -> Result<Instance> {
        self.refuse_when_clustered("remote instances")?;
        let mut table = self.table.lock().await;
        let inst = table
            .instances
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no instance {key}")))?;
        if inst.is_local() {
            return Err(Error::Conflict(format!(
                "instance {key} is attached on this node; detach it instead"
            )));
        }
        let mut next = table.clone();
        next.version += 1;
        next.remove_instance(key);
        self.persist(&next)?;
        *table = next;
        self.publish(&table);
        tracing::info!(instance = %key, "unregistered remote instance");
        Ok(inst)
    }

    /// Creates or moves a peer; returns whether it was created.
    ///
    /// Putting a peer with the endpoint it already has changes nothing and
    /// publishes nothing.
    pub async fn put_peer(&self, req: PeerRequest) -> Result<(Peer, bool)> {
        self.refuse_when_clustered("peers")?;
        check_label("node", &req.name).map_err(|e| Error::Invalid(e.to_string()))?;
        if req.name == self.settings.node_name {
            return Err(Error::Invalid(format!(
                "{} is this node's own name; a node is not its own peer",
                req.name
            )));
        }
        let endpoint = parse_endpoint(&req.endpoint, self.settings.tunnel_port)?;
        let peer = Peer {
            name: req.name,
            endpoint,
        };
        let mut table = self.table.lock().await;
        let created = match table.peers.get(&peer.name) {
            Some(old) if old.endpoint == endpoint => return Ok((old.clone(), false)),
            Some(_) => false,
            None => true,
        };
        if let Some(other) = table
            .peers
            .values()
            .find(|p| p.endpoint == endpoint && p.name != peer.name)
        {
            return Err(Error::Conflict(format!(
                "endpoint {endpoint} already belongs to peer {}; each node needs its own address",
                other.name
            )));
        }
        let mut next = table.clone();
        next.version += 1;
        next.peers.insert(peer.name.clone(), peer.clone());
        self.persist(&next)?;
        *table = next;
        self.publish(&table);
        tracing::info!(peer = %peer.name, %endpoint, created, "peer updated");
        Ok((peer, created))
    }

    /// Removes a peer that no remote instance runs on any more.
    pub async fn remove_peer(&self, name: &str) -> Result<Peer> {
        self.refuse_when_clustered("peers")?;
        let mut table = self.table.lock().await;
        let peer = table
            .peers
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no peer {name}")))?;
        let on_it = table
            .instances
            .values()
            .filter(|i| matches!(&i.placement, Placement::Remote { node } if node == name))
            .count();
        if on_it > 0 {
            return Err(Error::Conflict(format!(
                "peer {name} still runs {on_it} registered instance(s); unregister them first"
            )));
        }
        let mut next = table.clone();
        next.version += 1;
        next.peers.remove(name);
        self.persist(&next)?;
        *table = next;
        self.publish(&table);
        tracing::info!(peer = %name, "peer removed");
        Ok(peer)
    }

    /// The isolation policy in force on this node.
    pub fn policy(&self) -> Policy {
        self.snapshot().policy.clone()
    }

    /// Replaces the whole isolation policy after checking every field
    /// ([`Policy::validate`]; a refused policy changes nothing). With a
    /// cluster store it is written there first, so every node's watch
    /// picks it up; this node applies it at once either way. Putting the
    /// policy in force changes nothing and publishes nothing.
    pub async fn put_policy(&self, policy: Policy) -> Result<Policy> {
        policy
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut table = self.table.lock().await;
        if let Some(registry) = &self.registry {
            registry.put_policy(&policy).await?;
        }
        if table.policy == policy {
            return Ok(policy);
        }
        let mut next = table.clone();
        next.version += 1;
        next.policy = policy.clone();
        self.persist(&next)?;
        *table = next;
        self.publish(&table);
        tracing::info!(
            isolate = policy.isolate,
            rules = policy.allow.len(),
            "policy updated"
        );
        Ok(policy)
    }

    /// Withdraws a cluster claim after a failed attach or a detach. A
    /// failure is only logged: the cluster sync removes registrations of
    /// instances this node no longer has when the store is back.
    async fn release_claim(&self, key: &InstanceKey) {
        if let Some(registry) = &self.registry {
            if let Err(e) = registry.release(key).await {
                tracing::warn!(instance = %key, "release the cluster claim later: {e}");
            }
        }
    }

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
        let mut next = merge_view(&table, view, &self.settings);
        if next == *table {
            return Ok(false);
        }
        next.version += 1;
        self.persist(&next)?;
        *table = next;
        self.publish(&table);
        tracing::debug!(
            version = table.version,
            revision = view.revision,
            peers = table.peers.len(),
            "cluster view applied"
        );
        Ok(true)
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

    /// A pinned address must lie in the ServiceIP range and be a usable host.
    fn check_pinned_range(&self, field: &str, addr: Option<Ipv4Addr>) -> Result<()> {
        let Some(addr) = addr else { return Ok(()) };
        let range = self.settings.plan.services;
        if !range.contains(&addr) {
            return Err(Error::Invalid(format!(
                "{field} {addr} is outside the ServiceIP range {range} (network.services)"
            )));
        }
        if addr == range.network() || addr == range.broadcast() {
            return Err(Error::Invalid(format!(
                "{field} {addr} is the network or broadcast address of the ServiceIP range {range}"
            )));
        }
        Ok(())
    }

    /// The key for a new instance: the requested number if free, else the
    /// lowest number free among all known instances of the service.
    fn instance_key(
        &self,
        table: &Table,
        name: ServiceName,
        number: Option<u32>,
    ) -> Result<InstanceKey> {
        let number = match number {
            Some(n) => n,
            None => {
                let used: BTreeSet<u32> = table.instances_of(&name).map(|i| i.key.number).collect();
                alloc::lowest_free_number(&used).ok_or_else(|| {
                    Error::Exhausted(format!("service {name} has no free instance number left"))
                })?
            }
        };
        let key = InstanceKey { name, number };
        if table.instances.contains_key(&key) {
            return Err(Error::Conflict(format!(
                "instance {key} already exists; detach it first or omit the instance number"
            )));
        }
        Ok(key)
    }

    /// Makes sure `name` has a service in `next`, creating it with a pinned
    /// or allocated ServiceIP; `used` gains the new ServiceIP.
    fn ensure_service(
        &self,
        next: &mut Table,
        name: &ServiceName,
        pinned: Option<Ipv4Addr>,
        used: &mut BTreeMap<Ipv4Addr, String>,
    ) -> Result<()> {
        if let Some(existing) = next.services.get(name) {
            return match pinned {
                Some(ip) if ip != existing.rr_ip.v4 => Err(Error::Conflict(format!(
                    "service {name} already has ServiceIP {}, not {ip}; omit service_ip or pass {}",
                    existing.rr_ip.v4, existing.rr_ip.v4
                ))),
                _ => Ok(()),
            };
        }
        let v4 = self.pick_service_addr("service_ip", pinned, used)?;
        used.insert(v4, format!("the ServiceIP of {name}"));
        let closest = self.pick_service_addr("closest_ip", None, used)?;
        used.insert(closest, format!("the closest ServiceIP of {name}"));
        next.services.insert(
            name.clone(),
            Service {
                name: name.clone(),
                rr_ip: self.settings.plan.service_pair(v4),
                closest_ip: Some(self.settings.plan.service_pair(closest)),
            },
        );
        Ok(())
    }

    /// Picks the instance IP of a new instance `key` and creates its
    /// service in `next` if needed. A pinned instance IP is claimed first so
    /// the service's allocated ServiceIP never takes it.
    fn service_and_instance_ip(
        &self,
        next: &mut Table,
        key: &InstanceKey,
        service_ip: Option<Ipv4Addr>,
        instance_ip: Option<Ipv4Addr>,
    ) -> Result<DualAddr> {
        let mut used = next.service_addrs();
        if let Some(ip) = instance_ip {
            self.pick_service_addr("instance_ip", Some(ip), &used)?;
            used.insert(ip, format!("the instance IP requested for {key}"));
        }
        self.ensure_service(next, &key.name, service_ip, &mut used)?;
        let v4 = match instance_ip {
            Some(ip) => ip,
            None => self.pick_service_addr("instance_ip", None, &used)?,
        };
        Ok(self.settings.plan.service_pair(v4))
    }

    /// A pinned address if unused, else the lowest free one of our block.
    fn pick_service_addr(
        &self,
        field: &str,
        pinned: Option<Ipv4Addr>,
        used: &BTreeMap<Ipv4Addr, String>,
    ) -> Result<Ipv4Addr> {
        if let Some(ip) = pinned {
            return match used.get(&ip) {
                Some(user) => Err(Error::Conflict(format!("{field} {ip} is already {user}"))),
                None => Ok(ip),
            };
        }
        let block = self.settings.plan.alloc_block();
        let set: BTreeSet<Ipv4Addr> = used.keys().copied().collect();
        alloc::lowest_free_service_addr(block, &set).ok_or_else(|| {
            Error::Exhausted(format!(
                "this node's ServiceIP block {block} is used up; remove services or pin addresses from another block"
            ))
        })
    }

    fn persist(&self, next: &Table) -> Result<()> {
        self.store
            .save(&next.to_state(&self.settings))
            .map_err(|e| Error::Store(format!("{e}; the change was not made")))
    }

    fn publish(&self, table: &Table) {
        self.tx
            .send_replace(Arc::new(table.snapshot(&self.settings)));
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

/// Gives every service of a state written before closest existed its
/// closest ServiceIP; returns whether any was added.
fn allocate_missing_closest(table: &mut Table, settings: &Settings) -> anyhow::Result<bool> {
    let missing: Vec<ServiceName> = table
        .services
        .values()
        .filter(|s| s.closest_ip.is_none())
        .map(|s| s.name.clone())
        .collect();
    for name in &missing {
        let used: BTreeSet<Ipv4Addr> = table.service_addrs().into_keys().collect();
        let block = settings.plan.alloc_block();
        let v4 = alloc::lowest_free_service_addr(block, &used).with_context(|| {
            format!(
                "no free address in ServiceIP block {block} for the closest ServiceIP of {name}"
            )
        })?;
        if let Some(svc) = table.services.get_mut(name) {
            svc.closest_ip = Some(settings.plan.service_pair(v4));
        }
        tracing::info!(service = %name, closest_ip = %v4, "allocated a closest ServiceIP");
    }
    Ok(!missing.is_empty())
}

/// Refuses a state written for another node or plan, naming the config key.
fn check_matches(state: &State, settings: &Settings, location: &str) -> anyhow::Result<()> {
    if state.node_name != settings.node_name {
        bail!(
            "node.name is {:?} in the config, but the state in {location} belongs to node {:?}; \
             restore node.name or move {location} away to start empty",
            settings.node_name,
            state.node_name
        );
    }
    let (a, b) = (&state.plan, &settings.plan);
    let diffs: [(&str, String, String); 6] = [
        (
            "network.cluster",
            a.cluster.to_string(),
            b.cluster.to_string(),
        ),
        (
            "network.cluster6",
            a.cluster6.to_string(),
            b.cluster6.to_string(),
        ),
        (
            "network.node_prefix",
            a.node_prefix.to_string(),
            b.node_prefix.to_string(),
        ),
        (
            "network.services",
            a.services.to_string(),
            b.services.to_string(),
        ),
        (
            "network.services6",
            a.services6.to_string(),
            b.services6.to_string(),
        ),
        (
            "node.index",
            a.node_index.to_string(),
            b.node_index.to_string(),
        ),
    ];
    for (key, stored, configured) in diffs {
        if stored != configured {
            bail!(
                "{key} is {configured} in the config, but the addresses in {location} were allocated with {stored}; \
                 restore {key} = {stored} or move {location} away to start empty"
            );
        }
    }
    Ok(())
}

fn service_name(app: &str, service: &str) -> Result<ServiceName> {
    ServiceName::new(app, service).map_err(|e| Error::Invalid(e.to_string()))
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
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "ifname {name:?} must be 1 to 15 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        )))
    }
}

/// `ip:port`, `[ipv6]:port`, or a bare IP with the default tunnel port.
fn parse_endpoint(s: &str, default_port: u16) -> Result<SocketAddr> {
    let s = s.trim();
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    let addr = s
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            bare.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
        .ok_or_else(|| {
            Error::Invalid(format!("endpoint {s:?} must be ip, ip:port or [ipv6]:port"))
        })?;
    if addr.port() == 0 {
        return Err(Error::Invalid(format!(
            "endpoint {s:?}: port must not be 0"
        )));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(Error::Invalid(format!(
            "endpoint {s:?}: give the peer's unicast address"
        )));
    }
    Ok(addr)
}

fn describe_problem(p: &NsProblem) -> String {
    match p {
        NsProblem::Missing => "does not exist".to_owned(),
        NsProblem::NotNetns(why) => format!("not a network namespace: {why}"),
        NsProblem::Own => {
            "is the daemon's own network namespace; give a container's namespace".to_owned()
        }
        NsProblem::Io(e) => format!("cannot inspect it: {e}"),
    }
}

fn kernel_error(e: KernelError) -> Error {
    Error::Kernel(format!("{e}; nothing was changed"))
}

/// The kernel spec of a local instance; `None` for a remote one.
/// Writes a local instance's resolv.conf. A failure is logged, not
/// returned: the attachment itself is good, and the container can still
/// reach every service by address.
fn write_resolv(settings: &Settings, inst: &Instance) {
    let (Some(resolv), Placement::Local { netns, .. }) = (&settings.resolv, &inst.placement) else {
        return;
    };
    match resolv.write(netns, &inst.key) {
        Ok(Some(path)) => {
            tracing::debug!(instance = %inst.key, path = %path.display(), "resolv.conf written")
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(instance = %inst.key, netns = %netns.display(), "cannot write the container's resolv.conf: {e}")
        }
    }
}

fn veth_spec(settings: &Settings, inst: &Instance) -> Option<VethSpec> {
    let Placement::Local {
        netns,
        host_veth,
        ifname,
        ..
    } = &inst.placement
    else {
        return None;
    };
    let plan = &settings.plan;
    Some(VethSpec {
        netns: netns.clone(),
        host_veth: host_veth.clone(),
        ifname: ifname.clone(),
        bridge: settings.bridge.clone(),
        addr: inst.ns_addr,
        subnet: plan.node_subnet(),
        subnet6: plan.node_subnet6(),
        gateway: plan.gateway(),
        mtu: settings.mtu,
    })
}
