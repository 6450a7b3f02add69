//! Registering one local instance in etcd under the node's lease: its
//! `instances/` key and its instance IP's claim, in one compare-and-swap,
//! never taking over what another node holds.

use std::collections::BTreeSet;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use crate::cluster::keys::{self, InstanceRecord, VipKind, VipRecord};
use crate::cluster::registry::{corrupt, unavailable};
use crate::cluster::session::Inner;
use crate::cluster::txn::read_pair;
use crate::error::{Error, Result};
use crate::model::InstanceKey;

/// Registers one local instance under the current lease unless etcd
/// already holds exactly that. Never takes a key another node holds.
pub(super) async fn register(
    inner: &Inner,
    client: &mut Client,
    lease: i64,
    conflicting: &mut BTreeSet<InstanceKey>,
    key: &InstanceKey,
    rec: &InstanceRecord,
) -> Result<()> {
    let keys = &inner.keys;
    let (ik, vk) = (keys.instance(key), keys.vip(rec.instance_ip.v4));
    let value = keys::encode(rec);
    let vip = keys::encode(&VipRecord {
        kind: VipKind::Instance,
        owner: key.to_string(),
    });
    for _ in 0..8 {
        let (cur_i, cur_v) = read_pair(client, ik.as_str(), vk.as_str())
            .await
            .map_err(unavailable)?;
        let mut when = Vec::new();
        let mut ops = Vec::new();
        match &cur_i {
            None => when.push(Compare::create_revision(ik.as_str(), CompareOp::Equal, 0)),
            Some(kv) => {
                let held: InstanceRecord = keys::decode(kv.key(), kv.value()).map_err(corrupt)?;
                if held.node != inner.node {
                    if conflicting.insert(key.clone()) {
                        tracing::error!(instance = %key, node = %held.node, "cluster: a local instance's key is held by another node; not taking it over (detach one of them)");
                    }
                    return Ok(());
                }
                if kv.value() == value.as_slice() && kv.lease() == lease {
                    // Already right.
                } else {
                    when.push(Compare::mod_revision(
                        ik.as_str(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    ));
                }
            }
        }
        if when.is_empty() && cur_i.is_some() {
            // Instance key fine; fall through to the claim.
        } else {
            ops.push(TxnOp::put(
                ik.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        match &cur_v {
            None => {
                when.push(Compare::create_revision(vk.as_str(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(
                    vk.as_str(),
                    vip.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
            Some(kv) if kv.value() == vip.as_slice() => {
                if kv.lease() != lease {
                    when.push(Compare::mod_revision(
                        vk.as_str(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    ));
                    ops.push(TxnOp::put(
                        vk.as_str(),
                        vip.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    ));
                }
            }
            Some(kv) => {
                if conflicting.insert(key.clone()) {
                    tracing::error!(instance = %key, ip = %rec.instance_ip.v4, holder = %String::from_utf8_lossy(kv.value()), "cluster: a local instance's IP is claimed by someone else; not taking it over");
                }
            }
        }
        if ops.is_empty() {
            conflicting.remove(key);
            return Ok(());
        }
        if client
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(unavailable)?
            .succeeded()
        {
            tracing::info!(instance = %key, lease, "cluster: local instance registered");
            return Ok(());
        }
    }
    Err(Error::Unavailable(format!(
        "register {key}: the record keeps changing"
    )))
}
