//! The sans-IO packet core of the dataplane.
//!
//! Everything a packet goes through between the TUN and the tunnel socket
//! lives here as plain functions and one state machine, [`Dataplane`]:
//! parsing ([`packet`]), address rewriting with incremental checksums
//! ([`checksum`]), the flow table and its timers ([`flow`]), the server-side
//! reply cache ([`reply`]), load balancing ([`policy`]), the forwarding view
//! of the cluster ([`table`]), the tunnel header ([`tunnel`]), keepalives
//! and peer health ([`keepalive`], [`health`]), the record of unknown
//! ServiceIPs ([`miss`]) and the counters ([`counters`]); fragments follow
//! their first fragment's flow through [`frag`], IPv6 extension headers are
//! walked by [`ipv6_ext`]; packets the isolation policy refuses are
//! answered with a TCP RST or an ICMP error built by [`reject`].
//!
//! A crate of its own (the daemon crate `proxytun` depends on it) so that its `Cargo.toml` shows the rule: it depends on
//! no I/O crate. The leaf modules [`config`], [`map`] and [`time`] hold what
//! the tables share, so imports point one way: `table` uses `access`,
//! `flow` uses `table`, `reply` uses `flow`, and `dataplane` uses them all. `fuzzing` holds the bodies of the
//! fuzz targets; `testkit` the test fixtures (feature `testkit`).
//!
//! Invariants: nothing here does I/O, reads a clock or spawns; time comes in
//! as `now`. Nothing on the hit path allocates; only installing a flow or a
//! reply entry may. No packet, however malformed, panics: every index is
//! checked by [`packet::parse`] first.

pub mod access;
pub mod affinity;
pub mod checksum;
pub mod clients;
pub mod config;
pub mod counters;
pub mod dataplane;
pub mod flow;
pub mod frag;
#[doc(hidden)]
pub mod fuzzing;
pub mod gro;
pub mod handshake;
pub mod health;
pub mod icmp_error;
pub mod ipv6_ext;
pub mod join;
pub mod keepalive;
pub mod map;
pub mod miss;
pub mod offload;
pub mod packet;
pub mod policy;
pub mod reject;
pub mod reply;
pub mod seal;
pub mod table;
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testkit;
pub mod time;
pub mod tunnel;

#[cfg(test)]
mod tests;

pub use config::CoreConfig;
pub use counters::{Counters, CountersSnapshot, DropReason};
pub use dataplane::{Dataplane, NetVerdict, TunVerdict};
pub use flow::FlowView;
pub use health::PeerHealthView;
pub use reply::ReplyView;
pub use table::{Location, Table, TableBuilder, TableError};
pub use tunnel::{write_header, HEADER_LEN};
