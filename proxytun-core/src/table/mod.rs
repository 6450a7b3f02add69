//! The dataplane's immutable view of services, instances and peers.
//!
//! The control plane builds a new [`Table`] on every change (never per
//! packet) and swaps it in; the packet path only does O(1) lookups.
//!
//! Layout is tuned for the new-flow path at 100k services, where every
//! step is a cache miss: a ServiceIP is found by its offset in the range
//! (a direct index when the range is small or densely used, a compact hash
//! otherwise), and a service's first instances, with where they run, sit
//! in the same cache line as the service, so a pick touches the VIP slot,
//! the service line and the chosen instance.

mod builder;
mod entry;
mod index;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::access::{Access, AppId};
use crate::map::FastMap;
use index::VipIndex;

pub use builder::{TableBuilder, TableError};
pub(crate) use entry::Member;
pub use entry::{InstanceEntry, InstanceId, Location, ServiceEntry, ServiceId, Vip};
use entry::{ServiceHot, INLINE_MEMBERS};

/// Source of [`Table`] generations.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The dataplane's view of the cluster; see the module docs.
#[derive(Debug, Clone)]
pub struct Table {
    /// Unique per built table (copies share it): lets per-service state
    /// kept outside, indexed by [`ServiceId`], notice a new table.
    generation: u64,
    services4: Ipv4Net,
    services6: Ipv6Net,
    services: Vec<ServiceEntry>,
    /// The new-flow part of each service, by index.
    hot: Vec<ServiceHot>,
    instances: Vec<InstanceEntry>,
    /// Members of services too big to keep them inline.
    spill: Vec<Member>,
    /// Remote instance locations, by [`Member::location`]: the peer
    /// endpoints in order, then any other endpoint an instance names.
    locations: Vec<SocketAddr>,
    vips4: VipIndex,
    vips6: VipIndex,
    local_ns: FastMap<IpAddr, InstanceId>,
    local_iip: FastMap<IpAddr, InstanceId>,
    by_name: FastMap<Arc<str>, InstanceId>,
    peers: HashSet<IpAddr, foldhash::fast::RandomState>,
    endpoints: Vec<SocketAddr>,
    /// Per-node keys: each peer's public key as the membership lists it.
    peer_keys: FastMap<IpAddr, crate::handshake::PublicKey>,
    /// The app of each service, by index: 4 bytes per service, so the
    /// policy check of a new flow stays in cache.
    service_app: Vec<AppId>,
    /// App names, by [`AppId`].
    apps: Vec<Arc<str>>,
    /// The compiled isolation policy.
    access: Access,
    /// External clients this node is the gateway of (docs/join.md).
    clients: crate::clients::Clients,
}

impl Table {
    /// A table with nothing in it (the ranges still classify addresses).
    pub fn empty(services4: Ipv4Net, services6: Ipv6Net) -> Table {
        Table {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            services4,
            services6,
            services: Vec::new(),
            hot: Vec::new(),
            instances: Vec::new(),
            spill: Vec::new(),
            locations: Vec::new(),
            vips4: VipIndex::Hashed(FastMap::default()),
            vips6: VipIndex::Hashed(FastMap::default()),
            local_ns: FastMap::default(),
            local_iip: FastMap::default(),
            by_name: FastMap::default(),
            peers: HashSet::default(),
            endpoints: Vec::new(),
            peer_keys: FastMap::default(),
            service_app: Vec::new(),
            apps: Vec::new(),
            access: Access::default(),
            clients: crate::clients::Clients::default(),
        }
    }

