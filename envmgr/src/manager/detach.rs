//! Detach: a local instance leaves the node.
//!
//! Validate (it exists and runs here), remove the veth and its published
//! ports (the NAT table, gone with the last of them), persist, publish,
//! then remove its resolv.conf and withdraw its cluster claim. A failed
//! store write re-creates the veth, so a refused detach changes nothing.
//! When another attachment of the same netns stays, the container's
//! resolv.conf stays, and the default routes (if the leaving interface had
//! them) are handed over to the one that stays.

use super::{kernel_error, shared_netns, veth_spec, write_resolv, Manager};
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
        // Another attachment of the same netns stays: if this one held the
        // default routes, the first of the others takes them over.
        let stay: Vec<Instance> = match &inst.placement {
            Placement::Local { netns, .. } => {
                let ns_id = self.probe.identify(netns).ok();
                shared_netns::sharing(&table, self.probe.as_ref(), netns, ns_id, Some(key))
                    .into_iter()
                    .cloned()
                    .collect()
            }
            Placement::Remote { .. } => Vec::new(),
        };
        let heir = match stay.first() {
            Some(h) if shared_netns::holds_default_route(&inst) => {
                shared_netns::set_holder(&mut next, &h.key, true);
                next.instances.get(&h.key).cloned()
            }
            _ => None,
        };
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
        if let Some(heir) = &heir {
            self.hand_over(heir).await;
        }
        if !stay.is_empty() {
            // The netns's resolv.conf stays for the attachments left.
        } else if let (Some(resolv), Placement::Local { netns, .. }) =
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

    /// Gives `heir` the default routes of its netns (the attachment that had
    /// them is gone) and its resolv.conf. A failure is logged: the detach
    /// is done and stored, and the next start sets the routes again.
    async fn hand_over(&self, heir: &Instance) {
        let Some(spec) = veth_spec(&self.settings, heir) else {
            return;
        };
        match self.kernel.default_route(&spec).await {
            Ok(()) => {
                tracing::info!(instance = %heir.key, ifname = %spec.ifname, "default routes handed over")
            }
            Err(e) => {
                tracing::error!(instance = %heir.key, "hand the default routes over: {e}")
            }
        }
        write_resolv(&self.settings, heir);
    }
}
