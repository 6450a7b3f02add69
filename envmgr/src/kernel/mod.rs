//! Kernel state: the bridge, routes, forwarding, and container veths.
//!
//! The manager decides, this module applies. Every operation is idempotent,
//! so a restart can simply re-apply the stored state and get back whatever
//! is missing.
//!
//! The specs and the trait live in `spec.rs`, so the rtnetlink backend
//! (`netlink`) depends on them and not on this module.

pub mod netlink;
mod spec;

pub use netlink::{AttachOutcome, Netlink};
pub use spec::{BridgeSpec, Kernel, KernelError, VethSpec};
