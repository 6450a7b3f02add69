//! Kernel state: the bridge, routes, forwarding, container veths, and the
//! NAT table (published ports, masquerade; planned in `nat.rs`, applied by
//! `nft.rs`).
//!
//! The manager decides, this module applies. Every operation is idempotent,
//! so a restart can simply re-apply the stored state and get back whatever
//! is missing.
//!
//! The specs and the trait live in `spec.rs`, so the rtnetlink backend
//! (`netlink`) depends on them and not on this module.

mod nat;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (common brief).
mod nat_tests;
pub mod netlink;
mod nft;
mod spec;

pub use nat::{Masquerade, NatSpec, Publish, NAT_FAMILY, NAT_TABLE};
pub use netlink::{AttachOutcome, Netlink};
pub use spec::{BridgeSpec, Kernel, KernelError, VethSpec};
