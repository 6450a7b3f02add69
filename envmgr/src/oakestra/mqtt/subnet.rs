//! The node's subnet as the cluster assigns it, turned into our address
//! plan, and cached in the state directory so that a restart does not ask
//! again (`oakestra-subnet.json`, beside the registration's
//! `oakestra.json`).

use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::AddressPlan;
use crate::store::write_atomic;

/// The cache file in the state directory.
pub const FILE: &str = "oakestra-subnet.json";

/// Oakestra gives every worker a /26 of the cluster range.
pub const NODE_PREFIX: u8 = 26;

/// The subnet the cluster gave a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedSubnet {
    /// The worker it was given to: a cache of another id is not used.
    pub client_id: String,
    /// The subnet's network address, as the cluster sent it.
    pub address: Ipv4Addr,
}

impl CachedSubnet {
    /// The cached subnet of `client_id`, if any. A damaged file is
    /// ignored with a warning: the node then asks again.
    pub fn load(state_dir: &Path, client_id: &str) -> Option<Self> {
        let path = state_dir.join(FILE);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<Self>(&bytes) {
            Ok(c) if c.client_id == client_id => Some(c),
            Ok(c) => {
                tracing::info!(cached = %c.client_id, client_id, "oakestra: the cached subnet is another worker's; asking the cluster");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "oakestra: cached subnet unreadable ({e}); asking the cluster");
                None
            }
        }
    }

    /// Writes the cache, never half-written.
    pub fn save(&self, state_dir: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        write_atomic(&state_dir.join(FILE), &bytes)
            .map_err(|e| format!("{} {}: {}", e.action, e.path.display(), e.source))
    }
}

/// The plan for the subnet at `address`: `base`'s ranges, node prefix 26,
/// and the index of that /26 in the cluster range. The message says what
/// does not fit.
pub fn plan_for(base: &AddressPlan, address: Ipv4Addr) -> Result<AddressPlan, String> {
    let mut plan = base.clone();
    plan.node_prefix = NODE_PREFIX;
    if !plan.cluster.contains(&address) {
        return Err(format!(
            "the cluster gave subnet {address}, outside network.cluster {}; set network.cluster to the cluster's range (Oakestra's default 10.18.0.0/16)",
            plan.cluster
        ));
    }
    let offset = u32::from(address) - u32::from(plan.cluster.network());
    let size = 1u32 << (32 - u32::from(NODE_PREFIX));
    if offset % size != 0 {
        return Err(format!(
            "the cluster gave subnet {address}, which does not start a /{NODE_PREFIX}"
        ));
    }
    plan.node_index = offset / size;
    plan.validate().map_err(|e| e.to_string())?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_from_the_address() {
        let base = AddressPlan::with_default_ranges(0);
        let p = plan_for(&base, "10.18.0.64".parse().expect("ip")).expect("fits");
        assert_eq!((p.node_prefix, p.node_index), (26, 1));
        assert_eq!(p.node_subnet().to_string(), "10.18.0.64/26");
        assert_eq!(p.gateway().v4.to_string(), "10.18.0.65");
        let p = plan_for(&base, "10.18.1.0".parse().expect("ip")).expect("fits");
        assert_eq!(p.node_index, 4);
        for bad in ["10.19.0.0", "10.18.0.65"] {
            let e = plan_for(&base, bad.parse().expect("ip")).expect_err("refused");
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn cached_per_worker() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(CachedSubnet::load(dir.path(), "w1"), None);
        let c = CachedSubnet {
            client_id: "w1".into(),
            address: "10.18.0.64".parse().expect("ip"),
        };
        c.save(dir.path()).expect("save");
        assert_eq!(CachedSubnet::load(dir.path(), "w1"), Some(c));
        assert_eq!(CachedSubnet::load(dir.path(), "w2"), None);
        std::fs::write(dir.path().join(FILE), b"{").expect("write");
        assert_eq!(CachedSubnet::load(dir.path(), "w1"), None);
    }
}
