//! [`Registry`] on etcd: every claim is one compare-and-swap transaction.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use futures::future::BoxFuture;
use ipnet::Ipv4Net;

use super::error::ClusterError;
use super::keys::{self, InstanceRecord, VipKind, VipRecord};
use super::session::Inner;
use super::txn::gets;
use crate::alloc;
use crate::error::{Error, Result};
use crate::model::{Affinity, DualAddr, InstanceKey, Policy, Service, ServiceName};
use crate::plan::AddressPlan;
use crate::registry::{Claim, Registry, RemovedNode};

mod policy;

/// How often a claim is retried after losing a race to another node.
const RACE_RETRIES: usize = 64;

/// The manager's allocator on etcd for one node (see [`Registry`]).
#[derive(Debug)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
    plan: AddressPlan,
}

pub(crate) fn unavailable(e: etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd: {e}"))
}

pub(crate) fn corrupt(m: String) -> Error {
    ClusterError::Corrupt(m).into()
}

impl EtcdRegistry {
    pub(crate) fn new(inner: Arc<Inner>, plan: AddressPlan) -> Self {
        Self { inner, plan }
    }

    /// Runs `op` with a session, all within the request timeout.
    async fn with_session<'a, T, F>(
        &'a self,
        what: &str,
        op: impl FnOnce(Client, i64) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + 'a,
    {
        let t = self.inner.settings.request_timeout;
        let work = async {
            let s = self.inner.wait_session(t).await.map_err(Error::from)?;
            op(s.client, s.lease).await
        };
        match tokio::time::timeout(t, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!(
                "{what}: etcd did not answer within {t:?}; retry when it is back"
            ))),
        }
    }

    /// The claimed addresses in this node's block.
    async fn used_in_block(
        &self,
        client: &mut Client,
        block: Ipv4Net,
    ) -> Result<BTreeSet<Ipv4Addr>> {
        let keys = &self.inner.keys;
        let got = client
            .get(
                keys.vips_scan(block),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(unavailable)?;
        Ok(got
            .kvs()
            .iter()
            .filter_map(|kv| match keys.parse(kv.key()) {
                Some(keys::ParsedKey::Vip(ip)) if block.contains(&ip) => Some(ip),
                _ => None,
            })
            .collect())
    }

    fn exhausted(&self) -> Error {
        Error::Exhausted(format!(
            "no free address left in this node's block {} of network.services; detach containers or remove unused services",
            self.plan.alloc_block()
        ))
    }

    async fn service_inner(
        &self,
        mut c: Client,
        name: &ServiceName,
        pinned: Option<Ipv4Addr>,
    ) -> Result<Service> {
        let keys = &self.inner.keys;
        let sk = keys.service(name);
        let check = |svc: Service| -> Result<Service> {
            match pinned {
                Some(p) if p != svc.rr_ip.v4 => Err(Error::Conflict(format!(
                    "service {name} already has the round-robin ServiceIP {} in the cluster, not {p}; omit service_ip or use that one",
                    svc.rr_ip.v4
                ))),
                _ => Ok(svc),
            }
        };
        for _ in 0..RACE_RETRIES {
            let got = c.get(sk.as_str(), None).await.map_err(unavailable)?;
            if let Some(kv) = got.kvs().first() {
                return check(keys::decode(kv.key(), kv.value()).map_err(corrupt)?);
            }
            let block = self.plan.alloc_block();
            let mut used = self.used_in_block(&mut c, block).await?;
            let rr = match pinned {
                Some(p) => p,
                None => {
                    alloc::lowest_free_service_addr(block, &used).ok_or_else(|| self.exhausted())?
                }
            };
            used.insert(rr);
            let closest =
                alloc::lowest_free_service_addr(block, &used).ok_or_else(|| self.exhausted())?;
            let svc = Service {
                name: name.clone(),
                rr_ip: self.plan.service_pair(rr),
                closest_ip: Some(self.plan.service_pair(closest)),
                affinity: Default::default(),
            };
            let owner = name.to_string();
            let vip = |kind| {
                keys::encode(&VipRecord {
                    kind,
                    owner: owner.clone(),
                })
            };
            let (rk, ck) = (keys.vip(rr), keys.vip(closest));
            let txn = Txn::new()
                .when([
                    Compare::create_revision(sk.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(rk.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(ck.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(sk.as_str(), keys::encode(&svc), None),
                    TxnOp::put(rk.as_str(), vip(VipKind::Rr), None),
                    TxnOp::put(ck.as_str(), vip(VipKind::Closest), None),
                ])
                .or_else([TxnOp::get(sk.as_str(), None), TxnOp::get(rk.as_str(), None)]);
            let resp = c.txn(txn).await.map_err(unavailable)?;
            if resp.succeeded() {
                tracing::info!(service = %name, rr = %rr, closest = %closest, "cluster: service created");
                return Ok(svc);
            }
            let g = gets(&resp);
            if let Some(Some(kv)) = g.first() {
                // Another node created it first: everyone uses its record.
                return check(keys::decode(kv.key(), kv.value()).map_err(corrupt)?);
            }
            if let (Some(p), Some(Some(kv))) = (pinned, g.get(1)) {
                let holder: std::result::Result<VipRecord, _> = keys::decode(kv.key(), kv.value());
                let owner = holder.map(|h| h.owner).unwrap_or_else(|_| "?".to_owned());
                return Err(Error::Conflict(format!(
                    "ServiceIP {p} is already claimed by {owner} in the cluster; pick another or omit service_ip"
                )));
            }
            // An address was taken meanwhile: allocate again.
        }
        Err(Error::Unavailable(format!(
            "service {name}: lost {RACE_RETRIES} allocation races in a row; retry"
        )))
    }

    async fn claim_inner(
        &self,
        mut c: Client,
        lease: i64,
        claim: Claim,
    ) -> Result<(InstanceKey, DualAddr)> {
        let keys = &self.inner.keys;
        let name = &claim.name;
        for _ in 0..RACE_RETRIES {
            let number = match claim.number {
                Some(n) => n,
                None => {
                    let got = c
                        .get(
                            keys.instances_of(name),
                            Some(GetOptions::new().with_prefix().with_keys_only()),
                        )
                        .await
                        .map_err(unavailable)?;
                    let used: BTreeSet<u32> = got
                        .kvs()
                        .iter()
                        .filter_map(|kv| match keys.parse(kv.key()) {
                            Some(keys::ParsedKey::Instance(k)) => Some(k.number),
                            _ => None,
                        })
                        .collect();
                    alloc::lowest_free_number(&used).ok_or_else(|| {
                        Error::Exhausted(format!("service {name} has no free instance number"))
                    })?
                }
            };
            let ip = match claim.instance_ip {
                Some(ip) => ip,
                None => {
                    let block = self.plan.alloc_block();
                    let used = self.used_in_block(&mut c, block).await?;
                    alloc::lowest_free_service_addr(block, &used).ok_or_else(|| self.exhausted())?
                }
            };
            let key = InstanceKey {
                name: name.clone(),
                number,
            };
            let instance_ip = self.plan.service_pair(ip);
            let rec = InstanceRecord {
                node: self.inner.node.clone(),
                ns_addr: claim.ns_addr,
                instance_ip,
            };
            let vip = VipRecord {
                kind: VipKind::Instance,
                owner: key.to_string(),
            };
            let (ik, vk) = (keys.instance(&key), keys.vip(ip));
            let sk = keys.service(name);
            let leased = || Some(PutOptions::new().with_lease(lease));
            // The service must still exist: the empty-service sweep
            // (`gc.rs`) may have removed it since `service()`.
            let txn = Txn::new()
                .when([
                    Compare::create_revision(ik.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(vk.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(sk.as_str(), CompareOp::Greater, 0),
                ])
                .and_then([
                    TxnOp::put(ik.as_str(), keys::encode(&rec), leased()),
                    TxnOp::put(vk.as_str(), keys::encode(&vip), leased()),
                ])
                .or_else([
                    TxnOp::get(ik.as_str(), None),
                    TxnOp::get(vk.as_str(), None),
                    TxnOp::get(sk.as_str(), None),
                ]);
            let resp = c.txn(txn).await.map_err(unavailable)?;
            if resp.succeeded() {
                tracing::info!(instance = %key, ip = %ip, "cluster: instance claimed");
                return Ok((key, instance_ip));
            }
            let g = gets(&resp);
            if matches!(g.get(2), Some(None)) {
                return Err(Error::Conflict(format!(
                    "service {name} was removed from the cluster as empty meanwhile; attach again"
                )));
            }
            if let (Some(n), Some(Some(kv))) = (claim.number, g.first()) {
                let node = keys::decode::<InstanceRecord>(kv.key(), kv.value())
                    .map(|r| r.node)
                    .unwrap_or_else(|_| "?".to_owned());
                return Err(Error::Conflict(format!(
                    "instance {name}/{n} already runs on node {node}; omit the instance number or pick another"
                )));
            }
            if let (Some(p), Some(Some(kv))) = (claim.instance_ip, g.get(1)) {
                let owner = keys::decode::<VipRecord>(kv.key(), kv.value())
                    .map(|r| r.owner)
                    .unwrap_or_else(|_| "?".to_owned());
                return Err(Error::Conflict(format!(
                    "instance IP {p} is already claimed by {owner} in the cluster; pick another or omit instance_ip"
                )));
            }
        }
        Err(Error::Unavailable(format!(
            "instance of {name}: lost {RACE_RETRIES} claim races in a row; retry"
        )))
    }

    async fn release_inner(&self, mut c: Client, key: &InstanceKey) -> Result<()> {
        withdraw(&self.inner, &mut c, key).await
    }
}

/// Deletes `instances/{key}` and its instance IP claim if this node holds
/// them; absent or someone else's is `Ok` (nothing to withdraw).
pub(crate) async fn withdraw(inner: &Inner, c: &mut Client, key: &InstanceKey) -> Result<()> {
    let keys = &inner.keys;
    let ik = keys.instance(key);
    for _ in 0..RACE_RETRIES {
        let got = c.get(ik.as_str(), None).await.map_err(unavailable)?;
        let Some(kv) = got.kvs().first() else {
            return Ok(());
        };
        let rec: InstanceRecord = keys::decode(kv.key(), kv.value()).map_err(corrupt)?;
        if rec.node != inner.node {
            // Someone else's now: not ours to withdraw.
            return Ok(());
        }
        let vk = keys.vip(rec.instance_ip.v4);
        let vip = c.get(vk.as_str(), None).await.map_err(unavailable)?;
        let owner = key.to_string();
        let vip_ours = vip.kvs().first().filter(|v| {
            keys::decode::<VipRecord>(v.key(), v.value())
                .map(|r| r.kind == VipKind::Instance && r.owner == owner)
                .unwrap_or(false)
        });
        let mut when = vec![Compare::mod_revision(
            ik.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )];
        let mut ops = vec![TxnOp::delete(ik.as_str(), None)];
        if let Some(v) = vip_ours {
            when.push(Compare::mod_revision(
                vk.as_str(),
                CompareOp::Equal,
                v.mod_revision(),
            ));
            ops.push(TxnOp::delete(vk.as_str(), None));
        }
        if c.txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(unavailable)?
            .succeeded()
        {
            tracing::info!(instance = %key, "cluster: instance withdrawn");
            return Ok(());
        }
    }
    Err(Error::Unavailable(format!(
        "withdraw {key}: the record keeps changing; retry"
    )))
}

impl EtcdRegistry {
    /// Rewrites the service record with `affinity`, guarded by its
    /// revision so a concurrent write is never lost.
    async fn set_affinity_inner(
        &self,
        mut c: Client,
        name: &ServiceName,
        affinity: Affinity,
    ) -> Result<Service> {
        let sk = self.inner.keys.service(name);
        for _ in 0..RACE_RETRIES {
            let got = c.get(sk.as_str(), None).await.map_err(unavailable)?;
            let Some(kv) = got.kvs().first() else {
                return Err(Error::NotFound(format!(
                    "no service {name} in the cluster; attach an instance of it first"
                )));
            };
            let mut svc: Service = keys::decode(kv.key(), kv.value()).map_err(corrupt)?;
            if svc.affinity == affinity {
                return Ok(svc);
            }
            svc.affinity = affinity;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    sk.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(sk.as_str(), keys::encode(&svc), None)]);
            if c.txn(txn).await.map_err(unavailable)?.succeeded() {
                tracing::info!(service = %name, mode = ?affinity.mode, timeout_s = affinity.timeout_s, "cluster: affinity written");
                return Ok(svc);
            }
        }
        Err(Error::Unavailable(format!(
            "service {name}: the record kept changing; retry"
        )))
    }
}

impl Registry for EtcdRegistry {
    fn status(&self) -> serde_json::Value {
        let st = self.inner.status().clone();
        let mut v = serde_json::to_value(&st).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("backend".into(), "etcd".into());
            // The CLI's one-liner reads `lease`.
            if let Some(id) = st.lease_id {
                o.insert("lease".into(), format!("{id:x}").into());
            }
        }
        v
    }

    fn service<'a>(
        &'a self,
        name: &'a ServiceName,
        pinned_rr: Option<Ipv4Addr>,
    ) -> BoxFuture<'a, Result<Service>> {
        Box::pin(self.with_session("service", move |c, _| {
            self.service_inner(c, name, pinned_rr)
        }))
    }

    fn claim(&self, claim: Claim) -> BoxFuture<'_, Result<(InstanceKey, DualAddr)>> {
        Box::pin(self.with_session("claim", move |c, lease| self.claim_inner(c, lease, claim)))
    }

    fn release<'a>(&'a self, key: &'a InstanceKey) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.with_session("release", move |c, _| self.release_inner(c, key)))
    }

    fn set_affinity<'a>(
        &'a self,
        name: &'a ServiceName,
        affinity: Affinity,
    ) -> BoxFuture<'a, Result<Service>> {
        Box::pin(self.with_session("affinity", move |c, _| {
            self.set_affinity_inner(c, name, affinity)
        }))
    }

    fn remove_node<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<RemovedNode>> {
        Box::pin(self.with_session("node remove", move |c, _| {
            super::remove::remove_node(&self.inner, c, name)
        }))
    }

    fn put_policy<'a>(
        &'a self,
        policy: &'a Policy,
        read: Option<u64>,
    ) -> BoxFuture<'a, Result<Policy>> {
        Box::pin(self.with_session("policy", move |mut c, _| async move {
            policy::put(&mut c, &self.inner.keys.policy(), policy, read).await
        }))
    }
}
