//! Registering the simulated cluster directly in etcd, the way the nodes
//! themselves would: one lease per node (kept alive, like a daemon does),
//! create-only transactions (every key must be absent), node records and
//! subnets persistent, `alive/`, instances and instance IPs under the lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::task::JoinSet;

use envmgr::cluster::keys::{encode, Keys, VipKind, VipRecord};

use super::layout::{Layout, SimInstance};

/// Operations per transaction: etcd's default `--max-txn-ops` is 128.
pub const TXN_OPS: usize = 100;
/// Transactions in flight at once while loading.
const IN_FLIGHT: usize = 16;

/// One key to create, maybe under a node's lease.
#[derive(Debug, Clone)]
pub struct Put {
    /// The full key.
    pub key: String,
    /// The value (JSON or a plain string).
    pub value: Vec<u8>,
    /// The lease, 0 for persistent keys.
    pub lease: i64,
}

/// What the load did and how long it took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// Keys written.
    pub keys: usize,
    /// Bytes of keys and values written.
    pub bytes: usize,
    /// Transactions used.
    pub txns: usize,
    /// Seconds to grant the node leases.
    pub lease_secs: f64,
    /// Seconds to write every key.
    pub write_secs: f64,
}

/// The leases of the simulated nodes (index `i - 1` is node `i`'s), kept
/// alive by background tasks until this is dropped.
#[derive(Debug)]
pub struct Leases {
    /// Lease ids by node.
    pub ids: Vec<i64>,
    keepers: JoinSet<()>,
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.keepers.abort_all();
    }
}

impl Leases {
    /// The lease of node `i` (1-based).
    pub fn of(&self, node: u32) -> Result<i64> {
        self.ids
            .get(node as usize - 1)
            .copied()
            .with_context(|| format!("no lease for node {node}"))
    }
}

