//! The management API: HTTP + JSON over a unix socket.
//!
//! The CLI, the CNI plugin and orchestrators all talk to the daemon through
//! this one interface, so it is documented (`docs/api.md`) and strict: every
//! error is JSON with a status and a message that says what to fix, and a
//! rejected request changes nothing.
//!
//! [`server`] serves the manager's state (and a read-only view of the
//! dataplane, through [`DataplaneView`]); [`client`] is the small HTTP/1
//! client the CLI uses; [`listen`] serves HTTP with the header read
//! timeout and head size cap that every listener of the daemon uses.

pub mod client;
pub mod listen;
pub mod server;

pub use client::{Client, ClientError};
pub use listen::{serve_http, HeadLimits, HEADER_TIMEOUT, MAX_HEAD};
pub use server::{bind, router, serve, serve_on, ApiError, DataplaneView, BODY_LIMIT};

#[cfg(test)]
mod tests;
