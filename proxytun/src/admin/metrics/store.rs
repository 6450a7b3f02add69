//! The store families: which backend, and whether it can be written.

use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{gauge, gauge_labelled};

/// The store backend and whether it is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReadings {
    /// `local` or `etcd`.
    pub backend: String,
    /// Whether the store can be written now (always true for `local`).
    pub connected: bool,
}

impl StoreReadings {
    /// Reads `Manager::store_status()`'s JSON: `backend`, and `connected`
    /// for a cluster store; a store without `connected` is a local file.
    pub fn from_json(v: &serde_json::Value) -> Self {
        Self {
            backend: v
                .get("backend")
                .and_then(|b| b.as_str())
                .unwrap_or("unknown")
                .to_owned(),
            connected: v.get("connected").and_then(|c| c.as_bool()).unwrap_or(true),
        }
    }
}

impl StoreReadings {
    /// Writes the store families.
    pub(super) fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        gauge_labelled(
            enc,
            "proxytun_store_info",
            "Always 1; the backend label names the store (local or etcd)",
            &[(vec![("backend", self.backend.clone())], 1)],
        )?;
        gauge(
            enc,
            "proxytun_store_connected",
            "1 while the store can be written (etcd: a live session holding the node's lease; local: always)",
            u64::from(self.connected),
        )?;
        Ok(())
    }
}
