//! The isolation policy: read from the snapshot, replaced whole.
//!
//! Validate every field, write it to the cluster store first when there is
//! one (so every node's watch picks it up), persist, publish.

use super::Manager;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::Policy;

impl<K: Kernel> Manager<K> {
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
        self.commit(&mut table, next)?;
        tracing::info!(
            isolate = policy.isolate,
            rules = policy.allow.len(),
            "policy updated"
        );
        Ok(policy)
    }
}
