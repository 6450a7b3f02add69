//! The watching node: envmgr's own etcd cluster client and sync task,
//! in-process, with a local snapshot that uses `--interest` services, and
//! the time each change in etcd takes to show in its published view.
//!
//! A small observer task stamps every published view the moment it wakes,
//! so a change's latency is "etcd write started" -> "first view that
//! reflects it", not "-> when the measuring loop got round to looking".

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use envmgr::cluster::keys::Keys;
use envmgr::cluster::{EtcdCluster, EtcdSettings};
use envmgr::model::{Instance, InstanceKey, NodeInfo, Placement, ServiceName, Snapshot};
use envmgr::plan::AddressPlan;
use envmgr::registry::ClusterView;
use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use tokio::sync::{mpsc, watch};

use testbed::etcd::Etcd;

use super::args::ControlArgs;
use super::layout::{Layout, SimInstance, SPARE_PER_NODE};
use super::load::{create_txn, instance_puts, Leases};
use super::metrics::metric_sum;
use super::report::{percentiles, WatchReport};
use super::tables::SplitMix;

/// How long one change may take to show before it counts as missed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the first full view may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// The watcher's local instances get numbers from here on, far above the
/// simulated ones.
const LOCAL_NUMBER_BASE: u32 = 900_000;
/// etcd's counter of bytes sent to gRPC clients.
const SENT_METRIC: &str = "etcd_network_client_grpc_sent_bytes_total";

/// The services the watcher is interested in: spread over all services.
pub fn interesting(layout: &Layout, k: u32) -> Vec<u32> {
    (0..k)
        .map(|i| (u64::from(i) * u64::from(layout.services) / u64::from(k)) as u32)
        .collect()
}

/// The watcher's view of itself: one local instance of every interesting
/// service, in its own subnet and ServiceIP block.
fn local_snapshot(layout: &Layout, plan: &AddressPlan, interest: &[u32]) -> Snapshot {
    let mut services = BTreeMap::new();
    let mut instances = BTreeMap::new();
    let subnet = plan.node_subnet();
    let block = plan.alloc_block();
    for (k, &s) in interest.iter().enumerate() {
        let svc = layout.service(s);
        let key = InstanceKey {
            name: svc.name.clone(),
            number: LOCAL_NUMBER_BASE + k as u32,
        };
        let ns4 = Ipv4Addr::from(u32::from(subnet.network()) + 2 + k as u32);
        let iip4 = Ipv4Addr::from(u32::from(block.network()) + 1 + k as u32);
        instances.insert(
            key.clone(),
            Instance {
                key,
                ns_addr: plan.cluster_pair(ns4),
                instance_ip: plan.service_pair(iip4),
                placement: Placement::Local {
                    netns: PathBuf::from(format!("/run/netns/ptbench-c{k}")),
                    pid: None,
                    host_veth: format!("ptb{k:07}"),
                    ifname: "eth0".into(),
                    container_id: None,
                    ports: Vec::new(),
                    default_route: true,
                },
            },
        );
        services.insert(svc.name.clone(), svc);
    }
    Snapshot {
        version: 1,
        node: NodeInfo {
            name: "watcher".into(),
            subnet,
            subnet6: plan.node_subnet6(),
            service_range: plan.services,
            service_range6: plan.services6,
        },
        services,
        instances,
        peers: BTreeMap::new(),
        policy: Default::default(),
        clients: Default::default(),
    }
}

/// Views as they are published, each stamped when the observer saw it.
struct Observed {
    rx: mpsc::UnboundedReceiver<(Instant, Arc<ClusterView>)>,
    last: Arc<ClusterView>,
}

impl Observed {
    fn spawn(mut views: watch::Receiver<Arc<ClusterView>>) -> Observed {
        let (tx, rx) = mpsc::unbounded_channel();
        let last = views.borrow_and_update().clone();
        tokio::spawn(async move {
            while views.changed().await.is_ok() {
                let v = views.borrow_and_update().clone();
                if tx.send((Instant::now(), v)).is_err() {
                    return;
                }
            }
        });
        Observed { rx, last }
    }

