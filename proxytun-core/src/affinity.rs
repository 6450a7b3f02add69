//! Client affinity ("session affinity"): for a service with `affinity =
//! client`, every new flow from one client address to one ServiceIP goes to
//! the instance the client's previous flow went to, as long as that was
//! less than the service's timeout ago, the instance is still one of the
//! service's and its node is up. Multi-connection protocols (iperf3's
//! control and data connections, FTP, gRPC with several channels) then land
//! on one instance; round robin stays the default.
//!
//! A pin names its instance (`app/service/n`), not a table index, so it
//! survives table swaps; an instance that left the service or whose peer is
//! down is re-chosen by the service's policy and re-pinned. The timer is
//! refreshed by every new flow that uses the pin (like IPVS persistence and
//! Kubernetes' `ClientIP` affinity). Only new flows consult the pins: an
//! existing flow never moves.
//!
//! Memory is bounded: at most `capacity` pins. When full, expired pins go
//! first; if none has expired, the new flow is balanced without a pin
//! (counted by the caller), so an address scan cannot grow the table.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::map::FastMap;
use crate::table::{InstanceId, Location, ServiceEntry, Table};

/// The pins of every service with client affinity, keyed by (ServiceIP,
/// client address): the two ServiceIPs of a service (round robin, closest)
/// and the two families pin independently, as each picks on its own.
#[derive(Debug)]
pub struct Affinity {
    pins: FastMap<(IpAddr, IpAddr), Pin>,
    capacity: usize,
}

#[derive(Debug)]
struct Pin {
    instance: Arc<str>,
    until: Instant,
}

/// What [`Affinity::choose`] did, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The client's pinned instance, timer refreshed.
    Pinned(InstanceId),
    /// A fresh pick by the service's policy, now pinned.
    Picked(InstanceId),
    /// A fresh pick that could not be pinned: the table is full of live pins.
    Unpinned(InstanceId),
}

impl Choice {
    /// The chosen instance.
    pub fn instance(self) -> InstanceId {
        match self {
            Choice::Pinned(i) | Choice::Picked(i) | Choice::Unpinned(i) => i,
        }
    }
}

impl Affinity {
    /// An empty set of pins holding at most `capacity`.
    pub fn new(capacity: usize) -> Affinity {
        Affinity {
            pins: FastMap::default(),
            capacity,
        }
    }

    /// Number of pins held (expired ones included until they are purged).
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// Whether no pin is held.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// The instance for a new flow from `client` to `vip` of `service`
    /// (which must come from `table`): the pinned one if it is still valid
    /// (unexpired, a member of `service`, its location up by `cost`),
    /// otherwise `pick()`'s, pinned for `ttl`. `None` when `pick` finds none.
    #[allow(clippy::too_many_arguments)]
    pub fn choose(
        &mut self,
        vip: IpAddr,
        client: IpAddr,
        ttl: Duration,
        now: Instant,
        table: &Table,
        service: &ServiceEntry,
        cost: impl Fn(Location) -> Option<u64>,
        pick: impl FnOnce() -> Option<InstanceId>,
    ) -> Option<Choice> {
        let key = (vip, client);
        if let Some(pin) = self.pins.get_mut(&key) {
            if pin.until > now {
                let still = table.instance_id_by_name(&pin.instance).filter(|&id| {
                    table
                        .instance(id)
                        .is_some_and(|e| e.service == service.id() && cost(e.location).is_some())
                });
                if let Some(id) = still {
                    pin.until = now + ttl;
                    return Some(Choice::Pinned(id));
                }
            }
        }
        let id = pick()?;
        let name = Arc::clone(&table.instance(id)?.name);
        if self.pins.len() >= self.capacity && !self.pins.contains_key(&key) {
            self.purge(now);
            if self.pins.len() >= self.capacity {
                return Some(Choice::Unpinned(id));
            }
        }
        self.pins.insert(
            key,
            Pin {
                instance: name,
                until: now + ttl,
            },
        );
        Some(Choice::Picked(id))
    }

    /// Drops the pins that expired by `now`.
    pub fn purge(&mut self, now: Instant) {
        self.pins.retain(|_, p| p.until > now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
