//! Load-balancing policies: which instance a new flow gets.
//!
//! Both policies see the peers' health through a cost function of an
//! instance's [`Location`] (see [`super::health::Peers::cost`]): `None`
//! for an instance on a peer that is down, otherwise a rank where lower is
//! nearer (this node is 0). Existing flows never consult it: only new flows
//! move away from a peer that went down.

use std::sync::Arc;

use super::map::FastMap;
use super::table::{InstanceId, Location, Member, ServiceEntry, Table};

/// Per-service rotation counters of both policies.
///
/// Counters are indexed by [`ServiceId`](super::table::ServiceId) so a new
/// flow costs one array access, not a hash of the service name. They are
/// bound to one table (by its generation) and carried over to the next by
/// service name, so rotation positions survive table swaps and a new
/// instance simply joins the rotation; counters of services that are gone
/// are forgotten. Rebinding happens in [`Balancer::follow`] (the dataplane
/// calls it on a table swap), or on the first pick from another table.
#[derive(Debug, Default)]
pub struct Balancer {
    /// Generation of the table the counters are indexed for (0: none).
    generation: u64,
    /// That table's service names, by service index: the key to carry
    /// counters over to the next table.
    names: Vec<Arc<str>>,
    /// (round robin, closest) counter per service index.
    counters: Vec<Counters>,
}

/// One service's counters.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    rr: u64,
    closest: u64,
}

/// Up to this many instances, closest computes each cost once (on the
/// stack); bigger services compute it again in the second pass.
const COST_CACHE: usize = 8;

impl Balancer {
    /// Re-indexes the counters for `table`, keeping each service's
    /// positions by name and forgetting services that are gone. Allocates;
    /// only on a table change.
    pub fn follow(&mut self, table: &Table) {
        if self.generation == table.generation() {
            return;
        }
        let old: FastMap<&str, Counters> = self
            .names
            .iter()
            .zip(&self.counters)
            .map(|(n, c)| (n.as_ref(), *c))
            .collect();
        let counters = table
            .services()
            .map(|s| old.get(s.name.as_ref()).copied().unwrap_or_default())
            .collect();
        drop(old);
        self.counters = counters;
        self.names = table.services().map(|s| Arc::clone(&s.name)).collect();
        self.generation = table.generation();
    }

    /// The counters of `service`, following `table` first if needed.
    #[inline]
    fn counters(&mut self, service: &ServiceEntry, table: &Table) -> Option<&mut Counters> {
        if self.generation != table.generation() {
            self.follow(table);
        }
        self.counters.get_mut(table.service_index(service))
    }

    /// Round robin: a true rotation per service over the instances in table
    /// order, skipping instances whose peer is down (`cost` is `None`).
    /// When every instance's peer is down it rotates over all of them
    /// (better a likely failure than a certain one). `None` when the service
    /// has no instances. `service` must come from `table`.
    #[inline]
    pub fn round_robin(
        &mut self,
        service: &ServiceEntry,
        table: &Table,
        cost: impl Fn(Location) -> Option<u64>,
    ) -> Option<InstanceId> {
        let list = table.members(service);
        let len = list.len() as u64;
        if len == 0 {
            return None;
        }
        let c = &mut self.counters(service, table)?.rr;
        let start = *c;
        for step in 0..len {
            let at = start.wrapping_add(step);
            let m = *list.get(usize::try_from(at % len).ok()?)?;
            if cost(table.member_location(m)).is_some() {
                *c = at.wrapping_add(1);
                return Some(Table::member_id(m));
            }
        }
        *c = start.wrapping_add(1);
        list.get(usize::try_from(start % len).ok()?)
            .map(|&m| Table::member_id(m))
    }

