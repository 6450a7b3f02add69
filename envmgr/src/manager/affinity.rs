//! Client affinity: set per service, in the cluster's record first when
//! there is a cluster store, then in this node's view (docs/api.md).

use super::Manager;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::{Affinity, Service, ServiceName};

impl<K: Kernel> Manager<K> {
    /// Sets a service's client affinity: in the cluster's record first
    /// (with etcd, so every node balances it alike), then in this node's
    /// view. A bad timeout is a 400 and an unknown service a 404; neither
    /// changes anything.
    pub async fn set_affinity(&self, name: &ServiceName, affinity: Affinity) -> Result<Service> {
        affinity.validate().map_err(Error::Invalid)?;
        let mut table = self.table.lock().await;
        let stored = match &self.registry {
            Some(registry) => Some(registry.set_affinity(name, affinity).await?),
            None => None,
        };
        let Some(current) = table.services.get(name) else {
            return stored.ok_or_else(|| {
                Error::NotFound(format!("no service {name}; attach an instance of it first"))
            });
        };
        if current.affinity == affinity {
            return Ok(current.clone());
        }
        let mut next = table.clone();
        next.version += 1;
        let svc = next
            .services
            .get_mut(name)
            .ok_or_else(|| Error::NotFound(format!("no service {name}")))?;
        svc.affinity = affinity;
        let svc = svc.clone();
        self.commit(&mut table, next)?;
        tracing::info!(service = %name, mode = ?affinity.mode, timeout_s = affinity.timeout_s, "affinity updated");
        Ok(svc)
    }
}
