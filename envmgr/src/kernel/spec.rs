//! What the manager asks of the kernel: the specs of the bridge and of a
//! container's veth, the [`Kernel`] trait, and its error. The bottom of
//! `kernel`: the real backend (`netlink`) and the test doubles implement
//! these, and the manager only sees them.

use std::future::Future;
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};

use super::nat::NatSpec;
use crate::model::{DualAddr, PortMapping};

/// A kernel change that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {message}")]
pub struct KernelError {
    /// What was being done, e.g. `create veth pt1a2b3c4d`.
    pub action: String,
    /// The kernel's answer.
    pub message: String,
}

/// The node-wide set-up: a bridge that is every container's gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// The bridge's name, e.g. `ptbr0`.
    pub name: String,
    /// Its addresses (the gateway of the node subnet).
    pub gateway: DualAddr,
    /// The node subnet (v4), for the address prefix.
    pub subnet: Ipv4Net,
    /// The node subnet (v6), for the address prefix.
    pub subnet6: Ipv6Net,
    /// MTU of the bridge.
    pub mtu: u32,
}

/// One container's attachment: a veth pair from the bridge into its netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// The container's network namespace file.
    pub netns: PathBuf,
    /// The host end's name (at most 15 bytes), enslaved to `bridge`.
    pub host_veth: String,
    /// The container end's name inside the netns, e.g. `eth0`.
    pub ifname: String,
    /// The bridge to enslave the host end to.
    pub bridge: String,
    /// The container's addresses.
    pub addr: DualAddr,
    /// The node subnet (v4), for the prefix length.
    pub subnet: Ipv4Net,
    /// The node subnet (v6), for the prefix length.
    pub subnet6: Ipv6Net,
    /// The default gateway (the bridge's addresses).
    pub gateway: DualAddr,
    /// Whether this interface gets the netns's default routes: only the
    /// first attachment of a netns does (a second default route would
    /// clash with the first).
    pub default_route: bool,
    /// MTU of both ends, so TCP picks an MSS that fits the tunnel.
    pub mtu: u32,
}

/// What the manager needs from the kernel. A trait so the manager's rules
/// can be unit-tested with a fake that records calls.
pub trait Kernel: Send + Sync + 'static {
    /// Enables IPv4 and IPv6 forwarding, creates the bridge if missing, sets
    /// its addresses and MTU and brings it up.
    fn setup_bridge(
        &self,
        spec: &BridgeSpec,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Routes the ServiceIP ranges into the TUN device `tun` (which must
    /// exist); replaces routes that point elsewhere.
    fn route_services(
        &self,
        tun: &str,
        services: Ipv4Net,
        services6: Ipv6Net,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Creates and configures the veth pair, addresses and (when
    /// `spec.default_route`) the default routes.
    /// If the host end already exists and is configured, does nothing; if it
    /// exists half-done, finishes it. On error, removes what it created.
    fn attach(&self, spec: &VethSpec) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// True when the host end of the attachment exists and is enslaved to
    /// its bridge (a restart uses this to see what to re-create).
    fn attached(&self, spec: &VethSpec) -> impl Future<Output = Result<bool, KernelError>> + Send;

    /// Points the netns's default routes (v4 and v6, via `spec.gateway`)
    /// out of the attachment's interface, replacing routes that point
    /// elsewhere: the hand-over when the interface that had them leaves
    /// while another attachment of the netns stays.
    fn default_route(
        &self,
        spec: &VethSpec,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Deletes the veth pair; succeeds if it is already gone.
    fn detach(&self, host_veth: &str) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Makes our NAT table match `spec` (creating, replacing or deleting
    /// it) in one transaction; on error the ruleset is as it was.
    fn set_nat(&self, spec: &NatSpec) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// True when a socket on the node already holds `mapping`'s node port.
    fn port_in_use(
        &self,
        mapping: &PortMapping,
    ) -> impl Future<Output = Result<bool, KernelError>> + Send;
}
