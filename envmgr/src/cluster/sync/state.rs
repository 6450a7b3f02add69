//! The sync task's picture of the store: the records it read and watches,
//! what it made etcd hold for the local instances, and the view of the
//! other nodes built from it. No I/O: records come in through
//! [`State::apply`], the view goes out through [`State::view`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use crate::cluster::keys::{self, InstanceRecord, Keys, NodeRecord, ParsedKey};
use crate::model::{
    Instance, InstanceKey, Peer, Placement, Policy, Service, ServiceName, Snapshot,
};
use crate::registry::ClusterView;
/// What the sync task knows of the store, and what it made etcd hold.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Services watched.
    pub(super) interests: BTreeSet<ServiceName>,
    /// When each interest was last used (see `idle.rs`).
    pub(super) used: BTreeMap<ServiceName, Instant>,
    pub(super) nodes: BTreeMap<String, NodeRecord>,
    pub(super) services: BTreeMap<ServiceName, Service>,
    /// Instances of the interesting services, on every node (ours too).
    pub(super) instances: BTreeMap<InstanceKey, InstanceRecord>,
    /// The last revision seen.
    pub(super) revision: i64,
    /// Unclaimed addresses, until when they are not looked up again.
    pub(super) negative: HashMap<Ipv4Addr, Instant>,
    /// Misses that came while etcd was away.
    pub(super) pending: BTreeSet<IpAddr>,
    /// Service names nobody registered, until when they are not looked up again.
    pub(super) negative_names: HashMap<ServiceName, Instant>,
    /// Name misses that came while etcd was away.
    pub(super) pending_names: BTreeSet<ServiceName>,
    /// What etcd was last made to hold for the local instances.
    pub(super) reconciled: BTreeMap<InstanceKey, InstanceRecord>,
    /// Local instances whose key is held by another node.
    pub(super) conflicting: BTreeSet<InstanceKey>,
    /// Local instances whose registration vanished (seen in a watch).
    pub(super) dirty: BTreeSet<InstanceKey>,
    /// The cluster's policy, once read (absent key: the default).
    pub(super) policy: Option<Policy>,
}

impl State {
    /// Applies a key's new value (`None`: deleted) to the state. A record
    /// that does not parse is skipped with a warning.
    pub(super) fn apply(&mut self, keys: &Keys, key: &[u8], value: Option<&[u8]>) {
        let st = self;
        match keys.parse(key) {
            Some(ParsedKey::Node(name)) => match value {
                Some(v) => match keys::decode::<NodeRecord>(key, v) {
                    Ok(rec) => {
                        st.nodes.insert(name, rec);
                    }
                    Err(e) => tracing::warn!("cluster sync: {e}"),
                },
                None => {
                    st.nodes.remove(&name);
                }
            },
            Some(ParsedKey::Service(name)) if st.interests.contains(&name) => match value {
                Some(v) => match keys::decode::<Service>(key, v) {
                    Ok(svc) if svc.name == name => {
                        st.services.insert(name, svc);
                    }
                    Ok(_) => {
                        tracing::warn!(service = %name, "cluster sync: record names another service; skipped")
                    }
                    Err(e) => tracing::warn!("cluster sync: {e}"),
                },
                None => {
                    st.services.remove(&name);
                }
            },
            Some(ParsedKey::Instance(ik)) if st.interests.contains(&ik.name) => match value {
                Some(v) => match keys::decode::<InstanceRecord>(key, v) {
                    Ok(rec) => {
                        st.instances.insert(ik, rec);
                    }
                    Err(e) => tracing::warn!("cluster sync: {e}"),
                },
                None => {
                    if st.reconciled.contains_key(&ik) {
                        // Ours and still attached: register it again.
                        st.dirty.insert(ik.clone());
                    }
                    st.instances.remove(&ik);
                }
            },
            Some(ParsedKey::Policy) => match value {
                Some(v) => match keys::decode::<Policy>(key, v) {
                    Ok(p) => match p.validate() {
                        Ok(()) => st.policy = Some(p),
                        Err(e) => {
                            tracing::warn!(
                                "cluster sync: policy refused, keeping the last one: {e}"
                            )
                        }
                    },
                    Err(e) => tracing::warn!("cluster sync: {e}"),
                },
                None => st.policy = Some(Policy::default()),
            },
            _ => {}
        }
    }

    /// The view of the other nodes this state holds (`me` left out).
    pub(super) fn view(&self, me: &str) -> ClusterView {
        let st = self;
        ClusterView {
            revision: st.revision,
            peers: st
                .nodes
                .values()
                .filter(|n| n.name != me)
                .map(|n| {
                    (
                        n.name.clone(),
                        Peer {
                            name: n.name.clone(),
                            endpoint: n.endpoint,
                            public_key: n.public_key.clone(),
                        },
                    )
                })
                .collect(),
            services: st.services.clone(),
            instances: st
                .instances
                .iter()
                .filter(|(_, r)| r.node != me)
                .map(|(k, r)| {
                    let inst = Instance {
                        key: k.clone(),
                        ns_addr: r.ns_addr,
                        instance_ip: r.instance_ip,
                        placement: Placement::Remote {
                            node: r.node.clone(),
                        },
                    };
                    (k.clone(), inst)
                })
                .collect(),
            policy: st.policy.clone(),
        }
    }
}

/// What etcd should hold for the local instances of `snap` (on `node`).
pub(super) fn wanted(node: &str, snap: &Snapshot) -> BTreeMap<InstanceKey, InstanceRecord> {
    snap.instances
        .values()
        .filter(|i| matches!(i.placement, Placement::Local { .. }))
        .map(|i| {
            let rec = InstanceRecord {
                node: node.to_owned(),
                ns_addr: i.ns_addr,
                instance_ip: i.instance_ip,
            };
            (i.key.clone(), rec)
        })
        .collect()
}
