//! The shared part of the topology: two hosts joined by a veth underlay.
//!
//! ```text
//!   <p>h-a  ul0 192.0.2.1/24 ──veth── ul0 192.0.2.2/24  <p>h-b
//!     ├ <p><mode>-c (client container)     └ <p><mode>-s (server container)
//! ```
//!
//! Each mode hangs its own pair of containers off these hosts (see
//! `modes`). Nothing is created in the root namespace: the underlay veth is
//! created inside `h-a` with its peer moved straight into `h-b`.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use testbed::netns::Netns;

/// Host A's underlay address.
pub const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Host B's underlay address.
pub const HOST_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The underlay MTU: a plain Ethernet link.
pub const UNDERLAY_MTU: u32 = 1500;
/// The underlay interface's name in both hosts.
pub const UNDERLAY_IF: &str = "ul0";

/// The two hosts. Dropping it deletes both namespaces (and so the underlay).
#[derive(Debug)]
pub struct Hosts {
    /// The namespace-name prefix of this run.
    pub prefix: String,
    /// Host A, where the clients live.
    pub a: Netns,
    /// Host B, where the servers live.
    pub b: Netns,
}

impl Hosts {
    /// Creates `<prefix>h-a` and `<prefix>h-b`, joins them with the
    /// underlay and turns on forwarding in both (they route for their
    /// containers).
    pub fn build(prefix: &str) -> Result<Hosts> {
        let a = Netns::create(&format!("{prefix}h-a"))?;
        let b = Netns::create(&format!("{prefix}h-b"))?;
        a.add_veth(UNDERLAY_IF, &b, UNDERLAY_IF, Some(UNDERLAY_MTU))
            .context("creating the underlay veth")?;
        for (ns, ip) in [(&a, HOST_A), (&b, HOST_B)] {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", UNDERLAY_IF])?;
            ns.ip(&["link", "set", UNDERLAY_IF, "up"])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
        }
        Ok(Hosts {
            prefix: prefix.to_owned(),
            a,
            b,
        })
    }
}

/// Creates a veth pair between `host` (named `host_if`, address `host_ip`)
/// and `container` (named `eth0`, address `ctr_ip`, default route via
/// `host_ip`), both ends with `mtu`: how the kernel-routed modes plug a
/// container in.
pub fn plug_container(
    host: &Netns,
    host_if: &str,
    container: &Netns,
    host_ip: Ipv4Addr,
    ctr_ip: Ipv4Addr,
    mtu: u32,
) -> Result<()> {
    host.add_veth(host_if, container, "eth0", Some(mtu))?;
    host.ip(&["addr", "add", &format!("{host_ip}/24"), "dev", host_if])?;
    host.ip(&["link", "set", host_if, "up"])?;
    container.ip(&["addr", "add", &format!("{ctr_ip}/24"), "dev", "eth0"])?;
    container.ip(&["link", "set", "eth0", "up"])?;
    container.ip(&["route", "add", "default", "via", &host_ip.to_string()])?;
    Ok(())
}
