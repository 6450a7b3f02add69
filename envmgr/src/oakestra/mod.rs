//! Oakestra compatibility: what lets proxytun replace Oakestra's
//! NetManager on a worker without changing the orchestrator
//! (docs/oakestra.md).
//!
//! `names.rs` maps Oakestra's four-part job names onto our service names;
//! it is the one place both the NodeEngine API and the MQTT table protocol
//! take that mapping from; `registration.rs` the NodeEngine's `/register`,
//! kept in the state directory; `mqtt/` the table protocol with the
//! cluster (`store.backend = "oakestra"`).

pub mod mqtt;
pub mod names;
pub mod nodeengine;
pub mod registration;

pub use names::{JobBook, JobName};
pub use registration::{check_client_id, Registration, RegistrationError};
