//! The isolation policy: read from the snapshot, replaced whole.
//!
//! Validate every field, check the version the writer read, write it to
//! the cluster store first when there is one (so every node's watch picks
//! it up), persist, publish.

use super::Manager;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::model::Policy;

impl<K: Kernel> Manager<K> {
    /// The isolation policy in force on this node, with its version.
    pub fn policy(&self) -> Policy {
        self.snapshot().policy.clone()
    }

    /// Replaces the whole isolation policy after checking every field
    /// ([`Policy::validate`]; a refused policy changes nothing) and, when
    /// `read` is given, that the policy is still at that version: a write
    /// based on a stale read is [`Error::Conflict`] (409) and changes
    /// nothing. `policy.version` is ignored; the answer carries the new one.
    ///
    /// With a cluster store the check and the write are one
    /// compare-and-swap there (the version is cluster-wide), so every
    /// node's watch picks it up; this node applies it at once either way.
    /// Putting the rules in force changes nothing, publishes nothing and
    /// keeps the version.
    pub async fn put_policy(&self, policy: Policy, read: Option<u64>) -> Result<Policy> {
        policy
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut table = self.table.lock().await;
        let policy = match &self.registry {
            Some(registry) => registry.put_policy(&policy, read).await?,
            None => {
                table.policy.check_version(read)?;
                table.policy.successor(&policy)
            }
        };
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
            version = policy.version,
            "policy updated"
        );
        Ok(policy)
    }
}
