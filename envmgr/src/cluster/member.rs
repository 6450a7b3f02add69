//! Membership: the node's index, leased by compare-and-swap at join and
//! re-asserted after every reconnect (`nodes/{name}` and `subnets/{i}`).

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::error::{unavailable, ClusterError};
use super::keys::{self, NodeRecord};
use super::session::Inner;
use super::txn::read_pair;
use crate::plan::AddressPlan;

/// The index leasing of [`EtcdCluster::join`], without the timeout.
pub(super) async fn join_index(
    inner: &Inner,
    client: Client,
    plan: &AddressPlan,
) -> Result<u32, ClusterError> {
    let keys = &inner.keys;
    let mut kv = client.kv_client();
    let node_key = keys.node(&inner.node);
    let max = u32::try_from(plan.max_nodes()).unwrap_or(u32::MAX);
    for _attempt in 0..256 {
        let got = kv.get(node_key.as_str(), None).await.map_err(unavailable)?;
        if let Some(kvp) = got.kvs().first() {
            let rec: NodeRecord =
                keys::decode(kvp.key(), kvp.value()).map_err(ClusterError::Corrupt)?;
            if rec.index == 0 || rec.index >= max {
                return Err(ClusterError::Conflict(format!(
                    "{node_key} holds index {} which is outside 1..{max} for these ranges; delete the key or fix network.*",
                    rec.index
                )));
            }
            let sk = keys.subnet(rec.index);
            let mut want = rec.clone();
            want.endpoint = inner.endpoint;
            want.public_key = inner.settings.public_key.clone();
            // Keep subnets/{i} ours (recreate it if it was lost) and the
            // endpoint current, in one txn against the record just read.
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(node_key.as_str(), CompareOp::Equal, kvp.mod_revision()),
                    Compare::create_revision(sk.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(sk.as_str(), inner.node.as_str(), None),
                    TxnOp::put(node_key.as_str(), keys::encode(&want), None),
                ])
                .or_else([TxnOp::get(sk.as_str(), None)]);
            let resp = kv.txn(txn).await.map_err(unavailable)?;
            if resp.succeeded() {
                return Ok(rec.index);
            }
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|k| String::from_utf8_lossy(k.value()).into_owned()),
                _ => None,
            });
            match holder {
                Some(h) if h == inner.node => {
                    if rec != want {
                        let txn = Txn::new()
                            .when([Compare::mod_revision(
                                node_key.as_str(),
                                CompareOp::Equal,
                                kvp.mod_revision(),
                            )])
                            .and_then([TxnOp::put(node_key.as_str(), keys::encode(&want), None)]);
                        if !kv.txn(txn).await.map_err(unavailable)?.succeeded() {
                            continue;
                        }
                        tracing::info!(endpoint = %inner.endpoint, "cluster: node endpoint updated");
                    }
                    return Ok(rec.index);
                }
                Some(h) => {
                    return Err(ClusterError::Conflict(format!(
                        "{node_key} says index {} but {sk} is held by node {h:?}; two nodes share the name {:?} or the store was edited",
                        rec.index, inner.node
                    )))
                }
                // The node record changed under us; read again.
                None => continue,
            }
        }
        let subnets = kv
            .get(
                keys.subnets(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(unavailable)?;
        let used: std::collections::BTreeSet<u32> = subnets
            .kvs()
            .iter()
            .filter_map(|k| match keys.parse(k.key()) {
                Some(keys::ParsedKey::Subnet(i)) => Some(i),
                _ => None,
            })
            .collect();
        let Some(index) = (1..max).find(|i| !used.contains(i)) else {
            return Err(ClusterError::Exhausted(format!(
                "all {} node indexes of these ranges are leased; remove dead nodes with `proxytun node remove NAME` or widen network.cluster",
                max.saturating_sub(1)
            )));
        };
        let sk = keys.subnet(index);
        let rec = NodeRecord {
            name: inner.node.clone(),
            index,
            endpoint: inner.endpoint,
            public_key: inner.settings.public_key.clone(),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(sk.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(node_key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(sk.as_str(), inner.node.as_str(), None),
                TxnOp::put(node_key.as_str(), keys::encode(&rec), None),
            ]);
        if kv.txn(txn).await.map_err(unavailable)?.succeeded() {
            return Ok(index);
        }
        // Lost a race for `index` (or our own record appeared): read again.
    }
    Err(ClusterError::Unavailable(
        "could not lease a node index after 256 attempts; too much contention".to_owned(),
    ))
}

/// Makes sure `nodes/{name}` and `subnets/{index}` say this node holds
/// `index` at its endpoint. Run after every (re)connect by the sync task, so
/// a node that started from its cached index while etcd was down becomes a
/// member once etcd is back. Never takes an index another node holds.
pub(crate) async fn ensure_member(
    inner: &Inner,
    client: &mut Client,
    index: u32,
) -> Result<(), ClusterError> {
    let keys = &inner.keys;
    let (nk, sk) = (keys.node(&inner.node), keys.subnet(index));
    let rec = NodeRecord {
        name: inner.node.clone(),
        index,
        endpoint: inner.endpoint,
        public_key: inner.settings.public_key.clone(),
    };
    for _ in 0..8 {
        let (node, subnet) = read_pair(client, nk.as_str(), sk.as_str())
            .await
            .map_err(unavailable)?;
        if let Some(s) = &subnet {
            if s.value() != inner.node.as_bytes() {
                return Err(ClusterError::Conflict(format!(
                    "{sk} is held by node {:?}, but this node runs with index {index} (cached); stop one of them or delete this node's state",
                    String::from_utf8_lossy(s.value())
                )));
            }
        }
        if let Some(n) = &node {
            let held: NodeRecord =
                keys::decode(n.key(), n.value()).map_err(ClusterError::Corrupt)?;
            if held.index != index {
                return Err(ClusterError::Conflict(format!(
                    "{nk} says index {} but this node runs with index {index}; restart it to take its leased index",
                    held.index
                )));
            }
            if held == rec && subnet.is_some() {
                return Ok(());
            }
        }
        let rev = |kv: &Option<etcd_client::KeyValue>| kv.as_ref().map_or(0, |k| k.mod_revision());
        let txn = Txn::new()
            .when([
                Compare::mod_revision(nk.as_str(), CompareOp::Equal, rev(&node)),
                Compare::mod_revision(sk.as_str(), CompareOp::Equal, rev(&subnet)),
            ])
            .and_then([
                TxnOp::put(sk.as_str(), inner.node.as_str(), None),
                TxnOp::put(nk.as_str(), keys::encode(&rec), None),
            ]);
        if client.txn(txn).await.map_err(unavailable)?.succeeded() {
            tracing::info!(index, endpoint = %inner.endpoint, "cluster: node record written");
            return Ok(());
        }
    }
    Err(ClusterError::Unavailable(format!(
        "{nk}: the record keeps changing"
    )))
}
