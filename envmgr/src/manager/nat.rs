//! The NAT part of attach, detach and start: which nftables rules the
//! table asks for (published ports, masquerade), and the checks a new
//! container's published ports must pass before anything changes.

use super::settings::Settings;
use super::table::Table;
use super::Manager;
use crate::error::{Error, Result};
use crate::kernel::{Kernel, Masquerade, NatSpec, Publish};
use crate::model::{check_mappings, Instance, PortMapping};

/// The NAT the table asks for: every local instance's published ports, and
/// masquerading when it is on and some local container is not opted out.
pub(super) fn nat_spec(settings: &Settings, table: &Table) -> NatSpec {
    let locals: Vec<&Instance> = table.instances.values().filter(|i| i.is_local()).collect();
    let mut publish: Vec<Publish> = locals
        .iter()
        .flat_map(|i| {
            i.placement.ports().iter().map(|m| Publish {
                mapping: *m,
                to: i.ns_addr.v4,
            })
        })
        .collect();
    publish.sort_by_key(|p| (p.mapping.protocol, p.mapping.host_port));
    let (masq, except): (Vec<&Instance>, Vec<&Instance>) = locals
        .iter()
        .partition(|i| !settings.masquerade_except.contains(&i.key.name.app));
    let mut spec = NatSpec {
        publish,
        ..NatSpec::default()
    };
    if settings.masquerade && !masq.is_empty() {
        let plan = &settings.plan;
        spec.masquerade4 = Some(Masquerade {
            from: plan.node_subnet(),
            keep: vec![plan.cluster, plan.services],
            except: except.iter().map(|i| i.ns_addr.v4).collect(),
        });
        spec.masquerade6 = Some(Masquerade {
            from: plan.node_subnet6(),
            keep: vec![plan.cluster6, plan.services6],
            except: except.iter().map(|i| i.ns_addr.v6).collect(),
        });
    }
    spec
}

impl<K: Kernel> Manager<K> {
    /// Refuses published ports that repeat a node port, clash with another
    /// container's, or are held by a socket on the node. Changes nothing.
    pub(super) async fn check_ports(&self, table: &Table, ports: &[PortMapping]) -> Result<()> {
        check_mappings(ports).map_err(|e| Error::Invalid(e.to_string()))?;
        for m in ports {
            let owner = table.instances.values().find(|i| {
                i.placement
                    .ports()
                    .iter()
                    .any(|o| o.host_port == m.host_port && o.protocol == m.protocol)
            });
            if let Some(owner) = owner {
                return Err(Error::Conflict(format!(
                    "node port {}/{} is already published to instance {}; pick another node port or detach {} first",
                    m.host_port,
                    m.protocol.as_str(),
                    owner.key,
                    owner.key
                )));
            }
            let in_use = self
                .kernel
                .port_in_use(m)
                .await
                .map_err(|e| Error::Kernel(format!("{e}; nothing was changed")))?;
            if in_use {
                return Err(Error::Conflict(format!(
                    "node port {}/{} is in use by a program on this node; pick another node port",
                    m.host_port,
                    m.protocol.as_str()
                )));
            }
        }
        Ok(())
    }

    /// Applies the NAT `table` asks for; a failure is the request's error.
    pub(super) async fn apply_nat(&self, table: &Table) -> Result<()> {
        self.kernel
            .set_nat(&nat_spec(&self.settings, table))
            .await
            .map_err(|e| Error::Kernel(format!("{e}; nothing was changed")))
    }

    /// Puts back the NAT of `table` after a later step failed.
    pub(super) async fn undo_nat(&self, table: &Table) {
        if let Err(e) = self.kernel.set_nat(&nat_spec(&self.settings, table)).await {
            tracing::error!("undo the NAT change: {e}");
        }
    }

    /// Removes our NAT table at a clean stop: nothing of ours stays in the
    /// kernel's ruleset while the daemon is down. The next start rebuilds
    /// it from the stored attachments.
    pub async fn stop_nat(&self) -> Result<()> {
        let _table = self.table.lock().await;
        self.kernel
            .set_nat(&NatSpec::default())
            .await
            .map_err(|e| Error::Kernel(e.to_string()))
    }
}
