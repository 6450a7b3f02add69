//! `proxytun-cni`: a CNI plugin (spec 1.0.0 and 1.1.0) that attaches a
//! container to the node's proxytun daemon as an instance of `app/service`.
//!
//! The plugin holds no state: every command is a request to the daemon's
//! unix-socket API, so the daemon stays the one owner of attachments,
//! addresses and routes. See `docs/cni.md`.

pub mod commands;
pub mod netns;
pub mod spec;
