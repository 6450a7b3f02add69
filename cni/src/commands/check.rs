//! CHECK: the daemon still holds the attachment `prevResult` describes,
//! and the netns still has the interface with those addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envmgr::api::client::Client;
use ipnet::IpNet;

use super::daemon::find_container;
use crate::netns;
use crate::spec::{code, CniArgs, CniError, CniResult, Env, NetConf};

/// CHECK: the daemon still has this container attached as the selected
/// service, with the addresses of `prevResult`, and the netns still holds
/// the interface with those addresses.
pub(super) async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let container_id = env.container_id()?;
    let netns = env.netns()?;
    let ifname = env.ifname()?;
    let sel = conf.selection(&CniArgs::parse(env.args.as_deref())?)?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_NETCONF,
            "CHECK needs `prevResult` (the result of the ADD): the runtime passes it",
        )
    })?;
    let prev: CniResult = serde_json::from_value(prev.clone()).map_err(|e| {
        CniError::new(
            code::INVALID_NETCONF,
            format!("`prevResult` is not a CNI result: {e}"),
        )
    })?;
    let client = Client::new(&conf.socket);
    let inst = find_container(&client, &conf.socket, container_id, ifname)
        .await?
        .ok_or_else(|| {
            CniError::new(
                code::CONTAINER_UNKNOWN,
                format!(
                    "container {container_id} ({ifname}) is not attached on this node: run ADD again"
                ),
            )
        })?;
    let mismatch = |msg: String| CniError::new(code::CHECK_MISMATCH, msg);
    if inst.key.name != sel.name {
        return Err(mismatch(format!(
            "container {container_id} is attached as {} but this network selects {}",
            inst.key, sel.name
        )));
    }
    let want = [IpAddr::V4(inst.ns_addr.v4), IpAddr::V6(inst.ns_addr.v6)];
    let listed: BTreeSet<IpAddr> = prev.ips.iter().map(|i| i.address.addr()).collect();
    for a in want {
        if !listed.contains(&a) {
            return Err(mismatch(format!(
                "prevResult does not list {a}, the address the daemon holds for {}",
                inst.key
            )));
        }
    }
    let link = netns::inspect(netns, ifname)
        .map_err(|e| {
            CniError::new(
                code::CONTAINER_UNKNOWN,
                format!("cannot look into the netns {}: {e}", netns.display()),
            )
        })?
        .ok_or_else(|| {
            mismatch(format!(
                "the netns {} has no interface {ifname}",
                netns.display()
            ))
        })?;
    let present: BTreeSet<IpAddr> = link.addrs.iter().map(IpNet::addr).collect();
    for a in want {
        if !present.contains(&a) {
            return Err(mismatch(format!(
                "interface {ifname} in {} lacks its address {a}",
                netns.display()
            )));
        }
    }
    if let Some(prev_mac) = prev
        .interfaces
        .iter()
        .find(|i| i.name == ifname)
        .and_then(|i| i.mac.as_deref())
    {
        if link.mac.as_deref() != Some(prev_mac) {
            return Err(mismatch(format!(
                "interface {ifname} has MAC {:?}, prevResult says {prev_mac}",
                link.mac
            )));
        }
    }
    Ok(())
}