    /// Forgets views published so far (keeping the newest as `last`).
    fn drain(&mut self) {
        while let Ok((_, v)) = self.rx.try_recv() {
            self.last = v;
        }
    }

    /// The time of the first view (published after the last drain, or the
    /// current one) for which `pred` holds; `None` after `timeout`.
    async fn until(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&ClusterView) -> bool,
    ) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((at, v))) => {
                    self.last = v;
                    if pred(&self.last) {
                        return Some(at);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Starts the watcher, waits for its first full view, then times the changes.
pub async fn measure(
    args: &ControlArgs,
    layout: &Layout,
    keys: &Keys,
    client: &Client,
    leases: &Leases,
    server: &Etcd,
) -> Result<WatchReport> {
    let interest = interesting(layout, args.interest);
    let interest_names: Vec<ServiceName> =
        interest.iter().map(|&s| layout.service_name(s)).collect();
    // What the view should hold: every loaded instance of those services.
    let mut present: HashMap<InstanceKey, SimInstance> = HashMap::new();
    for g in 0..layout.instances() {
        let i = layout.instance(g);
        if interest_names.contains(&i.key.name) {
            present.insert(i.key.clone(), i);
        }
    }
    let expected = present.len();

    // etcd's background traffic (the simulated nodes' keepalives) over one
    // second, to take out of the watcher's figure.
    let m0 = sent_bytes(server);
    let bg_t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m1 = sent_bytes(server);
    let bg_rate = match (m0, m1) {
        (Some(a), Some(b)) => Some((b - a) / bg_t0.elapsed().as_secs_f64()),
        _ => None,
    };

    let mut settings = EtcdSettings::new(vec![server.endpoint()]);
    settings.prefix = keys.prefix().to_owned();
    let t_start = Instant::now();
    let cluster = EtcdCluster::start(
        settings,
        "watcher".into(),
        SocketAddr::from((Ipv4Addr::new(10, 77, 255, 254), 50103)),
    )
    .map_err(|e| anyhow!("starting the watcher's cluster client: {e}"))?;
    let mut plan = layout.plan.clone();
    plan.node_index = cluster
        .join(&plan, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow!("the watcher joining: {e}"))?;
    let local = local_snapshot(layout, &plan, &interest);
    let (_local_tx, local_rx) = watch::channel(Arc::new(local));
    let (miss_tx, miss_rx) = mpsc::channel(1024);
    let (_name_tx, name_rx) = mpsc::channel(1);
    let views = cluster.start_sync(local_rx, miss_rx, name_rx);
    let mut obs = Observed::spawn(views);
    let full = |v: &ClusterView| {
        present.keys().all(|k| v.instances.contains_key(k))
            && interest_names.iter().all(|n| v.services.contains_key(n))
    };
    let synced_at = if full(&obs.last) {
        Some(Instant::now())
    } else {
        obs.until(SYNC_TIMEOUT, full).await
    };
    let Some(synced_at) = synced_at else {
        let v = &obs.last;
        bail!(
            "the watcher's view did not hold the {expected} instances of its {} services within {SYNC_TIMEOUT:?}: \
             it has {} services, {} instances (cluster status: {:?})",
            interest.len(),
            v.services.len(),
            v.instances.len(),
            cluster.status()
        );
    };
    let initial_sync_secs = synced_at.duration_since(t_start).as_secs_f64();
    let m2 = sent_bytes(server);
    let sync_sent_bytes = match (m1, m2, bg_rate) {
        (Some(a), Some(b), Some(r)) => Some((b - a - r * t_start.elapsed().as_secs_f64()).max(0.0)),
        _ => None,
    };
    let (view_services, view_instances, view_peers) = (
        obs.last.services.len(),
        obs.last.instances.len(),
        obs.last.peers.len(),
    );
    println!(
        "bench: watcher synced in {initial_sync_secs:.3} s: {view_services} services, {view_instances} instances (expected {expected}), {view_peers} peers"
    );
    let mut kv = client.clone();
    // The sync task registers the watcher's own local instances in etcd
    // after its first view; wait for that, so the changes below time the
    // steady state and not that start-up work.
    let local_keys: Vec<String> = local_key_names(layout, &interest, keys);
    let registered_secs = wait_registered(&mut kv, &local_keys, SYNC_TIMEOUT)
        .await?
        .map(|at| at.duration_since(t_start).as_secs_f64());
    let store_keys = kv
        .get(
            format!("{}/", keys.prefix()),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .context("counting the keys")?
        .count();

    // The changes: even ones add an instance on a random node, odd ones
    // remove a random instance of an interesting service.
    let mut rng = SplitMix(42);
    let mut next_number: HashMap<u32, u32> = interest
        .iter()
        .map(|&s| (s, layout.next_number(s)))
        .collect();
    let mut spare_used: HashMap<u32, u32> = HashMap::new();
    let mut latencies_us = Vec::new();
    let mut missed = 0usize;
    for c in 0..args.changes {
        testbed::cmd::check_interrupt()?;
        if args.gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        }
        obs.drain();
        let add = c % 2 == 0 || present.is_empty();
        let (key, t0) = if add {
            let s = interest[rng.below(interest.len() as u64) as usize];
            let node = pick_node_with_spare(&mut rng, layout, &spare_used)?;
            let slot = layout.per_node + spare_used.get(&node).copied().unwrap_or(0);
            *spare_used.entry(node).or_insert(0) += 1;
            let number = next_number.get_mut(&s).context("interest map")?;
            let inst = layout.instance_at(s, *number, node, slot);
            *number += 1;
            let txn = create_txn(&instance_puts(keys, &inst, leases.of(node)?));
            let t0 = Instant::now();
            let r = kv.txn(txn).await.context("adding an instance")?;
            if !r.succeeded() {
                bail!("adding {}: the key already existed", inst.key);
            }
            let key = inst.key.clone();
            present.insert(key.clone(), inst);
            (key, t0)
        } else {
            let mut all: Vec<&InstanceKey> = present.keys().collect();
            all.sort();
            let key = all[rng.below(all.len() as u64) as usize].clone();
            let inst = present.remove(&key).context("present")?;
            let txn = Txn::new().and_then([
                TxnOp::delete(keys.instance(&key), None::<DeleteOptions>),
                TxnOp::delete(keys.vip(inst.record.instance_ip.v4), None::<DeleteOptions>),
            ]);
            let t0 = Instant::now();
            kv.txn(txn).await.context("removing an instance")?;
            (key, t0)
        };
        let seen = obs
            .until(CHANGE_TIMEOUT, |v| v.instances.contains_key(&key) == add)
            .await;
        match seen {
            Some(at) => latencies_us.push(at.saturating_duration_since(t0).as_micros() as u64),
            None => {
                missed += 1;
                eprintln!(
                    "bench: change {c} ({} {key}) did not reach the view within {CHANGE_TIMEOUT:?}",
                    if add { "add" } else { "remove" }
                );
            }
        }
    }

    // Misses: the dataplane reports a first packet to the round-robin
    // ServiceIP of a service nobody here uses yet; time until the view has
    // the service and all its instances.
    let mut miss_us = Vec::new();
    let mut miss_missed = 0usize;
    let candidates: Vec<u32> = (0..layout.services)
        .filter(|s| !interest.contains(s))
        .step_by(3)
        .take(args.misses as usize)
        .collect();
    for s in candidates {
        testbed::cmd::check_interrupt()?;
        if args.gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        }
        obs.drain();
        let name = layout.service_name(s);
        let want: Vec<InstanceKey> = (u64::from(s)..layout.instances())
            .step_by(layout.services as usize)
            .map(|g| layout.instance(g).key)
            .collect();
        let rr = layout.service(s).rr_ip.v4;
        let t0 = Instant::now();
        miss_tx
            .try_send(IpAddr::V4(rr))
            .map_err(|e| anyhow!("reporting a miss: {e}"))?;
        let seen = obs
            .until(CHANGE_TIMEOUT, |v| {
                v.services.contains_key(&name) && want.iter().all(|k| v.instances.contains_key(k))
            })
            .await;
        match seen {
            Some(at) => miss_us.push(at.saturating_duration_since(t0).as_micros() as u64),
            None => {
                miss_missed += 1;
                eprintln!(
                    "bench: the miss on {rr} ({name}) was not resolved within {CHANGE_TIMEOUT:?}"
                );
            }
        }
    }
    cluster.shutdown().await;
    Ok(WatchReport {
        miss: percentiles(&miss_us),
        miss_latencies_us: miss_us,
        miss_missed,
        interest_services: interest.len(),
        initial_sync_secs,
        registered_secs,
        view_services,
        view_instances,
        view_peers,
        expected_instances: expected,
        store_keys,
        sync_sent_bytes,
        latency: percentiles(&latencies_us),
        latencies_us,
        missed,
    })
}

/// The etcd keys of the watcher's local instances.
fn local_key_names(layout: &Layout, interest: &[u32], keys: &Keys) -> Vec<String> {
    interest
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            keys.instance(&InstanceKey {
                name: layout.service_name(s),
                number: LOCAL_NUMBER_BASE + k as u32,
            })
        })
        .collect()
}

