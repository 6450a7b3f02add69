//! Removing a dead node's records at once (`proxytun node remove NODE`,
//! `DELETE /v1/nodes/{name}`).
//!
//! A node's `alive/` key, its instances and their instance-IP claims live on
//! its lease and leave etcd on their own when it dies. Its membership
//! (`nodes/{name}`, `subnets/{index}`) is permanent on purpose, so a restart
//! after any outage gets the same subnet back; only an operator knows the
//! node is gone for good. This removes all of them in compare-and-swap
//! transactions that each require `alive/{name}` to be absent, so a node
//! that is alive (or comes back meanwhile) is never touched: that is a 409.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::keys::{self, InstanceRecord, NodeRecord, VipKind, VipRecord};
use super::session::Inner;
use crate::error::{Error, Result};
use crate::registry::RemovedNode;

/// Keys per transaction (etcd's default `--max-txn-ops` is 128; each key
/// takes a compare and a delete, plus the `alive/` compare).
const CHUNK: usize = 60;

/// How often the removal starts over after a record changed under it.
const RETRIES: usize = 8;

fn unavailable(e: etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd: {e}"))
}

fn corrupt(m: String) -> Error {
    super::error::ClusterError::Corrupt(m).into()
}

/// A key to delete, at the revision it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Doomed {
    key: String,
    rev: i64,
}

/// Removes every record of node `name` if its `alive/` key is absent.
pub(super) async fn remove_node(inner: &Inner, mut c: Client, name: &str) -> Result<RemovedNode> {
    crate::model::check_label("node", name).map_err(|e| Error::Invalid(e.to_string()))?;
    if name == inner.node {
        return Err(Error::Conflict(format!(
            "{name} is this node; run `proxytun node remove {name}` on another node after stopping this one"
        )));
    }
    let k = &inner.keys;
    let alive = k.alive(name);
    for _ in 0..RETRIES {
        let got = c.get(alive.as_str(), None).await.map_err(unavailable)?;
        if let Some(kv) = got.kvs().first() {
            return Err(Error::Conflict(format!(
                "node {name} is alive: {alive} is held by its lease {:x}; stop its daemon first \
                 (its lease then runs out within store.lease_ttl_secs) and try again",
                kv.lease()
            )));
        }
        let (index, doomed) = collect(inner, &mut c, name).await?;
        if doomed.is_empty() {
            return Err(Error::NotFound(format!(
                "no records of node {name} in etcd"
            )));
        }
        let mut removed = Vec::new();
        let mut raced = false;
        for chunk in doomed.chunks(CHUNK) {
            let mut when = vec![Compare::create_revision(
                alive.as_str(),
                CompareOp::Equal,
                0,
            )];
            when.extend(
                chunk
                    .iter()
                    .map(|d| Compare::mod_revision(d.key.as_str(), CompareOp::Equal, d.rev)),
            );
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|d| TxnOp::delete(d.key.as_str(), None))
                .collect();
            let resp = c
                .txn(Txn::new().when(when).and_then(ops))
                .await
                .map_err(unavailable)?;
            if !resp.succeeded() {
                raced = true;
                break;
            }
            removed.extend(chunk.iter().map(|d| d.key.clone()));
        }
        if !raced {
            tracing::info!(node = name, keys = removed.len(), "cluster: node removed");
            return Ok(RemovedNode {
                node: name.to_owned(),
                index,
                removed,
            });
        }
        // Something changed (the node came back, a record moved): read again.
    }
    Err(Error::Unavailable(format!(
        "node {name}'s records keep changing; try again"
    )))
}

/// Every key of node `name` with its revision: its instances and their
/// instance-IP claims first, then `subnets/{index}` and `nodes/{name}` (so
/// a removal cut short leaves the membership, and a retry finds it).
async fn collect(inner: &Inner, c: &mut Client, name: &str) -> Result<(Option<u32>, Vec<Doomed>)> {
    let k = &inner.keys;
    let mut doomed = Vec::new();
    let prefix = Some(GetOptions::new().with_prefix());
    let instances = c
        .get(k.instances(), prefix.clone())
        .await
        .map_err(unavailable)?;
    let mut vip_keys = Vec::new();
    for kv in instances.kvs() {
        let rec: InstanceRecord = keys::decode(kv.key(), kv.value()).map_err(corrupt)?;
        if rec.node == name {
            doomed.push(Doomed {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                rev: kv.mod_revision(),
            });
            vip_keys.push((k.vip(rec.instance_ip.v4), kv.key().to_vec()));
        }
    }
    for (vk, ik) in vip_keys {
        let got = c.get(vk.as_str(), None).await.map_err(unavailable)?;
        let Some(kv) = got.kvs().first() else {
            continue;
        };
        let Ok(v) = keys::decode::<VipRecord>(kv.key(), kv.value()) else {
            continue;
        };
        let owner = k.parse(&ik).and_then(|p| match p {
            keys::ParsedKey::Instance(i) => Some(i.to_string()),
            _ => None,
        });
        if v.kind == VipKind::Instance && Some(&v.owner) == owner.as_ref() {
            doomed.push(Doomed {
                key: vk,
                rev: kv.mod_revision(),
            });
        }
    }
    let subnets = c.get(k.subnets(), prefix).await.map_err(unavailable)?;
    for kv in subnets.kvs() {
        if kv.value() == name.as_bytes() {
            doomed.push(Doomed {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                rev: kv.mod_revision(),
            });
        }
    }
    let nk = k.node(name);
    let node = c.get(nk.as_str(), None).await.map_err(unavailable)?;
    let mut index = None;
    if let Some(kv) = node.kvs().first() {
        let rec: NodeRecord = keys::decode(kv.key(), kv.value()).map_err(corrupt)?;
        index = Some(rec.index);
        doomed.push(Doomed {
            key: nk,
            rev: kv.mod_revision(),
        });
    }
    Ok((index, doomed))
}
