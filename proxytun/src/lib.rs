//! The proxytun dataplane and the node daemon that runs the whole stack.
/// The sans-IO packet core, a crate of its own; re-exported under its old
/// path so the daemon's `crate::core::` paths keep working.
pub use proxytun_core as core;

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod log_settings;
pub mod logging;
pub mod notify;
pub mod shell;