/// Grants one lease per node with `ttl` and keeps each alive every ttl/3,
/// as a daemon does.
pub async fn grant_leases(client: &Client, nodes: u32, ttl: i64) -> Result<Leases> {
    let ids: Vec<i64> = stream::iter(0..nodes)
        .map(|_| {
            let mut c = client.clone();
            async move {
                let r = c.lease_grant(ttl, None).await.context("granting a lease")?;
                anyhow::Ok(r.id())
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    let mut keepers = JoinSet::new();
    let every = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    for &id in &ids {
        let mut c = client.clone();
        keepers.spawn(async move {
            let Ok((mut keeper, mut responses)) = c.lease_keep_alive(id).await else {
                eprintln!("bench: could not keep lease {id:x} alive");
                return;
            };
            loop {
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() || responses.message().await.is_err() {
                    eprintln!("bench: lost the keepalive of lease {id:x}");
                    return;
                }
            }
        });
    }
    Ok(Leases { ids, keepers })
}

/// The keys of node `i`: subnet and record (persistent) and `alive/`.
pub fn node_puts(layout: &Layout, keys: &Keys, i: u32, lease: i64) -> Vec<Put> {
    let rec = layout.node_record(i);
    vec![
        Put {
            key: keys.subnet(i),
            value: rec.name.clone().into_bytes(),
            lease: 0,
        },
        Put {
            key: keys.node(&rec.name),
            value: encode(&rec),
            lease: 0,
        },
        Put {
            key: keys.alive(&rec.name),
            value: Vec::new(),
            lease,
        },
    ]
}

/// The keys of service `s`: its record and the claims of its ServiceIPs.
pub fn service_puts(layout: &Layout, keys: &Keys, s: u32) -> Vec<Put> {
    let svc = layout.service(s);
    let owner = svc.name.to_string();
    let mut v = vec![
        Put {
            key: keys.service(&svc.name),
            value: encode(&svc),
            lease: 0,
        },
        Put {
            key: keys.vip(svc.rr_ip.v4),
            value: encode(&VipRecord {
                kind: VipKind::Rr,
                owner: owner.clone(),
            }),
            lease: 0,
        },
    ];
    if let Some(c) = svc.closest_ip {
        v.push(Put {
            key: keys.vip(c.v4),
            value: encode(&VipRecord {
                kind: VipKind::Closest,
                owner,
            }),
            lease: 0,
        });
    }
    v
}

/// The keys of one instance: its record and its instance IP's claim, both
/// under its node's lease.
pub fn instance_puts(keys: &Keys, inst: &SimInstance, lease: i64) -> Vec<Put> {
    vec![
        Put {
            key: keys.instance(&inst.key),
            value: encode(&inst.record),
            lease,
        },
        Put {
            key: keys.vip(inst.record.instance_ip.v4),
            value: encode(&VipRecord {
                kind: VipKind::Instance,
                owner: inst.key.to_string(),
            }),
            lease,
        },
    ]
}

/// A create-only transaction: every key must be absent, then all are put.
pub fn create_txn(puts: &[Put]) -> Txn {
    let compares: Vec<Compare> = puts
        .iter()
        .map(|p| Compare::create_revision(p.key.as_str(), CompareOp::Equal, 0))
        .collect();
    let ops: Vec<TxnOp> = puts
        .iter()
        .map(|p| {
            let opts = (p.lease != 0).then(|| PutOptions::new().with_lease(p.lease));
            TxnOp::put(p.key.as_str(), p.value.clone(), opts)
        })
        .collect();
    Txn::new().when(compares).and_then(ops)
}

/// Writes `puts` in create-only transactions of at most [`TXN_OPS`] keys,
/// several in flight; fails if any key already existed.
pub async fn write_all(client: &Client, puts: Vec<Put>) -> Result<usize> {
    let puts = Arc::new(puts);
    let batches: Vec<(usize, usize)> = (0..puts.len())
        .step_by(TXN_OPS)
        .map(|lo| (lo, (lo + TXN_OPS).min(puts.len())))
        .collect();
    let n = batches.len();
    stream::iter(batches)
        .map(|(lo, hi)| {
            let mut c = client.clone();
            let puts = Arc::clone(&puts);
            async move {
                let r = c
                    .txn(create_txn(&puts[lo..hi]))
                    .await
                    .context("writing a batch")?;
                if !r.succeeded() {
                    bail!(
                        "a key of the batch starting with {} already exists (is etcd empty?)",
                        puts[lo].key
                    );
                }
                Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(n)
}

/// Registers the whole layout: leases first, then nodes, services and
/// instances. Returns the leases (kept alive) and the timings.
pub async fn load(
    client: &Client,
    layout: &Layout,
    keys: &Keys,
    ttl: i64,
) -> Result<(Leases, LoadReport)> {
    let t0 = Instant::now();
    let leases = grant_leases(client, layout.nodes, ttl).await?;
    let lease_secs = t0.elapsed().as_secs_f64();

    let mut puts = Vec::new();
    for i in 1..=layout.nodes {
        puts.extend(node_puts(layout, keys, i, leases.of(i)?));
    }
    for s in 0..layout.services {
        puts.extend(service_puts(layout, keys, s));
    }
    for g in 0..layout.instances() {
        let inst = layout.instance(g);
        puts.extend(instance_puts(keys, &inst, leases.of(inst.node)?));
    }
    let keys_n = puts.len();
    let bytes = puts.iter().map(|p| p.key.len() + p.value.len()).sum();
    let t1 = Instant::now();
    let txns = write_all(client, puts).await?;
    let write_secs = t1.elapsed().as_secs_f64();
    Ok((
        leases,
        LoadReport {
            keys: keys_n,
            bytes,
            txns,
            lease_secs,
            write_secs,
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests {
    use envmgr::plan::AddressPlan;

    use super::*;

    #[test]
    fn the_load_has_the_schema_keys_and_leases() {
        let l = Layout::new(4, 3, 5, AddressPlan::with_default_ranges(0)).unwrap();
        let k = Keys::new("/p");
        let n = node_puts(&l, &k, 2, 77);
        assert_eq!(n[0].key, "/p/subnets/2");
        assert_eq!(n[0].value, b"sim0002");
        assert_eq!(n[0].lease, 0);
        assert_eq!(n[2].key, "/p/alive/sim0002");
        assert_eq!(n[2].lease, 77);
        let s = service_puts(&l, &k, 1);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|p| p.lease == 0));
        let text = |p: &Put| String::from_utf8(p.value.clone()).unwrap();
        assert!(text(&s[2]).contains("\"closest\""));
        let i = instance_puts(&k, &l.instance(4), 9);
        assert!(i.iter().all(|p| p.lease == 9));
        assert!(text(&i[1]).contains("\"instance\""));
        assert!(text(&i[1]).contains(&l.instance(4).key.to_string()));
    }
}
