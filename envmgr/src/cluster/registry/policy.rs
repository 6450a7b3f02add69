//! The policy record on etcd with a cluster-wide version: read the record,
//! check the version the writer read, write the successor by one
//! compare-and-swap on the key's `mod_revision`, so two nodes that write
//! at once cannot both win on the same version.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::cluster::keys;
use crate::error::{Error, Result};
use crate::model::Policy;

/// How often a write is retried after another node wrote in between (only
/// writes without a version retry; with one, the next read is a 409).
const RACES: usize = 16;

fn unavailable(e: etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd: {e}"))
}

/// Puts `policy` at `key` (see [`crate::registry::Registry::put_policy`]):
/// the record in force with its version.
pub(super) async fn put(
    client: &mut Client,
    key: &str,
    policy: &Policy,
    read: Option<u64>,
) -> Result<Policy> {
    for _ in 0..RACES {
        let got = client.get(key, None).await.map_err(unavailable)?;
        let (current, rev) = match got.kvs().first() {
            None => (Policy::default(), 0),
            Some(kv) => {
                // A record that does not decode is replaced: the sync
                // ignores it too, so version 0 is what every node shows.
                let p = keys::decode::<Policy>(kv.key(), kv.value()).unwrap_or_else(|e| {
                    tracing::warn!("cluster: {e}; overwriting it");
                    Policy::default()
                });
                (p, kv.mod_revision())
            }
        };
        current.check_version(read)?;
        let next = current.successor(policy);
        if next == current {
            return Ok(current);
        }
        // Persistent (no lease): the policy outlives the node that wrote it.
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, keys::encode(&next), None)]);
        if client.txn(txn).await.map_err(unavailable)?.succeeded() {
            tracing::info!(
                isolate = next.isolate,
                rules = next.allow.len(),
                version = next.version,
                "cluster: policy written"
            );
            return Ok(next);
        }
    }
    Err(Error::Unavailable(format!(
        "the policy at {key} changed {RACES} times while this write was tried; retry"
    )))
}
