//! Publish: replace the node ports published to an attached instance.
//! Docker asks for them after Join (`ProgramExternalConnectivity`), not in
//! the attach, and takes them back before Leave. Validate (the ports, as an
//! attach would), the NAT table, persist, publish; a failure undoes the
//! table, so a refused change changes nothing.

use super::Manager;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{Instance, InstanceKey, Placement, PortMapping};

impl<K: Kernel> Manager<K> {
    /// Replaces the published ports of local instance `key` with `ports`
    /// (empty: publishes none).
    pub async fn set_ports(&self, key: &InstanceKey, ports: Vec<PortMapping>) -> Result<Instance> {
        let mut table = self.table.lock().await;
        let inst = table.instance(key)?;
        if !inst.is_local() {
            return Err(Error::Conflict(format!(
                "instance {key} runs on another node; publish its ports there"
            )));
        }
        if inst.placement.ports() == ports.as_slice() {
            return Ok(inst);
        }
        let mut next = table.clone();
        next.version += 1;
        // Checked against every other instance's ports: its own old ones
        // may be published again.
        set_local_ports(&mut next, key, Vec::new())?;
        self.check_ports(&next, &ports).await?;
        set_local_ports(&mut next, key, ports)?;
        let updated = next.instance(key)?;
        self.apply_nat(&next).await?;
        if let Err(e) = self.commit(&mut table, next) {
            self.undo_nat(&table).await;
            return Err(e);
        }
        tracing::info!(instance = %key, ports = updated.placement.ports().len(), "published ports set");
        Ok(updated)
    }
}

/// Sets the ports of local instance `key` in `table`.
fn set_local_ports(
    table: &mut super::table::Table,
    key: &InstanceKey,
    ports: Vec<PortMapping>,
) -> Result<()> {
    match table.instances.get_mut(key).map(|i| &mut i.placement) {
        Some(Placement::Local { ports: slot, .. }) => {
            *slot = ports;
            Ok(())
        }
        _ => Err(Error::NotFound(format!("no local instance {key}"))),
    }
}
