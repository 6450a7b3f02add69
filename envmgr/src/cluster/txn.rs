//! Reads in one etcd transaction, shared by the registry's claims, the
//! membership check and the sync task's registrations: several keys at one
//! revision, so a compare-and-swap that follows sees what was read.

use etcd_client::{Client, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};

/// The values of the `Get` responses of a txn, in order (`None` = absent).
pub(super) fn gets(resp: &TxnResponse) -> Vec<Option<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
            _ => None,
        })
        .collect()
}

/// Reads keys `a` and `b` at one revision (`None` = absent).
pub(super) async fn read_pair(
    client: &mut Client,
    a: &str,
    b: &str,
) -> Result<(Option<KeyValue>, Option<KeyValue>), etcd_client::Error> {
    let read = Txn::new().and_then([TxnOp::get(a, None), TxnOp::get(b, None)]);
    let resp = client.txn(read).await?;
    let mut got = gets(&resp).into_iter();
    Ok((got.next().flatten(), got.next().flatten()))
}
