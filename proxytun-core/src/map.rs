//! The hash map every table of the packet core uses.
//!
//! A leaf module, so the flow table, the forwarding table, the isolation
//! policy and the session keys can share it without importing each other.

use std::collections::HashMap;

/// The hash map of the packet's hot path: std's `HashMap` (hashbrown) with
/// foldhash instead of SipHash-1-3.
///
/// Why: every packet costs at least one lookup keyed by a 5-tuple, and
/// SipHash of a [`FlowKey`](crate::flow::FlowKey) was most of a hit's cost (see
/// `docs/benchmarks.md`). foldhash is several times faster on such small
/// keys. Why it is still safe enough: the keys are partly chosen by
/// containers (ports, and addresses within what a container owns), so a
/// fixed-seed hash would let them craft collisions and turn every lookup
/// into a scan. foldhash's `RandomState` seeds each map from a per-process
/// random seed (plus a per-map one), which keeps it "minimally
/// DoS-resistant": an attacker who cannot observe the process's timing
/// closely cannot predict collisions. It is not a cryptographic hash, and
/// the table sizes are capped by [`CoreConfig::max_flows`](crate::config::CoreConfig::max_flows) anyway.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
