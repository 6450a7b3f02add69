//! The I/O shell around the packet core: the TUN device, the tunnel socket,
//! the dataplane threads (one per direction, or one for both), and the glue that turns
//! envmgr snapshots into the core's lookup table.
//!
//! It owns no decisions: every packet goes to [`proxytun_core::Dataplane`] and
//! the shell only does what the verdict says.

mod both;
pub mod device;
mod egress;
mod ingress;
pub mod io_loop;
pub mod persist;
pub mod pmtu;
pub mod shared;
pub mod table;
pub mod usage;
pub mod view;