    /// Unique per built table; see the field.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// True when `addr` lies in the ServiceIP range of its family.
    pub fn in_service_range(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.services4.contains(&a),
            IpAddr::V6(a) => self.services6.contains(&a),
        }
    }

    /// What a destination address selects, if it is a VIP.
    #[inline]
    pub fn vip(&self, addr: IpAddr) -> Option<Vip> {
        match addr {
            IpAddr::V4(a) => {
                let (a, net) = (u32::from(a), u32::from(self.services4.network()));
                if a & u32::from(self.services4.netmask()) != net {
                    return None;
                }
                self.vips4.get(u128::from(a - net))
            }
            IpAddr::V6(a) => {
                let (a, net) = (u128::from(a), u128::from(self.services6.network()));
                if a & u128::from(self.services6.netmask()) != net {
                    return None;
                }
                self.vips6.get(a - net)
            }
        }
    }

    /// The index of `service` in this table. An entry of this table is
    /// recognised by its address, so the entry itself is not read (a
    /// cache miss saved per new flow at 100k services); an entry of
    /// another table falls back to its recorded index.
    #[inline]
    pub(crate) fn service_index(&self, service: &ServiceEntry) -> usize {
        let size = std::mem::size_of::<ServiceEntry>().max(1);
        let at = (service as *const ServiceEntry as usize)
            .wrapping_sub(self.services.as_ptr() as usize)
            / size;
        match self.services.get(at) {
            Some(e) if std::ptr::eq(e, service) => at,
            _ => service.index as usize,
        }
    }

    /// The members of `service`; empty when `service` is not from this
    /// table.
    #[inline]
    pub(crate) fn members(&self, service: &ServiceEntry) -> &[Member] {
        let Some(hot) = self.hot.get(self.service_index(service)) else {
            return &[];
        };
        let len = hot.len as usize;
        if len <= INLINE_MEMBERS {
            hot.inline.get(..len).unwrap_or(&[])
        } else {
            let start = hot.spill as usize;
            self.spill.get(start..start + len).unwrap_or(&[])
        }
    }

    /// The instance id of a member.
    #[inline]
    pub(crate) fn member_id(member: Member) -> InstanceId {
        InstanceId(member.instance as usize)
    }

    /// Where a member runs, from a small array instead of its entry.
    #[inline]
    pub(crate) fn member_location(&self, member: Member) -> Location {
        match self.locations.get(member.location as usize) {
            Some(&ep) => Location::Remote(ep),
            None => Location::Local,
        }
    }

    /// The local instance whose namespace address is `addr`.
    pub fn local_by_ns(&self, addr: IpAddr) -> Option<(InstanceId, &InstanceEntry)> {
        let id = *self.local_ns.get(&addr)?;
        Some((id, self.instance(id)?))
    }

    /// The local instance whose instance IP is `addr`.
    pub fn local_by_iip(&self, addr: IpAddr) -> Option<(InstanceId, &InstanceEntry)> {
        let id = *self.local_iip.get(&addr)?;
        Some((id, self.instance(id)?))
    }

    /// An instance by name (`app/service/n`).
    pub fn instance_by_name(&self, name: &str) -> Option<&InstanceEntry> {
        self.instance(*self.by_name.get(name)?)
    }

    /// The id of an instance by name (`app/service/n`): what a pin that
    /// outlives a table swap resolves through.
    pub fn instance_id_by_name(&self, name: &str) -> Option<InstanceId> {
        self.by_name.get(name).copied()
    }

    /// An instance by id.
    pub fn instance(&self, id: InstanceId) -> Option<&InstanceEntry> {
        self.instances.get(id.0)
    }

    /// A service by id.
    pub fn service(&self, id: ServiceId) -> Option<&ServiceEntry> {
        self.services.get(id.0)
    }

    /// All services, in table order.
    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.iter()
    }

    /// The external clients this node is the gateway of.
    pub fn clients(&self) -> &crate::clients::Clients {
        &self.clients
    }

    /// True when tunnel datagrams from `addr` are accepted.
    pub fn is_peer(&self, addr: IpAddr) -> bool {
        self.peers.contains(&addr)
    }

    /// The peers' tunnel endpoints, in the order they were added: the
    /// nodes keepalives go to.
    pub fn peer_endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Per-node keys: every peer with its endpoint and the public key the
    /// membership lists for it (`None`: no key listed, so no handshake);
    /// then the external clients with a key (docs/join.md).
    pub fn peer_members(&self) -> Vec<(IpAddr, SocketAddr, Option<crate::handshake::PublicKey>)> {
        let clients = self
            .clients
            .keys()
            .iter()
            .map(|(ep, k)| (ep.ip(), *ep, Some(*k)));
        self.endpoints
            .iter()
            .map(|ep| (ep.ip(), *ep, self.peer_keys.get(&ep.ip()).copied()))
            .chain(clients)
            .collect()
    }

    /// The app (tenant) a service belongs to.
    #[inline]
    pub fn app_of(&self, service: ServiceId) -> Option<AppId> {
        self.service_app.get(service.0).copied()
    }

    /// An app's name.
    pub fn app_name(&self, app: AppId) -> Option<&Arc<str>> {
        self.apps.get(app.0 as usize)
    }

    /// The compiled isolation policy.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// May a client instance of service `client` open a flow to service
    /// `dst` on `port` (`None`: ICMP echo)? Answered from the compiled
    /// policy: no allocation, no string compare. An id not of this table
    /// is allowed only while isolation is off.
    #[inline]
    pub fn allows(&self, client: ServiceId, dst: ServiceId, port: Option<u16>) -> bool {
        if !self.access.isolate() {
            return true;
        }
        match (self.app_of(client), self.app_of(dst)) {
            (Some(from), Some(to)) => self.access.allows(from, to, dst.0 as u32, port),
            _ => false,
        }
    }

    /// The service a VIP belongs to (an instance IP: its instance's service).
    #[inline]
    pub fn service_of_vip(&self, vip: Vip) -> Option<ServiceId> {
        match vip {
            Vip::RoundRobin(s) | Vip::Closest(s) => Some(s),
            Vip::Instance(i) => self.instance(i).map(|e| e.service),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
