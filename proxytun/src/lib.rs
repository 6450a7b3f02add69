//! The proxytun dataplane and the node daemon that runs the whole stack.
pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod log_settings;
pub mod logging;
pub mod notify;
pub mod oakestra;
pub mod shell;
