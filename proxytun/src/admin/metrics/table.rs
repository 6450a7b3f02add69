//! The table families: the snapshot's version and what it holds.

use envmgr::model::Snapshot;
use prometheus_client::encoding::DescriptorEncoder;

use super::encode::{gauge, gauge_labelled};

/// Sizes of the node's table, from the latest snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReadings {
    /// The snapshot's version.
    pub version: u64,
    /// Services known to the node.
    pub services: u64,
    /// Instances attached on this node.
    pub instances_local: u64,
    /// Instances on other nodes.
    pub instances_remote: u64,
    /// Peer nodes.
    pub peers: u64,
}

impl TableReadings {
    /// Counts what `snap` holds.
    pub fn read(snap: &Snapshot) -> Self {
        let local = snap.instances.values().filter(|i| i.is_local()).count() as u64;
        Self {
            version: snap.version,
            services: snap.services.len() as u64,
            instances_local: local,
            instances_remote: snap.instances.len() as u64 - local,
            peers: snap.peers.len() as u64,
        }
    }
}

impl TableReadings {
    /// Writes the table families.
    pub(super) fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let t = self;
        gauge(
            enc,
            "proxytun_table_version",
            "Version of the snapshot the node's table was built from",
            t.version,
        )?;
        gauge(
            enc,
            "proxytun_table_services",
            "Services in the node's table",
            t.services,
        )?;
        gauge_labelled(
            enc,
            "proxytun_table_instances",
            "Instances in the node's table, by location (local: attached on this node)",
            &[
                (vec![("location", "local".to_owned())], t.instances_local),
                (vec![("location", "remote".to_owned())], t.instances_remote),
            ],
        )?;
        gauge(
            enc,
            "proxytun_table_peers",
            "Peer nodes in the node's table",
            t.peers,
        )?;
        Ok(())
    }
}
