//! The node's bridge: every container's gateway. Created if missing, its
//! MTU, MAC and both gateway addresses set, forwarding switched on.

use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::addresses::ensure_addresses;
use super::error::{errno, kerr, nl};
use super::links::{ensure_mtu_up, link_by_name, set_link, validate_ifname};
use crate::kernel::spec::{BridgeSpec, KernelError};

/// [`crate::kernel::Kernel::setup_bridge`]: enables forwarding, creates
/// the bridge if missing, pins its MAC, sets its MTU and addresses, and
/// brings it up.
pub(super) async fn setup(handle: &Handle, spec: &BridgeSpec) -> Result<(), KernelError> {
    validate_ifname("bridge name", &spec.name)?;
    enable_sysctl("/proc/sys/net/ipv4/ip_forward")?;
    enable_sysctl("/proc/sys/net/ipv6/conf/all/forwarding")?;

    let bridge = match link_by_name(handle, &spec.name).await? {
        Some(l) if l.is_bridge() => l,
        Some(_) => {
            return Err(kerr(
                format!("set up bridge {}", spec.name),
                "a link with that name exists and is not a bridge",
            ))
        }
        None => {
            let msg = LinkBridge::new(&spec.name).mtu(spec.mtu).build();
            match handle.link().add(msg).execute().await {
                Ok(()) => {}
                // Created concurrently: fine, configure it below.
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(format!("create bridge {}", spec.name))(e)),
            }
            link_by_name(handle, &spec.name).await?.ok_or_else(|| {
                kerr(
                    format!("create bridge {}", spec.name),
                    "it vanished right after creation",
                )
            })?
        }
    };
    ensure_mtu_up(handle, &bridge, spec.mtu).await?;
    // A bridge without an address of its own takes the lowest MAC among
    // its ports, so attaching or detaching a container would change the
    // gateway's MAC under every other container's ARP cache. Setting it
    // explicitly pins it (the kernel stops following the ports), and
    // deriving it from the gateway address keeps it across restarts.
    let mac = bridge_mac(spec.gateway.v4);
    let msg = LinkUnspec::new_with_index(bridge.index)
        .address(mac.to_vec())
        .build();
    let action = format!("set the MAC address of bridge {}", spec.name);
    set_link(handle, msg, action).await?;
    ensure_addresses(
        handle,
        bridge.index,
        &spec.name,
        spec.gateway,
        spec.subnet,
        spec.subnet6,
    )
    .await?;
    Ok(())
}

/// The ifindex of bridge `name`, or an error if it is missing or not a
/// bridge.
pub(super) async fn bridge_index(handle: &Handle, name: &str) -> Result<u32, KernelError> {
    match link_by_name(handle, name).await? {
        Some(l) if l.is_bridge() => Ok(l.index),
        Some(_) => Err(kerr(
            format!("find bridge {name}"),
            "the link exists but is not a bridge",
        )),
        None => Err(kerr(
            format!("find bridge {name}"),
            "no such link (was the bridge set up?)",
        )),
    }
}

/// Writes `1` to a forwarding sysctl unless it already reads `1` (so a
/// read-only /proc/sys with forwarding already on is fine).
fn enable_sysctl(path: &str) -> Result<(), KernelError> {
    if std::fs::read_to_string(path)
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::fs::write(path, b"1").map_err(|e| kerr(format!("write 1 to {path}"), e.to_string()))
}

/// The bridge's MAC: locally administered unicast (`02`), then `50:54`
/// ("PT"), then the last three bytes of the gateway address, so every node's
/// bridge differs and keeps its MAC across restarts.
pub fn bridge_mac(gateway: std::net::Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    [0x02, 0x50, 0x54, o[1], o[2], o[3]]
}
