//! The node's local DNS resolver: turns service names into ServiceIPs.
//!
//! Not built yet (issue 5). The crate exists so the workspace has its final
//! shape; it holds no code that pretends to resolve anything.
