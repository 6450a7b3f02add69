//! The real [`Kernel`]: applies bridge, routes and veth attachments with
//! rtnetlink (no `ip` subprocesses), idempotently; the NAT table through
//! nftables (`kernel/nft.rs`).
//!
//! Work inside a container's namespace runs on a dedicated thread that
//! `setns`es into it (see `netns.rs`); the daemon's own threads never change
//! namespace.
//!
//! One file per kernel object: `links.rs` (look up, flags, MTU, delete,
//! names), `addresses.rs`, `routes.rs`, `netns.rs` (namespaces), and the
//! two things built from them, `bridge.rs` and `veth.rs` (a container's
//! attachment). `error.rs` words the kernel's answers.

mod addresses;
mod bridge;
mod error;
mod links;
mod netns;
mod routes;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod tests;
mod veth;

use ipnet::{Ipv4Net, Ipv6Net};
use rtnetlink::Handle;

use self::error::kerr;
use super::nat::NatSpec;
use super::spec::{BridgeSpec, Kernel, KernelError, VethSpec};
use crate::model::PortMapping;

pub use self::bridge::bridge_mac;
pub use self::veth::AttachOutcome;

/// The rtnetlink-backed [`Kernel`], bound to the namespace the daemon runs
/// in. Cheap to clone: clones share one netlink connection.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens an rtnetlink connection in the current network namespace and
    /// drives it on the current tokio runtime (so call this inside one).
    pub fn new() -> Result<Self, KernelError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| {
            kerr(
                "open rtnetlink connection",
                format!("no tokio runtime: {e}"),
            )
        })?;
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| kerr("open rtnetlink connection", e.to_string()))?;
        rt.spawn(conn);
        Ok(Netlink { handle })
    }

    /// Like [`Kernel::attach`], but says whether anything had to change.
    pub async fn ensure_attached(&self, spec: &VethSpec) -> Result<AttachOutcome, KernelError> {
        veth::ensure_attached(&self.handle, spec).await
    }
}

impl Kernel for Netlink {
    async fn setup_bridge(&self, spec: &BridgeSpec) -> Result<(), KernelError> {
        bridge::setup(&self.handle, spec).await
    }

    async fn route_services(
        &self,
        tun: &str,
        services: Ipv4Net,
        services6: Ipv6Net,
    ) -> Result<(), KernelError> {
        routes::route_services(&self.handle, tun, services, services6).await
    }

    async fn attach(&self, spec: &VethSpec) -> Result<(), KernelError> {
        self.ensure_attached(spec).await.map(|_| ())
    }

    async fn attached(&self, spec: &VethSpec) -> Result<bool, KernelError> {
        veth::attached(&self.handle, spec).await
    }

    async fn default_route(&self, spec: &VethSpec) -> Result<(), KernelError> {
        // Finishing the attachment with the routes wanted sets them (and
        // replaces routes via a gone interface).
        let with_routes = VethSpec {
            default_route: true,
            ..spec.clone()
        };
        self.ensure_attached(&with_routes).await.map(|_| ())
    }

    async fn detach(&self, host_veth: &str) -> Result<(), KernelError> {
        veth::detach(&self.handle, host_veth).await
    }

    async fn set_nat(&self, spec: &NatSpec) -> Result<(), KernelError> {
        super::nft::apply(spec).await
    }

    async fn port_in_use(&self, mapping: &PortMapping) -> Result<bool, KernelError> {
        super::nft::port_in_use(mapping)
    }
}