    /// Closest: among the service's instances, those whose location has
    /// the lowest cost; several such instances (on the same node) take
    /// turns. When every instance's peer is down, all take turns.
    /// `service` must come from `table`.
    #[inline]
    pub fn closest(
        &mut self,
        service: &ServiceEntry,
        table: &Table,
        cost: impl Fn(Location) -> Option<u64>,
    ) -> Option<InstanceId> {
        let list = table.members(service);
        if list.is_empty() {
            return None;
        }
        let cost_of = |m: Member| cost(table.member_location(m));
        // Pass 1: the best cost and how many instances share it.
        let mut cache = [None; COST_CACHE];
        let mut best: Option<u64> = None;
        let mut ties = 0u64;
        for (i, &m) in list.iter().enumerate() {
            let cm = cost_of(m);
            if let Some(slot) = cache.get_mut(i) {
                *slot = cm;
            }
            match (cm, best) {
                (Some(c), Some(b)) if c == b => ties += 1,
                (Some(c), Some(b)) if c > b => {}
                (Some(c), _) => {
                    best = Some(c);
                    ties = 1;
                }
                (None, _) => {}
            }
        }
        let c = &mut self.counters(service, table)?.closest;
        let turn = *c;
        *c = c.wrapping_add(1);
        let Some(best) = best else {
            let i = usize::try_from(turn % list.len() as u64).ok()?;
            return list.get(i).map(|&m| Table::member_id(m));
        };
        // Pass 2: the turn-th instance among the ties.
        let mut k = turn % ties;
        for (i, &m) in list.iter().enumerate() {
            let cm = match cache.get(i) {
                Some(&cm) => cm,
                None => cost_of(m),
            };
            if cm == Some(best) {
                if k == 0 {
                    return Some(Table::member_id(m));
                }
                k -= 1;
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::table::TableBuilder;

    /// A table with services `names` (in that order), each with `k` local
    /// instances.
    fn table(names: &[&str], k: u32) -> Table {
        let mut b = TableBuilder::new(
            "10.30.0.0/16".parse().unwrap(),
            "fdff:30::/112".parse().unwrap(),
        );
        let mut next = 0u32;
        for name in names {
            next += 1;
            let id = b.service(
                name,
                Ipv4Addr::new(10, 30, 0, next as u8),
                Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, next as u16),
            );
            for j in 0..k {
                next += 1;
                b.instance(
                    id,
                    &format!("{name}/{j}"),
                    Ipv4Addr::new(10, 18, 0, next as u8),
                    Ipv6Addr::new(0xfdff, 0x18, 0, 0, 0, 0, 0, next as u16),
                    Ipv4Addr::new(10, 30, 1, next as u8),
                    Ipv6Addr::new(0xfdff, 0x30, 0, 0, 0, 0, 0, 0x100 + next as u16),
                    Location::Local,
                );
            }
        }
        b.build().unwrap()
    }

    fn pick(b: &mut Balancer, t: &Table, name: &str) -> String {
        let svc = t.services().find(|s| s.name.as_ref() == name).unwrap();
        let id = b.round_robin(svc, t, |_| Some(0)).unwrap();
        t.instance(id).unwrap().name.to_string()
    }

    #[test]
    fn counters_follow_services_by_name_across_tables() {
        let t1 = table(&["a/x", "a/y"], 3);
        let mut b = Balancer::default();
        assert_eq!(pick(&mut b, &t1, "a/y"), "a/y/0");
        assert_eq!(pick(&mut b, &t1, "a/y"), "a/y/1");
        assert_eq!(pick(&mut b, &t1, "a/x"), "a/x/0");
        // Another order, a new service: positions stay with the names,
        // whether the balancer is told (follow) or notices on its own.
        let t2 = table(&["a/z", "a/y", "a/x"], 3);
        assert_eq!(pick(&mut b, &t2, "a/y"), "a/y/2");
        assert_eq!(pick(&mut b, &t2, "a/z"), "a/z/0");
        let t3 = table(&["a/x", "a/y"], 3);
        b.follow(&t3);
        assert_eq!(pick(&mut b, &t3, "a/x"), "a/x/1");
        // a/y goes away and comes back: it starts over.
        let t4 = table(&["a/x"], 3);
        b.follow(&t4);
        let t5 = table(&["a/x", "a/y"], 3);
        assert_eq!(pick(&mut b, &t5, "a/y"), "a/y/0");
        assert_eq!(pick(&mut b, &t5, "a/x"), "a/x/2");
    }

    #[test]
    fn spilled_services_rotate_and_pick_closest_ties() {
        // 8 instances: more than fit inline, more than the cost cache.
        let t = table(&["a/big"], 10);
        let svc = t.services().next().unwrap();
        let mut b = Balancer::default();
        let seen: Vec<InstanceId> = (0..20)
            .map(|_| b.round_robin(svc, &t, |_| Some(0)).unwrap())
            .collect();
        assert_eq!(seen[..10], svc.instances[..]);
        assert_eq!(seen[10..], svc.instances[..]);
        let seen: Vec<InstanceId> = (0..10)
            .map(|_| b.closest(svc, &t, |_| Some(0)).unwrap())
            .collect();
        assert_eq!(seen, svc.instances);
    }
}
