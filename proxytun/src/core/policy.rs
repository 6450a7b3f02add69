//! Load-balancing policies: which instance a new flow gets.

use std::sync::Arc;

use super::flow::FastMap;
use super::table::{InstanceId, ServiceEntry, Table};

/// A true rotation per service: the n-th new flow to a service gets
/// instance `n mod len` in table order.
///
/// Counters are keyed by service name, not table index, so they survive
/// table swaps; a new instance simply joins the rotation. The map is
/// consulted once per new flow, so it uses the core's fast hasher too.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: FastMap<Arc<str>, u64>,
}

impl RoundRobin {
    /// The instance the next flow to `service` should use, advancing the
    /// rotation; `None` when the service has no instances.
    pub fn pick(&mut self, service: &ServiceEntry) -> Option<InstanceId> {
        let len = service.instances.len() as u64;
        if len == 0 {
            return None;
        }
        let counter = match self.next.get_mut(service.name.as_ref()) {
            Some(c) => c,
            None => self.next.entry(service.name.clone()).or_insert(0),
        };
        let i = *counter % len;
        *counter = counter.wrapping_add(1);
        service.instances.get(usize::try_from(i).ok()?).copied()
    }

    /// Forgets counters of services that no longer exist.
    pub fn retain_services(&mut self, table: &Table) {
        let names: std::collections::HashSet<&str> =
            table.services().map(|s| s.name.as_ref()).collect();
        self.next.retain(|n, _| names.contains(n.as_ref()));
    }
}
