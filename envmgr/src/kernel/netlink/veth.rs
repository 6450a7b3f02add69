//! Veth pairs: a container's attachment. The host end is enslaved to the
//! bridge; the peer is created directly in the container's namespace and
//! configured there (name, MTU, addresses, `lo` up, default routes) on a
//! thread that entered it. Every step only if missing, so a repeated attach
//! changes nothing and a half-done one is finished.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::addresses::ensure_addresses;
use super::bridge::bridge_index;
use super::error::{kerr, nl};
use super::links::{
    delete_link, ensure_mtu_up, ensure_up, link_by_index, link_by_name, set_link, validate_ifname,
    Link,
};
use super::netns::{in_netns, netns_id, open_netns};
use super::routes::ensure_default_route;
use crate::kernel::spec::{KernelError, VethSpec};

/// What [`super::Netlink::ensure_attached`] had to do; lets callers log (and tests
/// check) that a repeated attach really was a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Everything was already in place; nothing was changed.
    Unchanged,
    /// The veth pair existed but something was missing and was fixed.
    Repaired,
    /// A new veth pair was created and configured.
    Created,
}

/// Like [`crate::kernel::Kernel::attach`], but says whether anything had
/// to change.
pub(super) async fn ensure_attached(
    handle: &Handle,
    spec: &VethSpec,
) -> Result<AttachOutcome, KernelError> {
    validate_ifname("host veth name", &spec.host_veth)?;
    validate_ifname("container interface name", &spec.ifname)?;
    let netns = open_netns(&spec.netns)?;
    let bridge = bridge_index(handle, &spec.bridge).await?;

    if let Some(host) = link_by_name(handle, &spec.host_veth).await? {
        if !host.is_veth() {
            return Err(kerr(
                format!("attach {}", spec.host_veth),
                format!("a link named {} exists and is not a veth", spec.host_veth),
            ));
        }
        // Is its peer in the requested namespace? Compare namespace ids
        // as the host sees them; the index alone could match by chance.
        let target = netns_id(handle, netns.as_fd()).await?;
        let peer_there = target.is_some() && host.peer_netnsid == target;
        if let (true, Some(peer_index)) = (peer_there, host.peer_index) {
            let mut changed = ensure_host_end(handle, &host, bridge, spec.mtu).await?;
            let inside = spec.clone();
            changed |= in_netns(netns, spec.netns.clone(), move |h| {
                ensure_container_end(h, inside, peer_index)
            })
            .await?;
            return Ok(if changed {
                AttachOutcome::Repaired
            } else {
                AttachOutcome::Unchanged
            });
        }
        // The peer is gone or elsewhere: the pair is unusable, start over.
        tracing::info!(host_veth = %spec.host_veth, "veth peer not in the target netns, recreating the pair");
        delete_link(handle, host.index, &host.name).await?;
    }

    create(handle, spec, netns, bridge).await?;
    Ok(AttachOutcome::Created)
}

/// Enslaves the host end to the bridge, sets its MTU and brings it up,
/// if any of that is missing.
async fn ensure_host_end(
    handle: &Handle,
    host: &Link,
    bridge: u32,
    mtu: u32,
) -> Result<bool, KernelError> {
    if host.master == Some(bridge) && host.mtu == Some(mtu) && host.up {
        return Ok(false);
    }
    let msg = LinkUnspec::new_with_index(host.index)
        .mtu(mtu)
        .controller(bridge)
        .up()
        .build();
    let action = format!("enslave {} to bridge #{bridge}, mtu {mtu}, up", host.name);
    set_link(handle, msg, action).await?;
    Ok(true)
}