/// Polls until every key in `wanted` exists; the time it did, or `None`
/// after `timeout` (the bench goes on; the report says so).
async fn wait_registered(
    kv: &mut Client,
    wanted: &[String],
    timeout: Duration,
) -> Result<Option<Instant>> {
    let deadline = Instant::now() + timeout;
    let mut i = 0;
    while i < wanted.len() {
        testbed::cmd::check_interrupt()?;
        let r = kv
            .get(
                wanted[i].as_str(),
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        if r.count() > 0 {
            i += 1;
            continue;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "bench: the watcher had not registered {} within {timeout:?}",
                wanted[i]
            );
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Some(Instant::now()))
}

/// A random node that still has a spare slot for a new instance.
fn pick_node_with_spare(
    rng: &mut SplitMix,
    layout: &Layout,
    used: &HashMap<u32, u32>,
) -> Result<u32> {
    for _ in 0..1000 {
        let node = rng.below(u64::from(layout.nodes)) as u32 + 1;
        if used.get(&node).copied().unwrap_or(0) < SPARE_PER_NODE {
            return Ok(node);
        }
    }
    bail!("no simulated node has a spare slot left: use fewer --changes or more --nodes")
}

fn sent_bytes(server: &Etcd) -> Option<f64> {
    server
        .metrics()
        .ok()
        .and_then(|m| metric_sum(&m, SENT_METRIC))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use super::*;

    #[test]
    fn interest_is_spread_and_distinct() {
        let l = Layout::new(200, 50, 1000, AddressPlan::with_default_ranges(0)).unwrap();
        let i = interesting(&l, 100);
        assert_eq!(i.len(), 100);
        assert_eq!(i[0], 0);
        assert_eq!(i[1], 10);
        assert_eq!(i[99], 990);
        let mut d = i.clone();
        d.dedup();
        assert_eq!(d, i);
    }

    #[test]
    fn the_local_snapshot_uses_the_watchers_own_addresses() {
        let l = Layout::new(200, 50, 1000, AddressPlan::with_default_ranges(0)).unwrap();
        let mut plan = l.plan.clone();
        plan.node_index = 201;
        let s = local_snapshot(&l, &plan, &interesting(&l, 5));
        assert_eq!(s.services.len(), 5);
        assert_eq!(s.instances.len(), 5);
        for i in s.instances.values() {
            assert!(i.is_local());
            assert!(plan.alloc_block().contains(&i.instance_ip.v4));
            assert!(plan.node_subnet().contains(&i.ns_addr.v4));
            assert!(i.key.number >= LOCAL_NUMBER_BASE);
        }
    }
}
