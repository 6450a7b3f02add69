//! IPv4 fragments and IPv6 fragment headers, forwarded by flow.
//!
//! The dataplane does not reassemble. The first fragment carries the
//! transport ports, so it goes through the flow table like any packet (a
//! hit, or a new flow) and is rewritten there, its transport checksum
//! adjusted incrementally for the address change (the checksum covers the
//! whole datagram, but the pseudo-header delta is the same). What became
//! of it, the new addresses and where it went, is remembered in the
//! [`FragTable`] under (input, source, destination, protocol,
//! identification); each later fragment gets the same translation and the
//! same destination by that key, as a packet of its own. The receiving
//! container's kernel reassembles. Why: every fragment already fits the
//! tunnel (the sender cut it to its own MTU), nothing has to be copied or
//! held, and memory is one fixed table (see `docs/fragments.md`).
//!
//! A later fragment that arrives before its first is dropped and counted
//! (`fragment_no_first`); Linux sends fragments in order, and the tunnel
//! keeps it. For IPv6 the table also keeps RFC 5722: a fragment that
//! overlaps one already forwarded is dropped, and so is every later
//! fragment of that datagram (`fragment_overlap`).

mod parse;
mod table;
#[cfg(test)]
mod tests;

pub use parse::{addresses, is_v4_fragment, parse, rewrite_ip, Fragment};
pub use table::{
    FragError, FragKey, FragTable, Input, Route, Translation, FRAG_PROBE, FRAG_SLOTS, FRAG_TIMEOUT,
};
