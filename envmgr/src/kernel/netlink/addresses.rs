//! Addresses: is one on a link, and add it (v6 without duplicate address
//! detection, so it is usable at once) unless it is.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::Handle;

use super::error::{describe, errno, kerr};
use crate::kernel::spec::KernelError;
use crate::model::DualAddr;

/// `EEXIST`: an address that is already there.
const EEXIST: i32 = libc::EEXIST;

/// True when link `index` carries `addr/prefix`.
pub(super) async fn has_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<bool, KernelError> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    // The dump is read to its end even after a match: dropping the stream
    // early leaves the rest of the dump undeliverable, which netlink_proto
    // logs as a warning per message.
    let mut found = false;
    loop {
        match addrs.try_next().await {
            Ok(Some(msg)) => {
                if found || msg.header.prefix_len != prefix {
                    continue;
                }
                found = msg.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Address(x) | AddressAttribute::Local(x) if *x == addr)
                });
            }
            Ok(None) => return Ok(found),
            Err(e) => {
                return Err(kerr(
                    format!("list addresses of link #{index}"),
                    describe(&e),
                ))
            }
        }
    }
}

/// Adds `addr/prefix` to link `index` (v6 with `IFA_F_NODAD`, so it is usable
/// at once) unless it is there. Returns whether anything changed.
pub(super) async fn ensure_address(
    handle: &Handle,
    index: u32,
    ifname: &str,
    addr: IpAddr,
    prefix: u8,
) -> Result<bool, KernelError> {
    if has_address(handle, index, addr, prefix).await? {
        return Ok(false);
    }
    let mut req = handle.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
        Err(e) => Err(kerr(
            format!("add address {addr}/{prefix} to {ifname}"),
            describe(&e),
        )),
    }
}

/// Gives link `index` both addresses of `addr`, with the prefix lengths of
/// the node subnets (v4 first). Returns whether anything changed.
pub(super) async fn ensure_addresses(
    handle: &Handle,
    index: u32,
    ifname: &str,
    addr: DualAddr,
    subnet: Ipv4Net,
    subnet6: Ipv6Net,
) -> Result<bool, KernelError> {
    let mut changed = false;
    for (ip, prefix) in [
        (IpAddr::V4(addr.v4), subnet.prefix_len()),
        (IpAddr::V6(addr.v6), subnet6.prefix_len()),
    ] {
        changed |= ensure_address(handle, index, ifname, ip, prefix).await?;
    }
    Ok(changed)
}
