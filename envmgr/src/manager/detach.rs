//! Detach: a local instance leaves the node.
//!
//! Validate (it exists and runs here), remove the veth and its published
//! ports (the NAT table, gone with the last of them), persist, publish,
//! then remove its resolv.conf and withdraw its cluster claim. A failed
//! store write re-creates the veth, so a refused detach changes nothing.

use super::{kernel_error, veth_spec, Manager};
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{Instance, InstanceKey, Placement};

impl<K: Kernel> Manager<K> {
    /// Detaches a local instance: removes its veth, releases its addresses
    /// (and its service's ServiceIP when it was the last instance).
    pub async fn detach(&self, key: &InstanceKey) -> Result<Instance> {
        let mut table = self.table.lock().await;
        let inst = table.instance(key)?;
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
        if let Err(e) = self.apply_nat(&next).await {
            if let Err(undo) = self.kernel.attach(&spec).await {
                tracing::error!(instance = %key, "undo detach after a NAT failure: {undo}");
            }
            return Err(e);
        }
        if let Err(e) = self.commit(&mut table, next) {
            self.undo_nat(&table).await;
            if let Err(undo) = self.kernel.attach(&spec).await {
                tracing::error!(instance = %key, "undo detach after store failure: {undo}");
            }
            return Err(e);
        }
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
}
