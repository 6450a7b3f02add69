//! Restore at start: open the store, check it belongs to this node and
//! plan, set up the bridge, re-apply every local attachment (releasing
//! those whose container is gone), and publish the first snapshot.
//!
//! The order is the manager's usual one: validate (the stored state against
//! the settings), change the kernel (bridge, missing veths), persist (the
//! state is always written at start), then publish. The NAT table
//! (published ports, masquerade) is rebuilt from the stored attachments.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::sync::{watch, Mutex};

use super::nat::nat_spec;
use super::netns::{NetnsProbe, NsProblem, SysNetns};
use super::settings::Settings;
use super::table::Table;
use super::{describe_problem, shared_netns, veth_spec, write_resolv, Manager};
use crate::alloc;
use crate::kernel::{BridgeSpec, Kernel};
use crate::model::{check_label, Instance, ServiceName};
use crate::registry::Registry;
use crate::store::{LocalStore, State, Store};

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

    /// [`Self::open`] with a given store and netns probe (the tests' fakes).
    #[cfg(test)]
    pub(super) async fn open_inner(
        settings: Settings,
        kernel: K,
        store: Box<dyn Store>,
        probe: Box<dyn NetnsProbe>,
    ) -> anyhow::Result<Self> {
        Self::open_full(settings, kernel, store, probe, None).await
    }

    /// Every `open` ends here: validate, set up the bridge, re-apply the
    /// local attachments, write the state, publish the first snapshot.
    pub(super) async fn open_full(
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

        let mut released = !shared_netns::one_holder_each(&mut table, probe.as_ref()).is_empty();
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
            } else if spec.default_route {
                // A crash between a detach and its hand-over leaves the
                // heir without the routes: set them (a no-op when present).
                if let Err(e) = kernel.default_route(&spec).await {
                    tracing::warn!(instance = %inst.key, "set the default routes: {e}");
                }
            }
            // Rewritten at every start, so a changed domain or resolver
            // address reaches containers that were attached before (by the
            // holder of the default routes, when a netns has several).
            if spec.default_route {
                write_resolv(&settings, &inst);
            }
        }
        if registry.is_none() && allocate_missing_closest(&mut table, &settings)? {
            released = true;
        }
        if released {
            table.version += 1;
        }
        // The NAT table from the stored attachments: after a crash it is
        // still there and is replaced whole, after a stop it is re-created.
        kernel
            .set_nat(&nat_spec(&settings, &table))
            .await
            .context("restore the NAT table (published ports, masquerade)")?;
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
            client_clashes: Default::default(),
        })
    }
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
    let diffs = [
        differ("network.cluster", &a.cluster, &b.cluster),
        differ("network.cluster6", &a.cluster6, &b.cluster6),
        differ("network.node_prefix", &a.node_prefix, &b.node_prefix),
        differ("network.services", &a.services, &b.services),
        differ("network.services6", &a.services6, &b.services6),
        differ("node.index", &a.node_index, &b.node_index),
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

/// One config key with its stored and its configured value, as text.
fn differ(
    key: &'static str,
    stored: &dyn fmt::Display,
    configured: &dyn fmt::Display,
) -> (&'static str, String, String) {
    (key, stored.to_string(), configured.to_string())
}