/// Creates the pair with the peer directly in the target namespace
/// (under a temporary name), then configures the inside; on any error
/// deletes the host end, which takes the peer with it.
async fn create(
    handle: &Handle,
    spec: &VethSpec,
    netns: std::fs::File,
    bridge: u32,
) -> Result<(), KernelError> {
    let tmp = temp_name();
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(tmp.clone())
        .mtu(spec.mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(&spec.host_veth, &tmp)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(spec.mtu)
        .controller(bridge)
        .up()
        .build();
    handle.link().add(msg).execute().await.map_err(nl(format!(
        "create veth {} with peer {tmp} in netns {}",
        spec.host_veth,
        spec.netns.display()
    )))?;

    let result = async {
        let host = link_by_name(handle, &spec.host_veth)
            .await?
            .ok_or_else(|| {
                kerr(
                    format!("look up new veth {}", spec.host_veth),
                    "it vanished right after creation",
                )
            })?;
        let peer_index = host.peer_index.ok_or_else(|| {
            kerr(
                format!("look up new veth {}", spec.host_veth),
                "the kernel reports no peer",
            )
        })?;
        let inside = spec.clone();
        in_netns(netns, spec.netns.clone(), move |h| {
            ensure_container_end(h, inside, peer_index)
        })
        .await
    }
    .await;

    if let Err(e) = result {
        match link_by_name(handle, &spec.host_veth).await {
            Ok(Some(l)) => {
                if let Err(del) = delete_link(handle, l.index, &l.name).await {
                    tracing::warn!(error = %del, "could not undo a failed attach");
                }
            }
            Ok(None) => {}
            Err(look) => tracing::warn!(error = %look, "could not undo a failed attach"),
        }
        return Err(e);
    }
    Ok(())
}

/// Inside the container's namespace: gives the peer `spec.ifname`, MTU,
/// both addresses, brings it and `lo` up, and sets the default routes
/// (when `spec.default_route`). Each
/// step only if missing. Returns whether anything changed.
async fn ensure_container_end(
    h: Handle,
    spec: VethSpec,
    peer_index: u32,
) -> Result<bool, KernelError> {
    let ns = spec.netns.display().to_string();
    let mut link = link_by_index(&h, peer_index).await?.ok_or_else(|| {
        kerr(
            format!("find veth peer #{peer_index} in netns {ns}"),
            "no such link",
        )
    })?;
    let mut changed = false;

    if link.name != spec.ifname {
        if let Some(other) = link_by_name(&h, &spec.ifname).await? {
            return Err(kerr(
                format!("name the container end {} in netns {ns}", spec.ifname),
                format!(
                    "an interface named {} (index {}) already exists there and is not the peer of {}",
                    spec.ifname, other.index, spec.host_veth
                ),
            ));
        }
        let rename = format!("rename {} to {} in netns {ns}", link.name, spec.ifname);
        if link.up {
            let down = LinkUnspec::new_with_index(link.index).down().build();
            set_link(&h, down, rename.clone()).await?;
            link.up = false;
        }
        let msg = LinkUnspec::new_with_index(link.index)
            .name(spec.ifname.clone())
            .build();
        set_link(&h, msg, rename).await?;
        link.name = spec.ifname.clone();
        changed = true;
    }

    changed |= ensure_mtu_up(&h, &link, spec.mtu).await?;
    changed |= ensure_addresses(
        &h,
        link.index,
        &link.name,
        spec.addr,
        spec.subnet,
        spec.subnet6,
    )
    .await?;

    let lo = link_by_name(&h, "lo")
        .await?
        .ok_or_else(|| kerr(format!("find lo in netns {ns}"), "no such link"))?;
    changed |= ensure_up(&h, &lo).await?;

    if !spec.default_route {
        // A further interface of the netns: the first one has the routes.
        return Ok(changed);
    }
    for gw in [IpAddr::V4(spec.gateway.v4), IpAddr::V6(spec.gateway.v6)] {
        let action = format!("add default route via {gw} in netns {ns}");
        changed |= ensure_default_route(&h, link.index, gw, action).await?;
    }
    Ok(changed)
}

/// A name for the peer while it waits to be renamed, unique enough that two
/// concurrent attaches into one namespace do not collide.
fn temp_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    let x = (u64::from(std::process::id()) << 24) ^ (n << 12) ^ nanos;
    // "ptt" + 12 hex digits = 15 bytes.
    format!("ptt{:012x}", x & 0xffff_ffff_ffff)
}

/// [`crate::kernel::Kernel::attached`]: the host end exists, is a veth
/// and is enslaved to its bridge.
pub(super) async fn attached(handle: &Handle, spec: &VethSpec) -> Result<bool, KernelError> {
    validate_ifname("host veth name", &spec.host_veth)?;
    let Some(host) = link_by_name(handle, &spec.host_veth).await? else {
        return Ok(false);
    };
    let Some(bridge) = link_by_name(handle, &spec.bridge).await? else {
        return Ok(false);
    };
    Ok(host.is_veth() && bridge.is_bridge() && host.master == Some(bridge.index))
}

/// [`crate::kernel::Kernel::detach`]: deletes the pair (the peer goes
/// with the host end); succeeds when it is already gone.
pub(super) async fn detach(handle: &Handle, host_veth: &str) -> Result<(), KernelError> {
    validate_ifname("host veth name", host_veth)?;
    match link_by_name(handle, host_veth).await? {
        Some(l) => delete_link(handle, l.index, &l.name).await,
        None => Ok(()),
    }
}
