//! Load-balancing policies: which instance a new flow gets.
//!
//! Both policies see the peers' health through a cost function of an
//! instance's [`Location`] (see [`super::health::Peers::cost`]): `None`
//! for an instance on a peer that is down, otherwise a rank where lower is
//! nearer (this node is 0). Existing flows never consult it: only new flows
//! move away from a peer that went down.

use std::sync::Arc;

use super::flow::FastMap;
use super::table::{InstanceId, Location, ServiceEntry, Table};

/// Per-service rotation counters of both policies.
///
/// Counters are keyed by service name, not table index, so they survive
/// table swaps; a new instance simply joins the rotation. The maps are
/// consulted once per new flow, so they use the core's fast hasher too.
#[derive(Debug, Default)]
pub struct Balancer {
    rr: FastMap<Arc<str>, u64>,
    closest: FastMap<Arc<str>, u64>,
}

/// The counter of `service` in `map`, created at 0; no allocation once the
/// service has one (the key is a shared `Arc`).
macro_rules! counter {
    ($map:expr, $service:expr) => {
        match $map.get_mut($service.name.as_ref()) {
            Some(c) => c,
            None => $map.entry($service.name.clone()).or_insert(0),
        }
    };
}

/// The location of instance `id`, or `None` if the table does not have it.
fn location(table: &Table, id: InstanceId) -> Option<Location> {
    table.instance(id).map(|i| i.location)
}

impl Balancer {
    /// Round robin: a true rotation per service over the instances in table
    /// order, skipping instances whose peer is down (`cost` is `None`).
    /// When every instance's peer is down it rotates over all of them
    /// (better a likely failure than a certain one). `None` when the service
    /// has no instances.
    pub fn round_robin(
        &mut self,
        service: &ServiceEntry,
        table: &Table,
        cost: impl Fn(Location) -> Option<u64>,
    ) -> Option<InstanceId> {
        let list = &service.instances;
        let len = list.len() as u64;
        if len == 0 {
            return None;
        }
        let c = counter!(self.rr, service);
        let start = *c;
        for step in 0..len {
            let at = start.wrapping_add(step);
            let id = *list.get(usize::try_from(at % len).ok()?)?;
            if location(table, id).and_then(&cost).is_some() {
                *c = at.wrapping_add(1);
                return Some(id);
            }
        }
        *c = start.wrapping_add(1);
        list.get(usize::try_from(start % len).ok()?).copied()
    }

    /// Closest: among the service's instances, those whose location has
    /// the lowest cost; several such instances (on the same node) take
    /// turns. When every instance's peer is down, all take turns.
    pub fn closest(
        &mut self,
        service: &ServiceEntry,
        table: &Table,
        cost: impl Fn(Location) -> Option<u64>,
    ) -> Option<InstanceId> {
        let list = &service.instances;
        if list.is_empty() {
            return None;
        }
        let cost_of = |id: InstanceId| location(table, id).and_then(&cost);
        // Pass 1: the best cost and how many instances share it.
        let mut best: Option<u64> = None;
        let mut ties = 0u64;
        for &id in list {
            match (cost_of(id), best) {
                (Some(c), Some(b)) if c == b => ties += 1,
                (Some(c), Some(b)) if c > b => {}
                (Some(c), _) => {
                    best = Some(c);
                    ties = 1;
                }
                (None, _) => {}
            }
        }
        let c = counter!(self.closest, service);
        let turn = *c;
        *c = c.wrapping_add(1);
        let Some(best) = best else {
            let i = usize::try_from(turn % list.len() as u64).ok()?;
            return list.get(i).copied();
        };
        // Pass 2: the turn-th instance among the ties.
        let mut k = turn % ties;
        for &id in list {
            if cost_of(id) == Some(best) {
                if k == 0 {
                    return Some(id);
                }
                k -= 1;
            }
        }
        None
    }

    /// Forgets counters of services that no longer exist.
    pub fn retain_services(&mut self, table: &Table) {
        let names: std::collections::HashSet<&str> =
            table.services().map(|s| s.name.as_ref()).collect();
        self.rr.retain(|n, _| names.contains(n.as_ref()));
        self.closest.retain(|n, _| names.contains(n.as_ref()));
    }
}
