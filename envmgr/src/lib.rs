//! The environment manager: the node's model of the cluster, address
//! allocation, attaching containers to the node, the store and the
//! management API.
//!
//! Nothing here touches packets. The dataplane reads [`model::Snapshot`]s that
//! this crate publishes.

pub mod alloc;
pub mod api;
pub mod cluster;
pub mod cnm;
pub mod error;
pub mod kernel;
pub mod manager;
pub mod model;
pub mod oakestra;
pub mod plan;
pub mod registry;
pub mod requests;
pub mod resolv;
pub mod store;

pub use error::{Error, Result};
#[cfg(any(test, feature = "testing"))]
pub mod testing;
