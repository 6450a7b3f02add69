//! Routes: is a main-table route there, add or replace one, and the two
//! kinds this node needs: a container's default route via the bridge, and
//! the ServiceIP ranges on-link into the TUN.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::error::{describe, kerr, nl};
use super::links::{ensure_up, link_by_name, validate_ifname};
use crate::kernel::spec::KernelError;

/// True when `msg` is a main-table route to `dst/len` out of `oif`, via
/// `gateway` if one is given.
fn route_matches(
    msg: &RouteMessage,
    dst: IpAddr,
    len: u8,
    oif: u32,
    gateway: Option<IpAddr>,
) -> bool {
    let h = &msg.header;
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || h.destination_prefix_length != len {
        return false;
    }
    let mut got_dst = None;
    let mut got_oif = None;
    let mut got_gw = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => got_dst = route_addr(d),
            RouteAttribute::Oif(i) => got_oif = Some(*i),
            RouteAttribute::Gateway(g) => got_gw = route_addr(g),
            _ => {}
        }
    }
    // A default route carries no destination attribute.
    let dst_ok = match got_dst {
        Some(d) => d == dst,
        None => len == 0,
    };
    dst_ok && got_oif == Some(oif) && got_gw == gateway
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// True when a main-table route to `dst/len` out of `oif` (via `gateway`)
/// exists.
pub(super) async fn has_route(
    handle: &Handle,
    dst: IpAddr,
    len: u8,
    oif: u32,
    gateway: Option<IpAddr>,
) -> Result<bool, KernelError> {
    let query = match dst {
        IpAddr::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        IpAddr::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    let mut routes = handle.route().get(query).execute();
    // Read to the end even after a match (see `has_address`).
    let mut found = false;
    loop {
        match routes.try_next().await {
            Ok(Some(msg)) => {
                found = found || route_matches(&msg, dst, len, oif, gateway);
            }
            Ok(None) => return Ok(found),
            Err(e) => return Err(kerr("list routes", describe(&e))),
        }
    }
}

/// Adds or replaces a main-table route (`NLM_F_REPLACE`), so a route that
/// points elsewhere is corrected.
pub(super) async fn replace_route(
    handle: &Handle,
    msg: RouteMessage,
    action: String,
) -> Result<(), KernelError> {
    handle
        .route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(nl(action))
}

/// Adds the default route via `gateway` out of `oif` (the family of
/// `gateway`) unless it is there. Returns whether anything changed.
pub(super) async fn ensure_default_route(
    handle: &Handle,
    oif: u32,
    gateway: IpAddr,
    action: String,
) -> Result<bool, KernelError> {
    let any = match gateway {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    if has_route(handle, any, 0, oif, Some(gateway)).await? {
        return Ok(false);
    }
    let msg = match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(oif)
            .build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gw)
            .output_interface(oif)
            .build(),
    };
    replace_route(handle, msg, action).await?;
    Ok(true)
}

/// Routes `dst/len` straight out of `oif` (scope link, no gateway) unless
/// it is so routed; a route that points elsewhere is replaced.
async fn ensure_link_route(
    handle: &Handle,
    dst: IpAddr,
    len: u8,
    oif: u32,
    action: String,
) -> Result<(), KernelError> {
    if has_route(handle, dst, len, oif, None).await? {
        return Ok(());
    }
    let msg = match dst {
        IpAddr::V4(d) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d, len)
            .output_interface(oif)
            .scope(RouteScope::Link)
            .build(),
        IpAddr::V6(d) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d, len)
            .output_interface(oif)
            .scope(RouteScope::Link)
            .build(),
    };
    replace_route(handle, msg, action).await
}

/// [`crate::kernel::Kernel::route_services`]: both ServiceIP ranges into
/// the TUN `tun`, which must exist (and is brought up: the kernel refuses
/// routes through a device that is down).
pub(super) async fn route_services(
    handle: &Handle,
    tun: &str,
    services: Ipv4Net,
    services6: Ipv6Net,
) -> Result<(), KernelError> {
    validate_ifname("tun name", tun)?;
    let dev = link_by_name(handle, tun).await?.ok_or_else(|| {
        kerr(
            format!("route services into {tun}"),
            "no such device (is the dataplane running?)",
        )
    })?;
    // The kernel refuses routes through a device that is down.
    ensure_up(handle, &dev).await?;

    let (v4, v6) = (services.trunc(), services6.trunc());
    ensure_link_route(
        handle,
        IpAddr::V4(v4.network()),
        v4.prefix_len(),
        dev.index,
        format!("route {v4} into {tun}"),
    )
    .await?;
    ensure_link_route(
        handle,
        IpAddr::V6(v6.network()),
        v6.prefix_len(),
        dev.index,
        format!("route {v6} into {tun}"),
    )
    .await
}
