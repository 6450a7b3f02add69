//! The etcd backend against a real etcd (`/usr/bin/etcd` on loopback).
//!
//! This file holds the fixtures; the scenarios are in `tests/`: joining
//! (`join.rs`), the registry's claims (`registry.rs`) and the sync task
//! (`sync.rs`).

mod join;
mod registry;
mod remove;
mod sync;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::*;
use crate::model::{Instance, InstanceKey, NodeInfo, Placement, ServiceName, Snapshot};
use crate::registry::{Claim, ClusterView};
use crate::Error;
use testbed::etcd::{Etcd, ETCD_BIN};

fn etcd() -> Option<(tempfile::TempDir, Etcd)> {
    if !Etcd::available() {
        eprintln!("skipped: {} is not installed", ETCD_BIN);
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Etcd::start(dir.path()).expect("start etcd");
    Some((dir, p))
}

fn settings(ep: &str) -> EtcdSettings {
    let mut s = EtcdSettings::new(vec![ep.to_owned()]);
    s.prefix = "/t".to_owned();
    s.lease_ttl = Duration::from_secs(2);
    s.request_timeout = Duration::from_secs(1);
    s
}

fn endpoint(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 77, 0, i), 50103))
}

fn start(ep: &str, name: &str, i: u8) -> EtcdCluster {
    EtcdCluster::start(settings(ep), name.to_owned(), endpoint(i)).expect("start")
}

async fn joined(ep: &str, name: &str, i: u8) -> (EtcdCluster, AddressPlan) {
    let c = start(ep, name, i);
    let idx = c
        .join(&AddressPlan::with_default_ranges(0), Duration::from_secs(5))
        .await
        .expect("join");
    (c, AddressPlan::with_default_ranges(idx))
}

fn svc(s: &str) -> ServiceName {
    s.parse().expect("service name")
}

fn claim(plan: &AddressPlan, name: &str, host: u32) -> Claim {
    let ns = Ipv4Addr::from(u32::from(plan.node_subnet().network()) + host);
    Claim {
        name: svc(name),
        number: None,
        instance_ip: None,
        ns_addr: plan.cluster_pair(ns),
    }
}

/// A manager-like snapshot holding `local` as local attachments.
fn snapshot(
    node: &str,
    plan: &AddressPlan,
    version: u64,
    local: &[(InstanceKey, Claim, crate::model::DualAddr)],
) -> Arc<Snapshot> {
    let mut instances = BTreeMap::new();
    for (key, c, ip) in local {
        instances.insert(
            key.clone(),
            Instance {
                key: key.clone(),
                ns_addr: c.ns_addr,
                instance_ip: *ip,
                placement: Placement::Local {
                    netns: PathBuf::from("/run/netns/x"),
                    pid: None,
                    host_veth: "ptx".into(),
                    ifname: "eth0".into(),
                    container_id: None,
                    ports: Vec::new(),
                    default_route: true,
                },
            },
        );
    }
    Arc::new(Snapshot {
        version,
        node: NodeInfo {
            name: node.to_owned(),
            subnet: plan.node_subnet(),
            subnet6: plan.node_subnet6(),
            service_range: plan.services,
            service_range6: plan.services6,
        },
        services: BTreeMap::new(),
        instances,
        peers: BTreeMap::new(),
        policy: Default::default(),
        clients: Default::default(),
    })
}

async fn wait_view(
    rx: &mut watch::Receiver<Arc<ClusterView>>,
    within: Duration,
    what: &str,
    ok: impl Fn(&ClusterView) -> bool,
) -> Duration {
    let t0 = Instant::now();
    let r = tokio::time::timeout(within, async { rx.wait_for(|v| ok(v)).await.is_ok() }).await;
    match r {
        Ok(true) => t0.elapsed(),
        _ => panic!(
            "{what}: not seen within {within:?}; view: {:?}",
            rx.borrow()
        ),
    }
}

/// Polls etcd until `key` exists and `ok` holds for it.
async fn wait_key(
    kv: &mut etcd_client::Client,
    key: &str,
    ok: impl Fn(&etcd_client::KeyValue) -> bool,
) -> etcd_client::KeyValue {
    let t0 = Instant::now();
    loop {
        let got = kv.get(key, None).await.expect("get");
        if let Some(k) = got.kvs().first().filter(|k| ok(k)) {
            return k.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{key}: never as expected: {:?}",
            got.kvs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
